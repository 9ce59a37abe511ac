import CoreMetrics
import KIS
import Metrics
import Synchronization

/// The broker's series. With a registry in ``BrokerDependencies`` they go to that registry (so two brokers in one
/// test process keep their own counts); otherwise to the bootstrapped `MetricsSystem`.
final class BrokerMetrics: Sendable {
    private let factory: any MetricsFactory
    private let issuances: [KISEnvironment: Counter]
    let refreshOK: Counter
    let refreshFailed: Counter
    let republished: Counter
    let expired: Counter
    let revokeFailures: Counter
    private let failures = Mutex<[String: Counter]>([:])

    init(factory: any MetricsFactory) {
        self.factory = factory
        var issuances: [KISEnvironment: Counter] = [:]
        for env in KISEnvironment.allCases {
            issuances[env] = Counter(
                label: "kis_token_issuances_total", dimensions: [("environment", env.rawValue)], factory: factory)
        }
        self.issuances = issuances
        refreshOK = Counter(label: "kisgw_broker_scheduled_refreshes_total", dimensions: [("outcome", "ok")],
                            factory: factory)
        refreshFailed = Counter(label: "kisgw_broker_scheduled_refreshes_total", dimensions: [("outcome", "failed")],
                                factory: factory)
        republished = Counter(label: "kisgw_broker_republished_tokens_total", factory: factory)
        expired = Counter(label: "kisgw_broker_expired_tokens_total", factory: factory)
        revokeFailures = Counter(label: "kisgw_broker_revoke_failures_total", factory: factory)
    }

    /// One token KIS handed out (`tokenP` answered with a token).
    func issued(_ env: KISEnvironment) { issuances[env]?.increment() }

    /// A `tokenP` call that got no token, by `KISClientError.Kind` (`credentialsRejected`, `issuanceTooFrequent`, …).
    func issuanceFailed(reason: String) {
        let counter = failures.withLock { c in
            if let x = c[reason] { return x }
            let x = Counter(label: "kis_token_issuance_failures_total", dimensions: [("reason", reason)], factory: factory)
            c[reason] = x
            return x
        }
        counter.increment()
    }
}
