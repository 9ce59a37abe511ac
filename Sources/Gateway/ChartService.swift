import Crypto
import Foundation
import KIS
import CoreMetrics
import Logging
import NIOCore
import ServerKit
import Store
import Synchronization
import Tokens

/// Serves charts from the L1, then the shared store, then KIS — one coalesced, rate-limited fetch per key
/// across every gateway sharing the store.
final class ChartService: Sendable {
    struct Settings: Sendable {
        var freshness: FreshnessPolicy
        var staleWhileRevalidate: Int
        var staleIfError: Int
        var upstreamTimeout: Duration
        /// How long a request waits for a fetch (`[server] request_timeout_ms`).
        var requestTimeout: Duration
        var maxQueue: Duration
        var retries: Int
        var liveRate: Double
        var sandboxRate: Double
    }

    enum Outcome: Sendable {
        case hit(ChartEntry)
        case stale(ChartEntry)
        case miss(ChartEntry, upstreamMilliseconds: Double)

        var entry: ChartEntry {
            switch self {
            case .hit(let e), .stale(let e), .miss(let e, _): e
            }
        }

        /// The answer's `X-Cache`.
        var cacheState: String {
            switch self {
            case .hit: "HIT"
            case .stale: "STALE"
            case .miss: "MISS"
            }
        }

        /// The answer's `Server-Timing`.
        var serverTiming: String {
            switch self {
            case .hit: #"cache;desc="hit""#
            case .stale: #"cache;desc="stale""#
            case .miss(_, let ms): #"cache;desc="miss", upstream;dur="# + fixedPoint(ms, decimals: 1)
            }
        }
    }

    static let filledChannel = "chart-filled"

    let settings: Settings
    let store: any SharedStore
    let l1: L1Cache<ChartEntry>
    let clients: [KISEnvironment: KISClient]
    let authorizer: TokenAuthorizer
    let notifier = FillNotifier()
    let metrics: GatewayMetrics
    let logger: Logger
    /// Where the store's failures are logged (one line a minute for each kind).
    let failures: ThrottledLog
    /// Each key's fetch in this process, and the token it is made with.
    private let inflight = Mutex<[String: (flight: Flight<(ChartEntry, Double?)>, owner: ResolvedToken)]>([:])
    private let refreshing = Mutex<Set<String>>([])
    /// Each key's read of the store's copy in this process (``sharedCopy(_:)``).
    private let sharedReads = Mutex<[String: Flight<ChartEntry?>]>([:])
    /// Every task a request starts and does not wait for, for graceful shutdown (`BackgroundDrain`).
    let background = BackgroundWork()

    init(settings: Settings, store: any SharedStore, l1: L1Cache<ChartEntry>, clients: [KISEnvironment: KISClient],
         authorizer: TokenAuthorizer, metrics: GatewayMetrics, logger: Logger, failures: ThrottledLog) {
        self.settings = settings
        self.store = store
        self.l1 = l1
        self.clients = clients
        self.authorizer = authorizer
        self.metrics = metrics
        self.logger = logger
        self.failures = failures
    }

    private static func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

    /// - Parameter executor: where the fetch's tasks run (the asking connection's event loop, from the hit path);
    ///   `nil`: Swift's global executor.
    func chart(_ query: ChartQuery, token: ResolvedToken, on executor: (any TaskExecutor)? = nil) async throws(Problem)
        -> Outcome
    {
        let deadline = NIODeadline.now() + TimeAmount(settings.requestTimeout)
        let key = query.cacheKey
        var entry = l1.get(key)
        if entry == nil {
            // Nobody here has it: one coalesced step reads the shared store or, when it is not there either,
            // fetches it — the read, the fleet lock and the first rate-limit slot in one round trip.
            let (e, ms) = try await fetchCoalesced(query, token: token, cold: true, deadline: deadline, on: executor)
            if let ms { return .miss(e, upstreamMilliseconds: ms) }
            entry = e
        } else if let e = entry, Self.now() >= e.freshUntil, !refreshing.withLock({ $0.contains(key) }) {
            // Past freshness here. Another gateway may have refreshed the fleet's copy meanwhile: that one is a HIT
            // while fresh, and a newer stale copy than this process's (`stale_while_revalidate_s`,
            // `stale_if_error_s`). While this process refreshes the key itself, its own copy is served as it is.
            if let shared = await sharedCopy(key), shared.storedAt > e.storedAt {
                entry = keepNewer(key, shared)
            }
        }
        let now = Self.now()
        if let e = entry {
            if now < e.freshUntil {
                metrics.cacheHit.increment()
                return .hit(e)
            }
            if now < e.freshUntil + Int64(settings.staleWhileRevalidate) {
                metrics.cacheStale.increment()
                refreshInBackground(query, token: token, on: executor)
                return .stale(e)
            }
        }
        do {
            let (fresh, ms) = try await fetchCoalesced(query, token: token, cold: false, deadline: deadline, on: executor)
            guard let ms else {
                // The shared store already held a fresh copy (another gateway refreshed it).
                metrics.cacheHit.increment()
                return .hit(fresh)
            }
            return .miss(fresh, upstreamMilliseconds: ms)
        } catch {
            // Stale-if-error: KIS failed, timed out or the key's quota is exhausted.
            if let e = entry, now < e.freshUntil + Int64(settings.staleIfError),
                [.upstreamError, .upstreamTimeout, .rateLimited, .storeUnavailable].contains(error.code)
            {
                metrics.cacheStale.increment()
                logger.notice("serving stale after an upstream failure", metadata: ["code": "\(error.code)"])
                return .stale(e)
            }
            throw error
        }
    }

    /// The store's copy of `key`, fresh or not; nil when it has none or cannot be read (the caller goes on with its
    /// own). One read per key in this process at a time: the requests that come meanwhile share it.
    private func sharedCopy(_ key: String) async -> ChartEntry? {
        let (flight, leads) = sharedReads.withLock { reads -> (Flight<ChartEntry?>, Bool) in
            if let f = reads[key] { return (f, false) }
            let f = Flight<ChartEntry?>()
            reads[key] = f
            return (f, true)
        }
        if leads {
            let entry = await storedCopy(key)
            sharedReads.withLock { reads in
                if reads[key] === flight { reads.removeValue(forKey: key) }
            }
            flight.finish(.success(entry))
        }
        return (try? await flight.wait(until: nil).get()) ?? nil
    }

    private func refreshInBackground(_ query: ChartQuery, token: ResolvedToken, on executor: (any TaskExecutor)?) {
        let key = query.cacheKey
        let first = refreshing.withLock { $0.insert(key).inserted }
        guard first else { return }
        background.start(on: executor) {
            defer { _ = self.refreshing.withLock { $0.remove(key) } }
            do { _ = try await self.fetchCoalesced(query, token: token, cold: false, deadline: nil, on: executor) } catch let problem as Problem {
                self.logger.info("background refresh failed", metadata: ["code": "\(problem.code)"])
            } catch {
                self.logger.info("background refresh failed")
            }
        }
    }

    /// One fetch per key in this process, on a task of its own; every concurrent caller waits for the same one,
    /// each until its `deadline` at most (nil: no bound) — and one that did not start it, for `[upstream]
    /// timeout_ms` at most (`gateway-api.md`). The fetch runs to its end whoever still waits.
    ///
    /// `cold`: nobody here has the key; the store is read first and the answer's `upstreamMilliseconds` is `nil`
    /// when the store had it (fresh or not). Otherwise the key is fetched unless the store holds it fresh once
    /// the lock is ours (then `nil`: another gateway refreshed it) or another gateway fills it while we wait for
    /// its fetch (then `0`: fetched for a request we waited on).
    ///
    /// A waiter whose fetch failed for the fetching request's own credentials — its KIS token (expired, refused),
    /// its app key's rate or its app key and secret (refused by KIS) — is not answered with that: it fetches again
    /// with its own (`rejoins` times at most).
    func fetchCoalesced(_ query: ChartQuery, token: ResolvedToken, cold: Bool, deadline: NIODeadline?,
                        on executor: (any TaskExecutor)? = nil, rejoins: Int = 2) async throws(Problem)
        -> (ChartEntry, Double?)
    {
        let key = query.cacheKey
        let slot = cold ? "cold " + key : key
        let (flight, owner) = inflight.withLock { flights -> (Flight<(ChartEntry, Double?)>, ResolvedToken?) in
            if let f = flights[slot] { return (f.flight, f.owner) }
            let f = Flight<(ChartEntry, Double?)>()
            flights[slot] = (f, token)
            return (f, nil)
        }
        guard let owner else { return try await lead(flight, slot: slot, query, token: token, cold: cold,
                                                      deadline: deadline, on: executor) }
        metrics.cacheCoalesced.increment()
        let outcome = await wait(for: flight, until: deadline)
        if case .failure(let problem) = outcome, rejoins > 0, Self.concernsOnly(owner, not: token, problem) {
            return try await fetchCoalesced(query, token: token, cold: cold, deadline: deadline, on: executor,
                                            rejoins: rejoins - 1)
        }
        return try outcome.get()
    }

    /// Whether `problem`, met by a fetch made with `owner`'s token, concerns that token or its app key rather than
    /// the chart, so that a request made with `token` — another token, or another app key — must not be answered
    /// with it.
    static func concernsOnly(_ owner: ResolvedToken, not token: ResolvedToken, _ problem: Problem) -> Bool {
        if owner.environment != token.environment, problem.code == .upstreamError || problem.code == .upstreamTimeout {
            // Another KIS host's failure (the live domain down, sandbox up): not this request's answer — as a failure
            // another gateway shares is not answered to a request for the other environment (`failureShared`).
            return true
        }
        switch problem.code {
        case .kisTokenExpired, .kisTokenInvalid:
            return owner.sha256 != token.sha256
        case .rateLimited:
            return owner.rateKey != token.rateKey
        case .upstreamError:
            // KIS refused the app key or secret (EGW00102–EGW00105), or the app key for this API or domain
            // (EGW00206, EGW02004).
            guard let code = problem.kisMsgCode, KISClientError.kind(forCode: code) == .credentialsRejected else {
                return false
            }
            return owner.credentials.appKey != token.credentials.appKey
                || owner.credentials.appSecret != token.credentials.appSecret
        default:
            return false
        }
    }

    /// Starts `flight`'s fetch, made with `token`, and waits for it until `deadline`.
    private func lead(_ flight: Flight<(ChartEntry, Double?)>, slot: String, _ query: ChartQuery, token: ResolvedToken,
                      cold: Bool, deadline: NIODeadline?, on executor: (any TaskExecutor)?) async throws(Problem)
        -> (ChartEntry, Double?)
    {
        let key = query.cacheKey
        background.start(on: executor) {
            let outcome: Flight<(ChartEntry, Double?)>.Outcome
            var fetched: (ChartEntry, StoreLock)?
            do throws(Problem) {
                let (entry, ms, lock) = try await self.fetchAcrossFleet(query, token: token, cold: cold)
                outcome = .success((entry, ms))
                fetched = lock.map { (entry, $0) }
            } catch {
                outcome = .failure(error)
            }
            self.inflight.withLock { flights in
                if flights[slot]?.flight === flight { flights.removeValue(forKey: slot) }
            }
            flight.finish(outcome)
            // After the waiters were resumed: on an event loop its jobs run in turn, so their answers are
            // written before the entry is (the fleet's copy can wait the few microseconds).
            if let (entry, lock) = fetched {
                self.shareInBackground(entry, key: key, lock: lock, on: executor)
            }
        }
        return try await flight.wait(until: deadline).get()
    }

    /// A request that waits on a fetch another one started waits at most `[upstream] timeout_ms` for it (and at
    /// most until its own `deadline`).
    private func wait(for flight: Flight<(ChartEntry, Double?)>, until deadline: NIODeadline?) async
        -> Flight<(ChartEntry, Double?)>.Outcome
    {
        guard let deadline else { return await flight.wait(until: nil) }
        let bound = NIODeadline.now() + TimeAmount(settings.upstreamTimeout)
        if deadline <= bound { return await flight.wait(until: deadline) }
        return await flight.wait(
            until: bound,
            timeout: Problem(.upstreamTimeout, "the fetch this request waited for took longer than [upstream] timeout_ms"))
    }

    /// One fetch per key across the fleet: a lock with expiry in the store; the others wait to be woken by
    /// pub/sub (or a short poll) and read the result from the store. A dead holder's lock expires.
    ///
    /// - Returns: the entry, the upstream milliseconds (see ``fetchCoalesced(_:token:cold:deadline:on:rejoins:)``), and the
    ///   lock when the entry was fetched here: the caller shares the entry and releases the lock
    ///   (``shareInBackground(_:key:lock:on:)``).
    private func fetchAcrossFleet(_ query: ChartQuery, token: ResolvedToken, cold: Bool)
        async throws(Problem) -> (ChartEntry, Double?, StoreLock?)
    {
        let key = query.cacheKey
        let lockKey = "lock:chart:" + key
        let lockTTL = settings.upstreamTimeout + settings.maxQueue + .seconds(1)
        let started = ContinuousClock.now
        // Waiting for another gateway's fetch is bounded like waiting for one here: `[upstream] timeout_ms`
        // (gateway-api.md). A holder that died leaves its lock to expire (`lockTTL`); the requests that come then
        // take it over.
        let patience = settings.upstreamTimeout
        let upstreamRate = rateReservation(for: token)
        var readFirst = cold
        var waitingSince: Int64?  // when this request began waiting on another gateway's fetch (Unix ms)
        while true {
            let lock: StoreLock?, filled: ByteBuffer?
            var reserved: RateLimitDecision? = nil
            if readFirst {
                readFirst = false
                let step: ReadOrLock
                do {
                    step = try await store.readOrLock("cache:" + key, lock: lockKey, ttl: lockTTL,
                                                      reserving: upstreamRate)
                } catch {
                    throw failures.storeProblem(error, subject: "the shared store")
                }
                switch step {
                case .value(let buffer):
                    if let e = ChartEntry.decode(buffer) {
                        return (keepNewer(key, e), nil, nil)
                    }
                    continue  // unreadable: fetch it under the lock
                case .locked(let l, let slot):
                    (lock, filled, reserved) = (l, nil, slot)
                case .busy:
                    (lock, filled) = (nil, nil)
                }
            } else {
                do {
                    // The lock, and what is in the store once we hold it (in one round trip): someone may have
                    // filled it between our miss and the lock.
                    (lock, filled) = try await store.acquireLock(lockKey, ttl: lockTTL, thenGet: "cache:" + key)
                } catch {
                    throw failures.storeProblem(error, subject: "the shared store")
                }
            }
            if let lock {
                if let filled, let e = ChartEntry.decode(filled), e.freshUntil > Self.now() {
                    releaseInBackground(lock)
                    return (keepNewer(key, e), nil, nil)
                }
                // The fetch this request waited on, on another gateway, failed: its answer is this one's too.
                if let since = waitingSince,
                    let problem = await failureShared(for: key, environment: token.environment, since: since)
                {
                    releaseInBackground(lock)
                    throw problem
                }
                let entry: ChartEntry, ms: Double
                do {
                    (entry, ms) = try await fetchUpstream(query, token: token, lock: lock, lockTTL: lockTTL,
                                                          rate: upstreamRate,
                                                          reserved: reserved.map { ($0, ContinuousClock.now) })
                } catch {
                    shareFailureInBackground(error, key: key, lock: lock, environment: token.environment)
                    throw error
                }
                l1.set(key, entry, cost: entry.cost)
                notifier.notify(key)
                metrics.cacheMiss.increment()
                return (entry, ms, lock)
            }
            // Another gateway is fetching it.
            if waitingSince == nil { waitingSince = Self.nowMilliseconds() }
            await notifier.wait(for: key, timeout: .milliseconds(50))
            // This process's own fetch of it (a refresh's, next to a cold request's) is in the L1 before the store.
            // What this request spent on KIS is its wait for that fetch: its `upstream;dur` (it said 0.0, for a MISS
            // that waited as long as the fetch took).
            if let e = l1.get(key), e.freshUntil > Self.now() {
                metrics.cacheCoalesced.increment()
                return (e, Self.milliseconds(ContinuousClock.now - started), nil)
            }
            if let e = await freshFromStore(key) {
                metrics.cacheCoalesced.increment()
                return (e, Self.milliseconds(ContinuousClock.now - started), nil)
            }
            if ContinuousClock.now - started > patience {
                throw Problem(.upstreamTimeout,
                              "the fetch this request waited for, on another gateway, took longer than [upstream] timeout_ms")
            }
        }
    }

    /// `d` in milliseconds, for `Server-Timing`.
    static func milliseconds(_ d: Duration) -> Double {
        Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
    }

    private func releaseInBackground(_ lock: StoreLock) {
        background.start { [store] in _ = try? await store.releaseLock(lock) }
    }

    /// How long a failed fetch's problem is kept for the requests on other gateways that waited on it.
    static let sharedFailureTTL: Duration = .seconds(2)

    /// A failed fetch's problem, for the requests on other gateways that waited on it (`failed:{key}`).
    private struct SharedFailure: Codable {
        var code: String
        var detail: String
        var kis_msg_cd: String?
        var kis_msg1: String?
        /// The environment of the token it was fetched with (the cache key has none), and when it failed (Unix ms).
        var env: String
        var at_ms: Int64
    }

    private static func nowMilliseconds() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// Releases the lock of a fetch that failed and, when the failure concerns the chart rather than the fetching
    /// request's credentials (KIS answered an error, or did not answer in time), keeps it for `sharedFailureTTL`
    /// and wakes the other gateways' waiters: they answer it as this gateway's own waiters do, instead of each
    /// taking the lock in turn and asking KIS again (one upstream fetch for concurrent misses, across the fleet —
    /// failed or not). A failure tied to the request's token or app key (refused token or credentials, the app
    /// key's queue) is not kept: a waiter with other credentials fetches with its own.
    private func shareFailureInBackground(_ problem: Problem, key: String, lock: StoreLock, environment: KISEnvironment) {
        let shared: SharedFailure?
        switch problem.code {
        case .upstreamError where problem.kisMsgCode.map({ KISClientError.kind(forCode: $0) != .credentialsRejected }) ?? true,
             .upstreamTimeout:
            shared = SharedFailure(code: problem.code.rawValue, detail: problem.detail, kis_msg_cd: problem.kisMsgCode,
                                   kis_msg1: problem.kisMessage, env: environment.rawValue, at_ms: Self.nowMilliseconds())
        default:
            shared = nil
        }
        let store = self.store
        background.start {
            if let shared, let data = try? JSONEncoder().encode(shared) {
                _ = try? await store.set("failed:" + key, to: ByteBuffer(bytes: data), ttl: Self.sharedFailureTTL)
            }
            _ = try? await store.releaseLock(lock)
            if shared != nil { _ = try? await store.publish(ByteBuffer(string: key), to: Self.filledChannel) }
        }
    }

    /// The problem of the fetch another gateway failed for `key` while this request waited on it (since `since`,
    /// Unix ms), with a token of `environment` (``shareFailureInBackground(_:key:lock:environment:)``). An older
    /// failure, or one of the other environment (another KIS), is not this request's answer: it fetches instead.
    private func failureShared(for key: String, environment: KISEnvironment, since: Int64) async -> Problem? {
        guard let buffer = try? await store.get("failed:" + key),
            let f = try? JSONDecoder().decode(SharedFailure.self, from: Data(buffer.readableBytesView)),
            f.env == environment.rawValue, f.at_ms >= since
        else { return nil }
        let code: Problem.Code = f.code == Problem.Code.upstreamTimeout.rawValue ? .upstreamTimeout : .upstreamError
        return Problem(code, f.detail, kisMsgCode: f.kis_msg_cd, kisMessage: f.kis_msg1)
    }

    /// Stores the entry for the fleet, tells the other gateways, then releases the lock — in that order, so a
    /// gateway that gets the lock next finds the entry — while the caller already has its answer.
    private func shareInBackground(_ entry: ChartEntry, key: String, lock: StoreLock, on executor: (any TaskExecutor)?) {
        let keep = entry.freshUntil - Self.now() + Int64(max(settings.staleIfError, settings.staleWhileRevalidate))
        let store = self.store, logger = self.logger
        background.start(on: executor) {
            do {
                try await store.set("cache:" + key, to: entry.encoded(), ttl: .seconds(max(1, keep)))
                try await store.publish(ByteBuffer(string: key), to: Self.filledChannel)
            } catch {
                logger.warning("could not share a fetched chart", metadata: ["error": "\(error)"])
            }
            _ = try? await store.releaseLock(lock)
        }
    }

    private func freshFromStore(_ key: String) async -> ChartEntry? {
        guard let e = await storedCopy(key), e.freshUntil > Self.now() else { return nil }
        return keepNewer(key, e)
    }

    /// Puts `copy`, read from the shared store, in the L1 unless the L1 holds a newer one of `key` (stored later):
    /// this process's own fetch, or another read's, may have put one there while this read was on its way. Returns
    /// the newer of the two.
    private func keepNewer(_ key: String, _ copy: ChartEntry) -> ChartEntry {
        l1.offer(key, copy, cost: copy.cost) { held in held.storedAt > copy.storedAt }
    }

    /// The store's copy of `key` (`cache:{key}`), fresh or not; nil when it has none, or cannot be read or decoded.
    private func storedCopy(_ key: String) async -> ChartEntry? {
        (try? await store.get("cache:" + key)).flatMap { ChartEntry.decode($0) }
    }

    // MARK: - KIS

    static func rateKey(appKey: String) -> String {
        "rl:" + lowercaseHex(SHA256.hash(data: Data(appKey.utf8)).prefix(16))
    }

    /// The upstream rate of this token's app key (``effectiveRate(_:)`` of its environment's), waited for up to
    /// `max_queue_ms`.
    func rateReservation(for token: ResolvedToken) -> RateReservation {
        RateReservation(
            key: token.rateKey,
            limit: RateLimit(rate: Self.effectiveRate(token.environment == .live ? settings.liveRate : settings.sandboxRate),
                             burst: 1),
            maxWait: settings.maxQueue)
    }


    /// KIS's per-second limit with headroom for network jitter, so the whole fleet never exceeds it.
    ///
    /// KIS counts calls in a sliding one-second window, so calls spaced exactly `1/rate` apart put `rate + 1` in
    /// some windows once the network shifts them a little. Spacing them `1/(rate − 2)` apart keeps every window at
    /// least one call under the limit, with one interval of jitter to spare. Below 4 a second, calls are spaced
    /// `1.25/n` apart for the setting's whole calls `n` (at most 2 a second), so that a one-second window, even a
    /// closed one, never holds more than `n` — and a higher setting never gives a lower rate: 18 → 16, 4 → 2,
    /// 3 → 2, 2.5 → 1.6, 1.5 → 0.8, 1 → 0.8.
    static func effectiveRate(_ rate: Double) -> Double {
        max(rate - 2, min(rate / 1.25, 2, max(1, rate.rounded(.down)) / 1.25))
    }

    /// - Parameters:
    ///   - rate: the app key's upstream rate (``rateReservation(for:)``).
    ///   - reserved: the first call's rate-limit slot, if one was decided already, and when.
    private func fetchUpstream(
        _ query: ChartQuery, token: ResolvedToken, lock: StoreLock, lockTTL: Duration, rate upstreamRate: RateReservation,
        reserved: (RateLimitDecision, ContinuousClock.Instant)?
    ) async throws(Problem) -> (ChartEntry, Double) {
        guard let client = clients[token.environment] else {
            throw Problem(.upstreamError, "no KIS URL is configured for \(token.environment.rawValue)")
        }
        let limit = upstreamRate.limit, rate = limit.rate, rlKey = upstreamRate.key
        let store = self.store, maxQueue = upstreamRate.maxWait, metrics = self.metrics, failures = self.failures
        let calls = Atomic<Int>(0), lockLost = Atomic<Bool>(false)
        // Each KIS call is counted, with its own duration, as it ends: a page ends when the pager asks for the next
        // one or returns, or with the error it throws.
        let callStarted = Mutex<ContinuousClock.Instant?>(nil)
        let recordCall: @Sendable (_ outcome: String, _ msgCode: String?) -> Void = { outcome, msgCode in
            guard let started = callStarted.withLock({ s -> ContinuousClock.Instant? in defer { s = nil }; return s })
            else { return }
            metrics.upstreamCall(outcome: outcome, msgCode: msgCode)
            metrics.upstreamDuration.recordNanoseconds(TimeAmount(ContinuousClock.now - started).nanoseconds)
        }
        let beforeEachCall: @Sendable () async throws -> Void = {
            recordCall("ok", nil)  // the page before this one
            let n = calls.add(1, ordering: .relaxed).oldValue
            // The lock's TTL covers one queue wait and one call: renewed before each further page's (or retry's)
            // wait, so that a first page's reserved wait, a slow answer, the backoff and the retry's own wait
            // together cannot outlast it.
            // A lock found gone (it expired — Redis stalled longer than its TTL — and perhaps another gateway took
            // it and is fetching the same chart) is counted and logged once per fetch; the fetch goes on, its answer
            // as good as any, and its release at the end cannot remove another holder's lock (it compares tokens).
            // A renewal the store failed is not a loss: the rate limiter's call right after reports the store.
            if n > 0, (try? await store.renewLock(lock, ttl: lockTTL)) == false,
                !lockLost.exchange(true, ordering: .relaxed)
            {
                metrics.chartLocksLost.increment()
                failures.warning(kind: "chart lock lost",
                                 "a chart fetch outlived its lock: another gateway may have fetched the same chart",
                                 metadata: ["lock_ttl": "\(lockTTL)"])
            }
            let waitStart = ContinuousClock.now
            let decision: RateLimitDecision
            if n == 0, let (reservedDecision, decidedAt) = reserved {
                // The slot came with the lock.
                switch reservedDecision {
                case .allowed(let wait): decision = .allowed(after: wait - (waitStart - decidedAt))
                case .denied(let retryAfter): decision = .denied(retryAfter: retryAfter - (waitStart - decidedAt))
                }
            } else {
                do throws(StoreError) {
                    decision = try await store.rateLimit(rlKey, limit: limit, cost: 1, maxWait: maxQueue)
                } catch {
                    throw failures.storeProblem(error, subject: "the shared rate limiter")
                }
            }
            switch decision {
            case .allowed(let wait):
                if wait > .zero { try await Task.sleep(for: wait) }
            case .denied(let retryAfter):
                metrics.rateLimitRejections.increment()
                // When the app key's next free slot comes, in whole seconds: a client that waits that long is not
                // refused again for want of one (unless others take it first).
                throw Problem(.rateLimited, "the KIS rate for this app key cannot be met within the queue limit",
                              retryAfter: Problem.retryAfterSeconds(retryAfter))
            }
            let waited = ContinuousClock.now - (n == 0 ? reserved?.1 ?? waitStart : waitStart)
            if waited > .milliseconds(1) {
                metrics.rateLimitWaits.increment()
                metrics.rateLimitWait.recordNanoseconds(TimeAmount(waited).nanoseconds)
            }
            callStarted.withLock { $0 = .now }
        }
        // A page KIS refused as too frequent (`EGW00201`) or with a transient error (`EGW00001`/`EGW00002`), or whose
        // call failed on the way or was answered with an HTTP 5xx and no KIS answer in it (its front's 502/503 page
        // while its servers are away), is asked for again — that page only, up to `[upstream] retries` times — after
        // pushing the app key's schedule back for every gateway (a refusal) and a backoff.
        let retries = settings.retries
        let retry: DailyChartPager.Retry = { e, attempt in
            recordCall(e.kind.outcome, e.msgCode)
            guard attempt <= retries else { return false }
            switch e.kind {
            case .rateLimited:
                // A second's worth of the app key's rate, unless its schedule is already a second or more ahead:
                // refusals of one window (several fetches, several retries each) push it back once, not once each
                // — 8 refused fetches pushed it 16 s, and every request on the key was refused (429) for as long.
                _ = try? await store.rateLimit(rlKey, limit: limit, cost: max(1, Int(rate.rounded(.up))),
                                               maxWait: .seconds(1))
                try? await Task.sleep(for: .milliseconds(100 * (1 << attempt) + Int.random(in: 0..<50)))
                return !Task.isCancelled
            case .transport, .transient,
                 .unreadable where (e.httpStatus ?? 0) >= 500:
                // The call failed on the way, KIS said its error is transient (EGW00001/EGW00002, kis-api.md §7), or
                // something in front of KIS answered for it with a server error.
                try? await Task.sleep(for: .milliseconds(50 * (1 << attempt) + Int.random(in: 0..<50)))
                return !Task.isCancelled
            default:
                return false
            }
        }
        let started = ContinuousClock.now, asked = Self.now()
        do {
            let chart: DailyChart
            switch query.market {
            case .domestic:
                chart = try await DailyChartPager.domestic(
                    client: client, credentials: token.credentials, symbol: query.symbol, start: query.start,
                    end: query.end, period: query.period, adjusted: query.adjusted, beforeEachCall: beforeEachCall,
                    retry: retry)
            case .overseas:
                chart = try await DailyChartPager.overseas(
                    client: client, credentials: token.credentials, exchange: query.exchange, symbol: query.symbol,
                    start: query.start, end: query.end, period: query.period, adjusted: query.adjusted,
                    beforeEachCall: beforeEachCall, retry: retry)
            }
            recordCall("ok", nil)  // the last page
            let elapsed = ContinuousClock.now - started
            let now = Self.now()
            let entry = ChartEntry(body: ChartEntry.render(query, chart: chart), storedAt: now,
                                   freshUntil: settings.freshness.freshUntil(for: query, asked: asked, stored: now))
            return (entry, Self.milliseconds(elapsed))
        } catch let p as Problem {
            throw p
        } catch let e as KISClientError {
            recordCall(e.kind.outcome, e.msgCode)  // counted already when `retry` saw it
            switch e.kind {
            case .tokenExpired, .tokenInvalid:
                // KIS refused it before its stated expiry: forget it everywhere and tell the broker.
                authorizer.forget(sha256: token.sha256)
                let store = self.store, sha = token.sha256, code = e.msgCode ?? "EGW00123"
                let user = token.userID, environment = token.environment, logger = self.logger
                background.start {
                    do {
                        try await TokenDirectory.markDead(sha256: sha, msgCode: code, userID: user,
                                                          environment: environment, store: store)
                    } catch {
                        // The broker's refresh may hand the same token back; gateways keep their decisions up to 30 s.
                        logger.warning("could not mark a token KIS refused as dead", metadata: ["error": "\(error)"])
                    }
                }
                if e.kind == .tokenInvalid {
                    throw Problem(.kisTokenInvalid, "KIS refused the token", kisMsgCode: e.msgCode,
                                  kisMessage: e.kisMessage)
                }
                throw Problem(.kisTokenExpired, "KIS says the token has expired", kisMsgCode: e.msgCode,
                              kisMessage: e.kisMessage)
            case .rateLimited:
                throw Problem(.rateLimited, "KIS refused the call as too frequent", retryAfter: 1,
                              kisMsgCode: e.msgCode, kisMessage: e.kisMessage)
            case .timeout:
                throw Problem(.upstreamTimeout, "KIS did not answer within \(settings.upstreamTimeout)")
            default:
                throw Problem(.upstreamError, "KIS answered with an error or an unreadable body",
                              kisMsgCode: e.msgCode, kisMessage: e.kisMessage)
            }
        } catch is CancellationError {
            recordCall("timeout", nil)
            throw Problem(.upstreamTimeout, "the fetch was cancelled")
        } catch {
            recordCall("transport", nil)
            throw Problem(.upstreamError, "the KIS call failed")
        }
    }
}
