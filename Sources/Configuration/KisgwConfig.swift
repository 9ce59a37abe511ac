public import Logging
public import Observability

/// The whole configuration of every `kisgw` role, as described in `spec/config.md`.
///
/// Load it once at start-up and check it for the role being started:
///
/// ```swift
/// let config = try KisgwConfig.load(file: options.config, environment: ProcessInfo.processInfo.environment)
/// try config.validate(for: .gateway)
/// LoggingSetup.bootstrap(level: config.log.level, format: config.log.format)
/// ```
///
/// Values are checked (types and ranges) by ``load(file:environment:)``; the section
/// initialisers trust their arguments, for tests and `kisgw demo` that build a configuration
/// in code.
public struct KisgwConfig: Sendable, Equatable {
    public let server: Server
    public let cors: CORS
    public let auth: Auth
    public let store: Store
    public let redis: Redis
    public let seal: Seal
    public let kis: KIS
    public let upstream: Upstream
    public let cache: Cache
    public let limits: Limits
    public let broker: Broker
    public let log: Log

    public init(
        server: Server = Server(),
        cors: CORS = CORS(),
        auth: Auth = Auth(),
        store: Store? = nil,
        redis: Redis = Redis(),
        seal: Seal = Seal(),
        kis: KIS = KIS(),
        upstream: Upstream = Upstream(),
        cache: Cache = Cache(),
        limits: Limits = Limits(),
        broker: Broker = Broker(),
        log: Log = Log()
    ) {
        self.server = server
        self.cors = cors
        self.auth = auth
        self.store = store ?? Store(backend: redis.url == nil ? .memory : .redis)
        self.redis = redis
        self.seal = seal
        self.kis = kis
        self.upstream = upstream
        self.cache = cache
        self.limits = limits
        self.broker = broker
        self.log = log
    }

    /// Every key at its default: what runs when there is no file and no environment.
    public static let defaults = KisgwConfig()

    /// The process a configuration is checked for by ``validate(for:)``.
    public enum Role: String, Sendable, CaseIterable {
        /// `kisgw gateway`
        case gateway
        /// `kisgw broker`
        case broker
        /// `kisgw demo`, which makes what it needs itself.
        case demo
        /// `kisgw jwt`, which signs with the HS256 secret.
        case jwt
    }

    // MARK: - sections

    /// `[server]`: the gateway's HTTP listener.
    public struct Server: Sendable, Equatable {
        /// Address to bind: a host name, an IPv4 or an IPv6 address.
        public let host: String
        public let port: Int
        public let requestTimeoutMs: Int
        public let maxHeaderBytes: Int
        public let shutdownGraceS: Int

        public init(
            host: String = "127.0.0.1",
            port: Int = 8000,
            requestTimeoutMs: Int = 10_000,
            maxHeaderBytes: Int = 16_384,
            shutdownGraceS: Int = 10
        ) {
            self.host = host
            self.port = port
            self.requestTimeoutMs = requestTimeoutMs
            self.maxHeaderBytes = maxHeaderBytes
            self.shutdownGraceS = shutdownGraceS
        }

        public var requestTimeout: Duration { .milliseconds(requestTimeoutMs) }
        public var shutdownGrace: Duration { .seconds(shutdownGraceS) }
    }

    /// `[cors]`: which browser origins may call the gateway.
    public struct CORS: Sendable, Equatable {
        public let allowOrigins: [OriginPattern]
        public let allowCredentials: Bool
        public let maxAgeS: Int

        public init(
            allowOrigins: [OriginPattern] = [OriginPattern("http://localhost:3000")!],
            allowCredentials: Bool = true,
            maxAgeS: Int = 600
        ) {
            self.allowOrigins = allowOrigins
            self.allowCredentials = allowCredentials
            self.maxAgeS = maxAgeS
        }

        /// Whether an `Origin` header value is allowed by any entry of ``allowOrigins``.
        public func allows(origin: String) -> Bool {
            for pattern in allowOrigins where pattern.matches(origin) { return true }
            return false
        }
    }

    /// `[auth]`
    public struct Auth: Sendable, Equatable {
        /// `[auth.jwt]`
        public let jwt: JWT

        public init(jwt: JWT = JWT()) {
            self.jwt = jwt
        }
    }

    /// A JWT signature algorithm the gateway may accept.
    public enum JWTAlgorithm: String, Sendable, CaseIterable {
        case hs256 = "HS256"
        case rs256 = "RS256"
        case es256 = "ES256"
        case eddsa = "EdDSA"

        /// Whether tokens are verified with a public key from `public_keys_file`.
        public var isAsymmetric: Bool { self != .hs256 }
    }

    /// `[auth.jwt]`: how user JWTs are checked.
    public struct JWT: Sendable, Equatable {
        public let algorithms: [JWTAlgorithm]
        /// From `KISGW_AUTH_JWT_HS256_SECRET` or read from `hs256_secret_file`; at least 32 bytes.
        public let hs256Secret: Secret?
        /// The file the secret was read from, if it came from one.
        public let hs256SecretFile: String?
        /// PEM or JWKS file with the keys for RS256, ES256 and EdDSA.
        public let publicKeysFile: String?
        /// The `iss` claim required, if set.
        public let issuer: String?
        /// The `aud` claim required, if set.
        public let audience: String?
        public let leewayS: Int

        public init(
            algorithms: [JWTAlgorithm] = [.hs256],
            hs256Secret: Secret? = nil,
            hs256SecretFile: String? = nil,
            publicKeysFile: String? = nil,
            issuer: String? = nil,
            audience: String? = nil,
            leewayS: Int = 30
        ) {
            self.algorithms = algorithms
            self.hs256Secret = hs256Secret
            self.hs256SecretFile = hs256SecretFile
            self.publicKeysFile = publicKeysFile
            self.issuer = issuer
            self.audience = audience
            self.leewayS = leewayS
        }

        public var leeway: Duration { .seconds(leewayS) }
    }

    /// `[store]`: where token records, cache and rate-limit state live.
    public struct Store: Sendable, Equatable {
        public enum Backend: String, Sendable, CaseIterable {
            case redis
            case memory
        }

        public let backend: Backend

        public init(backend: Backend) {
            self.backend = backend
        }
    }

    /// `[redis]`
    public struct Redis: Sendable, Equatable {
        public let url: RedisURL?
        public let prefix: String
        public let poolSize: Int
        public let timeoutMs: Int
        /// `password_file`: a file holding the Redis password alone (the URL then has none), read when the store is
        /// opened (``resolvedURL()``).
        public let passwordFile: String?
        /// Where `password_file` was set (`environment NAME` or the configuration file), for errors.
        public let passwordFileSource: String?

        public init(url: RedisURL? = nil, prefix: String = "kisgw:", poolSize: Int = 8, timeoutMs: Int = 250,
                    passwordFile: String? = nil, passwordFileSource: String? = nil) {
            self.url = url
            self.prefix = prefix
            self.poolSize = poolSize
            self.timeoutMs = timeoutMs
            self.passwordFile = passwordFile
            self.passwordFileSource = passwordFileSource
        }

        public var timeout: Duration { .milliseconds(timeoutMs) }

        /// ``url`` with the password of `password_file`, read now (``KisgwConfig/readPasswordFile(_:source:key:)``).
        /// Called by the roles that open the store (validation for them, and opening it), not at load: `kisgw jwt`
        /// and `kisgw sim` need no access to the file.
        public func resolvedURL() throws(ConfigError) -> RedisURL? {
            guard let url, let path = passwordFile else { return url }
            let password = try KisgwConfig.readPasswordFile(path, source: passwordFileSource ?? "configuration",
                                                            key: "redis.password_file")
            return RedisURL(tls: url.tls, host: url.host, port: url.port, database: url.database,
                            username: url.username, password: password)
        }
    }

    /// The password a `…_password_file` key names: the file's one line, its newline dropped; an empty file, or more
    /// than one line, is refused naming `key`.
    static func readPasswordFile(_ path: String, source: String, key: String) throws(ConfigError) -> Secret {
        let read = try Loader.readText(path, source: source, key: key)
        guard let text = Loader.oneLine(read) else {
            throw ConfigError(.invalidValue, source: source, key: key,
                              problem: "\(Loader.quoted(path)) must hold the password alone, on one line")
        }
        guard !text.isEmpty else {
            throw ConfigError(.invalidValue, source: source, key: key, problem: "\(Loader.quoted(path)) is empty")
        }
        return Secret(text)
    }

    /// `[seal]`: keys that encrypt token records at rest.
    ///
    /// Only the roles that seal or open token records use the keys: the broker, and a gateway on the Redis store.
    /// The keys in `keys_file` are read by them (``resolvedKeys()``), not at load, so that one configuration file
    /// can name a keys file that only the broker's machine can read (config.md: "each role reads its sections").
    public struct Seal: Sendable, Equatable {
        /// The key id new records are sealed with.
        public let current: String
        /// The keys set directly, by key id: from `KISGW_SEAL_KEYS_<KID>`, or in code. Those of ``keysFile`` are
        /// not among them until ``resolvedKeys()`` reads it.
        public let keys: [String: SealKey]
        /// `keys_file`: a TOML file of `kid = "base64"` lines, read by ``resolvedKeys()``.
        public let keysFile: String?
        /// Where `keys_file` was set (`environment NAME` or the configuration file), for errors.
        public let keysFileSource: String?

        public init(current: String = "k1", keys: [String: SealKey] = [:], keysFile: String? = nil,
                    keysFileSource: String? = nil) {
            self.current = current
            self.keys = keys
            self.keysFile = keysFile
            self.keysFileSource = keysFileSource
        }

        /// Every key that may open a record, by key id: those of ``keysFile``, read now, with ``keys`` over them
        /// (a key id set in the environment wins over the file's). Called by the roles that use the keys
        /// (validation for them, and making the keyring), not at load: `kisgw jwt`, and a gateway on the memory
        /// store, need no access to the file.
        ///
        /// - Throws: ``ConfigError`` naming `seal.keys_file` when the file cannot be read, or the key id in it
        ///   that is malformed; never a key's text.
        public func resolvedKeys() throws(ConfigError) -> [String: SealKey] {
            guard let keysFile else { return keys }
            var all = try Loader.sealKeys(file: keysFile, source: keysFileSource ?? "configuration")
            all.merge(keys) { _, direct in direct }
            return all
        }

        /// Equal when they hold the same keys and name the same file; where the file was named is not compared.
        public static func == (a: Seal, b: Seal) -> Bool {
            a.current == b.current && a.keys == b.keys && a.keysFile == b.keysFile
        }
    }

    /// `[kis]`: the KIS Open API endpoints and their per-app-key rate limits.
    public struct KIS: Sendable, Equatable {
        /// Base URL without a trailing slash.
        public let liveURL: String
        /// Base URL without a trailing slash.
        public let sandboxURL: String
        public let liveRatePerS: Double
        public let sandboxRatePerS: Double

        public init(
            liveURL: String = "https://openapi.koreainvestment.com:9443",
            sandboxURL: String = "https://openapivts.koreainvestment.com:29443",
            liveRatePerS: Double = 18,
            sandboxRatePerS: Double = 1
        ) {
            self.liveURL = liveURL
            self.sandboxURL = sandboxURL
            self.liveRatePerS = liveRatePerS
            self.sandboxRatePerS = sandboxRatePerS
        }

        /// The keys whose URL is plain `http` to another machine than this one: app secrets and tokens would cross
        /// the network in clear (KIS itself is served over TLS; a simulator on loopback is fine). For a warning at
        /// start-up — a simulator elsewhere on a private network is legitimate.
        public var inClear: [(key: String, url: String)] {
            [("[kis] live_url", liveURL), ("[kis] sandbox_url", sandboxURL)].filter { Self.isInClear($0.1) }
        }

        /// Whether `url` is plain `http` to a host other than loopback.
        public static func isInClear(_ url: String) -> Bool {
            url.lowercased().hasPrefix("http://") && !KisgwConfig.isLoopback(url)
        }
    }

    /// The URLs `role` calls that are plain `http` to another machine, by key: KIS's (app secrets and tokens), and
    /// for the gateway `[broker] url` too (it sends the user's JWT there and gets a KIS access token back). For a
    /// warning at start-up.
    public func urlsInClear(for role: Role) -> [(key: String, url: String)] {
        var found = kis.inClear
        if role == .gateway, KIS.isInClear(broker.url) { found.append(("[broker] url", broker.url)) }
        return found
    }

    /// Whether an `http(s)://` URL's host is this machine's loopback (`localhost`, `*.localhost`, 127.x, `::1`).
    public static func isLoopback(_ url: String) -> Bool {
        guard let scheme = url.firstRange(of: "://") else { return false }
        let rest = url[scheme.upperBound...]
        let authority = rest[..<(rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex)]
        guard case .success(let (host, _)) = Validation.hostAndPort(authority) else { return false }
        let isIPv4 = host.split(separator: ".").count == 4 && host.utf8.allSatisfy { $0 == 46 || (48...57).contains($0) }
        return host == "localhost" || host.hasSuffix(".localhost") || (isIPv4 && host.hasPrefix("127.")) || host == "::1"
    }

    /// `[upstream]`: calls to KIS.
    public struct Upstream: Sendable, Equatable {
        public let timeoutMs: Int
        public let maxQueueMs: Int
        public let retries: Int

        public init(timeoutMs: Int = 5000, maxQueueMs: Int = 2000, retries: Int = 2) {
            self.timeoutMs = timeoutMs
            self.maxQueueMs = maxQueueMs
            self.retries = retries
        }

        public var timeout: Duration { .milliseconds(timeoutMs) }
        public var maxQueue: Duration { .milliseconds(maxQueueMs) }
    }

    /// `[cache]`
    public struct Cache: Sendable, Equatable {
        /// Entries in the in-process L1; 0 turns it off.
        public let l1Entries: Int
        public let liveTTLS: Int
        public let settledTTLS: Int
        public let staleWhileRevalidateS: Int
        public let staleIfErrorS: Int

        public init(
            l1Entries: Int = 10_000,
            liveTTLS: Int = 5,
            settledTTLS: Int = 86_400,
            staleWhileRevalidateS: Int = 30,
            staleIfErrorS: Int = 3600
        ) {
            self.l1Entries = l1Entries
            self.liveTTLS = liveTTLS
            self.settledTTLS = settledTTLS
            self.staleWhileRevalidateS = staleWhileRevalidateS
            self.staleIfErrorS = staleIfErrorS
        }
    }

    /// `[limits]`
    public struct Limits: Sendable, Equatable {
        public let maxRangeDays: Int

        public init(maxRangeDays: Int = 3660) {
            self.maxRangeDays = maxRangeDays
        }
    }

    /// `[broker]`: the token broker, and where the gateway finds it.
    public struct Broker: Sendable, Equatable {
        /// The broker's base URL as the gateway and the web UI reach it, without a trailing slash.
        public let url: String
        public let host: String
        public let port: Int
        public let database: BrokerDatabase
        /// `database_password_file`: a file holding the PostgreSQL password alone, read by the broker only
        /// (``resolvedDatabase()``).
        public let databasePasswordFile: String?
        /// Where `database_password_file` was set (`environment NAME` or the configuration file), for errors.
        public let databasePasswordFileSource: String?
        public let refreshIntervalS: Int
        public let refreshAheadS: Int
        public let reuseWindowS: Int
        public let reconcileIntervalS: Int
        /// `ui`: whether the broker serves the web UI at `/` (web-client.md).
        public let ui: Bool
        /// `ui_gateway_url`: the gateway's base URL as the web UI's browsers reach it, without a trailing slash;
        /// by default `[server]`'s host (127.0.0.1 for a wildcard address) and port.
        public let uiGatewayURL: String

        public init(
            url: String = "http://127.0.0.1:8080",
            host: String = "127.0.0.1",
            port: Int = 8080,
            database: BrokerDatabase = .sqlite(path: "data/broker.sqlite"),
            databasePasswordFile: String? = nil,
            databasePasswordFileSource: String? = nil,
            refreshIntervalS: Int = 60,
            refreshAheadS: Int = 3600,
            reuseWindowS: Int = 21_600,
            reconcileIntervalS: Int = 60,
            ui: Bool = true,
            uiGatewayURL: String = "http://127.0.0.1:8000"
        ) {
            self.url = url
            self.host = host
            self.port = port
            self.database = database
            self.databasePasswordFile = databasePasswordFile
            self.databasePasswordFileSource = databasePasswordFileSource
            self.refreshIntervalS = refreshIntervalS
            self.refreshAheadS = refreshAheadS
            self.reuseWindowS = reuseWindowS
            self.reconcileIntervalS = reconcileIntervalS
            self.ui = ui
            self.uiGatewayURL = uiGatewayURL
        }

        /// ``database`` with the password of `database_password_file`, read now: one line, its newline dropped.
        /// Only the broker calls it (validation for the broker role, and opening the database), so a gateway sharing
        /// the configuration file needs no access to the file.
        public func resolvedDatabase() throws(ConfigError) -> BrokerDatabase {
            guard let path = databasePasswordFile, case .postgres(let url, _) = database else { return database }
            let password = try KisgwConfig.readPasswordFile(path, source: databasePasswordFileSource ?? "configuration",
                                                            key: "broker.database_password_file")
            return .postgres(url: url, password: password)
        }

        /// The URL a browser on this machine reaches a server listening on `host`:`port` at — a wildcard address
        /// becomes 127.0.0.1 (`::` becomes `[::1]`).
        public static func browserURL(host: String, port: Int) -> String {
            let shown: String
            switch host {
            case "0.0.0.0", "": shown = "127.0.0.1"
            case "::", "[::]": shown = "[::1]"
            default: shown = urlHost(host)
            }
            return "http://\(shown):\(port)"
        }

        /// `host` as a URL writes it: an IPv6 address in brackets.
        public static func urlHost(_ host: String) -> String {
            host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        }
    }

    /// `[log]`
    public struct Log: Sendable, Equatable {
        public let level: Logger.Level
        public let format: LogFormat

        public init(level: Logger.Level = .info, format: LogFormat = .text) {
            self.level = level
            self.format = format
        }
    }
}

/// A 32-byte key that seals token records, with its key id. Prints without its bytes.
public struct SealKey: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The key id (`k1`): lower-case letters, digits and underscores.
    public let id: String
    /// Exactly 32 bytes. Never log them.
    public let bytes: [UInt8]

    /// `nil` unless `bytes` has exactly 32 bytes.
    public init?(id: String, bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        self.id = id
        self.bytes = bytes
    }

    public var description: String { "SealKey(\(id), [REDACTED])" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["id": id], displayStyle: .struct) }
}

/// Where the broker keeps its accounts: a SQLite file or a PostgreSQL database.
public enum BrokerDatabase: Sendable, Equatable, CustomStringConvertible {
    /// `sqlite:data/broker.sqlite`, `sqlite:///var/lib/kisgw/broker.sqlite`, `sqlite::memory:`
    case sqlite(path: String)
    /// `postgres://user:password@host:5432/db?sslmode=require`, kept as a secret because it may
    /// carry a password; `password`: one read from `[broker] database_password_file` (the URL then has none).
    case postgres(url: Secret, password: Secret? = nil)

    /// The location with any password replaced by `[REDACTED]`.
    public var description: String {
        switch self {
        case .sqlite(let path): "sqlite:\(path)"
        case .postgres(let url, _): Validation.maskingPassword(url.value)
        }
    }
}

/// A parsed `redis://` or `rediss://` URL. Prints with the password replaced by `[REDACTED]`.
public struct RedisURL: Sendable, Equatable, CustomStringConvertible {
    /// `rediss://`: connect with TLS.
    public let tls: Bool
    /// Host name or IP address (IPv6 without brackets).
    public let host: String
    public let port: Int
    /// The database number, `SELECT`ed after connecting.
    public let database: Int
    /// ACL user name (`redis://user:password@…`); `nil` for the default user.
    public let username: String?
    public let password: Secret?

    public init(tls: Bool = false, host: String, port: Int = 6379, database: Int = 0, username: String? = nil,
        password: Secret? = nil)
    {
        self.tls = tls
        self.host = host
        self.port = port
        self.database = database
        self.username = username
        self.password = password
    }

    /// Parses `redis[s]://[[user]:password@]host[:port][/db]`; `nil` if malformed
    /// (``Validation`` gives the reason when loading).
    public init?(_ text: String) {
        guard case .success(let url) = Validation.redisURL(text) else { return nil }
        self = url
    }

    public var description: String {
        let hostPart = host.contains(":") ? "[\(host)]" : host
        var auth = ""
        if username != nil || password != nil {
            auth = (username ?? "") + (password != nil ? ":[REDACTED]" : "") + "@"
        }
        return (tls ? "rediss://" : "redis://") + auth + hostPart + ":\(port)/\(database)"
    }
}
