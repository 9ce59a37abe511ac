import Foundation

/// A number exactly as KIS wrote it, made fit to stand as a JSON number (`"+0012.50"` → `12.50`), never rounded
/// through `Double`.
public struct ExactNumber: Sendable, Hashable, CustomStringConvertible {
    public let text: String

    /// nil unless `raw` is an optionally signed decimal (`-12`, `185.6400`), with spaces or tabs around it.
    ///
    /// One pass over the bytes: this runs for every field of every KIS row.
    public init?(_ raw: String) {
        // Most KIS fields are already canonical ("18160", "0.16", "-260"): those are kept as they are, no copy.
        if Self.isCanonical(raw.utf8) {
            self.text = raw
            return
        }
        var u = raw.utf8[...]
        while let f = u.first, f == 0x20 || f == 0x09 { u = u.dropFirst() }
        while let l = u.last, l == 0x20 || l == 0x09 { u = u.dropLast() }
        var negative = false
        if let sign = u.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") {
            negative = sign == UInt8(ascii: "-")
            u = u.dropFirst()
        }
        var out: [UInt8] = []
        out.reserveCapacity(u.count + 1)
        var intDigits = 0, fracDigits = 0, sawPoint = false, nonZero = false
        for c in u {
            if c == UInt8(ascii: ".") {
                guard !sawPoint, intDigits > 0 else { return nil }
                sawPoint = true
                if out.isEmpty { out.append(UInt8(ascii: "0")) }  // "000.5" → "0.5"
                out.append(c)
                continue
            }
            guard c >= 48 && c <= 57 else { return nil }
            if c != 48 { nonZero = true }
            if sawPoint {
                fracDigits += 1
                out.append(c)
            } else {
                intDigits += 1
                if !(out.isEmpty && c == 48) { out.append(c) }  // leading zeros go
            }
        }
        guard intDigits > 0, !sawPoint || fracDigits > 0 else { return nil }
        if out.isEmpty { out.append(UInt8(ascii: "0")) }
        if negative && nonZero { out.insert(UInt8(ascii: "-"), at: 0) }
        self.text = String(decoding: out, as: UTF8.self)
    }

    /// Whether `bytes` is already what ``init(_:)`` would make of it: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, not a
    /// negative zero.
    static func isCanonical(_ bytes: String.UTF8View) -> Bool {
        var i = bytes.startIndex
        guard i != bytes.endIndex else { return false }
        var negative = false
        if bytes[i] == UInt8(ascii: "-") {
            negative = true
            i = bytes.index(after: i)
        }
        guard i != bytes.endIndex else { return false }
        let lead = bytes[i]
        guard lead >= 48 && lead <= 57 else { return false }
        var nonZero = lead != 48
        i = bytes.index(after: i)
        if lead == 48, i != bytes.endIndex, bytes[i] != UInt8(ascii: ".") { return false }  // "05"
        var sawPoint = false, fracDigits = 0
        while i != bytes.endIndex {
            let c = bytes[i]
            if c == UInt8(ascii: ".") {
                guard !sawPoint else { return false }
                sawPoint = true
            } else {
                guard c >= 48 && c <= 57 else { return false }
                if c != 48 { nonZero = true }
                if sawPoint { fracDigits += 1 }
            }
            i = bytes.index(after: i)
        }
        if sawPoint && fracDigits == 0 { return false }
        return !(negative && !nonZero)
    }

    public var description: String { text }

    /// Whether it is zero (`0`, `0.00`).
    public var isZero: Bool { text.utf8.allSatisfy { $0 == UInt8(ascii: "0") || $0 == UInt8(ascii: ".") } }

    static let zero = ExactNumber("0")!
}

/// One normalized daily (or weekly, monthly, yearly) candle.
public struct Candle: Sendable, Hashable {
    public var date: CivilDate
    public var open: ExactNumber
    public var high: ExactNumber
    public var low: ExactNumber
    public var close: ExactNumber
    public var volume: ExactNumber
    public var turnover: ExactNumber?

    public init(date: CivilDate, open: ExactNumber, high: ExactNumber, low: ExactNumber, close: ExactNumber,
                volume: ExactNumber, turnover: ExactNumber?) {
        self.date = date
        self.open = open
        self.high = high
        self.low = low
        self.close = close
        self.volume = volume
        self.turnover = turnover
    }

    init?(_ row: KISDomesticChartPage.Row) {
        self.init(date: row.stck_bsop_date, open: row.stck_oprc, high: row.stck_hgpr, low: row.stck_lwpr,
                  close: row.stck_clpr, volume: row.acml_vol, turnover: row.acml_tr_pbmn)
    }

    init?(_ row: KISOverseasChartPage.Row) {
        self.init(date: row.xymd, open: row.open, high: row.high, low: row.low, close: row.clos, volume: row.tvol,
                  turnover: row.tamt)
    }

    /// A row as KIS wrote it. Without a date or a (non-zero) close there is no candle. A day with no trade — an open,
    /// high or low that is blank or zero beside a close (kis-api.md: `mod_yn` `Y`, no open price) — is a flat candle
    /// at the close, rather than a spike to zero or a day left out; a blank volume is 0. Prices that are all there
    /// are kept as they are.
    private init?(date: String?, open: String?, high: String?, low: String?, close: String?, volume: String?,
                  turnover: String?) {
        guard let d = date.flatMap({ CivilDate(yyyymmdd: $0) }), let c = close.flatMap(ExactNumber.init), !c.isZero
        else { return nil }
        let prices = [open, high, low].map { $0.flatMap(ExactNumber.init) }
        let traded = prices.allSatisfy { $0.map { !$0.isZero } ?? false }
        self.init(date: d, open: traded ? prices[0]! : c, high: traded ? prices[1]! : c, low: traded ? prices[2]! : c,
                  close: c, volume: volume.flatMap(ExactNumber.init) ?? .zero,
                  turnover: turnover.flatMap(ExactNumber.init))
    }
}

/// A whole chart over a range, every KIS page merged.
public struct DailyChart: Sendable, Equatable {
    /// KIS's name for the stock (domestic only).
    public var name: String?
    /// Ascending, within the range, each date once.
    public var candles: [Candle]
    /// False when KIS does not know the symbol.
    public var known: Bool
    /// How many KIS calls it took.
    public var calls: Int
}

/// Walks KIS's daily charts back by date, 100 rows a call, as KIS's own samples do; calls `beforeEachCall`
/// (the rate limiter) before every call.
public enum DailyChartPager {
    /// Whether to call KIS again for the page whose call failed with `error`, the `attempt`th failure of that page
    /// (1, 2, …); it waits as it sees fit first. False: the error ends the chart.
    public typealias Retry = @Sendable (_ error: KISClientError, _ attempt: Int) async -> Bool

    /// Upper bound on pages for one chart, against a misbehaving upstream.
    static func pageLimit(start: CivilDate, end: CivilDate) -> Int { (end.dayNumber - start.dayNumber) / 100 + 3 }

    /// Keeps a page's candles within `[start, end]` (the first seen of each date) and says where the next page ends:
    /// nil when this page was the last — fewer than 100 rows, nothing older than `start` left, or an upstream that
    /// answered past the page's end.
    /// The newest candle dated before `start` is kept in `beforeStart` (see ``keepingFirstPeriod``).
    static func merge(_ candles: [Candle], rows: Int, into byDate: inout [CivilDate: Candle],
                      beforeStart: inout Candle?, start: CivilDate, end: CivilDate, pageEnd: CivilDate,
                      period: String) -> CivilDate? {
        for c in candles {
            if c.date >= start {
                if c.date <= end { byDate[c.date] = byDate[c.date] ?? c }
            } else if beforeStart.map({ c.date > $0.date }) ?? true {
                beforeStart = c
            }
        }
        guard rows >= 100, let oldest = candles.map(\.date).min(), oldest > start, oldest <= pageEnd else { return nil }
        // A weekly (monthly, yearly) bar dated after `start` may still begin the range's first period.
        let next = nextPageEnd(oldest: oldest, period: period)
        return next >= start ? next : nil
    }

    /// The end of the page after one whose oldest bar is dated `oldest`: the day before that bar's period began. A
    /// weekly, monthly or yearly bar may be dated by its first trading day (the simulator) or its last (KIS's dating
    /// is not documented): ending the next page the day before `oldest` would, under the second, cut the same period
    /// short and give a partial bar of it, under another date. python-kis steps back 1/7/30/365 days by period.
    static func nextPageEnd(oldest: CivilDate, period: String) -> CivilDate {
        (periodDays(of: oldest, period: period)?.lowerBound ?? oldest).adding(days: -1)
    }

    /// The days of the week (month, year) `date` is in; nil for daily candles.
    static func periodDays(of date: CivilDate, period: String) -> ClosedRange<CivilDate>? {
        let first: CivilDate, next: CivilDate
        switch period {
        case "W": first = date.startOfWeek; next = first.adding(days: 7)
        case "M": first = date.startOfMonth; next = first.adding(days: 31).startOfMonth
        case "Y": first = date.startOfYear; next = CivilDate(year: first.year + 1, month: 1, day: 1)!
        default: return nil
        }
        return first...next.adding(days: -1)
    }

    /// The weekly (monthly, yearly) candle of the period that contains `start`, when KIS dated it before `start`.
    /// KIS's overseas chart takes no start date and dates a period's candle by its first trading day, so a range
    /// starting mid-week (mid-month) got that candle dated before the range, and it was dropped — an empty chart for
    /// a range inside one week or month, whose days the daily chart has. It is kept, its values as KIS sent them (the
    /// whole period's), and dated at the range's first weekday in that period, as KIS dates the domestic chart's
    /// first, partial period (the first trading day in range): the answer's dates stay within `[start, end]`
    /// (gateway-api.md). Not when the range holds no weekday of that period (it traded before the range began), or
    /// a candle of that period is in the range already.
    static func keepingFirstPeriod(_ byDate: inout [CivilDate: Candle], beforeStart: Candle?, start: CivilDate,
                                   end: CivilDate, period: String) {
        guard let candle = beforeStart, let days = periodDays(of: candle.date, period: period), days.contains(start)
        else { return }
        let last = min(end, days.upperBound)
        var date = start
        while date.isWeekend && date < last { date = date.adding(days: 1) }
        guard !date.isWeekend, date <= last, !byDate.keys.contains(where: { days.contains($0) }) else { return }
        var moved = candle
        moved.date = date
        byDate[date] = moved
    }

    /// One page's call, after `beforeEachCall`, again while `retry` says so: a refusal of page 24 asks for page
    /// 24 again, not for the 23 before it (each page costs one unit of the app key's rate, kis-api.md).
    static func page<T>(_ beforeEachCall: @Sendable () async throws -> Void, retry: Retry,
                        _ call: () async throws -> T) async throws -> T {
        var failures = 0
        while true {
            try await beforeEachCall()
            do {
                return try await call()
            } catch let error as KISClientError {
                failures += 1
                guard await retry(error, failures) else { throw error }
            }
        }
    }

    public static func domestic(
        client: KISClient, credentials: KISCredentials, symbol: String, start: CivilDate, end: CivilDate,
        period: String, adjusted: Bool, beforeEachCall: @Sendable () async throws -> Void,
        retry: Retry = { _, _ in false }
    ) async throws -> DailyChart {
        var byDate: [CivilDate: Candle] = [:]
        var beforeStart: Candle? = nil
        var name: String? = nil
        var known = true
        var calls = 0
        var pageEnd = end
        while calls < pageLimit(start: start, end: end) {
            let page = try await Self.page(beforeEachCall, retry: retry) { [pageEnd] in
                try await client.domesticDailyPage(
                    credentials, symbol: symbol, start: start, end: pageEnd, period: period, adjusted: adjusted)
            }
            calls += 1
            if let o = page.output1 {
                if o.stck_prpr == "0" && (page.output2 ?? []).allSatisfy({ $0.stck_bsop_date == nil }) { known = false }
                if let n = o.hts_kor_isnm, !n.isEmpty { name = n.trimmingSpaces() }
            }
            let rows = page.output2 ?? []
            let candles = rows.compactMap(Candle.init)
            guard let next = Self.merge(candles, rows: rows.count, into: &byDate, beforeStart: &beforeStart,
                                        start: start, end: end, pageEnd: pageEnd, period: period)
            else { break }
            pageEnd = next
        }
        Self.keepingFirstPeriod(&byDate, beforeStart: beforeStart, start: start, end: end, period: period)
        return DailyChart(name: name, candles: byDate.values.sorted { $0.date < $1.date }, known: known, calls: calls)
    }

    public static func overseas(
        client: KISClient, credentials: KISCredentials, exchange: Exchange, symbol: String, start: CivilDate,
        end: CivilDate, period: String, adjusted: Bool, beforeEachCall: @Sendable () async throws -> Void,
        retry: Retry = { _, _ in false }
    ) async throws -> DailyChart {
        var byDate: [CivilDate: Candle] = [:]
        var beforeStart: Candle? = nil
        var known = true
        var calls = 0
        var pageEnd = end
        while calls < pageLimit(start: start, end: end) {
            let page = try await Self.page(beforeEachCall, retry: retry) { [pageEnd] in
                try await client.overseasDailyPage(
                    credentials, exchange: exchange, symbol: symbol, period: period, end: pageEnd, adjusted: adjusted)
            }
            calls += 1
            if (page.output1?.nrec ?? "").isEmpty && (page.output2 ?? []).isEmpty { known = false }
            let rows = Self.droppingPadding(page.output2 ?? [], nrec: page.output1?.nrec)
            let candles = rows.compactMap(Candle.init)
            guard let next = Self.merge(candles, rows: rows.count, into: &byDate, beforeStart: &beforeStart,
                                        start: start, end: end, pageEnd: pageEnd, period: period)
            else { break }
            pageEnd = next
        }
        Self.keepingFirstPeriod(&byDate, beforeStart: beforeStart, start: start, end: end, period: period)
        return DailyChart(name: nil, candles: byDate.values.sorted { $0.date < $1.date }, known: known, calls: calls)
    }
}

extension DailyChartPager {
    /// An overseas page's rows without the blank padding past `nrec`. python-kis reads `nrec` as the count of valid
    /// rows and truncates `output2` to it, but KIS's spec labels it "previous close" (kis-api.md §5): a number smaller
    /// than the real row count (`"0"`, a price) must not cut real rows, which would lose them and, the page then
    /// looking short, end the chart early. Only rows past `nrec` with no date (`xymd`) are dropped; a real row is
    /// kept wherever it is.
    static func droppingPadding(_ rows: [KISOverseasChartPage.Row], nrec: String?) -> [KISOverseasChartPage.Row] {
        guard let n = nrec.flatMap({ Int($0.trimmingSpaces()) }), n >= 0, n < rows.count else { return rows }
        return Array(rows[..<n]) + rows[n...].filter { !($0.xymd ?? "").trimmingSpaces().isEmpty }
    }
}

extension String {
    /// `trimmingCharacters(in: .whitespaces)` (tabs, Unicode space separators and the zero-width space, Foundation's
    /// set) off both ends without Foundation's trip through UTF-16; returns `self` when there is nothing to trim.
    func trimmingSpaces() -> String {
        func isSpace(_ c: Unicode.Scalar) -> Bool {
            c == "\t" || c == "\u{200B}" || c.properties.generalCategory == .spaceSeparator
        }
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !isSpace($0) }), let last = scalars.lastIndex(where: { !isSpace($0) })
        else { return "" }
        if first == scalars.startIndex && last == scalars.index(before: scalars.endIndex) { return self }
        return String(scalars[first...last])
    }
}
