import ArgumentParser
import KIS

/// `kisgw`: one binary for every role (../shared/spec/config.md).
@main
struct Kisgw: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kisgw",
        abstract: "A caching edge gateway for the Korea Investment & Securities (KIS) Open API.",
        discussion: """
            One binary for every role; `kisgw <verb> --help` says more of each:
              kisgw gateway  the edge gateway: cached, coalesced, rate-limited charts
              kisgw broker   the token broker (KIS accounts and tokens) and the web UI
              kisgw sim      a simulator of the KIS Open API, for tests and benchmarks
              kisgw demo     everything in one process on embedded defaults
              kisgw jwt      prints a JWT signed with the configured secret
            Configuration: gateway.toml (--config, else KISGW_CONFIG, else the one
            in the working directory; see the README), overridden by
            KISGW_<SECTION>_<KEY> variables. The demo reads no file.
            """,
        version: KisgwVersion.current,
        subcommands: [DemoCommand.self, GatewayCommand.self, BrokerCommand.self, SimCommand.self, JWTCommand.self]
    )
}
