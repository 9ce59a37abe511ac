import Foundation
import KIS
import Synchronization

/// Everything the simulator remembers, behind one lock. Decisions are made under the lock and return values;
/// waiting (latency, faults) and I/O happen outside it.
final class SimulatorState: Sendable {
    struct Token {
        var appKey: String
        var appSecret: String
        var issuedAt: Date
        var expiresAt: Date
        var revoked: Bool
    }

    struct Faults: Sendable, Equatable {
        enum Mode: String, Sendable, CaseIterable { case none, http500, timeout, garbage, kis_error }
        var mode: Mode = .none
        var msgCode: String = "EGW00201"
        var latencyMs: Int = 0
        var rate: Double = 1.0
    }

    /// A sliding one-second window of call times (nanoseconds on the monotonic clock).
    struct Window {
        var stamps: [Int64] = []
        var head = 0

        mutating func admit(now: Int64, limit: Int) -> Bool {
            while head < stamps.count, stamps[head] <= now - 1_000_000_000 { head += 1 }
            if head > 64, head * 2 > stamps.count {
                stamps.removeFirst(head)
                head = 0
            }
            guard stamps.count - head < limit else { return false }
            stamps.append(now)
            return true
        }
    }

    struct State {
        var tokens: [String: Token] = [:]
        /// App key → the token it was last issued, and when any token request last succeeded.
        var latestToken: [String: String] = [:]
        var lastTokenResponse: [String: Date] = [:]
        var windows: [String: Window] = [:]
        var calls: [String: Int] = ["tokenP": 0, "revokeP": 0, "domestic_daily": 0, "overseas_daily": 0]
        var errors: [String: Int] = [:]
        var issuances = 0
        var faults = Faults()
        var clockOffset: TimeInterval = 0
        var cursors: [String: Int] = [:]
    }

    let state = Mutex(State())
    private let started = ContinuousClock.now

    /// The token clock: real time plus whatever `/__sim/clock` added.
    func now() -> Date { Date().addingTimeInterval(state.withLock { $0.clockOffset }) }

    func monotonicNanos() -> Int64 {
        let d = ContinuousClock.now - started
        return d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000
    }

    func count(call: String) { state.withLock { $0.calls[call, default: 0] += 1 } }
    func count(error code: String) { state.withLock { $0.errors[code, default: 0] += 1 } }

    /// Admits a quotation call for `appKey` under the sliding-window limit, or refuses it.
    func admit(appKey: String, limit: Int) -> Bool {
        let now = monotonicNanos()
        return state.withLock { $0.windows[appKey, default: Window()].admit(now: now, limit: limit) }
    }

    var faults: Faults { state.withLock { $0.faults } }

    // MARK: tokens

    enum TokenDecision {
        case reuse(token: String, expiresAt: Date)
        case issue
        case tooSoon
    }

    /// Decides a `tokenP` request: too soon after the last one, the same token again, or a new one.
    func decideToken(appKey: String, reuseWindow: Int, issueInterval: Int, at now: Date) -> TokenDecision {
        state.withLock { s in
            if let last = s.lastTokenResponse[appKey], now.timeIntervalSince(last) < Double(issueInterval) {
                return .tooSoon
            }
            if let tokenString = s.latestToken[appKey], let t = s.tokens[tokenString], !t.revoked, t.expiresAt > now,
                now.timeIntervalSince(t.issuedAt) < Double(reuseWindow)
            {
                s.lastTokenResponse[appKey] = now
                return .reuse(token: tokenString, expiresAt: t.expiresAt)
            }
            // Decided now, not when the token is recorded: a second request arriving while this one's token is being
            // signed is too soon, as at KIS (one token request per app key per issue interval).
            s.lastTokenResponse[appKey] = now
            return .issue
        }
    }

    /// Records a token signed for `appKey`, and returns the token to answer with: this one, or the one another request
    /// for the app key recorded while this one was being signed (with an `issueInterval` of 0 nothing stops two requests
    /// from both deciding to issue) — within the reuse window KIS answers every request with the same token.
    func record(token: String, appKey: String, appSecret: String, issuedAt: Date, expiresAt: Date, reuseWindow: Int)
        -> (token: String, expiresAt: Date, reused: Bool)
    {
        state.withLock { s in
            if let other = s.latestToken[appKey], let t = s.tokens[other], !t.revoked, t.expiresAt > issuedAt,
                issuedAt.timeIntervalSince(t.issuedAt) < Double(reuseWindow)
            {
                return (other, t.expiresAt, true)
            }
            s.tokens[token] = Token(appKey: appKey, appSecret: appSecret, issuedAt: issuedAt, expiresAt: expiresAt,
                                    revoked: false)
            s.latestToken[appKey] = token
            // `lastTokenResponse` is `decideToken`'s alone: the request's exact time (`issuedAt` is in whole seconds,
            // which let a request up to a second short of the issue interval through).
            s.issuances += 1
            return (token, expiresAt, false)
        }
    }

    enum RevokeResult { case revoked, unknownToken, otherAppKey }

    func revoke(token: String, appKey: String) -> RevokeResult {
        state.withLock { s in
            guard var t = s.tokens[token] else { return .unknownToken }
            guard t.appKey == appKey else { return .otherAppKey }
            t.revoked = true
            s.tokens[token] = t
            if s.latestToken[appKey] == token { s.latestToken[appKey] = nil }
            return .revoked
        }
    }

    func token(_ token: String) -> Token? { state.withLock { $0.tokens[token] } }

    /// Makes one token expire now; false if unknown.
    func expire(token: String) -> Bool {
        let now = now()
        return state.withLock { s in
            guard s.tokens[token] != nil else { return false }
            s.tokens[token]!.expiresAt = now
            return true
        }
    }

    // MARK: control

    /// The longest the clock may be moved ahead in all: a century (dates past it are not a KIS session's).
    static let maxClockOffset: TimeInterval = 100 * 365.25 * 86400

    /// Moves the clock ahead; nil, and the clock left as it was, when that would put it more than `maxClockOffset`
    /// ahead of the real one.
    func advanceClock(seconds: Double) -> TimeInterval? {
        state.withLock { s in
            guard s.clockOffset + seconds <= Self.maxClockOffset else { return nil }
            s.clockOffset += seconds
            return s.clockOffset
        }
    }

    func setFaults(_ f: Faults) { state.withLock { $0.faults = f } }

    func reset() {
        state.withLock { s in
            for k in s.calls.keys { s.calls[k] = 0 }
            s.errors.removeAll()
            s.issuances = 0
            s.faults = Faults()
            s.windows.removeAll()
            s.cursors.removeAll()
        }
    }

    func statsSnapshot() -> (calls: [String: Int], errors: [String: Int], issuances: Int, tokens: Int) {
        let now = self.now()
        return state.withLock { s in
            (s.calls, s.errors, s.issuances, s.tokens.values.filter { !$0.revoked && $0.expiresAt > now }.count)
        }
    }

    // MARK: tr_cont cursors

    func cursor(_ key: String) -> Int? { state.withLock { $0.cursors[key] } }

    func setCursor(_ key: String, _ offset: Int?) {
        state.withLock { s in
            if s.cursors.count > 10_000 { s.cursors.removeAll() }
            s.cursors[key] = offset
        }
    }
}
