import Foundation
import KisgwConfiguration
import Observability
import Testing

@Suite("Effective TOML")
struct RenderTests {
    @Test func defaultsRoundTrip() throws {
        let text = KisgwConfig.defaults.effectiveTOML
        let reloaded = try load(text)
        #expect(reloaded == KisgwConfig.defaults)
        #expect(text.contains("# hs256_secret: not set"))
    }

    @Test func everythingButSecretsRoundTrips() throws {
        let directory = temporaryDirectory()
        let keysFile = writeFile("k1 = \"\(base64Key(32, value: 1))\"\n", name: "seal.toml", in: directory)
        let toml = """
            [server]
            host = "::1"
            port = 9001
            [cors]
            allow_origins = ["https://*.example.org", "null", "HTTP://LOCALHOST:5173"]
            allow_credentials = false
            [auth.jwt]
            algorithms = ["EdDSA", "HS256"]
            issuer = "iss \\"quoted\\" \\\\ back"
            audience = "kisgw"
            [redis]
            url = "redis://[::1]:7000/3"
            prefix = "p:"
            [seal]
            current = "k1"
            keys_file = "\(keysFile)"
            [kis]
            live_rate_per_s = 2.5
            sandbox_rate_per_s = 3
            [broker]
            database = "sqlite:///var/lib/kisgw/broker.sqlite"
            [log]
            level = "trace"
            format = "json"
            """
        let environment = ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret]
        let config = try load(toml, environment: environment)
        let text = config.effectiveTOML
        #expect(!text.contains(goodSecret))
        #expect(!text.contains(base64Key(32, value: 1)))
        #expect(text.contains("# hs256_secret: set (\(Redact.token(goodSecret)))"))
        #expect(text.contains("# keys: those in keys_file"))
        let reloaded = try load(text, environment: environment)
        #expect(reloaded == config)
    }

    @Test func passwordsBecomeComments() throws {
        let config = try load("", environment: ["KISGW_REDIS_URL": "redis://:hunter2hunter2@cache:6379/0",
                                                "KISGW_BROKER_DATABASE": "postgres://u:dbpass@db/kisgw"])
        let text = config.effectiveTOML
        #expect(!text.contains("hunter2"))
        #expect(!text.contains("dbpass"))
        #expect(text.contains("# url = \"redis://:[REDACTED]@cache:6379/0\" (has a password; set it with KISGW_REDIS_URL)"))
        #expect(text.contains("# database = \"postgres://u:[REDACTED]@db/kisgw\" (has a password; set it with KISGW_BROKER_DATABASE)"))
        // Still valid TOML that loads (without those two values).
        let reloaded = try load(text)
        #expect(reloaded.redis.url == nil)
        #expect(reloaded.store.backend == .redis)
    }
}
