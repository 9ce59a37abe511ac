import CoreMetrics
import Foundation
import HTTPTypes
import HummingbirdCore
import KIS
import KisgwConfiguration
import Logging
import NIOCore
import NIOHTTP1
import ServerKit
import Synchronization

/// The hit path: answers, on the event loop and without leaving the channel pipeline, the requests whose answer
/// is already known — a fresh chart in the L1 for a JWT and a KIS token already verified, a JWT already
/// rejected, and CORS preflights — and, for the same known credentials, a chart the L1 lacks or holds stale: that
/// one is asked of `ChartService` (the same call the router's handler makes) and answered when it comes. Everything
/// else (and anything unusual: percent-escapes, duplicate credential headers, `Connection: close`, HTTP/1.0, a
/// request pipelined behind one still being answered) goes on to the router unchanged, which answers it the same
/// way, only slower.
///
/// Measured before this existed (perf, release build, wrk -c64 on the 2-core bench machine): a cache hit spent
/// about half its CPU in the async request machinery (task switches, the router, two middlewares, HTTPTypes
/// conversion) rather than in parsing and writing. The answers here are byte-for-byte the router's, apart from
/// `Date`; `HitPathTests` compares the two. Heads are written already encoded, past `HTTPResponseEncoder`
/// (29.6k/33.5k → 39.7k/37.8k hits/s in the dev loop, wrk -c64, alternating binaries).
final class HitPath: Sendable {
    /// The chart routes, defined once here (`shapes`): the router's paths, the paths that answer 405 to other
    /// methods, the metrics and access-log labels and the hit path's matching all come from their segments.
    enum Route: Int, CaseIterable, Sendable {
        case domestic, overseas

        /// The router's path (Hummingbird's syntax).
        var routerPath: String { Self.shapes[rawValue].routerPath }

        /// The route label the router gives (metrics and access logs use it): parameters in braces, `**` as
        /// `{symbol}`.
        var label: String { Self.shapes[rawValue].label }

        /// The path Hummingbird reports for a request the router matched (`{name}` for `:name`, `**` as is), for
        /// `AccessMiddleware`'s label map.
        var endpointPath: String { Self.shapes[rawValue].endpointPath }

        /// A parameter of a path on this route (`exchange`, `symbol`), read from the path as sent — empty segments
        /// included, which the router skips: `BRK//B`, `BRK/` or `005930/` reach the validation and are refused, as
        /// their `%2F` forms are, instead of naming `BRK/B`, `BRK` or `005930` another way. A parameter is the segment
        /// in its place; the last one (the symbol) is everything from its place on (an overseas symbol may hold `/`).
        func parameter(_ name: String, in path: Substring) -> Substring {
            let segments = Self.shapes[rawValue].segments
            guard let index = segments.firstIndex(where: {
                ($0.hasPrefix(":") && $0.dropFirst() == name) || ($0 == "**" && name == "symbol")
            })
            else { return "" }
            // What follows the path's (index + 1)th `/` (the first is the leading one).
            var rest = path[...], slashes = 0
            while slashes <= index {
                guard let slash = rest.utf8.firstIndex(of: UInt8(ascii: "/")) else { return "" }
                rest = rest[rest.utf8.index(after: slash)...]
                slashes += 1
            }
            return index == segments.count - 1 ? rest : rest.prefix { $0 != "/" }
        }

        /// Whether a path's segments (without the leading empty one) match this route's.
        func matches<C: Collection>(_ parts: C) -> Bool where C.Element: StringProtocol {
            let shape = Self.shapes[rawValue]
            guard shape.catchAll ? parts.count >= shape.segments.count : parts.count == shape.segments.count else {
                return false
            }
            for (pattern, part) in zip(shape.segments, parts) where !pattern.hasPrefix(":") && pattern != "**" {
                guard pattern.utf8.elementsEqual(part.utf8) else { return false }
            }
            return true
        }

        /// A route's path as segments: a literal, `:name` for one segment, or a last `**` for one or more (an
        /// overseas symbol may contain a `/`: `BRK/B`).
        private struct Shape {
            let segments: [String]
            let catchAll: Bool
            let routerPath: String
            let endpointPath: String
            let label: String

            init(_ segments: [String]) {
                self.segments = segments
                self.catchAll = segments.last == "**"
                routerPath = "/" + segments.joined(separator: "/")
                endpointPath = "/" + segments.map { $0.hasPrefix(":") ? "{\($0.dropFirst())}" : $0 }.joined(separator: "/")
                label = "/" + segments.map {
                    $0.hasPrefix(":") ? "{\($0.dropFirst())}" : $0 == "**" ? "{symbol}" : $0
                }.joined(separator: "/")
            }
        }

        private static let shapes: [Shape] = allCases.map { route in
            switch route {
            case .domestic: Shape(["domestic", "chart", "daily", ":symbol"])
            case .overseas: Shape(["overseas", ":exchange", "chart", "daily", "**"])
            }
        }
    }

    /// What the hit path does with a request.
    enum Decision {
        /// Answer now.
        case answer(Answer)
        /// Ask `ChartService` for the chart, then answer (``answer(_:to:allocator:)``).
        case fetch(Fetch)
        /// Refuse the request — its head longer than `maxHeaderBytes`, or HTTP/1.1 without one `Host`
        /// (``malformed(_:origin:allocator:)``) — and close the connection; `origin` is its allowed `Origin`, if any.
        case refuse(Refusal, origin: String?)
    }

    /// A chart to ask `ChartService` for, for credentials already verified, and what its answer depends on.
    struct Fetch: Sendable {
        var query: ChartQuery
        var token: ResolvedToken
        var route: Route
        var origin: String?
        var ifNoneMatch: String?
    }

    /// A ready answer: the head and, for 200 and problems, the body.
    struct Answer {
        var status: HTTPResponseStatus
        var head: Head
        var body: ByteBuffer?
        /// For metrics and the access log.
        var route: String
        var cacheHit: Bool
    }

    /// An answer's head as `HTTPResponseEncoder` writes one — the status line, then `name: value` lines in the
    /// order added — but for `Date` and the blank line, which the handler sends after it (`HTTPDateCache`). Written
    /// straight into one buffer: building `HTTPHeaders` and encoding them took about a tenth of a hit's CPU.
    /// Values come from configuration, the cache and allowed origins (the parser admits no CR or LF in a request).
    struct Head {
        private(set) var bytes: ByteBuffer

        init(_ status: HTTPResponseStatus, allocator: ByteBufferAllocator, capacity: Int) {
            bytes = allocator.buffer(capacity: capacity)
            switch status {
            case .ok: bytes.writeStaticString("HTTP/1.1 200 OK\r\n")
            case .notModified: bytes.writeStaticString("HTTP/1.1 304 Not Modified\r\n")
            default:
                bytes.writeStaticString("HTTP/1.1 ")
                bytes.writeString(String(status.code))
                bytes.writeStaticString(" ")
                bytes.writeString(status.reasonPhrase)
                bytes.writeStaticString("\r\n")
            }
        }

        mutating func add(_ name: StaticString, _ value: String) { add(name, "", value) }

        /// `name: <prefix><value>`, without joining the two strings first.
        mutating func add(_ name: StaticString, _ prefix: StaticString, _ value: String) {
            bytes.writeStaticString(name)
            bytes.writeStaticString(": ")
            bytes.writeStaticString(prefix)
            bytes.writeString(value)
            bytes.writeStaticString("\r\n")
        }

        mutating func add(name: String, value: String) {
            bytes.writeString(name)
            bytes.writeStaticString(": ")
            bytes.writeString(value)
            bytes.writeStaticString("\r\n")
        }
    }

    /// What a connection's last hit was made of, kept by its handler (as it keeps its `Date` line) and reused while
    /// the next request is the same: browsers and clients send one chart's request, with the same credentials, again
    /// and again on a kept-alive connection. Each part is checked against what would be decided without it.
    struct Memo {
        /// The last chart head: building it was about a third of a hit's own work (`Head.add` writes five pieces a
        /// line). Reused while everything it says is the same.
        fileprivate var head: (key: HeadKey, head: Head)?
        /// The last verified credentials, as `Authorization` and `X-KIS-Token` were sent: reused until the JWT or
        /// the remembered KIS token decision runs out, or the token authorizer forgets anything (a `revoked` event,
        /// a KIS refusal) — then decided afresh. Saves parsing both and looking both up (each hashing a long string
        /// under a lock the event loops share).
        fileprivate var credentials: Credentials?
        /// The last target's route and query, while its resolution holds (it depends on the exchange's date).
        fileprivate var target: (uri: String, resolved: Resolved)?

        init() {}

        /// Everything a chart head is made of (`cors` is the same for the process).
        fileprivate struct HeadKey: Equatable {
            var notModified: Bool
            var etag: String
            var maxAge: Int64
            var age: Int64
            var length: Int
            var origin: String?
        }

        fileprivate struct Credentials {
            var authorization: String
            var kisToken: String
            var session: VerifiedSession
            var token: ResolvedToken
            var validUntil: Date
            var generation: UInt64
        }
    }

    fileprivate struct Resolved {
        var route: Route
        var query: ChartQuery
        /// Unix seconds: the resolution depends on the exchange's local date (the default end is "today").
        var validUntil: Int64
    }

    let cors: KisgwConfig.CORS
    let maxRangeDays: Int
    /// `[server] max_header_bytes`. The decoder's own limit is twice this (`GatewayHTTP1Channel`): a head between the
    /// two is read whole and refused where its `Origin` is known (``HeadSize``).
    let maxHeaderBytes: Int
    let verifier: JWTVerifier
    let authorizer: TokenAuthorizer
    let l1: L1Cache<ChartEntry>
    let charts: ChartService
    let metrics: GatewayMetrics
    let recorder: RequestRecorder
    let observer: (@Sendable (_ status: Int) -> Void)?
    private let resolved = Mutex<[String: Resolved]>([:])
    private let resolvedLimit = 10_000

    init(cors: KisgwConfig.CORS, maxRangeDays: Int, maxHeaderBytes: Int, verifier: JWTVerifier,
         authorizer: TokenAuthorizer, l1: L1Cache<ChartEntry>, charts: ChartService, metrics: GatewayMetrics,
         recorder: RequestRecorder, observer: (@Sendable (_ status: Int) -> Void)? = nil) {
        self.charts = charts
        self.observer = observer
        self.cors = cors
        self.maxRangeDays = maxRangeDays
        self.maxHeaderBytes = maxHeaderBytes
        self.verifier = verifier
        self.authorizer = authorizer
        self.l1 = l1
        self.metrics = metrics
        self.recorder = recorder
    }

    // MARK: - deciding

    /// The answer to `head` if it is known now, the chart to fetch first, a refusal of a head longer than
    /// `maxHeaderBytes`, or nil to let the router answer (whoever answers a head measures it: here while reading the
    /// fields a hit needs anyway, ``oversized(_:)`` for the router's). `originAllowed` says whether an `Origin` value
    /// is allowed (the handler remembers the last one). The head is encoded into a buffer from `allocator`.
    func decide(_ head: HTTPRequestHead, now: Date, allocator: ByteBufferAllocator, memo: inout Memo,
                originAllowed: (String) -> Bool) -> Decision? {
        guard head.version == .http1_1, head.isKeepAlive else { return nil }
        switch head.method {
        case .GET: return chart(head, now: now, allocator: allocator, memo: &memo, originAllowed: originAllowed)
        case .OPTIONS: return preflight(head, allocator: allocator, originAllowed: originAllowed)
        default: return nil
        }
    }

    /// What `ChartService` says of `fetch`'s chart (the router's handler makes the same call).
    func fetch(_ fetch: Fetch, on executor: EventLoopExecutor) async -> Result<ChartService.Outcome, Problem> {
        do throws(Problem) {
            return .success(try await charts.chart(fetch.query, token: fetch.token, on: executor))
        } catch {
            return .failure(error)
        }
    }

    /// The answer to a fetched chart, as the router's handler renders `ChartService`'s outcome. `ChartService`
    /// counted the cache result itself, so the answer does not count as a hit path hit.
    func answer(_ outcome: Result<ChartService.Outcome, Problem>, to fetch: Fetch, allocator: ByteBufferAllocator) -> Answer {
        switch outcome {
        case .failure(let problem):
            return self.problem(problem, route: fetch.route.label, origin: fetch.origin, allocator: allocator)
        case .success(let outcome):
            // `max-age` and `Age` as of now, not as of the request: the entry may have been stored since.
            var unused = Memo()  // (a fetched chart is not a hit: its head is not kept)
            return chartAnswer(outcome, route: fetch.route, origin: fetch.origin, ifNoneMatch: fetch.ifNoneMatch,
                               nowSeconds: Int64(Date().timeIntervalSince1970), cacheHit: false,
                               allocator: allocator, memo: &unused)
        }
    }

    /// A chart answer (200, or 304 for a matching `If-None-Match`), its head in the order the router's answer has
    /// them (HitPathTests compare the two). A hit's head is `memo`'s when that says the same, and becomes it.
    private func chartAnswer(_ outcome: ChartService.Outcome, route: Route, origin: String?, ifNoneMatch: String?,
                             nowSeconds: Int64, cacheHit: Bool, allocator: ByteBufferAllocator,
                             memo: inout Memo) -> Answer {
        let entry = outcome.entry
        let notModified = ifNoneMatch.map { GatewayCore.etagMatches($0, entry.etag) } ?? false
        let maxAge = entry.maxAge(at: nowSeconds), age = entry.age(at: nowSeconds)
        let key = Memo.HeadKey(notModified: notModified, etag: entry.etag, maxAge: maxAge, age: age,
                               length: entry.body.readableBytes, origin: origin)
        let head: Head
        let isHit = if case .hit = outcome { true } else { false }
        if isHit, let last = memo.head, last.key == key {
            head = last.head
        } else {
            var out = Head(notModified ? .notModified : .ok, allocator: allocator,
                           capacity: 400 + (origin?.utf8.count ?? 0))
            out.add("ETag", entry.etag)
            out.add("Cache-Control", "private, max-age=", String(maxAge))
            out.add("Age", String(age))
            out.add("X-Cache", outcome.cacheState)
            out.add("Server-Timing", outcome.serverTiming)
            if !notModified {
                out.add("Content-Type", "application/json")
                out.add("Content-Length", String(entry.body.readableBytes))
            }
            addCORS(to: &out, origin: origin)
            head = out
            if isHit { memo.head = (key, out) }
        }
        return Answer(status: notModified ? .notModified : .ok, head: head, body: notModified ? nil : entry.body,
                      route: route.label, cacheHit: cacheHit)
    }

    /// What `CORSMiddleware` answers to a preflight.
    private func preflight(_ head: HTTPRequestHead, allocator: ByteBufferAllocator,
                           originAllowed: (String) -> Bool) -> Decision? {
        guard let fields = Fields(head.headers), let origin = fields.origin, fields.requestMethod != nil else { return nil }
        if let refusal = fields.refusal(maxHeaderBytes, target: head.uri) {
            return .refuse(refusal, origin: originAllowed(origin) ? origin : nil)
        }
        guard originAllowed(origin) else {
            var out = Head(.forbidden, allocator: allocator, capacity: 128)
            out.add("Vary", "Origin")
            out.add("Content-Length", "0")
            return .answer(Answer(status: .forbidden, head: out, body: nil, route: Self.preflightRoute(head.uri),
                                  cacheHit: false))
        }
        var out = Head(.noContent, allocator: allocator, capacity: 384 + origin.utf8.count)
        out.add("Vary", "Origin")
        out.add("Access-Control-Allow-Origin", origin)
        if cors.allowCredentials { out.add("Access-Control-Allow-Credentials", "true") }
        out.add("Access-Control-Allow-Methods", CORSHeaderValues.gatewayMethods)
        out.add("Access-Control-Allow-Headers", CORSHeaderValues.allowHeaders)
        out.add("Access-Control-Max-Age", String(cors.maxAgeS))
        return .answer(Answer(status: .noContent, head: out, body: nil, route: Self.preflightRoute(head.uri),
                              cacheHit: false))
    }

    /// A preflight's `/metrics` route: the one its target's path is on, as the router's middleware counts it.
    static func preflightRoute(_ uri: String) -> String {
        let path = uri.utf8.firstIndex(of: UInt8(ascii: "?")).map { uri[..<$0] } ?? uri[...]
        return GatewayCore.route(ofPath: path)?.label ?? "unmatched"
    }

    /// The request headers the hit path reads, each found in one pass; a repeated one makes the request the
    /// router's (HTTPTypes joins repeated fields, and a credential must not be ambiguous), as does a body.
    struct Fields {
        var authorization: String?
        var kisToken: String?
        var origin: String?
        var ifNoneMatch: String?
        var requestMethod: String?
        /// The head's size, and its `Host` fields, counted in the same pass.
        var size = HeadSize()
        var hosts = 0

        init?(_ headers: HTTPHeaders) {
            for (name, value) in headers {
                let n = name.utf8
                size.add(name: n.count, value: value.utf8.count)
                let fresh: Bool
                switch n.count {
                case 4 where HeaderName.equals(n, "host"):
                    hosts += 1
                    fresh = true
                case 6 where HeaderName.equals(n, "origin"): fresh = Self.take(&origin, value)
                case 11 where HeaderName.equals(n, "x-kis-token"): fresh = Self.take(&kisToken, value)
                case 13 where HeaderName.equals(n, "authorization"): fresh = Self.take(&authorization, value)
                case 13 where HeaderName.equals(n, "if-none-match"): fresh = Self.take(&ifNoneMatch, value)
                case 29 where HeaderName.equals(n, "access-control-request-method"): fresh = Self.take(&requestMethod, value)
                // A request with a body is the router's: the hit path decides at the head and answers at the end,
                // which a body held back could put minutes after a revocation (the answer, or a KIS call, after it).
                case 14 where HeaderName.equals(n, "content-length"): fresh = value == "0"
                case 17 where HeaderName.equals(n, "transfer-encoding"): fresh = false
                default: fresh = true
                }
                guard fresh else { return nil }
            }
        }

        /// Sets an unset field; false when it was set already (a repeated header).
        private static func take(_ field: inout String?, _ value: String) -> Bool {
            guard field == nil else { return false }
            field = value
            return true
        }

        /// Why a request with these fields is refused before anything else, if it is: HTTP/1.1 (the only version the
        /// hit path answers) without exactly one `Host`, or a head longer than `limit`.
        func refusal(_ limit: Int, target: String) -> Refusal? {
            if hosts != 1 { return .host }
            return size.exceeds(limit, target: target) ? .oversized : nil
        }

    }

    private func chart(_ head: HTTPRequestHead, now: Date, allocator: ByteBufferAllocator, memo: inout Memo,
                       originAllowed: (String) -> Bool) -> Decision? {
        let uri = head.uri
        let nowSeconds = Int64(now.timeIntervalSince1970)
        let known: Resolved?, shared: Bool
        if let last = memo.target, last.resolved.validUntil > nowSeconds, last.uri == uri {
            (known, shared) = (last.resolved, false)
        } else {
            (known, shared) = (resolved.withLock { $0[uri] }.flatMap { $0.validUntil > nowSeconds ? $0 : nil }, true)
        }
        let route: Route
        if let known {
            route = known.route
        } else {
            guard let r = Self.route(of: uri) else { return nil }
            route = r
        }
        guard let fields = Fields(head.headers), let authorization = fields.authorization, let rawKIS = fields.kisToken
        else { return nil }
        let allowedOrigin = fields.origin.flatMap { originAllowed($0) ? $0 : nil }

        let session: VerifiedSession
        let resolvedToken: ResolvedToken
        if let last = memo.credentials, now < last.validUntil, last.generation == authorizer.generation,
            sameBytes(last.authorization, authorization), sameBytes(last.kisToken, rawKIS)
        {
            if let refusal = fields.refusal(maxHeaderBytes, target: uri) { return .refuse(refusal, origin: allowedOrigin) }
            (session, resolvedToken) = (last.session, last.token)
        } else {
            memo.credentials = nil
            guard let jwt = BearerCredentials.parse(authorization) else { return nil }
            let kisToken = BearerCredentials.trimmedOWS(rawKIS[...])
            guard !kisToken.isEmpty else { return nil }
            if let refusal = fields.refusal(maxHeaderBytes, target: uri) { return .refuse(refusal, origin: allowedOrigin) }
            // Read before the decision: a forget while deciding leaves the memo with an older generation (unused).
            let generation = authorizer.generation
            switch verifier.known(String(jwt), now: now) {
            case nil: return nil
            case .rejected(let problem):
                // The router checks the JWT before the query: the same problem, whatever the query says.
                return .answer(self.problem(problem, route: route.label, origin: allowedOrigin, allocator: allocator))
            case .valid(let s): session = s
            }
            let token = kisToken.utf8.count == rawKIS.utf8.count ? rawKIS : String(kisToken)
            guard let (t, tokenValidUntil) = authorizer.known(kisToken: token, userID: session.userID, now: now)
            else { return nil }
            resolvedToken = t
            memo.credentials = Memo.Credentials(
                authorization: authorization, kisToken: rawKIS, session: session, token: t,
                validUntil: min(session.validUntil, tokenValidUntil), generation: generation)
        }
        // Only now, for both credentials known good, is the query resolved (and remembered): the memo is not filled
        // by a valid JWT with any KIS token.
        let query: ChartQuery
        if let known {
            query = known.query
            if shared { memo.target = (uri, known) }
        } else {
            guard let q = resolve(uri, route: route, now: now, nowSeconds: nowSeconds) else { return nil }
            query = q
        }
        guard let entry = l1.get(query.cacheKey), nowSeconds < entry.freshUntil else {
            return .fetch(Fetch(query: query, token: resolvedToken, route: route, origin: allowedOrigin,
                                ifNoneMatch: fields.ifNoneMatch))
        }
        return .answer(chartAnswer(.hit(entry), route: route, origin: allowedOrigin, ifNoneMatch: fields.ifNoneMatch,
                                   nowSeconds: nowSeconds, cacheHit: true, allocator: allocator, memo: &memo))
    }

    /// What `ProblemRenderer` and `CORSMiddleware` answer for `problem` (and `Connection: close` with `close`).
    private func problem(_ problem: Problem, route: String, origin: String?, close: Bool = false,
                         allocator: ByteBufferAllocator) -> Answer {
        let rendered = ProblemRenderer.rendered(problem)
        let status = HTTPResponseStatus(statusCode: problem.status)
        var out = Head(status, allocator: allocator, capacity: 512 + (origin?.utf8.count ?? 0))
        for field in rendered.headers { out.add(name: field.name.rawName, value: field.value) }
        out.add("Content-Length", String(rendered.body.readableBytes))
        if close { out.add("Connection", "close") }
        addCORS(to: &out, origin: origin)
        return Answer(status: status, head: out, body: rendered.body, route: route, cacheHit: false)
    }

    /// The answer to a request refused before it was routed — its head longer than `[server] max_header_bytes`, or
    /// not HTTP/1.1: a problem like every other error, and the connection closes after it. `origin` is the request's
    /// allowed `Origin` when its head was read whole (a head over the limit but within the decoder's own, twice
    /// that), so that a browser can read the answer; nil when the decoder gave up before the end of the head.
    func malformed(_ reason: Refusal, origin: String?, allocator: ByteBufferAllocator) -> Answer {
        return problem(Problem(.invalidParameter, reason.detail), route: "unmatched", origin: origin, close: true,
                       allocator: allocator)
    }

    /// Why a request is refused before it is routed.
    enum Refusal {
        /// The decoder could not read it.
        case decoder(HTTPParserError)
        /// Its head is longer than `maxHeaderBytes` (measured here).
        case oversized
        /// HTTP/1.1 without exactly one `Host` (RFC 9112 §3.2).
        case host

        var detail: String {
            switch self {
            case .decoder(let error): HTTPRefusal.detail(error)
            case .oversized: "the request's header fields are longer than this server accepts ([server] max_header_bytes)"
            case .host: HTTPRefusal.hostDetail
            }
        }
    }

    /// Whether `head` is longer than `maxHeaderBytes` (``HeadSize``): for the heads the hit path leaves to the
    /// router, which measures those it answers as it reads their fields.
    func oversized(_ head: HTTPRequestHead) -> Bool {
        var size = HeadSize()
        for (name, value) in head.headers { size.add(name: name.utf8.count, value: value.utf8.count) }
        return size.exceeds(maxHeaderBytes, target: head.uri)
    }

    /// A request head's size as NIO's decoder measures it against its limits: the target and each header name and
    /// value each at most the limit, and all of them together too.
    struct HeadSize {
        private var bytes = 0
        private var longest = 0

        mutating func add(name: Int, value: Int) {
            bytes += name + value
            longest = Swift.max(longest, name, value)
        }

        func exceeds(_ limit: Int, target: String) -> Bool {
            let t = target.utf8.count
            return longest > limit || t > limit || bytes + t > limit
        }
    }

    private func addCORS(to head: inout Head, origin: String?) {
        head.add("Vary", "Origin")
        guard let origin else { return }
        head.add("Access-Control-Allow-Origin", origin)
        if cors.allowCredentials { head.add("Access-Control-Allow-Credentials", "true") }
        head.add("Access-Control-Expose-Headers", CORSHeaderValues.exposeHeaders)
    }

    /// The query of a chart target, validated as the router's handler would (and remembered); nil when it is
    /// invalid (the router then says why).
    private func resolve(_ uri: String, route: Route, now: Date, nowSeconds: Int64) -> ChartQuery? {
        guard let (path, query) = Self.split(uri) else { return nil }
        let symbol = route.parameter("symbol", in: path)
        let chartQuery: ChartQuery
        do throws(Problem) {
            switch route {
            case .domestic:
                chartQuery = try ChartQuery.domestic(symbol: symbol, query: query, maxRangeDays: maxRangeDays, now: now)
            case .overseas:
                chartQuery = try ChartQuery.overseas(exchange: route.parameter("exchange", in: path), symbol: symbol,
                                                     query: query, maxRangeDays: maxRangeDays, now: now)
            }
        } catch {
            return nil
        }
        let until = Self.memoValidUntil(chartQuery.exchange, now: now, nowSeconds: nowSeconds)
        // A chart URI is some 70 bytes; a longer one (padded with parameters nobody reads) is resolved every time
        // rather than remembered, so the memo holds at most `resolvedLimit` short keys.
        if uri.utf8.count <= Self.memoizedURILimit {
            resolved.withLock { r in
                if r.count >= resolvedLimit { r.removeAll(keepingCapacity: true) }
                r[uri] = Resolved(route: route, query: chartQuery, validUntil: until)
            }
        }
        return chartQuery
    }

    /// The longest URI whose resolved query is remembered.
    static let memoizedURILimit = 512

    /// Until when (Unix seconds) a query resolved at `now` is remembered: a minute, and never past the exchange's
    /// local midnight, when "today" — a default `end` — changes (not at all in the day's last minute).
    static func memoValidUntil(_ exchange: Exchange, now: Date, nowSeconds: Int64) -> Int64 {
        nowSeconds + Int64(min(60, (1439 - exchange.localTime(now).minute) * 60))
    }

    // MARK: - parsing

    /// The chart route `uri` is for, when it is one in plain form (no escapes, empty segments or fragment).
    static func route(of uri: String) -> Route? {
        let u = uri.utf8
        guard u.first == UInt8(ascii: "/"), !u.contains(UInt8(ascii: "%")), !u.contains(UInt8(ascii: "+")),
            !u.contains(UInt8(ascii: "#"))
        else { return nil }
        let path = uri.utf8.firstIndex(of: UInt8(ascii: "?")).map { uri[..<$0] } ?? uri[...]
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        guard !parts.contains(where: \.isEmpty) else { return nil }
        return Route.allCases.first { $0.matches(parts) }
    }

    /// Path and query parameters (first occurrence wins, as in the router's handler); nil for a query in a form
    /// the fast path leaves to the router (an empty or `=`-less parameter).
    static func split(_ uri: String) -> (Substring, [String: Substring])? {
        guard let q = uri.utf8.firstIndex(of: UInt8(ascii: "?")) else { return (uri[...], [:]) }
        var query: [String: Substring] = [:]
        let rest = uri[uri.utf8.index(after: q)...]
        if !rest.isEmpty {
            for pair in rest.split(separator: "&", omittingEmptySubsequences: false) {
                guard let eq = pair.utf8.firstIndex(of: UInt8(ascii: "=")), eq != pair.startIndex else { return nil }
                let key = String(pair[..<eq])
                if query[key] == nil { query[key] = pair[pair.utf8.index(after: eq)...] }
            }
        }
        return (uri[..<q], query)
    }

    // MARK: - recording

    func record(_ answer: Answer, method: HTTPMethod, nanoseconds: Int64) {
        observer?(Int(answer.status.code))
        if answer.cacheHit { metrics.cacheHit.increment() }
        recorder.record(method: method.rawValue, route: answer.route, status: Int(answer.status.code),
                        nanoseconds: nanoseconds)
    }
}

/// Sits between the HTTP/1 codec and the router's HTTPTypes conversion: answers what `HitPath` knows (or fetches)
/// and passes everything else on. Responses go out in request order: nothing is answered here while a request
/// passed to the router is still unanswered, and while a fetched chart is awaited the requests behind it are held
/// here (and the socket is not read) until its answer is written. The router's answers to `HEAD` requests leave
/// here without their body (RFC 9110 §9.3.2), their head unchanged — what NIO's encoder does when paired with the
/// decoder, which it is not here (see `GatewayHTTP1Channel`). Unlike the paired encoder, the router's answer to a
/// `CONNECT` (never a 2xx: no route takes it) keeps its body and framing, as RFC 9110 §9.3.6 allows for any other
/// status.
///
/// Graceful shutdown: Hummingbird closes a connection on `ChannelShouldQuiesceEvent` unless the router is
/// answering a request on it; while this handler is answering one, the event waits here until the answer is
/// written (the requests held behind it are then dropped with the connection, as Hummingbird drops them).
final class HitPathHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let path: HitPath
    private var context: ChannelHandlerContext?
    /// `HTTPResponseEncoder`'s context: an encoded head written through it goes on to the socket as it is.
    private var encoder: ChannelHandlerContext?
    /// The methods of the requests passed on whose answer has not ended yet, oldest first: the router's answer
    /// being written is to the first.
    private var routed = CircularBuffer<HTTPMethod>(initialCapacity: 2)
    /// What to do at the end of the request being read (its body, if any, is dropped).
    private var answering: (decision: HitPath.Decision, method: HTTPMethod, start: ContinuousClock.Instant, now: Date)?
    /// What arrived while a fetched chart is awaited, in order: request parts, inbound events (a half-close) and
    /// errors (a request the decoder refused) — none may overtake the answer being awaited.
    private enum Held {
        case read(NIOAny)
        case event(Any)
        case error(any Error)
    }

    /// A fetched chart is awaited: what arrives meanwhile waits in `held`, and reading waits in `readHeld`.
    private var fetching = false
    /// The client is not reading its answers (the channel's outbound buffer is over its high-water mark): what
    /// arrives waits in `held`, as while fetching, and the socket is not read, until the buffer drains. Without it a
    /// client pipelining requests it never reads the answers to grew the gateway's memory without bound (hits are
    /// answered here, not by the router, whose async writer waits for the buffer).
    private var paused = false
    /// Requests are held rather than answered.
    private var holding: Bool { fetching || paused }
    private var held = CircularBuffer<Held>(initialCapacity: 4)
    private var readHeld = false
    /// A `ChannelShouldQuiesceEvent` that waits for this handler's answer.
    private var quiesce: Any?
    /// A request refused before routing (by the decoder, or its head over `maxHeaderBytes`) and its allowed
    /// `Origin` if that was read, answered (and the connection closed) once the answers before it are out.
    private var refused: (reason: HitPath.Refusal, origin: String?)?
    /// The router has a request whose end has not been passed on yet: a decoder error now is in its body, and the
    /// router's body stream is the one to fail.
    private var routedBodyOpen = false
    /// A request passed to the router does not keep the connection (HTTP/1.0, `Connection: close`): the connection
    /// closes after its answer, and no request after it is answered.
    private var routedClose = false
    private var dates = HTTPDateCache()
    private var memo = HitPath.Memo()
    private var lastOrigin: (String, Bool)?
    /// Where this connection's fetches run: its own event loop (made at the first fetch).
    private var executor: EventLoopExecutor?
    /// A quiesce event was passed on once the last answer is written: the connection is closing, and nothing more
    /// is read or answered.
    private var closing = false
    /// How long the connection may stay with no request part read and nothing in progress (nil: for ever).
    private let idleTimeout: TimeAmount?
    private var idleTimer: Scheduled<Void>?
    /// A request part was read, or an answer written, since the idle timer last fired.
    private var sawActivity = false
    /// Since when a request's head has been read and its end not yet (set at the end of a read that leaves one
    /// open). Its body must come within the idle timeout: each byte of a body trickled in counts as activity, and a
    /// connection sending one a minute was kept for ever.
    private var bodySince: NIODeadline?

    init(path: HitPath, idleTimeout: TimeAmount? = nil) {
        self.path = path
        self.idleTimeout = idleTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Without the encoder in the pipeline nothing is answered here: the router answers everything.
        encoder = try? context.pipeline.syncOperations.context(handlerType: HTTPResponseEncoder.self)
        armIdleTimer(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        encoder = nil
        held.removeAll()
        idleTimer?.cancel()
        idleTimer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        idleTimer = nil
        context.fireChannelInactive()
    }

    /// The idle timeout of the whole connection, kept here because this handler sees every request part and every
    /// answer (Hummingbird's own sees only what the router answers, and would close a connection busy with the
    /// hit path's). A connection is closed after one to two `idleTimeout`s with no request part read, no answer
    /// written and nothing in progress: an idle keep-alive connection, or one sending a request head a byte at a
    /// time (the decoder passes no part until the head is whole) — and after one to two with a request's body
    /// unfinished, however it trickles in.
    private func armIdleTimer(context: ChannelHandlerContext) {
        guard let idleTimeout else { return }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        idleTimer = context.eventLoop.scheduleTask(in: idleTimeout) { handler.value.idleTimerFired() }
    }

    private func idleTimerFired() {
        guard let context else { return }
        // Busy means work on the server's side: a fetch, or a routed request read whole and not answered yet. A
        // request whose head or body is still coming is not (a client may declare a body and never send it); its
        // parts, as they come, are activity.
        let busy = fetching || routed.count > (routedBodyOpen ? 1 : 0)
        if !busy, let since = bodySince, let idleTimeout, NIODeadline.now() - since >= idleTimeout {
            idleTimer = nil
            context.close(promise: nil)
        } else if sawActivity || busy {
            sawActivity = false
            armIdleTimer(context: context)
        } else {
            idleTimer = nil
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // The connection closes once the last answer is written (or a refused request's, or the answer to a request
        // that did not keep the connection): nothing read after counts.
        if closing || refused != nil { return }
        sawActivity = true
        if holding {
            held.append(.read(data))
            return
        }
        switch unwrapInboundIn(data) {
        case .head(let head):
            // RFC 9112 §9.6: no request after one that closes the connection is processed — Hummingbird stops reading
            // after the router's answer to it, and the hit path must not answer (or fetch) what follows either.
            if routedClose {
                closing = true
                return
            }
            let start = ContinuousClock.now, now = Date()
            // The hit path checks `Host` and the head's size in the pass that reads the fields it needs; what it
            // leaves to the router is checked here.
            if routed.isEmpty, encoder != nil,
                let decision = path.decide(head, now: now, allocator: context.channel.allocator, memo: &memo,
                                           originAllowed: allowed)
            {
                if case .refuse(let reason, let origin) = decision {
                    refused = (reason, origin)
                    refuse(context: context)
                } else {
                    answering = (decision, head.method, start, now)
                }
            } else if head.version == .http1_1, encoder != nil, !HTTPRefusal.hasOneHost(head.headers) {
                refused = (.host, head.headers.first(name: "origin").flatMap { allowed($0) ? $0 : nil })
                if routed.isEmpty { refuse(context: context) }
            } else if encoder != nil, path.oversized(head) {
                // What the hit path leaves to the router is measured here (it measures what it answers itself).
                refused = (.oversized, head.headers.first(name: "origin").flatMap { allowed($0) ? $0 : nil })
                if routed.isEmpty { refuse(context: context) }
            } else {
                routed.append(head.method)
                routedBodyOpen = true
                routedClose = !head.isKeepAlive
                context.fireChannelRead(data)
            }
        case .body:
            if answering == nil { context.fireChannelRead(data) }
        case .end:
            bodySince = nil
            guard let pending = answering else {
                routedBodyOpen = false
                context.fireChannelRead(data)
                return
            }
            answering = nil
            switch pending.decision {
            case .answer(let answer):
                record(answer, method: pending.method, start: pending.start)
                let written = quiesce == nil ? nil : context.eventLoop.makePromise(of: Void.self)
                send(answer, date: pending.now, promise: written)
                releaseQuiesce(once: written?.futureResult)
                if !context.channel.isWritable { paused = true }
            case .fetch(let fetch):
                startFetch(fetch, method: pending.method, start: pending.start, context: context)
            case .refuse:
                break  // refused when its head was read, never kept for its end
            }
        }
    }

    /// Asks `ChartService` on a task, and sends its answer on the event loop.
    private func startFetch(_ fetch: HitPath.Fetch, method: HTTPMethod, start: ContinuousClock.Instant,
                            context: ChannelHandlerContext) {
        fetching = true
        let loop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: loop)
        let path = self.path
        let executor = self.executor ?? EventLoopExecutor(loop)
        self.executor = executor
        // Counted: when the client goes away meanwhile, nothing holds the server's shutdown for this task, which may
        // still start a refresh or another fetch (`ChartService.chart`).
        path.charts.background.start(on: executor) {
            let outcome = await path.fetch(fetch, on: executor)
            // On the loop already (the executor's job): answer in this job, before the jobs queued behind it.
            if loop.inEventLoop {
                handler.value.fetched(outcome, fetch: fetch, method: method, start: start)
            } else {
                loop.execute { handler.value.fetched(outcome, fetch: fetch, method: method, start: start) }
            }
        }
    }

    private func fetched(_ outcome: Result<ChartService.Outcome, Problem>, fetch: HitPath.Fetch, method: HTTPMethod,
                         start: ContinuousClock.Instant) {
        fetching = false
        let answer = path.answer(outcome, to: fetch, allocator: context?.channel.allocator ?? ByteBufferAllocator())
        record(answer, method: method, start: start)
        guard let context else { return }  // the connection went away meanwhile; the fetch filled the caches
        let written = quiesce == nil ? nil : context.eventLoop.makePromise(of: Void.self)
        send(answer, date: Date(), promise: written)
        if releaseQuiesce(once: written?.futureResult) { return }
        if !context.channel.isWritable { paused = true }
        replayHeld(context: context)
    }

    /// What arrived while requests were held, in order, until it all went or they are held again (another fetch
    /// began, or the client stopped reading its answers); then reading resumes, if it is not held. The async
    /// channel hands the request parts it was given to the router at the end of a read: one ends before any event
    /// or error.
    private func replayHeld(context: ChannelHandlerContext) {
        var replayed = false
        while !holding, let item = held.popFirst() {
            switch item {
            case .read(let data):
                replayed = true
                channelRead(context: context, data: data)
            case .event(let event):
                if replayed { context.fireChannelReadComplete() }
                replayed = false
                context.fireUserInboundEventTriggered(event)
            case .error(let error):
                if replayed { context.fireChannelReadComplete() }
                replayed = false
                errorCaught(context: context, error: error)
            }
        }
        if replayed { context.fireChannelReadComplete() }
        if !holding, readHeld, context.channel.isWritable {
            readHeld = false
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            paused = false
            replayHeld(context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    /// Recorded before the write, as the router's middleware records before Hummingbird writes.
    private func record(_ answer: HitPath.Answer, method: HTTPMethod, start: ContinuousClock.Instant) {
        path.record(answer, method: method, nanoseconds: TimeAmount(ContinuousClock.now - start).nanoseconds)
    }

    /// The head, then `Date` and the blank line (one buffer a second), then the body: one `writev`.
    private func send(_ answer: HitPath.Answer, date: Date, promise: EventLoopPromise<Void>? = nil) {
        guard let encoder else {  // never: nothing is answered without it
            promise?.succeed(())
            return
        }
        sawActivity = true
        let dateLine = dates.line(at: Int64(date.timeIntervalSince1970))
        encoder.write(NIOAny(IOData.byteBuffer(answer.head.bytes)), promise: nil)
        encoder.write(NIOAny(IOData.byteBuffer(dateLine)), promise: answer.body == nil ? promise : nil)
        if let body = answer.body { encoder.write(NIOAny(IOData.byteBuffer(body)), promise: promise) }
        encoder.flush()
    }

    /// Passes on a quiesce event that waited for an answer, once the answer is `written`; true if it did (the
    /// connection is closing). Not before: the connection closes on it, and a close drops what the socket has not
    /// taken yet — the end of a large chart, for a client that reads slowly.
    @discardableResult
    private func releaseQuiesce(once written: EventLoopFuture<Void>?) -> Bool {
        guard let event = quiesce, let context else { return false }
        quiesce = nil
        held.removeAll()
        guard let written else {
            context.fireUserInboundEventTriggered(event)
            return true
        }
        // Until the answer is written, requests that arrive are not answered: the connection closes after it.
        closing = true
        let bound = NIOLoopBound((context, event), eventLoop: context.eventLoop)
        written.whenComplete { _ in bound.value.0.fireUserInboundEventTriggered(bound.value.1) }
        return true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if bodySince == nil, answering != nil || routedBodyOpen { bodySince = .now() }
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent, fetching || answering != nil || paused {
            // (Paused: the answers written are the client's to read; the next one ends the connection.)
            quiesce = event
        } else if holding {
            held.append(.event(event))
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if refused != nil || closing || routedClose, error is HTTPParserError || error is ByteToMessageDecoderError {
            // The connection is closing: the decoder's later errors (one for every read after its first) go nowhere
            // — passed on, Hummingbird would answer with its bare 400 or close the channel before the answers went.
            return
        } else if holding {
            held.append(.error(error))
        } else if let bad = error as? HTTPParserError, encoder != nil, refused == nil, !routedBodyOpen {
            // Answered here, as a problem, rather than by Hummingbird's bare 400 — after the router's answers to
            // the requests before it.
            refused = (.decoder(bad), nil)
            if routed.isEmpty { refuse(context: context) }
        } else {
            context.fireErrorCaught(error)
        }
    }

    /// Answers the request the decoder refused, then closes the connection — once that answer, and everything
    /// written before it, has gone out (a close drops the writes still pending).
    private func refuse(context: ChannelHandlerContext) {
        guard let (bad, origin) = refused else { return }
        answering = nil  // a request cut short by the bad bytes is not answered
        let answer = path.malformed(bad, origin: origin, allocator: context.channel.allocator)
        record(answer, method: .RAW(value: "-"), start: ContinuousClock.now)
        let written = context.eventLoop.makePromise(of: Void.self)
        send(answer, date: Date(), promise: written)
        let channel = context.channel
        written.futureResult.whenComplete { _ in closeAfterLinger(channel) }
    }

    func read(context: ChannelHandlerContext) {
        if holding || !context.channel.isWritable {
            readHeld = true
        } else {
            context.read()
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        sawActivity = true
        let bodiless = routed.first == .HEAD
        switch unwrapOutboundIn(data) {
        case .head:
            context.write(data, promise: promise)
        case .body:
            if bodiless { promise?.succeed(()) } else { context.write(data, promise: promise) }
        case .end:
            if !routed.isEmpty { routed.removeFirst() }
            // Not `.end` after a HEAD answer: after a chunked head the encoder would write the last chunk. An empty
            // write keeps the promise and the flush in step.
            context.write(bodiless ? wrapOutboundOut(.body(.byteBuffer(ByteBuffer()))) : data, promise: promise)
            if routed.isEmpty, refused != nil {
                context.flush()
                refuse(context: context)
            }
        }
    }

    private func allowed(_ origin: String) -> Bool {
        // Compared byte for byte: `String`'s `==` is canonical equivalence, which would take other bytes for the last
        // origin allowed (and echo them). A serialised origin is ASCII (RFC 6454).
        if let (o, a) = lastOrigin, sameBytes(o, origin) { return a }
        let a = path.cors.allows(origin: origin)
        lastOrigin = (origin, a)
        return a
    }
}

/// Whether `a` and `b` are the same bytes (`==` on `String` is Unicode canonical equivalence): one `memcmp` for native
/// strings, on the hit path's every request.
@inline(__always)
private func sameBytes(_ a: String, _ b: String) -> Bool {
    let compared = a.utf8.withContiguousStorageIfAvailable { x in
        b.utf8.withContiguousStorageIfAvailable { y in
            x.count == y.count && (x.count == 0 || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0)
        }
    }
    return (compared ?? nil) ?? a.utf8.elementsEqual(b.utf8)
}
