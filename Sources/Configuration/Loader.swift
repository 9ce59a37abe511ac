import Foundation
import Logging
import Observability
internal import TOMLKit

extension KisgwConfig {
    /// Loads the configuration: defaults, then the file, then `KISGW_*` environment variables
    /// (which win over the file), checking every value's type and range.
    ///
    /// - Parameters:
    ///   - file: The TOML file to read. When `nil`, `KISGW_CONFIG` names it if set, else
    ///     `./gateway.toml` is read if it exists, else only defaults and the environment apply.
    ///   - environment: The process environment, usually `ProcessInfo.processInfo.environment`.
    /// - Throws: ``ConfigError`` for the first problem found: unreadable or malformed file,
    ///   unknown section, key or `KISGW_*` variable, a secret written in the file, or a bad value.
    public static func load(file: String?, environment: [String: String]) throws(ConfigError) -> KisgwConfig {
        var loader = Loader(environment: environment)
        try loader.readFile(explicit: file)
        try loader.readEnvironment()
        return try loader.build()
    }

    /// The embedded defaults with `environment`'s `KISGW_*` variables, checked as ``load(file:environment:)`` checks
    /// them, and no file: neither `KISGW_CONFIG`'s nor `./gateway.toml` (`kisgw demo`, which runs on embedded
    /// defaults wherever it is started).
    public static func load(environmentOnly environment: [String: String]) throws(ConfigError) -> KisgwConfig {
        var loader = Loader(environment: environment)
        try loader.readEnvironment()
        return try loader.build()
    }

    /// Section → keys that may appear in the file, in the documented order.
    static let fileKeys: [(section: String, keys: [String])] = [
        ("server", ["host", "port", "request_timeout_ms", "max_header_bytes", "shutdown_grace_s"]),
        ("cors", ["allow_origins", "allow_credentials", "max_age_s"]),
        (
            "auth.jwt",
            ["algorithms", "hs256_secret_file", "public_keys_file", "issuer", "audience", "leeway_s"]
        ),
        ("store", ["backend"]),
        ("redis", ["url", "password_file", "prefix", "pool_size", "timeout_ms"]),
        ("seal", ["current", "keys_file"]),
        ("kis", ["live_url", "sandbox_url", "live_rate_per_s", "sandbox_rate_per_s"]),
        ("upstream", ["timeout_ms", "max_queue_ms", "retries"]),
        ("cache", ["l1_entries", "live_ttl_s", "settled_ttl_s", "stale_while_revalidate_s", "stale_if_error_s"]),
        ("limits", ["max_range_days"]),
        (
            "broker",
            [
                "url", "host", "port", "database", "database_password_file", "refresh_interval_s", "refresh_ahead_s",
                "reuse_window_s", "reconcile_interval_s", "ui", "ui_gateway_url",
            ]
        ),
        ("log", ["level", "format"]),
    ]

    /// Keys that only the environment (or a `…_file` key) may set.
    static let environmentOnlyKeys: [(section: String, key: String)] = [("auth.jwt", "hs256_secret")]

    /// `KISGW_<SECTION>_<KEY>`: upper case, dots and dashes as underscores.
    public static func environmentName(section: String, key: String) -> String {
        let raw = "KISGW_\(section)_\(key)"
        return String(raw.uppercased().map { $0 == "." || $0 == "-" ? "_" : $0 })
    }

    /// Prefix of the per-key-id seal key variables: `KISGW_SEAL_KEYS_K1` sets key `k1`.
    public static let sealKeyEnvironmentPrefix = "KISGW_SEAL_KEYS_"
}

/// A TOML value copied out of TOMLKit (whose types are not `Sendable`).
indirect enum Raw {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case array([Raw])
    case table([(String, Raw)])
    case other(String)

    init(_ value: any TOMLValueConvertible) {
        switch value.type {
        case .string: self = .string(value.string ?? "")
        case .int: self = .int(value.int ?? 0)
        case .double: self = .double(value.double ?? 0)
        case .bool: self = .bool(value.bool ?? false)
        case .array: self = .array(value.array.map { array in array.map { Raw($0) } } ?? [])
        case .table: self = .table(value.table.map { Raw.entries(of: $0) } ?? [])
        case let other: self = .other(other.description)
        }
    }

    static func entries(of table: TOMLTable) -> [(String, Raw)] {
        table.keys.compactMap { key in table[key].map { (key, Raw($0)) } }
    }

    /// How a value is shown after "got": `-1`, `"abc"`, `true`, `an array`.
    var shown: String {
        switch self {
        case .string(let s): Loader.quoted(s)
        case .int(let i): String(i)
        case .double(let d): String(d)
        case .bool(let b): String(b)
        case .array: "an array"
        case .table: "a table"
        case .other(let type): "a \(type)"
        }
    }
}

struct Loader {
    enum Found {
        case file(Raw)
        case environment(name: String, value: String)
    }

    let environment: [String: String]
    var filePath: String? = nil
    var fileValues: [String: [String: Raw]] = [:]
    var environmentValues: [String: [String: (name: String, value: String)]] = [:]
    var sealKeysFromEnvironment: [(id: String, name: String, value: String)] = []

    init(environment: [String: String]) {
        self.environment = environment
    }

    static func quoted(_ text: String) -> String {
        var shown = text.count > 200 ? String(text.prefix(197)) + "…" : text
        shown = shown.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
        return "\"\(shown)\""
    }

    // MARK: - the file

    mutating func readFile(explicit: String?) throws(ConfigError) {
        var path = explicit
        if path == nil, let named = environment["KISGW_CONFIG"], !named.isEmpty { path = named }
        if path == nil, FileManager.default.fileExists(atPath: "gateway.toml") { path = "gateway.toml" }
        guard let path else { return }
        filePath = path
        let table = try Loader.parseTOML(try Loader.readText(path, source: path, key: nil), path: path)
        try collect(Raw.entries(of: table), path: path)
    }

    /// `text`, the file at `path`, as a TOML table; a syntax error names the file, line and column. The error of a
    /// file of `secrets` does not quote the parser's other errors, which may quote the text.
    static func parseTOML(_ text: String, path: String, secrets: Bool = false) throws(ConfigError) -> TOMLTable {
        do {
            return try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(
                .syntax, source: path, key: nil,
                problem: "line \(error.source.begin.line), column \(error.source.begin.column): \(error.description)")
        } catch {
            throw ConfigError(.syntax, source: path, key: nil, problem: secrets ? "not valid TOML" : "not valid TOML: \(error)")
        }
    }

    /// `text` without one line ending at its end ("\n", or "\r\n"); nil when a line ending is left in it. How a
    /// secret is read from a file or a variable: one line, whatever wrote it.
    static func oneLine(_ text: String) -> String? {
        var text = text
        if let last = text.last, last.isNewline { text.removeLast() }  // "\r\n" is one Character
        return text.contains(where: \.isNewline) ? nil : text
    }

    static func readText(_ path: String, source: String, key: String?) throws(ConfigError) -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigError(.unreadableFile, source: source, key: key, problem: "cannot read \(quoted(path)): no such file")
        }
        guard !isDirectory.boolValue else {
            throw ConfigError(.unreadableFile, source: source, key: key, problem: "cannot read \(quoted(path)): it is a directory")
        }
        // A pipe or a device (`--config <(…)`, /dev/stdin) is read as a stream; `contents(atPath:)` reads regular files.
        guard let data = FileManager.default.contents(atPath: path)
            ?? FileHandle(forReadingAtPath: path).flatMap({ try? $0.readToEnd() ?? Data() })
        else {
            let why = FileManager.default.isReadableFile(atPath: path) ? "it could not be read" : "permission denied"
            throw ConfigError(.unreadableFile, source: source, key: key, problem: "cannot read \(quoted(path)): \(why)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(.unreadableFile, source: source, key: key, problem: "cannot read \(quoted(path)): not UTF-8 text")
        }
        // The TOML parser stops at a NUL byte, and what follows it was ignored without a word.
        if let nul = data.firstIndex(of: 0) {
            let line = data[data.startIndex..<nul].reduce(1) { $1 == 0x0A ? $0 + 1 : $0 }
            throw ConfigError(.unreadableFile, source: source, key: key,
                              problem: "cannot read \(quoted(path)): line \(line) holds a NUL byte, which a text file does not")
        }
        return text
    }

    private mutating func collect(_ entries: [(String, Raw)], path: String) throws(ConfigError) {
        let sections = KisgwConfig.fileKeys.map(\.section)
        let topLevel = ["server", "cors", "auth", "store", "redis", "seal", "kis", "upstream", "cache", "limits", "broker", "log"]
        for (name, value) in entries {
            guard topLevel.contains(name) else {
                if case .table = value {
                    let hint = Validation.suggestion(for: name, among: topLevel).map { "; did you mean [\($0)]?" } ?? ""
                    throw ConfigError(.unknownSection, source: path, key: nil, problem: "unknown section [\(name)]\(hint)")
                }
                let owner = KisgwConfig.fileKeys.first { $0.keys.contains(name) }?.section
                let hint = owner.map { "; did you mean to put it under [\($0)]?" } ?? ""
                throw ConfigError(
                    .unknownKey, source: path, key: nil,
                    problem: "\(name): keys must be inside a section, not at the top level\(hint)")
            }
            guard case .table(let content) = value else {
                throw ConfigError(.invalidValue, source: path, key: name, problem: "must be a table, got \(value.shown)")
            }
            if name == "auth" {
                for (sub, subValue) in content {
                    guard sub == "jwt" else {
                        if case .table = subValue {
                            throw ConfigError(
                                .unknownSection, source: path, key: nil,
                                problem: "unknown section [auth.\(sub)]; the auth section is [auth.jwt]")
                        }
                        throw ConfigError(
                            .unknownKey, source: path, key: "auth.\(sub)",
                            problem: "unknown key; [auth] keys go in [auth.jwt]")
                    }
                    guard case .table(let jwt) = subValue else {
                        throw ConfigError(.invalidValue, source: path, key: "auth.jwt", problem: "must be a table, got \(subValue.shown)")
                    }
                    try collectSection("auth.jwt", jwt, path: path)
                }
            } else {
                assert(sections.contains(name))
                try collectSection(name, content, path: path)
            }
        }
    }

    private mutating func collectSection(_ section: String, _ entries: [(String, Raw)], path: String) throws(ConfigError) {
        let known = KisgwConfig.fileKeys.first { $0.section == section }!.keys
        for (key, value) in entries {
            if section == "auth.jwt", key == "hs256_secret" {
                throw ConfigError(
                    .secretInFile, source: path, key: "auth.jwt.hs256_secret",
                    problem: "secrets may not be written in the file; set KISGW_AUTH_JWT_HS256_SECRET or hs256_secret_file")
            }
            // URLs that may carry a password (config.md: a database password only through the environment).
            if (section, key) == ("broker", "database") || (section, key) == ("redis", "url"),
                case .string(let url) = value, Validation.carriesPassword(url)
            {
                throw ConfigError(
                    .secretInFile, source: path, key: "\(section).\(key)",
                    problem: "secrets may not be written in the file: this URL carries a password; set "
                        + "\(KisgwConfig.environmentName(section: section, key: key)) to it instead"
                        + (section == "broker" ? ", or give the password in [broker] database_password_file"
                            : ", or give the password in [redis] password_file"))
            }
            if section == "seal", key == "keys" {
                var variable = "KISGW_SEAL_KEYS_<KID>"
                if case .table(let kids) = value, let first = kids.first?.0 {
                    variable = KisgwConfig.sealKeyEnvironmentPrefix + first.uppercased()
                }
                throw ConfigError(
                    .secretInFile, source: path, key: "seal.keys",
                    problem: "secrets may not be written in the file; set \(variable) (one variable per key id) or [seal] keys_file")
            }
            guard known.contains(key) else {
                if case .table = value {
                    throw ConfigError(.unknownSection, source: path, key: nil, problem: "unknown section [\(section).\(key)]")
                }
                let hint = Validation.suggestion(for: key, among: known).map { "; did you mean \"\($0)\"?" } ?? ""
                throw ConfigError(.unknownKey, source: path, key: "\(section).\(key)", problem: "unknown key\(hint)")
            }
            fileValues[section, default: [:]][key] = value
        }
    }

    // MARK: - the environment

    mutating func readEnvironment() throws(ConfigError) {
        var names: [String: (section: String, key: String)] = [:]
        for (section, keys) in KisgwConfig.fileKeys {
            for key in keys { names[KisgwConfig.environmentName(section: section, key: key)] = (section, key) }
        }
        for (section, key) in KisgwConfig.environmentOnlyKeys {
            names[KisgwConfig.environmentName(section: section, key: key)] = (section, key)
        }
        for (name, value) in environment.sorted(by: { $0.key < $1.key }) where name.hasPrefix("KISGW_") {
            if Self.notConfiguration(name) { continue }
            if let (section, key) = names[name] {
                environmentValues[section, default: [:]][key] = (name, value)
                continue
            }
            if name.hasPrefix(KisgwConfig.sealKeyEnvironmentPrefix) {
                let id = name.dropFirst(KisgwConfig.sealKeyEnvironmentPrefix.count).lowercased()
                if let problem = Validation.keyIDProblem(id) {
                    throw ConfigError(.invalidValue, source: "environment \(name)", key: "seal.keys", problem: problem)
                }
                sealKeysFromEnvironment.append((id, name, value))
                continue
            }
            var candidates = Array(names.keys)
            candidates.append("KISGW_SEAL_KEYS_K1")
            let hint = Validation.suggestion(for: name, among: candidates).map { "; did you mean \($0)?" } ?? ""
            throw ConfigError(
                .unknownEnvironmentVariable, source: "environment \(name)", key: nil,
                problem: "names no configuration key\(hint) (KISGW_TEST_*, KISGW_BENCH_* and KISGW_DEMO_* are ignored)")
        }
    }

    /// `KISGW_*` variables that are not configuration keys but kisgw's own tools' settings: the tests'
    /// (`KISGW_TEST_*`, `KISGW_SKIP_BROWSER_TESTS`), the benchmark's (`KISGW_BENCH_*`), `kisgw demo`'s
    /// (`KISGW_DEMO_*`) and the configuration file's path (`KISGW_CONFIG`). Left exported, they must not stop
    /// another command from starting.
    static func notConfiguration(_ name: String) -> Bool {
        name.hasPrefix("KISGW_TEST_") || name.hasPrefix("KISGW_BENCH_") || name.hasPrefix("KISGW_DEMO_")
            || name == "KISGW_SKIP_BROWSER_TESTS" || name == "KISGW_CONFIG"
    }

    // MARK: - typed lookups

    func lookup(_ section: String, _ key: String) -> Found? {
        if let env = environmentValues[section]?[key] { return .environment(name: env.name, value: env.value) }
        if let raw = fileValues[section]?[key] { return .file(raw) }
        return nil
    }

    func invalid(_ found: Found, _ section: String, _ key: String, _ problem: String) -> ConfigError {
        switch found {
        case .file:
            ConfigError(.invalidValue, source: filePath ?? "configuration file", key: "\(section).\(key)", problem: problem)
        case .environment(let name, _):
            ConfigError(.invalidValue, source: "environment \(name)", key: "\(section).\(key)", problem: problem)
        }
    }

    func int(_ section: String, _ key: String, _ fallback: Int, _ range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard let found = lookup(section, key) else { return fallback }
        let problem = "must be an integer from \(range.lowerBound) to \(range.upperBound)"
        let value: Int
        switch found {
        case .file(.int(let i)):
            value = i
        case .file(let raw):
            throw invalid(found, section, key, "\(problem), got \(raw.shown)")
        case .environment(_, let text):
            guard let i = Int(text.trimmingCharacters(in: .whitespaces)) else {
                throw invalid(found, section, key, "\(problem), got \(Loader.quoted(text))")
            }
            value = i
        }
        guard range.contains(value) else { throw invalid(found, section, key, "\(problem), got \(value)") }
        return value
    }

    /// The slowest rate a `*_rate_per_s` key takes: one call in 100 s. (Any slower is a mistake, and the rate
    /// limiter's interval is bounded: `RateLimit.intervalMicroseconds`.)
    static let slowestRate = 0.01

    /// A KIS access token's life (kis-api.md: 24 h), which the broker's scheduler timings must fit in.
    static let kisTokenLifeS = 86_400

    func rate(_ section: String, _ key: String, _ fallback: Double) throws(ConfigError) -> Double {
        guard let found = lookup(section, key) else { return fallback }
        let problem = "must be a number from 0.01 to 10000 (requests per second)"
        let value: Double
        switch found {
        case .file(.int(let i)): value = Double(i)
        case .file(.double(let d)): value = d
        case .file(let raw): throw invalid(found, section, key, "\(problem), got \(raw.shown)")
        case .environment(_, let text):
            guard let d = Double(text.trimmingCharacters(in: .whitespaces)) else {
                throw invalid(found, section, key, "\(problem), got \(Loader.quoted(text))")
            }
            value = d
        }
        guard value.isFinite, value >= Self.slowestRate, value <= 10_000 else {
            throw invalid(found, section, key, "\(problem), got \(value)")
        }
        return value
    }

    func bool(_ section: String, _ key: String, _ fallback: Bool) throws(ConfigError) -> Bool {
        guard let found = lookup(section, key) else { return fallback }
        switch found {
        case .file(.bool(let b)): return b
        case .file(let raw): throw invalid(found, section, key, "must be true or false, got \(raw.shown)")
        case .environment(_, let text):
            switch text.trimmingCharacters(in: .whitespaces).lowercased() {
            case "true", "1": return true
            case "false", "0": return false
            default: throw invalid(found, section, key, "must be true, false, 1 or 0, got \(Loader.quoted(text))")
            }
        }
    }

    /// A string, or `nil` when unset. An empty string counts as unset when `emptyIsUnset`.
    func string(_ section: String, _ key: String, emptyIsUnset: Bool = false) throws(ConfigError) -> (String, Found)? {
        guard let found = lookup(section, key) else { return nil }
        switch found {
        case .file(.string(let s)):
            return emptyIsUnset && s.isEmpty ? nil : (s, found)
        case .file(let raw):
            throw invalid(found, section, key, "must be a string, got \(raw.shown)")
        case .environment(_, let text):
            return emptyIsUnset && text.isEmpty ? nil : (text, found)
        }
    }

    func stringArray(_ section: String, _ key: String) throws(ConfigError) -> ([String], Found)? {
        guard let found = lookup(section, key) else { return nil }
        let problem = "must be an array of strings"
        switch found {
        case .file(.array(let items)):
            var strings: [String] = []
            for item in items {
                guard case .string(let s) = item else {
                    throw invalid(found, section, key, "\(problem), got an array holding \(item.shown)")
                }
                strings.append(s)
            }
            return (strings, found)
        case .file(let raw):
            throw invalid(found, section, key, "\(problem), got \(raw.shown)")
        case .environment(_, let text):
            let trimmed = text.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("[") {
                guard let table = try? TOMLTable(string: "v = \(trimmed)"), let array = table["v"]?.array,
                    case .array(let items) = Raw(array),
                    case let strings = items.compactMap({ item -> String? in
                        if case .string(let s) = item { return s } else { return nil }
                    }), strings.count == items.count
                else {
                    throw invalid(
                        found, section, key,
                        "must be a comma-separated list or a TOML array of strings, got \(Loader.quoted(text))")
                }
                return (strings, found)
            }
            let strings = trimmed.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty }
            return (strings, found)
        }
    }

    // MARK: - building

    func build() throws(ConfigError) -> KisgwConfig {
        let redis = try buildRedis()
        let store: KisgwConfig.Store
        if let (text, found) = try string("store", "backend") {
            guard let backend = KisgwConfig.Store.Backend(rawValue: text.lowercased()) else {
                throw invalid(found, "store", "backend", "must be \"redis\" or \"memory\", got \(Loader.quoted(text))")
            }
            store = .init(backend: backend)
        } else {
            store = .init(backend: redis.url == nil ? .memory : .redis)
        }
        let server = try buildServer()
        return KisgwConfig(
            server: server,
            cors: try buildCORS(),
            auth: KisgwConfig.Auth(jwt: try buildJWT()),
            store: store,
            redis: redis,
            seal: try buildSeal(),
            kis: try buildKIS(),
            upstream: KisgwConfig.Upstream(
                timeoutMs: try int("upstream", "timeout_ms", 5000, 1...600_000),
                maxQueueMs: try int("upstream", "max_queue_ms", 2000, 0...600_000),
                retries: try int("upstream", "retries", 2, 0...10)
            ),
            cache: KisgwConfig.Cache(
                l1Entries: try int("cache", "l1_entries", 10_000, 0...10_000_000),
                liveTTLS: try int("cache", "live_ttl_s", 5, 0...86_400),
                settledTTLS: try int("cache", "settled_ttl_s", 86_400, 0...31_536_000),
                staleWhileRevalidateS: try int("cache", "stale_while_revalidate_s", 30, 0...86_400),
                staleIfErrorS: try int("cache", "stale_if_error_s", 3600, 0...604_800)
            ),
            limits: KisgwConfig.Limits(maxRangeDays: try int("limits", "max_range_days", 3660, 1...36_600)),
            broker: try buildBroker(server: server),
            log: try buildLog()
        )
    }

    private func host(_ section: String, _ fallback: String) throws(ConfigError) -> String {
        guard let (text, found) = try string(section, "host") else { return fallback }
        if let problem = Validation.hostProblem(text) {
            throw invalid(found, section, "host", "\(problem), got \(Loader.quoted(text))")
        }
        // `[::1]` as written in URLs is bound as `::1`: the resolver the servers bind through takes no brackets.
        if text.hasPrefix("["), text.hasSuffix("]") { return String(text.dropFirst().dropLast()) }
        return text
    }

    private func httpURL(_ section: String, _ key: String, _ fallback: String) throws(ConfigError) -> String {
        guard let (text, found) = try string(section, key) else { return fallback }
        switch Validation.httpURL(text) {
        case .success(let url): return url
        case .failure(let failure):
            throw invalid(found, section, key, "\(failure.problem), got \(Loader.quoted(Validation.maskingPassword(text)))")
        }
    }

    private func buildServer() throws(ConfigError) -> KisgwConfig.Server {
        KisgwConfig.Server(
            host: try host("server", "127.0.0.1"),
            port: try int("server", "port", 8000, 1...65535),
            requestTimeoutMs: try int("server", "request_timeout_ms", 10_000, 1...3_600_000),
            maxHeaderBytes: try int("server", "max_header_bytes", 16_384, 1024...1_048_576),
            shutdownGraceS: try int("server", "shutdown_grace_s", 10, 0...3600)
        )
    }

    private func buildCORS() throws(ConfigError) -> KisgwConfig.CORS {
        var origins = KisgwConfig.CORS().allowOrigins
        if let (entries, found) = try stringArray("cors", "allow_origins") {
            origins = []
            var seen: Set<OriginPattern> = []  // not `origins.contains`: thousands of origins took seconds
            for entry in entries {
                switch OriginPattern.parse(entry) {
                case .success(let pattern): if seen.insert(pattern).inserted { origins.append(pattern) }
                case .failure(let failure):
                    throw invalid(found, "cors", "allow_origins", "\(failure.problem), got \(Loader.quoted(entry))")
                }
            }
        }
        return KisgwConfig.CORS(
            allowOrigins: origins,
            allowCredentials: try bool("cors", "allow_credentials", true),
            maxAgeS: try int("cors", "max_age_s", 600, 0...86_400)
        )
    }

    private func buildJWT() throws(ConfigError) -> KisgwConfig.JWT {
        var algorithms: [KisgwConfig.JWTAlgorithm] = [.hs256]
        let names = KisgwConfig.JWTAlgorithm.allCases.map(\.rawValue)
        let allowed = names.joined(separator: ", ")
        if let (entries, found) = try stringArray("auth.jwt", "algorithms") {
            guard !entries.isEmpty else {
                throw invalid(found, "auth.jwt", "algorithms", "must list at least one of \(allowed)")
            }
            algorithms = []
            for entry in entries {
                if entry.lowercased() == "none" {
                    throw invalid(found, "auth.jwt", "algorithms", "\"none\" is never allowed; use \(allowed)")
                }
                guard let algorithm = KisgwConfig.JWTAlgorithm(rawValue: entry) else {
                    let hint = Validation.suggestion(for: entry, among: names).map { "; did you mean \"\($0)\"?" } ?? ""
                    throw invalid(
                        found, "auth.jwt", "algorithms",
                        "must list only \(allowed), got \(Loader.quoted(entry))\(hint)")
                }
                if !algorithms.contains(algorithm) { algorithms.append(algorithm) }
            }
        }

        var secret: Secret? = nil
        var secretFile: String? = nil
        let secretFromEnvironment = environmentValues["auth.jwt"]?["hs256_secret"]
        let fileFound = try string("auth.jwt", "hs256_secret_file", emptyIsUnset: true)
        if let env = secretFromEnvironment, !env.value.isEmpty {
            if let (_, found) = fileFound, case .environment(let fileVariable, _) = found {
                throw ConfigError(
                    .invalidValue, source: "environment \(fileVariable)", key: "auth.jwt.hs256_secret_file",
                    problem: "set either \(env.name) or \(fileVariable), not both")
            }
            // The same bytes as a file holding the value (`kubectl create secret --from-file` keeps its line ending
            // in a variable, drops nothing in a mounted file): one trailing line ending is not part of the secret.
            guard let value = Loader.oneLine(env.value) else {
                throw ConfigError(
                    .invalidValue, source: "environment \(env.name)", key: "auth.jwt.hs256_secret",
                    problem: "must be one line (a line ending at its end is dropped)")
            }
            guard value.utf8.count >= 32 else {
                throw ConfigError(
                    .invalidValue, source: "environment \(env.name)", key: "auth.jwt.hs256_secret",
                    problem: "must be at least 32 bytes (256 bits), got \(value.utf8.count) bytes")
            }
            secret = Secret(value)
        } else if let (path, found) = fileFound {
            let text = try Loader.readText(path, source: source(of: found), key: "auth.jwt.hs256_secret_file")
            guard let value = Loader.oneLine(text) else {
                throw invalid(found, "auth.jwt", "hs256_secret_file",
                              "\(Loader.quoted(path)) must hold the secret alone, on one line")
            }
            guard value.utf8.count >= 32 else {
                throw invalid(
                    found, "auth.jwt", "hs256_secret_file",
                    "the secret in \(Loader.quoted(path)) must be at least 32 bytes (256 bits), got \(value.utf8.count) bytes")
            }
            secret = Secret(value)
            secretFile = path
        }

        return KisgwConfig.JWT(
            algorithms: algorithms,
            hs256Secret: secret,
            hs256SecretFile: secretFile,
            publicKeysFile: try string("auth.jwt", "public_keys_file", emptyIsUnset: true)?.0,
            issuer: try string("auth.jwt", "issuer", emptyIsUnset: true)?.0,
            audience: try string("auth.jwt", "audience", emptyIsUnset: true)?.0,
            leewayS: try int("auth.jwt", "leeway_s", 30, 0...600)
        )
    }

    private func buildRedis() throws(ConfigError) -> KisgwConfig.Redis {
        var url: RedisURL? = nil
        var urlFound: Found? = nil
        if let (text, found) = try string("redis", "url", emptyIsUnset: true) {
            urlFound = found
            switch Validation.redisURL(text) {
            case .success(let parsed): url = parsed
            case .failure(let failure):
                throw invalid(found, "redis", "url", "\(failure.problem), got \(Loader.quoted(Validation.maskingPassword(text, hidingMalformed: true)))")
            }
        }
        var prefix = "kisgw:"
        if let (text, found) = try string("redis", "prefix") {
            guard (1...64).contains(text.utf8.count), text.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
                throw invalid(
                    found, "redis", "prefix",
                    "must be 1 to 64 printable ASCII characters without spaces, got \(Loader.quoted(text))")
            }
            prefix = text
        }
        // Only the path here: the roles that open the store read the file (resolvedURL()).
        var passwordFile: (path: String, source: String)? = nil
        if let (path, found) = try string("redis", "password_file", emptyIsUnset: true) {
            guard let url else {
                throw invalid(found, "redis", "password_file", "applies to a [redis] url, and none is set")
            }
            guard url.password == nil else {
                throw invalid(found, "redis", "password_file", "the Redis URL carries a password too; give it in one place")
            }
            passwordFile = (path, source(of: found))
        }
        // `redis://name@host` names an ACL user, whom Redis knows only with a password; a password written there
        // instead (as some clients read it) would never be sent. Neither is guessed, and the value is not repeated.
        if let url, let urlFound, url.username != nil, url.password == nil, passwordFile == nil {
            throw invalid(
                urlFound, "redis", "url",
                "names a user without a password (redis://user@host); give the user's password in "
                    + "KISGW_REDIS_URL (redis://user:password@host) or in [redis] password_file; a password alone is "
                    + "written redis://:password@host")
        }
        return KisgwConfig.Redis(
            url: url,
            prefix: prefix,
            poolSize: try int("redis", "pool_size", 8, 1...1024),
            timeoutMs: try int("redis", "timeout_ms", 250, 1...60_000),
            passwordFile: passwordFile?.path,
            passwordFileSource: passwordFile?.source
        )
    }

    private func buildSeal() throws(ConfigError) -> KisgwConfig.Seal {
        var current = "k1"
        if let (text, found) = try string("seal", "current") {
            if let problem = Validation.keyIDProblem(text) {
                throw invalid(found, "seal", "current", "\(problem), got \(Loader.quoted(Validation.shownKeyID(text)))")
            }
            current = text
        }
        var keys: [String: SealKey] = [:]
        // Only the path here: the roles that use the keys read the file (resolvedKeys()).
        let keysFile = try string("seal", "keys_file", emptyIsUnset: true)
        for (id, name, value) in sealKeysFromEnvironment where !value.isEmpty {
            switch Validation.sealKey(id: id, base64: value.trimmingCharacters(in: .whitespacesAndNewlines)) {
            case .success(let key): keys[id] = key
            case .failure(let failure):
                throw ConfigError(.invalidValue, source: "environment \(name)", key: "seal.keys.\(id)", problem: failure.problem)
            }
        }
        return KisgwConfig.Seal(current: current, keys: keys, keysFile: keysFile?.0,
                                keysFileSource: keysFile.map { source(of: $0.1) })
    }

    /// The keys in `[seal] keys_file` at `path` (set in `source`), by key id.
    static func sealKeys(file path: String, source: String) throws(ConfigError) -> [String: SealKey] {
        let table = try parseTOML(try Loader.readText(path, source: source, key: "seal.keys_file"), path: path,
                                  secrets: true)
        var keys: [String: SealKey] = [:]
        for (id, value) in Raw.entries(of: table) {
            if let problem = Validation.keyIDProblem(id) {
                throw ConfigError(.invalidValue, source: path, key: "seal.keys.\(Validation.shownKeyID(id))",
                                  problem: problem)
            }
            guard case .string(let base64) = value else {
                throw ConfigError(
                    .invalidValue, source: path, key: "seal.keys.\(id)",
                    problem: "must be a base64 string of exactly 32 bytes, got \(value.shownWithoutStrings)")
            }
            switch Validation.sealKey(id: id, base64: base64) {
            case .success(let key): keys[id] = key
            case .failure(let failure):
                throw ConfigError(.invalidValue, source: path, key: "seal.keys.\(id)", problem: failure.problem)
            }
        }
        return keys
    }

    private func buildKIS() throws(ConfigError) -> KisgwConfig.KIS {
        let defaults = KisgwConfig.KIS()
        return KisgwConfig.KIS(
            liveURL: try httpURL("kis", "live_url", defaults.liveURL),
            sandboxURL: try httpURL("kis", "sandbox_url", defaults.sandboxURL),
            liveRatePerS: try rate("kis", "live_rate_per_s", defaults.liveRatePerS),
            sandboxRatePerS: try rate("kis", "sandbox_rate_per_s", defaults.sandboxRatePerS)
        )
    }

    private func buildBroker(server: KisgwConfig.Server) throws(ConfigError) -> KisgwConfig.Broker {
        let defaults = KisgwConfig.Broker()
        var database = defaults.database
        if let (text, found) = try string("broker", "database") {
            switch Validation.database(text) {
            case .success(let parsed): database = parsed
            case .failure(let failure):
                throw invalid(found, "broker", "database", "\(failure.problem), got \(Loader.quoted(Validation.maskingPassword(text, hidingMalformed: true)))")
            }
        }
        // Only the path here: the broker reads the file (resolvedDatabase()), the gateway never does.
        var passwordFile: (path: String, source: String)? = nil
        if let (path, found) = try string("broker", "database_password_file", emptyIsUnset: true) {
            guard case .postgres(let url, _) = database else {
                throw invalid(found, "broker", "database_password_file",
                              "applies to a postgres:// database only; [broker] database is \(database)")
            }
            guard !Validation.carriesPassword(url.value), !Validation.hasEmptyPassword(url.value) else {
                throw invalid(found, "broker", "database_password_file",
                              "the database URL carries a password too; give it in one place")
            }
            passwordFile = (path, source(of: found))
        }
        let refreshIntervalS = try int("broker", "refresh_interval_s", 60, 1...86_400)
        let reuseWindowS = try int("broker", "reuse_window_s", 21_600, 0...86_400)
        // The scheduler refreshes a token with less than two intervals of life left (so that none expires between
        // two passes); earlier than the reuse window's end KIS hands back the same token, and the token stays due:
        // every pass would call tokenP again, and KIS notifies the account holder of each issuance.
        if 2 * refreshIntervalS + reuseWindowS > Self.kisTokenLifeS {
            let key = lookup("broker", "refresh_interval_s") != nil ? "refresh_interval_s" : "reuse_window_s"
            if let found = lookup("broker", key) {
                throw invalid(
                    found, "broker", key,
                    "twice refresh_interval_s (\(refreshIntervalS)) plus reuse_window_s (\(reuseWindowS)) must be at most "
                        + "\(Self.kisTokenLifeS), a KIS token's life: a token is refreshed once less than two intervals "
                        + "of it are left, and inside the reuse window KIS only hands the same token back, so every pass "
                        + "would ask KIS again")
            }
        }
        return KisgwConfig.Broker(
            url: try httpURL("broker", "url", defaults.url),
            host: try host("broker", defaults.host),
            port: try int("broker", "port", defaults.port, 1...65535),
            database: database,
            databasePasswordFile: passwordFile?.path,
            databasePasswordFileSource: passwordFile?.source,
            refreshIntervalS: refreshIntervalS,
            refreshAheadS: try int("broker", "refresh_ahead_s", 3600, 0...86_399),
            reuseWindowS: reuseWindowS,
            reconcileIntervalS: try int("broker", "reconcile_interval_s", 60, 1...86_400),
            ui: try bool("broker", "ui", true),
            uiGatewayURL: try httpURL(
                "broker", "ui_gateway_url", KisgwConfig.Broker.browserURL(host: server.host, port: server.port))
        )
    }

    /// Where a value was found, as errors name it: the configuration file's path or `environment NAME`.
    private func source(of found: Found) -> String {
        switch found {
        case .file: filePath ?? "configuration file"
        case .environment(let name, _): "environment \(name)"
        }
    }

    private func buildLog() throws(ConfigError) -> KisgwConfig.Log {
        var level = Logger.Level.info
        if let (text, found) = try string("log", "level") {
            let names = Logger.Level.allCases.map(\.rawValue)
            guard let parsed = Logger.Level(rawValue: text.lowercased()) else {
                let hint = Validation.suggestion(for: text, among: names).map { "; did you mean \"\($0)\"?" } ?? ""
                throw invalid(
                    found, "log", "level",
                    "must be one of \(names.joined(separator: ", ")), got \(Loader.quoted(text))\(hint)")
            }
            level = parsed
        }
        var format = LogFormat.text
        if let (text, found) = try string("log", "format") {
            guard let parsed = LogFormat(rawValue: text.lowercased()) else {
                throw invalid(found, "log", "format", "must be \"text\" or \"json\", got \(Loader.quoted(text))")
            }
            format = parsed
        }
        return KisgwConfig.Log(level: level, format: format)
    }
}

extension Raw {
    /// Like ``shown`` but never echoes a string (for values that may be secrets).
    var shownWithoutStrings: String {
        if case .string = self { return "a string" }
        return shown
    }
}
