public import Hummingbird
import HTTPTypes
import NIOCore

/// Turns whatever a handler threw into an `application/problem+json` answer. Unknown routes become
/// `not_found`, a known path with another method `method_not_allowed` (with `Allow`).
public struct ProblemRenderer: Sendable {
    /// For a path with no route for this method: the methods it has (for 405), or nil (404).
    public let allowedMethods: @Sendable (_ path: String) -> String?

    public init(allowedMethods: @escaping @Sendable (_ path: String) -> String?) {
        self.allowedMethods = allowedMethods
    }

    public func response(for error: any Error, request: Request) -> Response {
        let problem: Problem
        switch error {
        case let p as Problem:
            problem = p
        case let e as HTTPError where e.status == .notFound:
            if let allow = allowedMethods(request.uri.path) {
                problem = Problem(.methodNotAllowed, "\(request.method) is not allowed here; use \(allow)", allow: allow)
            } else {
                problem = Problem(.notFound, "no such route")
            }
        case let e as HTTPError where e.status == .methodNotAllowed:
            problem = Problem(.methodNotAllowed, "\(request.method) is not allowed here",
                              allow: allowedMethods(request.uri.path))
        case let e as HTTPError where e.status == .contentTooLarge:
            problem = Problem(.payloadTooLarge, "the request body is too large")
        case let e as HTTPError where e.status.code < 500:
            problem = Problem(.invalidParameter, e.body ?? "the request is malformed")
        default:
            problem = Problem(.internalError, "an unexpected error occurred")
        }
        return Self.render(problem)
    }

    public static func render(_ problem: Problem) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/problem+json"
        headers[.cacheControl] = "no-store"
        if let w = problem.wwwAuthenticate { headers[.wwwAuthenticate] = w }
        if let r = problem.retryAfter { headers[.retryAfter] = String(r) }
        if let a = problem.allow { headers[.allow] = a }
        return Response(
            status: HTTPResponse.Status(code: problem.status), headers: headers,
            body: .init(byteBuffer: ByteBuffer(bytes: problem.body())))
    }
}
