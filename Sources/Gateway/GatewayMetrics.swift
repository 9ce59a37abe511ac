import CoreMetrics
import Metrics
import Synchronization

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

    private let factory: any MetricsFactory
    private let upstream = Mutex<[String: Counter]>([:])

    /// `factory`: where the series go (the bootstrapped `MetricsSystem` unless the gateway is given a registry).
    init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
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
    }

    /// One KIS call: `outcome` ok | kis_error | timeout | transport | unreadable, with KIS's `msg_cd` if any.
    func upstreamCall(outcome: String, msgCode: String?) {
        let key = outcome + "|" + (msgCode ?? "")
        let counter = upstream.withLock { c in
            if let x = c[key] { return x }
            let x = Counter(label: "kisgw_upstream_calls_total",
                            dimensions: [("outcome", outcome), ("msg_cd", msgCode ?? "")], factory: factory)
            c[key] = x
            return x
        }
        counter.increment()
    }
}
