public import Hummingbird
import HTTPTypes
import NIOCore
public import KisgwConfiguration

/// CORS as the gateway spec says, around every route — including error answers, so browser code can read them.
///
/// - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed origin: 204 with
///   the allow headers; from any other origin: 403 with none. No authentication is asked of a preflight.
/// - Other requests from an allowed origin get `Access-Control-Allow-Origin` (the origin, never `*`),
///   `-Allow-Credentials` and `-Expose-Headers`; from other origins, nothing.
/// - Every answer carries `Vary: Origin`.
/// - Errors thrown below become `application/problem+json` here (see `ProblemRenderer`).
public struct CORSMiddleware<Context: RequestContext>: RouterMiddleware {
    public let cors: KisgwConfig.CORS
    public let renderer: ProblemRenderer
    /// `Access-Control-Allow-Methods` of a preflight: the methods this server's routes take.
    public let allowMethods: String

    public init(cors: KisgwConfig.CORS, renderer: ProblemRenderer, allowMethods: String) {
        self.cors = cors
        self.renderer = renderer
        self.allowMethods = allowMethods
    }

    public func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let origin = request.headers[.origin]
        let allowed = origin.map { cors.allows(origin: $0) } ?? false
        if request.method == .options, origin != nil, request.headers[.accessControlRequestMethod] != nil {
            var headers = HTTPFields()
            headers[.vary] = "Origin"
            guard allowed, let origin else {
                // An empty body of known length (`Content-Length: 0`), not an empty chunked one.
                return Response(status: .forbidden, headers: headers, body: .init(byteBuffer: ByteBuffer()))
            }
            headers[.accessControlAllowOrigin] = origin
            if cors.allowCredentials { headers[.accessControlAllowCredentials] = "true" }
            headers[.accessControlAllowMethods] = allowMethods
            headers[.accessControlAllowHeaders] = CORSHeaderValues.allowHeaders
            headers[.accessControlMaxAge] = String(cors.maxAgeS)
            return Response(status: .noContent, headers: headers)
        }
        var response: Response
        do {
            response = try await next(request, context)
        } catch {
            response = renderer.response(for: error, request: request)
        }
        response.headers[.vary] = "Origin"
        if allowed, let origin {
            response.headers[.accessControlAllowOrigin] = origin
            if cors.allowCredentials { response.headers[.accessControlAllowCredentials] = "true" }
            response.headers[.accessControlExposeHeaders] = CORSHeaderValues.exposeHeaders
        }
        return response
    }
}

/// The fixed values of the CORS headers (also written by the gateway's hit path).
public enum CORSHeaderValues {
    /// The gateway's methods, as `gateway-api.md` lists them.
    public static let gatewayMethods = "GET, POST, OPTIONS"
    /// The broker's: its API also deletes (`DELETE /api/kis/account`).
    public static let brokerMethods = "GET, POST, DELETE, OPTIONS"
    public static let allowHeaders = "Authorization, X-KIS-Token, Content-Type, If-None-Match"
    public static let exposeHeaders = "ETag, X-Cache, Age, Retry-After, Server-Timing"
}
