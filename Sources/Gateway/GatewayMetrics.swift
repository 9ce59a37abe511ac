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

    /// How many `outcome`/`msg_cd` series the upstream calls may have; any further `msg_cd` is counted as "other".
    static let maxUpstreamSeries = 64

    /// One KIS call: `outcome` ok | kis_error | timeout | transport | unreadable, with KIS's `msg_cd` if any.
    ///
    /// The `msg_cd` is whatever the upstream sent: it is a label only when it looks like KIS's codes (1 to 12 capital
    /// letters and digits: `EGW00201`, `OPSQ2001`, `40580000`), and only for the first ``maxUpstreamSeries`` series —
    /// anything else is `other`, so that an upstream cannot grow the series (and the memory they hold) without bound.
    func upstreamCall(outcome: String, msgCode: String?) {
        var code = msgCode.map { $0.isEmpty || Self.isKISCode($0) ? $0 : "other" } ?? ""
        let counter = upstream.withLock { c in
            if let x = c[outcome + "|" + code] { return x }
            if c.count >= Self.maxUpstreamSeries, !code.isEmpty {
                code = "other"
                if let x = c[outcome + "|" + code] { return x }
            }
            let x = Counter(label: "kisgw_upstream_calls_total", dimensions: [("outcome", outcome), ("msg_cd", code)],
                            factory: factory)
            c[outcome + "|" + code] = x
            return x
        }
        counter.increment()
    }

    static func isKISCode(_ code: String) -> Bool {
        (1...12).contains(code.utf8.count) && code.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) }
    }
}
