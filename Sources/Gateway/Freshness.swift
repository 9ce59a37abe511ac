import Foundation
import KIS

/// How long a chart stays fresh (gateway-api.md, "Freshness").
struct FreshnessPolicy: Sendable {
    var liveTTL: Int
    var settledTTL: Int

    /// Seconds the entry for `query` stays fresh when stored at `now`.
    func ttl(for query: ChartQuery, now: Date) -> Int {
        let exchange = query.exchange
        let tradingDay = exchange.currentTradingDay(at: now)
        // A range that ends before the current trading day holds settled data.
        if query.end < tradingDay { return settledTTL }
        if exchange.isOpen(at: now) { return liveTTL }
        // Closed: fresh until the next session opens, at most settled_ttl.
        let untilOpen = Int(exchange.nextOpen(after: now).timeIntervalSince(now).rounded(.up))
        return max(liveTTL, min(settledTTL, untilOpen))
    }
}
