import Foundation
import KisgwConfiguration
import ServerKit
import Testing
import TestSupport

/// `[auth.jwt] issuer` and `audience` (config.md), set in the configuration the broker is built from, decide which
/// JWTs its `/api/kis/*` routes accept: "verified exactly as the gateway does" (broker-api.md), so a wrong `iss`/`aud`
/// is `jwt_invalid` (gateway-api.md).
@Suite("Broker: [auth.jwt] issuer and audience from the configuration", .timeLimit(.minutes(2)))
struct BrokerJWTClaimsConfigTests {
    static let issuer = "kisgw-tests"
    static let audience = "charts"

    @Test("a JWT without iss, with a wrong iss, without aud or with a wrong aud is refused jwt_invalid; both right pass")
    func issuerAndAudienceReachTheVerifier() async throws {
        try await withBroker(config: {
            testConfig(simURL: $0, database: $1, jwtIssuer: Self.issuer, jwtAudience: Self.audience)
        }) { b in
            let user = "claims-user"
            func jwt(issuer: String?, audience: String?) async throws -> String {
                try await JWTVerifier.mintHS256(secret: Array(testSecret.utf8), sub: user, ttl: 600, issuer: issuer,
                                                audience: audience, now: b.clock.now())
            }
            let refused: [(String, String?, String?)] = [
                ("no iss", nil, Self.audience),
                ("wrong iss", "someone-else", Self.audience),
                ("no aud", Self.issuer, nil),
                ("wrong aud", Self.issuer, "quotes"),
            ]
            let body = accountBody(appKey("claims"))
            for (label, iss, aud) in refused {
                let token = try await jwt(issuer: iss, audience: aud)
                let issue = try await b.post("/api/kis/token", body, jwt: token)
                #expect(issue.status == 401, "\(label): \(issue.text)")
                #expect(issue.code == "jwt_invalid", "\(label)")
                let account = try await b.get("/api/kis/account?environment=SANDBOX", jwt: token)
                #expect(account.status == 401, "\(label): \(account.text)")
                #expect(account.code == "jwt_invalid", "\(label)")
            }
            #expect(try await b.issuances() == 0)  // nothing got as far as KIS

            let good = try await jwt(issuer: Self.issuer, audience: Self.audience)
            let issued = try await b.post("/api/kis/token", body, jwt: good)
            #expect(issued.status == 200, "\(issued.text)")
            #expect((issued.json["token"] as? String)?.isEmpty == false)
            let account = try await b.get("/api/kis/account?environment=SANDBOX", jwt: good)
            #expect(account.status == 200, "\(account.text)")
            #expect(account.json["connected"] as? Bool == true)
        }
    }
}
