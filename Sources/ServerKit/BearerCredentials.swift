/// `Authorization: Bearer <credentials>` as the gateway and the broker read it (broker-api.md: "exactly as the
/// gateway does").
public enum BearerCredentials {
    /// The credentials of `Bearer <credentials>` (scheme case-insensitive, RFC 9110 §11.1), or nil.
    public static func parse(_ value: String) -> Substring? {
        let v = trimmedOWS(value[...])
        let u = v.utf8
        var i = u.startIndex
        for expected in "bearer".utf8 {
            guard i < u.endIndex, u[i] | 0x20 == expected else { return nil }
            u.formIndex(after: &i)
        }
        guard i < u.endIndex, u[i] == 0x20 || u[i] == 0x09 else { return nil }
        let credentials = trimmedOWS(v[i...])
        return credentials.isEmpty ? nil : credentials
    }

    /// Whether `credential` is ASCII, as a JWT (base64url and dots) and a KIS token are. Caches of credentials are
    /// keyed by `String`, whose equality is Unicode canonical equivalence: other bytes (U+212A KELVIN SIGN for a `K`)
    /// would be taken for a remembered credential, so a credential that is not ASCII is refused before any lookup.
    public static func isASCII(_ credential: String) -> Bool { credential.utf8.allSatisfy { $0 < 0x80 } }

    /// `s` without leading and trailing spaces and tabs (HTTP's optional whitespace).
    public static func trimmedOWS(_ s: Substring) -> Substring {
        let u = s.utf8
        var start = u.startIndex, end = u.endIndex
        while start < end, u[start] == 0x20 || u[start] == 0x09 { u.formIndex(after: &start) }
        while start < end {
            let last = u.index(before: end)
            guard u[last] == 0x20 || u[last] == 0x09 else { break }
            end = last
        }
        return s[start..<end]
    }
}
