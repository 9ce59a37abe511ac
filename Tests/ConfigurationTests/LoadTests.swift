import Foundation
import KisgwConfiguration
import Logging
import Observability
import Testing

@Suite("Loading")
struct LoadTests {
    @Test func defaultsMatchTheSpec() throws {
        let config = try load("")
        #expect(config == KisgwConfig.defaults)
        #expect(config.server.host == "127.0.0.1")
        #expect(config.server.port == 8000)
        #expect(config.server.requestTimeoutMs == 10_000)
        #expect(config.server.maxHeaderBytes == 16_384)
        #expect(config.server.shutdownGraceS == 10)
        #expect(config.cors.allowOrigins.map(\.description) == ["http://localhost:3000"])
        #expect(config.cors.allowCredentials)
        #expect(config.cors.maxAgeS == 600)
        #expect(config.auth.jwt.algorithms == [.hs256])
        #expect(config.auth.jwt.hs256Secret == nil)
        #expect(config.auth.jwt.publicKeysFile == nil)
        #expect(config.auth.jwt.issuer == nil)
        #expect(config.auth.jwt.audience == nil)
        #expect(config.auth.jwt.leewayS == 30)
        #expect(config.store.backend == .memory)
        #expect(config.redis.url == nil)
        #expect(config.redis.prefix == "kisgw:")
        #expect(config.redis.poolSize == 8)
        #expect(config.redis.timeoutMs == 250)
        #expect(config.seal.current == "k1")
        #expect(config.seal.keys.isEmpty)
        #expect(config.kis.liveURL == "https://openapi.koreainvestment.com:9443")
        #expect(config.kis.sandboxURL == "https://openapivts.koreainvestment.com:29443")
        #expect(config.kis.liveRatePerS == 18)
        #expect(config.kis.sandboxRatePerS == 1)
        #expect(config.upstream.timeoutMs == 5000)
        #expect(config.upstream.maxQueueMs == 2000)
        #expect(config.upstream.retries == 2)
        #expect(config.cache.l1Entries == 10_000)
        #expect(config.cache.liveTTLS == 5)
        #expect(config.cache.settledTTLS == 86_400)
        #expect(config.cache.staleWhileRevalidateS == 30)
        #expect(config.cache.staleIfErrorS == 3600)
        #expect(config.limits.maxRangeDays == 3660)
        #expect(config.broker.url == "http://127.0.0.1:8080")
        #expect(config.broker.host == "127.0.0.1")
        #expect(config.broker.port == 8080)
        #expect(config.broker.database == .sqlite(path: "data/broker.sqlite"))
        #expect(config.broker.refreshIntervalS == 60)
        #expect(config.broker.refreshAheadS == 3600)
        #expect(config.broker.reuseWindowS == 21_600)
        #expect(config.broker.reconcileIntervalS == 60)
        #expect(config.broker.databasePasswordFile == nil)
        #expect(config.broker.ui)
        #expect(config.broker.uiGatewayURL == "http://127.0.0.1:8000")
        #expect(config.log.level == .info)
        #expect(config.log.format == .text)
    }

    @Test func theRepositoryExampleLoadsAndWorksWithTheSimulator() throws {
        let root = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = root.appendingPathComponent("gateway.toml").path
        #expect(FileManager.default.fileExists(atPath: path))
        let config = try KisgwConfig.load(file: path, environment: [:])
        #expect(config.kis.sandboxURL == "http://127.0.0.1:29443")
        #expect(config.kis.liveURL == "http://127.0.0.1:29443")
        // The broker and the gateway run as two processes: they share a Redis, so the gateway sees the broker's tokens.
        #expect(config.store.backend == .redis)
        #expect(config.redis.url == RedisURL("redis://127.0.0.1:6379/0"))
        // Apart from the simulator URLs and the shared Redis, the example shows the defaults.
        let defaults = KisgwConfig.defaults
        #expect(config.server == defaults.server)
        // CORS: the defaults' origins and the broker's web UI, whose page calls the gateway from its own origin.
        let ui = ["http://127.0.0.1:8080", "http://localhost:8080"].compactMap(OriginPattern.init)
        #expect(config.cors == KisgwConfig.CORS(allowOrigins: defaults.cors.allowOrigins + ui,
                                                allowCredentials: defaults.cors.allowCredentials,
                                                maxAgeS: defaults.cors.maxAgeS))
        #expect(config.cors.allows(origin: "http://\(config.broker.host):\(config.broker.port)"))
        #expect(config.auth == defaults.auth)
        #expect(config.redis.prefix == defaults.redis.prefix && config.redis.poolSize == defaults.redis.poolSize
                    && config.redis.timeout == defaults.redis.timeout)
        #expect(config.seal == defaults.seal)
        #expect(config.upstream == defaults.upstream)
        #expect(config.cache == defaults.cache)
        #expect(config.limits == defaults.limits)
        #expect(config.broker == defaults.broker)
        #expect(config.log == defaults.log)
        #expect(config.kis.liveRatePerS == defaults.kis.liveRatePerS)
        #expect(config.kis.sandboxRatePerS == defaults.kis.sandboxRatePerS)

        // Every key of every section is written in it (secrets as comments).
        let text = try String(contentsOfFile: path, encoding: .utf8)
        for (section, keys) in [
            ("server", ["host", "port", "request_timeout_ms", "max_header_bytes", "shutdown_grace_s"]),
            ("cors", ["allow_origins", "allow_credentials", "max_age_s"]),
            ("auth.jwt", ["algorithms", "hs256_secret", "hs256_secret_file", "public_keys_file", "issuer", "audience", "leeway_s"]),
            ("store", ["backend"]), ("redis", ["url", "password_file", "prefix", "pool_size", "timeout_ms"]),
            ("seal", ["current", "keys", "keys_file"]),
            ("kis", ["live_url", "sandbox_url", "live_rate_per_s", "sandbox_rate_per_s"]),
            ("upstream", ["timeout_ms", "max_queue_ms", "retries"]),
            ("cache", ["l1_entries", "live_ttl_s", "settled_ttl_s", "stale_while_revalidate_s", "stale_if_error_s"]),
            ("limits", ["max_range_days"]),
            ("broker", ["url", "host", "port", "database", "database_password_file", "refresh_interval_s", "refresh_ahead_s",
                        "reuse_window_s", "reconcile_interval_s", "ui", "ui_gateway_url"]),
            ("log", ["level", "format"]),
        ] {
            #expect(text.contains("[\(section)]"), "missing [\(section)]")
            for key in keys { #expect(text.contains(key), "missing \(section).\(key)") }
        }

        // With the two secrets its header exports, it is enough for the broker, the gateway and `kisgw jwt`.
        let environment = ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_K1": base64Key(32)]
        let withSecrets = try KisgwConfig.load(file: path, environment: environment)
        try withSecrets.validate(for: .gateway)
        try withSecrets.validate(for: .broker)
        try withSecrets.validate(for: .jwt)
        try withSecrets.validate(for: .demo)
        // Without the seal key the gateway and the broker refuse to start, naming it.
        let secretOnly = try KisgwConfig.load(file: path, environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret])
        #expect(throws: ConfigError.self) { try secretOnly.validate(for: .gateway) }
        #expect(throws: ConfigError.self) { try secretOnly.validate(for: .broker) }
    }

    @Test func everyKeyCanBeSetInTheFile() throws {
        let directory = temporaryDirectory()
        let secretFile = writeFile(goodSecret + "\n", name: "jwt-secret", in: directory)
        let keysFile = writeFile("k1 = \"\(base64Key(32, value: 1))\"\nk2 = \"\(base64Key(32, value: 2))\"\n", name: "seal.toml", in: directory)
        let pem = writeFile("-----BEGIN PUBLIC KEY-----\n", name: "keys.pem", in: directory)
        // A Redis user needs a password (`rediss://gw@…` alone is refused).
        let redisPasswordFile = writeFile("pw\n", name: "redis-password", in: directory)
        let config = try load(
            """
            [server]
            host = "0.0.0.0"
            port = 9000
            request_timeout_ms = 2000
            max_header_bytes = 8192
            shutdown_grace_s = 3
            [cors]
            allow_origins = ["https://app.example.com", "https://*.example.org", "null"]
            allow_credentials = false
            max_age_s = 60
            [auth.jwt]
            algorithms = ["HS256", "ES256", "EdDSA"]
            hs256_secret_file = "\(secretFile)"
            public_keys_file = "\(pem)"
            issuer = "https://auth.example.com/"
            audience = "kisgw"
            leeway_s = 5
            [store]
            backend = "redis"
            [redis]
            url = "rediss://gw@cache.example.com:6380/2"
            password_file = "\(redisPasswordFile)"
            prefix = "prod:"
            pool_size = 16
            timeout_ms = 100
            [seal]
            current = "k2"
            keys_file = "\(keysFile)"
            [kis]
            live_url = "https://live.example.com/"
            sandbox_url = "http://127.0.0.1:29443"
            live_rate_per_s = 15
            sandbox_rate_per_s = 0.5
            [upstream]
            timeout_ms = 3000
            max_queue_ms = 0
            retries = 0
            [cache]
            l1_entries = 0
            live_ttl_s = 2
            settled_ttl_s = 3600
            stale_while_revalidate_s = 0
            stale_if_error_s = 60
            [limits]
            max_range_days = 365
            [broker]
            url = "https://broker.example.com"
            host = "::"
            port = 8081
            database = "postgres://kisgw@db.example.com:5432/kisgw?sslmode=require"
            refresh_interval_s = 30
            refresh_ahead_s = 7200
            reuse_window_s = 0
            reconcile_interval_s = 120
            [log]
            level = "debug"
            format = "json"
            """
        )
        #expect(config.server == .init(host: "0.0.0.0", port: 9000, requestTimeoutMs: 2000, maxHeaderBytes: 8192, shutdownGraceS: 3))
        #expect(config.cors.allowOrigins.map(\.description) == ["https://app.example.com", "https://*.example.org", "null"])
        #expect(!config.cors.allowCredentials)
        #expect(config.cors.maxAgeS == 60)
        #expect(config.auth.jwt.algorithms == [.hs256, .es256, .eddsa])
        #expect(config.auth.jwt.hs256Secret == Secret(goodSecret))
        #expect(config.auth.jwt.hs256SecretFile == secretFile)
        #expect(config.auth.jwt.publicKeysFile == pem)
        #expect(config.auth.jwt.issuer == "https://auth.example.com/")
        #expect(config.auth.jwt.audience == "kisgw")
        #expect(config.auth.jwt.leewayS == 5)
        #expect(config.store.backend == .redis)
        let url = try #require(config.redis.url)
        #expect(url.tls && url.host == "cache.example.com" && url.port == 6380 && url.database == 2)
        #expect(url.username == "gw")
        #expect(url.password == nil)  // a password only through KISGW_REDIS_URL (ErrorTests)
        #expect(config.redis.prefix == "prod:" && config.redis.poolSize == 16 && config.redis.timeoutMs == 100)
        #expect(config.seal.current == "k2")
        #expect(config.seal.keysFile == keysFile && config.seal.keys.isEmpty)  // read by the roles that use it
        let sealKeys = try config.seal.resolvedKeys()
        #expect(sealKeys[config.seal.current]?.bytes == [UInt8](repeating: 2, count: 32))
        #expect(sealKeys.keys.sorted() == ["k1", "k2"])
        #expect(config.kis.liveURL == "https://live.example.com")
        #expect(config.kis.sandboxRatePerS == 0.5)
        #expect(config.kis.liveRatePerS == 15)
        #expect(config.upstream == .init(timeoutMs: 3000, maxQueueMs: 0, retries: 0))
        #expect(config.cache == .init(l1Entries: 0, liveTTLS: 2, settledTTLS: 3600, staleWhileRevalidateS: 0, staleIfErrorS: 60))
        #expect(config.limits.maxRangeDays == 365)
        #expect(config.broker.url == "https://broker.example.com")
        #expect(config.broker.host == "::")
        #expect(config.broker.port == 8081)
        #expect(config.broker.database.description == "postgres://[REDACTED]@db.example.com:5432/kisgw?sslmode=require")
        #expect(config.broker.refreshIntervalS == 30 && config.broker.refreshAheadS == 7200)
        #expect(config.broker.reuseWindowS == 0 && config.broker.reconcileIntervalS == 120)
        #expect(config.log == .init(level: .debug, format: .json))
        try config.validate(for: .gateway)
        try config.validate(for: .broker)
    }

    @Test func environmentWinsOverTheFile() throws {
        let toml = """
            [server]
            port = 9000
            host = "0.0.0.0"
            [redis]
            url = "redis://127.0.0.1:6379/0"
            [log]
            level = "info"
            """
        let fromFile = try load(toml)
        #expect(fromFile.server.port == 9000)
        #expect(fromFile.store.backend == .redis)
        let config = try load(
            toml,
            environment: [
                "KISGW_SERVER_PORT": "9100",
                "KISGW_REDIS_URL": "",
                "KISGW_LOG_LEVEL": "warning",
                "KISGW_CORS_ALLOW_ORIGINS": "https://a.example.com, https://*.b.example.com",
                "KISGW_CORS_ALLOW_CREDENTIALS": "0",
                "KISGW_AUTH_JWT_ALGORITHMS": "[\"HS256\", \"RS256\"]",
                "KISGW_KIS_LIVE_RATE_PER_S": "2.5",
                "KISGW_AUTH_JWT_HS256_SECRET": goodSecret,
                "KISGW_SEAL_KEYS_K1": base64Key(32),
                "KISGW_SEAL_CURRENT": "k1",
                "KISGW_TEST_REDIS_URL": "ignored",
                "KISGW_BENCH_ANYTHING": "ignored",
                "PATH": "/usr/bin",
            ]
        )
        #expect(config.server.port == 9100)
        #expect(config.server.host == "0.0.0.0")
        #expect(config.redis.url == nil)
        #expect(config.store.backend == .memory)
        #expect(config.log.level == .warning)
        #expect(config.cors.allowOrigins.map(\.description) == ["https://a.example.com", "https://*.b.example.com"])
        #expect(!config.cors.allowCredentials)
        #expect(config.auth.jwt.algorithms == [.hs256, .rs256])
        #expect(config.kis.liveRatePerS == 2.5)
        #expect(config.auth.jwt.hs256Secret?.value == goodSecret)
        #expect(config.seal.keys[config.seal.current]?.bytes.count == 32)
    }

    /// The HS256 secret is the same bytes whether it comes from KISGW_AUTH_JWT_HS256_SECRET or from
    /// `hs256_secret_file`: one line ending at its end is dropped from both, and a second line is refused. The variable
    /// was taken byte for byte (a trailing newline signed with, and counted towards the 32 bytes) while the file lost
    /// every trailing space and kept any further lines: a gateway given the variable and a broker given the file —
    /// one Kubernetes secret, injected and mounted — refused each other's tokens.
    @Test func hs256SecretIsOneLineFromTheVariableAndFromTheFile() throws {
        for (n, ending) in ["", "\n", "\r\n"].enumerated() {
            let file = writeFile(goodSecret + ending, name: "jwt-secret-\(n)")
            #expect(try load("[auth.jwt]\nhs256_secret_file = \"\(file)\"\n").auth.jwt.hs256Secret?.value == goodSecret)
            #expect(try load("", environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret + ending]).auth.jwt.hs256Secret?.value
                == goodSecret)
        }
        // Trailing spaces are part of it, from both.
        let spaced = writeFile(goodSecret + "  \n", name: "jwt-secret-spaced")
        #expect(try load("[auth.jwt]\nhs256_secret_file = \"\(spaced)\"\n").auth.jwt.hs256Secret?.value == goodSecret + "  ")
        // 31 bytes and a line ending: too short, from both.
        let short = String(repeating: "a", count: 31) + "\n"
        let fromVariable = loadError("", environment: ["KISGW_AUTH_JWT_HS256_SECRET": short])
        #expect(fromVariable?.error.description.contains("got 31 bytes") == true, "\(String(describing: fromVariable))")
        let shortFile = writeFile(short, name: "jwt-secret-short")
        let fromFile = loadError("[auth.jwt]\nhs256_secret_file = \"\(shortFile)\"\n")
        #expect(fromFile?.error.description.contains("got 31 bytes") == true, "\(String(describing: fromFile))")
        // A second line is refused, naming the file, never showing the secret.
        let twoLines = writeFile(goodSecret + "\n# rotated 2026-11\n", name: "jwt-secret-two")
        let refused = loadError("[auth.jwt]\nhs256_secret_file = \"\(twoLines)\"\n")
        #expect(refused?.error.description.contains("must hold the secret alone, on one line") == true,
                "\(String(describing: refused))")
        #expect(refused?.error.description.contains(goodSecret) == false)
        let twoInVariable = loadError("", environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret + "\nmore"])
        #expect(twoInVariable?.error.description.contains("must be one line") == true, "\(String(describing: twoInVariable))")
        #expect(twoInVariable?.error.description.contains(goodSecret) == false)
    }

    @Test func environmentSecretWinsOverTheSecretFileInTheFile() throws {
        let secretFile = writeFile("file-secret-file-secret-file-secret-0123", name: "s")
        let toml = "[auth.jwt]\nhs256_secret_file = \"\(secretFile)\"\n"
        #expect(try load(toml).auth.jwt.hs256Secret?.value == "file-secret-file-secret-file-secret-0123")
        let config = try load(toml, environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret])
        #expect(config.auth.jwt.hs256Secret?.value == goodSecret)
        #expect(config.auth.jwt.hs256SecretFile == nil)
    }

    @Test func sealKeysFromTheEnvironmentJoinAndOverrideTheKeysFile() throws {
        let keysFile = writeFile("k1 = \"\(base64Key(32, value: 1))\"\nold_2025 = \"\(base64Key(32, value: 9))\"\n", name: "keys.toml")
        let config = try load(
            "[seal]\nkeys_file = \"\(keysFile)\"\n",
            environment: [
                "KISGW_SEAL_KEYS_K1": base64Key(32, value: 3),
                // URL-safe alphabet without padding is accepted too.
                "KISGW_SEAL_KEYS_K2": Data(repeating: 0xFB, count: 32).base64EncodedString()
                    .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "+", with: "-")
                    .replacingOccurrences(of: "=", with: ""),
            ]
        )
        #expect(config.seal.keys.keys.sorted() == ["k1", "k2"])  // the file is read by the roles that use it
        let keys = try config.seal.resolvedKeys()
        #expect(keys.keys.sorted() == ["k1", "k2", "old_2025"])
        #expect(keys["k1"]?.bytes == [UInt8](repeating: 3, count: 32))
        #expect(keys["k2"]?.bytes == [UInt8](repeating: 0xFB, count: 32))
        #expect(keys["old_2025"]?.bytes == [UInt8](repeating: 9, count: 32))
        #expect(!"\(keys)".contains(base64Key(32, value: 3)) && !"\(keys)".contains(base64Key(32, value: 9)))
        #expect("\(keys["k1"]!)" == "SealKey(k1, [REDACTED])")
    }

    /// config.md: "One file configures every role; each role reads its sections." `[seal] keys_file` is read by the
    /// roles that seal or open token records (the broker; a gateway on Redis), not at load: a file that only the
    /// broker's machine can read does not stop `kisgw jwt`, or a gateway on the memory store, sharing the
    /// configuration. Before, the loader read it for every role.
    @Test func keysFileIsReadByTheRolesThatUseIt() throws {
        let missing = temporaryDirectory() + "/broker-only/seal.toml"
        let toml = "[seal]\nkeys_file = \"\(missing)\"\n"
        let path = writeFile(toml)
        let secret = ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret]
        let config = try KisgwConfig.load(file: path, environment: secret)
        #expect(config.seal.keysFile == missing)
        try config.validate(for: .jwt)
        try config.validate(for: .gateway)  // the memory store: nothing to open
        try config.validate(for: .demo)
        let expected = "\(path): [seal] keys_file: cannot read \"\(missing)\": no such file"
        #expect(throws: ConfigError.self) { try config.validate(for: .broker) }
        do {
            try config.validate(for: .broker)
        } catch {
            #expect(error.description == expected)
            #expect(error.key == "seal.keys_file" && error.kind == .unreadableFile)
        }
        let onRedis = try KisgwConfig.load(
            file: path, environment: secret.merging(["KISGW_REDIS_URL": "redis://127.0.0.1:6379/0"]) { a, _ in a })
        do {
            try onRedis.validate(for: .gateway)
            Issue.record("a gateway on Redis opens the broker's records with the seal keys: it must read the file")
        } catch {
            #expect(error.description == expected)
        }
        do {
            _ = try config.seal.resolvedKeys()
            Issue.record("expected an error")
        } catch {
            #expect(error.description == expected)
        }
        // A role that has its keys elsewhere unsets the shared file's path with an empty variable.
        let own = try KisgwConfig.load(
            file: path,
            environment: secret.merging([
                "KISGW_REDIS_URL": "redis://127.0.0.1:6379/0", "KISGW_SEAL_KEYS_FILE": "", "KISGW_SEAL_KEYS_K1": base64Key(32),
            ]) { a, _ in a })
        #expect(own.seal.keysFile == nil)
        try own.validate(for: .gateway)
    }

    @Test func noFileMeansDefaultsOrKISGWConfig() throws {
        let path = writeFile("[server]\nport = 8123\n")
        #expect(try KisgwConfig.load(file: nil, environment: ["KISGW_CONFIG": path]).server.port == 8123)
        do {
            _ = try KisgwConfig.load(file: nil, environment: ["KISGW_CONFIG": path + ".missing"])
            Issue.record("expected an error")
        } catch {
            #expect(error.description == "\(path).missing: cannot read \"\(path).missing\": no such file")
            #expect(error.kind == .unreadableFile)
        }
    }

    /// `kisgw demo`'s load: the defaults and the environment's variables, checked, and never a file — not the one
    /// `KISGW_CONFIG` names (nor ./gateway.toml: OperationsTests, `kisgw demo` in a directory holding a broken one).
    @Test func environmentOnlyReadsNoFile() throws {
        let broken = writeFile("[server]\nport = -1\n")
        let config = try KisgwConfig.load(environmentOnly: ["KISGW_CONFIG": broken, "KISGW_REDIS_URL": "redis://127.0.0.1:6390/2"])
        #expect(config.server.port == KisgwConfig.defaults.server.port)
        #expect(config.redis.url?.description == "redis://127.0.0.1:6390/2")
        #expect {
            try KisgwConfig.load(environmentOnly: ["KISGW_REDIS_URL": "http://127.0.0.1:6379"])
        } throws: { error in
            "\(error)".hasPrefix("environment KISGW_REDIS_URL: ")
        }
    }

    /// README (Configuration): `--config FILE` (the `file` argument) wins over `KISGW_CONFIG`, which wins over
    /// ./gateway.toml.
    @Test func explicitFileWinsOverKISGWConfig() throws {
        let explicit = writeFile("[server]\nport = 8124\n")
        let named = writeFile("[server]\nport = -1\n")
        #expect(try KisgwConfig.load(file: explicit, environment: ["KISGW_CONFIG": named]).server.port == 8124)
        #expect(throws: ConfigError.self) { try KisgwConfig.load(file: nil, environment: ["KISGW_CONFIG": named]) }
    }

    @Test func kisgwToolsVariablesAreNotConfiguration() throws {
        // kisgw demo's, the tests' and the benchmark's own variables, left exported, do not stop a command.
        let environment = ["KISGW_DEMO_PORT_BASE": "8100", "KISGW_DEMO_APP_KEY": "PSdemo", "KISGW_DEMO_DATA": "/tmp/d",
                           "KISGW_SKIP_BROWSER_TESTS": "1", "KISGW_TEST_REDIS_URL": "redis://127.0.0.1:1/0",
                           "KISGW_BENCH_BINARY": "/bin/true", "KISGW_SERVER_PORT": "8123"]
        #expect(try KisgwConfig.load(file: nil, environment: environment).server.port == 8123)
    }

    @Test func databaseURLParameters() throws {
        let url = "postgres://kisgw@db:5433/kisgw?sslmode=verify-full&password=pw"
        let database = try KisgwConfig.load(file: nil, environment: ["KISGW_BROKER_DATABASE": url]).broker.database
        guard case .postgres(let secret, nil) = database else {
            Issue.record("not read as PostgreSQL: \(database)")
            return
        }
        #expect(secret.value == url)
    }

    /// config.md: the database password "only through the environment or a file path". The broker reads the file;
    /// a gateway sharing the configuration file never does (it may not be allowed to).
    @Test func databasePasswordFile() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // One line, as secret mounts write it; the newline is not part of the password, inner spaces are.
        let file = writeFile("p@ss w:rd&1\r\n", name: "password", in: dir)
        let url = "postgres://kisgw@db:5432/kisgw?sslmode=disable"
        let environment = ["KISGW_BROKER_DATABASE": url, "KISGW_BROKER_DATABASE_PASSWORD_FILE": file,
                           "KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_K1": base64Key(32)]

        // From the file, and from the environment.
        let toml = writeFile("[broker]\ndatabase = \"\(url)\"\ndatabase_password_file = \"\(file)\"\n", in: dir)
        var fileEnvironment = environment
        (fileEnvironment["KISGW_BROKER_DATABASE"], fileEnvironment["KISGW_BROKER_DATABASE_PASSWORD_FILE"]) = (nil, nil)
        for config in [try KisgwConfig.load(file: toml, environment: fileEnvironment),
                       try KisgwConfig.load(file: nil, environment: environment)] {
            #expect(config.broker.database == .postgres(url: Secret(url)))  // not read at load
            #expect(try config.broker.resolvedDatabase() == .postgres(url: Secret(url), password: Secret("p@ss w:rd&1")))
            #expect(config.broker.databasePasswordFile == file)
        }

        // A file the broker cannot use stops it at validation, naming the key; the gateway does not look at it.
        let missing = dir + "/missing", empty = writeFile("\n", name: "empty", in: dir)
        let twoLines = writeFile("first\nsecond\n", name: "two-lines", in: dir)
        let source = "environment KISGW_BROKER_DATABASE_PASSWORD_FILE"
        for (path, problem) in [(missing, "cannot read \"\(missing)\": no such file"),
                                (empty, "\"\(empty)\" is empty"),
                                (twoLines, "\"\(twoLines)\" must hold the password alone, on one line")] {
            var bad = environment
            bad["KISGW_BROKER_DATABASE_PASSWORD_FILE"] = path
            let config = try KisgwConfig.load(file: nil, environment: bad)
            try config.validate(for: .gateway)
            #expect {
                try config.validate(for: .broker)
            } throws: { error in
                "\(error)" == "\(source): \(problem)"
            }
        }
    }

    /// config.md: a password in `[redis] url` "only from the environment or a file path". The roles that open the
    /// store read the file; `kisgw jwt` never does.
    @Test func redisPasswordFile() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = writeFile("s3cret pw:@/\n", name: "password", in: dir)
        let environment = ["KISGW_REDIS_URL": "rediss://kisgw@cache.internal:6380/2", "KISGW_REDIS_PASSWORD_FILE": file,
                           "KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_K1": base64Key(32)]
        let toml = writeFile("[redis]\nurl = \"rediss://kisgw@cache.internal:6380/2\"\npassword_file = \"\(file)\"\n", in: dir)
        var fileEnvironment = environment
        (fileEnvironment["KISGW_REDIS_URL"], fileEnvironment["KISGW_REDIS_PASSWORD_FILE"]) = (nil, nil)
        for config in [try KisgwConfig.load(file: toml, environment: fileEnvironment),
                       try KisgwConfig.load(file: nil, environment: environment)] {
            #expect(config.redis.url?.password == nil)  // not read at load
            let resolved = try #require(try config.redis.resolvedURL())
            #expect(resolved == RedisURL(tls: true, host: "cache.internal", port: 6380, database: 2, username: "kisgw",
                                         password: Secret("s3cret pw:@/")))
            #expect(!"\(resolved)".contains("s3cret"))
            #expect(config.redis.passwordFile == file)
            try config.validate(for: .gateway)
            try config.validate(for: .broker)
        }

        // A file it cannot use stops the gateway and the broker at validation, naming the key; `kisgw jwt` does not
        // look at it.
        let empty = writeFile("", name: "empty", in: dir), missing = dir + "/missing"
        for (path, problem) in [(missing, "cannot read \"\(missing)\": no such file"),
                                (empty, "\"\(empty)\" is empty")] {
            var bad = environment
            bad["KISGW_REDIS_PASSWORD_FILE"] = path
            let config = try KisgwConfig.load(file: nil, environment: bad)
            try config.validate(for: .jwt)
            for role in [KisgwConfig.Role.gateway, .broker] {
                #expect {
                    try config.validate(for: role)
                } throws: { error in
                    "\(error)" == "environment KISGW_REDIS_PASSWORD_FILE: \(problem)"
                }
            }
        }
    }

    /// web-client.md: the broker serves the web UI; its chart calls go to the gateway, by default `[server]`'s
    /// address as a browser on the same machine reaches it.
    @Test func webUIGatewayURL() throws {
        func broker(_ environment: [String: String]) throws -> KisgwConfig.Broker {
            try KisgwConfig.load(file: nil, environment: environment).broker
        }
        #expect(try broker(["KISGW_SERVER_PORT": "9001"]).uiGatewayURL == "http://127.0.0.1:9001")
        #expect(try broker(["KISGW_SERVER_HOST": "0.0.0.0"]).uiGatewayURL == "http://127.0.0.1:8000")
        #expect(try broker(["KISGW_SERVER_HOST": "::"]).uiGatewayURL == "http://[::1]:8000")
        #expect(try broker(["KISGW_SERVER_HOST": "::1"]).uiGatewayURL == "http://[::1]:8000")
        #expect(try broker(["KISGW_SERVER_HOST": "gw.internal", "KISGW_SERVER_PORT": "80"]).uiGatewayURL
                == "http://gw.internal:80")
        #expect(try broker(["KISGW_BROKER_UI_GATEWAY_URL": "https://GW.example.com/kis/"]).uiGatewayURL
                == "https://gw.example.com/kis")
        #expect(try broker(["KISGW_BROKER_UI": "false"]).ui == false)
        #expect(try broker(["KISGW_BROKER_UI": "1"]).ui)
    }

    @Test func loopbackURLs() {
        for url in ["http://127.0.0.1:8000", "https://localhost", "http://[::1]:8000/kis", "http://gw.localhost"] {
            #expect(KisgwConfig.isLoopback(url), "\(url)")
        }
        for url in ["https://gw.example.com", "http://10.0.0.5:8000", "http://localhost.example.com", "127.0.0.1",
                    "http://127.example.com"] {
            #expect(!KisgwConfig.isLoopback(url), "\(url)")
        }
    }

    @Test func kisURLsInClear() throws {
        #expect(KisgwConfig.KIS().inClear.isEmpty)  // KIS's own URLs are https
        for url in ["http://127.0.0.1:29443", "http://localhost:29443", "http://[::1]:29443", "https://kis.example.com",
                    "http://sim.localhost:8", "HTTP://127.0.0.2"] {
            #expect(!KisgwConfig.KIS.isInClear(url), "\(url)")
        }
        for url in ["http://10.0.0.5:29443", "http://sim:29443", "http://openapi.koreainvestment.com:9443",
                    "http://[2001:db8::1]:80", "http://localhost.example.com"] {
            #expect(KisgwConfig.KIS.isInClear(url), "\(url)")
        }
        let config = try KisgwConfig.load(file: nil, environment: ["KISGW_KIS_SANDBOX_URL": "http://10.0.0.5:29443"])
        #expect(config.kis.inClear.map(\.key) == ["[kis] sandbox_url"])
    }

    /// The gateway sends the user's JWT to `[broker] url` and gets a KIS token back: plain http to another machine is
    /// warned about as KIS's URLs are (it was not). The broker does not call it.
    @Test func brokerURLInClear() throws {
        let far = try KisgwConfig.load(file: nil, environment: ["KISGW_BROKER_URL": "http://10.0.0.7:8080"])
        #expect(far.urlsInClear(for: .gateway).map(\.key) == ["[broker] url"])
        #expect(far.urlsInClear(for: .broker).isEmpty)
        let near = try KisgwConfig.load(file: nil, environment: ["KISGW_BROKER_URL": "http://127.0.0.1:8080"])
        #expect(near.urlsInClear(for: .gateway).isEmpty)
        let both = try KisgwConfig.load(file: nil, environment: ["KISGW_BROKER_URL": "http://broker:8080",
                                                                 "KISGW_KIS_LIVE_URL": "http://sim:9443"])
        #expect(both.urlsInClear(for: .gateway).map(\.key) == ["[kis] live_url", "[broker] url"])
    }

    @Test func environmentNames() {
        #expect(KisgwConfig.environmentName(section: "server", key: "port") == "KISGW_SERVER_PORT")
        #expect(KisgwConfig.environmentName(section: "auth.jwt", key: "hs256_secret") == "KISGW_AUTH_JWT_HS256_SECRET")
        #expect(KisgwConfig.environmentName(section: "cache", key: "stale-if-error_s") == "KISGW_CACHE_STALE_IF_ERROR_S")
    }

    @Test func secretsDoNotPrint() throws {
        let config = try load(
            "",
            environment: ["KISGW_REDIS_URL": "redis://:hunter2hunter2@localhost", "KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_K1": base64Key(32),
                          "KISGW_BROKER_DATABASE": "postgres://u:dbpass@db/kisgw"]
        )
        var dumped = ""
        dump(config, to: &dumped)
        let printed = "\(config) \(String(reflecting: config)) \(dumped)"
        #expect(!printed.contains("hunter2"))
        #expect(!printed.contains("dbpass"))
        #expect(!printed.contains(goodSecret))
        #expect(!printed.contains(base64Key(32)))
        #expect(config.redis.url?.description == "redis://:[REDACTED]@localhost:6379/0")
    }

    /// `[kis] *_rate_per_s` from 0.01 (one call in 100 s) to 10000, both ends included (ErrorTests: outside them).
    @Test func rateBoundsAreInclusive() throws {
        let config = try load("[kis]\nlive_rate_per_s = 10000\nsandbox_rate_per_s = 0.01\n")
        #expect(config.kis.liveRatePerS == 10_000)
        #expect(config.kis.sandboxRatePerS == 0.01)
    }
}
