import Foundation
import KisgwConfiguration
import Testing

/// One bad input and the exact one-line message it must produce. `<FILE>` stands for the path of
/// the temporary configuration file.
struct BadInput: CustomTestStringConvertible, Sendable {
    let name: String
    var toml: String = ""
    var environment: [String: String] = [:]
    let message: String
    let kind: ConfigError.Kind
    /// Text that must not appear in the message (secrets).
    var hidden: [String] = []

    var testDescription: String { name }
}

let badInputs: [BadInput] = [
    BadInput(
        name: "wrong type", toml: "[server]\nport = \"8000\"",
        message: "<FILE>: [server] port: must be an integer from 1 to 65535, got \"8000\"", kind: .invalidValue),
    BadInput(
        name: "negative port", toml: "[server]\nport = -1",
        message: "<FILE>: [server] port: must be an integer from 1 to 65535, got -1", kind: .invalidValue),
    BadInput(
        name: "port 70000", toml: "[server]\nport = 70000",
        message: "<FILE>: [server] port: must be an integer from 1 to 65535, got 70000", kind: .invalidValue),
    BadInput(
        name: "float for an integer", toml: "[cache]\nlive_ttl_s = 1.5",
        message: "<FILE>: [cache] live_ttl_s: must be an integer from 0 to 86400, got 1.5", kind: .invalidValue),
    BadInput(
        name: "bool type", toml: "[cors]\nallow_credentials = \"yes\"",
        message: "<FILE>: [cors] allow_credentials: must be true or false, got \"yes\"", kind: .invalidValue),
    BadInput(
        name: "unknown section", toml: "[sever]\nport = 1",
        message: "<FILE>: unknown section [sever]; did you mean [server]?", kind: .unknownSection),
    BadInput(
        name: "unknown nested section", toml: "[auth.jwks]\nx = 1",
        message: "<FILE>: unknown section [auth.jwks]; the auth section is [auth.jwt]", kind: .unknownSection),
    BadInput(
        name: "unknown key", toml: "[server]\nprot = 1",
        message: "<FILE>: [server] prot: unknown key; did you mean \"port\"?", kind: .unknownKey),
    BadInput(
        name: "unknown key without a near name", toml: "[redis]\ncluster = true",
        message: "<FILE>: [redis] cluster: unknown key", kind: .unknownKey),
    BadInput(
        name: "top-level key", toml: "port = 1",
        message: "<FILE>: port: keys must be inside a section, not at the top level; did you mean to put it under [server]?",
        kind: .unknownKey),
    BadInput(
        name: "section not a table", toml: "server = 1",
        message: "<FILE>: [server]: must be a table, got 1", kind: .invalidValue),
    BadInput(
        name: "malformed URL", toml: "[kis]\nlive_url = \"ftp://example.com\"",
        message: "<FILE>: [kis] live_url: must be an http:// or https:// URL with a host, like https://example.com:9443, got \"ftp://example.com\"",
        kind: .invalidValue),
    BadInput(
        name: "URL with a query", toml: "[broker]\nurl = \"http://127.0.0.1:8080/?x=1\"",
        message: "<FILE>: [broker] url: must not have a query or fragment, got \"http://127.0.0.1:8080/?x=1\"",
        kind: .invalidValue),
    BadInput(
        name: "URL with a bad port", toml: "[kis]\nsandbox_url = \"http://127.0.0.1:0\"",
        message: "<FILE>: [kis] sandbox_url: must be an http:// or https:// URL with a host, like https://example.com:9443, got \"http://127.0.0.1:0\"",
        kind: .invalidValue),
    BadInput(
        name: "bad redis scheme", toml: "[redis]\nurl = \"http://localhost:6379\"",
        message: "<FILE>: [redis] url: must be redis://[:password@]host[:port][/db] or rediss://…, got \"http://localhost:6379\"",
        kind: .invalidValue),
    BadInput(
        name: "redis url without host keeps the password out", environment: ["KISGW_REDIS_URL": "redis://:hunter2@/0"],
        message: "environment KISGW_REDIS_URL: has no host; must be redis://[:password@]host[:port][/db] or rediss://…, got \"redis://:[REDACTED]@/0\"",
        kind: .invalidValue, hidden: ["hunter2"]),
    BadInput(
        name: "redis db not a number", environment: ["KISGW_REDIS_URL": "redis://u:s3cret@localhost/x"],
        message: "environment KISGW_REDIS_URL: must end with a database number (/0 to /999999999) or nothing, got \"redis://u:[REDACTED]@localhost/x\"",
        kind: .invalidValue, hidden: ["s3cret"]),
    BadInput(
        name: "redis url with a password and no host keeps the password out", environment: ["KISGW_REDIS_URL": "redis://:secretpw"],
        message: "environment KISGW_REDIS_URL: has an invalid host or port; must be redis://[:password@]host[:port][/db] or rediss://…, got \"redis://:[REDACTED]\"",
        kind: .invalidValue, hidden: ["secretpw"]),
    BadInput(
        name: "redis url with user:password and no @ keeps the password out", environment: ["KISGW_REDIS_URL": "redis://u:secretpw/0"],
        message: "environment KISGW_REDIS_URL: has an invalid host or port; must be redis://[:password@]host[:port][/db] or rediss://…, got \"redis://u:[REDACTED]\"",
        kind: .invalidValue, hidden: ["secretpw"]),
    BadInput(
        name: "database url with user:password and no @ keeps the password out", environment: ["KISGW_BROKER_DATABASE": "postgres://u:secretpw"],
        message: "environment KISGW_BROKER_DATABASE: has a missing or invalid host; must be sqlite:<path> or postgres://user@host[:port]/database, got \"postgres://u:[REDACTED]\"",
        kind: .invalidValue, hidden: ["secretpw"]),
    BadInput(
        name: "a redis url with its scheme mistyped is not shown", environment: ["KISGW_REDIS_URL": "redis//:hunter2@h"],
        message: "environment KISGW_REDIS_URL: must be redis://[:password@]host[:port][/db] or rediss://…, got \"<17 characters, not shown: not a URL, and it may hold a password>\"",
        kind: .invalidValue, hidden: ["hunter2"]),
    BadInput(
        name: "a database url with its scheme mistyped is not shown", environment: ["KISGW_BROKER_DATABASE": "postgres//u:hunter2@host/db"],
        message: "environment KISGW_BROKER_DATABASE: must be sqlite:<path> or postgres://user@host[:port]/database, got \"<27 characters, not shown: not a URL, and it may hold a password>\"",
        kind: .invalidValue, hidden: ["hunter2"]),
    BadInput(
        name: "a seal key where [seal] current's id goes is not shown", toml: "[seal]\ncurrent = \"\(base64Key(32))\"",
        message: "<FILE>: [seal] current: must be a key id of 1 to 32 lower-case letters, digits and underscores, like k1, got \"<44 characters, not shown: a key in place of its id?>\"",
        kind: .invalidValue, hidden: [base64Key(32)]),
    BadInput(
        name: "bad origin pattern", toml: "[cors]\nallow_origins = [\"https://*.com\"]",
        message: "<FILE>: [cors] allow_origins: must name a registrable domain after *. (like *.example.com, not *.com), got \"https://*.com\"",
        kind: .invalidValue),
    BadInput(
        name: "origin with a trailing slash", toml: "[cors]\nallow_origins = [\"https://app.example.com/\"]",
        message: "<FILE>: [cors] allow_origins: must not end with a slash; an origin has no path, got \"https://app.example.com/\"",
        kind: .invalidValue),
    BadInput(
        name: "bare star origin", toml: "[cors]\nallow_origins = [\"*\"]",
        message: "<FILE>: [cors] allow_origins: a bare * is not allowed; list the origins, or use a pattern like https://*.example.com, got \"*\"",
        kind: .invalidValue),
    BadInput(
        name: "none algorithm", toml: "[auth.jwt]\nalgorithms = [\"none\"]",
        message: "<FILE>: [auth.jwt] algorithms: \"none\" is never allowed; use HS256, RS256, ES256, EdDSA", kind: .invalidValue),
    BadInput(
        name: "unknown algorithm", toml: "[auth.jwt]\nalgorithms = [\"hs256\"]",
        message: "<FILE>: [auth.jwt] algorithms: must list only HS256, RS256, ES256, EdDSA, got \"hs256\"; did you mean \"HS256\"?",
        kind: .invalidValue),
    BadInput(
        name: "empty algorithms", toml: "[auth.jwt]\nalgorithms = []",
        message: "<FILE>: [auth.jwt] algorithms: must list at least one of HS256, RS256, ES256, EdDSA", kind: .invalidValue),
    BadInput(
        name: "secret in the file", toml: "[auth.jwt]\nhs256_secret = \"\(goodSecret)\"",
        message: "<FILE>: [auth.jwt] hs256_secret: secrets may not be written in the file; set KISGW_AUTH_JWT_HS256_SECRET or hs256_secret_file",
        kind: .secretInFile, hidden: [goodSecret]),
    BadInput(
        name: "a database password in the file", toml: "[broker]\ndatabase = \"postgres://kisgw:secretpw@db:5432/kisgw\"",
        message: "<FILE>: [broker] database: secrets may not be written in the file: this URL carries a password; set KISGW_BROKER_DATABASE to it instead, or give the password in [broker] database_password_file",
        kind: .secretInFile, hidden: ["secretpw"]),
    BadInput(
        name: "a database password parameter in the file",
        toml: "[broker]\ndatabase = \"postgres://kisgw@db/kisgw?sslmode=disable&password=secretpw\"",
        message: "<FILE>: [broker] database: secrets may not be written in the file: this URL carries a password; set KISGW_BROKER_DATABASE to it instead, or give the password in [broker] database_password_file",
        kind: .secretInFile, hidden: ["secretpw"]),
    BadInput(
        name: "a Redis password in the file", toml: "[redis]\nurl = \"redis://:secretpw@127.0.0.1:6379/0\"",
        message: "<FILE>: [redis] url: secrets may not be written in the file: this URL carries a password; set KISGW_REDIS_URL to it instead, or give the password in [redis] password_file",
        kind: .secretInFile, hidden: ["secretpw"]),
    BadInput(
        name: "a Redis user and password in the file", toml: "[redis]\nurl = \"redis://app:secretpw@127.0.0.1:6379/0\"",
        message: "<FILE>: [redis] url: secrets may not be written in the file: this URL carries a password; set KISGW_REDIS_URL to it instead, or give the password in [redis] password_file",
        kind: .secretInFile, hidden: ["secretpw"]),
    BadInput(
        name: "seal keys in the file", toml: "[seal.keys]\nk1 = \"\(base64Key(32))\"",
        message: "<FILE>: [seal] keys: secrets may not be written in the file; set KISGW_SEAL_KEYS_K1 (one variable per key id) or [seal] keys_file",
        kind: .secretInFile, hidden: [base64Key(32)]),
    BadInput(
        name: "bad base64 seal key", environment: ["KISGW_SEAL_KEYS_K1": "not base64!!"],
        message: "environment KISGW_SEAL_KEYS_K1: must be base64 of exactly 32 bytes, got text that is not base64",
        kind: .invalidValue, hidden: ["not base64!!"]),
    BadInput(
        name: "31-byte seal key", environment: ["KISGW_SEAL_KEYS_K1": base64Key(31)],
        message: "environment KISGW_SEAL_KEYS_K1: must be base64 of exactly 32 bytes, got 31 bytes",
        kind: .invalidValue, hidden: [base64Key(31)]),
    BadInput(
        name: "bad seal key id", environment: ["KISGW_SEAL_KEYS_K-1": base64Key(32)],
        message: "environment KISGW_SEAL_KEYS_K-1: must be a key id of 1 to 32 lower-case letters, digits and underscores, like k1",
        kind: .invalidValue),
    BadInput(
        name: "bad seal current", toml: "[seal]\ncurrent = \"K 1\"",
        message: "<FILE>: [seal] current: must be a key id of 1 to 32 lower-case letters, digits and underscores, like k1, got \"K 1\"",
        kind: .invalidValue),
    BadInput(
        name: "bad env override value", toml: "[server]\nport = 9000", environment: ["KISGW_SERVER_PORT": "abc"],
        message: "environment KISGW_SERVER_PORT: must be an integer from 1 to 65535, got \"abc\"", kind: .invalidValue),
    BadInput(
        name: "bad env bool", environment: ["KISGW_CORS_ALLOW_CREDENTIALS": "yes"],
        message: "environment KISGW_CORS_ALLOW_CREDENTIALS: must be true, false, 1 or 0, got \"yes\"", kind: .invalidValue),
    BadInput(
        name: "bad env array literal", environment: ["KISGW_AUTH_JWT_ALGORITHMS": "[HS256]"],
        message: "environment KISGW_AUTH_JWT_ALGORITHMS: must be a comma-separated list or a TOML array of strings, got \"[HS256]\"",
        kind: .invalidValue),
    BadInput(
        name: "bad env rate", environment: ["KISGW_KIS_SANDBOX_RATE_PER_S": "0"],
        message: "environment KISGW_KIS_SANDBOX_RATE_PER_S: must be a number from 0.01 to 10000 (requests per second), got 0.0",
        kind: .invalidValue),
    // Below the floor: accepted before, then the first miss trapped computing the GCRA interval (SharedStore.swift).
    BadInput(
        name: "tiny rate", toml: "[kis]\nsandbox_rate_per_s = 1e-13",
        message: "<FILE>: [kis] sandbox_rate_per_s: must be a number from 0.01 to 10000 (requests per second), got 1e-13",
        kind: .invalidValue),
    BadInput(
        name: "tiny env rate", environment: ["KISGW_KIS_LIVE_RATE_PER_S": "0.009"],
        message: "environment KISGW_KIS_LIVE_RATE_PER_S: must be a number from 0.01 to 10000 (requests per second), got 0.009",
        kind: .invalidValue),
    BadInput(
        name: "rate above the ceiling", toml: "[kis]\nlive_rate_per_s = 10001",
        message: "<FILE>: [kis] live_rate_per_s: must be a number from 0.01 to 10000 (requests per second), got 10001.0",
        kind: .invalidValue),
    BadInput(
        name: "unknown KISGW_ variable", environment: ["KISGW_SERVER_PROT": "9000"],
        message: "environment KISGW_SERVER_PROT: names no configuration key; did you mean KISGW_SERVER_PORT? (KISGW_TEST_*, KISGW_BENCH_* and KISGW_DEMO_* are ignored)",
        kind: .unknownEnvironmentVariable),
    BadInput(
        name: "short secret", environment: ["KISGW_AUTH_JWT_HS256_SECRET": "tooshort"],
        message: "environment KISGW_AUTH_JWT_HS256_SECRET: must be at least 32 bytes (256 bits), got 8 bytes",
        kind: .invalidValue, hidden: ["tooshort"]),
    BadInput(
        name: "secret and secret file both in the environment",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_AUTH_JWT_HS256_SECRET_FILE": "/run/x"],
        message: "environment KISGW_AUTH_JWT_HS256_SECRET_FILE: set either KISGW_AUTH_JWT_HS256_SECRET or KISGW_AUTH_JWT_HS256_SECRET_FILE, not both",
        kind: .invalidValue, hidden: [goodSecret]),
    BadInput(
        name: "missing secret file", toml: "[auth.jwt]\nhs256_secret_file = \"/nonexistent/kisgw-secret\"",
        message: "<FILE>: [auth.jwt] hs256_secret_file: cannot read \"/nonexistent/kisgw-secret\": no such file",
        kind: .unreadableFile),
    BadInput(
        name: "a NUL byte (the parser stopped at it, and the rest was ignored)",
        toml: "[server]\nport = 8001\n\u{0}\n[server]\nport = \"bad\"\n",
        message: "<FILE>: cannot read \"<FILE>\": line 3 holds a NUL byte, which a text file does not",
        kind: .unreadableFile),
    BadInput(
        name: "log level", toml: "[log]\nlevel = \"warn\"",
        message: "<FILE>: [log] level: must be one of trace, debug, info, notice, warning, error, critical, got \"warn\"; did you mean \"warning\"?",
        kind: .invalidValue),
    BadInput(
        name: "log format", toml: "[log]\nformat = \"logfmt\"",
        message: "<FILE>: [log] format: must be \"text\" or \"json\", got \"logfmt\"", kind: .invalidValue),
    BadInput(
        name: "store backend", toml: "[store]\nbackend = \"postgres\"",
        message: "<FILE>: [store] backend: must be \"redis\" or \"memory\", got \"postgres\"", kind: .invalidValue),
    BadInput(
        name: "bad database", environment: ["KISGW_BROKER_DATABASE": "mysql://u:pw@db/kisgw"],
        message: "environment KISGW_BROKER_DATABASE: must be sqlite:<path> or postgres://user@host[:port]/database, got \"mysql://u:[REDACTED]@db/kisgw\"",
        kind: .invalidValue, hidden: ["pw@"]),
    BadInput(
        name: "a database URL parameter kisgw does not read",
        environment: ["KISGW_BROKER_DATABASE": "postgres://kisgw@db/kisgw?sslmode=require&connect_timeout=5"],
        message: "environment KISGW_BROKER_DATABASE: has the parameter \"connect_timeout\", which kisgw does not read (it reads sslmode, sslrootcert and password), got \"postgres://[REDACTED]@db/kisgw?sslmode=require&connect_timeout=5\"",
        kind: .invalidValue),
    BadInput(
        name: "a database URL parameter given twice (libpq takes the last, the client the first)",
        environment: ["KISGW_BROKER_DATABASE": "postgres://kisgw@db/kisgw?sslmode=disable&sslmode=verify-full"],
        message: "environment KISGW_BROKER_DATABASE: has the parameter \"sslmode\" more than once; give it once, got \"postgres://[REDACTED]@db/kisgw?sslmode=disable&sslmode=verify-full\"",
        kind: .invalidValue),
    BadInput(
        name: "a database URL whose parameters follow a # (a fragment the client ignores)",
        environment: ["KISGW_BROKER_DATABASE": "postgres://kisgw@db/kisgw#?sslmode=verify-full"],
        message: "environment KISGW_BROKER_DATABASE: has a # (the client ignores it and everything after it); percent-encode # in a user name or password as %23, got \"postgres://[REDACTED]@db/kisgw#?sslmode=verify-full\"",
        kind: .invalidValue),
    BadInput(
        name: "an sslrootcert that cannot be read",
        environment: ["KISGW_BROKER_DATABASE": "postgres://kisgw@db/kisgw?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"],
        message: "environment KISGW_BROKER_DATABASE: has sslrootcert=/nonexistent/ca.pem, which cannot be read (a PEM file of the CA that signed the server's certificate), got \"postgres://[REDACTED]@db/kisgw?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\"",
        kind: .invalidValue),
    BadInput(
        name: "a database password with an unencoded slash",
        environment: ["KISGW_BROKER_DATABASE": "postgres://kisgw:se/cret@db/kisgw"],
        message: "environment KISGW_BROKER_DATABASE: is not a URL the PostgreSQL client can read; percent-encode /, ?, #, @ and : in the user name and password (%2F %3F %23 %40 %3A), got \"postgres://kisgw:[REDACTED]@db/kisgw\"",
        kind: .invalidValue, hidden: ["se/cret", "cret"]),
    BadInput(
        name: "an unknown sslmode",
        environment: ["KISGW_BROKER_DATABASE": "postgres://kisgw:pw@db/kisgw?sslmode=strict"],
        message: "environment KISGW_BROKER_DATABASE: has sslmode=strict; use one of disable, allow, prefer, require, verify-ca, verify-full, got \"postgres://kisgw:[REDACTED]@db/kisgw?sslmode=strict\"",
        kind: .invalidValue, hidden: ["pw@"]),
    BadInput(
        name: "a Redis password file and a password in the URL",
        environment: ["KISGW_REDIS_URL": "redis://:pw@127.0.0.1:6379/0", "KISGW_REDIS_PASSWORD_FILE": "/run/secrets/redis"],
        message: "environment KISGW_REDIS_PASSWORD_FILE: the Redis URL carries a password too; give it in one place",
        kind: .invalidValue, hidden: ["pw@"]),
    // A password written where the user goes (as some clients read `redis://secret@host`) was kept as a user name
    // and never sent: refused, without repeating it.
    BadInput(
        name: "a Redis user without a password, in the file",
        toml: "[redis]\nurl = \"redis://s3cret@127.0.0.1:6379/0\"",
        message: "<FILE>: [redis] url: names a user without a password (redis://user@host); give the user's password in KISGW_REDIS_URL (redis://user:password@host) or in [redis] password_file; a password alone is written redis://:password@host",
        kind: .invalidValue, hidden: ["s3cret"]),
    BadInput(
        name: "a Redis user without a password, in the environment",
        environment: ["KISGW_REDIS_URL": "rediss://s3cret@cache.internal:6380/2"],
        message: "environment KISGW_REDIS_URL: names a user without a password (redis://user@host); give the user's password in KISGW_REDIS_URL (redis://user:password@host) or in [redis] password_file; a password alone is written redis://:password@host",
        kind: .invalidValue, hidden: ["s3cret"]),
    BadInput(
        name: "a Redis password file with no Redis URL",
        toml: "[redis]\npassword_file = \"/run/secrets/redis\"",
        message: "<FILE>: [redis] password_file: applies to a [redis] url, and none is set",
        kind: .invalidValue),
    BadInput(
        name: "a database password file for SQLite",
        toml: "[broker]\ndatabase = \"sqlite:data/b.sqlite\"\ndatabase_password_file = \"/run/secrets/db\"",
        message: "<FILE>: [broker] database_password_file: applies to a postgres:// database only; [broker] database is sqlite:data/b.sqlite",
        kind: .invalidValue),
    BadInput(
        name: "a database password file and a password in the URL",
        environment: ["KISGW_BROKER_DATABASE": "postgres://kisgw:pw@db/kisgw",
                      "KISGW_BROKER_DATABASE_PASSWORD_FILE": "/run/secrets/db"],
        message: "environment KISGW_BROKER_DATABASE_PASSWORD_FILE: the database URL carries a password too; give it in one place",
        kind: .invalidValue, hidden: ["pw@"]),
    BadInput(
        name: "a database password file and an empty password in the URL",
        environment: ["KISGW_BROKER_DATABASE": "postgres://kisgw:@db/kisgw",
                      "KISGW_BROKER_DATABASE_PASSWORD_FILE": "/run/secrets/db"],
        message: "environment KISGW_BROKER_DATABASE_PASSWORD_FILE: the database URL carries a password too; give it in one place",
        kind: .invalidValue),
    BadInput(
        name: "a refresh interval KIS's reuse window leaves no room for", toml: "[broker]\nrefresh_interval_s = 36000",
        message: "<FILE>: [broker] refresh_interval_s: twice refresh_interval_s (36000) plus reuse_window_s (21600) must be at most 86400, a KIS token's life: a token is refreshed once less than two intervals of it are left, and inside the reuse window KIS only hands the same token back, so every pass would ask KIS again",
        kind: .invalidValue),
    BadInput(
        name: "a reuse window the refresh interval leaves no room for",
        environment: ["KISGW_BROKER_REUSE_WINDOW_S": "86400"],
        message: "environment KISGW_BROKER_REUSE_WINDOW_S: twice refresh_interval_s (60) plus reuse_window_s (86400) must be at most 86400, a KIS token's life: a token is refreshed once less than two intervals of it are left, and inside the reuse window KIS only hands the same token back, so every pass would ask KIS again",
        kind: .invalidValue),
    BadInput(
        name: "ui not a bool", toml: "[broker]\nui = \"yes\"",
        message: "<FILE>: [broker] ui: must be true or false, got \"yes\"", kind: .invalidValue),
    BadInput(
        name: "ui_gateway_url not a URL", environment: ["KISGW_BROKER_UI_GATEWAY_URL": "gw.example.com"],
        message: "environment KISGW_BROKER_UI_GATEWAY_URL: must be an http:// or https:// URL with a host, like https://example.com:9443, got \"gw.example.com\"",
        kind: .invalidValue),
    BadInput(
        name: "bad bind host", toml: "[server]\nhost = \"http://0.0.0.0\"",
        message: "<FILE>: [server] host: must be a host name or IP address, not a URL, got \"http://0.0.0.0\"", kind: .invalidValue),
    BadInput(
        name: "bad redis prefix", toml: "[redis]\nprefix = \"\"",
        message: "<FILE>: [redis] prefix: must be 1 to 64 printable ASCII characters without spaces, got \"\"", kind: .invalidValue),
    BadInput(
        name: "array holding a number", toml: "[cors]\nallow_origins = [1]",
        message: "<FILE>: [cors] allow_origins: must be an array of strings, got an array holding 1", kind: .invalidValue),
]

@Suite("Errors")
struct ErrorTests {
    @Test(arguments: badInputs)
    func badInputNamesSourceKeyAndProblem(input: BadInput) throws {
        let failure = try #require(loadError(input.toml, environment: input.environment), "\(input.name) loaded")
        let expected = input.message.replacingOccurrences(of: "<FILE>", with: failure.path)
        #expect(failure.error.description == expected)
        #expect(failure.error.kind == input.kind)
        #expect(!failure.error.description.contains("\n"))
        for secret in input.hidden {
            #expect(!failure.error.description.contains(secret))
            #expect(!failure.error.problem.contains(secret))
        }
    }

    @Test func syntaxErrorsGiveTheLine() throws {
        let failure = try #require(loadError("[server]\nport = = 1\n"))
        #expect(failure.error.kind == .syntax)
        #expect(failure.error.description.hasPrefix("\(failure.path): line 2, column "))
    }

    /// The keys file is read by the roles that use it (``KisgwConfig/Seal/resolvedKeys()``): the broker's validation
    /// names the file and the key id, as loading did when every role read it.
    @Test func keysFileProblemsNameTheKeysFile() throws {
        let environment = ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret]
        func brokerError(_ keys: String) throws -> ConfigError? {
            let config = try load("[seal]\nkeys_file = \"\(keys)\"\n", environment: environment)
            do {
                try config.validate(for: .broker)
                return nil
            } catch {
                return error
            }
        }
        let keys = writeFile("k1 = \"\(base64Key(31))\"\n", name: "keys.toml")
        let failure = try #require(try brokerError(keys))
        #expect(failure.description == "\(keys): [seal.keys] k1: must be base64 of exactly 32 bytes, got 31 bytes")
        #expect(!failure.description.contains(base64Key(31)))
        let numeric = writeFile("k1 = 5\n", name: "keys.toml")
        let second = try #require(try brokerError(numeric))
        #expect(second.description == "\(numeric): [seal.keys] k1: must be a base64 string of exactly 32 bytes, got 5")
        // A key written where its id goes (`"<key>" = "k1"`): the error shows neither.
        let swapped = writeFile("\"\(base64Key(32))\" = \"k1\"\n", name: "keys.toml")
        let fourth = try #require(try brokerError(swapped))
        #expect(fourth.description == "\(swapped): [seal.keys] <44 characters, not shown: a key in place of its id?>: must be a key id of 1 to 32 lower-case letters, digits and underscores, like k1")
        #expect(!fourth.description.contains(base64Key(32)))
        let directory = temporaryDirectory()
        let third = try #require(try brokerError(directory))
        #expect(third.description.hasSuffix(": [seal] keys_file: cannot read \"\(directory)\": it is a directory"))
    }

    @Test func errorKeyAndSourceAreExposed() throws {
        let failure = try #require(loadError("[server]\nport = 0"))
        #expect(failure.error.key == "server.port")
        #expect(failure.error.source == failure.path)
        #expect(failure.error.problem == "must be an integer from 1 to 65535, got 0")
    }
}

struct RoleCase: CustomTestStringConvertible, Sendable {
    let name: String
    let toml: String
    let environment: [String: String]
    let role: KisgwConfig.Role
    /// `nil` when the role must accept the configuration.
    let message: String?

    var testDescription: String { name }
}

let roleCases: [RoleCase] = [
    RoleCase(
        name: "gateway without secret", toml: "", environment: [:], role: .gateway,
        message: "kisgw gateway: [auth.jwt] hs256_secret: is required because [auth.jwt] algorithms include HS256; set KISGW_AUTH_JWT_HS256_SECRET (32 bytes or more) or [auth.jwt] hs256_secret_file"),
    RoleCase(name: "gateway on memory with a secret", toml: "", environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret], role: .gateway, message: nil),
    RoleCase(
        name: "gateway on redis without seal key", toml: "[redis]\nurl = \"redis://localhost\"",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret], role: .gateway,
        message: "kisgw gateway: [seal] keys: has no key for [seal] current \"k1\" (no seal keys are set); set KISGW_SEAL_KEYS_K1 to the base64 of 32 random bytes, or [seal] keys_file"),
    RoleCase(
        name: "gateway whose current key is absent", toml: "[redis]\nurl = \"redis://localhost\"\n[seal]\ncurrent = \"k2\"",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_K1": base64Key(32)], role: .gateway,
        message: "kisgw gateway: [seal] keys: has no key for [seal] current \"k2\" (the seal keys are k1); set KISGW_SEAL_KEYS_K2 to the base64 of 32 random bytes, or [seal] keys_file"),
    RoleCase(
        name: "gateway on memory whose seal keys lack the current one", toml: "",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_K2": base64Key(32)], role: .gateway,
        message: "kisgw gateway: [seal] keys: has no key for [seal] current \"k1\" (the seal keys are k2); set KISGW_SEAL_KEYS_K1 to the base64 of 32 random bytes, or [seal] keys_file"),
    RoleCase(
        name: "gateway on redis, complete", toml: "[redis]\nurl = \"redis://localhost\"",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_K1": base64Key(32)], role: .gateway, message: nil),
    RoleCase(
        name: "explicit redis backend without url", toml: "[store]\nbackend = \"redis\"",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret], role: .gateway,
        message: "kisgw gateway: [redis] url: is required when [store] backend is \"redis\"; set KISGW_REDIS_URL or [redis] url"),
    RoleCase(
        name: "gateway with ES256 without keys", toml: "[auth.jwt]\nalgorithms = [\"ES256\"]", environment: [:], role: .gateway,
        message: "kisgw gateway: [auth.jwt] public_keys_file: is required because [auth.jwt] algorithms include ES256; set it to a PEM or JWKS file, or KISGW_AUTH_JWT_PUBLIC_KEYS_FILE"),
    RoleCase(
        name: "gateway with RS256 and an unreadable key file", toml: "[auth.jwt]\nalgorithms = [\"RS256\"]\npublic_keys_file = \"/nonexistent/jwks.json\"",
        environment: [:], role: .gateway,
        message: "kisgw gateway: [auth.jwt] public_keys_file: cannot read \"/nonexistent/jwks.json\", which is required because [auth.jwt] algorithms include RS256"),
    RoleCase(
        name: "broker without seal key", toml: "", environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret], role: .broker,
        message: "kisgw broker: [seal] keys: has no key for [seal] current \"k1\" (no seal keys are set); set KISGW_SEAL_KEYS_K1 to the base64 of 32 random bytes, or [seal] keys_file"),
    RoleCase(
        name: "broker without secret", toml: "", environment: ["KISGW_SEAL_KEYS_K1": base64Key(32)], role: .broker,
        message: "kisgw broker: [auth.jwt] hs256_secret: is required because [auth.jwt] algorithms include HS256; set KISGW_AUTH_JWT_HS256_SECRET (32 bytes or more) or [auth.jwt] hs256_secret_file"),
    RoleCase(
        name: "broker complete", toml: "", environment: ["KISGW_SEAL_KEYS_K1": base64Key(32), "KISGW_AUTH_JWT_HS256_SECRET": goodSecret],
        role: .broker, message: nil),
    RoleCase(
        name: "jwt without secret", toml: "[auth.jwt]\nalgorithms = [\"EdDSA\"]", environment: [:], role: .jwt,
        message: "kisgw jwt: [auth.jwt] hs256_secret: is required to sign tokens; set KISGW_AUTH_JWT_HS256_SECRET (32 bytes or more) or [auth.jwt] hs256_secret_file"),
    RoleCase(name: "jwt with secret", toml: "", environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret], role: .jwt, message: nil),
    RoleCase(
        name: "jwt with HS256 not allowed", toml: "[auth.jwt]\nalgorithms = [\"RS256\"]\npublic_keys_file = \"/nonexistent.pem\"",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret], role: .jwt,
        message: "kisgw jwt: [auth.jwt] algorithms: must include HS256 to sign tokens (kisgw jwt signs HS256); with RS256 only, the gateways of this configuration would refuse them"),
    RoleCase(name: "demo needs nothing", toml: "[store]\nbackend = \"redis\"", environment: [:], role: .demo, message: nil),
    // `[seal] keys_file` is read by the roles that use the keys only (the broker; a gateway on Redis).
    RoleCase(
        name: "jwt with a seal keys file it cannot read", toml: "",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_FILE": "/nonexistent/kisgw-seal.toml"],
        role: .jwt, message: nil),
    RoleCase(
        name: "gateway on memory with a seal keys file it cannot read", toml: "",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_FILE": "/nonexistent/kisgw-seal.toml"],
        role: .gateway, message: nil),
    RoleCase(
        name: "gateway on redis with a seal keys file it cannot read", toml: "[redis]\nurl = \"redis://localhost\"",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_FILE": "/nonexistent/kisgw-seal.toml",
                      "KISGW_SEAL_KEYS_K1": base64Key(32)],
        role: .gateway,
        message: "environment KISGW_SEAL_KEYS_FILE: cannot read \"/nonexistent/kisgw-seal.toml\": no such file"),
    RoleCase(
        name: "broker with a seal keys file it cannot read", toml: "",
        environment: ["KISGW_AUTH_JWT_HS256_SECRET": goodSecret, "KISGW_SEAL_KEYS_FILE": "/nonexistent/kisgw-seal.toml"],
        role: .broker,
        message: "environment KISGW_SEAL_KEYS_FILE: cannot read \"/nonexistent/kisgw-seal.toml\": no such file"),
]

@Suite("Roles")
struct RoleTests {
    @Test(arguments: roleCases)
    func role(_ test: RoleCase) throws {
        let config = try load(test.toml, environment: test.environment)
        do {
            try config.validate(for: test.role)
            #expect(test.message == nil, "expected: \(test.message ?? "")")
        } catch {
            #expect(error.description == test.message)
            #expect(!error.description.contains(goodSecret))
        }
    }

    @Test func defaultsSufficeForTheDemoOnly() throws {
        try KisgwConfig.defaults.validate(for: .demo)
        for role in [KisgwConfig.Role.gateway, .broker, .jwt] {
            #expect(throws: ConfigError.self) { try KisgwConfig.defaults.validate(for: role) }
        }
    }
}
