import Foundation
@testable import Gateway
import KIS
import NIOCore
import NIOPosix
import Store
import Synchronization
import TestSupport
import Testing

/// What a miss asks of the shared store before it can answer: one round trip for a key nobody has (the read, the
/// fleet lock and the rate slot together), one for a key another gateway has already fetched.
@Suite("Miss path: store round trips", .serialized)
struct MissRoundTripTests {
    @Test("a cold miss takes one store step before KIS; another gateway's first request for it is a HIT in one step",
          arguments: StoreKind.allCases)
    func oneStepPerMiss(kind: StoreKind) async throws {
        if kind == .redis { try TestServices.requireRedisURL() }
        try await withCountedGateways(kind, count: 2, user: "u-rt") { g, urls, log, jwt, kis in
            let path = "/domestic/chart/daily/068270?start=2025-03-03&end=2025-05-30"  // one KIS page
            log.reset()
            let first = try await g.get(path, jwt: jwt, kis: kis, base: urls[0])
            #expect(first.status == 200)
            #expect(first.header("X-Cache") == "MISS")
            #expect(log.chartCalls(of: "gw0") == ["readOrLock(reserving)"])
            #expect(try await g.simStats()["domestic_daily"] == 1)

            // The second gateway has nothing in its L1: one read answers it, once the first has shared it.
            try await waitUntilShared(g.store, domesticChart: path)
            log.reset()
            let second = try await g.get(path, jwt: jwt, kis: kis, base: urls[1])
            #expect(second.status == 200)
            #expect(second.header("X-Cache") == "HIT")
            #expect(second.body == first.body)
            #expect(log.chartCalls(of: "gw1") == ["readOrLock(reserving)"])
            #expect(try await g.simStats()["domestic_daily"] == 1)

            // And a third request there is answered from its L1: no store call at all.
            log.reset()
            let third = try await g.get(path, jwt: jwt, kis: kis, base: urls[1])
            #expect(third.header("X-Cache") == "HIT")
            #expect(log.chartCalls(of: "gw1") == [])
        }
    }

    @Test("a miss the hit path fetches runs on the connection's event loop: the store step, and the sharing after it",
          arguments: StoreKind.allCases)
    func hitPathMissRunsOnTheEventLoop(kind: StoreKind) async throws {
        if kind == .redis { try TestServices.requireRedisURL() }
        try await withCountedGateways(kind, count: 1, user: "u-loop") { g, urls, log, jwt, kis in
            // The router answers the first request and the gateway learns the credentials; the hit path fetches
            // the next chart it lacks.
            let first = try await g.get("/domestic/chart/daily/005930?start=2025-03-03&end=2025-05-30", jwt: jwt,
                                        kis: kis, base: urls[0])
            #expect(first.status == 200)
            log.reset()
            let path = "/domestic/chart/daily/068270?start=2025-03-03&end=2025-05-30"
            let answer = try await g.get(path, jwt: jwt, kis: kis, base: urls[0])
            #expect(answer.status == 200)
            #expect(answer.header("X-Cache") == "MISS")
            try await waitUntilShared(g.store, domesticChart: path)
            // (The first chart's sharing may still be under way: only the second chart's calls count.)
            #expect(log.onLoop(of: "gw0", call: "readOrLock(reserving)", keyPrefix: "cache:", containing: "068270") == [true])
            #expect(log.onLoop(of: "gw0", call: "set", keyPrefix: "cache:", containing: "068270") == [true])
        }
    }
}

/// `count` gateways on a `kind` store whose calls are logged (labels `gw0`, `gw1`, …), and a user connected through
/// them: the body gets the fixture, the gateways' URLs, the log, and the user's JWT and KIS token.
private func withCountedGateways(
    _ kind: StoreKind, count: Int, user: String,
    _ body: @Sendable (GatewayFixture, [String], StoreCallLog, _ jwt: String, _ kis: String) async throws -> Void
) async throws {
    let log = StoreCallLog()
    try await withGateway(store: kind, gateways: count, dependencies: { index, deps in
        deps.store = CountingStore(inner: deps.store, log: log, label: "gw\(index)")
    }) { g, urls in
        let kis = try await g.connect(user: user, appKey: "PSapp-\(user)-\(kind)")
        let jwt = try await g.jwt(user)
        try await body(g, urls, log, jwt, kis)
    }
}

/// Every store call's name and key, per gateway, and whether it was made on an event loop's thread.
final class StoreCallLog: Sendable {
    private let calls = Mutex<[(label: String, call: String, key: String, onLoop: Bool)]>([])

    func add(_ label: String, _ call: String, _ key: String) {
        let onLoop = MultiThreadedEventLoopGroup.currentEventLoop != nil
        calls.withLock { $0.append((label, call, key, onLoop)) }
    }
    func reset() { calls.withLock { $0.removeAll() } }

    /// For each `call` of `label` on a key that starts with `prefix` and contains `part`, in order: made on an
    /// event loop's thread?
    func onLoop(of label: String, call: String, keyPrefix prefix: String, containing part: String) -> [Bool] {
        calls.withLock { all in
            all.filter { $0.label == label && $0.call == call && $0.key.hasPrefix(prefix) && $0.key.contains(part) }
                .map(\.onLoop)
        }
    }

    /// The calls a chart lookup made (cache, fleet lock, rate limit), leaving out the token lookups and what
    /// runs after the answer (storing, announcing and releasing).
    func chartCalls(of label: String) -> [String] {
        calls.withLock { all in
            all.filter { $0.label == label }
                .filter { ["get", "acquireLock(thenGet)", "readOrLock", "readOrLock(reserving)", "rateLimit"].contains($0.call) }
                .filter { $0.key.hasPrefix("cache:") || $0.key.hasPrefix("lock:chart:") || $0.key.hasPrefix("rl:") }
                .map(\.call)
        }
    }
}

/// A real store (memory or Redis) that notes each call before making it.
struct CountingStore: SharedStore {
    let inner: any SharedStore
    let log: StoreCallLog
    let label: String
    /// Runs after each `get` has read its key, before its caller has the value (a test holds a read in flight).
    var afterGet: (@Sendable (_ key: String) async -> Void)? = nil
    /// The same after each `readOrLock` (its read key).
    var afterReadOrLock: (@Sendable (_ readKey: String) async -> Void)? = nil

    var keyPrefix: String { inner.keyPrefix }
    func get(_ key: String) async throws(StoreError) -> ByteBuffer? {
        log.add(label, "get", key)
        let value = try await inner.get(key)
        await afterGet?(key)
        return value
    }
    func set(_ key: String, to value: ByteBuffer, ttl: Duration?) async throws(StoreError) {
        log.add(label, "set", key)
        try await inner.set(key, to: value, ttl: ttl)
    }
    func setIfAbsent(_ key: String, to value: ByteBuffer, ttl: Duration?) async throws(StoreError) -> Bool {
        log.add(label, "setIfAbsent", key)
        return try await inner.setIfAbsent(key, to: value, ttl: ttl)
    }
    func compareAndSet(_ key: String, expected: ByteBuffer?, newValue: ByteBuffer?, ttl: Duration?)
        async throws(StoreError) -> Bool
    {
        log.add(label, "compareAndSet", key)
        return try await inner.compareAndSet(key, expected: expected, newValue: newValue, ttl: ttl)
    }
    func delete(_ key: String) async throws(StoreError) -> Bool {
        log.add(label, "delete", key)
        return try await inner.delete(key)
    }
    func timeToLive(_ key: String) async throws(StoreError) -> StoreTTL {
        log.add(label, "timeToLive", key)
        return try await inner.timeToLive(key)
    }
    func setAdd(_ key: String, members: [String], ttlAtLeast: Duration?) async throws(StoreError) -> Int {
        log.add(label, "setAdd", key)
        return try await inner.setAdd(key, members: members, ttlAtLeast: ttlAtLeast)
    }
    func setRemove(_ key: String, members: [String]) async throws(StoreError) -> Int {
        log.add(label, "setRemove", key)
        return try await inner.setRemove(key, members: members)
    }
    func setMembers(_ key: String) async throws(StoreError) -> Set<String> {
        log.add(label, "setMembers", key)
        return try await inner.setMembers(key)
    }
    func acquireLock(_ key: String, ttl: Duration) async throws(StoreError) -> StoreLock? {
        log.add(label, "acquireLock", key)
        return try await inner.acquireLock(key, ttl: ttl)
    }
    func acquireLock(_ key: String, ttl: Duration, thenGet readKey: String) async throws(StoreError)
        -> (lock: StoreLock?, value: ByteBuffer?)
    {
        log.add(label, "acquireLock(thenGet)", key)
        return try await inner.acquireLock(key, ttl: ttl, thenGet: readKey)
    }
    func readOrLock(_ readKey: String, lock key: String, ttl: Duration, reserving: RateReservation?)
        async throws(StoreError) -> ReadOrLock
    {
        log.add(label, reserving == nil ? "readOrLock" : "readOrLock(reserving)", readKey)
        let step = try await inner.readOrLock(readKey, lock: key, ttl: ttl, reserving: reserving)
        await afterReadOrLock?(readKey)
        return step
    }
    func renewLock(_ lock: StoreLock, ttl: Duration) async throws(StoreError) -> Bool {
        log.add(label, "renewLock", lock.key)
        return try await inner.renewLock(lock, ttl: ttl)
    }
    func releaseLock(_ lock: StoreLock) async throws(StoreError) -> Bool {
        log.add(label, "releaseLock", lock.key)
        return try await inner.releaseLock(lock)
    }
    func rateLimit(_ key: String, limit: RateLimit, cost: Int, maxWait: Duration) async throws(StoreError)
        -> RateLimitDecision
    {
        log.add(label, "rateLimit", key)
        return try await inner.rateLimit(key, limit: limit, cost: cost, maxWait: maxWait)
    }
    func publish(_ message: ByteBuffer, to channel: String) async throws(StoreError) {
        log.add(label, "publish", channel)
        try await inner.publish(message, to: channel)
    }
    func delete(_ key: String, removing member: String, from setKey: String, announcing message: ByteBuffer,
                on channel: String) async throws(StoreError)
    {
        log.add(label, "delete-announce", key)
        try await inner.delete(key, removing: member, from: setKey, announcing: message, on: channel)
    }
    func subscribe(to channel: String) async throws(StoreError) -> StoreSubscription {
        log.add(label, "subscribe", channel)
        return try await inner.subscribe(to: channel)
    }
}
