import Foundation
@testable import Gateway
@testable import KIS
import NIOCore
import ServerKit
import Testing

/// Chart request validation and defaults (gateway-api.md, "Chart routes"), at fixed instants.
@Suite("Chart queries: parameters, defaults and the cache key (gateway-api.md, Chart routes)")
struct ChartQueryTests {
    /// A weekly, monthly or yearly bar dated by its period's first trading day (the simulator) or its last (KIS's
    /// dating is not documented): either way the next page ends before the period began, so no period is cut short
    /// into a second, partial bar.
    /// kis-api.md: `mod_yn` is `Y` "when the day had no trade, hence no open price". A day whose open, high or low is
    /// blank or zero beside a close is a flat candle at the close (it was a spike to zero, or, blank, the day was left
    /// out); prices that are all there are kept; a row without a close or a date is no candle.
    @Test("a day with no trade is a flat candle at its close; a row with no close or date is none")
    func noTradeDays() {
        typealias Row = KISDomesticChartPage.Row
        func candle(_ row: Row) -> [String]? {
            Candle(row).map { [$0.date.iso, $0.open.text, $0.high.text, $0.low.text, $0.close.text, $0.volume.text] }
        }
        let traded = Row(stck_bsop_date: "20250303", stck_clpr: "71000", stck_oprc: "70500", stck_hgpr: "71500",
                         stck_lwpr: "70100", acml_vol: "1200", acml_tr_pbmn: "85000000")
        #expect(candle(traded) == ["2025-03-03", "70500", "71500", "70100", "71000", "1200"])
        var halted = traded
        (halted.stck_oprc, halted.stck_hgpr, halted.stck_lwpr, halted.acml_vol) = ("0", "0", "0", "0")
        #expect(candle(halted) == ["2025-03-03", "71000", "71000", "71000", "71000", "0"])
        var blank = traded
        (blank.stck_oprc, blank.acml_vol) = ("", "")
        #expect(candle(blank) == ["2025-03-03", "71000", "71000", "71000", "71000", "0"])
        for broken in [Row(), Row(stck_bsop_date: "20250303", stck_clpr: ""), Row(stck_bsop_date: "20250303", stck_clpr: "0"),
                       Row(stck_bsop_date: "", stck_clpr: "71000")] {
            #expect(candle(broken) == nil)
        }
        let overseas = KISOverseasChartPage.Row(xymd: "20250303", clos: "185.6400", open: "0.0000", high: "0.0000",
                                                low: "0.0000", tvol: "0", tamt: "0")
        #expect(Candle(overseas).map { [$0.open.text, $0.high.text, $0.low.text] } == ["185.6400", "185.6400", "185.6400"])
    }

    @Test("the next page ends the day before the oldest bar's period began, whichever day dates the bar")
    func nextPageEnd() {
        for (oldest, period, end) in [
            ("2025-01-06", "W", "2025-01-05"), ("2025-01-10", "W", "2025-01-05"),  // Monday or Friday of one week
            ("2025-03-04", "M", "2025-02-28"), ("2025-03-31", "M", "2025-02-28"),
            ("2024-01-02", "Y", "2023-12-31"), ("2024-12-30", "Y", "2023-12-31"),
            ("2025-03-04", "D", "2025-03-03"),
        ] {
            #expect(DailyChartPager.nextPageEnd(oldest: CivilDate(oldest)!, period: period) == CivilDate(end)!,
                    "\(oldest) \(period)")
        }
    }

    /// 2025-03-04T23:30Z: 08:30 on 2025-03-05 in Seoul, 18:30 on 2025-03-04 in New York.
    static let now = try! Date("2025-03-04T23:30:00Z", strategy: .iso8601)

    static func domestic(_ symbol: String, _ query: [String: String] = [:], maxRangeDays: Int = 3660,
                         now: Date = now) throws(Problem) -> ChartQuery {
        try ChartQuery.domestic(symbol: Substring(symbol), query: query.mapValues { Substring($0) },
                                maxRangeDays: maxRangeDays, now: now)
    }

    static func overseas(_ exchange: String, _ symbol: String, _ query: [String: String] = [:],
                         maxRangeDays: Int = 3660, now: Date = now) throws(Problem) -> ChartQuery {
        try ChartQuery.overseas(exchange: Substring(exchange), symbol: Substring(symbol),
                                query: query.mapValues { Substring($0) }, maxRangeDays: maxRangeDays, now: now)
    }

    /// The problem code `parse` throws, or nil when it accepts.
    static func refusal(_ parse: () throws(Problem) -> ChartQuery) -> String? {
        do {
            _ = try parse()
            return nil
        } catch {
            #expect(error.status == 400)
            return error.code.rawValue
        }
    }

    // MARK: defaults

    @Test("defaults: end is today in the market's own time zone, start is end minus 150 days, period D, adjusted")
    func defaults() throws {
        let krx = try Self.domestic("005930")
        #expect(krx.end.iso == "2025-03-05")
        #expect(krx.start.iso == "2024-10-06")
        #expect(krx.period == "D")
        #expect(krx.adjusted == true)
        let nas = try Self.overseas("NAS", "AAPL")
        #expect(nas.end.iso == "2025-03-04")
        #expect(nas.start.iso == "2024-10-05")
        #expect(nas.period == "D")
        #expect(nas.adjusted == true)
    }

    /// 2025-03-04T16:30Z: already the 5th in Seoul, Tokyo, Hong Kong and Shanghai; still the 4th in Ho Chi Minh City
    /// (23:30) and New York.
    @Test("the default end follows each exchange's own date", arguments: [
        ("KRX", "2025-03-05"), ("NAS", "2025-03-04"), ("NYS", "2025-03-04"), ("AMS", "2025-03-04"),
        ("HKS", "2025-03-05"), ("TSE", "2025-03-05"), ("SHS", "2025-03-05"), ("SZS", "2025-03-05"),
        ("HSX", "2025-03-04"), ("HNX", "2025-03-04"),
    ])
    func defaultEndPerExchange(exchange: String, end: String) throws {
        let now = try Date("2025-03-04T16:30:00Z", strategy: .iso8601)
        let q = try exchange == "KRX" ? Self.domestic("005930", now: now) : Self.overseas(exchange, "X", now: now)
        #expect(q.end.iso == end)
        #expect(q.end.dayNumber - q.start.dayNumber == 150)
    }

    @Test("a given end moves the default start with it; a given start leaves end at today")
    func partialRange() throws {
        let q = try Self.domestic("005930", ["end": "2025-01-31"])
        #expect(q.start.iso == "2024-09-03")
        #expect(q.end.iso == "2025-01-31")
        let s = try Self.overseas("NAS", "AAPL", ["start": "20250101"])
        #expect(s.start.iso == "2025-01-01")
        #expect(s.end.iso == "2025-03-04")
    }

    @Test("dates before 1900-01-01 are refused, and a default start never falls before it")
    func earliestDate() throws {
        for query in [["start": "00010101", "end": "00010201"], ["end": "0001-01-01"], ["start": "1899-12-31"],
                      ["start": "18991231", "end": "19000101"]] {
            #expect(Self.refusal { () throws(Problem) in try Self.domestic("005930", query) } == "invalid_parameter", "\(query)")
        }
        let early = try Self.domestic("005930", ["end": "1900-01-05"])
        #expect(early.start.iso == "1900-01-01")
        #expect(early.end.iso == "1900-01-05")
        let first = try Self.overseas("NAS", "AAPL", ["start": "1900-01-01", "end": "1900-12-31"])
        #expect(first.start.iso == "1900-01-01")
    }

    // MARK: period and adjusted

    @Test("domestic period: D W M Y, in either case (upper-cased), default D", arguments: [
        ("D", "D"), ("W", "W"), ("M", "M"), ("Y", "Y"), ("d", "D"), ("w", "W"), ("m", "M"), ("y", "Y"),
    ])
    func domesticPeriods(given: String, resolved: String) throws {
        #expect(try Self.domestic("005930", ["period": given]).period == resolved)
    }

    @Test("overseas period: D W M, in either case; Y is refused", arguments: [
        ("D", "D"), ("W", "W"), ("M", "M"), ("d", "D"), ("w", "W"), ("m", "M"),
    ])
    func overseasPeriods(given: String, resolved: String) throws {
        #expect(try Self.overseas("NAS", "AAPL", ["period": given]).period == resolved)
    }

    @Test("periods refused", arguments: [
        ("KRX", "Q"), ("KRX", ""), ("KRX", "DD"), ("KRX", "day"), ("NAS", "Y"), ("NAS", "y"), ("HKS", "Y"),
        ("NAS", "Q"),
    ])
    func badPeriods(exchange: String, period: String) {
        let code = exchange == "KRX"
            ? Self.refusal { () throws(Problem) in try Self.domestic("005930", ["period": period]) }
            : Self.refusal { () throws(Problem) in try Self.overseas(exchange, "AAPL", ["period": period]) }
        #expect(code == "invalid_parameter")
    }

    @Test("adjusted: true or false (case as implemented: ignored), default true", arguments: [
        ("true", true), ("false", false), ("TRUE", true), ("False", false),
    ])
    func adjusted(given: String, resolved: Bool) throws {
        #expect(try Self.domestic("005930", ["adjusted": given]).adjusted == resolved)
        #expect(try Self.overseas("TSE", "7203", ["adjusted": given]).adjusted == resolved)
    }

    @Test("adjusted values refused", arguments: ["yes", "1", "0", "", "t"])
    func badAdjusted(given: String) {
        #expect(Self.refusal { () throws(Problem) in try Self.domestic("005930", ["adjusted": given]) }
            == "invalid_parameter")
        #expect(Self.refusal { () throws(Problem) in try Self.overseas("NAS", "AAPL", ["adjusted": given]) }
            == "invalid_parameter")
    }

    // MARK: symbols and exchanges

    @Test("domestic symbols: ^[0-9A-Z]{6,9}$ after upper-casing", arguments: [
        ("005930", "005930"), ("q500001", "Q500001"), ("Q500001", "Q500001"), ("a12345678", "A12345678"),
    ])
    func domesticSymbols(given: String, resolved: String) throws {
        #expect(try Self.domestic(given).symbol == resolved)
    }

    /// Letters outside ASCII that Unicode upper-cases into ASCII ones (`ß` → `SS`, `ı` → `I`, `ſ` → `S`) are refused,
    /// not read as the ASCII code (gateway-api.md's grammar is ASCII).
    @Test("symbols, exchanges and periods are upper-cased in ASCII only")
    func asciiOnlyUpperCasing() {
        for bad in ["00593ß", "ı00593", "ſ00593"] {
            #expect(Self.refusal { () throws(Problem) in try Self.domestic(bad) } == "invalid_parameter", "\(bad)")
        }
        #expect(Self.refusal { () throws(Problem) in try Self.overseas("NAS", "ıbm") } == "invalid_parameter")
        #expect(Self.refusal { () throws(Problem) in try Self.overseas("naſ", "IBM") } == "invalid_parameter")
        #expect(Exchange(excd: "naſ") == nil && Exchange(excd: "nas") == .nas)
        #expect(Self.refusal { () throws(Problem) in try Self.domestic("005930", ["period": "ｄ"]) } == "invalid_parameter")
        #expect("ǆ-ibm.b/ß".asciiUppercased == "ǆ-IBM.B/ß")
    }

    @Test("domestic symbols refused", arguments: ["00593-", "00593.0", "0059 30", "00593", "0059301234", "삼성전자00", ""])
    func badDomesticSymbols(given: String) {
        #expect(Self.refusal { () throws(Problem) in try Self.domestic(given) } == "invalid_parameter")
    }

    @Test("overseas symbols: ^[A-Z0-9.\\-/]{1,16}$ after upper-casing", arguments: [
        ("aapl", "AAPL"), ("brk.b", "BRK.B"), ("rds-a", "RDS-A"), ("BRK/B", "BRK/B"), ("0700", "0700"), ("x", "X"),
        ("a.b-c/d", "A.B-C/D"), (String(repeating: "a", count: 16), String(repeating: "A", count: 16)),
    ])
    func overseasSymbols(given: String, resolved: String) throws {
        #expect(try Self.overseas("NYS", given).symbol == resolved)
    }

    /// Besides the grammar, a `/` must stand between two parts (README, "Where kisgw differs"): `%2F` must not name
    /// the same symbol another way than the path does.
    @Test("overseas symbols refused", arguments: [
        "", String(repeating: "A", count: 17), "BRK B", "BRK_B", "BRK+B", "BRK:B", "AAPL%", "애플", "/BRK", "BRK/", "BRK//B",
    ])
    func badOverseasSymbols(given: String) {
        #expect(Self.refusal { () throws(Problem) in try Self.overseas("NYS", given) } == "invalid_parameter")
    }

    @Test("every overseas exchange code is accepted, in any case", arguments: Exchange.overseas)
    func exchanges(exchange: Exchange) throws {
        let code = exchange.rawValue
        let mixed = code.prefix(1).lowercased() + code.dropFirst()
        for given in [code, code.lowercased(), mixed] {
            #expect(Exchange(excd: given) == exchange)
            let q = try Self.overseas(given, "abc")
            #expect(q.exchange == exchange)
            #expect(q.market == .overseas)
            #expect(q.symbol == "ABC")
        }
    }

    @Test("exactly the nine KIS EXCD codes: KRX and anything else are refused on the overseas route")
    func exchangeList() {
        #expect(Set(Exchange.overseas.map(\.rawValue)) == ["NAS", "NYS", "AMS", "HKS", "TSE", "SHS", "SZS", "HSX", "HNX"])
        for bad in ["KRX", "krx", "XXX", "NASD", "NA", ""] {
            #expect(Exchange(excd: bad) == nil, "\(bad)")
            #expect(Self.refusal { () throws(Problem) in try Self.overseas(bad, "AAPL") } == "invalid_parameter", "\(bad)")
        }
    }

    @Test("currency: KRW for KRX; USD for NAS/NYS/AMS, HKD, JPY, CNY for SHS/SZS, VND for HSX/HNX")
    func currencies() {
        let expected: [Exchange: String] = [
            .krx: "KRW", .nas: "USD", .nys: "USD", .ams: "USD", .hks: "HKD", .tse: "JPY", .shs: "CNY", .szs: "CNY",
            .hsx: "VND", .hnx: "VND",
        ]
        for exchange in Exchange.allCases { #expect(exchange.currency == expected[exchange], "\(exchange.rawValue)") }
    }

    // MARK: ranges

    /// The implementation's length of a range is `end − start` in days: `max_range_days` apart is allowed.
    @Test("range: end − start = max_range_days is allowed, one day more is range_too_large")
    func rangeBoundary() throws {
        let longest = try Self.domestic("005930", ["start": "2015-01-01", "end": "2025-01-08"])
        #expect(longest.end.dayNumber - longest.start.dayNumber == 3660)
        #expect(Self.refusal { () throws(Problem) in try Self.domestic("005930", ["start": "2015-01-01", "end": "2025-01-09"]) }
            == "range_too_large")
        #expect(Self.refusal { () throws(Problem) in try Self.overseas("NAS", "AAPL", ["start": "20150101", "end": "20250109"]) }
            == "range_too_large")
        // [limits] max_range_days is the bound, not a constant.
        _ = try Self.domestic("005930", ["start": "2025-01-01", "end": "2025-01-11"], maxRangeDays: 10)
        #expect(Self.refusal { () throws(Problem) in
            try Self.domestic("005930", ["start": "2025-01-01", "end": "2025-01-12"], maxRangeDays: 10)
        } == "range_too_large")
        // The default start (end − 150 days) keeps within a shorter max_range_days.
        let short = try Self.domestic("005930", ["end": "2025-01-31"], maxRangeDays: 30)
        #expect(short.start == CivilDate(year: 2025, month: 1, day: 1))
        // A single day is a range; start after end is not.
        _ = try Self.domestic("005930", ["start": "2025-01-02", "end": "2025-01-02"])
        #expect(Self.refusal { () throws(Problem) in try Self.domestic("005930", ["start": "2025-01-03", "end": "2025-01-02"]) }
            == "invalid_parameter")
    }

    // MARK: the cache key

    @Test("unknown query parameters are ignored; the key is built from the resolved values")
    func keyFromResolvedValues() throws {
        let base = try Self.domestic("005930", ["start": "2025-01-02", "end": "2025-01-31"]).cacheKey
        let same: [(String, [String: String])] = [
            ("005930", ["start": "2025-01-02", "end": "2025-01-31", "foo": "1", "user": "alice"]),
            ("005930", ["start": "20250102", "end": "20250131"]),
            ("005930", ["start": "2025-01-02", "end": "2025-01-31", "period": "d", "adjusted": "true"]),
        ]
        for (symbol, query) in same { #expect(try Self.domestic(symbol, query).cacheKey == base, "\(query)") }
        #expect(try Self.overseas("nas", "aapl").cacheKey == Self.overseas("NAS", "AAPL").cacheKey)
        // Defaults resolved: no dates at all is the same key as the default dates written out.
        #expect(try Self.domestic("005930").cacheKey
            == Self.domestic("005930", ["start": "2024-10-06", "end": "2025-03-05"]).cacheKey)
    }

    @Test("the key tells apart market, exchange, symbol, period, adjusted, start and end")
    func keyDistinguishes() throws {
        let range = ["start": "2025-01-02", "end": "2025-01-31"]
        func with(_ extra: [String: String]) -> [String: String] { range.merging(extra) { _, new in new } }
        let keys = [
            try Self.domestic("005930", range).cacheKey,
            try Self.domestic("000660", range).cacheKey,
            try Self.domestic("005930", with(["period": "W"])).cacheKey,
            try Self.domestic("005930", with(["period": "M"])).cacheKey,
            try Self.domestic("005930", with(["adjusted": "false"])).cacheKey,
            try Self.domestic("005930", with(["start": "2025-01-03"])).cacheKey,
            try Self.domestic("005930", with(["end": "2025-01-30"])).cacheKey,
            try Self.overseas("NAS", "005930", range).cacheKey,
            try Self.overseas("NYS", "005930", range).cacheKey,
            try Self.overseas("NAS", "005930", with(["period": "W"])).cacheKey,
            try Self.overseas("NAS", "005930", with(["adjusted": "false"])).cacheKey,
        ]
        #expect(Set(keys).count == keys.count, "\(keys)")
    }

    // MARK: the response body

    /// The L1's byte bound is on memory: a body of 2,500 candles lies in a buffer rounded up to a power of two.
    @Test("an entry costs its body's whole allocation, not only the body's bytes")
    func entryCost() throws {
        let q = try Self.domestic("005930", ["start": "2015-01-01", "end": "2024-12-31"])
        let n = ExactNumber("71500")!
        let candles = (0..<2500).map {
            Candle(date: CivilDate(dayNumber: q.start.dayNumber + $0), open: n, high: n, low: n, close: n, volume: n,
                   turnover: n)
        }
        let body = ChartEntry.render(q, chart: DailyChart(name: "삼성전자", candles: candles, known: true, calls: 25))
        let entry = ChartEntry(body: body, storedAt: 0, freshUntil: 1)
        #expect(body.capacity > body.readableBytes)
        #expect(entry.cost >= body.capacity)
        let decoded = try #require(ChartEntry.decode(entry.encoded()))
        #expect(decoded.cost >= decoded.body.capacity)
    }

    @Test("the body says market, exchange, currency, period and adjusted as resolved", arguments: Exchange.allCases)
    func body(exchange: Exchange) throws {
        for (period, adjusted) in [("D", true), ("W", false), ("M", true)] {
            let query = ["period": period.lowercased(), "adjusted": String(adjusted)]
            let q = try exchange == .krx
                ? Self.domestic("005930", query) : Self.overseas(exchange.rawValue.lowercased(), "abc", query)
            let rendered = ChartEntry.render(q, chart: DailyChart(name: nil, candles: [], known: true, calls: 1))
            let json = try #require(
                try JSONSerialization.jsonObject(with: Data(rendered.readableBytesView)) as? [String: Any])
            #expect(json["market"] as? String == (exchange == .krx ? "domestic" : "overseas"))
            #expect(json["exchange"] as? String == exchange.rawValue)
            #expect(json["currency"] as? String == exchange.currency)
            #expect(json["period"] as? String == period)
            #expect(json["adjusted"] as? Bool == adjusted)
            #expect(json["symbol"] as? String == (exchange == .krx ? "005930" : "ABC"))
            #expect(json["start"] as? String == q.start.iso)
            #expect(json["end"] as? String == q.end.iso)
            #expect((json["candles"] as? [Any])?.isEmpty == true)
        }
    }
}
