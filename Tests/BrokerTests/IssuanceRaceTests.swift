@testable import Broker
import CoreMetrics
import Foundation
import Hummingbird
import KIS
import NIOCore
import NIOHTTP1
import Store
import Synchronization
import Testing
import Tokens
import TestSupport

/// Races around the per-app-key issuance lock (broker-api.md: one user per app key, DELETE deletes the account and
/// its tokens, and a token is never published after its account was deleted).
@Suite("Broker: issuance, disconnect and the app key's lock", .serialized)
struct IssuanceRaceTests {
    /// A stand-in KIS whose `tokenP` takes `delay` and hands out one token per app key (as KIS does within its
    /// reuse window), while `onIssue` runs.
    static func slowKIS(delay: Duration, onIssue: @escaping @Sendable () async -> Void = {}) async
        -> (url: String, server: TestServer)
    {
        let router = Router()
        router.post("/oauth2/tokenP") { request, _ in
            let appKey = try await Self.requestedAppKey(in: request)
            await onIssue()
            try await Task.sleep(for: delay)
            return try Self.tokenAnswer(for: appKey)
        }
        router.post("/oauth2/revokeP") { _, _ in Self.revokedAnswer() }
        return await startStandInKIS(router)
    }

    /// The app key a stand-in's `tokenP` request names.
    static func requestedAppKey(in request: Request) async throws -> String {
        let body = try await request.body.collect(upTo: 1 << 16)
        let form = try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any]
        return form?["appkey"] as? String ?? "?"
    }

    /// A stand-in's `tokenP` answer: the app key's one token, for a day.
    static func tokenAnswer(for appKey: String) throws -> Response {
        let t = KISTokenResponse(access_token: "standin-" + TokenDirectory.sha256(of: appKey),
                                 access_token_token_expired: KST.format(Date().addingTimeInterval(86400)),
                                 expires_in: 86400)
        return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: try JSONEncoder().encode(t))))
    }

    static func revokedAnswer() -> Response {
        Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: #"{"code":200,"message":"ok"}"#)))
    }

    static func lockKey(_ appKey: String) -> String {
        "lock:kis-issue:\(KISEnvironment.sandbox.rawValue):\(TokenDirectory.sha256(of: appKey))"
    }

    /// Both requests pass the check made before the lock (neither account is stored yet); the second to take the
    /// lock used to be handed the first one's token by KIS and store it as its own, taking the token's record over.
    @Test("two users connecting one app key at once: one keeps it, the other is refused, the token stays the first's")
    func sameAppKeyAtOnce() async throws {
        let kis = await Self.slowKIS(delay: .milliseconds(400))
        try await stopping([kis.server]) {
            try await withBroker(config: { testConfig(simURL: kis.url, database: $1) }) { b in
                let key = appKey("same")
                let (ja, jb) = (try await b.jwt("u-a"), try await b.jwt("u-b"))
                async let ra = b.post("/api/kis/token", accountBody(key), jwt: ja)
                async let rb = b.post("/api/kis/token", accountBody(key), jwt: jb)
                let (a, bb) = (try await ra, try await rb)
                #expect([a.status, bb.status].sorted() == [200, 400], "\(a.text) / \(bb.text)")
                let (winner, winnerAnswer, loserJWT) = a.status == 200 ? ("u-a", a, jb) : ("u-b", bb, ja)
                let loser = a.status == 200 ? bb : a
                #expect(loser.code == "invalid_parameter")
                let token = try #require(winnerAnswer.json["token"] as? String)
                #expect(try await b.published(token)?.userID == winner)
                #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: loserJWT).status == 404)
                let row = try await withRepository(b.database) { try await $0.token(sha256: TokenDirectory.sha256(of: token)) }
                #expect(row?.userID == winner)
            }
        }
    }

    /// A disconnect used to go ahead without the lock once `lockWait` passed: an issuance still running then stored
    /// the deleted account again.
    @Test("DELETE while another request holds the app key's issuance lock: 429, nothing deleted; once free, 204")
    func disconnectWaitsForTheLock() async throws {
        try await withBroker(config: { testConfig(simURL: $0, database: $1, upstreamTimeoutMs: 500) }) { b in
            let key = appKey("held")
            let jwt = try await b.jwt("u-held")
            let token = try #require(try await b.post("/api/kis/token", accountBody(key), jwt: jwt).json["token"] as? String)
            let lock = try #require(try await b.store.acquireLock(Self.lockKey(key), ttl: .seconds(60)))
            let d = try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt)  // waits lockWait (5.5 s)
            #expect(d.status == 429, "\(d.text)")
            #expect(d.header("Retry-After") != nil)
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 200)
            #expect(try await b.published(token) != nil)
            _ = try await b.store.releaseLock(lock)
            #expect(try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 204)
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 404)
            #expect(try await b.published(token) == nil)
        }
    }

    /// Sources/Broker/README.md, "The 429 answers": another request (or copy) holding the account's lock past the
    /// wait — whatever app key it writes — is the broker's own `kis_rate_limited`, and nothing is stored or deleted.
    @Test("a token call or DELETE while another request holds the account's lock: 429, nothing changed; once free, they go ahead")
    func accountLockHeld() async throws {
        try await withBroker(config: { testConfig(simURL: $0, database: $1, upstreamTimeoutMs: 500) }) { b in
            let jwt = try await b.jwt("u-acct")
            let old = try #require(try await b.post("/api/kis/token", accountBody(appKey("acct1")), jwt: jwt)
                .json["token"] as? String)
            let key = "lock:kis-account:\(KISEnvironment.sandbox.rawValue):\(TokenDirectory.sha256(of: "u-acct"))"
            let lock = try #require(try await b.store.acquireLock(key, ttl: .seconds(60)))
            let changed = try await b.post("/api/kis/token", accountBody(appKey("acct2")), jwt: jwt)  // waits 5.5 s
            #expect(changed.status == 429 && changed.code == "kis_rate_limited", "\(changed.text)")
            #expect(changed.json["detail"] as? String == "another request for this account is in progress")
            #expect(changed.header("Retry-After") == "1" && changed.json["kis_msg_cd"] == nil)
            let d = try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt)
            #expect(d.status == 429, "\(d.text)")
            #expect(try await b.published(old) != nil)
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 200)
            _ = try await b.store.releaseLock(lock)
            #expect(try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 204)
            #expect(try await b.published(old) == nil)
            #expect(try await b.store.get(key) == nil, "the DELETE left the account's lock behind")
        }
    }

    /// Sources/Broker/README.md, "The 429 answers": a disconnect reads the account, takes its app key's lock and reads
    /// it again; an app key changed meanwhile (a `token` call with another one) sends it round again, and after three
    /// rounds it gives up with the broker's own `kis_rate_limited` — no `kis_msg_cd`, `Retry-After: 1`, nothing deleted.
    @Test("DELETE while the account's app key keeps changing: 429 kis_rate_limited, Retry-After 1, nothing deleted")
    func disconnectWhileTheKeyChanges() async throws {
        try await withBroker { b in
            let jwt = try await b.jwt("u-shift")
            let token = try #require(try await b.post("/api/kis/token", accountBody(appKey("shift1")), jwt: jwt)
                .json["token"] as? String)
            let repository = SwitchableRepository(try b.database.repository())
            let now = Int64(b.clock.now().timeIntervalSince1970)
            let other = Account(userID: "u-shift", environment: .sandbox, appKey: appKey("shift2"), appSecret: "secret-2",
                                accountNumber: "12345678-01", createdAt: now, updatedAt: now)
            repository.alternate.withLock { $0 = (try? AccountVault(keyring: b.keyring).seal(other)).map { ($0, 0) } }
            #expect(repository.alternate.withLock { $0 != nil })
            try await b.withBroker(dependencies: BrokerDependencies(store: b.store, keyring: b.keyring, repository: repository, clock: { b.clock.now() })) { url in
                let d = try await http(.DELETE, url + "/api/kis/account?environment=SANDBOX",
                                       headers: [("Authorization", "Bearer " + jwt)])
                #expect(d.status == 429 && d.code == "kis_rate_limited", "\(d.text)")
                #expect(d.header("retry-after") == "1")
                #expect(d.json["retry_after"] as? Int == 1)
                #expect(d.json["kis_msg_cd"] == nil)
                #expect(d.header("content-type") == "application/problem+json")
                #expect(repository.alternate.withLock { $0?.reads ?? 0 } == 6, "three rounds of two reads")
            }
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 200)
            #expect(try await b.published(token) != nil)
        }
    }

    /// The lock expires if its holder dies; an issuance slower than the lock's life must not store anything, since
    /// a disconnect may have run meanwhile. Here the lock is taken away while KIS answers.
    @Test("an issuance that lost its app key's lock while KIS answered stores and publishes nothing (504)")
    func issuanceThatLostItsLock() async throws {
        let key = appKey("lost")
        let store = Mutex<(any SharedStore)?>(nil)
        let kis = await Self.slowKIS(delay: .milliseconds(600)) {
            if let store = store.withLock({ $0 }) { _ = try? await store.delete(Self.lockKey(key)) }
        }
        try await stopping([kis.server]) {
            try await withBroker(config: { testConfig(simURL: kis.url, database: $1) }) { b in
                store.withLock { $0 = b.store }
                let jwt = try await b.jwt("u-lost")
                let r = try await b.post("/api/kis/token", accountBody(key), jwt: jwt)
                #expect(r.status == 504, "\(r.text)")
                #expect(r.code == "upstream_timeout")
                #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 404)
                #expect(try await b.published("standin-" + TokenDirectory.sha256(of: key)) == nil)
                #expect(try await b.store.setMembers(TokenDirectory.userKey("u-lost", .sandbox)).isEmpty)
            }
        }
    }

    /// The locks were renewed once, when taken; the database reads before `tokenP` (each up to 5 s on PostgreSQL)
    /// could outlast their life, and the issuance still asked KIS — with another copy, holding the locks by then,
    /// possibly asking too (two issuances within the minute: EGW00133). They are renewed right before `tokenP` now,
    /// and an issuance that lost them gives up without asking KIS.
    @Test("an issuance whose locks expired during slow database reads does not ask KIS")
    func locksRenewedBeforeTokenP() async throws {
        try await withBroker(config: quietSchedulerConfig) { b in
            let jwt = try await b.jwt("u-slowdb")
            #expect(try await b.post("/api/kis/token", accountBody(appKey("slowdb")), jwt: jwt).status == 200)
            let repository = SwitchableRepository(try b.database.repository())  // SQLite: no pool to run
            // By this keeper's clock alone the token is due, and a refresh asks KIS (the fixture's scheduler, on the
            // fixture's clock, does not refresh it meanwhile).
            let keeper = makeKeeper(repository, store: b.store, keyring: b.keyring, kis: b.simURL, lockTTL: .seconds(1),
                                    clock: { b.clock.now().addingTimeInterval(86400 - 1800) })
            repository.tokensDelay.withLock { $0 = .milliseconds(1500) }  // longer than the locks live
            let asked = try await b.simCalls("tokenP")
            await #expect(throws: (any Error).self) { _ = try await keeper.refresh(userID: "u-slowdb", environment: .sandbox) }
            #expect(try await b.simCalls("tokenP") == asked, "tokenP was called by an issuance that no longer held its locks")
        }
    }

    /// A `token` call found its stored token alive and not dead, then took the account's locks to publish it again
    /// (the store had lost it); a gateway seeing KIS refuse it meanwhile (`dead:`, unpublished) was not looked at
    /// again under the locks, and the dead token was published and handed back. It is checked under them now. The
    /// gateway's mark lands right after the call took the locks: before its first read under them.
    @Test("a token marked dead while a token call took the account's locks is not published again nor handed back")
    func deadWhileTakingTheLocks() async throws {
        try await withBroker(config: quietSchedulerConfig) { b in
            let (user, key) = ("u-deadwait", appKey("deadwait"))
            let jwt = try await b.jwt(user)
            let first = try #require(try await b.post("/api/kis/token", accountBody(key), jwt: jwt).json["token"] as? String)
            try await b.advanceClocks(61)  // KIS's minute between issuances: a new token can be had
            // The store lost the token: the call publishes it again, under the account's locks.
            try await TokenDirectory.unpublish(sha256: TokenDirectory.sha256(of: first), userID: user, environment: .sandbox,
                                               store: b.store)
            let repository = SwitchableRepository(try b.database.repository())  // SQLite: no pool to run
            let keeper = makeKeeper(repository, store: b.store, keyring: b.keyring, kis: b.simURL, clock: { b.clock.now() })
            let marked = Flag()
            repository.beforeTokenRead.withLock {
                $0 = {
                    try await b.kisRefused(first, user: user)
                    // A second on: the simulator, asked within the second it ended the token in, hands it back.
                    try await b.advanceClocks(1)
                    marked.value.store(true, ordering: .relaxed)
                }
            }
            let form = AccountForm(environment: .sandbox, appKey: key, appSecret: "secret-" + key, accountNumber: "12345678-01")
            let answered = try await keeper.connect(userID: user, form: form)
            try #require(marked.current, "the call never read the token under the locks: the race did not happen")
            #expect(answered.accessToken != first, "the dead token was handed back")
            #expect(try await b.published(first) == nil, "the dead token was published again")
            #expect(try await b.published(answered.accessToken)?.userID == user)
            let row = try await repository.token(sha256: TokenDirectory.sha256(of: first))
            #expect(row?.status == .expired)
        }
    }

    /// broker-api.md: DELETE revokes at KIS, unpublishes and deletes. Revoked at KIS first, the token stayed accepted
    /// by every gateway until it was unpublished (each then spent a KIS call to learn it had ended), and a KIS slower
    /// than the locks' life failed the disconnect with 504 after KIS had revoked the token, leaving it ACTIVE and
    /// published. Now it is unpublished before KIS is asked; a KIS that outlasts the locks still fails the deletion
    /// (another writer may hold them by then), with the token revoked and unpublished, and a DELETE tried again ends it.
    @Test("DELETE unpublishes before revoking at KIS; a KIS slower than the locks leaves the token revoked and unpublished")
    func disconnectRevokesAfterUnpublishing() async throws {
        let key = appKey("slowrevoke")
        let sha = TokenDirectory.sha256(of: "standin-" + TokenDirectory.sha256(of: key))
        let store = Mutex<(any SharedStore)?>(nil)
        let publishedAtRevoke = Mutex<[Bool]>([])
        let router = Router()
        router.post("/oauth2/tokenP") { request, _ in try Self.tokenAnswer(for: try await Self.requestedAppKey(in: request)) }
        router.post("/oauth2/revokeP") { _, _ in
            if let store = store.withLock({ $0 }) {
                let published = (try? await store.get(TokenDirectory.recordKey(sha))) != nil
                publishedAtRevoke.withLock { $0.append(published) }
                // KIS answers after the locks' life: they are gone by then.
                _ = try? await store.delete(Self.lockKey(key))
                _ = try? await store.delete("lock:kis-account:SANDBOX:\(TokenDirectory.sha256(of: "u-sr"))")
            }
            return Self.revokedAnswer()
        }
        let kis = await startStandInKIS(router)
        try await stopping([kis.server]) {
            try await withBroker(config: { testConfig(simURL: kis.url, database: $1) }) { b in
                store.withLock { $0 = b.store }
                let jwt = try await b.jwt("u-sr")
                #expect(try await b.post("/api/kis/token", accountBody(key), jwt: jwt).status == 200)
                let r = try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt)
                #expect(r.status == 504 && r.code == "upstream_timeout", "\(r.text)")
                #expect(publishedAtRevoke.withLock { $0 } == [false], "revoked at KIS while gateways still accepted the token")
                #expect(try await b.store.get(TokenDirectory.recordKey(sha)) == nil)
                #expect(try await b.database.repository().tokens(userID: "u-sr", environment: .sandbox).map(\.status) == [.revoked])
                // Tried again: deleted, and KIS is not asked again for a token it revoked.
                #expect(try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 204)
                #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 404)
                #expect(try await b.database.repository().tokens(userID: "u-sr", environment: .sandbox).isEmpty)
                #expect(publishedAtRevoke.withLock { $0 }.count == 1)
            }
        }
    }

    /// A DELETE tried again after an attempt that marked the tokens REVOKED and stopped before asking KIS revokes
    /// them at KIS once the account is deleted and its locks released: asked under the locks (as the reverted
    /// 6090aee did), a KIS slower than their life failed every DELETE tried again with 504. Here KIS is asked with
    /// neither lock held, the DELETE answers 204, and a DELETE after it does not ask KIS again.
    @Test("a DELETE tried again revokes the tokens an earlier attempt left at KIS after releasing the account's locks")
    func retriedDisconnectRevokesWithoutTheLocks() async throws {
        let key = appKey("leftrevoke")
        let accountLock = "lock:kis-account:SANDBOX:\(TokenDirectory.sha256(of: "u-lr"))"
        let store = Mutex<(any SharedStore)?>(nil)
        let locksAtRevoke = Mutex<[Bool]>([])
        let router = Router()
        router.post("/oauth2/tokenP") { request, _ in try Self.tokenAnswer(for: try await Self.requestedAppKey(in: request)) }
        router.post("/oauth2/revokeP") { _, _ in
            if let store = store.withLock({ $0 }) {
                let account = (try? await store.get(accountLock)) != nil
                let appKeyLock = (try? await store.get(Self.lockKey(key))) != nil
                locksAtRevoke.withLock { $0.append(account || appKeyLock) }
            }
            return Self.revokedAnswer()
        }
        let kis = await startStandInKIS(router)
        try await stopping([kis.server]) {
            try await withBroker(config: { testConfig(simURL: kis.url, database: $1) }) { b in
                store.withLock { $0 = b.store }
                let jwt = try await b.jwt("u-lr")
                let token = try #require(try await b.post("/api/kis/token", accountBody(key), jwt: jwt).json["token"] as? String)
                // The first attempt's write, and nothing after it: REVOKED here, valid at KIS, still published.
                try await withRepository(b.database) { repository in
                    try await repository.deactivateAccount(
                        userID: "u-lr", environment: .sandbox, revoking: [TokenDirectory.sha256(of: token)],
                        updatedAt: Int64(b.clock.now().timeIntervalSince1970))
                }
                let r = try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt)
                #expect(r.status == 204, "\(r.text)")
                #expect(locksAtRevoke.withLock { $0 } == [false], "KIS was asked under the locks, or not at all")
                #expect(try await b.published(token) == nil)
                #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 404)
                #expect(try await b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 204)
                #expect(locksAtRevoke.withLock { $0 }.count == 1)
            }
        }
    }

    /// A refresh reads the account, then waits for the app key's lock; a disconnect that finished meanwhile (as
    /// another broker copy holding the lock would) used to be undone: the refresh issued a token and stored the
    /// account again.
    @Test("a refresh that waited for the app key's lock while the account was deleted brings nothing back: 404")
    func refreshAfterADisconnect() async throws {
        try await withBroker(config: quietSchedulerConfig) { b in
            let key = appKey("rd")
            #expect(try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u-rd")).status == 200)
            try await b.advanceClocks(21600 + 60)  // past the reuse window: a refresh asks KIS for a new token
            let lock = try #require(try await b.store.acquireLock(Self.lockKey(key), ttl: .seconds(60)))
            let jwt = try await b.jwt("u-rd")
            async let refreshed = { () async throws -> (HTTPResult, ContinuousClock.Instant) in
                let r = try await b.post("/api/kis/token/refresh", ["environment": "SANDBOX"], jwt: jwt)
                return (r, ContinuousClock.now)
            }()
            try await Task.sleep(for: .seconds(1))  // it has read the account and waits for the lock (8 s at most)
            try await withRepository(b.database) {
                _ = try await $0.deleteAccount(userID: "u-rd", environment: .sandbox)
            }
            let released = ContinuousClock.now
            _ = try await b.store.releaseLock(lock)
            let (r, answered) = try await refreshed
            // Answered after the lock came free: it had read the account before the delete and waited for the lock
            // (one that read it after would have answered 404 at once) — the race this test is about did happen.
            #expect(answered > released, "the refresh did not wait for the app key's lock")
            #expect(r.status == 404 && r.code == "account_not_found", "\(r.text)")
            #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 404)
            #expect(try await b.issuances() == 1)
        }
    }

    /// A scheduler pass lists the accounts, then refreshes them one by one; an account changed meanwhile (a new
    /// account number through `POST /api/kis/token`) used to be stored back as the pass had listed it.
    @Test("a scheduled refresh keeps the account as stored now, not as the pass listed it")
    func scheduledRefreshKeepsTheStoredAccount() async throws {
        try await withBroker(config: quietSchedulerConfig) { b in
            let key = appKey("num")
            let jwt = try await b.jwt("u-num")
            #expect(try await b.post("/api/kis/token", accountBody(key, number: "11112222-01"), jwt: jwt).status == 200)
            try await withRepository(b.database) { repository in
                let listed = try #require(try await repository.account(userID: "u-num", environment: .sandbox))
                #expect(try await b.post("/api/kis/token", accountBody(key, number: "33334444-02"), jwt: jwt).status == 200)
                let keeper = makeKeeper(repository, store: b.store, keyring: b.keyring, kis: b.simURL,
                                        clock: { b.clock.now() })
                try await b.advanceClocks(86400 - 1800)  // inside refresh_ahead_s, past the reuse window
                #expect(try await keeper.scheduledRefresh(listed) == true)
                let now = try #require(try await repository.account(userID: "u-num", environment: .sandbox))
                #expect(try AccountVault(keyring: b.keyring).open(now).accountNumber == "33334444-02")
            }
        }
    }

    /// How many slow calls a stand-in KIS has begun, and ended.
    final class Started: Sendable {
        let count = Atomic<Int>(0)
        let ended = Atomic<Int>(0)
        var value: Int { count.load(ordering: .relaxed) }
        var finished: Int { ended.load(ordering: .relaxed) }

        /// A slow call: counted as begun, `delay` long, counted as ended.
        func during(_ delay: Duration) async throws {
            count.add(1, ordering: .relaxed)
            try await Task.sleep(for: delay)
            ended.add(1, ordering: .relaxed)
        }
    }

    /// A stand-in KIS whose `tokenP` hands out one token per app key and whose `revokeP` (or, for `slowKey`, `tokenP`)
    /// takes `delay` after counting itself in `started`.
    static func turnTakingKIS(delay: Duration, slowRevoke: Bool, slowKey: String? = nil, started: Started) async
        -> (url: String, server: TestServer)
    {
        let router = Router()
        router.post("/oauth2/tokenP") { request, _ in
            let appKey = try await Self.requestedAppKey(in: request)
            if appKey == slowKey { try await started.during(delay) }
            return try Self.tokenAnswer(for: appKey)
        }
        router.post("/oauth2/revokeP") { _, _ in
            if slowRevoke { try await started.during(delay) }
            return Self.revokedAnswer()
        }
        return await startStandInKIS(router)
    }

    /// The app key's lock alone let a disconnect (under the old key's lock, revoking at KIS) and a `token` call with a
    /// new key (under the new key's) run at once: the disconnect's deletion took the new token's row with the
    /// account, and the token stayed published — accepted by every gateway for up to 24 h, never revoked at KIS.
    /// With the account's lock the two take turns: the `token` call, second, connects the account afresh.
    @Test("DELETE and a key change at once take turns: the account ends connected with the new key, its token published and stored")
    func disconnectRacingAKeyChange() async throws {
        let revoking = Started()
        let kis = await Self.turnTakingKIS(delay: .milliseconds(1200), slowRevoke: true, started: revoking)
        try await stopping([kis.server]) {
            try await withBroker(config: { testConfig(simURL: kis.url, database: $1) }) { b in
                let jwt = try await b.jwt("u-turns")
                let old = try #require(try await b.post("/api/kis/token", accountBody(appKey("turns1")), jwt: jwt)
                    .json["token"] as? String)
                async let deleted = b.delete("/api/kis/account?environment=SANDBOX", jwt: jwt)
                // The DELETE holds its locks and waits for KIS's revokeP (1.2 s): the key changes then.
                try #require(await eventually(timeout: .seconds(10)) { revoking.value == 1 })
                try #require(revoking.finished == 0, "the revocation had ended: the two requests did not overlap")
                let changed = try await b.post("/api/kis/token", accountBody(appKey("turns2"), secret: "secret-2"), jwt: jwt)
                #expect(try await deleted.status == 204)
                #expect(changed.status == 200, "\(changed.text)")
                let new = try #require(changed.json["token"] as? String)
                #expect(new != old)
                #expect(try await b.get("/api/kis/account?environment=SANDBOX", jwt: jwt).status == 200,
                        "the new token is published, but its account was deleted")
                #expect(try await b.published(new)?.userID == "u-turns")
                let row = try await withRepository(b.database) { try await $0.token(sha256: TokenDirectory.sha256(of: new)) }
                #expect(row?.status == .active, "the published token has no ACTIVE row: \(String(describing: row?.status))")
                #expect(try await b.published(old) == nil)
                #expect(try await b.store.setMembers(TokenDirectory.userKey("u-turns", .sandbox))
                    == [TokenDirectory.sha256(of: new)])
            }
        }
    }

    /// A scheduled refresh under the old app key's lock, waiting for KIS, and a `token` call with a new key under the
    /// new key's lock: the refresh stored the old key back over the new one when KIS answered. With the account's
    /// lock the `token` call waits, then replaces the key and retires the refresh's token.
    @Test("a scheduled refresh and a key change at once take turns: the new key stays, the old key's tokens are retired")
    func scheduledRefreshRacingAKeyChange() async throws {
        let issuing = Started()
        let oldKey = appKey("sched1"), newKey = appKey("sched2")
        let kis = await Self.turnTakingKIS(delay: .milliseconds(1200), slowRevoke: false, slowKey: oldKey, started: issuing)
        try await stopping([kis.server]) {
            try await withBroker(config: { quietSchedulerConfig(simURL: kis.url, database: $1) }) { b in
                let jwt = try await b.jwt("u-sched")
                #expect(try await b.post("/api/kis/token", accountBody(oldKey), jwt: jwt).status == 200)
                #expect(issuing.value == 1)
                try await withRepository(b.database) { repository in
                    let listed = try #require(try await repository.account(userID: "u-sched", environment: .sandbox))
                    let keeper = makeKeeper(repository, store: b.store, keyring: b.keyring, kis: kis.url,
                                            clock: { b.clock.now() })
                    b.clock.advance(86400 - 1800)  // inside refresh_ahead_s, past the reuse window: due
                    async let refreshed = keeper.scheduledRefresh(listed)
                    try #require(await eventually(timeout: .seconds(10)) { issuing.value == 2 })
                    try #require(issuing.finished == 1, "the refresh's tokenP had ended: the two did not overlap")
                    let new = try await keeper.connect(
                        userID: "u-sched",
                        form: AccountForm(environment: .sandbox, appKey: newKey, appSecret: "secret-2",
                                          accountNumber: "12345678-01"))
                    #expect(try await refreshed == true)
                    let stored = try #require(try await keeper.account("u-sched", .sandbox))
                    #expect(stored.appKey == newKey, "the refresh stored the old app key back over the new one")
                    let active = try await repository.tokens(userID: "u-sched", environment: .sandbox)
                        .filter { $0.status == .active }.map(\.tokenSHA256)
                    #expect(active == [new.sha256])
                    #expect(try await b.store.setMembers(TokenDirectory.userKey("u-sched", .sandbox)) == [new.sha256])
                }
            }
        }
    }
}
