import Foundation
import Hummingbird
import KIS
import Logging
import NIOCore
import Synchronization
import TestSupport
import Testing

/// Answers real KIS gives and the simulator does not (kis-api.md §5–6): errors at any HTTP status, padded messages,
/// `output2` padded past `nrec`. The KIS client and the pager read them from a stand-in over a real socket.
@Suite("KIS answers the simulator never gives")
struct KISAnswerShapeTests {
    static let credentials = KISCredentials(appKey: "PSappkey-shape", appSecret: "secret-shape", accessToken: "token")

    /// Runs `body` with a KIS client whose every call (GET or POST) is answered `status` and `answer`.
    func withCannedKIS(_ status: Int, _ answer: String, _ body: (KISClient) async throws -> Void) async throws {
        let router = Router()
        @Sendable func canned(_: Request, _: BasicRequestContext) -> Response {
            Response(status: .init(code: status), headers: [.contentType: "application/json; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: answer)))
        }
        router.get("**", use: canned)
        router.post("**", use: canned)
        var logger = Logger(label: "canned-kis")
        logger.logLevel = .critical
        let (url, server) = await startStandInKIS(router, logger: logger)
        try await stopping([server]) { try await body(KISClient(baseURL: url, logger: logger)) }
    }

    struct ErrorAnswer: Sendable, CustomTestStringConvertible {
        let status: Int
        let body: String
        let kind: KISClientError.Kind
        let code: String?
        let message: String?
        /// KIS gave no message: none is made up.
        var noMessage = false
        var testDescription: String { "HTTP \(status) \(code ?? "no code")\(noMessage ? " without a message" : "")" }
    }

    /// "Clients should parse the JSON body whatever the status" (§6): the body decides, and `msg1`'s trailing
    /// spaces are not KIS's message.
    @Test("an error is KIS's envelope read whatever the HTTP status, its message trimmed", arguments: [
        ErrorAnswer(status: 200, body: #"{"rt_cd":"1","msg_cd":"EGW00123","msg1":"기간이 만료된 token 입니다."}"#,
                    kind: .tokenExpired, code: "EGW00123", message: "기간이 만료된 token 입니다."),
        ErrorAnswer(status: 429, body: #"{"rt_cd":"1","msg_cd":"EGW00201","msg1":"초당 거래건수를 초과하였습니다."}"#,
                    kind: .rateLimited, code: "EGW00201", message: "초당 거래건수를 초과하였습니다."),
        ErrorAnswer(status: 401, body: #"{"rt_cd":"1","msg_cd":"EGW00121","msg1":"유효하지 않은 token 입니다."}"#,
                    kind: .tokenInvalid, code: "EGW00121", message: "유효하지 않은 token 입니다."),
        ErrorAnswer(status: 200, body: #"{"rt_cd":"2","msg_cd":"OPSQ2001","msg1":"INPUT INVALID_CHECK_MRKT_DIV_CODE    "}"#,
                    kind: .upstream, code: "OPSQ2001", message: "INPUT INVALID_CHECK_MRKT_DIV_CODE"),
        ErrorAnswer(status: 403, body: #"{"error_description":"접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회) ","error_code":"EGW00133"}"#,
                    kind: .issuanceTooFrequent, code: "EGW00133", message: "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)"),
        ErrorAnswer(status: 502, body: "<html><body>Bad Gateway</body></html>", kind: .unreadable, code: nil, message: nil),
        // Whitespace around a code is not part of it: before, " EGW00123 " was no known code (`upstream`).
        ErrorAnswer(status: 500, body: #"{"rt_cd":"1","msg_cd":" EGW00123 ","msg1":"기간이 만료된 token 입니다. "}"#,
                    kind: .tokenExpired, code: "EGW00123", message: "기간이 만료된 token 입니다."),
        ErrorAnswer(status: 403, body: #"{"error_description":"접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)","error_code":"EGW00133\n"}"#,
                    kind: .issuanceTooFrequent, code: "EGW00133", message: "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)"),
        // A code with no message is still KIS's code: before, an envelope without msg1 was "unreadable".
        ErrorAnswer(status: 500, body: #"{"rt_cd":"1","msg_cd":"EGW00201"}"#,
                    kind: .rateLimited, code: "EGW00201", message: nil, noMessage: true),
        ErrorAnswer(status: 200, body: #"{"rt_cd":"1","msg_cd":"EGW00121 ","msg1":null}"#,
                    kind: .tokenInvalid, code: "EGW00121", message: nil, noMessage: true),
        ErrorAnswer(status: 403, body: #"{"error_code":"EGW00103"}"#,
                    kind: .credentialsRejected, code: "EGW00103", message: nil, noMessage: true),
        // No code at all: nothing to classify by.
        ErrorAnswer(status: 500, body: #"{"rt_cd":"1","msg1":"오류가 발생했습니다."}"#,
                    kind: .unreadable, code: nil, message: nil),
    ])
    func errorAnswers(answer: ErrorAnswer) async throws {
        try await withCannedKIS(answer.status, answer.body) { client in
            let day = CivilDate(yyyymmdd: "20250228")!
            do {
                _ = try await client.domesticDailyPage(Self.credentials, symbol: "005930", start: day.adding(days: -30),
                                                       end: day, period: "D", adjusted: true)
                Issue.record("no error thrown")
            } catch let error as KISClientError {
                #expect(error.kind == answer.kind, "\(error)")
                #expect(error.msgCode == answer.code)
                if let message = answer.message { #expect(error.message == message) }
                if answer.noMessage { #expect(error.message == nil && error.kisMessage == nil) }
                #expect(error.httpStatus == answer.status)
            }
        }
    }

    /// §2.1 types `expires_in` as a number. Before, an answer that wrote it as a string was refused whole, and the
    /// token KIS had issued — one issuance of its 1-per-minute limit, one KakaoTalk notice to the owner — was lost.
    @Test("tokenP's expires_in is read as a number or as a string of digits", arguments: ["86400", #""86400""#, #"" 86400 ""#])
    func tokenExpiresIn(expiresIn: String) async throws {
        let withExpiry = #"{"access_token":"eyJ0.eyJz.c2ln","access_token_token_expired":"2025-03-06 08:30:00","token_type":"Bearer","expires_in":\#(expiresIn)}"#
        try await withCannedKIS(200, withExpiry) { client in
            let t = try await client.issueToken(appKey: Self.credentials.appKey, appSecret: Self.credentials.appSecret)
            #expect(t.accessToken == "eyJ0.eyJz.c2ln")
            #expect(t.expiresIn == 86400)
            #expect(t.expiresAt == KST.parse("2025-03-06 08:30:00"))
            #expect(t.issuedAt == KST.parse("2025-03-05 08:30:00"))
        }
        // With no expiry text, `expires_in` alone gives the expiry.
        let withoutExpiry = #"{"access_token":"eyJ0.eyJz.c2ln","token_type":"Bearer","expires_in":\#(expiresIn)}"#
        try await withCannedKIS(200, withoutExpiry) { client in
            let before = Date()
            let t = try await client.issueToken(appKey: Self.credentials.appKey, appSecret: Self.credentials.appSecret)
            #expect(t.expiresIn == 86400 && t.issuedAt == nil)
            #expect(t.expiresAt >= before.addingTimeInterval(86400) && t.expiresAt <= Date().addingTimeInterval(86400))
        }
    }

    /// What is refused still is an answer with no token to use: its error names the field, not the body.
    @Test("a tokenP answer with no access_token, or one that is no token, is refused as unreadable", arguments: [
        #"{"token_type":"Bearer","expires_in":86400,"access_token_token_expired":"2025-03-06 08:30:00"}"#,
        #"{"access_token":12345,"token_type":"Bearer","expires_in":86400}"#,
        #"{"access_token":"","token_type":"Bearer","expires_in":86400}"#,
        #"{"access_token":"eyJ0 eyJz\n","token_type":"Bearer","expires_in":"86400"}"#,
        #"{"access_token":null,"token_type":"Bearer","expires_in":86400}"#,
    ])
    func tokenWithoutToken(answer: String) async throws {
        try await withCannedKIS(200, answer) { client in
            do {
                _ = try await client.issueToken(appKey: Self.credentials.appKey, appSecret: Self.credentials.appSecret)
                Issue.record("a token was accepted from \(answer)")
            } catch let error as KISClientError {
                #expect(error.kind == .unreadable, "\(error)")
                #expect(error.message?.contains("access_token") == true, "\(error)")
                #expect(error.msgCode == nil && error.httpStatus == 200)
            }
        }
    }

    /// A request as a stand-in KIS received it.
    struct Received: Sendable {
        let method: String
        let path: String
        let headers: [(String, String)]
        let body: [UInt8]
        func header(_ name: String) -> [String] { headers.filter { $0.0.lowercased() == name }.map(\.1) }
    }

    /// Runs `body` with a KIS client whose calls a stand-in records (``Received``, in order) and answers as KIS
    /// does when all is well: a token, a revocation, an empty chart page.
    func withRecordingKIS(_ body: (KISClient, _ received: @Sendable () -> [Received]) async throws -> Void)
        async throws
    {
        let received = Mutex<[Received]>([])
        @Sendable func record(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
            let bytes = try await request.body.collect(upTo: 1 << 20)
            received.withLock {
                $0.append(Received(method: request.method.rawValue, path: request.uri.path,
                                   headers: request.headers.map { ($0.name.rawName, $0.value) },
                                   body: Array(bytes.readableBytesView)))
            }
            let answer = switch request.uri.path {
            case KISPath.tokenP:
                #"{"access_token":"eyJ0.eyJz.c2ln","access_token_token_expired":"2025-03-06 08:30:00","token_type":"Bearer","expires_in":86400}"#
            case KISPath.revokeP: #"{"code":200,"message":"접근토큰 폐기에 성공하였습니다"}"#
            default: #"{"rt_cd":"0","msg_cd":"MCA00000","msg1":"정상처리 되었습니다.","output1":{},"output2":[]}"#
            }
            return Response(status: .ok, headers: [.contentType: "application/json; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: answer)))
        }
        let router = Router()
        router.get("**", use: record)
        router.post("**", use: record)
        var logger = Logger(label: "recording-kis")
        logger.logLevel = .critical
        let (url, server) = await startStandInKIS(router, logger: logger)
        try await stopping([server]) {
            try await body(KISClient(baseURL: url, logger: logger), { received.withLock { $0 } })
        }
    }

    /// §2.1–2.2: an app secret is base64-like (180 characters of KIS's alphabet, `/` and `+` among them), and KIS's
    /// samples send it as it is. Before, `JSONEncoder` wrote each `/` as `\/`, and its keys in an order that
    /// changed from run to run.
    @Test("tokenP and revokeP bodies are sent with / unescaped, the same bytes every time")
    func tokenBodiesKeepSlashes() async throws {
        let appKey = "PSg4Vb7nZ0aQWkx2cRdLm9TjYh3sEo1uFiAb"
        let appSecret = "xK/2m+Qz9/Rw" + String(repeating: "a/B+", count: 41) + "9/Zq"
        let token = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ0b2tlbiJ9.c2ln/+"
        try await withRecordingKIS { client, received in
            _ = try await client.issueToken(appKey: appKey, appSecret: appSecret)
            try await client.revokeToken(appKey: appKey, appSecret: appSecret, token: token)
            let calls = received()
            try #require(calls.map(\.path) == [KISPath.tokenP, KISPath.revokeP])
            #expect(calls.map(\.method) == ["POST", "POST"])
            let issue = String(decoding: calls[0].body, as: UTF8.self)
            let revoke = String(decoding: calls[1].body, as: UTF8.self)
            #expect(issue == #"{"appkey":"\#(appKey)","appsecret":"\#(appSecret)","grant_type":"client_credentials"}"#)
            #expect(revoke == #"{"appkey":"\#(appKey)","appsecret":"\#(appSecret)","token":"\#(token)"}"#)
            #expect(!issue.contains(#"\/"#) && !revoke.contains(#"\/"#))
            #expect(calls.allSatisfy { $0.header("content-type") == ["application/json; charset=utf-8"] })
        }
    }

    /// KIS's samples name themselves (kis-api.md §2.1); before, kisgw's calls carried no `User-Agent` at all.
    @Test("every KIS call — tokenP, revokeP, both charts — carries User-Agent: kisgw/<version>")
    func userAgent() async throws {
        try await withRecordingKIS { client, received in
            let issued = try await client.issueToken(appKey: Self.credentials.appKey,
                                                     appSecret: Self.credentials.appSecret)
            let credentials = KISCredentials(appKey: Self.credentials.appKey, appSecret: Self.credentials.appSecret,
                                             accessToken: issued.accessToken)
            let day = CivilDate(yyyymmdd: "20250228")!
            _ = try await client.domesticDailyPage(credentials, symbol: "005930", start: day.adding(days: -30),
                                                   end: day, period: "D", adjusted: true)
            _ = try await client.overseasDailyPage(credentials, exchange: .nas, symbol: "AAPL", period: "D", end: day,
                                                   adjusted: true)
            try await client.revokeToken(appKey: credentials.appKey, appSecret: credentials.appSecret,
                                         token: issued.accessToken)
            let calls = received()
            #expect(calls.map(\.path) == [KISPath.tokenP, KISPath.domesticDailyChart, KISPath.overseasDailyPrice,
                                          KISPath.revokeP])
            #expect(KISClient.userAgent == "kisgw/" + KisgwVersion.current)
            for call in calls { #expect(call.header("user-agent") == ["kisgw/" + KisgwVersion.current], "\(call.path)") }
        }
    }

    /// Runs `body` with a KIS client whose overseas `dailyprice` answers as KIS pages by date: the weekdays from
    /// `first` to `last`, newest first, 100 at most, from `BYMD` on — or, with `overlap`, from the `overlap`th
    /// weekday after `BYMD` (a page starting with rows the previous page ended with, as when the caller sets `BYMD`
    /// to the oldest date it has, KIS's backtester's way). `output1.nrec` is `nrec` of the page's row count.
    /// `calls` counts the quotation calls.
    func withPagedOverseasKIS(
        first: CivilDate, last: CivilDate, overlap: Int = 0, nrec: @escaping @Sendable (Int) -> String,
        _ body: (KISClient, _ calls: @Sendable () -> Int) async throws -> Void
    ) async throws {
        let weekdays = (first.dayNumber...last.dayNumber).map(CivilDate.init(dayNumber:)).filter { !$0.isWeekend }
        let calls = Mutex(0)
        let router = Router()
        router.get("**") { request, _ in
            calls.withLock { $0 += 1 }
            let bymd = request.uri.queryParameters["BYMD"].flatMap { CivilDate(yyyymmdd: $0) } ?? last
            let from = (weekdays.lastIndex { $0 <= bymd } ?? -1) + overlap
            let page = from < 0 ? [] : weekdays[...min(from, weekdays.count - 1)].suffix(100).reversed().map(Self.overseasRow)
            let answer = #"{"rt_cd":"0","msg_cd":"MCA00000","msg1":"정상처리 되었습니다.","output1":{"rsym":"DNASAAPL","zdiv":"4","nrec":"\#(nrec(page.count))"},"output2":[\#(page.joined(separator: ","))]}"#
            return Response(status: .ok, headers: [.contentType: "application/json; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: answer)))
        }
        var logger = Logger(label: "paged-kis")
        logger.logLevel = .critical
        let (url, server) = await startStandInKIS(router, logger: logger)
        try await stopping([server]) {
            try await body(KISClient(baseURL: url, logger: logger), { calls.withLock { $0 } })
        }
    }

    /// A `dailyprice` row for `day`, its close varying with the date.
    static func overseasRow(_ day: CivilDate) -> String {
        let close = "\(100 + day.dayNumber % 50).2500"
        return #"{"xymd":"\#(day.yyyymmdd)","clos":"\#(close)","open":"\#(close)","high":"\#(close)","low":"\#(close)","tvol":"1200","tamt":"121500"}"#
    }

    /// §5: `nrec` is labelled "previous close" in KIS's spec; python-kis reads it as a row count. Before, rows past
    /// `nrec` were cut whatever they held: an `nrec` of "0" beside 100 real rows lost them all, and the page, looking
    /// empty, ended the chart.
    @Test("an overseas nrec smaller than the real rows (\"0\") cuts none of them, and the next page is still asked for")
    func overseasNrecBelowRealRows() async throws {
        let first = CivilDate(yyyymmdd: "20240902")!, last = CivilDate(yyyymmdd: "20250404")!
        let weekdays = (first.dayNumber...last.dayNumber).map(CivilDate.init(dayNumber:)).filter { !$0.isWeekend }
        try #require(weekdays.count > 100 && weekdays.count < 200)
        try await withPagedOverseasKIS(first: first, last: last, nrec: { _ in "0" }) { client, calls in
            let chart = try await DailyChartPager.overseas(
                client: client, credentials: Self.credentials, exchange: .nas, symbol: "AAPL", start: first,
                end: last, period: "D", adjusted: true, beforeEachCall: {})
            #expect(chart.candles.map(\.date) == weekdays)
            #expect(chart.calls == 2 && calls() == 2)  // 100 rows, then the rest
            #expect(chart.known)
        }
    }

    /// KIS's backtester pages with `BYMD` set to the oldest date it has, so each page repeats rows of the one before
    /// (kis-api.md §5). Coverage: the pager keeps each date once, ascending.
    @Test("overseas pages whose first rows repeat the previous page's last dates: each date once, ascending")
    func overlappingPages() async throws {
        let first = CivilDate(yyyymmdd: "20240102")!, last = CivilDate(yyyymmdd: "20241231")!
        let weekdays = (first.dayNumber...last.dayNumber).map(CivilDate.init(dayNumber:)).filter { !$0.isWeekend }
        try await withPagedOverseasKIS(first: first, last: last, overlap: 3, nrec: { String($0) }) { client, calls in
            let chart = try await DailyChartPager.overseas(
                client: client, credentials: Self.credentials, exchange: .nas, symbol: "AAPL", start: first,
                end: last, period: "D", adjusted: true, beforeEachCall: {})
            #expect(chart.candles.map(\.date) == weekdays)
            #expect(zip(chart.candles, chart.candles.dropFirst()).allSatisfy { $0.date < $1.date })
            #expect(chart.candles.allSatisfy { $0.close.text == "\(100 + $0.date.dayNumber % 50).2500" })
            // 261 weekdays: 100 rows, 100 more (3 of them repeated), the last 64 (and 3 repeated).
            #expect(chart.calls == 3 && calls() == 3)
        }
    }

    /// `output2` may hold `{}` (the domestic bar type says so): such a row is no candle and no error. Coverage.
    @Test("{} rows inside output2 are ignored, domestic and overseas")
    func emptyObjectRows() async throws {
        let days = ["20250228", "20250227", "20250226", "20250225", "20250224"]
        let domestic = days.map { #"{"stck_bsop_date":"\#($0)","stck_clpr":"55200","stck_oprc":"54700","stck_hgpr":"55500","stck_lwpr":"54300","acml_vol":"100","acml_tr_pbmn":"5520000"}"# }
        let rows = [domestic[0], "{}", domestic[1], domestic[2], "{}", domestic[3], domestic[4], "{}"]
        let page = #"{"rt_cd":"0","msg_cd":"MCA00000","msg1":"정상처리 되었습니다.","output1":{"stck_prpr":"55200","hts_kor_isnm":"삼성전자"},"output2":[\#(rows.joined(separator: ","))]}"#
        let start = CivilDate(yyyymmdd: "20250201")!, end = CivilDate(yyyymmdd: "20250228")!
        try await withCannedKIS(200, page) { client in
            let chart = try await DailyChartPager.domestic(
                client: client, credentials: Self.credentials, symbol: "005930", start: start, end: end,
                period: "D", adjusted: true, beforeEachCall: {})
            #expect(chart.candles.map(\.date.yyyymmdd) == days.reversed())
            #expect(chart.known && chart.name == "삼성전자" && chart.calls == 1)
        }
        let overseas = days.map { Self.overseasRow(CivilDate(yyyymmdd: $0)!) }
        let overseasRows = [overseas[0], "{}", overseas[1], overseas[2], "{}", overseas[3], overseas[4], "{}"]
        let overseasPage = #"{"rt_cd":"0","msg_cd":"MCA00000","msg1":"정상처리 되었습니다.","output1":{"rsym":"DNASAAPL","zdiv":"4","nrec":"8"},"output2":[\#(overseasRows.joined(separator: ","))]}"#
        try await withCannedKIS(200, overseasPage) { client in
            let chart = try await DailyChartPager.overseas(
                client: client, credentials: Self.credentials, exchange: .nas, symbol: "AAPL", start: start, end: end,
                period: "D", adjusted: true, beforeEachCall: {})
            #expect(chart.candles.map(\.date.yyyymmdd) == days.reversed())
            #expect(chart.known && chart.calls == 1)
        }
    }

    /// §5: "PK uses it as the record count, truncating `output2` to `nrec`" — rows past it are padding.
    @Test("an overseas page is read up to nrec; a blank nrec keeps every row", arguments: ["37", ""])
    func overseasNrec(nrec: String) async throws {
        var day = CivilDate(yyyymmdd: "20250228")!
        var rows: [String] = []
        while rows.count < 37 {
            if day.weekday != 0 && day.weekday != 6 {
                rows.append(#"{"xymd":"\#(day.yyyymmdd)","clos":"101.25","open":"100.50","high":"102.00","low":"99.75","tvol":"1200","tamt":"121500"}"#)
            }
            day = day.adding(days: -1)
        }
        let oldest = day.adding(days: 1)
        let padding = Array(repeating: #"{"xymd":"","clos":"","open":"","high":"","low":"","tvol":"","tamt":""}"#,
                            count: nrec.isEmpty ? 0 : 63)
        let page = #"{"rt_cd":"0","msg_cd":"MCA00000","msg1":"정상처리 되었습니다.","output1":{"nrec":"\#(nrec)"},"output2":[\#((rows + padding).joined(separator: ","))]}"#
        try await withCannedKIS(200, page) { client in
            let chart = try await DailyChartPager.overseas(
                client: client, credentials: Self.credentials, exchange: .nas, symbol: "AAPL",
                start: oldest, end: CivilDate(yyyymmdd: "20250228")!, period: "D", adjusted: true,
                beforeEachCall: {})
            #expect(chart.candles.count == 37)
            #expect(chart.calls == 1)  // fewer than 100 valid rows: the last page
            #expect(chart.candles.first?.date == oldest)
            #expect(chart.known)
        }
    }
}
