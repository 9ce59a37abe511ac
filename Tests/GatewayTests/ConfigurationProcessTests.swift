import Foundation
import Logging
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
    _ = FileManager.default.createFile(atPath: stderrFile.path, contents: nil)
    let stderrHandle = try FileHandle(forWritingTo: stderrFile)
    process.standardError = stderrHandle
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    try? stderrHandle.close()  // the child has its own
    return GatewayProcess(process: process, port: port, stderrFile: stderrFile)
}

extension GatewayProcess {
    /// Kills the process (SIGKILL: one that hangs must not outlive the test) and removes its stderr file.
    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: stderrFile)
    }

    /// Waits until it accepts connections, or has exited.
    func started() async -> Bool {
        _ = await eventually(.seconds(20)) { accepts || !process.isRunning }
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
}
