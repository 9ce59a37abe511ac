import AsyncHTTPClient
import Broker
import Foundation
import Gateway
import Hummingbird
import KIS
import KisgwConfiguration
import Logging
import NIOCore
import NIOHTTP1
import Observability
import PostgresNIO
import Prometheus
import Redis
import ServerKit
import Simulator
import Store
import Testing
import Tokens
import TestSupport

@Suite("Broker API over real sockets: routes, bodies and errors", .serialized)
struct BrokerAPITests {
    @Test("every /api/kis route wants a valid Bearer JWT")
    func authentication() async throws {
        try await withBroker { b in
            let routes: [(HTTPMethod, String)] = [
                (.POST, "/api/kis/account/validate"), (.POST, "/api/kis/token"), (.POST, "/api/kis/token/refresh"),
                (.GET, "/api/kis/account?environment=SANDBOX"), (.DELETE, "/api/kis/account?environment=SANDBOX"),
            ]
            for (method, path) in routes {
                let none = try await http(method, b.url + path, headers: [("content-type", "application/json")], body: "{}")
                #expect(none.status == 401, "\(path)")
                #expect(none.code == "auth_required")
                #expect(none.header("content-type") == "application/problem+json")
                let bad = try await http(method, b.url + path, headers: [("Authorization", "Bearer not.a.jwt")], body: "{}")
                #expect(bad.status == 401)
                #expect(bad.code == "jwt_invalid")
            }
            // Read exactly as the gateway reads it: the scheme in any case, a tab or spaces, optional whitespace.
            let jwt = try await b.jwt("u-bearer")
            for value in ["bearer\t" + jwt, "BEARER   " + jwt + " ", "Bearer " + jwt] {
                let r = try await http(.GET, b.url + "/api/kis/account?environment=SANDBOX", headers: [("Authorization", value)])
                #expect(r.status == 404 && r.code == "account_not_found", "\(value.prefix(10)): \(r.status) \(r.code ?? "")")
            }
            for value in ["Bearer", "Bearer    ", "Bearer" + jwt, "Basic " + jwt] {
                let r = try await http(.GET, b.url + "/api/kis/account?environment=SANDBOX", headers: [("Authorization", value)])
                #expect(r.status == 401 && r.code == "auth_required", "\(value.prefix(10)): \(r.status)")
            }
        }
    }

    @Test("validate checks the form first and answers valid:false with a code")
    func validateForm() async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u1")
            let cases: [[String: Any]] = [
                accountBody(appKey("a"), number: "1234"),
                accountBody("", number: "12345678-01"),
                accountBody(appKey("a"), secret: "has space"),
                accountBody(appKey("a"), secret: String(repeating: "s", count: 513)),
                accountBody(appKey("a"), env: "PAPER"),
                ["appKey": appKey("a")],
                accountBody("PS key with spaces", secret: "s"),
                accountBody("PS" + String(repeating: "k", count: 511), secret: "s"),  // 513 characters
                accountBody(appKey("a"), secret: ""),
            ]
            for body in cases {
                let r = try await b.post("/api/kis/account/validate", body, jwt: jwt)
                #expect(r.status == 400)
                #expect(r.json["valid"] as? Bool == false)
                #expect(r.code == "invalid_parameter")
                #expect((r.json["message"] as? String)?.isEmpty == false)
            }
            let notJSON = try await http(.POST, b.url + "/api/kis/account/validate",
                                         headers: [("Authorization", "Bearer " + jwt)], body: "nope")
            #expect(notJSON.status == 400)
            #expect(try await b.issuances() == 0)
            // At most 512 characters: 512 is a form KIS may be asked about.
            let longest = try await b.post("/api/kis/account/validate",
                                           accountBody("PS" + String(repeating: "k", count: 510), secret: "s"), jwt: jwt)
            #expect(longest.status == 200, "\(longest.text)")
        }
    }

    /// The form rules of `validate` hold for `token` too, which stores what it is given: a bad form is a problem naming
    /// the field, and nothing is stored, published or asked of KIS.
    @Test("token checks the form first: 400 invalid_parameter problem+json naming the field; nothing stored or issued")
    func tokenForm() async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u-tform")
            let cases: [(body: [String: Any], field: String)] = [
                (accountBody(appKey("a"), number: "1234"), "accountNumber"),
                (accountBody(appKey("a"), number: "12345678-1x"), "accountNumber"),
                (accountBody("", number: "12345678-01"), "appKey"),
                (accountBody(appKey("a"), secret: "has space"), "appSecret"),
                (accountBody(appKey("a"), secret: String(repeating: "s", count: 513)), "appSecret"),
                (accountBody(appKey("a"), env: "PAPER"), "environment"),
                (["appKey": appKey("a")], "environment"),
                (accountBody("PS key with spaces", secret: "s"), "appKey"),
                (accountBody("PS" + String(repeating: "k", count: 511), secret: "s"), "appKey"),  // 513 characters
                (accountBody(appKey("a"), secret: ""), "appSecret"),
                (["appKey": 12345, "appSecret": "s", "accountNumber": "12345678-01", "environment": "SANDBOX"], "appKey"),
                (["appKey": appKey("a"), "appSecret": "s", "accountNumber": 1234567801, "environment": "SANDBOX"],
                 "accountNumber"),
                (["appKey": appKey("a"), "appSecret": "s", "accountNumber": "12345678-01"], "environment"),
            ]
            for (body, field) in cases {
                let r = try await b.post("/api/kis/token", body, jwt: jwt)
                #expect(r.status == 400, "\(field): \(r.status) \(r.text)")
                #expect(r.code == "invalid_parameter", "\(field): \(r.text)")
                #expect(r.header("content-type") == "application/problem+json", "\(field)")
                #expect((r.json["detail"] as? String)?.hasPrefix(field + " ") == true, "\(field): \(r.text)")
                #expect(r.json["token"] == nil)
            }
            for raw in ["nope", "", "[]", #"{"appKey": "#] {
                let r = try await http(.POST, b.url + "/api/kis/token",
                                       headers: [("Authorization", "Bearer " + jwt), ("content-type", "application/json")],
                                       body: raw)
                #expect(r.status == 400 && r.code == "invalid_parameter", "\(raw): \(r.status) \(r.text)")
                #expect(r.header("content-type") == "application/problem+json")
            }
            #expect(try await b.issuances() == 0)
            #expect(try await b.simCalls("tokenP") == 0)
            for env in ["SANDBOX", "LIVE"] {
                #expect(try await b.get("/api/kis/account?environment=" + env, jwt: jwt).code == "account_not_found")
                #expect(try await b.store.setMembers(TokenDirectory.userKey("u-tform", KISEnvironment(rawValue: env)!)).isEmpty)
            }
            // A bad form costs no account check: the well-formed one after thirteen bad ones is served.
            let good = try await b.post("/api/kis/token", accountBody(appKey("tform")), jwt: jwt)
            #expect(good.status == 200, "\(good.text)")
        }
    }

    /// The app key and secret go to KIS as HTTP header values (`appkey`, `appsecret`): only printable ASCII, counted
    /// in bytes. Before, only whitespace was refused and grapheme clusters were counted, so a control character, a
    /// zero-width space, a combining mark or a Hangul syllable passed, and 512 characters could be 1,000 bytes.
    @Test("appKey and appSecret: printable ASCII only, at most 512 bytes; the error names the field",
          arguments: ["appKey", "appSecret"])
    func credentialCharacters(field: String) async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u-chars")
            let base = appKey("chars")
            let bad = [
                base + "\u{07}", base + "\u{0}", base + "\u{7F}", "\u{1B}[31m" + base, base + "\u{200B}", base + "\u{FEFF}",
                base + "e\u{0301}", base + "한글", base + "é", base + "\u{00A0}", base + "\t",
                // 512 characters, 513 bytes.
                String(repeating: "k", count: 511) + "é",
                // (A U+FEFF that opens a JSON string is dropped by Foundation's parser on Linux: the broker sees, and
                // checks, the rest.)
            ]
            for value in bad {
                var body = accountBody(base)
                body[field] = value
                for path in ["/api/kis/token", "/api/kis/account/validate"] {
                    let r = try await b.post(path, body, jwt: jwt)
                    let scalars = value.unicodeScalars.suffix(2).map { String($0.value, radix: 16) }
                    #expect(r.status == 400 && r.code == "invalid_parameter", "\(path) \(field) …\(scalars): \(r.status)")
                    let detail = (r.json["detail"] ?? r.json["message"]) as? String ?? ""
                    #expect(detail.hasPrefix(field + " ") && detail.contains("printable ASCII"), "\(path): \(detail)")
                    // The value is not echoed back.
                    #expect(!r.text.contains(base), "\(r.text)")
                }
            }
            #expect(try await b.issuances() == 0)
            // Every printable ASCII character, and 512 bytes of them, pass.
            let printable = String(decoding: (0x21...0x7E).map { UInt8($0) }, as: UTF8.self)
            for (i, value) in [printable, String(repeating: "k", count: 512)].enumerated() {
                // One app key each: KIS issues one token a minute per app key.
                let body = accountBody(field == "appKey" ? value : appKey("ok\(i)"), secret: field == "appSecret" ? value : "s")
                let r = try await b.post("/api/kis/account/validate", body, jwt: jwt)
                #expect(r.status == 200, "\(r.text)")
            }
        }
    }

    /// broker-api.md, issuance economy: a stored token serves `POST /api/kis/token` unless it is inside
    /// `refresh_ahead_s` of its expiry and past `reuse_window_s` (then KIS is asked again).
    @Test("token: the stored token serves past the reuse window until it is inside refresh_ahead_s of expiry")
    func issuanceEconomy() async throws {
        try await withBroker(config: quietSchedulerConfig) { b in
            let key = appKey("econ")
            let first = try #require(try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1"))
                .json["token"] as? String)
            #expect(try await b.issuances() == 1)
            // Past the 6 h reuse window, 17.9 h left: served.
            try await b.advanceClocks(21600 + 60)
            let later = try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1"))
            #expect(later.json["token"] as? String == first, "\(later.text)")
            #expect(try await b.issuances() == 1)
            // 30 min before its expiry (inside refresh_ahead_s, 1 h): a new one.
            try await b.advanceClocks(86400 - 1800 - 21600 - 60)
            let renewed = try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1"))
            #expect(renewed.status == 200, "\(renewed.text)")
            #expect(renewed.json["token"] as? String != first)
            #expect(try await b.issuances() == 2)
        }
    }

    @Test("validate: KIS refusing the secret is valid:false kis_credentials_rejected; token answers the problem")
    func validateRejected() async throws {
        let key = appKey("rej")
        let sim = SimulatorConfiguration(port: 0, environment: .sandbox, credentials: [key: "right-secret"])
        try await withBroker(sim: sim) { b in
            let jwt = try await b.jwt("u1")
            let r = try await b.post("/api/kis/account/validate", accountBody(key, secret: "wrong-secret"), jwt: jwt)
            #expect(r.status == 400)
            #expect(r.json["valid"] as? Bool == false)
            #expect(r.code == "kis_credentials_rejected")
            // KIS's own code and (Korean) words, for the user.
            #expect(r.json["kis_msg_cd"] as? String == "EGW00105")
            #expect((r.json["kis_msg1"] as? String)?.isEmpty == false, "\(r.json)")
            let t = try await b.post("/api/kis/token", accountBody(key, secret: "wrong-secret"), jwt: jwt)
            #expect(t.status == 400)
            #expect(t.code == "kis_credentials_rejected")
            #expect(t.header("content-type") == "application/problem+json")
            #expect(t.json["kis_msg_cd"] as? String == "EGW00105")
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 404)
        }
    }

    /// `[broker] reuse_window_s` may be 0 (config.md allows it): the token a check obtained is still kept for KIS's
    /// minute between issuances, or the `token` call right after asks KIS again and is refused (429).
    @Test("validate then token with reuse_window_s = 0: still one KIS issuance")
    func validateThenTokenWithoutAReuseWindow() async throws {
        try await withBroker(config: { testConfig(simURL: $0, database: $1, refreshIntervalS: 3600, reuseWindowS: 0,
                                                  reconcileIntervalS: 3600) }) { b in
            let jwt = try await b.jwt("u-rw0")
            let key = appKey("rw0")
            #expect(try await b.post("/api/kis/account/validate", accountBody(key), jwt: jwt).status == 200)
            let t = try await b.post("/api/kis/token", accountBody(key), jwt: jwt)
            #expect(t.status == 200, "\(t.text)")
            #expect(try await b.issuances() == 1)
        }
    }

    @Test("validate then token back to back succeeds with one KIS issuance (KIS allows one a minute)",
          arguments: StoreKind.allCases, DatabaseKind.allCases)
    func validateThenToken(store: StoreKind, database: DatabaseKind) async throws {
        try await withBroker(store: store, database: database) { b in
            let jwt = try await b.jwt("u1")
            let subscription = try await b.store.subscribe(to: TokenDirectory.eventsChannel)
            let key = appKey("vt")
            let v = try await b.post("/api/kis/account/validate", accountBody(key), jwt: jwt)
            #expect(v.status == 200)
            #expect(v.json["valid"] as? Bool == true)
            #expect(v.json["message"] as? String == "한국투자증권에서 App Key와 App Secret을 확인했습니다")
            let t = try await b.post("/api/kis/token", accountBody(key), jwt: jwt)
            #expect(t.status == 200, "\(t.text)")
            #expect(t.json["environment"] as? String == "SANDBOX")
            let token = try #require(t.json["token"] as? String)
            let expiresAt = try #require(t.json["expiresAt"] as? String)
            #expect(expiresAt.hasSuffix("+09:00"))
            #expect(try await b.issuances() == 1)

            // Published as store.md says: the record, the user's set, an `issued` event.
            let published = try #require(try await b.published(token))
            #expect(published.userID == "u1")
            #expect(published.environment == .sandbox)
            #expect(published.credentials.app_key == key)
            #expect(published.credentials.app_secret == "secret-" + key)
            #expect(KST.iso8601(published.expiresAt) == expiresAt)
            let sha = TokenDirectory.sha256(of: token)
            #expect(try await b.store.setMembers(TokenDirectory.userKey("u1", .sandbox)) == [sha])
            var events = subscription.makeAsyncIterator()
            let event = try #require(await events.next())
            let decoded = try JSONDecoder().decode(TokenEvent.self, from: Data(event.readableBytesView))
            #expect(decoded == TokenEvent(type: "issued", sha256: sha, user_id: "u1", env: .sandbox))

            // Asking again reuses the stored token.
            let again = try await b.post("/api/kis/token", accountBody(key, number: "8765432109"), jwt: jwt)
            #expect(again.json["token"] as? String == token)
            #expect(try await b.issuances() == 1)
            let metrics = try await b.get("/metrics", jwt: nil)
            #expect(metrics.text.contains(#"kis_token_issuances_total{environment="SANDBOX"} 1"#))
        }
    }

    /// broker-api.md: validate "proves the credentials at KIS by obtaining a token". Validating the key pair an
    /// account is connected with, while its token lives, needs no new proof — unless the scheduler switched the
    /// account off because KIS refused that pair: then KIS is asked again.
    @Test("validate of an account the scheduler switched off asks KIS again (no shortcut on its stored token)")
    func validateOfAnInactiveAccountAsksKIS() async throws {
        let key = appKey("inactive")
        let sim = SimulatorConfiguration(port: 0, environment: .sandbox, issueInterval: 0)
        try await withBroker(sim: sim, config: quietSchedulerConfig) { b in
            let jwt = try await b.jwt("u1")
            #expect(try await b.post("/api/kis/token", accountBody(key), jwt: jwt).status == 200)
            func tokenCalls() async throws -> Int {
                try await (b.sim(.GET, "/__sim/stats").json["calls"] as? [String: Int])?["tokenP"] ?? -1
            }
            let before = try await tokenCalls()
            // Connected, its token live: validating the same pair again is answered without KIS.
            let again = try await b.post("/api/kis/account/validate", accountBody(key), jwt: jwt)
            #expect(again.status == 200 && again.json["valid"] as? Bool == true, "\(again.text)")
            #expect(try await tokenCalls() == before)
            // The scheduler switched the account off (KIS refused its pair three times): its token proves nothing.
            try await withRepository(b.database) { repo in
                try await repo.setAccountActive(userID: "u1", environment: .sandbox, isActive: false, updatedAt: 2)
            }
            let asked = try await b.post("/api/kis/account/validate", accountBody(key), jwt: jwt)
            #expect(asked.status == 200 && asked.json["valid"] as? Bool == true, "\(asked.text)")
            #expect(try await tokenCalls() == before + 1, "KIS was not asked")
        }
    }

    @Test("a second issuance within KIS's minute is kis_rate_limited, 429 with Retry-After")
    func rateLimited() async throws {
        try await withBroker { b in
            let key = appKey("rl")
            let first = try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1"))
            let token = try #require(first.json["token"] as? String)
            // A gateway saw KIS refuse the token at once (it expired early at KIS): nothing stored can serve the
            // account, and KIS refuses a second token within the minute.
            try await b.kisRefused(token)
            let r = try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1"))
            #expect(r.status == 429)
            #expect(r.code == "kis_rate_limited")
            #expect(r.json["kis_msg_cd"] as? String == "EGW00133")
            let retry = try #require(r.header("retry-after").flatMap { Int($0) })
            #expect((1...60).contains(retry))
        }
    }

    /// KIS gives an app key one token at a time (the same one for 6 hours): a second user connecting the same app
    /// key after KIS's minute used to take the token over (its row and record then named them), and its owner's
    /// requests were refused — and past the 6 hours, the first user's next issuance took back the second's.
    @Test("an app key is one user's: a second user cannot validate or connect it (400 invalid_parameter naming appKey), now or 6 h on")
    func sameAppKeyTwoUsers() async throws {
        try await withBroker(config: quietSchedulerConfig) { b in
            let key = appKey("shared")
            let first = try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1"))
            let token = try #require(first.json["token"] as? String)
            for wait in [61, 21600] {
                try await b.advanceClocks(wait)
                try await Self.expectAnotherUsersAppKey(b, key, user: "u2")
            }
            #expect(try await b.published(token)?.userID == "u1")
            let mine = try await b.get("/api/kis/account?environment=SANDBOX", jwt: try await b.jwt("u1"))
            #expect(mine.json["connected"] as? Bool == true)
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: try await b.jwt("u2")).status == 404)
            // Once the first user disconnects, the key is free.
            #expect(try await b.delete("/api/kis/account?environment=SANDBOX", jwt: try await b.jwt("u1")).status == 204)
            #expect(try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u2")).status == 200)
        }
    }

    /// `user` can neither validate nor connect `key`, another user's, before KIS is asked: with the secret stored for
    /// that user (the one `accountBody` sends), 400 naming `appKey`; with another secret, KIS's answer to a wrong
    /// secret (the broker does not tell who has not proven the key pair that the key is registered here). When the
    /// stored secret does not open (`provable` false) nothing proves the key pair: KIS's answer either way.
    static func expectAnotherUsersAppKey(_ b: BrokerFixture, _ key: String, user: String, provable: Bool = true,
                                         sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let issued = try await b.issuances()
        let asked = try await b.simCalls("tokenP")
        let jwt = try await b.jwt(user)
        for route in ["/api/kis/account/validate", "/api/kis/token"] {
            let wrong = try await b.post(route, accountBody(key, secret: "s2"), jwt: jwt)
            #expect(wrong.status == 400 && wrong.code == "kis_credentials_rejected", "\(route): \(wrong.text)",
                    sourceLocation: sourceLocation)
            #expect(wrong.json["kis_msg_cd"] as? String == "EGW00105", "\(wrong.text)", sourceLocation: sourceLocation)
        }
        let validate = try await b.post("/api/kis/account/validate", accountBody(key), jwt: jwt)
        #expect(validate.status == 400 && validate.json["valid"] as? Bool == false, "\(validate.text)",
                sourceLocation: sourceLocation)
        let second = try await b.post("/api/kis/token", accountBody(key), jwt: jwt)
        if provable {
            #expect(validate.code == "invalid_parameter", "\(validate.text)", sourceLocation: sourceLocation)
            #expect(second.status == 400 && second.code == "invalid_parameter", "\(second.text)", sourceLocation: sourceLocation)
            #expect((second.json["detail"] as? String)?.hasPrefix("appKey: ") == true, "\(second.text)",
                    sourceLocation: sourceLocation)
        } else {
            #expect(validate.code == "kis_credentials_rejected", "\(validate.text)", sourceLocation: sourceLocation)
            #expect(second.status == 400 && second.code == "kis_credentials_rejected", "\(second.text)",
                    sourceLocation: sourceLocation)
        }
        #expect(try await b.issuances() == issued, "KIS was asked for \(user)", sourceLocation: sourceLocation)
        #expect(try await b.simCalls("tokenP") == asked, "KIS was asked for \(user)", sourceLocation: sourceLocation)
    }

    /// The one-user-per-app-key refusal was an oracle: any signed-in user posting an app key with any secret learned
    /// whether another user of the broker had connected it. Now only the right secret tells; a wrong one gets, word for
    /// word, what KIS's refusal of a wrong secret gets — without KIS being asked (no issuance, no tokenP call).
    @Test("another user's app key with a wrong secret is answered as KIS's wrong secret, KIS not asked; with its secret, 400 naming appKey")
    func anotherUsersAppKeyNeedsItsSecret() async throws {
        let (taken, free) = (appKey("oracle-a"), appKey("oracle-c"))
        let sim = SimulatorConfiguration(port: 0, environment: .sandbox,
                                         credentials: [taken: "secret-" + taken, free: "secret-" + free])
        try await withBroker(sim: sim, config: quietSchedulerConfig) { b in
            let connected = try await b.post("/api/kis/token", accountBody(taken), jwt: try await b.jwt("u-a"))
            #expect(connected.status == 200, "\(connected.text)")
            let jwt = try await b.jwt("u-b")
            func canonical(_ r: HTTPResult) throws -> String {
                String(decoding: try JSONSerialization.data(withJSONObject: r.json, options: .sortedKeys), as: UTF8.self)
            }
            for route in ["/api/kis/account/validate", "/api/kis/token"] {
                // A key no user here has, and a wrong secret: KIS is asked and refuses it.
                let calls = try await b.simCalls("tokenP")
                let reference = try await b.post(route, accountBody(free, secret: "wrong"), jwt: jwt)
                #expect(reference.status == 400 && reference.code == "kis_credentials_rejected", "\(reference.text)")
                #expect(try await b.simCalls("tokenP") == calls + 1)
                // Another user's key and a wrong secret: the same answer, and KIS is not asked.
                let issued = try await b.issuances()
                let probe = try await b.post(route, accountBody(taken, secret: "wrong"), jwt: jwt)
                #expect(probe.status == reference.status)
                #expect(probe.header("content-type") == reference.header("content-type"))
                #expect(try canonical(probe) == canonical(reference), "\(route): \(probe.text) / \(reference.text)")
                #expect(try await b.simCalls("tokenP") == calls + 1, "KIS was asked")
                #expect(try await b.issuances() == issued)
                // With the key's secret: told why.
                let proven = try await b.post(route, accountBody(taken), jwt: jwt)
                #expect(proven.status == 400 && proven.code == "invalid_parameter", "\(proven.text)")
                #expect((proven.json[route.hasSuffix("validate") ? "message" : "detail"] as? String)?
                    .hasPrefix("appKey: this app key is connected to another user") == true, "\(proven.text)")
                #expect(try await b.simCalls("tokenP") == calls + 1, "KIS was asked")
            }
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 404)
        }
    }

    /// `user`'s SANDBOX account with `key` (the secret and account number `accountBody` sends), sealed by `keyring`,
    /// and inactive: the scheduler would otherwise obtain its first token at KIS while a test counts issuances. (It
    /// holds its app key all the same.)
    static func sealedAccount(_ user: String, _ key: String, keyring: SealKeyring) throws -> StoredAccount {
        try AccountVault(keyring: keyring).seal(Account(
            userID: user, environment: .sandbox, appKey: key, appSecret: "secret-" + key, accountNumber: "12345678-01",
            isActive: false, createdAt: 1, updatedAt: 1))
    }

    /// The check looks accounts up by the app key's fingerprint under every seal key: it finds an account re-encrypted
    /// with the new key at start-up (its fingerprint made anew) as well as one still sealed with the old key (written
    /// by a copy not restarted yet).
    @Test("after a seal key rotation an app key is still one user's, whichever key sealed the account",
          arguments: DatabaseKind.allCases)
    func appKeyAfterRotation(kind: DatabaseKind) async throws {
        let db = try await TestDatabase.make(kind)
        let old = try SealKeyring(current: "k1", keys: ["k1": VaultTests.key(1)])
        let rotated = try SealKeyring(current: "k2", keys: ["k1": VaultTests.key(1), "k2": VaultTests.key(2)])
        let key = appKey("rotated")
        try await withBroker(keyring: old, existingDatabase: db, config: quietSchedulerConfig) { b in
            let connected = try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1"))
            #expect(connected.status == 200, "\(connected.text)")
        }
        try await withBroker(keyring: rotated, existingDatabase: db, config: quietSchedulerConfig) { b in
            let row = try await withRepository(db) { try await $0.account(userID: "u1", environment: .sandbox) }
            #expect(row?.kid == "k2")
            #expect(try row?.appKeyFingerprint == AccountVault(keyring: rotated).appKeyFingerprint(key, .sandbox, kid: "k2"))
            try await Self.expectAnotherUsersAppKey(b, key, user: "u2")
            let oldKey = appKey("unrotated")
            try await withRepository(db) { try await $0.saveAccount(try Self.sealedAccount("u3", oldKey, keyring: old), token: nil) }
            try await Self.expectAnotherUsersAppKey(b, oldKey, user: "u4")
            #expect(try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1")).status == 200)
        }
    }

    /// Accounts the check finds however they are stored: without an app key fingerprint (by a kisgw from before
    /// `app_key_fp`, until the broker fills it at start-up: looked at on every check until then), and with a secret that
    /// does not open (altered, say: the check opens the app key alone, it needs no more).
    @Test("an account stored without an app key fingerprint, or whose secret does not open, still holds its app key",
          arguments: DatabaseKind.allCases)
    func appKeyOfAccountsStoredOtherwise(kind: DatabaseKind) async throws {
        try await withBroker(database: kind, config: quietSchedulerConfig) { b in
            var withoutFingerprint = try Self.sealedAccount("u1", appKey("nofp"), keyring: b.keyring)
            withoutFingerprint.appKeyFingerprint = nil
            var secretAltered = try Self.sealedAccount("u2", appKey("keyonly"), keyring: b.keyring)
            secretAltered.appSecret = secretAltered.accountNumber  // sealed for another column: it does not open as the secret
            let rows = [withoutFingerprint, secretAltered]
            try await withRepository(b.database) { repo in
                for row in rows { try await repo.saveAccount(row, token: nil) }
            }
            try await Self.expectAnotherUsersAppKey(b, appKey("nofp"), user: "u3")
            try await Self.expectAnotherUsersAppKey(b, appKey("keyonly"), user: "u4", provable: false)
        }
    }

    /// A gateway may see KIS refuse a token KIS still holds current (EGW00121/EGW00122 can pass): the refresh then
    /// gets the same token back from KIS. It is current again — the `dead:` mark cleared — or every later call would
    /// expire it and ask KIS again (a minute apart, else EGW00133) for the mark's 24 h.
    @Test("a token marked dead that KIS hands back as current is served again, not re-issued on every call")
    func deadTokenHandedBack() async throws {
        try await withBroker(config: quietSchedulerConfig) { b in
            let key = appKey("back")
            let first = try #require(try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1"))
                .json["token"] as? String)
            let sha = TokenDirectory.sha256(of: first)
            try await b.kisRefused(first, code: "EGW00121", endedAtKIS: false)
            try await b.advanceClocks(61)
            let refreshed = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: try await b.jwt("u1"))
            #expect(refreshed.status == 200, "\(refreshed.text)")
            #expect(refreshed.json["token"] as? String == first)  // KIS's reuse window: the same token
            #expect(try await TokenDirectory.deadReason(sha256: sha, store: b.store) == nil)
            #expect(try await b.published(first)?.userID == "u1")
            let calls = try await b.sim(.GET, "/__sim/stats").json["calls"] as? [String: Int]
            // Served from now on without KIS.
            for _ in 0..<2 {
                let again = try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1"))
                #expect(again.status == 200 && again.json["token"] as? String == first, "\(again.text)")
            }
            #expect(try await b.sim(.GET, "/__sim/stats").json["calls"] as? [String: Int] == calls)
        }
    }

    /// The reuse window counts from the token's first issuance: KIS hands the same token back within 6 hours, to
    /// validate's tokenP as to the broker's own, and a token adopted from validate was dated from the validation.
    @Test("a token validate got again keeps its first issuance time: refresh asks KIS 6 h after that, not after the validation")
    func validatedTokenKeepsItsIssuance() async throws {
        try await withBroker(config: quietSchedulerConfig) { b in
            let key = appKey("vi")
            let first = try #require(try await b.post("/api/kis/token", accountBody(key, secret: "secret-one"),
                                                      jwt: try await b.jwt("u1")).json["token"] as? String)
            // Two hours on, the user edits the account (another account number): validate obtains the same token
            // from KIS.
            try await b.advanceClocks(7200)
            let edited = accountBody(key, secret: "secret-one", number: "87654321-01")
            #expect(try await b.post("/api/kis/account/validate", edited, jwt: try await b.jwt("u1")).status == 200)
            let adopted = try await b.post("/api/kis/token", edited, jwt: try await b.jwt("u1"))
            #expect(adopted.json["token"] as? String == first, "\(adopted.text)")
            // Six hours after the first issuance (four after the validation): past the reuse window.
            try await b.advanceClocks(21600 - 7200 + 60)
            let refreshed = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: try await b.jwt("u1"))
            #expect(refreshed.status == 200, "\(refreshed.text)")
            #expect(refreshed.json["token"] as? String != first, "the reuse window was counted from the validation")
        }
    }

    /// kis-api.md §2.1: within its 6 h reuse window KIS answers tokenP with the token it issued before, and whether
    /// `expires_in` then counts the seconds left or still says the full 86400 is unverified — `kisgw sim
    /// --reused-expires-in full` plays the second. Here the token was issued outside the broker (the user tried the
    /// app key with KIS's own sample two hours before connecting), so the broker has no row of it to take the first
    /// issuance from. Its expiry is KIS's `access_token_token_expired`, not the answer's time plus 86400 s; and the
    /// full life says when KIS issued it (expiry − 86400), which the reuse window counts from: a refresh 6 h after that
    /// issuance (4 h after connecting) asks KIS, which issues a new token.
    @Test("a token KIS hands back with expires_in the full life (--reused-expires-in full): KIS's expiry, and the reuse window counted from its first issuance")
    func reusedTokenFullExpiresIn() async throws {
        let sim = SimulatorConfiguration(port: 0, environment: .sandbox, reuseReportsRemaining: false)
        try await withBroker(sim: sim, config: quietSchedulerConfig) { b in
            let key = appKey("full")
            // Both clocks an hour ahead of the real one from the start: an expiry taken as the time of the answer
            // (KISClient reads the real clock) plus expires_in would then be an hour off KIS's, not a few milliseconds.
            try await b.advanceClocks(3600)
            // The user's own tokenP call, two hours before connecting.
            let own = try await b.sim(.POST, KISPath.tokenP,
                                      #"{"grant_type":"client_credentials","appkey":"\#(key)","appsecret":"secret-\#(key)"}"#)
            let first = try own.decode(KISTokenResponse.self)
            let kisExpiry = try #require(KST.parse(first.access_token_token_expired))
            let issued = kisExpiry.addingTimeInterval(-86400)
            try await b.advanceClocks(7200)

            let jwt = try await b.jwt("u1")
            let connected = try await b.post("/api/kis/token", accountBody(key), jwt: jwt)
            #expect(connected.status == 200, "\(connected.text)")
            #expect(connected.json["token"] as? String == first.access_token)  // KIS's reuse window: the same token
            #expect(try await b.issuances() == 1)
            let expiresAt = try #require((connected.json["expiresAt"] as? String).flatMap { try? Date($0, strategy: .iso8601) })
            #expect(expiresAt == kisExpiry, "KIS said \(first.access_token_token_expired) KST; the broker \(expiresAt)")
            let published = try #require(try await b.published(first.access_token))
            #expect(published.expiresAt == kisExpiry)
            #expect(published.issuedAt == issued, "issued \(published.issuedAt), KIS issued it at \(issued)")
            let account = try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt)
            #expect(account.json["tokenExpiresAt"] as? String == connected.json["expiresAt"] as? String)

            // Inside KIS's reuse window the stored token serves a refresh, without KIS.
            let tokenCalls = try await b.simCalls("tokenP")
            let inside = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: jwt)
            #expect(inside.json["token"] as? String == first.access_token, "\(inside.text)")
            #expect(try await b.simCalls("tokenP") == tokenCalls)

            // Six hours after KIS issued it (four after connecting): past the reuse window, a new token.
            try await b.advanceClocks(21600 - 7200 + 60)
            let refreshed = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: try await b.jwt("u1"))
            #expect(refreshed.status == 200, "\(refreshed.text)")
            #expect(refreshed.json["token"] as? String != first.access_token,
                    "the reuse window was counted from the connection, not from KIS's issuance")
            #expect(try await b.issuances() == 2)
        }
    }

    @Test("refresh: 404 without an account, the same token inside the reuse window, a new one past it")
    func refresh() async throws {
        try await withBroker(config: { testConfig(simURL: $0, database: $1, reconcileIntervalS: 3600) }) { b in
            let key = appKey("rf")
            var jwt = try await b.jwt("u1")
            let missing = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: jwt)
            #expect(missing.status == 404)
            #expect(missing.code == "account_not_found")
            let bad = try await b.post("/api/kis/token/refresh", ["environment": "x"], jwt: jwt)
            #expect(bad.code == "invalid_parameter")

            let first = try #require(try await b.post("/api/kis/token", accountBody(key), jwt: jwt).json["token"] as? String)
            let same = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: jwt)
            #expect(same.status == 200)
            #expect(same.json["token"] as? String == first)
            #expect(try await b.issuances() == 1)

            try await b.advanceClocks(21600 + 60)
            jwt = try await b.jwt("u1")
            let fresh = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: jwt)
            #expect(fresh.status == 200, "\(fresh.text)")
            let second = try #require(fresh.json["token"] as? String)
            #expect(second != first)
            #expect(try await b.issuances() == 2)
            // Both stay published: a refresh never breaks requests in flight with the old token.
            #expect(try await b.published(first) != nil)
            #expect(try await b.published(second) != nil)
            let account = try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt)
            #expect(account.json["tokenExpiresAt"] as? String == fresh.json["expiresAt"] as? String)
        }
    }

    @Test("a token a gateway saw KIS refuse (dead) is not handed back: token and refresh obtain a new one")
    func deadToken() async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u1")
            let key = appKey("dead")
            let first = try #require(try await b.post("/api/kis/token", accountBody(key), jwt: jwt).json["token"] as? String)
            // KIS ended the token early (as after maintenance) and a gateway saw it refused.
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).json["connected"] as? Bool == true)
            try await b.kisRefused(first)
            // The account shows it: not connected, no expiry, until a new token is obtained.
            let shown = try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt)
            #expect(shown.json["connected"] as? Bool == false)
            #expect(shown.json["tokenExpiresAt"] is NSNull)
            try await b.advanceClocks(61)  // KIS's minute between issuances
            let second = try #require(try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1")).json["token"] as? String)
            #expect(second != first)
            try await b.kisRefused(second)
            try await b.advanceClocks(61)
            let third = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: try await b.jwt("u1"))
            #expect(third.status == 200)
            #expect(third.json["token"] as? String != second)
            #expect(try await b.issuances() == 3)
            // The refused tokens are out of the user's set at once (store.md: the user's live tokens only).
            let latest = try #require(third.json["token"] as? String)
            #expect(try await b.store.setMembers(TokenDirectory.userKey("u1", .sandbox)) == [TokenDirectory.sha256(of: latest)])
        }
    }

    /// Before, every refresh of a token KIS would not replace yet (EGW00133: one issuance a minute per app key) asked
    /// KIS again: a client refreshing in a loop made the broker call tokenP from its address as fast as it asked.
    @Test("refresh: a user's refreshes that reach KIS are limited (10 in a row, then one every 6 s): 429 rate_limited, KIS not asked")
    func refreshesToKISLimited() async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u1")
            let first = try #require(try await b.post("/api/kis/token", accountBody(appKey("loop")), jwt: jwt).json["token"] as? String)
            try await b.kisRefused(first)  // each refresh now asks KIS, which refuses a second issuance within the minute
            func tokenPCalls() async throws -> Int {
                (try await b.sim(.GET, "/__sim/stats").json["calls"] as? [String: Int])?["tokenP"] ?? -1
            }
            let before = try await tokenPCalls()
            var answers: [HTTPResult] = []
            for _ in 0..<14 { answers.append(try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: jwt)) }
            // Ten of them asked KIS (the broker's own scheduler, running beside them, may have asked once as well:
            // the token is refused, and it refreshes accounts without a live token).
            let asked = try await tokenPCalls() - before
            #expect(asked == 10 || asked == 11, "tokenP calls: \(asked)")
            #expect(answers.prefix(10).allSatisfy { $0.code == "kis_rate_limited" }, "\(answers.map(\.status))")
            for r in answers.suffix(4) {
                #expect(r.status == 429 && r.code == "rate_limited", "\(r.status) \(r.text)")
                #expect(r.header("Retry-After").flatMap(Int.init).map { $0 >= 1 } == true)
            }
            // Another user's refreshes are theirs to spend.
            let other = try await b.jwt("u2")
            _ = try await b.post("/api/kis/token", accountBody(appKey("loop2")), jwt: other)
            #expect(try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: other).status == 200)
        }
    }

    @Test("account: masked, connected, with the token's expiry; 404 for the other environment")
    func account() async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u1")
            let key = appKey("ac")
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).code == "account_not_found")
            #expect(try await b.get("/api/kis/account", jwt: jwt).code == "invalid_parameter")
            let t = try await b.post("/api/kis/token", accountBody(key, number: "1234567801"), jwt: jwt)
            let r = try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt)
            #expect(r.status == 200)
            #expect(r.json["environment"] as? String == "SANDBOX")
            #expect(r.json["accountNumber"] as? String == "1234****-01")
            #expect(r.json["appKey"] as? String == String(key.prefix(4)) + "…" + String(key.suffix(4)))
            #expect(r.json["connected"] as? Bool == true)
            #expect(r.json["tokenExpiresAt"] as? String == t.json["expiresAt"] as? String)
            #expect(!r.text.contains("secret-"))
            #expect(r.header("cache-control") == "no-store")
            #expect(try await b.get("/api/kis/account?environment=LIVE", jwt: jwt).status == 404)
            // Another user sees nothing of it.
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: try await b.jwt("u2")).status == 404)
        }
    }

    /// After a refresh past the reuse window an account has two live tokens (a refresh never breaks requests in
    /// flight with the old one): a disconnect revokes and unpublishes both.
    @Test("disconnect with two live tokens revokes both at KIS and unpublishes both, with a revoked event each")
    func disconnectTwoTokens() async throws {
        try await withBroker(config: quietSchedulerConfig) { b in
            let key = appKey("dc2")
            let first = try #require(try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1"))
                .json["token"] as? String)
            try await b.advanceClocks(21600 + 60)
            let second = try #require(try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"],
                                                       jwt: try await b.jwt("u1")).json["token"] as? String)
            #expect(second != first)
            #expect(try await b.published(first) != nil)
            #expect(try await b.published(second) != nil)
            let subscription = try await b.store.subscribe(to: TokenDirectory.eventsChannel)
            #expect(try await b.delete("/api/kis/account?environment=SANDBOX", jwt: try await b.jwt("u1")).status == 204)
            #expect(try await b.simCalls("revokeP") == 2)
            #expect(try await b.published(first) == nil)
            #expect(try await b.published(second) == nil)
            var events = subscription.makeAsyncIterator()
            var revoked: Set<String> = []
            for _ in 0..<2 {
                let event = try #require(await events.next())
                let e = try JSONDecoder().decode(TokenEvent.self, from: Data(event.readableBytesView))
                if e.type == "revoked" { revoked.insert(e.sha256) }
            }
            #expect(revoked == [TokenDirectory.sha256(of: first), TokenDirectory.sha256(of: second)])
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: try await b.jwt("u1")).status == 404)
        }
    }

    @Test("disconnect revokes at KIS, unpublishes with a revoked event, and a gateway refuses the token at once",
          arguments: StoreKind.allCases)
    func disconnect(store: StoreKind) async throws {
        try await withBroker(store: store, sim: SimulatorConfiguration(port: 0, environment: .sandbox, ratePerSecond: 1000)) { b in
            let jwt = try await b.jwt("u1")
            let key = appKey("dc")
            let token = try #require(try await b.post("/api/kis/token", accountBody(key), jwt: jwt).json["token"] as? String)

            // A gateway on the same store serves the user, and keeps its decision in memory…
            let gatewayConfig = KisgwConfig(
                server: .init(host: "127.0.0.1", port: 0),
                auth: .init(jwt: .init(algorithms: [.hs256], hs256Secret: Secret(testSecret))),
                kis: .init(liveURL: b.simURL, sandboxURL: b.simURL, liveRatePerS: 1000, sandboxRatePerS: 1000))
            let (ports, cont) = AsyncStream.makeStream(of: Int.self)
            let gateway = TestServer(try await buildGateway(
                gatewayConfig, dependencies: GatewayDependencies(store: b.store, keyring: b.keyring, readiness: { nil }),
                logger: quietLogger) { cont.yield($0) })
            Task { try await gateway.run() }
            try await stopping([gateway]) {
                var it = ports.makeAsyncIterator()
                let gatewayURL = "http://127.0.0.1:\(await it.next()!)"
                let path = "/domestic/chart/daily/005930?start=2025-01-06&end=2025-01-10"
                let headers = [("Authorization", "Bearer " + jwt), ("X-KIS-Token", token)]
                #expect(try await http(.GET, gatewayURL + path, headers: headers).status == 200)

                let subscription = try await b.store.subscribe(to: TokenDirectory.eventsChannel)
                let d = try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt)
                #expect(d.status == 204)
                #expect(try await b.simCalls("revokeP") == 1)
                #expect(try await b.published(token) == nil)
                #expect(try await b.store.setMembers(TokenDirectory.userKey("u1", .sandbox)).isEmpty)
                // The revoked event (a reconciliation at the broker's start may announce the token `issued` first).
                var events = subscription.makeAsyncIterator()
                var types: [String] = []
                while types.last != "revoked", types.count < 3, let event = await events.next() {
                    let e = try JSONDecoder().decode(TokenEvent.self, from: Data(event.readableBytesView))
                    #expect(e.sha256 == TokenDirectory.sha256(of: token))
                    types.append(e.type)
                }
                #expect(types.last == "revoked", "\(types)")

                // …which the revoked event drops: the gateway refuses the token straight away.
                let refused = try await eventually(timeout: .seconds(2)) {
                    try await http(.GET, gatewayURL + path, headers: headers).code == "kis_token_invalid"
                }
                #expect(refused)
                #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 404)
                // Disconnecting again is harmless.
                #expect(try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 204)
            }
        }
    }

    @Test("KIS failing is upstream_error (502), KIS silent is upstream_timeout (504), KIS gone is upstream_error")
    func upstreamErrors() async throws {
        // A stand-in for KIS that fails its token endpoint: /broken answers HTML with 500, /slow never in time.
        let router = Router()
        router.post("/broken/oauth2/tokenP") { _, _ in
            Response(status: .internalServerError, body: .init(byteBuffer: ByteBuffer(string: "<html>oops</html>")))
        }
        router.post("/slow/oauth2/tokenP") { _, _ -> Response in
            try await Task.sleep(for: .seconds(15))
            return Response(status: .ok)
        }
        let faulty = await startStandInKIS(router)
        try await stopping([faulty.server]) {
            let base = faulty.url
            try await withBroker(config: { _, db in
                // A timeout long enough that the broken answer never runs into it on a loaded machine.
                var c = testConfig(simURL: base + "/broken", database: db, upstreamTimeoutMs: 2500)
                c = KisgwConfig(auth: c.auth, kis: .init(liveURL: base + "/broken", sandboxURL: base + "/slow"),
                                upstream: c.upstream, broker: c.broker)
                return c
            }) { b in
                let jwt = try await b.jwt("u1")
                let e = try await b.post("/api/kis/token", accountBody(appKey("up"), env: "LIVE"), jwt: jwt)
                #expect(e.status == 502)
                #expect(e.code == "upstream_error")
                let t = try await b.post("/api/kis/token", accountBody(appKey("up"), env: "SANDBOX"), jwt: jwt)
                #expect(t.status == 504)
                #expect(t.code == "upstream_timeout")
                #expect(try await b.get("/api/kis/account?environment=LIVE", jwt: jwt).status == 404)
            }
            try await withBroker(config: { testConfig(simURL: "http://127.0.0.1:1", database: $1) }) { b in
                let r = try await b.post("/api/kis/token", accountBody(appKey("gone")), jwt: try await b.jwt("u1"))
                #expect(r.status == 502)
                #expect(r.code == "upstream_error")
            }
        }
    }

    /// broker-api.md: "Expiry is what KIS says (`access_token_token_expired` … or `expires_in`)". An answer with
    /// `expires_in` only used to be unreadable: 502.
    @Test("a tokenP answer with expires_in only, or an unreadable expiry string, gets its expiry from expires_in")
    func expiresInOnly() async throws {
        let router = Router()
        router.post("/only-seconds/oauth2/tokenP") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(
                string: #"{"access_token":"tok-seconds-only","token_type":"Bearer","expires_in":7200}"#)))
        }
        router.post("/bad-string/oauth2/tokenP") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(
                string: #"{"access_token":"tok-bad-string","access_token_token_expired":"soon","token_type":"Bearer","expires_in":3600}"#)))
        }
        let standIn = await startStandInKIS(router)
        try await stopping([standIn.server]) {
            try await withBroker(config: { _, db in
                let c = testConfig(simURL: standIn.url + "/only-seconds", database: db)
                return KisgwConfig(auth: c.auth, kis: .init(liveURL: standIn.url + "/only-seconds",
                                                            sandboxURL: standIn.url + "/bad-string"),
                                   upstream: c.upstream, broker: c.broker)
            }) { b in
                let jwt = try await b.jwt("u1")
                for (env, seconds) in [("LIVE", 7200.0), ("SANDBOX", 3600.0)] {
                    let before = Date()
                    let r = try await b.post("/api/kis/token", accountBody(appKey("ei" + env), env: env), jwt: jwt)
                    #expect(r.status == 200, "\(env): \(r.text)")
                    let expiresAt = try #require((r.json["expiresAt"] as? String).flatMap {
                        try? Date($0, strategy: .iso8601)
                    }, "\(env): \(r.text)")
                    #expect(abs(expiresAt.timeIntervalSince(before) - seconds) < 5, "\(env): \(expiresAt) from \(before)")
                }
            }
        }
    }

    /// kis-api.md §6: EGW00201 is KIS's per-second limit, also at tokenP (1/s); EGW02004 a paper-trading app key on
    /// the live domain. Before, both were 502 upstream_error.
    @Test("tokenP refused with EGW00201: 429 kis_rate_limited, Retry-After 1; with EGW02004: 400 kis_credentials_rejected",
          arguments: [("EGW00201", 429, "kis_rate_limited"), ("EGW02004", 400, "kis_credentials_rejected")])
    func tokenRefusals(code: String, status: Int, problem: String) async throws {
        let router = Router()
        router.post("/oauth2/tokenP") { _, _ in
            Response(status: .internalServerError, headers: [.contentType: "application/json"], body: .init(
                byteBuffer: ByteBuffer(string: #"{"rt_cd":"1","msg_cd":"\#(code)","msg1":"refused"}"#)))
        }
        let standIn = await startStandInKIS(router)
        try await stopping([standIn.server]) {
            try await withBroker(config: { testConfig(simURL: standIn.url, database: $1) }) { b in
                let r = try await b.post("/api/kis/token", accountBody(appKey("tr" + code)), jwt: try await b.jwt("u-tr"))
                #expect(r.status == status, "\(r.text)")
                #expect(r.code == problem)
                #expect(r.json["kis_msg_cd"] as? String == code)
                #expect(r.header("Retry-After") == (status == 429 ? "1" : nil))
                #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: try await b.jwt("u-tr")).status == 404)
            }
        }
    }

    /// A body the HTTP decoder refuses mid-way is the client's framing, not its size: before, every error reading the
    /// body was answered `413 payload_too_large`.
    @Test("over a raw socket: a chunked body with a bad chunk size is 400 invalid_parameter, a body over 16 KiB is 413")
    func bodyFraming() async throws {
        try await withBroker { b in
            let port = try #require(URL(string: b.url)?.port)
            let jwt = try await b.jwt("u-framing")
            let head = "POST /api/kis/token HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \(jwt)\r\n"
                + "Content-Type: application/json\r\n"
            // `ZZ` is no chunk size: the decoder fails while the route reads the body. The connection closes after
            // the answer (nothing after the bad bytes can be read).
            let badChunk = try await exchangeRawBytes(
                port: port, head + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\nZZ\r\n")
            #expect(badChunk.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(badChunk)")
            #expect(badChunk.components(separatedBy: "HTTP/1.1 400 Bad Request\r\n").count == 2, "one answer: \(badChunk)")
            let problem = RawAnswer(badChunk)
            #expect(problem.header("content-type") == "application/problem+json", "\(badChunk)")
            #expect(problem.json["code"] as? String == "invalid_parameter", "\(badChunk)")
            #expect((problem.json["detail"] as? String)?.contains("cannot be read") == true, "\(badChunk)")
            // Over 16 KiB, as a length and in chunks: 413.
            let big = String(repeating: "x", count: 17 * 1024)
            let sized = try await exchangeRawBytes(
                port: port, head + "Connection: close\r\nContent-Length: \(big.utf8.count)\r\n\r\n" + big)
            #expect(sized.hasPrefix("HTTP/1.1 413 Content Too Large\r\n") || sized.hasPrefix("HTTP/1.1 413 Payload Too Large\r\n"),
                    "\(sized.prefix(200))")
            #expect(RawAnswer(sized).json["code"] as? String == "payload_too_large", "\(sized.prefix(400))")
            let chunks = String(format: "%x", big.utf8.count) + "\r\n" + big + "\r\n0\r\n\r\n"
            let chunked = try await exchangeRawBytes(
                port: port, head + "Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
            #expect(RawAnswer(chunked).json["code"] as? String == "payload_too_large", "\(chunked.prefix(400))")
            // validate answers a body it cannot read as it answers a bad form: valid:false with the code.
            let validate = try await exchangeRawBytes(port: port, head.replacingOccurrences(of: "/api/kis/token", with: "/api/kis/account/validate")
                + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\nZZ\r\n")
            #expect(validate.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(validate)")
            #expect(RawAnswer(validate).json["code"] as? String == "invalid_parameter", "\(validate)")
            #expect(RawAnswer(validate).json["valid"] as? Bool == false, "\(validate)")
            #expect(try await b.issuances() == 0)
        }
    }

    /// Before, Hummingbird answered these before the router with a bare 400 (no body, no code); `ConnectionCloseHandler`
    /// answers them as problems.
    @Test("a head over 80 KiB, bytes that are not HTTP or HTTP/1.1 without one Host get a problem 400 that says what was wrong, and a closed connection")
    func decoderRefusals() async throws {
        try await withBroker { b in
            let port = try #require(URL(string: b.url)?.port)
            let long = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + String(repeating: "a", count: 90 * 1024) + "\r\n\r\n"
            for (request, says) in [(long, "too large"), ("NOT HTTP AT ALL\r\n\r\n", "not valid HTTP/1.1"),
                                    ("GET /healthz HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "not valid HTTP/1.1"),
                                    ("GET /healthz HTTP/1.1\r\n\r\n", "exactly one Host"),
                                    // Hummingbird's limit of 1000 fields, kept (NIO's own default is 65534).
                                    ("GET /healthz HTTP/1.1\r\nHost: a\r\n" + (0..<1001).map { "x-\($0): 1\r\n" }.joined() + "\r\n",
                                     "more than 1000 header fields"),
                                    ("GET /healthz HTTP/1.1\r\nHost: a\r\nHOST: b\r\n\r\n", "exactly one Host")] {
                let answer = try await exchangeRawBytes(port: port, request)
                #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(answer)")
                #expect(answer.components(separatedBy: "HTTP/1.1 ").count == 2, "one answer: \(answer)")
                let problem = RawAnswer(answer)
                #expect(problem.header("connection") == "close", "\(answer)")
                #expect(problem.header("content-type") == "application/problem+json", "\(answer)")
                #expect(problem.json["code"] as? String == "invalid_parameter", "\(answer)")
                #expect((problem.json["detail"] as? String)?.contains(says) == true, "\(answer)")
            }
            // After the answers to the requests before it, in order.
            let pipelined = try await exchangeRawBytes(port: port, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nNOT HTTP\r\n\r\n")
            let answers = pipelined.components(separatedBy: "HTTP/1.1 ")
            #expect(answers.count == 3 && answers[1].hasPrefix("200 OK") && answers[2].hasPrefix("400 Bad Request"), "\(pipelined)")
            // Not a route's answer: not counted.
            let m = Exposition(try await b.get("/metrics", jwt: nil).text)
            #expect(m.samples("kisgw_http_requests_total").allSatisfy { $0.labels["status"] != "400" })
            #expect(try await b.get("/healthz", jwt: nil).status == 200)
        }
    }

    @Test("a request that does not keep the connection (HTTP/1.0, `close` in any case or in a list) is answered with Connection: close, and the connection closes; a bad body after an answered request closes it without a second answer")
    func connectionClose() async throws {
        try await withBroker { b in
            let port = try #require(URL(string: b.url)?.port)
            for request in ["GET /healthz HTTP/1.0\r\n\r\n", "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n",
                            "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
                            "GET /nowhere HTTP/1.0\r\n\r\n"] {
                let raw = try await exchangeRawBytes(port: port, request, timeout: 3)
                #expect(raw.components(separatedBy: "HTTP/1.1 ").count == 2, "one answer: \(raw)")
                #expect(RawAnswer(raw).header("connection") == "close", "\(raw)")
            }
            // RFC 9112 §9.6: nothing after a request that closes the connection is answered (NIO's parser refuses
            // the bytes after it; that was answered with a second, misleading 400).
            for first in ["GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "GET /healthz HTTP/1.0\r\n\r\n"] {
                for next in ["GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", "GET /healthz HTTP/1.1\r\n\r\n", "NOT HTTP\r\n\r\n"] {
                    let both = try await exchangeRawBytes(port: port, first + next, timeout: 3)
                    #expect(both.components(separatedBy: "HTTP/1.1 ").count == 2 && both.hasPrefix("HTTP/1.1 200 OK"), "\(both)")
                }
            }
            // A refusal has a Date, like every answer.
            let refused = try await exchangeRawBytes(port: port, "GET /healthz HTTP/1.1\r\n\r\n", timeout: 3)
            #expect(RawAnswer(refused).header("date")?.hasSuffix(" GMT") == true, "\(refused)")
            let raw = try await exchangeRawBytes(port: port, "GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "zz\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", timeout: 3)
            #expect(raw.hasPrefix("HTTP/1.1 200 OK\r\n") && raw.components(separatedBy: "HTTP/1.1 ").count == 2, "\(raw)")
        }
    }

    @Test("a store that does not answer is store_unavailable (503)")
    func storeUnavailable() async throws {
        try await withBroker(store: .memory) { b in
            // The same broker code over a Redis store whose redis-server was there and is gone.
            let redis = try RedisServerProcess()
            defer { redis.stop() }
            let (store, client) = try makeStore(.redis, url: redis.url)
            #expect(try await store.setIfAbsent("probe", to: ByteBuffer(string: "1"), ttl: .seconds(30)))
            redis.stop()
            try await b.withBroker(dependencies: BrokerDependencies(store: store, keyring: b.keyring, repository: try b.database.repository())) { url in
                let r = try await b.post("/api/kis/token", accountBody(appKey("st")), jwt: try await b.jwt("u1"), base: url)
                #expect(r.status == 503)
                #expect(r.code == "store_unavailable")
                let ready = try await b.get("/readyz", jwt: nil, base: url)
                #expect(ready.status == 503)
            }
            await client?.shutdown()
        }
    }

    /// broker-api.md: `/readyz` as in the gateway — 503 while what the broker needs does not answer; here its
    /// PostgreSQL database, which refuses connections (the broker's are cut), then takes them again.
    @Test("a PostgreSQL database that refuses connections: /readyz 503 naming it, routes store_unavailable; ready again after")
    func databaseUnavailable() async throws {
        try await withBroker(database: .postgres) { b in
            let jwt = try await b.jwt("u-db")
            #expect(try await b.get("/readyz", jwt: nil).status == 200)
            let name = String(try #require(URLComponents(string: b.database.location)).path.dropFirst())
            try await TestDatabase.withAdmin { admin in
                try await admin.query("ALTER DATABASE \(unescaped: name) ALLOW_CONNECTIONS false")
                try await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = \(name)")
            }
            let down = try await b.get("/readyz", jwt: nil)
            #expect(down.status == 503, "\(down.text)")
            #expect(down.json["detail"] as? String == "the broker database does not answer")
            let refused = try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt)
            #expect(refused.status == 503 && refused.code == "store_unavailable", "\(refused.text)")
            #expect(refused.header("Retry-After") != nil)
            try await TestDatabase.withAdmin { admin in
                try await admin.query("ALTER DATABASE \(unescaped: name) ALLOW_CONNECTIONS true")
            }
            #expect(try await eventually(timeout: .seconds(30)) { try await b.get("/readyz", jwt: nil).status == 200 })
            #expect(try await b.post("/api/kis/token", accountBody(appKey("db")), jwt: jwt).status == 200)
        }
    }

    @Test("health, readiness, metrics, 404, 405 and CORS")
    func operations() async throws {
        try await withBroker { b in
            #expect(try await b.get("/healthz", jwt: nil).json["status"] as? String == "ok")
            #expect(try await b.get("/readyz", jwt: nil).json["status"] as? String == "ready")
            let metrics = try await b.get("/metrics", jwt: nil)
            #expect(metrics.status == 200)
            #expect(metrics.header("content-type")?.hasPrefix("text/plain") == true)
            let unknown = try await b.get("/nope", jwt: nil)
            #expect(unknown.status == 404)
            #expect(unknown.code == "not_found")
            let wrong = try await http(.PUT, b.url + "/api/kis/token")
            #expect(wrong.status == 405)
            #expect(wrong.header("allow") == "POST, OPTIONS")
            // HEAD wherever GET is: the GET answer's status and headers, no body.
            let health = try await b.get("/healthz", jwt: nil)
            let head = try await http(.HEAD, b.url + "/healthz")
            #expect(head.status == 200 && head.body.isEmpty && head.header("content-length") == String(health.body.count))
            let headAccount = try await http(.HEAD, b.url + "/api/kis/account?environment=LIVE",
                                             headers: [("Authorization", "Bearer " + (try await b.jwt("u1")))])
            #expect(headAccount.status == 404 && headAccount.body.isEmpty)
            #expect(try await http(.DELETE, b.url + "/healthz").header("allow") == "GET, HEAD")
            let preflight = try await http(.OPTIONS, b.url + "/api/kis/token", headers: [
                ("Origin", "http://localhost:3000"), ("Access-Control-Request-Method", "POST"),
            ])
            #expect(preflight.status == 204)
            #expect(preflight.header("access-control-allow-origin") == "http://localhost:3000")
            // The broker's API deletes too (`DELETE /api/kis/account`), so its preflights allow it; the gateway's do not.
            #expect(preflight.header("access-control-allow-methods") == "GET, POST, DELETE, OPTIONS")
            let denied = try await http(.OPTIONS, b.url + "/api/kis/token", headers: [
                ("Origin", "http://evil.example"), ("Access-Control-Request-Method", "POST"),
            ])
            #expect(denied.status == 403)
            let cross = try await http(.GET, b.url + "/api/kis/account?environment=LIVE", headers: [
                ("Origin", "http://localhost:3000"), ("Authorization", "Bearer " + (try await b.jwt("u1"))),
            ])
            #expect(cross.status == 404)
            #expect(cross.header("access-control-allow-origin") == "http://localhost:3000")
            // The demo sign-in exists only in demo mode; `/` and `/ui` are left to the web UI.
            #expect(try await b.post("/api/dev/signin", ["userId": "alice"], jwt: nil).status == 404)
            #expect(try await b.get("/", jwt: nil).status == 404)
        }
    }

    /// `/metrics` counts and times the broker's requests by route pattern and status: never by the path sent (which
    /// may hold anything a caller types) nor its query.
    @Test("/metrics: kisgw_http_requests_total by route pattern and status, the duration histogram per route")
    func metricsByRoute() async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u-metrics")
            #expect(try await b.post("/api/kis/token", accountBody(appKey("metrics")), jwt: jwt).status == 200)
            #expect(try await b.post("/api/kis/token", accountBody("bad key"), jwt: jwt).status == 400)
            #expect(try await b.post("/api/kis/token", accountBody(appKey("metrics")), jwt: nil).status == 401)
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 200)
            #expect(try await b.get("/api/kis/account?environment=LIVE&u=secret-in-query", jwt: jwt).status == 404)
            #expect(try await b.get("/nope/secret-in-path-u-metrics", jwt: nil).status == 404)
            #expect(try await http(.PUT, b.url + "/api/kis/token").status == 405)
            #expect(try await b.get("/healthz", jwt: nil).status == 200)
            let preflight = try await http(.OPTIONS, b.url + "/api/kis/token", headers: [
                ("Origin", "http://localhost:3000"), ("Access-Control-Request-Method", "POST"),
            ])
            #expect(preflight.status == 204)

            let r = try await b.get("/metrics", jwt: nil)
            let m = Exposition(r.text)
            #expect(m.types["kisgw_http_requests_total"] == "counter")
            let requests = m.samples("kisgw_http_requests_total")
            func count(_ route: String, _ status: Int) -> Double? {
                m.value("kisgw_http_requests_total", ["route": route, "status": String(status)])
            }
            #expect(count("/api/kis/token", 200) == 1, "\(requests.map { ($0.labels, $0.value) })")
            #expect(count("/api/kis/token", 400) == 1)
            #expect(count("/api/kis/token", 401) == 1)
            #expect(count("/api/kis/account", 200) == 1)
            #expect(count("/api/kis/account", 404) == 1)
            #expect(count("/healthz", 200) == 1)
            // A method the route does not take, and a preflight (CORS answers it before routing): on that route.
            #expect(count("/api/kis/token", 405) == 1)
            #expect(count("/api/kis/token", 204) == 1)
            #expect(count("unmatched", 404) == 1)
            #expect(requests.filter { $0.labels["route"] == "unmatched" }.count == 1, "\(requests.map(\.labels))")
            // Every label is a route pattern of the broker's (or `unmatched`): no query, no path a caller made up.
            let patterns: Set<String> = ["/api/kis/account/validate", "/api/kis/token", "/api/kis/token/refresh",
                                         "/api/kis/account", "/healthz", "/readyz", "/metrics", "unmatched"]
            let routes = Set(requests.compactMap { $0.labels["route"] })
            #expect(routes.isSubset(of: patterns), "\(routes)")
            #expect(!r.text.contains("secret-in"), "\(r.text)")
            // One histogram series per route, its count the route's requests.
            #expect(m.types["kisgw_http_request_duration_seconds"] == "histogram")
            for (route, n) in [("/api/kis/token", 5.0), ("/api/kis/account", 2.0)] {
                #expect(m.value("kisgw_http_request_duration_seconds_count", ["route": route]) == n, "\(route)")
                #expect(m.value("kisgw_http_request_duration_seconds_sum", ["route": route]).map { $0 > 0 } == true)
                let inf = m.samples("kisgw_http_request_duration_seconds_bucket")
                    .first { $0.labels == ["route": route, "le": "+Inf"] }?.value
                #expect(inf == n, "\(route)")
                let buckets = m.samples("kisgw_http_request_duration_seconds_bucket").filter { $0.labels["route"] == route }
                #expect(buckets.count >= 2)
            }
        }
    }

    @Test("demo mode: sign-in mints a 12-hour JWT for a valid user id; extra routes mount beside the API")
    func demoSignIn() async throws {
        try await withBroker(demoMode: true) { b in
            let r = try await b.post("/api/dev/signin", ["userId": "alice@example.com"], jwt: nil)
            #expect(r.status == 200)
            let token = try #require(r.json["token"] as? String)
            let verifier = try await JWTVerifier(settings: .init(config: b.config.auth.jwt))
            let session = try await verifier.verify(token, now: b.clock.now())
            #expect(session.userID == "alice@example.com")
            let life = session.validUntil.timeIntervalSince(b.clock.now())
            #expect(life > 12 * 3600 - 60 && life <= 12 * 3600 + TimeInterval(b.config.auth.jwt.leewayS) + 1)
            #expect(try await b.get("/api/kis/account?environment=LIVE", jwt: token).code == "account_not_found")
            for bad in ["", "a b", String(repeating: "x", count: 65), "semi;colon"] {
                #expect(try await b.post("/api/dev/signin", ["userId": bad], jwt: nil).code == "invalid_parameter")
            }
            #expect(try await b.post("/api/dev/signin", ["user": "x"], jwt: nil).status == 400)
        }
    }

    /// DNS rebinding: a page of `http://evil.example:PORT` whose name resolves to 127.0.0.1 is same-origin with the
    /// demo to its browser; only `Host` still names it.
    @Test("demo mode answers only requests whose Host is a loopback name; a broker not in demo mode does not check")
    func demoLoopbackHost() async throws {
        try await withBroker(demoMode: true) { b in
            let port = try #require(URL(string: b.url)?.port)
            let signIn = String(decoding: try JSONSerialization.data(withJSONObject: ["userId": "alice"]), as: UTF8.self)
            func post(host: String) async throws -> HTTPResult {
                try await http(.POST, b.url + "/api/dev/signin",
                               headers: [("Host", host), ("content-type", "application/json")], body: signIn)
            }
            for host in ["evil.example:\(port)", "evil.example", "127.0.0.1.evil.example:\(port)",
                         "localhost.evil.example", "127.0.0.2:\(port)", "[::2]:\(port)"] {
                let r = try await post(host: host)
                #expect(r.status == 400, "Host: \(host)")
                #expect(r.code == "invalid_parameter")
                #expect((r.json["detail"] as? String)?.hasPrefix("Host: ") == true)
                #expect(r.json["token"] == nil)
            }
            for host in ["127.0.0.1:\(port)", "localhost:\(port)", "LocalHost:\(port)", "localhost"] {
                #expect(try await post(host: host).status == 200, "Host: \(host)")
            }
            // The UI's routes and the API alike.
            #expect(try await http(.GET, b.url + "/healthz", headers: [("Host", "evil.example")]).status == 400)
        }
        try await withBroker { b in
            let r = try await http(.GET, b.url + "/healthz", headers: [("Host", "evil.example")])
            #expect(r.status == 200)
        }
    }

    @Test("loopback names: 127.0.0.1, localhost in any case, [::1], each with or without a port; nothing else")
    func loopbackNames() {
        for good in ["127.0.0.1", "127.0.0.1:8080", "localhost", "LOCALHOST:1", "[::1]", "[::1]:65535"] {
            #expect(LoopbackHostMiddleware<BasicRequestContext>.isLoopback(good), "\(good)")
        }
        for bad in ["", ":80", "127.0.0.1:", "127.0.0.1:80x", "127.0.0.1:123456", "127.0.0.1.nip.io", "localhost.",
                    "localhos", "localhostt", "[::1", "[::1]x", "[::1]:", "[0:0:0:0:0:0:0:1]:80", "evil.example",
                    "ｌocalhost", "127.0.0.1 ", "user@localhost"] {
            #expect(!LoopbackHostMiddleware<BasicRequestContext>.isLoopback(bad), "\(bad)")
        }
    }

    @Test("extra routes from the caller share the router")
    func extraRoutes() async throws {
        try await withBroker { b in
            try await b.withBroker(extraRoutes: { router in router.get("/ui/hello") { _, _ in "hi" } }) { url in
                let r = try await http(.GET, url + "/ui/hello")
                #expect(r.status == 200)
                #expect(r.text == "hi")
            }
        }
    }
}


/// The first answer in bytes read off a raw socket: its head fields and its JSON body.
struct RawAnswer {
    let fields: [(String, String)]
    let json: [String: Any]

    init(_ raw: String) {
        let bytes = Array(raw.utf8)
        let separator = Array("\r\n\r\n".utf8)
        guard let end = (0..<max(0, bytes.count - 3)).first(where: { Array(bytes[$0..<$0 + 4]) == separator }) else {
            fields = []
            json = [:]
            return
        }
        let head = String(decoding: bytes[0..<end], as: UTF8.self)
        fields = head.split(separator: "\r\n").dropFirst().compactMap { line in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]).lowercased(), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        let length = fields.first { $0.0 == "content-length" }.flatMap { Int($0.1) } ?? 0
        let body = Data(bytes[(end + 4)..<min(bytes.count, end + 4 + length)])
        json = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:]
    }

    func header(_ name: String) -> String? { fields.first { $0.0 == name.lowercased() }?.1 }
}
