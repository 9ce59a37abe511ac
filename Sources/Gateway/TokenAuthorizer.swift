import Foundation
import KIS
import Logging
import ServerKit
import Store
import Synchronization
import Tokens

/// What a KIS token resolves to: its owner, environment, expiry, and the credentials to call KIS with.
struct ResolvedToken: Sendable {
    var userID: String
    var environment: KISEnvironment
    var expiresAt: Date
    var sha256: String
    let credentials: KISCredentials
    /// The store key of the app key's upstream rate (``ChartService/rateKey(appKey:)``), worked out once per
    /// resolved token rather than on every miss (it is a SHA-256); both are constants, so it cannot drift.
    let rateKey: String

    init(userID: String, environment: KISEnvironment, expiresAt: Date, sha256: String, credentials: KISCredentials) {
        self.userID = userID
        self.environment = environment
        self.expiresAt = expiresAt
        self.sha256 = sha256
        self.credentials = credentials
        self.rateKey = ChartService.rateKey(appKey: credentials.appKey)
    }
}

/// Looks KIS tokens up in the shared store (`kisgw:tok:{sha256}`), unseals their credentials, and remembers the
/// positive decisions briefly — bounded by the token's expiry and `recheck` — dropping them at once on a
/// `revoked` event.
final class TokenAuthorizer: Sendable {
    private struct Entry {
        var token: ResolvedToken
        var validUntil: Date
    }

    /// The remembered decisions, and when each token was last forgotten: a lookup that began before its token was
    /// forgotten (or before everything was) may have read a record from before the revocation, and is not remembered
    /// (``authorize(kisToken:userID:now:)``). Lookups of other tokens are not concerned.
    private struct Cache {
        var entries: [String: Entry] = [:]
        /// Counts forgets.
        /// The generation of the last `forgetAll` (or of the last time `forgotten` overflowed).
        var allForgottenAt: UInt64 = 0
        /// The generation each recently forgotten token (by SHA-256) was forgotten at; at most `forgottenLimit`.
        var forgotten: [String: UInt64] = [:]

        /// Whether a lookup of the token `sha256` that began at `generation` may be remembered.
        func mayRemember(_ sha256: String, lookupBegan generation: UInt64) -> Bool {
            allForgottenAt <= generation && (forgotten[sha256] ?? 0) <= generation
        }
    }

    private let lookup: @Sendable (_ token: String) async throws(StoreError) -> ResolvedToken?
    private let deadReason: (@Sendable (_ token: String, _ userID: String) async -> String?)?
    private let cache = Mutex(Cache())
    /// Counts forgets (``generation``): changed only under `cache`'s lock, before any decision is removed, and read
    /// without it.
    private let forgets = Atomic<UInt64>(0)
    private let recheck: TimeInterval
    private let limit = 100_000
    private let forgottenLimit = 1024
    private let failures: ThrottledLog

    /// - Parameters:
    ///   - lookup: the token's record, opened; nil when there is none.
    ///   - deadReason: the KIS code a gateway saw KIS refuse the token with (`dead:{sha256}`) when the token was the
    ///     user's, asked when its record is gone: `EGW00123` is answered `kis_token_expired` (gateway-api.md), as to
    ///     the request that met it.
    ///   - failures: where the store's failures and unopenable records are logged (the gateway's one; by default a
    ///     new one on `logger`).
    init(recheck: TimeInterval = 30, logger: Logger = Logger(label: "kisgw.gateway"), failures: ThrottledLog? = nil,
         deadReason: (@Sendable (_ token: String, _ userID: String) async -> String?)? = nil,
         lookup: @escaping @Sendable (_ token: String) async throws(StoreError) -> ResolvedToken?) {
        self.recheck = recheck
        self.failures = failures ?? ThrottledLog(logger: logger)
        self.deadReason = deadReason
        self.lookup = lookup
    }

    /// The remembered positive decision for `kisToken` and `userID`, if there is one still valid (for the hit path;
    /// anything else — unknown, another user's, expired — is left to `authorize`).
    /// Also says until when the decision holds, unless the authorizer forgets something first (``generation``).
    func known(kisToken: String, userID: String, now: Date) -> (ResolvedToken, validUntil: Date)? {
        // Not ASCII: left to `authorize`, which refuses it (``BearerCredentials/isASCII(_:)``).
        guard BearerCredentials.isASCII(kisToken), let hit = remembered(kisToken, now: now),
            hit.token.userID.isSameUserID(userID)
        else { return nil }
        return (hit.token, hit.validUntil)
    }

    /// Changes whenever a decision is forgotten (``forget(sha256:)``, ``forgetAll()``): a copy of a decision taken
    /// from ``known(kisToken:userID:now:)`` holds only while this is what it was before that call.
    var generation: UInt64 { forgets.load(ordering: .acquiring) }

    /// The remembered decision for `kisToken`, while it is still valid.
    /// (`kisToken` is ASCII: its callers see to it.)
    private func remembered(_ kisToken: String, now: Date) -> Entry? {
        guard let hit = cache.withLock({ $0.entries[kisToken] }), hit.validUntil > now else { return nil }
        return hit
    }

    /// The token's credentials if `kisToken` was published for `userID` and is live; else a `kis_token_*` problem.
    func authorize(kisToken: String, userID: String, now: Date = Date()) async throws(Problem) -> ResolvedToken {
        guard BearerCredentials.isASCII(kisToken) else { throw Problem(.kisTokenInvalid, "the KIS token must be ASCII") }
        if let token = remembered(kisToken, now: now)?.token {
            guard token.userID.isSameUserID(userID) else {
                throw Problem(.kisTokenInvalid, "the KIS token does not belong to this user")
            }
            return token
        }
        let resolved: ResolvedToken?
        let lookupBegan = generation
        do { resolved = try await lookup(kisToken) } catch {
            guard error.code.isUnopenable else { throw failures.storeProblem(error, subject: "the token store") }
            // A record this gateway cannot open: sealed with a key it does not hold (its `[seal]` keys differ from
            // the broker's), tampered with, or malformed. Nothing to accept the token on. Logged once a minute for
            // each kind of failure: a seal key missing here fails every request that brings a token it sealed.
            failures.log(.error, kind: "unopenable record " + error.code.description,
                         "a KIS token record cannot be opened", metadata: ["error": "\(error)"])
            throw Problem(.kisTokenInvalid, "the KIS token's record cannot be opened by this gateway")
        }
        guard let resolved else {
            // Its record is gone: expired (the record's TTL ends at `expires_at`), revoked, or never published.
            // Forgotten — unless another user asks for it (then its owner still learns it expired).
            let forgotten = cache.withLock { c -> Entry? in
                guard let e = c.entries[kisToken] else { return nil }
                if e.token.userID.isSameUserID(userID) { c.entries.removeValue(forKey: kisToken) }
                return e
            }
            if let f = forgotten, !f.token.userID.isSameUserID(userID) {
                throw Problem(.kisTokenInvalid, "the KIS token does not belong to this user")
            }
            if let expiry = forgotten?.token.expiresAt ?? KISTokenClaims.expiry(of: kisToken), expiry <= now {
                throw Problem(.kisTokenExpired, "the KIS token has expired")
            }
            if let deadReason, await deadReason(kisToken, userID) == "EGW00123" {
                throw Problem(.kisTokenExpired, "KIS says the token has expired", kisMsgCode: "EGW00123")
            }
            throw Problem(.kisTokenInvalid, "the KIS token is unknown or was revoked")
        }
        // Whose it is before whether it expired (as when its record is gone): another user learns nothing of it.
        guard resolved.userID.isSameUserID(userID) else {
            throw Problem(.kisTokenInvalid, "the KIS token does not belong to this user")
        }
        guard resolved.expiresAt > now else {
            throw Problem(.kisTokenExpired, "the KIS token has expired")
        }
        let until = min(resolved.expiresAt, now.addingTimeInterval(recheck))
        cache.withLock { c in
            // A `revoked` event (or a KIS refusal) handled while the record was being read: what was read may be
            // from before it. This request is answered with it (it was under way when the token was revoked), but
            // nothing is remembered: the next request reads the record again.
            guard c.mayRemember(resolved.sha256, lookupBegan: lookupBegan) else { return }
            if c.entries.count >= limit { c.entries.removeAll(keepingCapacity: true) }
            c.entries[kisToken] = Entry(token: resolved, validUntil: until)
        }
        return resolved
    }

    /// Forgets every decision about the token with this SHA-256 (a `revoked` event, or KIS said it expired).
    func forget(sha256: String) {
        cache.withLock { c in
            let generation = forgets.wrappingAdd(1, ordering: .releasing).newValue
            if c.forgotten.count >= forgottenLimit {
                c.forgotten.removeAll(keepingCapacity: true)
                c.allForgottenAt = generation
            }
            c.forgotten[sha256] = generation
            // The keys first, then the removals: removing while iterating would copy the whole table.
            let keys = c.entries.compactMap { $0.value.token.sha256 == sha256 ? $0.key : nil }
            for k in keys { c.entries.removeValue(forKey: k) }
        }
    }

    /// Forgets every decision: a `revoked` event may have been missed (the store's pub/sub connection was lost, or
    /// events were dropped).
    func forgetAll() {
        cache.withLock { c in
            c.allForgottenAt = forgets.wrappingAdd(1, ordering: .releasing).newValue
            c.forgotten.removeAll()
            c.entries.removeAll()
        }
    }
}
