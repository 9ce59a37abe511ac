/// An error from the Redis client.
///
/// Errors are compared by ``code``; new codes may be added without breaking
/// callers. A reply of the server's error type (`-ERR …`) is a
/// ``RedisError`` whose code is ``Code/server``, and ``serverMessage`` holds
/// the text. Messages never contain passwords.
///
/// ```swift
/// do { _ = try await redis.send(["INCR", "not-a-number"]) }
/// catch let error as RedisError where error.code == .server { … }
/// ```
public struct RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, in categories a caller can act on.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate enum Base: Sendable, Hashable {
            case server
            case timeout
            case unavailable
            case connectionClosed
            case protocolError
            case cancelled
            case shutdown
            case invalidURL
            case unexpectedReply
            case tooManyPending
        }

        fileprivate let base: Base

        /// The server answered with an error reply (e.g. `WRONGTYPE`, `NOSCRIPT`).
        public static let server = Code(base: .server)
        /// No reply arrived within the command's timeout. The command may still have run.
        public static let timeout = Code(base: .timeout)
        /// The server cannot be reached right now; the client is reconnecting in the background.
        public static let unavailable = Code(base: .unavailable)
        /// The connection closed while the command was in flight. The command may have run.
        public static let connectionClosed = Code(base: .connectionClosed)
        /// The server sent bytes that are not RESP.
        public static let protocolError = Code(base: .protocolError)
        /// The calling task was cancelled before the reply arrived.
        public static let cancelled = Code(base: .cancelled)
        /// The client was shut down.
        public static let shutdown = Code(base: .shutdown)
        /// A `redis://` or `rediss://` URL could not be parsed.
        public static let invalidURL = Code(base: .invalidURL)
        /// The reply had a type the command does not produce.
        public static let unexpectedReply = Code(base: .unexpectedReply)
        /// A connection holds too many abandoned (timed-out) commands and was recycled.
        public static let tooManyPending = Code(base: .tooManyPending)

        public var description: String {
            switch self.base {
            case .server: "server"
            case .timeout: "timeout"
            case .unavailable: "unavailable"
            case .connectionClosed: "connectionClosed"
            case .protocolError: "protocolError"
            case .cancelled: "cancelled"
            case .shutdown: "shutdown"
            case .invalidURL: "invalidURL"
            case .unexpectedReply: "unexpectedReply"
            case .tooManyPending: "tooManyPending"
            }
        }
    }

    /// The category of the error.
    public let code: Code
    /// A human-readable explanation (never contains credentials).
    public let message: String

    package init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// For ``Code/server`` errors, the server's error text, e.g. `NOSCRIPT No matching script.`.
    public var serverMessage: String? { self.code == .server ? self.message : nil }

    /// The first word of a server error (`ERR`, `WRONGTYPE`, `NOSCRIPT`, …), if this is one.
    public var serverErrorPrefix: Substring? {
        guard self.code == .server else { return nil }
        return self.message.split(separator: " ", maxSplits: 1).first
    }

    public var description: String {
        "RedisError(\(self.code)): \(self.message)"
    }

    package static func server(_ message: String) -> RedisError { RedisError(.server, message) }
}
