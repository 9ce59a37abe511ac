import Foundation
import NIOHTTP1
import NIOCore
import KIS
import Logging
import Testing
@testable import Simulator
import TestSupport

@Suite("Simulator: tokens (kis-api.md §2)")
struct TokenTests {
    @Test("tokenP answers KIS's four fields, a KIS-shaped JWT and a KST expiry")
    func issue() async throws {
        try await withSimulator { sim in
            let r = try await sim.token(appKey: "PSkeyshape", appSecret: "s1")
            #expect(r.status == 200)
            #expect(Set(r.json.keys) == ["access_token", "access_token_token_expired", "token_type", "expires_in"])
            let t = try r.decode(KISTokenResponse.self)
            #expect(t.token_type == "Bearer")
            #expect(t.expires_in == 86400)
            #expect(t.access_token.count <= 350)
            let parts = t.access_token.split(separator: ".")
            #expect(parts.count == 3)
            let header = try decodeSegment(parts[0])
            let claims = try decodeSegment(parts[1])
            #expect(header["alg"] as? String == "HS512")
            #expect(header["typ"] as? String == "JWT")
            #expect(claims["sub"] as? String == "token")
            #expect(claims["iss"] as? String == "unogw")
            #expect(claims["jti"] as? String == "PSkeyshape")
            #expect(UUID(uuidString: claims["aud"] as? String ?? "") != nil)
            let iat = try #require(claims["iat"] as? Int), exp = try #require(claims["exp"] as? Int)
            #expect(exp - iat == 86400)
            // Expiry string: KST wall clock, no offset.
            #expect(t.access_token_token_expired == KST.format(Date(timeIntervalSince1970: TimeInterval(exp))))
            #expect(KST.parse(t.access_token_token_expired) == Date(timeIntervalSince1970: TimeInterval(exp)))
            #expect(r.header("content-type")?.hasPrefix("application/json") == true)
        }
    }

    @Test("a second request within the issue interval gets 403 EGW00133 in the token endpoint's own shape")
    func tooSoon() async throws {
        try await withSimulator(SimulatorConfiguration(port: 0, issueInterval: 60)) { sim in
            #expect(try await sim.token().status == 200)
            let r = try await sim.token()
            #expect(r.status == 403)
            #expect(r.json["error_code"] as? String == "EGW00133")
            #expect(r.json["error_description"] as? String == "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)")
            #expect(r.json["rt_cd"] == nil && r.json["msg_cd"] == nil)
            // Another app key is not affected.
            #expect(try await sim.token(appKey: "PSother").status == 200)
            // After the interval (on the simulator's clock) the same token comes back.
            _ = try await sim.post("/__sim/clock", ["advance_s": 61])
            #expect(try await sim.token().status == 200)
            let stats = try await sim.request(.GET, "/__sim/stats").json
            #expect((stats["errors"] as? [String: Int])?["EGW00133"] == 1)
            #expect((stats["calls"] as? [String: Int])?["tokenP"] == 4)
            #expect(stats["issuances"] as? Int == 2)
        }
    }

    /// sim.md: "a second token request for an app key within `--issue-interval-s` gets the 403 `EGW00133`" — counted
    /// from the first request itself, not from its token's issuance time, which is in whole seconds.
    @Test("the issue interval counts from the request: 59.6 s after a request at x.9 s is still too soon")
    func issueIntervalFromTheRequest() {
        let state = SimulatorState()
        let first = Date(timeIntervalSince1970: 1_800_000_000.9)
        guard case .issue = state.decideToken(appKey: "PSinterval", reuseWindow: 21600, issueInterval: 60, at: first) else {
            Issue.record("the first request was not issued a token")
            return
        }
        _ = state.record(token: "t", appKey: "PSinterval", appSecret: "s",
                         issuedAt: Date(timeIntervalSince1970: 1_800_000_000), expiresAt: first.addingTimeInterval(86400),
                         reuseWindow: 21600)
        let early = state.decideToken(appKey: "PSinterval", reuseWindow: 21600, issueInterval: 60,
                                      at: first.addingTimeInterval(59.6))
        guard case .tooSoon = early else {
            Issue.record("59.6 s after the first request: \(early), not too soon")
            return
        }
        let later = state.decideToken(appKey: "PSinterval", reuseWindow: 21600, issueInterval: 60,
                                      at: first.addingTimeInterval(60.1))
        guard case .reuse = later else {
            Issue.record("60.1 s after the first request: \(later), not the same token")
            return
        }
    }

    @Test("two token requests at once for one app key: one token, the other 403 EGW00133, as at KIS")
    func concurrentRequests() async throws {
        // The decision is taken when the request is decided, not when its token has been signed and recorded: a
        // second request decided in between (the signing is an actor call, so one may be) is too soon.
        let state = SimulatorState()
        let now = Date()
        guard case .issue = state.decideToken(appKey: "PSconcurrent", reuseWindow: 21600, issueInterval: 60, at: now) else {
            Issue.record("the first request was not issued a token")
            return
        }
        guard case .tooSoon = state.decideToken(appKey: "PSconcurrent", reuseWindow: 21600, issueInterval: 60, at: now)
        else {
            Issue.record("a second request decided before the first token was recorded got a token too")
            return
        }
        // Over HTTP, several at once: one token.
        try await withSimulator(SimulatorConfiguration(port: 0, issueInterval: 60)) { sim in
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<4 { group.addTask { try await sim.token(appKey: "PSconcurrent").status } }
                var out: [Int] = []
                for try await s in group { out.append(s) }
                return out.sorted()
            }
            #expect(statuses == [200, 403, 403, 403])
            #expect(try await sim.request(.GET, "/__sim/stats").json["issuances"] as? Int == 1)
        }
    }

    /// With `--issue-interval-s 0` nothing refuses a second request, and both may decide to issue before either token
    /// is recorded: the one recorded second hands back the first (sim.md: within the reuse window "the same token and
    /// expiry").
    @Test("with no issue interval, requests at once for one app key all get the same token, one issuance")
    func concurrentRequestsWithoutInterval() async throws {
        let state = SimulatorState()
        let now = Date()
        for _ in 0..<2 {
            guard case .issue = state.decideToken(appKey: "PSnoInterval", reuseWindow: 21600, issueInterval: 0, at: now)
            else { Issue.record("no token decided yet, so both requests issue"); return }
        }
        let first = state.record(token: "t1", appKey: "PSnoInterval", appSecret: "s", issuedAt: now,
                                 expiresAt: now.addingTimeInterval(86400), reuseWindow: 21600)
        let second = state.record(token: "t2", appKey: "PSnoInterval", appSecret: "s", issuedAt: now,
                                  expiresAt: now.addingTimeInterval(3600), reuseWindow: 21600)
        #expect(first.token == "t1" && !first.reused)
        #expect(second.token == "t1" && second.reused && second.expiresAt == first.expiresAt)
        #expect(state.token("t2") == nil)
        // With no reuse window, every request is a new token.
        let third = state.record(token: "t3", appKey: "PSnoInterval", appSecret: "s", issuedAt: now,
                                 expiresAt: now.addingTimeInterval(86400), reuseWindow: 0)
        #expect(third.token == "t3" && !third.reused)
        // Over HTTP, eight at once: one token.
        try await withSimulator(SimulatorConfiguration(port: 0, issueInterval: 0)) { sim in
            let tokens = try await withThrowingTaskGroup(of: String?.self) { group in
                for _ in 0..<8 {
                    group.addTask { try await sim.token(appKey: "PSnoInterval").json["access_token"] as? String }
                }
                var out: [String?] = []
                for try await t in group { out.append(t) }
                return out
            }
            #expect(tokens.count == 8 && tokens.allSatisfy { $0 != nil })
            #expect(Set(tokens).count == 1, "\(Set(tokens).count) different tokens")
            #expect(try await sim.request(.GET, "/__sim/stats").json["issuances"] as? Int == 1)
        }
    }

    @Test("--token-latency-ms delays tokenP and revokeP answers, never sooner")
    func tokenLatency() async throws {
        try await withSimulator(SimulatorConfiguration(port: 0, issueInterval: 0, tokenLatencyMs: 300)) { sim in
            let clock = ContinuousClock()
            var started = clock.now
            let token = try await sim.accessToken(appKey: "PSlatency", appSecret: "s")
            #expect(clock.now - started >= .milliseconds(300))
            started = clock.now
            let r = try await sim.post(KISPath.revokeP, ["appkey": "PSlatency", "appsecret": "s", "token": token])
            #expect(r.status == 200)
            #expect(clock.now - started >= .milliseconds(300))
        }
    }

    @Test("within the reuse window the same token and expiry come back; after it, a new token")
    func reuseWindow() async throws {
        try await withSimulator(SimulatorConfiguration(port: 0, issueInterval: 60)) { sim in
            let first = try await sim.token().decode(KISTokenResponse.self)
            _ = try await sim.post("/__sim/clock", ["advance_s": 3600])
            let again = try await sim.token().decode(KISTokenResponse.self)
            #expect(again.access_token == first.access_token)
            #expect(again.access_token_token_expired == first.access_token_token_expired)
            #expect((86400 - 3660)...(86400 - 3595) ~= again.expires_in)  // the seconds left (the test may be slow)
            _ = try await sim.post("/__sim/clock", ["advance_s": 21600])
            let fresh = try await sim.token().decode(KISTokenResponse.self)
            #expect(fresh.access_token != first.access_token)
            #expect(fresh.expires_in == 86400)
            // The old token still works at KIS until it expires.
            let r = try await sim.domestic(token: first.access_token, from: "20250102", to: "20250110")
            #expect(r.status == 200)
        }
    }

    /// With no `--credentials` any pair is accepted (sim.md), and a request for the same app key within the reuse
    /// window gets the same token: with another secret too, and the quotations it makes are accepted with either. (The
    /// token used to be handed back, then refused with `EGW00105` on every quotation made with the new secret.)
    @Test("without --credentials the app key's token comes back to another secret, and quotations accept either")
    func anySecretWithoutCredentials() async throws {
        try await withSimulator(SimulatorConfiguration(port: 0, issueInterval: 60, ratePerSecond: 100)) { sim in
            let first = try await sim.token(appSecret: "secret-one").decode(KISTokenResponse.self)
            _ = try await sim.post("/__sim/clock", ["advance_s": 120])
            let other = try await sim.token(appSecret: "secret-two").decode(KISTokenResponse.self)
            #expect(other.access_token == first.access_token)
            for secret in ["secret-one", "secret-two"] {
                let r = try await sim.domestic(token: first.access_token, from: "20250102", to: "20250110", appSecret: secret)
                #expect(r.status == 200, "\(secret): \(r.text)")
            }
            // Another app key is still refused with it.
            let otherKey = try await sim.domestic(token: first.access_token, from: "20250102", to: "20250110",
                                                  appKey: "PSappkey-test-0002")
            #expect(otherKey.json["msg_cd"] as? String == "EGW00121")
            // `live_tokens` counts it, and not once the clock is past its expiry.
            #expect(try await sim.request(.GET, "/__sim/stats").json["live_tokens"] as? Int == 1)
            _ = try await sim.post("/__sim/clock", ["advance_s": 86_400])
            #expect(try await sim.request(.GET, "/__sim/stats").json["live_tokens"] as? Int == 0)
        }
    }

    @Test("--reused-expires-in full keeps saying the full life")
    func reuseFull() async throws {
        try await withSimulator(SimulatorConfiguration(port: 0, issueInterval: 0, reuseReportsRemaining: false)) { sim in
            _ = try await sim.token()
            _ = try await sim.post("/__sim/clock", ["advance_s": 100])
            #expect(try await sim.token().decode(KISTokenResponse.self).expires_in == 86400)
        }
    }

    /// What the broker builds on (kis-api.md §2.1): KISClient takes the expiry from `access_token_token_expired`
    /// whatever `expires_in` says, and dates the token by the two together — the first issuance when a reused token
    /// says the full life, the time of the answer when it says the seconds left.
    @Test("KISClient reads a reused token: KIS's expiry either way; issued at the first issuance (full) or at the answer (remaining)",
          arguments: [false, true])
    func clientReadsReusedToken(reportsRemaining: Bool) async throws {
        let config = SimulatorConfiguration(port: 0, issueInterval: 0, reuseReportsRemaining: reportsRemaining)
        try await withSimulator(config) { sim in
            var logger = Logger(label: "kis-client")
            logger.logLevel = .critical
            let client = KISClient(baseURL: sim.base, logger: logger)
            let first = try await client.issueToken(appKey: "PSappkey-test-0001", appSecret: "secret-0001")
            let issued = first.expiresAt.addingTimeInterval(-86400)
            #expect(first.issuedAt == issued)
            _ = try await sim.post("/__sim/clock", ["advance_s": 3600])
            let again = try await client.issueToken(appKey: "PSappkey-test-0001", appSecret: "secret-0001")
            #expect(again.accessToken == first.accessToken)
            #expect(again.expiresAt == first.expiresAt)
            let at = try #require(again.issuedAt)
            if reportsRemaining {
                #expect((3600...3610).contains(at.timeIntervalSince(issued)), "\(at) for a token issued \(issued)")
            } else {
                #expect(again.expiresIn == 86400)
                #expect(at == issued)
            }
        }
    }

    @Test("with --credentials only listed pairs get tokens", arguments: [
        ("PSgood", "good-secret", 200, nil),
        ("PSunknown", "good-secret", 403, "EGW00103"),
        ("PSgood", "wrong", 403, "EGW00105"),
        ("", "good-secret", 403, "EGW00102"),
        ("PSgood", "", 403, "EGW00104"),
    ] as [(String, String, Int, String?)])
    func credentials(appKey: String, appSecret: String, status: Int, code: String?) async throws {
        let config = SimulatorConfiguration(port: 0, issueInterval: 0, credentials: ["PSgood": "good-secret"])
        try await withSimulator(config) { sim in
            let r = try await sim.token(appKey: appKey, appSecret: appSecret)
            #expect(r.status == status)
            if let code {
                #expect(r.json["error_code"] as? String == code)
                #expect((r.json["error_description"] as? String)?.isEmpty == false)
            }
        }
    }

    @Test("a malformed token request is refused in KIS's shape", arguments: [
        #"not json"#,
        #"{"appkey":"a","appsecret":"b"}"#,
        #"{"grant_type":"password","appkey":"a","appsecret":"b"}"#,
    ])
    func malformed(body: String) async throws {
        try await withSimulator { sim in
            let r = try await sim.request(.POST, KISPath.tokenP, body: body)
            #expect(r.status == 403)
            #expect(["EGW00115", "EGW00116"].contains(r.json["error_code"] as? String))
        }
    }

    @Test("revokeP revokes; the token is then refused with EGW00121 and a new one is issued")
    func revoke() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let r = try await sim.post(
                KISPath.revokeP, ["appkey": "PSappkey-test-0001", "appsecret": "secret-0001", "token": token])
            #expect(r.status == 200)
            #expect(r.json["code"] as? Int == 200)
            #expect(r.json["message"] as? String == "접근토큰 폐기에 성공하였습니다")
            let q = try await sim.domestic(token: token, from: "20250102", to: "20250110")
            #expect(q.status == 500)
            #expect(q.json["msg_cd"] as? String == "EGW00121")
            #expect(q.json["rt_cd"] as? String == "1")
            let next = try await sim.accessToken()
            #expect(next != token)
            // Revoking with another app key's credentials is refused.
            let other = try await sim.post(KISPath.revokeP, ["appkey": "PSintruder", "appsecret": "x", "token": next])
            #expect(other.status == 403)
            #expect(other.json["error_code"] as? String == "EGW00121")
        }
    }

    @Test("an expired token gets 500 EGW00123, by /__sim/expire or by the clock")
    func expiry() async throws {
        try await withSimulator { sim in
            let a = try await sim.accessToken(appKey: "PSexpire-a")
            #expect(try await sim.post("/__sim/expire", ["access_token": a]).status == 200)
            let r = try await sim.domestic(token: a, from: "20250102", to: "20250110", appKey: "PSexpire-a")
            #expect(r.status == 500)
            #expect(r.json["msg_cd"] as? String == "EGW00123")
            #expect(r.json["msg1"] as? String == "기간이 만료된 token 입니다.")

            let b = try await sim.accessToken(appKey: "PSexpire-b")
            #expect(try await sim.domestic(token: b, from: "20250102", to: "20250110", appKey: "PSexpire-b").status == 200)
            _ = try await sim.post("/__sim/clock", ["advance_s": 86401])
            let late = try await sim.domestic(token: b, from: "20250102", to: "20250110", appKey: "PSexpire-b")
            #expect(late.json["msg_cd"] as? String == "EGW00123")
            // Unknown token for /__sim/expire.
            #expect(try await sim.post("/__sim/expire", ["access_token": "nope"]).status == 404)
        }
    }

    @Test("short-lived tokens: --token-ttl-s")
    func shortTTL() async throws {
        try await withSimulator(SimulatorConfiguration(port: 0, tokenTTL: 120, issueInterval: 0)) { sim in
            let t = try await sim.token().decode(KISTokenResponse.self)
            #expect(t.expires_in == 120)
        }
    }

    private func decodeSegment(_ s: Substring) throws -> [String: Any] {
        var b64 = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b64.count % 4 != 0 { b64 += "=" }
        let data = try #require(Data(base64Encoded: b64))
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }
}
