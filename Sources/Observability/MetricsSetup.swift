public import Prometheus

public import CoreMetrics
internal import Synchronization

/// Sets up swift-metrics with a Prometheus registry for the `kisgw` executable.
///
/// ```swift
/// let registry = MetricsSetup.bootstrap()
/// router.get("/metrics") { _, _ in MetricsSetup.render(registry) }
/// ```
public enum MetricsSetup {
    private static let registry = Mutex<PrometheusCollectorRegistry?>(nil)

    /// Bootstraps `MetricsSystem` with a `PrometheusMetricsFactory` on a new registry and
    /// returns the registry. Later calls return the same registry without bootstrapping again.
    public static func bootstrap() -> PrometheusCollectorRegistry {
        registry.withLock { existing in
            if let existing { return existing }
            let created = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: created))
            existing = created
            return created
        }
    }

    /// The registry's metrics in the Prometheus text exposition format (version 0.0.4).
    public static func render(_ registry: PrometheusCollectorRegistry) -> String {
        registry.emitToString()
    }

    /// Where a server's series go: the registry it renders at `/metrics` when it has one, else the bootstrapped
    /// `MetricsSystem`'s factory.
    public static func factory(for registry: PrometheusCollectorRegistry?) -> any MetricsFactory {
        registry.map { PrometheusMetricsFactory(registry: $0) } ?? MetricsSystem.factory
    }

    /// The content type to serve ``render(_:)`` with.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"
}
