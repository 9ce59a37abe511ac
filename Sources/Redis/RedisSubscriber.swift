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
        var link: Link?
        var confirmedChannels: Set<String> = []
        var confirmedPatterns: Set<String> = []
        /// The SUBSCRIBE and UNSUBSCRIBE (PSUBSCRIBE, PUNSUBSCRIBE) commands sent on `link` that Redis has yet to
        /// answer, by channel (pattern). A channel is confirmed by the answer to the last one sent for it: an earlier
        /// SUBSCRIBE's answer, of a subscriber gone since (its UNSUBSCRIBE on its way), is not the answer to the
        /// SUBSCRIBE of the one that came after it.
        var channelsInFlight: [String: Int] = [:]
        var patternsInFlight: [String: Int] = [:]

        /// One command for channel or pattern `name` answered: whether it was the last one sent for it (none is still
        /// in flight).
        mutating func settle(_ name: String, pattern: Bool) -> Bool {
            let inFlight: WritableKeyPath<State, [String: Int]> = pattern ? \.patternsInFlight : \.channelsInFlight
            let left = (self[keyPath: inFlight][name] ?? 1) - 1
            self[keyPath: inFlight][name] = left > 0 ? left : nil
            return left <= 0
        }
        var confirmationWaiters: [Int: Waiter] = [:]
        var supervisor: Task<Void, Never>?
        var isShutdown = false
        /// The last attempt to open the pub/sub connection failed.
        var isDown = false
        /// A pub/sub connection was open once: every later one follows a gap in which messages were lost.
        var wasConnected = false
        /// Told each time the subscriptions are renewed on a new connection after a gap (``restorations()``).
        var restorationWatchers: [Int: AsyncStream<Void>.Continuation] = [:]
    }

    /// Someone waiting for the server to confirm channels and patterns.
    private struct Waiter {
        var channels: Set<String>
        var patterns: Set<String>
        /// The supervisor, waiting for the subscriptions renewed on a new connection: a channel the server refuses is
        /// no longer waited for (its subscriptions end), rather than failing the wait.
        var isRenewal: Bool
        var continuation: CheckedContinuation<Confirmation, Never>

        func isConfirmed(_ state: State) -> Bool {
            Self.isConfirmed(self.channels, self.patterns, state)
        }

        /// Every channel and pattern confirmed, or no longer wanted (unsubscribed while the supervisor waited for
        /// its renewal: the answer to its SUBSCRIBE no longer confirms it).
        static func isConfirmed(_ channels: Set<String>, _ patterns: Set<String>, _ state: State) -> Bool {
            channels.allSatisfy { state.confirmedChannels.contains($0) || state.channelCounts[$0] == nil }
                && patterns.allSatisfy { state.confirmedPatterns.contains($0) || state.patternCounts[$0] == nil }
        }
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
        let registered: Int? = self.state.withLock { state in
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
            // Without a connection the supervisor subscribes everything once it connects.
            if let link = state.link { Self.subscribe(newChannels, newPatterns, on: link, &state) }
            return id
        }
        guard let registered else {
            continuation.finish()
            throw RedisError(.shutdown, "the Redis client was shut down")
        }
        continuation.onTermination = { _ in self.unsubscribe(id: registered) }
        if case .refused(let error) = await self.waitForConfirmation(channels: channelSet, patterns: patternSet) {
            continuation.finish()  // ended already (``refused(_:_:on:)``); its channels are given up
            throw error
        }
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
        /// The server refused one (an ACL without the channel, or without SUBSCRIBE).
        case refused(RedisError)
    }

    /// Waits until the server confirmed the channels, the connection is lost, or the timeout passes.
    @discardableResult
    private func waitForConfirmation(channels: Set<String>, patterns: Set<String>, isRenewal: Bool = false) async
        -> Confirmation
    {
        let waiterID = self.state.withLock { state -> Int in
            state.nextID += 1
            return state.nextID
        }
        let timeout = self.configuration.connectTimeout + self.configuration.commandTimeout
        return await withCheckedContinuation { (continuation: CheckedContinuation<Confirmation, Never>) in
            let done = self.state.withLock { state -> Confirmation? in
                if Waiter.isConfirmed(channels, patterns, state) { return .confirmed }
                if state.isDown || state.isShutdown { return .interrupted }
                state.confirmationWaiters[waiterID] = Waiter(channels: channels, patterns: patterns, isRenewal: isRenewal,
                                                             continuation: continuation)
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

    /// The subscription `id` ended: the channels and patterns no other subscription needs are unsubscribed. Decided
    /// and sent under the lock, as a subscription is: the commands for a channel reach Redis in the order the
    /// subscriptions came and went, whichever threads they came and went on.
    private func unsubscribe(id: Int) {
        let ready = self.state.withLock { state -> [CheckedContinuation<Confirmation, Never>] in
            guard let subscriber = state.subscribers.removeValue(forKey: id) else { return [] }
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
            guard let link = state.link else { return [] }
            if !goneChannels.isEmpty {
                for channel in goneChannels { state.channelsInFlight[channel, default: 0] += 1 }
                link.push(.unsubscribe, "UNSUBSCRIBE", goneChannels)
            }
            if !gonePatterns.isEmpty {
                for pattern in gonePatterns { state.patternsInFlight[pattern, default: 0] += 1 }
                link.push(.punsubscribe, "PUNSUBSCRIBE", gonePatterns)
            }
            return goneChannels.isEmpty && gonePatterns.isEmpty ? [] : Self.takeConfirmed(&state)
        }
        for waiter in ready { waiter.resume(returning: .confirmed) }
    }

    /// One SUBSCRIBE for each channel and one PSUBSCRIBE for each pattern: the server refuses a command whole, so
    /// one it refuses ends only the subscriptions to the channel or pattern refused. Called under the lock, with the
    /// decision to subscribe: the commands are queued for the link's event loop in the order they were decided.
    private static func subscribe(_ channels: [String], _ patterns: [String], on link: Link, _ state: inout State) {
        for channel in channels {
            state.channelsInFlight[channel, default: 0] += 1
            link.push(.subscribe, "SUBSCRIBE", [channel])
        }
        for pattern in patterns {
            state.patternsInFlight[pattern, default: 0] += 1
            link.push(.psubscribe, "PSUBSCRIBE", [pattern])
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
                let link = Link(connection)
                // Whoever waits for a confirmation on it stops waiting the moment it closes.
                connection.closeFuture.whenComplete { _ in self.lost(link) }
                let heard = Heard()
                try await connection.enterPubSub { value in
                    heard.value.store(true, ordering: .relaxed)
                    self.received(value, on: link)
                }
                // A gap: a connection lost, or a first one that could not be opened at once — subscriptions were
                // asked for meanwhile, and what was published then reached nobody.
                let afterAGap = failures > 0
                let toSubscribe: (channels: [String], patterns: [String], watchers: [AsyncStream<Void>.Continuation])? =
                    self.state.withLock { state in
                        guard !state.isShutdown else { return nil }
                        state.link = link
                        state.isDown = false
                        state.confirmedChannels = []
                        state.confirmedPatterns = []
                        state.channelsInFlight = [:]
                        state.patternsInFlight = [:]
                        let watchers = state.wasConnected || afterAGap ? Array(state.restorationWatchers.values) : []
                        state.wasConnected = true
                        let channels = Array(state.channelCounts.keys)
                        let patterns = Array(state.patternCounts.keys)
                        Self.subscribe(channels, patterns, on: link, &state)
                        return (channels, patterns, watchers)
                    }
                guard let toSubscribe else {
                    connection.close()
                    return
                }
                if failures > 0 {
                    self.logger.info("redis pub/sub connection restored", metadata: ["channels": "\(toSubscribe.channels.count)"])
                }
                failures = 0
                if !toSubscribe.watchers.isEmpty {
                    await self.tellOfGap(toSubscribe.watchers, once: Set(toSubscribe.channels), Set(toSubscribe.patterns),
                                         are: link)
                }
                await self.watch(link, heard: heard)
                self.lost(link)
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
    /// once more when the subscriptions are confirmed; lost meanwhile, the next connection tells it. A channel or
    /// pattern the server refuses is not waited for: its subscriptions end (``refused(_:_:on:)``).
    private func tellOfGap(_ watchers: [AsyncStream<Void>.Continuation], once channels: Set<String>, _ patterns: Set<String>,
                           are link: Link) async {
        switch await self.waitForConfirmation(channels: channels, patterns: patterns, isRenewal: true) {
        case .confirmed, .refused:
            for watcher in watchers { watcher.yield() }
        case .timedOut:
            self.logger.warning("redis did not confirm the renewed subscriptions in time; reconnecting",
                                metadata: ["channels": "\(channels.count)", "patterns": "\(patterns.count)"])
            for watcher in watchers { watcher.yield() }
            link.connection.close()
        case .interrupted:
            break
        }
    }

    /// The pub/sub connection `connection` closed: it is no longer used, nothing it confirmed holds, and whoever
    /// waits for a confirmation stops waiting (unless a newer connection is already up).
    private func lost(_ link: Link) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Confirmation, Never>] in
            if let current = state.link {
                guard current === link else { return [] }
            }
            state.link = nil
            state.confirmedChannels = []
            state.confirmedPatterns = []
            state.channelsInFlight = [:]
            state.patternsInFlight = [:]
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

    /// One pub/sub connection and the commands it has yet to answer, oldest first. Every reply but a message answers
    /// the oldest (one reply per channel or pattern it names; an error answers it whole), so a refusal is known to be
    /// of the channels its SUBSCRIBE named. A command is recorded and written in one event-loop task: in the order it
    /// reaches the socket, whichever thread sent it.
    final class Link: Sendable {
        enum Kind: Sendable {
            case subscribe
            case psubscribe
            case unsubscribe
            case punsubscribe
            case other

            /// Whether its names are patterns (nil: not a (un)subscription).
            var isPattern: Bool? {
                switch self {
                case .subscribe, .unsubscribe: false
                case .psubscribe, .punsubscribe: true
                case .other: nil
                }
            }
        }

        struct Sent: Sendable {
            var kind: Kind
            var names: [String]
            /// Replies still to come.
            var replies: Int
        }

        let connection: RedisConnection
        private let unanswered = Mutex(CircularBuffer<Sent>())

        init(_ connection: RedisConnection) {
            self.connection = connection
        }

        /// Sends `command` with `names` as its arguments: queued for the connection's event loop, even when called
        /// on it, so commands reach the socket in the order they were pushed (the subscriber pushes under its lock;
        /// one written at once on the loop overtook one pushed before it from another thread, still queued).
        func push(_ kind: Kind, _ command: String, _ names: [String]) {
            let bytes = RESPEncoder.encode(RedisCommand(command, names.map { RedisArgument($0) }))
            let sent = Sent(kind: kind, names: names, replies: max(1, names.count))
            self.connection.eventLoop.execute { self.write(sent, bytes) }
        }

        /// On the event loop: the connection writes it at once (``RedisConnection/sendPush(_:)``).
        private func write(_ sent: Sent, _ bytes: ByteBuffer) {
            self.unanswered.withLock { $0.append(sent) }
            self.connection.sendPush(bytes)
        }

        /// A reply that is not a message (on the event loop): the command it answered, when it is an error.
        func answered(_ reply: RESPValue) -> Sent? {
            self.unanswered.withLock { unanswered -> Sent? in
                guard !unanswered.isEmpty else { return nil }
                if case .error = reply { return unanswered.removeFirst() }
                unanswered[unanswered.startIndex].replies -= 1
                if unanswered[unanswered.startIndex].replies <= 0 { unanswered.removeFirst() }
                return nil
            }
        }
    }

    /// Returns when `connection` closes. It is pinged every `pubSubPingInterval`, and closed when it answered
    /// nothing (pong or message) in a whole interval: a connection whose peer is gone without a reset (a failover,
    /// a partition) would otherwise wait for TCP keep-alive (hours) while every message published is lost; closed,
    /// it is opened again and the subscribers are told messages were lost (``restorations()``).
    private func watch(_ link: Link, heard: Heard) async {
        let interval = self.configuration.pubSubPingInterval
        let connection = link.connection
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await connection.closeFuture.get() }
            group.addTask {
                while !Task.isCancelled {
                    heard.value.store(false, ordering: .relaxed)
                    link.push(.other, "PING", [])
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

    /// A push from the pub/sub connection `link` (on its event loop).
    private func received(_ value: RESPValue, on link: Link) {
        guard case .array(let parts) = value, let kind = parts.first?.string?.lowercased() else {
            // An error answers a whole command: a SUBSCRIBE or PSUBSCRIBE refused (`NOPERM`), or another. (`+PONG`:
            // a PING while nothing is subscribed.)
            if let command = link.answered(value), case .error(let message) = value {
                self.state.withLock { state in
                    guard state.link === link else { return }
                    guard let isPattern = command.kind.isPattern else { return }
                    for name in command.names { _ = state.settle(name, pattern: isPattern) }
                }
                self.refused(command, message, on: link)
            }
            return
        }
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
            _ = link.answered(value)
            guard parts.count >= 2, let name = parts[1].string else { return }
            let ready = self.state.withLock { state -> [CheckedContinuation<Confirmation, Never>] in
                guard state.link === link else { return [] }
                // Confirmed by the answer to the last command sent for it, while it is still wanted: Redis has it.
                let isPattern = kind == "psubscribe"
                guard state.settle(name, pattern: isPattern),
                    (isPattern ? state.patternCounts : state.channelCounts)[name] != nil
                else { return [] }
                if isPattern { state.confirmedPatterns.insert(name) } else { state.confirmedChannels.insert(name) }
                return Self.takeConfirmed(&state)
            }
            for waiter in ready { waiter.resume(returning: .confirmed) }
        case "unsubscribe", "punsubscribe":
            _ = link.answered(value)
            guard parts.count >= 2, let name = parts[1].string else { return }
            self.state.withLock { state in
                guard state.link === link else { return }
                _ = state.settle(name, pattern: kind == "punsubscribe")
            }
        default:
            // PING.
            _ = link.answered(value)
        }
    }

    /// The waiters whose channels and patterns are all confirmed, removed from `state`.
    private static func takeConfirmed(_ state: inout State) -> [CheckedContinuation<Confirmation, Never>] {
        var ready: [CheckedContinuation<Confirmation, Never>] = []
        for (id, waiter) in state.confirmationWaiters where waiter.isConfirmed(state) {
            ready.append(waiter.continuation)
            state.confirmationWaiters[id] = nil
        }
        return ready
    }

    /// The server refused `command`, a SUBSCRIBE or PSUBSCRIBE sent on `link` (an ACL without its channel, or
    /// without the command). Every subscription to the channel or pattern ends — it would never yield — and a
    /// `subscribe` waiting for it throws the server's error; the supervisor no longer waits for it.
    private func refused(_ command: Link.Sent, _ message: String, on link: Link) {
        guard command.kind == .subscribe || command.kind == .psubscribe, let isPattern = command.kind.isPattern else {
            return
        }
        let names = Set(command.names)
        // The server's text first: it is what `serverErrorPrefix` (`NOPERM`) reads.
        let error = RedisError.server("\(message) (\(isPattern ? "PSUBSCRIBE" : "SUBSCRIBE") \(command.names.joined(separator: " ")))")
        let outcome = self.state.withLock { state -> (refused: [CheckedContinuation<Confirmation, Never>],
                                                      confirmed: [CheckedContinuation<Confirmation, Never>],
                                                      ended: [AsyncStream<RedisPubSubMessage>.Continuation])? in
            guard state.link === link else { return nil }
            var refused: [CheckedContinuation<Confirmation, Never>] = []
            for (id, var waiter) in state.confirmationWaiters
            where !(isPattern ? waiter.patterns : waiter.channels).isDisjoint(with: names) {
                if waiter.isRenewal {
                    if isPattern { waiter.patterns.subtract(names) } else { waiter.channels.subtract(names) }
                    state.confirmationWaiters[id] = waiter
                } else {
                    refused.append(waiter.continuation)
                    state.confirmationWaiters[id] = nil
                }
            }
            let ended = state.subscribers.values
                .filter { !(isPattern ? $0.patterns : $0.channels).isDisjoint(with: names) }
                .map(\.continuation)
            return (refused, Self.takeConfirmed(&state), ended)
        }
        guard let outcome else { return }
        self.logger.error("redis refused a subscription; it ends", metadata: [
            "error": "\(message)", isPattern ? "patterns" : "channels": "\(command.names.joined(separator: " "))",
        ])
        for waiter in outcome.refused { waiter.resume(returning: .refused(error)) }
        for waiter in outcome.confirmed { waiter.resume(returning: .confirmed) }
        // Ending a subscription unsubscribes it (`onTermination`), which gives up its channels.
        for continuation in outcome.ended { continuation.finish() }
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
        let (supervisor, link, continuations, waiters, watchers) = self.state.withLock { state in
            state.isShutdown = true
            let result = (
                state.supervisor, state.link, state.subscribers.values.map(\.continuation),
                state.confirmationWaiters.values.map(\.continuation), Array(state.restorationWatchers.values)
            )
            state.subscribers = [:]
            state.confirmationWaiters = [:]
            state.restorationWatchers = [:]
            state.supervisor = nil
            return result
        }
        supervisor?.cancel()
        link?.connection.close()
        for waiter in waiters { waiter.resume(returning: .interrupted) }
        for continuation in continuations { continuation.finish() }
        for watcher in watchers { watcher.finish() }
        await supervisor?.value
    }
}
