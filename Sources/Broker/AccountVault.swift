import Foundation
public import KIS
public import Logging
public import Store
public import Tokens

/// An account in clear, as the broker uses it for a moment and never logs it.
public struct Account: Sendable, Equatable {
    public var userID: String
    public var environment: KISEnvironment
    public var appKey: String
    public var appSecret: String
    /// `12345678-01`.
    public var accountNumber: String
    public var isActive: Bool
    public var createdAt: Int64
    public var updatedAt: Int64

    public init(userID: String, environment: KISEnvironment, appKey: String, appSecret: String, accountNumber: String,
                isActive: Bool = true, createdAt: Int64, updatedAt: Int64) {
        self.userID = userID
        self.environment = environment
        self.appKey = appKey
        self.appSecret = appSecret
        self.accountNumber = accountNumber
        self.isActive = isActive
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }
}

/// A token in clear.
public struct BrokerToken: Sendable, Equatable {
    public var userID: String
    public var environment: KISEnvironment
    public var accessToken: String
    public var sha256: String
    public var issuedAt: Int64
    public var expiresAt: Int64
    public var status: TokenStatus

    public init(userID: String, environment: KISEnvironment, accessToken: String, issuedAt: Int64, expiresAt: Int64,
                status: TokenStatus = .active) {
        self.userID = userID
        self.environment = environment
        self.accessToken = accessToken
        self.sha256 = TokenDirectory.sha256(of: accessToken)
        self.issuedAt = issuedAt
        self.expiresAt = expiresAt
        self.status = status
    }
}

/// Seals and opens the secret columns with the seal keyring (AES-256-GCM, the key id stored with the row).
///
/// Each field's additional authenticated data names the table, column and row (`kis_accounts.app_secret:42:LIVE`),
/// so a sealed value copied to another row or column does not open. The app key is fingerprinted too
/// (`app_key_fp`, keyed with the row's seal key), so that the accounts holding an app key are found by index.
public struct AccountVault: Sendable {
    public let keyring: SealKeyring

    public init(keyring: SealKeyring) { self.keyring = keyring }

    static func aad(_ column: String, _ userID: String, _ env: KISEnvironment, _ extra: String? = nil) -> Data {
        var s = "\(column):\(userID):\(env.rawValue)"
        if let extra { s += ":" + extra }
        return Data(s.utf8)
    }

    public func seal(_ account: Account) throws(StoreError) -> StoredAccount {
        let (kid, appKey) = try keyring.seal(
            Data(account.appKey.utf8), aad: Self.aad("kis_accounts.app_key", account.userID, account.environment))
        let (_, appSecret) = try keyring.seal(
            Data(account.appSecret.utf8), aad: Self.aad("kis_accounts.app_secret", account.userID, account.environment))
        let (_, number) = try keyring.seal(
            Data(account.accountNumber.utf8),
            aad: Self.aad("kis_accounts.account_number", account.userID, account.environment))
        return StoredAccount(
            userID: account.userID, environment: account.environment, appKey: appKey, appSecret: appSecret,
            accountNumber: number, kid: kid, isActive: account.isActive, createdAt: account.createdAt,
            updatedAt: account.updatedAt,
            appKeyFingerprint: try appKeyFingerprint(account.appKey, account.environment, kid: kid))
    }

    public func open(_ row: StoredAccount) throws(StoreError) -> Account {
        Account(
            userID: row.userID, environment: row.environment, appKey: try openAppKey(row),
            appSecret: try Self.field(row.appSecret, "kis_accounts.app_secret", of: row, keyring),
            accountNumber: try Self.field(row.accountNumber, "kis_accounts.account_number", of: row, keyring),
            isActive: row.isActive, createdAt: row.createdAt, updatedAt: row.updatedAt)
    }

    /// The app key of a row, opening that column alone (the one-user-per-app-key check needs no more).
    public func openAppKey(_ row: StoredAccount) throws(StoreError) -> String {
        try Self.field(row.appKey, "kis_accounts.app_key", of: row, keyring)
    }

    private static func field(_ sealed: String, _ column: String, of row: StoredAccount, _ keyring: SealKeyring)
        throws(StoreError) -> String
    {
        let data = try keyring.open(sealed, kid: row.kid, aad: aad(column, row.userID, row.environment))
        return String(decoding: data, as: UTF8.self)
    }

    /// `app_key_fp`: the app key's keyed fingerprint (``SealKeyring/fingerprint(_:kid:context:)``) under seal key
    /// `kid`, for its environment. It reveals nothing without the seal keys, and differs between key ids: a row
    /// re-encrypted with another key gets it anew.
    public func appKeyFingerprint(_ appKey: String, _ env: KISEnvironment, kid: String) throws(StoreError) -> String {
        try keyring.fingerprint(Data(appKey.utf8), kid: kid, context: Self.appKeyFingerprintContext(env))
    }

    /// The app key's fingerprint under every configured key (key id → fingerprint): what a row sealed with any of
    /// them holds in `app_key_fp` if it holds that app key.
    public func appKeyFingerprints(_ appKey: String, _ env: KISEnvironment) -> [String: String] {
        keyring.fingerprints(Data(appKey.utf8), context: Self.appKeyFingerprintContext(env))
    }

    static func appKeyFingerprintContext(_ env: KISEnvironment) -> String { "kis_accounts.app_key_fp:\(env.rawValue)" }

    public func seal(_ token: BrokerToken, updatedAt: Int64) throws(StoreError) -> StoredToken {
        let (kid, sealed) = try keyring.seal(
            Data(token.accessToken.utf8),
            aad: Self.aad("kis_tokens.access_token", token.userID, token.environment, token.sha256))
        return StoredToken(
            userID: token.userID, environment: token.environment, accessToken: sealed, tokenSHA256: token.sha256,
            kid: kid, issuedAt: token.issuedAt, expiresAt: token.expiresAt, status: token.status, updatedAt: updatedAt)
    }

    public func open(_ row: StoredToken) throws(StoreError) -> BrokerToken {
        let data = try keyring.open(
            row.accessToken, kid: row.kid,
            aad: Self.aad("kis_tokens.access_token", row.userID, row.environment, row.tokenSHA256))
        let token = BrokerToken(
            userID: row.userID, environment: row.environment, accessToken: String(decoding: data, as: UTF8.self),
            issuedAt: row.issuedAt, expiresAt: row.expiresAt, status: row.status)
        guard token.sha256 == row.tokenSHA256 else {
            throw StoreError(.invalidRecord, "a kis_tokens row seals another token than its token_sha256 names")
        }
        return token
    }

    /// Re-encrypts, with the current key, every row sealed with another key (after a rotation: a new `current`
    /// key in `[seal]`, the old ones kept to open). Returns how many rows it re-encrypted.
    ///
    /// An account is written back only while its row is still as read (``BrokerRepository/replaceAccountSeal(_:replacing:)``):
    /// one written meanwhile — its user connecting a new key pair through another broker copy, which may still seal
    /// with the old key during a rotation — keeps what was written. (Only the key id was compared before, and such a
    /// row, still under the old key's id, was overwritten: the old key pair came back over the new one.)
    @discardableResult
    public func resealStaleRows(in repository: any BrokerRepository, logger: Logger) async throws -> Int {
        var count = 0
        var unopenable = 0
        var changed = 0
        for row in try await repository.allAccounts() where row.kid != keyring.current {
            // A row whose key is gone cannot be re-encrypted; it is reported, and the rest go on.
            guard let account = try? open(row) else {
                unopenable += 1
                continue
            }
            var fresh = try seal(account)
            fresh.createdAt = row.createdAt
            fresh.updatedAt = row.updatedAt
            if try await repository.replaceAccountSeal(fresh, replacing: row) { count += 1 } else { changed += 1 }
        }
        if changed > 0 {
            // Written since it was read (by a request, another copy, or its re-encryption): left as it is now; one still
            // sealed with an old key is re-encrypted at the next start.
            logger.info("accounts changed while being re-encrypted are left as written",
                        metadata: ["rows": "\(changed)"])
        }
        for status in TokenStatus.allCases {
            for row in try await repository.tokens(status: status) where row.kid != keyring.current {
                guard let token = try? open(row) else {
                    unopenable += 1
                    continue
                }
                let fresh = try seal(token, updatedAt: row.updatedAt)
                if try await repository.replaceTokenSeal(
                    tokenSHA256: row.tokenSHA256, accessToken: fresh.accessToken, kid: fresh.kid, expectedKid: row.kid)
                {
                    count += 1
                }
            }
        }
        if unopenable > 0 {
            logger.error("rows sealed with a key that is not configured (or is not that key) stay as they are; restore the key to open them",
                         metadata: ["rows": "\(unopenable)"])
        }
        if count > 0 { logger.notice("re-encrypted rows with the current seal key", metadata: ["rows": "\(count)", "kid": "\(keyring.current)"]) }
        return count
    }

    /// Fills `app_key_fp` of the accounts written before the column existed (after ``resealStaleRows(in:logger:)``,
    /// which gives the rows it re-encrypts a fingerprint), opening their app key alone. Until then the
    /// one-user-per-app-key check opens such rows at every look-up; afterwards it finds none. Returns how many rows
    /// it filled.
    @discardableResult
    public func fillAppKeyFingerprints(in repository: any BrokerRepository, logger: Logger) async throws -> Int {
        var count = 0
        var unopenable = 0
        for var row in try await repository.accountsWithoutAppKeyFingerprint() {
            guard let appKey = try? openAppKey(row) else {
                unopenable += 1
                continue
            }
            row.appKeyFingerprint = try appKeyFingerprint(appKey, row.environment, kid: row.kid)
            if try await repository.setAppKeyFingerprint(row) { count += 1 }
        }
        if unopenable > 0 {
            logger.error("accounts whose app key does not open with the configured seal keys get no app key fingerprint; the app key check opens them at every look-up",
                         metadata: ["rows": "\(unopenable)"])
        }
        if count > 0 { logger.notice("filled the app key fingerprint of accounts stored without one", metadata: ["rows": "\(count)"]) }
        return count
    }
}
