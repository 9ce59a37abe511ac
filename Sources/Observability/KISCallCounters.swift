public import CoreMetrics
internal import Synchronization

/// Counters of calls to KIS by outcome and KIS's `msg_cd`: the gateway's `kisgw_upstream_calls_total` and the
/// broker's `kisgw_broker_kis_calls_total`, one series per label set, made once and kept.
///
/// The `msg_cd` is whatever the upstream sent: it is a label only when it looks like KIS's codes (1 to 12 capital
/// letters and digits: `EGW00201`, `OPSQ2001`, `40580000`), and only for the first ``maxSeries`` series — anything
/// else is `other`, so that an upstream (a plain-http KIS URL, a proxy, a fault) cannot grow the series, and the
/// memory they hold, without bound.
public final class KISCallCounters: Sendable {
    /// How many `outcome`/`msg_cd` series one family may have; any further `msg_cd` is counted as `other`.
    public static let maxSeries = 64

    private let label: String
    private let fixed: [(String, String)]
    private let factory: any MetricsFactory
    private let series = Mutex<[String: Counter]>([:])

    /// - Parameters:
    ///   - dimensions: labels every series of this family has (the broker's `call`), before `outcome` and `msg_cd`.
    public init(label: String, dimensions: [(String, String)] = [], factory: any MetricsFactory) {
        self.label = label
        self.fixed = dimensions
        self.factory = factory
    }

    /// One call: `outcome` (ok | kis_error | timeout | transport | unreadable, …) with KIS's `msg_cd` if any.
    public func record(outcome: String, msgCode: String?) {
        var code = msgCode.map { $0.isEmpty || Self.isKISCode($0) ? $0 : "other" } ?? ""
        let counter = series.withLock { c in
            if let x = c[outcome + "|" + code] { return x }
            if c.count >= Self.maxSeries, !code.isEmpty {
                code = "other"
                if let x = c[outcome + "|" + code] { return x }
            }
            let x = Counter(label: label, dimensions: fixed + [("outcome", outcome), ("msg_cd", code)], factory: factory)
            c[outcome + "|" + code] = x
            return x
        }
        counter.increment()
    }

    public static func isKISCode(_ code: String) -> Bool {
        (1...12).contains(code.utf8.count) && code.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) }
    }
}
