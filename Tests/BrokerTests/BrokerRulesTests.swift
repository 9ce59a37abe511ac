@testable import Broker
import Foundation
import Hummingbird
import ServiceLifecycle
import KIS
import Logging
import NIOCore
import NIOHTTP1
import Redis
import Simulator
import Store
import Synchronization
import Testing
import Tokens
import TestSupport

/// Counts calls a stand-in server received.
final class Hits: Sendable {
    let count = Atomic<Int>(0)
    func hit() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

/// A database whose `ping` (for `/readyz`) or whose writes of an account and its token can be made to fail,
/// everything else delegated. A service when its database is (PostgreSQL's pool runs for as long as the broker).
final class SwitchableRepository: BrokerRepository, Service {
    func run() async throws {
        if let service = inner as? any Service { try await service.run() } else { try? await gracefulShutdown() }
    }

    let inner: any BrokerRepository
    let down = Atomic<Bool>(false)
    /// `saveAccount` and `saveToken` throw, and the tokens they were given are recorded in ``refusedTokens``.
    let writesFail = Atomic<Bool>(false)
    /// `setStatus` throws (a write apart from the account's, failing after it was stored).
    let statusWritesFail = Atomic<Bool>(false)
    /// `deleteAccount` throws (a disconnect failing at its last step).
    let deletesFail = Atomic<Bool>(false)
    /// `deleteAccount` deletes, then throws: a PostgreSQL write that timed out for its caller but was committed.
    let deletesCommitThenFail = Atomic<Bool>(false)
    /// When set, every read of an account's tokens takes this long (a slow database).
    let tokensDelay = Mutex<Duration?>(nil)
    /// The sha256 of each token a failing write was given.
    let refused = Mutex<[String]>([])
    /// When set, every second read of that row's account (same user and environment) answers it instead of the
    /// stored one: an account whose app key keeps changing between reads.
    let alternate = Mutex<(row: StoredAccount, reads: Int)?>(nil)
    /// When set, runs once, before the next read of a token by its SHA-256 (what happens meanwhile elsewhere).
    let beforeTokenRead = Mutex<(@Sendable () async throws -> Void)?>(nil)
    /// When set, runs once, after the next listing of every account and before it is answered.
    let afterAllAccounts = Mutex<(@Sendable () async throws -> Void)?>(nil)
    init(_ inner: any BrokerRepository) { self.inner = inner }

    var refusedTokens: [String] { refused.withLock { $0 } }

    private func refuseWrite(_ token: StoredToken?) throws {
        guard writesFail.load(ordering: .relaxed) else { return }
        if let token { refused.withLock { $0.append(token.tokenSHA256) } }
        throw TestFailure("the database refuses writes")
    }

    func migrate() async throws { try await inner.migrate() }
    func ping() async throws {
        if down.load(ordering: .relaxed) { throw TestFailure("the database is down") }
        try await inner.ping()
    }
    func account(userID: String, environment: KISEnvironment) async throws -> StoredAccount? {
        let other = alternate.withLock { a -> StoredAccount? in
            guard var current = a, current.row.userID == userID, current.row.environment == environment else { return nil }
            current.reads += 1
            a = current
            return current.reads.isMultiple(of: 2) ? current.row : nil
        }
        if let other { return other }
        return try await inner.account(userID: userID, environment: environment)
    }
    func allAccounts() async throws -> [StoredAccount] {
        let accounts = try await inner.allAccounts()
        if let hook = afterAllAccounts.withLock({ h in defer { h = nil }; return h }) { try await hook() }
        return accounts
    }
    func accounts(environment: KISEnvironment, appKeyFingerprints: [String: String]) async throws -> [StoredAccount] {
        try await inner.accounts(environment: environment, appKeyFingerprints: appKeyFingerprints)
    }
    func accountsWithoutAppKeyFingerprint() async throws -> [StoredAccount] {
        try await inner.accountsWithoutAppKeyFingerprint()
    }
    func setAppKeyFingerprint(_ account: StoredAccount) async throws -> Bool {
        try await inner.setAppKeyFingerprint(account)
    }
    func saveAccount(_ account: StoredAccount, token: StoredToken?, revoking: [String]) async throws {
        try refuseWrite(token)
        try await inner.saveAccount(account, token: token, revoking: revoking)
    }
    func setAccountActive(userID: String, environment: KISEnvironment, isActive: Bool, updatedAt: Int64) async throws {
        try await inner.setAccountActive(userID: userID, environment: environment, isActive: isActive, updatedAt: updatedAt)
    }
    func deactivateAccount(userID: String, environment: KISEnvironment, revoking: [String], updatedAt: Int64)
        async throws
    {
        try await inner.deactivateAccount(userID: userID, environment: environment, revoking: revoking,
                                          updatedAt: updatedAt)
    }
    func deleteAccount(userID: String, environment: KISEnvironment) async throws -> Bool {
        if deletesFail.load(ordering: .relaxed) { throw TestFailure("the database refuses to delete") }
        let deleted = try await inner.deleteAccount(userID: userID, environment: environment)
        if deletesCommitThenFail.load(ordering: .relaxed) { throw TestFailure("the database did not answer in time") }
        return deleted
    }
    func saveToken(_ token: StoredToken) async throws {
        try refuseWrite(token)
        try await inner.saveToken(token)
    }
    func tokens(userID: String, environment: KISEnvironment) async throws -> [StoredToken] {
        if let delay = tokensDelay.withLock({ $0 }) { try await Task.sleep(for: delay) }
        return try await inner.tokens(userID: userID, environment: environment)
    }
    func tokens(status: TokenStatus) async throws -> [StoredToken] { try await inner.tokens(status: status) }
    func token(sha256: String) async throws -> StoredToken? {
        if let hook = beforeTokenRead.withLock({ h in defer { h = nil }; return h }) { try await hook() }
        return try await inner.token(sha256: sha256)
    }
    func deleteEndedTokens(expiredBefore before: Int64) async throws -> Int {
        try await inner.deleteEndedTokens(expiredBefore: before)
    }
    func setStatus(_ status: TokenStatus, tokenSHA256s: [String], updatedAt: Int64) async throws {
        if statusWritesFail.load(ordering: .relaxed) { throw TestFailure("the database refuses status writes") }
        try await inner.setStatus(status, tokenSHA256s: tokenSHA256s, updatedAt: updatedAt)
    }
    func replaceAccountSeal(_ account: StoredAccount, replacing old: StoredAccount) async throws -> Bool {
        try await inner.replaceAccountSeal(account, replacing: old)
    }
    func replaceTokenSeal(tokenSHA256: String, accessToken: String, kid: String, expectedKid: String) async throws
        -> Bool
    {
        try await inner.replaceTokenSeal(tokenSHA256: tokenSHA256, accessToken: accessToken, kid: kid,
                                         expectedKid: expectedKid)
    }
}

@Suite("Broker: rules of broker-api.md asserted one by one", .serialized)
struct BrokerRulesTests {
    @Test("DELETE when KIS's revokeP fails: still 204, unpublished, counted in kisgw_broker_revoke_failures_total")
    func revokeFailure() async throws {
        // The simulator's revokeP cannot be made to fail (faults touch quotations only; revoking twice succeeds):
        // a stand-in KIS issues tokens and fails every revokeP.
        let revokes = Hits()
        let router = Router()
        router.post("/oauth2/tokenP") { _, _ in
            let t = KISTokenResponse(access_token: "standin-" + UUID().uuidString,
                                     access_token_token_expired: KST.format(Date().addingTimeInterval(86400)), expires_in: 86400)
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: try JSONEncoder().encode(t))))
        }
        router.post("/oauth2/revokeP") { _, _ in
            revokes.hit()
            return Response(status: .internalServerError, body: .init(byteBuffer: ByteBuffer(string: "<html>oops</html>")))
        }
        let standIn = await startStandInKIS(router)
        try await stopping([standIn.server]) {
            let base = standIn.url
            try await withBroker(config: { testConfig(simURL: base, database: $1) }) { b in
                let jwt = try await b.jwt("u-rf")
                let token = try #require(try await b.post("/api/kis/token", accountBody(appKey("rf")), jwt: jwt).json["token"] as? String)
                #expect(try await b.published(token) != nil)
                let d = try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt)
                #expect(d.status == 204)
                #expect(revokes.value == 1)
                #expect(try await b.store.get(TokenDirectory.recordKey(TokenDirectory.sha256(of: token))) == nil)
                #expect(try await b.store.setMembers(TokenDirectory.userKey("u-rf", .sandbox)).isEmpty)
                let metrics = try await b.get("/metrics", jwt: nil).text
                #expect(metrics.contains("kisgw_broker_revoke_failures_total 1"), "\(metrics)")
            }
        }
    }

    /// A disconnect whose first attempt marked the tokens REVOKED and stopped before asking KIS (a crash, or a
    /// PostgreSQL write that timed out but was committed) left them valid at KIS: the DELETE tried again revoked only
    /// ACTIVE rows, so none. It revokes the REVOKED ones not seen revoked at KIS once the account is deleted and the
    /// locks released; KIS answering that a token is unknown (`EGW00121`) counts as done, not as a failure.
    @Test("a DELETE tried again revokes at KIS the tokens an earlier attempt marked REVOKED; an unknown one is done",
          arguments: DatabaseKind.allCases)
    func retriedDisconnectRevokesAtKIS(database: DatabaseKind) async throws {
        try await withBroker(database: database, config: quietSchedulerConfig) { b in
            let jwt = try await b.jwt("u-again")
            let token = try #require(try await b.post("/api/kis/token", accountBody(appKey("again")), jwt: jwt)
                .json["token"] as? String)
            let liveBefore = try await b.liveTokensAtKIS()
            try await withRepository(b.database) { repository in
                let now = Int64(b.clock.now().timeIntervalSince1970)
                // The first attempt's write, and nothing after it.
                try await repository.deactivateAccount(userID: "u-again", environment: .sandbox,
                                                       revoking: [TokenDirectory.sha256(of: token)], updatedAt: now)
                // And a REVOKED token KIS no longer knows.
                var gone = try AccountVault(keyring: b.keyring).seal(BrokerToken(
                    userID: "u-again", environment: .sandbox, accessToken: "unknown-to-kis", issuedAt: now - 60,
                    expiresAt: now + 3600), updatedAt: now)
                gone.status = .revoked
                try await repository.saveToken(gone)
            }
            let revokes = try await b.simCalls("revokeP")
            let d = try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt)
            #expect(d.status == 204, "\(d.text)")
            #expect(try await b.simCalls("revokeP") == revokes + 2)
            #expect(try await b.liveTokensAtKIS() == liveBefore - 1, "the token is still valid at KIS")
            #expect(try await b.published(token) == nil)
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 404)
            let metrics = try await b.get("/metrics", jwt: nil).text
            #expect(metrics.contains("kisgw_broker_revoke_failures_total 0"), "\(metrics)")
        }
    }

    /// A DELETE tried again whose deletion times out on PostgreSQL but is committed answers an error, and the DELETE
    /// after it finds no account, nor its rows, to go by: the tokens an attempt before left REVOKED and unrevoked at
    /// KIS were revoked at KIS only after a deletion that succeeded, so never. They are revoked once the locks are
    /// released however the attempt ended.
    @Test("a DELETE tried again whose deletion is committed but answers an error still revokes the earlier attempt's tokens at KIS",
          arguments: DatabaseKind.allCases)
    func retriedDisconnectCommittedButFailed(database: DatabaseKind) async throws {
        try await withBroker(database: database, config: quietSchedulerConfig) { b in
            try await b.withSwitchableBroker { repository, url in
                let jwt = try await b.jwt("u-commit")
                let token = try #require(try await b.post("/api/kis/token", accountBody(appKey("commit")), jwt: jwt, base: url)
                    .json["token"] as? String)
                let liveBefore = try await b.liveTokensAtKIS()
                // The first attempt's write, and nothing after it.
                try await repository.deactivateAccount(userID: "u-commit", environment: .sandbox,
                                                       revoking: [TokenDirectory.sha256(of: token)],
                                                       updatedAt: Int64(b.clock.now().timeIntervalSince1970))
                repository.deletesCommitThenFail.store(true, ordering: .relaxed)
                let delete = { try await http(.DELETE, url + "/api/kis/account?environment=SANDBOX",
                                              headers: [("Authorization", "Bearer " + jwt)]) }
                let d = try await delete()
                #expect(d.status != 204, "the case this test is about: a deletion committed that answers an error")
                #expect(try await repository.account(userID: "u-commit", environment: .sandbox) == nil)
                repository.deletesCommitThenFail.store(false, ordering: .relaxed)
                #expect(try await delete().status == 204)
                #expect(try await b.liveTokensAtKIS() == liveBefore - 1, "the token is still valid at KIS")
                #expect(try await b.published(token) == nil)
            }
        }
    }

    @Test("reconciliation republishes a live token whose record and set member were deleted from the store",
          arguments: StoreKind.allCases)
    func reconcileRepublishes(store: StoreKind) async throws {
        try await withBroker(store: store, config: { testConfig(simURL: $0, database: $1, reconcileIntervalS: 1) }) { b in
            let jwt = try await b.jwt("u-rc")
            let token = try #require(try await b.post("/api/kis/token", accountBody(appKey("rc")), jwt: jwt).json["token"] as? String)
            let sha = TokenDirectory.sha256(of: token)
            try await b.store.delete(TokenDirectory.recordKey(sha))
            _ = try await b.store.setRemove(TokenDirectory.userKey("u-rc", .sandbox), members: [sha])
            let back = try await eventually(timeout: .seconds(10)) {
                guard try await b.published(token) != nil else { return false }
                return try await b.store.setMembers(TokenDirectory.userKey("u-rc", .sandbox)) == [sha]
            }
            #expect(back)
            // It was the reconciler that put it back, from the database: no new issuance.
            let metrics = try await b.get("/metrics", jwt: nil).text
            #expect(metrics.contains("kisgw_broker_republished_tokens_total 1"))
            #expect(try await b.issuances() == 1)
            // Each pass is timed.
            let line = metrics.split(separator: "\n").first { $0.hasPrefix("kisgw_broker_reconcile_duration_seconds_count ") }
            let passes: Double = line.flatMap { Double($0.split(separator: " ")[1]) } ?? 0
            #expect(passes >= 1, "\(metrics)")
        }
    }

    /// A pass handles `TokenKeeper.reconcileWidth` accounts at once: every token comes back, each once.
    @Test("reconciliation republishes many accounts' tokens, handled several at once, each once", arguments: StoreKind.allCases)
    func reconcileRepublishesMany(store: StoreKind) async throws {
        try await withBroker(store: store, config: { testConfig(simURL: $0, database: $1, reconcileIntervalS: 1) }) { b in
            let n = 2 * TokenKeeper.reconcileWidth + 5
            var tokens: [(user: String, token: String)] = []
            for i in 0..<n {
                let user = "u-rcm-\(i)"
                let answer = try await b.post("/api/kis/token", accountBody(appKey("rcm\(i)")), jwt: try await b.jwt(user))
                tokens.append((user, try #require(answer.json["token"] as? String, "\(answer.text)")))
            }
            for (user, token) in tokens {
                let sha = TokenDirectory.sha256(of: token)
                try await b.store.delete(TokenDirectory.recordKey(sha))
                _ = try await b.store.setRemove(TokenDirectory.userKey(user, .sandbox), members: [sha])
            }
            let back = try await eventually(timeout: .seconds(20)) {
                for (user, token) in tokens {
                    guard try await b.published(token)?.userID == user,
                        try await b.store.setMembers(TokenDirectory.userKey(user, .sandbox)) == [TokenDirectory.sha256(of: token)]
                    else { return false }
                }
                return true
            }
            #expect(back)
            let metrics = try await b.get("/metrics", jwt: nil).text
            #expect(metrics.contains("kisgw_broker_republished_tokens_total \(n)"), "\(metrics)")
            #expect(try await b.issuances() == n)
        }
    }

    @Test("reconciliation takes out of the store a token whose row is REVOKED")
    func reconcileRemovesRevoked() async throws {
        try await withBroker(config: { testConfig(simURL: $0, database: $1, reconcileIntervalS: 1) }) { b in
            let jwt = try await b.jwt("u-rv")
            let old = try #require(try await b.post("/api/kis/token", accountBody(appKey("rv1")), jwt: jwt).json["token"] as? String)
            let oldSHA = TokenDirectory.sha256(of: old)
            let record = try #require(try await b.store.get(TokenDirectory.recordKey(oldSHA)))
            // Another app key: the old key's token is retired (REVOKED in the database).
            let new = try #require(try await b.post("/api/kis/token", accountBody(appKey("rv2")), jwt: jwt).json["token"] as? String)
            let rows = try await b.database.repository().tokens(userID: "u-rv", environment: .sandbox)
            #expect(rows.first { $0.tokenSHA256 == oldSHA }?.status == .revoked)
            // A stale copy of its record comes back into the store; reconciliation removes it again.
            try await b.store.set(TokenDirectory.recordKey(oldSHA), to: record, ttl: .seconds(3600))
            _ = try await b.store.setAdd(TokenDirectory.userKey("u-rv", .sandbox), members: [oldSHA], ttlAtLeast: nil)
            let gone = try await eventually(timeout: .seconds(10)) {
                guard try await b.store.get(TokenDirectory.recordKey(oldSHA)) == nil else { return false }
                return try await b.store.setMembers(TokenDirectory.userKey("u-rv", .sandbox)) == [TokenDirectory.sha256(of: new)]
            }
            #expect(gone)
            #expect(try await b.published(new) != nil)
        }
    }

    @Test("POST /api/kis/token with a new app key unpublishes the old token (revoked event) and publishes the new one")
    func newAppKeyReplacesToken() async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u-nk")
            let old = try #require(try await b.post("/api/kis/token", accountBody(appKey("nk1")), jwt: jwt).json["token"] as? String)
            let oldSHA = TokenDirectory.sha256(of: old)
            let subscription = try await b.store.subscribe(to: TokenDirectory.eventsChannel)
            let r = try await b.post("/api/kis/token", accountBody(appKey("nk2")), jwt: jwt)
            #expect(r.status == 200)
            let new = try #require(r.json["token"] as? String)
            let newSHA = TokenDirectory.sha256(of: new)
            #expect(new != old)
            #expect(try await b.store.get(TokenDirectory.recordKey(oldSHA)) == nil)
            #expect(try await b.store.setMembers(TokenDirectory.userKey("u-nk", .sandbox)) == [newSHA])
            #expect(try await b.published(new)?.userID == "u-nk")
            #expect(try await b.simCalls("revokeP") == 1)
            var events = subscription.makeAsyncIterator()
            var seen: [TokenEvent] = []
            for _ in 0..<2 {
                let e = try #require(await events.next())
                seen.append(try JSONDecoder().decode(TokenEvent.self, from: Data(e.readableBytesView)))
            }
            #expect(seen.contains { $0.type == "revoked" && $0.sha256 == oldSHA && $0.user_id == "u-nk" })
            #expect(seen.contains { $0.type == "issued" && $0.sha256 == newSHA })
        }
    }

    @Test("/readyz: 200 while the database answers, 503 when it does not, 200 again after")
    func readiness() async throws {
        try await withBroker { b in
            #expect(try await b.get("/readyz", jwt: nil).status == 200)
            // The same broker code over a database that can be switched off.
            let repository = SwitchableRepository(try b.database.repository())
            try await b.withBroker(dependencies: BrokerDependencies(store: b.store, keyring: b.keyring, repository: repository)) { url in
                #expect(try await b.get("/readyz", jwt: nil, base: url).status == 200)
                repository.down.store(true, ordering: .relaxed)
                let down = try await b.get("/readyz", jwt: nil, base: url)
                #expect(down.status == 503)
                #expect(down.json["status"] as? String == "unavailable")
                repository.down.store(false, ordering: .relaxed)
                #expect(try await b.get("/readyz", jwt: nil, base: url).status == 200)
            }
        }
    }

    /// A new app key is stored and the old key's tokens REVOKED in one transaction: written apart, a failure of the
    /// second write (here `setStatus`) answered 503 after the new key was stored, and left the old key's token ACTIVE
    /// and published beside the new one's — accepted by every gateway, never revoked at KIS, and republished by the
    /// reconciler with the new key pair.
    @Test("a key change marks the old key's tokens REVOKED in the new key's write, not in a write of its own", arguments: DatabaseKind.allCases)
    func keyChangeIsOneTransaction(database: DatabaseKind) async throws {
        try await withBroker(database: database, config: quietSchedulerConfig) { b in
            try await b.withSwitchableBroker { repository, url in
                let jwt = try await b.jwt("u-tx")
                let old = try #require(try await b.post("/api/kis/token", accountBody(appKey("tx1")), jwt: jwt, base: url)
                    .json["token"] as? String)
                repository.statusWritesFail.store(true, ordering: .relaxed)
                let r = try await b.post("/api/kis/token", accountBody(appKey("tx2")), jwt: jwt, base: url)
                #expect(r.status == 200, "\(r.text)")
                let new = try #require(r.json["token"] as? String)
                let rows = try await repository.tokens(userID: "u-tx", environment: .sandbox)
                #expect(rows.first { $0.tokenSHA256 == TokenDirectory.sha256(of: old) }?.status == .revoked)
                #expect(rows.first { $0.tokenSHA256 == TokenDirectory.sha256(of: new) }?.status == .active)
                #expect(try await b.published(old) == nil)
                #expect(try await b.store.setMembers(TokenDirectory.userKey("u-tx", .sandbox)) == [TokenDirectory.sha256(of: new)])
            }
        }
    }

    /// broker-api.md: "The database is written before Redis; Redis is a published copy", and a database that fails
    /// is `503 store_unavailable`. A token KIS issued whose row could not be written is not published: no record, no
    /// member of the user's set, no `issued` event.
    @Test("POST /api/kis/token when the database refuses the write: 503 store_unavailable, nothing published",
          arguments: StoreKind.allCases)
    func databaseBeforeStore(store kind: StoreKind) async throws {
        try await withBroker(store: kind) { b in
            let repository = SwitchableRepository(try b.database.repository())
            repository.writesFail.store(true, ordering: .relaxed)
            var events = try await b.store.subscribe(to: TokenDirectory.eventsChannel).makeAsyncIterator()
            try await b.withBroker(dependencies: BrokerDependencies(store: b.store, keyring: b.keyring, repository: repository, clock: { b.clock.now() })) { url in
                let jwt = try await b.jwt("u-dbfirst")
                let r = try await b.post("/api/kis/token", accountBody(appKey("dbfirst")), jwt: jwt, base: url)
                #expect(r.status == 503, "\(r.text)")
                #expect(r.code == "store_unavailable")
                #expect(r.header("content-type") == "application/problem+json")
                #expect(r.header("retry-after") == "1")
                #expect((r.json["detail"] as? String)?.contains("database") == true, "\(r.text)")
                #expect(r.json["token"] == nil)
                // KIS issued a token and the broker tried to store it, but it is nowhere in the store.
                #expect(try await b.issuances() == 1)
                let refused = try #require(repository.refusedTokens.first, "the broker never tried to write the token")
                #expect(try await b.store.get(TokenDirectory.recordKey(refused)) == nil)
                #expect(try await b.store.setMembers(TokenDirectory.userKey("u-dbfirst", .sandbox)).isEmpty)
                if let redis = b.redis {
                    // In the real Redis, by full name: no token record under this test's prefix at all.
                    let keys = try await redis.send(RedisCommand("KEYS", [RedisArgument(b.store.keyPrefix + "tok:*")]))
                    #expect(keys.array?.isEmpty == true, "\(keys)")
                }
                #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt, base: url).code == "account_not_found")

                // The database back: the next connection (another app key: KIS allows one issuance a minute per key)
                // is stored, then published; its `issued` event is the first one the store carried.
                repository.writesFail.store(false, ordering: .relaxed)
                let ok = try await b.post("/api/kis/token", accountBody(appKey("dbfirst2")), jwt: jwt, base: url)
                let token = try #require(ok.json["token"] as? String, "\(ok.text)")
                let first = try #require(await events.next())
                let event = try JSONDecoder().decode(TokenEvent.self, from: Data(first.readableBytesView))
                #expect(event.type == "issued" && event.sha256 == TokenDirectory.sha256(of: token), "\(String(buffer: first))")
                #expect(event.sha256 != refused)
                #expect(try await b.published(token) != nil)
            }
        }
    }

    @Test("an expired JWT is 401 jwt_expired with WWW-Authenticate: Bearer error=\"invalid_token\", as the gateway")
    func expiredJWT() async throws {
        try await withBroker { b in
            let expired = try await b.jwt("u-exp", ttl: -300)  // past the 30 s leeway
            let r = try await b.get("/api/kis/account?environment=SANDBOX", jwt: expired)
            #expect(r.status == 401)
            #expect(r.code == "jwt_expired")
            #expect(r.header("content-type") == "application/problem+json")
            #expect(r.header("www-authenticate") == #"Bearer error="invalid_token""#)
            let none = try await b.get("/api/kis/account?environment=SANDBOX", jwt: nil)
            #expect(none.code == "auth_required")
            #expect(none.header("www-authenticate") == "Bearer")
        }
    }

    @Test("CORS on an error answer from an allowed origin; a preflight from another origin is 403 with no allow headers")
    func corsDetails() async throws {
        try await withBroker { b in
            let origin = "http://localhost:3000"
            let r = try await http(.GET, b.url + "/api/kis/account?environment=SANDBOX", headers: [("Origin", origin)])
            #expect(r.status == 401)
            #expect(r.header("access-control-allow-origin") == origin)
            #expect(r.headers("vary").joined(separator: ",").contains("Origin"))
            #expect(r.header("access-control-allow-credentials") == "true")
            #expect(r.header("access-control-expose-headers")?.isEmpty == false)
            let denied = try await http(.OPTIONS, b.url + "/api/kis/token", headers: [
                ("Origin", "http://evil.example"), ("Access-Control-Request-Method", "POST"),
            ])
            #expect(denied.status == 403)
            #expect(!denied.headers.contains { $0.0.lowercased().hasPrefix("access-control-allow-") }, "\(denied.headers)")
            let other = try await http(.GET, b.url + "/api/kis/account?environment=SANDBOX", headers: [("Origin", "http://evil.example")])
            #expect(!other.headers.contains { $0.0.lowercased().hasPrefix("access-control-") })
        }
    }

    @Test("problem bodies hold no app key, app secret or token: a refused secret, account_not_found")
    func noSecretsInProblems() async throws {
        let key = appKey("sec")
        let sim = SimulatorConfiguration(port: 0, environment: .sandbox, credentials: [key: "right-secret-123"])
        try await withBroker(sim: sim) { b in
            let jwt = try await b.jwt("u-sec")
            let wrong = "wrong-secret-456"
            let v = try await b.post("/api/kis/account/validate", accountBody(key, secret: wrong), jwt: jwt)
            #expect(v.status == 400 && v.code == "kis_credentials_rejected")
            let t = try await b.post("/api/kis/token", accountBody(key, secret: wrong), jwt: jwt)
            #expect(t.status == 400 && t.code == "kis_credentials_rejected")
            for r in [v, t] {
                #expect(!r.text.contains(key) && !r.text.contains(wrong) && !r.text.contains("right-secret-123"), "\(r.text)")
            }
            let token = try #require(try await b.post("/api/kis/token", accountBody(key, secret: "right-secret-123"), jwt: jwt)
                .json["token"] as? String)
            let notFound = [
                try await b.get("/api/kis/account?environment=LIVE", jwt: jwt),
                try await b.post("/api/kis/token/refresh", ["environment": "LIVE"], jwt: jwt),
            ]
            for r in notFound {
                #expect(r.status == 404 && r.code == "account_not_found")
                for secret in [key, "right-secret-123", token, "12345678"] { #expect(!r.text.contains(secret), "\(r.text)") }
            }
        }
    }
}

@Suite("Broker: rules of broker-api.md, second pass", .serialized)
struct BrokerRulesMoreTests {
    static let origin = "http://localhost:3000"

    @Test("a body over 16 KiB is 413 payload_too_large, a problem with CORS; DELETE without environment is 400")
    func limitsAndParameters() async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u-big")
            var body = accountBody(appKey("big"))
            body["padding"] = String(repeating: "x", count: 17 * 1024)
            let json = String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self)
            let big = try await http(.POST, b.url + "/api/kis/token", headers: [
                ("content-type", "application/json"), ("Authorization", "Bearer " + jwt), ("Origin", Self.origin),
            ], body: json)
            #expect(big.status == 413 && big.code == "payload_too_large", "\(big.text)")
            #expect(big.header("content-type")?.hasPrefix("application/problem+json") == true)
            #expect(big.header("access-control-allow-origin") == Self.origin)
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 404)  // nothing stored
            let noEnv = try await http(.DELETE, b.url + "/api/kis/account", headers: [
                ("Authorization", "Bearer " + jwt), ("Origin", Self.origin),
            ])
            #expect(noEnv.status == 400 && noEnv.code == "invalid_parameter", "\(noEnv.text)")
            #expect(noEnv.header("access-control-allow-origin") == Self.origin)
        }
    }

    /// broker-api.md: "Failures … are counted in metrics"; `kis_rate_limited` is 429 with `Retry-After`.
    @Test("KIS refusing a secret counts in kis_token_issuance_failures_total; a held issuance lock is 429 Retry-After, with CORS")
    func failuresCountedAndLockWait() async throws {
        let sim = SimulatorConfiguration(port: 0, environment: .sandbox, credentials: [appKey("cnt"): "right-secret"])
        try await withBroker(sim: sim, config: { testConfig(simURL: $0, database: $1, upstreamTimeoutMs: 500) }) { b in
            let jwt = try await b.jwt("u-cnt")
            let refused = try await b.post("/api/kis/token", accountBody(appKey("cnt"), secret: "wrong-secret"), jwt: jwt)
            #expect(refused.status == 400 && refused.code == "kis_credentials_rejected", "\(refused.text)")
            let metrics = try await b.get("/metrics", jwt: nil).text
            #expect(metrics.contains(#"kis_token_issuance_failures_total{reason="credentialsRejected"} 1"#), "\(metrics)")
            let key = appKey("cnt")
            let lock = try #require(try await b.store.acquireLock(
                "lock:kis-issue:SANDBOX:\(TokenDirectory.sha256(of: key))", ttl: .seconds(60)))
            let body = String(decoding: try JSONSerialization.data(withJSONObject: accountBody(key, secret: "right-secret")),
                              as: UTF8.self)
            let held = try await http(.POST, b.url + "/api/kis/token", headers: [
                ("content-type", "application/json"), ("Authorization", "Bearer " + jwt), ("Origin", Self.origin),
            ], body: body)  // waits lockWait (5.5 s)
            #expect(held.status == 429 && held.code == "kis_rate_limited", "\(held.text)")
            #expect(held.header("Retry-After") == "1")
            #expect(held.header("access-control-allow-origin") == Self.origin)
            _ = try await b.store.releaseLock(lock)
            #expect(try await b.post("/api/kis/token", accountBody(key, secret: "right-secret"), jwt: jwt).status == 200)
        }
    }

    /// broker-api.md: `/metrics` "as in the gateway", whose upstream calls are counted by outcome and KIS `msg_cd`
    /// and timed: the broker's own KIS calls (`tokenP` for a check or an issuance, `revokeP` at a disconnect) likewise.
    @Test("every KIS call of the broker is counted by call, outcome and msg_cd, and timed")
    func kisCallsCounted() async throws {
        let key = appKey("calls")
        let sim = SimulatorConfiguration(port: 0, environment: .sandbox, credentials: [key: "right-secret"])
        try await withBroker(sim: sim, config: quietSchedulerConfig) { b in
            let jwt = try await b.jwt("u-calls")
            let refused = try await b.post("/api/kis/token", accountBody(key, secret: "wrong-secret"), jwt: jwt)
            #expect(refused.status == 400 && refused.code == "kis_credentials_rejected", "\(refused.text)")
            let code = try #require(refused.json["kis_msg_cd"] as? String, "\(refused.text)")
            #expect(try await b.post("/api/kis/token", accountBody(key, secret: "right-secret"), jwt: jwt).status == 200)
            #expect(try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 204)
            let metrics = try await b.get("/metrics", jwt: nil).text
            for line in [
                #"kisgw_broker_kis_calls_total{call="tokenP",outcome="kis_error",msg_cd="\#(code)"} 1"#,
                #"kisgw_broker_kis_calls_total{call="tokenP",outcome="ok",msg_cd=""} 1"#,
                #"kisgw_broker_kis_calls_total{call="revokeP",outcome="ok",msg_cd=""} 1"#,
                #"kisgw_broker_kis_duration_seconds_count{call="tokenP"} 2"#,
                #"kisgw_broker_kis_duration_seconds_count{call="revokeP"} 1"#,
            ] {
                #expect(metrics.contains(line), "\(line) not in \(metrics)")
            }
            #expect(try await b.simCalls("tokenP") == 2)
            #expect(try await b.simCalls("revokeP") == 1)
        }
    }

    /// Each check may ask KIS for a token: a user looping with made-up app keys is stopped before KIS is flooded.
    @Test("a user's account checks (validate, token) are throttled: 10 back to back, then 429 rate_limited with Retry-After")
    func accountChecksThrottled() async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u-loop")
            var statuses: [Int] = []
            for i in 0..<10 {
                let path = i % 2 == 0 ? "/api/kis/account/validate" : "/api/kis/token"
                statuses.append(try await b.post(path, accountBody(appKey("loop\(i)")), jwt: jwt).status)
            }
            #expect(!statuses.contains(429), "\(statuses)")
            let refused = try await b.post("/api/kis/account/validate", accountBody(appKey("loop10")), jwt: jwt)
            #expect(refused.status == 429 && refused.code == "rate_limited", "\(refused.text)")
            #expect((1...6).contains(Int(refused.header("Retry-After") ?? "") ?? 0))
            #expect(try await b.issuances() == 10)  // the refused one never reached KIS
            // Another user is not held back.
            #expect(try await b.post("/api/kis/account/validate", accountBody(appKey("other")), jwt: try await b.jwt("u-other")).status == 200)
        }
    }

    /// store.md: a token's record lives until the token expires.
    @Test("the published record's TTL is the time left until the token's expiry")
    func recordTTL() async throws {
        try await withBroker(store: .redis) { b in
            let r = try await b.post("/api/kis/token", accountBody(appKey("ttl")), jwt: try await b.jwt("u-ttl"))
            let token = try #require(r.json["token"] as? String)
            let expiresAt = try #require((r.json["expiresAt"] as? String).flatMap { try? Date($0, strategy: .iso8601) })
            let ttl = try await b.store.timeToLive(TokenDirectory.recordKey(TokenDirectory.sha256(of: token)))
            guard case .expiresIn(let left) = ttl else {
                Issue.record("the record has no expiry: \(ttl)")
                return
            }
            let expected = expiresAt.timeIntervalSince(b.clock.now())
            #expect(abs(Double(left.components.seconds) - expected) <= 2, "TTL \(left), expiry in \(expected) s")
        }
    }

    /// broker-api.md: scheduler failures "are logged without secrets" — and so is everything else the broker logs.
    @Test("what the broker logs (connect, a refused secret, a failed revoke, disconnect) names no secret, token or account number")
    func logsWithoutSecrets() async throws {
        let capture = LogCapture()
        let logger = {
            var l = Logger(label: "broker-logs") { _ in capture }
            l.logLevel = .trace
            return l
        }()
        let router = Router()
        router.post("/oauth2/tokenP") { request, _ in
            let form = try JSONSerialization.jsonObject(with: Data(try await request.body.collect(upTo: 1 << 16).readableBytesView))
                as? [String: Any]
            guard form?["appsecret"] as? String == "secret-" + appKey("log") else {
                return Response(status: .forbidden, body: .init(byteBuffer: ByteBuffer(string:
                    #"{"error_code":"EGW00105","error_description":"유효하지 않은 AppSecret입니다."}"#)))
            }
            let t = KISTokenResponse(access_token: "standin-log-token-0123456789",
                                     access_token_token_expired: KST.format(Date().addingTimeInterval(86400)), expires_in: 86400)
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: try JSONEncoder().encode(t))))
        }
        router.post("/oauth2/revokeP") { _, _ in
            Response(status: .internalServerError, body: .init(byteBuffer: ByteBuffer(string: "<html>oops</html>")))
        }
        let standIn = await startStandInKIS(router)
        try await stopping([standIn.server]) {
            try await withBroker(config: { testConfig(simURL: standIn.url, database: $1) }) { b in
                try await b.withBroker(logger: logger) { url in
                    let jwt = try await b.jwt("u-log")
                    let wrong = try await b.post("/api/kis/token", accountBody(appKey("log"), secret: "wrong-secret-value",
                                                                               number: "98765432-01"), jwt: jwt, base: url)
                    #expect(wrong.status == 400)
                    let ok = try await b.post("/api/kis/token", accountBody(appKey("log"), number: "98765432-01"), jwt: jwt,
                                              base: url)
                    #expect(ok.status == 200)
                    #expect(try await http(.DELETE, url + "/api/kis/account?environment=SANDBOX",
                                           headers: [("Authorization", "Bearer " + jwt)]).status == 204)
                }
            }
            let lines = capture.lines
            #expect(!lines.isEmpty)
            for secret in [appKey("log"), "secret-" + appKey("log"), "wrong-secret-value", "standin-log-token-0123456789",
                           "98765432", testSecret] {
                #expect(!lines.contains { $0.contains(secret) }, "\(secret) in \(lines.filter { $0.contains(secret) })")
            }
        }
    }

    /// store.md: the broker and all gateways hold the same seal keys. A rotation (a new key made current, the broker
    /// restarted) re-encrypts the database at start-up; the records already in the shared store were still sealed
    /// with the old key, so a gateway given only the new key refused every live token as `kis_token_invalid`, and a
    /// refresh handed the same token back (its record existed) for up to the reuse window.
    @Test("after a seal key rotation the reconciler and a refresh seal published records again with the new key",
          arguments: StoreKind.allCases)
    func rotationReseals(store: StoreKind) async throws {
        let old = try SealKeyring(current: "k1", keys: ["k1": VaultTests.key(1)])
        let rotated = try SealKeyring(current: "k2", keys: ["k1": VaultTests.key(1), "k2": VaultTests.key(2)])
        let onlyNew = try SealKeyring(current: "k2", keys: ["k2": VaultTests.key(2)])
        try await withBroker(store: store, keyring: old, config: quietSchedulerConfig) { b in
            var tokens: [String] = []
            for user in ["u-rot1", "u-rot2"] {
                let r = try await b.post("/api/kis/token", accountBody(appKey(user)), jwt: try await b.jwt(user))
                tokens.append(try #require(r.json["token"] as? String, "\(r.text)"))
            }
            let shas = tokens.map { TokenDirectory.sha256(of: $0) }
            for sha in shas { #expect(try await TokenDirectory.sealKeyID(sha256: sha, store: b.store) == "k1") }
            await #expect(throws: StoreError.self) {
                _ = try await TokenDirectory.resolve(token: tokens[0], store: b.store, keyring: onlyNew)
            }
            let issued = try await b.issuances()

            // The reconciler of a broker with the new key current seals the first user's record again.
            let keeper = makeKeeper(try b.database.repository(), store: b.store, keyring: rotated, kis: nil,
                                    clock: { b.clock.now() })
            try await b.store.delete(TokenDirectory.recordKey(shas[1]))  // not published at all: republished too
            #expect(try await keeper.reconcile() == 2)
            for (token, user) in zip(tokens, ["u-rot1", "u-rot2"]) {
                let sha = TokenDirectory.sha256(of: token)
                #expect(try await TokenDirectory.sealKeyID(sha256: sha, store: b.store) == "k2")
                #expect(try await TokenDirectory.resolve(token: token, store: b.store, keyring: onlyNew)?.userID == user)
                #expect(try await b.store.setMembers(TokenDirectory.userKey(user, .sandbox)) == [sha])
            }
            #expect(try await keeper.reconcile() == 0, "sealed with the current key: nothing to do")

            // A refresh on a broker with the new key current, before any reconciliation: the token handed back is
            // sealed again with the new key.
            let resealedOld = try SealKeyring(current: "k1", keys: ["k1": VaultTests.key(1), "k2": VaultTests.key(2)])
            try await TokenDirectory.publish(
                SealedCredentials(access_token: tokens[0], app_key: appKey("u-rot1"), app_secret: "secret-" + appKey("u-rot1")),
                userID: "u-rot1", environment: .sandbox, issuedAt: b.clock.now(),
                expiresAt: b.clock.now().addingTimeInterval(3600), store: b.store, keyring: resealedOld, now: b.clock.now())
            #expect(try await TokenDirectory.sealKeyID(sha256: shas[0], store: b.store) == "k1")
            try await b.withBroker(dependencies: BrokerDependencies(store: b.store, keyring: rotated,
                                                                    repository: try b.database.repository())) { url in
                let r = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: try await b.jwt("u-rot1"),
                                         base: url)
                #expect(r.status == 200, "\(r.text)")
                #expect(r.json["token"] as? String == tokens[0])
            }
            #expect(try await TokenDirectory.sealKeyID(sha256: shas[0], store: b.store) == "k2")
            #expect(try await TokenDirectory.resolve(token: tokens[0], store: b.store, keyring: onlyNew)?.userID == "u-rot1")
            #expect(try await b.issuances() == issued, "no token was issued for the rotation")
        }
    }

    /// A gateway that saw KIS refuse a token writes `dead:` and then unpublishes the token; when the unpublish failed
    /// (the store went away between the two), the record stayed and every gateway still accepted the token.
    @Test("a refresh that finds a token marked dead but still published takes it out of the store (revoked event)")
    func deadButPublishedIsUnpublished() async throws {
        try await withBroker(store: .redis, config: quietSchedulerConfig) { b in
            let jwt = try await b.jwt("u-dp")
            let first = try #require(try await b.post("/api/kis/token", accountBody(appKey("dp")), jwt: jwt).json["token"] as? String)
            let sha = TokenDirectory.sha256(of: first)
            let record = try #require(try await b.store.get(TokenDirectory.recordKey(sha)))
            try await b.kisRefused(first, user: "u-dp")
            // The gateway's unpublish did not happen: the record and the set member are still there.
            try await b.store.set(TokenDirectory.recordKey(sha), to: record, ttl: .seconds(3600))
            _ = try await b.store.setAdd(TokenDirectory.userKey("u-dp", .sandbox), members: [sha], ttlAtLeast: nil)
            let subscription = try await b.store.subscribe(to: TokenDirectory.eventsChannel)
            try await b.advanceClocks(61)
            let r = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: jwt)
            #expect(r.status == 200, "\(r.text)")
            let second = try #require(r.json["token"] as? String)
            #expect(second != first)
            #expect(try await b.published(first) == nil, "the refused token is still published")
            #expect(try await b.store.setMembers(TokenDirectory.userKey("u-dp", .sandbox)) == [TokenDirectory.sha256(of: second)])
            var events = subscription.makeAsyncIterator()
            let e = try #require(await events.next())
            let event = try JSONDecoder().decode(TokenEvent.self, from: Data(e.readableBytesView))
            #expect(event == TokenEvent(type: "revoked", sha256: sha, user_id: "u-dp", env: .sandbox))
        }
    }
}
