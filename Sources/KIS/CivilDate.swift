public import Foundation

/// A calendar date with no time and no zone (a market's local date), stored as days since 1970-01-01.
///
/// Arithmetic is O(1) and allocation-free, which the simulator and the cache key rely on.
///
/// ```swift
/// let d = CivilDate(yyyymmdd: "20250304")!
/// d.adding(days: -1).yyyymmdd // "20250303"
/// ```
public struct CivilDate: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// Days since 1970-01-01 (negative before).
    public let dayNumber: Int

    public init(dayNumber: Int) { self.dayNumber = dayNumber }

    /// A validated date; nil for impossible dates such as 2025-02-30.
    public init?(year: Int, month: Int, day: Int) {
        guard (1...9999).contains(year), (1...12).contains(month), day >= 1,
            day <= CivilDate.daysIn(month: month, year: year)
        else { return nil }
        // Howard Hinnant's days_from_civil.
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        self.dayNumber = era * 146097 + doe - 719468
    }

    /// Parses `YYYYMMDD` or `YYYY-MM-DD`; nil for anything else. (No allocation: KIS rows carry one each.)
    public init?(_ text: some StringProtocol) {
        let u = text.utf8
        let dashed: Bool
        switch u.count {
        case 8: dashed = false
        case 10: dashed = true
        default: return nil
        }
        var year = 0, month = 0, day = 0, i = 0
        for c in u {
            defer { i += 1 }
            if dashed && (i == 4 || i == 7) {
                guard c == UInt8(ascii: "-") else { return nil }
                continue
            }
            guard c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") else { return nil }
            let d = Int(c - UInt8(ascii: "0"))
            let k = dashed ? (i < 4 ? 0 : i < 7 ? 1 : 2) : (i < 4 ? 0 : i < 6 ? 1 : 2)
            switch k {
            case 0: year = year * 10 + d
            case 1: month = month * 10 + d
            default: day = day * 10 + d
            }
        }
        self.init(year: year, month: month, day: day)
    }

    /// Parses `YYYYMMDD` only.
    public init?(yyyymmdd text: some StringProtocol) {
        guard text.utf8.count == 8 else { return nil }
        self.init(text)
    }

    /// The local date of `instant` in `timeZone`.
    public init(_ instant: Date, in timeZone: TimeZone) {
        let seconds = Int(instant.timeIntervalSince1970.rounded(.down)) + timeZone.secondsFromGMT(for: instant)
        self.dayNumber = Int((Double(seconds) / 86400).rounded(.down))
    }

    public var components: (year: Int, month: Int, day: Int) {
        // Howard Hinnant's civil_from_days.
        let z = dayNumber + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }

    public var year: Int { components.year }
    public var month: Int { components.month }
    public var day: Int { components.day }

    /// 0 = Sunday … 6 = Saturday.
    public var weekday: Int {
        let w = (dayNumber + 4) % 7  // 1970-01-01 was a Thursday
        return w < 0 ? w + 7 : w
    }

    public var isWeekend: Bool { weekday == 0 || weekday == 6 }

    /// Whether this is the `n`th (1…5) `weekday` (0 = Sunday … 6 = Saturday) of its month, as holiday rules name
    /// days ("the third Monday of January").
    public func isNth(_ n: Int, _ weekday: Int) -> Bool {
        self.weekday == weekday && (7 * n - 6...7 * n).contains(day)
    }

    /// Whether this is the last `weekday` of its month.
    public func isLast(_ weekday: Int) -> Bool {
        self.weekday == weekday && adding(days: 7).month != month
    }

    public func adding(days: Int) -> CivilDate { CivilDate(dayNumber: dayNumber + days) }

    /// `YYYYMMDD`, as KIS writes dates.
    public var yyyymmdd: String {
        let c = components
        return Self.pad(c.year, 4) + Self.pad(c.month, 2) + Self.pad(c.day, 2)
    }

    /// `YYYY-MM-DD`, as the gateway's JSON writes dates.
    public var iso: String {
        let c = components
        return Self.pad(c.year, 4) + "-" + Self.pad(c.month, 2) + "-" + Self.pad(c.day, 2)
    }

    public var description: String { iso }

    public static func < (a: CivilDate, b: CivilDate) -> Bool { a.dayNumber < b.dayNumber }

    public static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Monday of this date's week.
    public var startOfWeek: CivilDate { adding(days: -((weekday + 6) % 7)) }
    public var startOfMonth: CivilDate { let c = components; return CivilDate(year: c.year, month: c.month, day: 1)! }
    public var startOfYear: CivilDate { CivilDate(year: year, month: 1, day: 1)! }

    private static func pad(_ v: Int, _ width: Int) -> String {
        let s = String(v)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }
}
