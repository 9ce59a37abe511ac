public import NIOCore

/// The state gateways and the broker share: cache entries, locks, rate-limit
/// state, token records and events.
///
/// Two implementations behave the same, expiry included: ``RedisStore``
/// (many processes, one Redis) and ``MemoryStore`` (one process). Keys and
/// channels are given *without* the prefix; the store prepends
/// ``keyPrefix`` (`kisgw:` by default) to every key and channel.
///
/// ```swift
/// let store: any SharedStore = RedisStore(client: redis)
/// if let lock = try await store.acquireLock("lock:quote:005930", ttl: .seconds(5)) {
///     defer { Task { _ = try? await store.releaseLock(lock) } }
///     …
/// }
/// ```
public protocol SharedStore: Sendable {
    /// Prepended to every key and channel (`kisgw:`).
    var keyPrefix: String { get }

    /// The value of `key`, or `nil` if it does not exist (or expired).
    func get(_ key: String) async throws(StoreError) -> ByteBuffer?

    /// Stores `value` at `key`, replacing any value; `ttl` `nil` keeps it until deleted.
    func set(_ key: String, to value: ByteBuffer, ttl: Duration?) async throws(StoreError)

    /// Stores `value` only if `key` does not exist. Returns whether it was stored.
    func setIfAbsent(_ key: String, to value: ByteBuffer, ttl: Duration?) async throws(StoreError) -> Bool

    /// Atomically replaces the value of `key` if it currently equals `expected`
    /// (`nil`: the key must not exist). `newValue` `nil` deletes the key.
    /// Returns whether the swap happened.
    func compareAndSet(
        _ key: String,
        expected: ByteBuffer?,
        newValue: ByteBuffer?,
        ttl: Duration?
    ) async throws(StoreError) -> Bool

    /// Deletes `key` (a value or a set). Returns whether it existed.
    @discardableResult
    func delete(_ key: String) async throws(StoreError) -> Bool

    /// Whether `key` exists and when it expires.
    func timeToLive(_ key: String) async throws(StoreError) -> StoreTTL

    /// Adds members to the set at `key`. With `ttlAtLeast`, the set's expiry is
    /// extended (never shortened) to at least that long from now. Returns the
    /// number of members that were new.
    @discardableResult
    func setAdd(_ key: String, members: [String], ttlAtLeast: Duration?) async throws(StoreError) -> Int

    /// Removes members from the set at `key`; returns how many were present.
    @discardableResult
    func setRemove(_ key: String, members: [String]) async throws(StoreError) -> Int

    /// All members of the set at `key` (empty if it does not exist).
    func setMembers(_ key: String) async throws(StoreError) -> Set<String>

    /// Takes the lock `key` for `ttl` if nobody holds it; returns the held lock or `nil`.
    func acquireLock(_ key: String, ttl: Duration) async throws(StoreError) -> StoreLock?

    /// Takes the lock `key` like `acquireLock`, and when it is taken reads `readKey` after taking it, in one atomic
    /// step: a value written before the previous holder released the lock is seen. (Coalescing: whoever gets the
    /// lock first checks whether the work was done meanwhile.)
    func acquireLock(_ key: String, ttl: Duration, thenGet readKey: String) async throws(StoreError)
        -> (lock: StoreLock?, value: ByteBuffer?)

    /// The first step of coalesced work on a key nobody here has, in one atomic step (one round trip): the value
    /// of `readKey` if it has one; else the lock `key` for `ttl` if nobody holds it — with `reserving`, also a
    /// rate-limit slot for the work, decided as ``rateLimit(_:limit:cost:maxWait:)`` decides a cost of 1 — else
    /// ``ReadOrLock/busy``.
    func readOrLock(_ readKey: String, lock key: String, ttl: Duration, reserving: RateReservation?)
        async throws(StoreError) -> ReadOrLock

    /// Extends a held lock; `false` if it expired or someone else holds it now.
    func renewLock(_ lock: StoreLock, ttl: Duration) async throws(StoreError) -> Bool

    /// Releases a lock only if this holder still owns it; returns whether it did.
    @discardableResult
    func releaseLock(_ lock: StoreLock) async throws(StoreError) -> Bool

    /// One atomic rate-limit decision (GCRA) for `key` across every process
    /// sharing the store.
    ///
    /// - Parameters:
    ///   - cost: units this request consumes (usually 1).
    ///   - maxWait: how long the caller is willing to wait. If the request
    ///     conforms within that time, a slot is *reserved* and the decision is
    ///     ``RateLimitDecision/allowed(after:)`` with the wait (zero: go now);
    ///     otherwise nothing is reserved and the decision is
    ///     ``RateLimitDecision/denied(retryAfter:)``.
    func rateLimit(_ key: String, limit: RateLimit, cost: Int, maxWait: Duration) async throws(StoreError) -> RateLimitDecision

    /// Publishes `message` on `channel`; returns immediately (fire and forget).
    func publish(_ message: ByteBuffer, to channel: String) async throws(StoreError)

    /// Publishes `message` on `channel`, then deletes `key` and removes `member` from the set `setKey`, in one atomic
    /// step that deletes nothing unless the message was sent: the key is never gone without the message (a token's
    /// `revoked` event, which gateways forget their decision on).
    func delete(_ key: String, removing member: String, from setKey: String, announcing message: ByteBuffer,
                on channel: String) async throws(StoreError)

    /// Messages published on `channel` from now on.
    func subscribe(to channel: String) async throws(StoreError) -> StoreSubscription

    /// Yields each time subscriptions resume after a gap in which published messages were lost (the store's pub/sub
    /// connection dropped and came back). A store that never loses them that way never yields. (A subscription whose
    /// reader falls behind counts what it lost itself: ``StoreSubscription/lostMessages``.)
    func subscriptionGaps() -> AsyncStream<Void>
}

extension SharedStore {
    /// A store with no connection to lose (the memory store): no gap, ever; the sequence ends at once.
    public func subscriptionGaps() -> AsyncStream<Void> { AsyncStream { $0.finish() } }

    /// `key` with the store's prefix, as it appears in Redis (e.g. for AAD).
    public func fullKey(_ key: String) -> String { self.keyPrefix + key }

    /// Waits for a rate-limit slot up to `deadline`, reserving it atomically.
    ///
    /// - Returns: `true` once the request may go ahead (after sleeping for its
    ///   reserved slot); `false` if no slot was available before the deadline.
    public func waitForRateLimit(
        _ key: String,
        limit: RateLimit,
        cost: Int = 1,
        deadline: ContinuousClock.Instant
    ) async throws -> Bool {
        let remaining = ContinuousClock.now.duration(to: deadline)
        guard remaining >= .zero else { return false }
        switch try await self.rateLimit(key, limit: limit, cost: cost, maxWait: remaining) {
        case .allowed(let wait):
            if wait > .zero { try await Task.sleep(for: wait) }
            return true
        case .denied:
            return false
        }
    }
}

/// The expiry state of a key.
public enum StoreTTL: Sendable, Hashable {
    /// No such key.
    case missing
    /// The key never expires.
    case persistent
    /// The key expires after this long.
    case expiresIn(Duration)
}

/// A held lock: the key and the random token that proves ownership.
public struct StoreLock: Sendable, Hashable {
    /// The lock's key (without prefix).
    public let key: String
    /// The owner's random token.
    public let token: String

    public init(key: String, token: String) {
        self.key = key
        self.token = token
    }
}

/// A rate: `rate` requests per second with bursts of up to `burst`.
public struct RateLimit: Sendable, Hashable {
    /// Sustained requests per second (> 0).
    public var rate: Double
    /// How many requests may go back to back after an idle period (≥ 1).
    public var burst: Int

    public init(rate: Double, burst: Int = 1) {
        precondition(rate > 0, "rate must be positive")
        precondition(burst >= 1, "burst must be at least 1")
        self.rate = rate
        self.burst = burst
    }

    /// The longest emission interval: an hour. A rate slower than one an hour is taken as one an hour, so that the
    /// interval, times a cost or a burst, stays far inside `Int64` and the integers Lua's doubles hold exactly.
    public static let longestIntervalMicroseconds: Int64 = 3_600_000_000

    /// The emission interval in microseconds: rounded up, so never faster than `rate`; at least 1, and at most
    /// ``longestIntervalMicroseconds`` — whatever the rate, never a trap converting to `Int64`.
    public var intervalMicroseconds: Int64 {
        let micros = (1_000_000 / self.rate).rounded(.up)
        // Also taken for a NaN.
        guard micros < Double(Self.longestIntervalMicroseconds) else { return Self.longestIntervalMicroseconds }
        return max(1, Int64(micros))
    }
}

/// A rate-limit slot to reserve along with a lock (``SharedStore/readOrLock(_:lock:ttl:reserving:)``).
public struct RateReservation: Sendable, Hashable {
    /// The rate-limit key (without prefix).
    public var key: String
    public var limit: RateLimit
    /// The longest the caller will wait for the slot.
    public var maxWait: Duration

    public init(key: String, limit: RateLimit, maxWait: Duration) {
        self.key = key
        self.limit = limit
        self.maxWait = maxWait
    }
}

/// The answer of ``SharedStore/readOrLock(_:lock:ttl:reserving:)``.
public enum ReadOrLock: Sendable, Hashable {
    /// The read key has this value; no lock was taken and no slot reserved.
    case value(ByteBuffer)
    /// The read key had no value and the lock is ours, with the rate-limit decision if a slot was asked for.
    case locked(StoreLock, slot: RateLimitDecision?)
    /// The read key had no value and somebody else holds the lock.
    case busy
}

/// The answer of ``SharedStore/rateLimit(_:limit:cost:maxWait:)``.
public enum RateLimitDecision: Sendable, Hashable {
    /// Go ahead after `after` (zero: now). The slot is already reserved.
    case allowed(after: Duration)
    /// Too early; the request would conform after `retryAfter`. Nothing was reserved.
    case denied(retryAfter: Duration)

    /// `true` for ``allowed(after:)``.
    public var isAllowed: Bool {
        if case .allowed = self { return true }
        return false
    }
}

/// An error from a shared store.
public struct StoreError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The category of the error.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate enum Base: Sendable, Hashable {
            case unavailable, timeout, backend, refused, invalidRecord, seal, unknownKey, shutdown
        }
        fileprivate let base: Base

        /// The backing store cannot be reached right now.
        public static let unavailable = Code(base: .unavailable)
        /// The backing store did not answer in time.
        public static let timeout = Code(base: .timeout)
        /// The backing store reported an error.
        public static let backend = Code(base: .backend)
        /// The backing store answered, refusing the command: a Redis error reply such as `NOPERM` (an ACL without the
        /// command), `OOM` (`maxmemory` reached under `noeviction`), `READONLY` (a replica after a failover) or
        /// `WRONGTYPE`. ``StoreError/refusal`` names it.
        public static let refused = Code(base: .refused)
        /// A stored record is malformed.
        public static let invalidRecord = Code(base: .invalidRecord)
        /// Sealing or opening a token record failed (wrong key, tampered data).
        public static let seal = Code(base: .seal)
        /// A seal key id is not in the keyring.
        public static let unknownKey = Code(base: .unknownKey)
        /// The store was shut down.
        public static let shutdown = Code(base: .shutdown)

        /// The store answered, with a sealed record that cannot be opened here (``seal``, ``unknownKey``,
        /// ``invalidRecord``): not an outage.
        public var isUnopenable: Bool { self == .seal || self == .unknownKey || self == .invalidRecord }

        public var description: String {
            switch self.base {
            case .unavailable: "unavailable"
            case .timeout: "timeout"
            case .backend: "backend"
            case .refused: "refused"
            case .invalidRecord: "invalidRecord"
            case .seal: "seal"
            case .unknownKey: "unknownKey"
            case .shutdown: "shutdown"
            }
        }
    }

    /// The category of the error.
    public let code: Code
    /// A human-readable explanation (never contains secrets).
    public let message: String
    /// For ``Code/refused``: the store's name for the refusal, Redis's error code (`NOPERM`, `OOM`, `READONLY`,
    /// `WRONGTYPE`, `ERR`, …).
    public let refusal: String?

    package init(_ code: Code, _ message: String, refusal: String? = nil) {
        self.code = code
        self.message = message
        self.refusal = refusal
    }

    public var description: String { "StoreError(\(self.code)): \(self.message)" }
}
