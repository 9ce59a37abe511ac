public import Foundation
import Crypto
import _CryptoExtras
import JWTKit
public import KisgwConfiguration
import Observability
import Synchronization

/// A verified session: the user id (`sub`) and until when the JWT may be trusted without checking it again.
public struct VerifiedSession: Sendable, Equatable {
    public var userID: String
    /// `exp` plus the leeway: the JWT is good until then.
    public var validUntil: Date
}

/// Verifies the users' session JWTs, the same way in the gateway and the broker (`[auth.jwt]`).
///
/// - The header's `alg` must be in the allow-list (`none` never is); HS256 tokens are checked only against the
///   HMAC secret and asymmetric ones only against the public keys, so one cannot pass for the other.
/// - `exp` is required; `exp`, `nbf` and `iat` are checked with the leeway; `iss` and `aud` when configured.
/// - Verified tokens are remembered (bounded) until they expire, so the hot path verifies a JWT once.
///
/// ```swift
/// let verifier = try await JWTVerifier(settings: .init(algorithms: ["HS256"], hs256Secret: secret))
/// let session = try await verifier.verify(bearer)   // throws Problem(.jwtInvalid / .jwtExpired)
/// ```
public final class JWTVerifier: Sendable {
    public struct Settings: Sendable {
        public var algorithms: Set<String>
        public var hs256Secret: [UInt8]?
        /// Contents of a PEM public key or a JWKS document.
        public var publicKeys: String?
        public var issuer: String?
        public var audience: String?
        public var leeway: TimeInterval
        public init(algorithms: Set<String>, hs256Secret: [UInt8]? = nil, publicKeys: String? = nil,
                    issuer: String? = nil, audience: String? = nil, leeway: TimeInterval = 30) {
            self.algorithms = algorithms
            self.hs256Secret = hs256Secret
            self.publicKeys = publicKeys
            self.issuer = issuer
            self.audience = audience
            self.leeway = leeway
        }
    }

    struct Claims: JWTPayload {
        var sub: SubjectClaim?
        var exp: ExpirationClaim?
        var nbf: NotBeforeClaim?
        var iat: IssuedAtClaim?
        var iss: IssuerClaim?
        var aud: AudienceClaim?
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    private let settings: Settings
    private let hmacKeys: JWTKeyCollection?
    private let publicKeyCollection: JWTKeyCollection?
    private let cache = Mutex<[String: VerifiedSession]>([:])
    private let cacheLimit = 100_000
    /// Tokens that failed for good (bad form, algorithm or signature, expired, wrong issuer or audience): the
    /// answer is remembered for `rejectionTTL`, so a client retrying a bad token costs no signature check.
    /// "Not valid yet" failures are not remembered: time fixes them.
    private let rejections = Mutex<[String: Rejection]>([:])
    private let rejectionLimit = 10_000
    private let rejectionTTL: TimeInterval = 300

    private struct Rejection {
        var problem: Problem
        var until: Date
    }

    /// What the verifier already knows about a token without verifying it.
    public enum Known: Sendable {
        case valid(VerifiedSession)
        case rejected(Problem)
    }

    public init(settings: Settings) async throws {
        self.settings = settings
        if settings.algorithms.contains("HS256"), let secret = settings.hs256Secret {
            let keys = JWTKeyCollection()
            await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
            self.hmacKeys = keys
        } else {
            self.hmacKeys = nil
        }
        // The asymmetric algorithms allowed; the public keys are read only for them, and must serve one of them.
        let asymmetric = settings.algorithms.subtracting(["HS256"])
        if let text = settings.publicKeys, !asymmetric.isEmpty {
            let keys = JWTKeyCollection()
            func allowing(_ algorithm: String, _ what: String) throws(Problem) {
                guard asymmetric.contains(algorithm) else {
                    throw Problem(.internalError, "public_keys_file holds \(what), for \(algorithm), which [auth.jwt] "
                                  + "algorithms (\(asymmetric.sorted().joined(separator: ", "))) does not allow")
                }
            }
            if text.contains("-----BEGIN") {
                if let rsa = try? Insecure.RSA.PublicKey(pem: text) {
                    try allowing("RS256", "an RSA key")
                    await keys.add(rsa: rsa, digestAlgorithm: .sha256)
                } else if let ec = try? ES256PublicKey(pem: text) {
                    try allowing("ES256", "a P-256 key")
                    await keys.add(ecdsa: ec)
                } else if let ed = try? EdDSA.PublicKey(pem: text) {
                    try allowing("EdDSA", "an Ed25519 key")
                    await keys.add(eddsa: ed)
                } else {
                    throw Problem(.internalError, "public_keys_file " + Self.unusablePEM(text))
                }
            } else {
                guard let usable = Self.jwksAlgorithms(text) else {
                    throw Problem(.internalError, "public_keys_file is neither PEM nor a JWKS document")
                }
                guard !usable.isDisjoint(with: asymmetric) else {
                    throw Problem(.internalError, "public_keys_file's JWKS has no key for [auth.jwt] algorithms ("
                                  + asymmetric.sorted().joined(separator: ", ") + ")")
                }
                do { try await keys.add(jwksJSON: text) } catch {
                    // A JWKS document (it read as one above) whose key jwt-kit cannot use: a modulus or a curve
                    // point that is not valid.
                    throw Problem(.internalError, "public_keys_file's JWKS holds a key that cannot be read (a modulus, "
                                  + "exponent or curve point that is not valid): \(Self.jwtKitReason(error))")
                }
            }
            self.publicKeyCollection = keys
        } else {
            self.publicKeyCollection = nil
        }
    }

    /// Why a PEM file holds no key kisgw verifies with, as precisely as can be told (jwt-kit's own readers only say
    /// they could not read it).
    static func unusablePEM(_ text: String) -> String {
        if text.components(separatedBy: "-----BEGIN").count > 2 {
            return "holds more than one PEM block: give one public key, or a JWKS document for several"
        }
        if text.contains("PRIVATE KEY-----") {
            return "holds a private key: give the public key (openssl pkey -pubout), which is all a verifier needs"
        }
        if (try? P384.Signing.PublicKey(pemRepresentation: text)) != nil {
            return "holds a P-384 key (ES384), which kisgw does not verify with: ES256 needs a P-256 key"
        }
        if (try? P521.Signing.PublicKey(pemRepresentation: text)) != nil {
            return "holds a P-521 key (ES512), which kisgw does not verify with: ES256 needs a P-256 key"
        }
        if let rsa = try? _RSA.Signing.PublicKey(unsafePEMRepresentation: text), rsa.keySizeInBits < 2048 {
            return "holds an RSA key of \(rsa.keySizeInBits) bits: RS256 needs one of at least 2048"
        }
        return "holds no RSA, P-256 or Ed25519 public key"
    }

    private static func jwtKitReason(_ error: any Error) -> String {
        (error as? JWTError).flatMap(\.reason) ?? "\(error)"
    }

    /// The algorithms the keys of a JWKS document serve (a key's `alg`, or what its `kty` and `crv` are for:
    /// RS256, ES256, EdDSA); nil when the text is not a JWKS document.
    static func jwksAlgorithms(_ text: String) -> Set<String>? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            let keys = object["keys"] as? [Any]
        else { return nil }
        var algorithms: Set<String> = []
        for case let key as [String: Any] in keys {
            if let alg = key["alg"] as? String {
                algorithms.insert(alg)
                continue
            }
            switch (key["kty"] as? String, key["crv"] as? String) {
            case ("RSA", _): algorithms.insert("RS256")
            case ("EC", "P-256"): algorithms.insert("ES256")
            case ("OKP", "Ed25519"): algorithms.insert("EdDSA")
            default: break
            }
        }
        return algorithms
    }

    /// The remembered decision about `token`, if any (no signature check, no suspension: for the hit path).
    public func known(_ token: String, now: Date = Date()) -> Known? {
        // Before the caches (``BearerCredentials/isASCII(_:)``): a lookalike's lasting rejection refused the real token
        // (jwt_invalid, signed out), and the real one's session accepted the lookalike.
        guard BearerCredentials.isASCII(token) else {
            return .rejected(Problem(.jwtInvalid, "the JWT must be ASCII (base64url segments and dots)"))
        }
        if let hit = cache.withLock({ $0[token] }) {
            return hit.validUntil > now ? .valid(hit) : .rejected(Problem(.jwtExpired, "the JWT has expired"))
        }
        if let r = rejections.withLock({ $0[token] }), r.until > now { return .rejected(r.problem) }
        return nil
    }

    /// Verifies `token` (without `Bearer `), or throws a `Problem` with `jwt_invalid` / `jwt_expired`.
    public func verify(_ token: String, now: Date = Date()) async throws(Problem) -> VerifiedSession {
        switch known(token, now: now) {
        case .valid(let session): return session
        case .rejected(let problem): throw problem
        case nil: break
        }
        let session: VerifiedSession
        do {
            session = try await verifyAfresh(token, now: now)
        } catch {
            // Bounded memory: at most `rejectionLimit` tokens of at most 2 KiB each are remembered.
            if error.lasting, token.utf8.count <= 2048 {
                rejections.withLock { r in
                    if r.count >= rejectionLimit { r.removeAll(keepingCapacity: true) }
                    r[token] = Rejection(problem: error.problem, until: now.addingTimeInterval(rejectionTTL))
                }
            }
            throw error.problem
        }
        cache.withLock { c in
            if c.count >= cacheLimit { c.removeAll(keepingCapacity: true) }
            c[token] = session
        }
        return session
    }

    /// Why a token was refused, and whether that can change: only the clock fixes "not valid yet".
    private struct Refusal: Error {
        let problem: Problem
        let lasting: Bool

        init(_ problem: Problem, lasting: Bool = true) {
            self.problem = problem
            self.lasting = lasting
        }
        init(_ code: Problem.Code, _ detail: String, lasting: Bool = true) {
            self.init(Problem(code, detail), lasting: lasting)
        }
    }

    private func verifyAfresh(_ token: String, now: Date) async throws(Refusal) -> VerifiedSession {
        let header: [String: Any]
        do { header = try Self.header(of: token) } catch { throw Refusal(error) }
        guard let alg = header["alg"] as? String, alg.lowercased() != "none" else {
            throw Refusal(.jwtInvalid, "the JWT is not signed (alg none is never accepted)")
        }
        guard settings.algorithms.contains(alg) else {
            throw Refusal(.jwtInvalid, "the JWT's algorithm \(alg) is not allowed")
        }
        // RFC 7515 §4.1.11: a token whose header makes extensions critical is refused by a recipient that does not
        // implement them — and this one implements none.
        guard header["crit"] == nil else {
            throw Refusal(.jwtInvalid, "the JWT's header lists critical extensions (crit), which this server does not implement")
        }
        let keys = alg == "HS256" ? hmacKeys : publicKeyCollection
        guard let keys else { throw Refusal(.jwtInvalid, "no key is configured for \(alg)") }
        let claims: Claims
        do { claims = try await keys.verify(token, as: Claims.self) } catch let error as JWTError
            where error.errorType == .malformedToken && (error.reason ?? "").contains("payload")
        {
            // The signature verified (jwt-kit checks it before it decodes the payload); the claims did not decode.
            // (A header it cannot read — a kid that is not a string — is malformed before any signature check: that
            // one is not said to be the claims.)
            throw Refusal(.jwtInvalid,
                          "the JWT's claims cannot be read: the payload must be a JSON object whose sub and iss are strings, aud a string or an array of strings, and exp, nbf and iat numbers")
        } catch let error as JWTError where error.errorType == .malformedToken {
            throw Refusal(.jwtInvalid, "the JWT cannot be read: its header's alg and kid must be strings, and each part base64url")
        } catch {
            throw Refusal(.jwtInvalid, "the JWT's signature does not verify")
        }
        return try check(claims, now: now)
    }

    /// Whether a user id (`sub`) holds a control character (C0, DEL or C1), which the verifier refuses.
    public static func hasControlCharacter(_ sub: String) -> Bool {
        sub.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }
    }

    private func check(_ c: Claims, now: Date) throws(Refusal) -> VerifiedSession {
        let leeway = settings.leeway
        guard let sub = c.sub?.value, !sub.isEmpty, sub.count <= 256 else {
            throw Refusal(.jwtInvalid, "the JWT has no sub (user id)")
        }
        // The user id keys the store and the broker's database, where PostgreSQL refuses a NUL in text (every call of
        // such a user answered 503, on SQLite it worked), and it is written in logs: no control characters.
        guard !Self.hasControlCharacter(sub) else {
            throw Refusal(.jwtInvalid, "the JWT's sub (user id) contains a control character")
        }
        guard let exp = c.exp?.value else { throw Refusal(.jwtInvalid, "the JWT has no exp") }
        guard exp.addingTimeInterval(leeway) > now else { throw Refusal(.jwtExpired, "the JWT has expired") }
        if let nbf = c.nbf?.value, nbf.addingTimeInterval(-leeway) > now {
            throw Refusal(.jwtInvalid, "the JWT is not valid yet (nbf)", lasting: false)
        }
        if let iat = c.iat?.value, iat.addingTimeInterval(-leeway) > now {
            throw Refusal(.jwtInvalid, "the JWT was issued in the future (iat)", lasting: false)
        }
        if let issuer = settings.issuer, c.iss?.value != issuer {
            throw Refusal(.jwtInvalid, "the JWT's issuer is not the expected one")
        }
        if let audience = settings.audience, !(c.aud?.value.contains(audience) ?? false) {
            throw Refusal(.jwtInvalid, "the JWT's audience is not the expected one")
        }
        return VerifiedSession(userID: sub, validUntil: exp.addingTimeInterval(leeway))
    }

    /// The decoded JOSE header, or `jwt_invalid` when the token is not three base64url parts.
    static func header(of token: String) throws(Problem) -> [String: Any] {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty, token.count <= 8192,
            let data = base64URLDecode(parts[0]),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { throw Problem(.jwtInvalid, "the Authorization value is not a well-formed JWT") }
        return object
    }

    static func base64URLDecode(_ s: Substring) -> Data? {
        var b = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b.count % 4 != 0 { b += "=" }
        return Data(base64Encoded: b)
    }

    /// Mints an HS256 JWT (for `kisgw jwt`, the demo's sign-in and tests).
    public static func mintHS256(secret: [UInt8], sub: String, ttl: TimeInterval, issuer: String? = nil,
                                 audience: String? = nil, now: Date = Date()) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        let now = Date(timeIntervalSince1970: now.timeIntervalSince1970.rounded(.down))  // whole seconds
        let claims = Claims(
            sub: SubjectClaim(value: sub), exp: ExpirationClaim(value: now.addingTimeInterval(ttl)), nbf: nil,
            iat: IssuedAtClaim(value: now), iss: issuer.map { IssuerClaim(value: $0) },
            aud: audience.map { AudienceClaim(value: [$0]) })
        var header = JWTHeader()
        header.typ = "JWT"
        return try await keys.sign(claims, header: header)
    }
}

extension JWTVerifier.Settings {
    /// The settings `[auth.jwt]` describes (the public keys file is read here: a file that cannot be read, or is
    /// not text, is an error, not a verifier without keys).
    public init(config: KisgwConfig.JWT) throws(Problem) {
        var publicKeys: String? = nil
        if let path = config.publicKeysFile, config.algorithms.contains(where: \.isAsymmetric) {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw Problem(.internalError, "public_keys_file cannot be read")
            }
            guard let text = String(data: data, encoding: .utf8) else {
                throw Problem(.internalError, "public_keys_file is not text (a PEM key or a JWKS document)")
            }
            publicKeys = text
        }
        self.init(
            algorithms: Set(config.algorithms.map(\.rawValue)), hs256Secret: config.hs256Secret.map { Array($0.value.utf8) },
            publicKeys: publicKeys, issuer: config.issuer, audience: config.audience, leeway: TimeInterval(config.leewayS))
    }
}

/// The `exp` a KIS access token states. KIS's tokens are JWTs signed by KIS, which no gateway can verify; the claim
/// only tells an expired token from an unknown one once the broker's record of it is gone (its TTL ends at
/// `expires_at`), so a made-up value gains nothing but a different 401 code.
public enum KISTokenClaims {
    private struct Expiry: JWTPayload {
        var exp: ExpirationClaim
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    /// The token's `exp`, or nil when it is not a JWT with a numeric `exp`.
    public static func expiry(of token: String) -> Date? {
        guard token.utf8.count <= 8192 else { return nil }
        return try? DefaultJWTParser().parse(Array(token.utf8), as: Expiry.self).payload.exp.value
    }
}
