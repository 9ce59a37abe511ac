package import Logging
package import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// One open, authenticated connection to Redis.
///
/// Safe to use from any thread. Requests from off the event loop are queued
/// in an outbox and handed to ``RedisChannelHandler`` in one event-loop task
/// with one flush, however many arrived meanwhile: one hop, one wake-up and
/// one `writev` for a burst of concurrent commands instead of one each.
package final class RedisConnection: Sendable {
    package let channel: any Channel
    package let id: Int
    private let handler: NIOLoopBound<RedisChannelHandler>
    private let outbox = Mutex(Outbox())

    private struct Outbox {
        var requests: [RedisRequest] = []
        /// A drain task is on the event loop's queue.
        var drainScheduled = false
    }

    private init(channel: any Channel, handler: NIOLoopBound<RedisChannelHandler>, id: Int) {
        self.channel = channel
        self.handler = handler
        self.id = id
    }

    package var eventLoop: any EventLoop { self.channel.eventLoop }
    package var isActive: Bool { self.channel.isActive }
    package var closeFuture: EventLoopFuture<Void> { self.channel.closeFuture }

    /// Sends pre-encoded bytes; the returned reply completes with the server's
    /// answer. Failing it early (cancellation) leaves the command's slot in
    /// place, so its reply is discarded when it arrives.
    package func send(_ bytes: ByteBuffer, deadline: NIODeadline) -> RedisPendingReply {
        let reply = RedisPendingReply()
        self.submit(RedisRequest(bytes: bytes, reply: reply, deadline: deadline))
        return reply
    }

    /// Sends several pre-encoded commands with one flush.
    package func send(batch: [ByteBuffer], deadline: NIODeadline) -> [RedisPendingReply] {
        var requests: [RedisRequest] = []
        requests.reserveCapacity(batch.count)
        var replies: [RedisPendingReply] = []
        replies.reserveCapacity(batch.count)
        for bytes in batch {
            let reply = RedisPendingReply()
            requests.append(RedisRequest(bytes: bytes, reply: reply, deadline: deadline))
            replies.append(reply)
        }
        self.submit(contentsOf: requests)
        return replies
    }

    /// Writes a command whose replies arrive as pub/sub pushes.
    package func sendPush(_ bytes: ByteBuffer) {
        self.submit(RedisRequest(bytes: bytes, reply: nil, deadline: .distantFuture))
    }

    /// Switches the connection to pub/sub mode: all replies go to `handler`.
    package func enterPubSub(_ handler: @escaping @Sendable (RESPValue) -> Void) async throws {
        try await self.channel.triggerUserOutboundEvent(RedisHandlerEvent.enterPubSub(handler)).get()
    }

    // MARK: submission

    // Requests go straight to the handler, not through `channel.write`: the
    // pool may hand out this connection just before it learns that the socket
    // closed, and NIO drops a write that reaches a pipeline whose handlers it
    // has already removed, pending reply and all (the caller would wait
    // forever: the deadline timer is the handler's). The handler itself fails
    // requests once it is closed or removed.

    private func submit(_ request: RedisRequest) {
        if self.channel.eventLoop.inEventLoop {
            self.handler.value.submit(CollectionOfOne(request), flushNow: false)
            return
        }
        let schedule = self.outbox.withLock { outbox in
            outbox.requests.append(request)
            return Self.claimDrain(&outbox)
        }
        if schedule { self.scheduleDrain() }
    }

    private func submit(contentsOf requests: [RedisRequest]) {
        if self.channel.eventLoop.inEventLoop {
            self.handler.value.submit(requests, flushNow: false)
            return
        }
        let schedule = self.outbox.withLock { outbox in
            outbox.requests.append(contentsOf: requests)
            return Self.claimDrain(&outbox)
        }
        if schedule { self.scheduleDrain() }
    }

    private static func claimDrain(_ outbox: inout Outbox) -> Bool {
        if outbox.drainScheduled { return false }
        outbox.drainScheduled = true
        return true
    }

    private func scheduleDrain() {
        self.channel.eventLoop.execute {
            let requests = self.outbox.withLock { outbox in
                outbox.drainScheduled = false
                let requests = outbox.requests
                outbox.requests.removeAll(keepingCapacity: true)
                return requests
            }
            self.handler.value.submit(requests, flushNow: true)
        }
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
        let stallLimit = TimeAmount(configuration.stallLimit)
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
                    try sync.addHandler(RedisChannelHandler(maximumAbandoned: maximumAbandoned, stallLimit: stallLimit, logger: logger))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            throw RedisError(.unavailable, "cannot connect to \(configuration.endpointDescription): \(Self.describe(error))")
        }
        let handler: NIOLoopBound<RedisChannelHandler>
        do {
            handler = try await channel.eventLoop.submit {
                NIOLoopBound(try channel.pipeline.syncOperations.handler(type: RedisChannelHandler.self), eventLoop: channel.eventLoop)
            }.get()
        } catch {
            channel.close(promise: nil)
            throw RedisError(.unavailable, "cannot connect to \(configuration.endpointDescription): \(Self.describe(error))")
        }
        let connection = RedisConnection(channel: channel, handler: handler, id: id)
        do throws(RedisError) {
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
            let replies = connection.send(batch: handshake.map { RESPEncoder.encode($0) }, deadline: deadline)
            for (command, reply) in zip(handshake, replies) {
                do throws(RedisError) {
                    _ = try await reply.get()
                } catch where error.code == .server {
                    // The server's text never echoes the password; the command name is safe.
                    throw RedisError(.unavailable, "\(command.name) failed on \(configuration.endpointDescription): \(error.message)")
                }
            }
        } catch {
            connection.close()
            if error.code == .unavailable { throw error }
            throw RedisError(.unavailable, "handshake with \(configuration.endpointDescription) failed: \(error.message)")
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
