public import NIOCore
public import Redis
public import Foundation

/// The shared store on Redis: every gateway and the broker see the same keys, locks, rate-limit state and
/// events. Compound operations are single Lua scripts (`EVALSHA`, reloaded transparently after `NOSCRIPT`),
/// so they stay atomic across processes.
///
/// ```swift
/// let redis = try RedisClient(url: "redis://127.0.0.1:6379/0", logger: logger)
/// let store = RedisStore(client: redis)          // keys under "kisgw:"
/// ```
public final class RedisStore: SharedStore {
    public let client: RedisClient
    public let keyPrefix: String

    /// This host's clock, for the time after which a read-or-lock call is stale (a test gives one that is off).
    private let now: @Sendable () -> Date

    public init(client: RedisClient, keyPrefix: String = "kisgw:", clock: @escaping @Sendable () -> Date = { Date() }) {
        self.client = client
        self.keyPrefix = keyPrefix
        self.now = clock
    }

    static let compareAndSet = RedisScript(name: "kisgw-cas", """
        local cur = redis.call('GET', KEYS[1])
        local expect_absent = ARGV[1] == '0'
        if expect_absent then
            if cur then return 0 end
        else
            if (not cur) or cur ~= ARGV[2] then return 0 end
        end
        if ARGV[3] == '0' then
            redis.call('DEL', KEYS[1])
        elseif tonumber(ARGV[5]) > 0 then
            redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
        else
            redis.call('SET', KEYS[1], ARGV[4])
        end
        return 1
        """)

    /// A set with no expiry gets one only when this call created it: every member it holds was added now (a set is
    /// never empty in Redis), however many of the members given were repeats.
    static let setAddAtLeast = RedisScript(name: "kisgw-sadd-ttl", """
        local added = redis.call('SADD', KEYS[1], unpack(ARGV, 2))
        local want = tonumber(ARGV[1])
        if want > 0 then
            local ttl = redis.call('PTTL', KEYS[1])
            if ttl >= 0 and ttl < want then redis.call('PEXPIRE', KEYS[1], want) end
            if ttl == -1 and redis.call('SCARD', KEYS[1]) == added then
                redis.call('PEXPIRE', KEYS[1], want)
            end
        end
        return added
        """)

    /// PUBLISH first: a PUBLISH the server refuses (an ACL) stops the script before anything is deleted. Subscribers
    /// get the message after the script, when the key is already gone.
    static let deleteAndAnnounce = RedisScript(name: "kisgw-del-announce", """
        redis.call('PUBLISH', ARGV[2], ARGV[3])
        redis.call('DEL', KEYS[1])
        redis.call('SREM', KEYS[2], ARGV[1])
        return 1
        """)

    /// GCRA (``GCRA/decide(tat:now:interval:burst:cost:maxWait:)``): `{allowed (0/1), wait_us}`.
    ///
    /// `ARGV[5]`, when given, is the Unix time in ms after which the call is stale, as ``readOrLock``'s `ARGV[6]`: a
    /// stale call books nothing — its caller gave up, and no KIS call will use the slot — and answers `{3}`.
    static let gcra = RedisScript(name: "kisgw-gcra", GCRA.luaFunction + """
        if ARGV[5] then
            local t = redis.call('TIME')
            if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[5]) then return {3} end
        end
        return kisgw_gcra(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
        """)
    /// SET NX PX the lock; when taken, GET the read key too: one round trip, one atomic step.
    static let lockThenGet = RedisScript(name: "kisgw-lock-get", """
        if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
            local v = redis.call('GET', KEYS[2])
            if v then return {1, v} end
            return {1}
        end
        return {0}
        """)

    /// GET the read key; when it has no value, SET NX PX the lock, and when that is taken and a slot is asked
    /// for (a third key), decide it with GCRA: `{2, value}`, `{0}` (busy), `{1}` or `{1, allowed, wait_us}`.
    ///
    /// `ARGV[6]`, when given, is the Unix time in ms after which the call is stale: its caller has given up (the
    /// command timed out while Redis stalled, and ran when Redis came back). A stale call does nothing — takes no
    /// lock and, above all, no slot of the app key's KIS rate, which no KIS call would use (every gateway's requests
    /// after a stall were refused for those slots) — and answers `{3}`.
    static let readOrLock = RedisScript(name: "kisgw-read-or-lock", GCRA.luaFunction + """
        if ARGV[6] then
            local t = redis.call('TIME')
            if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[6]) then return {3} end
        end
        local v = redis.call('GET', KEYS[1])
        if v then return {2, v} end
        if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
        if #KEYS < 3 then return {1} end
        local d = kisgw_gcra(KEYS[3], ARGV[3], ARGV[4], 1, ARGV[5])
        return {1, d[1], d[2]}
        """)

    private func k(_ key: String) -> String { keyPrefix + key }

    private static func map(_ e: RedisError) -> StoreError {
        switch e.code {
        case .timeout: StoreError(.timeout, "Redis did not answer in time")
        case .unavailable, .connectionClosed, .cancelled: StoreError(.unavailable, "Redis is unreachable: \(e.message)")
        case .shutdown: StoreError(.shutdown, "the Redis client was shut down")
        // Redis answered with an error reply: it is up, and refuses (an ACL, OOM, a read-only replica, WRONGTYPE).
        case .server: StoreError(.refused, "Redis refused the command: \(e.message)",
                                 refusal: e.serverErrorPrefix.map(String.init) ?? "ERR")
        default: StoreError(.backend, "Redis: \(e.message)")
        }
    }

    private static func micros(_ d: Duration) -> Int64 {
        d.components.seconds * 1_000_000 + d.components.attoseconds / 1_000_000_000_000
    }

    private static func ms(_ d: Duration) -> Int {
        max(1, Int(d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000))
    }

    public func get(_ key: String) async throws(StoreError) -> ByteBuffer? {
        do { return try await client.get(k(key)) } catch { throw Self.map(error) }
    }

    public func set(_ key: String, to value: ByteBuffer, ttl: Duration?) async throws(StoreError) {
        do { try await client.set(k(key), to: value, expiration: ttl) } catch { throw Self.map(error) }
    }

    public func setIfAbsent(_ key: String, to value: ByteBuffer, ttl: Duration?) async throws(StoreError) -> Bool {
        do { return try await client.set(k(key), to: value, expiration: ttl, condition: .ifAbsent) } catch {
            throw Self.map(error)
        }
    }

    public func compareAndSet(
        _ key: String, expected: ByteBuffer?, newValue: ByteBuffer?, ttl: Duration?
    ) async throws(StoreError) -> Bool {
        let args: [RedisArgument] = [
            expected == nil ? "0" : "1", expected.map { RedisArgument($0) } ?? "", newValue == nil ? "0" : "1",
            newValue.map { RedisArgument($0) } ?? "", RedisArgument(ttl.map(Self.ms) ?? 0),
        ]
        do {
            let reply = try await client.evaluate(Self.compareAndSet, keys: [RedisArgument(k(key))], arguments: args)
            return reply == .integer(1)
        } catch { throw Self.map(error) }
    }

    @discardableResult
    public func delete(_ key: String) async throws(StoreError) -> Bool {
        do { return try await client.delete([k(key)]) > 0 } catch { throw Self.map(error) }
    }

    public func timeToLive(_ key: String) async throws(StoreError) -> StoreTTL {
        let reply: RESPValue
        do { reply = try await client.send(["PTTL", RedisArgument(k(key))]) } catch { throw Self.map(error) }
        guard case .integer(let ms) = reply else { throw StoreError(.backend, "PTTL gave an unexpected reply") }
        switch ms {
        case -2: return .missing
        case -1: return .persistent
        default: return .expiresIn(.milliseconds(ms))
        }
    }

    @discardableResult
    public func setAdd(_ key: String, members: [String], ttlAtLeast: Duration?) async throws(StoreError) -> Int {
        guard !members.isEmpty else { return 0 }
        let args = [RedisArgument(ttlAtLeast.map(Self.ms) ?? 0)] + members.map { RedisArgument($0) }
        do {
            let reply = try await client.evaluate(Self.setAddAtLeast, keys: [RedisArgument(k(key))], arguments: args)
            guard case .integer(let n) = reply else { throw StoreError(.backend, "SADD gave an unexpected reply") }
            return n
        } catch let e as RedisError {
            throw Self.map(e)
        } catch let e as StoreError {
            throw e
        } catch {
            throw StoreError(.backend, "SADD failed")
        }
    }

    @discardableResult
    public func setRemove(_ key: String, members: [String]) async throws(StoreError) -> Int {
        guard !members.isEmpty else { return 0 }
        do { return try await client.setRemove(k(key), members: members.map { RedisArgument($0) }) } catch {
            throw Self.map(error)
        }
    }

    public func setMembers(_ key: String) async throws(StoreError) -> Set<String> {
        do { return Set(try await client.setMembers(k(key)).map { String(buffer: $0) }) } catch { throw Self.map(error) }
    }

    public func acquireLock(_ key: String, ttl: Duration) async throws(StoreError) -> StoreLock? {
        let token = MemoryStore.randomToken()
        do {
            let taken = try await client.set(k(key), to: ByteBuffer(string: token), expiration: ttl, condition: .ifAbsent)
            return taken ? StoreLock(key: key, token: token) : nil
        } catch {
            releaseAbandoned(StoreLock(key: key, token: token), after: error)
            throw Self.map(error)
        }
    }

    /// A lock call that failed may still take the lock: a command that timed out (Redis stalled, the network
    /// hiccuped) is still run when Redis gets to it. Nobody would own that lock until it expires, and every request
    /// for its key, on every gateway, would wait it out (a chart's lock lives `timeout_ms + max_queue_ms + 1 s`).
    /// Its token is this call's alone, so releasing it is safe whatever happened; the release is tried over the
    /// next few seconds, since the failed command may still be waiting in Redis when the first try arrives. Not
    /// when the command never left (`unavailable`: no connection to send it on): while Redis is down every failed
    /// miss would otherwise add three more commands to what the reconnecting client has to refuse.
    private func releaseAbandoned(_ lock: StoreLock, after error: RedisError) {
        guard error.code != .unavailable else { return }
        Task { [self] in
            for delay in [250, 1000, 4000] {
                try? await Task.sleep(for: .milliseconds(delay))
                if (try? await releaseLock(lock)) == true { return }
            }
        }
    }

    public func acquireLock(_ key: String, ttl: Duration, thenGet readKey: String) async throws(StoreError)
        -> (lock: StoreLock?, value: ByteBuffer?)
    {
        let token = MemoryStore.randomToken()
        let reply: RESPValue
        do {
            reply = try await client.evaluate(
                Self.lockThenGet, keys: [RedisArgument(k(key)), RedisArgument(k(readKey))],
                arguments: [RedisArgument(token), RedisArgument(max(1, Self.ms(ttl)))])
        } catch {
            releaseAbandoned(StoreLock(key: key, token: token), after: error)
            throw Self.map(error)
        }
        guard case .array(let items) = reply, let first = items.first else {
            throw StoreError(.backend, "the lock script gave an unexpected reply")
        }
        guard first == .integer(1) else { return (nil, nil) }
        let lock = StoreLock(key: key, token: token)
        if items.count > 1, case .bulkString(let value) = items[1] { return (lock, value) }
        return (lock, nil)
    }

    public func readOrLock(_ readKey: String, lock key: String, ttl: Duration, reserving: RateReservation?)
        async throws(StoreError) -> ReadOrLock
    {
        try await readOrLock(readKey, lock: key, ttl: ttl, reserving: reserving, staleAfter: true)
    }

    /// How long after it is sent a read-or-lock or rate-limit call may still act (``readOrLock``'s `ARGV[6]`,
    /// ``gcra``'s `ARGV[5]`): the command's own timeout, and a second for the difference between this host's clock
    /// and Redis's.
    public var staleMargin: Duration { client.configuration.commandTimeout + .seconds(1) }

    /// The Unix time in ms after which a call sent now is stale (``staleMargin``).
    private func notAfter() -> Int64 {
        Int64(now().timeIntervalSince1970 * 1000) + Int64(Self.ms(staleMargin))
    }

    private func readOrLock(_ readKey: String, lock key: String, ttl: Duration, reserving: RateReservation?,
                            staleAfter: Bool) async throws(StoreError) -> ReadOrLock
    {
        let token = MemoryStore.randomToken()
        var keys = [RedisArgument(k(readKey)), RedisArgument(k(key))]
        var args = [RedisArgument(token), RedisArgument(max(1, Self.ms(ttl)))]
        if let r = reserving {
            keys.append(RedisArgument(k(r.key)))
            args += [RedisArgument(integer: r.limit.intervalMicroseconds), RedisArgument(r.limit.burst),
                     RedisArgument(integer: max(0, Self.micros(r.maxWait)))]
        } else if staleAfter {
            args += [RedisArgument(0), RedisArgument(0), RedisArgument(0)]  // ARGV[3…5] unread without a slot
        }
        if staleAfter { args.append(RedisArgument(integer: notAfter())) }
        let reply: RESPValue
        do { reply = try await client.evaluate(Self.readOrLock, keys: keys, arguments: args) } catch {
            releaseAbandoned(StoreLock(key: key, token: token), after: error)
            throw Self.map(error)
        }
        if case .array(let items) = reply, items.first == .integer(3) {
            // Answered in time, yet stale by Redis's clock: the clocks differ by more than the margin. The call is
            // made again without the check (an outage for want of synchronised clocks would be worse).
            guard staleAfter else { throw StoreError(.backend, "the read-or-lock script gave an unexpected reply") }
            return try await readOrLock(readKey, lock: key, ttl: ttl, reserving: reserving, staleAfter: false)
        }
        guard case .array(let items) = reply, case .integer(let state)? = items.first else {
            throw StoreError(.backend, "the read-or-lock script gave an unexpected reply")
        }
        switch state {
        case 2:
            guard items.count == 2, case .bulkString(let value) = items[1] else { break }
            return .value(value)
        case 0:
            return .busy
        case 1:
            let lock = StoreLock(key: key, token: token)
            if items.count == 1 { return .locked(lock, slot: nil) }
            guard items.count == 3, case .integer(let allowed) = items[1], case .integer(let wait) = items[2] else {
                break
            }
            return .locked(lock, slot: allowed == 1 ? .allowed(after: .microseconds(wait))
                                                    : .denied(retryAfter: .microseconds(wait)))
        default:
            break
        }
        throw StoreError(.backend, "the read-or-lock script gave an unexpected reply")
    }

    public func renewLock(_ lock: StoreLock, ttl: Duration) async throws(StoreError) -> Bool {
        let token = ByteBuffer(string: lock.token)
        return try await compareAndSet(lock.key, expected: token, newValue: token, ttl: ttl)
    }

    @discardableResult
    public func releaseLock(_ lock: StoreLock) async throws(StoreError) -> Bool {
        try await compareAndSet(lock.key, expected: ByteBuffer(string: lock.token), newValue: nil, ttl: nil)
    }

    /// Like ``readOrLock``, the call carries the time after which it is stale: one that timed out while Redis
    /// stalled, and that Redis runs when it resumes, books nothing (every caller whose call timed out was answered
    /// with an error; slots booked for them would make later callers wait, or refuse them, for KIS calls never made).
    public func rateLimit(_ key: String, limit: RateLimit, cost: Int, maxWait: Duration) async throws(StoreError)
        -> RateLimitDecision
    {
        try await rateLimit(key, limit: limit, cost: cost, maxWait: maxWait, staleAfter: true)
    }

    private func rateLimit(_ key: String, limit: RateLimit, cost: Int, maxWait: Duration, staleAfter: Bool)
        async throws(StoreError) -> RateLimitDecision
    {
        let maxWaitMicros = Self.micros(maxWait)
        var args: [RedisArgument] = [
            RedisArgument(integer: limit.intervalMicroseconds), RedisArgument(limit.burst), RedisArgument(cost),
            RedisArgument(integer: max(0, maxWaitMicros)),
        ]
        if staleAfter { args.append(RedisArgument(integer: notAfter())) }
        let reply: RESPValue
        do { reply = try await client.evaluate(Self.gcra, keys: [RedisArgument(k(key))], arguments: args) } catch {
            throw Self.map(error)
        }
        if reply == .array([.integer(3)]) {
            // Answered in time, yet stale by Redis's clock: the clocks differ by more than the margin. The call is
            // made again without the check, as a read-or-lock is.
            guard staleAfter else { throw StoreError(.backend, "the rate-limit script gave an unexpected reply") }
            return try await rateLimit(key, limit: limit, cost: cost, maxWait: maxWait, staleAfter: false)
        }
        guard case .array(let parts) = reply, parts.count == 2, case .integer(let allowed) = parts[0],
            case .integer(let wait) = parts[1]
        else { throw StoreError(.backend, "the rate-limit script gave an unexpected reply") }
        return allowed == 1 ? .allowed(after: .microseconds(wait)) : .denied(retryAfter: .microseconds(wait))
    }

    public func publish(_ message: ByteBuffer, to channel: String) async throws(StoreError) {
        do { _ = try await client.publish(RedisArgument(message), to: k(channel)) } catch { throw Self.map(error) }
    }

    public func delete(_ key: String, removing member: String, from setKey: String, announcing message: ByteBuffer,
                       on channel: String) async throws(StoreError)
    {
        do {
            _ = try await client.evaluate(
                Self.deleteAndAnnounce, keys: [RedisArgument(k(key)), RedisArgument(k(setKey))],
                arguments: [RedisArgument(member), RedisArgument(k(channel)), RedisArgument(message)])
        } catch { throw Self.map(error) }
    }

    public func subscriptionGaps() -> AsyncStream<Void> { client.subscriptionRestorations() }

    public func subscribe(to channel: String) async throws(StoreError) -> StoreSubscription {
        do {
            let subscription = try await client.subscribe(to: [k(channel)])
            return StoreSubscription(source: .redis(subscription), losses: subscription.losses)
        } catch {
            throw Self.map(error)
        }
    }
}
