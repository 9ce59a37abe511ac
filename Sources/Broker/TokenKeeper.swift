import CoreMetrics
import Foundation
import KIS
import Logging
import NIOCore
import ServerKit
import Store
import Tokens

/// The `[broker]` timings the keeper decides by, in seconds.
struct KeeperSettings: Sendable {
    var refreshAhead: Int64
    var reuseWindow: Int64
    var refreshInterval: Int64
    /// How long the per-app-key issuance lock and the per-account lock live if their holder dies.
    var lockTTL: Duration
    /// How long a request waits for another copy's issuance for the same app key (or write of the same account).
    var lockWait: Duration
}

/// The account a scheduled refresh was for is no longer stored with the credentials it was listed with.
struct AccountChanged: Error {}

/// What a user submits to connect an account.
struct AccountForm: Sendable {
    var environment: KISEnvironment
    var appKey: String
    var appSecret: String
    var accountNumber: String
}

/// The token lifecycle: the one place kisgw asks KIS for tokens.
///
/// Rules (broker-api.md): a stored token that can serve is reused; issuance for one app key is serialised across
/// broker copies by a lock in the shared store, and re-checked after the lock is taken; what KIS returns is
/// written to the database first and then published (`store.md`).
final class TokenKeeper: Sendable {
    let repository: any BrokerRepository
    let vault: AccountVault
    let store: any SharedStore
    let keyring: SealKeyring
    let clients: [KISEnvironment: KISClient]
    let settings: KeeperSettings
    let metrics: BrokerMetrics
    let logger: Logger
    let clock: @Sendable () -> Date

    init(repository: any BrokerRepository, store: any SharedStore, keyring: SealKeyring,
         clients: [KISEnvironment: KISClient], settings: KeeperSettings, metrics: BrokerMetrics, logger: Logger,
         clock: @escaping @Sendable () -> Date) {
        self.repository = repository
        self.vault = AccountVault(keyring: keyring)
        self.store = store
        self.keyring = keyring
        self.clients = clients
        self.settings = settings
        self.metrics = metrics
        self.logger = logger
        self.clock = clock
    }

    var now: Int64 { Int64(clock().timeIntervalSince1970) }

    /// How long the rows of EXPIRED and REVOKED tokens are kept after the tokens' own expiry: 7 days.
    static let endedTokenRetention: Int64 = 7 * 86_400

    // MARK: - decisions

    /// Issuance economy: a stored token serves unless it is gone, expired or revoked, or inside `refresh_ahead_s`
    /// of expiry and past the reuse window (inside the window KIS would only return the same token).
    func canServe(_ t: BrokerToken, at now: Int64) -> Bool {
        guard t.status == .active, t.expiresAt > now else { return false }
        if t.expiresAt - now >= settings.refreshAhead { return true }
        return now - t.issuedAt < settings.reuseWindow
    }

    /// `POST /api/kis/token/refresh`: the current token while issued within the reuse window and not expiring.
    func refreshCanReuse(_ t: BrokerToken, at now: Int64) -> Bool {
        t.status == .active && now - t.issuedAt < settings.reuseWindow && t.expiresAt - now >= settings.refreshAhead
    }

    /// The scheduler's rule: refresh inside `refresh_ahead_s` of expiry once past the reuse window, or when the
    /// token would expire before the scheduler's next two passes whatever its age.
    func needsScheduledRefresh(_ t: BrokerToken, at now: Int64) -> Bool {
        guard t.status == .active else { return true }
        let remaining = t.expiresAt - now
        if remaining < 2 * settings.refreshInterval { return true }
        return remaining < settings.refreshAhead && now - t.issuedAt >= settings.reuseWindow
    }

    // MARK: - reading

    func account(_ userID: String, _ env: KISEnvironment) async throws -> Account? {
        guard let row = try await repository.account(userID: userID, environment: env) else { return nil }
        return try vault.open(row)
    }

    /// The newest ACTIVE token of an account, opened.
    func currentToken(_ userID: String, _ env: KISEnvironment) async throws -> BrokerToken? {
        guard let row = try await repository.tokens(userID: userID, environment: env).first(where: { $0.status == .active })
        else { return nil }
        return try vault.open(row)
    }

    // MARK: - routes

    /// `POST /api/kis/account/validate`: proves the key and secret at KIS by obtaining a token, which is kept
    /// (sealed, in the shared store) for the `token` call that follows — KIS allows one issuance a minute.
    func validate(userID: String, form: AccountForm) async throws {
        let now = self.now
        if let stored = try await account(userID, form.environment), stored.isActive, stored.appKey == form.appKey,
            secretsEqual(stored.appSecret, form.appSecret), let t = try await currentToken(userID, form.environment), t.expiresAt > now
        {
            return  // already connected with these credentials: KIS accepted them
        }
        // An account the scheduler switched off (KIS refused its key pair three times) proves nothing: KIS is asked.
        try await refuseIfAnotherUsersAppKey(form.appKey, form.appSecret, form.environment, userID: userID)
        if try await peekValidated(form) != nil { return }
        let lock = try await acquireIssueLock(form.environment, form.appKey)
        do {
            if try await peekValidated(form) == nil {
                // As in `issue`: the lock, possibly outlasted by the read above, is still this check's right before tokenP.
                guard try await store.renewLock(lock, ttl: settings.lockTTL) else {
                    throw Problem(.kisRateLimited, "another token request for this app key is in progress", retryAfter: 1)
                }
                let issued = try await issueAtKIS(form.environment, appKey: form.appKey, appSecret: form.appSecret)
                try await keepValidated(form, token: issued.accessToken, issuedAt: issuance(of: issued, now: now),
                                        expiresAt: Int64(issued.expiresAt.timeIntervalSince1970))
            }
        } catch {
            await release(lock)
            throw error
        }
        await release(lock)
    }

    /// `POST /api/kis/token`: stores the account and answers a token that can serve, obtaining one if needed.
    func connect(userID: String, form: AccountForm) async throws -> BrokerToken {
        let now = self.now
        let stored = try await account(userID, form.environment)
        let account = Account(
            userID: userID, environment: form.environment, appKey: form.appKey, appSecret: form.appSecret,
            accountNumber: form.accountNumber, isActive: true, createdAt: stored?.createdAt ?? now, updatedAt: now)
        if stored?.appKey != form.appKey {
            try await refuseIfAnotherUsersAppKey(form.appKey, form.appSecret, form.environment, userID: userID)
        }
        if let stored, stored.appKey == form.appKey, secretsEqual(stored.appSecret, form.appSecret) {
            // Nothing to store: the current token is the answer. (A changed account number, or an inactive account,
            // is stored by `issue`, under the locks, which reuses the token the same way.)
            if stored.accountNumber == form.accountNumber, stored.isActive,
                let t = try await currentToken(userID, form.environment), canServe(t, at: now), try await !isDead(t)
            {
                if try await publishedWhileActive(t, account: account) { return t }
            }
        }
        let issued = try await issue(for: account, adoptValidated: true) { [self] t, now in canServe(t, at: now) }
        // Another app key before: its tokens, already REVOKED and unpublished, are revoked at KIS too. Should KIS hand
        // one back meanwhile (the user connected that app key again at once, within its reuse window), a gateway
        // sees KIS refuse it, marks it dead, and the broker issues a new one.
        if let replaced = issued.replaced, !replaced.tokens.isEmpty {
            await revokeAtKIS(replaced.tokens, account: replaced.account)
        }
        return issued.token
    }

    /// An app key is one user's (per environment): KIS gives it one token at a time — the same one for 6 hours
    /// after issuing it — and a token's record names one user. Two users connecting one app key took each other's
    /// token (the second one's record replaced the first's, whose requests were then refused as another user's).
    /// The first to connect it keeps it. The accounts' keys are sealed (random nonces): the rows that may hold it
    /// are looked up by their app key fingerprint under each configured seal key (an index), with those stored
    /// without one, and only their app key is opened to compare.
    ///
    /// Checked before the issuance lock (a quick refusal, before KIS is asked) and again under it: two users
    /// connecting one app key at once both pass the first check, and the second to take the lock would otherwise
    /// store the first one's token (KIS hands it back) as their own.
    ///
    /// Only a caller who proves the key pair — `appSecret` is the secret stored with the other user's account
    /// (compared in constant time) — is told that the app key is connected to another user. Anyone else is answered
    /// what KIS answers a wrong secret for a key it knows (``wrongSecret``), without asking KIS: told the truth, any
    /// signed-in user could learn with a made-up secret which app keys are registered here. A stored secret that
    /// does not open proves nothing either way: the key stays its user's, with that same answer.
    private func refuseIfAnotherUsersAppKey(_ appKey: String, _ appSecret: String, _ environment: KISEnvironment,
                                            userID: String) async throws {
        let candidates = try await repository.accounts(
            environment: environment, appKeyFingerprints: vault.appKeyFingerprints(appKey, environment))
        for row in candidates where !row.userID.isSameUserID(userID) {
            guard (try? vault.openAppKey(row)) == appKey else { continue }
            guard let stored = try? vault.open(row), secretsEqual(stored.appSecret, appSecret) else {
                logger.notice("refused another user's app key with a secret that is not its own; KIS was not asked",
                              metadata: ["user": "\(userID)", "env": "\(environment.rawValue)"])
                throw Self.wrongSecret
            }
            throw Problem(.invalidParameter,
                          "appKey: this app key is connected to another user of this broker; KIS gives an app key one "
                          + "token at a time, so each user connects an app key of their own")
        }
    }

    /// The problem ``issueAtKIS(_:appKey:appSecret:)`` makes of KIS's refusal of a wrong secret for an app key it
    /// knows (`EGW00105`, kis-api.md), word for word.
    static let wrongSecret = Problem(.kisCredentialsRejected, "KIS refused the app key or secret", kisMsgCode: "EGW00105",
                                     kisMessage: KISMessage.texts["EGW00105"])

    /// `POST /api/kis/token/refresh`.
    func refresh(userID: String, environment: KISEnvironment, retried: Bool = false) async throws -> BrokerToken {
        guard let account = try await account(userID, environment) else {
            throw Problem(.accountNotFound, "no \(environment.rawValue) account is connected")
        }
        if let t = try await currentToken(userID, environment), refreshCanReuse(t, at: now) {
            // A gateway saw KIS refuse this token (EGW00123/EGW00121, e.g. after KIS maintenance): KIS would issue a
            // new one, so handing the same token back would only fail again.
            if (try? await TokenDirectory.deadReason(sha256: t.sha256, store: store)) == nil {
                if try await publishedWhileActive(t, account: account) { return t }
            } else {
                try await expireRefused(t)
            }
        }
        // From here KIS is asked for a token (unless another request obtained one meanwhile): one of the user's
        // refreshes that reach KIS.
        try await chargeRefreshToKIS(userID)
        var fresh = account
        fresh.isActive = true
        fresh.updatedAt = now
        do {
            // Only while the account is stored with these credentials: a disconnect that ran since it was read
            // above is not undone.
            return try await issue(for: fresh, adoptValidated: false, onlyIfStored: true) { [self] t, now in
                refreshCanReuse(t, at: now)
            }.token
        } catch is AccountChanged {
            // Disconnected meanwhile (404), or connected again with other credentials: refreshed as it is now.
            guard !retried, try await self.account(userID, environment) != nil else {
                throw Problem(.accountNotFound, "no \(environment.rawValue) account is connected")
            }
            return try await refresh(userID: userID, environment: environment, retried: true)
        }
    }

    /// A user's refreshes that ask KIS for a token: 10 in a row, then one every 6 s, counted in the store for every
    /// copy (as `validate` and `token` count account checks). A refresh that hands back the current token costs
    /// nothing; one that goes to KIS — the token refused or due, or KIS refusing the key pair or the minute between
    /// issuances (`EGW00133`), which every call asks again — does, so a client refreshing in a loop cannot make the
    /// broker ask KIS for tokens from its address without end.
    static let refreshesToKIS = RateLimit(rate: 1.0 / 6, burst: 10)

    private func chargeRefreshToKIS(_ userID: String) async throws {
        try await throttle(userID, "refreshes", limit: Self.refreshesToKIS, "too many token refreshes")
    }

    /// `rate_limited` (429, `Retry-After`, "`what` for this user") past `limit` for `userID`'s `kind` of request,
    /// counted in the shared store (so across broker copies).
    func throttle(_ userID: String, _ kind: String, limit: RateLimit, _ what: String) async throws {
        let key = "broker:\(kind):" + TokenDirectory.sha256(of: userID)
        if case .denied(let retryAfter) = try await store.rateLimit(key, limit: limit, cost: 1, maxWait: .zero) {
            throw Problem(.rateLimited, what + " for this user; try again later",
                          retryAfter: Problem.retryAfterSeconds(retryAfter))
        }
    }

    /// `DELETE /api/kis/account`: marks the tokens REVOKED, unpublishes them, revokes them at KIS, deletes the account
    /// and its tokens — all under the account's locks. Idempotent.
    ///
    /// Gateways stop accepting the tokens (the `revoked` events) before KIS is asked: revoked at KIS first, they were
    /// accepted until unpublished, each gateway spending a KIS call to learn they had ended; and a KIS slower than the
    /// locks' life failed the disconnect (504) with the tokens still ACTIVE and published. KIS is still asked under
    /// the locks, so a `token` call right after (which waits for them) cannot be handed back by KIS, within its reuse
    /// window, the token this disconnect is about to revoke. Once the tokens are REVOKED in the database they are
    /// revoked at KIS whatever fails after.
    ///
    /// The tokens found REVOKED already — an attempt before this one marked them and may have stopped before asking
    /// KIS (a crash, a PostgreSQL write that timed out but was committed) — are revoked at KIS once the locks are
    /// released, the account deleted or not (``revokeLeftAtKIS(_:account:)``): asked under the locks, a KIS slower than
    /// their life failed every DELETE tried again with 504.
    func disconnect(userID: String, environment: KISEnvironment, retried: Int = 0) async throws {
        guard let row = try await repository.account(userID: userID, environment: environment) else { return }
        // Under the account's lock and its app key's issuance lock: no other writer of this account (a `token` call
        // with another app key, a scheduled refresh) runs meanwhile. Not without them: an issuance still running would
        // store the account again after it was deleted. When the locks cannot be had (another request holds one past
        // `lockWait`, or the store fails), nothing is deleted and the caller is told to try again (429 or 503, with
        // `Retry-After`). A row whose app key cannot be opened is deleted under the account's lock alone.
        let appKey = (try? vault.open(row))?.appKey
        // The tokens an attempt before left REVOKED, once read under the locks: revoked at KIS after them, however
        // this attempt ends — a deletion that timed out on PostgreSQL but was committed answers an error, and the
        // DELETE tried again then finds no account (nor its rows) to go by.
        var left: (account: Account, tokens: [StoredToken])?
        let outcome: Result<Bool, any Error>
        do {
            outcome = .success(try await withAccountLocks(userID, environment, appKey) { locks in
                // Read again under the locks: a `token` call may have replaced the app key (and its lock) before.
                guard let current = try await repository.account(userID: userID, environment: environment) else { return false }
                guard (try? vault.open(current))?.appKey == appKey else { return true }
                try await disconnect(current, userID: userID, environment: environment, locks: locks, leftRevoked: &left)
                return false
            })
        } catch {
            outcome = .failure(error)
        }
        if let left { await revokeLeftAtKIS(left.tokens, account: left.account) }
        guard try outcome.get() else { return }
        guard retried < 2 else {
            throw Problem(.kisRateLimited, "the account's app key keeps changing while it is being disconnected; try again",
                          retryAfter: 1)
        }
        try await disconnect(userID: userID, environment: environment, retried: retried + 1)
    }

    /// Marks, unpublishes, revokes at KIS and deletes. `leftRevoked` is set, as soon as the rows are read, to the
    /// account and the unexpired tokens found REVOKED already (an attempt before marked them), which the caller revokes
    /// at KIS once the locks are released, whatever fails here after.
    private func disconnect(_ row: StoredAccount, userID: String, environment: KISEnvironment, locks: AccountLocks,
                            leftRevoked: inout (account: Account, tokens: [StoredToken])?) async throws {
        let now = self.now
        let rows = try await repository.tokens(userID: userID, environment: environment)
        let live = rows.filter { $0.expiresAt > now && $0.status != .expired }
        let active = live.filter { $0.status == .active }
        let account = try? vault.open(row)
        let revokedBefore = live.filter { $0.status == .revoked }
        if let account, !revokedBefore.isEmpty { leftRevoked = (account, revokedBefore) }
        if let account { try await store.delete(validatedKey(environment, account.appKey)) }
        // The tokens REVOKED and the account inactive in one write: a disconnect that fails after it (the store,
        // KIS outlasting the locks, the deletion) leaves an account the scheduler passes over until its user connects
        // again, asks for a refresh or tries the DELETE again — not one it refreshed once the REVOKED rows were pruned,
        // 7 days after their expiry, publishing a new token for an account its user had tried to disconnect.
        try await repository.deactivateAccount(userID: userID, environment: environment,
                                               revoking: live.map(\.tokenSHA256), updatedAt: now)
        // REVOKED now: revoked at KIS whether or not unpublishing them succeeds.
        let unpublished: Result<Void, any Error>
        do { try await unpublish(live); unpublished = .success(()) } catch { unpublished = .failure(error) }
        if let account { await revokeAtKIS(active, account: account) }
        try unpublished.get()
        // The revocations at KIS may have taken long (one call a token): the locks must still be this disconnect's
        // before it deletes (another writer may have stored the account anew). If not, the tokens are revoked and
        // unpublished all the same, and a DELETE tried again deletes the account.
        if try await !renew(locks) {
            throw Problem(.upstreamTimeout,
                          "KIS took longer to revoke the tokens than the account's locks last; they are revoked, try again to delete the account")
        }
        try await repository.deleteAccount(userID: userID, environment: environment)
    }

    /// Revokes at KIS, once a disconnect has released the account's locks, the unexpired tokens it found REVOKED
    /// under them: an attempt before marked them and may have stopped before asking KIS, and they stay valid there until
    /// revoked. Best effort, within `lockWait` (each call within KIS's timeout), without the locks: so a KIS slower than
    /// their life does not fail the DELETE again. Passed over: a token KIS was seen to revoke (``revokedAtKISKey(_:)``:
    /// the earlier attempt got that far), and one stored ACTIVE again (a `token` call since, which KIS handed it back
    /// to as current: it is that account's token now).
    private func revokeLeftAtKIS(_ rows: [StoredToken], account: Account) async {
        let deadline = ContinuousClock.now + settings.lockWait
        var due: [StoredToken] = []
        for r in rows {
            if (try? await store.get(revokedAtKISKey(r.tokenSHA256))) != nil { continue }
            if let stored = try? await repository.token(sha256: r.tokenSHA256), stored.status == .active { continue }
            due.append(r)
        }
        guard !due.isEmpty else { return }
        logger.info("revoking at KIS the tokens an earlier disconnect left revoked here",
                    metadata: ["user": "\(account.userID)", "env": "\(account.environment.rawValue)", "tokens": "\(due.count)"])
        await revokeAtKIS(due, account: account, until: deadline)
    }

    /// Where a token KIS was seen to revoke (or to know no more) is noted, until its expiry: a disconnect tried again
    /// does not ask KIS again for it.
    private func revokedAtKISKey(_ sha256: String) -> String { "broker:revoked-at-kis:" + sha256 }

    // MARK: - the scheduler's work

    /// Refreshes one account if its token is due; returns whether it obtained a new token.
    func scheduledRefresh(_ row: StoredAccount) async throws -> Bool {
        // A disconnect, even one that failed after its first write, marked the account inactive; one since the pass
        // listed it is seen under the account's locks (`issue(onlyIfActive:)`). Decided by that flag, not by the
        // order of the rows (newest `issued_at` first): "the newest REVOKED, none ACTIVE" also held for an account
        // whose new app key's token was issued before the replaced key's last ones and ended early (marked dead →
        // EXPIRED, or expired while KIS was down), which was then never refreshed again.
        guard row.isActive else { return false }
        let rows = try await repository.tokens(userID: row.userID, environment: row.environment)
        if !rows.isEmpty, rows.allSatisfy({ $0.status == .revoked }) {
            // Only a disconnect leaves every row REVOKED, and one by a broker from before disconnects marked the
            // account inactive left it active: it is marked inactive now, before the rows are pruned.
            try await deactivateIfAllRevoked(row)
            return false
        }
        let now = self.now
        if let current = rows.first(where: { $0.status == .active }), !needsScheduledRefresh(try vault.open(current), at: now) {
            return false
        }
        var account = try vault.open(row)
        account.updatedAt = now
        do {
            _ = try await issue(for: account, adoptValidated: false, onlyIfStored: true, onlyIfActive: true) {
                [self] t, now in !needsScheduledRefresh(t, at: now)
            }
        } catch is AccountChanged {
            return false  // disconnected (or connected again with other credentials) since the pass listed it
        }
        return true
    }

    /// Marks the account inactive if, under its locks, it is still stored with `row`'s key pair, active, and every
    /// token row it has is REVOKED: a disconnect left half done by a broker from before disconnects marked the account
    /// inactive (`scheduledRefresh`).
    private func deactivateIfAllRevoked(_ row: StoredAccount) async throws {
        let account = try vault.open(row)
        try await withAccountLocks(account.userID, account.environment, account.appKey) { _ in
            guard let stored = try await self.account(account.userID, account.environment), stored.isActive,
                stored.sameKeyPair(as: account)
            else { return }
            let rows = try await self.repository.tokens(userID: account.userID, environment: account.environment)
            guard !rows.isEmpty, rows.allSatisfy({ $0.status == .revoked }) else { return }
            try await self.repository.setAccountActive(userID: row.userID, environment: row.environment, isActive: false,
                                                       updatedAt: self.now)
            self.logger.notice("an account a disconnect left half done is marked inactive; the scheduler leaves it alone",
                               metadata: ["user": "\(row.userID)", "env": "\(row.environment.rawValue)"])
        }
    }

    /// Marks the account inactive — the scheduler stops refreshing it until its user connects again or asks for a
    /// refresh — if it is still stored with `row`'s credentials, under the account's lock and its app key's (a user
    /// who connected again with another key pair meanwhile keeps an active account). Returns whether it did.
    func deactivate(_ row: StoredAccount) async throws -> Bool {
        let account = try vault.open(row)
        return try await withAccountLocks(account.userID, account.environment, account.appKey) { _ in
            guard let stored = try await self.account(account.userID, account.environment), stored.sameKeyPair(as: account)
            else { return false }
            try await self.repository.setAccountActive(userID: row.userID, environment: row.environment, isActive: false,
                                                       updatedAt: self.now)
            return true
        }
    }

    /// Puts back into the store every live token it lost, marks expired ones EXPIRED (and takes them out of their
    /// user's set, which holds live tokens only), and makes sure revoked ones are gone from it. Returns how many
    /// tokens it republished.
    ///
    /// A row that cannot be opened (its seal key is gone, or it was tampered with) is reported and passed over: the
    /// rows after it are still republished, and the expired and revoked ones still handled. A token is republished
    /// under the account's lock and its app key's, and only while its row is still ACTIVE and the account still has
    /// the key pair it was read with: `disconnect` holds those locks from marking the account's tokens REVOKED until
    /// it has deleted them, so a pass that listed a token before the disconnect cannot publish it again after the
    /// disconnect unpublished it (nor with a key pair the user has since replaced).
    @discardableResult
    func reconcile() async throws -> Int {
        let started = ContinuousClock.now
        defer { metrics.reconciled(in: ContinuousClock.now - started) }
        let now = self.now
        // Keyed by bytes, not by `String` (whose equality and hashing hold for canonically equivalent text): two
        // users whose ids only look alike are two users.
        var expiredByUser: [[UInt8]: [String]] = [:]  // user set key → shas
        func expire(_ row: StoredToken) {
            expiredByUser[Array(TokenDirectory.userKey(row.userID, row.environment).utf8), default: []].append(row.tokenSHA256)
        }
        // The live rows by account, in the order the database gave them: each account's rows are handled in turn by
        // one task (they share its locks), the accounts `reconcileWidth` at a time — a pass is a few store round
        // trips per token, which one at a time took 1.3 s for 10,000 tokens with nothing missing and 19 s to
        // republish them all (bench/broker-reconcile).
        var accountRows: [[StoredToken]] = [], accountIndex: [[UInt8]: Int] = [:]
        for row in try await repository.tokens(status: .active) {
            if row.expiresAt <= now {
                expire(row)
                continue
            }
            let key = Array((row.userID + "|" + row.environment.rawValue).utf8)
            if let i = accountIndex[key] { accountRows[i].append(row) } else {
                accountIndex[key] = accountRows.count
                accountRows.append([row])
            }
        }
        var outcome = ReconcileOutcome()
        try await withThrowingTaskGroup(of: ReconcileOutcome.self) { group in
            var next = 0
            while next < min(Self.reconcileWidth, accountRows.count) {
                let rows = accountRows[next]
                group.addTask { try await self.reconcileAccount(rows) }
                next += 1
            }
            while let done = try await group.next() {
                outcome.add(done)
                if next < accountRows.count {
                    let rows = accountRows[next]
                    group.addTask { try await self.reconcileAccount(rows) }
                    next += 1
                }
            }
        }
        for row in outcome.refused { expire(row) }
        let (republished, unopenable, postponed) = (outcome.republished, outcome.unopenable, outcome.postponed)
        if unopenable > 0 {
            logger.error(
                "the reconciler cannot open some stored rows (their seal key is gone, or they were altered); their tokens are not republished",
                metadata: ["rows": "\(unopenable)"])
        }
        if postponed > 0 {
            logger.notice("tokens left to the next reconciliation: an issuance held their account's or app key's lock",
                          metadata: ["tokens": "\(postponed)"])
        }
        let expired = expiredByUser.values.flatMap { $0 }
        if !expired.isEmpty {
            try await repository.setStatus(.expired, tokenSHA256s: expired, updatedAt: now)
            metrics.expired.increment(by: Int64(expired.count))
            for (key, shas) in expiredByUser {
                _ = try await store.setRemove(String(decoding: key, as: UTF8.self), members: shas)
            }
        }
        for row in try await repository.tokens(status: .revoked) where row.expiresAt > now {
            if try await store.get(TokenDirectory.recordKey(row.tokenSHA256)) != nil {
                try await TokenDirectory.unpublish(sha256: row.tokenSHA256, userID: row.userID,
                                                   environment: row.environment, store: store)
            }
        }
        // Ended tokens are kept a while (what was revoked or refused, and when), then go: every account gained a row a
        // day for ever, and every call and pass reads all of an account's rows (this loop, all REVOKED ones).
        let pruned = try await repository.deleteEndedTokens(expiredBefore: now - Self.endedTokenRetention)
        if pruned > 0 { logger.info("deleted ended tokens", metadata: ["tokens": "\(pruned)"]) }
        if republished > 0 {
            metrics.republished.increment(by: Int64(republished))
            logger.notice("republished tokens missing from the shared store", metadata: ["tokens": "\(republished)"])
        }
        return republished
    }

    /// How many accounts a reconciliation handles at once.
    static let reconcileWidth = 16

    /// What a reconciliation did with some accounts' live rows.
    struct ReconcileOutcome: Sendable {
        var republished = 0, unopenable = 0, postponed = 0
        /// Rows of tokens a gateway saw KIS refuse (`dead:`): to be marked EXPIRED.
        var refused: [StoredToken] = []

        mutating func add(_ other: ReconcileOutcome) {
            republished += other.republished
            unopenable += other.unopenable
            postponed += other.postponed
            refused += other.refused
        }
    }

    /// Republishes the live ACTIVE `rows` of one account (one user and environment) that the store lost, in turn.
    private func reconcileAccount(_ rows: [StoredToken]) async throws -> ReconcileOutcome {
        var outcome = ReconcileOutcome()
        var account: Account??  // read once, when a row needs it
        for row in rows {
            if try await isPublished(row.tokenSHA256, userID: row.userID, environment: row.environment) { continue }
            // KIS refused it (a gateway marked it dead): expire it rather than publish it again.
            if try await TokenDirectory.deadReason(sha256: row.tokenSHA256, store: store) != nil {
                outcome.refused.append(row)
                continue
            }
            if account == nil {
                let stored = try await repository.account(userID: row.userID, environment: row.environment)
                let opened = stored.flatMap { try? vault.open($0) }
                if stored != nil, opened == nil { outcome.unopenable += 1 }
                account = .some(opened)
            }
            guard let account = account ?? nil else { continue }
            guard let token = try? vault.open(row) else {
                outcome.unopenable += 1
                continue
            }
            let published: Bool
            do {
                published = try await withAccountLocks(row.userID, row.environment, account.appKey) { _ in
                    guard let stored = try await self.account(row.userID, row.environment), stored.sameKeyPair(as: account)
                    else { return false }
                    let current = try await self.repository.tokens(userID: row.userID, environment: row.environment)
                    guard current.contains(where: { $0.tokenSHA256 == row.tokenSHA256 && $0.status == .active })
                    else { return false }
                    // An issuance that held the lock may have published it meanwhile (the row was saved first): no
                    // second `issued` event for it.
                    if try await self.isPublished(row.tokenSHA256, userID: row.userID, environment: row.environment) {
                        return false
                    }
                    // A gateway may have seen KIS refuse it since the mark was read above: not published again.
                    if try await TokenDirectory.deadReason(sha256: row.tokenSHA256, store: self.store) != nil { return false }
                    try await self.publish(token, account: account)
                    return true
                }
            } catch let problem as Problem where problem.code == .kisRateLimited {
                outcome.postponed += 1  // an issuance for this account or app key holds a lock: the next pass sees its outcome
                continue
            }
            if published { outcome.republished += 1 }
        }
        return outcome
    }

    // MARK: - issuance

    /// What ``issue(for:adoptValidated:onlyIfStored:reusable:)`` obtained, and the tokens of the app key it replaced.
    private struct Issuance {
        var token: BrokerToken
        /// The account as it was stored with another app key, and its tokens that were ACTIVE: REVOKED and
        /// unpublished under the locks; the caller revokes them at KIS.
        var replaced: (account: Account, tokens: [StoredToken])?
    }

    /// Obtains a token for `account` under the account's lock and the app key's — unless, once they are held, a
    /// stored token satisfies `reusable` (another copy just obtained one) — saves account and token, publishes,
    /// releases.
    /// - Parameter onlyIfStored: the scheduler's refresh: issue only while the account is still stored with these
    ///   credentials (else ``AccountChanged``), so a pass never brings back an account deleted since it listed it.
    /// - Parameter onlyIfActive: the scheduler's too: and only while it is still active (else ``AccountChanged``) — a
    ///   disconnect since the pass listed it, even one that failed after its first write, is not undone.
    ///
    /// Everything from the check to the publication happens under those locks, which
    /// ``disconnect(userID:environment:retried:)`` takes too: a token is never published after its account was
    /// deleted, and two writers with different app keys (a key change, a disconnect, a scheduled refresh) take turns.
    private func issue(
        for account: Account, adoptValidated: Bool, onlyIfStored: Bool = false, onlyIfActive: Bool = false,
        reusable: @Sendable (BrokerToken, Int64) -> Bool
    ) async throws -> Issuance {
        let env = account.environment
        return try await withAccountLocks(account.userID, env, account.appKey) { locks in
            let now = self.now
            var account = account
            let stored = try await self.account(account.userID, env)
            let sameCredentials = stored?.sameKeyPair(as: account) ?? false
            if onlyIfStored && !sameCredentials { throw AccountChanged() }
            if onlyIfActive && stored?.isActive != true { throw AccountChanged() }
            // Created when first stored, as it is now (a disconnect may have deleted it since the caller read it).
            account.createdAt = stored?.createdAt ?? now
            if let stored, sameCredentials, !adoptValidated {
                // A refresh (the user's or the scheduler's) keeps the account as it is stored now, not as it was
                // read before the locks: a `token` call may have changed the account number meanwhile.
                account.accountNumber = stored.accountNumber
            }
            if stored?.appKey != account.appKey {
                try await refuseIfAnotherUsersAppKey(account.appKey, account.appSecret, env, userID: account.userID)
            }
            // Another request (or copy) may have stored a token for these credentials while this one waited.
            if let stored, sameCredentials, let t = try await currentToken(account.userID, env), reusable(t, now),
                try await !isDead(t)
            {
                if stored.accountNumber != account.accountNumber || !stored.isActive {
                    var updated = account
                    updated.createdAt = stored.createdAt
                    try await repository.saveAccount(try vault.seal(updated), token: nil)
                }
                try await ensurePublished(t, account: account)
                return Issuance(token: t)
            }
            // Connected before with another app key: its tokens, read here so that none stored meanwhile is missed.
            var replaced: (account: Account, tokens: [StoredToken])?
            if let stored, stored.appKey != account.appKey {
                replaced = (stored, try await repository.tokens(userID: account.userID, environment: env)
                    .filter { $0.status == .active })
            }
            var obtained: BrokerToken?
            var adopted = false
            if adoptValidated, let v = try await peekValidated(
                AccountForm(environment: env, appKey: account.appKey, appSecret: account.appSecret, accountNumber: ""))
            {
                obtained = BrokerToken(userID: account.userID, environment: env, accessToken: v.access_token,
                                       issuedAt: v.issued_at, expiresAt: v.expires_at)
                adopted = true
            }
            if obtained == nil {
                // The locks were renewed when taken, and the reads since (each up to 5 s on PostgreSQL) may have
                // outlasted them: another copy may hold them now and be asking KIS too (two issuances within the
                // minute: EGW00133). Renewed again right before tokenP, and given up if lost.
                guard try await self.renew(locks) else {
                    throw Problem(.kisRateLimited, "another request for this account is in progress", retryAfter: 1)
                }
                let issued = try await issueAtKIS(env, appKey: account.appKey, appSecret: account.appSecret)
                obtained = BrokerToken(userID: account.userID, environment: env, accessToken: issued.accessToken,
                                       issuedAt: issuance(of: issued, now: now),
                                       expiresAt: Int64(issued.expiresAt.timeIntervalSince1970))
            }
            var token = obtained!
            // A token a gateway saw KIS refuse (`dead:`) that KIS now hands back as current (EGW00121/EGW00122 can be
            // passing): KIS's word now stands, or every later `token`/`refresh` would expire it and ask KIS again —
            // an issuance (and a notice to the user) a minute, for the mark's 24 h.
            if (try? await TokenDirectory.deadReason(sha256: token.sha256, store: self.store)) != nil {
                _ = try? await self.store.delete(TokenDirectory.deadKey(token.sha256))
                self.logger.notice("KIS handed back a token a gateway had seen it refuse; it is current again",
                                   metadata: ["env": "\(env.rawValue)"])
            }
            // KIS answers the same token again within its reuse window (to tokenP here, or to validate's): keep when
            // it was first issued, which the reuse window counts from, and the expiry KIS gave then.
            if let same = try await repository.token(sha256: token.sha256), same.userID.isSameUserID(account.userID) {
                token.issuedAt = min(token.issuedAt, same.issuedAt)
                token.expiresAt = min(token.expiresAt, same.expiresAt)
            }
            // The locks live `lockTTL` (their holder may die); a slow database or KIS can outlast them, and a disconnect
            // may then have deleted the account: nothing is stored unless both are still this issuance's.
            guard try await self.renew(locks) else {
                throw Problem(.upstreamTimeout,
                              "the token request took longer than its account's locks last; nothing was stored, try again")
            }
            // The replaced app key's tokens leave under the locks (only KIS's revocation, slow, is left to the
            // caller): a `token` call with that key again, right after, must not find them ACTIVE and retire its own
            // token with them. REVOKED in the transaction that stores the new key: stored apart, a failure between
            // the two left them ACTIVE and published beside the new key's (and the reconciler, which seals a row with
            // its account's key pair, would republish them with the new one). Should unpublishing fail, the
            // reconciler finishes it from the REVOKED rows, and publishes the new token, saved ACTIVE.
            let old = replaced?.tokens.filter { $0.tokenSHA256 != token.sha256 } ?? []
            try await repository.saveAccount(try vault.seal(account), token: try vault.seal(token, updatedAt: now),
                                             revoking: old.map(\.tokenSHA256))
            if let r = replaced {
                try await unpublish(old)
                replaced = (r.account, old)
            }
            try await publish(token, account: account)
            // Only once it is stored: a request that fails before keeps the validated token for its retry (KIS
            // would refuse another issuance within the minute).
            if adopted { _ = try? await store.delete(validatedKey(env, account.appKey)) }
            return Issuance(token: token, replaced: replaced)
        }
    }

    /// When KIS issued `issued`, which the reuse window counts from: now, unless KIS's answer dates it earlier —
    /// a token handed back within KIS's reuse window whose `expires_in` says the full life rather than the seconds
    /// left (kis-api.md §2.1 leaves open which KIS sends). For a token the broker has a row of, the row's issuance
    /// counts anyway (`issue`); this is for one issued outside the broker, such as by the user's own script. Never
    /// later than now, whatever KIS's clock says.
    private func issuance(of issued: KISIssuedToken, now: Int64) -> Int64 {
        guard let at = issued.issuedAt else { return now }
        return min(now, Int64(at.timeIntervalSince1970.rounded(.down)))
    }

    /// One `tokenP` call, counted, with KIS's refusals as the broker's problems.
    private func issueAtKIS(_ env: KISEnvironment, appKey: String, appSecret: String) async throws -> KISIssuedToken {
        guard let client = clients[env] else { throw Problem(.internalError, "no KIS endpoint for \(env.rawValue)") }
        do {
            let issued = try await metrics.timingKIS(.tokenP) { try await client.issueToken(appKey: appKey, appSecret: appSecret) }
            metrics.issued(env)
            try? await store.set(issuedAtKey(env, appKey), to: ByteBuffer(string: String(now)), ttl: .seconds(60))
            logger.info("KIS issued a token", metadata: ["env": "\(env.rawValue)"])
            return issued
        } catch let e as KISClientError {
            metrics.issuanceFailed(reason: e.kind.description)
            switch e.kind {
            case .credentialsRejected:
                throw Problem(.kisCredentialsRejected, "KIS refused the app key or secret", kisMsgCode: e.msgCode,
                              kisMessage: e.kisMessage)
            case .issuanceTooFrequent:
                var wait: Int64 = 60
                if let b = try? await store.get(issuedAtKey(env, appKey)), let at = Int64(String(buffer: b)) {
                    wait = max(1, 60 - (now - at))
                }
                throw Problem(.kisRateLimited, "KIS allows one token issuance a minute per app key; try again later",
                              retryAfter: Int(wait), kisMsgCode: e.msgCode, kisMessage: e.kisMessage)
            case .rateLimited:
                // KIS's per-second limit (EGW00201) at tokenP: a moment's wait, not a failure of KIS.
                throw Problem(.kisRateLimited, "KIS refused the token request as too frequent; try again in a moment",
                              retryAfter: 1, kisMsgCode: e.msgCode, kisMessage: e.kisMessage)
            case .timeout:
                throw Problem(.upstreamTimeout, "KIS did not answer the token request in time")
            default:
                throw Problem(.upstreamError, "KIS did not issue a token", kisMsgCode: e.msgCode, kisMessage: e.kisMessage)
            }
        }
    }

    /// The app key's issuance lock: one `tokenP` at a time per app key (KIS issues one a minute), across copies.
    private func issueLockKey(_ env: KISEnvironment, _ appKey: String) -> String {
        "lock:kis-issue:\(env.rawValue):\(TokenDirectory.sha256(of: appKey))"
    }

    /// The account's lock: one writer at a time per user and environment, across copies, whatever app key each one
    /// writes — a `token` call changing the app key, a disconnect, a scheduled refresh, a reconciliation.
    func accountLockKey(_ userID: String, _ env: KISEnvironment) -> String {
        "lock:kis-account:\(env.rawValue):\(TokenDirectory.sha256(of: userID))"
    }

    private func acquireIssueLock(_ env: KISEnvironment, _ appKey: String,
                                  until deadline: ContinuousClock.Instant? = nil) async throws -> StoreLock {
        try await acquireLock(issueLockKey(env, appKey), until: deadline ?? ContinuousClock.now + settings.lockWait,
                              busy: "another token request for this app key is in progress")
    }

    private func acquireLock(_ key: String, until deadline: ContinuousClock.Instant, busy: String) async throws -> StoreLock {
        var delay = Duration.milliseconds(20)
        while true {
            if let lock = try await store.acquireLock(key, ttl: settings.lockTTL) { return lock }
            guard ContinuousClock.now < deadline else { throw Problem(.kisRateLimited, busy, retryAfter: 1) }
            try await Task.sleep(for: delay)
            delay = min(delay * 2, .milliseconds(250))
        }
    }

    /// What a writer of an account holds: the account's lock, then (when its app key is known) the app key's.
    struct AccountLocks: Sendable {
        var account: StoreLock
        var appKey: StoreLock?
    }

    /// Runs `body` holding the account's lock and then `appKey`'s issuance lock — always in that order, so two
    /// writers never wait for each other — released however `body` ends. Both are waited for within `lockWait`.
    ///
    /// The app key's lock alone left an account open to two writers with different app keys: a disconnect (under the
    /// old key's lock, revoking at KIS) and a `token` call with a new key (under the new key's) both went ahead, and
    /// the disconnect's deletion removed the new token's row while the token stayed published, unrevoked; a
    /// scheduled refresh under the old key could likewise store the old key back over the new one.
    private func withAccountLocks<T>(_ userID: String, _ env: KISEnvironment, _ appKey: String?,
                                     _ body: (AccountLocks) async throws -> T) async throws -> T {
        let deadline = ContinuousClock.now + settings.lockWait
        let account = try await acquireLock(accountLockKey(userID, env), until: deadline,
                                            busy: "another request for this account is in progress")
        var locks = AccountLocks(account: account, appKey: nil)
        do {
            if let appKey {
                locks.appKey = try await acquireIssueLock(env, appKey, until: deadline)
                // The wait for the app key's lock used up some of the account lock's life: both start afresh (and
                // a lock that expired meanwhile, which another writer may hold now, ends this one).
                guard try await renew(locks) else {
                    throw Problem(.kisRateLimited, "another request for this account is in progress", retryAfter: 1)
                }
            }
            let result = try await body(locks)
            await release(locks)
            return result
        } catch {
            await release(locks)
            throw error
        }
    }

    /// Renews both locks for another `lockTTL`; false when either is no longer this holder's.
    private func renew(_ locks: AccountLocks) async throws -> Bool {
        if let key = locks.appKey, try await !store.renewLock(key, ttl: settings.lockTTL) { return false }
        return try await store.renewLock(locks.account, ttl: settings.lockTTL)
    }

    private func release(_ locks: AccountLocks) async {
        if let key = locks.appKey { await release(key) }
        await release(locks.account)
    }

    private func release(_ lock: StoreLock) async {
        do { try await store.releaseLock(lock) } catch {
            logger.warning("could not release a lock; it expires by itself", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - publishing

    func publish(_ token: BrokerToken, account: Account) async throws {
        try await TokenDirectory.publish(
            SealedCredentials(access_token: token.accessToken, app_key: account.appKey, app_secret: account.appSecret),
            userID: token.userID, environment: token.environment,
            issuedAt: Date(timeIntervalSince1970: TimeInterval(token.issuedAt)),
            expiresAt: Date(timeIntervalSince1970: TimeInterval(token.expiresAt)), store: store, keyring: keyring,
            now: clock())
    }

    /// Whether the token is published as this broker would publish it now: its record, sealed with the current seal
    /// key, and its user's set member. A record sealed with another key (before a rotation) counts as not published,
    /// so every path that publishes a token missing from the store (the reconciler, a refresh handing the token
    /// back) seals it again with the current key — gateways given only the new key then open it, and the old key
    /// can go once a reconciliation has run (`Sources/Broker/README.md`). Unreadable records count as not published.
    func isPublished(_ sha: String, userID: String, environment: KISEnvironment) async throws -> Bool {
        let kid: String?
        do { kid = try await TokenDirectory.sealKeyID(sha256: sha, store: store) } catch where error.code == .invalidRecord {
            kid = nil
        }
        guard kid == keyring.current else { return false }
        return try await store.setMembers(TokenDirectory.userKey(userID, environment)).contains(sha)
    }

    /// Whether a gateway saw KIS refuse the token before its stated expiry (`dead:{sha256}`); such a token is
    /// marked EXPIRED here so that the next step issues a new one.
    private func isDead(_ token: BrokerToken) async throws -> Bool {
        guard (try? await TokenDirectory.deadReason(sha256: token.sha256, store: store)) != nil else { return false }
        try await expireRefused(token)
        return true
    }

    /// Marks a token KIS refused EXPIRED and unpublishes it (its record, its user's set member, a `revoked` event):
    /// the gateway that saw KIS refuse it unpublished it too, but a gateway's unpublish that failed after its `dead:`
    /// mark would leave the record accepted by every gateway until each learned the same from KIS.
    private func expireRefused(_ token: BrokerToken) async throws {
        try await repository.setStatus(.expired, tokenSHA256s: [token.sha256], updatedAt: now)
        try await TokenDirectory.unpublish(sha256: token.sha256, userID: token.userID, environment: token.environment,
                                           store: store)
    }

    /// Publishes `token` unless it is; for a caller holding the account's locks.
    private func ensurePublished(_ token: BrokerToken, account: Account) async throws {
        if try await !isPublished(token.sha256, userID: token.userID, environment: token.environment) {
            try await publish(token, account: account)
        }
    }

    /// ``ensurePublished(_:account:)`` for a caller without the locks: publishing is done under them, and only while
    /// the token's row is still ACTIVE — a disconnect that unpublished it meanwhile (it marks the rows REVOKED and
    /// deletes them under the locks) is not undone, nor a gateway's `dead:` mark set meanwhile. False when the row is no
    /// longer ACTIVE (disconnected, or expired by another request) or the token is dead: the caller goes on as if there
    /// were no token to hand back.
    private func publishedWhileActive(_ token: BrokerToken, account: Account) async throws -> Bool {
        if try await isPublished(token.sha256, userID: token.userID, environment: token.environment) { return true }
        return try await withAccountLocks(token.userID, token.environment, account.appKey) { _ in
            guard let row = try await repository.token(sha256: token.sha256), row.status == .active,
                row.userID.isSameUserID(token.userID)
            else { return false }
            // A gateway may have seen KIS refuse it (and unpublished it) since the caller looked, before the locks:
            // expired, not published again.
            if try await isDead(token) { return false }
            try await ensurePublished(token, account: account)
            return true
        }
    }

    /// Takes `rows`, REVOKED in the database, out of the shared store: records, user set, a `revoked` event each.
    private func unpublish(_ rows: [StoredToken]) async throws {
        for r in rows {
            try await TokenDirectory.unpublish(sha256: r.tokenSHA256, userID: r.userID, environment: r.environment,
                                               store: store)
        }
    }

    /// Revokes `rows` at KIS with `account`'s key pair, one call a token, best effort: a failure is counted and
    /// logged, and the caller unpublishes them all the same (a disconnect, a replaced app key). KIS answering that a
    /// token is unknown, revoked or expired (`EGW00121`–`EGW00123`: revoked before) is done, not a failure. Each token
    /// done is noted (``revokedAtKISKey(_:)``) until its expiry. No call begins after `deadline`.
    private func revokeAtKIS(_ rows: [StoredToken], account: Account, until deadline: ContinuousClock.Instant? = nil) async {
        guard let client = clients[account.environment] else { return }
        for r in rows {
            if let deadline, ContinuousClock.now >= deadline {
                metrics.revokeFailures.increment()
                logger.warning("a token was not revoked at KIS: the disconnect's time to revoke ran out", metadata: [
                    "user": "\(account.userID)", "env": "\(account.environment.rawValue)",
                ])
                continue
            }
            guard let t = try? vault.open(r) else { continue }
            do {
                try await metrics.timingKIS(.revokeP) {
                    try await client.revokeToken(appKey: account.appKey, appSecret: account.appSecret, token: t.accessToken)
                }
                await noteRevokedAtKIS(r)
            } catch let e as KISClientError where e.kind == .tokenInvalid || e.kind == .tokenExpired {
                logger.debug("KIS no longer knows a token being revoked; nothing to revoke", metadata: [
                    "user": "\(account.userID)", "env": "\(account.environment.rawValue)", "msg_cd": "\(e.msgCode ?? "")",
                ])
                await noteRevokedAtKIS(r)
            } catch {
                metrics.revokeFailures.increment()
                logger.warning("KIS did not revoke a token; it is unpublished all the same", metadata: [
                    "user": "\(account.userID)", "env": "\(account.environment.rawValue)", "error": "\(error)",
                ])
            }
        }
    }

    private func noteRevokedAtKIS(_ row: StoredToken) async {
        let ttl = row.expiresAt - now
        guard ttl > 0 else { return }
        do { try await store.set(revokedAtKISKey(row.tokenSHA256), to: ByteBuffer(string: "1"), ttl: .seconds(ttl)) } catch {
            logger.warning("could not note a token revoked at KIS; a disconnect tried again asks KIS again",
                           metadata: ["error": "\(error)"])
        }
    }

    // MARK: - the validated token

    /// What `validate` keeps for the `token` call, sealed in the shared store under the app key.
    struct Validated: Codable, Sendable {
        var access_token: String
        var app_key: String
        var app_secret: String
        var issued_at: Int64
        var expires_at: Int64
    }

    private struct SealedValue: Codable {
        var kid: String
        var sealed: String
    }

    private func validatedKey(_ env: KISEnvironment, _ appKey: String) -> String {
        "broker:validated:\(env.rawValue):\(TokenDirectory.sha256(of: appKey))"
    }

    private func issuedAtKey(_ env: KISEnvironment, _ appKey: String) -> String {
        "broker:issued-at:\(env.rawValue):\(TokenDirectory.sha256(of: appKey))"
    }

    private func keepValidated(_ form: AccountForm, token: String, issuedAt: Int64, expiresAt: Int64) async throws {
        let key = validatedKey(form.environment, form.appKey)
        // For the reuse window, and at least KIS's minute between issuances: with `reuse_window_s = 0` a `token`
        // call right after the check found nothing kept and asked KIS again, which refused (`EGW00133`, 429).
        let ttl = min(expiresAt - now, max(settings.reuseWindow, 60))
        guard ttl > 0 else { return }
        let plain = try JSONEncoder().encode(Validated(
            access_token: token, app_key: form.appKey, app_secret: form.appSecret, issued_at: issuedAt,
            expires_at: expiresAt))
        let (kid, sealed) = try keyring.seal(plain, aad: Data(store.fullKey(key).utf8))
        let value = try JSONEncoder().encode(SealedValue(kid: kid, sealed: sealed))
        try await store.set(key, to: ByteBuffer(bytes: value), ttl: .seconds(ttl))
    }

    /// The kept token for these exact credentials, if any and still alive.
    private func peekValidated(_ form: AccountForm) async throws -> Validated? {
        let key = validatedKey(form.environment, form.appKey)
        guard let buffer = try await store.get(key),
            let value = try? JSONDecoder().decode(SealedValue.self, from: Data(buffer.readableBytesView)),
            let plain = try? keyring.open(value.sealed, kid: value.kid, aad: Data(store.fullKey(key).utf8)),
            let v = try? JSONDecoder().decode(Validated.self, from: plain)
        else { return nil }
        guard v.app_key == form.appKey, secretsEqual(v.app_secret, form.appSecret), v.expires_at > now else { return nil }
        return v
    }
}

extension Account {
    /// Whether `other` has this account's app key and secret.
    func sameKeyPair(as other: Account) -> Bool { appKey == other.appKey && secretsEqual(appSecret, other.appSecret) }
}
