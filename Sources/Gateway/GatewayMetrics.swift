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

    private struct RequestKey: Hashable {
        var route: String
        var status: Int
    }

    private let requests = Mutex<[RequestKey: Counter]>([:])
    private let durations = Mutex<[String: Timer]>([:])
    private let upstream = Mutex<[String: Counter]>([:])

    func request(route: String, status: Int, nanoseconds: Int64) {
        // Keyed by value, not by a concatenated string: no allocation per request on the hot path.
        let key = RequestKey(route: route, status: status)
        let counter = requests.withLock { c in
            if let x = c[key] { return x }
            let x = Counter(label: "kisgw_http_requests_total", dimensions: [("route", route), ("status", String(status))])
            c[key] = x
            return x
        }
        counter.increment()
        let timer = durations.withLock { d in
            if let x = d[route] { return x }
            let x = Timer(label: "kisgw_http_request_duration_seconds", dimensions: [("route", route)],
                          preferredDisplayUnit: .seconds)
            d[route] = x
            return x
        }
        timer.recordNanoseconds(nanoseconds)
    }

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
