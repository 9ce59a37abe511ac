public import Hummingbird
import ServiceLifecycle
import Synchronization

/// A server (a Hummingbird application) that a test runs and then stops gracefully.
///
/// Cancelling `runService()` makes Hummingbird leave its accept loop at once: a connection it has accepted but not
/// yet handed to a handler is dropped, and its NIOAsyncWriter, deinited unfinished, crashes the whole test process
/// ("Deinited NIOAsyncWriter without calling finish()"). ``stop()`` shuts the server down gracefully instead: it stops
/// accepting, still serves what it accepted, closes idle connections and lets requests in flight finish — for at
/// most 3 s, after which its `ServiceGroup` cancels it as before, so a client that never finishes its request cannot
/// hang the test.
///
/// ```swift
/// let server = TestServer(app)
/// try await withThrowingTaskGroup(of: Void.self) { group in
///     group.addTask { try await server.run() }
///     try await stopping([server]) { try await body() }
/// }
/// ```
public final class TestServer: Sendable {
    private let group: ServiceGroup
    /// Whether ``run()`` has returned, and the ``stop()`` calls waiting for it to.
    private let state = Mutex<(finished: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    /// Runs `app` as its `runService()` does (in a `ServiceGroup` logging with the application's logger), with no
    /// signal handlers and a graceful shutdown limited to 3 s.
    public init(_ app: some ApplicationProtocol) {
        var configuration = ServiceGroupConfiguration(services: [app], logger: app.logger)
        configuration.maximumGracefulShutdownDuration = .seconds(3)
        group = ServiceGroup(configuration: configuration)
    }

    /// Runs the server until ``stop()`` (or cancellation); call it once, in a task-group child or a `Task`.
    public func run() async throws {
        defer {
            let waiters = state.withLock { state in
                state.finished = true
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
        try await group.run()
    }

    /// Shuts the server down gracefully and returns once ``run()`` has returned: at once if it already has (ended by
    /// cancellation, say); if ``run()`` has not started yet, it shuts down as soon as it does.
    public func stop() async {
        await group.triggerGracefulShutdown()
        await withCheckedContinuation { waiter in
            let finished = state.withLock { state in
                if !state.finished { state.waiters.append(waiter) }
                return state.finished
            }
            if finished { waiter.resume() }
        }
    }
}

/// Runs `body`, then — whether it returned or threw — stops `servers` gracefully one after the other, in the order
/// given: the servers that call others (gateways, brokers) before the ones they call (the simulator, stand-ins).
public func stopping<T>(_ servers: [TestServer], after body: () async throws -> T) async throws -> T {
    do {
        let result = try await body()
        for server in servers { await server.stop() }
        return result
    } catch {
        for server in servers { await server.stop() }
        throw error
    }
}
