import ArgumentParser
import Foundation
import Gateway
import KisgwConfiguration

/// `kisgw gateway`: the edge gateway (gateway-api.md).
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Run the edge gateway: authenticated, cached, coalesced and rate-limited KIS daily charts.",
        discussion: "Reads [server], [cors], [auth.jwt], [store], [redis], [seal], [kis], [upstream], [cache], [limits], [broker] and [log]."
    )

    @OptionGroup var configOptions: ConfigOptions

    func run() async throws {
        let config = try configOptions.load(for: .gateway)
        let runtime = try Runtime(config: config, label: "kisgw.gateway")
        let deps = runtime.gatewayDependencies
        let logger = runtime.logger
        try await runtime.run {
            [try await buildGateway(config, dependencies: deps, logger: logger) { port in
                let line = "kisgw gateway listening on http://\(config.server.host):\(port) "
                    + "(store: \(config.store.backend.rawValue))\n"
                FileHandle.standardOutput.write(Data(line.utf8))
            }]
        }
    }
}
