import CoreMetrics
import Metrics
import Synchronization

/// The gateway's series (gateway-api.md, "Operations"), created once; dynamic label sets are cached.
final class GatewayMetrics: Sendable {
    let cacheHit = Counter(label: "kisgw_cache_results_total", dimensions: [("result", "hit")])
    let cacheMiss = Counter(label: "kisgw_cache_results_total", dimensions: [("result", "miss")])
    let cacheStale = Counter(label: "kisgw_cache_results_total", dimensions: [("result", "stale")])
    let cacheCoalesced = Counter(label: "kisgw_cache_results_total", dimensions: [("result", "coalesced")])
    let rateLimitWaits = Counter(label: "kisgw_rate_limit_waits_total")
    let rateLimitRejections = Counter(label: "kisgw_rate_limit_rejections_total")
    let rateLimitWait = Timer(label: "kisgw_rate_limit_wait_seconds", preferredDisplayUnit: .seconds)
    let upstreamDuration = Timer(label: "kisgw_upstream_duration_seconds", preferredDisplayUnit: .seconds)

    private let upstream = Mutex<[String: Counter]>([:])

    /// One KIS call: `outcome` ok | kis_error | timeout | transport | unreadable, with KIS's `msg_cd` if any.
    func upstreamCall(outcome: String, msgCode: String?) {
        let key = outcome + "|" + (msgCode ?? "")
        let counter = upstream.withLock { c in
            if let x = c[key] { return x }
            let x = Counter(label: "kisgw_upstream_calls_total",
                            dimensions: [("outcome", outcome), ("msg_cd", msgCode ?? "")])
            c[key] = x
            return x
        }
        counter.increment()
    }
}
