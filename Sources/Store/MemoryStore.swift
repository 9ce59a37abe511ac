public import NIOCore
import Redis
import Synchronization

/// The in-process store for a single process (`[store] backend = "memory"`): the same contract as
/// ``RedisStore``, expiry included, with the same GCRA arithmetic for rate limits.
///
/// ```swift
/// let store = MemoryStore()
/// try await store.set("k", to: ByteBuffer(string: "v"), ttl: .seconds(5))
/// ```
public final class MemoryStore: SharedStore {
    private enum Value {
        case bytes(ByteBuffer)
        case set(Set<String>)
    }

    private struct Item {
        var value: Value
        /// Monotonic expiry; nil = never.
        var expiresAt: ContinuousClock.Instant?
    }

    private struct State {
        var items: [String: Item] = [:]
        var subscribers: [String: [Int: (continuation: AsyncStream<ByteBuffer>.Continuation, losses: SubscriptionLosses)]] = [:]
        var nextSubscriber = 0
        var writes = 0
    }

    public let keyPrefix: String
    private let state = Mutex(State())
    private let epoch = ContinuousClock.now

    public init(keyPrefix: String = "kisgw:") {
        self.keyPrefix = keyPrefix
    }

    /// The live item at `key`, dropping it if it expired.
    private static func live(_ s: inout State, _ key: String, now: ContinuousClock.Instant) -> Item? {
        guard let item = s.items[key] else { return nil }
        if let e = item.expiresAt, e <= now {
            s.items.removeValue(forKey: key)
            return nil
        }
        return item
    }

    /// Sweeps expired items now and then so unread keys do not pile up.
    private static func sweepIfDue(_ s: inout State, now: ContinuousClock.Instant) {
        s.writes += 1
        guard s.writes % 1024 == 0 else { return }
        s.items = s.items.filter { $0.value.expiresAt.map { $0 > now } ?? true }
    }

    private static func expiry(_ ttl: Duration?, now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        ttl.map { now + $0 }
    }

    public func get(_ key: String) async throws(StoreError) -> ByteBuffer? {
        let now = ContinuousClock.now
        return state.withLock { s in
            guard case .bytes(let b)? = Self.live(&s, keyPrefix + key, now: now)?.value else { return nil }
            return b
        }
    }

    public func set(_ key: String, to value: ByteBuffer, ttl: Duration?) async throws(StoreError) {
        let now = ContinuousClock.now
        state.withLock { s in
            s.items[keyPrefix + key] = Item(value: .bytes(value), expiresAt: Self.expiry(ttl, now: now))
            Self.sweepIfDue(&s, now: now)
        }
    }

    public func setIfAbsent(_ key: String, to value: ByteBuffer, ttl: Duration?) async throws(StoreError) -> Bool {
        let now = ContinuousClock.now
        return state.withLock { s in
            let k = keyPrefix + key
            guard Self.live(&s, k, now: now) == nil else { return false }
            s.items[k] = Item(value: .bytes(value), expiresAt: Self.expiry(ttl, now: now))
            Self.sweepIfDue(&s, now: now)
            return true
        }
    }

    public func compareAndSet(
        _ key: String, expected: ByteBuffer?, newValue: ByteBuffer?, ttl: Duration?
    ) async throws(StoreError) -> Bool {
        let now = ContinuousClock.now
        return state.withLock { s in
            let k = keyPrefix + key
            let current: ByteBuffer?
            switch Self.live(&s, k, now: now)?.value {
            case .bytes(let b)?: current = b
            case .set?: return false
            case nil: current = nil
            }
            guard current == expected else { return false }
            if let newValue {
                s.items[k] = Item(value: .bytes(newValue), expiresAt: Self.expiry(ttl, now: now))
            } else {
                s.items.removeValue(forKey: k)
            }
            return true
        }
    }

    @discardableResult
    public func delete(_ key: String) async throws(StoreError) -> Bool {
        let now = ContinuousClock.now
        return state.withLock { s in
            let k = keyPrefix + key
            guard Self.live(&s, k, now: now) != nil else { return false }
            s.items.removeValue(forKey: k)
            return true
        }
    }

    public func timeToLive(_ key: String) async throws(StoreError) -> StoreTTL {
        let now = ContinuousClock.now
        return state.withLock { s in
            guard let item = Self.live(&s, keyPrefix + key, now: now) else { return .missing }
            guard let e = item.expiresAt else { return .persistent }
            return .expiresIn(now.duration(to: e))
        }
    }

    @discardableResult
    public func setAdd(_ key: String, members: [String], ttlAtLeast: Duration?) async throws(StoreError) -> Int {
        let now = ContinuousClock.now
        return state.withLock { s in
            let k = keyPrefix + key
            var item = Self.live(&s, k, now: now) ?? Item(value: .set([]), expiresAt: nil)
            guard case .set(var members0) = item.value else { return 0 }
            let before = members0.count
            members0.formUnion(members)
            item.value = .set(members0)
            if let ttl = ttlAtLeast {
                let wanted = now + ttl
                // Extend, never shorten; a persistent set stays persistent.
                if s.items[k] == nil { item.expiresAt = wanted } else if let e = item.expiresAt, e < wanted {
                    item.expiresAt = wanted
                }
            }
            s.items[k] = item
            return members0.count - before
        }
    }

    @discardableResult
    public func setRemove(_ key: String, members: [String]) async throws(StoreError) -> Int {
        let now = ContinuousClock.now
        return state.withLock { s in Self.remove(members, fromSet: keyPrefix + key, in: &s, now: now) }
    }

    public func setMembers(_ key: String) async throws(StoreError) -> Set<String> {
        let now = ContinuousClock.now
        return state.withLock { s in
            guard case .set(let m)? = Self.live(&s, keyPrefix + key, now: now)?.value else { return [] }
            return m
        }
    }

    public func acquireLock(_ key: String, ttl: Duration) async throws(StoreError) -> StoreLock? {
        let token = Self.randomToken()
        let stored = try await setIfAbsent(key, to: ByteBuffer(string: token), ttl: ttl)
        return stored ? StoreLock(key: key, token: token) : nil
    }

    public func acquireLock(_ key: String, ttl: Duration, thenGet readKey: String) async throws(StoreError)
        -> (lock: StoreLock?, value: ByteBuffer?)
    {
        // In one process the two steps cannot be split by another store's writes: releases come after writes.
        guard let lock = try await acquireLock(key, ttl: ttl) else { return (nil, nil) }
        return (lock, try await get(readKey))
    }

    public func renewLock(_ lock: StoreLock, ttl: Duration) async throws(StoreError) -> Bool {
        let token = ByteBuffer(string: lock.token)
        return try await compareAndSet(lock.key, expected: token, newValue: token, ttl: ttl)
    }

    @discardableResult
    public func releaseLock(_ lock: StoreLock) async throws(StoreError) -> Bool {
        try await compareAndSet(lock.key, expected: ByteBuffer(string: lock.token), newValue: nil, ttl: nil)
    }

    public func rateLimit(_ key: String, limit: RateLimit, cost: Int, maxWait: Duration) async throws(StoreError)
        -> RateLimitDecision
    {
        let now = ContinuousClock.now
        return state.withLock { s in decideRate(&s, key, limit: limit, cost: cost, maxWait: maxWait, now: now) }
    }

    /// One GCRA decision on `key`, inside the state's lock.
    private func decideRate(
        _ s: inout State, _ key: String, limit: RateLimit, cost: Int, maxWait: Duration, now: ContinuousClock.Instant
    ) -> RateLimitDecision {
        let k = keyPrefix + key
        var tat: Int64? = nil
        if case .bytes(let b)? = Self.live(&s, k, now: now)?.value,
            let t = b.getString(at: b.readerIndex, length: b.readableBytes).flatMap(GCRA.storedTAT)
        {
            tat = t
        }
        let outcome = GCRA.decide(
            tat: tat, now: Self.micros(epoch.duration(to: now)), interval: limit.intervalMicroseconds,
            burst: Int64(limit.burst), cost: Int64(cost), maxWait: Self.micros(maxWait))
        if outcome.allowed, let newTAT = outcome.newTAT {
            s.items[k] = Item(value: .bytes(ByteBuffer(string: String(newTAT))),
                              expiresAt: now + .microseconds(outcome.keepFor + 1000))
            return .allowed(after: .microseconds(outcome.wait))
        }
        return .denied(retryAfter: .microseconds(outcome.wait))
    }

    public func readOrLock(_ readKey: String, lock key: String, ttl: Duration, reserving: RateReservation?)
        async throws(StoreError) -> ReadOrLock
    {
        let now = ContinuousClock.now
        let token = Self.randomToken()
        return state.withLock { s in
            if case .bytes(let b)? = Self.live(&s, keyPrefix + readKey, now: now)?.value { return .value(b) }
            let lockKey = keyPrefix + key
            guard Self.live(&s, lockKey, now: now) == nil else { return .busy }
            s.items[lockKey] = Item(value: .bytes(ByteBuffer(string: token)), expiresAt: Self.expiry(ttl, now: now))
            Self.sweepIfDue(&s, now: now)
            let slot = reserving.map { r in
                decideRate(&s, r.key, limit: r.limit, cost: 1, maxWait: r.maxWait, now: now)
            }
            return .locked(StoreLock(key: key, token: token), slot: slot)
        }
    }

    public func publish(_ message: ByteBuffer, to channel: String) async throws(StoreError) {
        let subscribers = state.withLock { s in Array((s.subscribers[keyPrefix + channel] ?? [:]).values) }
        Self.deliver(message, to: subscribers)
    }

    /// Hands `message` to each subscriber; one 4096 behind loses its oldest, counted in its `lostMessages`.
    private static func deliver(
        _ message: ByteBuffer,
        to subscribers: [(continuation: AsyncStream<ByteBuffer>.Continuation, losses: SubscriptionLosses)]
    ) {
        for s in subscribers {
            if case .dropped = s.continuation.yield(message) { s.losses.add() }
        }
    }

    public func delete(_ key: String, removing member: String, from setKey: String, announcing message: ByteBuffer,
                       on channel: String) async throws(StoreError)
    {
        let now = ContinuousClock.now
        // Under one lock: a reader sees the key and the member either both there or both gone.
        let continuations = state.withLock { s in
            s.items.removeValue(forKey: keyPrefix + key)
            Self.remove([member], fromSet: keyPrefix + setKey, in: &s, now: now)
            return Array((s.subscribers[keyPrefix + channel] ?? [:]).values)
        }
        Self.deliver(message, to: continuations)
    }

    /// Removes `members` from the set at the (prefixed) key `k`, deleting it once empty; returns how many were there.
    @discardableResult
    private static func remove(_ members: [String], fromSet k: String, in s: inout State, now: ContinuousClock.Instant) -> Int {
        guard var item = live(&s, k, now: now), case .set(var m) = item.value else { return 0 }
        let before = m.count
        m.subtract(members)
        if m.isEmpty {
            s.items.removeValue(forKey: k)
        } else {
            item.value = .set(m)
            s.items[k] = item
        }
        return before - m.count
    }

    public func subscribe(to channel: String) async throws(StoreError) -> StoreSubscription {
        let (stream, continuation) = AsyncStream.makeStream(of: ByteBuffer.self, bufferingPolicy: .bufferingNewest(4096))
        let losses = SubscriptionLosses()
        let k = keyPrefix + channel
        let id = state.withLock { s -> Int in
            s.nextSubscriber += 1
            s.subscribers[k, default: [:]][s.nextSubscriber] = (continuation, losses)
            return s.nextSubscriber
        }
        continuation.onTermination = { [weak self] _ in
            self?.state.withLock { s in
                s.subscribers[k]?.removeValue(forKey: id)
                if s.subscribers[k]?.isEmpty == true { s.subscribers.removeValue(forKey: k) }
            }
        }
        return StoreSubscription(source: .memory(stream), losses: losses)
    }

    private static func micros(_ d: Duration) -> Int64 {
        d.components.seconds * 1_000_000 + d.components.attoseconds / 1_000_000_000_000
    }

    /// A lock's owner token: unique among every holder of every process (a random 128-bit prefix drawn once per
    /// process, then a counter), so a release or renewal by anyone else never matches. It needs no secrecy (whoever
    /// can write to the store can do anything to it), and drawing 256 random bits per lock took four `getrandom`
    /// calls and five strings on every miss.
    static func randomToken() -> String {
        tokenPrefix + String(tokenCounter.add(1, ordering: .relaxed).newValue, radix: 16)
    }

    private static let tokenPrefix: String = {
        var g = SystemRandomNumberGenerator()
        return String(g.next() as UInt64, radix: 16) + String(g.next() as UInt64, radix: 16) + "-"
    }()
    private static let tokenCounter = Atomic<UInt64>(0)
}
