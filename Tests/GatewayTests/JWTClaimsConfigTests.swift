import Foundation
import KisgwConfiguration
import ServerKit
import TestSupport
import Testing

/// `[auth.jwt] issuer` and `audience` (config.md), set in the configuration the gateway is built from, decide which
/// JWTs the chart route accepts (gateway-api.md: a wrong `iss`/`aud` is `jwt_invalid`).
@Suite("Gateway: [auth.jwt] issuer and audience from the configuration", .timeLimit(.minutes(2)))
struct JWTClaimsConfigTests {
    static let issuer = "kisgw-tests"
    static let audience = "charts"
    static let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"

    /// An HS256 JWT for `sub` signed with the gateway's secret, with exactly the `iss` and `aud` given (none if nil).
    static func jwt(_ sub: String, issuer: String?, audience: String?) async throws -> String {
        try await JWTVerifier.mintHS256(secret: Array(testSecret.utf8), sub: sub, ttl: 600, issuer: issuer,
                                        audience: audience)
    }

    @Test("a JWT without iss, with a wrong iss, without aud or with a wrong aud is refused jwt_invalid; both right pass",
          arguments: [
              ("no iss", nil, audience),
              ("wrong iss", "someone-else", audience),
              ("no aud", issuer, nil),
              ("wrong aud", issuer, "quotes"),
          ] as [(String, String?, String?)])
    func issuerAndAudienceReachTheVerifier(_ label: String, _ iss: String?, _ aud: String?) async throws {
        try await withGateway(config: { testConfig(simURL: $0, jwtIssuer: Self.issuer, jwtAudience: Self.audience) }) {
            g, _ in
            let user = "claims-" + label.replacingOccurrences(of: " ", with: "-")
            let kis = try await g.connect(user: user, appKey: "PSapp-" + user)
            // The KIS token is the user's and live: only the JWT's claims can be what is refused.
            let refused = try await g.get(Self.path, jwt: try await Self.jwt(user, issuer: iss, audience: aud), kis: kis)
            #expect(refused.status == 401, "\(label): \(refused.text)")
            #expect(refused.code == "jwt_invalid", "\(label)")
            #expect(refused.header("WWW-Authenticate")?.contains("invalid_token") == true, "\(label)")
            let accepted = try await g.get(
                Self.path, jwt: try await Self.jwt(user, issuer: Self.issuer, audience: Self.audience), kis: kis)
            #expect(accepted.status == 200, "\(label), right iss and aud: \(accepted.text)")
            #expect(!accepted.candles.isEmpty)
        }
    }
}
