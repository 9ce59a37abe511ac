import Foundation
import GRDB
import ServerKit
public import KIS

/// ``BrokerRepository`` on an SQLite file through GRDB: the default (`[broker] database = "sqlite:PATH"`).
///
/// The file and its parent folders are created on first use; ``migrate()`` creates the tables. `:memory:` keeps
/// the database in memory (tests, one-off runs).
public final class SQLiteRepository: BrokerRepository {
    private let queue: DatabaseQueue
    /// Where the file is (nil in memory).
    public let path: String?

    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        configuration.label = "kisgw.broker"
        if path == ":memory:" {
            self.path = nil
            self.queue = try DatabaseQueue(configuration: configuration)
        } else {
            let url = URL(fileURLWithPath: path)
            let folder = url.deletingLastPathComponent()
            do {
                try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            } catch {
                throw SQLiteOpenError(path: path, why: "its folder \(folder.path) cannot be created (\(FileSystemReason.of(error)))")
            }
            self.path = url.path
            Self.createPrivately(url.path)
            do {
                self.queue = try DatabaseQueue(path: url.path, configuration: configuration)
            } catch let error as DatabaseError {
                let why = switch error.resultCode {
                case .SQLITE_CANTOPEN: "it cannot be opened or created (a folder, or a place this process cannot write)"
                case .SQLITE_NOTADB: "the file is not a SQLite database"
                case .SQLITE_PERM, .SQLITE_READONLY, .SQLITE_AUTH: "permission denied"
                default: "SQLite error \(error.resultCode.rawValue)"
                }
                throw SQLiteOpenError(path: path, why: why)
            }
        }
    }

    /// Creates the database file, empty (which SQLite reads as a new database), readable and writable by its owner
    /// alone (0600) when there is none: SQLite creates it 0644 (less the umask), and gives its `-wal`, `-shm` and
    /// `-journal` files the database file's mode — every account's sealed secrets, readable by every user of the
    /// machine. An existing file keeps its mode (an operator may have chosen it). A file that cannot be created here
    /// is left to SQLite, which says why.
    static func createPrivately(_ path: String) {
        guard !FileManager.default.fileExists(atPath: path) else { return }
        // O_EXCL: a file another process created meanwhile is not touched.
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd >= 0 { close(fd) }
    }

    public func migrate() async throws {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: kis_accounts and kis_tokens") { db in
            try db.execute(sql: """
                CREATE TABLE kis_accounts (
                    user_id TEXT NOT NULL,
                    environment TEXT NOT NULL CHECK (environment IN ('LIVE', 'SANDBOX')),
                    app_key TEXT NOT NULL,
                    app_secret TEXT NOT NULL,
                    account_number TEXT NOT NULL,
                    seal_kid TEXT NOT NULL,
                    is_active INTEGER NOT NULL DEFAULT 1,
                    created_at INTEGER NOT NULL,
                    updated_at INTEGER NOT NULL,
                    PRIMARY KEY (user_id, environment)
                );
                CREATE TABLE kis_tokens (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    user_id TEXT NOT NULL,
                    environment TEXT NOT NULL CHECK (environment IN ('LIVE', 'SANDBOX')),
                    access_token TEXT NOT NULL,
                    token_sha256 TEXT NOT NULL UNIQUE,
                    seal_kid TEXT NOT NULL,
                    issued_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'REVOKED', 'EXPIRED')),
                    updated_at INTEGER NOT NULL
                );
                CREATE INDEX kis_tokens_account ON kis_tokens (user_id, environment);
                CREATE INDEX kis_tokens_status ON kis_tokens (status);
                """)
        }
        migrator.registerMigration("v2: kis_accounts.app_key_fp") { db in
            // NULL in the rows already there, until the broker fills it (AccountVault.fillAppKeyFingerprints).
            try db.execute(sql: """
                ALTER TABLE kis_accounts ADD COLUMN app_key_fp TEXT;
                CREATE INDEX kis_accounts_app_key_fp ON kis_accounts (environment, app_key_fp);
                """)
        }
        let queue = self.queue
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            migrator.asyncMigrate(queue) { result in
                switch result {
                case .success: continuation.resume()
                case .failure(let error): continuation.resume(throwing: error)
                }
            }
        }
    }

    public func ping() async throws {
        _ = try await queue.read { db in try Int.fetchOne(db, sql: "SELECT 1") }
    }

    public func account(userID: String, environment: KISEnvironment) async throws -> StoredAccount? {
        try await queue.read { db in
            try Row.fetchOne(
                db, sql: "SELECT \(Schema.accountColumns) FROM kis_accounts WHERE user_id = ? AND environment = ?",
                arguments: [userID, environment.rawValue]
            ).map(Self.account)
        }
    }

    public func allAccounts() async throws -> [StoredAccount] {
        try await fetchAccounts("SELECT \(Schema.accountColumns) FROM kis_accounts ORDER BY user_id, environment")
    }

    public func accounts(environment: KISEnvironment, appKeyFingerprints: [String: String]) async throws
        -> [StoredAccount]
    {
        try await fetchAccounts(Self.appKeyLookup(count: appKeyFingerprints.count),
                                Self.appKeyLookupArguments(environment, appKeyFingerprints))
    }

    /// One index search on (environment, app_key_fp) per key id, and one for the rows without a fingerprint: a union.
    /// Written as `environment = ? AND (app_key_fp IS NULL OR (seal_kid = ? AND app_key_fp = ?))`, SQLite's planner
    /// used the index for the environment alone and read every account of it, twice per connect — a connect took
    /// 40 ms with a thousand accounts stored and 360 ms with ten thousand (bench/broker-reconcile).
    static func appKeyLookup(count: Int) -> String {
        let select = "SELECT \(Schema.accountColumns) FROM kis_accounts WHERE environment = ? AND "
        return ([select + "app_key_fp IS NULL"]
            + Array(repeating: select + "app_key_fp = ? AND seal_kid = ?", count: count))
            .joined(separator: " UNION ALL ")
    }

    static func appKeyLookupArguments(_ environment: KISEnvironment, _ fingerprints: [String: String]) -> StatementArguments {
        var arguments: StatementArguments = [environment.rawValue]
        for (kid, fingerprint) in fingerprints.sorted(by: { $0.key < $1.key }) {
            arguments += [environment.rawValue, fingerprint, kid]
        }
        return arguments
    }

    public func accountsWithoutAppKeyFingerprint() async throws -> [StoredAccount] {
        try await fetchAccounts("SELECT \(Schema.accountColumns) FROM kis_accounts WHERE app_key_fp IS NULL")
    }

    /// The accounts `sql` selects (``Schema/accountColumns``).
    private func fetchAccounts(_ sql: String, _ arguments: StatementArguments = []) async throws -> [StoredAccount] {
        try await queue.read { db in try Row.fetchAll(db, sql: sql, arguments: arguments).map(Self.account) }
    }

    public func setAppKeyFingerprint(_ account: StoredAccount) async throws -> Bool {
        try await queue.write { db in
            try db.execute(
                sql: """
                    UPDATE kis_accounts SET app_key_fp = ?
                    WHERE user_id = ? AND environment = ? AND seal_kid = ? AND app_key = ? AND app_key_fp IS NULL
                    """,
                arguments: [
                    account.appKeyFingerprint, account.userID, account.environment.rawValue, account.kid,
                    account.appKey,
                ])
            return db.changesCount > 0
        }
    }

    public func saveAccount(_ account: StoredAccount, token: StoredToken?, revoking: [String]) async throws {
        try await queue.write { db in
            try db.execute(
                sql: """
                    INSERT INTO kis_accounts (\(Schema.accountColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (user_id, environment) DO UPDATE SET app_key = excluded.app_key,
                        app_secret = excluded.app_secret, account_number = excluded.account_number,
                        seal_kid = excluded.seal_kid, is_active = excluded.is_active, updated_at = excluded.updated_at,
                        app_key_fp = excluded.app_key_fp
                    """,
                arguments: [
                    account.userID, account.environment.rawValue, account.appKey, account.appSecret,
                    account.accountNumber, account.kid, account.isActive, account.createdAt, account.updatedAt,
                    account.appKeyFingerprint,
                ])
            if let token { try Self.upsert(token, db) }
            for sha in revoking {
                try db.execute(
                    sql: "UPDATE kis_tokens SET status = ?, updated_at = ? WHERE token_sha256 = ?",
                    arguments: [TokenStatus.revoked.rawValue, account.updatedAt, sha])
            }
        }
    }

    public func setAccountActive(userID: String, environment: KISEnvironment, isActive: Bool, updatedAt: Int64)
        async throws
    {
        try await queue.write { db in
            try db.execute(
                sql: "UPDATE kis_accounts SET is_active = ?, updated_at = ? WHERE user_id = ? AND environment = ?",
                arguments: [isActive, updatedAt, userID, environment.rawValue])
        }
    }

    public func deactivateAccount(userID: String, environment: KISEnvironment, revoking: [String], updatedAt: Int64)
        async throws
    {
        try await queue.write { db in
            try db.execute(
                sql: "UPDATE kis_accounts SET is_active = 0, updated_at = ? WHERE user_id = ? AND environment = ?",
                arguments: [updatedAt, userID, environment.rawValue])
            for sha in revoking {
                try db.execute(
                    sql: "UPDATE kis_tokens SET status = ?, updated_at = ? WHERE token_sha256 = ?",
                    arguments: [TokenStatus.revoked.rawValue, updatedAt, sha])
            }
        }
    }

    public func deleteAccount(userID: String, environment: KISEnvironment) async throws -> Bool {
        try await queue.write { db in
            try db.execute(
                sql: "DELETE FROM kis_tokens WHERE user_id = ? AND environment = ?",
                arguments: [userID, environment.rawValue])
            try db.execute(
                sql: "DELETE FROM kis_accounts WHERE user_id = ? AND environment = ?",
                arguments: [userID, environment.rawValue])
            return db.changesCount > 0
        }
    }

    public func deleteEndedTokens(expiredBefore before: Int64) async throws -> Int {
        try await queue.write { db in
            try db.execute(
                sql: "DELETE FROM kis_tokens WHERE status IN (?, ?) AND expires_at < ?",
                arguments: [TokenStatus.expired.rawValue, TokenStatus.revoked.rawValue, before])
            return db.changesCount
        }
    }

    public func saveToken(_ token: StoredToken) async throws {
        try await queue.write { db in try Self.upsert(token, db) }
    }

    public func tokens(userID: String, environment: KISEnvironment) async throws -> [StoredToken] {
        try await queue.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT \(Schema.tokenColumns) FROM kis_tokens WHERE user_id = ? AND environment = ?
                    ORDER BY issued_at DESC, id DESC
                    """,
                arguments: [userID, environment.rawValue]
            ).map(Self.token)
        }
    }

    public func token(sha256: String) async throws -> StoredToken? {
        try await queue.read { db in
            try Row.fetchOne(
                db, sql: "SELECT \(Schema.tokenColumns) FROM kis_tokens WHERE token_sha256 = ?", arguments: [sha256]
            ).map(Self.token)
        }
    }

    public func tokens(status: TokenStatus) async throws -> [StoredToken] {
        try await queue.read { db in
            try Row.fetchAll(
                db, sql: "SELECT \(Schema.tokenColumns) FROM kis_tokens WHERE status = ? ORDER BY id",
                arguments: [status.rawValue]
            ).map(Self.token)
        }
    }

    public func setStatus(_ status: TokenStatus, tokenSHA256s: [String], updatedAt: Int64) async throws {
        guard !tokenSHA256s.isEmpty else { return }
        try await queue.write { db in
            for sha in tokenSHA256s {
                try db.execute(
                    sql: "UPDATE kis_tokens SET status = ?, updated_at = ? WHERE token_sha256 = ?",
                    arguments: [status.rawValue, updatedAt, sha])
            }
        }
    }

    public func replaceAccountSeal(_ account: StoredAccount, replacing old: StoredAccount) async throws -> Bool {
        try await queue.write { db in
            try db.execute(
                sql: """
                    UPDATE kis_accounts SET app_key = ?, app_secret = ?, account_number = ?, seal_kid = ?, app_key_fp = ?
                    WHERE user_id = ? AND environment = ? AND seal_kid = ? AND app_key = ? AND app_secret = ?
                        AND account_number = ?
                    """,
                arguments: [
                    account.appKey, account.appSecret, account.accountNumber, account.kid, account.appKeyFingerprint,
                    account.userID, account.environment.rawValue, old.kid, old.appKey, old.appSecret, old.accountNumber,
                ])
            return db.changesCount > 0
        }
    }

    public func replaceTokenSeal(tokenSHA256: String, accessToken: String, kid: String, expectedKid: String)
        async throws -> Bool
    {
        try await queue.write { db in
            try db.execute(
                sql: "UPDATE kis_tokens SET access_token = ?, seal_kid = ? WHERE token_sha256 = ? AND seal_kid = ?",
                arguments: [accessToken, kid, tokenSHA256, expectedKid])
            return db.changesCount > 0
        }
    }

    // MARK: rows

    private static func upsert(_ token: StoredToken, _ db: Database) throws {
        try db.execute(
            sql: """
                INSERT INTO kis_tokens (\(Schema.tokenColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (token_sha256) DO UPDATE SET user_id = excluded.user_id,
                    environment = excluded.environment, access_token = excluded.access_token,
                    seal_kid = excluded.seal_kid, issued_at = excluded.issued_at, expires_at = excluded.expires_at,
                    status = excluded.status, updated_at = excluded.updated_at
                """,
            arguments: [
                token.userID, token.environment.rawValue, token.accessToken, token.tokenSHA256, token.kid,
                token.issuedAt, token.expiresAt, token.status.rawValue, token.updatedAt,
            ])
    }

    private static func environment(_ raw: String) throws -> KISEnvironment {
        guard let e = KISEnvironment(rawValue: raw) else { throw RepositoryError("unknown environment \(raw)") }
        return e
    }

    private static func account(_ row: Row) throws -> StoredAccount {
        StoredAccount(
            userID: row["user_id"], environment: try environment(row["environment"]), appKey: row["app_key"],
            appSecret: row["app_secret"], accountNumber: row["account_number"], kid: row["seal_kid"],
            isActive: row["is_active"], createdAt: row["created_at"], updatedAt: row["updated_at"],
            appKeyFingerprint: row["app_key_fp"])
    }

    private static func token(_ row: Row) throws -> StoredToken {
        guard let status = TokenStatus(rawValue: row["status"]) else { throw RepositoryError("unknown token status") }
        return StoredToken(
            userID: row["user_id"], environment: try environment(row["environment"]), accessToken: row["access_token"],
            tokenSHA256: row["token_sha256"], kid: row["seal_kid"], issuedAt: row["issued_at"],
            expiresAt: row["expires_at"], status: status, updatedAt: row["updated_at"])
    }
}

/// The SQLite file of `[broker] database` cannot be used: its path and why, for the one line start-up prints.
public struct SQLiteOpenError: Error, CustomStringConvertible {
    public let path: String
    public let why: String
    public var description: String { "[broker] database sqlite:\(path): \(why)" }
}
