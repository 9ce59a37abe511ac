import Crypto
import Foundation
import Logging
import NIOHTTP1
import Redis
import Testing
import TestSupport

/// `kisgw <command>` started with only `env` of the KISGW_ variables (and `arguments`), in a directory without a
/// gateway.toml, its standard error kept in a file; `port` is where it is expected to listen.
func startKisgw(_ command: String, env extra: [String: String], arguments: [String] = [], port: Int) throws -> GatewayProcess {
    let binary = try #require(kisgwBinary(), "the kisgw executable (build it, or set KISGW_TEST_BINARY)")
    let process = kisgwProcess(binary, command)
    process.arguments = [command] + arguments
    process.environment = process.environment?.merging(extra) { _, new in new }
    let stderrFile = FileManager.default.temporaryDirectory.appendingPathComponent("kisgw-\(command)-\(UUID().uuidString).stderr")
    try process.run(stderrTo: stderrFile)
    return GatewayProcess(process: process, port: port, stderrFile: stderrFile)
}

extension GatewayProcess {
    /// Kills the process (SIGKILL: one that hangs must not outlive the test) and removes its stderr file.
    func stop() {
        process.killIfRunning()
        try? FileManager.default.removeItem(at: stderrFile)
    }

    /// Waits until it accepts connections, or has exited.
    func started() async -> Bool {
        _ = await eventually(timeout: .seconds(20)) { accepts || !process.isRunning }
        return accepts
    }
}

private func writeText(_ text: String, _ path: String) throws {
    try FileManager.default.createDirectory(
        atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try text.write(toFile: path, atomically: true, encoding: .utf8)
}

private let sealKey = Data(repeating: 7, count: 32).base64EncodedString()

@Suite("kisgw verbs and one shared configuration file", .serialized)
struct SharedConfigurationProcessTests {
    /// config.md: "One file configures every role; each role reads its sections." A shared gateway.toml names a
    /// `[seal] keys_file` that only the broker's machine can read (here: one that does not exist). The seal keys
    /// seal and open token records: the broker uses them, and so does a gateway on the Redis store (it opens the
    /// broker's records, store.md); `kisgw jwt` and a gateway on the memory store do not. Before, the loader read
    /// the file for every verb, and all of them stopped with exit 78.
    @Test("[seal] keys_file nobody here can read: jwt and a gateway on memory start; the broker, a gateway on Redis refuse naming it")
    func sealKeysFileOnlyTheBrokerCanRead() async throws {
        let directory = Scratch.directory("shared-config")
        let keysFile = directory + "/broker-only/seal.toml"
        let config = directory + "/gateway.toml"
        try writeText("[seal]\nkeys_file = \"\(keysFile)\"\n", config)
        let secret = ["KISGW_AUTH_JWT_HS256_SECRET": testSecret]
        let refusal = "kisgw: \(config): [seal] keys_file: cannot read \"\(keysFile)\": no such file\n"

        let (jwt, jwtText) = try runToExit("jwt", env: secret, arguments: ["--sub", "u1", "--config", config])
        #expect(jwt.terminationReason == .exit && jwt.terminationStatus == 0, "\(jwt.terminationStatus): \(jwtText)")

        let port = try RedisServerProcess.freePort()
        let gateway = try startKisgw(
            "gateway", env: secret.merging(["KISGW_SERVER_PORT": String(port)]) { a, _ in a },
            arguments: ["--config", config], port: port)
        defer { gateway.stop() }
        #expect(await gateway.started(), "the gateway on the memory store did not start: \(gateway.ending)")

        let (broker, brokerText) = try runToExit(
            "broker",
            env: secret.merging([
                "KISGW_BROKER_PORT": String(try RedisServerProcess.freePort()), "KISGW_BROKER_DATABASE": "sqlite::memory:",
                "KISGW_SEAL_KEYS_K1": sealKey,  // keys in the environment do not excuse a keys file it cannot read
            ]) { a, _ in a },
            arguments: ["--config", config])
        #expect(broker.terminationReason == .exit && broker.terminationStatus == 78, "\(broker.terminationStatus): \(brokerText)")
        #expect(brokerText == refusal)

        let onRedis = secret.merging([
            "KISGW_REDIS_URL": "redis://127.0.0.1:1/0", "KISGW_SEAL_KEYS_K1": sealKey,
            "KISGW_SERVER_PORT": String(try RedisServerProcess.freePort()),
        ]) { a, _ in a }
        let (redisGateway, redisGatewayText) = try runToExit("gateway", env: onRedis, arguments: ["--config", config])
        #expect(redisGateway.terminationReason == .exit && redisGateway.terminationStatus == 78,
                "\(redisGateway.terminationStatus): \(redisGatewayText)")
        #expect(redisGatewayText == refusal)
        #expect(!brokerText.contains(sealKey) && !redisGatewayText.contains(sealKey))

        // A gateway on Redis that has its keys in the environment unsets the shared file's path (README).
        let ownPort = try RedisServerProcess.freePort()
        let own = try startKisgw(
            "gateway", env: onRedis.merging(["KISGW_SEAL_KEYS_FILE": "", "KISGW_SERVER_PORT": String(ownPort)]) { _, b in b },
            arguments: ["--config", config], port: ownPort)
        defer { own.stop() }
        #expect(await own.started(), "the gateway with KISGW_SEAL_KEYS_FILE= did not start: \(own.ending)")
    }

    /// config.md: "memory" is one process's own store. A broker on it publishes tokens where no gateway can read
    /// them (and copies would each hold their own scheduler lease): it starts, as the gateway does, and says so.
    @Test("a broker on the memory store starts and warns that no gateway can read its tokens")
    func brokerOnTheMemoryStoreWarns() async throws {
        let port = try RedisServerProcess.freePort()
        let broker = try startKisgw("broker", env: [
            "KISGW_AUTH_JWT_HS256_SECRET": testSecret, "KISGW_STORE_BACKEND": "memory", "KISGW_REDIS_URL": "",
            "KISGW_BROKER_PORT": String(port), "KISGW_BROKER_DATABASE": "sqlite::memory:", "KISGW_SEAL_KEYS_K1": sealKey,
        ], port: port)
        defer { broker.stop() }
        #expect(await broker.started(), "the broker did not start: \(broker.ending)")
        #expect(await eventually(timeout: .seconds(5)) { broker.stderr.contains("[store] backend is memory") },
                "\(broker.stderr.suffix(2000))")
    }

    /// README (Configuration): `--config FILE` names the file; without it `KISGW_CONFIG` does, else ./gateway.toml.
    /// And a `KISGW_<SECTION>_<KEY>` variable wins over the file's value (the file's is not even read).
    @Test("--config wins over KISGW_CONFIG; KISGW_CONFIG names the file without it; KISGW_SERVER_PORT wins over the file's port")
    func configFileChoiceAndEnvironmentOverride() throws {
        let directory = Scratch.directory("config-choice")
        let good = directory + "/good.toml", bad = directory + "/bad.toml"
        try writeText("[auth.jwt]\nissuer = \"kisgw-tests\"\n", good)
        try writeText("[server]\nport = -1\n", bad)
        let env = ["KISGW_AUTH_JWT_HS256_SECRET": testSecret, "KISGW_CONFIG": bad]

        let (chosen, chosenText) = try runToExit("jwt", env: env, arguments: ["--sub", "u1", "--config", good])
        #expect(chosen.terminationReason == .exit && chosen.terminationStatus == 0, "\(chosen.terminationStatus): \(chosenText)")

        let (named, namedText) = try runToExit("jwt", env: env, arguments: ["--sub", "u1"])
        #expect(named.terminationReason == .exit && named.terminationStatus == 78, "\(named.terminationStatus): \(namedText)")
        #expect(namedText == "kisgw: \(bad): [server] port: must be an integer from 1 to 65535, got -1\n")

        let (overridden, overriddenText) = try runToExit(
            "jwt", env: env.merging(["KISGW_SERVER_PORT": "8123"]) { a, _ in a }, arguments: ["--sub", "u1"])
        #expect(overridden.terminationReason == .exit && overridden.terminationStatus == 0,
                "\(overridden.terminationStatus): \(overriddenText)")
    }

    /// README (The verbs): `kisgw jwt --sub ID [--ttl SECONDS]` prints an HS256 JWT signed with the configured secret,
    /// carrying `[auth.jwt] issuer` and `audience` — what the gateway and broker then require. Read back here
    /// without the project's verifier: the signature is HMAC-SHA256 of the first two parts with the secret.
    @Test("kisgw jwt prints an HS256 JWT with sub, iat, exp = iat + --ttl, and the configured iss and aud, signed with the secret")
    func jwtVerbClaims() throws {
        let directory = Scratch.directory("jwt-claims")
        let config = directory + "/gateway.toml"
        try writeText("[auth.jwt]\nissuer = \"kisgw-tests\"\naudience = \"charts\"\n", config)
        let binary = try #require(kisgwBinary(), "the kisgw executable (build it, or set KISGW_TEST_BINARY)")
        let process = kisgwProcess(binary, "jwt")
        process.arguments = ["jwt", "--sub", "user-42", "--ttl", "600", "--config", config]
        process.environment = process.environment?.merging(["KISGW_AUTH_JWT_HS256_SECRET": testSecret]) { _, new in new }
        let before = Int(Date().timeIntervalSince1970)
        let output = try process.runToExit(capturing: .standardOutput)
        let after = Int(Date().timeIntervalSince1970)
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
        let parts = output.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ".").map(String.init)
        try #require(parts.count == 3, "\(output)")
        func json(_ part: String) throws -> [String: Any] {
            var b64 = part.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
            while b64.count % 4 != 0 { b64 += "=" }
            let data = try #require(Data(base64Encoded: b64), "not base64url: \(part)")
            return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        }
        #expect(try json(parts[0])["alg"] as? String == "HS256")
        let claims = try json(parts[1])
        #expect(claims["sub"] as? String == "user-42")
        #expect(claims["iss"] as? String == "kisgw-tests")
        let audience = claims["aud"] as? String ?? (claims["aud"] as? [String])?.first
        #expect(audience == "charts", "aud \(String(describing: claims["aud"]))")
        let iat = try #require(claims["iat"] as? Int), exp = try #require(claims["exp"] as? Int)
        #expect(before - 1 <= iat && iat <= after + 1, "iat \(iat), ran \(before)…\(after)")
        #expect(exp - iat == 600)
        let signature = HMAC<SHA256>.authenticationCode(for: Data((parts[0] + "." + parts[1]).utf8),
                                                        using: SymmetricKey(data: Data(testSecret.utf8)))
        let expected = Data(signature).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        #expect(parts[2] == expected, "the signature is not HMAC-SHA256 with the configured secret")
    }
}

/// config.md `[redis]`: `password_file`, `pool_size` and `timeout_ms`, as the executable hands them to its Redis client
/// (`Runtime`), seen from the Redis server: a `redis-server` of the test's own with `requirepass`, and a separate
/// connection that lists the clients and pauses them.
@Suite("Gateway process: [redis] password_file, pool_size and timeout_ms reach the Redis client", .serialized,
       .timeLimit(.minutes(2)))
struct RedisSettingsProcessTests {
    let password = "pw-\(UUID().uuidString)"

    func gateway(_ redis: RedisServerProcess, database: Int, passwordFile: String, poolSize: Int = 8,
                 timeoutMs: Int = 250) throws -> GatewayProcess {
        let port = try RedisServerProcess.freePort()
        return try startKisgw("gateway", env: [
            "KISGW_AUTH_JWT_HS256_SECRET": testSecret, "KISGW_SEAL_KEYS_K1": sealKey, "KISGW_SERVER_PORT": String(port),
            "KISGW_REDIS_URL": "redis://127.0.0.1:\(redis.port)/\(database)", "KISGW_REDIS_PASSWORD_FILE": passwordFile,
            "KISGW_REDIS_POOL_SIZE": String(poolSize), "KISGW_REDIS_TIMEOUT_MS": String(timeoutMs),
            "KISGW_LOG_LEVEL": "warning",
        ], port: port)
    }

    func passwordFile(_ text: String) throws -> String {
        let path = Scratch.directory("redis-password") + "/password"
        try writeText(text + "\n", path)
        return path
    }

    /// `/readyz` of `g` (one GET of the store), and how long it took.
    func readyz(_ g: GatewayProcess) async throws -> (status: Int, elapsed: Duration) {
        let clock = ContinuousClock()
        let start = clock.now
        let status = try await http(.GET, "http://127.0.0.1:\(g.port)/readyz").status
        return (status, clock.now - start)
    }

    /// The command connections (not pub/sub) selecting `database`, by `CLIENT LIST TYPE NORMAL`.
    func commandConnections(_ admin: RedisClient, database: Int) async throws -> Int {
        let list = try await admin.send(["CLIENT", "LIST", "TYPE", "NORMAL"]).string ?? ""
        return list.split(separator: "\n").filter { $0.split(separator: " ").contains("db=\(database)") }.count
    }

    @Test("password_file authenticates; pool_size N opens N command connections; timeout_ms bounds a command while Redis is paused")
    func settingsReachTheClient() async throws {
        let redis = try RedisServerProcess(extraArguments: ["--requirepass", password])
        defer { redis.stop() }
        var adminConfiguration = RedisConfiguration(host: "127.0.0.1", port: redis.port)
        adminConfiguration.password = password
        adminConfiguration.poolSize = 1
        adminConfiguration.commandTimeout = .seconds(10)
        let admin = RedisClient(configuration: adminConfiguration, logger: Logger(label: "admin"))
        let file = try passwordFile(password)
        // Different from the defaults (8 connections, 250 ms), one database each to tell their connections apart.
        let small = try gateway(redis, database: 1, passwordFile: file, poolSize: 2, timeoutMs: 150)
        defer { small.stop() }
        let large = try gateway(redis, database: 2, passwordFile: file, poolSize: 5, timeoutMs: 1200)
        defer { large.stop() }
        for g in [small, large] {
            #expect(await g.started(), "\(g.ending)")
            // Every command before AUTH is refused (NOAUTH): the store answers only with the file's password.
            #expect(try await eventually(timeout: .seconds(10)) { try await readyz(g).status == 200 }, "\(g.stderr)")
        }

        // The pool opens one more connection with a command while it has fewer than pool_size: after many
        // commands it holds exactly pool_size (the pub/sub connection is not of TYPE NORMAL).
        for _ in 0..<30 {
            _ = try await readyz(small)
            _ = try await readyz(large)
        }
        var counts = (0, 0)
        let settled = try await eventually(timeout: .seconds(10)) {
            counts = (try await commandConnections(admin, database: 1), try await commandConnections(admin, database: 2))
            return counts == (2, 5)
        }
        #expect(settled, "command connections: \(counts), expected (2, 5)")

        // Every client is paused for 4 s: a command fails once its timeout_ms is past, not when Redis answers again
        // (which would make /readyz 200).
        #expect(try await admin.send(["CLIENT", "PAUSE", "4000", "ALL"]) == .simpleString("OK"))
        async let quick = readyz(small)
        async let patient = readyz(large)
        let (q, p) = try await (quick, patient)
        #expect(q.status == 503 && q.elapsed < .seconds(2), "timeout_ms 150: \(q)")
        // A 503 while Redis is paused for 4 s is a timeout that fired; at least its own: not the default 250 ms. (No
        // upper bound beyond the pause: a loaded machine may be slow to answer, and the 503 says enough.)
        #expect(p.status == 503 && p.elapsed >= .milliseconds(1100), "timeout_ms 1200: \(p)")
        await admin.shutdown()
    }

    /// A wrong password in `password_file`: the gateway starts (Redis may come later), `/readyz` says the store does
    /// not answer, and the log says why — the server's refusal of AUTH — without the password. Before, it said
    /// nothing at any level above debug.
    @Test("a wrong password in password_file: /readyz 503, one warning naming AUTH and the server's refusal, no password")
    func wrongPassword() async throws {
        let redis = try RedisServerProcess(extraArguments: ["--requirepass", password])
        defer { redis.stop() }
        let wrong = "wrong-\(UUID().uuidString)"
        let g = try gateway(redis, database: 0, passwordFile: try passwordFile(wrong))
        defer { g.stop() }
        #expect(await g.started(), "\(g.ending)")
        #expect(try await readyz(g).status == 503)
        #expect(await eventually(timeout: .seconds(10)) { g.stderr.contains("WRONGPASS") }, "\(g.stderr)")
        let warnings = g.stderr.split(separator: "\n").filter { $0.contains("redis connect failed") }
        #expect(warnings.count == 1, "\(g.stderr)")  // the first failure; the retries after it are debug
        #expect(warnings.first?.contains("AUTH failed on redis://127.0.0.1:\(redis.port)/0") == true, "\(g.stderr)")
        #expect(!g.stderr.contains(wrong) && !g.stderr.contains(password))
    }
}

/// config.md: "`--help` on each says what it does." Every verb answers `--help` (exit 0, before any configuration is
/// read: the process has no secret), with its abstract; and `kisgw --help` names every verb.
@Suite("kisgw --help")
struct HelpTests {
    static let abstracts = [
        "demo": "Run everything in one process: KIS simulators (live and sandbox), the broker on SQLite, the gateway, and the web UI.",
        "gateway": "Run the edge gateway: authenticated, cached, coalesced and rate-limited KIS daily charts.",
        "broker": "Run the token broker: encrypted KIS accounts, KIS tokens obtained, kept alive and published to the store.",
        "sim": "Run a simulator of the KIS Open API (tokens, daily charts, errors, rate limits).",
        "jwt": "Print an HS256 JWT signed with the configured secret, for development and load tests.",
    ]

    /// `kisgw arguments…` until it exits: its status and standard output, whitespace runs made one space (the help
    /// text is wrapped to the terminal's width).
    func help(_ arguments: [String]) throws -> (status: Int32, text: String) {
        let binary = try #require(kisgwBinary(), "the kisgw executable (build it, or set KISGW_TEST_BINARY)")
        let process = kisgwProcess(binary, arguments.first ?? "")
        process.arguments = arguments
        let text = try process.runToExit(capturing: .standardOutput, watchdog: 30)
            .split(whereSeparator: \.isWhitespace).joined(separator: " ")
        return (process.terminationReason == .exit ? process.terminationStatus : -1, text)
    }

    @Test("kisgw <verb> --help: exit 0 and the verb's abstract", arguments: ["demo", "gateway", "broker", "sim", "jwt"])
    func verbHelp(_ verb: String) throws {
        let (status, text) = try help([verb, "--help"])
        #expect(status == 0, "\(text)")
        #expect(text.contains("OVERVIEW: " + HelpTests.abstracts[verb]!), "\(text)")
        #expect(text.contains("USAGE: kisgw \(verb)"), "\(text)")
    }

    /// Before, its overview said only "Roles: `sim` runs a simulator…".
    @Test("kisgw --help: exit 0, and its overview names every verb")
    func rootHelp() throws {
        let (status, text) = try help(["--help"])
        #expect(status == 0, "\(text)")
        let overview = try #require(text.components(separatedBy: "USAGE:").first)
        for verb in HelpTests.abstracts.keys.sorted() {
            #expect(overview.contains("kisgw \(verb)"), "the overview does not name \(verb): \(overview)")
        }
    }
}

/// A role that cannot start says why in one line naming what it tried, exit 1 — before, the errors' internal
/// descriptions: `bind(descriptor:ptr:bytes:): Address already in use) (errno: 98)`, `SQLite error 14`,
/// `Error Domain=NSCocoaErrorDomain Code=516`.
@Suite("Start-up failures")
struct StartupFailureTests {
    func run(_ arguments: [String], env: [String: String] = [:]) throws -> (status: Int32, stderr: String) {
        let binary = try #require(kisgwBinary(), "the kisgw executable (build it, or set KISGW_TEST_BINARY)")
        let process = kisgwProcess(binary, arguments[0])
        process.arguments = arguments
        process.environment = process.environment?.merging(env) { _, new in new }
        let text = try process.runToExit(capturing: .standardError, watchdog: 30)
        return (process.terminationReason == .exit ? process.terminationStatus : -1, text)
    }

    /// The broker warned about secret files other users may read; the gateway and `kisgw jwt` read the JWT secret
    /// file (and the gateway the seal keys and the Redis password) and said nothing.
    @Test("the gateway and kisgw jwt warn about a secret file other users may read, naming it, never its content")
    func looseSecretFiles() throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("kisgw-loose-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let secretFile = scratch.appendingPathComponent("jwt-secret").path
        try writeText(testSecret, secretFile)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: secretFile)
        let says = "hs256_secret_file (KISGW_AUTH_JWT_HS256_SECRET_FILE) \"\(secretFile)\" is readable by other users (mode 0644)"
        let env = ["KISGW_AUTH_JWT_HS256_SECRET_FILE": secretFile, "KISGW_AUTH_JWT_HS256_SECRET": "",
                   "KISGW_STORE_BACKEND": "memory", "KISGW_REDIS_URL": ""]
        let (jwtStatus, jwtText) = try run(["jwt", "--sub", "u1"], env: env)
        #expect(jwtStatus == 0 && jwtText.contains(says), "\(jwtStatus): \(jwtText)")
        // The gateway warns as it starts; given an address not on this machine, it then stops.
        let (status, text) = try run(["gateway"], env: env.merging(["KISGW_SERVER_HOST": "192.0.2.1"]) { $1 })
        // (The log handler's scrubber hides the quoted path after a key named for a secret.)
        #expect(status == 1 && text.contains("hs256_secret_file (KISGW_AUTH_JWT_HS256_SECRET_FILE)")
                && text.contains("is readable by other users (mode 0644)"), "\(status): \(text)")
        #expect(!jwtText.contains(testSecret) && !text.contains(testSecret))
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: secretFile)
        let (_, quiet) = try run(["jwt", "--sub", "u1"], env: env)
        #expect(!quiet.contains("other users"), "\(quiet)")
    }

    /// `kisgw demo`'s variables: KISGW_DEMO_APP_KEY and _SECRET together or not at all (one alone was ignored — any
    /// pair accepted — and an empty secret made every connection fail); the other KISGW_REDIS_* variables with
    /// KISGW_REDIS_URL (a Redis user's password file was dropped, and the error then asked for that very file).
    @Test("kisgw demo: the app key and secret both or neither; KISGW_REDIS_PASSWORD_FILE read with KISGW_REDIS_URL")
    func demoVariables() throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("kisgw-demo-vars-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let demo = ["demo", "--port-base", "40100", "--data", scratch.path]
        let cases: [([String: String], Int32, String)] = [
            (["KISGW_DEMO_APP_KEY": "PSdemo"], 64, "KISGW_DEMO_APP_KEY is set without KISGW_DEMO_APP_SECRET: set both, or neither"),
            (["KISGW_DEMO_APP_SECRET": "s3cret"], 64, "KISGW_DEMO_APP_SECRET is set without KISGW_DEMO_APP_KEY: set both, or neither"),
            (["KISGW_DEMO_APP_KEY": "PSdemo", "KISGW_DEMO_APP_SECRET": ""], 64, "KISGW_DEMO_APP_SECRET is set but empty"),
            (["KISGW_REDIS_URL": "redis://app@127.0.0.1:1/0", "KISGW_REDIS_PASSWORD_FILE": "/nonexistent/kisgw-redis-pw"], 78,
             "KISGW_REDIS_PASSWORD_FILE: cannot read \"/nonexistent/kisgw-redis-pw\""),
            (["KISGW_REDIS_PASSWORD_FILE": "/nonexistent/kisgw-redis-pw"], 78,
             "KISGW_REDIS_PASSWORD_FILE set without KISGW_REDIS_URL: the demo uses Redis only when KISGW_REDIS_URL is set"),
        ]
        for (variables, expected, says) in cases {
            let (status, stderr) = try run(demo, env: variables)  // no other KISGW_* variable (kisgwProcess)
            #expect(status == expected, "\(variables): \(stderr)")
            #expect(stderr.contains(says), "\(variables): \(stderr)")
            #expect(!stderr.contains("s3cret"), "\(stderr)")
        }
    }

    @Test("a port in use, an address not on this machine, a SQLite path that is a folder or not a database, a demo data folder that is a file, a JWT sub no verifier accepts")
    func oneLineEach() throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("kisgw-startup-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch.appendingPathComponent("folder.sqlite"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        try Data("not a database, not at all".utf8).write(to: scratch.appendingPathComponent("text.sqlite"))
        try Data("x".utf8).write(to: scratch.appendingPathComponent("a-file"))
        // A port this test holds.
        let held = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(held) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(held, $0, length) == 0 && getsockname(held, $0, &length) == 0 }
        }
        #expect(bound && listen(held, 1) == 0)
        let heldPort = Int(UInt16(bigEndian: address.sin_port))
        let memory = ["KISGW_AUTH_JWT_HS256_SECRET": testSecret, "KISGW_STORE_BACKEND": "memory", "KISGW_REDIS_URL": ""]

        let cases: [([String], [String: String], String)] = [
            (["gateway"], memory.merging(["KISGW_SERVER_HOST": "127.0.0.1", "KISGW_SERVER_PORT": String(heldPort)]) { $1 },
             "kisgw: cannot listen on [server] 127.0.0.1:\(heldPort): the address is in use"),
            (["gateway"], memory.merging(["KISGW_SERVER_HOST": "192.0.2.1", "KISGW_SERVER_PORT": String(heldPort)]) { $1 },
             "kisgw: cannot listen on [server] 192.0.2.1:\(heldPort): no interface of this machine has that address"),
            (["broker"], memory.merging(["KISGW_BROKER_HOST": "127.0.0.1", "KISGW_BROKER_PORT": String(heldPort), "KISGW_SEAL_KEYS_K1": sealKey,
                                         "KISGW_BROKER_DATABASE": "sqlite:" + scratch.appendingPathComponent("folder.sqlite").path]) { $1 },
             "kisgw: [broker] database sqlite:\(scratch.path)/folder.sqlite: it cannot be opened or created"),
            (["broker"], memory.merging(["KISGW_BROKER_HOST": "127.0.0.1", "KISGW_BROKER_PORT": String(heldPort), "KISGW_SEAL_KEYS_K1": sealKey,
                                         "KISGW_BROKER_DATABASE": "sqlite:" + scratch.appendingPathComponent("text.sqlite").path]) { $1 },
             "kisgw: [broker] database sqlite:\(scratch.path)/text.sqlite: the file is not a SQLite database"),
            (["demo", "--port-base", "40000", "--data", scratch.appendingPathComponent("a-file").path], [:],
             "kisgw: --data \(scratch.path)/a-file: \(scratch.path)/a-file is a file, not a folder"),
            (["jwt", "--sub", "a\nb"], ["KISGW_AUTH_JWT_HS256_SECRET": testSecret],
             "--sub must not contain control characters"),
        ]
        for (arguments, env, says) in cases {
            let (status, stderr) = try run(arguments, env: env)
            // A usage error (the jwt verb's argument) is 64, EX_USAGE.
            #expect(status == (arguments[0] == "jwt" ? 64 : 1), "\(arguments): \(stderr)")
            #expect(stderr.contains(says), "\(arguments): \(stderr)")
            #expect(arguments[0] == "jwt" || !stderr.contains("Error:"), "\(stderr)")
            #expect(!stderr.contains("errno") && !stderr.contains("NSCocoaErrorDomain"), "\(stderr)")
        }
    }
}
