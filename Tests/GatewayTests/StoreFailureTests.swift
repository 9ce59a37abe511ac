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

/// A store that answers but refuses (gateway-api.md: still `503 store_unavailable`).
@Suite("Gateway: a store that refuses commands", .serialized, .timeLimit(.minutes(3)))
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
            #expect(await eventually(.seconds(5)) { p.stderr.contains("NOPERM") }, "\(p.stderr)")
            let warnings = p.stderr.split(separator: "\n").filter { $0.contains("NOPERM") }
            #expect(warnings.count == 1, "one warning for six refusals: \(p.stderr)")
            #expect(warnings.first?.contains(" warning ") == true, "\(p.stderr)")
            for secret in [password, kis, jwt, "secret-" + appKey] {
                #expect(!p.stderr.contains(secret), "the log holds a secret: \(p.stderr)")
            }
            #expect(try await g.simStats()["domestic_daily", default: 0] == 0)
        }
    }
}
