import Synchronization

/// The reply to one command, completed once by the connection (reply, server
/// error, timeout, close) or by the caller giving up (cancellation), whichever
/// comes first.
///
/// This is what an `EventLoopPromise` did here before, without its costs on
/// this path: awaiting a promise's future from off the event loop hops to the
/// loop just to register the callback, and allocates the future, the callback
/// and a continuation. Here the caller's continuation is stored under a lock
/// and resumed directly by whichever thread completes the reply; a reply that
/// is already complete when awaited (later commands of a pipeline) returns
/// without suspending.
package final class RedisPendingReply: Sendable {
    private enum State {
        case pending
        case awaited(UnsafeContinuation<Result<RESPValue, RedisError>, Never>)
        case completed(Result<RESPValue, RedisError>)
        /// The result was handed to the awaiting caller.
        case consumed
    }

    private let state = Mutex(State.pending)

    package init() {}

    package func succeed(_ value: RESPValue) {
        self.complete(.success(value))
    }

    package func fail(_ error: RedisError) {
        self.complete(.failure(error))
    }

    /// Completes the reply unless it is complete already (then this does nothing).
    package func complete(_ result: Result<RESPValue, RedisError>) {
        let continuation = self.state.withLock { state -> UnsafeContinuation<Result<RESPValue, RedisError>, Never>? in
            switch state {
            case .pending:
                state = .completed(result)
                return nil
            case .awaited(let continuation):
                state = .consumed
                return continuation
            case .completed, .consumed:
                return nil
            }
        }
        continuation?.resume(returning: result)
    }

    /// The reply; cancelling the calling task fails it with ``RedisError/Code/cancelled``
    /// (the command keeps its place on the connection and its reply is discarded).
    /// Awaited by one caller only.
    package func get() async throws(RedisError) -> RESPValue {
        if let result = self.takeIfCompleted() { return try result.get() }
        let result = await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<RESPValue, RedisError>, Never>) in
                let ready = self.state.withLock { state -> Result<RESPValue, RedisError>? in
                    switch state {
                    case .pending:
                        state = .awaited(continuation)
                        return nil
                    case .completed(let result):
                        state = .consumed
                        return result
                    case .awaited, .consumed:
                        preconditionFailure("a Redis reply awaited twice")
                    }
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            self.fail(RedisError(.cancelled, "task cancelled while awaiting the reply"))
        }
        return try result.get()
    }

    private func takeIfCompleted() -> Result<RESPValue, RedisError>? {
        self.state.withLock { state in
            guard case .completed(let result) = state else { return nil }
            state = .consumed
            return result
        }
    }
}
