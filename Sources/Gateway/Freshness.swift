import Foundation
import KIS

/// How long a chart stays fresh (gateway-api.md, "Freshness").
struct FreshnessPolicy: Sendable {
    var liveTTL: Int
    var settledTTL: Int

    /// How long a chart that includes the current trading day stays fresh in the time after the close when its bar
    /// may still change (``Exchange/settling``): a close KIS shows before the closing auction has ended is
    /// replaced within a minute, instead of being kept until the next opening.
    static let settlingTTL = 60

    /// Until when (Unix seconds) a chart whose KIS calls began at `asked` and which is stored at `stored` stays fresh:
    /// from `stored`, the shorter of the two instants' TTLs. KIS's first page, which holds the current day, was read at
    /// the first; judged only at the second, a fetch that began while the market was open (as KIS shows it) and ended
    /// after its close — waits for the rate, pages, retries — held the session as it was before the close, and was
    /// kept until the next opening as if it were the close. (The lifetime still counts from `stored`: `max-age` is
    /// the TTL, and `Age` counts from when KIS answered.)
    func freshUntil(for query: ChartQuery, asked: Int64, stored: Int64) -> Int64 {
        func ttl(_ at: Int64) -> Int { self.ttl(for: query, now: Date(timeIntervalSince1970: TimeInterval(at))) }
        return stored + Int64(asked >= stored ? ttl(stored) : min(ttl(asked), ttl(stored)))
    }

    /// Seconds the entry for `query` stays fresh when stored at `now`.
    ///
    /// Live while the session is open (gateway-api.md), and also while KIS's data still shows it open: Hong Kong,
    /// Tokyo, China and Vietnam are quoted 15 minutes late (``Exchange/dataDelay``), so a Tokyo chart fetched at 15:40
    /// holds the session as it was at 15:25 and is refreshed every `live_ttl_s` until 15:45. KRX and the US, quoted in
    /// real time, are refreshed every minute for a while after their close instead (``Exchange/settling``).
    func ttl(for query: ChartQuery, now: Date) -> Int {
        let exchange = query.exchange
        let tradingDay = exchange.currentTradingDay(at: now)
        // A range that ends before the current trading day holds settled data.
        if query.end < tradingDay { return settledTTL }
        if exchange.isOpen(at: now) { return liveTTL }
        let shown = now.addingTimeInterval(-TimeInterval(exchange.dataDelay.components.seconds))
        if exchange.dataDelay > .zero, exchange.isOpen(at: shown) { return liveTTL }
        // Just closed, while the day's bar may still change at KIS (KRX's closing auction and after-hours trading,
        // the US closing cross): refreshed every `settlingTTL` seconds until it settles.
        if let untilSettled = exchange.secondsUntilSettled(at: now) {
            return max(liveTTL, min(Self.settlingTTL, untilSettled, settledTTL))
        }
        // Closed: fresh until the next session opens, at most settled_ttl.
        let untilOpen = Int(exchange.nextOpen(after: now).timeIntervalSince(now).rounded(.up))
        return max(liveTTL, min(settledTTL, untilOpen))
    }
}
