import CoreMetrics
import KIS
import Metrics
import Observability
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
    /// How long each reconciliation pass took (store.md: what the store lost is republished within
    /// `reconcile_interval_s`, so a pass must take well under it), failed ones included.
    private let reconcileDuration: Timer
    private let failures = Mutex<[String: Counter]>([:])
    /// Every call to KIS (`tokenP`, `revokeP`) by outcome and `msg_cd`, and its duration, as the gateway counts its
    /// own (`kisgw_upstream_calls_total`, `kisgw_upstream_duration_seconds`).
    private let kisCalls: [KISCall: (counters: KISCallCounters, duration: Timer)]

    /// The broker's calls to KIS, a `call` label each.
    enum KISCall: String, CaseIterable, Sendable {
        case tokenP, revokeP
    }

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
        reconcileDuration = Timer(label: "kisgw_broker_reconcile_duration_seconds", preferredDisplayUnit: .seconds,
                                  factory: factory)
        var kisCalls: [KISCall: (KISCallCounters, Timer)] = [:]
        for call in KISCall.allCases {
            kisCalls[call] = (
                KISCallCounters(label: "kisgw_broker_kis_calls_total", dimensions: [("call", call.rawValue)], factory: factory),
                Timer(label: "kisgw_broker_kis_duration_seconds", dimensions: [("call", call.rawValue)],
                      preferredDisplayUnit: .seconds, factory: factory))
        }
        self.kisCalls = kisCalls
    }

    /// One call to KIS that ended after `duration`: `error` nil when it succeeded, else what it failed with (KIS's
    /// refusal, its `msg_cd` beside it; or no answer, no connection, an unreadable one).
    private func kisCall(_ call: KISCall, duration: Duration, error: (any Error)?) {
        guard let (counters, timer) = kisCalls[call] else { return }
        switch error {
        case nil: counters.record(outcome: "ok", msgCode: nil)
        case let e as KISClientError: counters.record(outcome: e.kind.outcome, msgCode: e.msgCode)
        default: counters.record(outcome: "transport", msgCode: nil)
        }
        timer.recordNanoseconds(Self.nanoseconds(duration))
    }

    /// One reconciliation pass that took `duration`.
    func reconciled(in duration: Duration) { reconcileDuration.recordNanoseconds(Self.nanoseconds(duration)) }

    private static func nanoseconds(_ d: Duration) -> Int64 {
        d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000
    }

    /// Runs `body`, a call to KIS, counted and timed as `call`.
    func timingKIS<T>(_ call: KISCall, _ body: () async throws -> T) async throws -> T {
        let started = ContinuousClock.now
        do {
            let value = try await body()
            kisCall(call, duration: ContinuousClock.now - started, error: nil)
            return value
        } catch {
            kisCall(call, duration: ContinuousClock.now - started, error: error)
            throw error
        }
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
