import ArgumentParser
import Logging
import Observability

/// `--log-level` and `--log-format`, shared by every verb.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "Log format: text or json.")
    var logFormat: String = "text"

    /// A `--log-level` value, in any case (as the configuration file's `[log] level` is read); `demo` reads its own.
    static func level(_ text: String) throws -> Logger.Level {
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical; got \"\(text)\"")
        }
        return level
    }

    func validate() throws {
        _ = try Self.level(logLevel)
        guard LogFormat(rawValue: logFormat.lowercased()) != nil else {
            throw ValidationError("--log-format must be text or json; got \"\(logFormat)\"")
        }
    }

    /// Bootstraps swift-log once for the process and returns the root logger.
    func bootstrap(label: String) -> Logger {
        let level = (try? Self.level(logLevel)) ?? .info
        LoggingSetup.bootstrap(level: level, format: LogFormat(rawValue: logFormat.lowercased()) ?? .text)
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}
