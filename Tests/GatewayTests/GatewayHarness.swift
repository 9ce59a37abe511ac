import AsyncHTTPClient
import Foundation
@testable import Gateway
import Hummingbird
import KIS
import KisgwConfiguration
import Logging
import Redis
import Observability
import NIOCore
import NIOHTTP1
import ServerKit
import Simulator
import Store
import TestSupport
import Testing
import Tokens

let testSecret = "gateway-test-secret-of-at-least-32-bytes"

/// A running simulator and gateway on loopback ports, sharing one store.
struct GatewayFixture: Sendable {
    let gatewayURL: String
    let simURL: String
    let store: any SharedStore
    let keyring: SealKeyring

    /// The gateway's port (of `gatewayURL`), for raw sockets.
    var gatewayPort: Int { Int(gatewayURL.split(separator: ":").last!)! }

    func jwt(_ sub: String, ttl: TimeInterval = 600) async throws -> String {
        try await JWTVerifier.mintHS256(secret: Array(testSecret.utf8), sub: sub, ttl: ttl)
    }

    /// Issues a KIS token at the simulator and publishes it for `user`, as the broker does — with the app secret
    /// `publishedSecret` if given (the one the token was issued with otherwise).
    func connect(user: String, appKey: String, environment: KISEnvironment = .live,
                 expiresIn: TimeInterval? = nil, publishedSecret: String? = nil) async throws -> String {
        let client = KISClient(baseURL: simURL, logger: Logger(label: "test"))
        let issued = try await client.issueToken(appKey: appKey, appSecret: "secret-" + appKey)
        try await TokenDirectory.publish(
            SealedCredentials(access_token: issued.accessToken, app_key: appKey,
                              app_secret: publishedSecret ?? "secret-" + appKey),
            userID: user, environment: environment, issuedAt: Date(),
            expiresAt: expiresIn.map { Date().addingTimeInterval($0) } ?? issued.expiresAt, store: store,
            keyring: keyring)
        return issued.accessToken
    }

    /// `user` connected with the app key `PSapp-<user>` (``connect(user:appKey:environment:expiresIn:)``), and a
    /// JWT for them.
    func signIn(_ user: String) async throws -> (jwt: String, kis: String) {
        let kis = try await connect(user: user, appKey: "PSapp-" + user)
        return (try await jwt(user), kis)
    }

    func get(_ path: String, jwt: String?, kis: String?, headers: [(String, String)] = [],
             base: String? = nil) async throws -> HTTPResult {
        var h = headers
        if let jwt { h.append(("Authorization", "Bearer " + jwt)) }
        if let kis { h.append(("X-KIS-Token", kis)) }
        return try await http(.GET, (base ?? gatewayURL) + path, headers: h)
    }

    func sim(_ method: HTTPMethod, _ path: String, _ json: String? = nil) async throws -> HTTPResult {
        try await http(method, simURL + path, headers: json == nil ? [] : [("content-type", "application/json")], body: json)
    }

    func simStats() async throws -> [String: Int] {
        (try await sim(.GET, "/__sim/stats").json["calls"] as? [String: Int]) ?? [:]
    }
}

extension HTTPResult {
    var candles: [[String: Any]] { json["candles"] as? [[String: Any]] ?? [] }
}

enum StoreKind: String, Sendable, CaseIterable { case memory, redis }

/// A store for one test: the memory store, or Redis (`url`, else KISGW_TEST_REDIS_URL) under a unique prefix.
func makeStore(_ kind: StoreKind, prefix: String = "t\(UInt32.random(in: 0...UInt32.max)):",
               url: String? = nil) throws -> (any SharedStore, RedisClient?) {
    switch kind {
    case .memory:
        return (MemoryStore(keyPrefix: prefix), nil)
    case .redis:
        let redisURL = try url ?? TestServices.requireRedisURL()
        // Generous timeouts: the whole suite runs in parallel on a small machine.
        var configuration = try RedisConfiguration(url: redisURL)
        configuration.commandTimeout = .seconds(3)
        configuration.connectTimeout = .seconds(3)
        let client = RedisClient(configuration: configuration, logger: Logger(label: "test-redis"))
        return (RedisStore(client: client, keyPrefix: prefix), client)
    }
}

/// The configuration a test gateway runs with; `tweak` adjusts it. `jwtIssuer` and `jwtAudience` are `[auth.jwt]`
/// `issuer` and `audience`.
func testConfig(simURL: String, origins: [String] = ["http://localhost:3000", "https://*.example.com"],
                upstreamTimeoutMs: Int = 3000, maxQueueMs: Int = 2000, liveRate: Double = 1000,
                sandboxRate: Double = 1, cache: KisgwConfig.Cache = KisgwConfig.Cache(),
                maxHeaderBytes: Int = 16_384, requestTimeoutMs: Int = 10_000,
                broker: KisgwConfig.Broker = KisgwConfig.Broker(), liveURL: String? = nil,
                jwtIssuer: String? = nil, jwtAudience: String? = nil, maxRangeDays: Int = 3660) -> KisgwConfig {
    KisgwConfig(
        server: .init(host: "127.0.0.1", port: 0, requestTimeoutMs: requestTimeoutMs, maxHeaderBytes: maxHeaderBytes),
        cors: .init(allowOrigins: origins.map { OriginPattern($0)! }, allowCredentials: true, maxAgeS: 600),
        auth: .init(jwt: .init(algorithms: [.hs256], hs256Secret: Secret(testSecret), issuer: jwtIssuer,
                               audience: jwtAudience)),
        kis: .init(liveURL: liveURL ?? simURL, sandboxURL: simURL, liveRatePerS: liveRate, sandboxRatePerS: sandboxRate),
        upstream: .init(timeoutMs: upstreamTimeoutMs, maxQueueMs: maxQueueMs, retries: 2),
        cache: cache,
        limits: .init(maxRangeDays: maxRangeDays),
        broker: broker)
}

/// Runs a simulator, then `gateways` gateways sharing one store (on `redisURL`, else KISGW_TEST_REDIS_URL, when
/// `kind` is Redis), for the duration of `body`. With `log`, the gateways
/// log to it (text, from `logLevel` up), through the executable's handler (secrets scrubbed).
func withGateway<T: Sendable>(
    store kind: StoreKind = .memory, redisURL: String? = nil,
    log: LogBuffer? = nil, logLevel: Logger.Level = .warning,
    sim simConfig: SimulatorConfiguration = SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000),
    gateways count: Int = 1,
    config: @escaping @Sendable (_ simURL: String) -> KisgwConfig = { testConfig(simURL: $0) },
    dependencies tweak: @Sendable (_ index: Int, _ deps: inout GatewayDependencies) -> Void = { _, _ in },
    _ body: @Sendable (GatewayFixture, [String]) async throws -> T
) async throws -> T {
    var logger = Logger(label: "gateway-test")
    logger.logLevel = .warning
    if let log {
        logger = Logger(label: "gateway-test") { label in
            LoggingSetup.makeHandler(label: label, level: logLevel, format: .text, output: log.output)
        }
    }
    let (store, redis) = try makeStore(kind, url: redisURL)
    let keyring = SealKeyring.ephemeral()
    let (simPorts, simCont) = AsyncStream.makeStream(of: Int.self)
    var simConfig = simConfig
    simConfig.port = 0
    let sim = TestServer(try await buildSimulator(simConfig, logger: logger) { simCont.yield($0) })
    return try await withThrowingTaskGroup(of: Void.self) { group in
        if let redis { group.addTask { await redis.run() } }
        group.addTask { try await sim.run() }
        var it = simPorts.makeAsyncIterator()
        let simURL = "http://127.0.0.1:\(await it.next()!)"
        let (ports, cont) = AsyncStream.makeStream(of: (Int, Int).self)
        var gateways: [TestServer] = []
        for index in 0..<count {
            var deps = GatewayDependencies(store: store, keyring: keyring, readiness: { nil })
            tweak(index, &deps)
            let gateway = TestServer(
                try await buildGateway(config(simURL), dependencies: deps, logger: logger) { cont.yield((index, $0)) })
            gateways.append(gateway)
            group.addTask { try await gateway.run() }
        }
        // In the order of `index` (the servers may start in any order).
        var urls = [String](repeating: "", count: count)
        var pit = ports.makeAsyncIterator()
        for _ in 0..<count {
            let (index, port) = await pit.next()!
            urls[index] = "http://127.0.0.1:\(port)"
        }
        let fixture = GatewayFixture(gatewayURL: urls[0], simURL: simURL, store: store, keyring: keyring)
        defer { group.cancelAll() }  // the Redis client
        return try await stopping(gateways + [sim]) { try await body(fixture, urls) }
    }
}

/// The cache key of the domestic chart at `path` (`/domestic/chart/daily/SYMBOL?start=…&end=…`).
func chartKey(domesticChart path: String) throws -> String {
    let url = try #require(URLComponents(string: path))
    let symbol = try #require(url.path.split(separator: "/").last)
    var query: [String: Substring] = [:]
    for item in url.queryItems ?? [] { query[item.name] = Substring(item.value ?? "") }
    return try ChartQuery.domestic(symbol: symbol, query: query, maxRangeDays: 3660, now: Date()).cacheKey
}

/// When the store's copy of the domestic chart at `path` was stored (Unix seconds), or nil when the store has none.
func storedAt(_ store: any SharedStore, domesticChart path: String) async throws -> Int64? {
    try await store.get("cache:" + chartKey(domesticChart: path)).flatMap { ChartEntry.decode($0) }?.storedAt
}

/// Puts a copy of the domestic chart at `path` in the store, as a gateway that fetched it now would, fresh for
/// `freshFor` seconds (its body: `body`).
func storeCopy(_ store: any SharedStore, domesticChart path: String, body: String, freshFor: Int64) async throws {
    let now = Int64(Date().timeIntervalSince1970)
    let entry = ChartEntry(body: ByteBuffer(string: body), storedAt: now, freshUntil: now + freshFor)
    try await store.set("cache:" + chartKey(domesticChart: path), to: entry.encoded(), ttl: .seconds(freshFor + 60))
}

/// Has gateway 0 (`urls[0]`) fetch the domestic chart at `path` (a MISS) and gateway 1 answer it from the store (a
/// HIT, so that both L1s hold that copy); returns when the store's copy was stored (Unix seconds).
func fetchedByOneHeldByBoth(_ g: GatewayFixture, _ urls: [String], _ path: String, jwt: String, kis: String)
    async throws -> Int64
{
    #expect(try await g.get(path, jwt: jwt, kis: kis, base: urls[0]).header("X-Cache") == "MISS")
    try await waitUntilShared(g.store, domesticChart: path)
    #expect(try await g.get(path, jwt: jwt, kis: kis, base: urls[1]).header("X-Cache") == "HIT")
    return try #require(try await storedAt(g.store, domesticChart: path))
}

/// Whether the store comes to hold a copy of the domestic chart at `path` stored after `since` (Unix seconds).
func storedAfter(_ since: Int64, _ store: any SharedStore, domesticChart path: String) async throws -> Bool {
    try await eventually(timeout: .seconds(10)) {
        try await storedAt(store, domesticChart: path).map { $0 > since } ?? false
    }
}

/// Waits until the gateway that fetched the domestic chart at `path` (`/domestic/chart/daily/SYMBOL?start=…&end=…`)
/// has shared it with the fleet: it stores the entry and releases its fleet lock after it has answered, so a
/// request to another gateway right after the answer may still find the lock held and wait for the fill.
func waitUntilShared(_ store: any SharedStore, domesticChart path: String) async throws {
    let key = try chartKey(domesticChart: path)
    for _ in 0..<200 {
        if try await store.timeToLive("lock:chart:" + key) == .missing, try await store.get("cache:" + key) != nil {
            return
        }
        try await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("the chart at \(path) was never shared")
}

/// The `kisgw gateway` process of a test.
struct GatewayProcess: Sendable {
    let process: Process
    let port: Int
    /// Where the process's standard error goes (for failure messages).
    let stderrFile: URL

    var stderr: String { (try? String(contentsOf: stderrFile, encoding: .utf8)) ?? "" }
    var accepts: Bool { RedisServerProcess.accepts(port: port) }

    /// How the process ended, for failure messages.
    var ending: String {
        guard !process.isRunning else { return "still running" }
        let reason = process.terminationReason == .exit ? "exit" : "signal"
        return "\(reason) \(process.terminationStatus); stderr: \(stderr.suffix(2000))"
    }
}

/// Runs the kisgw executable as a gateway over real Redis (`redis`, else KISGW_TEST_REDIS_URL; a prefix of its own;
/// `env` added to its environment, the variables in `without` removed from it) and an in-process simulator that
/// answers after `latencyMs`, for the duration of `body`; a process still running afterwards is killed. The
/// fixture's store is on `redis` too.
func withGatewayProcess(
    latencyMs: Int = 0, redis redisOverride: String? = nil, env extra: [String: String] = [:], without: Set<String> = [],
    _ body: @Sendable (GatewayFixture, GatewayProcess) async throws -> Void
) async throws {
    let binary = try #require(kisgwBinary(), "the kisgw executable (build it, or set KISGW_TEST_BINARY)")
    let redis = try redisOverride ?? TestServices.requireRedisURL()
    var logger = Logger(label: "gateway-process")
    logger.logLevel = .critical
    let (simPorts, simCont) = AsyncStream.makeStream(of: Int.self)
    let sim = TestServer(try await buildSimulator(
        SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000, latencyMs: latencyMs),
        logger: logger
    ) { simCont.yield($0) })
    let (store, client) = try makeStore(.redis, prefix: "ops\(UInt32.random(in: 0...UInt32.max)):", url: redis)
    let keyBytes = (0..<32).map { _ in UInt8.random(in: 0...255) }
    let keyring = try SealKeyring(current: "k1", keys: ["k1": keyBytes])
    let stderrFile = FileManager.default.temporaryDirectory.appendingPathComponent("kisgw-ops-\(UUID().uuidString).stderr")
    defer { try? FileManager.default.removeItem(at: stderrFile) }
    try await withThrowingTaskGroup(of: Void.self) { group in
        if let client { group.addTask { await client.run() } }
        group.addTask { try await sim.run() }
        var sit = simPorts.makeAsyncIterator()
        let simURL = "http://127.0.0.1:\(await sit.next()!)"
        let port = try RedisServerProcess.freePort()
        let process = kisgwProcess(binary, "gateway")
        var env = process.environment ?? [:]
        env["KISGW_SERVER_HOST"] = "127.0.0.1"
        env["KISGW_SERVER_PORT"] = String(port)
        env["KISGW_REDIS_URL"] = redis
        env["KISGW_REDIS_PREFIX"] = store.keyPrefix
        env["KISGW_AUTH_JWT_HS256_SECRET"] = testSecret
        env["KISGW_SEAL_KEYS_K1"] = Data(keyBytes).base64EncodedString()
        env["KISGW_KIS_LIVE_URL"] = simURL
        env["KISGW_KIS_LIVE_RATE_PER_S"] = "1000"
        env["KISGW_LOG_LEVEL"] = "warning"
        env.merge(extra) { _, new in new }
        for name in without { env.removeValue(forKey: name) }
        process.environment = env
        try process.run(stderrTo: stderrFile)
        defer { process.killIfRunning() }
        let p = GatewayProcess(process: process, port: port, stderrFile: stderrFile)
        try #require(await eventually(timeout: .seconds(10)) { p.accepts }, "the gateway did not start: \(p.ending)")
        let g = GatewayFixture(gatewayURL: "http://127.0.0.1:\(port)", simURL: simURL, store: store, keyring: keyring)
        defer { group.cancelAll() }  // the Redis client
        try await stopping([sim]) { try await body(g, p) }
    }
}
