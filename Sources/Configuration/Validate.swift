import Foundation

extension KisgwConfig {
    /// Checks that the configuration has what `role` needs to start:
    ///
    /// - `gateway`: the HS256 secret when `algorithms` include HS256, a readable
    ///   `public_keys_file` when they include RS256, ES256 or EdDSA; with the Redis backend,
    ///   a Redis URL and the `current` seal key (reading `[seal] keys_file`, whose keys open
    ///   the broker's token records). On the memory store no broker publishes to the process:
    ///   `keys_file` is not read, and keys set in the environment must include the current one.
    /// - `broker`: the same JWT requirements, the `current` seal key (reading `keys_file`), with
    ///   the Redis backend a Redis URL, and a readable `database_password_file` when one is set.
    /// - `demo`: nothing (it makes its own).
    /// - `jwt`: the HS256 secret, and HS256 among `algorithms`; no seal key, and `keys_file` is not read.
    ///
    /// - Throws: ``ConfigError`` (kind ``ConfigError/Kind/missing``) naming the key and how to set it.
    public func validate(for role: Role) throws(ConfigError) {
        let source = "kisgw \(role.rawValue)"
        func missing(_ key: String, _ problem: String) -> ConfigError {
            ConfigError(.missing, source: source, key: key, problem: problem)
        }
        func requireSecret(_ reason: String) throws(ConfigError) {
            guard auth.jwt.hs256Secret != nil else {
                throw missing(
                    "auth.jwt.hs256_secret",
                    "\(reason); set KISGW_AUTH_JWT_HS256_SECRET (32 bytes or more) or [auth.jwt] hs256_secret_file")
            }
        }
        func requireJWT() throws(ConfigError) {
            if auth.jwt.algorithms.contains(.hs256) {
                try requireSecret("is required because [auth.jwt] algorithms include HS256")
            }
            let asymmetric = auth.jwt.algorithms.filter(\.isAsymmetric).map(\.rawValue)
            if !asymmetric.isEmpty {
                let because = "because [auth.jwt] algorithms include \(asymmetric.joined(separator: ", "))"
                guard let file = auth.jwt.publicKeysFile else {
                    throw missing(
                        "auth.jwt.public_keys_file",
                        "is required \(because); set it to a PEM or JWKS file, or KISGW_AUTH_JWT_PUBLIC_KEYS_FILE")
                }
                guard FileManager.default.isReadableFile(atPath: file) else {
                    throw ConfigError(
                        .unreadableFile, source: source, key: "auth.jwt.public_keys_file",
                        problem: "cannot read \(Loader.quoted(file)), which is required \(because)")
                }
            }
        }
        func requireSealKey() throws(ConfigError) {
            let keys = try seal.resolvedKeys()  // a keys file it cannot read, or a bad key in it, stops it here
            guard keys[seal.current] != nil else {
                let variable = KisgwConfig.sealKeyEnvironmentPrefix + seal.current.uppercased()
                let have = keys.isEmpty ? "no seal keys are set" : "the seal keys are \(keys.keys.sorted().joined(separator: ", "))"
                throw missing(
                    "seal.keys",
                    "has no key for [seal] current \(Loader.quoted(seal.current)) (\(have)); set \(variable) to the base64 of 32 random bytes, or [seal] keys_file")
            }
        }
        func requireRedis() throws(ConfigError) {
            guard store.backend == .redis else { return }
            guard redis.url != nil else {
                throw missing("redis.url", "is required when [store] backend is \"redis\"; set KISGW_REDIS_URL or [redis] url")
            }
            _ = try redis.resolvedURL()  // a password file it cannot read stops it here, naming the key
        }

        switch role {
        case .gateway:
            try requireJWT()
            try requireRedis()
            // The memory store makes its own key when none is set in the environment, and reads no keys file;
            // keys that are set must include the current one.
            if store.backend == .redis || !seal.keys.isEmpty { try requireSealKey() }
        case .broker:
            try requireJWT()
            try requireSealKey()
            try requireRedis()
            _ = try broker.resolvedDatabase()  // a password file it cannot read stops it here, naming the key
        case .demo:
            return
        case .jwt:
            try requireSecret("is required to sign tokens")
            // It signs HS256 tokens: with HS256 not allowed, every gateway of this configuration would refuse them.
            guard auth.jwt.algorithms.contains(.hs256) else {
                let allowed = auth.jwt.algorithms.map(\.rawValue).joined(separator: ", ")
                throw ConfigError(
                    .invalidValue, source: source, key: "auth.jwt.algorithms",
                    problem: "must include HS256 to sign tokens (kisgw jwt signs HS256); with \(allowed) only, the "
                        + "gateways of this configuration would refuse them")
            }
        }
    }
}
