import ArgumentParser
import Broker
import Foundation
import KisgwConfiguration

/// `kisgw broker`: the token broker (broker-api.md).
struct BrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract: "Run the token broker: encrypted KIS accounts, KIS tokens obtained, kept alive and published to the store.",
        discussion: """
            Reads [broker], [cors], [auth.jwt], [store], [redis], [seal], [kis], [upstream] and [log]. The database \
            ([broker] database, sqlite:PATH or postgres://…) is created and migrated on start.
            """
    )

    @OptionGroup var configOptions: ConfigOptions

    func run() async throws {
        let config = try configOptions.load(for: .broker)
        try await configOptions.checkJWTKeys(config)
        let runtime = try Runtime(config: config, label: "kisgw.broker")
        let deps = runtime.brokerDependencies()
        try await runtime.run {
            [try await buildBroker(config, dependencies: deps, logger: runtime.logger) { port in
                let line = "kisgw broker listening on http://\(config.broker.host):\(port) "
                    + "(database: \(config.broker.database), store: \(config.store.backend.rawValue))\n"
                FileHandle.standardOutput.write(Data(line.utf8))
            }]
        }
    }
}
