import Foundation
import KIS
import NIOCore
import Store
import Testing
import Tokens

/// Token records, sealing and events as store.md lays them out.
@Suite("Token records and sealing", .timeLimit(.minutes(2)))
struct TokenRecordTests {
    static let keyOne = [UInt8](repeating: 1, count: 32)
    static let keyTwo = [UInt8](repeating: 2, count: 32)
    let ring = try! SealKeyring(current: "k1", keys: ["k1": keyOne])
    let aad = Data("kisgw:tok:abc".utf8)

    @Test func sha256HexAndKeyNames() {
        #expect(TokenDirectory.sha256(of: "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(TokenDirectory.recordKey("ab12") == "tok:ab12")
        #expect(TokenDirectory.userKey("42", .live) == "user:42:LIVE")
        #expect(TokenDirectory.userKey("42", .sandbox) == "user:42:SANDBOX")
        #expect(TokenDirectory.eventsChannel == "events")
        #expect(MemoryStore().fullKey(TokenDirectory.recordKey("ab")) == "kisgw:tok:ab")
    }

    @Test func keyringValidatesKeys() {
        #expect(throws: StoreError.self) { try SealKeyring(current: "k9", keys: ["k1": Self.keyOne]) }
        #expect(throws: StoreError.self) { try SealKeyring(current: "k1", keys: ["k1": [UInt8](repeating: 0, count: 31)]) }
    }

    @Test func sealRoundTripAndLayout() throws {
        let plaintext = Data(#"{"access_token":"T","app_key":"K","app_secret":"S"}"#.utf8)
        let (kid, sealed) = try ring.seal(plaintext, aad: aad)
        #expect(kid == "k1")
        let raw = try #require(Data(base64Encoded: sealed))
        #expect(raw.count == 12 + plaintext.count + 16)
        #expect(try ring.open(sealed, kid: kid, aad: aad) == plaintext)
        // A fresh nonce every time.
        #expect(try ring.seal(plaintext, aad: aad).sealed != sealed)
    }

    @Test func wrongKeyWrongNameTamperedAndUnknownKidAllFail() throws {
        let plaintext = Data("secret".utf8)
        let (kid, sealed) = try ring.seal(plaintext, aad: aad)
        let impostor = try SealKeyring(current: "k1", keys: ["k1": Self.keyTwo])
        #expect(throws: StoreError.self) { try impostor.open(sealed, kid: kid, aad: aad) }
        #expect(throws: StoreError.self) { try ring.open(sealed, kid: kid, aad: Data("kisgw:tok:other".utf8)) }
        var raw = try #require(Data(base64Encoded: sealed))
        raw[14] ^= 0x01
        #expect(throws: StoreError.self) { try ring.open(raw.base64EncodedString(), kid: kid, aad: aad) }
        var tag = try #require(Data(base64Encoded: sealed))
        tag[tag.count - 1] ^= 0x80
        #expect(throws: StoreError.self) { try ring.open(tag.base64EncodedString(), kid: kid, aad: aad) }
        #expect(throws: StoreError.self) { try ring.open("not base64!", kid: kid, aad: aad) }
        do {
            _ = try ring.open(sealed, kid: "k7", aad: aad)
            Issue.record("unknown kid must fail")
        } catch {
            #expect(error.code == .unknownKey)
        }
    }

    @Test func rotatedKeyringStillOpensOldRecords() throws {
        let (oldKid, oldSealed) = try ring.seal(Data("old".utf8), aad: aad)
        let rotated = try SealKeyring(current: "k2", keys: ["k1": Self.keyOne, "k2": Self.keyTwo])
        #expect(try rotated.open(oldSealed, kid: oldKid, aad: aad) == Data("old".utf8))
        let (newKid, newSealed) = try rotated.seal(Data("new".utf8), aad: aad)
        #expect(newKid == "k2")
        #expect(throws: StoreError.self) { try ring.open(newSealed, kid: newKid, aad: aad) }
    }

    @Test(arguments: Backend.allCases)
    func publishResolveUnpublish(_ backend: Backend) async throws {
        let (store, close) = try backend.makeStore()
        let events = try await store.subscribe(to: TokenDirectory.eventsChannel)
        var eventIterator = events.makeAsyncIterator()
        let token = "kis-access-token-\(UUID().uuidString)"
        let credentials = SealedCredentials(access_token: token, app_key: "APPKEY", app_secret: "APPSECRET")
        let now = Date()
        try await TokenDirectory.publish(
            credentials, userID: "42", environment: .sandbox, issuedAt: now,
            expiresAt: now.addingTimeInterval(3600), store: store, keyring: ring, now: now)
        let sha = TokenDirectory.sha256(of: token)

        // The record: exactly the store.md fields, TTL until expires_at, nothing readable in clear.
        let stored = try #require(try await store.get(TokenDirectory.recordKey(sha)))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(stored.readableBytesView)) as? [String: Any])
        #expect(Set(json.keys) == ["v", "user_id", "env", "issued_at", "expires_at", "kid", "sealed"])
        #expect(json["v"] as? Int == 1)
        #expect(json["user_id"] as? String == "42")
        #expect(json["env"] as? String == "SANDBOX")
        #expect(json["kid"] as? String == "k1")
        #expect((json["expires_at"] as? Int).map { $0 - (json["issued_at"] as? Int ?? 0) } == 3600)
        let text = stored.text
        #expect(!text.contains(token) && !text.contains("APPSECRET") && !text.contains("APPKEY"))
        guard case .expiresIn(let ttl) = try await store.timeToLive(TokenDirectory.recordKey(sha)) else {
            Issue.record("token record must expire")
            return
        }
        #expect(ttl > .seconds(3500) && ttl <= .seconds(3600))
        #expect(try await store.setMembers(TokenDirectory.userKey("42", .sandbox)) == [sha])
        // The sealed payload (store.md): the AAD is the record's full key, prefix included; the plaintext is exactly
        // the token and the app key pair.
        let record = try JSONDecoder().decode(TokenRecord.self, from: Data(stored.readableBytesView))
        let fullKey = store.keyPrefix + "tok:" + sha
        let plaintext = try ring.open(record.sealed, kid: record.kid, aad: Data(fullKey.utf8))
        let payload = try #require(try JSONSerialization.jsonObject(with: plaintext) as? [String: String])
        #expect(payload == ["access_token": token, "app_key": "APPKEY", "app_secret": "APPSECRET"])
        #expect(throws: StoreError.self) { try ring.open(record.sealed, kid: record.kid, aad: Data(("tok:" + sha).utf8)) }

        let issued = try #require(await eventIterator.next())
        let issuedJSON = try #require(try JSONSerialization.jsonObject(with: Data(issued.readableBytesView)) as? [String: String])
        #expect(issuedJSON == ["type": "issued", "sha256": sha, "user_id": "42", "env": "SANDBOX"])

        let resolved = try #require(try await TokenDirectory.resolve(token: token, store: store, keyring: ring))
        #expect(resolved.userID == "42")
        #expect(resolved.environment == .sandbox)
        #expect(resolved.credentials == credentials)
        #expect(resolved.sha256 == sha)
        #expect(try await TokenDirectory.resolve(token: token + "x", store: store, keyring: ring) == nil)

        // A record moved to another key does not open: the key name is the AAD.
        let otherToken = token + "-other"
        try await store.set(TokenDirectory.recordKey(TokenDirectory.sha256(of: otherToken)), to: stored, ttl: .seconds(60))
        await #expect(throws: StoreError.self) {
            try await TokenDirectory.resolve(token: otherToken, store: store, keyring: ring)
        }

        try await TokenDirectory.unpublish(sha256: sha, userID: "42", environment: .sandbox, store: store)
        #expect(try await TokenDirectory.resolve(token: token, store: store, keyring: ring) == nil)
        #expect(try await store.setMembers(TokenDirectory.userKey("42", .sandbox)).isEmpty)
        let revoked = try #require(await eventIterator.next())
        let revokedJSON = try #require(try JSONSerialization.jsonObject(with: Data(revoked.readableBytesView)) as? [String: String])
        #expect(revokedJSON == ["type": "revoked", "sha256": sha, "user_id": "42", "env": "SANDBOX"])
        await close()
    }
}
