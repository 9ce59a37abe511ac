import CoreMetrics
public import Foundation
public import Hummingbird
import HTTPTypes
public import KIS
public import KisgwConfiguration
public import Logging
import NIOCore
import Observability
public import Prometheus
import ServerKit
import ServiceLifecycle
public import Store
import Synchronization
public import Tokens

/// What `buildBroker` needs besides the configuration.
public struct BrokerDependencies: Sendable {
    /// The store shared with the gateways, where tokens are published.
    public var store: any SharedStore
    /// The seal keys: they seal the database's secret columns and the published records.
    public var keyring: SealKeyring
    /// The HTTP clients for KIS, one per event loop.
    public var http: KISHTTPClients
    /// Where `/metrics` reads from; the broker's own series are created in it. nil: the global `MetricsSystem`
    /// and an empty `/metrics`.
    public var metricsRegistry: PrometheusCollectorRegistry?
    /// `kisgw demo` only: adds `POST /api/dev/signin`, which mints a JWT for any user id.
    public var demoMode: Bool
    /// The database; nil: opened from `[broker] database`. A repository that is a `Service` (PostgreSQL) is run
    /// by the application.
    public var repository: (any BrokerRepository)?
    /// More routes on the same router (the web UI at `/` and `/ui/*`); they get the CORS and access middleware.
    public var extraRoutes: (@Sendable (Router<BasicRequestContext>) -> Void)?
    /// The broker's wall clock (tests move it together with the simulator's token clock).
    public var clock: @Sendable () -> Date
    /// Told when this copy takes (true) or loses (false) the scheduler lease.
    package var onLeaseChange: (@Sendable (Bool) -> Void)?

    public init(
        store: any SharedStore, keyring: SealKeyring, http: KISHTTPClients = .shared,
        metricsRegistry: PrometheusCollectorRegistry? = nil, demoMode: Bool = false,
        repository: (any BrokerRepository)? = nil,
        extraRoutes: (@Sendable (Router<BasicRequestContext>) -> Void)? = nil,
        clock: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.store = store
        self.keyring = keyring
        self.http = http
        self.metricsRegistry = metricsRegistry
        self.demoMode = demoMode
        self.repository = repository
        self.extraRoutes = extraRoutes
        self.clock = clock
    }
}

/// Opens the database `[broker] database` names: an SQLite file (created with its folders) or PostgreSQL.
public func makeBrokerRepository(_ database: BrokerDatabase, logger: Logger) throws -> any BrokerRepository {
    switch database {
    case .sqlite(let path): try SQLiteRepository(path: path)
    case .postgres(let url, let password): try PostgresRepository(url: url.value, password: password?.value, logger: logger)
    }
}

/// The token broker (broker-api.md) as a Hummingbird application, with its scheduler and reconciler as services.
///
/// Before the server accepts requests the database is migrated, rows sealed with an old seal key are
/// re-encrypted with the current one, and accounts stored without an app key fingerprint get one.
///
/// ```swift
/// let deps = BrokerDependencies(store: store, keyring: keyring, metricsRegistry: registry)
/// let app = try await buildBroker(config, dependencies: deps, logger: logger)
/// try await app.runService()
/// ```
public func buildBroker(
    _ config: KisgwConfig, dependencies: BrokerDependencies, logger: Logger,
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) async throws -> some ApplicationProtocol {
    let repository = try dependencies.repository ?? makeBrokerRepository(config.broker.resolvedDatabase(), logger: logger)
    let core = try await BrokerCore(config: config, dependencies: dependencies, repository: repository, logger: logger)
    // HEAD wherever GET is (RFC 9110 §9.3.2), as the gateway: the GET route's headers without its body.
    let router = Router(context: BasicRequestContext.self, options: .autoGenerateHeadEndpoints)
    let demo = dependencies.demoMode
    // A 405 and a preflight (answered by CORS before routing) are counted under the route of their path, as the
    // gateway counts them; `unmatched` is for paths no route has.
    router.add(middleware: AccessMiddleware(
        recorder: core.recorder, routeOfPath: { BrokerCore.allowedMethods($0, demo: demo) == nil ? nil : $0 }))
    router.add(middleware: CORSMiddleware(
        cors: config.cors, renderer: ProblemRenderer(allowedMethods: { BrokerCore.allowedMethods($0, demo: demo) }),
        allowMethods: CORSHeaderValues.brokerMethods))
    // The demo mints JWTs for anyone: only pages of the loopback names may reach it (no DNS rebinding).
    if demo { router.add(middleware: LoopbackHostMiddleware()) }
    core.addRoutes(to: router)
    dependencies.extraRoutes?(router)

    var services: [any Service] = []
    if let service = repository as? any Service { services.append(service) }
    services.append(core.scheduler)
    var app = Application(
        router: router,
        // Idle connections, and ones sending a request head a byte at a time, are closed after 60 s.
        server: .closingHTTP1(idleTimeout: .seconds(60)),
        configuration: .init(address: .hostname(config.broker.host, port: config.broker.port), serverName: nil),
        services: services,
        onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? 0) },
        logger: logger
    )
    let keeper = core.keeper
    let started = core.started
    app.beforeServerStarts {
        // A SIGTERM while the database is not there yet ends the wait (the task is cancelled) rather than after it.
        try await cancelWhenGracefulShutdown { try await repository.migrate() }
        try await keeper.vault.resealStaleRows(in: repository, logger: logger)
        try await keeper.vault.fillAppKeyFingerprints(in: repository, logger: logger)
        started.open()
    }
    return app
}

/// A one-way gate: closed until start-up work is done.
final class Gate: Sendable {
    private let isOpen = Atomic<Bool>(false)
    func open() { isOpen.store(true, ordering: .releasing) }
    func wait() async throws {
        while !isOpen.load(ordering: .acquiring) { try await Task.sleep(for: .milliseconds(20)) }
    }
}

/// The scheduler, waiting for the database to be migrated first.
struct GatedService: Service {
    let gate: Gate
    let service: BrokerScheduler
    func run() async throws {
        do { try await gate.wait() } catch { return }
        try await service.run()
    }
}

/// Route handlers and what they share.
struct BrokerCore: Sendable {
    let config: KisgwConfig
    let dependencies: BrokerDependencies
    let verifier: JWTVerifier
    let keeper: TokenKeeper
    let recorder: RequestRecorder
    let scheduler: GatedService
    let started = Gate()
    let logger: Logger

    init(config: KisgwConfig, dependencies: BrokerDependencies, repository: any BrokerRepository, logger: Logger)
        async throws
    {
        self.config = config
        self.dependencies = dependencies
        self.logger = logger
        self.verifier = try await JWTVerifier(settings: .init(config: config.auth.jwt))
        let timeout = config.upstream.timeout
        let clients: [KISEnvironment: KISClient] = [
            .live: KISClient(baseURL: config.kis.liveURL, http: dependencies.http, timeout: timeout,
                             logger: logger),
            .sandbox: KISClient(baseURL: config.kis.sandboxURL, http: dependencies.http, timeout: timeout,
                                logger: logger),
        ]
        let factory = MetricsSetup.factory(for: dependencies.metricsRegistry)
        self.recorder = RequestRecorder(logger: logger, factory: factory)
        let b = config.broker
        let settings = KeeperSettings(
            refreshAhead: Int64(b.refreshAheadS), reuseWindow: Int64(b.reuseWindowS),
            refreshInterval: Int64(b.refreshIntervalS), lockTTL: timeout + .seconds(10), lockWait: timeout + .seconds(5))
        self.keeper = TokenKeeper(
            repository: repository, store: dependencies.store, keyring: dependencies.keyring, clients: clients,
            settings: settings, metrics: BrokerMetrics(factory: factory), logger: logger, clock: dependencies.clock)
        self.scheduler = GatedService(
            gate: started,
            service: BrokerScheduler(keeper: keeper, refreshIntervalS: b.refreshIntervalS,
                                     reconcileIntervalS: b.reconcileIntervalS, logger: logger,
                                     onLeaseChange: dependencies.onLeaseChange))
    }

    /// The methods a path allows, when it is one of the broker's (for 405 answers).
    static func allowedMethods(_ path: String, demo: Bool) -> String? {
        switch path {
        case "/api/kis/account/validate", "/api/kis/token", "/api/kis/token/refresh": "POST, OPTIONS"
        case "/api/kis/account": "GET, HEAD, DELETE, OPTIONS"
        case "/api/dev/signin" where demo: "POST, OPTIONS"
        case "/healthz", "/readyz", "/metrics": "GET, HEAD"
        default: nil
        }
    }

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.post("/api/kis/account/validate") { request, _ in try await self.validate(request) }
        router.post("/api/kis/token") { request, _ in try await self.token(request) }
        router.post("/api/kis/token/refresh") { request, _ in try await self.refresh(request) }
        router.get("/api/kis/account") { request, _ in try await self.getAccount(request) }
        router.delete("/api/kis/account") { request, _ in try await self.deleteAccount(request) }
        if dependencies.demoMode {
            router.post("/api/dev/signin") { request, _ in try await self.signIn(request) }
        }
        router.get("/healthz") { _, _ in Self.json(["status": "ok"]) }
        router.get("/readyz") { _, _ in
            if let reason = await self.unreadiness() {
                return Self.json(["status": "unavailable", "detail": reason], status: .serviceUnavailable)
            }
            return Self.json(["status": "ready"])
        }
        router.get("/metrics") { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = MetricsSetup.contentType
            let text = self.dependencies.metricsRegistry.map { MetricsSetup.render($0) } ?? ""
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
        }
    }

    // MARK: - handlers

    /// Account checks (`validate`, `token`) a user may make: 10 back to back, then one every 6 s. Each may ask KIS
    /// for a token and opens every stored account (an app key is one user's): a signed-in user looping with
    /// made-up app keys must not make the broker flood KIS from its address (KIS may block it, for every user) or
    /// spend its CPU.
    static let accountChecks = RateLimit(rate: 1.0 / 6, burst: 10)

    /// `rate_limited` (429, `Retry-After`) past ``accountChecks`` for `userID` (``TokenKeeper/throttle``).
    func throttleAccountChecks(_ userID: String) async throws {
        try await run { try await keeper.throttle(userID, "account-checks", limit: Self.accountChecks, "too many account checks") }
    }

    func validate(_ request: Request) async throws -> Response {
        let userID = try await authenticate(request)
        let form: AccountForm
        do {
            form = try RequestForm.account(try await Self.body(request))
            try await throttleAccountChecks(userID)  // a well-formed check only: a bad form costs nothing
            try await run { try await keeper.validate(userID: userID, form: form) }
        } catch let p as Problem where p.code == .invalidParameter || p.code == .kisCredentialsRejected {
            // KIS's own words (Korean, e.g. "유효하지 않은 AppSecret입니다.") go with the code, for the user.
            var body: [String: Any] = ["valid": false, "message": p.detail, "code": p.code.rawValue]
            if let m = p.kisMessage { body["kis_msg1"] = m }
            if let c = p.kisMsgCode { body["kis_msg_cd"] = c }
            return Self.json(body, status: .badRequest)
        }
        // Shown to the user as it is (web-client.md: toasts with the broker's message), in the UI's language.
        return Self.json(["valid": true, "message": "한국투자증권에서 App Key와 App Secret을 확인했습니다"])
    }

    func token(_ request: Request) async throws -> Response {
        let userID = try await authenticate(request)
        let form = try RequestForm.account(try await Self.body(request))
        try await throttleAccountChecks(userID)
        let token = try await run { try await keeper.connect(userID: userID, form: form) }
        return Self.tokenAnswer(token)
    }

    func refresh(_ request: Request) async throws -> Response {
        let userID = try await authenticate(request)
        let environment = try RequestForm.environment(try await Self.body(request)["environment"])
        let token = try await run { try await keeper.refresh(userID: userID, environment: environment) }
        return Self.tokenAnswer(token)
    }

    func getAccount(_ request: Request) async throws -> Response {
        let userID = try await authenticate(request)
        let environment = try RequestForm.environment(request.uri.queryParameters.get("environment"))
        let (account, token) = try await run { () async throws -> (Account?, BrokerToken?) in
            guard let a = try await keeper.account(userID, environment) else { return (nil, nil) }
            guard let t = try await keeper.currentToken(userID, environment) else { return (a, nil) }
            // A token a gateway saw KIS refuse (`dead:`) serves no more: not connected until a refresh.
            if (try? await TokenDirectory.deadReason(sha256: t.sha256, store: keeper.store)) != nil { return (a, nil) }
            return (a, t)
        }
        guard let account else { throw Problem(.accountNotFound, "no \(environment.rawValue) account is connected") }
        let now = keeper.now
        let live = token.flatMap { $0.expiresAt > now ? $0 : nil }
        var expires: Any = NSNull()
        if let live { expires = KST.iso8601(Date(timeIntervalSince1970: TimeInterval(live.expiresAt))) }
        return Self.json([
            "environment": environment.rawValue,
            "accountNumber": Mask.accountNumber(account.accountNumber),
            "appKey": Mask.appKey(account.appKey),
            "connected": account.isActive && live != nil,
            "tokenExpiresAt": expires,
        ])
    }

    func deleteAccount(_ request: Request) async throws -> Response {
        let userID = try await authenticate(request)
        let environment = try RequestForm.environment(request.uri.queryParameters.get("environment"))
        try await run { try await keeper.disconnect(userID: userID, environment: environment) }
        var headers = HTTPFields()
        headers[.cacheControl] = "no-store"
        return Response(status: .noContent, headers: headers)
    }

    func signIn(_ request: Request) async throws -> Response {
        let body = try await Self.body(request)
        guard let userID = body["userId"] as? String, RequestForm.isUserID(userID) else {
            throw Problem(.invalidParameter, "userId must be 1 to 64 letters, digits or -_.@")
        }
        guard let secret = config.auth.jwt.hs256Secret else {
            throw Problem(.internalError, "sign-in needs [auth.jwt] hs256_secret")
        }
        let jwt = try await JWTVerifier.mintHS256(
            secret: Array(secret.value.utf8), sub: userID, ttl: 12 * 3600, issuer: config.auth.jwt.issuer,
            audience: config.auth.jwt.audience, now: keeper.clock())
        return Self.json(["token": jwt])
    }

    // MARK: - helpers

    /// `Authorization: Bearer <JWT>` verified as the gateway does; the user id is `sub`.
    func authenticate(_ request: Request) async throws(Problem) -> String {
        guard let authorization = request.headers[.authorization] else {
            throw Problem(.authRequired, "Authorization: Bearer <JWT> is required")
        }
        guard let jwt = BearerCredentials.parse(authorization) else {
            throw Problem(.authRequired, "Authorization must be a Bearer value")
        }
        return try await verifier.verify(String(jwt), now: keeper.clock()).userID
    }

    /// Runs keeper work, turning database and store failures into `store_unavailable`.
    func run<T>(_ work: () async throws -> T) async throws -> T {
        do {
            return try await work()
        } catch let p as Problem {
            throw p
        } catch let e as StoreError where e.code.isUnopenable {
            logger.error("a sealed value does not open", metadata: ["error": "\(e)"])
            throw Problem(.internalError, "a stored secret cannot be opened with the configured seal keys")
        } catch let e as StoreError {
            logger.warning("the shared store failed", metadata: ["error": "\(e)"])
            throw Problem(.storeUnavailable, "the shared store does not answer", retryAfter: 1)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            logger.warning("the database failed", metadata: ["error": "\(String(describing: type(of: error)))"])
            throw Problem(.storeUnavailable, "the broker database does not answer", retryAfter: 1)
        }
    }

    func unreadiness() async -> String? {
        do { try await keeper.repository.ping() } catch { return "the broker database does not answer" }
        do { _ = try await dependencies.store.get("readyz") } catch { return "the shared store does not answer" }
        return nil
    }

    static func body(_ request: Request) async throws -> [String: Any] {
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: 16 * 1024) } catch is NIOTooManyBytesError {
            throw Problem(.payloadTooLarge, "the request body is larger than 16 KiB")
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            // The HTTP decoder refused the body (a bad chunk size, say) or the upload ended early: the client's
            // framing, not its size.
            throw Problem(.invalidParameter, "the request body cannot be read (malformed HTTP/1.1 framing or an upload cut short)")
        }
        guard buffer.readableBytes > 0,
            let object = try? JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any]
        else { throw Problem(.invalidParameter, "the body must be a JSON object") }
        return object
    }

    static func tokenAnswer(_ token: BrokerToken) -> Response {
        json([
            "token": token.accessToken,
            "expiresAt": KST.iso8601(Date(timeIntervalSince1970: TimeInterval(token.expiresAt))),
            "environment": token.environment.rawValue,
        ])
    }

    static func json(_ object: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data("{}".utf8)
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// Form rules of broker-api.md.
enum RequestForm {
    static func account(_ body: [String: Any]) throws(Problem) -> AccountForm {
        let environment = try environment(body["environment"])
        let appKey = try credential(body["appKey"], name: "appKey")
        let appSecret = try credential(body["appSecret"], name: "appSecret")
        guard let raw = body["accountNumber"] as? String, let number = accountNumber(raw) else {
            throw Problem(.invalidParameter, "accountNumber must be 8 digits, an optional dash and 2 digits (12345678-01)")
        }
        return AccountForm(environment: environment, appKey: appKey, appSecret: appSecret, accountNumber: number)
    }

    static func environment(_ value: Any?) throws(Problem) -> KISEnvironment {
        guard let raw = value as? String, let env = KISEnvironment(rawValue: raw.uppercased()) else {
            throw Problem(.invalidParameter, "environment must be LIVE or SANDBOX")
        }
        return env
    }

    /// An app key or secret: 1 to 512 bytes of printable ASCII (`!` to `~`). It goes to KIS as an HTTP header value
    /// (`appkey`, `appsecret`) and in JSON, so a control character, a zero-width space, a combining mark or any other
    /// non-ASCII letter is refused here, and the length is counted in bytes, not in characters (a combining mark adds
    /// none to `String.count`).
    static func credential(_ value: Any?, name: String) throws(Problem) -> String {
        guard let s = value as? String, (1...512).contains(s.utf8.count), s.utf8.allSatisfy({ (0x21...0x7E).contains($0) })
        else {
            throw Problem(.invalidParameter, "\(name) must be 1 to 512 printable ASCII characters without spaces")
        }
        return s
    }

    /// `12345678-01` from `12345678-01` or `1234567801`; nil for anything else.
    static func accountNumber(_ raw: String) -> String? {
        let digits = Array(raw.utf8)
        func allDigits(_ s: ArraySlice<UInt8>) -> Bool { s.allSatisfy { $0 >= 48 && $0 <= 57 } }
        if digits.count == 10, allDigits(digits[...]) {
            return String(decoding: digits[0..<8], as: UTF8.self) + "-" + String(decoding: digits[8...], as: UTF8.self)
        }
        if digits.count == 11, digits[8] == UInt8(ascii: "-"), allDigits(digits[0..<8]), allDigits(digits[9...]) {
            return raw
        }
        return nil
    }

    /// 1–64 letters, digits or `-_.@`.
    static func isUserID(_ s: String) -> Bool {
        guard (1...64).contains(s.unicodeScalars.count) else { return false }
        return s.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || "-_.@".unicodeScalars.contains(c)
        }
    }
}

/// How the account answer shows what it stores.
enum Mask {
    /// `1234****-01`.
    static func accountNumber(_ n: String) -> String {
        guard n.count == 11 else { return "****" }
        return String(n.prefix(4)) + "****" + String(n.suffix(3))
    }

    /// `PSab…wxyz`: the first and last four characters; short keys show nothing.
    static func appKey(_ k: String) -> String {
        guard k.count >= 12 else { return "****" }
        return String(k.prefix(4)) + "…" + String(k.suffix(4))
    }
}
