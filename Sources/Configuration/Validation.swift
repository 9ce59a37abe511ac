import Foundation
import Observability

/// Parsers and checks for the string-shaped values. Each failure is a problem phrase that
/// never contains a secret.
enum Validation {
    struct Failure: Error {
        let problem: String
    }

    // MARK: - hosts and URLs

    /// A bind address: host name, IPv4, or IPv6 (with or without brackets).
    static func hostProblem(_ host: String) -> String? {
        let bytes = Array(host.utf8)
        if bytes.isEmpty { return "must not be empty" }
        if isIPv6(host) { return nil }
        if bytes.first == UInt8(ascii: "["), bytes.last == UInt8(ascii: "]"),
            isIPv6(String(decoding: bytes.dropFirst().dropLast(), as: UTF8.self))
        {
            return nil
        }
        if host.contains("://") || host.contains("/") { return "must be a host name or IP address, not a URL" }
        if host.contains(":") { return "must be a host name or IP address without a port" }
        return OriginPattern.isHostname(bytes[...]) ? nil : "must be a host name or IP address"
    }

    static func isIPv6(_ text: String) -> Bool {
        guard text.contains(":") else { return false }
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1
    }

    /// `http(s)://host[:port][/path]` without user info, query or fragment; returned without a trailing slash.
    static func httpURL(_ text: String) -> Result<String, Failure> {
        let shape = "must be an http:// or https:// URL with a host, like https://example.com:9443"
        guard let range = text.range(of: "://") else { return .failure(Failure(problem: shape)) }
        let scheme = text[..<range.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { return .failure(Failure(problem: shape)) }
        if text.utf8.contains(where: { $0 <= 32 || $0 >= 127 }) {
            return .failure(Failure(problem: "must not contain spaces or non-ASCII characters"))
        }
        let rest = text[range.upperBound...]
        if rest.contains("?") || rest.contains("#") {
            return .failure(Failure(problem: "must not have a query or fragment"))
        }
        let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        var path = String(rest[authorityEnd...])
        if authority.contains("@") { return .failure(Failure(problem: "must not contain user info (user@)")) }
        guard case .success(let (host, port)) = hostAndPort(authority) else {
            return .failure(Failure(problem: shape))
        }
        _ = port
        guard !host.isEmpty else { return .failure(Failure(problem: shape)) }
        while path.hasSuffix("/") { path.removeLast() }
        return .success(scheme + "://" + authority.lowercased() + path)
    }

    /// Splits `host[:port]` or `[v6][:port]`; checks both.
    static func hostAndPort(_ authority: Substring) -> Result<(String, Int?), Failure> {
        let bad = Failure(problem: "has an invalid host or port")
        var host: String
        var portText: Substring? = nil
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return .failure(bad) }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            guard isIPv6(host) else { return .failure(bad) }
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return .failure(bad) }
                portText = after.dropFirst()
            }
        } else {
            if let colon = authority.lastIndex(of: ":") {
                host = String(authority[..<colon])
                portText = authority[authority.index(after: colon)...]
            } else {
                host = String(authority)
            }
            guard OriginPattern.isHostname(Array(host.utf8)[...]) else { return .failure(bad) }
        }
        var port: Int? = nil
        if let portText {
            guard let value = OriginPattern.parsePort(Array(portText.utf8)[...]) else { return .failure(bad) }
            port = value
        }
        return .success((host.lowercased(), port))
    }

    /// `redis[s]://[[user]:password@]host[:port][/db]`.
    static func redisURL(_ text: String) -> Result<RedisURL, Failure> {
        let shape = "must be redis://[:password@]host[:port][/db] or rediss://…"
        let lowered = text.lowercased()
        let tls: Bool
        if lowered.hasPrefix("redis://") {
            tls = false
        } else if lowered.hasPrefix("rediss://") {
            tls = true
        } else {
            return .failure(Failure(problem: shape))
        }
        if text.utf8.contains(where: { $0 <= 32 || $0 >= 127 }) {
            return .failure(Failure(problem: "must not contain spaces or non-ASCII characters"))
        }
        var rest = Substring(text.dropFirst(tls ? 9 : 8))
        var username: String? = nil
        var password: Secret? = nil
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                let user = userinfo[..<colon]
                let pass = userinfo[userinfo.index(after: colon)...]
                guard let decodedUser = percentDecoded(user), let decodedPass = percentDecoded(pass) else {
                    return .failure(Failure(problem: "has invalid %-escapes in the user info"))
                }
                username = decodedUser.isEmpty ? nil : decodedUser
                password = decodedPass.isEmpty ? nil : Secret(decodedPass)
            } else {
                guard let decodedUser = percentDecoded(userinfo) else {
                    return .failure(Failure(problem: "has invalid %-escapes in the user info"))
                }
                username = decodedUser.isEmpty ? nil : decodedUser
            }
        }
        if rest.contains("?") || rest.contains("#") {
            return .failure(Failure(problem: "must not have a query or fragment; give the database as /db"))
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        if authority.isEmpty { return .failure(Failure(problem: "has no host; " + shape)) }
        guard case .success(let (host, port)) = hostAndPort(authority) else {
            return .failure(Failure(problem: "has an invalid host or port; " + shape))
        }
        var database = 0
        let path = rest[slash...].dropFirst()
        if !path.isEmpty {
            guard path.utf8.count <= 9, path.allSatisfy(\.isASCII), path.allSatisfy(\.isNumber), let db = Int(path)
            else {
                return .failure(Failure(problem: "must end with a database number (/0 to /999999999) or nothing"))
            }
            database = db
        }
        return .success(
            RedisURL(tls: tls, host: host, port: port ?? 6379, database: database, username: username, password: password)
        )
    }

    static func percentDecoded(_ text: Substring) -> String? {
        guard text.contains("%") else { return String(text) }
        return String(text).removingPercentEncoding
    }

    /// libpq's `sslmode` values, with libpq's meaning: `disable`; `allow` and `prefer` (TLS when the server offers
    /// it); `require` (TLS, the certificate not checked unless `sslrootcert` names a CA); `verify-ca` (the certificate
    /// chains to `sslrootcert`, or the system's CAs) and `verify-full` (and names the host).
    static let sslModes = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

    /// `sqlite:<path>` or `postgres://` / `postgresql://` URLs.
    static func database(_ text: String) -> Result<BrokerDatabase, Failure> {
        let shape = "must be sqlite:<path> or postgres://user@host[:port]/database"
        if text.hasPrefix("sqlite:") {
            var path = String(text.dropFirst("sqlite:".count))
            if path.hasPrefix("//") { path.removeFirst(2) }
            guard !path.isEmpty else { return .failure(Failure(problem: "has no path after sqlite:")) }
            return .success(.sqlite(path: path))
        }
        let lowered = text.lowercased()
        guard lowered.hasPrefix("postgres://") || lowered.hasPrefix("postgresql://") else {
            return .failure(Failure(problem: shape))
        }
        if text.utf8.contains(where: { $0 <= 32 || $0 >= 127 }) {
            return .failure(Failure(problem: "must not contain spaces or non-ASCII characters"))
        }
        var rest = Substring(text[text.range(of: "://")!.upperBound...])
        if let at = rest.lastIndex(of: "@") { rest = rest[rest.index(after: at)...] }
        let end = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let authority = rest[..<end]
        guard !authority.isEmpty, case .success = hostAndPort(authority) else {
            return .failure(Failure(problem: "has a missing or invalid host; " + shape))
        }
        // Everything after a `#` is a fragment to the PostgreSQL client: `…/db#?sslmode=verify-full` was checked here
        // as sslmode=verify-full and connected with the default (prefer: the certificate not checked).
        if text.contains("#") {
            return .failure(Failure(problem: "has a # (the client ignores it and everything after it); percent-encode # "
                                    + "in a user name or password as %23"))
        }
        // The parameters the broker's PostgreSQL client reads; any other would be silently ignored.
        if let parameters = queryParameters(of: rest) {
            var seen: Set<String> = []
            for parameter in parameters {
                let parts = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = parts[0].lowercased(), value = parts.count > 1 ? String(parts[1]) : ""
                // Given twice, libpq takes the last and the client the first: `sslmode=disable&sslmode=verify-full`
                // connected in clear where psql verifies the certificate.
                guard seen.insert(name).inserted else {
                    return .failure(Failure(problem: "has the parameter \"\(parts[0])\" more than once; give it once"))
                }
                switch name {
                case "sslmode":
                    guard Self.sslModes.contains(value) else {
                        return .failure(Failure(problem: "has sslmode=\(value); use one of "
                                                + Self.sslModes.joined(separator: ", ")))
                    }
                case "sslrootcert":
                    let path = percentDecoded(Substring(value)) ?? value
                    guard !path.isEmpty, FileManager.default.isReadableFile(atPath: path) else {
                        return .failure(Failure(problem: "has sslrootcert=\(value), which cannot be read (a PEM file of "
                                                + "the CA that signed the server's certificate)"))
                    }
                case "password":
                    continue
                default:
                    return .failure(Failure(problem: "has the parameter \"\(parts[0])\", which kisgw does not read "
                                            + "(it reads sslmode, sslrootcert and password)"))
                }
            }
        }
        // Read as the PostgreSQL client reads it: a password with `/`, `?`, `#` or `@` not percent-encoded passes the
        // checks above and failed only at start-up, with a message naming no key.
        guard let parsed = URLComponents(string: text), parsed.host?.isEmpty == false else {
            return .failure(Failure(problem: "is not a URL the PostgreSQL client can read; percent-encode /, ?, #, @ "
                                    + "and : in the user name and password (%2F %3F %23 %40 %3A)"))
        }
        return .success(.postgres(url: Secret(text)))
    }

    /// Whether a database or Redis URL carries a password: `user:password@` or `:password@` (a non-empty one), or
    /// a `password=` parameter. (`user@` names a user without a password.)
    static func carriesPassword(_ url: String) -> Bool {
        if let userinfo = userinfo(of: url), let colon = userinfo.firstIndex(of: ":"),
            userinfo.index(after: colon) < userinfo.endIndex
        {
            return true
        }
        return queryParameters(of: url[...])?.contains(where: isPassword) ?? false
    }

    /// Whether a URL names an empty password (`user:@host`), which a client would send as the password.
    static func hasEmptyPassword(_ url: String) -> Bool {
        guard let userinfo = userinfo(of: url) else { return false }
        return userinfo.hasSuffix(":")
    }

    /// The `name=value` parameters of a URL's query, as written (empty ones kept), or nil without a query.
    private static func queryParameters(of url: Substring) -> [Substring]? {
        guard let q = url.firstIndex(of: "?") else { return nil }
        return url[url.index(after: q)...].split(separator: "&", omittingEmptySubsequences: false)
    }

    private static func isPassword(_ parameter: Substring) -> Bool { parameter.lowercased().hasPrefix("password=") }

    /// The URL with everything between `://` and the last `@` replaced, and the value of a `password=` parameter,
    /// so a password never shows. Without an `@`, a colon in the authority that does not start a port
    /// (`redis://u:secret/0`, `redis://:secret`) may begin a password whose `@host` was left out: everything from
    /// that colon on is replaced.
    ///
    /// `hidingMalformed`, for the keys whose URL may carry a password ([redis] url, [broker] database): without `://`
    /// there is no telling where a password would be (`redis//:secret@host`, `redis:/:secret@h`, a password alone), so
    /// nothing of such a value is shown, but for a SQLite path.
    static func maskingPassword(_ url: String, hidingMalformed: Bool = false) -> String {
        guard !hidingMalformed || url.contains("://") || url.lowercased().hasPrefix("sqlite:") else {
            return "<\(url.count) characters, not shown: not a URL, and it may hold a password>"
        }
        var url = url
        if let parameters = queryParameters(of: url[...]), let q = url.firstIndex(of: "?") {
            url = String(url[...q]) + parameters.map { isPassword($0) ? "password=[REDACTED]" : String($0) }
                .joined(separator: "&")
        }
        guard let userinfo = userinfo(of: url) else {
            guard let colon = colonNotStartingAPort(url) else { return url }
            return String(url[...colon]) + "[REDACTED]"
        }
        let user = userinfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let masked = userinfo.contains(":") ? "\(user):[REDACTED]" : "[REDACTED]"
        return String(url[..<userinfo.startIndex]) + masked + String(url[userinfo.endIndex...])
    }

    /// In a URL without userinfo, the first colon of its authority (`://` up to `/`, `?` or `#`) that is not
    /// followed by a port's digits alone; a bracketed IPv6 address's colons do not count.
    private static func colonNotStartingAPort(_ url: String) -> String.Index? {
        guard let scheme = url.range(of: "://") else { return nil }
        let rest = url[scheme.upperBound...]
        let authority = rest[..<(rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex)]
        var host = authority
        if host.first == "[", let close = host.firstIndex(of: "]") { host = host[host.index(after: close)...] }
        guard let colon = host.firstIndex(of: ":") else { return nil }
        let port = host[host.index(after: colon)...]
        return port.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) ? nil : colon
    }

    /// What lies between `://` and the last `@`, if there is such a part.
    private static func userinfo(of url: String) -> Substring? {
        guard let scheme = url.range(of: "://"), let at = url.range(of: "@", options: .backwards),
            at.lowerBound > scheme.upperBound
        else { return nil }
        return url[scheme.upperBound..<at.lowerBound]
    }

    // MARK: - seal keys

    /// A key id as an error shows it: as written when it could be one (32 bytes at most), otherwise only its length —
    /// a longer name may be a key written where its id goes (a 32-byte key is 44 characters of base64).
    static func shownKeyID(_ id: String) -> String {
        id.utf8.count <= 32 ? id : "<\(id.utf8.count) characters, not shown: a key in place of its id?>"
    }

    /// Lower-case letters, digits and underscores, starting with a letter or digit, up to 32;
    /// `file` is taken by `KISGW_SEAL_KEYS_FILE`.
    static func keyIDProblem(_ id: String) -> String? {
        let bytes = Array(id.utf8)
        guard (1...32).contains(bytes.count),
            bytes.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 }), bytes[0] != 95
        else { return "must be a key id of 1 to 32 lower-case letters, digits and underscores, like k1" }
        if id == "file" { return "\"file\" cannot be a key id (KISGW_SEAL_KEYS_FILE names the keys file)" }
        return nil
    }

    /// Standard or URL-safe base64, padding optional, of exactly 32 bytes.
    static func sealKey(id: String, base64 text: String) -> Result<SealKey, Failure> {
        var normalized = String(text.map { $0 == "-" ? "+" : $0 == "_" ? "/" : $0 })
        if normalized.utf8.count % 4 != 0 { normalized += String(repeating: "=", count: 4 - normalized.utf8.count % 4) }
        guard !text.isEmpty, let data = Data(base64Encoded: normalized) else {
            return .failure(Failure(problem: "must be base64 of exactly 32 bytes, got text that is not base64"))
        }
        guard let key = SealKey(id: id, bytes: Array(data)) else {
            return .failure(Failure(problem: "must be base64 of exactly 32 bytes, got \(data.count) bytes"))
        }
        return .success(key)
    }

    // MARK: - suggestions

    /// The closest candidate for "did you mean": one the name is a prefix of (`warn` → `warning`),
    /// else the nearest within a small edit distance, a swap of neighbours counting as one edit.
    static func suggestion(for name: String, among candidates: some Sequence<String>) -> String? {
        let lowered = name.lowercased()
        let target = Array(lowered)
        var best: (String, Int)? = nil
        for candidate in candidates {
            let other = candidate.lowercased()
            if target.count >= 3, other.hasPrefix(lowered), other != lowered { return candidate }
            let distance = editDistance(target, Array(other))
            let limit = max(1, min(3, candidate.count / 3))
            if distance <= limit, distance < (best?.1 ?? Int.max) { best = (candidate, distance) }
        }
        return best?.0
    }

    /// Optimal string alignment distance: insertions, deletions, substitutions and swaps of neighbours.
    static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var beforePrevious = [Int](repeating: 0, count: b.count + 1)
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
                if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                    current[j] = min(current[j], beforePrevious[j - 2] + 1)
                }
            }
            (beforePrevious, previous, current) = (previous, current, beforePrevious)
        }
        return previous[b.count]
    }
}
