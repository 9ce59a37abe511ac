import NIOCore
import NIOPosix
import Redis
import Testing
import TestSupport

/// The pool's waiters for a connection, over a proxy that holds the handshake of the connection being opened.
@Suite("Redis connection pool waiters against KISGW_TEST_REDIS_URL", .timeLimit(.minutes(2)))
struct PoolWaiterTests {
    /// A caller waiting for a pool connection (none ready: the first is still opening, its PING held 2 s by a proxy)
    /// ends at once when its task is cancelled, whether the cancellation comes while it waits or came just before it
    /// asked: in the second case the cancellation handler ran before the waiter was queued, found nothing to remove,
    /// and the waiter then waited for the connection (or its deadline) as if not cancelled. Later callers are served.
    @Test func cancelledWaitForAConnectionEndsAtOnce() async throws {
        let server = try RedisConfiguration(url: TestServices.requireRedisURL())
        let proxy = try BlackholeProxy(to: server.port)
        defer { proxy.stop() }
        proxy.delay = .seconds(2)
        var configuration = server
        configuration.host = "127.0.0.1"
        configuration.port = proxy.port
        configuration.poolSize = 1
        configuration.connectTimeout = .seconds(10)
        let pool = ConnectionPool(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton,
                                  logger: TestEnvironment.logger)
        let clock = ContinuousClock()

        // How long a call waits for a connection, and how it ends.
        @Sendable func timedWait() async -> (Duration, (any Error)?) {
            let start = clock.now
            do {
                _ = try await pool.connection(deadline: .now() + .seconds(5))
                return (start.duration(to: clock.now), nil)
            } catch {
                return (start.duration(to: clock.now), error)
            }
        }
        // Cancelled 100 ms into its wait.
        let waiting = Task { await timedWait() }
        try await Task.sleep(for: .milliseconds(100))
        waiting.cancel()
        let (waited, waitError) = await waiting.value
        #expect(waited < .seconds(1), "waited \(waited)")
        #expect((waitError as? RedisError)?.code == .cancelled, "\(String(describing: waitError))")

        // Cancelled before it asks (while the connection is still opening).
        let early = Task { () -> (Duration, (any Error)?) in
            withUnsafeCurrentTask { $0?.cancel() }
            return await timedWait()
        }
        let (earlyWaited, earlyError) = await early.value
        #expect(earlyWaited < .seconds(1), "waited \(earlyWaited)")
        #expect((earlyError as? RedisError)?.code == .cancelled, "\(String(describing: earlyError))")

        // The pool still serves.
        let connection = try await pool.connection(deadline: .now() + .seconds(8))
        proxy.delay = .zero
        let reply = try await connection.send(RESPEncoder.encode(["ECHO", "served"]), deadline: .now() + .seconds(5)).get()
        #expect(reply.string == "served")
        await pool.shutdown()
    }
}
