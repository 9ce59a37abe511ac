import Crypto
import Foundation
import JWTKit
import ServerKit
import Testing
import _CryptoExtras

private let secret = Array("a-development-secret-of-32-bytes!!".utf8)

private struct Claims: JWTPayload {
    var sub: SubjectClaim?
    var exp: ExpirationClaim?
    var nbf: NotBeforeClaim?
    var iat: IssuedAtClaim?
    var iss: IssuerClaim?
    var aud: AudienceClaim?
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

private func claims(sub: String? = "42", exp: TimeInterval? = 3600, nbf: TimeInterval? = nil, iat: TimeInterval? = 0,
                    iss: String? = nil, aud: String? = nil) -> Claims {
    let now = Date()
    return Claims(
        sub: sub.map { SubjectClaim(value: $0) }, exp: exp.map { ExpirationClaim(value: now.addingTimeInterval($0)) },
        nbf: nbf.map { NotBeforeClaim(value: now.addingTimeInterval($0)) },
        iat: iat.map { IssuedAtClaim(value: now.addingTimeInterval($0)) }, iss: iss.map { IssuerClaim(value: $0) },
        aud: aud.map { AudienceClaim(value: [$0]) })
}

private func hs256(_ c: Claims, secret: [UInt8] = secret) async throws -> String {
    let keys = JWTKeyCollection()
    await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
    return try await keys.sign(c)
}

private func b64url(_ data: Data) -> String {
    data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        .replacingOccurrences(of: "=", with: "")
}

@Suite("JWT verification (gateway-api.md, Authentication)")
struct JWTVerifierTests {
    func verifier(_ algorithms: Set<String> = ["HS256"], publicKeys: String? = nil, issuer: String? = nil,
                  audience: String? = nil) async throws -> JWTVerifier {
        try await JWTVerifier(settings: .init(algorithms: algorithms, hs256Secret: secret, publicKeys: publicKeys,
                                              issuer: issuer, audience: audience, leeway: 30))
    }

    func code(_ body: () async throws(Problem) -> VerifiedSession) async -> String? {
        do {
            _ = try await body()
            return nil
        } catch { return error.code.rawValue }
    }

    /// A token signed by hand with the test secret: any header and payload bytes.
    func handSigned(header: String, payload: String) -> String {
        let input = b64url(Data(header.utf8)) + "." + b64url(Data(payload.utf8))
        let mac = HMAC<SHA256>.authenticationCode(for: Data(input.utf8), using: SymmetricKey(data: secret))
        return input + "." + b64url(Data(mac))
    }

    func detail(_ v: JWTVerifier, _ token: String) async -> (String, String)? {
        do {
            _ = try await v.verify(token)
            return nil
        } catch { return (error.code.rawValue, error.detail) }
    }

    @Test("claims of the wrong type, correctly signed, are refused as unreadable claims (not as a bad signature); a crit header is refused")
    func unreadableClaimsAndCrit() async throws {
        let v = try await verifier()
        let header = #"{"alg":"HS256","typ":"JWT"}"#
        // The hand-signing itself is sound: the same claims in their types verify.
        #expect(await detail(v, handSigned(header: header, payload: #"{"sub":"42","exp":4102444800}"#)) == nil)
        for payload in [#"{"sub":42,"exp":4102444800}"#, #"{"sub":"42","exp":"4102444800"}"#,
                        #"{"sub":"42","exp":true}"#, #"["sub","42"]"#] {
            let refusal = await detail(v, handSigned(header: header, payload: payload))
            #expect(refusal?.0 == "jwt_invalid", "\(payload)")
            #expect(refusal?.1.contains("claims cannot be read") == true, "\(payload): \(String(describing: refusal))")
        }
        // A kid that is not a string: jwt-kit refuses the header before any signature check — not "the claims".
        let badKid = await detail(v, handSigned(header: #"{"alg":"HS256","typ":"JWT","kid":7}"#, payload: #"{"sub":"42","exp":4102444800}"#))
        #expect(badKid?.0 == "jwt_invalid")
        #expect(badKid?.1.contains("cannot be read: its header") == true, "\(String(describing: badKid))")
        // Signed with another secret: the signature, whatever the claims.
        let forged = try await hs256(claims(), secret: Array("another-secret-another-secret-32".utf8))
        #expect(await detail(v, forged)?.1.contains("signature does not verify") == true)
        // RFC 7515 §4.1.11: critical extensions this server does not implement (it implements none).
        let crit = handSigned(header: #"{"alg":"HS256","typ":"JWT","crit":["exp"]}"#, payload: #"{"sub":"42","exp":4102444800}"#)
        let critRefusal = await detail(v, crit)
        #expect(critRefusal?.0 == "jwt_invalid")
        #expect(critRefusal?.1.contains("crit") == true, "\(String(describing: critRefusal))")
    }

    @Test("a good HS256 token gives its sub; the second check is served from memory")
    func good() async throws {
        let v = try await verifier()
        let token = try await hs256(claims())
        let session = try await v.verify(token)
        #expect(session.userID == "42")
        #expect(try await v.verify(token) == session)
    }

    @Test("the auth matrix: each bad token gets its code")
    func matrix() async throws {
        let v = try await verifier(issuer: "https://id.example.com", audience: "kisgw")
        let ok = claims(iss: "https://id.example.com", aud: "kisgw")
        var cases: [(String, String, String)] = []
        cases.append(("malformed", "not-a-jwt", "jwt_invalid"))
        cases.append(("two parts", "abc.def", "jwt_invalid"))
        cases.append(("bad signature", try await hs256(ok, secret: Array("another-secret-another-secret-32".utf8)), "jwt_invalid"))
        cases.append(("expired", try await hs256(claims(exp: -120, iss: "https://id.example.com", aud: "kisgw")), "jwt_expired"))
        cases.append(("not yet valid", try await hs256(claims(nbf: 600, iss: "https://id.example.com", aud: "kisgw")), "jwt_invalid"))
        cases.append(("issued in the future", try await hs256(claims(iat: 600, iss: "https://id.example.com", aud: "kisgw")), "jwt_invalid"))
        cases.append(("wrong iss", try await hs256(claims(iss: "https://evil.example.com", aud: "kisgw")), "jwt_invalid"))
        cases.append(("wrong aud", try await hs256(claims(iss: "https://id.example.com", aud: "other")), "jwt_invalid"))
        cases.append(("no sub", try await hs256(claims(sub: nil, iss: "https://id.example.com", aud: "kisgw")), "jwt_invalid"))
        cases.append(("no exp", try await hs256(claims(exp: nil, iss: "https://id.example.com", aud: "kisgw")), "jwt_invalid"))
        // A user id with a control character: PostgreSQL refuses a NUL in text (that user's every broker call was 503).
        for (name, sub) in [("sub with NUL", "u\u{0}1"), ("sub with a newline", "u1\nadmin"), ("sub with C1", "u\u{85}1")] {
            cases.append((name, try await hs256(claims(sub: sub, iss: "https://id.example.com", aud: "kisgw")), "jwt_invalid"))
        }
        // alg none: a header saying none and an empty signature.
        let none = b64url(Data(#"{"alg":"none","typ":"JWT"}"#.utf8)) + "."
            + b64url(Data(#"{"sub":"42","exp":4102444800}"#.utf8)) + "."
        cases.append(("alg none", none, "jwt_invalid"))
        let noneUpper = b64url(Data(#"{"alg":"NONE"}"#.utf8)) + "." + b64url(Data(#"{"sub":"42","exp":4102444800}"#.utf8)) + ".x"
        cases.append(("alg NONE", noneUpper, "jwt_invalid"))
        for (name, token, expected) in cases {
            let got = await code { () async throws(Problem) -> VerifiedSession in try await v.verify(token) }
            #expect(got == expected, "\(name)")
        }
        // Within the leeway (30 s) an expired token, one not valid for another 10 s and one issued 10 s ahead of
        // this clock still pass; 40 s is beyond it (cases above: exp −120 s, nbf and iat +600 s).
        let justExpired = try await hs256(claims(exp: -10, iss: "https://id.example.com", aud: "kisgw"))
        #expect(try await v.verify(justExpired).userID == "42")
        let almostValid = try await hs256(claims(nbf: 10, iss: "https://id.example.com", aud: "kisgw"))
        #expect(try await v.verify(almostValid).userID == "42")
        let clockAhead = try await hs256(claims(iat: 10, iss: "https://id.example.com", aud: "kisgw"))
        #expect(try await v.verify(clockAhead).userID == "42")
        for (name, c) in [("nbf +40 s", claims(nbf: 40, iss: "https://id.example.com", aud: "kisgw")),
                          ("iat +40 s", claims(iat: 40, iss: "https://id.example.com", aud: "kisgw")),
                          ("exp −40 s", claims(exp: -40, iss: "https://id.example.com", aud: "kisgw"))] {
            let token = try await hs256(c)
            let got = await code { () async throws(Problem) -> VerifiedSession in try await v.verify(token) }
            #expect(got == (name.hasPrefix("exp") ? "jwt_expired" : "jwt_invalid"), "\(name)")
        }
    }

    @Test("decisions are remembered: valid until exp, lasting failures for a while, 'not yet valid' never")
    func remembered() async throws {
        let v = try await verifier()
        let good = try await hs256(claims())
        #expect(v.known(good) == nil)
        _ = try await v.verify(good)
        guard case .valid(let s) = v.known(good) else { Issue.record("a verified token is not remembered"); return }
        #expect(s.userID == "42")
        // Past its exp (plus leeway) the remembered session answers jwt_expired, without a signature check.
        guard case .rejected(let p) = v.known(good, now: Date().addingTimeInterval(3700)) else {
            Issue.record("an expired remembered token is still valid")
            return
        }
        #expect(p.code == .jwtExpired)

        let forged = try await hs256(claims(), secret: Array("another-secret-another-secret-32".utf8))
        _ = await code { () async throws(Problem) -> VerifiedSession in try await v.verify(forged) }
        guard case .rejected(let q) = v.known(forged) else { Issue.record("a bad signature is not remembered"); return }
        #expect(q.code == .jwtInvalid && q.detail.contains("signature"))
        #expect(v.known(forged, now: Date().addingTimeInterval(301)) == nil, "rejections are forgotten after 5 min")

        let early = try await hs256(claims(nbf: 600))
        _ = await code { () async throws(Problem) -> VerifiedSession in try await v.verify(early) }
        #expect(v.known(early) == nil, "a token that becomes valid later must be checked again")

        let huge = try await hs256(Claims(sub: SubjectClaim(value: String(repeating: "x", count: 3000)),
                                          exp: ExpirationClaim(value: Date().addingTimeInterval(60))),
                                   secret: Array("another-secret-another-secret-32".utf8))
        _ = await code { () async throws(Problem) -> VerifiedSession in try await v.verify(huge) }
        #expect(v.known(huge) == nil, "tokens over 2 KiB are not remembered")
    }

    @Test("HS/RS confusion: an HS256 token signed with the RSA public key is refused")
    func confusion() async throws {
        let rsa = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let publicPEM = rsa.publicKey.pemRepresentation
        // RS256 allowed only: an HS256 token is refused whatever it is signed with.
        let rsOnly = try await verifier(["RS256"], publicKeys: publicPEM)
        let forged = try await hs256(claims(), secret: Array(publicPEM.utf8))
        let got = await code { () async throws(Problem) -> VerifiedSession in try await rsOnly.verify(forged) }
        #expect(got == "jwt_invalid")
        // Both allowed: the HS256 token is checked only against the HMAC secret.
        let both = try await verifier(["RS256", "HS256"], publicKeys: publicPEM)
        let got2 = await code { () async throws(Problem) -> VerifiedSession in try await both.verify(forged) }
        #expect(got2 == "jwt_invalid")
        // A real RS256 token passes.
        let keys = JWTKeyCollection()
        await keys.add(rsa: try Insecure.RSA.PrivateKey(pem: rsa.pemRepresentation), digestAlgorithm: .sha256)
        let rs = try await keys.sign(claims())
        #expect(try await both.verify(rs).userID == "42")
        // …but not when RS256 is not in the allow-list.
        let hsOnly = try await verifier(["HS256"], publicKeys: publicPEM)
        let got3 = await code { () async throws(Problem) -> VerifiedSession in try await hsOnly.verify(rs) }
        #expect(got3 == "jwt_invalid")
    }

    @Test("ES256 through a JWKS document")
    func jwks() async throws {
        let key = ES256PrivateKey()
        let params = try #require(key.publicKey.parameters)
        let jwks = #"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","use":"sig","alg":"ES256","x":"\#(params.x)","y":"\#(params.y)"}]}"#
        let v = try await verifier(["ES256"], publicKeys: jwks)
        let keys = JWTKeyCollection()
        await keys.add(ecdsa: key, kid: "k1")
        let token = try await keys.sign(claims(), kid: "k1")
        #expect(try await v.verify(token).userID == "42")
    }

    /// A key file that serves none of the allowed algorithms gave a verifier refusing every JWT (jwt_invalid): it
    /// is now an error when the verifier is made (the process stops at start-up, exit 78).
    @Test("public keys that serve none of the allowed algorithms are refused when the verifier is made")
    func unusableKeys() async throws {
        let rsaPEM = try _RSA.Signing.PrivateKey(keySize: .bits2048).publicKey.pemRepresentation
        let ecPEM = ES256PrivateKey().publicKey.pemRepresentation
        let params = try #require(ES256PrivateKey().publicKey.parameters)
        let ecJWK = #"{"kty":"EC","crv":"P-256","kid":"k1","x":"\#(params.x)","y":"\#(params.y)"}"#
        func problem(_ algorithms: Set<String>, _ keys: String) async -> String? {
            do {
                _ = try await verifier(algorithms, publicKeys: keys)
                return nil
            } catch let p as Problem { return p.detail } catch { return "\(error)" }
        }
        #expect(await problem(["ES256"], rsaPEM)?.contains("an RSA key, for RS256") == true)
        #expect(await problem(["RS256"], ecPEM)?.contains("a P-256 key, for ES256") == true)
        // Keys kisgw cannot verify with, each named (all were "holds no RSA, P-256 or Ed25519 public key").
        let small = try _RSA.Signing.PrivateKey(unsafeKeySize: .init(bitCount: 1024)).publicKey.pemRepresentation
        #expect(await problem(["RS256"], small)?.contains("an RSA key of 1024 bits: RS256 needs one of at least 2048") == true)
        #expect(await problem(["ES256"], P384.Signing.PrivateKey().publicKey.pemRepresentation)?.contains("a P-384 key (ES384)") == true)
        #expect(await problem(["RS256", "ES256"], rsaPEM + "\n" + ecPEM)?.contains("more than one PEM block") == true)
        #expect(await problem(["ES256"], P256.Signing.PrivateKey().pemRepresentation)?.contains("holds a private key") == true)
        #expect(await problem(["RS256", "EdDSA"], #"{"keys":[]}"#)?.contains("no key for [auth.jwt] algorithms (EdDSA, RS256)") == true)
        #expect(await problem(["RS256"], #"{"keys":[\#(ecJWK)]}"#)?.contains("no key for") == true)
        #expect(await problem(["RS256"], #"{"kty":"RSA"}"#)?.contains("neither PEM nor a JWKS") == true)
        // Usable: the key's own algorithm allowed (by kty and crv when the JWK names no alg); HS256 alone reads no
        // public keys at all.
        #expect(await problem(["ES256"], ecPEM) == nil)
        #expect(await problem(["ES256", "RS256"], #"{"keys":[\#(ecJWK)]}"#) == nil)
        #expect(await problem(["HS256"], "not a key") == nil)
    }

    @Test("mintHS256 makes tokens the verifier accepts, with whole-second times")
    func mint() async throws {
        let token = try await JWTVerifier.mintHS256(secret: secret, sub: "user-7", ttl: 600)
        let v = try await verifier()
        #expect(try await v.verify(token).userID == "user-7")
        let payload = String(token.split(separator: ".")[1])
        #expect(!payload.isEmpty)
    }
}

@Suite("Problem documents")
struct ProblemTests {
    @Test("RFC 9457 fields, KIS codes, and WWW-Authenticate by code")
    func body() throws {
        let p = Problem(.upstreamError, "KIS failed", kisMsgCode: "EGW00002", kisMessage: "서버 에러")
        let json = try #require(try JSONSerialization.jsonObject(with: p.body()) as? [String: Any])
        #expect(json["type"] as? String == "https://kisgw.dev/problems/upstream_error")
        #expect(json["status"] as? Int == 502)
        #expect(json["code"] as? String == "upstream_error")
        #expect(json["kis_msg_cd"] as? String == "EGW00002")
        #expect(json["kis_msg1"] as? String == "서버 에러")
        #expect(Problem(.authRequired, "x").wwwAuthenticate == "Bearer")
        #expect(Problem(.kisTokenExpired, "x").wwwAuthenticate == #"Bearer error="invalid_token""#)
        #expect(Problem(.rateLimited, "x").wwwAuthenticate == nil)
    }
}
