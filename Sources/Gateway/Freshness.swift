import Foundation
import KIS

/// How long a chart stays fresh (gateway-api.md, "Freshness").
struct FreshnessPolicy: Sendable {
    var liveTTL: Int
    var settledTTL: Int

    /// Seconds the entry for `query` stays fresh when stored at `now`.
    ///
    /// Judged at the time KIS's data shows: `now` less the exchange's ``Exchange/dataDelay`` (15 minutes for Hong
    /// Kong, Tokyo, China and Vietnam). A Tokyo chart fetched at 15:40 holds the session as it was at 15:25 — still
    /// trading — and is refreshed every `live_ttl_s` until 15:45, when KIS's data reaches the close; closed, it is
    /// fresh until KIS's data reaches the next opening (09:15).
    func ttl(for query: ChartQuery, now wallClock: Date) -> Int {
        let exchange = query.exchange
        let now = wallClock.addingTimeInterval(-TimeInterval(exchange.dataDelay.components.seconds))
        let tradingDay = exchange.currentTradingDay(at: now)
        // A range that ends before the current trading day holds settled data.
        if query.end < tradingDay { return settledTTL }
        if exchange.isOpen(at: now) { return liveTTL }
        // Closed: fresh until the next session opens, at most settled_ttl.
        let untilOpen = Int(exchange.nextOpen(after: now).timeIntervalSince(now).rounded(.up))
        return max(liveTTL, min(settledTTL, untilOpen))
    }
}
