import Foundation
import Gateway
import KIS
import KisgwConfiguration
import Logging
import Simulator
import NIOCore
import NIOHTTP1
import Prometheus
import ServerKit
import Store
import Testing
import Tokens
import TestSupport

@Suite("Gateway: charts, cache and validation over real sockets")
struct GatewayChartTests {
    @Test("a domestic chart over several KIS pages equals the simulator's rows, field for field", arguments: StoreKind.allCases)
    func domesticEqualsSimulator(kind: StoreKind) async throws {
        if kind == .redis { try TestServices.requireRedisURL() }
        try await withGateway(store: kind) { g, _ in
            let kis = try await g.connect(user: "u1", appKey: "PSapp-eq-\(kind)")
            let jwt = try await g.jwt("u1")
            let r = try await g.get("/domestic/chart/daily/005930?start=2024-01-01&end=2025-03-31", jwt: jwt, kis: kis)
            #expect(r.status == 200)
            #expect(r.header("X-Cache") == "MISS")
            #expect(r.header("Content-Type") == "application/json")
            #expect(r.json["market"] as? String == "domestic")
            #expect(r.json["exchange"] as? String == "KRX")
            #expect(r.json["name"] as? String == "삼성전자")
            #expect(r.json["currency"] as? String == "KRW")
            #expect(r.json["start"] as? String == "2024-01-01")
            #expect(r.json["end"] as? String == "2025-03-31")
            let candles = r.candles
            // Every trading day in the range, ascending, once.
            let days = (CivilDate("2024-01-01")!.dayNumber...CivilDate("2025-03-31")!.dayNumber)
                .map(CivilDate.init(dayNumber:)).filter { Exchange.krx.isTradingDay($0) }
            #expect(candles.map { $0["date"] as? String } == days.map(\.iso))
            // The simulator's own rows, paged by hand, match to the digit.
            let client = KISClient(baseURL: g.simURL, logger: .init(label: "t"))
            let creds = KISCredentials(appKey: "PSapp-eq-\(kind)", appSecret: "secret-PSapp-eq-\(kind)", accessToken: kis)
            let page = try await client.domesticDailyPage(creds, symbol: "005930", start: CivilDate("20240101")!,
                                                          end: CivilDate("20250331")!, period: "D", adjusted: true)
            let raw = Dictionary(uniqueKeysWithValues: (page.output2 ?? []).map { ($0.stck_bsop_date!, $0) })
            var compared = 0
            for c in candles {
                guard let date = c["date"] as? String, let row = raw[date.replacingOccurrences(of: "-", with: "")] else { continue }
                #expect("\(c["open"]!)" == row.stck_oprc)
                #expect("\(c["high"]!)" == row.stck_hgpr)
                #expect("\(c["low"]!)" == row.stck_lwpr)
                #expect("\(c["close"]!)" == row.stck_clpr)
                #expect("\(c["volume"]!)" == row.acml_vol)
                compared += 1
            }
            #expect(compared == 100)
            // Second time: a hit with the same bytes, no new KIS call.
            let calls = try await g.simStats()["domestic_daily"]
            let again = try await g.get("/domestic/chart/daily/005930?start=20240101&end=20250331", jwt: jwt, kis: kis)
            #expect(again.header("X-Cache") == "HIT")
            #expect(again.body == r.body)
            #expect(try await g.simStats()["domestic_daily"] == calls)
        }
    }

    /// The simulator's rows for one query, every page, by KIS's own continuation (`tr_cont: N` after `M`) rather than
    /// by the dates the gateway's pager walks back with: newest first, until the answer says `D` or passes `start`.
    static func rowsByContinuation(simURL: String, path: String, trID: String, query: String, token: String,
                                   appKey: String, dateField: String, start: CivilDate) async throws -> [[String: Any]] {
        var rows: [[String: Any]] = []
        var next = ""
        for _ in 0..<60 {
            let r = try await http(.GET, simURL + path + "?" + query, headers: [
                ("authorization", "Bearer " + token), ("appkey", appKey), ("appsecret", "secret-" + appKey),
                ("tr_id", trID), ("tr_cont", next), ("custtype", "P"),
            ])
            try #require(r.status == 200, "\(r.text)")
            let page = r.json["output2"] as? [[String: Any]] ?? []
            rows += page
            let oldest = page.compactMap { ($0[dateField] as? String).flatMap(CivilDate.init(yyyymmdd:)) }.min()
            guard r.header("tr_cont") == "M", let oldest, oldest >= start else { return rows }
            next = "N"
        }
        Issue.record("more than 60 pages")
        return rows
    }

    /// The candles of a gateway answer as the text it wrote them in: date and each number exactly as sent.
    static func candleTexts(_ body: String) -> [[String]] {
        let pattern = #"\{"date":"([0-9-]+)","open":([^,]+),"high":([^,]+),"low":([^,]+),"close":([^,]+),"volume":([^,}]+)(?:,"turnover":([^,}]+))?\}"#
        let regex = try! NSRegularExpression(pattern: pattern)
        let ns = body as NSString
        return regex.matches(in: body, range: NSRange(location: 0, length: ns.length)).map { m in
            (1...7).map { i in m.range(at: i).location == NSNotFound ? "" : ns.substring(with: m.range(at: i)) }
        }
    }

    @Test("daily, weekly and monthly charts over ten years, domestic and overseas, equal every row the simulator pages out by tr_cont",
          arguments: [("domestic", "D"), ("domestic", "W"), ("domestic", "M"), ("overseas", "D"), ("overseas", "W"),
                      ("overseas", "M")])
    func longChartsEqualSimulator(market: String, period: String) async throws {
        let sim = SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000,
                                         trContPaging: true)
        try await withGateway(sim: sim) { g, _ in
            let appKey = "PSapp-long-\(market)-\(period)"
            let kis = try await g.connect(user: "long", appKey: appKey)
            let jwt = try await g.jwt("long")
            // 3,651 days, within max_range_days; starting on a Wednesday, so the first week is cut by the range.
            let start = CivilDate("2015-01-07")!, end = CivilDate("2025-01-03")!
            let domestic = market == "domestic"
            let path = domestic ? "/domestic/chart/daily/005930" : "/overseas/NAS/chart/daily/AAPL"
            let r = try await g.get(path + "?start=\(start.iso)&end=\(end.iso)&period=\(period)", jwt: jwt, kis: kis)
            #expect(r.status == 200, "\(r.text.prefix(300))")
            let calls = (try await g.simStats())[domestic ? "domestic_daily" : "overseas_daily"] ?? 0

            let rows: [[String: Any]]
            let fields: [String]
            if domestic {
                fields = ["stck_bsop_date", "stck_oprc", "stck_hgpr", "stck_lwpr", "stck_clpr", "acml_vol", "acml_tr_pbmn"]
                rows = try await Self.rowsByContinuation(
                    simURL: g.simURL, path: KISPath.domesticDailyChart, trID: KISTrID.domesticDailyChart,
                    query: "FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=005930&FID_INPUT_DATE_1=\(start.yyyymmdd)"
                        + "&FID_INPUT_DATE_2=\(end.yyyymmdd)&FID_PERIOD_DIV_CODE=\(period)&FID_ORG_ADJ_PRC=0",
                    token: kis, appKey: appKey, dateField: fields[0], start: start)
            } else {
                fields = ["xymd", "open", "high", "low", "clos", "tvol", "tamt"]
                let gubn = ["D": "0", "W": "1", "M": "2"][period]!
                rows = try await Self.rowsByContinuation(
                    simURL: g.simURL, path: KISPath.overseasDailyPrice, trID: KISTrID.overseasDailyPrice,
                    query: "AUTH=&EXCD=NAS&SYMB=AAPL&GUBN=\(gubn)&BYMD=\(end.yyyymmdd)&MODP=1",
                    token: kis, appKey: appKey, dateField: fields[0], start: start)
            }
            var expected: [[String]] = rows.compactMap { row in
                guard let d = (row[fields[0]] as? String).flatMap(CivilDate.init(yyyymmdd:)), d >= start, d <= end
                else { return nil }
                return [d.iso] + fields.dropFirst().map { row[$0] as? String ?? "" }
            }.reversed()
            // The period that contains start (a Wednesday), when KIS dated its candle before start (the overseas
            // chart, which takes no start date): kept, dated at start.
            @Sendable func samePeriod(_ d: CivilDate) -> Bool {
                period == "W" ? d.startOfWeek == start.startOfWeek : period == "M" && d.startOfMonth == start.startOfMonth
            }
            let first = rows.compactMap { row -> (CivilDate, [String])? in
                guard let d = (row[fields[0]] as? String).flatMap(CivilDate.init(yyyymmdd:)), d < start, samePeriod(d)
                else { return nil }
                return (d, fields.dropFirst().map { row[$0] as? String ?? "" })
            }.max { $0.0 < $1.0 }
            if let first, !expected.contains(where: { samePeriod(CivilDate($0[0])!) }) {
                expected.insert([start.iso] + first.1, at: 0)
            }
            #expect((first != nil) == (market == "overseas" && period != "D"), "the case this test is about")
            let got = Self.candleTexts(r.text)
            #expect(got.count == r.candles.count)  // every candle was read by the pattern
            // Several pages each (100 rows a page), and the merge neither lost nor repeated a row.
            #expect(expected.count > (period == "M" ? 100 : 500), "\(expected.count) rows")
            #expect(calls >= expected.count / 100 + 1, "\(calls) KIS calls")
            #expect(got.count == expected.count)
            #expect(Set(got.map { $0[0] }).count == got.count)
            #expect(got.map { $0[0] } == got.map { $0[0] }.sorted())
            for (a, b) in zip(got, expected) where a != b {
                Issue.record("\(a) != \(b)")
                break
            }
        }
    }

    @Test("overseas prices keep KIS's decimals exactly")
    func overseasDecimals() async throws {
        try await withGateway { g, _ in
            let kis = try await g.connect(user: "u2", appKey: "PSapp-os")
            let jwt = try await g.jwt("u2")
            let r = try await g.get("/overseas/nas/chart/daily/aapl?start=2025-01-01&end=2025-03-05", jwt: jwt, kis: kis)
            #expect(r.status == 200)
            #expect(r.json["exchange"] as? String == "NAS")
            #expect(r.json["symbol"] as? String == "AAPL")
            #expect(r.json["currency"] as? String == "USD")
            #expect(r.json["name"] == nil)
            // The raw text carries four decimals, as KIS sent them, not a Double's shortest form.
            #expect(r.text.range(of: #""close":[0-9]+\.[0-9]{4}[,}]"#, options: .regularExpression) != nil)
            // New Year's Day and 01-09 (a day of mourning) are US holidays: no candles, as on KIS.
            #expect(r.candles.first?["date"] as? String == "2025-01-02")
            #expect(!r.candles.contains { $0["date"] as? String == "2025-01-09" })
            #expect(r.candles.contains { $0["date"] as? String == "2025-01-08" })
            #expect(r.candles.last?["date"] as? String == "2025-03-05")
        }
    }

    @Test("an overseas symbol with a slash (BRK/B) is one chart, sent as is, escaped or in lower case")
    func slashSymbol() async throws {
        try await withGateway { g, _ in
            let kis = try await g.connect(user: "u2s", appKey: "PSapp-slash")
            let jwt = try await g.jwt("u2s")
            let query = "?start=2025-03-03&end=2025-03-20"
            let plain = try await g.get("/overseas/NYS/chart/daily/BRK/B" + query, jwt: jwt, kis: kis)
            #expect(plain.status == 200)
            #expect(plain.json["symbol"] as? String == "BRK/B")
            #expect(plain.json["exchange"] as? String == "NYS")
            #expect(plain.header("X-Cache") == "MISS")
            #expect(!plain.candles.isEmpty)
            for path in ["/overseas/nys/chart/daily/brk/b", "/overseas/NYS/chart/daily/BRK%2FB", "/overseas/NYS/chart/daily/brk%2fb"] {
                let r = try await g.get(path + query, jwt: jwt, kis: kis)
                #expect(r.status == 200, "\(path)")
                #expect(r.header("X-Cache") == "HIT", "\(path)")
                #expect(r.header("ETag") == plain.header("ETag"), "\(path)")
            }
            #expect(try await g.simStats()["overseas_daily"] == 1)
            // More than 16 characters over several segments is still refused; the route's methods include them.
            let long = try await g.get("/overseas/NYS/chart/daily/ABCDEFGH/IJKLMNOP" + query, jwt: jwt, kis: kis)
            #expect(long.status == 400 && long.code == "invalid_parameter")
            // A `/` only between two parts: escapes cannot make another name for a symbol.
            for bad in ["BRK%2F%2FB", "%2FBRK", "BRK%2F", "BRK/%2FB"] {
                let r = try await g.get("/overseas/NYS/chart/daily/" + bad + query, jwt: jwt, kis: kis)
                #expect(r.status == 400 && r.code == "invalid_parameter", "\(bad): \(r.status)")
            }
            // Nor can empty segments, which the router skips: `BRK//B`, `BRK/`, `//BRK` were answered as BRK/B and
            // BRK, and a domestic `005930/` as 005930.
            for bad in ["/overseas/NYS/chart/daily/BRK//B", "/overseas/NYS/chart/daily/BRK/",
                        "/overseas/NYS/chart/daily//BRK", "/domestic/chart/daily/005930/", "/domestic/chart/daily/005930//"] {
                let r = try await g.get(bad + query, jwt: jwt, kis: kis)
                #expect(r.status == 400 && r.code == "invalid_parameter", "\(bad): \(r.status) \(r.text)")
            }
            #expect(try await g.simStats()["overseas_daily"] == 1)
            let m = try await http(.DELETE, g.gatewayURL + "/overseas/NYS/chart/daily/BRK/B")
            #expect(m.status == 405 && m.header("Allow") == "GET, HEAD, OPTIONS")
        }
    }

    @Test("ETag and If-None-Match give 304 with no body; Cache-Control, Age and Server-Timing are set")
    func conditional() async throws {
        try await withGateway { g, _ in
            let kis = try await g.connect(user: "u3", appKey: "PSapp-etag")
            let jwt = try await g.jwt("u3")
            let path = "/domestic/chart/daily/000660?start=2025-01-02&end=2025-02-28"
            let first = try await g.get(path, jwt: jwt, kis: kis)
            let etag = try #require(first.header("ETag"))
            #expect(etag.hasPrefix("\"") && etag.hasSuffix("\""))
            #expect(first.header("Cache-Control")?.hasPrefix("private, max-age=") == true)
            #expect(first.header("Age").flatMap { Int($0) }.map { $0 <= 1 } == true)  // stored as it was answered
            #expect(first.header("Server-Timing")?.contains(#"cache;desc="miss""#) == true)
            #expect(first.header("Server-Timing")?.contains("upstream;dur=") == true)
            let second = try await g.get(path, jwt: jwt, kis: kis, headers: [("If-None-Match", etag)])
            #expect(second.status == 304)
            #expect(second.body.isEmpty)
            #expect(second.header("ETag") == etag)
            #expect(second.header("Server-Timing") == #"cache;desc="hit""#)
            // "Response headers on every chart response": a 304 too.
            #expect(second.header("Cache-Control")?.wholeMatch(of: /private, max-age=\d+/) != nil, "\(second.header("Cache-Control") ?? "none")")
            #expect(second.header("Age").flatMap { Int($0) } != nil)
            #expect(second.header("X-Cache") == "HIT")
            let weak = try await g.get(path, jwt: jwt, kis: kis, headers: [("If-None-Match", #""nope", W/"# + etag)])
            #expect(weak.status == 304)
            let other = try await g.get(path, jwt: jwt, kis: kis, headers: [("If-None-Match", #""nope""#)])
            #expect(other.status == 200)
        }
    }

    @Test("bad parameters: one clear problem each", arguments: [
        ("/domestic/chart/daily/12345", "invalid_parameter"),
        ("/domestic/chart/daily/0059301234", "invalid_parameter"),
        ("/domestic/chart/daily/005930?start=2024-13-01", "invalid_parameter"),
        ("/domestic/chart/daily/005930?end=20240230", "invalid_parameter"),
        ("/domestic/chart/daily/005930?start=2024-03-01&end=2024-02-01", "invalid_parameter"),
        ("/domestic/chart/daily/005930?period=Q", "invalid_parameter"),
        ("/domestic/chart/daily/005930?adjusted=yes", "invalid_parameter"),
        ("/domestic/chart/daily/005930?start=2000-01-01&end=2020-01-01", "range_too_large"),
        ("/overseas/XXX/chart/daily/AAPL", "invalid_parameter"),
        ("/overseas/NAS/chart/daily/AAPL?period=Y", "invalid_parameter"),
        ("/overseas/NAS/chart/daily/AA%20PL", "invalid_parameter"),
        ("/overseas/NAS/chart/daily/ABCDEFGHIJKLMNOPQ", "invalid_parameter"),
    ])
    func badParameters(path: String, code: String) async throws {
        try await withGateway { g, _ in
            let kis = try await g.connect(user: "u4", appKey: "PSapp-bad")
            let r = try await g.get(path, jwt: try await g.jwt("u4"), kis: kis)
            #expect(r.status == 400)
            #expect(r.code == code)
            #expect(r.header("Content-Type") == "application/problem+json")
            #expect(r.json["type"] as? String == "https://kisgw.dev/problems/\(code)")
            #expect((r.json["detail"] as? String)?.isEmpty == false)
            #expect(try await g.simStats()["domestic_daily"] == 0)
        }
    }

    @Test("unknown routes are 404, a wrong method 405 with Allow, a plain OPTIONS 204 with Allow; health, readiness and metrics answer")
    func routesAndOperations() async throws {
        try await withGateway { g, _ in
            let nf = try await g.get("/nope", jwt: nil, kis: nil)
            #expect(nf.status == 404 && nf.code == "not_found")
            let m = try await http(.DELETE, g.gatewayURL + "/domestic/chart/daily/005930")
            #expect(m.status == 405 && m.code == "method_not_allowed")
            #expect(m.header("Allow") == "GET, HEAD, OPTIONS")
            // A plain OPTIONS (no preflight) asks for the methods: 204 with Allow where OPTIONS is one of them.
            for (path, allow) in [("/domestic/chart/daily/005930", "GET, HEAD, OPTIONS"), ("/overseas/NAS/chart/daily/AAPL", "GET, HEAD, OPTIONS"),
                                  ("/token/refresh", "POST, OPTIONS")] {
                let o = try await http(.OPTIONS, g.gatewayURL + path)
                #expect(o.status == 204 && o.header("Allow") == allow, "\(path): \(o.status) \(o.header("Allow") ?? "")")
            }
            let healthOptions = try await http(.OPTIONS, g.gatewayURL + "/healthz")
            #expect(healthOptions.status == 405 && healthOptions.header("Allow") == "GET, HEAD")
            #expect(try await g.get("/healthz", jwt: nil, kis: nil).json["status"] as? String == "ok")
            #expect(try await g.get("/readyz", jwt: nil, kis: nil).status == 200)
            #expect(try await g.get("/metrics", jwt: nil, kis: nil).status == 200)
        }
    }

    @Test("HEAD is answered wherever GET is: the GET answer's status and headers, no body")
    func headLikeGet() async throws {
        try await withGateway { g, _ in
            let (jwt, kis) = try await g.signIn("head-user")
            let path = "/domestic/chart/daily/005930?start=2025-03-03&end=2025-05-30"
            let credentials = [("Authorization", "Bearer " + jwt), ("X-KIS-Token", kis), ("Origin", "http://localhost:3000")]
            // First as HEAD: a miss fetched for it, as for a GET.
            let miss = try await http(.HEAD, g.gatewayURL + path, headers: credentials)
            #expect(miss.status == 200 && miss.body.isEmpty && miss.header("X-Cache") == "MISS")
            let get = try await http(.GET, g.gatewayURL + path, headers: credentials)
            #expect(get.status == 200 && get.header("X-Cache") == "HIT")
            let head = try await http(.HEAD, g.gatewayURL + path, headers: credentials)
            #expect(head.status == 200 && head.body.isEmpty)
            for name in ["ETag", "Content-Type", "Content-Length", "X-Cache", "Access-Control-Allow-Origin", "Vary"] {
                #expect(head.header(name) != nil && head.header(name) == get.header(name), "\(name)")
            }
            #expect(head.header("Content-Length") == String(get.body.count))
            let notModified = try await http(.HEAD, g.gatewayURL + path,
                                             headers: credentials + [("If-None-Match", get.header("ETag") ?? "")])
            #expect(notModified.status == 304 && notModified.body.isEmpty)
            // gateway-api.md: "Every response that depends on `Origin` has `Vary: Origin`" — a 200 and a 304 carry
            // CORS headers for the asking origin, so a shared cache must not answer another origin with them.
            let getNotModified = try await http(.GET, g.gatewayURL + path,
                                                headers: credentials + [("If-None-Match", get.header("ETag") ?? "")])
            #expect(getNotModified.status == 304 && getNotModified.body.isEmpty)
            for (what, r) in [("200", get), ("HEAD 200", head), ("HEAD 304", notModified), ("304", getNotModified)] {
                let vary = r.headers("Vary").flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
                #expect(vary.contains { $0.caseInsensitiveCompare("Origin") == .orderedSame }, "\(what): Vary \(vary)")
                #expect(r.header("Access-Control-Allow-Origin") == "http://localhost:3000", "\(what)")
            }
            // Problems too: the status and headers of the GET's, no body.
            let refused = try await http(.HEAD, g.gatewayURL + path, headers: [("Origin", "http://localhost:3000")])
            #expect(refused.status == 401 && refused.body.isEmpty)
            #expect(refused.header("Content-Type") == "application/problem+json")
            #expect(refused.header("Access-Control-Allow-Origin") == "http://localhost:3000")
            #expect(try await g.simStats()["domestic_daily"] == 1)
            for op in ["/healthz", "/readyz", "/metrics"] {
                let h = try await http(.HEAD, g.gatewayURL + op)
                #expect(h.status == 200 && h.body.isEmpty && h.header("Content-Length") != nil, "\(op)")
            }
            // On the wire: the head, then nothing, and the connection goes on to the next request.
            let port = g.gatewayPort
            let raw = try await exchangeRawBytes(port: port, "HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
                + "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            let answers = raw.components(separatedBy: "HTTP/1.1 200 OK")
            #expect(answers.count == 3, "\(raw)")
            #expect(answers.count == 3 && answers[1].hasSuffix("\r\n\r\n") && answers[2].hasSuffix(#"{"status":"ok"}"#), "\(raw)")
        }
    }
}

@Suite("Gateway: authentication matrix")
struct GatewayAuthTests {
    @Test("missing, malformed, expired, another user's, revoked credentials")
    func matrix() async throws {
        try await withGateway { g, _ in
            let mine = try await g.connect(user: "alice", appKey: "PSapp-alice")
            let theirs = try await g.connect(user: "bob", appKey: "PSapp-bob")
            let jwt = try await g.jwt("alice")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            func check(_ jwt: String?, _ kis: String?, _ code: String, _ extra: [(String, String)] = [],
                       _ line: Int = #line) async throws {
                let r = try await g.get(path, jwt: jwt, kis: kis, headers: extra)
                #expect(r.status == 401, "line \(line)")
                #expect(r.code == code, "line \(line): \(r.text)")
                let www = r.header("WWW-Authenticate")
                #expect(www == (code == "auth_required" ? "Bearer" : #"Bearer error="invalid_token""#), "line \(line)")
                #expect(!r.text.contains(mine) && !r.text.contains(theirs))
            }
            try await check(nil, mine, "auth_required")
            try await check(jwt, nil, "auth_required")
            let basic = try await g.get(path, jwt: nil, kis: mine, headers: [("Authorization", "Basic Zm9vOmJhcg==")])
            #expect(basic.code == "auth_required")
            try await check("not.a.jwt", mine, "jwt_invalid")
            try await check(try await g.jwt("alice", ttl: -3600), mine, "jwt_expired")
            try await check(jwt, "unknown-token", "kis_token_invalid")
            try await check(jwt, theirs, "kis_token_invalid")
            // Both credentials before the parameters: a KIS token not theirs, with a bad query, says nothing of the
            // query (the client's refresh acts on kis_token_*).
            for kis in ["unknown-token", theirs] {
                let r = try await g.get("/domestic/chart/daily/005930?period=Q&start=1999-01-01", jwt: jwt, kis: kis)
                #expect(r.status == 401 && r.code == "kis_token_invalid", "\(r.text)")
            }
            #expect(try await g.get(path, jwt: jwt, kis: mine).status == 200)
            // Revoked: unpublished by the broker → refused at once, even though the decision was cached.
            try await TokenDirectory.unpublish(sha256: TokenDirectory.sha256(of: mine), userID: "alice",
                                               environment: .live, store: g.store)
            var refused = false
            for _ in 0..<50 where !refused {
                refused = try await g.get(path, jwt: jwt, kis: mine).code == "kis_token_invalid"
                if !refused { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(refused)
        }
    }

    @Test("a KIS token past its expiry gives kis_token_expired, whether this gateway saw it before or not")
    func expiredHere() async throws {
        try await withGateway { g, _ in
            // Published to expire in 4 s (the record's TTL ends then), and used while live: the decision is remembered.
            let kis = try await g.connect(user: "dave", appKey: "PSapp-dave", expiresIn: 4)
            let jwt = try await g.jwt("dave")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).status == 200)
            try await Task.sleep(for: .milliseconds(4600))
            #expect(try await g.store.get(TokenDirectory.recordKey(TokenDirectory.sha256(of: kis))) == nil)
            // Asked for by another user: not theirs, whatever its expiry.
            #expect(try await g.get(path, jwt: try await g.jwt("mallory"), kis: kis).code == "kis_token_invalid")
            let r = try await g.get(path, jwt: jwt, kis: kis)
            #expect(r.status == 401)
            #expect(r.code == "kis_token_expired")
            #expect(r.header("WWW-Authenticate") == #"Bearer error="invalid_token""#)
            // Never seen here, no record, and its own `exp` (KIS's tokens are JWTs) has passed: expired too.
            let stale = try await JWTVerifier.mintHS256(secret: Array("a secret that is not KIS's, 32 bytes or more".utf8), sub: "PSapp-dave", ttl: -60)
            #expect(try await g.get(path, jwt: jwt, kis: stale).code == "kis_token_expired")
            // Not yet past it, or no `exp` to read: unknown.
            let live = try await JWTVerifier.mintHS256(secret: Array("a secret that is not KIS's, 32 bytes or more".utf8), sub: "PSapp-dave", ttl: 600)
            #expect(try await g.get(path, jwt: jwt, kis: live).code == "kis_token_invalid")
            #expect(try await g.get(path, jwt: jwt, kis: "a.b.c").code == "kis_token_invalid")
        }
    }

    @Test("a record the gateway cannot open (another seal key, tampered, malformed) is kis_token_invalid, not a store outage")
    func unopenableRecord() async throws {
        try await withGateway { g, _ in
            let jwt = try await g.jwt("erin")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            // Sealed by a broker whose `[seal]` keys this gateway does not hold.
            let foreign = try SealKeyring(current: "k9", keys: ["k9": (0..<32).map { _ in UInt8.random(in: 0...255) }])
            let token = "foreign-kis-token"
            try await TokenDirectory.publish(
                SealedCredentials(access_token: token, app_key: "PSapp-erin", app_secret: "secret"), userID: "erin",
                environment: .live, issuedAt: Date(), expiresAt: Date().addingTimeInterval(3600), store: g.store,
                keyring: foreign)
            let r = try await g.get(path, jwt: jwt, kis: token)
            #expect(r.status == 401)
            #expect(r.code == "kis_token_invalid")
            #expect(!r.text.contains(token))
            // Not a token record at all.
            let junk = "junk-kis-token"
            try await g.store.set(TokenDirectory.recordKey(TokenDirectory.sha256(of: junk)), to: ByteBuffer(string: "{nope"),
                                  ttl: .seconds(60))
            #expect(try await g.get(path, jwt: jwt, kis: junk).code == "kis_token_invalid")
            #expect(try await g.get("/readyz", jwt: nil, kis: nil).status == 200)
            #expect(try await g.simStats()["domestic_daily"] == 0)
        }
    }

    @Test("a token KIS says expired gives kis_token_expired")
    func kisExpired() async throws {
        try await withGateway { g, _ in
            let kis = try await g.connect(user: "carol", appKey: "PSapp-carol")
            _ = try await g.sim(.POST, "/__sim/expire", #"{"access_token":"\#(kis)"}"#)
            let r = try await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31",
                                    jwt: try await g.jwt("carol"), kis: kis)
            #expect(r.status == 401)
            #expect(r.code == "kis_token_expired")
            // The broker is told (so its refresh issues a new token) and the record is gone for every gateway.
            let sha = TokenDirectory.sha256(of: kis)
            #expect(try await eventually { try await TokenDirectory.deadReason(sha256: sha, store: g.store) == "EGW00123" })
            #expect(try await g.store.get(TokenDirectory.recordKey(sha)) == nil)
        }
    }

    /// kis-api.md §6: KIS answers `EGW00123` as HTTP 500 with its envelope, and the body decides, not the status.
    /// Here KIS's exact answer comes from a stand-in in front of the simulator. Coverage.
    @Test("KIS answering HTTP 500 with an EGW00123 envelope gives kis_token_expired, with no retry")
    func kisExpiredAnsweredAs500() async throws {
        let standIn = StandInKIS(failure: .tokenExpired, failing: [1])
        let (url, server) = await standIn.start()
        try await stopping([server]) {
            try await withGateway(config: { simURL in
                standIn.forwardTo(simURL)
                return testConfig(simURL: simURL, liveURL: url)
            }) { g, _ in
                let (jwt, kis) = try await g.signIn("expired-500")
                let r = try await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
                #expect(r.status == 401, "\(r.text)")
                #expect(r.code == "kis_token_expired")
                #expect(r.json["kis_msg_cd"] as? String == "EGW00123")
                #expect(standIn.seen.calls == 1)  // a token KIS calls expired is not asked with again
                let sha = TokenDirectory.sha256(of: kis)
                #expect(try await eventually { try await TokenDirectory.deadReason(sha256: sha, store: g.store) == "EGW00123" })
            }
        }
    }

    @Test("a token KIS refused on one gateway is refused at once by the other, which remembered it, with no KIS call; it leaves the user's set")
    func kisExpiredAcrossGateways() async throws {
        try TestServices.requireRedisURL()
        try await withGateway(store: .redis, gateways: 2) { g, urls in
            let kis = try await g.connect(user: "dave", appKey: "PSapp-dave")
            let jwt = try await g.jwt("dave")
            let chart = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(chart, jwt: jwt, kis: kis, base: urls[0]).status == 200)
            // The second gateway answers from the shared cache and remembers the token's decision.
            let hit = try await g.get(chart, jwt: jwt, kis: kis, base: urls[1])
            #expect(hit.status == 200)
            #expect(hit.header("X-Cache") == "HIT")
            _ = try await g.sim(.POST, "/__sim/expire", #"{"access_token":"\#(kis)"}"#)
            let refused = try await g.get("/domestic/chart/daily/005930?start=2025-02-03&end=2025-02-28", jwt: jwt,
                                          kis: kis, base: urls[0])
            #expect(refused.code == "kis_token_expired")
            let calls = try await g.simStats()["domestic_daily"]
            // The first gateway's `revoked` event reaches the second, which stops serving the token (it kept its
            // decision for up to 30 s before).
            #expect(try await eventually(timeout: .seconds(5)) {
                try await g.get(chart, jwt: jwt, kis: kis, base: urls[1]).status == 401
            })
            // As the first gateway said: KIS said it expired (dead:{sha256} holds EGW00123).
            #expect(try await g.get(chart, jwt: jwt, kis: kis, base: urls[1]).code == "kis_token_expired")
            #expect(try await g.get(chart, jwt: jwt, kis: kis, base: urls[0]).code == "kis_token_expired")
            // Another user presenting it learns nothing of it.
            #expect(try await g.get(chart, jwt: try await g.jwt("mallory"), kis: kis, base: urls[1]).code
                    == "kis_token_invalid")
            #expect(try await g.simStats()["domestic_daily"] == calls)
            let sha = TokenDirectory.sha256(of: kis)
            #expect(try await !g.store.setMembers(TokenDirectory.userKey("dave", .live)).contains(sha))
            #expect(try await TokenDirectory.deadReason(sha256: sha, store: g.store) == "EGW00123")
        }
    }
}

@Suite("Gateway: CORS matrix")
struct GatewayCORSTests {
    @Test("preflights and actual requests, allowed and not", arguments: [
        ("http://localhost:3000", true),
        ("https://app.example.com", true),
        ("https://a.b.example.com", true),
        ("https://example.com", false),
        ("https://evilexample.com", false),
        ("https://example.com.evil.com", false),
        ("http://app.example.com", false),
        ("https://app.example.com:8443", false),
        ("http://localhost:3001", false),
        ("null", false),
    ])
    func matrix(origin: String, allowed: Bool) async throws {
        try await withGateway { g, _ in
            let pre = try await http(.OPTIONS, g.gatewayURL + "/domestic/chart/daily/005930",
                                     headers: [("Origin", origin), ("Access-Control-Request-Method", "GET"),
                                               ("Access-Control-Request-Headers", "authorization, x-kis-token")])
            #expect(pre.headers("Vary").contains { $0.contains("Origin") })
            if allowed {
                #expect(pre.status == 204)
                #expect(pre.header("Access-Control-Allow-Origin") == origin)
                #expect(pre.header("Access-Control-Allow-Credentials") == "true")
                #expect(pre.header("Access-Control-Allow-Methods") == "GET, POST, OPTIONS")
                let allowHeaders = pre.header("Access-Control-Allow-Headers")?.lowercased() ?? ""
                for h in ["authorization", "x-kis-token", "content-type", "if-none-match"] { #expect(allowHeaders.contains(h)) }
                #expect(pre.header("Access-Control-Max-Age") == "600")
            } else {
                #expect(pre.status == 403)
                #expect(!pre.headers.contains { $0.0.lowercased().hasPrefix("access-control-allow") })
            }
            // An error answer (no credentials) carries CORS too, so the page can read it.
            let err = try await g.get("/domestic/chart/daily/005930", jwt: nil, kis: nil, headers: [("Origin", origin)])
            #expect(err.status == 401)
            #expect(err.headers("Vary").contains { $0.contains("Origin") })
            if allowed {
                #expect(err.header("Access-Control-Allow-Origin") == origin)
                #expect(err.header("Access-Control-Expose-Headers") == "ETag, X-Cache, Age, Retry-After, Server-Timing")
            } else {
                // No Access-Control-* header at all (gateway-api.md: origins not allowed get none).
                #expect(!err.headers.contains { $0.0.lowercased().hasPrefix("access-control-") }, "\(err.headers)")
            }
        }
    }

    @Test("the null origin is allowed only when listed literally")
    func nullListed() async throws {
        try await withGateway(config: { testConfig(simURL: $0, origins: ["null"]) }) { g, _ in
            let pre = try await http(.OPTIONS, g.gatewayURL + "/domestic/chart/daily/005930",
                                     headers: [("Origin", "null"), ("Access-Control-Request-Method", "GET")])
            #expect(pre.status == 204)
            #expect(pre.header("Access-Control-Allow-Origin") == "null")
        }
    }
}

@Suite("Gateway: coalescing, rate limits and upstream failures")
struct GatewayUpstreamTests {
    @Test("50 concurrent identical misses make one upstream fetch", arguments: StoreKind.allCases)
    func coalescing(kind: StoreKind) async throws {
        if kind == .redis { try TestServices.requireRedisURL() }
        try await withGateway(store: kind) { g, _ in
            let kis = try await g.connect(user: "u5", appKey: "PSapp-co-\(kind)")
            let jwt = try await g.jwt("u5")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none","latency_ms":300}"#)
            let statuses = try await withThrowingTaskGroup(of: (Int, String?).self) { group in
                for _ in 0..<50 {
                    group.addTask {
                        let r = try await g.get("/domestic/chart/daily/035720?start=2025-01-02&end=2025-03-31", jwt: jwt, kis: kis)
                        return (r.status, r.header("X-Cache"))
                    }
                }
                return try await group.reduce(into: [(Int, String?)]()) { $0.append($1) }
            }
            #expect(statuses.allSatisfy { $0.0 == 200 })
            #expect(try await g.simStats()["domestic_daily"] == 1)
        }
    }

    /// A request that joins another user's fetch is not answered with that user's credential problem: user A's
    /// expired KIS token makes A's fetch fail with kis_token_expired, and user B, who asked for the same chart
    /// while it ran, gets the chart fetched with B's own token (not a 401 that would make B's client refresh).
    @Test("a waiter whose fetch failed for another user's token fetches with its own")
    func waiterNotAnsweredWithAnotherUsersTokenProblem() async throws {
        let registry = PrometheusCollectorRegistry()
        try await withGateway(dependencies: { _, deps in deps.metricsRegistry = registry }) { g, _ in
            // A's app key is a sandbox one (1 call/s, spaced 1.25 s): its second fetch waits for its slot, and B's
            // request joins it meanwhile. KIS then refuses A's token, which expired in between.
            let kisA = try await g.connect(user: "wa", appKey: "PSapp-waiter-a", environment: .sandbox)
            let kisB = try await g.connect(user: "wb", appKey: "PSapp-waiter-b")
            let (jwtA, jwtB) = (try await g.jwt("wa"), try await g.jwt("wb"))
            #expect(try await g.get("/domestic/chart/daily/005380?start=2025-02-03&end=2025-02-28", jwt: jwtA, kis: kisA).status == 200)
            _ = try await g.sim(.POST, "/__sim/expire", #"{"access_token":"\#(kisA)"}"#)
            let path = "/domestic/chart/daily/000660?start=2025-02-03&end=2025-02-28"
            async let a = g.get(path, jwt: jwtA, kis: kisA)
            try await Task.sleep(for: .milliseconds(300))
            let b = try await g.get(path, jwt: jwtB, kis: kisB)
            let first = try await a
            #expect(first.status == 401 && first.code == "kis_token_expired")
            #expect(b.status == 200, "\(b.status) \(b.code ?? "")")
            #expect(b.header("X-Cache") == "MISS")  // fetched with B's token, after A's fetch failed
            // B did wait on A's fetch (it did not merely come after it).
            let m = Exposition(try await g.get("/metrics", jwt: nil, kis: nil).text)
            #expect(m.value("kisgw_cache_results_total", ["result": "coalesced"]) == 1)
        }
    }

    /// gateway-api.md: `X-Cache: HIT` "from the L1 or the shared cache while fresh". A gateway whose L1 copy has
    /// expired finds the copy another gateway just refreshed in the store: that is a HIT, with no KIS call.
    @Test("an expired L1 copy refreshed meanwhile by another gateway is a HIT from the shared cache")
    func refreshedByAnotherGatewayIsAHit() async throws {
        try TestServices.requireRedisURL()
        let cache = KisgwConfig.Cache(settledTTLS: 2, staleWhileRevalidateS: 0)
        try await withGateway(store: .redis, gateways: 2, config: { testConfig(simURL: $0, cache: cache) }) { g, urls in
            let kis = try await g.connect(user: "u-refreshed", appKey: "PSapp-refreshed")
            let jwt = try await g.jwt("u-refreshed")
            let path = "/domestic/chart/daily/051910?start=2025-03-03&end=2025-05-30"  // settled: fresh for 2 s
            _ = try await fetchedByOneHeldByBoth(g, urls, path, jwt: jwt, kis: kis)
            try await Task.sleep(for: .milliseconds(2100))  // both L1 copies and the store's are past freshness
            let refreshed = try await g.get(path, jwt: jwt, kis: kis, base: urls[0])
            #expect(refreshed.header("X-Cache") == "MISS")
            try await waitUntilShared(g.store, domesticChart: path)
            let calls = try await g.simStats()["domestic_daily"]
            let answer = try await g.get(path, jwt: jwt, kis: kis, base: urls[1])
            #expect(answer.status == 200)
            #expect(answer.header("X-Cache") == "HIT")
            #expect(answer.header("Server-Timing") == #"cache;desc="hit""#)
            #expect(answer.header("ETag") == refreshed.header("ETag"))
            #expect(try await g.simStats()["domestic_daily"] == calls)
        }
    }

    /// The same with `stale_while_revalidate_s`: a gateway whose own copy is past freshness does not serve it STALE
    /// when another gateway has refreshed the fleet's copy meanwhile — that one is fresh, a HIT from the shared cache.
    @Test("past freshness, with stale_while_revalidate_s: the copy another gateway refreshed is a HIT, not this one's STALE copy")
    func refreshedElsewhereBeatsOwnStaleCopy() async throws {
        try TestServices.requireRedisURL()
        let cache = KisgwConfig.Cache(settledTTLS: 3, staleWhileRevalidateS: 60)
        try await withGateway(store: .redis, gateways: 2, config: { testConfig(simURL: $0, cache: cache) }) { g, urls in
            let kis = try await g.connect(user: "u-swr-fleet", appKey: "PSapp-swr-fleet")
            let jwt = try await g.jwt("u-swr-fleet")
            let path = "/domestic/chart/daily/000660?start=2025-03-03&end=2025-05-30"  // settled: fresh for 3 s
            let first = try await fetchedByOneHeldByBoth(g, urls, path, jwt: jwt, kis: kis)
            try await Task.sleep(for: .milliseconds(3100))  // every copy past freshness, well inside the 60 s
            // Gateway 0 serves its own copy STALE and refreshes the chart for the fleet in the background.
            let stale = try await g.get(path, jwt: jwt, kis: kis, base: urls[0])
            #expect(stale.header("X-Cache") == "STALE")
            #expect(stale.header("Cache-Control") == "private, max-age=0")
            #expect(try await storedAfter(first, g.store, domesticChart: path))
            let calls = try await g.simStats()["domestic_daily"]
            let answer = try await g.get(path, jwt: jwt, kis: kis, base: urls[1])
            #expect(answer.status == 200)
            #expect(answer.header("X-Cache") == "HIT")
            #expect(answer.header("Cache-Control") == "private, max-age=3")
            #expect(answer.header("Age").flatMap { Int($0) }.map { $0 <= 1 } == true, "Age \(answer.header("Age") ?? "-")")
            #expect(try await g.simStats()["domestic_daily"] == calls)
        }
    }

    /// gateway-api.md: past freshness an entry may be served "for `stale_if_error_s` when KIS fails" — the fleet's
    /// entry: a gateway whose own copy is past that window serves the newer copy another gateway stored, STALE, rather
    /// than the error.
    @Test("stale-if-error: past the window of this gateway's own copy, the newer copy another gateway stored is served STALE")
    func staleIfErrorServesTheFleetsNewerCopy() async throws {
        try TestServices.requireRedisURL()
        let cache = KisgwConfig.Cache(settledTTLS: 2, staleWhileRevalidateS: 0, staleIfErrorS: 4)
        try await withGateway(store: .redis, gateways: 2, config: { testConfig(simURL: $0, cache: cache) }) { g, urls in
            let kis = try await g.connect(user: "u-sie-fleet", appKey: "PSapp-sie-fleet")
            let jwt = try await g.jwt("u-sie-fleet")
            let path = "/domestic/chart/daily/005490?start=2025-03-03&end=2025-05-30"
            let first = try await fetchedByOneHeldByBoth(g, urls, path, jwt: jwt, kis: kis)
            let t0 = ContinuousClock.now  // the first copy was stored (whole seconds, s0) by now: s0 ≤ t0
            // Past the first copy's freshness (s0 + 2): gateway 0 fetches again and stores a copy at s1 > t0 + 1.
            try await Task.sleep(until: t0 + .milliseconds(2100))
            #expect(try await g.get(path, jwt: jwt, kis: kis, base: urls[0]).header("X-Cache") == "MISS")
            #expect(try await storedAfter(first, g.store, domesticChart: path))
            // Gateway 1's copy is past s0 + 2 + 4; the store's is past freshness but inside its window (s1 + 6 > t0 + 7).
            try await Task.sleep(until: t0 + .milliseconds(6200))
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"http500"}"#)
            let r = try await g.get(path, jwt: jwt, kis: kis, base: urls[1])
            #expect(r.status == 200, "\(r.status) \(r.text)")
            #expect(r.header("X-Cache") == "STALE")
            #expect(r.header("Cache-Control") == "private, max-age=0")
            #expect(r.header("Age").flatMap { Int($0) }.map { $0 < 6 } == true, "Age \(r.header("Age") ?? "-")")
        }
    }

    /// `[cache] l1_entries = 0` turns the in-process copy off (it kept one entry before): with the store's copy
    /// gone, the next request is a miss.
    @Test("[cache] l1_entries: 0 keeps nothing in the process, 1 keeps one chart", arguments: [0, 1])
    func l1Off(entries: Int) async throws {
        let cache = KisgwConfig.Cache(l1Entries: entries)
        try await withGateway(config: { testConfig(simURL: $0, cache: cache) }) { g, _ in
            let kis = try await g.connect(user: "u-l1", appKey: "PSapp-l1")
            let jwt = try await g.jwt("u-l1")
            let path = "/domestic/chart/daily/035420?start=2025-03-03&end=2025-05-30"  // settled: fresh for an hour
            #expect(try await g.get(path, jwt: jwt, kis: kis).header("X-Cache") == "MISS")
            try await waitUntilShared(g.store, domesticChart: path)
            // From the store while it has the chart: a HIT either way.
            #expect(try await g.get(path, jwt: jwt, kis: kis).header("X-Cache") == "HIT")
            #expect(try await g.simStats()["domestic_daily"] == 1)
            _ = try await g.store.delete("cache:" + chartKey(domesticChart: path))
            let again = try await g.get(path, jwt: jwt, kis: kis)
            #expect(again.status == 200)
            #expect(again.header("X-Cache") == (entries == 0 ? "MISS" : "HIT"))
            #expect(try await g.simStats()["domestic_daily"] == (entries == 0 ? 2 : 1))
        }
    }

    /// gateway-api.md: the others "wait for it (bounded by `[upstream] timeout_ms`)" — across gateways too.
    @Test("a request waiting on another gateway's fetch waits at most [upstream] timeout_ms; the fetch goes on")
    func fleetWaiterBound() async throws {
        try TestServices.requireRedisURL()
        try await withGateway(store: .redis, gateways: 2,
                              config: { testConfig(simURL: $0, upstreamTimeoutMs: 1000) }) { g, urls in
            let kis = try await g.connect(user: "u-fleet-wait", appKey: "PSapp-fleet-wait")
            let jwt = try await g.jwt("u-fleet-wait")
            // Six or more KIS pages of 500 ms each: the fetch takes 3 s or more, each call within the 1 s timeout, so a
            // waiter that gives up at the bound is told apart from one that waited for the fetch.
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none","latency_ms":500}"#)
            let path = "/domestic/chart/daily/005930?start=2023-01-02&end=2025-03-31"
            @Sendable func timed(_ base: String) async throws -> (HTTPResult, Duration) {
                let started = ContinuousClock.now
                let r = try await g.get(path, jwt: jwt, kis: kis, base: base)
                return (r, ContinuousClock.now - started)
            }
            async let first = timed(urls[0])
            try await Task.sleep(for: .milliseconds(200))
            let (waiter, waited) = try await timed(urls[1])
            #expect(waiter.status == 504 && waiter.code == "upstream_timeout", "\(waiter.status) after \(waited)")
            #expect((waiter.json["detail"] as? String)?.contains("[upstream] timeout_ms") == true, "\(waiter.text)")
            #expect(waited >= .milliseconds(950) && waited < .milliseconds(2600), "waited \(waited)")
            let (fetched, took) = try await first
            #expect(fetched.status == 200 && fetched.header("X-Cache") == "MISS")
            #expect(took >= .milliseconds(2800), "the fetch took \(took)")
            try await waitUntilShared(g.store, domesticChart: path)
            #expect(try await g.get(path, jwt: jwt, kis: kis, base: urls[1]).header("X-Cache") == "HIT")
        }
    }

    @Test("two gateways sharing Redis make one upstream fetch for concurrent misses")
    func twoGateways() async throws {
        try TestServices.requireRedisURL()
        try await withGateway(store: .redis, gateways: 2) { g, urls in
            let kis = try await g.connect(user: "u6", appKey: "PSapp-fleet")
            let jwt = try await g.jwt("u6")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none","latency_ms":300}"#)
            let results = try await withThrowingTaskGroup(of: HTTPResult.self) { group in
                for i in 0..<20 {
                    group.addTask {
                        try await g.get("/domestic/chart/daily/051910?start=2025-01-02&end=2025-03-31", jwt: jwt, kis: kis,
                                        base: urls[i % 2])
                    }
                }
                return try await group.reduce(into: [HTTPResult]()) { $0.append($1) }
            }
            #expect(results.allSatisfy { $0.status == 200 })
            #expect(try await g.simStats()["domestic_daily"] == 1)
            // Each is a MISS that spent the fetch's time on KIS, on whichever gateway made the call: its
            // `upstream;dur` (gateway-api.md) is that time — not 0.0 on the gateway that waited for the other's.
            // (A request the machine delayed past the fetch is a HIT, with no upstream time.)
            #expect(results.filter { $0.header("X-Cache") == "MISS" }.count >= 10)
            for r in results where r.header("X-Cache") == "MISS" {
                let timing = r.header("Server-Timing") ?? ""
                let dur = timing.components(separatedBy: "upstream;dur=").last.flatMap { Double($0.prefix { $0 != "," }) }
                // (At least 20 ms: one that arrived near the fetch's end waited less than its whole 300 ms.)
                #expect((dur ?? 0) >= 20, "\(timing)")
            }
        }
    }

    /// A waiter is answered only with the failure of the fetch it waited on: not with one from before it waited
    /// (here left in the store), when the fetch it waited on failed for the fetching request's own token.
    @Test("two gateways: a waiter whose fetch failed for another user's token fetches with its own, whatever older failure is kept")
    func twoGatewaysIgnoreAnOlderFailure() async throws {
        try TestServices.requireRedisURL()
        try await withGateway(store: .redis, gateways: 2) { g, urls in
            // A's app key is a sandbox one (1 call/s, spaced 1.25 s): its second fetch waits for its slot, and B's
            // request, on the other gateway, waits on it meanwhile. KIS then refuses A's token, which expired.
            let kisA = try await g.connect(user: "fa", appKey: "PSapp-fleet-old-a", environment: .sandbox)
            let kisB = try await g.connect(user: "fb", appKey: "PSapp-fleet-old-b")
            let (jwtA, jwtB) = (try await g.jwt("fa"), try await g.jwt("fb"))
            #expect(try await g.get("/domestic/chart/daily/005380?start=2025-02-03&end=2025-02-28", jwt: jwtA, kis: kisA,
                                    base: urls[0]).status == 200)
            _ = try await g.sim(.POST, "/__sim/expire", #"{"access_token":"\#(kisA)"}"#)
            let path = "/domestic/chart/daily/000270?start=2025-02-03&end=2025-02-28"
            let old = #"{"code":"upstream_error","detail":"an old failure","env":"LIVE","at_ms":\#(Int64(Date().timeIntervalSince1970 * 1000) - 1500)}"#
            try await g.store.set("failed:" + chartKey(domesticChart: path), to: ByteBuffer(string: old), ttl: .seconds(10))
            async let a = g.get(path, jwt: jwtA, kis: kisA, base: urls[0])
            try await Task.sleep(for: .milliseconds(300))
            let b = try await g.get(path, jwt: jwtB, kis: kisB, base: urls[1])
            let first = try await a
            #expect(first.status == 401 && first.code == "kis_token_expired", "\(first.text)")
            #expect(b.status == 200 && b.header("X-Cache") == "MISS", "\(b.status) \(b.text)")
        }
    }

    /// A fetch that fails is one fetch too: the requests on the other gateways that waited on it get its answer,
    /// rather than each taking the lock in turn and asking KIS again.
    @Test("two gateways sharing Redis: a fetch KIS fails is made once; the other gateway's waiter gets its answer")
    func twoGatewaysShareAFailure() async throws {
        try TestServices.requireRedisURL()
        try await withGateway(store: .redis, gateways: 2) { g, urls in
            let kis = try await g.connect(user: "u-fail", appKey: "PSapp-fleet-fail")
            let jwt = try await g.jwt("u-fail")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"kis_error","msg_cd":"OPSQ0001","latency_ms":800}"#)
            let path = "/domestic/chart/daily/035720?start=2025-01-02&end=2025-03-31"
            async let first = g.get(path, jwt: jwt, kis: kis, base: urls[0])
            try await Task.sleep(for: .milliseconds(200))
            let waiter = try await g.get(path, jwt: jwt, kis: kis, base: urls[1])
            let fetched = try await first
            for r in [fetched, waiter] {
                #expect(r.status == 502 && r.code == "upstream_error", "\(r.text)")
                #expect(r.json["kis_msg_cd"] as? String == "OPSQ0001")
            }
            #expect(try await g.simStats()["domestic_daily"] == 1)
            // Later requests ask KIS again.
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none"}"#)
            #expect(try await g.get(path, jwt: jwt, kis: kis, base: urls[1]).status == 200)
            #expect(try await g.simStats()["domestic_daily"] == 2)
        }
    }

    @Test("the per-app-key rate is shared by every gateway: KIS never sees more than allowed, excess waits then gets 429",
          arguments: StoreKind.allCases)
    func rateLimit(kind: StoreKind) async throws {
        if kind == .redis { try TestServices.requireRedisURL() }
        let sim = SimulatorConfiguration(port: 0, environment: .sandbox, issueInterval: 0, ratePerSecond: 1)
        try await withGateway(store: kind, sim: sim, gateways: kind == .redis ? 2 : 1,
                              // KIS allows 1/s; the gateway is told 0.8/s, the headroom config.md recommends, so
                              // a loaded test machine's scheduling jitter never lets two calls land in one second.
                              config: { testConfig(simURL: $0, maxQueueMs: 2500, sandboxRate: 0.8) }) { g, urls in
            let kis = try await g.connect(user: "u7", appKey: "PSapp-rl", environment: .sandbox)
            let jwt = try await g.jwt("u7")
            let codes = try await withThrowingTaskGroup(of: Int.self) { group in
                for i in 0..<6 {
                    group.addTask {
                        let r = try await g.get("/domestic/chart/daily/0\(10000 + i)0?start=2025-01-02&end=2025-01-31",
                                                jwt: jwt, kis: kis, base: urls[i % urls.count])
                        if r.status == 429 {
                            #expect(r.code == "rate_limited")
                            #expect((1...5).contains(Int(r.header("Retry-After") ?? "") ?? 0), "\(r.header("Retry-After") ?? "none")")
                        }
                        return r.status
                    }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(codes.filter { $0 == 200 }.count >= 2)
            #expect(codes.contains(429))
            let errors = try await g.sim(.GET, "/__sim/stats").json["errors"] as? [String: Int] ?? [:]
            #expect(errors["EGW00201"] == nil)
        }
    }

    /// `Retry-After` says when the app key's next slot comes, rather than always 1 s.
    @Test("a 429 for the app key's rate says in Retry-After when its next slot comes, in whole seconds")
    func retryAfterOfTheNextSlot() async throws {
        let sim = SimulatorConfiguration(port: 0, environment: .sandbox, issueInterval: 0, ratePerSecond: 1)
        // 0.4/s is spaced 3.125 s apart (ChartService.effectiveRate); with no queue, the second call is refused with
        // its slot 3.125 s after the first one's, less the time between the two (well under a second).
        try await withGateway(sim: sim, config: { testConfig(simURL: $0, maxQueueMs: 0, sandboxRate: 0.4) }) { g, _ in
            let kis = try await g.connect(user: "u-ra", appKey: "PSapp-ra", environment: .sandbox)
            let jwt = try await g.jwt("u-ra")
            #expect(try await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis).status == 200)
            let refused = try await g.get("/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(refused.status == 429 && refused.code == "rate_limited", "\(refused.text)")
            #expect(["3", "4"].contains(refused.header("Retry-After") ?? ""), "\(refused.header("Retry-After") ?? "none")")
            #expect(refused.json["retry_after"] as? Int == Int(refused.header("Retry-After") ?? ""))
        }
    }

    /// Swift's `==` holds for canonically equivalent text: "\u{212A}im" (KELVIN SIGN) == "Kim". The store keys users
    /// by their bytes, so that is another user.
    @Test("a JWT whose sub only looks like the token's user (canonically equivalent, other bytes) is another user's")
    func lookAlikeUserID() async throws {
        #expect("\u{212A}im" == "Kim" && !"\u{212A}im".isSameUserID("Kim") && "Kim".isSameUserID("Kim"))
        try await withGateway { g, _ in
            let kis = try await g.connect(user: "Kim", appKey: "PSapp-kim")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: try await g.jwt("Kim"), kis: kis).status == 200)
            let other = try await g.get(path, jwt: try await g.jwt("\u{212A}im"), kis: kis)
            #expect(other.status == 401 && other.code == "kis_token_invalid", "\(other.status) \(other.text)")
        }
    }

    /// gateway-api.md: "The gateway calls KIS with the credentials published with that token" — checked against a
    /// simulator that knows each app key's own secret.
    @Test("KIS is called with the app key and secret published with the token; a wrong published secret is KIS's EGW00105")
    func credentialsPublishedWithTheToken() async throws {
        let sim = SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000,
                                         credentials: ["PSapp-cred": "secret-PSapp-cred", "PSapp-cred2": "secret-PSapp-cred2"])
        try await withGateway(sim: sim) { g, _ in
            let kis = try await g.connect(user: "cr", appKey: "PSapp-cred")
            let ok = try await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: try await g.jwt("cr"), kis: kis)
            #expect(ok.status == 200, "\(ok.text)")
            let wrong = try await g.connect(user: "cr2", appKey: "PSapp-cred2", publishedSecret: "secret-of-another-key")
            let refused = try await g.get("/domestic/chart/daily/000660?start=2025-01-02&end=2025-01-31",
                                          jwt: try await g.jwt("cr2"), kis: wrong)
            #expect(refused.status == 502 && refused.code == "upstream_error", "\(refused.text)")
            #expect(refused.json["kis_msg_cd"] as? String == "EGW00105")
        }
    }

    @Test("KIS errors become upstream_error with KIS's code; timeouts upstream_timeout")
    func upstreamFailures() async throws {
        try await withGateway(config: { testConfig(simURL: $0, upstreamTimeoutMs: 500) }) { g, _ in
            let kis = try await g.connect(user: "u8", appKey: "PSapp-fail")
            let jwt = try await g.jwt("u8")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"kis_error","msg_cd":"EGW00002"}"#)
            let e = try await g.get("/domestic/chart/daily/005380?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(e.status == 502)
            #expect(e.code == "upstream_error")
            #expect(e.json["kis_msg_cd"] as? String == "EGW00002")
            #expect(e.json["kis_msg1"] as? String == "서버 에러가 발생했습니다.")  // KIS's msg1, as the simulator sends it
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"garbage"}"#)
            let garbage = try await g.get("/domestic/chart/daily/005380?start=2025-01-03&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(garbage.status == 502)
            #expect(garbage.code == "upstream_error")
            // KIS gave no code or message: none is made up.
            #expect(garbage.json["kis_msg_cd"] == nil)
            #expect(garbage.json["kis_msg1"] == nil)
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"timeout"}"#)
            let t = try await g.get("/domestic/chart/daily/005380?start=2025-01-06&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(t.status == 504)
            #expect(t.code == "upstream_timeout")
            _ = try await g.sim(.POST, "/__sim/reset")
        }
    }

    @Test("KIS refusing connections: a prompt 502 upstream_error, or a prompt STALE copy, not a wait for timeout_ms")
    func kisRefusing() async throws {
        let closed = try RedisServerProcess.freePort()
        let cache = KisgwConfig.Cache(l1Entries: 100, liveTTLS: 1, settledTTLS: 1, staleWhileRevalidateS: 0, staleIfErrorS: 3600)
        // LIVE tokens call KIS at a port nothing listens on; SANDBOX ones the simulator. A refused connection must
        // not be retried until `timeout_ms` (20 s here): kisgw's own retries give up in well under a second.
        let config: @Sendable (String) -> KisgwConfig = {
            testConfig(simURL: $0, upstreamTimeoutMs: 20_000, cache: cache, requestTimeoutMs: 30_000,
                       liveURL: "http://127.0.0.1:\(closed)")
        }
        try await withGateway(config: config) { g, _ in
            let live = try await g.connect(user: "u8r", appKey: "PSapp-refused", environment: .live)
            let sandbox = try await g.connect(user: "u8s", appKey: "PSapp-sandbox", environment: .sandbox)
            let jwtLive = try await g.jwt("u8r"), jwtSandbox = try await g.jwt("u8s")
            var started = ContinuousClock.now
            let refused = try await g.get("/domestic/chart/daily/005380?start=2025-01-02&end=2025-01-31", jwt: jwtLive, kis: live)
            #expect(refused.status == 502)
            #expect(refused.code == "upstream_error")
            #expect(refused.json["kis_msg_cd"] == nil)
            #expect(ContinuousClock.now - started < .seconds(10), "a refused connection to KIS was retried")
            // A copy fetched through the simulator, expired: served STALE to the user whose KIS refuses.
            let path = "/domestic/chart/daily/068270?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwtSandbox, kis: sandbox).header("X-Cache") == "MISS")
            try await Task.sleep(for: .milliseconds(2100))
            started = ContinuousClock.now
            let stale = try await g.get(path, jwt: jwtLive, kis: live)
            #expect(stale.status == 200)
            #expect(stale.header("X-Cache") == "STALE")
            #expect(ContinuousClock.now - started < .seconds(10), "a refused connection to KIS was retried")
        }
    }

    @Test("stale-if-error: an expired entry is served STALE when KIS fails")
    func staleIfError() async throws {
        let cache = KisgwConfig.Cache(l1Entries: 100, liveTTLS: 1, settledTTLS: 1, staleWhileRevalidateS: 0, staleIfErrorS: 3600)
        try await withGateway(config: { testConfig(simURL: $0, cache: cache) }) { g, _ in
            let kis = try await g.connect(user: "u9", appKey: "PSapp-stale")
            let jwt = try await g.jwt("u9")
            let path = "/domestic/chart/daily/068270?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).header("X-Cache") == "MISS")
            try await Task.sleep(for: .milliseconds(2100))
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"http500"}"#)
            let r = try await g.get(path, jwt: jwt, kis: kis)
            #expect(r.status == 200)
            #expect(r.header("X-Cache") == "STALE")
            #expect(r.header("Server-Timing") == #"cache;desc="stale""#)
        }
    }

    @Test("stale-while-revalidate: served STALE while one background refresh runs")
    func staleWhileRevalidate() async throws {
        let cache = KisgwConfig.Cache(l1Entries: 100, liveTTLS: 1, settledTTLS: 1, staleWhileRevalidateS: 60, staleIfErrorS: 60)
        try await withGateway(config: { testConfig(simURL: $0, cache: cache) }) { g, _ in
            let kis = try await g.connect(user: "u10", appKey: "PSapp-swr")
            let jwt = try await g.jwt("u10")
            let path = "/domestic/chart/daily/105560?start=2025-01-02&end=2025-01-31"
            _ = try await g.get(path, jwt: jwt, kis: kis)
            try await Task.sleep(for: .milliseconds(2100))
            let r = try await g.get(path, jwt: jwt, kis: kis)
            #expect(r.header("X-Cache") == "STALE")
            var refreshed = false
            for _ in 0..<100 where !refreshed {
                refreshed = try await g.simStats()["domestic_daily"] == 2
                if !refreshed { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(refreshed)
        }
    }

    /// A cold read of the store's copy — this process held none — answered after this process's own refresh of the
    /// same chart had put a newer copy in the L1 (the L1 had dropped the chart while the refresh ran) replaced the
    /// newer copy with the older one: the request was answered STALE, and so were the ones after it, until the next
    /// refresh. The L1 keeps the newer copy now, and the cold read answers with it.
    @Test("a cold read of the store's copy does not replace a newer copy this process fetched meanwhile")
    func coldReadKeepsTheNewerCopy() async throws {
        try TestServices.requireRedisURL()
        let chart = "/domestic/chart/daily/035420?start=2025-01-02&end=2025-01-31"
        let other = "/domestic/chart/daily/035720?start=2025-01-02&end=2025-01-31"
        let gate = RecordGate(prefix: "cache:" + (try chartKey(domesticChart: chart)))
        // One chart in the L1; past the settled TTL after 1 s; KIS answers after 1.5 s.
        let cache = KisgwConfig.Cache(l1Entries: 1, liveTTLS: 1, settledTTLS: 1, staleWhileRevalidateS: 60, staleIfErrorS: 60)
        let sim = SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000, latencyMs: 1500)
        try await withGateway(store: .redis, sim: sim, config: { testConfig(simURL: $0, cache: cache) },
                              dependencies: { _, deps in
            deps.store = CountingStore(inner: deps.store, log: StoreCallLog(), label: "gw", afterReadOrLock: gate.pass)
        }) { g, _ in
            let kis = try await g.connect(user: "u10n", appKey: "PSapp-coldnewer")
            let jwt = try await g.jwt("u10n")
            #expect(try await g.get(chart, jwt: jwt, kis: kis).header("X-Cache") == "MISS")  // the L1 holds `chart`
            try await waitUntilShared(g.store, domesticChart: chart)
            let first = try #require(try await storedAt(g.store, domesticChart: chart))
            // `other`: a fresh copy in the store only (read, it takes the L1's one place and asks KIS nothing).
            try await storeCopy(g.store, domesticChart: other, body: #"{"candles":[]}"#, freshFor: 3600)
            try await Task.sleep(for: .milliseconds(2100))
            // Stale: answered so, and refreshed in the background (KIS takes 1.5 s).
            #expect(try await g.get(chart, jwt: jwt, kis: kis).header("X-Cache") == "STALE")
            #expect(try await g.get(other, jwt: jwt, kis: kis).header("X-Cache") == "HIT")
            // `chart` again: the L1 has none, so the store's (older) copy is read; its answer is held back until the
            // refresh has put its newer copy in the L1 and the store.
            gate.hold()
            let cold = Task { try await g.get(chart, jwt: jwt, kis: kis) }
            #expect(await eventually(timeout: .seconds(10)) { gate.held == 1 }, "the cold read never read the store")
            #expect(try await storedAfter(first, g.store, domesticChart: chart), "the refresh never stored its copy")
            gate.release()
            let answer = try await cold.value
            #expect(answer.status == 200)
            #expect(answer.header("X-Cache") == "HIT", "answered with the older copy: \(answer.header("X-Cache") ?? "-")")
            #expect(try await g.get(chart, jwt: jwt, kis: kis).header("X-Cache") == "HIT")
        }
    }
}
