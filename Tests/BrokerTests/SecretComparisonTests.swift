@testable import Broker
import Testing

@Suite("App secrets are compared in constant time, byte for byte")
struct SecretComparisonTests {
    @Test("equal, different, different lengths, empty")
    func secretsEqualCases() {
        #expect(secretsEqual("secret-PSabc", "secret-PSabc"))
        #expect(secretsEqual("", ""))
        #expect(!secretsEqual("secret-PSabc", "secret-PSabd"))  // the last byte
        #expect(!secretsEqual("xecret-PSabc", "secret-PSabc"))  // the first byte
        #expect(!secretsEqual("secret", "secret-PSabc"))  // a prefix, either way round
        #expect(!secretsEqual("secret-PSabc", "secret"))
        #expect(!secretsEqual("", "s"))
        #expect(!secretsEqual("s", ""))
        #expect(!secretsEqual("secret\u{0}", "secret"))  // a trailing NUL is a byte like any other
        // Bytes, not Swift's canonical equivalence: "é" precomposed and decomposed are two secrets.
        #expect(!secretsEqual("caf\u{E9}", "cafe\u{301}"))
    }
}
