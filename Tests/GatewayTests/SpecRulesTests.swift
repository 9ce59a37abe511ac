import Foundation
@testable import Gateway
import KIS
import KisgwConfiguration
import NIOHTTP1
import Observability
import Prometheus
import ServerKit
import Simulator
import TestSupport
import Testing
import Tokens

/// Rules of gateway-api.md that no other test asserts, each on its own, over real sockets (simulator and gateway
/// in process).
@Suite("Gateway: rules of gateway-api.md asserted one by one")
struct SpecRulesTests {
    /// The rate a gateway spaces an app key's KIS calls at, for a configured `[kis] *_rate_per_s`: never more calls
    /// in any second than the setting, one fewer from 4 up (jitter), and never lower for a higher setting (it was
    /// 2.4 for 3 and 2 for 4).
    /// "upstream calls by outcome and KIS `msg_cd`": the code is what the upstream sent (a plain-http KIS URL, a
    /// proxy, the simulator's faults) — a label only when it looks like KIS's, and the series stay bounded.
    @Test("upstream calls' msg_cd label: KIS-like codes only, and a bounded number of series whatever the upstream sends")
    func upstreamMsgCodeLabelIsBounded() {
        let registry = PrometheusCollectorRegistry()
        let metrics = GatewayMetrics(factory: MetricsSetup.factory(for: registry))
        metrics.upstreamCall(outcome: "ok", msgCode: nil)
        metrics.upstreamCall(outcome: "kis_error", msgCode: "EGW00201")
        metrics.upstreamCall(outcome: "kis_error", msgCode: "OPSQ2001")
        metrics.upstreamCall(outcome: "kis_error", msgCode: "40580000")
        for bad in ["egw00201", "EGW 00201", "<script>", "EGW002010000000", ""] {
            metrics.upstreamCall(outcome: "kis_error", msgCode: bad)
        }
        for i in 0..<500 { metrics.upstreamCall(outcome: "kis_error", msgCode: String(format: "ZZ%05d", i)) }
        let m = Exposition(MetricsSetup.render(registry))
        let series = m.samples.filter { $0.name == "kisgw_upstream_calls_total" }
        #expect(series.count <= KISCallCounters.maxSeries + 1, "\(series.count) series")
        #expect(m.value("kisgw_upstream_calls_total", ["outcome": "ok", "msg_cd": ""]) == 1)
        #expect(m.value("kisgw_upstream_calls_total", ["outcome": "kis_error", "msg_cd": "EGW00201"]) == 1)
        #expect(m.value("kisgw_upstream_calls_total", ["outcome": "kis_error", "msg_cd": "OPSQ2001"]) == 1)
        #expect(m.value("kisgw_upstream_calls_total", ["outcome": "kis_error", "msg_cd": "40580000"]) == 1)
        // Every call is counted: the 4 odd codes and the codes past the bound under `other`, an empty one without.
        #expect(series.reduce(0) { $0 + $1.value } == 509)
        #expect(m.value("kisgw_upstream_calls_total", ["outcome": "kis_error", "msg_cd": ""]) == 1)
        let other = m.value("kisgw_upstream_calls_total", ["outcome": "kis_error", "msg_cd": "other"]) ?? 0
        #expect(other >= 4 + 500 - Double(KISCallCounters.maxSeries), "\(other)")
        #expect(!series.contains { $0.labels["msg_cd"].map { !KISCallCounters.isKISCode($0) && $0 != "other" && !$0.isEmpty } ?? false })
    }

    @Test("the upstream rate used: within KIS's limit, one call under it from 4/s, and rising with the setting")
    func upstreamRateHeadroom() {
        var previous = 0.0
        for tenth in 1...1000 {
            let rate = Double(tenth) / 10, used = ChartService.effectiveRate(rate)
            #expect(used > 0 && used >= previous, "\(rate) → \(used), after \(previous)")
            previous = used
            // Calls spaced 1/used apart: at most floor(used) + 1 in a closed one-second window.
            let most = used.rounded(.down) + 1
            if rate >= 1 { #expect(most <= rate.rounded(.down), "\(rate) → \(used)") }
            if rate >= 4 { #expect(most <= rate.rounded(.down) - 1, "\(rate) → \(used)") }
        }
        #expect(ChartService.effectiveRate(18) == 16)
        #expect(ChartService.effectiveRate(1) == 0.8)
    }

    @Test("Retry-After: the wait for the next slot rounded up to whole seconds, at least 1")
    func retryAfterSeconds() {
        #expect(Problem.retryAfterSeconds(.zero) == 1)
        #expect(Problem.retryAfterSeconds(.milliseconds(-5)) == 1)
        #expect(Problem.retryAfterSeconds(.seconds(1)) == 1)
        #expect(Problem.retryAfterSeconds(.milliseconds(1001)) == 2)
        #expect(Problem.retryAfterSeconds(.milliseconds(2500)) == 3)
    }

    static let origin = "http://localhost:3000"

    static func domesticCalls(_ g: GatewayFixture) async throws -> Int {
        try await g.simStats()["domestic_daily"] ?? 0
    }

    static func simErrors(_ g: GatewayFixture) async throws -> [String: Int] {
        try await g.sim(.GET, "/__sim/stats").json["errors"] as? [String: Int] ?? [:]
    }

    /// The values of a comma-separated header (every occurrence), trimmed and lower-cased.
    static func tokens(_ r: HTTPResult, _ name: String) -> [String] {
        r.headers(name).flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
    }

    // MARK: freshness

    @Test("stale-while-revalidate: 20 concurrent requests past freshness are served STALE while ONE background refresh runs")
    func staleWhileOneRefreshRuns() async throws {
        let cache = KisgwConfig.Cache(settledTTLS: 1, staleWhileRevalidateS: 30)
        try await withGateway(config: { testConfig(simURL: $0, cache: cache) }) { g, _ in
            let (jwt, kis) = try await g.signIn("swr20")
            let path = "/domestic/chart/daily/035420?start=2025-01-02&end=2025-01-31"  // settled: fresh for 1 s
            let first = try await g.get(path, jwt: jwt, kis: kis)
            #expect(first.status == 200 && first.header("X-Cache") == "MISS")
            try await Task.sleep(for: .milliseconds(2100))  // past freshness, well inside the 30 s
            let before = try await Self.domesticCalls(g)
            // The refresh takes 300 ms: still running while the 20 requests arrive.
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none","latency_ms":300}"#)
            let answers = try await withThrowingTaskGroup(of: (Int, String?).self) { group in
                for _ in 0..<20 {
                    group.addTask {
                        let r = try await g.get(path, jwt: jwt, kis: kis)
                        return (r.status, r.header("X-Cache"))
                    }
                }
                return try await group.reduce(into: [(Int, String?)]()) { $0.append($1) }
            }
            let states = answers.map { $0.1 ?? "-" }
            #expect(answers.allSatisfy { $0.0 == 200 }, "statuses \(answers.map(\.0))")
            #expect(states.allSatisfy { $0 == "STALE" || $0 == "HIT" }, "X-Cache: \(states)")
            #expect(states.contains("STALE"), "X-Cache: \(states)")
            // The one refresh ends (however slow the machine), and no other follows it.
            #expect(try await eventually(timeout: .seconds(10)) { try await Self.domesticCalls(g) > before }, "X-Cache: \(states)")
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await Self.domesticCalls(g) == before + 1, "X-Cache: \(states)")
        }
    }

    @Test("past stale_while_revalidate_s an entry is not served: the request fetches, X-Cache MISS")
    func pastStaleWhileRevalidateIsAMiss() async throws {
        let cache = KisgwConfig.Cache(settledTTLS: 1, staleWhileRevalidateS: 1)
        try await withGateway(config: { testConfig(simURL: $0, cache: cache) }) { g, _ in
            let (jwt, kis) = try await g.signIn("swr-past")
            let path = "/domestic/chart/daily/066570?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).header("X-Cache") == "MISS")
            try await Task.sleep(for: .milliseconds(3100))  // past freshness (1 s) and stale_while_revalidate_s (1 s)
            let before = try await Self.domesticCalls(g)
            let r = try await g.get(path, jwt: jwt, kis: kis)
            #expect(r.status == 200)
            #expect(r.header("X-Cache") == "MISS")
            #expect(r.header("Server-Timing")?.contains("upstream;dur=") == true, "\(r.header("Server-Timing") ?? "-")")
            #expect(try await Self.domesticCalls(g) == before + 1)
        }
    }

    @Test("past stale_if_error_s, KIS failing (http500): the answer is 502 upstream_error, not STALE")
    func pastStaleIfErrorIsTheError() async throws {
        let cache = KisgwConfig.Cache(settledTTLS: 1, staleWhileRevalidateS: 0, staleIfErrorS: 1)
        try await withGateway(config: { testConfig(simURL: $0, cache: cache) }) { g, _ in
            let (jwt, kis) = try await g.signIn("sie-past")
            let path = "/domestic/chart/daily/003550?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).header("X-Cache") == "MISS")
            try await Task.sleep(for: .milliseconds(3100))  // past freshness (1 s) and stale_if_error_s (1 s)
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"http500"}"#)
            let r = try await g.get(path, jwt: jwt, kis: kis)
            #expect(r.status == 502, "\(r.status) X-Cache \(r.header("X-Cache") ?? "-")")
            #expect(r.code == "upstream_error", "\(r.text)")
            #expect(r.header("X-Cache") == nil)
            #expect(r.header("Content-Type") == "application/problem+json")
            #expect((try await Self.simErrors(g)["http500"] ?? 0) >= 1)  // KIS was asked, and failed
        }
    }

    @Test("inside stale_if_error_s, KIS timing out ([upstream] timeout_ms 500): STALE, after about timeout_ms")
    func insideStaleIfErrorOnTimeout() async throws {
        let cache = KisgwConfig.Cache(settledTTLS: 1, staleWhileRevalidateS: 0, staleIfErrorS: 3600)
        try await withGateway(config: { testConfig(simURL: $0, upstreamTimeoutMs: 500, cache: cache) }) { g, _ in
            let (jwt, kis) = try await g.signIn("sie-to")
            let path = "/domestic/chart/daily/096770?start=2025-01-02&end=2025-01-31"
            let first = try await g.get(path, jwt: jwt, kis: kis)
            #expect(first.header("X-Cache") == "MISS")
            try await Task.sleep(for: .milliseconds(2100))  // past freshness; stale_while_revalidate_s is 0
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"timeout"}"#)
            let started = ContinuousClock.now
            let r = try await g.get(path, jwt: jwt, kis: kis)
            let took = ContinuousClock.now - started
            _ = try await g.sim(.POST, "/__sim/reset")  // lets the hanging simulator handler go
            #expect(r.status == 200, "\(r.status) \(r.text)")
            #expect(r.header("X-Cache") == "STALE")
            #expect(r.header("Server-Timing") == #"cache;desc="stale""#)
            #expect(r.body == first.body)
            #expect(took >= .milliseconds(450) && took < .milliseconds(2500), "took \(took)")
        }
    }

    // MARK: KIS refusing the token

    @Test("KIS answering EGW00121 or EGW00122 gives 401 kis_token_invalid", arguments: ["EGW00121", "EGW00122"])
    func kisTokenInvalid(msgCode: String) async throws {
        try await withGateway { g, _ in
            let user = "inv-\(msgCode)"
            let (jwt, kis) = try await g.signIn(user)
            let ok = try await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(ok.status == 200, "the token works before KIS refuses it: \(ok.text)")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"kis_error","msg_cd":"\#(msgCode)"}"#)
            let r = try await g.get("/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(r.status == 401, "\(r.text)")
            #expect(r.code == "kis_token_invalid", "\(r.text)")
            #expect(r.header("WWW-Authenticate") == #"Bearer error="invalid_token""#)
            #expect(r.header("Content-Type") == "application/problem+json")
            #expect((try await Self.simErrors(g)[msgCode] ?? 0) >= 1)  // KIS said it
        }
    }

    // MARK: CORS and secrets on failures

    /// KIS answers within 500 ms or times out; a SANDBOX app key gets one KIS call, then at once 429 (0.01/s and a
    /// queue far shorter than its wait).
    static func failingConfig(_ simURL: String) -> KisgwConfig {
        testConfig(simURL: simURL, upstreamTimeoutMs: 500, maxQueueMs: 50, sandboxRate: 0.01)
    }

    /// A chart route's 429, 502 (after `fault502`) and 504, each asked with `Origin`, with the secrets of the token
    /// it was asked with (KIS token, app key, app secret).
    static func failures(_ g: GatewayFixture, tag: String, fault502: String) async throws
        -> [(name: String, answer: HTTPResult, secrets: [String])]
    {
        let o = [("Origin", origin)]
        let sandboxKey = "PSsbx\(tag)K3y", liveKey = "PSlive\(tag)K3y"
        let sandbox = try await g.connect(user: "sbx-\(tag)", appKey: sandboxKey, environment: .sandbox)
        let live = try await g.connect(user: "live-\(tag)", appKey: liveKey)
        let jwtS = try await g.jwt("sbx-\(tag)"), jwtL = try await g.jwt("live-\(tag)")
        let q = "?start=2025-01-02&end=2025-01-31"
        let first = try await g.get("/domestic/chart/daily/005930" + q, jwt: jwtS, kis: sandbox, headers: o)
        #expect(first.status == 200, "the sandbox app key's one call: \(first.text)")
        let limited = try await g.get("/domestic/chart/daily/000660" + q, jwt: jwtS, kis: sandbox, headers: o)
        _ = try await g.sim(.POST, "/__sim/faults", fault502)
        let failed = try await g.get("/domestic/chart/daily/035720" + q, jwt: jwtL, kis: live, headers: o)
        _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"timeout"}"#)
        let timedOut = try await g.get("/domestic/chart/daily/051910" + q, jwt: jwtL, kis: live, headers: o)
        _ = try await g.sim(.POST, "/__sim/reset")
        let statuses = [limited, failed, timedOut].map(\.status), wanted: [Int] = [429, 502, 504]
        #expect(statuses == wanted)
        let codes = [limited, failed, timedOut].map { $0.code ?? "-" }
        #expect(codes == ["rate_limited", "upstream_error", "upstream_timeout"])
        let sandboxSecrets = [sandbox, sandboxKey, "secret-" + sandboxKey]
        let liveSecrets = [live, liveKey, "secret-" + liveKey]
        return [("429", limited, sandboxSecrets), ("502", failed, liveSecrets), ("504", timedOut, liveSecrets)]
    }

    @Test("CORS headers (allowed Origin, Vary: Origin) on a chart route's 429, 502 and 504")
    func corsOnChartFailures() async throws {
        try await withGateway(config: { Self.failingConfig($0) }) { g, _ in
            for (name, r, _) in try await Self.failures(g, tag: "cors", fault502: #"{"mode":"http500"}"#) {
                #expect(r.header("Access-Control-Allow-Origin") == Self.origin, "\(name)")
                #expect(r.header("Access-Control-Allow-Credentials") == "true", "\(name)")
                #expect(Self.tokens(r, "Access-Control-Expose-Headers").contains("retry-after"), "\(name)")
                #expect(Self.tokens(r, "Vary").contains("origin"), "\(name): Vary \(r.headers("Vary"))")
            }
        }
    }

    @Test("error bodies (upstream_error EGW00002, rate_limited, upstream_timeout) hold no KIS token, app key or secret")
    func noSecretsInErrorBodies() async throws {
        try await withGateway(config: { Self.failingConfig($0) }) { g, _ in
            let fault = #"{"mode":"kis_error","msg_cd":"EGW00002"}"#
            for (name, r, secrets) in try await Self.failures(g, tag: "nosec", fault502: fault) {
                #expect(r.header("Content-Type") == "application/problem+json", "\(name)")
                #expect(r.json["status"] as? Int == r.status, "\(name): \(r.text)")
                for secret in secrets {
                    #expect(!r.text.contains(secret), "\(name) body shows \(secret): \(r.text)")
                }
            }
        }
    }

    @Test("[cors] allow_credentials=false: no Access-Control-Allow-Credentials; max_age_s=123 is the preflight's Max-Age")
    func corsSettings() async throws {
        let config: @Sendable (String) -> KisgwConfig = { simURL in
            let t = testConfig(simURL: simURL)
            return KisgwConfig(server: t.server,
                               cors: .init(allowOrigins: [OriginPattern(Self.origin)!], allowCredentials: false, maxAgeS: 123),
                               auth: t.auth, kis: t.kis, upstream: t.upstream, cache: t.cache, broker: t.broker)
        }
        try await withGateway(config: config) { g, _ in
            let preflight = [("Origin", Self.origin), ("Access-Control-Request-Method", "GET")]
            // A keep-alive preflight is the hit path's; with `Connection: close` the router answers.
            for extra in [[], [("Connection", "close")]] {
                let p = try await http(.OPTIONS, g.gatewayURL + "/domestic/chart/daily/005930", headers: preflight + extra)
                #expect(p.status == 204, "\(extra)")
                #expect(p.header("Access-Control-Allow-Origin") == Self.origin, "\(extra)")
                #expect(p.header("Access-Control-Allow-Credentials") == nil, "\(extra)")
                #expect(p.header("Access-Control-Max-Age") == "123", "\(extra)")
            }
            let (jwt, kis) = try await g.signIn("nocred")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", o = [("Origin", Self.origin)]
            // A 401, a 200 from the router, a 200 from the hit path.
            let answers = [try await g.get(path, jwt: nil, kis: nil, headers: o), try await g.get(path, jwt: jwt, kis: kis, headers: o),
                           try await g.get(path, jwt: jwt, kis: kis, headers: o)]
            #expect(answers.map(\.status) == [401, 200, 200])
            for r in answers {
                #expect(r.header("Access-Control-Allow-Origin") == Self.origin, "\(r.status)")
                #expect(r.header("Access-Control-Allow-Credentials") == nil, "\(r.status)")
            }
        }
    }

    // MARK: conditional requests

    @Test("If-None-Match: * on a cached chart gives 304 Not Modified, no body (RFC 9110 §13.1.2)")
    func ifNoneMatchStar() async throws {
        try await withGateway { g, _ in
            let (jwtA, kisA) = try await g.signIn("inm-a")
            let (jwtB, kisB) = try await g.signIn("inm-b")
            let path = "/domestic/chart/daily/017670?start=2025-01-02&end=2025-01-31"
            let first = try await g.get(path, jwt: jwtA, kis: kisA)
            #expect(first.status == 200 && first.header("X-Cache") == "MISS")
            let etag = try #require(first.header("ETag"))
            // The hit path (A's credentials are known now), then the router (B's are not yet).
            for (who, jwt, kis) in [("hit path", jwtA, kisA), ("router", jwtB, kisB)] {
                let r = try await g.get(path, jwt: jwt, kis: kis, headers: [("If-None-Match", "*")])
                #expect(r.status == 304, "\(who): \(r.status)")
                #expect(r.body.isEmpty, "\(who)")
                #expect(r.header("ETag") == etag, "\(who)")
                #expect(r.header("X-Cache") == "HIT", "\(who)")
            }
        }
    }

    // MARK: 405

    @Test("405 method_not_allowed with Allow on other routes: GET /token/refresh (POST, OPTIONS), POST /healthz (GET)")
    func methodNotAllowedElsewhere() async throws {
        try await withGateway { g, _ in
            let cases: [(HTTPMethod, String, String)] = [(.GET, "/token/refresh", "POST, OPTIONS"), (.POST, "/healthz", "GET, HEAD")]
            for (method, path, allow) in cases {
                let r = try await http(method, g.gatewayURL + path)
                #expect(r.status == 405, "\(method) \(path)")
                #expect(r.code == "method_not_allowed", "\(method) \(path): \(r.text)")
                #expect(r.header("Content-Type") == "application/problem+json", "\(method) \(path)")
                #expect(r.header("Allow") == allow, "\(method) \(path)")
                let listed = allow.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                #expect(!listed.contains(method.rawValue), "\(method) \(path)")
            }
            // What Allow lists is taken (and is what the spec has): POST /token/refresh asks for a JWT, its CORS
            // preflight is answered, GET /healthz is 200.
            #expect(try await http(.POST, g.gatewayURL + "/token/refresh", body: "{}").code == "auth_required")
            let preflight = [("Origin", Self.origin), ("Access-Control-Request-Method", "POST")]
            #expect(try await http(.OPTIONS, g.gatewayURL + "/token/refresh", headers: preflight).status == 204)
            #expect(try await http(.OPTIONS, g.gatewayURL + "/token/refresh").status != 405)  // a plain OPTIONS too
            #expect(try await http(.GET, g.gatewayURL + "/healthz").status == 200)
        }
    }
}
