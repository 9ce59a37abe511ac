import Logging
import ServerKit
import Store
import Synchronization

/// Which failures of one kind are logged: the first, then at most one every `interval`, each saying how many of its
/// kind went unlogged since the one before. (The time is given: tested without a clock.)
struct LogThrottle: Sendable {
    let interval: Duration
    /// Kinds remembered at most: they come from outside (a store's error codes), so they are not trusted to be few.
    let maxKinds: Int
    private var kinds: [String: (loggedAt: ContinuousClock.Instant, unlogged: Int)] = [:]

    init(interval: Duration, maxKinds: Int = 256) {
        self.interval = interval
        self.maxKinds = maxKinds
    }

    /// `nil` when a failure of `kind` at `now` is not to be logged (it is counted); else how many of its kind were
    /// not logged since the last one that was.
    mutating func admit(_ kind: String, at now: ContinuousClock.Instant) -> Int? {
        if let last = kinds[kind] {
            guard now - last.loggedAt >= interval else {
                kinds[kind] = (last.loggedAt, last.unlogged + 1)
                return nil
            }
            kinds[kind] = (now, 0)
            return last.unlogged
        }
        if kinds.count >= maxKinds { kinds.removeAll(keepingCapacity: true) }
        kinds[kind] = (now, 0)
        return 0
    }
}

/// Warnings about failures that may come once per request — the shared store refusing every command, a publisher
/// sending what the gateway cannot read — without a line per request (``LogThrottle``: one a minute for each kind,
/// with the count of those left out). One for the whole gateway.
final class ThrottledLog: Sendable {
    let logger: Logger
    private let throttle: Mutex<LogThrottle>

    init(logger: Logger, interval: Duration = .seconds(60)) {
        self.logger = logger
        self.throttle = Mutex(LogThrottle(interval: interval))
    }

    /// Logs `message` as a warning unless one of `kind` was logged less than the interval ago.
    func warning(kind: String, _ message: @autoclosure () -> Logger.Message,
                 metadata: @autoclosure () -> Logger.Metadata = [:]) {
        log(.warning, kind: kind, message(), metadata: metadata())
    }

    /// Logs `message` at `level` unless one of `kind` was logged less than the interval ago.
    func log(_ level: Logger.Level, kind: String, _ message: @autoclosure () -> Logger.Message,
             metadata: @autoclosure () -> Logger.Metadata = [:]) {
        let now = ContinuousClock.now
        guard let unlogged = throttle.withLock({ $0.admit(kind, at: now) }) else { return }
        var all = metadata()
        if unlogged > 0 { all["unlogged_since_last"] = "\(unlogged)" }
        logger.log(level: level, message(), metadata: all)
    }

    /// The answer to a request the shared store failed: `503 store_unavailable` (gateway-api.md), whose detail says
    /// whether the store refused the command or could not be reached — not what it said, which goes to the log: a
    /// warning naming Redis's error (`NOPERM …`, `OOM …`, `READONLY …`), one a minute for each kind.
    ///
    /// - Parameter subject: what failed, for the detail: "the shared store", "the token store".
    func storeProblem(_ error: StoreError, subject: String) -> Problem {
        let kind = "store " + (error.refusal ?? error.code.description)
        warning(kind: kind,
                error.code == .refused ? "the shared store refused a command" : "the shared store failed",
                metadata: ["error": "\(Self.excerpt(error.description.utf8, max: 300))"])
        let detail: String
        switch error.code {
        case .refused: detail = "\(subject) refused the command"
        case .unavailable, .timeout, .shutdown: detail = "\(subject) cannot be reached"
        default: detail = "\(subject) failed"
        }
        return Problem(.storeUnavailable, detail, retryAfter: 1)
    }

    /// At most the first `max` bytes of `bytes`, as printable ASCII: other bytes (controls, quotes, backslashes and
    /// anything not ASCII) as `\xNN`, and `…` when some were left out. For what came from outside into a log line.
    static func excerpt(_ bytes: some Collection<UInt8>, max: Int) -> String {
        var out = ""
        for byte in bytes.prefix(max) {
            if byte >= 0x20, byte < 0x7F, byte != UInt8(ascii: "\""), byte != UInt8(ascii: "\\") {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = String(byte, radix: 16, uppercase: true)
                out += "\\x" + (hex.count == 1 ? "0" : "") + hex
            }
        }
        return bytes.count > max ? out + "…" : out
    }
}
