import ArgumentParser
import Foundation
import Gateway
import KisgwConfiguration
import Logging

/// `kisgw gateway`: the edge gateway (gateway-api.md).
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Run the edge gateway: authenticated, cached, coalesced and rate-limited KIS daily charts.",
        discussion: """
            Reads [server], [cors], [auth.jwt], [store], [redis], [seal] (on the Redis store, whose token records it \
            opens), [kis], [upstream], [cache], [limits], [broker] and [log].
            """
    )

    @OptionGroup var configOptions: ConfigOptions

    func run() async throws {
        let config = try configOptions.load(for: .gateway)
        try await configOptions.checkJWTKeys(config)
        // On the memory store no broker can publish a token record to this process, so there is nothing to open:
        // without `[seal]` keys in the environment (validation asks for them only with Redis) a throwaway key stands
        // in, and `[seal] keys_file` is not read.
        let memory = config.store.backend == .memory
        let runtime = try Runtime(config: config, role: .gateway, label: "kisgw.gateway", ephemeralSeal: memory)
        let deps = runtime.gatewayDependencies
        let logger = runtime.logger
        if memory {
            logger.warning(
                "[store] backend is memory: no broker can publish KIS tokens to this process's own store, so every chart request answers kis_token_invalid; set [redis] url (KISGW_REDIS_URL) to share one with the broker")
        }
        let bound = KisgwConfig.Broker.urlHost(config.server.host)
        try await StartupFailure.reported(listening: "[server] \(bound):\(config.server.port)") {
            try await runtime.run {
                [try await buildGateway(config, dependencies: deps, logger: logger) { port in
                    let line = "kisgw gateway listening on http://\(bound):\(port) "
                        + "(store: \(config.store.backend.rawValue))\n"
                    FileHandle.standardOutput.write(Data(line.utf8))
                }]
            }
        }
    }
}
