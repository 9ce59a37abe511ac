import KisgwConfiguration
import Testing

@Suite("OriginPattern")
struct OriginPatternTests {
    /// (pattern, origin, allowed)
    static let matrix: [(String, String, Bool)] = [
        // Subdomain wildcard.
        ("https://*.example.com", "https://a.example.com", true),
        ("https://*.example.com", "https://a.b.example.com", true),
        ("https://*.example.com", "https://A.EXAMPLE.COM", true),
        ("https://*.example.com", "HTTPS://a.example.com", true),
        ("https://*.example.com", "https://a.example.com:443", true),
        ("https://*.example.com", "https://xn--9n2bp8q.example.com", true),
        ("https://*.example.com", "https://example.com", false),
        ("https://*.example.com", "https://evilexample.com", false),
        ("https://*.example.com", "https://xexample.com", false),
        ("https://*.example.com", "https://.example.com", false),
        ("https://*.example.com", "https://a..example.com", false),
        ("https://*.example.com", "https://-a.example.com", false),
        ("https://*.example.com", "https://a-.example.com", false),
        ("https://*.example.com", "https://a_b.example.com", false),
        ("https://*.example.com", "https://example.com.evil.com", false),
        ("https://*.example.com", "https://a.example.com.evil.com", false),
        ("https://*.example.com", "https://a.example.com.", false),
        ("https://*.example.com", "https://a.example.comm", false),
        ("https://*.example.com", "https://a.example.co", false),
        ("https://*.example.com", "http://a.example.com", false),
        ("https://*.example.com", "wss://a.example.com", false),
        ("https://*.example.com", "https://a.example.com:8443", false),
        ("https://*.example.com", "https://a.example.com:", false),
        ("https://*.example.com", "https://a.example.com:0443", false),
        ("https://*.example.com", "https://a.example.com:443x", false),
        ("https://*.example.com", "https://user@a.example.com", false),
        ("https://*.example.com", "https://evil.com@a.example.com", false),
        ("https://*.example.com", "https://a.example.com@evil.com", false),
        ("https://*.example.com", "https://a.example.com/", false),
        ("https://*.example.com", "https://a.example.com/path", false),
        ("https://*.example.com", "https://a.example.com?x", false),
        ("https://*.example.com", "https://a.example.com#x", false),
        ("https://*.example.com", "https://a.example.com%2e", false),
        ("https://*.example.com", "https://a .example.com", false),
        ("https://*.example.com", "https://[::1].example.com", false),
        ("https://*.example.com", "https:/a.example.com", false),
        ("https://*.example.com", "https//a.example.com", false),
        ("https://*.example.com", "null", false),
        ("https://*.example.com", "", false),
        ("https://*.example.com", "https://", false),
        ("https://*.example.com:8443", "https://a.example.com:8443", true),
        ("https://*.example.com:8443", "https://a.example.com", false),
        // Exact origins.
        ("https://example.com", "https://example.com", true),
        ("https://example.com", "https://EXAMPLE.com", true),
        ("https://example.com", "https://example.com:443", true),
        ("https://example.com", "http://example.com", false),
        ("https://example.com", "http://example.com:443", false),
        ("https://example.com", "https://example.com:8443", false),
        ("https://example.com", "https://example.com.", false),
        ("https://example.com", "https://www.example.com", false),
        ("https://example.com", "https://evilexample.com", false),
        ("https://example.com", "https://example.com.evil.com", false),
        ("https://example.com", "https://example.co", false),
        ("https://example.com", "https://example.comm", false),
        ("https://example.com", "https://example.com@evil.com", false),
        ("https://example.com", "https://evil.com#@example.com", false),
        ("https://example.com", "https://example.com/", false),
        ("https://example.com", "https://example.com ", false),
        ("https://example.com", " https://example.com", false),
        ("https://example.com", "null", false),
        ("HTTPS://Example.COM:443", "https://example.com", true),
        ("http://example.com:80", "http://example.com", true),
        ("http://localhost:3000", "http://localhost:3000", true),
        ("http://localhost:3000", "http://LOCALHOST:3000", true),
        ("http://localhost:3000", "http://localhost", false),
        ("http://localhost:3000", "http://localhost:30000", false),
        ("http://localhost:3000", "http://localhost:300", false),
        ("http://localhost:3000", "http://localhost:03000", false),
        ("http://localhost:3000", "https://localhost:3000", false),
        ("http://localhost:3000", "http://localhost.:3000", false),
        ("http://localhost:3000", "http://127.0.0.1:3000", false),
        ("http://127.0.0.1:5173", "http://127.0.0.1:5173", true),
        ("http://127.0.0.1:5173", "http://127.0.0.10:5173", false),
        ("http://[::1]:8080", "http://[::1]:8080", true),
        ("http://[::1]:8080", "http://[::1]", false),
        ("http://[::1]:8080", "http://[::2]:8080", false),
        ("capacitor://localhost", "capacitor://localhost", true),
        ("capacitor://localhost", "capacitor://localhost:80", false),
        // The literal null.
        ("null", "null", true),
        ("null", "NULL", false),
        ("null", "null ", false),
        ("null", "https://null", false),
        ("null", "", false),
    ]

    @Test(arguments: matrix)
    func matches(pattern: String, origin: String, allowed: Bool) throws {
        let parsed = try #require(OriginPattern(pattern), "\(pattern) did not parse")
        #expect(parsed.matches(origin) == allowed, "\(pattern) vs \(origin)")
        // The result does not depend on how the string is stored.
        let bridged = String(decoding: Array(origin.utf8), as: UTF8.self)
        #expect(parsed.matches(bridged) == allowed)
    }

    @Test(arguments: [
        ("null", "null", false),
        ("http://localhost:3000", "http://localhost:3000", false),
        ("HTTPS://Example.COM:443", "https://example.com", false),
        ("https://example.com:8443", "https://example.com:8443", false),
        ("https://*.Example.com", "https://*.example.com", true),
        ("https://*.example.com:443", "https://*.example.com", true),
        ("http://[::1]:8080", "http://[::1]:8080", false),
        ("capacitor://localhost", "capacitor://localhost", false),
    ])
    func canonicalForm(pattern: String, canonical: String, wildcard: Bool) throws {
        let parsed = try #require(OriginPattern(pattern))
        #expect(parsed.description == canonical)
        #expect(parsed.isWildcard == wildcard)
        #expect(OriginPattern.problem(with: pattern) == nil)
    }

    @Test(arguments: [
        "*", "", "https://*", "https://*.", "https://foo*.example.com", "https://*foo.example.com", "https://a.*.example.com",
        "https://*.*.example.com", "*.example.com", "*.com", "https://*.com", "https://*.localhost", "https://*.co.kr",
        "https://*.github.io", "https://*.1.2.3", "ftp://*.example.com", "example.com", "//example.com", "https://",
        "https://example.com/", "https://example.com/app", "https://example.com?x=1", "https://example.com#f",
        "https://user@example.com", "https://user:pw@example.com", "https://example.com:0", "https://example.com:65536",
        "https://example.com:08080", "https://example.com:", "https://example.com.", "https://exa mple.com",
        "https://exa_mple.com", "https://-example.com", "https://예시.com", "https://[::1", "https://[zz]:80",
        "1http://example.com", "NULL", "https://256.1.1.1",
    ])
    func invalidPatterns(pattern: String) {
        #expect(OriginPattern(pattern) == nil, "\(pattern) parsed")
        #expect(OriginPattern.problem(with: pattern) != nil)
    }

    @Test func corsAllowsAnyListedPattern() throws {
        let config = try load("[cors]\nallow_origins = [\"https://app.example.com\", \"https://*.preview.example.com\"]\n")
        #expect(config.cors.allows(origin: "https://app.example.com"))
        #expect(config.cors.allows(origin: "https://pr-12.preview.example.com"))
        #expect(!config.cors.allows(origin: "https://preview.example.com"))
        #expect(!config.cors.allows(origin: "https://evil.example.com"))
        #expect(!config.cors.allows(origin: "null"))
        #expect(KisgwConfig.defaults.cors.allows(origin: "http://localhost:3000"))
        let none = try load("[cors]\nallow_origins = []\n")
        #expect(!none.cors.allows(origin: "http://localhost:3000"))
    }
}
