import Foundation
import KIS

/// Deterministic, plausible daily bars: the same symbol and date give the same candle on every run and machine.
///
/// Prices are a smooth function of the day number plus hashed daily noise, so any day is computed in O(1)
/// without walking history. Each listed symbol may carry one simulated split; unadjusted prices before it are
/// the adjusted ones times the split ratio, and volumes divided by it, as a split looks in real data.
struct MarketData: Sendable {
    /// One day's bar in minor units (won, or 10^-decimals of the currency).
    struct Day: Equatable {
        var date: CivilDate
        var open: Int64
        var high: Int64
        var low: Int64
        var close: Int64
        var volume: Int64
        var turnover: Int64
    }

    struct Profile: Sendable {
        let symbol: String
        let exchange: Exchange
        let name: String?
        /// Adjusted base price in major units.
        let basePrice: Double
        let volatility: Double
        let baseVolume: Double
        let listed: CivilDate
        let split: (date: CivilDate, ratio: Int64)?
        let seed: UInt64
        /// Decimals of the price tick.
        let decimals: Int
    }

    // MARK: symbols

    private static let domesticNames: [String: (String, Double)] = [
        "005930": ("삼성전자", 70000), "005935": ("삼성전자우", 58000), "000660": ("SK하이닉스", 180000),
        "035420": ("NAVER", 190000), "035720": ("카카오", 45000), "005380": ("현대차", 230000),
        "051910": ("LG화학", 350000), "006400": ("삼성SDI", 350000), "207940": ("삼성바이오로직스", 800000),
        "068270": ("셀트리온", 180000), "105560": ("KB금융", 70000), "055550": ("신한지주", 45000),
        "005490": ("POSCO홀딩스", 400000), "000270": ("기아", 100000), "012330": ("현대모비스", 230000),
        "069500": ("KODEX 200", 35000), "229200": ("KODEX 코스닥150", 12000),
        "Q500001": ("신한 레버리지 WTI원유 선물 ETN", 5000),
    ]

    private static let overseasBase: [String: Double] = [
        "NAS:AAPL": 230, "NAS:MSFT": 420, "NAS:NVDA": 130, "NAS:AMZN": 190, "NAS:GOOGL": 170, "NAS:TSLA": 250,
        "NAS:META": 560, "NAS:QQQ": 480, "NYS:JPM": 210, "NYS:KO": 62, "NYS:IBM": 220, "NYS:BRK/B": 450,
        "AMS:SPY": 570, "HKS:0700": 380, "HKS:9988": 85, "TSE:7203": 2800, "TSE:6758": 3000,
        "SHS:600519": 1600, "SZS:000001": 11, "HSX:VNM": 65000, "HSX:VIC": 42000, "HNX:SHB": 11000,
    ]

    /// The profile of a listed symbol, or nil when KIS would not know it.
    static func profile(symbol: String, exchange: Exchange) -> Profile? {
        guard isListed(symbol: symbol, exchange: exchange) else { return nil }
        let seed = hash(exchange.rawValue + ":" + symbol)
        let decimals = exchange == .krx ? 0 : priceDecimals(exchange)
        let name: String?
        let base: Double
        if exchange == .krx {
            let known = domesticNames[symbol]
            name = known?.0 ?? "모의종목 \(symbol)"
            base = known?.1 ?? exp(log(1000) + unit(seed, 1) * (log(500_000) - log(1000)))
        } else {
            name = nil
            base = overseasBase[exchange.rawValue + ":" + symbol] ?? defaultOverseasBase(exchange, seed)
        }
        // Listing between 1995 and 2012; a split for a third of symbols between 2015 and 2024.
        let listed = CivilDate(year: 1995, month: 1, day: 2)!.adding(days: Int(mix(seed, 2) % 6500))
        var split: (CivilDate, Int64)? = nil
        if mix(seed, 3) % 3 == 0 {
            let ratios: [Int64] = [2, 5, 10, 50]
            var d = CivilDate(year: 2015, month: 1, day: 5)!.adding(days: Int(mix(seed, 4) % 3600))
            while !exchange.isTradingDay(d) { d = d.adding(days: 1) }
            split = (d, ratios[Int(mix(seed, 5) % UInt64(ratios.count))])
        }
        return Profile(
            symbol: symbol, exchange: exchange, name: name, basePrice: base,
            volatility: 0.012 + unit(seed, 6) * 0.018, baseVolume: exp(log(50_000) + unit(seed, 7) * log(400)),
            listed: listed, split: split, seed: seed, decimals: decimals)
    }

    static func isListed(symbol: String, exchange: Exchange) -> Bool {
        if symbol.hasPrefix("ZZ") || symbol.hasPrefix("9999") || symbol == "000000" { return false }
        func all(_ s: Substring, _ ok: (UInt8) -> Bool) -> Bool { !s.isEmpty && s.utf8.allSatisfy(ok) }
        let digit: (UInt8) -> Bool = { $0 >= 48 && $0 <= 57 }
        let upper: (UInt8) -> Bool = { $0 >= 65 && $0 <= 90 }
        let s = Substring(symbol)
        switch exchange {
        case .krx:
            if s.count == 7, s.first == "Q" { return all(s.dropFirst(), digit) }
            return s.count == 6 && all(s, { digit($0) || upper($0) }) && digit(s.utf8.first!)
        case .nas, .nys, .ams:
            let parts = s.split(separator: "/", omittingEmptySubsequences: false)
            return (1...2).contains(parts.count) && parts[0].count <= 5 && all(parts[0], upper)
                && (parts.count == 1 || (parts[1].count == 1 && all(parts[1], upper)))
        case .hks: return (4...5).contains(s.count) && all(s, digit)
        case .tse: return s.count == 4 && all(s, { digit($0) || upper($0) })
        case .shs: return s.count == 6 && s.first == "6" && all(s, digit)
        case .szs: return s.count == 6 && (s.first == "0" || s.first == "3") && all(s, digit)
        case .hsx, .hnx: return s.count == 3 && all(s, upper)
        }
    }

    private static func priceDecimals(_ e: Exchange) -> Int {
        switch e {
        case .nas, .nys, .ams, .shs, .szs, .hks: 2
        case .tse: 1
        case .krx, .hsx, .hnx: 0
        }
    }

    private static func defaultOverseasBase(_ e: Exchange, _ seed: UInt64) -> Double {
        let (lo, hi): (Double, Double) =
            switch e {
            case .nas, .nys, .ams: (5, 600)
            case .hks: (1, 400)
            case .tse: (300, 20000)
            case .shs, .szs: (3, 200)
            case .hsx, .hnx: (5000, 120_000)
            case .krx: (1000, 500_000)
            }
        return exp(log(lo) + unit(seed, 1) * (log(hi) - log(lo)))
    }

    // MARK: prices

    /// The bar of `date` (which must be a trading day on or after listing), adjusted or as traded.
    static func day(_ p: Profile, _ date: CivilDate, adjusted: Bool) -> Day {
        let prev = previousTradingDay(p, before: date)
        let closeA = rawClose(p, date)
        let prevCloseA = prev.map { rawClose(p, $0) } ?? closeA * (1 + noise(p.seed, date.dayNumber, 11) * p.volatility)
        let gap = noise(p.seed, date.dayNumber, 12) * p.volatility * 0.6
        let openA = prevCloseA * (1 + gap)
        let wickUp = abs(noise(p.seed, date.dayNumber, 13)) * p.volatility * 0.8
        let wickDown = abs(noise(p.seed, date.dayNumber, 14)) * p.volatility * 0.8
        var volume = p.baseVolume * exp(noise(p.seed, date.dayNumber, 15) * 0.7) * (1 + 40 * abs(closeA / prevCloseA - 1))
        volume = max(1, volume.rounded())

        var factor: Double = 1
        if let split = p.split, !adjusted, date < split.date { factor = Double(split.ratio) }
        let scale = pow(10, Double(p.decimals))
        let isKRX = p.exchange == .krx
        func price(_ x: Double, _ rule: FloatingPointRoundingRule) -> Int64 {
            let raw = x * factor
            if isKRX { return roundKRX(raw, rule) }
            return max(1, Int64((raw * scale).rounded(rule)))
        }
        let open = price(openA, .toNearestOrAwayFromZero)
        let close = price(closeA, .toNearestOrAwayFromZero)
        let high = max(open, close, price(max(openA, closeA) * (1 + wickUp), .up))
        let low = min(open, close, max(isKRX ? 1 : 1, price(min(openA, closeA) * (1 - wickDown), .down)))
        let vol = Int64((volume / factor).rounded(.up))
        let avg = Double(open + high + low + close) / 4 / scale
        return Day(date: date, open: open, high: high, low: low, close: close, volume: vol,
                   turnover: Int64((Double(vol) * avg).rounded()))
    }

    /// Adjusted close before tick rounding: a log-price made of two slow waves, a drift and daily noise.
    private static func rawClose(_ p: Profile, _ d: CivilDate) -> Double {
        let t = Double(d.dayNumber)
        let a1 = 0.25 + unit(p.seed, 20) * 0.2
        let a2 = 0.08 + unit(p.seed, 21) * 0.08
        let period1 = 700 + unit(p.seed, 22) * 900
        let period2 = 60 + unit(p.seed, 23) * 120
        let drift = (unit(p.seed, 24) - 0.4) * 0.08 / 365
        let t0 = 20000.0  // 2024-10-04, where the price sits near its base
        var lp = log(p.basePrice)
        lp += a1 * (sin(2 * .pi * t / period1 + unit(p.seed, 25) * 6.28) - sin(2 * .pi * t0 / period1 + unit(p.seed, 25) * 6.28))
        lp += a2 * (sin(2 * .pi * t / period2 + unit(p.seed, 26) * 6.28) - sin(2 * .pi * t0 / period2 + unit(p.seed, 26) * 6.28))
        lp += drift * (t - t0)
        lp += noise(p.seed, d.dayNumber, 10) * p.volatility
        return exp(lp)
    }

    static func previousTradingDay(_ p: Profile, before date: CivilDate) -> CivilDate? {
        var d = date.adding(days: -1)
        while d >= p.listed {
            if p.exchange.isTradingDay(d) { return d }
            d = d.adding(days: -1)
        }
        return nil
    }

    /// KRX tick sizes (2023 rules).
    static func krxTick(_ price: Double) -> Int64 {
        switch price {
        case ..<2000: 1
        case ..<5000: 5
        case ..<20000: 10
        case ..<50000: 50
        case ..<200_000: 100
        case ..<500_000: 500
        default: 1000
        }
    }

    private static func roundKRX(_ x: Double, _ rule: FloatingPointRoundingRule) -> Int64 {
        let tick = Double(krxTick(x))
        return max(1, Int64((x / tick).rounded(rule) * tick))
    }

    // MARK: deterministic randomness (never Swift's Hasher, which is seeded per process)

    static func hash(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 {
            h ^= UInt64(b)
            h &*= 0x0000_0100_0000_01b3
        }
        return h
    }

    static func mix(_ seed: UInt64, _ salt: UInt64) -> UInt64 {
        var z = seed &+ salt &* 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    static func unit(_ seed: UInt64, _ salt: UInt64) -> Double { Double(mix(seed, salt) >> 11) / Double(1 << 53) }

    /// Roughly normal in about [-3, 3]: the sum of three uniforms, centred and scaled.
    static func noise(_ seed: UInt64, _ day: Int, _ salt: UInt64) -> Double {
        let s = mix(seed, UInt64(bitPattern: Int64(day)) &* 31 &+ salt)
        let u = unit(s, 1) + unit(s, 2) + unit(s, 3) - 1.5
        return u * 2
    }
}

/// A bar for the wire: a day, or a week/month/year aggregated from days.
struct Bar: Equatable {
    var date: CivilDate
    var open: Int64
    var high: Int64
    var low: Int64
    var close: Int64
    var volume: Int64
    var turnover: Int64
    /// Close of the previous bar of the same period, for change and sign.
    var previousClose: Int64?
    var isSplitDay: Bool
}

enum ChartPeriod: String, Sendable {
    case day = "D", week = "W", month = "M", year = "Y"

    func periodStart(_ d: CivilDate) -> CivilDate {
        switch self {
        case .day: d
        case .week: d.startOfWeek
        case .month: d.startOfMonth
        case .year: d.startOfYear
        }
    }
}

extension MarketData {
    /// Bars newest first, for periods whose trading days fall in `[start, end]` (start nil = since listing),
    /// clipped to days up to `today`, stopping after `limit` bars.
    static func bars(
        _ p: Profile, period: ChartPeriod, adjusted: Bool, start: CivilDate?, end: CivilDate, today: CivilDate,
        limit: Int
    ) -> [Bar] {
        let lower = max(start ?? p.listed, p.listed)
        var d = min(end, today)
        var out: [Bar] = []
        out.reserveCapacity(min(limit, 128))
        var current: [MarketData.Day] = []  // newest first within the open period
        var currentKey: CivilDate? = nil

        func flush() {
            guard let newest = current.first, let oldest = current.last else { return }
            var bar = Bar(
                date: oldest.date, open: oldest.open, high: current.map(\.high).max()!, low: current.map(\.low).min()!,
                close: newest.close, volume: current.reduce(0) { $0 + $1.volume },
                turnover: current.reduce(0) { $0 + $1.turnover }, previousClose: nil,
                isSplitDay: current.contains { $0.date == p.split?.date })
            // Previous bar's close: the last trading day before this period (or day) began.
            if let prev = previousTradingDay(p, before: period.periodStart(oldest.date)) {
                bar.previousClose = day(p, prev, adjusted: adjusted).close
            }
            out.append(bar)
            current.removeAll(keepingCapacity: true)
        }

        while d >= lower, out.count < limit {
            if p.exchange.isTradingDay(d) {
                let key = period.periodStart(d)
                if key != currentKey {
                    flush()
                    if out.count >= limit { break }
                    currentKey = key
                }
                current.append(day(p, d, adjusted: adjusted))
            }
            d = d.adding(days: -1)
        }
        if out.count < limit { flush() }
        return out
    }

    /// Formats minor units with `decimals` places (`2359300`, 4 → `"235.9300"` when the tick has 2 decimals).
    static func format(_ minor: Int64, tickDecimals: Int, zdiv: Int) -> String {
        let negative = minor < 0
        var v = negative ? -minor : minor
        var digits = tickDecimals
        // Pad to zdiv decimals by scaling.
        while digits < zdiv {
            v *= 10
            digits += 1
        }
        var s = String(v)
        if digits > 0 {
            if s.count <= digits { s = String(repeating: "0", count: digits - s.count + 1) + s }
            s.insert(".", at: s.index(s.endIndex, offsetBy: -digits))
        }
        return negative ? "-" + s : s
    }
}
