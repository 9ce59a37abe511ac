import AsyncHTTPClient
import Broker
import Crypto
import Foundation
@testable import Gateway
import Hummingbird
import KIS
import KisgwConfiguration
import Logging
import NIOCore
import NIOHTTP1
import Observability
import Prometheus
import Redis
import Simulator
import Store
import Testing
import Tokens
import TestSupport

// gateway-api.md, "Token refresh" and "Operations": the broker proxy, `/metrics`, and SIGTERM/SIGINT.

private let allowedOrigin = "http://localhost:3000"

// MARK: - POST /token/refresh against a real broker

/// A simulator playing KIS's sandbox, a broker on a fresh SQLite file, and a gateway whose `[broker] url` is that
/// broker, all sharing one memory store (the broker `brokerStore` when given), for the duration of `body` (which
/// gets the broker's URL).
private func withBrokerAndGateway(
    brokerStore: (any SharedStore)? = nil,
    _ body: @Sendable (_ g: GatewayFixture, _ brokerURL: String) async throws -> Void
) async throws {
    var logger = Logger(label: "refresh-test")
    logger.logLevel = .critical
    let store = MemoryStore(keyPrefix: "r\(UInt32.random(in: 0...UInt32.max)):")
    let keyring = SealKeyring.ephemeral()
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("kisgw-gw-refresh-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: folder) }
    let (simPorts, simCont) = AsyncStream.makeStream(of: Int.self)
    let sim = TestServer(try await buildSimulator(SimulatorConfiguration(port: 0, environment: .sandbox), logger: logger) {
        simCont.yield($0)
    })
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await sim.run() }
        var sit = simPorts.makeAsyncIterator()
        let simURL = "http://127.0.0.1:\(await sit.next()!)"

        let brokerConfig = KisgwConfig(
            cors: .init(allowOrigins: [OriginPattern(allowedOrigin)!], allowCredentials: true, maxAgeS: 600),
            auth: .init(jwt: .init(algorithms: [.hs256], hs256Secret: Secret(testSecret))),
            kis: .init(liveURL: simURL, sandboxURL: simURL),
            upstream: .init(timeoutMs: 3000, maxQueueMs: 2000, retries: 0),
            broker: .init(host: "127.0.0.1", port: 0,
                          database: .sqlite(path: folder.appendingPathComponent("broker.sqlite").path),
                          reconcileIntervalS: 3600))
        let (brokerPorts, brokerCont) = AsyncStream.makeStream(of: Int.self)
        let broker = TestServer(try await buildBroker(
            brokerConfig, dependencies: BrokerDependencies(store: brokerStore ?? store, keyring: keyring), logger: logger
        ) { brokerCont.yield($0) })
        group.addTask { try await broker.run() }
        var bit = brokerPorts.makeAsyncIterator()
        let brokerURL = "http://127.0.0.1:\(await bit.next()!)"

        let (ports, cont) = AsyncStream.makeStream(of: Int.self)
        let gateway = TestServer(try await buildGateway(
            testConfig(simURL: simURL, broker: .init(url: brokerURL)),
            dependencies: GatewayDependencies(store: store, keyring: keyring, readiness: { nil }), logger: logger
        ) { cont.yield($0) })
        group.addTask { try await gateway.run() }
        var pit = ports.makeAsyncIterator()
        let g = GatewayFixture(gatewayURL: "http://127.0.0.1:\(await pit.next()!)", simURL: simURL, store: store,
                               keyring: keyring)
        try await stopping([gateway, broker, sim]) { try await body(g, brokerURL) }
    }
}

/// `POST url` with a JSON content type, `Authorization: Bearer jwt` and `Origin` when given.
private func post(_ url: String, _ body: String?, jwt: String?, origin: String? = nil) async throws -> HTTPResult {
    var headers = [("content-type", "application/json")]
    if let jwt { headers.append(("Authorization", "Bearer " + jwt)) }
    if let origin { headers.append(("Origin", origin)) }
    return try await http(.POST, url, headers: headers, body: body)
}

/// Connects a SANDBOX account for the JWT's user at the broker (`POST /api/kis/token`); returns the KIS token.
private func connectAccount(brokerURL: String, jwt: String, appKey: String) async throws -> String {
    let body = #"{"appKey":"\#(appKey)","appSecret":"secret-\#(appKey)","accountNumber":"12345678-01","environment":"SANDBOX"}"#
    let r = try await post(brokerURL + "/api/kis/token", body, jwt: jwt)
    #expect(r.status == 200, "connecting the account at the broker: \(r.status) \(r.text)")
    return try #require(r.json["token"] as? String)
}

/// The broker's answer as the gateway passed it on: same status, same body bytes, same content type.
private func expectPassedThrough(_ via: HTTPResult, _ direct: HTTPResult, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(via.status == direct.status, "status: gateway \(via.status), broker \(direct.status)",
            sourceLocation: sourceLocation)
    #expect(via.body == direct.body, "body: gateway \(via.text) — broker \(direct.text)", sourceLocation: sourceLocation)
    #expect(via.header("content-type") == direct.header("content-type"), sourceLocation: sourceLocation)
}

/// The CORS headers of an actual (not preflight) request from an allowed origin, once each.
private func expectCORS(_ r: HTTPResult, origin: String = allowedOrigin, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.headers("Access-Control-Allow-Origin") == [origin], "status \(r.status)", sourceLocation: sourceLocation)
    #expect(r.headers("Access-Control-Allow-Credentials") == ["true"], "status \(r.status)", sourceLocation: sourceLocation)
    let exposed = Set((r.header("Access-Control-Expose-Headers") ?? "").split(separator: ",").map {
        $0.trimmingCharacters(in: .whitespaces).lowercased()
    })
    #expect(exposed.isSuperset(of: ["etag", "x-cache", "age", "retry-after", "server-timing"]), "status \(r.status)",
            sourceLocation: sourceLocation)
    expectVaryOrigin(r, sourceLocation: sourceLocation)
}

private func expectVaryOrigin(_ r: HTTPResult, sourceLocation: SourceLocation = #_sourceLocation) {
    let vary = r.headers("Vary").flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
    #expect(vary.contains("origin"), "Vary: \(vary) on a \(r.status)", sourceLocation: sourceLocation)
}

/// An `application/problem+json` answer with this status and code, and the RFC 9457 members.
private func expectProblem(_ r: HTTPResult, _ status: Int, _ code: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.status == status, "\(r.status) \(r.text)", sourceLocation: sourceLocation)
    #expect(r.header("content-type") == "application/problem+json", sourceLocation: sourceLocation)
    #expect(r.code == code, "\(r.text)", sourceLocation: sourceLocation)
    #expect(r.json["status"] as? Int == status, sourceLocation: sourceLocation)
    #expect(r.json["type"] as? String == "https://kisgw.dev/problems/" + code, sourceLocation: sourceLocation)
    #expect((r.json["title"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
}

@Suite("Gateway: POST /token/refresh is the broker's answer")
struct TokenRefreshProxyTests {
    @Test("a connected user: the broker's 200 and body, byte for byte, with no new KIS issuance")
    func passesTheBrokersToken() async throws {
        try await withBrokerAndGateway { g, brokerURL in
            let jwt = try await g.jwt("refresh-u1")
            let token = try await connectAccount(brokerURL: brokerURL, jwt: jwt, appKey: "PSrefreshu1xxxxxxxxxxxxxxxxxxxxxwxyz")
            let direct = try await post(brokerURL + "/api/kis/token/refresh", #"{"environment":"SANDBOX"}"#, jwt: jwt)
            #expect(direct.status == 200, "\(direct.text)")
            let via = try await post(g.gatewayURL + "/token/refresh", #"{"environment":"SANDBOX"}"#, jwt: jwt)
            expectPassedThrough(via, direct)
            #expect(via.header("content-type") == "application/json")
            // It carries a token: no browser or proxy may keep it.
            #expect(via.header("cache-control") == "no-store")
            // What broker-api.md says the answer holds: inside the reuse window, the token already published.
            #expect(via.json["token"] as? String == token)
            #expect(via.json["environment"] as? String == "SANDBOX")
            #expect((via.json["expiresAt"] as? String)?.hasSuffix("+09:00") == true, "\(via.text)")
            // The gateway asked the broker, which reused the token: KIS issued only the one for the connection.
            #expect(try await g.simStats()["tokenP"] == 1)
            // The token the gateway handed out is one it accepts.
            let chart = try await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-10", jwt: jwt,
                                        kis: try #require(via.json["token"] as? String))
            #expect(chart.status == 200, "\(chart.text)")
        }
    }

    @Test("the broker's 4xx problems pass through unchanged: 404 account_not_found, 401 jwt_invalid with WWW-Authenticate")
    func passesTheBrokersErrors() async throws {
        try await withBrokerAndGateway { g, brokerURL in
            let jwt = try await g.jwt("refresh-nobody")
            let direct = try await post(brokerURL + "/api/kis/token/refresh", #"{"environment":"LIVE"}"#, jwt: jwt)
            let via = try await post(g.gatewayURL + "/token/refresh", #"{"environment":"LIVE"}"#, jwt: jwt)
            expectProblem(via, 404, "account_not_found")
            expectPassedThrough(via, direct)

            // The gateway judges the JWT as the broker does (same configuration, same verifier): the same answer.
            let badDirect = try await post(brokerURL + "/api/kis/token/refresh", #"{"environment":"LIVE"}"#, jwt: "not.a.jwt")
            let bad = try await post(g.gatewayURL + "/token/refresh", #"{"environment":"LIVE"}"#, jwt: "not.a.jwt")
            expectProblem(bad, 401, "jwt_invalid")
            expectPassedThrough(bad, badDirect)
            #expect(bad.header("WWW-Authenticate") == #"Bearer error="invalid_token""#)
        }
    }

    @Test("no Authorization: 401 auth_required problem+json with WWW-Authenticate: Bearer")
    func needsAuthorization() async throws {
        try await withBrokerAndGateway { g, _ in
            let r = try await post(g.gatewayURL + "/token/refresh", #"{"environment":"LIVE"}"#, jwt: nil)
            expectProblem(r, 401, "auth_required")
            #expect(r.header("WWW-Authenticate") == "Bearer")
        }
    }

    /// The gateway does not read the body (Gateway.swift `refreshToken` forwards it); the broker judges it.
    @Test("a bad body: the broker's 400 invalid_parameter, passed through", arguments: [
        #"{"environment":"BOGUS"}"#, #"{}"#, "environment=LIVE", "",
    ])
    func badBody(_ body: String) async throws {
        try await withBrokerAndGateway { g, brokerURL in
            let jwt = try await g.jwt("refresh-body")
            _ = try await connectAccount(brokerURL: brokerURL, jwt: jwt, appKey: "PSrefreshbodyxxxxxxxxxxxxxxxxxxxwxyz")
            let direct = try await post(brokerURL + "/api/kis/token/refresh", body, jwt: jwt)
            let via = try await post(g.gatewayURL + "/token/refresh", body, jwt: jwt)
            expectProblem(via, 400, "invalid_parameter")
            expectPassedThrough(via, direct)
        }
    }

    @Test("broker unreachable: a prompt 502 upstream_error problem+json, with CORS for an allowed origin")
    func brokerUnreachable() async throws {
        let closed = try RedisServerProcess.freePort()
        // The gateway's wait for the broker is `[upstream] timeout_ms` + 5 s: 25 s here. A refused connection must
        // not be retried until then (AsyncHTTPClient's default): the answer comes at once.
        let config: @Sendable (String) -> KisgwConfig = {
            testConfig(simURL: $0, upstreamTimeoutMs: 20_000, broker: .init(url: "http://127.0.0.1:\(closed)"))
        }
        try await withGateway(config: config) { g, _ in
            let jwt = try await g.jwt("refresh-unreachable")
            let started = ContinuousClock.now
            let r = try await post(g.gatewayURL + "/token/refresh", #"{"environment":"LIVE"}"#, jwt: jwt, origin: allowedOrigin)
            let waited = ContinuousClock.now - started
            expectProblem(r, 502, "upstream_error")
            expectCORS(r)
            #expect(waited < .seconds(10), "a refused connection to the broker was retried for \(waited)")
            // A caller without a valid JWT is answered by the gateway, with no call to the broker.
            expectProblem(try await post(g.gatewayURL + "/token/refresh", #"{"environment":"LIVE"}"#, jwt: "not.a.jwt"),
                          401, "jwt_invalid")
        }
    }

    /// The broker's 429 (`kis_rate_limited`: KIS gives an app key one token a minute) and 503 (`store_unavailable`)
    /// tell the client when to ask again; through the gateway the browser must still be able to read that. Both come
    /// from a real broker: a refresh of a token a gateway saw KIS refuse, within a minute of the account's first
    /// token (the simulator's issuance interval), and a refresh once the broker's redis-server is gone.
    @Test("the broker's 429 and 503 pass through with their Retry-After and body, readable cross-origin", arguments: [429, 503])
    func passesRetryAfter(_ status: Int) async throws {
        let code = status == 429 ? "kis_rate_limited" : "store_unavailable"
        let redis = status == 503 ? try RedisServerProcess() : nil
        defer { redis?.stop() }
        let (brokerStore, client) = try redis.map { try makeStore(.redis, url: $0.url) } ?? (nil, nil)
        try await withBrokerAndGateway(brokerStore: brokerStore) { g, brokerURL in
            let user = "refresh-retry-after-\(status)"
            let jwt = try await g.jwt(user)
            let token = try await connectAccount(brokerURL: brokerURL, jwt: jwt, appKey: "PSrefreshretryafter\(status)xxxxxxxxxxxxxxxx")
            if status == 429 {
                // What a gateway records when KIS refuses the token: the broker must ask KIS for another one.
                try await TokenDirectory.markDead(sha256: TokenDirectory.sha256(of: token), msgCode: "EGW00123",
                                                  userID: user, environment: .sandbox, store: g.store)
            }
            redis?.stop()
            let r = try await post(g.gatewayURL + "/token/refresh", #"{"environment":"SANDBOX"}"#, jwt: jwt, origin: allowedOrigin)
            #expect(r.status == status, "\(r.status) \(r.text)")
            #expect(r.json["code"] as? String == code, "\(r.text)")
            let retryAfter = try #require(r.header("Retry-After").flatMap { Int($0) }, "\(r.headers)")
            #expect((1...60).contains(retryAfter), "Retry-After: \(retryAfter)")
            #expect(r.header("content-type") == "application/problem+json")
            #expect(r.header("cache-control") == "no-store")
            expectCORS(r)
            // The broker's own answer to the same request: the gateway passed its status, body and type on. A 429's
            // wait counts down (KIS's issuance minute), so between the two asks it may have moved by a second: the
            // bodies are compared without it, and the gateway's body says what its header says.
            let direct = try await post(brokerURL + "/api/kis/token/refresh", #"{"environment":"SANDBOX"}"#, jwt: jwt)
            #expect(r.status == direct.status && r.header("content-type") == direct.header("content-type"))
            var (via, own) = (r.json, direct.json)
            if let wait = via.removeValue(forKey: "retry_after") as? Int { #expect(wait == retryAfter) }
            let ownWait = own.removeValue(forKey: "retry_after") as? Int
            #expect(ownWait.map { abs($0 - retryAfter) <= 1 } ?? true, "\(String(describing: ownWait)) vs \(retryAfter)")
            #expect(NSDictionary(dictionary: via).isEqual(to: own), "gateway \(r.text) — broker \(direct.text)")
        }
        await client?.shutdown()
    }

    @Test("CORS on every refresh answer: allowed origin gets the headers once (200, 404, 400, 401), others none; preflight 204")
    func cors() async throws {
        try await withBrokerAndGateway { g, brokerURL in
            let jwt = try await g.jwt("refresh-cors")
            _ = try await connectAccount(brokerURL: brokerURL, jwt: jwt, appKey: "PSrefreshcorsxxxxxxxxxxxxxxxxxxxwxyz")
            let url = g.gatewayURL + "/token/refresh"
            let ok = try await post(url, #"{"environment":"SANDBOX"}"#, jwt: jwt, origin: allowedOrigin)
            #expect(ok.status == 200)
            expectCORS(ok)
            let missing = try await post(url, #"{"environment":"LIVE"}"#, jwt: jwt, origin: allowedOrigin)
            #expect(missing.status == 404)
            expectCORS(missing)
            let bogus = try await post(url, #"{"environment":"BOGUS"}"#, jwt: jwt, origin: allowedOrigin)
            #expect(bogus.status == 400)
            expectCORS(bogus)
            let anonymous = try await post(url, #"{"environment":"LIVE"}"#, jwt: nil, origin: allowedOrigin)
            #expect(anonymous.status == 401)
            expectCORS(anonymous)

            let foreign = try await post(url, #"{"environment":"SANDBOX"}"#, jwt: jwt, origin: "https://evil.example.org")
            #expect(foreign.status == 200)
            #expect(!foreign.headers.contains { $0.0.lowercased().hasPrefix("access-control-allow-") }, "\(foreign.headers)")
            expectVaryOrigin(foreign)

            let preflight = try await http(.OPTIONS, url, headers: [
                ("Origin", allowedOrigin), ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization, content-type"),
            ])
            #expect(preflight.status == 204)
            #expect(preflight.header("Access-Control-Allow-Origin") == allowedOrigin)
            #expect(preflight.header("Access-Control-Allow-Credentials") == "true")
            let methods = (preflight.header("Access-Control-Allow-Methods") ?? "").split(separator: ",").map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            #expect(methods.contains("POST") && methods.contains("OPTIONS"), "\(methods)")
            expectVaryOrigin(preflight)
        }
    }
}

// MARK: - the kisgw executable: /metrics, SIGINT, shutdown grace

/// A histogram as `/metrics` must show it: `# TYPE … histogram`, `_bucket` series with `le` (up to `+Inf`, counts
/// not decreasing), `_sum` and `_count` for `labels`, at least `atLeast` observations, `+Inf` = `_count`.
private func expectHistogram(_ m: Exposition, _ name: String, _ labels: [String: String] = [:], atLeast: Double,
                             sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(m.types[name] == "histogram", "# TYPE \(name): \(m.types[name] ?? "none")", sourceLocation: sourceLocation)
    let buckets = m.samples(name + "_bucket").filter { s in
        s.labels["le"] != nil && s.labels.filter { $0.key != "le" } == labels
    }
    #expect(buckets.count >= 2, "\(name)_bucket\(labels): \(buckets.count) buckets", sourceLocation: sourceLocation)
    let bounds = buckets.map { $0.labels["le"]! }
    #expect(bounds.allSatisfy { $0 == "+Inf" || Double($0) != nil }, "le values \(bounds)", sourceLocation: sourceLocation)
    let finite = buckets.filter { $0.labels["le"] != "+Inf" }.sorted { Double($0.labels["le"]!)! < Double($1.labels["le"]!)! }
    #expect(zip(finite, finite.dropFirst()).allSatisfy { $0.value <= $1.value }, "buckets are cumulative",
            sourceLocation: sourceLocation)
    let count = m.value(name + "_count", labels)
    #expect(count.map { $0 >= atLeast } == true, "\(name)_count\(labels) = \(count.map { "\($0)" } ?? "missing")",
            sourceLocation: sourceLocation)
    #expect(m.value(name + "_sum", labels).map { $0 > 0 } == true, "\(name)_sum\(labels)", sourceLocation: sourceLocation)
    let inf = buckets.first { $0.labels["le"] == "+Inf" }?.value
    #expect(inf != nil && inf == count, "\(name)_bucket{le=\"+Inf\"} = \(String(describing: inf)), _count = \(String(describing: count))",
            sourceLocation: sourceLocation)
}

@Suite("Gateway: its series go to the registry it is given")
struct GatewayMetricsRegistryTests {
    /// gateway-api.md: "upstream calls by outcome and KIS `msg_cd`" and "upstream duration histograms" — the calls
    /// that fail on the way too: an answer that cannot be read, one that does not come in time, a KIS that cannot be
    /// reached. Each is counted by its outcome and timed.
    @Test("upstream calls that cannot be read, time out or never connect are counted by outcome, and each is timed")
    func failedUpstreamOutcomes() async throws {
        let registry = PrometheusCollectorRegistry()
        let unreachable = "http://127.0.0.1:\(try unusedLoopbackPort())"
        try await withGateway(
            config: { testConfig(simURL: unreachable, upstreamTimeoutMs: 800, liveURL: $0) },
            dependencies: { _, deps in deps.metricsRegistry = registry }
        ) { g, _ in
            let kis = try await g.connect(user: "out-u", appKey: "PSapp-outcomes")
            let jwt = try await g.jwt("out-u")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"garbage"}"#)
            let unreadable = try await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(unreadable.status == 502 && unreadable.code == "upstream_error", "\(unreadable.text)")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"timeout"}"#)
            let late = try await g.get("/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(late.status == 504 && late.code == "upstream_timeout", "\(late.text)")
            _ = try await g.sim(.POST, "/__sim/reset")
            // A sandbox token: the gateway's sandbox KIS URL has nothing listening.
            let sandbox = try await g.connect(user: "out-s", appKey: "PSapp-outcomes-s", environment: .sandbox)
            let refused = try await g.get("/domestic/chart/daily/035420?start=2025-01-02&end=2025-01-31",
                                          jwt: try await g.jwt("out-s"), kis: sandbox)
            #expect(refused.status == 502 && refused.code == "upstream_error", "\(refused.text)")
            let m = Exposition(try await g.get("/metrics", jwt: nil, kis: nil).text)
            for outcome in ["unreadable", "timeout", "transport"] {
                let v = m.value("kisgw_upstream_calls_total", ["outcome": outcome, "msg_cd": ""]) ?? 0
                #expect(v >= 1, "\(outcome): \(m.samples("kisgw_upstream_calls_total").map { ($0.labels, $0.value) })")
            }
            let calls = m.samples("kisgw_upstream_calls_total").reduce(0) { $0 + $1.value }
            #expect(m.value("kisgw_upstream_duration_seconds_count") == calls)
        }
    }

    @Test("an in-process gateway given a registry serves its own series at /metrics, and no other gateway's")
    func ownRegistry() async throws {
        let registry = PrometheusCollectorRegistry()
        try await withGateway(dependencies: { _, deps in deps.metricsRegistry = registry }) { g, _ in
            let kis = try await g.connect(user: "reg-u1", appKey: "PSapp-registry")
            let jwt = try await g.jwt("reg-u1")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).header("X-Cache") == "MISS")
            #expect(try await g.get(path, jwt: jwt, kis: kis).header("X-Cache") == "HIT")
            let m = Exposition(try await g.get("/metrics", jwt: nil, kis: nil).text)
            #expect(m.value("kisgw_cache_results_total", ["result": "miss"]) == 1)
            #expect(m.value("kisgw_cache_results_total", ["result": "hit"]) == 1)
            #expect(m.value("kisgw_upstream_calls_total", ["outcome": "ok", "msg_cd": ""]) == 1)
            #expect(m.value("kisgw_http_requests_total", ["route": "/domestic/chart/daily/{symbol}", "status": "200"]) == 2)
            #expect(m.types["kisgw_upstream_duration_seconds"] == "histogram")
        }
    }

    /// gateway-api.md: "requests by route and status". A method a route does not take (405) and a preflight (which
    /// CORS answers before routing, or the hit path) are requests on that route: they were counted as `unmatched`,
    /// with the paths no route has.
    @Test("405s and preflights are counted under the route of their path, with the hit path and without",
          arguments: [true, false])
    func methodAndPreflightLabels(hitPath: Bool) async throws {
        let registry = PrometheusCollectorRegistry()
        try await withGateway(dependencies: { _, deps in
            deps.metricsRegistry = registry
            deps.hitPathEnabled = hitPath
        }) { g, _ in
            let chart = g.gatewayURL + "/overseas/NYS/chart/daily/BRK/B"
            #expect(try await http(.DELETE, chart).status == 405)
            #expect(try await http(.GET, g.gatewayURL + "/token/refresh").status == 405)
            for origin in ["http://localhost:3000", "https://elsewhere.example"] {
                let preflight = try await http(.OPTIONS, chart + "?start=2025-01-02", headers: [
                    ("Origin", origin), ("Access-Control-Request-Method", "GET"),
                ])
                #expect(preflight.status == (origin.hasPrefix("http://localhost") ? 204 : 403))
            }
            #expect(try await g.get("/no/such/route", jwt: nil, kis: nil).status == 404)
            let m = Exposition(try await g.get("/metrics", jwt: nil, kis: nil).text)
            let route = "/overseas/{exchange}/chart/daily/{symbol}"
            #expect(m.value("kisgw_http_requests_total", ["route": route, "status": "405"]) == 1)
            #expect(m.value("kisgw_http_requests_total", ["route": route, "status": "204"]) == 1)
            #expect(m.value("kisgw_http_requests_total", ["route": route, "status": "403"]) == 1)
            #expect(m.value("kisgw_http_requests_total", ["route": "/token/refresh", "status": "405"]) == 1)
            let unmatched = m.samples("kisgw_http_requests_total").filter { $0.labels["route"] == "unmatched" }
            #expect(unmatched.map(\.labels) == [["route": "unmatched", "status": "404"]])
        }
    }

    /// The `stale` result and the rate limiter's refusals, counted as they happen (the process test above sees
    /// neither).
    @Test("an answer served stale counts one stale result; a 429 for the app key's rate counts one rejection")
    func staleAndRejections() async throws {
        let registry = PrometheusCollectorRegistry()
        let sim = SimulatorConfiguration(port: 0, environment: .sandbox, issueInterval: 0, ratePerSecond: 1)
        // Settled charts fresh for 1 s, then stale for 30; KIS calls 1.25 s apart, and no queue: a second call at
        // once is refused.
        try await withGateway(
            sim: sim,
            config: {
                testConfig(simURL: $0, maxQueueMs: 0, sandboxRate: 1,
                           cache: .init(settledTTLS: 1, staleWhileRevalidateS: 30))
            },
            dependencies: { _, deps in deps.metricsRegistry = registry }
        ) { g, _ in
            let kis = try await g.connect(user: "reg-u2", appKey: "PSapp-registry-stale", environment: .sandbox)
            let jwt = try await g.jwt("reg-u2")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).header("X-Cache") == "MISS")
            let refused = try await g.get("/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(refused.status == 429)
            try await Task.sleep(for: .milliseconds(2100))
            #expect(try await g.get(path, jwt: jwt, kis: kis).header("X-Cache") == "STALE")
            // The STALE answer started a background refresh: it is done before the simulator stops.
            #expect(try await eventually(timeout: .seconds(10)) { try await g.simStats()["domestic_daily"] == 2 })
            let m = Exposition(try await g.get("/metrics", jwt: nil, kis: nil).text)
            #expect(m.value("kisgw_cache_results_total", ["result": "stale"]) == 1)
            #expect(m.value("kisgw_rate_limit_rejections_total") == 1)
            #expect(m.value("kisgw_http_requests_total", ["route": "/domestic/chart/daily/{symbol}", "status": "429"]) == 1)
        }
    }
}

@Suite("kisgw demo: its secrets file and its Redis URL")
struct DemoSecretsFileTests {
    /// `KISGW_REDIS_URL` is read as every verb reads it. Before, a bad one was an ArgumentParser validation error
    /// (exit 64 with the usage text) that did not say what was wrong.
    @Test("a bad KISGW_REDIS_URL: exit 78, one line naming the variable and the problem, no secret", arguments: [
        ("http://127.0.0.1:6379", "must be redis://[:password@]host[:port][/db]"),
        ("redis://s3cret@127.0.0.1:6379/0", "names a user without a password"),
    ])
    func badRedisURL(url: String, problem: String) throws {
        let base = try freeDemoPortBase()
        let (process, text) = try runToExit(
            "demo", env: ["KISGW_REDIS_URL": url],
            arguments: ["--data", Scratch.directory("demo"), "--port-base", String(base)])
        #expect(process.terminationReason == .exit && process.terminationStatus == 78, "\(process.terminationStatus): \(text)")
        #expect(text.split(separator: "\n").count == 1, "\(text)")
        #expect(text.hasPrefix("kisgw: environment KISGW_REDIS_URL: ") && text.contains(problem), "\(text)")
        #expect(!text.contains("s3cret"))
    }

    /// The demo's JWT secret and seal keys are written to the data folder: readable by their owner only, from the
    /// moment the file exists (it was created with the default umask, then narrowed).
    @Test("demo-secrets.json is readable by its owner only (mode 0600)")
    func secretsFileMode() async throws {
        let binary = try #require(kisgwBinary(), "the kisgw executable (build it, or set KISGW_TEST_BINARY)")
        let folder = Scratch.directory("demo")
        let process = kisgwProcess(binary, "demo")
        // A port base whose four ports are free now (the demo only needs to start far enough to write the file).
        let base = try freeDemoPortBase()
        process.arguments = ["demo", "--data", folder, "--port-base", String(base), "--log-level", "critical"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { process.killIfRunning() }
        let path = folder + "/demo-secrets.json"
        #expect(await eventually(timeout: .seconds(20)) { FileManager.default.fileExists(atPath: path) })
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600, "mode \(String(mode ?? -1, radix: 8))")
    }
}

extension DemoSecretsFileTests {
    /// config.md: the demo runs "on embedded defaults", with only the `KISGW_REDIS_URL` its help documents. Before,
    /// with that variable set it loaded the configuration as the other verbs do — ./gateway.toml included — and a
    /// working directory holding a gateway.toml it cannot use (another deployment's, or a broken one) stopped it
    /// with exit 78.
    @Test("a broken ./gateway.toml does not stop `kisgw demo` with KISGW_REDIS_URL set: it starts and is ready")
    func ignoresTheWorkingDirectorysGatewayTOML() async throws {
        let binary = try #require(kisgwBinary(), "the kisgw executable (build it, or set KISGW_TEST_BINARY)")
        let redis = try RedisServerProcess()
        defer { redis.stop() }
        let directory = Scratch.directory("demo-cwd")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try "[server]\nport = -1\n".write(toFile: directory + "/gateway.toml", atomically: true, encoding: .utf8)
        let process = kisgwProcess(binary, "demo")
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        // A port base whose ports are free now.
        let base = try freeDemoPortBase()
        process.arguments = ["demo", "--data", directory + "/data", "--port-base", String(base), "--log-level", "error"]
        process.environment?["KISGW_REDIS_URL"] = redis.url
        let stderrFile = directory + "/stderr"
        try process.run(stderrTo: URL(fileURLWithPath: stderrFile))
        defer { process.killIfRunning() }
        let stderr = { (try? String(contentsOfFile: stderrFile, encoding: .utf8)) ?? "" }
        let ready = await eventually(timeout: .seconds(30)) {
            guard process.isRunning else { return true }
            return (try? await http(.GET, "http://127.0.0.1:\(base)/readyz", timeout: .seconds(2)))?.status == 200
        }
        #expect(ready && process.isRunning, "the demo did not start: exit \(process.isRunning ? "-" : String(process.terminationStatus)); \(stderr())")
    }
}

/// Runs `kisgw <command>` with only `env` of the KISGW_ variables, in a directory without a gateway.toml, until it
/// exits; its standard error.
func runToExit(_ command: String, env extra: [String: String], arguments: [String] = []) throws -> (Process, String) {
    let binary = try #require(kisgwBinary(), "the kisgw executable (build it, or set KISGW_TEST_BINARY)")
    let process = kisgwProcess(binary, command)
    process.arguments = [command] + arguments
    process.environment = process.environment?.merging(extra) { _, new in new }
    return (process, try process.runToExit())
}

@Suite("Gateway process: /metrics series, SIGINT, shutdown grace", .serialized)
struct GatewayOperationsProcessTests {
    /// The series gateway-api.md lists, by the names Sources/Gateway/GatewayMetrics.swift and
    /// Sources/ServerKit/AccessMiddleware.swift give them, as the executable (which bootstraps the metrics system)
    /// serves them.
    @Test("/metrics: requests by route and status, cache results, upstream calls by outcome and msg_cd, rate-limit waits, histograms")
    func metricsSeries() async throws {
        // 10 calls/s for the app key (8/s with the gateway's headroom): a chart of several pages waits between them.
        try await withGatewayProcess(env: ["KISGW_KIS_LIVE_RATE_PER_S": "10"]) { g, p in
            let kis = try await g.connect(user: "m1", appKey: "PSapp-metrics")
            let jwt = try await g.jwt("m1")
            let chart = "/domestic/chart/daily/"
            let route = "/domestic/chart/daily/{symbol}"

            let miss = try await g.get(chart + "005930?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(miss.status == 200 && miss.header("X-Cache") == "MISS", "\(miss.status) \(miss.text)")
            let hit = try await g.get(chart + "005930?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(hit.status == 200 && hit.header("X-Cache") == "HIT")
            // Two requests for one chart while KIS is slow: one fetch, the other waits for it.
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none","latency_ms":700}"#)
            async let first = g.get(chart + "000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            async let second = g.get(chart + "000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            let (a, b) = try await (first, second)
            #expect(a.status == 200 && b.status == 200)
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none","latency_ms":0}"#)
            // About 540 weekdays: six pages, each after a rate-limit wait.
            let pages = try await g.get(chart + "035420?start=2023-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(pages.status == 200, "\(pages.status) \(pages.text)")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"kis_error","msg_cd":"EGW00002"}"#)
            let failed = try await g.get(chart + "005380?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(failed.status == 502)
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none"}"#)
            let invalid = try await g.get(chart + "12?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(invalid.status == 400 && invalid.code == "invalid_parameter")
            let anonymous = try await g.get(chart + "005930", jwt: nil, kis: nil)
            #expect(anonymous.status == 401)
            let nowhere = try await g.get("/no/such/route", jwt: nil, kis: nil)
            #expect(nowhere.status == 404)

            // A request is recorded as it is answered: wait for the last ones to show.
            var m = Exposition("")
            var response: HTTPResult?
            _ = try await eventually(timeout: .seconds(5)) {
                let r = try await g.get("/metrics", jwt: nil, kis: nil)
                response = r
                m = Exposition(r.text)
                let answered = [200, 400, 401, 502].compactMap {
                    m.value("kisgw_http_requests_total", ["route": route, "status": String($0)])
                }
                return m.samples("kisgw_http_requests_total").contains { $0.labels["status"] == "404" }
                    && answered.count == 4
                    && m.value("kisgw_http_request_duration_seconds_count", ["route": route]) == answered.reduce(0, +)
            }
            let r = try #require(response)
            #expect(r.status == 200)
            #expect(r.header("content-type")?.hasPrefix("text/plain; version=0.0.4") == true, "\(r.header("content-type") ?? "")")

            func atLeast(_ n: Double, _ name: String, _ labels: [String: String] = [:],
                         sourceLocation: SourceLocation = #_sourceLocation) {
                let v = m.value(name, labels)
                #expect(v.map { $0 >= n } == true, "\(name)\(labels) = \(v.map { "\($0)" } ?? "missing"); series: \(m.samples(name).map(\.labels))",
                        sourceLocation: sourceLocation)
            }
            #expect(m.types["kisgw_http_requests_total"] == "counter")
            atLeast(5, "kisgw_http_requests_total", ["route": route, "status": "200"])
            atLeast(1, "kisgw_http_requests_total", ["route": route, "status": "400"])
            atLeast(1, "kisgw_http_requests_total", ["route": route, "status": "401"])
            atLeast(1, "kisgw_http_requests_total", ["route": route, "status": "502"])
            // Routes are labelled by pattern, never by the path sent; a path with no route as `unmatched` (the label
            // the hit path gives what it answers for no route, too).
            let notFound = m.samples("kisgw_http_requests_total").filter { $0.labels["status"] == "404" }
            #expect(notFound.count == 1 && notFound.allSatisfy { $0.labels == ["route": "unmatched", "status": "404"] && $0.value >= 1 },
                    "\(notFound.map(\.labels))")
            let routes = Set(m.samples("kisgw_http_requests_total").compactMap { $0.labels["route"] })
            #expect(!routes.contains { $0.contains("005930") || $0.contains("no/such") }, "\(routes)")

            #expect(m.types["kisgw_cache_results_total"] == "counter")
            atLeast(1, "kisgw_cache_results_total", ["result": "hit"])
            atLeast(3, "kisgw_cache_results_total", ["result": "miss"])
            atLeast(1, "kisgw_cache_results_total", ["result": "coalesced"])
            #expect(m.value("kisgw_cache_results_total", ["result": "stale"]) == 0)  // counted: staleAndRejections

            #expect(m.types["kisgw_upstream_calls_total"] == "counter")
            atLeast(8, "kisgw_upstream_calls_total", ["outcome": "ok", "msg_cd": ""])
            atLeast(1, "kisgw_upstream_calls_total", ["outcome": "kis_error", "msg_cd": "EGW00002"])

            atLeast(1, "kisgw_rate_limit_waits_total")
            #expect(m.value("kisgw_rate_limit_rejections_total") == 0)  // counted: staleAndRejections

            expectHistogram(m, "kisgw_http_request_duration_seconds", ["route": route], atLeast: 8)
            expectHistogram(m, "kisgw_upstream_duration_seconds", atLeast: 3)
            // One observation per KIS call, failed ones included (the six pages each count, and the refused call).
            let calls = m.samples("kisgw_upstream_calls_total").reduce(0) { $0 + $1.value }
            #expect(m.value("kisgw_upstream_duration_seconds_count") == calls,
                    "\(m.value("kisgw_upstream_duration_seconds_count") ?? -1) observations for \(calls) calls")
            expectHistogram(m, "kisgw_rate_limit_wait_seconds", atLeast: 1)
        }
    }

    /// config.md: "Bad configuration stops start-up with a message naming the key" — from the executable itself.
    @Test("bad configuration: exit 78 (EX_CONFIG), one line naming the variable and the problem, nothing listening")
    func badConfigurationExits78() async throws {
        let port = try RedisServerProcess.freePort()
        let (process, text) = try runToExit("gateway", env: [
            "KISGW_AUTH_JWT_HS256_SECRET": testSecret, "KISGW_SERVER_PORT": String(port),
            "KISGW_UPSTREAM_TIMEOUT_MS": "soon",
        ])
        #expect(process.terminationReason == .exit && process.terminationStatus == 78, "\(process.terminationStatus): \(text)")
        let lines = text.split(separator: "\n")
        #expect(lines.count == 1, "\(text)")
        #expect(text.contains("KISGW_UPSTREAM_TIMEOUT_MS") && text.contains("soon"), "\(text)")
        #expect(!text.contains(testSecret))
        #expect(!RedisServerProcess.accepts(port: port))
    }

    /// A readable `public_keys_file` that holds no usable key: validation only sees that it can be read; the keys
    /// are read before anything starts, and a bad file is a configuration error like the others. Before, only a PEM
    /// without a key was refused: a file that is not text was read as no file, and an empty JWKS or a key for an
    /// algorithm not allowed started a server that refused every JWT.
    @Test("public_keys_file without a usable key: exit 78, one line naming the key and the file", arguments: [
        ("gateway", "pem-without-key"), ("broker", "pem-without-key"), ("gateway", "der"), ("broker", "empty-jwks"),
        ("gateway", "p256-key-for-rs256"),
    ])
    func unusablePublicKeys(role: String, content: String) async throws {
        let keys = URL(fileURLWithPath: Scratch.directory("keys") + "/keys.pem")
        let algorithms = "RS256"
        switch content {
        case "pem-without-key": try Data("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n".utf8).write(to: keys)
        case "der": try P256.Signing.PrivateKey().publicKey.derRepresentation.write(to: keys)
        case "empty-jwks": try Data(#"{"keys": []}"#.utf8).write(to: keys)
        default: try Data(P256.Signing.PrivateKey().publicKey.pemRepresentation.utf8).write(to: keys)
        }
        defer { try? FileManager.default.removeItem(at: keys) }
        let (process, text) = try runToExit(role, env: [
            "KISGW_AUTH_JWT_ALGORITHMS": algorithms, "KISGW_AUTH_JWT_PUBLIC_KEYS_FILE": keys.path,
            "KISGW_SEAL_KEYS_K1": Data(repeating: 7, count: 32).base64EncodedString(),
            "KISGW_SERVER_PORT": String(try RedisServerProcess.freePort()),
            "KISGW_BROKER_PORT": String(try RedisServerProcess.freePort()), "KISGW_BROKER_DATABASE": "sqlite::memory:",
        ])
        #expect(process.terminationReason == .exit && process.terminationStatus == 78, "\(process.terminationStatus): \(text)")
        #expect(text.split(separator: "\n").count == 1, "\(text)")
        #expect(text.contains("[auth.jwt] public_keys_file") && text.contains(keys.path), "\(text)")
    }

    /// config.md: "memory" is one process's own store. Validation asks for `[seal]` keys only with Redis, and the
    /// process used to stop right after it (exit 1, a store error naming no key) when none were set.
    @Test("on the memory store without seal keys: it starts, says why no KIS token can work, answers kis_token_invalid")
    func memoryStore() async throws {
        try await withGatewayProcess(env: ["KISGW_STORE_BACKEND": "memory"],
                                     without: ["KISGW_REDIS_URL", "KISGW_SEAL_KEYS_K1"]) { g, p in
            let health = try await g.get("/healthz", jwt: nil, kis: nil)
            #expect(health.status == 200)
            let jwt = try await g.jwt("m1")
            let r = try await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: jwt,
                                    kis: "not-a-published-token")
            #expect(r.status == 401 && r.code == "kis_token_invalid", "\(r.status) \(r.text)")
            #expect(p.stderr.contains("[store] backend is memory"), "\(p.stderr.suffix(2000))")
        }
    }

    /// README (the gateway, 8): one structured access-log line per request, whichever path answered it, and no
    /// token in the log.
    @Test("one JSON access-log line per request (hit path and router, errors too), with no JWT or KIS token in the log")
    func accessLog() async throws {
        try await withGatewayProcess(env: ["KISGW_LOG_LEVEL": "info", "KISGW_LOG_FORMAT": "json"]) { g, p in
            let kis = try await g.connect(user: "log1", appKey: "PSapp-access-log")
            let jwt = try await g.jwt("log1")
            let chart = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(chart, jwt: jwt, kis: kis).status == 200)  // the router (a JWT not seen before)
            #expect(try await g.get(chart, jwt: jwt, kis: kis).status == 200)  // the hit path
            #expect(try await g.get("/domestic/chart/daily/005930", jwt: nil, kis: nil).status == 401)
            #expect(try await g.get("/domestic/chart/daily/1", jwt: jwt, kis: kis).status == 400)
            #expect(try await g.get("/nowhere", jwt: jwt, kis: kis).status == 404)
            var lines: [[String: Any]] = []
            _ = await eventually(timeout: .seconds(5)) {
                lines = p.stderr.split(separator: "\n").compactMap {
                    try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
                }.filter { $0["message"] as? String == "request" }
                return lines.count >= 5
            }
            let seen = lines.map { "\($0["method"] ?? "") \($0["route"] ?? "") \($0["status"] ?? "")" }
            #expect(seen == [
                "GET /domestic/chart/daily/{symbol} 200", "GET /domestic/chart/daily/{symbol} 200",
                "GET /domestic/chart/daily/{symbol} 401", "GET /domestic/chart/daily/{symbol} 400", "GET unmatched 404",
            ], "\(seen)")
            #expect(lines.allSatisfy { Double($0["ms"] as? String ?? "") != nil })
            let log = p.stderr
            #expect(!log.contains(kis) && !log.contains(jwt))
        }
    }

    /// gateway-api.md: `/readyz` is 200 when the store answers and 503 otherwise — as the executable wires it
    /// (`Runtime`), against a Redis of the test's own that it stops and starts again.
    @Test("/readyz of the executable: 200 while Redis answers, 503 unavailable while it is down, 200 once it is back")
    func readiness() async throws {
        let redis = try RedisServerProcess()
        defer { redis.stop() }
        try await withGatewayProcess(env: ["KISGW_REDIS_URL": redis.url]) { g, p in
            #expect(try await g.get("/readyz", jwt: nil, kis: nil).status == 200)
            redis.stop()
            #expect(try await eventually(timeout: .seconds(10)) { try await g.get("/readyz", jwt: nil, kis: nil).status == 503 })
            let down = try await g.get("/readyz", jwt: nil, kis: nil)
            #expect(down.status == 503 && down.json["status"] as? String == "unavailable", "\(down.text)")
            #expect(try await g.get("/healthz", jwt: nil, kis: nil).status == 200)  // alive all the same
            try redis.start()
            #expect(try await eventually(timeout: .seconds(15)) { try await g.get("/readyz", jwt: nil, kis: nil).status == 200 })
            #expect(p.process.isRunning)
        }
    }

    @Test("SIGINT with a request in flight: the port closes, the request completes, the process exits 0")
    func sigint() async throws {
        try await withGatewayProcess { g, p in
            let kis = try await g.connect(user: "i1", appKey: "PSapp-sigint")
            let jwt = try await g.jwt("i1")
            #expect(try await g.get("/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis).status == 200)
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none","latency_ms":4000}"#)
            async let inFlight = g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            try await Task.sleep(for: .milliseconds(1000))
            kill(p.process.processIdentifier, SIGINT)
            // Well before KIS answers the request in flight, new connections are refused.
            #expect(await eventually(timeout: .seconds(2.5)) { !p.accepts }, "still accepting connections after SIGINT")
            let r = try await inFlight
            #expect(r.status == 200 && r.header("X-Cache") == "MISS", "\(r.status) \(r.text)")
            try #require(await eventually(timeout: .seconds(10)) { !p.process.isRunning }, "still running 10 s after SIGINT")
            #expect(p.process.terminationReason == .exit && p.process.terminationStatus == 0, "\(p.ending)")
        }
    }

    /// gateway-api.md: the requests in flight are finished "up to `[server] shutdown_grace_s`", and the process
    /// exits 0. Here KIS takes 10 s and the grace is 2 s.
    @Test("a request in flight outlasting shutdown_grace_s: the process waits about the grace, then exits 0")
    func shutdownGraceBoundsTheWait() async throws {
        try await withGatewayProcess(env: [
            "KISGW_SERVER_SHUTDOWN_GRACE_S": "2", "KISGW_UPSTREAM_TIMEOUT_MS": "20000",
            "KISGW_SERVER_REQUEST_TIMEOUT_MS": "20000",
        ]) { g, p in
            let kis = try await g.connect(user: "gr1", appKey: "PSapp-grace")
            let jwt = try await g.jwt("gr1")
            #expect(try await g.get("/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis).status == 200)
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none","latency_ms":10000}"#)
            let inFlight = Task {
                try? await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            }
            defer { inFlight.cancel() }
            try await Task.sleep(for: .milliseconds(500))
            let signalled = ContinuousClock.now
            kill(p.process.processIdentifier, SIGTERM)
            try #require(await eventually(timeout: .seconds(6)) { !p.process.isRunning },
                         "still running 6 s after SIGTERM with shutdown_grace_s = 2 and a request in flight")
            let took = ContinuousClock.now - signalled
            // It did wait for the request (rather than dropping it at once) until about the grace.
            #expect(took >= .milliseconds(1500), "exited \(took) after SIGTERM, before the 2 s grace")
            #expect(p.process.terminationReason == .exit && p.process.terminationStatus == 0, "\(p.ending)")
            // The request could not be finished: whatever the client got, it is not the chart.
            let answer = await inFlight.value
            #expect(answer?.status != 200, "the request in flight was answered 200 though KIS takes 10 s")
        }
    }
}
