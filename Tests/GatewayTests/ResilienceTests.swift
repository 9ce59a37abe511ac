import AsyncHTTPClient
import Foundation
import Gateway
import Hummingbird
import KIS
import KisgwConfiguration
import Logging
import NIOCore
import NIOHTTP1
import Redis
import Simulator
import Store
import Synchronization
import Testing
import Tokens
import TestSupport

@Suite("Gateway: Redis outage and process shutdown", .serialized)
struct GatewayResilienceTests {
    /// A `revoked` event published while the gateway's pub/sub connection is down never reaches it. The token's
    /// record is deleted here without an event (that is what the gateway sees of a revocation it missed); the
    /// decision it remembers (30 s) must not outlive the gap.
    @Test("a revocation missed while the store's pub/sub connection was down: remembered decisions are dropped when it is back")
    func missedRevocation() async throws {
        try TestServices.requireRedisURL()
        try await withGateway(store: .redis) { g, _ in
            let redis = try #require((g.store as? RedisStore)?.client)
            let kis = try await g.connect(user: "mr1", appKey: "PSapp-missedrevoke")
            let jwt = try await g.jwt("mr1")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).status == 200)  // the decision is remembered now
            // The pub/sub connection drops (this suite runs alone: no other test's subscriber is on this Redis).
            let killed = try await redis.send(RedisCommand("CLIENT", ["KILL", "TYPE", "pubsub"]))
            #expect(killed != .integer(0), "no pub/sub connection to kill")
            try await g.store.delete(TokenDirectory.recordKey(TokenDirectory.sha256(of: kis)))
            // Once the gateway has subscribed again, the token is looked up afresh: its record is gone.
            let refused = try await eventually(timeout: .seconds(10)) {
                try await g.get(path, jwt: jwt, kis: kis).code == "kis_token_invalid"
            }
            #expect(refused, "the remembered decision outlived the pub/sub gap")
        }
    }

    /// A `revoked` event published before the gateway's subscription to `events` was made — the gateway had just
    /// started, or the store refused the channel (a Redis user without it: Redis 7's default `resetchannels`) or was
    /// down — reached nobody, and a decision taken before it was kept up to its recheck (30 s). Once the
    /// subscription is made the decisions taken before it are dropped, and the next request reads the record again.
    @Test("a revocation published before the events subscription was made: decisions taken before it are dropped")
    func revocationBeforeTheSubscription() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let adminURL = "redis://127.0.0.1:\(server.port)/0"
        let (_, adminClient) = try makeStore(.redis, url: adminURL)
        let admin = try #require(adminClient)
        let adminRun = Task { await admin.run() }
        defer { adminRun.cancel() }
        // The gateway's Redis user may use every key and command but subscribe to no channel, until it is let.
        let user = "gw-events"
        _ = try await admin.send(["ACL", "SETUSER", RedisArgument(user), "on", ">pw", "~*", "resetchannels", "+@all"])
        var configuration = try RedisConfiguration(url: "redis://\(user):pw@127.0.0.1:\(server.port)/0")
        configuration.initialReconnectDelay = .milliseconds(20)
        configuration.maximumReconnectDelay = .milliseconds(200)
        let restricted = RedisClient(configuration: configuration, logger: Logger(label: "test-redis"))
        let restrictedRun = Task { await restricted.run() }
        defer { restrictedRun.cancel() }
        try await withGateway(store: .redis, redisURL: adminURL, dependencies: { _, deps in
            deps.store = RedisStore(client: restricted, keyPrefix: deps.store.keyPrefix)
        }) { g, _ in
            let kis = try await g.connect(user: "rb1", appKey: "PSapp-eventsrefused")
            let jwt = try await g.jwt("rb1")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).status == 200)  // the decision is remembered now
            // Revoked: the record goes and the event is published, to no subscriber of this gateway's.
            try await TokenDirectory.unpublish(sha256: TokenDirectory.sha256(of: kis), userID: "rb1", environment: .live,
                                               store: g.store)
            #expect(try await g.get(path, jwt: jwt, kis: kis).status == 200, "the decision was not remembered")
            // The channel allowed: the gateway's next attempt subscribes (its backoff is 5 s at most).
            _ = try await admin.send(["ACL", "SETUSER", RedisArgument(user), "allchannels"])
            let refused = try await eventually(timeout: .seconds(12)) {
                try await g.get(path, jwt: jwt, kis: kis).code == "kis_token_invalid"
            }
            #expect(refused, "a decision taken before the events subscription outlived it")
        }
        await restricted.shutdown()
        await admin.shutdown()
    }

    /// A token's record read just before its revocation, by a lookup still under way when the gateway handles the
    /// `revoked` event: the request it was made for is answered, but the decision must not be remembered (it was kept
    /// for 30 s, past the event that was meant to end it).
    @Test("a revocation while a token's record is being read: the read's decision is not remembered")
    func revocationDuringLookup() async throws {
        try TestServices.requireRedisURL()
        let gate = RecordGate()
        try await withGateway(store: .redis, dependencies: { _, deps in
            deps.store = CountingStore(inner: deps.store, log: StoreCallLog(), label: "gw", afterGet: gate.pass)
        }) { g, _ in
            let kis = try await g.connect(user: "rl1", appKey: "PSapp-revokelookup")
            let jwt = try await g.jwt("rl1")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            gate.hold()
            let first = Task { try await g.get(path, jwt: jwt, kis: kis) }
            #expect(await eventually(timeout: .seconds(10)) { gate.held == 1 }, "the lookup never read the record")
            try await TokenDirectory.unpublish(sha256: TokenDirectory.sha256(of: kis), userID: "rl1", environment: .live,
                                               store: g.store)
            try await Task.sleep(for: .milliseconds(300))  // the gateway handles the `revoked` event meanwhile
            gate.release()
            #expect(try await first.value.status == 200)  // it was under way when the token was revoked
            let after = try await g.get(path, jwt: jwt, kis: kis)
            #expect(after.status == 401)
            #expect(after.code == "kis_token_invalid")
        }
    }

    /// A gateway over a Redis server of its own (which the test stops, pauses and restarts), with `commandTimeout`.
    static func withOwnRedis(
        commandTimeout: Duration = .seconds(2),
        _ body: (_ redis: RedisServerProcess, _ g: GatewayFixture) async throws -> Void
    ) async throws {
        let redis = try RedisServerProcess()
        defer { redis.stop() }
        let client = RedisClient(configuration: {
            var c = try! RedisConfiguration(url: redis.url)
            c.commandTimeout = commandTimeout
            c.connectTimeout = .seconds(2)
            c.maximumReconnectDelay = .milliseconds(200)
            return c
        }(), logger: Logger(label: "outage"))
        let store = RedisStore(client: client, keyPrefix: "outage:")
        let keyring = SealKeyring.ephemeral()
        var logger = Logger(label: "outage")
        logger.logLevel = .critical
        let (simPorts, simCont) = AsyncStream.makeStream(of: Int.self)
        let sim = TestServer(try await buildSimulator(
            SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000), logger: logger
        ) { simCont.yield($0) })
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            group.addTask { try await sim.run() }
            var sit = simPorts.makeAsyncIterator()
            let simURL = "http://127.0.0.1:\(await sit.next()!)"
            let (ports, cont) = AsyncStream.makeStream(of: Int.self)
            let deps = GatewayDependencies(store: store, keyring: keyring, readiness: {
                do { _ = try await store.get("readyz"); return nil } catch { return "store down" }
            })
            let gateway = TestServer(
                try await buildGateway(testConfig(simURL: simURL), dependencies: deps, logger: logger) { cont.yield($0) })
            group.addTask { try await gateway.run() }
            var pit = ports.makeAsyncIterator()
            let base = "http://127.0.0.1:\(await pit.next()!)"
            defer { group.cancelAll() }  // the Redis client
            try await stopping([gateway, sim]) {
                try await body(redis, GatewayFixture(gatewayURL: base, simURL: simURL, store: store, keyring: keyring))
            }
        }
    }

    /// A lock call that times out is still run when Redis gets to it. Before, the fleet lock it took was nobody's:
    /// every request for that chart, on every gateway, waited `timeout_ms` and got 504 until the lock expired.
    @Test("Redis stalls while a miss takes the fleet lock: 503 for it; the lock it took anyway is released, the next request fetches")
    func lockTakenAfterATimeout() async throws {
        try await Self.withOwnRedis(commandTimeout: .milliseconds(250)) { redis, g in
            let kis = try await g.connect(user: "o1", appKey: "PSapp-stall")
            let jwt = try await g.jwt("o1")
            // Credentials verified and remembered: the stalled request's only store call is its read-or-lock.
            #expect(try await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis).status == 200)
            let chart = "/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31"
            redis.pause()
            let stalled = try await g.get(chart, jwt: jwt, kis: kis)
            try await Task.sleep(for: .milliseconds(150))
            redis.resume()  // the read-or-lock script, still queued, runs now and takes the lock
            #expect(stalled.status == 503)
            #expect(stalled.code == "store_unavailable")
            try await Task.sleep(for: .milliseconds(1500))
            let started = ContinuousClock.now
            let next = try await g.get(chart, jwt: jwt, kis: kis)
            #expect(next.status == 200, "\(next.text)")
            #expect(next.header("X-Cache") == "MISS")
            #expect(ContinuousClock.now - started < .seconds(2))  // not `timeout_ms` (3 s) of waiting for the lock
        }
    }

    @Test("Redis stops: readiness 503, undecidable requests store_unavailable, L1 hits still served; Redis returns: service resumes")
    func redisOutage() async throws {
        try await Self.withOwnRedis { redis, g in
            let kis = try await g.connect(user: "o1", appKey: "PSapp-outage")
            let jwt = try await g.jwt("o1")
            let cached = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(cached, jwt: jwt, kis: kis).status == 200)
            #expect(try await g.get("/readyz", jwt: nil, kis: nil).status == 200)

            redis.stop()
            #expect(try await eventually { try await g.get("/readyz", jwt: nil, kis: nil).status == 503 })
            let unready = try await g.get("/readyz", jwt: nil, kis: nil)
            #expect(unready.status == 503)
            #expect(unready.header("Content-Type") == "application/json")
            #expect(unready.json["status"] as? String == "unavailable", "\(unready.text)")
            let started = ContinuousClock.now
            let miss = try await g.get("/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(miss.status == 503)
            #expect(miss.code == "store_unavailable")
            #expect(ContinuousClock.now - started < .seconds(5))  // fails fast, never hangs
            let hit = try await g.get(cached, jwt: jwt, kis: kis)
            #expect(hit.status == 200 && hit.header("X-Cache") == "HIT")

            try redis.start()
            #expect(try await eventually { try await g.get("/readyz", jwt: nil, kis: nil).status == 200 })
            // Redis came back empty; once the broker republishes the token (reconciliation), service resumes.
            _ = try await g.connect(user: "o1", appKey: "PSapp-outage2")
            let kis2 = try await g.connect(user: "o1", appKey: "PSapp-outage3")
            #expect(try await eventually {
                try await g.get("/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis2).status == 200
            })
        }
    }

    /// Two requests in flight at KIS: one the router answers (a JWT not seen before) and one the hit path answers
    /// (a chart the L1 lacks, for credentials already verified), each on its own connection.
    @Test("SIGTERM with requests in flight: they complete, the process exits 0")
    func sigterm() async throws {
        try await withGatewayProcess(latencyMs: 1500) { g, p in
            let process = p.process
            let kis = try await g.connect(user: "s1", appKey: "PSapp-sigterm")
            let jwt = try await g.jwt("s1")
            // Teaches the gateway the JWT and the KIS token.
            #expect(try await g.get("/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis).status == 200)
            let unseenJWT = try await g.jwt("s1", ttl: 1234)
            async let viaRouter = g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: unseenJWT, kis: kis)
            async let viaHitPath = g.get("/domestic/chart/daily/035420?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            try await Task.sleep(for: .milliseconds(500))
            kill(process.processIdentifier, SIGTERM)
            let (r, h) = try await (viaRouter, viaHitPath)
            #expect(r.status == 200 && r.header("x-cache") == "MISS")
            #expect(h.status == 200 && h.header("x-cache") == "MISS")
            #expect(await eventually(timeout: .seconds(15)) { !process.isRunning })
            #expect(process.terminationStatus == 0)
            #expect(!p.accepts)
        }
    }

    /// The answers on a connection when SIGTERM came are written whole before it closes. Before, the close came as
    /// soon as the last answer was handed to the socket's queue, and dropped what the socket had not taken yet:
    /// for a client reading slowly, the end of its answers. The kernel takes up to 4 MB (`tcp_wmem`) here, so
    /// 20 answers of ten years of days (about 5 MB) are asked for, then a chart to fetch. The gateway stops reading a
    /// client's requests while its answers back up (a client that never reads them grew its memory without bound):
    /// those it had not read when SIGTERM came are not answered, as Hummingbird drops the requests after the one it
    /// is answering; every answer begun arrives whole, in order, and the connection then ends.
    @Test("SIGTERM while a client that reads slowly has answers queued: every answer begun arrives whole")
    func sigtermWritesTheWholeAnswer() async throws {
        try await withGatewayProcess(latencyMs: 40) { g, p in
            let kis = try await g.connect(user: "s3", appKey: "PSapp-sigterm-large")
            let jwt = try await g.jwt("s3")
            let cached = "/domestic/chart/daily/000660?start=2015-01-01&end=2024-12-31"
            #expect(try await g.get(cached, jwt: jwt, kis: kis).status == 200)
            func request(_ target: String) -> String {
                "GET \(target) HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(jwt)\r\nX-KIS-Token: \(kis)\r\n\r\n"
            }
            // 20 hits, then a chart of 25 KIS pages of 40 ms or more.
            let pipelined = String(repeating: request(cached), count: 20)
                + request("/domestic/chart/daily/005930?start=2015-01-01&end=2024-12-31")
            let reader = SlowReader(port: p.port, request: pipelined)
            try await Task.sleep(for: .milliseconds(300))
            kill(p.process.processIdentifier, SIGTERM)
            let answers = try await reader.result()
            // Megabytes of answers were queued when SIGTERM came (the socket's buffers hold about 4 MB).
            #expect(answers.count >= 5 && answers.count <= 21, "\(answers.count) answers")
            for (index, answer) in answers.enumerated() {
                #expect(answer.head.hasPrefix("HTTP/1.1 200"), "\(index): \(answer.head)")
                #expect(answer.length > 150_000 && answer.received == answer.length,
                        "\(index): \(answer.received) of \(answer.length) bytes")
            }
            #expect(await eventually(timeout: .seconds(15)) { !p.process.isRunning })
            #expect(p.process.terminationStatus == 0)
        }
    }

    /// The request gives up after `request_timeout_ms`; its fetch goes on (the next request would find the chart).
    /// SIGTERM then must not drop it: a dropped fetch leaves its fleet lock held until it expires, and the chart
    /// unshared.
    @Test("SIGTERM with a fetch nobody waits for any more: it finishes and is shared, its lock released, then exit 0")
    func sigtermFinishesBackgroundFetch() async throws {
        try await withGatewayProcess(latencyMs: 1500, env: ["KISGW_SERVER_REQUEST_TIMEOUT_MS": "300"]) { g, p in
            let process = p.process
            let kis = try await g.connect(user: "s2", appKey: "PSapp-sigterm-bg")
            let jwt = try await g.jwt("s2")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            let r = try await g.get(path, jwt: jwt, kis: kis)
            #expect(r.status == 504 && r.json["code"] as? String == "upstream_timeout", "\(r.status)")
            let key = try chartKey(domesticChart: path)
            #expect(try await g.store.timeToLive("lock:chart:" + key) != .missing, "the fetch holds the fleet lock")
            kill(process.processIdentifier, SIGTERM)
            #expect(await eventually(timeout: .seconds(15)) { !process.isRunning })
            #expect(process.terminationStatus == 0)
            #expect(try await g.store.get("cache:" + key) != nil, "the fetched chart was not shared")
            #expect(try await g.store.timeToLive("lock:chart:" + key) == .missing, "the fleet lock is still held")
            #expect(!p.accepts)
        }
    }
}

/// Holds the reads of the keys starting with `prefix` (token records, `tok:…`, unless told) made while it is held,
/// after they have read: lookups in flight.
final class RecordGate: Sendable {
    private struct State {
        var holding = false
        var held: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    private let prefix: String

    init(prefix: String = "tok:") { self.prefix = prefix }

    /// How many reads it holds now.
    var held: Int { state.withLock { $0.held.count } }

    func hold() { state.withLock { $0.holding = true } }

    func release() {
        let held = state.withLock { s in
            s.holding = false
            defer { s.held = [] }
            return s.held
        }
        for c in held { c.resume() }
    }

    @Sendable func pass(_ key: String) async {
        guard key.hasPrefix(prefix) else { return }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let go = state.withLock { s -> Bool in
                guard s.holding else { return true }
                s.held.append(c)
                return false
            }
            if go { c.resume() }
        }
    }
}

/// Requests over a socket whose receive buffer is 4 KB (a `RawConnection`), read only after 2 s and then to the end
/// of the stream, on a thread of its own (blocking reads).
final class SlowReader: Sendable {
    struct Answer: Sendable {
        var head: String
        /// `Content-Length`, and how many body bytes arrived.
        var length: Int
        var received: Int
    }

    private let outcome = Mutex<Result<[Answer], any Error>?>(nil)

    init(port: Int, request: String) {
        Thread.detachNewThread {
            let r = Result { try Self.exchange(port: port, request: request) }
            self.outcome.withLock { $0 = r }
        }
    }

    func result() async throws -> [Answer] {
        while true {
            if let r = outcome.withLock({ $0 }) { return try r.get() }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    private static func exchange(port: Int, request: String) throws -> [Answer] {
        let connection = try RawConnection(port: port, receiveTimeout: 30, receiveBuffer: 4096)
        try connection.send(request)
        usleep(2_000_000)
        let received = connection.readToEnd()
        // The answers, one after another: a head, then `Content-Length` bytes.
        var answers: [Answer] = []
        var at = 0
        while at < received.count {
            guard let end = RawConnection.headEnd(in: received, from: at) else { break }
            let head = String(decoding: received[at..<end], as: UTF8.self)
            let length = RawConnection.contentLength(head)
            let body = min(length, received.count - end - 4)
            answers.append(Answer(head: head, length: length, received: body))
            at = end + 4 + body
        }
        return answers
    }
}
