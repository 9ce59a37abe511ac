import Foundation
import NIOCore
import Redis
import Store
import Testing
import TestSupport

/// A lock call that fails may still take the lock (a command that timed out still runs when Redis gets to it): the
/// store releases such a lock by its token over the next seconds. A call that never left — no connection to send it
/// on — took nothing, and nothing is sent for it. Each test runs a `redis-server` of its own, which it stalls (SIGSTOP)
/// or stops.
@Suite("Redis store: locks of failed lock calls", .serialized, .timeLimit(.minutes(1)))
struct AbandonedLockTests {
    /// A store whose commands time out after 200 ms; `clock` is this host's (for a stale call's time).
    static func store(_ server: RedisServerProcess, clock: @escaping @Sendable () -> Date = { Date() }) throws
        -> (RedisStore, RedisClient)
    {
        var configuration = try RedisConfiguration(url: server.url)
        configuration.commandTimeout = .milliseconds(200)
        let client = RedisClient(configuration: configuration, logger: Backend.logger)
        return (RedisStore(client: client, keyPrefix: "abandon-\(UUID().uuidString):", clock: clock), client)
    }

    /// Whether a read-or-lock of `entry` takes the lock `lock` and a slot of `rate` now.
    static func takesLockAndSlot(_ store: RedisStore, _ rate: RateReservation) async throws -> Bool {
        guard case .locked(_, let slot) = try await store.readOrLock("entry", lock: "lock", ttl: .seconds(60), reserving: rate),
            case .allowed = slot
        else { return false }
        return true
    }

    /// Calls of `names` (`set`, `evalsha`, `eval`) the server ran, from `INFO commandstats`.
    static func calls(_ server: RedisServerProcess, _ names: [String]) async throws -> Int {
        let admin = RedisClient(configuration: try RedisConfiguration(url: server.url), logger: Backend.logger)
        defer { Task { await admin.shutdown() } }
        guard case .bulkString(let info) = try await admin.send(["INFO", "commandstats"]) else { return -1 }
        var total = 0
        for line in String(buffer: info).split(whereSeparator: \.isNewline) {
            for name in names where line.hasPrefix("cmdstat_\(name):calls=") {
                total += Int(line.dropFirst("cmdstat_\(name):calls=".count).prefix { $0.isNumber }) ?? 0
            }
        }
        return total
    }

    @Test("a lock call that timed out while Redis stalled: the lock it took is released once Redis answers")
    func timedOutLockIsReleased() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let (store, client) = try Self.store(server)
        #expect(try await store.get("warm") == nil)  // connected
        server.pause()
        do {
            _ = try await store.acquireLock("chart", ttl: .seconds(60))
            Issue.record("the lock call did not fail")
        } catch {
            #expect(error.code == .timeout, "\(error)")
        }
        try await Task.sleep(for: .milliseconds(100))
        server.resume()
        // The SET ran when Redis resumed (the lock was taken, for 60 s), then a release by its token took it away.
        let released = try await eventually(timeout: .seconds(8)) {
            guard try await Self.calls(server, ["set"]) >= 1 else { return false }
            guard try await store.get("chart") == nil else { return false }
            return try await Self.calls(server, ["evalsha", "eval"]) >= 1
        }
        #expect(released, "the abandoned lock is still held")
        await client.shutdown()
    }

    /// Before, the script ran when Redis resumed and booked the app key's slot: after a stall under load every
    /// gateway's next misses waited or were refused (429) for slots no KIS call used.
    @Test("a read-or-lock that timed out while Redis stalled books no KIS rate slot and takes no lock when Redis resumes")
    func staleReadOrLockBooksNothing() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let (store, client) = try Self.store(server)
        let rate = RateReservation(key: "rl:stale", limit: RateLimit(rate: 1, burst: 1), maxWait: .seconds(5))
        // Connected, and the script loaded (a stalled EVALSHA of an unknown script would fail on its own).
        _ = try await store.readOrLock("warm", lock: "warm-lock", ttl: .seconds(1),
                                       reserving: RateReservation(key: "rl:warm", limit: rate.limit, maxWait: .zero))
        server.pause()
        for n in 0..<5 {
            do {
                _ = try await store.readOrLock("entry-\(n)", lock: "lock-\(n)", ttl: .seconds(60), reserving: rate)
                Issue.record("the call did not fail")
            } catch {
                #expect(error.code == .timeout, "\(error)")
            }
        }
        // Past the calls' margin (their timeout, 200 ms, and a second), then Redis runs them.
        try await Task.sleep(for: store.staleMargin + .milliseconds(300))
        server.resume()
        #expect(await eventually(timeout: .seconds(5)) { (try? await Self.calls(server, ["evalsha", "eval"])) ?? 0 >= 5 })
        #expect(try await store.get("rl:stale") == nil, "a slot was booked for a call its caller gave up")
        for n in 0..<5 { #expect(try await store.get("lock-\(n)") == nil) }
        // A call in time books its slot as before.
        guard try await Self.takesLockAndSlot(store, rate) else {
            Issue.record("a call in time did not take the lock and a slot")
            return
        }
        #expect(try await store.get("rl:stale") != nil)
        await client.shutdown()
    }

    /// Before, Redis ran every rate-limit call that had timed out while it stalled once it resumed, each pushing the
    /// app key's schedule forward: later calls waited, or were refused 429, for slots no KIS call used.
    @Test("a rate-limit call that timed out while Redis stalled books no slot when Redis resumes")
    func staleRateLimitBooksNothing() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let (store, client) = try Self.store(server)
        let limit = RateLimit(rate: 1, burst: 1)
        // Connected, and the script loaded (a stalled EVALSHA of an unknown script would fail on its own).
        #expect(try await store.rateLimit("rl:warm", limit: limit, cost: 1, maxWait: .zero) == .allowed(after: .zero))
        server.pause()
        for _ in 0..<3 {
            do {
                _ = try await store.rateLimit("rl:stale", limit: limit, cost: 1, maxWait: .seconds(5))
                Issue.record("the call did not fail")
            } catch {
                #expect(error.code == .timeout, "\(error)")
            }
        }
        // Past the calls' margin (their timeout, 200 ms, and a second), then Redis runs them.
        try await Task.sleep(for: store.staleMargin + .milliseconds(300))
        server.resume()
        #expect(await eventually(timeout: .seconds(5)) { (try? await Self.calls(server, ["evalsha", "eval"])) ?? 0 >= 4 })
        #expect(try await store.get("rl:stale") == nil, "a slot was booked for a call its caller gave up")
        // A call in time is decided as before: the slot is free, and then taken.
        #expect(try await store.rateLimit("rl:stale", limit: limit, cost: 1, maxWait: .zero) == .allowed(after: .zero))
        guard case .denied = try await store.rateLimit("rl:stale", limit: limit, cost: 1, maxWait: .zero) else {
            Issue.record("a second call within the second was not refused")
            await client.shutdown()
            return
        }
        await client.shutdown()
    }

    /// Answered in time yet stale by Redis's clock (this host's is behind): the call is made again without the check.
    @Test("a host whose clock is behind Redis's by more than the margin still gets rate-limit slots")
    func rateLimitWithAClockBehindRedis() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let (store, client) = try Self.store(server, clock: { Date().addingTimeInterval(-30) })
        let limit = RateLimit(rate: 1, burst: 1)
        #expect(try await store.rateLimit("rl", limit: limit, cost: 1, maxWait: .zero) == .allowed(after: .zero))
        #expect(try await store.get("rl") != nil)
        #expect(try await store.rateLimit("rl", limit: limit, cost: 1, maxWait: .zero).isAllowed == false)
        await client.shutdown()
    }

    @Test("a host whose clock is behind Redis's by more than the margin still takes locks and slots (the call is made again without the check)")
    func clockBehindRedis() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let (store, client) = try Self.store(server, clock: { Date().addingTimeInterval(-30) })
        let rate = RateReservation(key: "rl", limit: RateLimit(rate: 1, burst: 1), maxWait: .seconds(5))
        guard try await Self.takesLockAndSlot(store, rate) else {
            Issue.record("no lock and slot with a clock 30 s behind Redis's")
            return
        }
        #expect(try await store.get("lock") != nil)
        #expect(try await store.get("rl") != nil)
        #expect(try await store.readOrLock("entry", lock: "lock", ttl: .seconds(60), reserving: rate) == .busy)
        await client.shutdown()
    }

    @Test("a lock call that found no connection sends nothing afterwards (it took nothing)")
    func unsentLockCallSendsNoRelease() async throws {
        let server = try RedisServerProcess()
        let (store, client) = try Self.store(server)
        #expect(try await store.get("warm") == nil)
        server.stop()
        #expect(await eventually(timeout: .seconds(5)) {
            do { _ = try await store.get("probe"); return false } catch let error as StoreError {
                return error.code == .unavailable
            } catch { return false }
        }, "the client did not notice the server had gone")
        for call in 0..<3 {
            do {
                _ = call == 0 ? try await store.acquireLock("a", ttl: .seconds(60)) as Any
                    : try await store.readOrLock("entry", lock: "lock-\(call)", ttl: .seconds(60), reserving: nil) as Any
                Issue.record("a lock call succeeded with no server")
            } catch {
                #expect(error.code == .unavailable, "\(error)")
            }
        }
        try server.start()
        // A release was tried 0.25, 1.25 and 5.25 s after a failure: the server is back for the last at least.
        #expect(await eventually(timeout: .seconds(5)) { (try? await store.get("probe")) == .some(nil) })
        try await Task.sleep(for: .milliseconds(6000))
        #expect(try await Self.calls(server, ["evalsha", "eval", "set"]) == 0)
        await client.shutdown()
        server.stop()
    }
}
