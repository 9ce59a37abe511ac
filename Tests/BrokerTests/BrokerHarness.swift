import AsyncHTTPClient
import Broker
import Foundation
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
import Synchronization
import Testing
import Tokens
import TestSupport

let testSecret = "broker-test-secret-of-at-least-32-bytes!"

var quietLogger: Logger {
    var logger = Logger(label: "broker-test")
    logger.logLevel = .warning
    return logger
}

/// Every case runs every time: without `KISGW_TEST_REDIS_URL` the Redis ones fail, naming it.
enum StoreKind: String, Sendable, CaseIterable, CustomTestStringConvertible {
    case memory, redis
    var testDescription: String { rawValue }
}

/// Every case runs every time: without `KISGW_TEST_POSTGRES_URL` the PostgreSQL ones fail, naming it.
enum DatabaseKind: String, Sendable, CaseIterable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A store for one test: the memory store, or Redis (`url`, else KISGW_TEST_REDIS_URL) under a unique prefix
/// (database `db`).
func makeStore(_ kind: StoreKind, db: Int? = nil, url: String? = nil) throws -> (any SharedStore, RedisClient?) {
    let prefix = "b\(UInt32.random(in: 0...UInt32.max)):"
    switch kind {
    case .memory:
        return (MemoryStore(keyPrefix: prefix), nil)
    case .redis:
        var url = try url ?? TestServices.requireRedisURL()
        if let db, let slash = url.lastIndex(of: "/"), url[url.index(after: slash)...].allSatisfy(\.isNumber) {
            url = String(url[..<slash]) + "/\(db)"
        }
        var configuration = try RedisConfiguration(url: url)
        // Generous: the whole suite shares two cores; these tests are about behaviour, not latency.
        configuration.commandTimeout = .seconds(2)
        configuration.connectTimeout = .seconds(5)
        let client = RedisClient(configuration: configuration, logger: quietLogger)
        return (RedisStore(client: client, keyPrefix: prefix), client)
    }
}

/// Where a test's database lives: an SQLite file in a fresh folder, or a fresh PostgreSQL database.
struct TestDatabase: Sendable {
    let kind: DatabaseKind
    /// The SQLite file, or the PostgreSQL URL.
    let location: String

    /// - Parameter owner: PostgreSQL only: a login role (created if missing) that owns the database, with the
    ///   password `password` (`nil`: none set), and whom the location names; else the administrator.
    static func make(_ kind: DatabaseKind, owner: String? = nil, password: String? = nil) async throws -> TestDatabase {
        switch kind {
        case .sqlite:
            return TestDatabase(kind: .sqlite, location: Scratch.directory("broker") + "/data/broker.sqlite")
        case .postgres:
            let postgresURL = try TestServices.requirePostgresURL()
            let name = "kisgw_t\(UInt32.random(in: 0...UInt32.max))"
            try await withAdmin { admin in
                if let owner {
                    try await admin.query(
                        "DO $$ BEGIN CREATE ROLE \(unescaped: owner) LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
                    if let password { try await admin.query("ALTER ROLE \(unescaped: owner) PASSWORD '\(unescaped: password)'") }
                    try await admin.query("CREATE DATABASE \(unescaped: name) OWNER \(unescaped: owner)")
                } else {
                    try await admin.query("CREATE DATABASE \(unescaped: name)")
                }
            }
            var c = URLComponents(string: postgresURL)!
            c.path = "/" + name
            if let owner { c.user = owner }
            return TestDatabase(kind: .postgres, location: c.string!)
        }
    }

    /// Runs `body` with a client of the test cluster's administrator.
    static func withAdmin(_ body: @Sendable (PostgresClient) async throws -> Void) async throws {
        let postgresURL = try TestServices.requirePostgresURL()
        let admin = PostgresClient(configuration: try PostgresRepository.configuration(url: postgresURL))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await admin.run() }
            defer { group.cancelAll() }
            try await body(admin)
        }
    }

    /// A new repository on this database (several may share it, like several broker copies).
    func repository() throws -> any BrokerRepository {
        switch kind {
        case .sqlite: try SQLiteRepository(path: location)
        case .postgres: try PostgresRepository(url: location, logger: quietLogger)
        }
    }

    var config: BrokerDatabase {
        switch kind {
        case .sqlite: .sqlite(path: location)
        case .postgres: .postgres(url: Secret(location), password: nil)
        }
    }
}

/// Runs `body` with a migrated repository (running its client if it needs one).
func withRepository<T: Sendable>(
    _ db: TestDatabase, _ body: @Sendable (any BrokerRepository) async throws -> T
) async throws -> T {
    let repository = try db.repository()
    return try await withThrowingTaskGroup(of: Void.self) { group in
        if let pg = repository as? PostgresRepository { group.addTask { try await pg.run() } }
        defer { group.cancelAll() }
        try await repository.migrate()
        return try await body(repository)
    }
}

/// A wall clock that tests move forward together with the simulator's token clock.
final class TestClock: Sendable {
    private let offset = Mutex<TimeInterval>(0)
    func now() -> Date { Date().addingTimeInterval(offset.withLock { $0 }) }
    func advance(_ seconds: TimeInterval) { offset.withLock { $0 += seconds } }
}

/// One running broker of a fixture.
struct RunningBroker: Sendable {
    let url: String
    let registry: PrometheusCollectorRegistry
    let holdsLease: Flag
    let server: TestServer
    /// Runs `server`; a test cancels it to have the broker die (`withBroker` stops every server at the end).
    let task: Task<Void, any Error>
}

/// A flag another task sets.
final class Flag: Sendable {
    let value = Atomic<Bool>(false)
    var current: Bool { value.load(ordering: .relaxed) }
}

/// A simulator, a store and one or more brokers sharing a database.
struct BrokerFixture: Sendable {
    let brokers: [RunningBroker]
    let simURL: String
    let store: any SharedStore
    let redis: RedisClient?
    let keyring: SealKeyring
    let database: TestDatabase
    let clock: TestClock
    let config: KisgwConfig

    var url: String { brokers[0].url }

    func jwt(_ sub: String, ttl: TimeInterval = 600) async throws -> String {
        try await JWTVerifier.mintHS256(secret: Array(testSecret.utf8), sub: sub, ttl: ttl, now: clock.now())
    }

    func post(_ path: String, _ json: [String: Any], jwt: String?, base: String? = nil) async throws -> HTTPResult {
        var headers = [("content-type", "application/json")]
        if let jwt { headers.append(("Authorization", "Bearer " + jwt)) }
        let body = String(decoding: try JSONSerialization.data(withJSONObject: json), as: UTF8.self)
        return try await http(.POST, (base ?? url) + path, headers: headers, body: body)
    }

    func get(_ path: String, jwt: String?, base: String? = nil) async throws -> HTTPResult {
        try await http(.GET, (base ?? url) + path, headers: jwt.map { [("Authorization", "Bearer " + $0)] } ?? [])
    }

    func delete(_ path: String, jwt: String?) async throws -> HTTPResult {
        try await http(.DELETE, url + path, headers: jwt.map { [("Authorization", "Bearer " + $0)] } ?? [])
    }

    func sim(_ method: HTTPMethod, _ path: String, _ json: String? = nil) async throws -> HTTPResult {
        try await http(method, simURL + path, headers: json == nil ? [] : [("content-type", "application/json")], body: json)
    }

    /// Tokens KIS has handed out (`/__sim/stats` `issuances`).
    func issuances() async throws -> Int { try await sim(.GET, "/__sim/stats").json["issuances"] as? Int ?? -1 }
    /// The tokens the simulator holds valid (neither revoked nor expired).
    func liveTokensAtKIS() async throws -> Int { try await sim(.GET, "/__sim/stats").json["live_tokens"] as? Int ?? -1 }
    func simCalls(_ name: String) async throws -> Int {
        ((try await sim(.GET, "/__sim/stats").json["calls"] as? [String: Int]) ?? [:])[name] ?? 0
    }

    /// Moves the simulator's token clock and the brokers' clock forward together.
    func advanceClocks(_ seconds: Int) async throws {
        _ = try await sim(.POST, "/__sim/clock", #"{"advance_s": \#(seconds)}"#)
        clock.advance(TimeInterval(seconds))
    }

    /// Runs another broker on this fixture's store and database with `extraRoutes` (as `kisgw broker` adds the web
    /// UI's) and `logger`, for `body`, which gets its base URL.
    func withBroker(extraRoutes: @escaping @Sendable (Router<BasicRequestContext>) -> Void = { _ in },
                    logger: Logger = quietLogger, _ body: (_ url: String) async throws -> Void) async throws {
        let deps = BrokerDependencies(store: store, keyring: keyring, repository: try database.repository(),
                                      extraRoutes: extraRoutes)
        try await withBroker(dependencies: deps, logger: logger, body)
    }

    /// Runs another broker with this fixture's configuration on `dependencies` (a repository or store that fails on
    /// demand, say) for `body`, which gets its base URL.
    func withBroker(dependencies: BrokerDependencies, logger: Logger = quietLogger,
                    _ body: (_ url: String) async throws -> Void) async throws {
        let (ports, cont) = AsyncStream.makeStream(of: Int.self)
        let broker = TestServer(try await buildBroker(config, dependencies: dependencies, logger: logger) { cont.yield($0) })
        Task { try await broker.run() }
        var it = ports.makeAsyncIterator()
        let url = "http://127.0.0.1:\(await it.next()!)"
        try await stopping([broker]) { try await body(url) }
    }

    /// ``withBroker(dependencies:logger:_:)`` on this fixture's store, keyring and clock, with a repository over its
    /// database that fails on demand; `body` gets the repository and the broker's base URL.
    func withSwitchableBroker(_ body: (_ repository: SwitchableRepository, _ url: String) async throws -> Void)
        async throws
    {
        let repository = SwitchableRepository(try database.repository())
        let clock = self.clock
        let deps = BrokerDependencies(store: store, keyring: keyring, repository: repository, clock: { clock.now() })
        try await withBroker(dependencies: deps) { url in try await body(repository, url) }
    }

    /// A gateway seeing KIS refuse `token`, a SANDBOX token of `user`'s: KIS ended it (unless `endedAtKIS` is false:
    /// a refusal KIS does not hold to) and the gateway marks it dead with `code`.
    func kisRefused(_ token: String, user: String = "u1", code: String = "EGW00123", endedAtKIS: Bool = true) async throws {
        if endedAtKIS { _ = try await sim(.POST, "/__sim/expire", #"{"access_token": "\#(token)"}"#) }
        try await TokenDirectory.markDead(sha256: TokenDirectory.sha256(of: token), msgCode: code, userID: user,
                                          environment: .sandbox, store: store)
    }

    func published(_ token: String) async throws -> PublishedToken? {
        try await TokenDirectory.resolve(token: token, store: store, keyring: keyring)
    }
}

func accountBody(_ appKey: String, secret: String? = nil, number: String = "12345678-01", env: String = "SANDBOX")
    -> [String: Any]
{
    ["appKey": appKey, "appSecret": secret ?? "secret-" + appKey, "accountNumber": number, "environment": env]
}

/// An app key in KIS's shape (36 characters).
func appKey(_ tag: String) -> String {
    let base = "PS" + tag + String(repeating: "x", count: 36)
    return String(base.prefix(32)) + "wxyz"
}

/// ``testConfig(simURL:database:refreshIntervalS:refreshAheadS:reuseWindowS:reconcileIntervalS:upstreamTimeoutMs:jwtIssuer:jwtAudience:)``
/// with the scheduler and the reconciler an hour apart: a test that moves the clocks decides every issuance itself.
@Sendable func quietSchedulerConfig(simURL: String, database: BrokerDatabase) -> KisgwConfig {
    testConfig(simURL: simURL, database: database, refreshIntervalS: 3600, reconcileIntervalS: 3600)
}

/// `jwtIssuer` and `jwtAudience` are `[auth.jwt]` `issuer` and `audience`.
func testConfig(simURL: String, database: BrokerDatabase, refreshIntervalS: Int = 60, refreshAheadS: Int = 3600,
                reuseWindowS: Int = 21600, reconcileIntervalS: Int = 60, upstreamTimeoutMs: Int = 3000,
                jwtIssuer: String? = nil, jwtAudience: String? = nil) -> KisgwConfig
{
    KisgwConfig(
        cors: .init(allowOrigins: [OriginPattern("http://localhost:3000")!], allowCredentials: true, maxAgeS: 600),
        auth: .init(jwt: .init(algorithms: [.hs256], hs256Secret: Secret(testSecret), issuer: jwtIssuer,
                               audience: jwtAudience)),
        kis: .init(liveURL: simURL, sandboxURL: simURL),
        upstream: .init(timeoutMs: upstreamTimeoutMs, maxQueueMs: 2000, retries: 0),
        broker: .init(host: "127.0.0.1", port: 0, database: database, refreshIntervalS: refreshIntervalS,
                      refreshAheadS: refreshAheadS, reuseWindowS: reuseWindowS, reconcileIntervalS: reconcileIntervalS))
}

/// Runs a simulator, a store, and `count` brokers on one database, for the duration of `body`.
func withBroker<T: Sendable>(
    store kind: StoreKind = .memory,
    database dbKind: DatabaseKind = .sqlite,
    redisDB: Int? = nil,
    sim simConfig: SimulatorConfiguration = SimulatorConfiguration(port: 0, environment: .sandbox),
    brokers count: Int = 1,
    demoMode: Bool = false,
    keyring: SealKeyring = .ephemeral(),
    existingDatabase: TestDatabase? = nil,
    config makeConfig: @escaping @Sendable (_ simURL: String, _ db: BrokerDatabase) -> KisgwConfig = {
        testConfig(simURL: $0, database: $1)
    },
    _ body: @Sendable (BrokerFixture) async throws -> T
) async throws -> T {
    let logger = quietLogger
    let (store, redis) = try makeStore(kind, db: redisDB)
    let database: TestDatabase
    if let existingDatabase { database = existingDatabase } else { database = try await TestDatabase.make(dbKind) }
    let clock = TestClock()
    let (simPorts, simCont) = AsyncStream.makeStream(of: Int.self)
    var simConfig = simConfig
    simConfig.port = 0
    let sim = TestServer(try await buildSimulator(simConfig, logger: logger) { simCont.yield($0) })
    return try await withThrowingTaskGroup(of: Void.self) { group in
        if let redis { group.addTask { await redis.run() } }
        group.addTask { try await sim.run() }
        var it = simPorts.makeAsyncIterator()
        let simURL = "http://127.0.0.1:\(await it.next()!)"
        let config = makeConfig(simURL, database.config)
        var brokers: [RunningBroker] = []
        for _ in 0..<count {
            let (ports, cont) = AsyncStream.makeStream(of: Int.self)
            let registry = PrometheusCollectorRegistry()
            let lease = Flag()
            var deps = BrokerDependencies(
                store: store, keyring: keyring, metricsRegistry: registry, demoMode: demoMode,
                repository: try database.repository(), clock: { clock.now() })
            deps.onLeaseChange = { lease.value.store($0, ordering: .relaxed) }
            let server = TestServer(try await buildBroker(config, dependencies: deps, logger: logger) { cont.yield($0) })
            let task = Task { try await server.run() }
            var pit = ports.makeAsyncIterator()
            guard let port = await pit.next() else { throw TestFailure("the broker did not start") }
            brokers.append(RunningBroker(url: "http://127.0.0.1:\(port)", registry: registry, holdsLease: lease,
                                         server: server, task: task))
        }
        let fixture = BrokerFixture(brokers: brokers, simURL: simURL, store: store, redis: redis, keyring: keyring,
                                    database: database, clock: clock, config: config)
        defer {
            group.cancelAll()  // the Redis client
            if database.kind == .sqlite && existingDatabase == nil {
                try? FileManager.default.removeItem(
                    atPath: URL(fileURLWithPath: database.location).deletingLastPathComponent().deletingLastPathComponent().path)
            }
        }
        return try await stopping(brokers.map(\.server) + [sim]) { try await body(fixture) }
    }
}

/// `TestSupport.startStandInKIS` with the broker tests' quiet logger.
func startStandInKIS(_ router: Router<BasicRequestContext>) async -> (url: String, server: TestServer) {
    await TestSupport.startStandInKIS(router, logger: quietLogger)
}

/// Every log record from every logger made with it: its message, and a line with its level, metadata and error.
struct LogCapture: LogHandler {
    private final class Records: Sendable {
        let value = Mutex<[(message: String, line: String)]>([])
    }

    private let records = Records()
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { _, new in new }
        let line = "\(event.level) \(event.message) \(all) \(event.error.map { "\($0)" } ?? "")"
        records.value.withLock { $0.append((event.message.description, line)) }
    }

    var lines: [String] { records.value.withLock { $0.map(\.line) } }

    /// How many records had `message`.
    func count(_ message: String) -> Int { records.value.withLock { $0.filter { $0.message == message }.count } }
}
