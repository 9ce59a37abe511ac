/// Why configuration could not be loaded or is not enough for a role.
///
/// The ``description`` is one line naming where the value came from, the key and the problem:
///
/// ```text
/// gateway.toml: [server] port: must be an integer from 1 to 65535, got -1
/// environment KISGW_SERVER_PORT: must be an integer from 1 to 65535, got "abc"
/// gateway.toml: [auth.jwt] hs256_secret: secrets may not be written in the file; set KISGW_AUTH_JWT_HS256_SECRET or hs256_secret_file
/// kisgw gateway: [redis] url: is required when [store] backend is "redis"; set KISGW_REDIS_URL or [redis] url
/// ```
///
/// Secret values never appear in it.
public struct ConfigError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of problem, for callers that branch on it. New kinds may be added.
    public struct Kind: Sendable, Hashable, CustomStringConvertible {
        fileprivate enum Code: String, Sendable, Hashable {
            case unreadableFile = "unreadable file"
            case syntax = "syntax error"
            case unknownSection = "unknown section"
            case unknownKey = "unknown key"
            case unknownEnvironmentVariable = "unknown environment variable"
            case invalidValue = "invalid value"
            case secretInFile = "secret in file"
            case missing = "missing value"
        }

        fileprivate let code: Code

        /// A configuration file or a file a key points to could not be read.
        public static let unreadableFile = Kind(code: .unreadableFile)
        /// The file is not valid TOML.
        public static let syntax = Kind(code: .syntax)
        /// The file has a section the configuration does not know.
        public static let unknownSection = Kind(code: .unknownSection)
        /// The file has a key its section does not know.
        public static let unknownKey = Kind(code: .unknownKey)
        /// A `KISGW_*` environment variable names no key.
        public static let unknownEnvironmentVariable = Kind(code: .unknownEnvironmentVariable)
        /// A value has the wrong type or is out of range or malformed.
        public static let invalidValue = Kind(code: .invalidValue)
        /// A secret was written in the file instead of the environment or a file path.
        public static let secretInFile = Kind(code: .secretInFile)
        /// A value the role needs is not set.
        public static let missing = Kind(code: .missing)

        public var description: String { code.rawValue }
    }

    /// What went wrong.
    public let kind: Kind
    /// Where the value came from: a file path, `environment KISGW_…`, or `kisgw <role>`.
    public let source: String
    /// The key as `section.key` (`server.port`, `auth.jwt.hs256_secret`), when there is one.
    public let key: String?
    /// The problem with the value, without the source and key.
    public let problem: String

    init(_ kind: Kind, source: String, key: String?, problem: String) {
        self.kind = kind
        self.source = source
        self.key = key
        self.problem = problem
    }

    /// One line: `source: [section] key: problem`.
    public var description: String {
        guard let key, !source.hasPrefix("environment ") else { return "\(source): \(problem)" }
        return "\(source): \(ConfigError.display(key)): \(problem)"
    }

    /// `server.port` → `[server] port`, `auth.jwt.leeway_s` → `[auth.jwt] leeway_s`,
    /// `seal.keys.k1` → `[seal.keys] k1`, `server` → `[server]`.
    static func display(_ key: String) -> String {
        let sections = ["auth.jwt", "seal.keys"]
        for section in sections where key.hasPrefix(section + ".") {
            return "[\(section)] \(key.dropFirst(section.count + 1))"
        }
        guard let dot = key.firstIndex(of: ".") else { return "[\(key)]" }
        return "[\(key[..<dot])] \(key[key.index(after: dot)...])"
    }
}
