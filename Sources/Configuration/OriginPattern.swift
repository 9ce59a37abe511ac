/// One entry of `[cors] allow_origins`: an exact origin (`https://app.example.com`,
/// `http://localhost:3000`), the literal `null`, or a subdomain pattern
/// (`https://*.example.com`, which matches `https://a.example.com` and
/// `https://a.b.example.com` but not `https://example.com`).
///
/// ``matches(_:)`` compares an `Origin` header without allocating: scheme and host
/// case-insensitively, the port exactly (an explicit default port equals none), and
/// it refuses anything that is not a plain `scheme://host[:port]` (user info, paths,
/// trailing dots, odd characters), so suffix and prefix tricks such as
/// `https://evilexample.com` or `https://example.com.evil.com` do not match.
///
/// ```swift
/// let pattern = try #require(OriginPattern("https://*.example.com"))
/// pattern.matches("https://app.example.com")   // true
/// pattern.matches("https://example.com.evil")   // false
/// ```
public struct OriginPattern: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        case null
        case exact
        case subdomains
    }

    let kind: Kind
    /// Lower case, without `://`.
    let scheme: [UInt8]
    /// Lower case. For `.subdomains` the suffix with its leading dot: `.example.com`.
    let host: [UInt8]
    /// `nil` when the scheme's default port (or none) is meant.
    let port: Int?
    /// 443 for https, 80 for http, else `nil`; kept so matching never rebuilds it.
    let schemeDefaultPort: Int?

    /// The pattern in canonical form: lower case, default port left out.
    public let description: String

    /// Whether this is a `*.` pattern.
    public var isWildcard: Bool { kind == .subdomains }

    /// Parses a pattern; `nil` when it is not valid (see ``problem(with:)`` for why).
    public init?(_ text: String) {
        guard case .success(let pattern) = OriginPattern.parse(text) else { return nil }
        self = pattern
    }

    private init(kind: Kind, scheme: [UInt8], host: [UInt8], port: Int?) {
        self.kind = kind
        self.scheme = scheme
        self.host = host
        self.port = port
        self.schemeDefaultPort = OriginPattern.defaultPort(scheme)
        switch kind {
        case .null:
            description = "null"
        case .exact, .subdomains:
            let s = String(decoding: scheme, as: UTF8.self)
            let h = String(decoding: host, as: UTF8.self)
            description = s + "://" + (kind == .subdomains ? "*" : "") + h + (port.map { ":\($0)" } ?? "")
        }
    }

    /// Why `text` is not a valid pattern, or `nil` when it is.
    public static func problem(with text: String) -> String? {
        switch parse(text) {
        case .success: nil
        case .failure(let failure): failure.problem
        }
    }

    struct Failure: Error {
        let problem: String
    }

    static let shape = "must be an origin like https://app.example.com or http://localhost:3000, "
        + "a pattern like https://*.example.com, or null"

    static func parse(_ text: String) -> Result<OriginPattern, Failure> {
        func fail(_ problem: String) -> Result<OriginPattern, Failure> { .failure(Failure(problem: problem)) }
        if text == "null" { return .success(OriginPattern(kind: .null, scheme: [], host: [], port: nil)) }
        if text == "*" {
            return fail("a bare * is not allowed; list the origins, or use a pattern like https://*.example.com")
        }
        let bytes = Array(text.utf8)
        guard let separator = find(Array("://".utf8), in: bytes) else { return fail(shape) }
        let schemeBytes = bytes[..<separator].map(lower)
        guard let first = schemeBytes.first, isLetter(first),
            schemeBytes.allSatisfy({ isLetter($0) || isDigit($0) || $0 == 43 || $0 == 45 || $0 == 46 })
        else { return fail(shape) }
        var rest = bytes[(separator + 3)...]
        if rest.isEmpty { return fail(shape) }
        if rest.contains(UInt8(ascii: "@")) { return fail("must not contain user info (user@)") }
        if let bad = rest.firstIndex(where: { $0 == 47 || $0 == 63 || $0 == 35 }) {
            return fail(
                bytes[bad] == 47 && bad == bytes.count - 1
                    ? "must not end with a slash; an origin has no path" : "must not have a path, query or fragment")
        }
        if rest.contains(where: { $0 <= 32 || $0 >= 127 }) {
            return fail("must be ASCII without spaces (write international names in punycode, xn--…)")
        }
        // Split off the port.
        var port: Int? = nil
        var hostPart: ArraySlice<UInt8>
        if rest.first == UInt8(ascii: "[") {
            guard let close = rest.firstIndex(of: UInt8(ascii: "]")) else { return fail("has an unclosed [ in the host") }
            hostPart = rest[rest.startIndex...close]
            rest = rest[(close + 1)...]
            if !rest.isEmpty && rest.first != UInt8(ascii: ":") { return fail(shape) }
        } else if let colon = rest.lastIndex(of: UInt8(ascii: ":")) {
            hostPart = rest[..<colon]
            rest = rest[colon...]
        } else {
            hostPart = rest
            rest = rest[rest.endIndex...]
        }
        if rest.first == UInt8(ascii: ":") {
            let digits = rest.dropFirst()
            guard let value = parsePort(digits) else { return fail("has an invalid port; use 1 to 65535") }
            port = value
        }
        if port == defaultPort(schemeBytes) { port = nil }
        let host = hostPart.map(lower)
        if host.isEmpty { return fail("has no host") }
        if host.last == UInt8(ascii: ".") { return fail("must not end with a dot") }
        if host.starts(with: Array("*.".utf8)) {
            guard schemeBytes == Array("https".utf8) || schemeBytes == Array("http".utf8) else {
                return fail("may use a *. wildcard only with http or https")
            }
            let suffix = Array(host.dropFirst(2))
            if suffix.contains(UInt8(ascii: "*")) {
                return fail("may have one wildcard only, as the leftmost part: https://*.example.com")
            }
            guard isHostname(suffix[...]) else { return fail("has an invalid host after *.") }
            guard suffix.contains(UInt8(ascii: ".")) else {
                return fail("must name a registrable domain after *. (like *.example.com, not *.com)")
            }
            if suffix.split(separator: UInt8(ascii: ".")).allSatisfy({ $0.allSatisfy(isDigit) }) {
                return fail("may not put a wildcard in an IP address")
            }
            if sharedSuffixes.contains(String(decoding: suffix, as: UTF8.self)) {
                return fail("must name a registrable domain after *.; this one is a public or shared suffix")
            }
            return .success(OriginPattern(kind: .subdomains, scheme: schemeBytes, host: [46] + suffix, port: port))
        }
        if host.contains(UInt8(ascii: "*")) {
            return fail("may use * only as a whole leftmost label directly after the scheme: https://*.example.com")
        }
        if host.first == UInt8(ascii: "[") {
            guard host.count > 2, host.last == UInt8(ascii: "]"),
                host.dropFirst().dropLast().allSatisfy({ isHex($0) || $0 == 58 || $0 == 46 }),
                host.contains(58)
            else { return fail("has an invalid IPv6 address") }
        } else if !isHostname(host[...]) {
            return fail("has an invalid host")
        }
        return .success(OriginPattern(kind: .exact, scheme: schemeBytes, host: host, port: port))
    }

    /// Whether an `Origin` header value is allowed by this pattern.
    public func matches(_ origin: String) -> Bool {
        if let result = origin.utf8.withContiguousStorageIfAvailable({ matches(bytes: $0) }) {
            return result
        }
        return Array(origin.utf8).withUnsafeBufferPointer { matches(bytes: $0) }
    }

    private func matches(bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        let n = bytes.count
        if kind == .null {
            return n == 4 && bytes[0] == 110 && bytes[1] == 117 && bytes[2] == 108 && bytes[3] == 108
        }
        // scheme://
        let schemeCount = scheme.count
        guard n > schemeCount + 3 else { return false }
        for i in 0..<schemeCount where OriginPattern.lower(bytes[i]) != scheme[i] { return false }
        guard bytes[schemeCount] == 58, bytes[schemeCount + 1] == 47, bytes[schemeCount + 2] == 47 else {
            return false
        }
        // host
        let hostStart = schemeCount + 3
        var i = hostStart
        if bytes[i] == UInt8(ascii: "[") {
            while i < n, bytes[i] != UInt8(ascii: "]") {
                let b = bytes[i]
                guard b == 91 || b == 58 || b == 46 || OriginPattern.isHex(b) else { return false }
                i += 1
            }
            guard i < n else { return false }
            i += 1
        } else {
            while i < n, bytes[i] != 58 {
                let b = bytes[i]
                guard OriginPattern.isLetter(b) || OriginPattern.isDigit(b) || b == 45 || b == 46 else { return false }
                i += 1
            }
        }
        let hostEnd = i
        // :port
        var originPort: Int? = nil
        if i < n {
            guard bytes[i] == 58, n - i - 1 >= 1, n - i - 1 <= 5, bytes[i + 1] != 48 else { return false }
            var value = 0
            for j in (i + 1)..<n {
                guard OriginPattern.isDigit(bytes[j]) else { return false }
                value = value * 10 + Int(bytes[j] - 48)
            }
            guard value <= 65535 else { return false }
            originPort = value == schemeDefaultPort ? nil : value
        }
        guard originPort == port else { return false }
        let hostCount = hostEnd - hostStart
        guard hostCount > 0, hostCount <= 253 else { return false }
        switch kind {
        case .null:
            return false
        case .exact:
            guard hostCount == host.count else { return false }
            for k in 0..<hostCount where OriginPattern.lower(bytes[hostStart + k]) != host[k] { return false }
            return true
        case .subdomains:
            let suffixCount = host.count
            guard hostCount > suffixCount else { return false }
            let prefixEnd = hostEnd - suffixCount
            for k in 0..<suffixCount where OriginPattern.lower(bytes[prefixEnd + k]) != host[k] { return false }
            // The part before the suffix must be whole labels: no empty label, no leading or trailing dash.
            var labelStart = hostStart
            for k in hostStart...prefixEnd {
                if k == prefixEnd || bytes[k] == 46 {
                    let length = k - labelStart
                    guard length >= 1, length <= 63, bytes[labelStart] != 45, bytes[k - 1] != 45 else { return false }
                    guard bytes[labelStart] != 91 else { return false }
                    labelStart = k + 1
                }
            }
            return true
        }
    }

    // MARK: - bytes

    @inline(__always) static func lower(_ b: UInt8) -> UInt8 { b >= 65 && b <= 90 ? b + 32 : b }
    @inline(__always) static func isLetter(_ b: UInt8) -> Bool { (b >= 65 && b <= 90) || (b >= 97 && b <= 122) }
    @inline(__always) static func isDigit(_ b: UInt8) -> Bool { b >= 48 && b <= 57 }
    @inline(__always) static func isHex(_ b: UInt8) -> Bool {
        isDigit(b) || (b >= 97 && b <= 102) || (b >= 65 && b <= 70)
    }

    static func defaultPort(_ scheme: [UInt8]) -> Int? {
        if scheme.elementsEqual("https".utf8) { return 443 }
        if scheme.elementsEqual("http".utf8) { return 80 }
        return nil
    }

    static func parsePort(_ digits: ArraySlice<UInt8>) -> Int? {
        guard (1...5).contains(digits.count), digits.allSatisfy(isDigit), digits.first != 48 else { return nil }
        let value = digits.reduce(0) { $0 * 10 + Int($1 - 48) }
        return (1...65535).contains(value) ? value : nil
    }

    /// A DNS name or dotted IPv4 address, ASCII, without a trailing dot.
    static func isHostname(_ host: ArraySlice<UInt8>) -> Bool {
        guard !host.isEmpty, host.count <= 253 else { return false }
        let labels = host.split(separator: 46, omittingEmptySubsequences: false)
        for label in labels {
            guard (1...63).contains(label.count), label.first != 45, label.last != 45,
                label.allSatisfy({ isLetter($0) || isDigit($0) || $0 == 45 })
            else { return false }
        }
        if labels.allSatisfy({ $0.allSatisfy(isDigit) }) {
            return labels.count == 4 && labels.allSatisfy { label in label.count <= 3 && Int(String(decoding: label, as: UTF8.self))! <= 255 }
        }
        return true
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start..<(start + needle.count)].elementsEqual(needle) {
            return start
        }
        return nil
    }

    /// Suffixes under which anyone can register a name: a wildcard over them would admit strangers.
    /// Not the whole public suffix list; the ones a Korean or global deployment is likely to try.
    static let sharedSuffixes: Set<String> = [
        "co.kr", "or.kr", "ne.kr", "re.kr", "go.kr", "ac.kr", "pe.kr", "kr.com",
        "co.uk", "org.uk", "ac.uk", "com.au", "net.au", "co.jp", "ne.jp", "or.jp", "com.cn", "com.br", "co.in",
        "github.io", "gitlab.io", "vercel.app", "netlify.app", "pages.dev", "workers.dev", "web.app",
        "firebaseapp.com", "herokuapp.com", "appspot.com", "azurewebsites.net", "cloudfront.net",
        "amazonaws.com", "ngrok.io", "ngrok-free.app", "onrender.com", "fly.dev", "repl.co", "glitch.me",
    ]
}
