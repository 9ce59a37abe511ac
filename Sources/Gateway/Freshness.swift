import Foundation
import KIS

/// How long a chart stays fresh (gateway-api.md, "Freshness").
struct FreshnessPolicy: Sendable {
    var liveTTL: Int
    var settledTTL: Int

    /// Seconds the entry for `query` stays fresh when stored at `now`.
    ///
    /// Live while the session is open (gateway-api.md), and also while KIS's data still shows it open: Hong Kong,
    /// Tokyo, China and Vietnam are quoted 15 minutes late (``Exchange/dataDelay``), so a Tokyo chart fetched at 15:40
    /// holds the session as it was at 15:25 and is refreshed every `live_ttl_s` until 15:45.
    func ttl(for query: ChartQuery, now: Date) -> Int {
        let exchange = query.exchange
        let tradingDay = exchange.currentTradingDay(at: now)
        // A range that ends before the current trading day holds settled data.
        if query.end < tradingDay { return settledTTL }
        if exchange.isOpen(at: now) { return liveTTL }
        let shown = now.addingTimeInterval(-TimeInterval(exchange.dataDelay.components.seconds))
        if exchange.dataDelay > .zero, exchange.isOpen(at: shown) { return liveTTL }
        // Closed: fresh until the next session opens, at most settled_ttl.
        let untilOpen = Int(exchange.nextOpen(after: now).timeIntervalSince(now).rounded(.up))
        return max(liveTTL, min(settledTTL, untilOpen))
    }
}
