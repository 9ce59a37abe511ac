import Foundation
public import Hummingbird
import HTTPTypes
import NIOCore

/// Adds the web UI's routes to a router (the broker's, so the page's token calls are same-origin):
///
/// - `GET /` — `index.html`
/// - `GET /ui/config.json` — ``webConfigJSON(gatewayURL:demo:maxRangeDays:)``, e.g.
///   `{"demo":true,"gatewayUrl":"http://127.0.0.1:8000","maxRangeDays":3660}`
/// - `GET /ui/<file>` — one of `WebAssets.fileNames`, else 404
///
/// Every answer has `Cache-Control: no-cache` (the browser revalidates, so a new binary's assets are seen at
/// once), `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`; the page also gets a
/// Content-Security-Policy (``webContentSecurityPolicy(gatewayURL:)``) that allows scripts and styles from the same
/// origin only, and fetches to the same origin (the broker's token calls) and to the gateway's origin only.
///
/// ```swift
/// let router = Router(context: BasicRequestContext.self)
/// addWebRoutes(to: router, gatewayURL: "http://127.0.0.1:8000", demo: true, maxRangeDays: 3660)
/// ```
public func addWebRoutes(to router: Router<BasicRequestContext>, gatewayURL: String, demo: Bool, maxRangeDays: Int) {
    let config = webConfigJSON(gatewayURL: gatewayURL, demo: demo, maxRangeDays: maxRangeDays)
    let policy = webContentSecurityPolicy(gatewayURL: gatewayURL)
    router.get("/") { _, _ in
        guard let page = WebAssets.asset(path: "index.html") else { return webNotFound() }
        var headers = webHeaders(contentType: page.contentType)
        headers[.contentSecurityPolicy] = policy
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: page.bytes)))
    }
    router.get("/ui/{file}") { _, context in
        let file = context.parameters.get("file") ?? ""
        if file == "config.json" {
            return Response(
                status: .ok, headers: webHeaders(contentType: "application/json; charset=utf-8"),
                body: .init(byteBuffer: ByteBuffer(string: config)))
        }
        guard let asset = WebAssets.asset(path: file) else { return webNotFound() }
        var headers = webHeaders(contentType: asset.contentType)
        if file.hasSuffix(".html") { headers[.contentSecurityPolicy] = policy }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: asset.bytes)))
    }
}

/// The page's `/ui/config.json`: where the gateway is (its base URL as browsers reach it), whether the broker
/// runs the demo's sign-in (`POST /api/dev/signin`) or the page asks for a JWT, and the gateway's `[limits]
/// max_range_days`, which bounds the ranges the page fills in itself.
public func webConfigJSON(gatewayURL: String, demo: Bool, maxRangeDays: Int) -> String {
    struct Config: Encodable {
        var gatewayUrl: String
        var demo: Bool
        var maxRangeDays: Int
    }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    let data = (try? encoder.encode(Config(gatewayUrl: gatewayURL, demo: demo, maxRangeDays: maxRangeDays))) ?? Data("{}".utf8)
    return String(decoding: data, as: UTF8.self)
}

/// The page's Content-Security-Policy. `connect-src` names the page's own origin (the broker's `/api/kis/*`) and the
/// gateway's origin — `scheme://host[:port]` of `gatewayURL`, a URL `[broker] ui_gateway_url` has validated — and
/// nothing else, so a script that got into the page cannot send a token anywhere with `fetch`. A `gatewayURL`
/// without `://` (not one kisgw builds) leaves only `'self'`.
public func webContentSecurityPolicy(gatewayURL: String) -> String {
    var connect = "'self'"
    if let schemeEnd = gatewayURL.range(of: "://") {
        let rest = gatewayURL[schemeEnd.upperBound...]
        let authority = rest[..<(rest.firstIndex(of: "/") ?? rest.endIndex)]
        if !authority.isEmpty,
            !authority.contains(where: { $0 == ";" || $0 == "," || $0 == "'" || $0.isWhitespace })
        {
            connect += " " + gatewayURL[..<schemeEnd.upperBound].lowercased() + authority
        }
    }
    return "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src \(connect); "
        + "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}

let referrerPolicy = HTTPField.Name("Referrer-Policy")!

func webHeaders(contentType: String) -> HTTPFields {
    var headers = HTTPFields()
    headers[.contentType] = contentType
    headers[.cacheControl] = "no-cache"
    headers[.xContentTypeOptions] = "nosniff"
    headers[referrerPolicy] = "no-referrer"
    return headers
}

func webNotFound() -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/problem+json"
    headers[.cacheControl] = "no-store"
    let body = #"{"type":"https://kisgw.dev/problems/not_found","title":"Not Found","status":404,"code":"not_found","detail":"no such file"}"#
    return Response(status: .notFound, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
}
