public import Logging
public import NIOCore
public import NIOPosix

/// A non-blocking Redis client: hiredis encodes and decodes RESP, SwiftNIO
/// moves the bytes.
///
/// One client holds a bounded pool of connections (``RedisConfiguration/poolSize``)
/// and pipelines any number of commands over each; replies are paired with
/// commands strictly in order. Every command has a timeout. A command that
/// times out or whose task is cancelled keeps its place in the connection's
/// queue and its late reply is discarded, so no other command can ever receive
/// it. Lost connections are replaced automatically with exponential backoff;
/// while Redis is unreachable, commands fail at once with
/// ``RedisError/Code/unavailable``. Pub/sub runs on a dedicated connection (see
/// ``subscribe(to:patterns:)``).
///
/// ```swift
/// let redis = try RedisClient(url: "redis://127.0.0.1:6379/0", logger: logger)
/// try await redis.set("greeting", to: "hello", expiration: .seconds(60))
/// let value = try await redis.get("greeting")          // ByteBuffer?
/// let reply = try await redis.send(["HINCRBY", "h", "f", 1])
/// await redis.shutdown()
/// ```
public final class RedisClient: Sendable {
    /// The configuration the client was created with.
    public let configuration: RedisConfiguration
    let pool: ConnectionPool
    let subscriber: RedisSubscriber
    let logger: Logger

    /// Creates a client; connections open lazily on first use.
    ///
    /// - Parameters:
    ///   - configuration: where and how to connect.
    ///   - eventLoopGroup: the NIO event loops to run on (the process-wide singleton by default).
    ///   - logger: receives connection events (never command arguments or passwords).
    public init(
        configuration: RedisConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger
    ) {
        self.configuration = configuration
        self.logger = logger
        self.pool = ConnectionPool(configuration: configuration, group: eventLoopGroup, logger: logger)
        self.subscriber = RedisSubscriber(configuration: configuration, group: eventLoopGroup, logger: logger)
    }

    /// Creates a client from a `redis://` or `rediss://` URL.
    public convenience init(
        url: String,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger
    ) throws(RedisError) {
        self.init(configuration: try RedisConfiguration(url: url), eventLoopGroup: eventLoopGroup, logger: logger)
    }

    /// Sends one command and returns its reply.
    ///
    /// - Parameters:
    ///   - command: the command, e.g. `["SET", key, value]`.
    ///   - timeout: overrides ``RedisConfiguration/commandTimeout`` for this call.
    /// - Throws: ``RedisError``; a server error reply has code ``RedisError/Code/server``.
    public func send(_ command: RedisCommand, timeout: Duration? = nil) async throws(RedisError) -> RESPValue {
        let deadline = NIODeadline.now() + TimeAmount(timeout ?? self.configuration.commandTimeout)
        let bytes = RESPEncoder.encode(command)
        if Task.isCancelled { throw RedisError(.cancelled, "task cancelled before \(command.name) was sent") }
        let connection: RedisConnection
        do {
            connection = try await self.pool.connection(deadline: deadline)
        } catch {
            throw Self.redisError(error)
        }
        return try await connection.send(bytes, deadline: deadline).get()
    }

    /// Sends several commands back to back on one connection with one flush
    /// and returns each reply (or error) in order.
    ///
    /// Use it for bulk work; independent concurrent ``send(_:timeout:)`` calls
    /// are pipelined too, but this saves the per-call overhead.
    public func pipeline(_ commands: [RedisCommand], timeout: Duration? = nil) async throws(RedisError) -> [Result<RESPValue, RedisError>] {
        guard !commands.isEmpty else { return [] }
        let deadline = NIODeadline.now() + TimeAmount(timeout ?? self.configuration.commandTimeout)
        // One buffer for the whole pipeline; each command gets a slice of it.
        let encoded = RESPEncoder.encode(batch: commands)
        if Task.isCancelled { throw RedisError(.cancelled, "task cancelled before the pipeline was sent") }
        let connection: RedisConnection
        do {
            connection = try await self.pool.connection(deadline: deadline)
        } catch {
            throw Self.redisError(error)
        }
        let replies = connection.send(batch: encoded, deadline: deadline)
        // The last reply first: replies complete in order (and a timeout or a
        // close fails all of them at once), so once it is complete the others
        // are too and the task suspends and is resumed once per pipeline. Awaiting
        // the first one first resumed the task as soon as that reply was parsed,
        // then suspended it again on a later reply still in the socket: a
        // wake-up (a thread hop) per read instead of one per pipeline.
        let last: Result<RESPValue, RedisError>
        do {
            last = .success(try await replies[replies.count - 1].get())
        } catch {
            last = .failure(error)
        }
        var results: [Result<RESPValue, RedisError>] = []
        results.reserveCapacity(replies.count)
        for reply in replies.dropLast() {
            do {
                results.append(.success(try await reply.get()))
            } catch {
                results.append(.failure(error))
            }
        }
        results.append(last)
        return results
    }

    /// Subscribes to channels and/or patterns on the client's dedicated pub/sub
    /// connection. Messages arrive on the returned sequence until it is dropped
    /// or its iterating task is cancelled; subscriptions are renewed after
    /// every reconnect.
    ///
    /// When the pub/sub connection is up, this returns after the server has
    /// confirmed the subscription, so a message published afterwards is
    /// delivered. While Redis is unreachable it returns at once and the
    /// subscription becomes active when the connection is back.
    ///
    /// - Throws: ``RedisError/Code/server`` with the server's error (`NOPERM …`) when it refuses a channel or pattern
    ///   (an ACL without it, or without `SUBSCRIBE`). A channel refused later, when it is renewed after a reconnect,
    ///   ends the subscription.
    public func subscribe(to channels: [String], patterns: [String] = []) async throws(RedisError) -> RedisSubscription {
        try await self.subscriber.subscribe(channels: channels, patterns: patterns)
    }

    /// Yields each time the pub/sub connection is back after it was lost (or could not be opened), once the server
    /// has confirmed every subscription renewed on it: the messages published in between were not delivered to
    /// anyone, so a subscriber that keeps state from them (a cache it invalidates) should start afresh, and those
    /// published from then on are. (A subscription whose reader falls behind counts what it lost itself:
    /// ``RedisSubscription/lostMessages``.) Ends at shutdown.
    public func subscriptionRestorations() -> AsyncStream<Void> {
        self.subscriber.restorations()
    }

    /// Closes all connections. Pending and later commands fail with ``RedisError/Code/shutdown``.
    public func shutdown() async {
        await self.subscriber.shutdown()
        await self.pool.shutdown()
    }

    /// Runs until the calling task is cancelled, then shuts the client down.
    /// Fits `ServiceLifecycle`'s `Service.run()`.
    public func run() async {
        let (stream, continuation) = AsyncStream<Never>.makeStream()
        await withTaskCancellationHandler {
            for await _ in stream {}
        } onCancel: {
            continuation.finish()
        }
        await self.shutdown()
    }

    static func redisError(_ error: any Error) -> RedisError {
        if let error = error as? RedisError { return error }
        if error is CancellationError { return RedisError(.cancelled, "task cancelled") }
        return RedisError(.connectionClosed, "\(error)")
    }
}
