import Foundation
import Logging
import Observability
import Testing

/// A KIS-style access token (a JWT) and other samples that must never show.
enum Samples {
    static let jwt =
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJ0b2tlbiIsImF1ZCI6IjEyMyIsImV4cCI6MTc2NDEwMDAwMH0"
        + ".Xk3mQ9vR2pL8sT1uW4yZ7aB0cD5eF6gH9iJ2kL3mN4oP5qR6sT7uV8wX9yZ0aB1cD2eF3gH4iJ5kL6mN7oP8q"
    static let appKey = "PSg5dctL9eaU6xAbCdEfGhIjKlMnOpQrStUv"
    static let appSecret =
        "8s9dF+kLmN0pQrStUvWxYz1aB2cD3eF4gH5iJ6kL7mN8oP9qR0sT1uV2wX3yZ4aB5cD6eF7gH8iJ9kL0mN1oP2qR3sT4uV5wX6y/Z7a="
    static let account = "12345678-01"
}

@Suite("Redact helpers")
struct RedactTests {
    @Test func tokenFingerprintIsShortStableAndNonReversible() throws {
        let fingerprint = Redact.token(Samples.jwt)
        #expect(fingerprint.hasPrefix("sha256:"))
        #expect(fingerprint.count == 15)
        #expect(fingerprint == Redact.token(Samples.jwt))
        #expect(fingerprint != Redact.token(Samples.jwt + "x"))
        #expect(!fingerprint.contains("eyJ"))
        // SHA-256("abc") = ba7816bf…
        #expect(Redact.token("abc") == "sha256:ba7816bf")
    }

    @Test(arguments: [
        ("PSabcdefghijklmnopqrstuvwxyz", "PSab…wxyz"),
        (Samples.appKey, "PSg5…StUv"),
        ("short", "****"),
        ("", "****"),
        ("123456789012345", "****"),
    ])
    func appKeyMask(input: String, expected: String) {
        #expect(Redact.appKeyMasked(input) == expected)
    }

    @Test(arguments: [
        ("12345678-01", "1234****-01"),
        ("1234567801", "1234****01"),
        ("12345678", "1234****"),
        ("1234-5678", "****"),
        ("abcdefgh-01", "****"),
        ("", "****"),
    ])
    func accountMask(input: String, expected: String) {
        #expect(Redact.accountNumberMasked(input) == expected)
    }

    @Test func secretValueIsAlwaysThePlaceholder() {
        #expect(Redact.secretValue("hunter2") == "[REDACTED]")
        #expect(Redact.secretValue(42) == "[REDACTED]")
    }

    @Test(arguments: [
        "token", "TOKEN", "access_token", "Access-Token", "app_key", "appkey", "AppKey", "app_secret", "appsecret",
        "secret", "password", "Authorization", "authorization", "x-kis-token", "X-KIS-TOKEN", "account_number",
        "db_password", "refresh_token", "client_secret",
    ])
    func secretNames(name: String) {
        #expect(Redact.isSecretName(name))
    }

    @Test(arguments: ["symbol", "cache_key", "token_fp", "request_id", "path", "status", "tokens_issued", "label"])
    func ordinaryNames(name: String) {
        #expect(!Redact.isSecretName(name))
    }

    @Test(arguments: [
        // (input, what must not remain, what must remain)
        ("Authorization: Bearer \(Samples.jwt)", Samples.jwt, "Authorization: Bearer [REDACTED]"),
        ("got token \(Samples.jwt) from KIS", Samples.jwt, "got token [REDACTED] from KIS"),
        ("appkey=\(Samples.appKey)&x=1", Samples.appKey, "appkey=[REDACTED]&x=1"),
        ("{\"appsecret\": \"\(Samples.appSecret)\"}", Samples.appSecret, "{\"appsecret\": \"[REDACTED]\"}"),
        ("raw \(Samples.appSecret) end", Samples.appSecret, "raw [REDACTED] end"),
        ("password=hunter2 ok", "hunter2", "password=[REDACTED] ok"),
        ("account \(Samples.account) ok", Samples.account, "account 1234****-01 ok"),
        ("account 1234567801.", "1234567801", "account 1234****01."),
        ("x-kis-token: abc.def", "abc.def", "x-kis-token: [REDACTED]"),
    ])
    func scrubRemovesSecrets(input: String, secret: String, expected: String) {
        let scrubbed = Redact.scrub(input)
        #expect(!scrubbed.contains(secret))
        #expect(scrubbed == expected)
    }

    @Test(arguments: [
        "GET /uapi/domestic-stock/v1/quotations/inquire-daily-itemchartprice 200",
        "cache hit kisgw:chart:005930:20240101:20241231",
        "request 550e8400-e29b-41d4-a716-446655440000 done",
        "listening on https://127.0.0.1:8000",
        "token_fp=sha256:1a2b3c4d rotated",
        "2026-11-25T20:04:48.123Z took 12345 ms",
        "12345678901234567890 is not an account",
        "",
    ])
    func scrubLeavesOrdinaryTextAlone(input: String) {
        #expect(Redact.scrub(input) == input)
    }

    @Test func scrubMetadataRedactsSecretKeysAndPatternsRecursively() {
        let metadata: Logger.Metadata = [
            "app_secret": "short",
            "Authorization": "Bearer x",
            "nested": ["access_token": "abc", "note": "\(Samples.jwt)"],
            "list": ["ok", .stringConvertible(Samples.account)],
            "symbol": "005930",
        ]
        let scrubbed = Redact.scrub(metadata)
        #expect(scrubbed["app_secret"] == "[REDACTED]")
        #expect(scrubbed["Authorization"] == "[REDACTED]")
        #expect(scrubbed["nested"] == ["access_token": "[REDACTED]", "note": "[REDACTED]"])
        #expect(scrubbed["list"] == ["ok", "1234****-01"])
        #expect(scrubbed["symbol"] == "005930")
    }
}

@Suite("Secret")
struct SecretTests {
    @Test func neverPrintsItsValue() {
        let secret = Secret("hunter2-very-secret")
        #expect(secret.description == "[REDACTED]")
        #expect(secret.debugDescription == "[REDACTED]")
        #expect("\(secret)" == "[REDACTED]")
        #expect(String(reflecting: secret) == "[REDACTED]")
        var dumped = ""
        dump(secret, to: &dumped)
        #expect(!dumped.contains("hunter2"))
        struct Holder { let password: Secret }
        #expect(!"\(Holder(password: secret))".contains("hunter2"))
        #expect(secret.value == "hunter2-very-secret")
        #expect(secret.utf8Count == 19)
    }

    @Test func equality() {
        #expect(Secret("a") == Secret("a"))
        #expect(Secret("a") != Secret("b"))
        #expect(Secret("a") != Secret("ab"))
    }
}
