import Foundation
public import Hummingbird
public import Logging

/// Counts and times every request by route and status, and writes one structured access-log line for it
/// (method, route, status, duration — never a header value, so no token reaches the log).
public struct AccessMiddleware<Context: RequestContext>: RouterMiddleware {
    public let record: @Sendable (_ route: String, _ status: Int, _ nanoseconds: Int64) -> Void
    public let logger: Logger

    public init(logger: Logger, record: @escaping @Sendable (_ route: String, _ status: Int, _ nanoseconds: Int64) -> Void) {
        self.logger = logger
        self.record = record
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
        let nanos = d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000
        let route = context.endpointPath ?? "unmatched"
        record(route, status, nanos)
        if logger.logLevel <= .info {
            logger.info("request", metadata: [
                "method": "\(request.method)", "route": "\(route)", "status": "\(status)",
                "ms": "\(String(format: "%.2f", Double(nanos) / 1e6))",
            ])
        }
    }
}
