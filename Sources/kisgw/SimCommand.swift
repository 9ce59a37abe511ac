import ArgumentParser
import Foundation
import KIS
import Logging
import ServiceLifecycle
import UnixSignals
import Simulator

/// `kisgw sim`: the KIS Open API simulator (../shared/spec/sim.md).
struct SimCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sim",
        abstract: "Run a simulator of the KIS Open API (tokens, daily charts, errors, rate limits).",
        discussion: """
            Answers on KIS's own paths with KIS's headers, fields and error bodies, so a client written for KIS \
            works against it with only the base URL changed. Control routes for tests live under /__sim/.
            """
    )

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0 = any free port; the chosen one is printed).") var port = 29443
    @Option(help: "KIS domain to imitate: live (18 calls/s per app key) or sandbox (1 call/s).")
    var environment = "sandbox"
    @Option(name: .customLong("token-ttl-s"), help: "Life of a new access token, in seconds.") var tokenTTL = 86400
    @Option(name: .customLong("reuse-window-s"), help: "A token request within this many seconds of the last issuance gets the same token.")
    var reuseWindow = 21600
    @Option(name: .customLong("issue-interval-s"), help: "A second token request within this many seconds gets EGW00133.")
    var issueInterval = 60
    @Option(name: .customLong("rate-per-s"), help: "Quotation calls per second per app key (default: by environment).")
    var ratePerSecond: Int?
    @Option(name: .customLong("latency-ms"), help: "Latency added to every quotation call KIS would answer (not to refused ones: bad headers or token, EGW00201).") var latencyMs = 0
    @Option(name: .customLong("token-latency-ms"), help: "Latency added to every token call (tokenP, revokeP).")
    var tokenLatencyMs = 0
    @Option(help: "JSON file of accepted credentials: [{\"appKey\": …, \"appSecret\": …}]. Default: any non-empty pair.")
    var credentials: String?
    @Option(name: .customLong("tls-cert"), help: "PEM certificate chain, to serve HTTPS.") var tlsCert: String?
    @Option(name: .customLong("tls-key"), help: "PEM private key, to serve HTTPS.") var tlsKey: String?
    @Option(name: .customLong("reused-expires-in"), help: "expires_in on a reused token: remaining or full.")
    var reusedExpiresIn = "remaining"
    @Flag(name: .customLong("tr-cont-paging"),
          help: "Daily charts say tr_cont M while more rows follow and continue on tr_cont N (KIS marks them as paged by date only: without this, D).")
    var trContPaging = false
    @OptionGroup var logging: LoggingOptions

    func makeConfiguration() throws -> SimulatorConfiguration {
        guard reusedExpiresIn == "remaining" || reusedExpiresIn == "full" else {
            throw ValidationError("--reused-expires-in must be remaining or full; got \"\(reusedExpiresIn)\"")
        }
        guard let env = KISEnvironment(rawValue: environment.uppercased()) else {
            throw ValidationError("--environment must be live or sandbox; got \"\(environment)\"")
        }
        let config = SimulatorConfiguration(
            host: host, port: port, environment: env, tokenTTL: tokenTTL, reuseWindow: reuseWindow,
            issueInterval: issueInterval, ratePerSecond: ratePerSecond, latencyMs: latencyMs,
            credentials: try credentials.map { path in
                do { return try SimulatorConfiguration.loadCredentials(path: path) } catch let e as SimulatorError {
                    throw ValidationError(e.description)
                }
            },
            tlsCertificatePath: tlsCert, tlsKeyPath: tlsKey, reuseReportsRemaining: reusedExpiresIn == "remaining",
            trContPaging: trContPaging, tokenLatencyMs: tokenLatencyMs)
        do { try config.validate() } catch let e as SimulatorError { throw ValidationError(e.description) }
        return config
    }

    func validate() throws { _ = try makeConfiguration() }

    func run() async throws {
        let config = try makeConfiguration()
        let logger = logging.bootstrap(label: "kisgw.sim")
        let scheme = config.tlsCertificatePath == nil ? "http" : "https"
        let rate = config.effectiveRatePerSecond
        let app = try await buildSimulator(config, logger: logger) { port in
            let line = "kisgw sim listening on \(scheme)://\(config.host):\(port) (\(config.environment.rawValue.lowercased()), \(rate) call\(rate == 1 ? "" : "s")/s per app key)\n"
            FileHandle.standardOutput.write(Data(line.utf8))
        }
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: app)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
