import Foundation
@testable import Gateway
@testable import KIS
import KisgwConfiguration
import Testing

/// One instant, one chart range ending on `end`, and how long gateway-api.md ("Freshness") keeps it fresh.
struct FreshnessCase: Sendable, CustomTestStringConvertible {
    let exchange: Exchange
    /// The instant, ISO 8601 in UTC.
    let at: String
    /// The range's last day (the market's local date).
    let end: String
    let ttl: Int
    let what: String

    init(_ exchange: Exchange, _ at: String, end: String, _ ttl: Int, _ what: String) {
        self.exchange = exchange
        self.at = at
        self.end = end
        self.ttl = ttl
        self.what = what
    }

    var testDescription: String { "\(exchange.rawValue) \(what) (\(at), end \(end)) → \(ttl)" }
}

/// The freshness policy at fixed instants, with the spec's default TTLs (live 5 s, settled 86400 s): live while
/// the market's regular session is open, until the next opening while it is closed (at most settled_ttl_s),
/// settled for ranges that end before the market's current trading day. Hours are the exchanges' own, in their
/// own time zones, daylight saving included; weekends are closed. The markets KIS quotes 15 minutes late (HK, Tokyo,
/// China, Vietnam) stay live until KIS's data reaches their close (``Exchange/dataDelay``, `delayedMarkets`); the markets
/// it quotes in real time (KRX, the US) are refreshed every minute after their close until the day's bar settles — KRX
/// at 18:00, the US a quarter of an hour after the close (``Exchange/settling``, `settlingAfterTheClose`).
@Suite("Freshness: TTLs at fixed instants (gateway-api.md, Freshness)")
struct FreshnessTests {
    static let defaults = FreshnessPolicy(liveTTL: KisgwConfig.Cache().liveTTLS,
                                          settledTTL: KisgwConfig.Cache().settledTTLS)
    /// A settled TTL longer than any closure, to see the seconds until the next opening uncapped.
    static let uncapped = FreshnessPolicy(liveTTL: 5, settledTTL: 1_000_000)

    static func ttl(_ c: FreshnessCase, _ policy: FreshnessPolicy = defaults) throws -> Int {
        let now = try Date(c.at, strategy: .iso8601)
        let end = try #require(CivilDate(c.end))
        let query = ChartQuery(market: c.exchange == .krx ? .domestic : .overseas, exchange: c.exchange,
                               symbol: "TEST", period: "D", adjusted: true, start: end.adding(days: -30), end: end)
        return policy.ttl(for: query, now: now)
    }

    @Test("[cache] defaults are the spec's: live 5, settled 86400, stale-while-revalidate 30, stale-if-error 3600")
    func configDefaults() {
        let cache = KisgwConfig.Cache()
        #expect(cache.liveTTLS == 5)
        #expect(cache.settledTTLS == 86_400)
        #expect(cache.staleWhileRevalidateS == 30)
        #expect(cache.staleIfErrorS == 3600)
    }

    // 2025-03-11 is a Tuesday (KST = UTC+9, no daylight saving); 2025-03-14 a Friday; 2025-03-03 a KRX holiday.
    static let krx: [FreshnessCase] = [
        .init(.krx, "2025-03-11T01:00:00Z", end: "2025-03-11", 5, "Tue 10:00 KST, range including today: open"),
        .init(.krx, "2025-03-11T01:00:00Z", end: "2025-03-10", 86_400, "Tue 10:00 KST, range ending yesterday: settled"),
        .init(.krx, "2025-03-11T01:00:00Z", end: "2025-02-28", 86_400, "Tue 10:00 KST, range ending last month: settled"),
        .init(.krx, "2025-03-11T00:00:00Z", end: "2025-03-11", 5, "Tue 09:00 KST: the session opens"),
        .init(.krx, "2025-03-11T06:29:00Z", end: "2025-03-11", 5, "Tue 15:29 KST: still open"),
        .init(.krx, "2025-03-11T06:30:00Z", end: "2025-03-11", 60,
              "Tue 15:30 KST: closed, the closing auction's end not yet known: refreshed every minute"),
        .init(.krx, "2025-03-11T07:00:00Z", end: "2025-03-11", 60, "Tue 16:00 KST: after-hours trading: every minute"),
        .init(.krx, "2025-03-11T08:59:30Z", end: "2025-03-11", 30, "Tue 17:59:30 KST: until 18:00, when the day settles"),
        .init(.krx, "2025-03-11T09:00:00Z", end: "2025-03-11", 54_000, "Tue 18:00 KST: settled, closed until Wed 09:00"),
        .init(.krx, "2025-03-11T07:00:00Z", end: "2025-03-10", 86_400, "Tue 16:00 KST, range ending Monday: settled"),
        .init(.krx, "2025-03-10T23:00:00Z", end: "2025-03-11", 3600, "Tue 08:00 KST: closed until 09:00"),
        .init(.krx, "2025-03-10T23:00:00Z", end: "2025-03-10", 86_400, "Tue 08:00 KST, range ending Monday: settled"),
        .init(.krx, "2025-03-14T09:00:00Z", end: "2025-03-14", 86_400,
              "Fri 18:00 KST: until Mon 09:00 (63 h) capped at settled_ttl"),
        .init(.krx, "2025-03-15T01:00:00Z", end: "2025-03-15", 86_400,
              "Sat 10:00 KST (session hours, but a weekend): until Mon 09:00 capped"),
        .init(.krx, "2025-03-16T11:00:00Z", end: "2025-03-16", 46_800, "Sun 20:00 KST: until Mon 09:00"),
        .init(.krx, "2025-03-03T03:00:00Z", end: "2025-03-03", 75_600, "Mon 12:00 KST, a KRX holiday: until Tue 09:00"),
        .init(.krx, "2025-03-03T07:00:00Z", end: "2025-03-03", 61_200,
              "Mon 16:00 KST, a KRX holiday: nothing to settle, until Tue 09:00"),
        // The market's own date: 01:00 KST on the 11th is still the 10th in UTC.
        .init(.krx, "2025-03-10T16:00:00Z", end: "2025-03-10", 86_400,
              "Tue 01:00 KST (Mon 16:00 UTC), range ending Monday: settled by the Seoul date"),
    ]

    @Test("KRX: 09:00–15:30 Asia/Seoul, weekends and holidays closed", arguments: krx)
    func krxSessions(_ c: FreshnessCase) throws {
        #expect(try Self.ttl(c) == c.ttl)
    }

    // New York: EST (UTC−5) on 2025-01-02 (a Thursday), EDT (UTC−4) on 2025-07-01 (a Tuesday).
    // Daylight saving starts on Sunday 2025-03-09 and ends on Sunday 2025-11-02.
    static let us: [FreshnessCase] = [Exchange.nas, .nys, .ams].flatMap { x -> [FreshnessCase] in
        [
            .init(x, "2025-07-01T13:30:00Z", end: "2025-07-01", 5, "EDT 09:30: open"),
            .init(x, "2025-07-01T13:29:00Z", end: "2025-07-01", 60, "EDT 09:29: closed until 09:30"),
            .init(x, "2025-07-01T19:59:00Z", end: "2025-07-01", 5, "EDT 15:59: open"),
            .init(x, "2025-07-01T20:00:00Z", end: "2025-07-01", 60, "EDT 16:00: closed, the closing cross: every minute"),
            .init(x, "2025-07-01T20:14:30Z", end: "2025-07-01", 30, "EDT 16:14:30: until 16:15, when the day settles"),
            .init(x, "2025-07-01T20:15:00Z", end: "2025-07-01", 62_100, "EDT 16:15: settled, closed until 09:30 next day"),
            .init(x, "2025-07-01T13:30:00Z", end: "2025-06-30", 86_400, "EDT 09:30, range ending yesterday: settled"),
            .init(x, "2025-01-02T14:00:00Z", end: "2025-01-02", 1800, "EST 09:00: closed until 09:30"),
            .init(x, "2025-01-02T14:30:00Z", end: "2025-01-02", 5, "EST 09:30: open"),
            .init(x, "2025-01-02T20:59:00Z", end: "2025-01-02", 5, "EST 15:59: open"),
            .init(x, "2025-01-02T21:00:00Z", end: "2025-01-02", 60, "EST 16:00: closed, the closing cross: every minute"),
            .init(x, "2025-01-02T21:15:00Z", end: "2025-01-02", 62_100, "EST 16:15: settled, closed until 09:30 next day"),
            .init(x, "2025-11-28T18:05:00Z", end: "2025-11-28", 60, "Fri 13:05 EST, an early close: every minute"),
            // 22:00 EDT on June 30 is July 1 in UTC: the range ending June 30 includes New York's today.
            .init(x, "2025-07-01T02:00:00Z", end: "2025-06-30", 41_400,
                  "EDT 22:00 (next day in UTC), range ending New York's today: until 09:30"),
            .init(x, "2025-03-09T23:00:00Z", end: "2025-03-09", 52_200,
                  "Sun 19:00 EDT, the day daylight saving starts: until Mon 09:30 EDT"),
            .init(x, "2025-11-02T23:00:00Z", end: "2025-11-02", 55_800,
                  "Sun 18:00 EST, the day daylight saving ends: until Mon 09:30 EST"),
            .init(x, "2025-03-15T15:00:00Z", end: "2025-03-15", 86_400, "Sat 11:00 EDT: weekend, capped"),
        ]
    }

    @Test("NAS, NYS, AMS: 09:30–16:00 America/New_York, daylight saving included", arguments: us)
    func usSessions(_ c: FreshnessCase) throws {
        #expect(try Self.ttl(c) == c.ttl)
    }

    // Tuesday 2025-03-11. HKT and CST are UTC+8, JST UTC+9, ICT UTC+7 (none observes daylight saving).
    static let asia: [FreshnessCase] = [
        // HKEX: 09:30–12:00, 13:00–16:00, and the closing auction that sets the day's close, to 16:10.
        .init(.hks, "2025-03-11T01:29:00Z", end: "2025-03-11", 60, "09:29 HKT: closed until 09:30"),
        .init(.hks, "2025-03-11T02:00:00Z", end: "2025-03-11", 5, "10:00 HKT: open"),
        .init(.hks, "2025-03-11T07:59:00Z", end: "2025-03-11", 5, "15:59 HKT: open"),
        .init(.hks, "2025-03-11T08:05:00Z", end: "2025-03-11", 5, "16:05 HKT: the closing auction, the close not yet set"),
        .init(.hks, "2025-03-11T08:25:00Z", end: "2025-03-11", 61_500, "16:25 HKT (KIS's data at 16:10): closed until 09:30 next day"),
        .init(.hks, "2025-03-11T02:00:00Z", end: "2025-03-10", 86_400, "10:00 HKT, range ending yesterday: settled"),
        .init(.hks, "2025-03-15T02:00:00Z", end: "2025-03-15", 86_400, "Sat 10:00 HKT: weekend, capped"),
        .init(.hks, "2025-12-24T04:05:00Z", end: "2025-12-24", 5, "Christmas Eve 12:05 HKT: the half day's closing auction"),
        .init(.hks, "2025-12-24T05:30:00Z", end: "2025-12-24", 86_400, "Christmas Eve 13:30 HKT: a half day, closed"),
        .init(.hks, "2025-10-07T02:00:00Z", end: "2025-10-07", 84_600, "Tue 10-07 10:00 HKT, a holiday: until Wed 09:30"),
        // TSE: 09:00–11:30, 12:30–15:30 (the afternoon runs to 15:30 since November 2024).
        .init(.tse, "2025-03-10T23:59:00Z", end: "2025-03-11", 60, "08:59 JST: closed until 09:00"),
        .init(.tse, "2025-03-11T00:00:00Z", end: "2025-03-11", 5, "09:00 JST: open"),
        .init(.tse, "2025-03-11T06:29:00Z", end: "2025-03-11", 5, "15:29 JST: open"),
        .init(.tse, "2025-03-11T06:45:00Z", end: "2025-03-11", 62_100, "15:45 JST (KIS's data at 15:30): closed until 09:00 next day"),
        // SSE and SZSE: 09:30–11:30, 13:00–15:00.
        .init(.shs, "2025-03-11T01:29:00Z", end: "2025-03-11", 60, "09:29 CST: closed until 09:30"),
        .init(.shs, "2025-03-11T06:59:00Z", end: "2025-03-11", 5, "14:59 CST: open"),
        .init(.shs, "2025-03-11T07:15:00Z", end: "2025-03-11", 65_700, "15:15 CST (KIS's data at 15:00): closed until 09:30 next day"),
        .init(.szs, "2025-03-11T02:00:00Z", end: "2025-03-11", 5, "10:00 CST: open"),
        .init(.szs, "2025-03-11T07:15:00Z", end: "2025-03-11", 65_700, "15:15 CST (KIS's data at 15:00): closed until 09:30 next day"),
        // HOSE: 09:00–11:30, 13:00–14:45 (ATC to 14:45).
        .init(.hsx, "2025-03-11T02:00:00Z", end: "2025-03-11", 5, "09:00 ICT: open"),
        .init(.hsx, "2025-03-11T07:44:00Z", end: "2025-03-11", 5, "14:44 ICT: open"),
        .init(.hsx, "2025-03-11T08:00:00Z", end: "2025-03-11", 64_800, "15:00 ICT (KIS's data at 14:45): closed until 09:00 next day"),
        // HNX: 09:00–11:30, 13:00–15:00 (ATC to 14:45, then the post-close session to 15:00).
        .init(.hnx, "2025-03-11T01:59:00Z", end: "2025-03-11", 60, "08:59 ICT: closed until 09:00"),
        .init(.hnx, "2025-03-11T07:59:00Z", end: "2025-03-11", 5, "14:59 ICT: open"),
        .init(.hnx, "2025-03-11T08:15:00Z", end: "2025-03-11", 63_900, "15:15 ICT (KIS's data at 15:00): closed until 09:00 next day"),
    ]

    /// kis-api.md: "Hong Kong, Vietnam, China and Japan are delayed 15 minutes". A chart fetched in the 15 minutes
    /// after such a market closed showed the session's last quarter hour, and was kept until the next day's opening.
    @Test("HK, Tokyo, China, Vietnam: live until KIS's data, 15 minutes late, reaches the close; KRX and the US are real time",
          arguments: [
        FreshnessCase(.tse, "2025-03-11T06:40:00Z", end: "2025-03-11", 5, "15:40 JST: KIS shows 15:25, still open"),
        FreshnessCase(.tse, "2025-03-11T06:45:00Z", end: "2025-03-11", 62_100,
                      "15:45 JST: KIS shows the 15:30 close; closed until 09:00"),
        FreshnessCase(.tse, "2025-03-11T00:10:00Z", end: "2025-03-11", 5, "09:10 JST: open (KIS shows 08:55)"),
        FreshnessCase(.hks, "2025-03-11T08:20:00Z", end: "2025-03-11", 5, "16:20 HKT: KIS shows 16:05, the closing auction"),
        FreshnessCase(.hsx, "2025-03-11T07:55:00Z", end: "2025-03-11", 5, "14:55 ICT: KIS shows 14:40, open"),
        FreshnessCase(.shs, "2025-03-11T03:40:00Z", end: "2025-03-11", 5, "11:40 CST: KIS shows 11:25, open"),
        FreshnessCase(.shs, "2025-03-11T03:45:00Z", end: "2025-03-11", 4_500, "11:45 CST: lunch as KIS shows it; until 13:00"),
        FreshnessCase(.krx, "2025-03-11T06:30:00Z", end: "2025-03-11", 60, "15:30 KST: real time, closed, settling"),
        FreshnessCase(.nas, "2025-03-11T20:00:00Z", end: "2025-03-11", 60, "16:00 EDT: real time, closed, settling"),
        FreshnessCase(.krx, "2025-03-11T09:00:00Z", end: "2025-03-11", 54_000, "18:00 KST: settled"),
        FreshnessCase(.nas, "2025-03-11T20:15:00Z", end: "2025-03-11", 62_100, "16:15 EDT: settled"),
    ])
    func delayedMarkets(_ c: FreshnessCase) throws {
        #expect(try Self.ttl(c) == c.ttl)
    }

    /// A fetch's data is as of its first KIS call, which holds the current day: a fetch that began while the market
    /// was open as KIS shows it, and was stored after the close (rate waits, pages, retries), is live data and fresh
    /// for `live_ttl_s` (a minute at most, settling) — before, it was judged when stored only, and kept until the next
    /// opening with the session's last minutes missing.
    @Test("a fetch asked before the close (as KIS shows it) and stored after it is fresh for the TTL it was asked at",
          arguments: [(Exchange.tse, "2025-03-11T06:44:59Z"), (.hks, "2025-03-11T08:24:59Z"), (.krx, "2025-03-11T08:59:59Z"),
                      (.nas, "2025-03-11T20:14:59Z")])
    func askedBeforeTheCloseStoredAfter(exchange: Exchange, asked: String) throws {
        let at = Int64(try Date(asked, strategy: .iso8601).timeIntervalSince1970)
        let end = try #require(CivilDate("2025-03-11"))
        let query = ChartQuery(market: exchange == .krx ? .domestic : .overseas, exchange: exchange, symbol: "TEST",
                               period: "D", adjusted: true, start: end.adding(days: -30), end: end)
        let policy = Self.defaults
        let stored = at + 3
        // Asked: live (or settling: a minute at most); stored: closed, or settled, until the next opening.
        #expect(policy.ttl(for: query, now: Date(timeIntervalSince1970: TimeInterval(at))) <= 60)
        #expect(policy.ttl(for: query, now: Date(timeIntervalSince1970: TimeInterval(stored))) > 3600)
        let until = policy.freshUntil(for: query, asked: at, stored: stored)
        #expect(until <= stored + 60, "fresh for \(until - stored) s after it was stored")
        // Asked and stored at once: the policy's own TTL.
        #expect(policy.freshUntil(for: query, asked: stored, stored: stored)
                == stored + Int64(policy.ttl(for: query, now: Date(timeIntervalSince1970: TimeInterval(stored)))))
    }

    /// kis-api.md ("Market hours"): a domestic bar is "provisional until after 15:30 KST, or 18:00 KST to be safe with
    /// after-hours" — KRX's closing auction ends at a random moment after 15:30, and trading at and around the close
    /// goes on to 18:00. A chart fetched at 15:30:05 showed the price before the auction; kept until the next opening,
    /// every user would see that close all evening. Every second of the window: fresh for a minute at most, never
    /// past the moment the day settles, and from then on until the next opening.
    @Test("KRX and the US after their close: refreshed every minute until the day's bar settles, never past it",
          arguments: [(Exchange.krx, "2025-03-11T06:30:00Z", 150 * 60, "2025-03-11"),
                      (Exchange.nas, "2025-07-01T20:00:00Z", 15 * 60, "2025-07-01"),
                      (Exchange.nys, "2025-11-28T18:00:00Z", 15 * 60, "2025-11-28")])  // an early close (13:00 EST)
    func settlingAfterTheClose(exchange: Exchange, close: String, window: Int, today: String) throws {
        let closed = try Date(close, strategy: .iso8601)
        for elapsed in stride(from: 0, to: window, by: 7) {
            let at = closed.addingTimeInterval(TimeInterval(elapsed))
            let ttl = try Self.ttl(FreshnessCase(exchange, at.ISO8601Format(), end: today, 0, "settling"))
            #expect(ttl == max(5, min(60, window - elapsed)), "\(exchange.rawValue) \(elapsed) s after the close")
            #expect(!exchange.isOpen(at: at))
        }
        let settled = closed.addingTimeInterval(TimeInterval(window))
        let next = exchange.nextOpen(after: settled)
        let ttl = try Self.ttl(FreshnessCase(exchange, settled.ISO8601Format(), end: today, 0, "settled"), Self.uncapped)
        #expect(ttl == Int(next.timeIntervalSince(settled)))
        // A range that ends before today holds settled data all the while.
        let yesterday = try #require(CivilDate(today)).adding(days: -1)
        #expect(try Self.ttl(FreshnessCase(exchange, close, end: yesterday.iso, 0, "ending yesterday")) == 86_400)
    }

    @Test("HKS, TSE, SHS, SZS, HSX, HNX: their own local hours", arguments: asia)
    func asiaSessions(_ c: FreshnessCase) throws {
        #expect(try Self.ttl(c) == c.ttl)
    }

    /// Lunch breaks: whether a break counts as open or closed, the entry must not stay fresh past the afternoon
    /// session's opening.
    @Test("a lunch break is closed: fresh exactly until the afternoon opening", arguments: [
        (Exchange.hks, "2025-03-11T04:30:00Z", 1800),  // 12:30 HKT, reopens 13:00
        (Exchange.tse, "2025-03-11T03:00:00Z", 1800),  // 12:00 JST, reopens 12:30
        (Exchange.shs, "2025-03-11T04:00:00Z", 3600),  // 12:00 CST, reopens 13:00
        (Exchange.szs, "2025-03-11T04:00:00Z", 3600),
        (Exchange.hsx, "2025-03-11T05:00:00Z", 3600),  // 12:00 ICT, reopens 13:00
        (Exchange.hnx, "2025-03-11T05:00:00Z", 3600),
    ])
    func lunchBreak(exchange: Exchange, at: String, untilReopening: Int) throws {
        // Closed during the break (gateway-api.md: fresh until the next session opens), not live_ttl_s.
        let ttl = try Self.ttl(FreshnessCase(exchange, at, end: "2025-03-11", 0, "lunch"))
        #expect(ttl == untilReopening, "\(exchange.rawValue) at \(at): \(ttl)")
        let now = try Date(at, strategy: .iso8601)
        #expect(!exchange.isOpen(at: now))
        #expect(exchange.isOpen(at: now.addingTimeInterval(TimeInterval(untilReopening))))
        #expect(exchange.isOpen(at: now.addingTimeInterval(-3600)))  // the morning session, an hour before
    }

    /// With a settled TTL longer than any closure: closed markets stay fresh exactly until their next opening,
    /// across weekends, holidays and daylight saving changes; the defaults cap the same cases at 86400.
    @Test("closed: exactly until the next opening, or settled_ttl_s when that is sooner", arguments: [
        FreshnessCase(.krx, "2025-03-14T09:00:00Z", end: "2025-03-14", 226_800, "Fri 18:00 KST: until Mon 09:00"),
        FreshnessCase(.krx, "2025-03-15T03:00:00Z", end: "2025-03-15", 162_000, "Sat 12:00 KST: until Mon 09:00"),
        FreshnessCase(.krx, "2025-02-28T09:00:00Z", end: "2025-02-28", 313_200,
                      "Fri 18:00 KST before the Mon 03-03 holiday: until Tue 09:00"),
        FreshnessCase(.nas, "2025-03-07T21:15:00Z", end: "2025-03-07", 231_300,
                      "Fri 16:15 EST before daylight saving: until Mon 09:30 EDT"),
        FreshnessCase(.hks, "2025-03-14T08:25:00Z", end: "2025-03-14", 234_300, "Fri 16:25 HKT: until Mon 09:30"),
        // US holidays: closed all day, so a range ending today waits for the next session.
        FreshnessCase(.nas, "2025-11-27T15:00:00Z", end: "2025-11-27", 84_600,
                      "Thanksgiving 10:00 EST: closed until Fri 09:30"),
        FreshnessCase(.nys, "2025-04-17T20:15:00Z", end: "2025-04-17", 321_300,
                      "Thu 16:15 EDT before Good Friday: until Mon 09:30"),
        FreshnessCase(.ams, "2026-07-02T20:15:00Z", end: "2026-07-02", 321_300,
                      "Thu 16:15 EDT before Fri 07-03 (Independence Day, a Saturday, kept on the Friday): until Mon 09:30"),
        FreshnessCase(.nas, "2025-01-08T21:15:00Z", end: "2025-01-08", 148_500,
                      "Wed 16:15 EST before the 01-09 day of mourning: until Fri 09:30"),
        // US early closes (13:00): closed from then until the next session, not refetched every live_ttl_s.
        FreshnessCase(.nas, "2026-11-27T18:30:00Z", end: "2026-11-27", 244_800,
                      "Fri 13:30 EST after Thanksgiving (closed at 13:00): until Mon 09:30"),
        FreshnessCase(.nys, "2025-12-24T18:15:00Z", end: "2025-12-24", 159_300,
                      "Christmas Eve 13:15 EST: until Fri 12-26 09:30"),
        FreshnessCase(.ams, "2025-07-03T17:15:00Z", end: "2025-07-03", 332_100,
                      "Thu 07-03 13:15 EDT before Independence Day: until Mon 09:30"),
        // Hong Kong's holidays and half days.
        FreshnessCase(.hks, "2025-10-06T08:25:00Z", end: "2025-10-06", 147_900,
                      "Mon 16:25 HKT before the day after Mid-Autumn (Tue 10-07): until Wed 09:30"),
        FreshnessCase(.hks, "2026-04-02T08:25:00Z", end: "2026-04-02", 493_500,
                      "Thu 16:25 HKT before Good Friday, Easter Monday and Ching Ming's Tuesday: until Wed 04-08 09:30"),
        FreshnessCase(.hks, "2025-12-24T04:25:00Z", end: "2025-12-24", 421_500,
                      "Christmas Eve 12:25 HKT, a half day: until Mon 12-29 09:30"),
        // Tokyo's holidays: 2026's Silver Week (Respect for the Aged Day, the day between, the autumnal equinox).
        FreshnessCase(.tse, "2026-09-18T06:45:00Z", end: "2026-09-18", 494_100,
                      "Fri 09-18 15:45 JST before 09-21 to 09-23: until Thu 09:00"),
    ])
    func untilNextOpening(_ c: FreshnessCase) throws {
        #expect(try Self.ttl(c, Self.uncapped) == c.ttl)
        #expect(try Self.ttl(c) == min(c.ttl, 86_400))
    }

    /// NYSE's published full-day closures (Nasdaq and NYSE American close on the same days), year by year.
    static let usClosures: [Int: [String]] = [
        // 2022-01-01 was a Saturday: not made up (12-31-2021 traded). Juneteenth and Christmas on Sundays.
        2022: ["01-17", "02-21", "04-15", "05-30", "06-20", "07-04", "09-05", "11-24", "12-26"],
        2023: ["01-02", "01-16", "02-20", "04-07", "05-29", "06-19", "07-04", "09-04", "11-23", "12-25"],
        2024: ["01-01", "01-15", "02-19", "03-29", "05-27", "06-19", "07-04", "09-02", "11-28", "12-25"],
        // 01-09: the national day of mourning for President Carter.
        2025: ["01-01", "01-09", "01-20", "02-17", "04-18", "05-26", "06-19", "07-04", "09-01", "11-27", "12-25"],
        2026: ["01-01", "01-19", "02-16", "04-03", "05-25", "06-19", "07-03", "09-07", "11-26", "12-25"],
        // Juneteenth on a Saturday, Independence Day on a Sunday, Christmas on a Saturday.
        2027: ["01-01", "01-18", "02-15", "03-26", "05-31", "06-18", "07-05", "09-06", "11-25", "12-24"],
    ]

    @Test("US exchanges: NYSE's holidays by its rules, 2022–2027, and nothing else on weekdays",
          arguments: [2022, 2023, 2024, 2025, 2026, 2027])
    func usHolidays(year: Int) throws {
        let first = try #require(CivilDate(year: year, month: 1, day: 1)), last = try #require(CivilDate(year: year, month: 12, day: 31))
        let closed = (first.dayNumber...last.dayNumber).map(CivilDate.init(dayNumber:))
            .filter { !$0.isWeekend && !Exchange.nys.isTradingDay($0) }
        #expect(closed.map { String($0.iso.dropFirst(5)) } == Self.usClosures[year])
        for d in closed {
            #expect(!Exchange.nas.isTradingDay(d) && !Exchange.ams.isTradingDay(d))
            #expect(Exchange.krx.isTradingDay(d) == !KRXHolidays.contains(d))  // KRX keeps its own calendar
            #expect(Exchange.hks.isTradingDay(d) == !HKEXHolidays.contains(d))  // so does HKEX
            #expect(Exchange.shs.isTradingDay(d) == !ChinaMarketHolidays.contains(d))  // and China
        }
    }

    /// NYSE's published early closes (13:00 Eastern) of the same years.
    static let usEarlyCloses: [Int: [String]] = [
        2022: ["11-25"],  // 07-03 a Sunday, 12-24 a Saturday
        2023: ["07-03", "11-24"],  // 12-24 a Sunday
        2024: ["07-03", "11-29", "12-24"],
        2025: ["07-03", "11-28", "12-24"],
        2026: ["11-27", "12-24"],  // 07-03 is the holiday (Independence Day on a Saturday)
        2027: ["11-26"],  // 07-05 and 12-24 are the holidays; no early close before them
    ]

    @Test("US exchanges: NYSE's early closes by its rules, 2022–2027; open until 13:00 on them, closed after",
          arguments: [2022, 2023, 2024, 2025, 2026, 2027])
    func usEarlyCloses(year: Int) throws {
        let first = try #require(CivilDate(year: year, month: 1, day: 1)), last = try #require(CivilDate(year: year, month: 12, day: 31))
        let early = (first.dayNumber...last.dayNumber).map(CivilDate.init(dayNumber:))
            .filter { Exchange.nys.isTradingDay($0) && Exchange.nys.sessions(on: $0) != Exchange.nys.sessions }
        #expect(early.map { String($0.iso.dropFirst(5)) } == Self.usEarlyCloses[year])
        for d in early {
            #expect(Exchange.nas.sessions(on: d) == [570...780] && Exchange.ams.sessions(on: d) == [570...780])
            #expect(Exchange.tse.sessions(on: d) == Exchange.tse.sessions)  // other exchanges keep their hours
            // 12:59 and 13:00 New York time (EST in November and December, EDT in July).
            let offset = d.components.month == 7 ? 4 : 5
            let noon59 = try Date("\(d.iso)T\(12 + offset):59:00Z", strategy: .iso8601)
            #expect(Exchange.nys.isOpen(at: noon59))
            #expect(!Exchange.nys.isOpen(at: noon59.addingTimeInterval(60)))
        }
    }

    /// JPX's published weekday closures (2027 by the rules: the Cabinet fixes its equinoxes in February 2026).
    static let tseClosures: [Int: [String]] = [
        // 01-01 a Saturday; 12-31 a Saturday (12-30 was the last session).
        2022: ["01-03", "01-10", "02-11", "02-23", "03-21", "04-29", "05-03", "05-04", "05-05", "07-18", "08-11",
               "09-19", "09-23", "10-10", "11-03", "11-23"],
        // 01-01 a Sunday (01-02 its substitute, closed anyway); 02-11, 04-29 and 09-23 Saturdays.
        2023: ["01-02", "01-03", "01-09", "02-23", "03-21", "05-03", "05-04", "05-05", "07-17", "08-11", "09-18",
               "10-09", "11-03", "11-23"],
        // Substitute Mondays for 02-11, 05-05, 08-11, the equinox 09-22 and 11-03 on Sundays.
        2024: ["01-01", "01-02", "01-03", "01-08", "02-12", "02-23", "03-20", "04-29", "05-03", "05-06", "07-15",
               "08-12", "09-16", "09-23", "10-14", "11-04", "12-31"],
        2025: ["01-01", "01-02", "01-03", "01-13", "02-11", "02-24", "03-20", "04-29", "05-05", "05-06", "07-21",
               "08-11", "09-15", "09-23", "10-13", "11-03", "11-24", "12-31"],
        // 05-06 for 05-03 on a Sunday; 09-22 between two holidays.
        2026: ["01-01", "01-02", "01-12", "02-11", "02-23", "03-20", "04-29", "05-04", "05-05", "05-06", "07-20",
               "08-11", "09-21", "09-22", "09-23", "10-12", "11-03", "11-23", "12-31"],
        // The vernal equinox on Sunday 03-21: Monday 03-22.
        2027: ["01-01", "01-11", "02-11", "02-23", "03-22", "04-29", "05-03", "05-04", "05-05", "07-19", "08-11",
               "09-20", "09-23", "10-11", "11-03", "11-23", "12-31"],
    ]

    @Test("TSE: Japan's holidays and JPX's year-end closure by their rules, 2022–2027, and nothing else on weekdays",
          arguments: [2022, 2023, 2024, 2025, 2026, 2027])
    func tseHolidays(year: Int) throws {
        let first = try #require(CivilDate(year: year, month: 1, day: 1)), last = try #require(CivilDate(year: year, month: 12, day: 31))
        let closed = (first.dayNumber...last.dayNumber).map(CivilDate.init(dayNumber:))
            .filter { !$0.isWeekend && !Exchange.tse.isTradingDay($0) }
        #expect(closed.map { String($0.iso.dropFirst(5)) } == Self.tseClosures[year])
        for d in closed {  // China and Vietnam keep their own
            #expect(Exchange.shs.isTradingDay(d) == !ChinaMarketHolidays.contains(d))
            #expect(Exchange.hsx.isTradingDay(d) == !VietnamMarketHolidays.contains(d))
        }
        // Before 2022 nothing is known: weekdays trade.
        #expect(try Exchange.tse.isTradingDay(#require(CivilDate("2021-11-03"))))
    }

    /// HKEX's published weekday closures and half days (2027 by the rules: Hong Kong gazettes its holidays about a
    /// year ahead).
    static let hksClosures: [Int: (closed: [String], half: [String])] = [
        // 01-01 and 10-01 Saturdays; 05-01 and Buddha's Birthday (05-08) Sundays; the day after Mid-Autumn a Sunday
        // (09-11); Christmas a Sunday: 12-26 and 12-27.
        2022: (["02-01", "02-02", "02-03", "04-05", "04-15", "04-18", "05-02", "05-09", "06-03", "07-01", "09-12",
                "10-04", "12-26", "12-27"], ["01-31"]),
        // Lunar New Year's Day a Sunday: the fourth day (01-25); 01-01 and 10-01 Sundays.
        2023: (["01-02", "01-23", "01-24", "01-25", "04-05", "04-07", "04-10", "05-01", "05-26", "06-22", "10-02",
                "10-23", "12-25", "12-26"], []),
        // The second day of the Lunar New Year a Sunday: the fourth day (02-13).
        2024: (["01-01", "02-12", "02-13", "03-29", "04-01", "04-04", "05-01", "05-15", "06-10", "07-01", "09-18",
                "10-01", "10-11", "12-25", "12-26"], ["02-09", "12-24", "12-31"]),
        // Tuen Ng a Saturday (05-31).
        2025: (["01-01", "01-29", "01-30", "01-31", "04-04", "04-18", "04-21", "05-01", "05-05", "07-01", "10-01",
                "10-07", "10-29", "12-25", "12-26"], ["01-28", "12-24", "12-31"]),
        // Ching Ming on Easter Sunday: the Tuesday after (Monday is Easter Monday); Buddha's Birthday and Chung Yeung
        // Sundays; the day after Christmas a Saturday.
        2026: (["01-01", "02-17", "02-18", "02-19", "04-03", "04-06", "04-07", "05-01", "05-25", "06-19", "07-01",
                "10-01", "10-19", "12-25"], ["02-16", "12-24", "12-31"]),
        2027: (["01-01", "02-08", "02-09", "03-26", "03-29", "04-05", "05-13", "06-09", "07-01", "09-16", "10-01",
                "10-08", "12-27"], ["02-05", "12-24", "12-31"]),
    ]

    @Test("HKS: Hong Kong's general holidays and HKEX's half days by their rules, 2022–2027, and nothing else on weekdays",
          arguments: [2022, 2023, 2024, 2025, 2026, 2027])
    func hksHolidays(year: Int) throws {
        let first = try #require(CivilDate(year: year, month: 1, day: 1)), last = try #require(CivilDate(year: year, month: 12, day: 31))
        let weekdays = (first.dayNumber...last.dayNumber).map(CivilDate.init(dayNumber:)).filter { !$0.isWeekend }
        let closed = weekdays.filter { !Exchange.hks.isTradingDay($0) }
        #expect(closed.map { String($0.iso.dropFirst(5)) } == Self.hksClosures[year]?.closed)
        let half = weekdays.filter { Exchange.hks.sessions(on: $0) != Exchange.hks.sessions }
        #expect(half.map { String($0.iso.dropFirst(5)) } == Self.hksClosures[year]?.half)
        for d in half { #expect(Exchange.hks.sessions(on: d) == [570...730]) }  // 09:30–12:00 and the closing auction
        for d in closed {  // China and Vietnam keep their own
            #expect(Exchange.shs.isTradingDay(d) == !ChinaMarketHolidays.contains(d))
            #expect(Exchange.hsx.isTradingDay(d) == !VietnamMarketHolidays.contains(d))
        }
        // Outside the years the rules are written for, nothing is known: weekdays trade.
        #expect(try Exchange.hks.isTradingDay(#require(CivilDate("2021-12-27"))))
    }

    /// Ching Ming on another Easter holiday: the day it falls on is already a holiday, so it gives the next day that
    /// is neither a Sunday nor a holiday — the Tuesday after Easter Monday (as 2010's, on Easter Monday, gave 04-06).
    @Test("HKS: Ching Ming on Good Friday, the day after it, or Easter Monday gives the Tuesday after Easter",
          arguments: [(2037, -1), (2042, -2), (2048, -1), (2078, 1)])
    func hksChingMingOnEaster(year: Int, offset: Int) throws {
        let easter = USMarketHolidays.easter(year)
        #expect(easter.adding(days: offset) == CivilDate(year: year, month: 4, day: ChineseLunarCalendar.qingMing(year)))
        #expect(!Exchange.hks.isTradingDay(easter.adding(days: 1)))  // Easter Monday
        #expect(!Exchange.hks.isTradingDay(easter.adding(days: 2)))  // the Tuesday
        #expect(Exchange.hks.isTradingDay(easter.adding(days: 3)))
    }

    /// The weekdays the statutory holidays close Shanghai and Shenzhen, by the rules (before 2025 without the Spring
    /// Festival's eve and May 2), and the weekday closures the exchanges published — the statutory days and the ones
    /// the State Council joined to them that year.
    static let chinaClosures: [Int: (statutory: [String], published: [String]?)] = [
        // 01-01 a Saturday, Labour Day a Sunday, Mid-Autumn a Saturday, National Day from a Saturday.
        2022: (["02-01", "02-02", "02-03", "04-05", "06-03", "10-03"],
               ["01-03", "01-31", "02-01", "02-02", "02-03", "02-04", "04-04", "04-05", "05-02", "05-03", "05-04",
                "06-03", "09-12", "10-03", "10-04", "10-05", "10-06", "10-07"]),
        2023: (["01-23", "01-24", "04-05", "05-01", "06-22", "09-29", "10-02", "10-03"],
               ["01-02", "01-23", "01-24", "01-25", "01-26", "01-27", "04-05", "05-01", "05-02", "05-03", "06-22",
                "06-23", "09-29", "10-02", "10-03", "10-04", "10-05", "10-06"]),
        2024: (["01-01", "02-12", "04-04", "05-01", "06-10", "09-17", "10-01", "10-02", "10-03"],
               ["01-01", "02-09", "02-12", "02-13", "02-14", "02-15", "02-16", "04-04", "04-05", "05-01", "05-02",
                "05-03", "06-10", "09-16", "09-17", "10-01", "10-02", "10-03", "10-04", "10-07"]),
        // From 2025 the Spring Festival's eve and May 2 are statutory; Dragon Boat a Saturday; Mid-Autumn on 10-06.
        2025: (["01-01", "01-28", "01-29", "01-30", "01-31", "04-04", "05-01", "05-02", "10-01", "10-02", "10-03",
                "10-06"],
               ["01-01", "01-28", "01-29", "01-30", "01-31", "02-03", "02-04", "04-04", "05-01", "05-02", "05-05",
                "06-02", "10-01", "10-02", "10-03", "10-06", "10-07", "10-08"]),
        // Qingming a Sunday (04-05); May 2 and October 3 Saturdays.
        2026: (["01-01", "02-16", "02-17", "02-18", "02-19", "05-01", "06-19", "09-25", "10-01", "10-02"],
               ["01-01", "01-02", "02-16", "02-17", "02-18", "02-19", "02-20", "02-23", "04-06", "05-01", "05-04",
                "05-05", "06-19", "09-25", "10-01", "10-02", "10-05", "10-06", "10-07"]),
        // The Spring Festival on a Saturday (its eve 02-05, its third day 02-08); not published yet.
        2027: (["01-01", "02-05", "02-08", "04-05", "06-09", "09-15", "10-01"], nil),
    ]

    @Test("SHS, SZS: China's statutory holidays by the law's rules, 2022–2027 — every one a published closure, so no trading day is taken for a holiday",
          arguments: [2022, 2023, 2024, 2025, 2026, 2027])
    func chinaHolidays(year: Int) throws {
        let expected = try #require(Self.chinaClosures[year])
        try Self.expectClosures(.shs, .szs, year: year, ruled: expected.statutory, published: expected.published)
        #expect(try Exchange.shs.isTradingDay(#require(CivilDate("2021-10-01"))))  // before 2022 nothing is known
    }

    /// `exchange`'s weekday closures in `year` are `ruled` (as `MM-DD`), each one of the `published` closures when
    /// known, and `twin` (the other exchange of the country) closes on the same days.
    static func expectClosures(_ exchange: Exchange, _ twin: Exchange, year: Int, ruled: [String], published: [String]?)
        throws
    {
        let first = try #require(CivilDate(year: year, month: 1, day: 1)), last = try #require(CivilDate(year: year, month: 12, day: 31))
        let weekdays = (first.dayNumber...last.dayNumber).map(CivilDate.init(dayNumber:)).filter { !$0.isWeekend }
        let closed = weekdays.filter { !exchange.isTradingDay($0) }.map { String($0.iso.dropFirst(5)) }
        #expect(closed == ruled)
        if let published { #expect(Set(closed).isSubset(of: published), "\(Set(closed).subtracting(published))") }
        #expect(weekdays.allSatisfy { twin.isTradingDay($0) == exchange.isTradingDay($0) })
    }

    /// The weekdays Vietnam's fixed-date holidays close HOSE and HNX, by the rules, and the weekday closures the
    /// exchanges published (with Tết's other days, the Hùng Kings' day, the days next to National Day and days in
    /// lieu).
    static let vietnamClosures: [Int: (fixed: [String], published: [String]?)] = [
        2022: (["02-01", "02-02", "02-03", "09-02"],
               ["01-03", "01-31", "02-01", "02-02", "02-03", "02-04", "04-11", "05-02", "05-03", "09-01", "09-02"]),
        2023: (["01-23", "01-24", "05-01"],
               ["01-02", "01-20", "01-23", "01-24", "01-25", "01-26", "05-01", "05-02", "05-03", "09-01", "09-04"]),
        // Tết's first day a Saturday: its third (02-12) is the one weekday.
        2024: (["01-01", "02-12", "04-30", "05-01", "09-02"],
               ["01-01", "02-08", "02-09", "02-12", "02-13", "02-14", "04-18", "04-29", "04-30", "05-01", "09-02",
                "09-03"]),
        2025: (["01-01", "01-29", "01-30", "01-31", "04-30", "05-01", "09-02"],
               ["01-01", "01-27", "01-28", "01-29", "01-30", "01-31", "04-07", "04-30", "05-01", "05-02", "09-01",
                "09-02"]),
        2026: (["01-01", "02-17", "02-18", "02-19", "04-30", "05-01", "09-02"], nil),
        2027: (["01-01", "02-08", "04-30", "09-02"], nil),
    ]

    @Test("HSX, HNX: Vietnam's fixed-date holidays and Tết's first three days, 2022–2027 — every one a published closure",
          arguments: [2022, 2023, 2024, 2025, 2026, 2027])
    func vietnamHolidays(year: Int) throws {
        let expected = try #require(Self.vietnamClosures[year])
        try Self.expectClosures(.hsx, .hnx, year: year, ruled: expected.fixed, published: expected.published)
    }

    /// A statutory holiday is closed all day, and a day the State Council joined to it (unknown to kisgw) is refreshed
    /// as a trading day — never kept past a real session.
    @Test("China and Vietnam on a holiday: closed until the next day kisgw knows to trade", arguments: [
        FreshnessCase(.shs, "2026-02-19T02:00:00Z", end: "2026-02-19", 84_600,
                      "Thu 10:00 CST, the Spring Festival's third day: until Fri 09:30"),
        FreshnessCase(.szs, "2026-02-19T02:00:00Z", end: "2026-02-18", 84_600,
                      "Thu 10:00 CST, range ending the day before (a holiday too): not settled, until Fri 09:30"),
        FreshnessCase(.shs, "2026-02-20T02:00:00Z", end: "2026-02-20", 5,
                      "Fri 10:00 CST, a closure the State Council added: refreshed as a trading day"),
        FreshnessCase(.shs, "2026-02-20T02:00:00Z", end: "2026-02-13", 86_400,
                      "Fri 10:00 CST, range ending the last session before the holidays: settled"),
        FreshnessCase(.hsx, "2026-04-30T03:00:00Z", end: "2026-04-30", 86_400,
                      "Thu 10:00 ICT, Reunification Day, Labour Day next: until Mon 09:00, capped"),
        FreshnessCase(.hnx, "2026-09-02T03:00:00Z", end: "2026-09-02", 82_800,
                      "Wed 10:00 ICT, National Day: until Thu 09:00"),
    ])
    func chinaVietnamHolidayTTL(_ c: FreshnessCase) throws {
        #expect(try Self.ttl(c) == c.ttl)
    }

    /// KRX opens at 10:00 on the year's first trading day, and trades 10:00–16:30 (after-hours an hour later too) on the
    /// day of the college entrance exam.
    @Test("KRX's late days: 10:00 on the year's first trading day, 10:00–16:30 on the entrance exam's day", arguments: [
        FreshnessCase(.krx, "2026-01-02T00:30:00Z", end: "2026-01-02", 1800, "Fri 09:30 KST, the year's first session: until 10:00"),
        FreshnessCase(.krx, "2026-01-02T01:00:00Z", end: "2026-01-02", 5, "Fri 10:00 KST: open"),
        FreshnessCase(.krx, "2026-01-02T06:30:00Z", end: "2026-01-02", 60, "Fri 15:30 KST: closed, settling"),
        FreshnessCase(.krx, "2026-11-19T00:30:00Z", end: "2026-11-19", 1800, "exam day 09:30 KST: until 10:00"),
        FreshnessCase(.krx, "2026-11-19T07:00:00Z", end: "2026-11-19", 5, "exam day 16:00 KST: still open"),
        FreshnessCase(.krx, "2026-11-19T07:30:00Z", end: "2026-11-19", 60, "exam day 16:30 KST: closed, settling"),
        FreshnessCase(.krx, "2026-11-19T09:59:30Z", end: "2026-11-19", 30, "exam day 18:59:30 KST: settles at 19:00"),
        FreshnessCase(.krx, "2026-11-19T10:00:00Z", end: "2026-11-19", 50_400, "exam day 19:00 KST: until Fri 09:00"),
        FreshnessCase(.krx, "2026-11-20T00:30:00Z", end: "2026-11-20", 5, "the day after, 09:30 KST: open"),
    ])
    func krxLateDays(_ c: FreshnessCase) throws {
        #expect(try Self.ttl(c) == c.ttl)
    }

    @Test("KRX's first trading day of the year is found past New Year's Day and weekends; the next opening after the year-end closing is 10:00")
    func krxFirstTradingDay() throws {
        func late(_ d: String) throws -> ClosedRange<Int>? { KRXHolidays.lateSession(on: try #require(CivilDate(d))) }
        #expect(try late("2027-01-04") == 600...930)  // 01-01 a Friday (a holiday), then the weekend
        #expect(try late("2027-01-05") == nil)
        #expect(try late("2025-01-02") == 600...930)
        #expect(try late("2024-01-02") == 600...930)  // 01-01 a Monday
        #expect(try late("2024-01-01") == nil)  // a holiday
        #expect(try late("2023-11-16") == 600...990)  // an exam day
        // The last session of 2025 (12-30; 12-31 is the year-end closing day) at 18:00 KST: until 2026-01-02 10:00.
        let ttl = try Self.ttl(FreshnessCase(.krx, "2025-12-30T09:00:00Z", end: "2025-12-30", 0, "year end"), Self.uncapped)
        #expect(ttl == 64 * 3600)
    }

    @Test("KRX holidays: weekdays only, through 2027, each year's New Year's Day (on a weekday) and year-end closing day")
    func krxHolidays() throws {
        let days = KRXHolidays.days.sorted().map(CivilDate.init(dayNumber:))
        #expect(days.allSatisfy { !$0.isWeekend })
        #expect(Set(days.map(\.components.year)) == [2023, 2024, 2025, 2026, 2027])
        for year in 2023...2027 {
            var last = try #require(CivilDate(year: year, month: 12, day: 31))
            while last.isWeekend { last = last.adding(days: -1) }
            #expect(!Exchange.krx.isTradingDay(last), "\(year): the year-end closing day")
            let newYear = try #require(CivilDate(year: year, month: 1, day: 1))
            #expect(newYear.isWeekend || !Exchange.krx.isTradingDay(newYear), "\(year): New Year's Day")
        }
        // 2027's Seollal (Sunday 02-07 in Korea) and its substitute day; China's falls on 02-06.
        #expect(try ["2027-02-08", "2027-02-09"].allSatisfy { !Exchange.krx.isTradingDay(try #require(CivilDate($0))) })
        #expect(try Exchange.krx.isTradingDay(#require(CivilDate("2027-02-05"))))
    }

    /// KRX's holidays are a table (KRX publishes its calendar each December): a gateway still running past its last
    /// year says so once at start-up, by the Seoul date.
    @Test("past the KRX holiday table's last year, a warning names it; within it, none")
    func krxTableEnds() throws {
        #expect(KRXHolidays.lastYear == 2027)
        #expect(KRXHolidays.staleTableWarning(at: try Date("2026-11-27T12:00:00Z", strategy: .iso8601)) == nil)
        #expect(KRXHolidays.staleTableWarning(at: try Date("2027-12-31T14:59:59Z", strategy: .iso8601)) == nil)
        let warning = try #require(KRXHolidays.staleTableWarning(at: try Date("2027-12-31T15:00:00Z", strategy: .iso8601)))
        #expect(warning.contains("through 2027") && warning.contains("in 2028"), "\(warning)")
    }

    @Test("an exchange's UTC offset, remembered until the zone's next transition, is ICU's on both sides of one")
    func offsetsAcrossTransitions() throws {
        // New York's 2026 changes: 03-08 07:00 UTC (EST → EDT) and 11-01 06:00 UTC (EDT → EST); Seoul has none.
        let cases: [(Exchange, String)] = [
            (.nys, "2026-03-08T06:59:59Z"), (.nys, "2026-03-08T07:00:00Z"), (.nys, "2026-03-08T06:59:59Z"),
            (.nys, "2026-11-01T05:59:59Z"), (.nys, "2026-11-01T06:00:00Z"), (.nys, "2026-07-01T12:00:00Z"),
            (.nas, "2026-11-01T06:00:00Z"), (.krx, "1988-05-08T12:00:00Z"), (.krx, "2026-11-26T12:00:00Z"),
        ]
        for (exchange, at) in cases + cases.reversed() {
            let instant = try Date(at, strategy: .iso8601)
            #expect(exchange.secondsFromGMT(at: instant) == exchange.timeZone.secondsFromGMT(for: instant), "\(exchange) \(at)")
        }
        #expect(Exchange.nys.secondsFromGMT(at: try Date("2026-03-08T06:59:59Z", strategy: .iso8601)) == -5 * 3600)
        #expect(Exchange.nys.secondsFromGMT(at: try Date("2026-03-08T07:00:00Z", strategy: .iso8601)) == -4 * 3600)
    }

    @Test("Easter Sunday (Good Friday is two days before)", arguments: [
        (2000, "2000-04-23"), (2019, "2019-04-21"), (2024, "2024-03-31"), (2025, "2025-04-20"), (2026, "2026-04-05"),
        (2027, "2027-03-28"), (2038, "2038-04-25"), (2285, "2285-03-22"),
    ])
    func easter(year: Int, date: String) {
        #expect(USMarketHolidays.easter(year).iso == date)
    }

    @Test("the TTLs come from [cache]: live_ttl_s while open, settled_ttl_s for settled ranges")
    func configured() throws {
        let policy = FreshnessPolicy(liveTTL: 7, settledTTL: 3000)
        #expect(try Self.ttl(FreshnessCase(.krx, "2025-03-11T01:00:00Z", end: "2025-03-11", 0, "open"), policy) == 7)
        #expect(try Self.ttl(FreshnessCase(.krx, "2025-03-11T01:00:00Z", end: "2025-03-10", 0, "settled"), policy) == 3000)
        // Closed until the next opening (54000 s), capped at settled_ttl_s.
        #expect(try Self.ttl(FreshnessCase(.krx, "2025-03-11T09:00:00Z", end: "2025-03-11", 0, "closed"), policy) == 3000)
        // Settling after the close: a minute, but never less than live_ttl_s nor more than settled_ttl_s.
        #expect(try Self.ttl(FreshnessCase(.krx, "2025-03-11T07:00:00Z", end: "2025-03-11", 0, "settling"), policy) == 60)
        let slow = FreshnessPolicy(liveTTL: 90, settledTTL: 3000), tight = FreshnessPolicy(liveTTL: 5, settledTTL: 30)
        #expect(try Self.ttl(FreshnessCase(.krx, "2025-03-11T07:00:00Z", end: "2025-03-11", 0, "settling"), slow) == 90)
        #expect(try Self.ttl(FreshnessCase(.krx, "2025-03-11T07:00:00Z", end: "2025-03-11", 0, "settling"), tight) == 30)
    }
}
