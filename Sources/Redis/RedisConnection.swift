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
        self.channel.write(RedisOutbound.one(RedisRequest(bytes: bytes, promise: promise, deadline: deadline)), promise: nil)
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
        self.channel.write(RedisOutbound.batch(requests), promise: nil)
        return promises
    }

    /// Writes a command whose replies arrive as pub/sub pushes.
    package func sendPush(_ bytes: ByteBuffer) {
        self.channel.write(RedisOutbound.one(RedisRequest(bytes: bytes, promise: nil, deadline: .distantFuture)), promise: nil)
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
