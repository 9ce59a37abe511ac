public import Hummingbird

/// Refuses requests whose `Host` is not a loopback name: `kisgw demo`'s broker mints a JWT for anyone and serves
/// the UI on 127.0.0.1, so a web page elsewhere must not reach it.
///
/// A browser keeps a page's origin when the page's name is made to resolve to 127.0.0.1 (DNS rebinding): a page of
/// `http://evil.example:8080` would then talk to the demo as its own origin, CORS notwithstanding. The one thing
/// that still names the attacker's site is `Host`, which the browser sets to the page's name. Only `127.0.0.1`,
/// `localhost` and `[::1]` (any port, any letter case) pass; anything else, or no `Host`, is a 400
/// `invalid_parameter` that names the header.
public struct LoopbackHostMiddleware<Context: RequestContext>: RouterMiddleware {
    public init() {}

    public func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard let host = request.head.authority, Self.isLoopback(host) else {
            throw Problem(.invalidParameter,
                          "Host: the demo answers only requests for 127.0.0.1 or localhost (a page served from "
                          + "another name must not use it)")
        }
        return try await next(request, context)
    }

    /// Whether an authority (`host[:port]`) names the loopback interface.
    public static func isLoopback(_ authority: String) -> Bool {
        var name = Substring(authority)
        if name.hasPrefix("[") {
            // An IPv6 literal: `[::1]` or `[::1]:port`.
            guard let close = name.firstIndex(of: "]") else { return false }
            let rest = name[name.index(after: close)...]
            guard rest.isEmpty || isPort(rest.dropFirst()) && rest.first == ":" else { return false }
            return name[...close].utf8.elementsEqual("[::1]".utf8)
        }
        if let colon = name.firstIndex(of: ":") {
            guard isPort(name[name.index(after: colon)...]) else { return false }
            name = name[..<colon]
        }
        // Bytes, not Swift's `==` (which equates canonically equivalent text); `localhost` in any ASCII letter case
        // (its bytes are all letters, so `| 0x20` folds nothing else onto them).
        return name.utf8.elementsEqual("127.0.0.1".utf8)
            || name.utf8.count == 9 && zip(name.utf8, "localhost".utf8).allSatisfy { $0 | 0x20 == $1 }
    }

    private static func isPort(_ s: Substring) -> Bool {
        !s.isEmpty && s.count <= 5 && s.utf8.allSatisfy { $0 >= 48 && $0 <= 57 }
    }
}
