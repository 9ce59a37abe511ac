import Crypto
import Foundation
import KIS
import Redis
import Store
import Synchronization
import TestSupport
import Testing
import Tokens

/// store.md's layout read back from Redis by its literal names, with a Redis connection of the test's own (not
/// through the store that wrote it), and the sealed credentials opened with swift-crypto alone.
@Suite("Store layout in real Redis: the events channel and the sealed bytes", .timeLimit(.minutes(2)))
struct StoreLayoutTests {
    /// A Redis client of the test's own on KISGW_TEST_REDIS_URL.
    static func rawClient() throws -> RedisClient {
        var configuration = try RedisConfiguration(url: TestServices.requireRedisURL())
        configuration.commandTimeout = .seconds(10)
        return RedisClient(configuration: configuration, logger: Backend.logger)
    }

    /// Every message of `subscription`, as (channel, payload), gathered in the background.
    final class Received: Sendable {
        let messages = Mutex<[(channel: String, payload: String)]>([])
        var all: [(channel: String, payload: String)] { messages.withLock { $0 } }

        func gather(_ subscription: RedisSubscription) -> Task<Void, Never> {
            Task {
                for await message in subscription {
                    let entry = (channel: message.channel, payload: message.string)
                    messages.withLock { $0.append(entry) }
                }
            }
        }
    }

    static func object(_ payload: String) -> [String: String]? {
        (try? JSONSerialization.jsonObject(with: Data(payload.utf8))) as? [String: String]
    }

    /// The events channel is `{prefix}events` in Redis: `kisgw:events` with the default prefix. A revocation made by
    /// the broker's code (``TokenDirectory/unpublish(sha256:userID:environment:store:)``, the same one ``markDead``
    /// uses) arrives on that literal channel as `{"type": "revoked", "sha256", "user_id", "env"}`, as does `issued`.
    @Test("a revocation arrives on the literal Redis channel {prefix}events (kisgw:events by default), in store.md's form",
          arguments: [nil, "acme-layout:"] as [String?])
    func eventsChannelIsPrefixedEvents(_ prefix: String?) async throws {
        let storeClient = try Self.rawClient()
        let listener = try Self.rawClient()
        // nil: the store's default prefix, which store.md names `kisgw:`.
        let store = prefix.map { RedisStore(client: storeClient, keyPrefix: $0) } ?? RedisStore(client: storeClient)
        let base = prefix ?? "kisgw:"
        let channel = base + "events"
        #expect(store.keyPrefix == base)

        let received = Received()
        let gathering = received.gather(try await listener.subscribe(to: [channel]))
        defer { gathering.cancel() }
        // The subscription is live once a probe published on the literal name comes back.
        let probe = "probe-\(UUID().uuidString)"
        let live = await eventually(timeout: .seconds(10), every: .milliseconds(100)) {
            _ = try? await listener.publish(RedisArgument(probe), to: channel)
            return received.all.contains { $0.payload == probe }
        }
        try #require(live, "the raw subscription to \(channel) never delivered")

        let user = "layout-\(UUID().uuidString.prefix(8))"
        let token = "kis-access-token-\(UUID().uuidString)"
        let sha = TokenDirectory.sha256(of: token)
        let ring = SealKeyring.ephemeral()
        try await TokenDirectory.publish(
            SealedCredentials(access_token: token, app_key: "APPKEY", app_secret: "APPSECRET"), userID: user,
            environment: .live, issuedAt: Date(), expiresAt: Date().addingTimeInterval(600), store: store, keyring: ring)
        try await TokenDirectory.unpublish(sha256: sha, userID: user, environment: .live, store: store)

        let expected: [(String, [String: String])] = [
            ("issued", ["type": "issued", "sha256": sha, "user_id": user, "env": "LIVE"]),
            ("revoked", ["type": "revoked", "sha256": sha, "user_id": user, "env": "LIVE"]),
        ]
        let arrived = await eventually(timeout: .seconds(10)) {
            received.all.filter { Self.object($0.payload)?["sha256"] == sha }.count >= 2
        }
        #expect(arrived, "events seen on \(channel): \(received.all.map(\.payload))")
        let ours = received.all.filter { Self.object($0.payload)?["sha256"] == sha }
        #expect(ours.map(\.channel).allSatisfy { $0 == channel })
        #expect(ours.compactMap { Self.object($0.payload) } == expected.map(\.1))
        // The record and the user's set are gone, under their literal names.
        #expect(try await listener.exists([base + "tok:" + sha]) == 0)
        #expect(try await listener.exists([base + "user:\(user):LIVE"]) == 0)

        await listener.shutdown()
        await storeClient.shutdown()
    }

    /// `sealed` is base64 of `nonce (12) ‖ ciphertext ‖ tag (16)`, AES-256-GCM under the seal key named by `kid`, with
    /// the record's full key name as AAD, of `{"access_token", "app_key", "app_secret"}`: anyone holding the key opens
    /// it with a plain AES-GCM implementation, no kisgw code involved.
    @Test("sealed opens with swift-crypto from raw[0..<12], raw[12..<count-16], raw.suffix(16) and the kid's key")
    func sealedIsNonceCiphertextTag() async throws {
        let keyOne = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let keyTwo = (0..<32).map { _ in UInt8.random(in: 0...255) }
        // Sealing with k2 (the current key) while k1 is also held: the record's kid names the key to open with.
        let ring = try SealKeyring(current: "k2", keys: ["k1": keyOne, "k2": keyTwo])
        let client = try Self.rawClient()
        let store = RedisStore(client: client)  // the default prefix, `kisgw:`
        let user = "layout-\(UUID().uuidString.prefix(8))"
        let token = "kis-access-token-\(UUID().uuidString)"
        let sha = TokenDirectory.sha256(of: token)
        let recordKey = "kisgw:tok:" + sha
        let now = Date()
        try await TokenDirectory.publish(
            SealedCredentials(access_token: token, app_key: "PSapp-layout", app_secret: "the-app-secret"), userID: user,
            environment: .sandbox, issuedAt: now, expiresAt: now.addingTimeInterval(600), store: store, keyring: ring)

        // The record as Redis holds it, read by its literal name.
        let stored = try #require(try await client.getString(recordKey), "no record at \(recordKey)")
        let record = try #require(try JSONSerialization.jsonObject(with: Data(stored.utf8)) as? [String: Any])
        #expect(record["kid"] as? String == "k2")
        let sealed = try #require(record["sealed"] as? String)
        let raw = try #require(Data(base64Encoded: sealed), "sealed is not base64")
        try #require(raw.count > 12 + 16)

        let box = try AES.GCM.SealedBox(
            nonce: AES.GCM.Nonce(data: raw[raw.startIndex..<raw.startIndex + 12]),
            ciphertext: raw[(raw.startIndex + 12)..<(raw.endIndex - 16)],
            tag: raw.suffix(16))
        let plaintext = try AES.GCM.open(box, using: SymmetricKey(data: keyTwo), authenticating: Data(recordKey.utf8))
        let payload = try #require(try JSONSerialization.jsonObject(with: plaintext) as? [String: String])
        #expect(payload == ["access_token": token, "app_key": "PSapp-layout", "app_secret": "the-app-secret"])
        #expect(raw.count == 12 + plaintext.count + 16)  // GCM: the ciphertext is as long as the plaintext

        // Bound to that key and that name: the other key, or the name without its prefix, does not open it.
        #expect(throws: (any Error).self) {
            try AES.GCM.open(box, using: SymmetricKey(data: keyOne), authenticating: Data(recordKey.utf8))
        }
        #expect(throws: (any Error).self) {
            try AES.GCM.open(box, using: SymmetricKey(data: keyTwo), authenticating: Data(("tok:" + sha).utf8))
        }

        _ = try await client.delete([recordKey, "kisgw:user:\(user):SANDBOX"])
        await client.shutdown()
    }
}
