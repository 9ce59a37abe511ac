import AsyncHTTPClient
import Foundation
@testable import Gateway
import Hummingbird
import KIS
import KisgwConfiguration
import Logging
import NIOCore
import NIOHTTP1
import Prometheus
import Observability
import Simulator
import Store
import Synchronization
import TestSupport
import Testing
import Tokens

/// `[upstream] retries` on a multi-page chart, over real sockets: a page KIS refuses with `EGW00201` (or whose call
/// fails on the way) is asked for again — that page only — and a chart KIS keeps refusing ends in 429 after
/// 1 + retries calls (gateway-api.md, kis-api.md §6–7).
@Suite("Upstream retries: a refused page is asked for again, not the whole chart")
struct UpstreamRetryTests {
    static let origin = "http://localhost:3000"
    /// 2023-01-02 … 2024-06-28: 388 weekdays, so four pages of at most 100 rows from the simulator.
    static let longChart = "/domestic/chart/daily/005930?start=2023-01-02&end=2024-06-28"

    /// `testConfig` with `[upstream] retries` set (the harness fixes it at 2).
    static func config(_ simURL: String, liveURL: String? = nil, retries: Int = 2) -> KisgwConfig {
        let c = testConfig(simURL: simURL, liveURL: liveURL)
        return KisgwConfig(
            server: c.server, cors: c.cors, auth: c.auth, kis: c.kis,
            upstream: .init(timeoutMs: c.upstream.timeoutMs, maxQueueMs: c.upstream.maxQueueMs, retries: retries),
            cache: c.cache, broker: c.broker)
    }

    /// Fetches `path` once through a gateway whose LIVE KIS is a stand-in in front of a fresh simulator, the stand-in
    /// failing the quotation calls `fail` says (by their 1-based number) as `failure`.
    static func fetchThroughStandIn(
        _ path: String, store: StoreKind, user: String, failing failure: StandInKIS.Failure = .egw00201,
        fail: Set<Int> = []
    ) async throws -> (answer: HTTPResult, kis: StandInKIS.Seen, simCalls: Int) {
        let standIn = StandInKIS(failure: failure, failing: fail)
        let (url, server) = await standIn.start()
        return try await stopping([server]) {
            return try await withGateway(store: store, config: { simURL in
                standIn.forwardTo(simURL)
                return Self.config(simURL, liveURL: url)
            }) { g, _ in
                let (jwt, kis) = try await g.signIn(user)  // the token comes from the simulator itself
                let r = try await g.get(path, jwt: jwt, kis: kis)
                return (r, standIn.seen, try await g.simStats()["domestic_daily"] ?? 0)
            }
        }
    }

    /// The candles of an answer, as canonical JSON (sorted keys), for comparing two answers.
    static func candlesJSON(_ r: HTTPResult) throws -> Data {
        try JSONSerialization.data(withJSONObject: r.candles, options: [.sortedKeys])
    }

    // MARK: one page refused

    @Test("KIS refusing one page of a multi-page chart with EGW00201: 200, the same candles, that page asked twice and every other once",
          arguments: StoreKind.allCases, [2, 3])
    func onePageRefused(store: StoreKind, refusedCall: Int) async throws {
        let plain = try await Self.fetchThroughStandIn(Self.longChart, store: store, user: "plain")
        try #require(plain.answer.status == 200, "\(plain.answer.text)")
        let pages = plain.kis.calls
        try #require(pages >= 4 && pages > refusedCall, "the chart should take 4+ pages: \(plain.kis.order)")
        #expect(plain.kis.byPageEnd.values.allSatisfy { $0 == 1 }, "\(plain.kis.order)")
        #expect(plain.answer.candles.count > 300)

        let refused = try await Self.fetchThroughStandIn(Self.longChart, store: store, user: "refused",
                                                         fail: [refusedCall])
        #expect(refused.answer.status == 200, "\(refused.answer.status) \(refused.answer.text.prefix(500))")
        #expect(refused.answer.header("X-Cache") == "MISS")
        #expect(try Self.candlesJSON(refused.answer) == Self.candlesJSON(plain.answer),
                "\(refused.answer.candles.count) candles against \(plain.answer.candles.count)")
        #expect(refused.answer.json["name"] as? String == plain.answer.json["name"] as? String)
        // KIS saw every page once, and the refused one once more: pages + 1 calls, in page order.
        #expect(refused.kis.calls == pages + 1, "KIS was asked for the page ends \(refused.kis.order)")
        #expect(refused.kis.refused == 1)
        let refusedPage = plain.kis.order[refusedCall - 1]
        var expected = plain.kis.order
        expected.insert(refusedPage, at: refusedCall - 1)
        #expect(refused.kis.order == expected, "page ends asked: \(refused.kis.order), expected \(expected)")
        #expect(refused.kis.byPageEnd[refusedPage] == 2, "\(refused.kis.byPageEnd)")
        for (end, n) in refused.kis.byPageEnd where end != refusedPage {
            #expect(n == 1, "page ending \(end) asked \(n) times: \(refused.kis.order)")
        }
        // The simulator answered every call the stand-in passed on, and no other.
        #expect(refused.simCalls == pages)
    }

    /// A call failed on the way (the connection closed mid-answer), KIS's transient error (`EGW00001`, kis-api.md:
    /// retry), or an HTTP 5xx with no KIS answer in it (its front's 503 page): the page is asked for again. (The
    /// last was answered 502 at once: a second's outage of KIS's servers failed every chart fetched in it.)
    @Test("a KIS call of one page failing on the way, answered with KIS's transient error or its front's 503: 200, the same candles, that page asked twice",
          arguments: [(StandInKIS.Failure.dropConnection, 2), (.transient, 3), (.frontUnavailable, 2)])
    func onePageFailingOnce(failure: StandInKIS.Failure, call: Int) async throws {
        let plain = try await Self.fetchThroughStandIn(Self.longChart, store: .memory, user: "plain-\(call)")
        try #require(plain.answer.status == 200, "\(plain.answer.text)")
        let pages = plain.kis.calls
        let broken = try await Self.fetchThroughStandIn(Self.longChart, store: .memory, user: "broken-\(call)",
                                                        failing: failure, fail: [call])
        #expect(broken.answer.status == 200, "\(broken.answer.status) \(broken.answer.text.prefix(500))")
        #expect(try Self.candlesJSON(broken.answer) == Self.candlesJSON(plain.answer))
        var expected = plain.kis.order
        expected.insert(plain.kis.order[call - 1], at: call - 1)
        #expect(broken.kis.calls == pages + 1, "KIS was asked for the page ends \(broken.kis.order)")
        #expect(broken.kis.order == expected, "page ends asked: \(broken.kis.order), expected \(expected)")
    }

    // MARK: many users' misses at once

    /// Each user's app key has its own KIS rate; many users' misses at once go to KIS at once, not through a few
    /// pooled connections one after another (a call queued for a connection after taking its rate slot would reach
    /// KIS later than the slot says, bunched with the next ones).
    @Test("12 users' cold charts at once: 12 KIS calls under way at once, all 200")
    func manyUsersMissesAtOnce() async throws {
        let inFlight = Mutex((now: 0, most: 0))
        let standIn = StandInKIS(failure: .egw00201, failing: []) { _ in
            inFlight.withLock { $0.now += 1; $0.most = max($0.most, $0.now) }
            try await Task.sleep(for: .milliseconds(400))
            inFlight.withLock { $0.now -= 1 }
        }
        let (url, server) = await standIn.start()
        try await stopping([server]) {
            try await withGateway(config: { simURL in
                standIn.forwardTo(simURL)
                return Self.config(simURL, liveURL: url)
            }) { g, _ in
                var users: [(jwt: String, kis: String)] = []
                for i in 0..<12 { users.append(try await g.signIn("many-\(i)")) }
                // A client of its own: `HTTPClient.shared` keeps 8 connections, and would send 8 requests at a time.
                var configuration = HTTPClient.Configuration()
                configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 16
                let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
                let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                    for (i, user) in users.enumerated() {
                        let symbol = String(format: "%06d", 300_000 + i * 7)
                        group.addTask {
                            try await http(.GET, g.gatewayURL + "/domestic/chart/daily/\(symbol)?start=2025-02-03&end=2025-02-28",
                                           headers: [("Authorization", "Bearer " + user.jwt), ("X-KIS-Token", user.kis)],
                                           client: client).status
                        }
                    }
                    var out: [Int] = []
                    for try await s in group { out.append(s) }
                    return out
                }
                try await client.shutdown()
                #expect(statuses == Array(repeating: 200, count: 12))
                #expect(inFlight.withLock { $0.most } == 12, "KIS calls at once: \(inFlight.withLock { $0.most })")
            }
        }
    }

    // MARK: the lock lost

    /// A fetch whose fleet lock expired mid-way (Redis stalled past its TTL) and was taken by another gateway: the fetch
    /// finishes and answers, the loss is counted and logged once, and the other holder's lock is left alone.
    @Test("a multi-page fetch that finds its lock taken by another holder: 200, counted once in kisgw_chart_locks_lost_total and logged, the other's lock kept",
          arguments: StoreKind.allCases)
    func lockLostMidFetch(store kind: StoreKind) async throws {
        let stolen = Mutex<(any SharedStore)?>(nil)
        let someoneElse = ByteBuffer(string: "another-gateway")
        // Before the second page: the lock now holds another gateway's token, as after an expiry and a takeover.
        let standIn = StandInKIS(failure: .egw00201, failing: []) { n in
            guard n == 2, let store = stolen.withLock({ $0 }) else { return }
            try #require(try await store.get(Self.longChartLock) != nil, "the fetch holds its lock")
            try await store.set(Self.longChartLock, to: someoneElse, ttl: .seconds(30))
        }
        let (url, server) = await standIn.start()
        let log = LogBuffer(), registry = PrometheusCollectorRegistry()
        try await stopping([server]) {
            try await withGateway(store: kind, log: log, config: { simURL in
                standIn.forwardTo(simURL)
                return Self.config(simURL, liveURL: url)
            }, dependencies: { _, deps in deps.metricsRegistry = registry }) { g, _ in
                stolen.withLock { $0 = g.store }
                let (jwt, kis) = try await g.signIn("lost-lock-\(kind)")
                let r = try await g.get(Self.longChart, jwt: jwt, kis: kis)
                #expect(r.status == 200, "\(r.status) \(r.text.prefix(300))")
                #expect(r.candles.count > 300)
                #expect(standIn.seen.calls >= 4)
                let m = Exposition(try await g.get("/metrics", jwt: nil, kis: nil).text)
                #expect(m.value("kisgw_chart_locks_lost_total", [:]) == 1)  // once, though every later page found it gone
                #expect(log.text.components(separatedBy: "outlived its lock").count == 2, "\(log.text)")
                // The release at the end compared tokens: the other holder's lock is still there.
                try await Task.sleep(for: .milliseconds(200))
                #expect(try await g.store.get(Self.longChartLock) == someoneElse)
            }
        }
    }

    /// The fleet lock of `longChart`'s fetch (`lock:chart:{cache key}`).
    static let longChartLock = "lock:chart:" + ChartQuery(
        market: .domestic, exchange: .krx, symbol: "005930", period: "D", adjusted: true,
        start: CivilDate("2023-01-02")!, end: CivilDate("2024-06-28")!).cacheKey

    // MARK: every call refused

    @Test("KIS refusing every call with EGW00201: 429 rate_limited with Retry-After and CORS, after 1 + retries calls",
          arguments: StoreKind.allCases, [0, 2])
    func everyCallRefused(store: StoreKind, retries: Int) async throws {
        try await withGateway(store: store, config: { Self.config($0, retries: retries) }) { g, _ in
            let (jwt, kis) = try await g.signIn("always-\(retries)")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"kis_error","msg_cd":"EGW00201","rate":1.0}"#)
            let started = ContinuousClock.now
            let r = try await g.get(Self.longChart, jwt: jwt, kis: kis, headers: [("Origin", Self.origin)])
            let took = ContinuousClock.now - started
            #expect(r.status == 429, "\(r.status) \(r.text)")
            #expect(r.code == "rate_limited", "\(r.text)")
            #expect(r.header("Content-Type") == "application/problem+json")
            let retryAfter = r.header("Retry-After").flatMap { Int($0) }
            #expect(retryAfter.map { $0 >= 1 } == true, "Retry-After: \(r.header("Retry-After") ?? "-")")
            #expect(r.header("X-Cache") == nil)
            // CORS on the error, as on a success.
            #expect(r.header("Access-Control-Allow-Origin") == Self.origin)
            #expect(r.header("Access-Control-Allow-Credentials") == "true")
            let exposed = r.headers("Access-Control-Expose-Headers").flatMap { $0.split(separator: ",") }
                .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            #expect(exposed.contains("retry-after"), "\(exposed)")
            #expect(r.headers("Vary").joined(separator: ",").lowercased().contains("origin"))
            // The first page, 1 + retries times, and nothing after it.
            let stats = try await g.sim(.GET, "/__sim/stats").json
            #expect((stats["calls"] as? [String: Int])?["domestic_daily"] == 1 + retries, "\(stats)")
            #expect((stats["errors"] as? [String: Int])?["EGW00201"] == 1 + retries, "\(stats)")
            #expect(took < .seconds(8), "took \(took)")
            _ = try await g.sim(.POST, "/__sim/reset")
        }
    }

    @Test("KIS refusing every call through the stand-in ([upstream] retries 2): 429 rate_limited, the first page asked 3 times")
    func everyCallRefusedThroughStandIn() async throws {
        let fetched = try await Self.fetchThroughStandIn(Self.longChart, store: .memory, user: "always-si",
                                                         fail: Set(1...20))
        #expect(fetched.answer.status == 429, "\(fetched.answer.status) \(fetched.answer.text)")
        #expect(fetched.answer.code == "rate_limited")
        #expect(fetched.answer.header("Retry-After") != nil)
        // The first page (ending on the chart's end), 1 + retries times, and nothing after it.
        #expect(fetched.kis.order == Array(repeating: "20240628", count: 3), "\(fetched.kis.order)")
        #expect(fetched.simCalls == 0)
    }
}

/// KIS refusals that concern one app key (kis-api.md §6) are that app key's answer only: a request made with another
/// app key, waiting on the refused fetch, fetches with its own.
@Suite("KIS codes of one app key")
struct AppKeyRefusalTests {
    @Test("KIS's codes are classified as kis-api.md §6 says")
    func classification() {
        let table: [(String, KISClientError.Kind)] = [
            ("EGW00123", .tokenExpired), ("EGW00121", .tokenInvalid), ("EGW00122", .tokenInvalid),
            ("EGW00201", .rateLimited), ("EGW00215", .rateLimited), ("EGW00133", .issuanceTooFrequent),
            ("EGW00102", .credentialsRejected), ("EGW00103", .credentialsRejected), ("EGW00104", .credentialsRejected),
            ("EGW00105", .credentialsRejected), ("EGW00206", .credentialsRejected), ("EGW02004", .credentialsRejected),
            ("EGW00001", .transient), ("EGW00002", .transient), ("OPSQ2001", .upstream), ("EGW00213", .upstream),
        ]
        for (code, kind) in table { #expect(KISClientError.kind(forCode: code) == kind, "\(code)") }
    }

    /// Before, `EGW00206` (the app is not entitled to the API) counted as the chart's failure: the user with another
    /// app key who waited on it got the same 502.
    @Test("a fetch KIS refuses with EGW00206 for one app key: its user gets 502, a user of another app key waiting on it 200")
    func notEntitledIsTheAppKeysOwn() async throws {
        let standIn = StandInKIS(failure: .notEntitled(appKey: "PSapp-unentitled"), failing: [])
        let (url, server) = await standIn.start()
        let registry = PrometheusCollectorRegistry()
        try await stopping([server]) {
            try await withGateway(
                config: { simURL in
                    standIn.forwardTo(simURL)
                    return testConfig(simURL: simURL, liveURL: url)
                },
                dependencies: { _, deps in deps.metricsRegistry = registry }
            ) { g, _ in
                let kisA = try await g.connect(user: "ne-a", appKey: "PSapp-unentitled")
                let kisB = try await g.connect(user: "ne-b", appKey: "PSapp-entitled")
                let (jwtA, jwtB) = (try await g.jwt("ne-a"), try await g.jwt("ne-b"))
                let path = "/domestic/chart/daily/005930?start=2025-02-03&end=2025-02-28"
                async let a = g.get(path, jwt: jwtA, kis: kisA)
                try await Task.sleep(for: .milliseconds(200))  // A's call is at the stand-in, answered at 500 ms
                let b = try await g.get(path, jwt: jwtB, kis: kisB)
                let refused = try await a
                #expect(refused.status == 502 && refused.code == "upstream_error")
                #expect(refused.json["kis_msg_cd"] as? String == "EGW00206")
                #expect(b.status == 200, "\(b.status) \(b.text)")
                #expect(b.header("X-Cache") == "MISS")  // fetched with B's app key after A's fetch failed
                let m = Exposition(try await g.get("/metrics", jwt: nil, kis: nil).text)
                #expect(m.value("kisgw_cache_results_total", ["result": "coalesced"]) == 1)  // B waited on A's fetch
                #expect(standIn.seen.refused == 1)
            }
        }
    }

    /// Before, a request for the SANDBOX environment that joined a LIVE fetch of the same chart in this gateway was
    /// answered with the live KIS host's failure (502 or 504), where another gateway — or this one a moment later —
    /// fetched it from the sandbox host and answered 200.
    @Test("a SANDBOX request waiting on a LIVE fetch that the live KIS host fails: 200 from the sandbox host, the LIVE request 502")
    func anotherEnvironmentsFailureIsNotTheWaitersAnswer() async throws {
        // The live KIS host: a simulator failing every quotation call with HTTP 500 after 500 ms. The sandbox host is
        // the harness's simulator.
        let (ports, found) = AsyncStream.makeStream(of: Int.self)
        let live = TestServer(try await buildSimulator(
            SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000),
            logger: Logger(label: "live-kis")) { found.yield($0) })
        let registry = PrometheusCollectorRegistry()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await live.run() }
            var it = ports.makeAsyncIterator()
            let liveURL = "http://127.0.0.1:\(await it.next()!)"
            try await stopping([live]) {
                let fault = try await http(.POST, liveURL + "/__sim/faults",
                                           headers: [("content-type", "application/json")],
                                           body: #"{"mode":"http500","latency_ms":500,"rate":1.0}"#)
                try #require(fault.status == 200, "\(fault.text)")
                try await withGateway(config: { testConfig(simURL: $0, liveURL: liveURL) },
                                      dependencies: { _, deps in deps.metricsRegistry = registry }) { g, _ in
                    // The live token, from the live host, published as the broker does.
                    let issued = try await KISClient(baseURL: liveURL, logger: Logger(label: "test"))
                        .issueToken(appKey: "PSapp-env-live", appSecret: "secret-live")
                    try await TokenDirectory.publish(
                        SealedCredentials(access_token: issued.accessToken, app_key: "PSapp-env-live",
                                          app_secret: "secret-live"),
                        userID: "env-live", environment: .live, issuedAt: Date(), expiresAt: issued.expiresAt,
                        store: g.store, keyring: g.keyring)
                    let kisA = issued.accessToken
                    let kisB = try await g.connect(user: "env-sandbox", appKey: "PSapp-env-sandbox", environment: .sandbox)
                    let (jwtA, jwtB) = (try await g.jwt("env-live"), try await g.jwt("env-sandbox"))
                    let path = "/domestic/chart/daily/005930?start=2025-02-03&end=2025-02-28"
                    async let a = g.get(path, jwt: jwtA, kis: kisA)
                    try await Task.sleep(for: .milliseconds(200))  // A's call is at the live host, failed at 500 ms
                    let b = try await g.get(path, jwt: jwtB, kis: kisB)
                    let failed = try await a
                    #expect(failed.status == 502 && failed.code == "upstream_error", "\(failed.status) \(failed.text)")
                    #expect(b.status == 200, "\(b.status) \(b.text)")
                    #expect(b.header("X-Cache") == "MISS")  // fetched from the sandbox host after A's fetch failed
                    let m = Exposition(try await g.get("/metrics", jwt: nil, kis: nil).text)
                    #expect(m.value("kisgw_cache_results_total", ["result": "coalesced"]) == 1)  // B waited on A's
                    #expect(try await g.simStats()["domestic_daily"] == 1)  // the sandbox host: B's call only
                }
            }
            group.cancelAll()
        }
    }

    /// Before, each refused call pushed the app key's schedule back a second's worth of its rate, whatever it was
    /// already: eight charts refused at once (two retries each) pushed it ~16 s, and every request on the app key, in
    /// every gateway, was refused with 429 for as long after KIS accepted calls again.
    @Test("EGW00201 refusals of eight charts at once push the app key's schedule back about a second, not a second per refusal: a chart 3 s later is answered",
          arguments: StoreKind.allCases)
    func refusalsPushTheScheduleBackOnce(store: StoreKind) async throws {
        try await withGateway(store: store, config: { UpstreamRetryTests.config($0, retries: 2) }) { g, _ in
            let (jwt, kis) = try await g.signIn("pushback-\(store.rawValue)")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"kis_error","msg_cd":"EGW00201","rate":1.0}"#)
            let symbols = ["005930", "000660", "035420", "051910", "005380", "006400", "035720", "068270"]
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for symbol in symbols {
                    group.addTask {
                        try await g.get("/domestic/chart/daily/\(symbol)?start=2025-02-03&end=2025-02-28",
                                        jwt: jwt, kis: kis).status
                    }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(statuses.allSatisfy { $0 == 429 }, "\(statuses)")
            _ = try await g.sim(.POST, "/__sim/reset")  // KIS takes calls again
            try await Task.sleep(for: .seconds(3))
            let r = try await g.get("/domestic/chart/daily/207940?start=2025-02-03&end=2025-02-28", jwt: jwt, kis: kis)
            #expect(r.status == 200, "\(r.status) \(r.text)")
        }
    }
}

/// A stand-in for KIS in front of a simulator: every request is passed on to the simulator (same method, path,
/// query, headers and body) and its answer passed back — except the quotation calls whose 1-based number is in
/// `failing`, which get `failure` instead. Counts the quotation calls by their page end (`FID_INPUT_DATE_2`, or
/// overseas `BYMD`).
final class StandInKIS: Sendable {
    enum Failure: Sendable {
        /// KIS's own refusal: HTTP 500, `EGW00201` envelope.
        case egw00201
        /// Headers promising a body, part of it, then the connection closed.
        case dropConnection
        /// KIS's transient error: HTTP 500, `EGW00001` envelope ("일시적 오류", kis-api.md §7: retry).
        case transient
        /// KIS's expired-token error: HTTP 500, `EGW00123` envelope (kis-api.md §6).
        case tokenExpired
        /// No answer of KIS's: HTTP 503 with an HTML page, as a load balancer in front of it gives while its
        /// servers are away for a moment.
        case frontUnavailable
        /// Every quotation call made with this app key, whatever `failing` says, after 500 ms: HTTP 500, `EGW00206`
        /// ("API 사용 권한이 없습니다": the app is not entitled to the API). Other app keys' calls pass.
        case notEntitled(appKey: String)
    }

    struct Seen: Sendable {
        /// Quotation calls, including failed ones.
        var calls = 0
        var refused = 0
        /// The page end of each quotation call, in order.
        var order: [String] = []
        var byPageEnd: [String: Int] = [:]
    }

    let failure: Failure
    let failing: Set<Int>
    /// Run before each quotation call is answered, with its 1-based number.
    let beforeCall: @Sendable (Int) async throws -> Void
    private let target = Mutex<String?>(nil)
    private let state = Mutex(Seen())

    init(failure: Failure, failing: Set<Int>, beforeCall: @escaping @Sendable (Int) async throws -> Void = { _ in }) {
        self.failure = failure
        self.failing = failing
        self.beforeCall = beforeCall
    }

    var seen: Seen { state.withLock { $0 } }

    /// Where requests are passed on to (the simulator); set before the first request.
    func forwardTo(_ url: String) { target.withLock { $0 = url } }

    /// Serves on a free loopback port; the caller stops the server when done.
    func start() async -> (url: String, server: TestServer) {
        let router = Router()
        router.get("**") { request, _ in try await self.handle(request) }
        router.post("**") { request, _ in try await self.handle(request) }
        var logger = Logger(label: "stand-in-kis")
        logger.logLevel = .critical
        return await startStandInKIS(router, logger: logger)
    }

    private func handle(_ request: Request) async throws -> Response {
        if request.uri.path.hasPrefix("/uapi/") {
            let params = request.uri.queryParameters
            let end = String(params["FID_INPUT_DATE_2"] ?? params["BYMD"] ?? "")
            var refused = false
            if case .notEntitled(let appKey) = failure { refused = request.headers[.init("appkey")!] == appKey }
            let n = state.withLock { s in
                s.calls += 1
                s.order.append(end)
                s.byPageEnd[end, default: 0] += 1
                if refused || failing.contains(s.calls) { s.refused += 1 }
                return s.calls
            }
            try await beforeCall(n)
            if refused || failing.contains(n) { return try await failureResponse() }
        }
        return try await forward(request)
    }

    private func failureResponse() async throws -> Response {
        switch failure {
        case .notEntitled:
            try await Task.sleep(for: .milliseconds(500))
            return Self.kisError("EGW00206", "API 사용 권한이 없습니다.")
        case .egw00201:
            return Self.kisError("EGW00201", "초당 거래건수를 초과하였습니다.")
        case .transient:
            return Self.kisError("EGW00001", "일시적 오류가 발생했습니다.")
        case .tokenExpired:
            return Self.kisError("EGW00123", "기간이 만료된 token 입니다.")
        case .frontUnavailable:
            var headers = HTTPFields()
            headers[.contentType] = "text/html"
            return Response(status: .serviceUnavailable, headers: headers,
                            body: .init(byteBuffer: ByteBuffer(string: "<html><body>503 Service Unavailable</body></html>")))
        case .dropConnection:
            var headers = HTTPFields()
            headers[.contentType] = "application/json; charset=utf-8"
            headers[.contentLength] = "4096"
            return Response(status: .ok, headers: headers, body: ResponseBody { writer in
                try await writer.write(ByteBuffer(string: #"{"rt_cd":"0","output2":["#))
                throw CancellationError()  // the server closes the connection mid-body
            })
        }
    }

    /// KIS's error answer: HTTP 500 with its envelope.
    private static func kisError(_ code: String, _ message: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json; charset=utf-8"
        return Response(
            status: .internalServerError, headers: headers,
            body: .init(byteBuffer: ByteBuffer(string: #"{"rt_cd":"1","msg_cd":"\#(code)","msg1":"\#(message)"}"#)))
    }

    private func forward(_ request: Request) async throws -> Response {
        guard let base = target.withLock({ $0 }) else { return Response(status: .serviceUnavailable) }
        var outgoing = HTTPClientRequest(url: base + request.uri.path + (request.uri.query.map { "?" + $0 } ?? ""))
        outgoing.method = HTTPMethod(rawValue: request.method.rawValue)
        for field in request.headers where !["host", "content-length", "connection", "transfer-encoding"]
            .contains(field.name.canonicalName)
        {
            outgoing.headers.add(name: field.name.rawName, value: field.value)
        }
        let body = try await request.body.collect(upTo: 1 << 20)
        if body.readableBytes > 0 { outgoing.body = .bytes(body) }
        let answer = try await HTTPClient.shared.execute(outgoing, timeout: .seconds(30))
        let bytes = try await answer.body.collect(upTo: 16 << 20)
        var headers = HTTPFields()
        for (name, value) in answer.headers
        where !["content-length", "connection", "transfer-encoding"].contains(name.lowercased()) {
            headers.append(.init(name: .init(name)!, value: value))  // names KIS (the simulator) sent: valid
        }
        return Response(status: .init(code: Int(answer.status.code)), headers: headers, body: .init(byteBuffer: bytes))
    }
}
