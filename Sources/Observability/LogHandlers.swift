public import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How log lines are written.
public enum LogFormat: String, Sendable, CaseIterable {
    /// `2026-04-01T09:00:00.123Z info kisgw.gateway : key=value [Gateway] message`
    case text
    /// One JSON object per line: `ts`, `level`, `label`, `message`, `source`, then the metadata.
    case json
}

/// A log handler that removes secrets before another handler sees the event.
///
/// It keeps the logger's metadata itself, merges handler metadata, the metadata provider's and
/// the event's, scrubs them with ``Redact/scrub(_:)-(Logger.Metadata)`` and the message with
/// ``Redact/scrub(_:)-(String)``, and passes the event on with all metadata attached.
public struct RedactingLogHandler: LogHandler {
    private var upstream: any LogHandler
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    public init(wrapping upstream: any LogHandler, metadataProvider: Logger.MetadataProvider? = nil) {
        self.upstream = upstream
        self.upstream.metadata = [:]
        self.metadataProvider = metadataProvider
    }

    public var logLevel: Logger.Level {
        get { upstream.logLevel }
        set { upstream.logLevel = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() {
            merged.merge(provided) { _, new in new }
        }
        if let own = event.metadata {
            merged.merge(own) { _, new in new }
        }
        var scrubbed = event
        scrubbed.message = Logger.Message(stringLiteral: Redact.scrub(event.message.description))
        scrubbed.metadata = merged.isEmpty ? nil : Redact.scrub(merged)
        if let error = event.error {
            scrubbed.error = ScrubbedError(description: Redact.scrub(String(describing: error)))
        }
        upstream.log(event: scrubbed)
    }
}

/// What a handler downstream of ``RedactingLogHandler`` sees in place of the original error.
private struct ScrubbedError: Error, CustomStringConvertible {
    let description: String
}

/// Writes `StreamLogHandler`-style text lines.
///
/// Wrap it in ``RedactingLogHandler`` (``LoggingSetup/makeHandler(label:level:format:output:)`` does)
/// to scrub secrets; on its own it writes what it is given.
public struct TextLogHandler: LogHandler {
    public let label: String
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let output: LogOutput

    public init(label: String, level: Logger.Level = .info, output: LogOutput = .standardError) {
        self.label = label
        self.logLevel = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let own = event.metadata { all.merge(own) { _, new in new } }
        var line = LogTime.now().iso8601
        line += " \(event.level) \(label) :"
        for (key, value) in all.sorted(by: { $0.key < $1.key }) {
            line += " \(Self.oneLine(key))=\(Self.oneLine("\(value)"))"
        }
        if let error = event.error { line += " error=\(Self.oneLine("\(error)"))" }
        line += " [\(event.source)] \(Self.oneLine(event.message.description))\n"
        output.write(line)
    }

    /// C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
    private static func breaksLines(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
    }

    /// `text` with its control characters escaped (`\n`, `\r`, `\t`, `\u{…}`): a value that comes from a request
    /// (a JWT's `sub`, a KIS message) cannot start a line of its own and pass for another record.
    static func oneLine(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: Self.breaksLines) else { return text }
        var out = ""
        out.unicodeScalars.reserveCapacity(text.unicodeScalars.count + 8)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where Self.breaksLines(scalar):
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

/// Writes one JSON object per line: `ts` (ISO-8601 UTC with milliseconds), `level`, `label`,
/// `message`, `source`, `error` when there is one, and the metadata flattened into the same
/// object (nested dictionaries as dotted keys; a key that collides with one of the fixed
/// fields is written as `meta.<key>`).
public struct JSONLogHandler: LogHandler {
    public let label: String
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let output: LogOutput

    public init(label: String, level: Logger.Level = .info, output: LogOutput = .standardError) {
        self.label = label
        self.logLevel = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    private static let reserved: Set<String> = ["ts", "level", "label", "message", "source", "error"]

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let own = event.metadata { all.merge(own) { _, new in new } }
        var line = "{\"ts\":"
        JSON.appendString(LogTime.now().iso8601, to: &line)
        line += ",\"level\":"
        JSON.appendString(event.level.rawValue, to: &line)
        line += ",\"label\":"
        JSON.appendString(label, to: &line)
        line += ",\"message\":"
        JSON.appendString(event.message.description, to: &line)
        line += ",\"source\":"
        JSON.appendString(event.source, to: &line)
        if let error = event.error {
            line += ",\"error\":"
            JSON.appendString(String(describing: error), to: &line)
        }
        var flat: [(String, Logger.MetadataValue)] = []
        Self.flatten(all, prefix: "", into: &flat)
        for (key, value) in flat.sorted(by: { $0.0 < $1.0 }) {
            line += ","
            JSON.appendString(Self.reserved.contains(key) ? "meta.\(key)" : key, to: &line)
            line += ":"
            JSON.append(value, to: &line)
        }
        line += "}\n"
        output.write(line)
    }

    private static func flatten(
        _ metadata: Logger.Metadata,
        prefix: String,
        into out: inout [(String, Logger.MetadataValue)]
    ) {
        for (key, value) in metadata {
            let name = prefix.isEmpty ? key : "\(prefix).\(key)"
            if case .dictionary(let nested) = value, !nested.isEmpty {
                flatten(nested, prefix: name, into: &out)
            } else {
                out.append((name, value))
            }
        }
    }
}

/// Minimal JSON writing for log lines: strings, and metadata values as strings or arrays.
enum JSON {
    static func appendString(_ string: String, to out: inout String) {
        out.append("\"")
        var plainStart = string.unicodeScalars.startIndex
        let scalars = string.unicodeScalars
        var index = scalars.startIndex
        while index != scalars.endIndex {
            let scalar = scalars[index]
            let escape: String?
            switch scalar {
            case "\"": escape = "\\\""
            case "\\": escape = "\\\\"
            case "\n": escape = "\\n"
            case "\r": escape = "\\r"
            case "\t": escape = "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F || scalar.value == 0x2028 || scalar.value == 0x2029:
                let hex = String(scalar.value, radix: 16)
                escape = "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: escape = nil
            }
            if let escape {
                out.unicodeScalars.append(contentsOf: scalars[plainStart..<index])
                out.append(escape)
                plainStart = scalars.index(after: index)
            }
            index = scalars.index(after: index)
        }
        out.unicodeScalars.append(contentsOf: scalars[plainStart..<scalars.endIndex])
        out.append("\"")
    }

    static func append(_ value: Logger.MetadataValue, to out: inout String) {
        switch value {
        case .string(let string): appendString(string, to: &out)
        case .stringConvertible(let convertible): appendString(convertible.description, to: &out)
        case .array(let values):
            out.append("[")
            for (i, element) in values.enumerated() {
                if i > 0 { out.append(",") }
                append(element, to: &out)
            }
            out.append("]")
        case .dictionary(let dictionary):
            out.append("{")
            for (i, (key, element)) in dictionary.sorted(by: { $0.key < $1.key }).enumerated() {
                if i > 0 { out.append(",") }
                appendString(key, to: &out)
                out.append(":")
                append(element, to: &out)
            }
            out.append("}")
        }
    }
}

/// Wall-clock time formatted as ISO-8601 UTC with milliseconds, without Foundation.
struct LogTime {
    var seconds: Int
    var milliseconds: Int

    static func now() -> LogTime {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return LogTime(seconds: Int(ts.tv_sec), milliseconds: Int(ts.tv_nsec) / 1_000_000)
    }

    var iso8601: String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
        }
        return pad(parts.tm_year + 1900, 4) + "-" + pad(parts.tm_mon + 1, 2) + "-" + pad(parts.tm_mday, 2) + "T"
            + pad(parts.tm_hour, 2) + ":" + pad(parts.tm_min, 2) + ":" + pad(parts.tm_sec, 2) + "."
            + pad(Int32(milliseconds), 3) + "Z"
    }
}
