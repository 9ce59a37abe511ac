public import Logging

internal import Crypto

/// Helpers that keep secrets out of logs, errors and the UI.
///
/// ```swift
/// logger.info("token issued", metadata: ["token_fp": "\(Redact.token(accessToken))"])
/// Redact.appKeyMasked("PSabcdefghijklmnopqrstuvwxyz")   // "PSab…wxyz"
/// Redact.accountNumberMasked("12345678-01")             // "1234****-01"
/// Redact.scrub("Bearer eyJhbGciOi….eyJzdWIiOi….sig")    // "Bearer [REDACTED]"
/// ```
public enum Redact {
    /// What a removed secret is replaced with.
    public static let placeholder = "[REDACTED]"

    /// Returns ``placeholder`` whatever the value is.
    public static func secretValue<Value>(_ value: Value) -> String {
        placeholder
    }

    /// A short, non-reversible fingerprint of a token for logs and correlation:
    /// `sha256:` and the first 8 hex digits of the SHA-256 of its UTF-8 bytes.
    public static func token(_ token: String) -> String {
        let digest = SHA256.hash(data: Array(token.utf8))
        var out = "sha256:"
        out.reserveCapacity(15)
        for byte in digest.prefix(4) {
            out.append(hexDigit(byte >> 4))
            out.append(hexDigit(byte & 0x0F))
        }
        return out
    }

    /// An app key for display: the first 4 and last 4 characters around an ellipsis
    /// (`PSab…wxyz`). Keys shorter than 16 characters show nothing of themselves (`****`).
    public static func appKeyMasked(_ key: String) -> String {
        let characters = Array(key)
        guard characters.count >= 16 else { return "****" }
        return String(characters.prefix(4)) + "…" + String(characters.suffix(4))
    }

    /// A KIS account number for display: `12345678-01` → `1234****-01`, `1234567801` →
    /// `1234****01`, `12345678` → `1234****`. Anything else is fully masked (`****`).
    public static func accountNumberMasked(_ account: String) -> String {
        let bytes = Array(account.utf8)
        func allDigits(_ slice: ArraySlice<UInt8>) -> Bool { slice.allSatisfy(isDigit) }
        switch bytes.count {
        case 11 where bytes[8] == UInt8(ascii: "-") && allDigits(bytes[0..<8]) && allDigits(bytes[9..<11]),
            10 where allDigits(bytes[...]),
            8 where allDigits(bytes[...]):
            var out = bytes
            for i in 4..<8 { out[i] = UInt8(ascii: "*") }
            return String(decoding: out, as: UTF8.self)
        default:
            return "****"
        }
    }

    /// Whether a metadata key, header or parameter name names a secret (`token`,
    /// `app_secret`, `Authorization`, `x-kis-token`, `account_number`, `…_password`, …).
    /// Case-insensitive; dashes and underscores are the same.
    public static func isSecretName(_ name: String) -> Bool {
        var normalized = ""
        normalized.reserveCapacity(name.utf8.count)
        for byte in name.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): normalized.unicodeScalars.append(Unicode.Scalar(byte + 32))
            case UInt8(ascii: "-"): normalized.append("_")
            default: normalized.unicodeScalars.append(Unicode.Scalar(byte))
            }
        }
        if secretNames.contains(normalized) { return true }
        for suffix in secretSuffixes where normalized.hasSuffix(suffix) { return true }
        return normalized.contains("password") || normalized.contains("secret")
    }

    /// Removes from free text anything that looks like a secret:
    /// - the value after a secret-named key (`app_secret=…`, `"token": "…"`, `Authorization: Bearer …`),
    /// - JWTs and KIS access tokens (`eyJ…` in three base64url parts),
    /// - long opaque key material (32 or more base64 characters mixing upper case, lower case and
    ///   digits, or 32 or more hex digits),
    /// - Korean account numbers (`12345678-01` → `1234****-01`; also ten digits in a row,
    ///   so a ten-digit Unix time shows masked too).
    ///
    /// Text without any of these is returned unchanged.
    public static func scrub(_ text: String) -> String {
        var bytes = Array(text.utf8)
        var changed = false
        changed = scrubNamedValues(&bytes) || changed
        changed = scrubJWTs(&bytes) || changed
        changed = scrubOpaqueRuns(&bytes) || changed
        changed = scrubAccountNumbers(&bytes) || changed
        return changed ? String(decoding: bytes, as: UTF8.self) : text
    }

    /// Scrubs metadata: values under secret-named keys become `[REDACTED]` (whole
    /// dictionaries and arrays too); every other string is passed through ``scrub(_:)``.
    public static func scrub(_ metadata: Logger.Metadata) -> Logger.Metadata {
        var out = Logger.Metadata()
        out.reserveCapacity(metadata.count)
        for (key, value) in metadata {
            out[key] = isSecretName(key) ? .string(placeholder) : scrub(value)
        }
        return out
    }

    /// Scrubs one metadata value (see ``scrub(_:)-(Logger.Metadata)``).
    public static func scrub(_ value: Logger.MetadataValue) -> Logger.MetadataValue {
        switch value {
        case .string(let string): return .string(scrub(string))
        case .stringConvertible(let convertible): return .string(scrub(convertible.description))
        case .dictionary(let dictionary): return .dictionary(scrub(dictionary))
        case .array(let array): return .array(array.map { scrub($0) })
        }
    }

    // MARK: - names

    private static let secretNames: Set<String> = [
        "token", "access_token", "refresh_token", "id_token", "bearer",
        "app_key", "appkey", "app_secret", "appsecret", "api_key", "apikey",
        "secret", "client_secret", "password", "passwd", "pwd",
        "authorization", "proxy_authorization", "x_kis_token", "cookie", "set_cookie",
        "account_number", "cano", "approval_key", "private_key", "seal_key", "seal_keys",
        "hs256_secret", "credentials",
    ]

    private static let secretSuffixes = [
        "_token", "_secret", "_password", "_passwd", "_appkey", "_app_key", "_api_key", "_apikey",
        "_appsecret", "_app_secret", "_private_key", "_account_number", "_authorization",
    ]

    // MARK: - the scanners, over UTF-8 bytes

    private static let redactedBytes = Array(placeholder.utf8)

    private static func hexDigit(_ nibble: UInt8) -> Character {
        Character(Unicode.Scalar(nibble < 10 ? nibble + 48 : nibble + 87))
    }

    @inline(__always) private static func isDigit(_ b: UInt8) -> Bool { b >= 48 && b <= 57 }
    @inline(__always) private static func isUpper(_ b: UInt8) -> Bool { b >= 65 && b <= 90 }
    @inline(__always) private static func isLower(_ b: UInt8) -> Bool { b >= 97 && b <= 122 }
    @inline(__always) private static func isAlnum(_ b: UInt8) -> Bool { isDigit(b) || isUpper(b) || isLower(b) }
    @inline(__always) private static func isHex(_ b: UInt8) -> Bool {
        isDigit(b) || (b >= 97 && b <= 102) || (b >= 65 && b <= 70)
    }
    @inline(__always) private static func isBase64URL(_ b: UInt8) -> Bool {
        isAlnum(b) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
    }
    @inline(__always) private static func isBase64Any(_ b: UInt8) -> Bool {
        isBase64URL(b) || b == UInt8(ascii: "+") || b == UInt8(ascii: "/")
    }
    @inline(__always) private static func isNameByte(_ b: UInt8) -> Bool {
        isAlnum(b) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
    }
    @inline(__always) private static func isSpace(_ b: UInt8) -> Bool {
        b == 32 || b == 9
    }
    @inline(__always) private static func endsUnquotedValue(_ b: UInt8) -> Bool {
        switch b {
        case 32, 9, 10, 13, UInt8(ascii: "&"), UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "\""),
            UInt8(ascii: "'"), UInt8(ascii: "}"), UInt8(ascii: "]"), UInt8(ascii: ")"), UInt8(ascii: ">"):
            return true
        default:
            return false
        }
    }

    private static func lowercased(_ bytes: ArraySlice<UInt8>) -> String {
        String(decoding: bytes.map { isUpper($0) ? $0 + 32 : $0 }, as: UTF8.self)
    }

    /// `name=value`, `name: value`, `"name": "value"`, `Authorization: Bearer value`.
    private static func scrubNamedValues(_ bytes: inout [UInt8]) -> Bool {
        var changed = false
        var i = 0
        while i < bytes.count {
            guard isNameByte(bytes[i]), i == 0 || !isNameByte(bytes[i - 1]) else {
                i += 1
                continue
            }
            let nameStart = i
            while i < bytes.count, isNameByte(bytes[i]) { i += 1 }
            let nameEnd = i
            var j = nameEnd
            if j < bytes.count, bytes[j] == UInt8(ascii: "\"") || bytes[j] == UInt8(ascii: "'") { j += 1 }
            while j < bytes.count, isSpace(bytes[j]) { j += 1 }
            guard j < bytes.count, bytes[j] == UInt8(ascii: "=") || bytes[j] == UInt8(ascii: ":") else { continue }
            // `https://` and similar are not names with values.
            if bytes[j] == UInt8(ascii: ":"), j + 1 < bytes.count, bytes[j + 1] == UInt8(ascii: "/") { continue }
            guard isSecretName(lowercased(bytes[nameStart..<nameEnd])) else { continue }
            j += 1
            while j < bytes.count, isSpace(bytes[j]) { j += 1 }
            var valueStart = j
            var valueEnd = j
            if j < bytes.count, bytes[j] == UInt8(ascii: "\"") || bytes[j] == UInt8(ascii: "'") {
                let quote = bytes[j]
                valueStart = j + 1
                valueEnd = valueStart
                while valueEnd < bytes.count, bytes[valueEnd] != quote {
                    valueEnd += bytes[valueEnd] == UInt8(ascii: "\\") ? 2 : 1
                }
                valueEnd = min(valueEnd, bytes.count)
            } else {
                while valueEnd < bytes.count, !endsUnquotedValue(bytes[valueEnd]) { valueEnd += 1 }
                // `Bearer xyz`: keep the scheme, redact the credentials after it.
                let word = lowercased(bytes[valueStart..<valueEnd])
                if word == "bearer" || word == "basic" || word == "token", valueEnd < bytes.count,
                    isSpace(bytes[valueEnd])
                {
                    valueStart = valueEnd
                    while valueStart < bytes.count, isSpace(bytes[valueStart]) { valueStart += 1 }
                    valueEnd = valueStart
                    while valueEnd < bytes.count, !endsUnquotedValue(bytes[valueEnd]) { valueEnd += 1 }
                }
            }
            let value = bytes[valueStart..<valueEnd]
            if value.isEmpty || value.elementsEqual(redactedBytes) || value.starts(with: "sha256:".utf8) {
                i = max(valueEnd, nameEnd)
                continue
            }
            bytes.replaceSubrange(valueStart..<valueEnd, with: redactedBytes)
            changed = true
            i = valueStart + redactedBytes.count
        }
        return changed
    }

    /// `eyJ…` header, a dot, a payload, a dot and a signature: a JWS such as a KIS access token.
    private static func scrubJWTs(_ bytes: inout [UInt8]) -> Bool {
        var changed = false
        var i = 0
        while i + 3 <= bytes.count {
            guard bytes[i] == UInt8(ascii: "e"), bytes[i + 1] == UInt8(ascii: "y"), bytes[i + 2] == UInt8(ascii: "J"),
                i == 0 || !isBase64URL(bytes[i - 1])
            else {
                i += 1
                continue
            }
            var j = i
            while j < bytes.count, isBase64URL(bytes[j]) { j += 1 }
            guard j - i >= 8, j < bytes.count, bytes[j] == UInt8(ascii: ".") else {
                i = j
                continue
            }
            j += 1
            let payloadStart = j
            while j < bytes.count, isBase64URL(bytes[j]) { j += 1 }
            guard j - payloadStart >= 2, j < bytes.count, bytes[j] == UInt8(ascii: ".") else {
                i = j
                continue
            }
            j += 1
            while j < bytes.count, isBase64URL(bytes[j]) { j += 1 }
            bytes.replaceSubrange(i..<j, with: redactedBytes)
            changed = true
            i += redactedBytes.count
        }
        return changed
    }

    /// Runs of 32 or more base64 characters that mix upper case, lower case and digits, or
    /// are all hex with letters and digits: app keys, app secrets, raw keys, hex digests.
    private static func scrubOpaqueRuns(_ bytes: inout [UInt8]) -> Bool {
        var changed = false
        var i = 0
        while i < bytes.count {
            guard isBase64Any(bytes[i]) else {
                i += 1
                continue
            }
            let start = i
            var upper = false
            var lower = false
            var digit = false
            var allHex = true
            while i < bytes.count, isBase64Any(bytes[i]) {
                let b = bytes[i]
                if isUpper(b) { upper = true } else if isLower(b) { lower = true } else if isDigit(b) { digit = true }
                if !isHex(b) { allHex = false }
                i += 1
            }
            let length = i - start
            var end = i
            var padding = 0
            while end < bytes.count, padding < 2, bytes[end] == UInt8(ascii: "=") {
                end += 1
                padding += 1
            }
            let opaque = length >= 32 && ((upper && lower && digit) || (allHex && digit && (upper || lower)))
            guard opaque else { continue }
            bytes.replaceSubrange(start..<end, with: redactedBytes)
            changed = true
            i = start + redactedBytes.count
        }
        return changed
    }

    /// `\d{8}-?\d{2}` not inside a longer number: keep the first four and the last two digits.
    private static func scrubAccountNumbers(_ bytes: inout [UInt8]) -> Bool {
        var changed = false
        var i = 0
        while i < bytes.count {
            guard isDigit(bytes[i]), i == 0 || !isDigit(bytes[i - 1]) else {
                i += 1
                continue
            }
            var j = i
            while j < bytes.count, isDigit(bytes[j]) { j += 1 }
            let firstRun = j - i
            var matched = false
            if firstRun == 10 {
                matched = true
            } else if firstRun == 8, j + 3 <= bytes.count, bytes[j] == UInt8(ascii: "-"), isDigit(bytes[j + 1]),
                isDigit(bytes[j + 2]), j + 3 == bytes.count || !isDigit(bytes[j + 3])
            {
                matched = true
                j += 3
            }
            if matched {
                for k in (i + 4)..<(i + 8) { bytes[k] = UInt8(ascii: "*") }
                changed = true
            }
            i = j
        }
        return changed
    }
}
