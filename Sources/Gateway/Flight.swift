import NIOCore
import NIOPosix
import ServerKit
import Synchronization

/// One chart fetch in this process and the requests waiting for it. The fetch runs to its end whoever waits (its
/// result fills the caches); each waiter waits at most until its own deadline (`[server] request_timeout_ms`), then
/// gets `upstream_timeout`.
final class Flight<Value: Sendable>: Sendable {
    typealias Outcome = Result<Value, Problem>

    private struct Waiter {
        var continuation: UnsafeContinuation<Outcome, Never>
        var timer: Scheduled<Void>?
    }

    private enum State {
        case running(waiters: [Int: Waiter], nextID: Int)
        case finished(Outcome)
    }

    private let state = Mutex(State.running(waiters: [:], nextID: 0))

    /// Hands `outcome` to every waiter (and to those who come later), and stops their timers.
    func finish(_ outcome: Outcome) {
        let waiters = state.withLock { state -> [Waiter] in
            guard case .running(let waiters, _) = state else { return [] }
            state = .finished(outcome)
            return Array(waiters.values)
        }
        for waiter in waiters {
            waiter.timer?.cancel()
            waiter.continuation.resume(returning: outcome)
        }
    }

    /// The fetch's outcome, or `upstream_timeout` if it has none by `deadline` (nil: no bound).
    /// - Parameter timeout: what a waiter still waiting at `deadline` is answered.
    func wait(until deadline: NIODeadline?, timeout: @autoclosure @escaping @Sendable () -> Problem = Flight.requestTimeout)
        async -> Outcome {
        await withUnsafeContinuation { continuation in
            let registered = state.withLock { state -> (id: Int?, outcome: Outcome?) in
                switch state {
                case .finished(let outcome):
                    return (nil, outcome)
                case .running(var waiters, let nextID):
                    waiters[nextID] = Waiter(continuation: continuation, timer: nil)
                    state = .running(waiters: waiters, nextID: nextID + 1)
                    return (nextID, nil)
                }
            }
            if let outcome = registered.outcome {
                continuation.resume(returning: outcome)
                return
            }
            guard let id = registered.id, let deadline else { return }
            // A timer on an event loop: no task to start or stop per request.
            let timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(deadline: deadline) {
                self.timeOut(id, timeout())
            }
            let stillWaiting = state.withLock { state -> Bool in
                guard case .running(var waiters, let nextID) = state, waiters[id] != nil else { return false }
                waiters[id]?.timer = timer
                state = .running(waiters: waiters, nextID: nextID)
                return true
            }
            if !stillWaiting { timer.cancel() }
        }
    }

    static var requestTimeout: Problem {
        Problem(.upstreamTimeout, "no answer within the request timeout ([server] request_timeout_ms)")
    }

    private func timeOut(_ id: Int, _ problem: Problem) {
        let waiter = state.withLock { state -> Waiter? in
            guard case .running(var waiters, let nextID) = state, let waiter = waiters.removeValue(forKey: id) else {
                return nil
            }
            state = .running(waiters: waiters, nextID: nextID)
            return waiter
        }
        waiter?.continuation.resume(returning: .failure(problem))
    }
}
