import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Observability
import Redis
import Store
import Testing
import TestSupport
import Tokens

/// A store that answers but refuses (gateway-api.md: still `503 store_unavailable`), and what the gateway does with
/// store contents it cannot read: events on `events` and chart entries that are not what it wrote.
@Suite("Gateway: a store that refuses commands, and store contents it cannot read", .serialized, .timeLimit(.minutes(3)))
struct StoreFailureTests {
    /// An ACL user without the scripting commands (`-@scripting`: no `EVALSHA`), as an operator may hand the gateway
    /// by mistake: every miss is refused with `NOPERM`. Before, each was answered "the shared store cannot be
    /// reached" and nothing was logged, while `/readyz` (a GET) said ready.
    @Test("Redis refuses the scripts (an ACL user without +@scripting): 503 store_unavailable saying the store refused, one warning naming NOPERM, no secret")
    func refusedScripts() async throws {
        let redis = try RedisServerProcess()
        defer { redis.stop() }
        let password = "acl-pw-\(UUID().uuidString)"
        var adminConfiguration = try RedisConfiguration(url: redis.url)
        adminConfiguration.poolSize = 1
        adminConfiguration.commandTimeout = .seconds(10)
        let admin = RedisClient(configuration: adminConfiguration, logger: Logger(label: "admin"))
        let created = try await admin.send(
            ["ACL", "SETUSER", "kisgw-gateway", "on", RedisArgument(">" + password), "~*", "&*", "+@all", "-@scripting"])
        await admin.shutdown()
        #expect(created == .simpleString("OK"))
        let passwordFile = Scratch.directory("acl-password") + "/password"
        try (password + "\n").write(toFile: passwordFile, atomically: true, encoding: .utf8)

        // The test's own store (token records) is the default user's; the gateway is the ACL user, by `[redis] url`
        // naming it and `password_file` holding its password.
        try await withGatewayProcess(redis: redis.url, env: [
            "KISGW_REDIS_URL": "redis://kisgw-gateway@127.0.0.1:\(redis.port)/0", "KISGW_REDIS_PASSWORD_FILE": passwordFile,
        ]) { g, p in
            let appKey = "PSapp-acl-refused"
            let kis = try await g.connect(user: "acl1", appKey: appKey)
            let jwt = try await g.jwt("acl1")
            #expect(try await http(.GET, g.gatewayURL + "/readyz").status == 200, "\(p.stderr)")
            for symbol in ["005930", "000660", "035420", "005930", "000660", "068270"] {
                let r = try await g.get("/domestic/chart/daily/\(symbol)?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
                #expect(r.status == 503 && r.code == "store_unavailable", "\(r.status) \(r.text)")
                #expect(r.json["detail"] as? String == "the shared store refused the command", "\(r.text)")
                #expect(!r.text.contains("NOPERM"))  // what Redis said is for the operator's log, not for clients
            }
            #expect(await eventually(timeout: .seconds(5)) { p.stderr.contains("NOPERM") }, "\(p.stderr)")
            let warnings = p.stderr.split(separator: "\n").filter { $0.contains("NOPERM") }
            #expect(warnings.count == 1, "one warning for six refusals: \(p.stderr)")
            #expect(warnings.first?.contains(" warning ") == true, "\(p.stderr)")
            for secret in [password, kis, jwt, "secret-" + appKey] {
                #expect(!p.stderr.contains(secret), "the log holds a secret: \(p.stderr)")
            }
            #expect(try await g.simStats()["domestic_daily", default: 0] == 0)
        }
    }

    /// store.md's `events` carries JSON of one shape. Anything else (a publisher of another version, a hand-typed
    /// PUBLISH) is skipped — the listener goes on — and logged: once (a warning), with at most the start of the
    /// payload. Before, it was skipped without a word.
    @Test("malformed events are skipped with one capped warning; a `revoked` event after them still drops the token's decision",
          arguments: StoreKind.allCases)
    func malformedEvents(_ kind: StoreKind) async throws {
        let log = LogBuffer()
        try await withGateway(store: kind, log: log) { g, _ in
            let user = "ev-\(kind)"
            let kis = try await g.connect(user: user, appKey: "PSapp-malformed-events")
            let jwt = try await g.jwt(user)
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).status == 200)  // the decision is remembered now
            let sha = TokenDirectory.sha256(of: kis)
            // Its record goes without an event: the remembered decision still answers, until a `revoked` event.
            try await g.store.delete(TokenDirectory.recordKey(sha))
            #expect(try await g.get(path, jwt: jwt, kis: kis).status == 200)

            let tail = "tail-\(UUID().uuidString)"
            for payload in ["{nope " + String(repeating: "x", count: 300) + tail, #"{"type":"revoked","sha":"x"}"#, "[1,2,3]"] {
                try await g.store.publish(ByteBuffer(string: payload), to: TokenDirectory.eventsChannel)
            }
            let revoked = #"{"type":"revoked","sha256":"\#(sha)","user_id":"\#(user)","env":"LIVE"}"#
            try await g.store.publish(ByteBuffer(string: revoked), to: TokenDirectory.eventsChannel)
            let refused = try await eventually(timeout: .seconds(10)) {
                try await g.get(path, jwt: jwt, kis: kis).code == "kis_token_invalid"
            }
            #expect(refused, "the listener did not act on the `revoked` event after the malformed ones")

            let warnings = log.lines.filter { $0.contains("malformed") }
            #expect(warnings.count == 1, "\(log.text)")
            #expect(warnings.first?.contains(" warning ") == true, "\(log.text)")
            #expect(warnings.first?.contains("{nope") == true, "\(log.text)")
            #expect(!log.text.contains(tail), "the whole payload was logged: \(log.text)")
        }
    }

    /// README (shared-store keys): `cache:{key}` holds `kc1 <storedAt> <freshUntil> <etag>\n<body>`. A value that is
    /// not one (another version's, a hand edit) is a miss: fetched again under the fleet lock — once — and replaced.
    @Test("a chart entry in Redis that cannot be read: 200 after one KIS call, and the entry is overwritten")
    func unreadableChartEntry() async throws {
        try TestServices.requireRedisURL()
        try await withGateway(store: .redis) { g, _ in
            let redis = try #require((g.store as? RedisStore)?.client)
            let kis = try await g.connect(user: "junk1", appKey: "PSapp-junk-entry")
            let jwt = try await g.jwt("junk1")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            // Under the configured prefix, as Redis holds it.
            let key = RedisArgument(g.store.keyPrefix + "cache:" + (try chartKey(domesticChart: path)))
            let junk = "kc1 not an entry"
            #expect(try await redis.send(["SET", key, RedisArgument(junk), "EX", "600"]) == .simpleString("OK"))

            let r = try await g.get(path, jwt: jwt, kis: kis)
            #expect(r.status == 200 && r.header("X-Cache") == "MISS", "\(r.status) \(r.text)")
            #expect(!r.candles.isEmpty)
            #expect(try await g.simStats()["domestic_daily"] == 1)
            let replaced = try await eventually(timeout: .seconds(10)) {
                guard let stored = try await redis.send(["GET", key]).string else { return false }
                return stored != junk && stored.hasPrefix("kc1 ")
            }
            #expect(replaced, "the unreadable entry was not overwritten")
            #expect(try await g.get(path, jwt: jwt, kis: kis).header("X-Cache") == "HIT")
            #expect(try await g.simStats()["domestic_daily"] == 1)
        }
    }
}
