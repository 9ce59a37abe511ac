public import KIS

/// A token's state in `kis_tokens.status`.
public enum TokenStatus: String, Sendable, Codable, CaseIterable {
    case active = "ACTIVE"
    case revoked = "REVOKED"
    case expired = "EXPIRED"
}

/// A `kis_accounts` row as stored: the app key, secret and account number are sealed (base64 of AES-256-GCM
/// nonce ‖ ciphertext ‖ tag) with the seal key `kid`, and the app key fingerprinted under that key. See
/// ``AccountVault`` for sealing and opening.
public struct StoredAccount: Sendable, Equatable {
    public var userID: String
    public var environment: KISEnvironment
    public var appKey: String
    public var appSecret: String
    public var accountNumber: String
    public var kid: String
    public var isActive: Bool
    /// Unix seconds.
    public var createdAt: Int64
    public var updatedAt: Int64
    /// `app_key_fp`: the app key's keyed fingerprint under the seal key `kid`
    /// (``AccountVault/appKeyFingerprint(_:_:kid:)``), which the one-user-per-app-key check looks up by index; nil
    /// in a row written before the column existed, until the broker fills it at start-up.
    public var appKeyFingerprint: String?

    public init(userID: String, environment: KISEnvironment, appKey: String, appSecret: String, accountNumber: String,
                kid: String, isActive: Bool, createdAt: Int64, updatedAt: Int64, appKeyFingerprint: String? = nil) {
        self.userID = userID
        self.environment = environment
        self.appKey = appKey
        self.appSecret = appSecret
        self.accountNumber = accountNumber
        self.kid = kid
        self.isActive = isActive
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.appKeyFingerprint = appKeyFingerprint
    }
}

/// A `kis_tokens` row as stored: the access token sealed with the seal key `kid`, its SHA-256 in clear (the
/// Redis record name), and its life as KIS gave it.
public struct StoredToken: Sendable, Equatable {
    public var userID: String
    public var environment: KISEnvironment
    public var accessToken: String
    public var tokenSHA256: String
    public var kid: String
    /// Unix seconds.
    public var issuedAt: Int64
    public var expiresAt: Int64
    public var status: TokenStatus
    public var updatedAt: Int64

    public init(userID: String, environment: KISEnvironment, accessToken: String, tokenSHA256: String, kid: String,
                issuedAt: Int64, expiresAt: Int64, status: TokenStatus, updatedAt: Int64) {
        self.userID = userID
        self.environment = environment
        self.accessToken = accessToken
        self.tokenSHA256 = tokenSHA256
        self.kid = kid
        self.issuedAt = issuedAt
        self.expiresAt = expiresAt
        self.status = status
        self.updatedAt = updatedAt
    }
}

/// A failure of the broker's database.
public struct RepositoryError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "RepositoryError: \(message)" }
}

/// Where the broker keeps accounts and tokens: the source of truth (Redis is a published copy).
///
/// Two implementations pass the same contract tests: ``SQLiteRepository`` (GRDB, the default) and
/// ``PostgresRepository`` (postgres-nio, for several broker copies). Rows arrive and leave sealed; this layer
/// never sees a secret in clear.
public protocol BrokerRepository: Sendable {
    /// Creates or upgrades the tables (`kis_accounts`, `kis_tokens`). Idempotent.
    func migrate() async throws
    /// Throws unless the database answers.
    func ping() async throws

    func account(userID: String, environment: KISEnvironment) async throws -> StoredAccount?
    /// Every account (the scheduler's pass, re-encryption after a key rotation).
    func allAccounts() async throws -> [StoredAccount]
    /// The accounts of `environment` that may hold an app key, found through the index on (`environment`,
    /// `app_key_fp`): those whose (`seal_kid`, `app_key_fp`) is a pair of `appKeyFingerprints` (key id → the app
    /// key's fingerprint under that key), and those without a fingerprint (written before the column existed). The
    /// caller opens them and compares: a fingerprint alone proves nothing.
    func accounts(environment: KISEnvironment, appKeyFingerprints: [String: String]) async throws -> [StoredAccount]
    /// The accounts without `app_key_fp`, for ``AccountVault/fillAppKeyFingerprints(in:logger:)``.
    func accountsWithoutAppKeyFingerprint() async throws -> [StoredAccount]
    /// Sets `app_key_fp` of an account that has none to `account.appKeyFingerprint`, only while the row is still
    /// sealed as `account` (the same `seal_kid` and sealed `app_key`). Returns whether it did.
    func setAppKeyFingerprint(_ account: StoredAccount) async throws -> Bool
    /// Inserts or replaces the account (unique per user and environment; `created_at` of an existing row is
    /// kept), when given inserts or replaces `token` (unique by `token_sha256`), and marks the tokens `revoking`
    /// REVOKED (a replaced app key's, `updated_at` the account's), in one transaction.
    func saveAccount(_ account: StoredAccount, token: StoredToken?, revoking: [String]) async throws
    /// Sets `is_active` of an account.
    func setAccountActive(userID: String, environment: KISEnvironment, isActive: Bool, updatedAt: Int64) async throws
    /// Marks the account inactive and the tokens `revoking` REVOKED, in one transaction: a disconnect's first write,
    /// so that one failing after it leaves an account the scheduler passes over, whatever becomes of the rows.
    func deactivateAccount(userID: String, environment: KISEnvironment, revoking: [String], updatedAt: Int64)
        async throws
    /// Deletes an account and all its tokens; returns whether the account existed.
    @discardableResult
    func deleteAccount(userID: String, environment: KISEnvironment) async throws -> Bool

    /// Inserts or replaces a token (unique by `token_sha256`).
    func saveToken(_ token: StoredToken) async throws
    /// The tokens of an account, newest `issued_at` first.
    func tokens(userID: String, environment: KISEnvironment) async throws -> [StoredToken]
    /// Every token with `status`.
    func tokens(status: TokenStatus) async throws -> [StoredToken]
    /// The token whose SHA-256 is `sha256`, whoever's it is.
    func token(sha256: String) async throws -> StoredToken?
    func setStatus(_ status: TokenStatus, tokenSHA256s: [String], updatedAt: Int64) async throws
    /// Deletes the EXPIRED and REVOKED tokens that expired before `before` (Unix seconds); returns how many.
    @discardableResult
    func deleteEndedTokens(expiredBefore before: Int64) async throws -> Int

    /// Replaces the sealed fields, app key fingerprint and key id of an account only if the row is still as `old`
    /// was read: the same key id and the same sealed app key, secret and account number. Every write seals anew (a
    /// fresh nonce), so a row written since — a user connecting another key pair through another broker copy, even
    /// one sealing with that same key — is left as written; so are concurrent re-encryptions. Returns whether it did.
    func replaceAccountSeal(_ account: StoredAccount, replacing old: StoredAccount) async throws -> Bool
    /// Replaces the sealed access token and key id of a token only if it is still sealed with `expectedKid`.
    func replaceTokenSeal(tokenSHA256: String, accessToken: String, kid: String, expectedKid: String) async throws
        -> Bool
}

extension BrokerRepository {
    /// ``saveAccount(_:token:revoking:)`` revoking nothing.
    public func saveAccount(_ account: StoredAccount, token: StoredToken?) async throws {
        try await saveAccount(account, token: token, revoking: [])
    }
}

/// The tables, as both implementations create them (types differ only where the dialects do).
enum Schema {
    static let accountColumns =
        "user_id, environment, app_key, app_secret, account_number, seal_kid, is_active, created_at, updated_at, app_key_fp"
    static let tokenColumns =
        "user_id, environment, access_token, token_sha256, seal_kid, issued_at, expires_at, status, updated_at"
}
