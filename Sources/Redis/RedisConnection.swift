package import Logging
package import NIOCore
import NIOPosix
import NIOSSL

/// One open, authenticated connection to Redis.
///
/// Safe to use from any thread: every method hops to the channel's event loop.
package final class RedisConnection: Sendable {
    package let channel: any Channel
    package let id: Int

    private init(channel: any Channel, id: Int) {
        self.channel = channel
        self.id = id
    }

    package var eventLoop: any EventLoop { self.channel.eventLoop }
    package var isActive: Bool { self.channel.isActive }
    package var closeFuture: EventLoopFuture<Void> { self.channel.closeFuture }

    /// Sends pre-encoded bytes; the promise completes with the reply. Failing
    /// the promise early (cancellation) leaves the command's slot in place, so
    /// its reply is discarded when it arrives.
    package func send(_ bytes: ByteBuffer, deadline: NIODeadline) -> EventLoopPromise<RESPValue> {
        let promise = self.channel.eventLoop.makePromise(of: RESPValue.self)
        self.submit(.one(RedisRequest(bytes: bytes, promise: promise, deadline: deadline)))
        return promise
    }

    /// Sends several pre-encoded commands with one flush.
    package func send(batch: [ByteBuffer], deadline: NIODeadline) -> [EventLoopPromise<RESPValue>] {
        var requests: [RedisRequest] = []
        requests.reserveCapacity(batch.count)
        var promises: [EventLoopPromise<RESPValue>] = []
        promises.reserveCapacity(batch.count)
        for bytes in batch {
            let promise = self.channel.eventLoop.makePromise(of: RESPValue.self)
            requests.append(RedisRequest(bytes: bytes, promise: promise, deadline: deadline))
            promises.append(promise)
        }
        self.submit(.batch(requests))
        return promises
    }

    /// Writes a command whose replies arrive as pub/sub pushes.
    package func sendPush(_ bytes: ByteBuffer) {
        self.submit(.one(RedisRequest(bytes: bytes, promise: nil, deadline: .distantFuture)))
    }

    /// Hands requests to ``RedisChannelHandler`` on the channel's event loop.
    ///
    /// The pool may hand out this connection just before it learns that the
    /// socket closed (its close notification runs on the event loop, the
    /// caller does not). NIO removes the handlers after closing, and a write
    /// that reaches a pipeline without them is dropped, its promises with it:
    /// the caller would wait forever, since the deadline timer lives in the
    /// handler too. So the channel is checked on the loop: while it is active
    /// its handlers are in place and pair or fail every request; once it is
    /// not, the requests fail here.
    private func submit(_ outbound: RedisOutbound) {
        if self.channel.eventLoop.inEventLoop {
            self.submitOnLoop(outbound)
        } else {
            self.channel.eventLoop.execute { self.submitOnLoop(outbound) }
        }
    }

    private func submitOnLoop(_ outbound: RedisOutbound) {
        guard self.channel.isActive else {
            let error = RedisError(.connectionClosed, "connection to Redis closed before the command was sent")
            switch outbound {
            case .one(let request): request.promise?.fail(error)
            case .batch(let requests): for request in requests { request.promise?.fail(error) }
            }
            return
        }
        self.channel.write(outbound, promise: nil)
    }

    /// Switches the connection to pub/sub mode: all replies go to `handler`.
    package func enterPubSub(_ handler: @escaping @Sendable (RESPValue) -> Void) async throws {
        try await self.channel.triggerUserOutboundEvent(RedisHandlerEvent.enterPubSub(handler)).get()
    }

    package func close() {
        self.channel.close(promise: nil)
    }

    /// Opens a connection, sets up TLS, and sends AUTH, SELECT and CLIENT SETNAME.
    package static func connect(
        configuration: RedisConfiguration,
        id: Int,
        eventLoop: any EventLoop,
        logger: Logger
    ) async throws -> RedisConnection {
        let deadline = NIODeadline.now() + TimeAmount(configuration.connectTimeout)
        let sslContext: NIOSSLContext?
        do {
            sslContext = try configuration.tls.map { try NIOSSLContext(configuration: $0) }
        } catch {
            throw RedisError(.unavailable, "cannot set up TLS for \(configuration.endpointDescription): \(error)")
        }
        let host = configuration.host
        let maximumAbandoned = configuration.maximumAbandonedCommands
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(configuration.connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let sslContext {
                        let serverName = Self.isIPAddress(host) ? nil : host
                        try sync.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: serverName))
                    }
                    try sync.addHandler(RedisChannelHandler(maximumAbandoned: maximumAbandoned, logger: logger))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            throw RedisError(.unavailable, "cannot connect to \(configuration.endpointDescription): \(Self.describe(error))")
        }
        let connection = RedisConnection(channel: channel, id: id)
        do {
            var handshake: [RedisCommand] = []
            if let password = configuration.password {
                if let username = configuration.username {
                    handshake.append(RedisCommand("AUTH", [RedisArgument(username), RedisArgument(password)]))
                } else {
                    handshake.append(RedisCommand("AUTH", [RedisArgument(password)]))
                }
            }
            if configuration.database != 0 {
                handshake.append(RedisCommand("SELECT", [RedisArgument(configuration.database)]))
            }
            if let name = configuration.clientName {
                handshake.append(RedisCommand("CLIENT", ["SETNAME", RedisArgument(name)]))
            }
            if handshake.isEmpty {
                handshake.append(RedisCommand("PING"))
            }
            let promises = connection.send(batch: handshake.map { HiredisEncoder.encode($0) }, deadline: deadline)
            for (command, promise) in zip(handshake, promises) {
                do {
                    _ = try await promise.futureResult.get()
                } catch let error as RedisError where error.code == .server {
                    // The server's text never echoes the password; the command name is safe.
                    throw RedisError(.unavailable, "\(command.name) failed on \(configuration.endpointDescription): \(error.message)")
                }
            }
        } catch let error as RedisError {
            connection.close()
            if error.code == .unavailable { throw error }
            throw RedisError(.unavailable, "handshake with \(configuration.endpointDescription) failed: \(error.message)")
        } catch {
            connection.close()
            throw RedisError(.unavailable, "handshake with \(configuration.endpointDescription) failed: \(error)")
        }
        return connection
    }

    private static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }

    private static func describe(_ error: any Error) -> String {
        if let error = error as? NIOConnectionError {
            if let first = error.connectionErrors.first { return "\(first.error)" }
            if let dns = error.dnsAAAAError ?? error.dnsAError { return "DNS: \(dns)" }
        }
        return "\(error)"
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
