import ServerKit
import Foundation
import KIS

/// A chart request after validation: every field resolved, ready to key the cache.
struct ChartQuery: Sendable, Hashable {
    enum Market: String, Sendable { case domestic, overseas }

    let market: Market
    let exchange: Exchange
    let symbol: String
    let period: String
    let adjusted: Bool
    let start: CivilDate
    let end: CivilDate
    /// The shared cache key: market, exchange, symbol, period, adjusted and the resolved range — never the user.
    /// Built once: the miss path uses it at every step (L1, store, in-flight map, fleet lock).
    let cacheKey: String

    init(market: Market, exchange: Exchange, symbol: String, period: String, adjusted: Bool, start: CivilDate,
         end: CivilDate) {
        self.market = market
        self.exchange = exchange
        self.symbol = symbol
        self.period = period
        self.adjusted = adjusted
        self.start = start
        self.end = end
        self.cacheKey = "\(market == .domestic ? "d" : "o"):\(exchange.rawValue):\(symbol):\(period):\(adjusted ? "a" : "r"):\(start.dayNumber)-\(end.dayNumber)"
    }

    static let domesticPeriods: Set<String> = ["D", "W", "M", "Y"]
    static let overseasPeriods: Set<String> = ["D", "W", "M"]

    /// The earliest date a chart may ask for: no exchange has daily prices from before it (KIS's own go back to the
    /// 1950s at most), and a year-1 date would reach KIS, or a default start before year 1 be computed.
    static let earliest = CivilDate(year: 1900, month: 1, day: 1)!

    /// Validates a domestic request (`/domestic/chart/daily/{symbol}`).
    static func domestic(symbol raw: Substring, query: [String: Substring], maxRangeDays: Int, now: Date)
        throws(Problem) -> ChartQuery
    {
        let symbol = raw.asciiUppercased
        guard (6...9).contains(symbol.utf8.count),
            symbol.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) })
        else {
            throw Problem(.invalidParameter, "symbol must be a KRX short code of 6 to 9 letters or digits, such as 005930")
        }
        return try resolve(.domestic, .krx, symbol, query, periods: domesticPeriods, maxRangeDays: maxRangeDays, now: now)
    }

    /// Validates an overseas request (`/overseas/{exchange}/chart/daily/{symbol}`).
    static func overseas(
        exchange rawExchange: Substring, symbol raw: Substring, query: [String: Substring], maxRangeDays: Int, now: Date
    ) throws(Problem) -> ChartQuery {
        guard let exchange = Exchange(excd: rawExchange) else {
            let list = Exchange.overseas.map(\.rawValue).joined(separator: " ")
            throw Problem(.invalidParameter, "exchange must be one of \(list)")
        }
        let symbol = raw.asciiUppercased
        guard (1...16).contains(symbol.utf8.count),
            symbol.utf8.allSatisfy({
                ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || $0 == 46 || $0 == 45 || $0 == 47
            })
        else {
            throw Problem(.invalidParameter, "symbol must be 1 to 16 letters, digits, '.', '-' or '/', such as AAPL")
        }
        // `/` only between two parts (BRK/B): `%2F` must not name the same symbol another way than the path does.
        guard !symbol.hasPrefix("/"), !symbol.hasSuffix("/"), !symbol.contains("//") else {
            throw Problem(.invalidParameter, "a '/' in symbol must stand between two parts, as in BRK/B")
        }
        return try resolve(.overseas, exchange, symbol, query, periods: overseasPeriods, maxRangeDays: maxRangeDays,
                           now: now)
    }

    private static func resolve(
        _ market: Market, _ exchange: Exchange, _ symbol: String, _ query: [String: Substring], periods: Set<String>,
        maxRangeDays: Int, now: Date
    ) throws(Problem) -> ChartQuery {
        let period = query["period"].map(\.asciiUppercased) ?? "D"
        guard periods.contains(period) else {
            throw Problem(.invalidParameter, "period must be one of \(periods.sorted().joined(separator: " "))")
        }
        var adjusted = true
        if let a = query["adjusted"] {
            switch a.lowercased() {
            case "true": adjusted = true
            case "false": adjusted = false
            default: throw Problem(.invalidParameter, "adjusted must be true or false")
            }
        }
        let today = exchange.localTime(now).date
        let end: CivilDate
        if let e = query["end"] {
            guard let d = CivilDate(e) else { throw Problem(.invalidParameter, "end must be a date, YYYYMMDD or YYYY-MM-DD") }
            guard d >= earliest else { throw Problem(.invalidParameter, "end must not be before 1900-01-01") }
            end = d
        } else {
            end = today
        }
        let start: CivilDate
        if let s = query["start"] {
            guard let d = CivilDate(s) else {
                throw Problem(.invalidParameter, "start must be a date, YYYYMMDD or YYYY-MM-DD")
            }
            guard d >= earliest else { throw Problem(.invalidParameter, "start must not be before 1900-01-01") }
            start = d
        } else {
            // Within [limits] max_range_days when that is shorter, and never before the earliest date accepted.
            start = max(earliest, end.adding(days: -min(150, maxRangeDays)))
        }
        guard start <= end else { throw Problem(.invalidParameter, "start must not be after end") }
        guard end.dayNumber - start.dayNumber <= maxRangeDays else {
            throw Problem(.rangeTooLarge, "the range is longer than \(maxRangeDays) days")
        }
        return ChartQuery(market: market, exchange: exchange, symbol: symbol, period: period, adjusted: adjusted,
                          start: start, end: end)
    }
}
