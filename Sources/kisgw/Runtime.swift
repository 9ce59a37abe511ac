import Broker
import Foundation
import Gateway
import Hummingbird
import KIS
import KisgwConfiguration
import Logging
import Observability
import Prometheus
import NIOSSL
import Redis
import ServiceLifecycle
import Store
import Tokens
import UnixSignals

/// What every long-running verb shares: logging and metrics bootstrapped from `[log]`, the shared store chosen by
/// `[store]`, the seal keys, and a service group that stops gracefully on SIGTERM/SIGINT.
struct Runtime {
    let config: KisgwConfig
    let logger: Logger
    let registry: PrometheusCollectorRegistry
    let store: any SharedStore
    let redis: RedisClient?
    let keyring: SealKeyring
    /// The clients for KIS calls, one per event loop, shut down after the servers: the gateway's, and the broker's
    /// (token calls take a while at KIS, and a scheduler's refresh pass makes several at once).
    let kisHTTP: KISHTTPClients
    let brokerKISHTTP: KISHTTPClients

    /// Connections per host of the broker's clients: its scheduler makes `BrokerScheduler.defaultRefreshWidth` issuances
    /// at once, and connects and refreshes come besides.
    static let brokerConnectionsPerHost = 32

    init(config: KisgwConfig, role: KisgwConfig.Role, label: String, ephemeralSeal: Bool = false) throws {
        self.config = config
        ProcessHeap.keepFreedMemory()
        LoggingSetup.bootstrap(level: config.log.level, format: config.log.format)
        var logger = Logger(label: label)
        logger.logLevel = config.log.level
        self.logger = logger
        for (key, _) in config.urlsInClear(for: role) {
            let what = key == "[broker] url" ? "users' JWTs and KIS tokens" : "app secrets and KIS tokens"
            logger.warning("\(key) is plain http to another machine: \(what) cross the network in clear")
        }
        self.registry = MetricsSetup.bootstrap()
        switch config.store.backend {
        case .memory:
            self.store = MemoryStore(keyPrefix: config.redis.prefix)
            self.redis = nil
        case .redis:
            guard let url = try config.redis.resolvedURL() else {
                throw ValidationErrorLine("[redis] url is required with backend redis")
            }
            var rc = RedisConfiguration(host: url.host, port: url.port)
            rc.username = url.username
            rc.password = url.password?.value
            rc.database = url.database
            rc.poolSize = config.redis.poolSize
            rc.commandTimeout = config.redis.timeout
            if url.tls { rc.tls = .makeClientConfiguration() }
            let client = RedisClient(configuration: rc, logger: logger)
            self.redis = client
            self.store = RedisStore(client: client, keyPrefix: config.redis.prefix)
        }
        if ephemeralSeal && config.seal.keys.isEmpty {
            self.keyring = SealKeyring.ephemeral()
        } else {
            let keys = try config.seal.resolvedKeys()  // reads [seal] keys_file, as validation did
            self.keyring = try SealKeyring(current: config.seal.current, keys: keys.mapValues(\.bytes))
        }
        self.kisHTTP = KISHTTPClients()
        self.brokerKISHTTP = KISHTTPClients(connectionsPerHost: Self.brokerConnectionsPerHost)
    }

    /// What a gateway takes from the runtime.
    var gatewayDependencies: GatewayDependencies {
        GatewayDependencies(store: store, keyring: keyring, http: kisHTTP, metricsRegistry: registry,
                            readiness: readiness)
    }

    /// What a broker takes from the runtime.
    func brokerDependencies(demoMode: Bool = false,
                            extraRoutes: (@Sendable (Router<BasicRequestContext>) -> Void)? = nil) -> BrokerDependencies {
        BrokerDependencies(store: store, keyring: keyring, http: brokerKISHTTP, metricsRegistry: registry,
                           demoMode: demoMode, extraRoutes: extraRoutes)
    }

    /// nil when the store answers; else why not.
    var readiness: @Sendable () async -> String? {
        let store = self.store
        return {
            do {
                _ = try await store.get("readyz")
                return nil
            } catch {
                return "the shared store does not answer"
            }
        }
    }

    /// Builds the services, then runs them (and the Redis and KIS clients) until SIGTERM/SIGINT, then shuts down
    /// within `shutdown_grace_s`. When building fails, the KIS client is shut down before the error is thrown.
    func run(_ build: () async throws -> [any Service]) async throws {
        let services: [any Service]
        do {
            services = try await build()
        } catch {
            try? await kisHTTP.shutdown()
            try? await brokerKISHTTP.shutdown()
            throw error
        }
        try await run(services)
    }

    private func run(_ services: [any Service]) async throws {
        var all: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let redis { all.append(.init(service: RedisService(client: redis))) }
        all.append(.init(service: HTTPClientService(clients: [kisHTTP, brokerKISHTTP])))
        all += services.map { .init(service: $0) }
        var configuration = ServiceGroupConfiguration(
            services: all, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        configuration.maximumGracefulShutdownDuration = config.server.shutdownGrace
        try await ServiceGroup(configuration: configuration).run()
    }
}

/// The Redis client as a service: it runs until the group shuts down, then closes its connections.
struct RedisService: Service {
    let client: RedisClient
    func run() async throws {
        // Stopped last (it is first in the group), once the servers have drained: cancelling `run()` shuts the
        // client down and returns at once.
        await cancelWhenGracefulShutdown {
            await client.run()
        }
    }
}

/// The KIS clients as a service: once the servers after it in the group have drained, they close their connections.
struct HTTPClientService: Service {
    let clients: [KISHTTPClients]
    func run() async throws {
        try? await gracefulShutdown()
        // Every one, whatever another's shutdown threw.
        var failure: (any Error)?
        for c in clients {
            do { try await c.shutdown() } catch { failure = failure ?? error }
        }
        if let failure { throw failure }
    }
}

struct ValidationErrorLine: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
