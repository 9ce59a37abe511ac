public import NIOCore
import Logging
import Synchronization

/// A message received on a subscribed channel.
public struct RedisPubSubMessage: Sendable, Hashable {
    /// The channel the message was published to.
    public var channel: String
    /// The pattern that matched, for pattern subscriptions.
    public var pattern: String?
    /// The message bytes.
    public var payload: ByteBuffer

    public init(channel: String, pattern: String? = nil, payload: ByteBuffer) {
        self.channel = channel
        self.pattern = pattern
        self.payload = payload
    }

    /// The payload decoded as UTF-8.
    public var string: String { String(buffer: self.payload) }
}

/// The messages of one subscription, as an `AsyncSequence`.
///
/// The subscription ends (and the channels are unsubscribed when no other
/// subscription needs them) when the sequence is deallocated, its iteration is
/// cancelled, or the client shuts down. Up to 4096 undelivered messages are
/// buffered; beyond that the oldest are dropped with a warning, and counted in
/// ``lostMessages``.
public struct RedisSubscription: AsyncSequence, Sendable {
    public typealias Element = RedisPubSubMessage
    let stream: AsyncStream<RedisPubSubMessage>
    /// The messages this subscription lost because it fell 4096 behind.
    public let losses: SubscriptionLosses

    /// How many messages were dropped so far because this subscription's reader fell behind (a subscriber that keeps
    /// state from them should start afresh when it grows).
    public var lostMessages: Int { losses.count }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var iterator: AsyncStream<RedisPubSubMessage>.AsyncIterator
        public mutating func next() async -> RedisPubSubMessage? { await self.iterator.next() }
        public mutating func next(isolation actor: isolated (any Actor)?) async -> RedisPubSubMessage? {
            await self.iterator.next(isolation: actor)
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(iterator: self.stream.makeAsyncIterator())
    }
}

/// A count of the messages a subscription lost: dropped because its reader fell behind.
public final class SubscriptionLosses: Sendable {
    private let value = Atomic<Int>(0)

    public init() {}

    public var count: Int { value.load(ordering: .relaxed) }

    /// One more message lost.
    public func add() { value.add(1, ordering: .relaxed) }
}

/// The dedicated pub/sub connection of a ``RedisClient``: opened on the first
/// subscription, reopened with backoff whenever it drops, and every active
/// channel and pattern subscribed again on the new connection.
final class RedisSubscriber: Sendable {
    private struct Subscriber {
        var channels: Set<String>
        var patterns: Set<String>
        var continuation: AsyncStream<RedisPubSubMessage>.Continuation
        var losses: SubscriptionLosses
    }

    private struct State {
        var subscribers: [Int: Subscriber] = [:]
        var nextID = 0
        var channelCounts: [String: Int] = [:]
        var patternCounts: [String: Int] = [:]
        var connection: RedisConnection?
        var confirmedChannels: Set<String> = []
        var confirmedPatterns: Set<String> = []
        var confirmationWaiters: [Int: (channels: Set<String>, patterns: Set<String>, continuation: CheckedContinuation<Confirmation, Never>)] = [:]
        var supervisor: Task<Void, Never>?
        var isShutdown = false
        /// The last attempt to open the pub/sub connection failed.
        var isDown = false
        /// A pub/sub connection was open once: every later one follows a gap in which messages were lost.
        var wasConnected = false
        /// Told each time the subscriptions are renewed on a new connection after a gap (``restorations()``).
        var restorationWatchers: [Int: AsyncStream<Void>.Continuation] = [:]
    }

    private let state = Mutex(State())
    private let configuration: RedisConfiguration
    private let group: any EventLoopGroup
    private let logger: Logger
    private let bufferSize = 4096

    init(configuration: RedisConfiguration, group: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
    }

    func subscribe(channels: [String], patterns: [String]) async throws(RedisError) -> RedisSubscription {
        let (stream, continuation) = AsyncStream<RedisPubSubMessage>.makeStream(bufferingPolicy: .bufferingNewest(self.bufferSize))
        let channelSet = Set(channels)
        let patternSet = Set(patterns)
        let losses = SubscriptionLosses()
        let registered: (id: Int, connection: RedisConnection?, newChannels: [String], newPatterns: [String])? = self.state.withLock { state in
            guard !state.isShutdown else { return nil }
            let id = state.nextID
            state.nextID += 1
            state.subscribers[id] = Subscriber(channels: channelSet, patterns: patternSet, continuation: continuation,
                                               losses: losses)
            var newChannels: [String] = []
            var newPatterns: [String] = []
            for channel in channelSet {
                state.channelCounts[channel, default: 0] += 1
                if state.channelCounts[channel] == 1 { newChannels.append(channel) }
            }
            for pattern in patternSet {
                state.patternCounts[pattern, default: 0] += 1
                if state.patternCounts[pattern] == 1 { newPatterns.append(pattern) }
            }
            if state.supervisor == nil {
                state.supervisor = Task { await self.supervise() }
            }
            return (id, state.connection, newChannels, newPatterns)
        }
        guard let registered else {
            continuation.finish()
            throw RedisError(.shutdown, "the Redis client was shut down")
        }
        continuation.onTermination = { _ in self.unsubscribe(id: registered.id) }
        if let connection = registered.connection {
            self.send(channels: registered.newChannels, patterns: registered.newPatterns, on: connection)
        }
        // Without a connection the supervisor subscribes everything once it connects.
        await self.waitForConfirmation(channels: channelSet, patterns: patternSet)
        return RedisSubscription(stream: stream, losses: losses)
    }

    /// How a wait for the server's confirmation of channels and patterns ended.
    private enum Confirmation {
        /// The server confirmed every one.
        case confirmed
        /// Not every one was confirmed within the connect and command timeouts.
        case timedOut
        /// There is no connection to confirm them (down, lost, shut down).
        case interrupted
    }

    /// Waits until the server confirmed the channels, the connection is lost, or the timeout passes.
    @discardableResult
    private func waitForConfirmation(channels: Set<String>, patterns: Set<String>) async -> Confirmation {
        let waiterID = self.state.withLock { state -> Int in
            state.nextID += 1
            return state.nextID
        }
        let timeout = self.configuration.connectTimeout + self.configuration.commandTimeout
        return await withCheckedContinuation { (continuation: CheckedContinuation<Confirmation, Never>) in
            let done = self.state.withLock { state -> Confirmation? in
                if channels.isSubset(of: state.confirmedChannels) && patterns.isSubset(of: state.confirmedPatterns) {
                    return .confirmed
                }
                if state.isDown || state.isShutdown { return .interrupted }
                state.confirmationWaiters[waiterID] = (channels, patterns, continuation)
                return nil
            }
            if let done {
                continuation.resume(returning: done)
            } else {
                self.group.any().scheduleTask(in: TimeAmount(timeout)) {
                    let waiter = self.state.withLock { $0.confirmationWaiters.removeValue(forKey: waiterID) }
                    waiter?.continuation.resume(returning: .timedOut)
                }
            }
        }
    }

    private func unsubscribe(id: Int) {
        let result: (RedisConnection?, [String], [String]) = self.state.withLock { state in
            guard let subscriber = state.subscribers.removeValue(forKey: id) else { return (nil, [], []) }
            var goneChannels: [String] = []
            var gonePatterns: [String] = []
            for channel in subscriber.channels {
                state.channelCounts[channel, default: 1] -= 1
                if state.channelCounts[channel] == 0 {
                    state.channelCounts[channel] = nil
                    state.confirmedChannels.remove(channel)
                    goneChannels.append(channel)
                }
            }
            for pattern in subscriber.patterns {
                state.patternCounts[pattern, default: 1] -= 1
                if state.patternCounts[pattern] == 0 {
                    state.patternCounts[pattern] = nil
                    state.confirmedPatterns.remove(pattern)
                    gonePatterns.append(pattern)
                }
            }
            return (state.connection, goneChannels, gonePatterns)
        }
        guard let connection = result.0 else { return }
        if !result.1.isEmpty {
            connection.sendPush(RESPEncoder.encode(RedisCommand("UNSUBSCRIBE", result.1.map { RedisArgument($0) })))
        }
        if !result.2.isEmpty {
            connection.sendPush(RESPEncoder.encode(RedisCommand("PUNSUBSCRIBE", result.2.map { RedisArgument($0) })))
        }
    }

    private func send(channels: [String], patterns: [String], on connection: RedisConnection) {
        if !channels.isEmpty {
            connection.sendPush(RESPEncoder.encode(RedisCommand("SUBSCRIBE", channels.map { RedisArgument($0) })))
        }
        if !patterns.isEmpty {
            connection.sendPush(RESPEncoder.encode(RedisCommand("PSUBSCRIBE", patterns.map { RedisArgument($0) })))
        }
    }

    /// Keeps one pub/sub connection open until shutdown.
    private func supervise() async {
        var failures = 0
        while !Task.isCancelled {
            do {
                let connection = try await RedisConnection.connect(
                    configuration: self.configuration,
                    id: -1,
                    eventLoop: self.group.next(),
                    logger: self.logger
                )
                // Whoever waits for a confirmation on it stops waiting the moment it closes.
                connection.closeFuture.whenComplete { _ in self.lost(connection) }
                let heard = Heard()
                try await connection.enterPubSub { value in
                    heard.value.store(true, ordering: .relaxed)
                    self.received(value)
                }
                // A gap: a connection lost, or a first one that could not be opened at once — subscriptions were
                // asked for meanwhile, and what was published then reached nobody.
                let afterAGap = failures > 0
                let toSubscribe: (channels: [String], patterns: [String], watchers: [AsyncStream<Void>.Continuation])? =
                    self.state.withLock { state in
                        guard !state.isShutdown else { return nil }
                        state.connection = connection
                        state.isDown = false
                        state.confirmedChannels = []
                        state.confirmedPatterns = []
                        let watchers = state.wasConnected || afterAGap ? Array(state.restorationWatchers.values) : []
                        state.wasConnected = true
                        return (Array(state.channelCounts.keys), Array(state.patternCounts.keys), watchers)
                    }
                guard let toSubscribe else {
                    connection.close()
                    return
                }
                if failures > 0 {
                    self.logger.info("redis pub/sub connection restored", metadata: ["channels": "\(toSubscribe.channels.count)"])
                }
                failures = 0
                self.send(channels: toSubscribe.channels, patterns: toSubscribe.patterns, on: connection)
                if !toSubscribe.watchers.isEmpty {
                    await self.tellOfGap(toSubscribe.watchers, once: Set(toSubscribe.channels), Set(toSubscribe.patterns),
                                         are: connection)
                }
                await self.watch(connection, heard: heard)
                self.lost(connection)
                self.logger.info("redis pub/sub connection lost; reconnecting")
            } catch {
                failures += 1
                self.logger.debug("redis pub/sub connect failed", metadata: ["error": "\(error)"])
                let waiters = self.state.withLock { state in
                    state.isDown = true
                    let waiters = state.confirmationWaiters.values.map(\.continuation)
                    state.confirmationWaiters = [:]
                    return waiters
                }
                for waiter in waiters { waiter.resume(returning: .interrupted) }
            }
            let delay = failures == 0 ? self.configuration.initialReconnectDelay : self.backoff(failures: failures)
            try? await Task.sleep(for: delay)
        }
    }

    /// Tells `watchers` that messages published in a gap were lost, once the server has confirmed every channel and
    /// pattern renewed on `connection`: a subscriber that starts afresh then (a gateway dropping its token decisions
    /// and reading each record again) is sure to hear of what changes from then on. Told before, it could read a
    /// record while the renewed SUBSCRIBE was still on its way, and a `revoked` event published meanwhile reached
    /// nobody. Not confirmed in time, the gap is told all the same and the connection is opened again, to be told
    /// once more when the subscriptions are confirmed; lost meanwhile, the next connection tells it.
    private func tellOfGap(_ watchers: [AsyncStream<Void>.Continuation], once channels: Set<String>, _ patterns: Set<String>,
                           are connection: RedisConnection) async {
        switch await self.waitForConfirmation(channels: channels, patterns: patterns) {
        case .confirmed:
            for watcher in watchers { watcher.yield() }
        case .timedOut:
            self.logger.warning("redis did not confirm the renewed subscriptions in time; reconnecting",
                                metadata: ["channels": "\(channels.count)", "patterns": "\(patterns.count)"])
            for watcher in watchers { watcher.yield() }
            connection.close()
        case .interrupted:
            break
        }
    }

    /// The pub/sub connection `connection` closed: it is no longer used, nothing it confirmed holds, and whoever
    /// waits for a confirmation stops waiting (unless a newer connection is already up).
    private func lost(_ connection: RedisConnection) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Confirmation, Never>] in
            if let current = state.connection {
                guard current === connection else { return [] }
            }
            state.connection = nil
            state.confirmedChannels = []
            state.confirmedPatterns = []
            let waiters = state.confirmationWaiters.values.map(\.continuation)
            state.confirmationWaiters = [:]
            return waiters
        }
        for waiter in waiters { waiter.resume(returning: .interrupted) }
    }

    /// Whether the pub/sub connection said anything since the last ping.
    private final class Heard: Sendable {
        let value = Atomic<Bool>(true)
    }

    /// Returns when `connection` closes. It is pinged every `pubSubPingInterval`, and closed when it answered
    /// nothing (pong or message) in a whole interval: a connection whose peer is gone without a reset (a failover,
    /// a partition) would otherwise wait for TCP keep-alive (hours) while every message published is lost; closed,
    /// it is opened again and the subscribers are told messages were lost (``restorations()``).
    private func watch(_ connection: RedisConnection, heard: Heard) async {
        let interval = self.configuration.pubSubPingInterval
        let ping = RESPEncoder.encode(RedisCommand("PING"))
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await connection.closeFuture.get() }
            group.addTask {
                while !Task.isCancelled {
                    heard.value.store(false, ordering: .relaxed)
                    connection.sendPush(ping)
                    do { try await Task.sleep(for: interval) } catch { return }
                    if !heard.value.load(ordering: .relaxed) {
                        self.logger.warning("redis pub/sub connection answered nothing for an interval; reconnecting",
                                            metadata: ["interval": "\(interval)"])
                        connection.close()
                        return
                    }
                }
            }
            await group.next()
            group.cancelAll()
        }
    }

    private func backoff(failures: Int) -> Duration {
        var delay = self.configuration.initialReconnectDelay * (1 << min(failures - 1, 20))
        if delay > self.configuration.maximumReconnectDelay { delay = self.configuration.maximumReconnectDelay }
        return delay * Double.random(in: 0.75...1.0)
    }

    /// A payload in a buffer of its own: a message may wait in a subscriber's buffer (up to `bufferSize` of them),
    /// and the reply it came in is a slice of a whole socket read.
    private static func own(_ payload: ByteBuffer) -> ByteBuffer {
        ByteBuffer(bytes: payload.readableBytesView)
    }

    /// A push from the pub/sub connection (on its event loop).
    private func received(_ value: RESPValue) {
        guard case .array(let parts) = value, let kind = parts.first?.string?.lowercased() else { return }
        switch kind {
        case "message" where parts.count == 3:
            guard let channel = parts[1].string, let payload = parts[2].byteBuffer else { return }
            let message = RedisPubSubMessage(channel: channel, payload: Self.own(payload))
            self.deliver(message) { $0.channels.contains(channel) }
        case "pmessage" where parts.count == 4:
            guard let pattern = parts[1].string, let channel = parts[2].string, let payload = parts[3].byteBuffer else { return }
            let message = RedisPubSubMessage(channel: channel, pattern: pattern, payload: Self.own(payload))
            self.deliver(message) { $0.patterns.contains(pattern) }
        case "subscribe", "psubscribe":
            guard parts.count >= 2, let name = parts[1].string else { return }
            let ready = self.state.withLock { state -> [CheckedContinuation<Confirmation, Never>] in
                if kind == "subscribe" { state.confirmedChannels.insert(name) } else { state.confirmedPatterns.insert(name) }
                var ready: [CheckedContinuation<Confirmation, Never>] = []
                for (id, waiter) in state.confirmationWaiters
                where waiter.channels.isSubset(of: state.confirmedChannels) && waiter.patterns.isSubset(of: state.confirmedPatterns) {
                    ready.append(waiter.continuation)
                    state.confirmationWaiters[id] = nil
                }
                return ready
            }
            for waiter in ready { waiter.resume(returning: .confirmed) }
        default:
            break
        }
    }

    private func deliver(_ message: RedisPubSubMessage, to matches: (Subscriber) -> Bool) {
        let targets = self.state.withLock { state in
            state.subscribers.values.filter(matches).map { ($0.continuation, $0.losses) }
        }
        for (continuation, losses) in targets {
            if case .dropped = continuation.yield(message) {
                losses.add()
                self.logger.warning("redis pub/sub consumer is slow; dropped a message", metadata: ["channel": "\(message.channel)"])
            }
        }
    }

    /// Yields each time the pub/sub connection is open again after it was lost (or could not be opened), once the
    /// server has confirmed the subscriptions renewed on it: messages published in between were not delivered, and
    /// those published from then on are. Ends at shutdown.
    func restorations() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = self.state.withLock { state -> Int? in
            guard !state.isShutdown else { return nil }
            let id = state.nextID
            state.nextID += 1
            state.restorationWatchers[id] = continuation
            return id
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { _ in _ = self.state.withLock { $0.restorationWatchers.removeValue(forKey: id) } }
        return stream
    }

    func shutdown() async {
        let (supervisor, connection, continuations, waiters, watchers) = self.state.withLock { state in
            state.isShutdown = true
            let result = (
                state.supervisor, state.connection, state.subscribers.values.map(\.continuation),
                state.confirmationWaiters.values.map(\.continuation), Array(state.restorationWatchers.values)
            )
            state.subscribers = [:]
            state.confirmationWaiters = [:]
            state.restorationWatchers = [:]
            state.supervisor = nil
            return result
        }
        supervisor?.cancel()
        connection?.close()
        for waiter in waiters { waiter.resume(returning: .interrupted) }
        for continuation in continuations { continuation.finish() }
        for watcher in watchers { watcher.finish() }
        await supervisor?.value
    }
}
