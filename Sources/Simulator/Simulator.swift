public import Hummingbird
import HummingbirdTLS
import JWTKit
import KIS
import HTTPTypes
import HummingbirdCore
public import Logging
import NIOCore
import NIOSSL
import ServerKit
import Foundation

/// The KIS Open API simulator (../shared/spec/sim.md) as a Hummingbird application.
///
/// ```swift
/// let app = try await buildSimulator(SimulatorConfiguration(port: 0), logger: logger) { port in print(port) }
/// try await app.runService()
/// ```
public func buildSimulator(
    _ configuration: SimulatorConfiguration,
    logger: Logger,
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) async throws -> some ApplicationProtocol {
    try configuration.validate()
    let simulator = await Simulator(configuration: configuration, logger: logger)
    let router = Router(context: BasicRequestContext.self)
    simulator.addRoutes(to: router)

    let server: HTTPServerBuilder
    if let tls = try configuration.loadTLS() {
        server = try .tls(.closingHTTP1(idleTimeout: configuration.idleTimeout), tlsConfiguration: tls)
    } else {
        server = .closingHTTP1(idleTimeout: configuration.idleTimeout)
    }
    return Application(
        router: router,
        server: server,
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: nil),
        onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? 0) },
        logger: logger
    )
}

/// Route handlers. Each decision is made by `SimulatorState` under its lock; handlers only wait and write.
struct Simulator: Sendable {
    let configuration: SimulatorConfiguration
    let state = SimulatorState()
    let keys: JWTKeyCollection
    let logger: Logger

    init(configuration: SimulatorConfiguration, logger: Logger) async {
        self.configuration = configuration
        self.logger = logger
        let keys = JWTKeyCollection()
        var secret = [UInt8](repeating: 0, count: 64)
        for i in secret.indices { secret[i] = UInt8.random(in: 0...255) }
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha512)
        self.keys = keys
    }

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.post(RouterPath(KISPath.tokenP)) { request, _ in try await self.tokenP(request) }
        router.post(RouterPath(KISPath.revokeP)) { request, _ in try await self.revokeP(request) }
        router.get(RouterPath(KISPath.domesticDailyChart)) { request, _ in try await self.domesticDaily(request) }
        router.get(RouterPath(KISPath.overseasDailyPrice)) { request, _ in try await self.overseasDaily(request) }
        router.get("/__sim/stats") { _, _ in self.stats() }
        router.post("/__sim/reset") { _, _ in
            self.state.reset()
            return Self.controlJSON(["status": "reset"])
        }
        router.post("/__sim/faults") { request, _ in try await self.setFaults(request) }
        router.post("/__sim/clock") { request, _ in try await self.advanceClock(request) }
        router.post("/__sim/expire") { request, _ in try await self.expire(request) }
    }

    // MARK: - tokens

    struct TokenClaims: JWTPayload {
        var sub: String
        var aud: String
        var iss: String
        var exp: Int
        var iat: Int
        var jti: String
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    private struct LooseTokenRequest: Decodable {
        var grant_type: String?
        var appkey: String?
        var appsecret: String?
        var token: String?
    }

    private func decodeTokenBody(_ request: Request) async throws -> LooseTokenRequest? {
        let body = try await request.body.collect(upTo: 64 * 1024)
        return try? JSONDecoder().decode(LooseTokenRequest.self, from: Data(body.readableBytesView))
    }

    /// Checks an app key / secret pair: nil when acceptable, else the KIS code.
    private func credentialProblem(appKey: String?, appSecret: String?) -> String? {
        guard let appKey, !appKey.isEmpty else { return "EGW00102" }
        guard let appSecret, !appSecret.isEmpty else { return "EGW00104" }
        if let known = configuration.credentials {
            guard let secret = known[appKey] else { return "EGW00103" }
            guard secret == appSecret else { return "EGW00105" }
        }
        return nil
    }

    func tokenP(_ request: Request) async throws -> Response {
        state.count(call: "tokenP")
        try await tokenLatency()
        guard let body = try await decodeTokenBody(request) else { return tokenError("EGW00115", status: .forbidden) }
        guard let grant = body.grant_type, !grant.isEmpty else { return tokenError("EGW00115", status: .forbidden) }
        guard grant == "client_credentials" else { return tokenError("EGW00116", status: .forbidden) }
        if let problem = credentialProblem(appKey: body.appkey, appSecret: body.appsecret) {
            return tokenError(problem, status: .forbidden)
        }
        let appKey = body.appkey!, appSecret = body.appsecret!
        let now = state.now()
        switch state.decideToken(
            appKey: appKey, reuseWindow: configuration.reuseWindow, issueInterval: configuration.issueInterval, at: now)
        {
        case .tooSoon:
            return tokenError("EGW00133", status: .forbidden)
        case .reuse(let token, let expiresAt):
            return reuse(token, expiresAt: expiresAt, now: now)
        case .issue:
            let issued = Date(timeIntervalSince1970: now.timeIntervalSince1970.rounded(.down))
            let expires = issued.addingTimeInterval(TimeInterval(configuration.tokenTTL))
            let claims = TokenClaims(
                sub: "token", aud: UUID().uuidString.lowercased(), iss: "unogw",
                exp: Int(expires.timeIntervalSince1970), iat: Int(issued.timeIntervalSince1970), jti: appKey)
            var header = JWTHeader()
            header.typ = "JWT"
            let signed = try await keys.sign(claims, header: header)
            let (token, expiresAt, reused) = state.record(
                token: signed, appKey: appKey, appSecret: appSecret, issuedAt: issued, expiresAt: expires,
                reuseWindow: configuration.reuseWindow)
            if reused { return reuse(token, expiresAt: expiresAt, now: now) }
            logger.debug("simulator issued a token", metadata: ["expires": "\(KST.format(expires))"])
            return Self.json(
                KISTokenResponse(access_token: token, access_token_token_expired: KST.format(expiresAt),
                                 expires_in: configuration.tokenTTL), status: .ok)
        }
    }

    /// `--token-latency-ms`: KIS's token endpoint is not instant.
    private func tokenLatency() async throws {
        if configuration.tokenLatencyMs > 0 { try await Task.sleep(for: .milliseconds(configuration.tokenLatencyMs)) }
    }

    /// The answer handing back a token issued before, within the reuse window.
    private func reuse(_ token: String, expiresAt: Date, now: Date) -> Response {
        let remaining = max(0, Int(expiresAt.timeIntervalSince(now).rounded(.down)))
        let expiresIn = configuration.reuseReportsRemaining ? remaining : configuration.tokenTTL
        return Self.json(
            KISTokenResponse(access_token: token, access_token_token_expired: KST.format(expiresAt),
                             expires_in: expiresIn), status: .ok)
    }

    func revokeP(_ request: Request) async throws -> Response {
        state.count(call: "revokeP")
        try await tokenLatency()
        guard let body = try await decodeTokenBody(request) else { return tokenError("EGW00122", status: .forbidden) }
        if let problem = credentialProblem(appKey: body.appkey, appSecret: body.appsecret) {
            return tokenError(problem, status: .forbidden)
        }
        guard let token = body.token, !token.isEmpty else { return tokenError("EGW00122", status: .forbidden) }
        switch state.revoke(token: token, appKey: body.appkey!) {
        case .revoked: return Self.json(KISRevokeResponse(), status: .ok)
        case .unknownToken, .otherAppKey: return tokenError("EGW00121", status: .forbidden)
        }
    }

    private func tokenError(_ code: String, status: HTTPResponse.Status) -> Response {
        state.count(error: code)
        return Self.json(KISTokenError(code: code), status: status)
    }

    // MARK: - quotations

    /// What every quotation shares: credentials, token, tr_id, rate limit, faults. Returns an error response or nil.
    private func gate(_ request: Request, trID: String, requireCustType: Bool) async -> Response? {
        let h = request.headers
        let authorization = h[HTTPField.Name("authorization")!]
        let appKey = h[HTTPField.Name("appkey")!]
        let appSecret = h[HTTPField.Name("appsecret")!]
        let requestTrID = h[HTTPField.Name("tr_id")!] ?? ""

        if let problem = credentialProblem(appKey: appKey, appSecret: appSecret) {
            return kisError(problem, trID: requestTrID)
        }
        guard let authorization, !authorization.isEmpty else { return kisError("EGW00122", trID: requestTrID) }
        let parts = authorization.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            return kisError("EGW00205", trID: requestTrID)
        }
        guard state.admit(appKey: appKey!, limit: configuration.effectiveRatePerSecond) else {
            return kisError("EGW00201", trID: requestTrID)
        }
        let tokenString = String(parts[1]).trimmingCharacters(in: .whitespaces)
        guard let token = state.token(tokenString), !token.revoked, token.appKey == appKey else {
            return kisError("EGW00121", trID: requestTrID)
        }
        // The secret was checked with the app key above: with `--credentials` it is the app key's own; without, any
        // non-empty one (sim.md: any pair is accepted, and the app key's token is handed back whatever secret asked).
        guard token.expiresAt > state.now() else { return kisError("EGW00123", trID: requestTrID) }
        guard requestTrID == trID else { return kisError("OPSQ0002", trID: requestTrID) }
        if requireCustType {
            let custType = h[HTTPField.Name("custtype")!] ?? ""
            guard custType == "P" || custType == "B" else { return kisError("EGW00208", trID: requestTrID) }
        }

        // Latency, then faults.
        let faults = state.faults
        let hit = faults.rate >= 1 || Double.random(in: 0..<1) < faults.rate
        var delay = configuration.latencyMs
        if hit { delay += faults.latencyMs }
        if delay > 0 { try? await Task.sleep(for: .milliseconds(delay)) }
        guard hit else { return nil }
        switch faults.mode {
        case .none:
            return nil
        case .http500:
            state.count(error: "http500")
            var headers = HTTPFields()
            headers[.contentType] = "text/html"
            return Response(
                status: .internalServerError, headers: headers,
                body: .init(byteBuffer: ByteBuffer(string: "<html><body><h1>500 Internal Server Error</h1></body></html>")))
        case .timeout:
            state.count(error: "timeout")
            // Hang for up to 30 s, but let go as soon as the fault is lifted (reset) or the task is cancelled.
            for _ in 0..<600 where state.faults.mode == .timeout && !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(50))
            }
            return kisError("EGW00002", trID: requestTrID)
        case .garbage:
            state.count(error: "garbage")
            return Response(
                status: .ok, headers: kisHeaders(trID: requestTrID, trCont: ""),
                body: .init(byteBuffer: ByteBuffer(string: "{\"rt_cd\":\"0\",\"output2\":[{\"stck_bsop_dat")))
        case .kis_error:
            // An input error (`OPSQ2…`) in the shape KIS gives one (kis-api.md §6): HTTP 200, `rt_cd "2"`.
            if faults.msgCode.hasPrefix("OPSQ2") {
                let text = faults.msgCode == "OPSQ2002" ? "ERROR : INPUT FIELD_LENGTH" : "ERROR : INPUT INVALID_CHECK"
                return inputError(code: faults.msgCode, text: text, trID: requestTrID)
            }
            return kisError(faults.msgCode, trID: requestTrID)
        }
    }

    /// A KIS error envelope: gateway (`EGW…`) and service (`OPSQ…`) errors come as HTTP 500 with `rt_cd "1"`.
    private func kisError(_ code: String, trID: String) -> Response {
        state.count(error: code)
        let body = try! Self.encoder.encode(KISEnvelope.gateway(code))
        return Response(
            status: .internalServerError, headers: kisHeaders(trID: trID, trCont: ""),
            body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    /// An input error: HTTP 200 with `rt_cd "2"` (`OPSQ2001 ERROR : INPUT INVALID_CHECK_…`).
    private func inputError(_ field: String, trID: String, length: Bool = false) -> Response {
        length ? inputError(code: "OPSQ2002", text: "ERROR : INPUT FIELD_LENGTH", trID: trID)
            : inputError(code: "OPSQ2001", text: "ERROR : INPUT INVALID_CHECK_\(field)", trID: trID)
    }

    private func inputError(code: String, text: String, trID: String) -> Response {
        state.count(error: code)
        let body = try! Self.encoder.encode(KISEnvelope(rt_cd: "2", msg_cd: code, msg1: text))
        return Response(status: .ok, headers: kisHeaders(trID: trID, trCont: ""),
                        body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    private func kisHeaders(trID: String, trCont: String) -> HTTPFields {
        var headers = HTTPFields()
        headers[.contentType] = "application/json; charset=utf-8"
        headers[HTTPField.Name("tr_id")!] = trID
        headers[HTTPField.Name("tr_cont")!] = trCont
        headers[HTTPField.Name("gt_uid")!] = Self.gtUID()
        return headers
    }

    private static func gtUID() -> String {
        let hex = Array("0123456789abcdef".utf8)
        var bytes = [UInt8](repeating: 0, count: 32)
        for i in 0..<32 { bytes[i] = hex[Int.random(in: 0..<16)] }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Query parameters by upper-cased name (KIS accepts either case).
    private static func query(_ request: Request) -> [String: String] {
        var out: [String: String] = [:]
        for (k, v) in request.uri.queryParameters { out[k.uppercased()] = String(v) }
        return out
    }

    private var marketNow: Date { configuration.marketNow?() ?? Date() }

    /// The newest date with data: today once the session has opened, else the day before.
    private func lastDataDay(_ exchange: Exchange) -> CivilDate {
        let (date, minute) = exchange.localTime(marketNow)
        return minute >= exchange.sessions(on: date)[0].lowerBound ? date : date.adding(days: -1)
    }

    /// Pages newest-first rows: 100 at most, `tr_cont: D` (clients page by date, kis-api.md §5); with
    /// `trContPaging`, `M` while more rows follow, and `tr_cont: N` continues where the same query left off.
    private func page<T>(
        _ request: Request, appKey: String, rows: (_ limit: Int) -> [T]
    ) -> (rows: [T], trCont: String) {
        guard configuration.trContPaging else { return (rows(100), "D") }
        let key = appKey + "|" + request.uri.path + "|" + (request.uri.query ?? "")
        let wantsNext = request.headers[HTTPField.Name("tr_cont")!]?.uppercased() == "N"
        let offset = wantsNext ? (state.cursor(key) ?? 0) : 0
        let all = rows(offset + 101)
        let slice = Array(all.dropFirst(offset).prefix(100))
        let more = all.count > offset + 100
        state.setCursor(key, more ? offset + 100 : nil)
        return (slice, more ? "M" : "D")
    }

    func domesticDaily(_ request: Request) async throws -> Response {
        state.count(call: "domestic_daily")
        let trID = KISTrID.domesticDailyChart
        if let refusal = await gate(request, trID: trID, requireCustType: true) { return refusal }
        let q = Self.query(request)
        guard let market = q["FID_COND_MRKT_DIV_CODE"], ["J", "NX", "UN"].contains(market.uppercased()) else {
            return inputError("MRKT_DIV_CODE", trID: trID)
        }
        guard let code = q["FID_INPUT_ISCD"]?.uppercased(), !code.isEmpty else {
            return inputError("INPUT_ISCD", trID: trID)
        }
        guard code.count <= 12 else { return inputError("INPUT_ISCD", trID: trID, length: true) }
        guard let d1 = q["FID_INPUT_DATE_1"], let d2 = q["FID_INPUT_DATE_2"] else {
            return inputError("INPUT_DATE", trID: trID)
        }
        guard d1.count == 8, d2.count == 8 else { return inputError("INPUT_DATE", trID: trID, length: true) }
        // Year 0000 (pykis sends FID_INPUT_DATE_1="00000101" when no start is given, kis-api.md) means "since the
        // first bar": KIS takes it, so the simulator does.
        let sinceListing = d1.hasPrefix("0000") && d1.utf8.allSatisfy { $0 >= 48 && $0 <= 57 }
        let start = sinceListing ? nil : CivilDate(yyyymmdd: d1)
        guard sinceListing || start != nil, let end = CivilDate(yyyymmdd: d2) else {
            return inputError("INPUT_DATE", trID: trID)
        }
        guard let p = q["FID_PERIOD_DIV_CODE"].flatMap({ ChartPeriod(rawValue: $0.uppercased()) }) else {
            return inputError("PERIOD_DIV_CODE", trID: trID)
        }
        guard let adj = q["FID_ORG_ADJ_PRC"], adj == "0" || adj == "1" else {
            return inputError("ORG_ADJ_PRC", trID: trID)
        }
        let adjusted = adj == "0"  // KIS: 0 = adjusted (수정주가), 1 = original (원주가)

        guard let profile = MarketData.profile(symbol: code, exchange: .krx) else {
            let body = KISDomesticChartResponse(output1: .unknown(code), output2: [])
            return Self.json(body, status: .ok, headers: kisHeaders(trID: trID, trCont: "D"))
        }
        let today = lastDataDay(.krx)
        let appKey = request.headers[HTTPField.Name("appkey")!]!
        let (bars, trCont) = page(request, appKey: appKey) { limit in
            start.map { $0 > end } ?? false
                ? []
                : MarketData.bars(profile, period: p, adjusted: adjusted, start: start, end: end, today: today,
                                  limit: limit)
        }
        var rows = bars.map { Self.domesticRow($0, profile: profile, adjusted: adjusted) }
        if rows.isEmpty { rows = [KISDomesticBar.empty] }  // KIS sends `[{}]` when a range holds no bar
        let body = KISDomesticChartResponse(output1: Self.domesticSnapshot(profile, today: today), output2: rows)
        return Self.json(body, status: .ok, headers: kisHeaders(trID: trID, trCont: trCont))
    }

    func overseasDaily(_ request: Request) async throws -> Response {
        state.count(call: "overseas_daily")
        let trID = KISTrID.overseasDailyPrice
        if let refusal = await gate(request, trID: trID, requireCustType: false) { return refusal }
        let q = Self.query(request)
        guard let excd = q["EXCD"], let exchange = Exchange(excd: excd) else { return inputError("EXCD", trID: trID) }
        guard let symbol = q["SYMB"]?.uppercased(), !symbol.isEmpty else { return inputError("SYMB", trID: trID) }
        guard symbol.count <= 16 else { return inputError("SYMB", trID: trID, length: true) }
        let gubn = q["GUBN"] ?? ""
        let period: ChartPeriod
        switch gubn {
        case "0": period = .day
        case "1": period = .week
        case "2": period = .month
        default: return inputError("GUBN", trID: trID)
        }
        let modp = q["MODP"] ?? "0"
        guard modp == "0" || modp == "1" else { return inputError("MODP", trID: trID) }
        let adjusted = modp == "1"  // overseas: 1 = adjusted, the opposite of domestic
        let today = lastDataDay(exchange)
        let end: CivilDate
        if let bymd = q["BYMD"], !bymd.isEmpty {
            guard bymd.count == 8 else { return inputError("BYMD", trID: trID, length: true) }
            guard let d = CivilDate(yyyymmdd: bymd) else { return inputError("BYMD", trID: trID) }
            end = d
        } else {
            end = today
        }
        guard let profile = MarketData.profile(symbol: symbol, exchange: exchange) else {
            let body = KISOverseasDailyResponse(output1: .init(rsym: "", zdiv: "0", nrec: ""), output2: [])
            return Self.json(body, status: .ok, headers: kisHeaders(trID: trID, trCont: "D"))
        }
        let appKey = request.headers[HTTPField.Name("appkey")!]!
        let (bars, trCont) = page(request, appKey: appKey) { limit in
            MarketData.bars(profile, period: period, adjusted: adjusted, start: nil, end: end, today: today,
                            limit: limit)
        }
        let rows = bars.map { Self.overseasRow($0, profile: profile) }
        let body = KISOverseasDailyResponse(
            output1: .init(rsym: "D" + exchange.rawValue + symbol, zdiv: String(exchange.zdiv), nrec: String(rows.count)),
            output2: rows)
        return Self.json(body, status: .ok, headers: kisHeaders(trID: trID, trCont: trCont))
    }

    // MARK: - rows

    static func sign(_ change: Int64) -> String { change > 0 ? "2" : change < 0 ? "5" : "3" }

    static func domesticRow(_ bar: Bar, profile: MarketData.Profile, adjusted: Bool) -> KISDomesticBar {
        var previous = bar.previousClose
        var prtt = "0.00"
        if bar.isSplitDay, let split = profile.split {
            prtt = String(format: "%.2f", 1 / Double(split.ratio))
            if !adjusted, let p = previous { previous = p / split.ratio }  // change against the base price
        }
        let change = previous.map { bar.close - $0 } ?? 0
        return KISDomesticBar(
            stck_bsop_date: bar.date.yyyymmdd, stck_clpr: String(bar.close), stck_oprc: String(bar.open),
            stck_hgpr: String(bar.high), stck_lwpr: String(bar.low), acml_vol: String(bar.volume),
            acml_tr_pbmn: String(bar.turnover), flng_cls_code: "00", prtt_rate: prtt, mod_yn: "N",
            prdy_vrss_sign: sign(change), prdy_vrss: String(change), revl_issu_reas: "")
    }

    static func overseasRow(_ bar: Bar, profile: MarketData.Profile) -> KISOverseasBar {
        let e = profile.exchange
        func f(_ v: Int64) -> String { MarketData.format(v, tickDecimals: profile.decimals, zdiv: e.zdiv) }
        let change = bar.previousClose.map { bar.close - $0 } ?? 0
        var rate = "0.00"
        if let p = bar.previousClose, p > 0 {
            let r = Double(change) / Double(p) * 100
            rate = (change > 0 ? "+" : change < 0 ? "-" : "") + String(format: "%.2f", abs(r))
        }
        return KISOverseasBar(
            xymd: bar.date.yyyymmdd, clos: f(bar.close), sign: sign(change), diff: f(abs(change)), rate: rate,
            open: f(bar.open), high: f(bar.high), low: f(bar.low), tvol: String(bar.volume), tamt: String(bar.turnover),
            pbid: f(max(1, bar.close - 1)), vbid: String(100 * (1 + bar.volume % 9)), pask: f(bar.close + 1),
            vask: String(100 * (1 + bar.turnover % 7)))
    }

    /// `output1`: the stock as of its latest trading day.
    static func domesticSnapshot(_ p: MarketData.Profile, today: CivilDate) -> KISDomesticOutput1 {
        var d = today
        while !p.exchange.isTradingDay(d) { d = d.adding(days: -1) }
        let day = MarketData.day(p, d, adjusted: true)
        let prevDate = MarketData.previousTradingDay(p, before: d)
        let prev = prevDate.map { MarketData.day(p, $0, adjusted: true) } ?? day
        let change = day.close - prev.close
        let shares = Int64(10_000_000 + MarketData.mix(p.seed, 40) % 900_000_000)
        let eps = Double(day.close) / (6 + MarketData.unit(p.seed, 41) * 20)
        let bps = Double(day.close) / (0.5 + MarketData.unit(p.seed, 42) * 2.5)
        let tick = MarketData.krxTick(Double(prev.close))
        func pct(_ x: Double) -> String { String(format: "%.2f", x) }
        return KISDomesticOutput1(
            prdy_vrss: String(change), prdy_vrss_sign: sign(change),
            prdy_ctrt: pct(Double(change) / Double(max(prev.close, 1)) * 100), stck_prdy_clpr: String(prev.close),
            acml_vol: String(day.volume), acml_tr_pbmn: String(day.turnover), hts_kor_isnm: p.name ?? "",
            stck_prpr: String(day.close), stck_shrn_iscd: p.symbol, prdy_vol: String(prev.volume),
            stck_mxpr: String(prev.close * 13 / 10 / tick * tick), stck_llam: String((prev.close * 7 + 9) / 10 / tick * tick),
            stck_oprc: String(day.open), stck_hgpr: String(day.high), stck_lwpr: String(day.low),
            stck_prdy_oprc: String(prev.open), stck_prdy_hgpr: String(prev.high), stck_prdy_lwpr: String(prev.low),
            askp: String(day.close + MarketData.krxTick(Double(day.close))), bidp: String(day.close),
            prdy_vrss_vol: String(day.volume - prev.volume), vol_tnrt: pct(Double(day.volume) / Double(shares) * 100),
            stck_fcam: "100", lstn_stcn: String(shares), cpfn: String(shares * 100 / 100_000_000),
            hts_avls: String(Int64(Double(day.close) * Double(shares) / 100_000_000)), per: pct(Double(day.close) / eps),
            eps: pct(eps), pbr: pct(Double(day.close) / bps), itewhol_loan_rmnd_ratem: pct(MarketData.unit(p.seed, 43)))
    }

    // MARK: - control routes

    private struct FaultsBody: Decodable {
        var mode: String
        var msg_cd: String?
        var latency_ms: Int?
        var rate: Double?
    }

    private struct ClockBody: Decodable { var advance_s: Double }
    private struct ExpireBody: Decodable { var access_token: String }

    private enum Decoded<T> {
        case success(T)
        case failure(Response)
    }

    private func decodeControl<T: Decodable>(_ type: T.Type, _ request: Request) async throws -> Decoded<T> {
        let body = try await request.body.collect(upTo: 64 * 1024)
        do {
            return .success(try JSONDecoder().decode(T.self, from: Data(body.readableBytesView)))
        } catch {
            return .failure(Self.controlError("body is not valid JSON for this route: \(error)", status: .badRequest))
        }
    }

    func stats() -> Response {
        let s = state.statsSnapshot()
        struct Stats: Encodable {
            var calls: [String: Int]
            var errors: [String: Int]
            var issuances: Int
            var live_tokens: Int
        }
        return Self.json(Stats(calls: s.calls, errors: s.errors, issuances: s.issuances, live_tokens: s.tokens),
                         status: .ok)
    }

    func setFaults(_ request: Request) async throws -> Response {
        let body: FaultsBody
        switch try await decodeControl(FaultsBody.self, request) {
        case .success(let b): body = b
        case .failure(let r): return r
        }
        guard let mode = SimulatorState.Faults.Mode(rawValue: body.mode) else {
            let modes = SimulatorState.Faults.Mode.allCases.map(\.rawValue).joined(separator: ", ")
            return Self.controlError("mode must be one of \(modes), got \"\(body.mode)\"", status: .badRequest)
        }
        let rate = body.rate ?? 1.0
        guard (0...1).contains(rate) else {
            return Self.controlError("rate must be from 0 to 1, got \(rate)", status: .badRequest)
        }
        let latency = body.latency_ms ?? 0
        guard (0...600_000).contains(latency) else {
            return Self.controlError("latency_ms must be from 0 to 600000, got \(latency)", status: .badRequest)
        }
        let code = body.msg_cd ?? "EGW00201"
        guard !code.isEmpty, code.count <= 16 else {
            return Self.controlError("msg_cd must be a KIS message code such as EGW00201", status: .badRequest)
        }
        state.setFaults(.init(mode: mode, msgCode: code, latencyMs: latency, rate: rate))
        return Self.controlJSON(["mode": mode.rawValue, "msg_cd": code, "latency_ms": latency, "rate": rate])
    }

    func advanceClock(_ request: Request) async throws -> Response {
        let body: ClockBody
        switch try await decodeControl(ClockBody.self, request) {
        case .success(let b): body = b
        case .failure(let r): return r
        }
        guard body.advance_s >= 0, body.advance_s.isFinite else {
            return Self.controlError("advance_s must be a number of seconds, 0 or more", status: .badRequest)
        }
        guard let offset = state.advanceClock(seconds: body.advance_s) else {
            return Self.controlError("advance_s would move the clock more than 100 years ahead in all", status: .badRequest)
        }
        return Self.controlJSON(["offset_s": offset, "now": KST.format(state.now())])
    }

    func expire(_ request: Request) async throws -> Response {
        let body: ExpireBody
        switch try await decodeControl(ExpireBody.self, request) {
        case .success(let b): body = b
        case .failure(let r): return r
        }
        guard state.expire(token: body.access_token) else {
            return Self.controlError("no such access_token", status: .notFound)
        }
        return Self.controlJSON(["status": "expired"])
    }

    // MARK: - encoding

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.withoutEscapingSlashes]
        return e
    }()

    static func json(_ value: some Encodable, status: HTTPResponse.Status, headers: HTTPFields? = nil) -> Response {
        var h = headers ?? HTTPFields()
        if headers == nil { h[.contentType] = "application/json; charset=utf-8" }
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func controlJSON(_ object: [String: any Sendable]) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        var h = HTTPFields()
        h[.contentType] = "application/json"
        return Response(status: .ok, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func controlError(_ message: String, status: HTTPResponse.Status) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: ["error": message])) ?? Data("{}".utf8)
        var h = HTTPFields()
        h[.contentType] = "application/json"
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
