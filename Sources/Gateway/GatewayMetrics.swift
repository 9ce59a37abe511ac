import CoreMetrics
import Metrics
import Observability

/// The gateway's series (gateway-api.md, "Operations"), created once; dynamic label sets are cached.
final class GatewayMetrics: Sendable {
    let cacheHit: Counter
    let cacheMiss: Counter
    let cacheStale: Counter
    let cacheCoalesced: Counter
    let rateLimitWaits: Counter
    let rateLimitRejections: Counter
    let rateLimitWait: Timer
    let upstreamDuration: Timer
    /// Chart fetches that found their lock gone (expired, and perhaps taken by another gateway) before a further
    /// KIS call: the fleet may have fetched that chart twice.
    let chartLocksLost: Counter

    private let upstream: KISCallCounters

    /// `factory`: where the series go (the bootstrapped `MetricsSystem` unless the gateway is given a registry).
    init(factory: any MetricsFactory = MetricsSystem.factory) {
        func cache(_ result: String) -> Counter {
            Counter(label: "kisgw_cache_results_total", dimensions: [("result", result)], factory: factory)
        }
        cacheHit = cache("hit")
        cacheMiss = cache("miss")
        cacheStale = cache("stale")
        cacheCoalesced = cache("coalesced")
        rateLimitWaits = Counter(label: "kisgw_rate_limit_waits_total", factory: factory)
        rateLimitRejections = Counter(label: "kisgw_rate_limit_rejections_total", factory: factory)
        rateLimitWait = Timer(label: "kisgw_rate_limit_wait_seconds", preferredDisplayUnit: .seconds, factory: factory)
        upstreamDuration = Timer(label: "kisgw_upstream_duration_seconds", preferredDisplayUnit: .seconds, factory: factory)
        chartLocksLost = Counter(label: "kisgw_chart_locks_lost_total", factory: factory)
        upstream = KISCallCounters(label: "kisgw_upstream_calls_total", factory: factory)
    }

    /// One KIS call: `outcome` ok | kis_error | timeout | transport | unreadable, with KIS's `msg_cd` if any (a label
    /// only when it looks like KIS's codes, at most ``KISCallCounters/maxSeries`` series).
    func upstreamCall(outcome: String, msgCode: String?) {
        upstream.record(outcome: outcome, msgCode: msgCode)
    }
}
