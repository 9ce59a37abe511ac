/// A secret string that never prints itself.
///
/// Configuration and other modules keep secrets (JWT signing secrets, passwords, KIS app
/// secrets) in a `Secret` so that string interpolation, `print`, `dump`, logging and
/// error messages show `[REDACTED]` instead of the value. Read the value deliberately with
/// ``value``.
///
/// ```swift
/// let secret = Secret("s3cr3t")
/// print("using \(secret)")        // using [REDACTED]
/// hmac.sign(Array(secret.value.utf8))
/// ```
public struct Secret: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// The secret itself. Reading it is a deliberate act; never log it.
    public let value: String

    /// Wraps `value`.
    public init(_ value: String) {
        self.value = value
    }

    /// Always `[REDACTED]`.
    public var description: String { Redact.placeholder }

    /// Always `[REDACTED]`.
    public var debugDescription: String { Redact.placeholder }

    /// Hides the value from `dump` and debuggers' mirrors too.
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }

    /// The number of UTF-8 bytes in the secret, for length checks that must not reveal it.
    public var utf8Count: Int { value.utf8.count }

    /// Compares in time that depends only on the lengths, not on where the values differ.
    public static func == (lhs: Secret, rhs: Secret) -> Bool {
        let a = lhs.value.utf8
        let b = rhs.value.utf8
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for (x, y) in zip(a, b) { difference |= x ^ y }
        return difference == 0
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(value)
    }
}
