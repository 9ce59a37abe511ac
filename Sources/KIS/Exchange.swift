public import Foundation
import Synchronization

/// The markets kisgw serves: KRX for domestic charts, and the KIS `EXCD` codes of overseas exchanges.
public enum Exchange: String, CaseIterable, Sendable, Hashable {
    case krx = "KRX"
    case nas = "NAS"
    case nys = "NYS"
    case ams = "AMS"
    case hks = "HKS"
    case tse = "TSE"
    case shs = "SHS"
    case szs = "SZS"
    case hsx = "HSX"
    case hnx = "HNX"

    /// The overseas exchanges, as `EXCD` accepts them.
    public static let overseas: [Exchange] = allCases.filter { $0 != .krx }

    /// Case-insensitive `EXCD` lookup (overseas only).
    public init?(excd: some StringProtocol) {
        guard let e = Exchange(rawValue: excd.asciiUppercased), e != .krx else { return nil }
        self = e
    }

    public var timeZoneIdentifier: String {
        switch self {
        case .krx: "Asia/Seoul"
        case .nas, .nys, .ams: "America/New_York"
        case .hks: "Asia/Hong_Kong"
        case .tse: "Asia/Tokyo"
        case .shs, .szs: "Asia/Shanghai"
        case .hsx, .hnx: "Asia/Ho_Chi_Minh"
        }
    }

    public var timeZone: TimeZone { Exchange.zones[self]!.timeZone }
    private static let zones: [Exchange: Zone] = Dictionary(
        uniqueKeysWithValues: allCases.map { ($0, Zone(TimeZone(identifier: $0.timeZoneIdentifier)!)) })

    /// The zone's offset from UTC at `instant`, in seconds (``Zone/offset(at:)``).
    public func secondsFromGMT(at instant: Date) -> Int { Exchange.zones[self]!.offset(at: instant) }

    public var currency: String {
        switch self {
        case .krx: "KRW"
        case .nas, .nys, .ams: "USD"
        case .hks: "HKD"
        case .tse: "JPY"
        case .shs, .szs: "CNY"
        case .hsx, .hnx: "VND"
        }
    }

    /// The number of decimals KIS writes prices with (`zdiv` overseas; domestic prices are whole won).
    public var zdiv: Int {
        switch self {
        case .krx, .hsx, .hnx: 0
        case .nas, .nys, .ams: 4
        case .hks: 3
        case .tse: 1
        case .shs, .szs: 2
        }
    }

    /// How far behind the exchange KIS's quotes of it run: 15 minutes for Hong Kong, Tokyo, Shanghai, Shenzhen and
    /// Vietnam (kis-api.md, "Hong Kong, Vietnam, China and Japan are delayed 15 minutes"); none for KRX and the US
    /// (real time). A chart's freshness is judged at the time its data shows (``FreshnessPolicy``).
    public var dataDelay: Duration {
        switch self {
        case .krx, .nas, .nys, .ams: .zero
        case .hks, .tse, .shs, .szs, .hsx, .hnx: .seconds(15 * 60)
        }
    }

    /// How long after a trading day's last session KIS's daily bar of that day may still change, for the exchanges
    /// whose quotes are real time (the delayed ones are covered by ``dataDelay``, their closing auctions by
    /// ``sessions``):
    /// - KRX, to 18:00 KST: the closing auction ends at a random moment up to 30 s after 15:30, post-market trading
    ///   at the close (15:40–16:00) and after-hours single-price trading (16:00–18:00) add to the day's volume
    ///   (kis-api.md, "Market hours": "provisional until after 15:30 KST, or 18:00 KST to be safe");
    /// - the US exchanges, a quarter of an hour: the closing cross and late trade reports.
    public var settling: Duration {
        switch self {
        case .krx: .seconds(150 * 60)
        case .nas, .nys, .ams: .seconds(15 * 60)
        case .hks, .tse, .shs, .szs, .hsx, .hnx: .zero
        }
    }

    /// The seconds left until today's bar settles, when `instant` falls in the ``settling`` time after a trading
    /// day's last session; `nil` otherwise.
    public func secondsUntilSettled(at instant: Date) -> Int? {
        let settlingSeconds = Int(settling.components.seconds)
        guard settlingSeconds > 0 else { return nil }
        let (date, second) = localSecond(instant)
        guard isTradingDay(date), let close = sessions(on: date).last?.upperBound else { return nil }
        let sinceClose = second - close * 60
        guard sinceClose >= 0, sinceClose < settlingSeconds else { return nil }
        return settlingSeconds - sinceClose
    }

    /// Regular sessions in local minutes after midnight (lunch breaks split a day in two).
    public var sessions: [ClosedRange<Int>] {
        switch self {
        case .krx: [540...930]  // 09:00–15:30
        case .nas, .nys, .ams: [570...960]  // 09:30–16:00
        case .hks: [570...720, 780...970]  // 09:30–12:00, 13:00–16:00, then the closing auction (sets the close) to 16:10
        case .tse: [540...690, 750...930]  // 09:00–11:30, 12:30–15:30
        case .shs, .szs: [570...690, 780...900]  // 09:30–11:30, 13:00–15:00
        case .hsx: [540...690, 780...885]  // 09:00–11:30, 13:00–14:45
        case .hnx: [540...690, 780...900]  // 09:00–11:30, 13:00–15:00
        }
    }

    /// The regular sessions on `date`: ``sessions``, but for the US exchanges' early closes at 13:00 (the day before
    /// Independence Day, the day after Thanksgiving, Christmas Eve; see ``USMarketHolidays/isEarlyClose(_:)``), Hong
    /// Kong's half days, and KRX's late days (``KRXHolidays/lateSession(on:)``: the year's first trading day opens at
    /// 10:00, the college entrance exam's day trades 10:00–16:30).
    public func sessions(on date: CivilDate) -> [ClosedRange<Int>] {
        switch self {
        case .krx: KRXHolidays.lateSession(on: date).map { [$0] } ?? sessions
        case .nas, .nys, .ams: USMarketHolidays.isEarlyClose(date) ? [570...780] : sessions  // 09:30–13:00
        // 09:30–12:00, then the closing auction to 12:10
        case .hks: HKEXHolidays.isHalfDay(date) ? [570...730] : sessions
        default: sessions
        }
    }

    /// Whether the exchange trades on `date`: weekdays, less the holidays kisgw knows — KRX's (a table), the US
    /// exchanges' (NYSE's rules, which Nasdaq and NYSE American follow), Tokyo's (Japan's holiday law and JPX's
    /// year-end closure), Hong Kong's (its general holidays), and for Shanghai, Shenzhen and Vietnam the statutory
    /// holidays whose dates their laws fix (``ChinaMarketHolidays``, ``VietnamMarketHolidays``). The further days their
    /// governments add each year count as trading days: charts that include one are refreshed as on a trading day,
    /// never kept past a real session.
    public func isTradingDay(_ date: CivilDate) -> Bool {
        if date.isWeekend { return false }
        switch self {
        case .krx: return !KRXHolidays.contains(date)
        case .nas, .nys, .ams: return !USMarketHolidays.contains(date)
        case .tse: return !JPXHolidays.contains(date)
        case .hks: return !HKEXHolidays.contains(date)
        case .shs, .szs: return !ChinaMarketHolidays.contains(date)
        case .hsx, .hnx: return !VietnamMarketHolidays.contains(date)
        }
    }

    /// The local date and minute-of-day of `instant` at this exchange.
    public func localTime(_ instant: Date) -> (date: CivilDate, minute: Int) {
        let (date, second) = localSecond(instant)
        return (date, second / 60)
    }

    /// The local date and second-of-day of `instant` at this exchange.
    func localSecond(_ instant: Date) -> (date: CivilDate, second: Int) {
        let seconds = Int(instant.timeIntervalSince1970.rounded(.down)) + secondsFromGMT(at: instant)
        let day = Int((Double(seconds) / 86400).rounded(.down))
        return (CivilDate(dayNumber: day), seconds - day * 86400)
    }

    /// True while a regular session is under way at `instant` (a lunch break is closed: nothing trades then).
    public func isOpen(at instant: Date) -> Bool {
        let (date, minute) = localTime(instant)
        guard isTradingDay(date) else { return false }
        return sessions(on: date).contains { minute >= $0.lowerBound && minute < $0.upperBound }
    }

    /// The exchange's current trading day at `instant`: today if it trades today, else the previous trading day.
    public func currentTradingDay(at instant: Date) -> CivilDate {
        var d = localTime(instant).date
        while !isTradingDay(d) { d = d.adding(days: -1) }
        return d
    }

    /// The next moment a regular session opens, strictly after `instant`: the afternoon session's during a lunch
    /// break, else the next trading day's first.
    public func nextOpen(after instant: Date) -> Date {
        let (today, minute) = localTime(instant)
        var d = today
        let openMinute: Int
        if let later = isTradingDay(d) ? sessions(on: d).first(where: { $0.lowerBound > minute }) : nil {
            openMinute = later.lowerBound
        } else {
            d = d.adding(days: 1)
            while !isTradingDay(d) { d = d.adding(days: 1) }
            openMinute = sessions(on: d).first!.lowerBound
        }
        // Local midnight of d plus the opening minute, converted back to an instant through the zone's offset.
        let localSeconds = Double(d.dayNumber * 86400 + openMinute * 60)
        let guess = Date(timeIntervalSince1970: localSeconds)
        let offset = Double(timeZone.secondsFromGMT(for: guess))
        let candidate = Date(timeIntervalSince1970: localSeconds - offset)
        let corrected = Double(timeZone.secondsFromGMT(for: candidate))
        return Date(timeIntervalSince1970: localSeconds - corrected)
    }
}

/// An exchange's time zone, and the offset from UTC it last looked up with the span that offset holds for.
private final class Zone: Sendable {
    let timeZone: TimeZone
    /// `[from, until)` in Unix seconds: from the moment last asked for until the zone's next transition.
    private let span = Mutex<(from: Double, until: Double, offset: Int)?>(nil)

    init(_ timeZone: TimeZone) { self.timeZone = timeZone }

    /// The offset at `instant`. ICU's lookup is one of the larger costs of a miss's cold path before its Redis call
    /// (the query's resolution and its freshness ask several times), so the offset is remembered with the span it
    /// holds for; asking again for a later moment in that span — the clock moves forward — costs no lookup.
    func offset(at instant: Date) -> Int {
        let t = instant.timeIntervalSince1970
        let remembered = span.withLock { s -> Int? in
            guard let s, t >= s.from, t < s.until else { return nil }
            return s.offset
        }
        if let remembered { return remembered }
        let offset = timeZone.secondsFromGMT(for: instant)
        let until = timeZone.nextDaylightSavingTimeTransition(after: instant)?.timeIntervalSince1970 ?? .infinity
        span.withLock { $0 = (t, until, offset) }
        return offset
    }
}

/// The weekdays the US stock exchanges (NYSE, Nasdaq, NYSE American) are closed all day.
///
/// NYSE Rule 7.2's holidays, by their rules: New Year's Day, Martin Luther King Jr. Day (third Monday of January, from
/// 1998), Washington's Birthday (third Monday of February), Good Friday, Memorial Day (last Monday of May), Juneteenth
/// (from 2022), Independence Day, Labor Day (first Monday of September), Thanksgiving (fourth Thursday of November) and
/// Christmas. A date holiday on a Sunday is kept on the Monday after, on a Saturday on the Friday before — except New
/// Year's Day, which is then not made up (the Friday is the year's last trading day). Besides these, the unscheduled
/// closures since 2001. Half days (13:00 closes, ``isEarlyClose(_:)``) are trading days.
public enum USMarketHolidays {
    /// Whether `date` is one of NYSE's early closes (13:00 Eastern): July 3 when Independence Day falls on a Tuesday
    /// to Friday, the day after Thanksgiving, and Christmas Eve on a Monday to Thursday. (The Friday before a Saturday
    /// holiday is itself the holiday, and no early close is kept when the eve falls on a weekend or a Monday holiday
    /// follows.)
    public static func isEarlyClose(_ date: CivilDate) -> Bool {
        let (_, month, day) = date.components
        let weekday = date.weekday  // 0 Sunday ... 6 Saturday
        switch month {
        case 7: return day == 3 && (1...4).contains(weekday)
        case 11: return date.adding(days: -1).isNth(4, 4)  // the day after Thanksgiving
        case 12: return day == 24 && (1...4).contains(weekday)
        default: return false
        }
    }


    public static func contains(_ date: CivilDate) -> Bool {
        if unscheduled.contains(date.dayNumber) { return true }
        let (year, month, day) = date.components
        let weekday = date.weekday  // 0 Sunday ... 6 Saturday
        /// A fixed-date holiday: the day itself, the Friday before a Saturday one, the Monday after a Sunday one.
        func observed(_ holiday: Int) -> Bool {
            day == holiday || (day == holiday - 1 && weekday == 5) || (day == holiday + 1 && weekday == 1)
        }
        switch month {
        case 1: return day == 1 || (day == 2 && weekday == 1) || (date.isNth(3, 1) && year >= 1998)
        case 2: return date.isNth(3, 1)
        case 3, 4: return date == easter(year).adding(days: -2)
        case 5: return date.isLast(1)
        case 6: return year >= 2022 && observed(19)
        case 7: return observed(4)
        case 9: return date.isNth(1, 1)
        case 11: return date.isNth(4, 4)
        case 12: return observed(25)
        default: return false
        }
    }

    /// Easter Sunday of `year` (Gregorian; the anonymous algorithm of Meeus, Jones and Butcher).
    static func easter(_ year: Int) -> CivilDate {
        let a = year % 19, b = year / 100, c = year % 100
        let d = b / 4, e = b % 4, f = (b + 8) / 25, g = (b - f + 1) / 3
        let h = (19 * a + b - d - g + 15) % 30
        let i = c / 4, k = c % 4
        let l = (32 + 2 * e + 2 * i - h - k) % 7
        let m = (a + 11 * h + 22 * l) / 451
        let n = h + l - 7 * m + 114
        return CivilDate(year: year, month: n / 31, day: n % 31 + 1)!
    }

    /// Closures outside the rules: September 11–14, 2001; the national days of mourning for Presidents Reagan
    /// (2004-06-11), Ford (2007-01-02), G. H. W. Bush (2018-12-05) and Carter (2025-01-09); Hurricane Sandy
    /// (2012-10-29 and 30).
    static let unscheduled: Set<Int> = Set(
        ["20010911", "20010912", "20010913", "20010914", "20040611", "20070102", "20121029", "20121030", "20181205",
         "20250109"].compactMap { CivilDate(yyyymmdd: $0)?.dayNumber })
}

/// The days the Tokyo Stock Exchange is closed besides weekends: Japan's national holidays and JPX's year-end closure
/// (December 31 to January 3), from 2022 on.
///
/// The holidays follow the National Holidays Act as amended for 2020 and after: New Year's Day, Coming of Age Day
/// (second Monday of January), National Foundation Day (02-11), the Emperor's Birthday (02-23), the vernal equinox,
/// Shōwa Day (04-29), Constitution Memorial Day, Greenery Day and Children's Day (05-03 to 05-05), Marine Day (third
/// Monday of July), Mountain Day (08-11), Respect for the Aged Day (third Monday of September), the autumnal equinox,
/// Sports Day (second Monday of October), Culture Day (11-03) and Labour Thanksgiving Day (11-23). A holiday on a
/// Sunday gives the next day that is not a holiday (振替休日); a day between two holidays is one too (国民の休日, as
/// 2026-09-22). The equinoxes, which the Cabinet announces each February for the next year, are the standard
/// approximation of the astronomical dates (exact for 1980–2099). Before 2022 (the Olympic years moved three
/// holidays, 2019 had the enthronement's) nothing is known, and weekdays count as trading days.
public enum JPXHolidays {
    public static func contains(_ date: CivilDate) -> Bool {
        let (year, month, day) = date.components
        guard year >= 2022 else { return false }
        if (month == 12 && day == 31) || (month == 1 && day <= 3) { return true }
        if isNamed(date) { return true }
        // 振替休日: after a run of holidays that began on, or ran through, a Sunday.
        var previous = date.adding(days: -1)
        while isNamed(previous) {
            if previous.weekday == 0 { return true }
            previous = previous.adding(days: -1)
        }
        // 国民の休日: a day (other than a Sunday) between two holidays.
        return date.weekday != 0 && isNamed(date.adding(days: -1)) && isNamed(date.adding(days: 1))
    }

    /// The named holidays of the Act (国民の祝日), without the days they give.
    static func isNamed(_ date: CivilDate) -> Bool {
        let (year, month, day) = date.components
        func nthMonday(_ n: Int) -> Bool { date.isNth(n, 1) }
        switch month {
        case 1: return day == 1 || nthMonday(2)
        case 2: return day == 11 || day == 23
        case 3: return day == equinox(year, base: 20.8431)
        case 4: return day == 29
        case 5: return (3...5).contains(day)
        case 7: return nthMonday(3)
        case 8: return day == 11
        case 9: return nthMonday(3) || day == equinox(year, base: 23.2488)
        case 10: return nthMonday(2)
        case 11: return day == 3 || day == 23
        default: return false
        }
    }

    /// The day of March (`base` 20.8431) or September (23.2488) of the equinox in Japan, 1980–2099.
    static func equinox(_ year: Int, base: Double) -> Int {
        let n = year - 1980
        return Int((base + 0.242194 * Double(n)).rounded(.down)) - n / 4
    }
}

/// The days the Hong Kong stock exchange (HKEX) is closed besides weekends — Hong Kong's general holidays — and its
/// half days, from 2022 to 2099.
///
/// The General Holidays Ordinance's days: New Year's Day; the first three days of the Lunar New Year; Ching Ming
/// (the solar term, April 4 or 5); Good Friday, the day after it and Easter Monday; Labour Day; the Buddha's Birthday
/// (4th month, 8th day); Tuen Ng (5/5); HKSAR Establishment Day (07-01); the day after Mid-Autumn (8/16); National
/// Day (10-01); Chung Yeung (9/9); Christmas Day and the first weekday (not Sunday) after it. A holiday on a Sunday,
/// or on a day that is already a holiday, gives the next day that is neither (so Ching Ming on Easter Sunday gives the
/// Tuesday, Ching Ming on Easter Monday the Tuesday, and a Lunar New Year day on a Sunday the fourth day); a holiday
/// alone on a Saturday gives nothing. Lunar dates are ICU's Chinese calendar (Hong Kong keeps China's); Ching Ming is the standard
/// formula of the 21st century. (HKEX has traded through typhoons and rainstorms since September 2024.) Half days
/// (the morning session only, ``isHalfDay(_:)``): the eves of Christmas, the New Year and the Lunar New Year, on a
/// trading day.
public enum HKEXHolidays {
    public static func contains(_ date: CivilDate) -> Bool {
        calendar(of: date.year).holidays.contains(date.dayNumber)
    }

    /// Whether HKEX trades the morning session only on `date`.
    public static func isHalfDay(_ date: CivilDate) -> Bool {
        calendar(of: date.year).halfDays.contains(date.dayNumber)
    }

    /// A year's holidays and half days, as day numbers.
    struct Year: Sendable {
        var holidays: Set<Int> = [], halfDays: Set<Int> = []
    }

    /// The year's days (computed once per year; nothing outside 2022–2099).
    static func calendar(of year: Int) -> Year { cache.value(for: year) }

    private static let cache = YearCache<Year>(years: 2022...2099, empty: Year(), compute: compute)

    private static func compute(_ year: Int) -> Year {
        func day(_ month: Int, _ day: Int) -> CivilDate { CivilDate(year: year, month: month, day: day)! }
        let lunar = ChineseLunarCalendar.days(of: year, wanted: [[1, 1], [1, 2], [1, 3], [4, 8], [5, 5], [8, 16], [9, 9]])
        let easter = USMarketHolidays.easter(year)
        let christmas = day(12, 25)
        let afterChristmas = christmas.adding(days: christmas.adding(days: 1).weekday == 0 ? 2 : 1)
        var named = [day(1, 1), day(4, ChineseLunarCalendar.qingMing(year)), easter.adding(days: -2),
                     easter.adding(days: -1), easter.adding(days: 1), day(5, 1), day(7, 1), day(10, 1), christmas,
                     afterChristmas]
        named += lunar.days.map(CivilDate.init(dayNumber:))
        // A holiday on a Sunday, or on a day that is already one, gives the next day that is neither.
        var holidays = Set<Int>(), owed: [CivilDate] = []
        for holiday in named.sorted() where !holidays.insert(holiday.dayNumber).inserted || holiday.weekday == 0 {
            owed.append(holiday)
        }
        for holiday in owed {
            var substitute = holiday.adding(days: 1)
            while substitute.weekday == 0 || holidays.contains(substitute.dayNumber) { substitute = substitute.adding(days: 1) }
            holidays.insert(substitute.dayNumber)
        }
        let eves = [day(12, 24), day(12, 31)] + (lunar.newYearsEve.map { [CivilDate(dayNumber: $0)] } ?? [])
        let halfDays = eves.filter { !$0.isWeekend && !holidays.contains($0.dayNumber) }.map(\.dayNumber)
        return Year(holidays: holidays, halfDays: Set(halfDays))
    }
}

/// The weekdays the Shanghai and Shenzhen stock exchanges are closed for certain, from 2022 to 2099: mainland
/// China's statutory public holidays (the State Council's regulation on national holidays; the exchanges close on
/// every one).
///
/// The statutory days: New Year's Day; the first three days of the Spring Festival (and its eve, from 2025); Qingming
/// (the solar term, April 4 or 5); Labour Day (and May 2, from 2025); Dragon Boat (5th month, 5th day); Mid-Autumn
/// (8/15); National Day, October 1–3. The State Council sets the rest of each year's closures every November — the
/// weekdays it joins to these (with weekend working days to make up for them), such as the Spring Festival week's
/// last days, the Monday after a Sunday Qingming, October 4–7: kisgw does not guess them. Those days count as trading
/// days, so a chart that includes one is refreshed as on a trading day (an upstream call every `live_ttl_s` while it
/// is asked for during session hours) — never kept past a real session, which a guessed closure would risk.
public enum ChinaMarketHolidays {
    public static func contains(_ date: CivilDate) -> Bool { cache.value(for: date.year).contains(date.dayNumber) }

    private static let cache = YearCache<Set<Int>>(years: 2022...2099, empty: [], compute: compute)

    static func compute(_ year: Int) -> Set<Int> {
        func day(_ month: Int, _ day: Int) -> Int { CivilDate(year: year, month: month, day: day)!.dayNumber }
        let lunar = ChineseLunarCalendar.days(of: year, wanted: [[1, 1], [1, 2], [1, 3], [5, 5], [8, 15]])
        var days = Set(lunar.days)
        days.formUnion([day(1, 1), day(4, ChineseLunarCalendar.qingMing(year)), day(5, 1), day(10, 1), day(10, 2),
                        day(10, 3)])
        if year >= 2025 {
            days.insert(day(5, 2))
            if let eve = lunar.newYearsEve { days.insert(eve) }
        }
        return days
    }
}

/// The weekdays the Ho Chi Minh City and Hanoi stock exchanges (HOSE, HNX) are closed for certain, from 2022 to
/// 2099: Vietnam's public holidays whose dates the Labour Code fixes.
///
/// New Year's Day, the first three days of Tết (the Lunar New Year), Reunification Day (04-30), International Labour
/// Day (05-01) and National Day (09-02). The government sets each year which days around these are also off — Tết's
/// five days, the day next to National Day, days in lieu of a holiday on a weekend — and the Hùng Kings'
/// Commemoration (3rd month, 10th day) is left out too: Vietnam reckons its lunar months at UTC+7, ICU's Chinese
/// calendar at UTC+8, so in the rare year a new moon falls between 16:00 and 17:00 UTC Vietnam's month begins a day
/// earlier and that one day would be wrong. (Tết is not affected: China's first three days then fall on Vietnam's
/// second to fourth, which are off every year.) The days left out count as trading days, refreshed as on one.
public enum VietnamMarketHolidays {
    public static func contains(_ date: CivilDate) -> Bool { cache.value(for: date.year).contains(date.dayNumber) }

    private static let cache = YearCache<Set<Int>>(years: 2022...2099, empty: [], compute: compute)

    static func compute(_ year: Int) -> Set<Int> {
        func day(_ month: Int, _ day: Int) -> Int { CivilDate(year: year, month: month, day: day)!.dayNumber }
        let tet = ChineseLunarCalendar.days(of: year, wanted: [[1, 1], [1, 2], [1, 3]])
        return Set(tet.days).union([day(1, 1), day(4, 30), day(5, 1), day(9, 2)])
    }
}

/// Dates of the Chinese lunisolar calendar as mainland China and Hong Kong keep it (ICU's, reckoned at UTC+8), and the
/// solar term Qingming.
enum ChineseLunarCalendar {
    /// The days of the Gregorian `year` whose lunar month and day (`[month, day]`, not of a leap month) are among
    /// `wanted`, and the Lunar New Year's eve when the New Year falls in `year` after January 1, as day numbers.
    static func days(of year: Int, wanted: Set<[Int]>) -> (days: [Int], newYearsEve: Int?) {
        var chinese = Calendar(identifier: .chinese)
        chinese.timeZone = TimeZone(identifier: "Asia/Shanghai")!
        var days: [Int] = [], eve: Int? = nil
        let first = CivilDate(year: year, month: 1, day: 1)!.dayNumber
        let last = CivilDate(year: year, month: 12, day: 31)!.dayNumber
        for n in first...last {
            // Noon at UTC+8 of that day.
            let c = chinese.dateComponents([.month, .day, .isLeapMonth], from: Date(timeIntervalSince1970: Double(n * 86400 + 4 * 3600)))
            guard c.isLeapMonth != true, let month = c.month, let day = c.day else { continue }
            if wanted.contains([month, day]) { days.append(n) }
            if month == 1 && day == 1 && n > first { eve = n - 1 }
        }
        return (days, eve)
    }

    /// The day of April of Qingming (清明, the sun at 15°) in 2000–2099.
    static func qingMing(_ year: Int) -> Int {
        let y = year % 100
        return Int((Double(y) * 0.2422 + 4.81).rounded(.down)) - y / 4
    }
}

/// Values computed once per year, for the years in `years` (`empty` for any other).
final class YearCache<Value: Sendable>: Sendable {
    private let years: ClosedRange<Int>
    private let empty: Value
    private let compute: @Sendable (Int) -> Value
    private let cache = Mutex<[Int: Value]>([:])

    init(years: ClosedRange<Int>, empty: Value, compute: @escaping @Sendable (Int) -> Value) {
        self.years = years
        self.empty = empty
        self.compute = compute
    }

    func value(for year: Int) -> Value {
        guard years.contains(year) else { return empty }
        if let known = cache.withLock({ $0[year] }) { return known }
        let computed = compute(year)
        cache.withLock { $0[year] = computed }
        return computed
    }
}

/// KRX market holidays (closed days that fall on weekdays), 2023–2027.
///
/// 2023–2026 as KRX published them. 2027 as the Public Holidays Act sets it (KRX publishes its calendar each
/// December): the lunar holidays from the new moons in KST — Seollal on Sunday 02-07 (China's falls a day earlier)
/// and Chuseok on 09-15 — with substitute days for Seollal on a Sunday (02-09), Liberation Day (08-16), National
/// Foundation Day (10-04), Hangul Day (10-11) and Christmas (12-27), and the year-end closing day.
public enum KRXHolidays {
    public static func contains(_ date: CivilDate) -> Bool { days.contains(date.dayNumber) }

    /// KRX's one session on a day it opens an hour late, in local minutes; `nil` on other days. The year's first
    /// trading day opens at 10:00 (and closes at 15:30); on the day of the college entrance exam (수능) the market
    /// trades 10:00–16:30, every later session an hour later too (the settling time follows the close).
    public static func lateSession(on date: CivilDate) -> ClosedRange<Int>? {
        if examDays.contains(date.dayNumber) { return 600...990 }
        let (year, month, day) = date.components
        guard month == 1, day <= 10, !date.isWeekend, !contains(date) else { return nil }
        // The first trading day: no earlier weekday of the year that is not a holiday.
        var earlier = CivilDate(year: year, month: 1, day: 1)!
        while earlier < date {
            if !earlier.isWeekend && !contains(earlier) { return nil }
            earlier = earlier.adding(days: 1)
        }
        return 600...930
    }

    /// The days of the college scholastic ability test (대학수학능력시험), as the education ministry set them — to be
    /// added each year with KRX's holidays (``days``): a date guessed wrong would hold a real session's first hour
    /// closed, and a year missing one only refreshes its last hour every minute (KRX's settling) instead of live.
    static let examDays: Set<Int> = Set(
        ["20231116", "20241114", "20251113", "20261119"].compactMap { CivilDate(yyyymmdd: $0)?.dayNumber })

    /// The last year the table covers.
    public static let lastYear = CivilDate(dayNumber: days.max()!).components.year

    /// A warning for the log when `instant`, in Seoul, is past the table's last year: that year's holidays then
    /// count as trading days, so a chart that includes one is refetched every `live_ttl_s` during its session hours
    /// instead of waiting for the next opening (and holidays past the table are not known when a range is settled).
    public static func staleTableWarning(at instant: Date) -> String? {
        let year = Exchange.krx.localTime(instant).date.components.year
        guard year > lastYear else { return nil }
        return "kisgw knows KRX's holidays through \(lastYear) only: in \(year) they count as trading days (charts that "
            + "include one are refreshed as on a trading day); a kisgw release with \(year)'s KRX calendar fixes it"
    }

    static let days: Set<Int> = Set(
        [
            // 2023
            "20230123", "20230124", "20230301", "20230505", "20230529", "20230606",
            "20230815", "20230928", "20230929", "20231002", "20231003", "20231009", "20231225", "20231229",
            // 2024
            "20240101", "20240209", "20240212", "20240301", "20240410", "20240501", "20240506", "20240515",
            "20240606", "20240815", "20240916", "20240917", "20240918", "20241001", "20241003", "20241009",
            "20241225", "20241231",
            // 2025
            "20250101", "20250127", "20250128", "20250129", "20250130", "20250303", "20250501", "20250505",
            "20250506", "20250603", "20250606", "20250815", "20251003", "20251006", "20251007", "20251008",
            "20251009", "20251225", "20251231",
            // 2026
            "20260101", "20260216", "20260217", "20260218", "20260302", "20260501", "20260505", "20260525",
            "20260603", "20260817", "20260924", "20260925", "20261005", "20261009", "20261225", "20261231",
            // 2027
            "20270101", "20270208", "20270209", "20270301", "20270505", "20270513", "20270816", "20270914",
            "20270915", "20270916", "20271004", "20271011", "20271227", "20271231",
        ].compactMap { CivilDate(yyyymmdd: $0)?.dayNumber })
}

extension StringProtocol {
    /// `a`–`z` made `A`–`Z`, every other character kept: unlike `uppercased()`, no letter outside ASCII becomes an
    /// ASCII one (`ß` → `SS`, `ı` → `I`, `ſ` → `S`), so codes are validated as written.
    public var asciiUppercased: String {
        String(decoding: utf8.map { $0 >= 97 && $0 <= 122 ? $0 - 32 : $0 }, as: UTF8.self)
    }
}
