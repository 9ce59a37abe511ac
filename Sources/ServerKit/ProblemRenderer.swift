public import Hummingbird
import HTTPTypes
public import NIOCore
import Synchronization

/// Turns whatever a handler threw into an `application/problem+json` answer. Unknown routes become
/// `not_found`, a known path with another method `method_not_allowed` (with `Allow`); a plain `OPTIONS` on a path
/// that allows it is answered `204` with `Allow`.
public struct ProblemRenderer: Sendable {
    /// For a path with no route for this method: the methods it has (for 405), or nil (404).
    public let allowedMethods: @Sendable (_ path: String) -> String?

    public init(allowedMethods: @escaping @Sendable (_ path: String) -> String?) {
        self.allowedMethods = allowedMethods
    }

    public func response(for error: any Error, request: Request) -> Response {
        // A plain `OPTIONS` (a preflight is answered by the CORS middleware) asks which methods a route has
        // (RFC 9110 §9.3.7): where they include `OPTIONS`, say so instead of refusing it.
        if request.method == .options, let error = error as? HTTPError,
            error.status == .notFound || error.status == .methodNotAllowed,
            let allow = allowedMethods(request.uri.path),
            allow.split(separator: ",").contains(where: { $0.drop(while: { $0 == " " }) == "OPTIONS" })
        {
            return Response(status: .noContent, headers: [.allow: allow])
        }
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
        let r = rendered(problem)
        return Response(status: HTTPResponse.Status(code: problem.status), headers: r.headers,
                        body: .init(byteBuffer: r.body))
    }

    /// A problem's headers (without `Content-Length`) and encoded body.
    public struct Rendered: Sendable {
        public let headers: HTTPFields
        public let body: ByteBuffer
    }

    /// Problems are a small set of fixed texts (a bad JWT is answered the same way every time), so each distinct
    /// one is encoded once and kept (bounded): no JSON work per error answer.
    private static let renderedCache = Mutex<[RenderKey: Rendered]>([:])

    /// Everything of a problem that shows in its answer (by value: no string is built to look one up).
    private struct RenderKey: Hashable {
        let code: Problem.Code
        let detail: String
        let retryAfter: Int?
        let kisMsgCode: String?
        let kisMessage: String?
        let allow: String?
    }

    public static func rendered(_ problem: Problem) -> Rendered {
        let key = RenderKey(code: problem.code, detail: problem.detail, retryAfter: problem.retryAfter,
                            kisMsgCode: problem.kisMsgCode, kisMessage: problem.kisMessage, allow: problem.allow)
        if let hit = renderedCache.withLock({ $0[key] }) { return hit }
        var headers = HTTPFields()
        headers[.contentType] = "application/problem+json"
        headers[.cacheControl] = "no-store"
        if let w = problem.wwwAuthenticate { headers[.wwwAuthenticate] = w }
        if let r = problem.retryAfter { headers[.retryAfter] = String(r) }
        if let a = problem.allow { headers[.allow] = a }
        let r = Rendered(headers: headers, body: ByteBuffer(bytes: problem.body()))
        renderedCache.withLock { c in
            if c.count >= 256 { c.removeAll(keepingCapacity: true) }
            c[key] = r
        }
        return r
    }
}
