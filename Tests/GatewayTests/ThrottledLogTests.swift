import Foundation
@testable import Gateway
import Logging
import Observability
import ServerKit
import Store
import Testing

/// The rule that keeps a failure met by every request (a store that refuses every command) to a line a minute.
@Suite("Throttled warnings")
struct ThrottledLogTests {
    @Test("the first of a kind is logged, then one an interval later with the count of those left out; kinds apart")
    func throttle() {
        var throttle = LogThrottle(interval: .seconds(60))
        let t0 = ContinuousClock.now
        #expect(throttle.admit("store NOPERM", at: t0) == 0)
        #expect(throttle.admit("store NOPERM", at: t0 + .seconds(1)) == nil)
        #expect(throttle.admit("store NOPERM", at: t0 + .seconds(59)) == nil)
        #expect(throttle.admit("store OOM", at: t0 + .seconds(59)) == 0)  // another kind: its own first line
        #expect(throttle.admit("store NOPERM", at: t0 + .seconds(60)) == 2)
        #expect(throttle.admit("store NOPERM", at: t0 + .seconds(61)) == nil)
        #expect(throttle.admit("store NOPERM", at: t0 + .seconds(200)) == 1)
        #expect(throttle.admit("store NOPERM", at: t0 + .seconds(300)) == 0)
    }

    @Test("kinds from outside are not kept without bound")
    func boundedKinds() {
        var throttle = LogThrottle(interval: .seconds(60), maxKinds: 4)
        let t0 = ContinuousClock.now
        for i in 0..<4 { #expect(throttle.admit("k\(i)", at: t0) == 0) }
        #expect(throttle.admit("k0", at: t0) == nil)
        #expect(throttle.admit("k4", at: t0) == 0)  // the table was full: forgotten, so k0 is new again
        #expect(throttle.admit("k0", at: t0) == 0)
    }

    @Test("a store's failure: the 503's detail says refused or unreachable; one warning names Redis's error")
    func storeProblem() {
        let buffer = LogBuffer()
        let logger = Logger(label: "t") { LoggingSetup.makeHandler(label: $0, level: .info, format: .text, output: buffer.output) }
        let log = ThrottledLog(logger: logger)
        let noperm = StoreError(.refused, "Redis refused the command: NOPERM this user has no permissions to run the 'evalsha' command",
                                refusal: "NOPERM")
        for _ in 0..<3 {
            let p = log.storeProblem(noperm, subject: "the shared store")
            #expect(p.code == .storeUnavailable && p.status == 503)
            #expect(p.detail == "the shared store refused the command")
        }
        let down = log.storeProblem(StoreError(.unavailable, "Redis is unreachable: connection refused"), subject: "the token store")
        #expect(down.detail == "the token store cannot be reached")
        #expect(buffer.lines.count == 2, "\(buffer.text)")
        #expect(buffer.lines.first?.contains("NOPERM this user has no permissions") == true, "\(buffer.text)")
        #expect(buffer.lines.first?.contains(" warning ") == true, "\(buffer.text)")
        #expect(buffer.lines.last?.contains("connection refused") == true, "\(buffer.text)")
    }

    /// A seal key the broker uses and a gateway lacks fails every request that brings a token it sealed: each is
    /// answered kis_token_invalid, and logged as an error once a minute (it was a line per request).
    @Test("records this gateway cannot open: each request refused, one error line a minute")
    func unopenableRecordsLoggedOnce() async {
        let buffer = LogBuffer()
        let logger = Logger(label: "t") { LoggingSetup.makeHandler(label: $0, level: .info, format: .text, output: buffer.output) }
        let authorizer = TokenAuthorizer(logger: logger) { _ throws(StoreError) -> ResolvedToken? in
            throw StoreError(.unknownKey, "no seal key with id k9")
        }
        for i in 0..<5 {
            do {
                _ = try await authorizer.authorize(kisToken: "token-\(i)", userID: "u1")
                Issue.record("accepted a token whose record does not open")
            } catch {
                #expect(error.code == .kisTokenInvalid)
            }
        }
        #expect(buffer.lines.count == 1, "\(buffer.text)")
        #expect(buffer.lines.first?.contains(" error ") == true && buffer.lines.first?.contains("no seal key with id k9") == true,
                "\(buffer.text)")
    }

    @Test("an excerpt of outside bytes: capped, printable ASCII only")
    func excerpt() {
        #expect(ThrottledLog.excerpt(Array("{nope".utf8), max: 32) == "{nope")
        #expect(ThrottledLog.excerpt(Array("abcdef".utf8), max: 3) == "abc…")
        #expect(ThrottledLog.excerpt([0x0A, 0x22, 0x5C, 0xFF, 0x41], max: 8) == "\\x0A\\x22\\x5C\\xFFA")
    }
}
