import Foundation
@testable import Gateway
import KIS
import ServerKit
import Store
import Synchronization
import Testing

/// `TokenAuthorizer`'s memory of decisions against forgets that happen while a record is being read (the gateway
/// tests show the same over Redis: `revocationDuringLookup`). Its lookup here is a closure the test holds mid-read:
/// what is tested is the authorizer's own bookkeeping, not a store.
@Suite("Token decisions: what a lookup under way when tokens are forgotten may remember")
struct TokenAuthorizerTests {
    static let now = Date(timeIntervalSince1970: 1_764_000_000)

    static func resolved(_ token: String) -> ResolvedToken {
        ResolvedToken(userID: "u1", environment: .live, expiresAt: now.addingTimeInterval(3600), sha256: "sha-" + token,
                      credentials: KISCredentials(appKey: "PSkey", appSecret: "secret", accessToken: token))
    }

    /// An authorizer whose lookups wait, once they have "read" their record, until `release()`.
    final class HeldLookups: Sendable {
        private let state = Mutex<(reading: Int, held: [CheckedContinuation<Void, Never>])>((0, []))

        var reading: Int { state.withLock { $0.reading } }

        func lookup(_ token: String) async -> ResolvedToken? {
            await withCheckedContinuation { c in
                state.withLock { s in
                    s.reading += 1
                    s.held.append(c)
                }
            }
            return TokenAuthorizerTests.resolved(token)
        }

        func release() {
            for c in state.withLock({ s in defer { s.held = [] }; return s.held }) { c.resume() }
        }
    }

    /// Starts `authorize` for `token`, lets `during` run while its lookup is held, then lets it finish; returns whether
    /// the decision was remembered afterwards.
    static func remembered(_ token: String, during: @Sendable (TokenAuthorizer) -> Void) async throws -> Bool {
        let held = HeldLookups()
        let authorizer = TokenAuthorizer { (t: String) async throws(StoreError) -> ResolvedToken? in await held.lookup(t) }
        let request = Task { try await authorizer.authorize(kisToken: token, userID: "u1", now: now) }
        while held.reading == 0 { try await Task.sleep(for: .milliseconds(5)) }
        during(authorizer)
        held.release()
        #expect(try await request.value.sha256 == "sha-" + token)  // the request itself is answered either way
        return authorizer.known(kisToken: token, userID: "u1", now: now) != nil
    }

    @Test("nothing forgotten meanwhile, or another token: the decision is remembered")
    func otherTokensDoNotMatter() async throws {
        #expect(try await Self.remembered("A") { _ in })
        #expect(try await Self.remembered("A") { $0.forget(sha256: "sha-B") })
    }

    @Test("its own token forgotten meanwhile (a revoked event), or every token (a gap): not remembered")
    func ownOrAllForgotten() async throws {
        #expect(try await !Self.remembered("A") { $0.forget(sha256: "sha-A") })
        #expect(try await !Self.remembered("A") { $0.forgetAll() })
    }

    @Test("more tokens forgotten meanwhile than it keeps track of (1,024): not remembered, to be safe")
    func tooManyForgotten() async throws {
        #expect(try await !Self.remembered("A") { a in
            for n in 0..<1_100 { a.forget(sha256: "sha-other-\(n)") }
        })
    }
}
