public import Logging

internal import Synchronization

/// Sets up swift-log for the `kisgw` executable. Libraries never call this; they take a `Logger`.
///
/// ```swift
/// LoggingSetup.bootstrap(level: config.log.level, format: config.log.format)
/// ```
public enum LoggingSetup {
    private static let bootstrapped = Mutex(false)

    /// Installs redacting text or JSON handlers that write to standard error.
    ///
    /// Only the first call in a process takes effect (swift-log allows one bootstrap);
    /// it returns `false` for later calls.
    @discardableResult
    public static func bootstrap(level: Logger.Level, format: LogFormat) -> Bool {
        let first = bootstrapped.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return false }
        LoggingSystem.bootstrap(
            { label, provider in
                makeHandler(label: label, level: level, format: format, output: .standardError,
                    metadataProvider: provider)
            },
            metadataProvider: nil
        )
        return true
    }

    /// A redacting handler of the given format writing to `output`, the same the bootstrap
    /// installs. Tests use it with a ``LogBuffer``.
    public static func makeHandler(
        label: String,
        level: Logger.Level = .info,
        format: LogFormat,
        output: LogOutput,
        metadataProvider: Logger.MetadataProvider? = nil
    ) -> RedactingLogHandler {
        let upstream: any LogHandler =
            switch format {
            case .text: TextLogHandler(label: label, level: level, output: output)
            case .json: JSONLogHandler(label: label, level: level, output: output)
            }
        return RedactingLogHandler(wrapping: upstream, metadataProvider: metadataProvider)
    }
}
