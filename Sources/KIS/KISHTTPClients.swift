public import AsyncHTTPClient
public import NIOCore
public import NIOPosix

/// The HTTP clients kisgw calls KIS (and the broker) with: one `HTTPClient` per event loop of the servers' group,
/// each with its connections on its own loop.
///
/// A miss is fetched on the event loop of the connection that asked for it. One client over the whole group prefers
/// an idle connection of the caller's loop, but takes another loop's when its own has none, and then has no reason to
/// ever open one on the caller's loop: in the dev loop every KIS call from a connection on the other loop crossed
/// threads four times (request, idle timer, answer head, answer end; `perf record -e sched:sched_wakeup`). With a
/// client per loop, a call from a loop of the group uses that loop's connections from the first call on. A call from
/// elsewhere (a task on Swift's pool, the broker, a loop of another group) uses the first loop's client, so such calls
/// share one pool instead of opening a connection on every loop.
///
/// Each client keeps up to `max(8, 64 / loops)` connections per host: 64 on one loop, 32 on each of two, 8 per loop
/// from eight on. (`HTTPClient.shared` keeps 8 over the whole group, and so did these until 2026-11-28: twelve users'
/// misses at once went to KIS four at a time, one loop's four connections — each user's app key has its own rate, and
/// a call that waits for a connection after taking its rate slot reaches KIS later than its slot, bunched with the
/// next.) A connection is opened only when no idle one is there, so isolated misses use one. Measured (bench/HISTORY.md,
/// "Miss path"): the hand-offs between loops are gone from the trace; isolated misses on an idle machine were not
/// measurably faster.
public final class KISHTTPClients: Sendable {
    private let clients: [HTTPClient]
    private let byLoop: [ObjectIdentifier: Int]
    private let canShutDown: Bool

    /// A client per loop of `group`, each like `HTTPClient.shared` (decompression with a ratio limit, a 600 s idle
    /// timeout) except that redirects are not followed (KIS answers in place, and a redirect must not carry the app
    /// secret elsewhere), and that a connection that cannot be established fails the requests waiting for it at once.
    /// AsyncHTTPClient's default tries it again until each request's deadline: a KIS (or broker) that refuses
    /// connections — down, or in maintenance — then held every request for the whole `[upstream] timeout_ms` and
    /// answered 504, where kisgw's own retries (`[upstream] retries`, with backoff) give up in a few hundred
    /// milliseconds and stale-if-error can serve a stale copy at once. The caller shuts them down (`shutdown()`).
    ///
    /// - Parameter connectionsPerHost: the connections each loop's client keeps per host, when not the default above —
    ///   the broker's calls (token issuances, a few hundred milliseconds each at KIS, all from off the loops: the
    ///   first loop's client) need more at once than a gateway's rate-limited chart calls.
    public convenience init(group: MultiThreadedEventLoopGroup = .singleton, connectionsPerHost: Int? = nil) {
        self.init(group: group, canShutDown: true, connectionsPerHost: connectionsPerHost)
    }

    private init(group: MultiThreadedEventLoopGroup, canShutDown: Bool, connectionsPerHost: Int? = nil) {
        let loops = Array(group.makeIterator())
        var configuration = HTTPClient.Configuration.singletonConfiguration
        configuration.redirectConfiguration = .disallow
        configuration.connectionPool.retryConnectionEstablishment = false
        // No spans: kisgw bootstraps no tracer, and AsyncHTTPClient otherwise takes the global one (a no-op tracer)
        // and still builds each request's span name and attributes: 12 % of the samples between a miss's Redis
        // reply and its KIS request (bench/HISTORY.md, "Miss path"; the miss as a whole did not measurably change).
        configuration.tracing.tracer = nil
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit =
            connectionsPerHost ?? max(8, 64 / loops.count)
        self.clients = loops.map { HTTPClient(eventLoopGroup: $0, configuration: configuration) }
        self.byLoop = Dictionary(uniqueKeysWithValues: loops.enumerated().map { (ObjectIdentifier($1), $0) })
        self.canShutDown = canShutDown
    }

    /// The process's clients on `MultiThreadedEventLoopGroup.singleton`, never shut down (as `HTTPClient.shared`).
    public static let shared = KISHTTPClients(group: .singleton, canShutDown: false)

    /// The client whose connections live on the current event loop; off the group's loops, the first loop's.
    public var current: HTTPClient {
        MultiThreadedEventLoopGroup.currentEventLoop.flatMap(client(on:)) ?? clients[0]
    }

    /// The client of `loop`'s connections, if `loop` is one of the group's.
    public func client(on loop: any EventLoop) -> HTTPClient? {
        byLoop[ObjectIdentifier(loop)].map { clients[$0] }
    }

    /// Closes every client's connections. Does nothing for `shared`, which lives as long as the process.
    public func shutdown() async throws {
        guard canShutDown else { return }
        for client in clients { try await client.shutdown() }
    }
}
