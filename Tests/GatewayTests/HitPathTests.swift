import Foundation
import KIS
import KisgwConfiguration
import Simulator
@testable import Gateway
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import ServerKit
import Testing
import Tokens
import TestSupport

/// The hit path answers on the event loop what the router would answer: these tests run a gateway with it and
/// one without it (the router alone) on one store, send both the same requests, and compare the answers.
@Suite("Hit path", .serialized)
struct HitPathTests {
    /// Counts the hit path's answers.
    final class Answers: Sendable {
        private let count = Mutex(0)
        var value: Int { count.withLock { $0 } }
        func add() { count.withLock { $0 += 1 } }
    }

    /// One gateway (no second one to compare with) whose hit-path answers are counted, and a user connected
    /// through it: the body gets the fixture, the user's JWT and KIS token, and the count.
    static func withUser(_ user: String, appKey: String, latencyMs: Int = 0,
                         config: @escaping @Sendable (_ simURL: String) -> KisgwConfig = { testConfig(simURL: $0) },
                         _ body: @Sendable (GatewayFixture, _ jwt: String, _ kis: String, Answers) async throws -> Void)
        async throws
    {
        let answers = Answers()
        try await withGateway(sim: SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000,
                                                          latencyMs: latencyMs),
                              config: config,
                              dependencies: { _, deps in deps.onHitPathAnswer = { _ in answers.add() } }) { fx, _ in
            let jwt = try await fx.jwt(user)
            let kis = try await fx.connect(user: user, appKey: appKey)
            try await body(fx, jwt, kis, answers)
        }
    }

    /// Every header but `Date` and `Age`, with `max-age`'s number left out: those are compared apart, since a second
    /// may pass between the two answers.
    static func comparable(_ r: HTTPResult) -> [String] {
        r.headers.filter { !["date", "age"].contains($0.0.lowercased()) }.map(line)
    }

    /// `name: value`, the name lowercased, `max-age`'s number left out.
    static func line(_ name: String, _ value: String) -> String {
        let n = name.lowercased()
        return n + ": " + (n == "cache-control" ? value.replacing(/max-age=\d+/, with: "max-age=N") : value)
    }

    static func maxAge(_ r: HTTPResult) -> Int? {
        (r.header("cache-control")?.firstMatch(of: /max-age=(\d+)/)).flatMap { Int($0.1) }
    }

    static func expectSame(_ fast: HTTPResult, _ router: HTTPResult, _ what: String) {
        #expect(fast.status == router.status, "\(what): status")
        #expect(fast.body == router.body, "\(what): body")
        #expect(comparable(fast) == comparable(router), "\(what): headers")
        if let a = fast.header("age").flatMap(Int.init), let b = router.header("age").flatMap(Int.init) {
            #expect(abs(a - b) <= 1, "\(what): Age")
        } else {
            #expect(fast.header("age") == nil && router.header("age") == nil, "\(what): Age present in one only")
        }
        if let a = maxAge(fast), let b = maxAge(router) {
            #expect(abs(a - b) <= 1, "\(what): max-age")
        }
        #expect(fast.header("date") != nil && router.header("date") != nil, "\(what): Date")
    }

    @Test("hits, 304s, CORS variants, preflights and rejected JWTs: the hit path's answers are the router's")
    func sameAnswers() async throws {
        let answers = Answers()
        try await withGateway(gateways: 2, dependencies: { index, deps in
            if index == 0 {
                deps.onHitPathAnswer = { _ in answers.add() }
            } else {
                deps.hitPathEnabled = false
            }
        }) { fx, urls in
            let (fast, router) = (urls[0], urls[1])
            let jwt = try await fx.jwt("hp-user")
            let kis = try await fx.connect(user: "hp-user", appKey: "PShitpath0001")
            let expired = try await fx.jwt("hp-user", ttl: -3600)
            let badSignature = String(jwt.dropLast(4)) + (jwt.hasSuffix("AAAA") ? "BBBB" : "AAAA")
            let hot = "/domestic/chart/daily/005930?start=2025-04-01&end=2025-06-16"
            // Warm the shared cache once, so both gateways answer hits.
            let first = try await fx.get(hot, jwt: jwt, kis: kis)
            #expect(first.status == 200)
            let etag = try #require(first.header("etag"))

            struct Case: Sendable {
                var name: String
                var method: HTTPMethod = .GET
                var path: String
                var jwt: String?
                var headers: [(String, String)] = []
                var status: Int
            }
            let overseas = "/overseas/NAS/chart/daily/AAPL?start=2025-01-02&end=2025-03-31"
            _ = try await fx.get(overseas, jwt: jwt, kis: kis)
            let cases: [Case] = [
                Case(name: "hit, allowed origin", path: hot, jwt: jwt, headers: [("Origin", "http://localhost:3000")], status: 200),
                Case(name: "hit, wildcard origin", path: hot, jwt: jwt, headers: [("Origin", "https://app.example.com")], status: 200),
                Case(name: "hit, other origin", path: hot, jwt: jwt, headers: [("Origin", "https://example.com.evil.io")], status: 200),
                Case(name: "hit, no origin", path: hot, jwt: jwt, status: 200),
                Case(name: "304", path: hot, jwt: jwt, headers: [("If-None-Match", etag), ("Origin", "http://localhost:3000")], status: 304),
                Case(name: "304 weak in a list", path: hot, jwt: jwt, headers: [("If-None-Match", "\"x\", W/\(etag)")], status: 304),
                Case(name: "If-None-Match other", path: hot, jwt: jwt, headers: [("If-None-Match", "\"nope\"")], status: 200),
                Case(name: "overseas hit", path: overseas, jwt: jwt, headers: [("Origin", "http://localhost:3000")], status: 200),
                Case(name: "bad signature", path: hot, jwt: badSignature, headers: [("Origin", "http://localhost:3000")], status: 401),
                Case(name: "expired JWT", path: hot, jwt: expired, headers: [("Origin", "http://localhost:3000")], status: 401),
                Case(name: "bad signature, bad query", path: "/domestic/chart/daily/005930?start=nope", jwt: badSignature, status: 401),
                Case(name: "preflight allowed", method: .OPTIONS, path: hot,
                     headers: [("Origin", "http://localhost:3000"), ("Access-Control-Request-Method", "GET")], status: 204),
                Case(name: "preflight refused", method: .OPTIONS, path: hot,
                     headers: [("Origin", "https://evil.io"), ("Access-Control-Request-Method", "GET")], status: 403),
            ]
            for c in cases {
                var headers = c.headers
                if let j = c.jwt { headers += [("Authorization", "Bearer " + j), ("X-KIS-Token", kis)] }
                // The first request may teach the caches (a JWT verified or rejected); the second is compared.
                _ = try await http(c.method, fast + c.path, headers: headers)
                _ = try await http(c.method, router + c.path, headers: headers)
                let before = answers.value
                let a = try await http(c.method, fast + c.path, headers: headers)
                let b = try await http(c.method, router + c.path, headers: headers)
                #expect(answers.value == before + 1, "\(c.name): answered by the hit path")
                #expect(a.status == c.status, "\(c.name): status \(a.status)")
                Self.expectSame(a, b, c.name)
            }

            // Charts the fast gateway's L1 lacks, for credentials it knows: asked of ChartService on the hit path.
            let auth = [("Authorization", "Bearer " + jwt), ("X-KIS-Token", kis), ("Origin", "http://localhost:3000")]
            // In the shared store (the router's gateway fetched it): the same answer as the router's hit.
            let shared = "/domestic/chart/daily/000660?start=2025-04-01&end=2025-06-16"
            #expect(try await http(.GET, router + shared, headers: auth).header("x-cache") == "MISS")
            try await waitUntilShared(fx.store, domesticChart: shared)
            var before = answers.value
            let viaStore = try await http(.GET, fast + shared, headers: auth)
            #expect(answers.value == before + 1, "a chart from the store: answered by the hit path")
            #expect(viaStore.header("x-cache") == "HIT")
            Self.expectSame(viaStore, try await http(.GET, router + shared, headers: auth), "a chart from the store")
            // A conditional request for a chart the fast gateway's L1 lacks: the router's 304.
            let shared2 = "/domestic/chart/daily/005380?start=2025-04-01&end=2025-06-16"
            let tag = try #require(try await http(.GET, router + shared2, headers: auth).header("etag"))
            try await waitUntilShared(fx.store, domesticChart: shared2)
            before = answers.value
            let conditional = try await http(.GET, fast + shared2, headers: auth + [("If-None-Match", tag)])
            #expect(answers.value == before + 1, "a conditional fetch: answered by the hit path")
            #expect(conditional.status == 304)
            Self.expectSame(conditional, try await http(.GET, router + shared2, headers: auth + [("If-None-Match", tag)]),
                            "a conditional fetch")
            // KIS refuses: the router's problem, CORS included.
            _ = try await fx.sim(.POST, "/__sim/faults", #"{"mode":"kis_error","msg_cd":"EGW00002"}"#)
            let failing = "/domestic/chart/daily/068270?start=2025-04-01&end=2025-06-16"
            before = answers.value
            let problem = try await http(.GET, fast + failing, headers: auth)
            #expect(answers.value == before + 1, "a failed fetch: answered by the hit path")
            let routerProblem = try await http(.GET, router + failing, headers: auth)
            _ = try await fx.sim(.POST, "/__sim/faults", #"{"mode":"none"}"#)
            #expect(problem.status == 502 && problem.header("access-control-allow-origin") == "http://localhost:3000")
            Self.expectSame(problem, routerProblem, "a failed fetch")

            // Fetched from KIS: the router's head for another symbol, but for what depends on the data.
            before = answers.value
            let fetched = try await http(.GET, fast + "/domestic/chart/daily/035720?start=2025-04-01&end=2025-06-16", headers: auth)
            #expect(answers.value == before + 1, "a miss: answered by the hit path")
            let routed = try await http(.GET, router + "/domestic/chart/daily/035420?start=2025-04-01&end=2025-06-16", headers: auth)
            #expect(fetched.status == 200 && routed.status == 200)
            let varying: Set<String> = ["date", "age", "etag", "content-length", "server-timing"]
            func fixed(_ r: HTTPResult) -> [String] {
                r.headers.map { name, value in varying.contains(name.lowercased()) ? name.lowercased() : Self.line(name, value) }
            }
            #expect(fixed(fetched) == fixed(routed), "a miss: headers")
            #expect(fetched.header("x-cache") == "MISS")
            for r in [fetched, routed] {
                #expect(r.header("server-timing")?.wholeMatch(of: /cache;desc="miss", upstream;dur=\d+\.\d/) != nil,
                        "Server-Timing \(r.header("server-timing") ?? "none")")
            }

            // What the hit path must leave to the router: it answers those the same way too.
            let routerOnly: [(String, [(String, String)])] = [
                ("unknown KIS token", [("Authorization", "Bearer " + jwt), ("X-KIS-Token", "not-a-token")]),
                ("two KIS tokens", [("Authorization", "Bearer " + jwt), ("X-KIS-Token", kis), ("X-KIS-Token", kis)]),
                ("no KIS token", [("Authorization", "Bearer " + jwt)]),
                ("not Bearer", [("Authorization", "Basic abc"), ("X-KIS-Token", kis)]),
                ("Connection: close", [("Authorization", "Bearer " + jwt), ("X-KIS-Token", kis), ("Connection", "close")]),
            ]
            for (name, headers) in routerOnly {
                before = answers.value
                let a = try await http(.GET, fast + hot, headers: headers)
                let b = try await http(.GET, router + hot, headers: headers)
                #expect(answers.value == before, "\(name): left to the router")
                Self.expectSame(a, b, name)
            }
            for path in ["/domestic/chart/daily/005930?start=2025-13-01", "/domestic/chart/daily/00%35930?start=2025-04-01&end=2025-06-16",
                         "/domestic/chart/daily/005930/?start=2025-04-01&end=2025-06-16", "/domestic/chart/daily/005930?start"] {
                let headers = [("Authorization", "Bearer " + jwt), ("X-KIS-Token", kis)]
                before = answers.value
                let a = try await http(.GET, fast + path, headers: headers)
                let b = try await http(.GET, router + path, headers: headers)
                #expect(answers.value == before, "\(path): left to the router")
                #expect(a.status == b.status && a.body == b.body, "\(path): \(a.status) vs \(b.status)")
            }
        }
    }

    @Test("[server] max_header_bytes bounds a request's headers, with the hit path and without")
    func headerLimit() async throws {
        try await withGateway(gateways: 2, config: { testConfig(simURL: $0, maxHeaderBytes: 4096) }, dependencies: { index, deps in deps.hitPathEnabled = index == 0 }) { fx, urls in
            let jwt = try await fx.jwt("hp-limit")
            let kis = try await fx.connect(user: "hp-limit", appKey: "PShitpath0005")
            let path = "/domestic/chart/daily/005930?start=2025-04-01&end=2025-06-16"
            let auth = [("Authorization", "Bearer " + jwt), ("X-KIS-Token", kis)]
            for url in urls {
                #expect(try await http(.GET, url + path, headers: auth + [("X-Pad", String(repeating: "a", count: 2000))]).status == 200,
                        "\(url): under the limit")
                let over = try await http(.GET, url + path, headers: auth + [("X-Pad", String(repeating: "a", count: 5000))])
                #expect(over.status == 400, "\(url): over the limit, \(over.status)")
                #expect(over.header("connection") == "close")
            }
            // The gateway as it runs (with the hit path): a problem, naming the limit.
            let over = try await http(.GET, urls[0] + path, headers: auth + [("X-Pad", String(repeating: "a", count: 5000))])
            #expect(over.header("content-type") == "application/problem+json")
            #expect(over.code == "invalid_parameter")
            #expect((over.json["detail"] as? String)?.contains("max_header_bytes") == true)
        }
    }

    /// gateway-api.md: errors carry CORS "so the browser code can read the status". A head over the limit was
    /// refused by NIO's decoder before its `Origin` was read, so the browser saw a network error. Now the decoder
    /// stops at twice the limit, and a head between the two is refused with CORS; beyond that it still has none.
    @Test("a request head over max_header_bytes from an allowed origin is refused with CORS headers, in order behind the router's answers")
    func headerLimitCarriesCORS() async throws {
        try await withGateway(config: { testConfig(simURL: $0, maxHeaderBytes: 4096) }) { fx, urls in
            let url = urls[0]
            let jwt = try await fx.jwt("hp-limit-cors")
            let kis = try await fx.connect(user: "hp-limit-cors", appKey: "PShitpath0015")
            let path = "/domestic/chart/daily/005930?start=2025-04-01&end=2025-06-16"
            let origin = "http://localhost:3000"
            let auth = [("Authorization", "Bearer " + jwt), ("X-KIS-Token", kis), ("Origin", origin)]
            func pad(_ n: Int) -> (String, String) { ("X-Pad", String(repeating: "a", count: n)) }

            #expect(try await http(.GET, url + path, headers: auth + [pad(3000)]).status == 200)
            for (what, headers) in [("a long field", auth + [pad(5000)]),
                                    ("many fields", auth + (0..<6).map { ("X-Pad-\($0)", String(repeating: "b", count: 700)) }),
                                    ("a preflight", [("Origin", origin), ("Access-Control-Request-Method", "GET"), pad(5000)])]
            {
                let method: HTTPMethod = what == "a preflight" ? .OPTIONS : .GET
                let over = try await http(method, url + path, headers: headers)
                #expect(over.status == 400 && over.code == "invalid_parameter", "\(what): \(over.status) \(over.text)")
                #expect((over.json["detail"] as? String)?.contains("max_header_bytes") == true, "\(what)")
                #expect(over.header("Access-Control-Allow-Origin") == origin, "\(what)")
                #expect(over.header("Access-Control-Allow-Credentials") == "true", "\(what)")
                #expect(over.header("Access-Control-Expose-Headers")?.contains("Retry-After") == true, "\(what)")
                #expect(over.header("Vary") == "Origin" && over.header("Connection") == "close", "\(what)")
            }
            // The target counts as the decoder counts it.
            let longTarget = try await http(.GET, url + path + "&pad=" + String(repeating: "c", count: 4100), headers: auth)
            #expect(longTarget.status == 400 && longTarget.header("Access-Control-Allow-Origin") == origin)
            // An origin not allowed gets none; a head past the decoder's own limit (twice) still gets a problem.
            let foreign = try await http(.GET, url + path, headers: [auth[0], auth[1], ("Origin", "http://evil.test"), pad(5000)])
            #expect(foreign.status == 400 && foreign.header("Access-Control-Allow-Origin") == nil)
            let huge = try await http(.GET, url + path, headers: auth + [pad(9000)])
            #expect(huge.status == 400 && huge.code == "invalid_parameter" && huge.header("Access-Control-Allow-Origin") == nil)

            // Pipelined behind a request the router answers (an unknown route): that answer first, then the refusal,
            // then the connection closes; nothing after the refused head is answered.
            let port = Int(url.split(separator: ":").last!)!
            let small = "GET /nope HTTP/1.1\r\nHost: x\r\nOrigin: \(origin)\r\n\r\n"
            let big = "GET \(path) HTTP/1.1\r\nHost: x\r\nOrigin: \(origin)\r\nX-Pad: \(String(repeating: "a", count: 5000))\r\n\r\n"
            let reply = try await exchangeRawBytes(port: port, small + big + small)
            // (A status line follows the previous answer's body directly.)
            let statuses = reply.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix(3) }
            #expect(statuses == ["404", "400"], "\(reply.prefix(2000))")
            #expect(reply.lowercased().components(separatedBy: "access-control-allow-origin: \(origin)").count == 3,
                    "\(reply.prefix(2000))")
        }
    }

    @Test("[server] request_timeout_ms bounds the wait for a fetch, through the router and the hit path; the fetch goes on")
    func requestTimeout() async throws {
        // KIS takes 2.5 s (within [upstream] timeout_ms): a request bounded at 0.4 s is told apart from one that
        // waited for the fetch, however slow the machine.
        try await Self.withUser("hp-timeout", appKey: "PShitpath0006", latencyMs: 2500,
                                config: { testConfig(simURL: $0, upstreamTimeoutMs: 6000, requestTimeoutMs: 400) }) { fx, jwt, kis, answers in
            let paths = ["/domestic/chart/daily/005930?start=2025-04-01&end=2025-06-16",   // first sight of the JWT: the router
                         "/domestic/chart/daily/000660?start=2025-04-01&end=2025-06-16"]   // then the hit path
            for (i, path) in paths.enumerated() {
                let before = answers.value
                let started = ContinuousClock.now
                let r = try await fx.get(path, jwt: jwt, kis: kis)
                let waited = ContinuousClock.now - started
                #expect(answers.value - before == i, "answered by \(i == 0 ? "the router" : "the hit path")")
                #expect(r.status == 504 && r.json["code"] as? String == "upstream_timeout", "\(path): \(r.status)")
                #expect(waited < .milliseconds(2000), "waited \(waited) (KIS takes 2.5 s)")
                // The fetch went on and filled the cache (a request that joins it on the way is answered MISS).
                #expect(try await eventually(timeout: .seconds(20)) { try await fx.get(path, jwt: jwt, kis: kis).status == 200 })
                let later = try await fx.get(path, jwt: jwt, kis: kis)
                #expect(later.status == 200 && later.header("x-cache") == "HIT", "\(path) later: \(later.status)")
            }
        }
    }

    @Test("a request waiting on a fetch another request started waits at most [upstream] timeout_ms; the fetch goes on")
    func waiterBound() async throws {
        // Six or more KIS pages of 500 ms each: the fetch takes 3 s or more, each call within the 1 s timeout, so a
        // waiter that gives up at the bound is told apart from one that waited for the fetch, however slow the machine.
        try await Self.withUser("hp-waiter", appKey: "PShitpath0007", latencyMs: 500,
                                config: { testConfig(simURL: $0, upstreamTimeoutMs: 1000, requestTimeoutMs: 10_000) }) { fx, jwt, kis, _ in
            let path = "/domestic/chart/daily/005930?start=2023-01-02&end=2025-03-31"
            @Sendable func timed() async throws -> (HTTPResult, Duration) {
                let started = ContinuousClock.now
                let r = try await fx.get(path, jwt: jwt, kis: kis)
                return (r, ContinuousClock.now - started)
            }
            async let first = timed()
            try await Task.sleep(for: .milliseconds(200))
            async let second = timed()
            // Whichever started the fetch gets the chart; the other waited for it, and gave up at the bound.
            let results = try await [first, second]
            let answered = results.filter { $0.0.status == 200 }, gaveUp = results.filter { $0.0.status == 504 }
            #expect(answered.count == 1 && gaveUp.count == 1, "\(results.map { ($0.0.status, $0.1) })")
            if let (r, waited) = gaveUp.first {
                #expect(r.json["code"] as? String == "upstream_timeout")
                #expect((r.json["detail"] as? String)?.contains("[upstream] timeout_ms") == true, "\(r.text)")
                #expect(waited >= .milliseconds(950) && waited < .milliseconds(2600), "waited \(waited)")
            }
            if let (r, waited) = answered.first {
                #expect(r.header("x-cache") == "MISS")
                #expect(waited >= .milliseconds(2800), "the fetch took \(waited)")
            }
            #expect(try await fx.simStats()["domestic_daily"]! >= 6)
            #expect(try await fx.get(path, jwt: jwt, kis: kis).header("x-cache") == "HIT")
        }
    }

    @Test("bytes the decoder refuses: a problem 400 for a request it cannot read; the router's own body error for a request it is reading")
    func refusedBytes() async throws {
        try await Self.withUser("hp-bytes", appKey: "PShitpath0008") { fx, jwt, _, _ in
            let port = fx.gatewayPort
            // Not HTTP at all: answered as a problem, then closed.
            let junk = try await exchangeRawBytes(port: port, "NOT HTTP AT ALL\r\n\r\n")
            #expect(junk.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(junk)")
            #expect(junk.contains("Content-Type: application/problem+json"), "\(junk)")
            #expect(junk.contains(#""code":"invalid_parameter""#), "\(junk)")
            // A routed request whose chunked body turns bad mid-way: the router's body stream fails (a problem 400
            // from the route) and the connection closes — it does not wait for a body that will never end.
            let started = ContinuousClock.now
            // (A valid JWT: the route checks it before it reads the body.)
            let bad = try await exchangeRawBytes(port: port, "POST /token/refresh HTTP/1.1\r\nHost: x\r\n"
                + "Authorization: Bearer \(jwt)\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n")
            #expect(ContinuousClock.now - started < .seconds(5), "the connection stayed open")
            #expect(bad.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(bad)")
            #expect(bad.contains(#""code":"invalid_parameter""#), "\(bad)")
        }
    }

    @Test("a request that does not keep the connection (HTTP/1.0, `close` in any case or in a list) is answered with Connection: close, and the connection closes")
    func connectionClose() async throws {
        try await Self.withUser("hp-close", appKey: "PShitpath0011") { fx, jwt, kis, _ in
            let port = fx.gatewayPort
            let chart = "/domestic/chart/daily/005930?start=2025-04-01&end=2025-06-16"
            let credentials = "Authorization: Bearer \(jwt)\r\nX-KIS-Token: \(kis)\r\n"
            for (request, what) in [
                ("GET /healthz HTTP/1.0\r\n\r\n", "HTTP/1.0"),
                ("GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n", "Close"),
                ("GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n", "a list"),
                ("GET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n", "an error answer"),
                ("GET \(chart) HTTP/1.0\r\n\(credentials)\r\n", "a chart over HTTP/1.0"),
                ("GET \(chart) HTTP/1.1\r\nHost: a\r\n\(credentials)Connection: close\r\n\r\n", "a chart"),
            ] {
                // `exchangeRawBytes` reads until the server closes: it throws if the connection stays open 3 s.
                let raw = try await exchangeRawBytes(port: port, request, timeout: 3)
                #expect(raw.hasPrefix("HTTP/1.1 "), "\(what): \(raw)")
                #expect(raw.components(separatedBy: "HTTP/1.1 ").count == 2, "one answer: \(what): \(raw)")
                let head = raw.components(separatedBy: "\r\n\r\n")[0].lowercased()
                #expect(head.contains("\r\nconnection: close"), "\(what): \(raw)")
            }
            // RFC 9112 §9.6: nothing after a request that closes the connection is answered — not even a hit the
            // hit path could answer at once (it did).
            _ = try await fx.get(chart, jwt: jwt, kis: kis)  // in the L1, credentials known
            let after = try await exchangeRawBytes(port: port, "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                + "GET \(chart) HTTP/1.1\r\nHost: a\r\n\(credentials)\r\n", timeout: 3)
            #expect(after.components(separatedBy: "HTTP/1.1 ").count == 2 && after.hasPrefix("HTTP/1.1 200 OK"), "\(after)")
            #expect(after.contains(#"{"status":"ok"}"#), "\(after)")
            // Kept alive otherwise: two answers on one connection, the second closing it.
            let both = try await exchangeRawBytes(port: port, "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n"
                + "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", timeout: 3)
            #expect(both.components(separatedBy: "HTTP/1.1 200 OK").count == 3, "\(both)")
        }
    }

    @Test("a bad body after its request was answered closes the connection without a second answer; refusals say what was wrong in plain words")
    func framingErrors() async throws {
        try await Self.withUser("hp-framing", appKey: "PShitpath0012") { fx, jwt, _, _ in
            let port = fx.gatewayPort
            // The router answers /healthz without reading the body; the bad chunk that follows is not a request.
            let raw = try await exchangeRawBytes(port: port, "GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "zz\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", timeout: 3)
            #expect(raw.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(raw)")
            #expect(raw.components(separatedBy: "HTTP/1.1 ").count == 2, "one answer only: \(raw)")
            // Refusals name the problem without the parser's internals.
            let both = try await exchangeRawBytes(port: port, "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", timeout: 3)
            #expect(both.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(both)")
            #expect(both.contains("the request is not valid HTTP/1.1: ") && !both.contains("http_parser"), "\(both)")
            let many = "GET /healthz HTTP/1.1\r\nHost: x\r\n" + (0..<1001).map { "x-\($0): 1\r\n" }.joined() + "\r\n"
            let tooMany = try await exchangeRawBytes(port: port, many, timeout: 3)
            #expect(tooMany.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(tooMany)")
            #expect(tooMany.contains("more than 1000 header fields"), "\(tooMany)")
            // RFC 9112 §3.2: HTTP/1.1 needs exactly one Host — for a chart the hit path would answer, too.
            for request in ["GET /healthz HTTP/1.1\r\n\r\n", "GET /healthz HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
                            "GET /domestic/chart/daily/005930 HTTP/1.1\r\nAuthorization: Bearer \(jwt)\r\n\r\n"] {
                let refused = try await exchangeRawBytes(port: port, request, timeout: 3)
                #expect(refused.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(refused)")
                #expect(refused.contains("exactly one Host header field"), "\(refused)")
            }
            // A token refresh body over 16 KiB is too large, as the broker says of it — not malformed.
            let big = try await http(.POST, fx.gatewayURL + "/token/refresh",
                                     headers: [("Authorization", "Bearer \(jwt)"), ("Content-Type", "application/json")],
                                     body: #"{"environment":"LIVE","pad":""# + String(repeating: "x", count: 17_000) + #""}"#)
            #expect(big.status == 413, "\(big.status) \(String(decoding: big.body, as: UTF8.self))")
            #expect(String(decoding: big.body, as: UTF8.self).contains("payload_too_large"))
        }
    }

    /// A JWT or KIS token with U+212A KELVIN SIGN for its `K`s is, to Swift's `String`, the same value as the real one
    /// (canonical equivalence). The JWT verifier's and the token authorizer's caches are keyed by `String`: the
    /// lookalike's refusal, remembered, refused the real JWT (jwt_invalid: its user signed out), and once the real
    /// one was remembered the lookalike, whose bytes were never verified, was accepted. Credentials are ASCII now.
    @Test("a JWT or KIS token with a Kelvin sign for a K: refused, and the real one still answered")
    func lookalikeCredentials() async throws {
        try await Self.withUser("hp-kelvin", appKey: "PShitpathkelvin") { fx, _, _, _ in
            let port = fx.gatewayPort
            let path = "/domestic/chart/daily/005930?start=2025-04-01&end=2025-06-16"
            // A JWT and a KIS token with a `K` in them (about half have one: a longer ttl changes the JWT, another app
            // key the token).
            var jwt = ""
            for ttl in 600..<700 where !jwt.contains("K") { jwt = try await fx.jwt("hp-kelvin", ttl: TimeInterval(ttl)) }
            var kis = ""
            for i in 0..<40 where !kis.contains("K") { kis = try await fx.connect(user: "hp-kelvin", appKey: "PShitpathkelvin\(i)") }
            try #require(jwt.contains("K") && kis.contains("K"))
            let kelvin = "\u{212A}"
            let fakeJWT = jwt.replacingOccurrences(of: "K", with: kelvin)
            let fakeKIS = kis.replacingOccurrences(of: "K", with: kelvin)
            #expect(fakeJWT == jwt && fakeKIS == kis, "Swift's String equality is what this test is about")
            func headers(_ j: String, _ k: String) -> HTTPHeaders {
                HTTPHeaders([("Host", "127.0.0.1"), ("Authorization", "Bearer \(j)"), ("X-KIS-Token", k)])
            }
            // The lookalike JWT first: refused. Then the real one, on a connection of its own: answered.
            #expect(try await RawHTTP.exchange(port: port, paths: [path], headers: headers(fakeJWT, kis)).map(\.status)
                    == [.unauthorized])
            #expect(try await RawHTTP.exchange(port: port, paths: [path, path], headers: headers(jwt, kis)).map(\.status)
                    == [.ok, .ok], "the lookalike's refusal refused the real JWT")
            // Both credentials remembered now: neither lookalike is taken for them.
            #expect(try await RawHTTP.exchange(port: port, paths: [path], headers: headers(fakeJWT, kis)).map(\.status)
                    == [.unauthorized], "a lookalike JWT was accepted")
            let withFakeKIS = try await RawHTTP.exchange(port: port, paths: [path], headers: headers(jwt, fakeKIS))
            #expect(withFakeKIS.map(\.status) == [.unauthorized], "a lookalike KIS token was accepted")
        }
    }

    /// The hit path decided a chart request at its head and answered at its end: a body held back (`Content-Length:
    /// 1`, the byte sent later) put the answer — a HIT, or a KIS call with the token's app key — after the token's
    /// revocation. A request with a body is the router's now, which answers at the head (before the revocation).
    @Test("a chart request whose body is held back past a revocation is not answered with the chart after it")
    func bodyHeldBackPastARevocation() async throws {
        try await Self.withUser("hp-body", appKey: "PShitpathbody") { fx, jwt, kis, _ in
            let port = fx.gatewayPort
            let path = "/domestic/chart/daily/005930?start=2025-04-01&end=2025-06-16"
            #expect(try await fx.get(path, jwt: jwt, kis: kis).status == 200)
            #expect(try await fx.get(path, jwt: jwt, kis: kis).header("x-cache") == "HIT")
            let connection = try RawConnection(port: port, receiveTimeout: 10)
            // Whatever is answered to the head alone (the router answers there; the body is read after).
            let early = try await onThread {
                try connection.send("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \(jwt)\r\n"
                                    + "X-KIS-Token: \(kis)\r\nContent-Length: 1\r\n\r\n")
                return connection.readAvailable(within: 1000)
            }
            try await TokenDirectory.unpublish(sha256: TokenDirectory.sha256(of: kis), userID: "hp-body",
                                               environment: .live, store: fx.store)
            let revoked = try await eventually(timeout: .seconds(10)) { try await fx.get(path, jwt: jwt, kis: kis).status == 401 }
            #expect(revoked, "the revocation never took effect")
            let late = try await onThread {
                try connection.send("x")
                return connection.readAvailable(within: 1000)
            }
            let text = String(decoding: late, as: UTF8.self)
            #expect(!text.hasPrefix("HTTP/1.1 200"), "the chart was answered after the token was revoked: \(text.prefix(200))")
            #expect(String(decoding: early, as: UTF8.self).hasPrefix("HTTP/1.1 200") || text.hasPrefix("HTTP/1.1 401"),
                    "early \(early.count) bytes, late: \(text.prefix(200))")
        }
    }

    @Test("a revoked KIS token is refused at once, however often its hit was served")
    func revocation() async throws {
        try await Self.withUser("hp-revoke", appKey: "PShitpath0002") { fx, jwt, kis, answers in
            let path = "/domestic/chart/daily/000660?start=2025-04-01&end=2025-06-16"
            _ = try await fx.get(path, jwt: jwt, kis: kis)
            for _ in 0..<3 { #expect(try await fx.get(path, jwt: jwt, kis: kis).status == 200) }
            #expect(answers.value >= 3)
            try await TokenDirectory.unpublish(sha256: TokenDirectory.sha256(of: kis), userID: "hp-revoke",
                                               environment: .live, store: fx.store)
            var refused = false
            for _ in 0..<50 where !refused {
                refused = try await fx.get(path, jwt: jwt, kis: kis).status == 401
                if !refused { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(refused, "the revoked token still got charts")
        }
    }

    @Test("pipelined requests are answered in order when a slow one comes first")
    func pipelinedOrder() async throws {
        try await Self.withUser("hp-pipe", appKey: "PShitpath0003", latencyMs: 300) { fx, jwt, kis, answers in
            let hot = "/domestic/chart/daily/005930?start=2025-04-01&end=2025-06-16"
            let cold = "/domestic/chart/daily/035420?start=2025-04-01&end=2025-06-16"
            _ = try await fx.get(hot, jwt: jwt, kis: kis)
            #expect(try await fx.get(hot, jwt: jwt, kis: kis).header("x-cache") == "HIT")
            let port = fx.gatewayPort
            let headers = HTTPHeaders([("Host", "127.0.0.1"), ("Authorization", "Bearer \(jwt)"), ("X-KIS-Token", kis)])
            // A miss (300 ms at KIS), then two hits, in one write.
            let raw = try await RawHTTP.exchange(port: port, paths: [cold, hot, hot], headers: headers)
            let order = raw.map { $0.headers.first(name: "x-cache") ?? "?" }
            #expect(order == ["MISS", "HIT", "HIT"], "answers out of order: \(order)")
            #expect(raw.allSatisfy { $0.status == .ok })
            // Behind misses the hit path fetches (the credentials are known now), the requests that arrived with
            // them wait, then go on in order: a hit and another miss answered by the hit path, then a HEAD for the
            // router (the hit's head, without its body) and a hit that, pipelined behind the router's request, goes
            // to the router too.
            let cold2 = "/domestic/chart/daily/000270?start=2025-04-01&end=2025-06-16"
            let cold3 = "/domestic/chart/daily/000100?start=2025-04-01&end=2025-06-16"
            // A second batch on the same connection once those are answered: reading went on after the fetches.
            let before = answers.value
            let both = try await RawHTTP.exchange(port: port, batches: [[(.GET, cold2), (.GET, hot), (.GET, cold3), (.HEAD, hot), (.GET, hot)],
                                                                        [(.GET, hot)]], headers: headers)
            #expect(both.count == 6 && both.last?.status == .ok && both.last?.headers.first(name: "x-cache") == "HIT")
            let mixed = Array(both.prefix(5))
            let mixedOrder = mixed.map { $0.headers.first(name: "x-cache") ?? "?" }
            #expect(mixedOrder == ["MISS", "HIT", "MISS", "HIT", "HIT"], "answers out of order: \(mixedOrder)")
            #expect(mixed.map(\.status) == [.ok, .ok, .ok, .ok, .ok])
            #expect(mixed.map { $0.bodyBytes > 0 } == [true, true, true, false, true], "HEAD has no body")
            #expect(answers.value - before == 4, "the first three and the second batch answered by the hit path")

            // A client that half-closes after its request still gets the fetched answer (the end of its input does
            // not overtake it), and so does the request behind it.
            let cold4 = "/domestic/chart/daily/000120?start=2025-04-01&end=2025-06-16"
            let halfClosed = try await RawHTTP.exchange(port: port, batches: [[(.GET, cold4), (.GET, hot)]], headers: headers,
                                                        halfClose: true)
            #expect(halfClosed.map(\.status) == [.ok, .ok])
            #expect(halfClosed.map { $0.headers.first(name: "x-cache") ?? "?" } == ["MISS", "HIT"])

            // A request the decoder refuses, behind a fetch: the fetched answer first, then the router's 400.
            let cold5 = "/domestic/chart/daily/000150?start=2025-04-01&end=2025-06-16"
            let refused = try await RawHTTP.exchange(port: port, batches: [[(.GET, cold5)]], headers: headers, refused: true)
            #expect(refused.map(\.status) == [.ok, .badRequest])
            #expect(refused.first?.headers.first(name: "x-cache") == "MISS")
            // The refusal is a problem like every other error, and the connection closes after it.
            #expect(refused.last?.headers.first(name: "content-type") == "application/problem+json")
            #expect(refused.last?.headers.first(name: "connection") == "close")
            #expect((refused.last?.bodyBytes ?? 0) > 0)

            // Behind a request the router answers: its answer first, then the refusal.
            let routedFirst = try await RawHTTP.exchange(port: port, batches: [[(.GET, "/healthz")]], headers: headers,
                                                         refused: true)
            #expect(routedFirst.map(\.status) == [.ok, .badRequest])
            #expect(routedFirst.last?.headers.first(name: "content-type") == "application/problem+json")
        }
    }

    @Test("the router's answers to HEAD have no body, between hits answered by the hit path on one connection")
    func headBetweenHits() async throws {
        try await Self.withUser("hp-head", appKey: "PShitpath0004") { fx, jwt, kis, answers in
            let hot = "/domestic/chart/daily/005930?start=2025-04-01&end=2025-06-16"
            let warm = try await fx.get(hot, jwt: jwt, kis: kis)
            #expect(warm.status == 200)
            let port = fx.gatewayPort
            let headers = HTTPHeaders([("Host", "127.0.0.1"), ("Authorization", "Bearer \(jwt)"), ("X-KIS-Token", kis)])
            let requests: [(HTTPMethod, String)] = [
                (.GET, hot), (.GET, hot), (.HEAD, "/healthz"), (.GET, hot), (.HEAD, hot), (.GET, "/healthz"), (.GET, hot),
            ]
            // In one write. The client knows HEAD answers have no body, so a body sent after one would be read as
            // the start of the next answer: the answers would come out garbled, or too few.
            let before = answers.value
            let raw = try await RawHTTP.exchange(port: port, requests: requests, headers: headers)
            // The first two were answered by the hit path, before the HEAD went to the router.
            #expect(answers.value - before >= 2)
            #expect(raw.count == requests.count)
            for answers in [raw] {
                for (answer, (method, path)) in zip(answers, requests) {
                    if method == .HEAD {
                        // GET's status and headers (its Content-Length too), no body.
                        #expect(answer.status == .ok, "\(path): \(answer.status)")
                        #expect(answer.bodyBytes == 0)
                        let length = answer.headers.first(name: "content-length").flatMap(Int.init) ?? 0
                        #expect(path == hot ? length == warm.body.count : length > 0, "\(path): Content-Length \(length)")
                    } else if path == hot {
                        #expect(answer.status == .ok && answer.headers.first(name: "x-cache") == "HIT")
                        #expect(answer.bodyBytes == warm.body.count)
                    } else {
                        #expect(answer.status == .ok && answer.bodyBytes > 0)
                    }
                }
            }
        }
    }

    @Test("Date values are IMF-fixdate, as Foundation formats them")
    func dates() {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        var rng = SystemRandomNumberGenerator()
        let samples: [Int64] = [0, 86399, 86400, 951_782_400, 1_709_164_800, 1_795_000_000, 4_102_444_800]
            + (0..<200).map { _ in Int64.random(in: 0...4_102_444_800, using: &rng) }
        for s in samples {
            #expect(HTTPDateCache.format(s) == formatter.string(from: Date(timeIntervalSince1970: TimeInterval(s))), "\(s)")
        }
    }

    @Test("the chart routes' one definition gives the router's paths, the spec's labels and the 405 paths")
    func routeShapes() {
        #expect(HitPath.Route.domestic.routerPath == "/domestic/chart/daily/:symbol")
        #expect(HitPath.Route.overseas.routerPath == "/overseas/:exchange/chart/daily/**")
        #expect(HitPath.Route.domestic.label == "/domestic/chart/daily/{symbol}")
        #expect(HitPath.Route.overseas.label == "/overseas/{exchange}/chart/daily/{symbol}")
        #expect(HitPath.Route.overseas.endpointPath == "/overseas/{exchange}/chart/daily/**")
        for path in ["/domestic/chart/daily/005930", "/overseas/NAS/chart/daily/AAPL", "/overseas/NYS/chart/daily/BRK/B",
                     "/overseas/NYS/chart/daily/BRK%2FB", "//domestic/chart/daily/005930"] {
            #expect(GatewayCore.allowedMethods(path) == "GET, HEAD, OPTIONS", "\(path)")
        }
        for path in ["/domestic/chart/daily", "/domestic/chart/daily/005930/x", "/overseas/NAS/chart/daily",
                     "/overseas/chart/daily/AAPL", "/domestic/chart/weekly/005930"] {
            #expect(GatewayCore.allowedMethods(path) == nil, "\(path)")
        }
        #expect(GatewayCore.allowedMethods("/token/refresh") == "POST, OPTIONS")
    }

    @Test("chart routes and queries in plain form are recognised; anything else is left to the router")
    func parsing() {
        #expect(HitPath.route(of: "/domestic/chart/daily/005930") == .domestic)
        #expect(HitPath.route(of: "/domestic/chart/daily/005930?start=2025-01-01") == .domestic)
        #expect(HitPath.route(of: "/overseas/NAS/chart/daily/AAPL?x=1") == .overseas)
        #expect(HitPath.route(of: "/overseas/NYS/chart/daily/BRK/B?x=1") == .overseas)  // a symbol with a slash
        for uri in ["/domestic/chart/daily/005930/", "/domestic/chart/daily/", "/domestic/chart/daily", "//domestic/chart/daily/1",
                    "/domestic/chart/weekly/005930", "/overseas/NAS/chart/daily/BRK%2FB", "/domestic/chart/daily/00+930",
                    "/overseas/chart/daily/AAPL", "/overseas/NAS/chart/daily/AAPL/", "/overseas/NAS/chart/daily/BRK//B",
                    "/overseas/NAS/chart/weekly/AAPL", "domestic/chart/daily/005930",
                    "/domestic/chart/daily/005930#x", "/Domestic/chart/daily/005930"] {
            #expect(HitPath.route(of: uri) == nil, "\(uri)")
        }
        let (path, query) = HitPath.split("/a?start=1&end=2&start=3&period=")!
        #expect(path == "/a")
        #expect(query == ["start": "1", "end": "2", "period": ""])
        #expect(HitPath.split("/a?start") == nil)
        #expect(HitPath.split("/a?=1") == nil)
        #expect(HitPath.split("/a?x=1&&y=2") == nil)
        #expect(HitPath.split("/a?")!.1.isEmpty)

        var h = HTTPHeaders([("AUTHORIZATION", "Bearer x"), ("x-kis-token", "t"), ("Origin", "o"), ("If-None-Match", "e")])
        let f = HitPath.Fields(h)!
        #expect(f.authorization == "Bearer x" && f.kisToken == "t" && f.origin == "o" && f.ifNoneMatch == "e")
        h.add(name: "authorization", value: "Bearer y")
        #expect(HitPath.Fields(h) == nil)
        #expect(BearerCredentials.parse("bEaReR   abc ") == "abc")
        #expect(BearerCredentials.parse("Bearer") == nil)
        #expect(BearerCredentials.parse("Bearer    ") == nil)
        #expect(BearerCredentials.parse("Bearerabc") == nil)
        #expect(BearerCredentials.parse("Basic abc") == nil)
    }
}

/// A minimal HTTP/1.1 client that pipelines: every request is written before one flush (one TCP write), then
/// the answers are read.
enum RawHTTP {
    struct Answer {
        var status: HTTPResponseStatus
        var headers: HTTPHeaders
        var bodyBytes: Int
    }

    final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPClientResponsePart
        /// Promises fulfilled once that many answers arrived, in the order they were asked for.
        var waiting: [(count: Int, promise: EventLoopPromise<[Answer]>)] = []
        var answers: [Answer] = []
        var head: HTTPResponseHead?
        var bodyBytes = 0
        var closed = false

        /// The answers once there are `count` of them (on the event loop).
        func wait(for count: Int, _ promise: EventLoopPromise<[Answer]>) {
            if answers.count >= count { promise.succeed(answers) } else if closed { promise.fail(ChannelError.eof) } else {
                waiting.append((count, promise))
            }
        }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h):
                head = h
                bodyBytes = 0
            case .body(let b): bodyBytes += b.readableBytes
            case .end:
                if let head { answers.append(Answer(status: head.status, headers: head.headers, bodyBytes: bodyBytes)) }
                while let first = waiting.first, answers.count >= first.count {
                    waiting.removeFirst()
                    first.promise.succeed(answers)
                }
            }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { failAll(error) }
        func channelInactive(context: ChannelHandlerContext) {
            closed = true
            failAll(ChannelError.eof)
        }
        private func failAll(_ error: any Error) {
            let all = waiting
            waiting.removeAll()
            for w in all { w.promise.fail(error) }
        }
    }

    static func exchange(port: Int, paths: [String], headers: HTTPHeaders) async throws -> [Answer] {
        try await exchange(port: port, requests: paths.map { (.GET, $0) }, headers: headers)
    }

    static func exchange(port: Int, requests: [(HTTPMethod, String)], headers: HTTPHeaders) async throws -> [Answer] {
        try await exchange(port: port, batches: [requests], headers: headers)
    }

    /// Each batch is written in one flush once every answer to the batch before has arrived. With `refused`, a
    /// request the server's parser refuses (a space in a header name) follows the last batch in the same flush;
    /// `halfClose` shuts the client's side for writing after the last. Returns every answer.
    static func exchange(port: Int, batches: [[(HTTPMethod, String)]], headers: HTTPHeaders, refused: Bool = false,
                         halfClose: Bool = false) async throws -> [Answer] {
        let group = MultiThreadedEventLoopGroup.singleton
        let collector = Collector()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(enableOutboundHeaderValidation: false)
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        defer { channel.close(promise: nil) }
        var expected = 0
        for (index, batch) in batches.enumerated() {
            let last = index == batches.count - 1
            expected += batch.count + (last && refused ? 1 : 0)
            let promise = channel.eventLoop.makePromise(of: [Answer].self)
            let timeout = channel.eventLoop.scheduleTask(in: .seconds(20)) { promise.fail(ChannelError.connectTimeout(.seconds(20))) }
            defer { timeout.cancel() }
            try await channel.eventLoop.submit { [expected] () -> Void in
                for (method, path) in batch {
                    let head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)
                    channel.write(HTTPClientRequestPart.head(head), promise: nil)
                    channel.write(HTTPClientRequestPart.end(nil), promise: nil)
                }
                if last, refused {
                    var bad = headers
                    bad.add(name: "Bad Header", value: "1")
                    channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/healthz",
                                                                             headers: bad)), promise: nil)
                    channel.write(HTTPClientRequestPart.end(nil), promise: nil)
                }
                channel.flush()
                if last, halfClose { channel.close(mode: .output, promise: nil) }
                collector.wait(for: expected, promise)
            }.get()
            let answers = try await promise.futureResult.get()
            if last { return answers }
        }
        return []
    }
}


/// gateway-api.md: an omitted `end` is "today in the market's own time zone". The hit path remembers each URI's
/// resolved query, so that memo must end by the exchange's local midnight.
@Suite("Hit path: remembered queries")
struct HitPathMemoTests {
    static func instant(_ iso: String) -> Date { ISO8601DateFormatter().date(from: iso)! }

    @Test("a resolved query is remembered for a minute at most, and never past the exchange's local midnight",
          arguments: [
              // (exchange, an instant, its local midnight after it)
              (Exchange.krx, "2025-06-02T14:59:30Z", "2025-06-02T15:00:00Z"),  // 23:59:30 KST
              (Exchange.krx, "2025-06-02T14:58:59Z", "2025-06-02T15:00:00Z"),  // 23:58:59 KST
              (Exchange.krx, "2025-06-02T03:00:00Z", "2025-06-02T15:00:00Z"),  // noon KST
              (Exchange.nas, "2025-07-01T03:59:10Z", "2025-07-01T04:00:00Z"),  // 23:59:10 EDT
              (Exchange.nas, "2025-01-07T04:58:40Z", "2025-01-07T05:00:00Z"),  // 23:58:40 EST
              (Exchange.tse, "2025-03-03T14:59:59Z", "2025-03-03T15:00:00Z"),  // 23:59:59 JST
          ])
    func memoEndsByLocalMidnight(exchange: Exchange, at iso: String, midnight: String) {
        let now = Self.instant(iso)
        let nowSeconds = Int64(now.timeIntervalSince1970)
        let until = HitPath.memoValidUntil(exchange, now: now, nowSeconds: nowSeconds)
        let midnightSeconds = Int64(Self.instant(midnight).timeIntervalSince1970)
        #expect(until <= midnightSeconds, "remembered until \(until - midnightSeconds) s past local midnight")
        #expect(until <= nowSeconds + 60)
        // The day's date as the exchange sees it is the same at both ends of the memo.
        if until > nowSeconds {
            let last = Date(timeIntervalSince1970: TimeInterval(until - 1))
            #expect(exchange.localTime(last).date == exchange.localTime(now).date)
        }
        // Far from midnight, a whole minute.
        if midnightSeconds - nowSeconds > 120 { #expect(until == nowSeconds + 60) }
    }
}
