import AsyncHTTPClient
import CoreMetrics
import Crypto
import Foundation
public import Hummingbird
import HTTPTypes
public import KIS
public import KisgwConfiguration
public import Logging
import NIOCore
import NIOHTTP1
import Observability
public import Prometheus
import ServerKit
public import Store
public import Tokens

/// What `buildGateway` needs besides the configuration: the store shared with the broker and the other gateways,
/// the seal keys' opener, and where metrics are read from.
public struct GatewayDependencies: Sendable {
    public var store: any SharedStore
    public var keyring: SealKeyring
    /// The HTTP clients for KIS and the broker, one per event loop.
    public var http: KISHTTPClients
    public var metricsRegistry: PrometheusCollectorRegistry?
    /// Answers `/readyz`: nil when the store answers.
    public var readiness: @Sendable () async -> String?
    /// Whether known answers are given on the event loop (`HitPath`); tests compare with the router alone.
    var hitPathEnabled = true
    /// Told of every answer the hit path gives (tests).
    var onHitPathAnswer: (@Sendable (_ status: Int) -> Void)?
    /// How long a connection may stay with no request part read and nothing in progress before it is closed: idle
    /// keep-alive connections, and ones that send a request head a byte at a time, do not hold the server's sockets
    /// for ever. nginx waits 60 s for a request head (`client_header_timeout`) and 75 s on an idle connection.
    public var idleTimeout: Duration = .seconds(60)

    public init(store: any SharedStore, keyring: SealKeyring, http: KISHTTPClients = .shared,
                metricsRegistry: PrometheusCollectorRegistry? = nil,
                readiness: @escaping @Sendable () async -> String?) {
        self.store = store
        self.keyring = keyring
        self.http = http
        self.metricsRegistry = metricsRegistry
        self.readiness = readiness
    }
}

/// The HTTP decoder's limits for the gateway without its hit path (the router alone): `[server] max_header_bytes`.
private func routerDecoderLimits(_ config: KisgwConfig) -> NIOHTTPDecoderLimitConfiguration {
    var limits = NIOHTTPDecoderLimitConfiguration.hummingbird  // at most 1000 fields
    limits.maxHeaderFieldSize = config.server.maxHeaderBytes
    limits.maxHeaderListSize = config.server.maxHeaderBytes
    return limits
}

/// The edge gateway (gateway-api.md) as a Hummingbird application.
///
/// ```swift
/// let app = try await buildGateway(config, dependencies: deps, logger: logger)
/// try await app.runService()
/// ```
public func buildGateway(
    _ config: KisgwConfig, dependencies: GatewayDependencies, logger: Logger,
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) async throws -> some ApplicationProtocol {
    let gateway = try await GatewayCore(config: config, dependencies: dependencies, logger: logger)
    // HEAD is answered wherever GET is (RFC 9110 §9.3.2: every general-purpose server supports both): the GET
    // route's answer, with its headers and without its body.
    let router = Router(context: BasicRequestContext.self, options: .autoGenerateHeadEndpoints)
    router.add(middleware: AccessMiddleware(
        recorder: gateway.recorder,
        labels: Dictionary(uniqueKeysWithValues: HitPath.Route.allCases.map { ($0.endpointPath, $0.label) }),
        routeOfPath: { GatewayCore.route(ofPath: $0[...])?.label }))
    router.add(middleware: CORSMiddleware(cors: config.cors, renderer: ProblemRenderer(allowedMethods: GatewayCore.allowedMethods),
                                          allowMethods: CORSHeaderValues.gatewayMethods))
    gateway.addRoutes(to: router)
    return Application(
        router: router,
        server: dependencies.hitPathEnabled
            ? .gateway(hitPath: gateway.hitPath, idleTimeout: dependencies.idleTimeout)
            : .closingHTTP1(idleTimeout: dependencies.idleTimeout, decoderLimits: routerDecoderLimits(config)),
        configuration: .init(address: .hostname(config.server.host, port: config.server.port), serverName: nil),
        services: [gateway.eventListener, BackgroundDrain(work: gateway.charts.background, logger: logger)],
        onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? 0) },
        logger: logger
    )
}

/// Route handlers and the parts they share.
struct GatewayCore: Sendable {
    let config: KisgwConfig
    let dependencies: GatewayDependencies
    let verifier: JWTVerifier
    let authorizer: TokenAuthorizer
    let charts: ChartService
    let hitPath: HitPath
    let metrics: GatewayMetrics
    let recorder: RequestRecorder
    let logger: Logger
    let eventListener: StoreEventListener

    init(config: KisgwConfig, dependencies: GatewayDependencies, logger: Logger) async throws {
        self.config = config
        self.dependencies = dependencies
        self.logger = logger
        // The series go to the registry `/metrics` renders, when one is given (the executable's is also the
        // bootstrapped `MetricsSystem`'s).
        let factory = MetricsSetup.factory(for: dependencies.metricsRegistry)
        self.metrics = GatewayMetrics(factory: factory)
        let recorder = RequestRecorder(logger: logger, factory: factory)
        self.recorder = recorder
        if let stale = KRXHolidays.staleTableWarning(at: Date()) { logger.warning("\(stale)") }
        self.verifier = try await JWTVerifier(settings: .init(config: config.auth.jwt))
        let store = dependencies.store, keyring = dependencies.keyring
        let failures = ThrottledLog(logger: logger)
        let authorizer = TokenAuthorizer(logger: logger, failures: failures, deadReason: { token, userID in
            // Only a token in KIS's shape can have been marked (no second read for any other string), and only its
            // owner learns why: another user's is kis_token_invalid, whatever happened to it.
            guard KISTokenClaims.expiry(of: token) != nil,
                let mark = try? await TokenDirectory.deadMark(sha256: TokenDirectory.sha256(of: token), store: store),
                mark.user_id?.isSameUserID(userID) == true
            else { return nil }
            return mark.msg_cd
        }) { (token: String) async throws(StoreError) -> ResolvedToken? in
            guard let p = try await TokenDirectory.resolve(token: token, store: store, keyring: keyring) else { return nil }
            return ResolvedToken(
                userID: p.userID, environment: p.environment, expiresAt: p.expiresAt, sha256: p.sha256,
                credentials: KISCredentials(appKey: p.credentials.app_key, appSecret: p.credentials.app_secret,
                                            accessToken: p.credentials.access_token))
        }
        self.authorizer = authorizer
        let timeout = config.upstream.timeout
        let clients: [KISEnvironment: KISClient] = [
            .live: KISClient(baseURL: config.kis.liveURL, http: dependencies.http, timeout: timeout, logger: logger),
            .sandbox: KISClient(baseURL: config.kis.sandboxURL, http: dependencies.http, timeout: timeout,
                                logger: logger),
        ]
        let settings = ChartService.Settings(
            freshness: FreshnessPolicy(liveTTL: config.cache.liveTTLS, settledTTL: config.cache.settledTTLS),
            staleWhileRevalidate: config.cache.staleWhileRevalidateS, staleIfError: config.cache.staleIfErrorS,
            upstreamTimeout: config.upstream.timeout, requestTimeout: config.server.requestTimeout, maxQueue: config.upstream.maxQueue,
            retries: config.upstream.retries, liveRate: config.kis.liveRatePerS, sandboxRate: config.kis.sandboxRatePerS)
        let l1 = L1Cache<ChartEntry>(maxEntries: config.cache.l1Entries, maxBytes: 256 << 20)
        let metrics = self.metrics
        self.charts = ChartService(settings: settings, store: store, l1: l1, clients: clients, authorizer: authorizer,
                                   metrics: metrics, logger: logger, failures: failures)
        self.hitPath = HitPath(cors: config.cors, maxRangeDays: config.limits.maxRangeDays,
                               maxHeaderBytes: config.server.maxHeaderBytes, verifier: verifier,
                               authorizer: authorizer, l1: l1, charts: charts, metrics: metrics, recorder: recorder,
                               observer: dependencies.onHitPathAnswer)
        self.eventListener = StoreEventListener(store: store, authorizer: authorizer, notifier: charts.notifier,
                                                filledChannel: ChartService.filledChannel, logger: logger,
                                                failures: failures)
    }

    /// The route `path` is on, whatever the method: its `/metrics` label and the methods it allows (for 405
    /// answers); nil when it is on none.
    static func route(ofPath path: Substring) -> (label: String, allow: String)? {
        switch path {
        case "/token/refresh": return ("/token/refresh", "POST, OPTIONS")
        case "/healthz", "/readyz", "/metrics": return (String(path), "GET, HEAD")
        default:
            let parts = path.split(separator: "/")
            return HitPath.Route.allCases.first { $0.matches(parts) }.map { ($0.label, "GET, HEAD, OPTIONS") }
        }
    }

    /// The methods a path allows, when it matches a route (for 405 answers).
    static let allowedMethods: @Sendable (String) -> String? = { route(ofPath: $0[...])?.allow }

    func addRoutes(to router: Router<BasicRequestContext>) {
        // The path's parameters are read from the path as sent, as the hit path reads them (`Route.parameter`), not
        // from the router's, which skips empty segments.
        router.get(RouterPath(HitPath.Route.domestic.routerPath)) { request, context in
            try await self.chart(request, context: context) { query, now throws(Problem) in
                try ChartQuery.domestic(symbol: Self.decoded(HitPath.Route.domestic.parameter("symbol", in: request.uri.path[...])),
                                        query: query, maxRangeDays: self.config.limits.maxRangeDays, now: now)
            }
        }
        // The symbol is the rest of the path, so `BRK/B` may be sent as is (or as `BRK%2FB`).
        router.get(RouterPath(HitPath.Route.overseas.routerPath)) { request, context in
            try await self.chart(request, context: context) { query, now throws(Problem) in
                let path = request.uri.path[...], route = HitPath.Route.overseas
                return try ChartQuery.overseas(
                    exchange: Self.decoded(route.parameter("exchange", in: path)),
                    symbol: Self.decoded(route.parameter("symbol", in: path)),
                    query: query, maxRangeDays: self.config.limits.maxRangeDays, now: now)
            }
        }
        router.post("/token/refresh") { request, _ in try await self.refreshToken(request) }
        router.get("/healthz") { _, _ in Self.json(#"{"status":"ok"}"#, status: .ok) }
        router.get("/readyz") { _, _ in
            if let problem = await self.dependencies.readiness() {
                let body = #"{"status":"unavailable","detail":"# + ChartEntry.jsonString(problem) + "}"
                return Self.json(body, status: .serviceUnavailable)
            }
            return Self.json(#"{"status":"ready"}"#, status: .ok)
        }
        router.get("/metrics") { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            let text = self.dependencies.metricsRegistry.map { MetricsSetup.render($0) } ?? ""
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
        }
    }

    /// A path parameter with its percent-escapes decoded (the router leaves them); as sent when they are not
    /// valid UTF-8 escapes, for the validation to refuse.
    static func decoded(_ raw: some StringProtocol) -> Substring {
        raw.contains("%") ? Substring(raw.removingPercentEncoding ?? String(raw)) : Substring(raw)
    }

    static func json(_ body: String, status: HTTPResponse.Status) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    // MARK: - charts

    func chart(
        _ request: Request, context: BasicRequestContext,
        parse: (_ query: [String: Substring], _ now: Date) throws(Problem) -> ChartQuery
    ) async throws -> Response {
        let now = Date()
        // Both credentials first: nothing about the request is said to a caller without them (a KIS token that
        // expired gets kis_token_expired, whatever the parameters, so the client refreshes it).
        let (jwt, kisToken) = try Self.credentials(request)
        let session = try await verifier.verify(jwt, now: now)
        let token = try await authorizer.authorize(kisToken: kisToken, userID: session.userID, now: now)
        var params: [String: Substring] = [:]
        for (k, v) in request.uri.queryParameters where params[String(k)] == nil { params[String(k)] = v }
        let query = try parse(params, now)

        let outcome = try await charts.chart(query, token: token)
        let entry = outcome.entry
        // `max-age` and `Age` as of the answer, not of the request: a fetched entry was stored meanwhile.
        let nowSeconds = Int64(Date().timeIntervalSince1970)
        var headers = HTTPFields()
        headers.reserveCapacity(10)
        headers[.eTag] = entry.etag
        headers[.cacheControl] = "private, max-age=\(entry.maxAge(at: nowSeconds))"
        headers[.age] = String(entry.age(at: nowSeconds))
        headers[Self.xCache] = outcome.cacheState
        headers[Self.serverTiming] = outcome.serverTiming
        if let inm = request.headers[.ifNoneMatch], Self.etagMatches(inm, entry.etag) {
            return Response(status: .notModified, headers: headers)
        }
        headers[.contentType] = "application/json"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: entry.body))
    }

    static let xCache = HTTPField.Name("X-Cache")!
    static let serverTiming = HTTPField.Name("Server-Timing")!
    static let xKISToken = HTTPField.Name("X-KIS-Token")!

    /// `Authorization: Bearer <JWT>` and `X-KIS-Token`, or `auth_required`.
    ///
    /// On the hot path: byte-level parsing, no Foundation (its `trimmingCharacters` goes through UTF-16 and cost a
    /// fifth of a cache hit's CPU when measured with perf).
    static func credentials(_ request: Request) throws(Problem) -> (String, String) {
        guard let authorization = request.headers[.authorization] else {
            throw Problem(.authRequired, "Authorization: Bearer <JWT> is required")
        }
        guard let jwt = BearerCredentials.parse(authorization) else {
            throw Problem(.authRequired, "Authorization must be a Bearer value")
        }
        guard let raw = request.headers[xKISToken], case let kis = BearerCredentials.trimmedOWS(raw[...]), !kis.isEmpty else {
            throw Problem(.authRequired, "X-KIS-Token is required")
        }
        return (String(jwt), kis.utf8.count == raw.utf8.count ? raw : String(kis))
    }


    /// `If-None-Match` against a strong ETag: a list, `W/` prefixes compare weakly, `*` matches.
    static func etagMatches(_ header: String, _ etag: String) -> Bool {
        for candidate in header.split(separator: ",") {
            var c = BearerCredentials.trimmedOWS(candidate)
            if c == "*" { return true }
            if c.hasPrefix("W/") { c = c.dropFirst(2) }
            if c == etag { return true }
        }
        return false
    }

    // MARK: - token refresh (proxied to the broker)

    func refreshToken(_ request: Request) async throws -> Response {
        guard let authorization = request.headers[.authorization] else {
            throw Problem(.authRequired, "Authorization: Bearer <JWT> is required")
        }
        guard let jwt = BearerCredentials.parse(authorization) else {
            throw Problem(.authRequired, "Authorization must be a Bearer value")
        }
        // Checked here as the broker would: a caller without a valid JWT costs no round trip to the broker.
        _ = try await verifier.verify(String(jwt), now: Date())
        let body: ByteBuffer
        do { body = try await request.body.collect(upTo: 16 * 1024) } catch let e as HTTPError { throw e } catch is NIOTooManyBytesError {
            // What the broker answers to such a body: the same answer without the round trip.
            throw Problem(.payloadTooLarge, "the request body is larger than 16 KiB")
        } catch {
            throw Problem(.invalidParameter, "the request body cannot be read (malformed HTTP/1.1 framing)")
        }
        var upstream = HTTPClientRequest(url: config.broker.url + "/api/kis/token/refresh")
        upstream.method = .POST
        upstream.headers.add(name: "authorization", value: authorization)
        upstream.headers.add(name: "content-type", value: "application/json")
        upstream.body = .bytes(body)
        do {
            let response = try await dependencies.http.current.execute(
                upstream, timeout: .seconds(Int64(config.upstream.timeoutMs / 1000 + 5)))
            let bytes = try await response.body.collect(upTo: 1 << 20)
            var headers = HTTPFields()
            headers[.contentType] = response.headers.first(name: "content-type") ?? "application/json"
            // A token, or a problem: never to be kept by a browser or a proxy.
            headers[.cacheControl] = "no-store"
            if let r = response.headers.first(name: "retry-after") { headers[.retryAfter] = r }
            if let w = response.headers.first(name: "www-authenticate") { headers[.wwwAuthenticate] = w }
            return Response(status: .init(code: Int(response.status.code)), headers: headers, body: .init(byteBuffer: bytes))
        } catch {
            throw Problem(.upstreamError, "the token broker cannot be reached")
        }
    }
}

