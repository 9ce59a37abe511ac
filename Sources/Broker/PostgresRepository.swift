import Foundation
public import KIS
public import Logging
import NIOSSL
package import PostgresNIO
public import ServiceLifecycle

/// ``BrokerRepository`` on PostgreSQL through postgres-nio (`[broker] database = "postgres://…"`), for several
/// broker copies or a managed database.
///
/// It is a `Service`: its connection pool works while ``run()`` runs (``buildBroker(_:dependencies:logger:onServerRunning:)``
/// runs it with the application). ``migrate()`` takes a transaction-level advisory lock, so copies starting
/// together migrate once.
public final class PostgresRepository: BrokerRepository, Service {
    private let client: PostgresClient
    private let logger: Logger

    /// - Parameter url: `postgres://user[:password]@host[:port]/database[?sslmode=…][&password=…]`.
    public init(url: String, logger: Logger) throws {
        self.client = PostgresClient(configuration: try Self.configuration(url: url), backgroundLogger: logger)
        self.logger = logger
    }

    /// The client configuration a URL describes (sslmode `prefer` when not given, as libpq does).
    package static func configuration(url: String) throws -> PostgresClient.Configuration {
        guard let c = URLComponents(string: url), let scheme = c.scheme?.lowercased(),
            scheme == "postgres" || scheme == "postgresql", let host = c.host, !host.isEmpty
        else { throw RepositoryError("the database URL must be postgres://user@host[:port]/database") }
        let user = c.user.flatMap { $0.removingPercentEncoding } ?? "postgres"
        // In the authority (`user:password@`) or as a `password=` parameter, as libpq reads either.
        let password = c.password.flatMap { $0.removingPercentEncoding }
            ?? c.queryItems?.first { $0.name.lowercased() == "password" }?.value
        var database = c.path
        if database.hasPrefix("/") { database.removeFirst() }
        let sslmode = c.queryItems?.first { $0.name.lowercased() == "sslmode" }?.value ?? "prefer"
        let tls: PostgresClient.Configuration.TLS
        switch sslmode {
        case "disable": tls = .disable
        case "prefer", "allow": tls = .prefer(.makeClientConfiguration())
        case "require", "verify-ca", "verify-full": tls = .require(.makeClientConfiguration())
        default: throw RepositoryError("sslmode must be disable, allow, prefer, require, verify-ca or verify-full, got \(sslmode)")
        }
        var configuration = PostgresClient.Configuration(
            host: host, port: c.port ?? 5432, username: user, password: password,
            database: database.isEmpty ? nil : database, tls: tls)
        configuration.options.maximumConnections = 8
        return configuration
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown { await self.client.run() }
    }

    public func migrate() async throws {
        try await client.withTransaction(logger: logger) { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(736455001)", logger: self.logger)
            try await conn.query(
                "CREATE TABLE IF NOT EXISTS kisgw_schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
                logger: self.logger)
            var applied: Set<Int> = []
            for try await version in try await conn.query("SELECT version FROM kisgw_schema_migrations", logger: self.logger)
                .decode(Int.self)
            {
                applied.insert(version)
            }
            if !applied.contains(1) {
                try await conn.query(
                    """
                    CREATE TABLE kis_accounts (
                        user_id TEXT NOT NULL,
                        environment TEXT NOT NULL CHECK (environment IN ('LIVE', 'SANDBOX')),
                        app_key TEXT NOT NULL,
                        app_secret TEXT NOT NULL,
                        account_number TEXT NOT NULL,
                        seal_kid TEXT NOT NULL,
                        is_active BOOLEAN NOT NULL DEFAULT TRUE,
                        created_at BIGINT NOT NULL,
                        updated_at BIGINT NOT NULL,
                        PRIMARY KEY (user_id, environment)
                    )
                    """, logger: self.logger)
                try await conn.query(
                    """
                    CREATE TABLE kis_tokens (
                        id BIGSERIAL PRIMARY KEY,
                        user_id TEXT NOT NULL,
                        environment TEXT NOT NULL CHECK (environment IN ('LIVE', 'SANDBOX')),
                        access_token TEXT NOT NULL,
                        token_sha256 TEXT NOT NULL UNIQUE,
                        seal_kid TEXT NOT NULL,
                        issued_at BIGINT NOT NULL,
                        expires_at BIGINT NOT NULL,
                        status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'REVOKED', 'EXPIRED')),
                        updated_at BIGINT NOT NULL
                    )
                    """, logger: self.logger)
                try await conn.query("CREATE INDEX kis_tokens_account ON kis_tokens (user_id, environment)",
                                     logger: self.logger)
                try await conn.query("CREATE INDEX kis_tokens_status ON kis_tokens (status)", logger: self.logger)
                let now = Int64(Date().timeIntervalSince1970)
                try await conn.query("INSERT INTO kisgw_schema_migrations (version, applied_at) VALUES (1, \(now))",
                                     logger: self.logger)
            }
        }
    }

    public func ping() async throws {
        try await client.query("SELECT 1", logger: logger)
    }

    private typealias AccountColumns = (String, String, String, String, String, String, Bool, Int64, Int64)
    private typealias TokenColumns = (String, String, String, String, String, Int64, Int64, String, Int64)

    public func account(userID: String, environment: KISEnvironment) async throws -> StoredAccount? {
        let env = environment.rawValue
        let rows = try await client.query(
            "SELECT \(unescaped: Schema.accountColumns) FROM kis_accounts WHERE user_id = \(userID) AND environment = \(env)",
            logger: logger)
        for try await columns in rows.decode(AccountColumns.self) { return try Self.account(columns) }
        return nil
    }

    public func allAccounts() async throws -> [StoredAccount] {
        let rows = try await client.query(
            "SELECT \(unescaped: Schema.accountColumns) FROM kis_accounts ORDER BY user_id, environment", logger: logger)
        var out: [StoredAccount] = []
        for try await columns in rows.decode(AccountColumns.self) { out.append(try Self.account(columns)) }
        return out
    }

    public func saveAccount(_ account: StoredAccount, token: StoredToken?) async throws {
        try await client.withTransaction(logger: logger) { conn in
            let env = account.environment.rawValue
            try await conn.query(
                """
                INSERT INTO kis_accounts (\(unescaped: Schema.accountColumns)) VALUES (\(account.userID), \(env),
                    \(account.appKey), \(account.appSecret), \(account.accountNumber), \(account.kid),
                    \(account.isActive), \(account.createdAt), \(account.updatedAt))
                ON CONFLICT (user_id, environment) DO UPDATE SET app_key = excluded.app_key,
                    app_secret = excluded.app_secret, account_number = excluded.account_number,
                    seal_kid = excluded.seal_kid, is_active = excluded.is_active, updated_at = excluded.updated_at
                """, logger: self.logger)
            if let token { try await Self.upsert(token, conn, self.logger) }
        }
    }

    public func setAccountActive(userID: String, environment: KISEnvironment, isActive: Bool, updatedAt: Int64)
        async throws
    {
        let env = environment.rawValue
        try await client.query(
            """
            UPDATE kis_accounts SET is_active = \(isActive), updated_at = \(updatedAt)
            WHERE user_id = \(userID) AND environment = \(env)
            """, logger: logger)
    }

    public func deleteAccount(userID: String, environment: KISEnvironment) async throws -> Bool {
        let env = environment.rawValue
        return try await client.withTransaction(logger: logger) { conn in
            try await conn.query(
                "DELETE FROM kis_tokens WHERE user_id = \(userID) AND environment = \(env)", logger: self.logger)
            let rows = try await conn.query(
                "DELETE FROM kis_accounts WHERE user_id = \(userID) AND environment = \(env) RETURNING user_id",
                logger: self.logger)
            var deleted = false
            for try await _ in rows.decode(String.self) { deleted = true }
            return deleted
        }
    }

    public func saveToken(_ token: StoredToken) async throws {
        try await client.withConnection { conn in try await Self.upsert(token, conn, self.logger) }
    }

    public func tokens(userID: String, environment: KISEnvironment) async throws -> [StoredToken] {
        let env = environment.rawValue
        let rows = try await client.query(
            """
            SELECT \(unescaped: Schema.tokenColumns) FROM kis_tokens WHERE user_id = \(userID) AND environment = \(env)
            ORDER BY issued_at DESC, id DESC
            """, logger: logger)
        var out: [StoredToken] = []
        for try await columns in rows.decode(TokenColumns.self) { out.append(try Self.token(columns)) }
        return out
    }

    public func tokens(status: TokenStatus) async throws -> [StoredToken] {
        let raw = status.rawValue
        let rows = try await client.query(
            "SELECT \(unescaped: Schema.tokenColumns) FROM kis_tokens WHERE status = \(raw) ORDER BY id", logger: logger)
        var out: [StoredToken] = []
        for try await columns in rows.decode(TokenColumns.self) { out.append(try Self.token(columns)) }
        return out
    }

    public func setStatus(_ status: TokenStatus, tokenSHA256s: [String], updatedAt: Int64) async throws {
        guard !tokenSHA256s.isEmpty else { return }
        let raw = status.rawValue
        try await client.query(
            """
            UPDATE kis_tokens SET status = \(raw), updated_at = \(updatedAt)
            WHERE token_sha256 = ANY(\(tokenSHA256s))
            """, logger: logger)
    }

    public func replaceAccountSeal(_ account: StoredAccount, expectedKid: String) async throws -> Bool {
        let env = account.environment.rawValue
        let rows = try await client.query(
            """
            UPDATE kis_accounts SET app_key = \(account.appKey), app_secret = \(account.appSecret),
                account_number = \(account.accountNumber), seal_kid = \(account.kid)
            WHERE user_id = \(account.userID) AND environment = \(env) AND seal_kid = \(expectedKid)
            RETURNING user_id
            """, logger: logger)
        var changed = false
        for try await _ in rows.decode(String.self) { changed = true }
        return changed
    }

    public func replaceTokenSeal(tokenSHA256: String, accessToken: String, kid: String, expectedKid: String)
        async throws -> Bool
    {
        let rows = try await client.query(
            """
            UPDATE kis_tokens SET access_token = \(accessToken), seal_kid = \(kid)
            WHERE token_sha256 = \(tokenSHA256) AND seal_kid = \(expectedKid)
            RETURNING token_sha256
            """, logger: logger)
        var changed = false
        for try await _ in rows.decode(String.self) { changed = true }
        return changed
    }

    // MARK: rows

    private static func upsert(_ token: StoredToken, _ conn: PostgresConnection, _ logger: Logger) async throws {
        let env = token.environment.rawValue
        let status = token.status.rawValue
        try await conn.query(
            """
            INSERT INTO kis_tokens (\(unescaped: Schema.tokenColumns)) VALUES (\(token.userID), \(env),
                \(token.accessToken), \(token.tokenSHA256), \(token.kid), \(token.issuedAt), \(token.expiresAt),
                \(status), \(token.updatedAt))
            ON CONFLICT (token_sha256) DO UPDATE SET user_id = excluded.user_id,
                environment = excluded.environment, access_token = excluded.access_token,
                seal_kid = excluded.seal_kid, issued_at = excluded.issued_at, expires_at = excluded.expires_at,
                status = excluded.status, updated_at = excluded.updated_at
            """, logger: logger)
    }

    private static func environment(_ raw: String) throws -> KISEnvironment {
        guard let e = KISEnvironment(rawValue: raw) else { throw RepositoryError("unknown environment \(raw)") }
        return e
    }

    private static func account(_ c: AccountColumns) throws -> StoredAccount {
        StoredAccount(
            userID: c.0, environment: try environment(c.1), appKey: c.2, appSecret: c.3, accountNumber: c.4, kid: c.5,
            isActive: c.6, createdAt: c.7, updatedAt: c.8)
    }

    private static func token(_ c: TokenColumns) throws -> StoredToken {
        guard let status = TokenStatus(rawValue: c.7) else { throw RepositoryError("unknown token status") }
        return StoredToken(
            userID: c.0, environment: try environment(c.1), accessToken: c.2, tokenSHA256: c.3, kid: c.4,
            issuedAt: c.5, expiresAt: c.6, status: status, updatedAt: c.8)
    }
}
