public import Foundation
import Crypto
public import KIS
import NIOCore
public import Store

/// The seal keys (`[seal]`): AES-256-GCM keys by id; `current` seals, every key opens.
public struct SealKeyring: Sendable {
    public let current: String
    private let keys: [String: SymmetricKey]

    /// - Parameters:
    ///   - current: the id that seals new records; it must be among `keys`.
    ///   - keys: id → exactly 32 bytes.
    public init(current: String, keys: [String: [UInt8]]) throws(StoreError) {
        guard keys[current] != nil else {
            throw StoreError(.unknownKey, "the current seal key \(current) is not among the configured keys")
        }
        for (id, bytes) in keys where bytes.count != 32 {
            throw StoreError(.seal, "seal key \(id) must be 32 bytes, it has \(bytes.count)")
        }
        self.current = current
        self.keys = keys.mapValues { SymmetricKey(data: $0) }
    }

    /// A keyring with one random key, for a single process that keeps everything in memory (the demo).
    public static func ephemeral() -> SealKeyring {
        let bytes = SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }
        return try! SealKeyring(current: "k1", keys: ["k1": bytes])
    }

    public var keyIDs: [String] { keys.keys.sorted() }

    /// base64(nonce 12 ‖ ciphertext ‖ tag 16) of `plaintext`, bound to `aad`, with the current key.
    public func seal(_ plaintext: Data, aad: Data) throws(StoreError) -> (kid: String, sealed: String) {
        do {
            let box = try AES.GCM.seal(plaintext, using: keys[current]!, nonce: AES.GCM.Nonce(), authenticating: aad)
            guard let combined = box.combined else { throw StoreError(.seal, "sealing produced no output") }
            return (current, combined.base64EncodedString())
        } catch let e as StoreError {
            throw e
        } catch {
            throw StoreError(.seal, "sealing failed")
        }
    }

    /// A keyed fingerprint of `data`: lower-case hex HMAC-SHA256 under a key derived (HKDF-SHA256) from seal key `kid`
    /// for the key id and `context`. Equal data has equal fingerprints under one key id and context, so a database can
    /// index and compare them where sealed values (random nonces) cannot be; without the seal key a fingerprint tells
    /// nothing, and under another key id (even one with the same bytes) or context it is unrelated. The seal key
    /// itself never keys anything but AES-GCM.
    ///
    /// ```swift
    /// let fp = try keyring.fingerprint(Data(appKey.utf8), kid: row.kid, context: "kis_accounts.app_key_fp:LIVE")
    /// ```
    public func fingerprint(_ data: Data, kid: String, context: String) throws(StoreError) -> String {
        guard let key = keys[kid] else { throw StoreError(.unknownKey, "no seal key with id \(kid)") }
        return Self.fingerprint(data, key: key, kid: kid, context: context)
    }

    /// ``fingerprint(_:kid:context:)`` under every key: key id → fingerprint, to find what any key fingerprinted.
    public func fingerprints(_ data: Data, context: String) -> [String: String] {
        Dictionary(uniqueKeysWithValues: keys.map { ($0.key, Self.fingerprint(data, key: $0.value, kid: $0.key, context: context)) })
    }

    private static func fingerprint(_ data: Data, key: SymmetricKey, kid: String, context: String) -> String {
        let derived = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: key, info: Data("kisgw fingerprint:\(kid):\(context)".utf8), outputByteCount: 32)
        return lowercaseHex(HMAC<SHA256>.authenticationCode(for: data, using: derived))
    }

    /// Opens what `seal` made; fails for an unknown key id, a wrong key or AAD, or tampered data.
    public func open(_ sealed: String, kid: String, aad: Data) throws(StoreError) -> Data {
        guard let key = keys[kid] else { throw StoreError(.unknownKey, "no seal key with id \(kid)") }
        guard let data = Data(base64Encoded: sealed), data.count >= 12 + 16 else {
            throw StoreError(.seal, "the sealed value is not base64 of nonce, ciphertext and tag")
        }
        do {
            return try AES.GCM.open(AES.GCM.SealedBox(combined: data), using: key, authenticating: aad)
        } catch {
            throw StoreError(.seal, "the sealed value does not open with key \(kid) (wrong key, wrong name or tampered)")
        }
    }
}

/// `kisgw:tok:{sha256}` (store.md): who owns a KIS token, its environment and life, and its credentials sealed.
public struct TokenRecord: Codable, Sendable, Equatable {
    public var v: Int
    public var user_id: String
    public var env: KISEnvironment
    public var issued_at: Int64
    public var expires_at: Int64
    public var kid: String
    public var sealed: String
}

/// What a record seals: `{"access_token", "app_key", "app_secret"}`.
public struct SealedCredentials: Codable, Sendable, Equatable {
    public var access_token: String
    public var app_key: String
    public var app_secret: String
    public init(access_token: String, app_key: String, app_secret: String) {
        self.access_token = access_token
        self.app_key = app_key
        self.app_secret = app_secret
    }
}

/// An `issued` / `revoked` event on `kisgw:events`.
public struct TokenEvent: Codable, Sendable, Equatable {
    public var type: String
    public var sha256: String
    public var user_id: String
    public var env: KISEnvironment
    public init(type: String, sha256: String, user_id: String, env: KISEnvironment) {
        self.type = type
        self.sha256 = sha256
        self.user_id = user_id
        self.env = env
    }
}

/// A token record, resolved and opened.
public struct PublishedToken: Sendable, Equatable {
    public var userID: String
    public var environment: KISEnvironment
    public var issuedAt: Date
    public var expiresAt: Date
    public var sha256: String
    public var credentials: SealedCredentials
}

/// Token records in the shared store, exactly as store.md lays them out. The broker publishes and unpublishes;
/// gateways resolve.
public enum TokenDirectory {
    public static let eventsChannel = "events"

    /// Lower-case hex SHA-256 of the token's UTF-8 bytes.
    public static func sha256(of token: String) -> String {
        lowercaseHex(SHA256.hash(data: Data(token.utf8)))
    }

    public static func recordKey(_ sha256: String) -> String { "tok:" + sha256 }
    public static func userKey(_ userID: String, _ env: KISEnvironment) -> String { "user:\(userID):\(env.rawValue)" }

    /// Writes the record (TTL = seconds until expiry), adds it to the user's set, and announces `issued`.
    public static func publish(
        _ credentials: SealedCredentials, userID: String, environment: KISEnvironment, issuedAt: Date, expiresAt: Date,
        store: any SharedStore, keyring: SealKeyring, now: Date = Date()
    ) async throws(StoreError) {
        let sha = sha256(of: credentials.access_token)
        let key = recordKey(sha)
        let ttl = Int64(expiresAt.timeIntervalSince(now).rounded(.down))
        guard ttl > 0 else { return }
        let plaintext: Data
        do { plaintext = try JSONEncoder().encode(credentials) } catch { throw StoreError(.seal, "cannot encode credentials") }
        let (kid, sealed) = try keyring.seal(plaintext, aad: Data(store.fullKey(key).utf8))
        let record = TokenRecord(
            v: 1, user_id: userID, env: environment, issued_at: Int64(issuedAt.timeIntervalSince1970),
            expires_at: Int64(expiresAt.timeIntervalSince1970), kid: kid, sealed: sealed)
        let json: Data
        do { json = try JSONEncoder().encode(record) } catch { throw StoreError(.invalidRecord, "cannot encode the record") }
        try await store.set(key, to: ByteBuffer(bytes: json), ttl: .seconds(ttl))
        try await store.setAdd(userKey(userID, environment), members: [sha], ttlAtLeast: .seconds(ttl))
        try await announce(TokenEvent(type: "issued", sha256: sha, user_id: userID, env: environment), store: store)
    }

    /// Deletes the record, removes it from the user's set, and announces `revoked` (gateways forget it at once) — in
    /// one atomic step. (In three, a failure after the deletion lost the event: the reconciler finishes an unpublish
    /// only while the record is there, and gateways kept accepting the token from their decision caches.)
    public static func unpublish(
        sha256 sha: String, userID: String, environment: KISEnvironment, store: any SharedStore
    ) async throws(StoreError) {
        let event = try encoded(TokenEvent(type: "revoked", sha256: sha, user_id: userID, env: environment))
        try await store.delete(recordKey(sha), removing: sha, from: userKey(userID, environment), announcing: event,
                               on: eventsChannel)
    }

    static func announce(_ event: TokenEvent, store: any SharedStore) async throws(StoreError) {
        try await store.publish(try encoded(event), to: eventsChannel)
    }

    private static func encoded(_ event: TokenEvent) throws(StoreError) -> ByteBuffer {
        do { return ByteBuffer(bytes: try JSONEncoder().encode(event)) } catch {
            throw StoreError(.invalidRecord, "cannot encode the event")
        }
    }

    /// The value of `dead:{sha256}`: the code KIS refused the token with, and its owner.
    public struct DeadMark: Codable, Sendable, Equatable {
        public var msg_cd: String
        public var user_id: String?
        public var env: KISEnvironment?
    }

    public static func deadKey(_ sha256: String) -> String { "dead:" + sha256 }

    /// Records that KIS refused a token as expired or invalid (`EGW00123`/`EGW00121`) before its stated expiry, so the
    /// broker's refresh issues a new one instead of handing the same token back, then unpublishes it as the broker
    /// does (``unpublish(sha256:userID:environment:store:)``: the record, the user's set member and a `revoked`
    /// event in one step), so that every gateway forgets its decision at once rather than each spending a KIS call to
    /// learn the same. The mark comes first: the broker's reconciliation never republishes a token marked dead.
    public static func markDead(
        sha256 sha: String, msgCode: String, userID: String, environment: KISEnvironment, store: any SharedStore
    ) async throws(StoreError) {
        let mark: ByteBuffer
        do { mark = ByteBuffer(bytes: try JSONEncoder().encode(DeadMark(msg_cd: msgCode, user_id: userID, env: environment))) }
        catch { throw StoreError(.invalidRecord, "cannot encode the dead mark") }
        try await store.set(deadKey(sha), to: mark, ttl: .seconds(86_400))
        try await unpublish(sha256: sha, userID: userID, environment: environment, store: store)
    }

    /// The KIS code a token was refused with, if a gateway saw KIS refuse it.
    public static func deadReason(sha256 sha: String, store: any SharedStore) async throws(StoreError) -> String? {
        try await deadMark(sha256: sha, store: store)?.msg_cd
    }

    /// What `dead:{sha256}` says: the KIS code, and whose token it was (a mark written by an older kisgw holds the
    /// code alone: its owner is then unknown).
    public static func deadMark(sha256 sha: String, store: any SharedStore) async throws(StoreError) -> DeadMark? {
        guard let buffer = try await store.get(deadKey(sha)) else { return nil }
        if let mark = try? JSONDecoder().decode(DeadMark.self, from: Data(buffer.readableBytesView)) { return mark }
        return DeadMark(msg_cd: String(buffer: buffer), user_id: nil, env: nil)
    }

    /// The id of the seal key the record of `sha` is sealed with; nil when there is no record. The broker publishes a
    /// record again when it is sealed with a key other than its current one (a rotation), so that gateways which
    /// hold only the new key can open it before the old key goes.
    public static func sealKeyID(sha256 sha: String, store: any SharedStore) async throws(StoreError) -> String? {
        try await record(at: recordKey(sha), store: store)?.kid
    }

    /// The token record at `key`, decoded; nil when there is none.
    private static func record(at key: String, store: any SharedStore) async throws(StoreError) -> TokenRecord? {
        guard let buffer = try await store.get(key) else { return nil }
        do { return try JSONDecoder().decode(TokenRecord.self, from: Data(buffer.readableBytesView)) } catch {
            throw StoreError(.invalidRecord, "the record at \(key) is not a token record")
        }
    }

    /// The record of `token`, opened; nil when there is none (unknown, revoked, or expired away).
    public static func resolve(token: String, store: any SharedStore, keyring: SealKeyring) async throws(StoreError)
        -> PublishedToken?
    {
        let sha = sha256(of: token)
        let key = recordKey(sha)
        guard let record = try await record(at: key, store: store) else { return nil }
        guard record.v == 1 else { throw StoreError(.invalidRecord, "the record at \(key) has version \(record.v)") }
        let plaintext = try keyring.open(record.sealed, kid: record.kid, aad: Data(store.fullKey(key).utf8))
        let credentials: SealedCredentials
        do { credentials = try JSONDecoder().decode(SealedCredentials.self, from: plaintext) } catch {
            throw StoreError(.invalidRecord, "the sealed credentials at \(key) are malformed")
        }
        guard credentials.access_token == token else {
            throw StoreError(.invalidRecord, "the record at \(key) seals another token")
        }
        return PublishedToken(
            userID: record.user_id, environment: record.env,
            issuedAt: Date(timeIntervalSince1970: TimeInterval(record.issued_at)),
            expiresAt: Date(timeIntervalSince1970: TimeInterval(record.expires_at)), sha256: sha,
            credentials: credentials)
    }
}

extension String {
    /// Whether two user ids (a JWT's `sub`, a record's `user_id`) are the same bytes. Not `==`, which holds for
    /// canonically equivalent text (`"\u{212A}im" == "Kim"`): the store and the databases key users by their bytes,
    /// so a look-alike id is another user, and must not pass for its owner's.
    public func isSameUserID(_ other: String) -> Bool {
        utf8.elementsEqual(other.utf8)
    }
}
