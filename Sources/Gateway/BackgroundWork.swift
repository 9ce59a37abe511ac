import Logging
import ServiceLifecycle
import Synchronization

/// Work a request starts but does not wait for — a fetch that goes on after its waiters gave up, a background refresh,
/// sharing a fetched chart with the fleet, releasing a fleet lock — counted, so that a graceful shutdown finishes it
/// while the KIS clients and the store are still up instead of dropping it. A dropped fetch leaves its fleet lock held
/// until the lock expires, and the other gateways' requests for that chart wait for it meanwhile.
final class BackgroundWork: Sendable {
    private struct State {
        var running = 0
        var nextID = 0
        var waiters: [Int: UnsafeContinuation<Void, Never>] = [:]
        /// Waiters cancelled before they were registered.
        var cancelled: Set<Int> = []
    }

    private let state = Mutex(State())

    /// Runs `body` on a task of its own (preferring `executor`), counted until it returns.
    func start(on executor: (any TaskExecutor)? = nil, _ body: @escaping @Sendable () async -> Void) {
        state.withLock { $0.running += 1 }
        Task(executorPreference: executor) {
            await body()
            self.finished()
        }
    }

    /// How many are running.
    var running: Int { state.withLock { $0.running } }

    /// Returns once nothing is running (at once when nothing is), or when the calling task is cancelled.
    func drained() async {
        let id = state.withLock { s -> Int in
            s.nextID += 1
            return s.nextID
        }
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.running == 0 || s.cancelled.remove(id) != nil { return true }
                    s.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let continuation = state.withLock { s -> UnsafeContinuation<Void, Never>? in
                if let c = s.waiters.removeValue(forKey: id) { return c }
                s.cancelled.insert(id)
                return nil
            }
            continuation?.resume()
        }
        // A cancellation after the wait had ended left its id behind.
        _ = state.withLock { $0.cancelled.remove(id) }
    }

    private func finished() {
        let waiters = state.withLock { s -> [UnsafeContinuation<Void, Never>] in
            s.running -= 1
            guard s.running == 0, !s.waiters.isEmpty else { return [] }
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Runs until graceful shutdown, then until the gateway's background work is done. It comes before the date cache
/// and the server among the application's services, so it is shut down after the server has answered its last
/// request, and after it the store-event listener (fill notices still wake the work's waits). What bounds the wait is
/// the process's service group (`[server] shutdown_grace_s`, which also covers the requests in flight): it cancels the
/// wait, and the work still running is dropped.
struct BackgroundDrain: Service {
    let work: BackgroundWork
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        if Task.isCancelled { return }
        let running = work.running
        if running > 0 {
            logger.notice("finishing background work before exiting", metadata: ["tasks": "\(running)"])
        }
        await work.drained()
        let left = work.running
        if left > 0 {
            logger.warning("shutdown grace over; dropping background work", metadata: ["tasks": "\(left)"])
        }
    }
}
