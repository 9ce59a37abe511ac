import ArgumentParser
import Broker
import Foundation
import Hummingbird
import KisgwConfiguration
import Logging
import Web

/// `kisgw broker`: the token broker (broker-api.md).
struct BrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract: "Run the token broker: encrypted KIS accounts, KIS tokens obtained, kept alive and published to the store.",
        discussion: """
            Reads [broker], [server], [cors], [auth.jwt], [store], [redis], [seal], [kis], [upstream] and [log]. The \
            database ([broker] database, sqlite:PATH or postgres://…) is created and migrated on start. The web UI is \
            served at / ([broker] ui); its chart calls go to [broker] ui_gateway_url, by default [server]'s address.
            """
    )

    @OptionGroup var configOptions: ConfigOptions

    func run() async throws {
        let config = try configOptions.load(for: .broker)
        try await configOptions.checkJWTKeys(config)
        let runtime = try Runtime(config: config, role: .broker, label: "kisgw.broker")
        let logger = runtime.logger
        if config.store.backend == .memory {
            logger.warning(
                "[store] backend is memory: the KIS tokens this broker obtains are published to its own process only, where no gateway can read them, and each broker copy would run its own scheduler; set [redis] url (KISGW_REDIS_URL) to share one store with the gateways")
        }
        var webRoutes: (@Sendable (Router<BasicRequestContext>) -> Void)? = nil
        if config.broker.ui {
            let gatewayURL = config.broker.uiGatewayURL, maxRangeDays = config.limits.maxRangeDays
            webRoutes = { router in
                addWebRoutes(to: router, gatewayURL: gatewayURL, demo: false, maxRangeDays: maxRangeDays)
            }
            if let origin = Self.unlistedPageOrigin(config) {
                logger.warning(
                    "the web UI's chart calls go to the gateway cross-origin, and [cors] allow_origins does not list \(origin): add it (or the origin browsers reach the broker at) for the gateway, or set [broker] ui = false")
            }
        }
        let deps = runtime.brokerDependencies(extraRoutes: webRoutes)
        let bound = KisgwConfig.Broker.urlHost(config.broker.host)
        try await StartupFailure.reported(listening: "[broker] \(bound):\(config.broker.port)") {
            try await runtime.run {
                [try await buildBroker(config, dependencies: deps, logger: logger) { port in
                    var line = "kisgw broker listening on http://\(bound):\(port) "
                        + "(database: \(config.broker.database), store: \(config.store.backend.rawValue))\n"
                    if config.broker.ui {
                        line += "web UI: \(KisgwConfig.Broker.browserURL(host: config.broker.host, port: port))/ "
                            + "(charts from \(config.broker.uiGatewayURL))\n"
                    }
                    FileHandle.standardOutput.write(Data(line.utf8))
                }]
            }
        }
    }

    /// The web UI's origin as a browser on this machine sees it, when `[cors] allow_origins` does not allow it — for a
    /// gateway on this machine only (`ui_gateway_url` on loopback): behind a proxy the page's public origin is not
    /// known here.
    static func unlistedPageOrigin(_ config: KisgwConfig) -> String? {
        guard KisgwConfig.isLoopback(config.broker.uiGatewayURL) else { return nil }
        let origin = KisgwConfig.Broker.browserURL(host: config.broker.host, port: config.broker.port)
        return config.cors.allows(origin: origin) ? nil : origin
    }
}
