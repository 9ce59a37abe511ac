import Foundation
import KIS
import Logging
import ServerKit
import Store
import TestSupport
import Testing
import Tokens

/// store.md: "A gateway accepts `X-KIS-Token: T` for user U when `kisgw:tok:{sha256(T)}` exists, its `user_id` is U,
/// and `expires_at` is in the future" — all three, not the record's existence alone.
@Suite("Gateway: a token record's expires_at is checked, not only its existence", .timeLimit(.minutes(2)))
struct TokenRecordExpiryTests {
    static let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"

    @Test("a record still in Redis (positive TTL) whose expires_at has passed is refused kis_token_expired")
    func recordPresentButPastExpiresAt() async throws {
        try await withGateway(store: .redis) { g, _ in
            let user = "expired-record"
            let appKey = "PSapp-" + user
            // A token KIS still honours (the simulator's own expiry is hours away)...
            let client = KISClient(baseURL: g.simURL, logger: Logger(label: "test"))
            let issued = try await client.issueToken(appKey: appKey, appSecret: "secret-" + appKey)
            #expect(issued.expiresAt > Date().addingTimeInterval(3600))
            // ...published by the broker's own code, as if an hour ago, with an expires_at two minutes past: the
            // record's TTL (expires_at − the publishing time) is still ~58 minutes, so the record is there.
            let now = Date()
            let expiresAt = now.addingTimeInterval(-120)
            try await TokenDirectory.publish(
                SealedCredentials(access_token: issued.accessToken, app_key: appKey, app_secret: "secret-" + appKey),
                userID: user, environment: .live, issuedAt: now.addingTimeInterval(-3600), expiresAt: expiresAt,
                store: g.store, keyring: g.keyring, now: now.addingTimeInterval(-3600))
            let key = TokenDirectory.recordKey(TokenDirectory.sha256(of: issued.accessToken))
            guard case .expiresIn(let ttl) = try await g.store.timeToLive(key) else {
                Issue.record("the record must exist with a TTL")
                return
            }
            #expect(ttl > .seconds(3000))
            let record = try #require(try await TokenDirectory.resolve(token: issued.accessToken, store: g.store,
                                                                       keyring: g.keyring))
            #expect(record.userID == user)
            #expect(record.expiresAt == Date(timeIntervalSince1970: expiresAt.timeIntervalSince1970.rounded(.down)))

            let refused = try await g.get(Self.path, jwt: try await g.jwt(user), kis: issued.accessToken)
            #expect(refused.status == 401, "\(refused.text)")
            #expect(refused.code == "kis_token_expired")
            #expect(refused.header("WWW-Authenticate") == #"Bearer error="invalid_token""#)
            // Asked again (nothing remembered the token as good meanwhile): still refused.
            let again = try await g.get(Self.path, jwt: try await g.jwt(user), kis: issued.accessToken)
            #expect(again.code == "kis_token_expired")
            #expect(try await g.simStats()["domestic_daily"] ?? 0 == 0)  // KIS never asked with it

            // The same token, republished with a future expires_at, is accepted: the only difference was the expiry.
            try await TokenDirectory.publish(
                SealedCredentials(access_token: issued.accessToken, app_key: appKey, app_secret: "secret-" + appKey),
                userID: user, environment: .live, issuedAt: now, expiresAt: now.addingTimeInterval(3600),
                store: g.store, keyring: g.keyring, now: now)
            let accepted = try await g.get(Self.path, jwt: try await g.jwt(user), kis: issued.accessToken)
            #expect(accepted.status == 200, "\(accepted.text)")
        }
    }
}
