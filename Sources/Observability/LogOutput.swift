#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

internal import Synchronization

/// Where formatted log lines go: standard error for the executable, a ``LogBuffer`` in tests.
public struct LogOutput: Sendable {
    private let writeLine: @Sendable (String) -> Void

    /// An output that calls `write` with each complete line, its newline included.
    public init(_ write: @escaping @Sendable (String) -> Void) {
        self.writeLine = write
    }

    /// Writes one complete line.
    public func write(_ line: String) {
        writeLine(line)
    }

    /// Standard error, one `write(2)` per line under a lock so lines never interleave.
    public static let standardError = LogOutput { line in
        stderrLock.withLock { _ in
            var line = line
            line.withUTF8 { buffer in
                guard var base = buffer.baseAddress else { return }
                var remaining = buffer.count
                while remaining > 0 {
                    let written = systemWrite(2, base, remaining)
                    if written < 0 {
                        if errno == EINTR { continue }
                        return
                    }
                    remaining -= written
                    base += written
                }
            }
        }
    }
}

private let stderrLock = Mutex(())

#if canImport(Darwin)
private let systemWrite = Darwin.write
#elseif canImport(Glibc)
private let systemWrite = Glibc.write
#elseif canImport(Musl)
private let systemWrite = Musl.write
#endif

/// An in-memory log destination, for tests that check what was logged.
///
/// ```swift
/// let buffer = LogBuffer()
/// let logger = Logger(label: "t") { LoggingSetup.makeHandler(label: $0, format: .json, output: buffer.output) }
/// logger.info("hello")
/// #expect(buffer.lines.count == 1)
/// ```
public final class LogBuffer: Sendable {
    private let storage = Mutex<[String]>([])

    public init() {}

    /// The lines written so far, each with its newline.
    public var lines: [String] { storage.withLock { $0 } }

    /// Everything written so far as one string.
    public var text: String { lines.joined() }

    /// Forgets what was written.
    public func clear() { storage.withLock { $0.removeAll() } }

    /// An output that appends to this buffer.
    public var output: LogOutput {
        LogOutput { [self] line in self.storage.withLock { $0.append(line) } }
    }
}
