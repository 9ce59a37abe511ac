import CoreMetrics
import Foundation
import KIS
import Logging
import NIOCore
import ServerKit
import ServiceLifecycle
import Store
import Synchronization
import Tokens

/// Per-account retry timing after failed scheduled refreshes: exponential backoff with jitter, as a value type
/// with no clock of its own (tests drive it with plain numbers).
struct RefreshBackoff: Sendable {
    /// The first retry delay and the cap, in seconds.
    var base: Double
    var cap: Double
    private var failures: [String: (count: Int, notBefore: Double)] = [:]
    /// Consecutive refusals of an account's key pair by KIS, and when the first of them came.
    private var refusals: [String: (count: Int, since: Double)] = [:]

    /// How many consecutive refusals, over how long, make the scheduler give an account up: KIS answers a key pair
    /// it does not know with `EGW00103`/`EGW00105`, but repeated issuance-throttle violations may surface as
    /// `EGW00103` too, a temporary lockout (kis-api.md, ⚠ unverified) — one refusal is not enough to stop refreshing a
    /// user's tokens.
    static let refusalsToGiveUp = 3
    static let refusalSpanToGiveUp: Double = 1800

    init(base: Double, cap: Double) {
        self.base = base
        self.cap = cap
    }

    /// Whether `key` may be tried at `now` (seconds).
    func mayAttempt(_ key: String, now: Double) -> Bool {
        guard let f = failures[key] else { return true }
        return now >= f.notBefore
    }

    /// Records a failure; returns the delay chosen. `jitter` is a number in 0..<1 (random in production): the
    /// delay is `min(cap, base·2ⁿ⁻¹)` scaled into its upper half, so copies that failed together spread out.
    /// `atLeast` raises the delay (KIS said when to come back).
    @discardableResult
    mutating func failed(_ key: String, now: Double, jitter: Double, atLeast: Double = 0) -> Double {
        let count = (failures[key]?.count ?? 0) + 1
        let raw = min(cap, base * pow(2, Double(count - 1)))
        let delay = max(atLeast, raw * (0.5 + 0.5 * jitter))
        failures[key] = (count, now + delay)
        return delay
    }

    mutating func succeeded(_ key: String) {
        failures[key] = nil
        refusals[key] = nil
    }

    /// Records that KIS refused `key`'s key pair at `now` (its failure is recorded by ``failed(_:now:jitter:atLeast:)``);
    /// returns whether the refusals have lasted long enough to give the account up.
    mutating func refused(_ key: String, now: Double) -> (giveUp: Bool, count: Int, since: Double) {
        let r = refusals[key].map { ($0.count + 1, $0.since) } ?? (1, now)
        refusals[key] = r
        return (r.0 >= Self.refusalsToGiveUp && now - r.1 >= Self.refusalSpanToGiveUp, r.0, r.1)
    }

    /// Forgets the accounts not in `keys` (deleted, or made inactive, since they failed): the record does not grow
    /// with every account that ever failed.
    mutating func keepOnly(_ keys: Set<String>) {
        failures = failures.filter { keys.contains($0.key) }
        refusals = refusals.filter { keys.contains($0.key) }
    }

    var remembered: Int { failures.count }

    func failureCount(_ key: String) -> Int { failures[key]?.count ?? 0 }
}

/// Keeps tokens alive and Redis whole: every `refresh_interval_s` it refreshes due tokens, every
/// `reconcile_interval_s` it republishes what the store lost. Only the holder of the lease
/// `lease:broker-scheduler` does either, so with several broker copies one works at a time; the lease expires
/// when its holder dies and another copy takes it over.
final class BrokerScheduler: Service, Sendable {
    static let leaseKey = "lease:broker-scheduler"

    let keeper: TokenKeeper
    let refreshInterval: Duration
    let reconcileInterval: Duration
    /// How often reconciliation runs: `reconcile_interval_s` less one tick (half of it at most). A token lost just
    /// after a reconciliation read its row is republished by the next one, which must start soon enough for it to be
    /// back within the interval (store.md) though the loop wakes only once a tick.
    let reconcilePeriod: Duration
    /// How often the lease is renewed (and checked); the lease lives three times as long.
    let tick: Duration
    let leaseTTL: Duration
    let logger: Logger
    private let backoff: Mutex<RefreshBackoff>
    /// Whether this copy holds the lease now (for tests and logs).
    let holdsLease = Atomic<Bool>(false)

    let onLeaseChange: (@Sendable (Bool) -> Void)?

    /// How many accounts a refresh pass refreshes at once.
    let refreshWidth: Int

    init(keeper: TokenKeeper, refreshIntervalS: Int, reconcileIntervalS: Int, logger: Logger,
         refreshWidth: Int = BrokerScheduler.defaultRefreshWidth, onLeaseChange: (@Sendable (Bool) -> Void)? = nil) {
        self.onLeaseChange = onLeaseChange
        self.refreshWidth = max(1, refreshWidth)
        self.keeper = keeper
        self.refreshInterval = .seconds(max(1, refreshIntervalS))
        self.reconcileInterval = .seconds(max(1, reconcileIntervalS))
        let tickS = max(1, min(refreshIntervalS, reconcileIntervalS, 10))
        self.tick = .seconds(tickS)
        self.reconcilePeriod = self.reconcileInterval - min(self.tick, self.reconcileInterval / 2)
        self.leaseTTL = .seconds(tickS * 3)
        self.logger = logger
        self.backoff = Mutex(RefreshBackoff(base: Double(max(1, refreshIntervalS)), cap: 900))
    }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await self.loop()
        }
        if let lease = currentLease.withLock({ $0 }) {
            _ = try? await keeper.store.releaseLock(lease)
            currentLease.withLock { $0 = nil }
            onLeaseChange?(false)
        }
    }

    private let currentLease = Mutex<StoreLock?>(nil)

    /// When the next reconciliation is due: at once when the lease is taken, then every `reconcile_interval_s`.
    private let nextReconcile = Mutex(ContinuousClock.now)

    private func loop() async {
        var nextRefresh = ContinuousClock.now
        while !Task.isCancelled {
            let held = await holdLease()
            if held {
                let now = ContinuousClock.now
                let refreshDue = now >= nextRefresh
                if refreshDue { nextRefresh = now + refreshInterval }
                await whileHoldingLease {
                    await self.reconcileIfDue()
                    if refreshDue && !Task.isCancelled { await self.refreshPass() }
                }
            }
            // Once a tick, or sooner when a reconciliation falls due before the next one — only while this copy
            // holds the lease: otherwise (another copy holds it, or the store does not answer) a reconciliation
            // overdue here would turn the nap into a loop.
            var nap = tick
            if held && !leaseLost.load(ordering: .relaxed) {
                let untilReconcile = nextReconcile.withLock { $0 } - ContinuousClock.now
                nap = max(.milliseconds(100), min(tick, untilReconcile))
            }
            do { try await Task.sleep(for: nap) } catch { return }
        }
    }

    /// Set when the renewer alongside the work could not keep the lease; the work stops at its next account.
    private let leaseLost = Atomic<Bool>(false)

    /// Runs `work` while a renewer renews the lease every tick: one account's refresh (a wait for its issuance lock,
    /// then KIS) or a reconciliation (a lock wait per token) can outlast the lease (3 ticks), and only one copy may
    /// work at a time (broker-api.md). The work is never cancelled — an issuance cut short could leave its app key's
    /// lock held or a token KIS issued unsaved —; losing the lease sets ``leaseLost``, which a pass reads before each
    /// account. Only the renewer renews while the work runs.
    private func whileHoldingLease(_ work: @Sendable () async -> Void) async {
        leaseLost.store(false, ordering: .relaxed)
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    do { try await Task.sleep(for: self.tick) } catch { return }
                    guard await self.renewLease() else {
                        self.leaseLost.store(true, ordering: .relaxed)
                        return
                    }
                }
            }
            await work()
            group.cancelAll()
        }
    }

    /// Whether the lease is still this copy's, read without renewing it (the renewer alone renews while work runs).
    private func stillHoldsLease() async -> Bool {
        guard !leaseLost.load(ordering: .relaxed), let lease = currentLease.withLock({ $0 }) else { return false }
        let value: String?
        do { value = try await keeper.store.get(lease.key).map { String(buffer: $0) } } catch { return false }
        guard value == lease.token else {
            forget(lease)
            return false
        }
        return true
    }

    /// Forgets `lease` if it is still the one held (another call may have taken a new one meanwhile).
    private func forget(_ lease: StoreLock) {
        let forgotten = currentLease.withLock { current -> Bool in
            guard current == lease else { return false }
            current = nil
            return true
        }
        guard forgotten else { return }
        holdsLease.store(false, ordering: .relaxed)
        onLeaseChange?(false)
        logger.notice("lost the scheduler lease")
    }

    /// Reconciles if it is time (every ``reconcilePeriod``). Called between the accounts of a refresh pass too: a
    /// pass over many due accounts may take minutes, and what the store lost is republished within
    /// `reconcile_interval_s` all the same (store.md). One that fails is tried again a tick later.
    private func reconcileIfDue() async {
        let now = ContinuousClock.now
        let due = nextReconcile.withLock { next -> Bool in
            guard now >= next else { return false }
            next = now + reconcilePeriod
            return true
        }
        guard due else { return }
        do { try await keeper.reconcile() } catch {
            if Task.isCancelled { return }
            nextReconcile.withLock { $0 = min($0, ContinuousClock.now + tick) }
            logger.warning("reconciliation failed; it runs again next tick", metadata: ["error": "\(error)"])
        }
    }

    /// Renews the lease this copy holds; false when it is no longer this copy's (it expired or went, and another copy
    /// may have held it since) or the store does not answer. Unlike ``holdLease()`` it never takes the lease afresh:
    /// work that lost the lease stops at its next step, and the copies compete for it again at their next tick.
    private func renewLease() async -> Bool {
        guard let lease = currentLease.withLock({ $0 }) else { return false }
        do {
            if try await keeper.store.renewLock(lease, ttl: leaseTTL) { return true }
            forget(lease)
            return false
        } catch {
            if !Task.isCancelled {
                logger.warning("the shared store does not answer; the scheduler's work stops at its next step",
                               metadata: ["error": "\(error)"])
            }
            return false
        }
    }

    /// Takes or renews the lease; false when another copy holds it (or the store does not answer).
    private func holdLease() async -> Bool {
        let store = keeper.store
        do {
            if let lease = currentLease.withLock({ $0 }) {
                if try await store.renewLock(lease, ttl: leaseTTL) { return true }
                forget(lease)
            }
            if let lease = try await store.acquireLock(Self.leaseKey, ttl: leaseTTL) {
                currentLease.withLock { $0 = lease }
                // Taken afresh: this copy just started, the copy that held it died (its last reconciliation's time
                // is unknown here), or the store lost the lease with everything else (a restart without
                // persistence, FLUSHALL) — then every token is missing, and waiting for the next period would leave
                // every user without one for up to `reconcile_interval_s`. Reconcile at once.
                nextReconcile.withLock { $0 = ContinuousClock.now }
                holdsLease.store(true, ordering: .relaxed)
                onLeaseChange?(true)
                logger.notice("took the scheduler lease")
                return true
            }
            return false
        } catch {
            if Task.isCancelled { return false }
            logger.warning("the shared store does not answer; the scheduler waits", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// An account's key in the backoff record: by the user id's bytes (a `String` key would take two users whose
    /// ids only look alike for one), and the environment.
    static func backoffKey(_ row: StoredAccount) -> String {
        TokenDirectory.sha256(of: row.userID) + "|" + row.environment.rawValue
    }

    /// KIS refused `row`'s key pair: after ``RefreshBackoff/refusalsToGiveUp`` refusals over
    /// ``RefreshBackoff/refusalSpanToGiveUp`` seconds the account is marked inactive and no longer refreshed, until
    /// its user connects again or asks for a refresh; until then it is retried with the backoff, like any failure.
    private func refused(_ row: StoredAccount, key: String, now: Double) async {
        let (giveUp, count, since) = backoff.withLock { $0.refused(key, now: now) }
        guard giveUp else { return }
        do {
            guard try await keeper.deactivate(row) else { return }
            backoff.withLock { $0.succeeded(key) }
            logger.warning("KIS keeps refusing the app key or secret; the account is inactive until its user connects again", metadata: [
                "user": "\(row.userID)", "env": "\(row.environment.rawValue)", "refusals": "\(count)",
                "over_s": "\(Int(now - since))",
            ])
        } catch {
            logger.warning("cannot mark the account inactive", metadata: [
                "user": "\(row.userID)", "env": "\(row.environment.rawValue)", "error": "\(error)",
            ])
        }
    }

    func refreshPass() async {
        let accounts: [StoredAccount]
        do { accounts = try await keeper.repository.allAccounts() } catch {
            if Task.isCancelled { return }
            logger.warning("cannot list accounts for the refresh pass", metadata: ["error": "\(error)"])
            return
        }
        let listed = Set(accounts.filter(\.isActive).map(Self.backoffKey))
        backoff.withLock { $0.keepOnly(listed) }
        // `refreshWidth` (8) accounts at once: an issuance waits on KIS (hundreds of milliseconds), and one at a time a pass
        // over many due accounts — all who connected within the same hour the day before — took longer than
        // `refresh_ahead_s` at KIS's pace (bench/broker-reconcile). Each account's refresh is under its own locks.
        await withTaskGroup(of: Void.self) { group in
            var running = 0
            for row in accounts where row.isActive {
                if running == refreshWidth {
                    await group.next()
                    running -= 1
                }
                // The lease is renewed alongside (whileHoldingLease); before each account the pass checks it is still
                // this copy's, and stops at once if another copy holds it now (the refreshes under way finish).
                guard !Task.isCancelled, await stillHoldsLease() else { break }
                await reconcileIfDue()
                // Not cancelled with the pass (a graceful shutdown cancels it): an issuance under way is finished —
                // the token KIS has just issued saved and published, the locks released — rather than cut short
                // between KIS and the database (the store refuses a cancelled task's commands). The pass waits for
                // it; no account is started after the cancellation.
                group.addTask { await Task { await self.refresh(row) }.value }
                running += 1
            }
        }
    }

    /// How many accounts a refresh pass refreshes at once, unless told otherwise.
    static let defaultRefreshWidth = 8

    /// One account's scheduled refresh, if it is due and not backing off after a failure.
    private func refresh(_ row: StoredAccount) async {
        let key = Self.backoffKey(row)
        let now = keeper.clock().timeIntervalSince1970
        guard backoff.withLock({ $0.mayAttempt(key, now: now) }) else { return }
        do {
            if try await keeper.scheduledRefresh(row) {
                keeper.metrics.refreshOK.increment()
                logger.info("refreshed a token before expiry", metadata: ["user": "\(row.userID)", "env": "\(row.environment.rawValue)"])
            }
            backoff.withLock { $0.succeeded(key) }
        } catch {
            if Task.isCancelled { return }
            keeper.metrics.refreshFailed.increment()
            var atLeast = 0.0
            if let p = error as? Problem, let r = p.retryAfter { atLeast = Double(r) }
            let delay = backoff.withLock {
                $0.failed(key, now: now, jitter: Double.random(in: 0..<1), atLeast: atLeast)
            }
            logger.warning("scheduled refresh failed; retrying later", metadata: [
                "user": "\(row.userID)", "env": "\(row.environment.rawValue)", "error": "\(error)",
                "retry_in_s": "\(Int(delay))",
            ])
            if let p = error as? Problem, p.code == .kisCredentialsRejected {
                await refused(row, key: key, now: now)
            }
        }
    }
}
