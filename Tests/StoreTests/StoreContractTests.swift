import Foundation
import KIS
import NIOCore
import Redis
import Store
import Synchronization
import Testing
import TestSupport
import Tokens

/// The `SharedStore` contract, run against every implementation.
@Suite("SharedStore contract", .timeLimit(.minutes(2)))
struct StoreContractTests {
    @Test(arguments: Backend.allCases)
    func valuesWithExpiry(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        #expect(try await store.get("a") == nil)
        try await store.set("a", to: ByteBuffer(string: "one"), ttl: nil)
        #expect(try await store.get("a")?.text == "one")
        #expect(try await store.timeToLive("a") == .persistent)
        try await store.set("a", to: ByteBuffer(string: "two"), ttl: .seconds(30))
        #expect(try await store.get("a")?.text == "two")
        guard case .expiresIn(let ttl) = try await store.timeToLive("a") else {
            Issue.record("expected an expiry")
            return
        }
        #expect(ttl > .seconds(20) && ttl <= .seconds(30))
        try await store.set("short", to: ByteBuffer(string: "x"), ttl: .milliseconds(80))
        #expect(await eventually(every: .milliseconds(25)) { (try? await store.get("short")) == .some(nil) })
        #expect(try await store.timeToLive("short") == .missing)
        #expect(try await store.delete("a"))
        #expect(try await store.delete("a") == false)
        #expect(try await store.get("a") == nil)
        await close()
    }

    @Test(arguments: Backend.allCases)
    func binaryValues(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        let bytes: [UInt8] = Array(0...255) + [13, 10, 0]
        try await store.set("bin", to: ByteBuffer(bytes: bytes), ttl: .seconds(30))
        #expect(try await store.get("bin").map { Array($0.readableBytesView) } == bytes)
        try await store.set("empty", to: ByteBuffer(), ttl: .seconds(30))
        #expect(try await store.get("empty")?.readableBytes == 0)
        await close()
    }

    @Test(arguments: Backend.allCases)
    func setIfAbsent(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        // Long enough that a loaded machine still reads it back before it expires.
        #expect(try await store.setIfAbsent("k", to: ByteBuffer(string: "first"), ttl: .seconds(2)))
        #expect(try await store.setIfAbsent("k", to: ByteBuffer(string: "second"), ttl: nil) == false)
        #expect(try await store.get("k")?.text == "first")
        // Once expired the key is absent again.
        #expect(await eventually(every: .milliseconds(25)) { (try? await store.setIfAbsent("k", to: ByteBuffer(string: "third"), ttl: nil)) == true })
        #expect(try await store.get("k")?.text == "third")
        await close()
    }

    @Test(arguments: Backend.allCases)
    func compareAndSet(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        let a = ByteBuffer(string: "a")
        let b = ByteBuffer(string: "b")
        #expect(try await store.compareAndSet("c", expected: a, newValue: b, ttl: nil) == false)
        #expect(try await store.compareAndSet("c", expected: nil, newValue: a, ttl: nil))
        #expect(try await store.compareAndSet("c", expected: nil, newValue: b, ttl: nil) == false)
        #expect(try await store.compareAndSet("c", expected: b, newValue: a, ttl: nil) == false)
        #expect(try await store.compareAndSet("c", expected: a, newValue: b, ttl: .seconds(30)))
        #expect(try await store.get("c")?.text == "b")
        guard case .expiresIn = try await store.timeToLive("c") else {
            Issue.record("compareAndSet with a ttl must set an expiry")
            return
        }
        #expect(try await store.compareAndSet("c", expected: b, newValue: nil, ttl: nil))
        #expect(try await store.get("c") == nil)
        await close()
    }

    @Test(arguments: Backend.allCases)
    func compareAndSetIsAtomicUnderContention(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        try await store.set("counter", to: ByteBuffer(string: "0"), ttl: .seconds(60))
        // 20 tasks each add 10 by CAS retries; no update may be lost.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<20 {
                group.addTask {
                    for _ in 0..<10 {
                        while true {
                            let current = try await store.get("counter")!
                            let next = ByteBuffer(string: String(Int(current.text)! + 1))
                            if try await store.compareAndSet("counter", expected: current, newValue: next, ttl: .seconds(60)) { break }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try await store.get("counter")?.text == "200")
        await close()
    }

    @Test(arguments: Backend.allCases)
    func lockThenGet(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        // Free lock, nothing stored: the lock and no value.
        let first = try await store.acquireLock("lock:x", ttl: .seconds(30), thenGet: "value:x")
        let lock = try #require(first.lock)
        #expect(first.value == nil)
        // Held: neither lock nor value, even once a value exists.
        try await store.set("value:x", to: ByteBuffer(string: "filled"), ttl: .seconds(30))
        let second = try await store.acquireLock("lock:x", ttl: .seconds(30), thenGet: "value:x")
        #expect(second.lock == nil && second.value == nil)
        // The holder wrote, then released: the next taker sees what was written.
        #expect(try await store.releaseLock(lock))
        let third = try await store.acquireLock("lock:x", ttl: .seconds(30), thenGet: "value:x")
        #expect(third.lock != nil && third.lock?.token != lock.token)
        #expect(third.value?.text == "filled")
        // The lock it took is a real one, with its TTL.
        guard case .expiresIn(let ttl) = try await store.timeToLive("lock:x") else {
            Issue.record("the lock must expire")
            return
        }
        #expect(ttl > .seconds(20))
        #expect(try await store.releaseLock(try #require(third.lock)))
        await close()
    }

    @Test(arguments: Backend.allCases)
    func locks(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        let lock = try #require(try await store.acquireLock("lock", ttl: .seconds(30)))
        #expect(try await store.acquireLock("lock", ttl: .seconds(30)) == nil)
        let impostor = StoreLock(key: "lock", token: "not-the-owner")
        #expect(try await store.releaseLock(impostor) == false)
        #expect(try await store.renewLock(impostor, ttl: .seconds(30)) == false)
        #expect(try await store.renewLock(lock, ttl: .seconds(60)))
        guard case .expiresIn(let ttl) = try await store.timeToLive("lock") else {
            Issue.record("a lock must expire")
            return
        }
        #expect(ttl > .seconds(40))
        #expect(try await store.releaseLock(lock))
        #expect(try await store.releaseLock(lock) == false)
        // An expired lock can be taken by someone else, and the old owner cannot release it.
        let short = try #require(try await store.acquireLock("lock", ttl: .milliseconds(80)))
        var next: StoreLock?
        #expect(await eventually(every: .milliseconds(25)) {
            next = try? await store.acquireLock("lock", ttl: .seconds(30))
            return next != nil
        })
        #expect(next?.token != short.token)
        #expect(try await store.releaseLock(short) == false)
        #expect(try await store.releaseLock(try #require(next)))
        await close()
    }

    @Test(arguments: Backend.allCases)
    func lockHasOneWinner(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        let winners = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<50 {
                group.addTask { try await store.acquireLock("race", ttl: .seconds(30)) == nil ? 0 : 1 }
            }
            return try await group.reduce(0, +)
        }
        #expect(winners == 1)
        await close()
    }

    @Test(arguments: Backend.allCases)
    func sets(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        #expect(try await store.setMembers("s").isEmpty)
        #expect(try await store.setAdd("s", members: ["a", "b"], ttlAtLeast: nil) == 2)
        #expect(try await store.setAdd("s", members: ["b", "c"], ttlAtLeast: nil) == 1)
        #expect(try await store.setMembers("s") == ["a", "b", "c"])
        #expect(try await store.timeToLive("s") == .persistent)
        #expect(try await store.setRemove("s", members: ["a", "zzz"]) == 1)
        #expect(try await store.setMembers("s") == ["b", "c"])
        #expect(try await store.setRemove("s", members: ["b", "c"]) == 2)
        #expect(try await store.timeToLive("s") == .missing)
        // ttlAtLeast: a new set expires; the expiry is extended, never shortened.
        #expect(try await store.setAdd("t", members: ["x"], ttlAtLeast: .seconds(30)) == 1)
        guard case .expiresIn(let first) = try await store.timeToLive("t") else {
            Issue.record("a set created with ttlAtLeast must expire")
            return
        }
        #expect(first > .seconds(20) && first <= .seconds(30))
        try await store.setAdd("t", members: ["y"], ttlAtLeast: .seconds(5))
        guard case .expiresIn(let unchanged) = try await store.timeToLive("t") else {
            Issue.record("expiry lost")
            return
        }
        #expect(unchanged > .seconds(20))
        try await store.setAdd("t", members: ["z"], ttlAtLeast: .seconds(120))
        guard case .expiresIn(let extended) = try await store.timeToLive("t") else {
            Issue.record("expiry lost")
            return
        }
        #expect(extended > .seconds(100))
        #expect(try await store.setAdd("u", members: ["x"], ttlAtLeast: .milliseconds(80)) == 1)
        #expect(await eventually(every: .milliseconds(25)) { (try? await store.setMembers("u")) == .some([]) })
        #expect(try await store.delete("t"))
        await close()
    }

    /// Before, Redis compared SADD's count with the number of members given: a new set given a member twice was
    /// added fewer than given and kept no expiry (the memory store gave it one).
    @Test(arguments: Backend.allCases)
    func aNewSetGivenARepeatedMemberExpires(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        #expect(try await store.setAdd("dup", members: ["a", "a"], ttlAtLeast: .seconds(60)) == 1)
        guard case .expiresIn(let ttl) = try await store.timeToLive("dup") else {
            Issue.record("a set created with ttlAtLeast and a repeated member must expire")
            await close()
            return
        }
        #expect(ttl > .seconds(50) && ttl <= .seconds(60))
        // An existing persistent set stays persistent, repeated members or not.
        #expect(try await store.setAdd("kept", members: ["x"], ttlAtLeast: nil) == 1)
        #expect(try await store.setAdd("kept", members: ["y", "y"], ttlAtLeast: .seconds(60)) == 1)
        #expect(try await store.timeToLive("kept") == .persistent)
        await close()
    }

    @Test(arguments: Backend.allCases)
    func readOrLock(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        // Nothing stored, lock free: the lock, no slot asked for, none given.
        let first = try await store.readOrLock("value:r", lock: "lock:r", ttl: .seconds(30), reserving: nil)
        guard case .locked(let lock, let slot) = first else {
            Issue.record("expected the lock, got \(first)")
            return
        }
        #expect(slot == nil)
        guard case .expiresIn(let ttl) = try await store.timeToLive("lock:r") else {
            Issue.record("the lock must expire")
            return
        }
        #expect(ttl > .seconds(20))
        // Held by somebody else, still nothing stored: busy.
        #expect(try await store.readOrLock("value:r", lock: "lock:r", ttl: .seconds(30), reserving: nil) == .busy)
        // A value wins over the lock, held or not, and takes nothing.
        try await store.set("value:r", to: ByteBuffer(string: "filled"), ttl: .seconds(30))
        #expect(try await store.readOrLock("value:r", lock: "lock:r", ttl: .seconds(30), reserving: nil)
                == .value(ByteBuffer(string: "filled")))
        #expect(try await store.releaseLock(lock))
        #expect(try await store.readOrLock("value:r", lock: "lock:r", ttl: .seconds(30), reserving: nil)
                == .value(ByteBuffer(string: "filled")))
        #expect(try await store.timeToLive("lock:r") == .missing)
        await close()
    }

    @Test(arguments: Backend.allCases)
    func readOrLockReservesARateSlot(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        // One per 10 s (slow, so a loaded machine cannot change the answers).
        let limit = RateLimit(rate: 0.1, burst: 1)
        let now = RateReservation(key: "rl:r", limit: limit, maxWait: .zero)
        // The first taker gets the lock and the slot, at once.
        let first = try await store.readOrLock("value:a", lock: "lock:a", ttl: .seconds(30), reserving: now)
        guard case .locked(_, let slot) = first else {
            Issue.record("expected the lock, got \(first)")
            return
        }
        #expect(slot == .allowed(after: .zero))
        // The slot counts for the plain rate limiter too.
        #expect(try await store.rateLimit("rl:r", limit: limit, cost: 1, maxWait: .zero).isAllowed == false)
        // Another key's lock, same app key, unwilling to wait: the lock, and a denial that reserves nothing.
        let second = try await store.readOrLock("value:b", lock: "lock:b", ttl: .seconds(30), reserving: now)
        guard case .locked(_, .denied(let retryAfter)?) = second else {
            Issue.record("expected the lock and a denied slot, got \(second)")
            return
        }
        #expect(retryAfter > .zero && retryAfter <= .seconds(10))
        // Willing to wait: reserved, about one interval out (a denial above would have pushed it to two).
        let patient = RateReservation(key: "rl:r", limit: limit, maxWait: .seconds(60))
        let third = try await store.readOrLock("value:c", lock: "lock:c", ttl: .seconds(30), reserving: patient)
        guard case .locked(_, .allowed(let wait)?) = third else {
            Issue.record("expected the lock and a reserved slot, got \(third)")
            return
        }
        #expect(wait > .zero && wait <= .seconds(10))
        // Busy or answered from the value: no slot is taken.
        #expect(try await store.readOrLock("value:c", lock: "lock:c", ttl: .seconds(30), reserving: patient) == .busy)
        try await store.set("value:d", to: ByteBuffer(string: "x"), ttl: .seconds(30))
        #expect(try await store.readOrLock("value:d", lock: "lock:d", ttl: .seconds(30), reserving: patient)
                == .value(ByteBuffer(string: "x")))
        let next = try await store.rateLimit("rl:r", limit: limit, cost: 1, maxWait: .seconds(60))
        guard case .allowed(let nextWait) = next else {
            Issue.record("expected a reservation, got \(next)")
            return
        }
        #expect(nextWait > wait && nextWait - wait <= .seconds(11))
        await close()
    }

    @Test(arguments: Backend.allCases)
    func rateLimitDecisions(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        // One per 10 s, bursts of two: two go now, the third must wait up to 10 s. (A slow interval, so that a
        // loaded machine taking its time between the calls does not change the answers.)
        let limit = RateLimit(rate: 0.1, burst: 2)
        #expect(try await store.rateLimit("rl", limit: limit, cost: 1, maxWait: .zero) == .allowed(after: .zero))
        #expect(try await store.rateLimit("rl", limit: limit, cost: 1, maxWait: .zero) == .allowed(after: .zero))
        let denied = try await store.rateLimit("rl", limit: limit, cost: 1, maxWait: .zero)
        guard case .denied(let retryAfter) = denied else {
            Issue.record("third request in a burst of two must be denied, got \(denied)")
            return
        }
        #expect(retryAfter > .zero && retryAfter <= .seconds(10))
        // Willing to wait: a slot is reserved and the wait returned.
        let reserved = try await store.rateLimit("rl", limit: limit, cost: 1, maxWait: .seconds(60))
        guard case .allowed(let wait) = reserved else {
            Issue.record("a caller willing to wait 60 s must get a reservation, got \(reserved)")
            return
        }
        #expect(wait > .zero && wait <= .seconds(10))
        // The reservation counts: the next one waits about ten seconds longer.
        let after = try await store.rateLimit("rl", limit: limit, cost: 1, maxWait: .seconds(60))
        guard case .allowed(let laterWait) = after else {
            Issue.record("expected a second reservation, got \(after)")
            return
        }
        #expect(laterWait > wait)
        #expect(laterWait - wait > .seconds(5))
        // A separate key has its own budget.
        #expect(try await store.rateLimit("other", limit: limit, cost: 1, maxWait: .zero).isAllowed)
        await close()
    }

    /// A negative maxWait (a caller's deadline already passed: `waitForRateLimit` computes it as time remaining) is a
    /// maxWait of zero on both stores: a request that conforms now is allowed at once, one that would wait is denied
    /// with the time it would wait, and nothing is booked by the denial. `RedisStore` sends it as zero; the memory
    /// store passed it to GCRA as is, and denied every request, one that conformed now included, with a retry after
    /// of zero (a caller retrying at once was denied again, for ever).
    @Test(arguments: Backend.allCases)
    func negativeMaxWaitIsZero(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        // One per 10 s, bursts of two (slow, so a loaded machine cannot change the answers).
        let limit = RateLimit(rate: 0.1, burst: 2)
        let past: Duration = .milliseconds(-250)
        #expect(try await store.rateLimit("neg", limit: limit, cost: 1, maxWait: past) == .allowed(after: .zero),
                "\(backend)")
        #expect(try await store.rateLimit("neg", limit: limit, cost: 1, maxWait: .seconds(-30)) == .allowed(after: .zero),
                "\(backend)")
        let denied = try await store.rateLimit("neg", limit: limit, cost: 1, maxWait: past)
        guard case .denied(let retryAfter) = denied else {
            Issue.record("the third in a burst of two must be denied on \(backend), got \(denied)")
            return
        }
        #expect(retryAfter > .seconds(5) && retryAfter <= .seconds(10), "\(backend)")
        // The denial booked nothing: the next caller willing to wait gets the slot the denied one was told of.
        guard case .allowed(let wait) = try await store.rateLimit("neg", limit: limit, cost: 1, maxWait: .seconds(60)) else {
            Issue.record("a caller willing to wait must get a reservation on \(backend)")
            return
        }
        #expect(wait <= retryAfter && wait > .seconds(5), "\(backend)")
        // A slot reserved by read-or-lock reads a negative maxWait the same way.
        let reservation = RateReservation(key: "neg:r", limit: limit, maxWait: past)
        let locked = try await store.readOrLock("neg:value", lock: "neg:lock", ttl: .seconds(30), reserving: reservation)
        guard case .locked(_, let slot) = locked else {
            Issue.record("expected the lock on \(backend), got \(locked)")
            return
        }
        #expect(slot == .allowed(after: .zero), "\(backend)")
        await close()
    }

    /// store.md: the memory store "behaves the same" as Redis. A rate-limit key holding what is not a theoretical
    /// arrival time (whole microseconds) — written by hand or by another program — counts as absent on both, and the
    /// decision replaces it. Before, the Lua script failed on it (`tonumber` gave nil or NaN, or GET met a set), so
    /// every miss of that app key was a 503 on Redis, while the memory store went on.
    @Test(arguments: Backend.allCases)
    func rateLimitKeyHoldingJunk(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        let limit = RateLimit(rate: 0.1, burst: 1)  // one per 10 s: a second decision right after is denied
        for (i, junk) in ["garbage", "", "12abc", "1.5", "1e300", "nan", "inf", " 42", "99999999999999999999"].enumerated() {
            let key = "rl:junk\(i)"
            try await store.set(key, to: ByteBuffer(string: junk), ttl: .seconds(60))
            #expect(try await store.rateLimit(key, limit: limit, cost: 1, maxWait: .zero) == .allowed(after: .zero),
                    "\(backend) with \(junk.debugDescription)")
            // The slot taken replaced it with a time: the next one waits.
            #expect(try await store.rateLimit(key, limit: limit, cost: 1, maxWait: .zero).isAllowed == false,
                    "\(backend) with \(junk.debugDescription)")
        }
        // The slot reserved with a lock, the same.
        try await store.set("rl:lock", to: ByteBuffer(string: "garbage"), ttl: .seconds(60))
        let step = try await store.readOrLock("value:junk", lock: "lock:junk", ttl: .seconds(30),
                                              reserving: RateReservation(key: "rl:lock", limit: limit, maxWait: .zero))
        guard case .locked(_, let slot) = step else {
            Issue.record("\(backend): expected the lock, got \(step)")
            return
        }
        #expect(slot == .allowed(after: .zero), "\(backend)")
        // A key of another type (a set).
        try await store.setAdd("rl:set", members: ["x"], ttlAtLeast: .seconds(60))
        #expect(try await store.rateLimit("rl:set", limit: limit, cost: 1, maxWait: .zero) == .allowed(after: .zero),
                "\(backend)")
        #expect(try await store.rateLimit("rl:set", limit: limit, cost: 1, maxWait: .zero).isAllowed == false, "\(backend)")
        await close()
    }

    @Test(arguments: Backend.allCases)
    func rateLimitIsSharedAcrossConcurrentCallers(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        // 1 per 10 s with a burst of 5: of 40 simultaneous callers exactly 5 pass.
        let limit = RateLimit(rate: 0.1, burst: 5)
        let allowed = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<40 {
                group.addTask { try await store.rateLimit("shared", limit: limit, cost: 1, maxWait: .zero).isAllowed ? 1 : 0 }
            }
            return try await group.reduce(0, +)
        }
        #expect(allowed == 5)
        await close()
    }

    @Test(arguments: Backend.allCases)
    func waitForRateLimitQueuesUntilDeadline(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        let limit = RateLimit(rate: 20, burst: 1)
        for _ in 0..<3 {
            #expect(try await store.waitForRateLimit("q", limit: limit, deadline: .now + .seconds(10)))
        }
        let slow = RateLimit(rate: 0.01, burst: 1)
        #expect(try await store.waitForRateLimit("slow", limit: slow, deadline: .now + .seconds(5)))
        // The next slot is 100 s away: not before a 1 s deadline.
        #expect(try await store.waitForRateLimit("slow", limit: slow, deadline: .now + .seconds(1)) == false)
        await close()
    }

    @Test(arguments: Backend.allCases)
    func publishSubscribe(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        let first = try await store.subscribe(to: "events")
        let second = try await store.subscribe(to: "events")
        let other = try await store.subscribe(to: "elsewhere")
        try await store.publish(ByteBuffer(string: "hello"), to: "events")
        var firstIterator = first.makeAsyncIterator()
        var secondIterator = second.makeAsyncIterator()
        #expect(await firstIterator.next()?.text == "hello")
        #expect(await secondIterator.next()?.text == "hello")
        try await store.publish(ByteBuffer(string: "there"), to: "elsewhere")
        var otherIterator = other.makeAsyncIterator()
        #expect(await otherIterator.next()?.text == "there")
        try await store.publish(ByteBuffer(bytes: [0, 255, 13, 10]), to: "events")
        #expect(await firstIterator.next().map { Array($0.readableBytesView) } == [0, 255, 13, 10])
        await close()
    }

    /// A subscription whose reader falls more than 4096 behind loses the oldest and says how many (`lostMessages`),
    /// whichever the store; one that keeps up loses none. (The gateway drops its token decisions on such a loss of
    /// `revoked` events.)
    @Test(arguments: Backend.allCases)
    func aSubscriptionCountsWhatItLost(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        let behind = try await store.subscribe(to: "busy")
        let reading = try await store.subscribe(to: "busy")
        let read = Mutex(0)
        let reader = Task { for await _ in reading { read.withLock { $0 += 1 } } }
        // In batches the reading subscription keeps up with (the memory store's publish never waits for a reader).
        for batch in 0..<7 {
            for n in batch * 600..<(batch + 1) * 600 { try await store.publish(ByteBuffer(string: "m\(n)"), to: "busy") }
            #expect(await eventually(every: .milliseconds(25)) { read.withLock { $0 } == (batch + 1) * 600 })
        }
        #expect(behind.lostMessages == 4_200 - 4_096)
        #expect(reading.lostMessages == 0)
        var iterator = behind.makeAsyncIterator()
        #expect(await iterator.next()?.text == "m104")
        reader.cancel()
        await close()
    }
}

/// Behaviour only the Redis implementation can show.
@Suite("RedisStore", .timeLimit(.minutes(2)))
struct RedisStoreTests {
    @Test func scriptsSurviveScriptFlush() async throws {
        let (store, close) = try Backend.redis.makeStore()
        let redisStore = try #require(store as? RedisStore)
        #expect(try await store.rateLimit("rl", limit: RateLimit(rate: 100, burst: 10), cost: 1, maxWait: .zero).isAllowed)
        let lock = try #require(try await store.acquireLock("l", ttl: .seconds(30)))
        _ = try await redisStore.client.send(["SCRIPT", "FLUSH"])
        // Every script reloads transparently after NOSCRIPT.
        #expect(try await store.rateLimit("rl", limit: RateLimit(rate: 100, burst: 10), cost: 1, maxWait: .zero).isAllowed)
        #expect(try await store.renewLock(lock, ttl: .seconds(30)))
        #expect(try await store.setAdd("s", members: ["a"], ttlAtLeast: .seconds(30)) == 1)
        #expect(try await store.releaseLock(lock))
        await close()
    }

    /// An error reply is Redis refusing the command, not Redis out of reach: ``StoreError/Code/refused`` with Redis's
    /// error code (the gateway's 503 detail and its log line tell the two apart).
    @Test func errorRepliesAreRefusals() async throws {
        let (store, close) = try Backend.redis.makeStore()
        try await store.setAdd("a-set", members: ["x"], ttlAtLeast: .seconds(30))
        do {
            _ = try await store.get("a-set")
            Issue.record("GET of a set succeeded")
        } catch {
            #expect(error.code == .refused)
            #expect(error.refusal == "WRONGTYPE")
            #expect(error.message.hasPrefix("Redis refused the command: WRONGTYPE "), "\(error)")
        }
        await close()
    }

    @Test func keysCarryThePrefixInRedis() async throws {
        let (store, close) = try Backend.redis.makeStore()
        let redisStore = try #require(store as? RedisStore)
        try await store.set("visible", to: ByteBuffer(string: "v"), ttl: .seconds(30))
        #expect(try await redisStore.client.getString(store.keyPrefix + "visible") == "v")
        #expect(try await redisStore.client.get("visible") == nil)
        await close()
    }

    /// store.md: gateways "drop them on `revoked` at once". Unpublishing was three commands — DEL, SREM, PUBLISH —
    /// and a failure after the DEL (here: a user the server refuses PUBLISH to) left the record gone and no event
    /// sent, for good: the reconciler finishes an unpublish only while the record is there. Now it is one script
    /// that does all of it or nothing.
    @Test func unpublishIsAllOrNothing() async throws {
        let (admin, close) = try Backend.redis.makeStore()
        let adminClient = try #require(admin as? RedisStore).client
        let user = "kisgw-nopub-\(UUID().uuidString.prefix(8).lowercased())", password = UUID().uuidString
        _ = try await adminClient.send(["ACL", "SETUSER", RedisArgument(user), "on", RedisArgument(">" + password),
                                        "~*", "&*", "+@all", "-publish"])
        var url = try #require(URLComponents(string: TestServices.requireRedisURL()))
        (url.user, url.password) = (user, password)
        var configuration = try RedisConfiguration(url: try #require(url.string))
        configuration.commandTimeout = .seconds(10)
        let restrictedClient = RedisClient(configuration: configuration, logger: Backend.logger)
        let restricted = RedisStore(client: restrictedClient, keyPrefix: admin.keyPrefix)

        let sha = TokenDirectory.sha256(of: "a-token"), record = TokenDirectory.recordKey(sha)
        let userKey = TokenDirectory.userKey("42", .sandbox)
        try await admin.set(record, to: ByteBuffer(string: "sealed"), ttl: .seconds(60))
        try await admin.setAdd(userKey, members: [sha], ttlAtLeast: .seconds(60))
        await #expect(throws: StoreError.self) {
            try await TokenDirectory.unpublish(sha256: sha, userID: "42", environment: .sandbox, store: restricted)
        }
        // Nothing happened: the record stays for the broker's reconciler to unpublish again.
        #expect(try await admin.get(record) != nil)
        #expect(try await admin.setMembers(userKey) == [sha])

        // With PUBLISH allowed, all of it.
        try await TokenDirectory.unpublish(sha256: sha, userID: "42", environment: .sandbox, store: admin)
        #expect(try await admin.get(record) == nil)
        #expect(try await admin.setMembers(userKey).isEmpty)

        _ = try await adminClient.send(["ACL", "DELUSER", RedisArgument(user)])
        await restrictedClient.shutdown()
        await close()
    }

    @Test func rateLimitIsSharedBetweenTwoClients() async throws {
        // Two "gateways" (separate clients, same prefix) draw from one budget.
        let (first, closeFirst) = try Backend.redis.makeStore()
        var configuration = try RedisConfiguration(url: TestServices.requireRedisURL())
        configuration.commandTimeout = .seconds(10)
        let otherClient = RedisClient(configuration: configuration, logger: Backend.logger)
        let second = RedisStore(client: otherClient, keyPrefix: first.keyPrefix)
        let limit = RateLimit(rate: 0.1, burst: 4)
        var allowed = 0
        for store in [first, second, first, second, first, second] {
            if try await store.rateLimit("app", limit: limit, cost: 1, maxWait: .zero).isAllowed { allowed += 1 }
        }
        #expect(allowed == 4)
        await otherClient.shutdown()
        await closeFirst()
    }
}
