public import CoreMetrics
import Foundation
public import Hummingbird
public import Logging
import Synchronization

/// Counts and times requests by route and status (`kisgw_http_requests_total`,
/// `kisgw_http_request_duration_seconds`) and writes one structured access-log line each (method, route, status,
/// duration — never a header value, so no token reaches the log). One per server; `AccessMiddleware` and the
/// gateway's hit path both record through it.
public final class RequestRecorder: Sendable {
    private struct Key: Hashable {
        var route: String
        var status: Int
    }

    private let factory: any MetricsFactory
    private let logger: Logger
    private let requests = Mutex<[Key: Counter]>([:])
    private let durations = Mutex<[String: CoreMetrics.Timer]>([:])

    /// `factory`: where the series go (the bootstrapped `MetricsSystem` unless a test gives its own).
    public init(logger: Logger, factory: any MetricsFactory = MetricsSystem.factory) {
        self.logger = logger
        self.factory = factory
    }

    public func record(method: String, route: String, status: Int, nanoseconds: Int64) {
        // Keyed by value, not by a concatenated string: no allocation per request once a series exists.
        let counter = requests.withLock { c in
            let key = Key(route: route, status: status)
            if let x = c[key] { return x }
            let x = Counter(label: "kisgw_http_requests_total", dimensions: [("route", route), ("status", String(status))],
                            factory: factory)
            c[key] = x
            return x
        }
        counter.increment()
        let timer = durations.withLock { d in
            if let x = d[route] { return x }
            let x = CoreMetrics.Timer(label: "kisgw_http_request_duration_seconds", dimensions: [("route", route)],
                          preferredDisplayUnit: .seconds, factory: factory)
            d[route] = x
            return x
        }
        timer.recordNanoseconds(nanoseconds)
        if logger.logLevel <= .info {
            logger.info("request", metadata: [
                "method": "\(method)", "route": "\(route)", "status": "\(status)",
                "ms": "\(fixedPoint(Double(nanoseconds) / 1e6, decimals: 2))",
            ])
        }
    }
}

/// Records every request the router answers through a `RequestRecorder`, by the route it matched
/// (`unmatched` when none did).
public struct AccessMiddleware<Context: RequestContext>: RouterMiddleware {
    public let recorder: RequestRecorder
    /// Labels for routes whose path pattern is not how they are named (a `**` capture), by pattern.
    public let labels: [String: String]
    /// The route a path the router matched no route for is on all the same: a request with a method the route does
    /// not take (405), or a preflight answered before routing (CORS) — counted under its route, not `unmatched`.
    public let routeOfPath: (@Sendable (_ path: String) -> String?)?

    public init(recorder: RequestRecorder, labels: [String: String] = [:],
                routeOfPath: (@Sendable (_ path: String) -> String?)? = nil) {
        self.recorder = recorder
        self.labels = labels
        self.routeOfPath = routeOfPath
    }

    public func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let start = ContinuousClock.now
        let response: Response
        do {
            response = try await next(request, context)
        } catch {
            // Errors are rendered further in (CORS); anything arriving here is logged as a 500.
            finish(request, context: context, status: 500, start: start)
            throw error
        }
        finish(request, context: context, status: Int(response.status.code), start: start)
        return response
    }

    private func finish(_ request: Request, context: Context, status: Int, start: ContinuousClock.Instant) {
        let d = ContinuousClock.now - start
        // Hummingbird names the path of a request no route matched "NotFound".
        let route = context.endpointPath.flatMap { $0 == "NotFound" ? nil : labels[$0] ?? $0 }
            ?? routeOfPath?(request.uri.path) ?? "unmatched"
        recorder.record(method: "\(request.method)", route: route, status: status,
                        nanoseconds: d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000)
    }
}
