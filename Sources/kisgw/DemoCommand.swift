import ArgumentParser
import Broker
import Foundation
import Gateway
import KIS
import KisgwConfiguration
import Logging
import Observability
import ServerKit
import ServiceLifecycle
import Simulator
import Tokens
import Web

/// `kisgw demo`: the whole system in one process on embedded defaults.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run everything in one process: KIS simulators (live and sandbox), the broker on SQLite, the gateway, and the web UI.",
        discussion: """
            Prints the URL to open and a ready JWT; stops cleanly on Ctrl-C. The broker keeps its SQLite database \
            and the demo's generated secrets in the data folder. It runs on embedded defaults and reads no \
            gateway.toml. With KISGW_REDIS_URL set, the gateway and the broker share that Redis instead of the \
            in-process memory store (the other KISGW_REDIS_* variables apply with it). KISGW_DEMO_APP_KEY and \
            KISGW_DEMO_APP_SECRET, set together, make the simulators accept only that pair (any non-empty pair \
            otherwise).
            """
    )

    @Option(help: "First port: the gateway listens on it, the broker and UI on +80, the live simulator on +1443, the sandbox simulator on +21443. KISGW_DEMO_PORT_BASE sets the default.")
    var portBase: Int = Int(ProcessInfo.processInfo.environment["KISGW_DEMO_PORT_BASE"] ?? "") ?? 8000

    @Option(help: "Data folder (SQLite database and the demo's secrets). KISGW_DEMO_DATA sets the default.")
    var data: String = ProcessInfo.processInfo.environment["KISGW_DEMO_DATA"] ?? "data/demo"

    @Option(help: "Log level: trace … critical.") var logLevel: String = "notice"

    func validate() throws {
        let env = ProcessInfo.processInfo.environment
        if let text = env["KISGW_DEMO_PORT_BASE"], !text.isEmpty, Int(text) == nil {
            throw ValidationError("KISGW_DEMO_PORT_BASE must be a port number from 1024 to 44000, got \"\(text)\"")
        }
        guard (1024...44000).contains(portBase) else { throw ValidationError("--port-base must be from 1024 to 44000, got \(portBase)") }
        _ = try LoggingOptions.level(logLevel)
        try Self.demoCredentials(env)
    }

    /// The one app key and secret the simulators accept (KISGW_DEMO_APP_KEY and KISGW_DEMO_APP_SECRET), or nil: any
    /// non-empty pair. Both or neither, neither empty: one alone was ignored (any pair accepted, unlike what the
    /// variable says), and an empty secret made every account's connection fail (KIS's EGW00105).
    @discardableResult
    static func demoCredentials(_ env: [String: String]) throws -> [String: String]? {
        let key = env["KISGW_DEMO_APP_KEY"], secret = env["KISGW_DEMO_APP_SECRET"]
        for (name, value) in [("KISGW_DEMO_APP_KEY", key), ("KISGW_DEMO_APP_SECRET", secret)] where value?.isEmpty == true {
            throw ValidationError("\(name) is set but empty")
        }
        switch (key, secret) {
        case (nil, nil): return nil
        case (let key?, let secret?): return [key: secret]
        case (nil, _): throw ValidationError("KISGW_DEMO_APP_SECRET is set without KISGW_DEMO_APP_KEY: set both, or neither")
        case (_, nil): throw ValidationError("KISGW_DEMO_APP_KEY is set without KISGW_DEMO_APP_SECRET: set both, or neither")
        }
    }

    /// Secrets generated on the first run and kept (mode 0600) so the SQLite rows stay readable across runs.
    struct DemoSecrets: Codable {
        var jwtSecret: String
        var sealKeys: [String: String]
        var sealCurrent: String
    }

    /// Why the data folder cannot be used, for the one line start-up prints (not a usage error: the arguments were
    /// fine).
    struct DataError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    static func secrets(in folder: String) throws -> DemoSecrets {
        let url = URL(fileURLWithPath: folder).appendingPathComponent("demo-secrets.json")
        if let data = try? Data(contentsOf: url) {
            guard let s = try? JSONDecoder().decode(DemoSecrets.self, from: data) else {
                throw DataError("\(url.path) is not a demo secrets file; move it away to start afresh")
            }
            return s
        }
        func random(_ n: Int) -> String { Data((0..<n).map { _ in UInt8.random(in: 0...255) }).base64EncodedString() }
        let s = DemoSecrets(jwtSecret: random(48), sealKeys: ["k1": random(32)], sealCurrent: "k1")
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: folder, isDirectory: &isFolder), !isFolder.boolValue {
            throw DataError("\(folder) is a file, not a folder")
        }
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        } catch {
            throw DataError("the folder \(folder) cannot be created (\(FileSystemReason.of(error)))")
        }
        // Created with mode 0600 (and only if absent): never readable by others, not even for a moment.
        let bytes = try JSONEncoder().encode(s)
        if FileManager.default.fileExists(atPath: url.path) {
            throw DataError("\(url.path) exists but cannot be read; fix its permissions or move it away to start afresh")
        }
        let fd = open(url.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DataError("cannot create \(url.path): \(String(cString: strerror(errno)))") }
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let failure = errno
        close(fd)
        guard written == bytes.count else {
            unlink(url.path)  // no half-written secrets file for the next start to refuse
            throw DataError("cannot write \(url.path): \(String(cString: strerror(failure)))")
        }
        return s
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let secrets: DemoSecrets
        do { secrets = try Self.secrets(in: data) } catch let error as DataError {
            FileHandle.standardError.write(Data("kisgw: --data \(data): \(error)\n".utf8))
            throw ExitCode.failure
        }
        let gatewayPort = portBase, brokerPort = portBase + 80
        let livePort = portBase + 1443, sandboxPort = portBase + 21443
        let host = "127.0.0.1"
        let uiOrigins = ["http://127.0.0.1:\(brokerPort)", "http://localhost:\(brokerPort)"]
        var sealKeys: [String: SealKey] = [:]
        for (id, b64) in secrets.sealKeys {
            guard let bytes = Data(base64Encoded: b64), let key = SealKey(id: id, bytes: Array(bytes)) else {
                FileHandle.standardError.write(Data("kisgw: --data \(data): the demo secrets file holds a bad seal key \(id); move it away to start afresh\n".utf8))
                throw ExitCode.failure
            }
            sealKeys[id] = key
        }
        // `[redis]` from its variables (KISGW_REDIS_URL, _PASSWORD_FILE, _PREFIX, _POOL_SIZE, _TIMEOUT_MS), checked as
        // the other verbs check them (a bad value is one line naming the variable and why, exit 78), but with no file:
        // the demo runs on embedded defaults, whatever ./gateway.toml the directory holds.
        let redisVariables = env.filter { $0.key.hasPrefix("KISGW_REDIS_") && !$0.value.isEmpty }
        let redisURL = redisVariables["KISGW_REDIS_URL"]
        var redis = KisgwConfig.Redis()
        if redisURL == nil, !redisVariables.isEmpty {
            let names = redisVariables.keys.sorted().joined(separator: ", ")
            FileHandle.standardError.write(Data(
                "kisgw: \(names) set without KISGW_REDIS_URL: the demo uses Redis only when KISGW_REDIS_URL is set\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
        if redisURL != nil {
            do {
                redis = try KisgwConfig.load(environmentOnly: redisVariables).redis
                _ = try redis.resolvedURL()  // a password file it cannot read stops it here, naming the variable
            } catch {
                FileHandle.standardError.write(Data("kisgw: \(error)\n".utf8))
                throw ExitCode(78)  // EX_CONFIG
            }
        }
        let config = KisgwConfig(
            server: .init(host: host, port: gatewayPort),
            cors: .init(allowOrigins: uiOrigins.compactMap { OriginPattern($0) }, allowCredentials: true, maxAgeS: 600),
            auth: .init(jwt: .init(algorithms: [.hs256], hs256Secret: Secret(secrets.jwtSecret))),
            redis: redis,
            seal: .init(current: secrets.sealCurrent, keys: sealKeys),
            kis: .init(liveURL: "http://\(host):\(livePort)", sandboxURL: "http://\(host):\(sandboxPort)"),
            broker: .init(url: "http://\(host):\(brokerPort)", host: host, port: brokerPort,
                          database: .sqlite(path: URL(fileURLWithPath: data).appendingPathComponent("broker.sqlite").path)),
            log: .init(level: (try? LoggingOptions.level(logLevel)) ?? .notice, format: .text))
        let runtime = try Runtime(config: config, role: .demo, label: "kisgw.demo")
        let logger = runtime.logger

        let credentials = try Self.demoCredentials(env)
        try await StartupFailure.reported(
            listening: "\(host): the gateway on \(gatewayPort), the broker on \(brokerPort), the simulators on \(livePort) and \(sandboxPort) (--port-base)"
        ) {
            try await runtime.run {
                let live = try await buildSimulator(
                    SimulatorConfiguration(host: host, port: livePort, environment: .live, credentials: credentials),
                    logger: logger)
                let sandbox = try await buildSimulator(
                    SimulatorConfiguration(host: host, port: sandboxPort, environment: .sandbox, credentials: credentials),
                    logger: logger)
                let gateway = try await buildGateway(config, dependencies: runtime.gatewayDependencies, logger: logger)
                let gatewayURL = "http://\(host):\(gatewayPort)", maxRangeDays = config.limits.maxRangeDays
                let broker = try await buildBroker(
                    config,
                    dependencies: runtime.brokerDependencies(
                        demoMode: true, extraRoutes: { router in
                            addWebRoutes(to: router, gatewayURL: gatewayURL, demo: true, maxRangeDays: maxRangeDays)
                        }),
                    logger: logger)
                let jwt = try await JWTVerifier.mintHS256(secret: Array(secrets.jwtSecret.utf8), sub: "demo", ttl: 12 * 3600)
                let banner = """
                    kisgw demo — 한국투자증권 Open API gateway, everything in one process
                    UI: http://\(host):\(brokerPort)/
                    Gateway: http://\(host):\(gatewayPort)
                    Broker: http://\(host):\(brokerPort)/api/kis
                    Simulator: http://\(host):\(sandboxPort) (sandbox)
                    Simulator (live): http://\(host):\(livePort)
                    Store: \(redisURL == nil ? "memory" : "redis")
                    Data: \(data)
                    JWT: \(jwt)
                    Open the UI, connect with any app key and secret (sandbox), and draw a chart. Ctrl-C stops.

                    """
                FileHandle.standardOutput.write(Data(banner.utf8))
                return [live, sandbox, gateway, broker]
            }
        }
    }
}
