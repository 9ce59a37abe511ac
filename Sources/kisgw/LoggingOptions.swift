import ArgumentParser
import Logging
import Observability

/// `--log-level` and `--log-format`, shared by every verb.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "Log format: text or json.")
    var logFormat: String = "text"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel.lowercased()) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical; got \"\(logLevel)\"")
        }
        guard LogFormat(rawValue: logFormat.lowercased()) != nil else {
            throw ValidationError("--log-format must be text or json; got \"\(logFormat)\"")
        }
    }

    /// Bootstraps swift-log once for the process and returns the root logger.
    func bootstrap(label: String) -> Logger {
        // In any case, as the configuration file's [log] level is read.
        let level = Logger.Level(rawValue: logLevel.lowercased()) ?? .info
        LoggingSetup.bootstrap(level: level, format: LogFormat(rawValue: logFormat.lowercased()) ?? .text)
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}
