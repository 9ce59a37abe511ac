import Logging
import Observability

extension KisgwConfig {
    /// The effective configuration as TOML, for `--print-config` style output and start-up logs.
    ///
    /// Secrets are never written: the HS256 secret and seal keys appear as comments saying
    /// whether they are set (with a short fingerprint of the HS256 secret), and a Redis URL or
    /// database URL that carries a password is written as a comment with the password
    /// replaced by `[REDACTED]`. Everything else loads back with ``load(file:environment:)``
    /// to an equal configuration (secrets still come from the environment or their files).
    public var effectiveTOML: String {
        var out = ""
        func section(_ name: String) { out += (out.isEmpty ? "" : "\n") + "[\(name)]\n" }
        func line(_ key: String, _ value: String) { out += "\(key) = \(value)\n" }
        func comment(_ text: String) { out += "# \(text)\n" }
        func string(_ text: String) -> String {
            var quoted = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\\": quoted += "\\\\"
                case "\"": quoted += "\\\""
                case "\n": quoted += "\\n"
                case "\t": quoted += "\\t"
                case "\r": quoted += "\\r"
                case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                    let hex = String(scalar.value, radix: 16, uppercase: true)
                    quoted += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                default: quoted.unicodeScalars.append(scalar)
                }
            }
            return quoted + "\""
        }
        func strings(_ list: [String]) -> String { "[" + list.map(string).joined(separator: ", ") + "]" }
        func number(_ value: Double) -> String { value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value) }

        section("server")
        line("host", string(server.host))
        line("port", String(server.port))
        line("request_timeout_ms", String(server.requestTimeoutMs))
        line("max_header_bytes", String(server.maxHeaderBytes))
        line("shutdown_grace_s", String(server.shutdownGraceS))

        section("cors")
        line("allow_origins", strings(cors.allowOrigins.map(\.description)))
        line("allow_credentials", String(cors.allowCredentials))
        line("max_age_s", String(cors.maxAgeS))

        section("auth.jwt")
        line("algorithms", strings(auth.jwt.algorithms.map(\.rawValue)))
        if let secret = auth.jwt.hs256Secret {
            comment("hs256_secret: set (\(Redact.token(secret.value)))")
        } else {
            comment("hs256_secret: not set")
        }
        if let file = auth.jwt.hs256SecretFile { line("hs256_secret_file", string(file)) }
        if let file = auth.jwt.publicKeysFile { line("public_keys_file", string(file)) }
        if let issuer = auth.jwt.issuer { line("issuer", string(issuer)) }
        if let audience = auth.jwt.audience { line("audience", string(audience)) }
        line("leeway_s", String(auth.jwt.leewayS))

        section("store")
        line("backend", string(store.backend.rawValue))

        section("redis")
        if let url = redis.url {
            if url.password != nil {
                comment("url = \(string(url.description)) (has a password; set it with KISGW_REDIS_URL)")
            } else {
                line("url", string(url.description))
            }
        }
        if let path = redis.passwordFile { line("password_file", string(path)) }
        line("prefix", string(redis.prefix))
        line("pool_size", String(redis.poolSize))
        line("timeout_ms", String(redis.timeoutMs))

        section("seal")
        line("current", string(seal.current))
        let direct = seal.keys.keys.sorted().joined(separator: ", ")
        switch (seal.keys.isEmpty, seal.keysFile == nil) {
        case (true, true): comment("keys: none set")
        case (false, true): comment("keys: \(direct)")
        case (true, false): comment("keys: those in keys_file (read by the roles that use them)")
        case (false, false): comment("keys: \(direct), and those in keys_file (read by the roles that use them)")
        }
        if let file = seal.keysFile { line("keys_file", string(file)) }

        section("kis")
        line("live_url", string(kis.liveURL))
        line("sandbox_url", string(kis.sandboxURL))
        line("live_rate_per_s", number(kis.liveRatePerS))
        line("sandbox_rate_per_s", number(kis.sandboxRatePerS))

        section("upstream")
        line("timeout_ms", String(upstream.timeoutMs))
        line("max_queue_ms", String(upstream.maxQueueMs))
        line("retries", String(upstream.retries))

        section("cache")
        line("l1_entries", String(cache.l1Entries))
        line("live_ttl_s", String(cache.liveTTLS))
        line("settled_ttl_s", String(cache.settledTTLS))
        line("stale_while_revalidate_s", String(cache.staleWhileRevalidateS))
        line("stale_if_error_s", String(cache.staleIfErrorS))

        section("limits")
        line("max_range_days", String(limits.maxRangeDays))

        section("broker")
        line("url", string(broker.url))
        line("host", string(broker.host))
        line("port", String(broker.port))
        switch broker.database {
        case .sqlite(let path):
            line("database", string("sqlite:\(path)"))
        case .postgres(let url, _):
            let masked = Validation.maskingPassword(url.value)
            if masked == url.value {
                line("database", string(url.value))
            } else {
                comment("database = \(string(masked)) (has a password; set it with KISGW_BROKER_DATABASE)")
            }
        }
        if let path = broker.databasePasswordFile { line("database_password_file", string(path)) }
        line("refresh_interval_s", String(broker.refreshIntervalS))
        line("refresh_ahead_s", String(broker.refreshAheadS))
        line("reuse_window_s", String(broker.reuseWindowS))
        line("reconcile_interval_s", String(broker.reconcileIntervalS))
        line("ui", broker.ui ? "true" : "false")
        line("ui_gateway_url", string(broker.uiGatewayURL))

        section("log")
        line("level", string(log.level.rawValue))
        line("format", string(log.format.rawValue))
        return out
    }
}
