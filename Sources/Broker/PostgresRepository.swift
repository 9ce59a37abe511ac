import Foundation
import Synchronization
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
    /// The same server, user, password, database and TLS as the pool's, for ``checkLogin(within:)``.
    private let login: PostgresConnection.Configuration
    /// "PostgreSQL at host:port", for errors.
    private let place: String
    private let logger: Logger

    /// - Parameters:
    ///   - url: `postgres://user[:password]@host[:port]/database[?sslmode=…][&password=…]`.
    ///   - password: the password when the URL has none (`[broker] database_password_file`).
    public init(url: String, password: String? = nil, logger: Logger) throws {
        let target = try Target(url: url, password: password)
        self.client = PostgresClient(configuration: target.poolConfiguration, backgroundLogger: logger)
        self.login = try target.connectionConfiguration
        self.place = "PostgreSQL at \(target.host):\(target.port)"
        self.logger = logger
    }

    /// Opens one connection with the pool's settings and closes it. The pool tries a refused login again for ever
    /// (logging each attempt at info), so a broker with a wrong password, user or database name, or a server without
    /// the TLS `sslmode` requires, used to hang at start-up without a word; now it stops with the reason. A server
    /// that cannot be reached, or is starting up, is tried again until `within` has passed.
    public func checkLogin(within: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + within
        var delay = Duration.milliseconds(200)
        var warned = false
        while true {
            let failure: any Error
            do {
                let connection = try await PostgresConnection.connect(configuration: login, id: 0, logger: logger)
                try? await connection.close()
                return
            } catch {
                failure = error
            }
            if let reason = Self.refusal(failure) {
                throw RepositoryError("\(place) refused the broker: \(reason); check [broker] database "
                                      + "(KISGW_BROKER_DATABASE) and database_password_file")
            }
            guard ContinuousClock.now < deadline else { throw RepositoryError("cannot reach \(place): \(Self.reason(failure))") }
            if !warned {
                // Once: the wait is not silent (a database still starting is the common case, and it ends well).
                warned = true
                logger.warning("cannot reach \(place) yet: \(Self.reason(failure)); trying again for up to \(within)")
            }
            // A shutdown asked for meanwhile stops the wait at once (it waited out the whole deadline before).
            do { try await Task.sleep(for: delay) } catch {
                throw RepositoryError("stopped while waiting for \(place) (\(Self.reason(failure)))")
            }
            delay = min(delay * 2, .seconds(2))
        }
    }

    /// Why the server will not take this login, if trying again cannot help: a password, user or database it refuses
    /// (SQLSTATE class 28, 3D000, 42501), no password for an authentication that needs one, or TLS that cannot work
    /// (not offered where `sslmode` requires it, or a certificate that does not verify).
    static func refusal(_ error: any Error) -> String? {
        if let tls = error as? NIOSSLError, Self.isHandshakeRefusal(tls) { return "TLS failed: \(tls)" }
        guard let error = error as? PSQLError else { return nil }
        switch error.code {
        case .server:
            let state = error.serverInfo?[.sqlState] ?? ""
            guard state.hasPrefix("28") || state == "3D000" || state == "42501" else { return nil }
            return reason(error)
        case .authMechanismRequiresPassword: return "it asks for a password and none is configured"
        case .unsupportedAuthMechanism: return "it asks for an authentication method the client does not support"
        case .sslUnsupported: return "it does not offer TLS, which sslmode requires"
        case .failedToAddSSLHandler: return "TLS failed: \(error.underlying.map { "\($0)" } ?? "\(error.code)")"
        default:
            if let tls = error.underlying as? NIOSSLError, Self.isHandshakeRefusal(tls) { return "TLS failed: \(tls)" }
            return nil
        }
    }

    /// A TLS failure retrying cannot mend — the handshake refused or the certificate not verified — rather than a
    /// connection that ended mid-handshake (a server restarting).
    static func isHandshakeRefusal(_ error: NIOSSLError) -> Bool {
        switch error {
        case .handshakeFailed, .unableToValidateCertificate, .noCertificateToValidate: true
        default: false
        }
    }

    /// PostgreSQL's own message and SQLSTATE, or the error's code and what it came from.
    static func reason(_ error: any Error) -> String {
        guard let error = error as? PSQLError else { return "\(error)" }
        if let message = error.serverInfo?[.message] {
            return "\(message) (SQLSTATE \(error.serverInfo?[.sqlState] ?? "?"))"
        }
        // The connection's own failure, said plainly (PostgresNIO's description nests NIO's errors three deep).
        let underlying = error.underlying.map { "\($0)" } ?? ""
        for (needle, plain) in [("Connection refused", "connection refused (is PostgreSQL running, and on that port?)"),
                                ("No route to host", "no route to host"), ("Network is unreachable", "network unreachable"),
                                ("connectTimeout", "the connection timed out"), ("Connection timed out", "the connection timed out")]
        where underlying.contains(needle) {
            return plain
        }
        return error.underlying.map { "\(error.code): \($0)" } ?? "\(error.code)"
    }

    /// What a URL names: server, user, password, database and TLS (`sslmode`, `prefer` when not given, as libpq).
    ///
    /// `sslmode` means what it means to libpq (`allow` is taken as `prefer`: TLS first): `allow`/`prefer` use TLS
    /// when the server offers it and `require`
    /// insists on it, neither checking the server's certificate (a server with a self-signed certificate — Debian's
    /// default, a managed database's private CA — is reached as psql reaches it); `verify-ca` checks that the
    /// certificate chains to a trusted CA, `verify-full` also that it names the host. The CA is `sslrootcert=FILE`
    /// (PEM), else the system's trust store; `require` with `sslrootcert` verifies the chain, as libpq does.
    struct Target {
        enum TLSMode { case disable, prefer, require }
        enum Verification { case none, chain, full }
        var host: String, port: Int, user: String, password: String?, database: String?, tls: TLSMode
        var verification: Verification
        var rootCertificate: String?

        /// `password` when the URL has none (an empty one counts as none).
        init(url: String, password fallback: String?) throws {
            guard let c = URLComponents(string: url), let scheme = c.scheme?.lowercased(),
                scheme == "postgres" || scheme == "postgresql", let host = c.host, !host.isEmpty
            else { throw RepositoryError("the database URL must be postgres://user@host[:port]/database") }
            func nonEmpty(_ s: String?) -> String? { s?.isEmpty == false ? s : nil }
            // In the authority (`user:password@`) or as a `password=` parameter, as libpq reads either.
            let password = nonEmpty(c.password.flatMap { $0.removingPercentEncoding })
                ?? nonEmpty(c.queryItems?.first { $0.name.lowercased() == "password" }?.value)
                ?? fallback
            var database = c.path
            if database.hasPrefix("/") { database.removeFirst() }
            let rootCertificate = nonEmpty(c.queryItems?.first { $0.name.lowercased() == "sslrootcert" }?.value)
            switch c.queryItems?.first(where: { $0.name.lowercased() == "sslmode" })?.value ?? "prefer" {
            case "disable": (tls, verification) = (.disable, .none)
            case "prefer", "allow": (tls, verification) = (.prefer, .none)
            case "require": (tls, verification) = (.require, rootCertificate == nil ? .none : .chain)
            case "verify-ca": (tls, verification) = (.require, .chain)
            case "verify-full": (tls, verification) = (.require, .full)
            case let other:
                throw RepositoryError("sslmode must be disable, allow, prefer, require, verify-ca or verify-full, got \(other)")
            }
            if let rootCertificate, !FileManager.default.isReadableFile(atPath: rootCertificate) {
                throw RepositoryError("sslrootcert: cannot read \"\(rootCertificate)\"")
            }
            self.rootCertificate = rootCertificate
            (self.host, self.port, self.user) = (host, c.port ?? 5432, c.user.flatMap { $0.removingPercentEncoding } ?? "postgres")
            (self.password, self.database) = (password, database.isEmpty ? nil : database)
        }

        /// The TLS client configuration `sslmode` and `sslrootcert` ask for.
        var tlsConfiguration: TLSConfiguration {
            var configuration = TLSConfiguration.makeClientConfiguration()
            switch verification {
            case .none: configuration.certificateVerification = .none
            case .chain: configuration.certificateVerification = .noHostnameVerification
            case .full: configuration.certificateVerification = .fullVerification
            }
            if let rootCertificate { configuration.trustRoots = .file(rootCertificate) }
            return configuration
        }

        var poolConfiguration: PostgresClient.Configuration {
            let mode: PostgresClient.Configuration.TLS
            switch tls {
            case .disable: mode = .disable
            case .prefer: mode = .prefer(tlsConfiguration)
            case .require: mode = .require(tlsConfiguration)
            }
            var configuration = PostgresClient.Configuration(
                host: host, port: port, username: user, password: password, database: database, tls: mode)
            configuration.options.maximumConnections = 8
            configuration.options.additionalStartupParameters = Self.startupParameters
            return configuration
        }

        /// The server ends a statement, or a wait for a lock, that outlasts what the broker waits for it
        /// (``PostgresRepository/operationTimeout``). Sent by the login check too, so a server (or pooler) that
        /// refuses them is found at start-up.
        static let startupParameters: [(String, String)] = {
            let ms = String(PostgresRepository.operationTimeout.components.seconds * 1000)
            return [("statement_timeout", ms), ("lock_timeout", ms)]
        }()

        var connectionConfiguration: PostgresConnection.Configuration {
            get throws {
                let mode: PostgresConnection.Configuration.TLS
                switch tls {
                case .disable: mode = .disable
                case .prefer: mode = .prefer(try NIOSSLContext(configuration: tlsConfiguration))
                case .require: mode = .require(try NIOSSLContext(configuration: tlsConfiguration))
                }
                var configuration = PostgresConnection.Configuration(
                    host: host, port: port, username: user, password: password, database: database, tls: mode)
                configuration.options.additionalStartupParameters = Self.startupParameters
                return configuration
            }
        }
    }

    /// The pool's configuration a URL describes; `password` when the URL has none.
    package static func configuration(url: String, password: String? = nil) throws -> PostgresClient.Configuration {
        try Target(url: url, password: password).poolConfiguration
    }

    /// How long one operation may wait for the database. postgres-nio's pool waits for a connection for ever, and a
    /// query it sent cannot be cancelled: with the server stopped or gone, every request to the broker, and
    /// `/readyz`, hung (curl gave up after 30 s). Now they fail (`store_unavailable`, readiness 503) after this; the
    /// server itself ends statements and lock waits that take longer (`statement_timeout`, `lock_timeout`).
    public static let operationTimeout = Duration.seconds(5)

    /// `work`'s result, or an error once ``operationTimeout`` has passed. The caller does not wait for `work` past
    /// that: it is cancelled (a wait for a connection ends at once) and left to end on its own.
    private func bounded<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) async throws -> T {
        let task = Task { try await work() }
        let answer = Claim(), place = self.place
        // The caller's cancellation reaches the work (a wait for a connection ends at once).
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                let timer = Task {
                    try await Task.sleep(for: Self.operationTimeout)
                    guard answer.claim() else { return }
                    task.cancel()
                    continuation.resume(throwing: RepositoryError("\(place) did not answer within \(Self.operationTimeout)"))
                }
                Task {
                    let result = await task.result
                    timer.cancel()
                    if answer.claim() { continuation.resume(with: result) }
                }
            }
        } onCancel: {
            task.cancel()
        }
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown { await self.client.run() }
    }

    public func migrate() async throws {
        try await checkLogin()
        try await client.withTransaction(logger: logger) { conn in
            // A migration, or a wait for another copy's, may take longer than an operation's limits.
            try await conn.query("SET LOCAL statement_timeout = 0", logger: self.logger)
            try await conn.query("SET LOCAL lock_timeout = 0", logger: self.logger)
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
            if !applied.contains(2) {
                // NULL in the rows already there, until the broker fills it (AccountVault.fillAppKeyFingerprints).
                try await conn.query("ALTER TABLE kis_accounts ADD COLUMN app_key_fp TEXT", logger: self.logger)
                try await conn.query(
                    "CREATE INDEX kis_accounts_app_key_fp ON kis_accounts (environment, app_key_fp)", logger: self.logger)
                let now = Int64(Date().timeIntervalSince1970)
                try await conn.query("INSERT INTO kisgw_schema_migrations (version, applied_at) VALUES (2, \(now))",
                                     logger: self.logger)
            }
        }
    }

    public func ping() async throws {
        try await bounded { _ = try await self.client.query("SELECT 1", logger: self.logger) }
    }

    private typealias AccountColumns = (String, String, String, String, String, String, Bool, Int64, Int64, String?)
    private typealias TokenColumns = (String, String, String, String, String, Int64, Int64, String, Int64)

    public func account(userID: String, environment: KISEnvironment) async throws -> StoredAccount? {
        return try await bounded {
            let env = environment.rawValue
            let rows = try await self.client.query(
                "SELECT \(unescaped: Schema.accountColumns) FROM kis_accounts WHERE user_id = \(userID) AND environment = \(env)",
                logger: self.logger)
            for try await columns in rows.decode(AccountColumns.self) { return try Self.account(columns) }
            return nil
        }
    }

    public func allAccounts() async throws -> [StoredAccount] {
        try await fetchAccounts("SELECT \(unescaped: Schema.accountColumns) FROM kis_accounts ORDER BY user_id, environment")
    }

    public func accounts(environment: KISEnvironment, appKeyFingerprints: [String: String]) async throws
        -> [StoredAccount]
    {
        let env = environment.rawValue
        let pairs = appKeyFingerprints.sorted { $0.key < $1.key }
        let kids = pairs.map(\.key), fingerprints = pairs.map(\.value)
        // A join with the pairs and a union, not `(seal_kid, app_key_fp) IN (…) OR app_key_fp IS NULL`, which the
        // planner answers with a scan of the table: each part searches the index on (environment, app_key_fp).
        return try await fetchAccounts(
            """
            SELECT \(unescaped: Schema.accountColumns) FROM kis_accounts
                JOIN unnest(\(kids)::text[], \(fingerprints)::text[]) AS wanted (kid, fp)
                ON seal_kid = wanted.kid AND app_key_fp = wanted.fp
            WHERE environment = \(env)
            UNION ALL
            SELECT \(unescaped: Schema.accountColumns) FROM kis_accounts WHERE environment = \(env) AND app_key_fp IS NULL
            """)
    }

    public func accountsWithoutAppKeyFingerprint() async throws -> [StoredAccount] {
        try await fetchAccounts("SELECT \(unescaped: Schema.accountColumns) FROM kis_accounts WHERE app_key_fp IS NULL")
    }

    /// The accounts `query` selects (``Schema/accountColumns``).
    private func fetchAccounts(_ query: PostgresQuery) async throws -> [StoredAccount] {
        return try await bounded {
            let rows = try await self.client.query(query, logger: self.logger)
            var out: [StoredAccount] = []
            for try await columns in rows.decode(AccountColumns.self) { out.append(try Self.account(columns)) }
            return out
        }
    }

    public func setAppKeyFingerprint(_ account: StoredAccount) async throws -> Bool {
        return try await bounded {
            let env = account.environment.rawValue
            let rows = try await self.client.query(
                """
                UPDATE kis_accounts SET app_key_fp = \(account.appKeyFingerprint)
                WHERE user_id = \(account.userID) AND environment = \(env) AND seal_kid = \(account.kid)
                    AND app_key = \(account.appKey) AND app_key_fp IS NULL
                RETURNING user_id
                """, logger: self.logger)
            var changed = false
            for try await _ in rows.decode(String.self) { changed = true }
            return changed
        }
    }

    public func saveAccount(_ account: StoredAccount, token: StoredToken?, revoking: [String]) async throws {
        try await bounded {
            try await self.client.withTransaction(logger: self.logger) { conn in
                let env = account.environment.rawValue
                try await conn.query(
                    """
                    INSERT INTO kis_accounts (\(unescaped: Schema.accountColumns)) VALUES (\(account.userID), \(env),
                        \(account.appKey), \(account.appSecret), \(account.accountNumber), \(account.kid),
                        \(account.isActive), \(account.createdAt), \(account.updatedAt), \(account.appKeyFingerprint))
                    ON CONFLICT (user_id, environment) DO UPDATE SET app_key = excluded.app_key,
                        app_secret = excluded.app_secret, account_number = excluded.account_number,
                        seal_kid = excluded.seal_kid, is_active = excluded.is_active, updated_at = excluded.updated_at,
                        app_key_fp = excluded.app_key_fp
                    """, logger: self.logger)
                if let token { try await Self.upsert(token, conn, self.logger) }
                if !revoking.isEmpty {
                    let revoked = TokenStatus.revoked.rawValue
                    try await conn.query(
                        """
                        UPDATE kis_tokens SET status = \(revoked), updated_at = \(account.updatedAt)
                        WHERE token_sha256 = ANY(\(revoking))
                        """, logger: self.logger)
                }
            }
        }
    }

    public func setAccountActive(userID: String, environment: KISEnvironment, isActive: Bool, updatedAt: Int64)
        async throws
    {
        try await bounded {
            let env = environment.rawValue
            try await self.client.query(
                """
                UPDATE kis_accounts SET is_active = \(isActive), updated_at = \(updatedAt)
                WHERE user_id = \(userID) AND environment = \(env)
                """, logger: self.logger)
        }
    }

    public func deactivateAccount(userID: String, environment: KISEnvironment, revoking: [String], updatedAt: Int64)
        async throws
    {
        try await bounded {
            try await self.client.withTransaction(logger: self.logger) { conn in
                let env = environment.rawValue
                try await conn.query(
                    """
                    UPDATE kis_accounts SET is_active = false, updated_at = \(updatedAt)
                    WHERE user_id = \(userID) AND environment = \(env)
                    """, logger: self.logger)
                if !revoking.isEmpty {
                    let revoked = TokenStatus.revoked.rawValue
                    try await conn.query(
                        """
                        UPDATE kis_tokens SET status = \(revoked), updated_at = \(updatedAt)
                        WHERE token_sha256 = ANY(\(revoking))
                        """, logger: self.logger)
                }
            }
        }
    }

    public func deleteAccount(userID: String, environment: KISEnvironment) async throws -> Bool {
        return try await bounded {
            let env = environment.rawValue
            return try await self.client.withTransaction(logger: self.logger) { conn in
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
    }

    public func deleteEndedTokens(expiredBefore before: Int64) async throws -> Int {
        try await bounded {
            let (expired, revoked) = (TokenStatus.expired.rawValue, TokenStatus.revoked.rawValue)
            let rows = try await self.client.query(
                """
                DELETE FROM kis_tokens WHERE status IN (\(expired), \(revoked)) AND expires_at < \(before)
                RETURNING token_sha256
                """, logger: self.logger)
            var count = 0
            for try await _ in rows.decode(String.self) { count += 1 }
            return count
        }
    }

    public func saveToken(_ token: StoredToken) async throws {
        try await bounded {
            try await self.client.withConnection { conn in try await Self.upsert(token, conn, self.logger) }
        }
    }

    public func tokens(userID: String, environment: KISEnvironment) async throws -> [StoredToken] {
        return try await bounded {
            let env = environment.rawValue
            let rows = try await self.client.query(
                """
                SELECT \(unescaped: Schema.tokenColumns) FROM kis_tokens WHERE user_id = \(userID) AND environment = \(env)
                ORDER BY issued_at DESC, id DESC
                """, logger: self.logger)
            var out: [StoredToken] = []
            for try await columns in rows.decode(TokenColumns.self) { out.append(try Self.token(columns)) }
            return out
        }
    }

    public func token(sha256: String) async throws -> StoredToken? {
        return try await bounded {
            let rows = try await self.client.query(
                "SELECT \(unescaped: Schema.tokenColumns) FROM kis_tokens WHERE token_sha256 = \(sha256)",
                logger: self.logger)
            for try await columns in rows.decode(TokenColumns.self) { return try Self.token(columns) }
            return nil
        }
    }

    public func tokens(status: TokenStatus) async throws -> [StoredToken] {
        return try await bounded {
            let raw = status.rawValue
            let rows = try await self.client.query(
                "SELECT \(unescaped: Schema.tokenColumns) FROM kis_tokens WHERE status = \(raw) ORDER BY id", logger: self.logger)
            var out: [StoredToken] = []
            for try await columns in rows.decode(TokenColumns.self) { out.append(try Self.token(columns)) }
            return out
        }
    }

    public func setStatus(_ status: TokenStatus, tokenSHA256s: [String], updatedAt: Int64) async throws {
        guard !tokenSHA256s.isEmpty else { return }
        try await bounded {
            let raw = status.rawValue
            try await self.client.query(
                """
                UPDATE kis_tokens SET status = \(raw), updated_at = \(updatedAt)
                WHERE token_sha256 = ANY(\(tokenSHA256s))
                """, logger: self.logger)
        }
    }

    public func replaceAccountSeal(_ account: StoredAccount, replacing old: StoredAccount) async throws -> Bool {
        return try await bounded {
            let env = account.environment.rawValue
            let rows = try await self.client.query(
                """
                UPDATE kis_accounts SET app_key = \(account.appKey), app_secret = \(account.appSecret),
                    account_number = \(account.accountNumber), seal_kid = \(account.kid),
                    app_key_fp = \(account.appKeyFingerprint)
                WHERE user_id = \(account.userID) AND environment = \(env) AND seal_kid = \(old.kid)
                    AND app_key = \(old.appKey) AND app_secret = \(old.appSecret)
                    AND account_number = \(old.accountNumber)
                RETURNING user_id
                """, logger: self.logger)
            var changed = false
            for try await _ in rows.decode(String.self) { changed = true }
            return changed
        }
    }

    public func replaceTokenSeal(tokenSHA256: String, accessToken: String, kid: String, expectedKid: String)
        async throws -> Bool
    {
        return try await bounded {
            let rows = try await self.client.query(
                """
                UPDATE kis_tokens SET access_token = \(accessToken), seal_kid = \(kid)
                WHERE token_sha256 = \(tokenSHA256) AND seal_kid = \(expectedKid)
                RETURNING token_sha256
                """, logger: self.logger)
            var changed = false
            for try await _ in rows.decode(String.self) { changed = true }
            return changed
        }
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
            isActive: c.6, createdAt: c.7, updatedAt: c.8, appKeyFingerprint: c.9)
    }

    private static func token(_ c: TokenColumns) throws -> StoredToken {
        guard let status = TokenStatus(rawValue: c.7) else { throw RepositoryError("unknown token status") }
        return StoredToken(
            userID: c.0, environment: try environment(c.1), accessToken: c.2, tokenSHA256: c.3, kid: c.4,
            issuedAt: c.5, expiresAt: c.6, status: status, updatedAt: c.8)
    }
}

/// Whoever claims it first gets it; everyone after gets `false`.
private final class Claim: Sendable {
    private let taken = Atomic<Bool>(false)
    func claim() -> Bool { !taken.exchange(true, ordering: .acquiringAndReleasing) }
}
