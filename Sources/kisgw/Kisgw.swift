import ArgumentParser

/// `kisgw`: one binary for every role (../shared/spec/config.md).
@main
struct Kisgw: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kisgw",
        abstract: "A caching edge gateway for the Korea Investment & Securities (KIS) Open API.",
        discussion: """
            Roles: `sim` runs a simulator of the KIS Open API for local runs, tests and benchmarks.
            Configuration: gateway.toml (see the README), overridden by KISGW_<SECTION>_<KEY> variables.
            """,
        subcommands: [DemoCommand.self, GatewayCommand.self, BrokerCommand.self, SimCommand.self, JWTCommand.self]
    )
}
