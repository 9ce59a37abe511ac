package import NIOCore

/// The decisions of one command connection, without I/O.
///
/// Commands are answered strictly in the order they were written, so the
/// state is a FIFO of pending entries. An entry whose caller gave up (timeout)
/// keeps its place with its waiter removed: its reply is discarded when it
/// arrives, so the next command can never receive it. Generic over the waiter
/// so it can be tested without NIO promises.
package struct ConnectionStateMachine<Waiter> {
    package struct Entry {
        var waiter: Waiter?
        let deadline: NIODeadline
    }

    package enum State {
        case active
        case closed(RedisError)
    }

    package private(set) var state: State = .active
    package private(set) var pending: CircularBuffer<Entry> = CircularBuffer(initialCapacity: 16)
    /// Entries whose waiter timed out and whose reply is still to come.
    package private(set) var abandoned = 0
    /// The deadline the handler's timer is set for, if any.
    package private(set) var armedDeadline: NIODeadline?
    let maximumAbandoned: Int
    /// How long past its deadline the oldest command's reply may still be missing before the connection is taken
    /// for dead (nil: never).
    let stallLimit: TimeAmount?

    package init(maximumAbandoned: Int, stallLimit: TimeAmount? = nil) {
        self.maximumAbandoned = maximumAbandoned
        self.stallLimit = stallLimit
    }

    package enum EnqueueAction {
        /// Write the bytes; set the timer for `arm` if not `nil`.
        case write(arm: NIODeadline?)
        /// The connection is closed: fail the waiter at once.
        case fail(Waiter, RedisError)
    }

    package mutating func enqueue(_ waiter: Waiter, deadline: NIODeadline) -> EnqueueAction {
        switch self.state {
        case .closed(let error):
            return .fail(waiter, error)
        case .active:
            self.pending.append(Entry(waiter: waiter, deadline: deadline))
            if let armed = self.armedDeadline, armed <= deadline {
                return .write(arm: nil)
            }
            self.armedDeadline = deadline
            return .write(arm: deadline)
        }
    }

    package enum ReplyAction {
        case succeed(Waiter, RESPValue)
        case fail(Waiter, RedisError)
        /// The reply belonged to a command whose caller already gave up.
        case discard
        /// A reply nobody asked for: the stream is out of step; close the connection.
        case close(RedisError)
    }

    package mutating func received(_ value: RESPValue) -> ReplyAction {
        guard case .active = self.state else { return .discard }
        guard let entry = self.pending.popFirst() else {
            return .close(RedisError(.protocolError, "received a reply with no command in flight"))
        }
        guard let waiter = entry.waiter else {
            self.abandoned -= 1
            return .discard
        }
        if case .error(let message) = value {
            return .fail(waiter, .server(message))
        }
        return .succeed(waiter, value)
    }

    package struct TimerAction {
        /// Waiters to fail with a timeout.
        package var expired: [Waiter] = []
        /// When to fire next, if anything is pending.
        package var rearm: NIODeadline?
        /// Too many abandoned entries: close the connection with this error.
        package var close: RedisError?
    }

    package mutating func timerFired(now: NIODeadline) -> TimerAction {
        var action = TimerAction()
        self.armedDeadline = nil
        guard case .active = self.state else { return action }
        var next: NIODeadline?
        for index in self.pending.indices {
            guard let waiter = self.pending[index].waiter else { continue }
            let deadline = self.pending[index].deadline
            if deadline <= now {
                action.expired.append(waiter)
                self.pending[index].waiter = nil
                self.abandoned += 1
            } else if next.map({ deadline < $0 }) ?? true {
                next = deadline
            }
        }
        if self.abandoned > self.maximumAbandoned {
            action.close = RedisError(
                .tooManyPending,
                "connection recycled: \(self.abandoned) timed-out commands still awaiting replies"
            )
        } else if let limit = self.stallLimit, let oldest = self.pending.first, oldest.deadline + limit <= now {
            // Replies come in order: the oldest command's reply is long overdue and nothing after it was answered.
            // A socket whose peer is gone without a reset (a failover, a partition) stays like this for good; a new
            // connection reaches the server once it is reachable again.
            action.close = RedisError(
                .timeout, "connection recycled: no reply for \(self.pending.count) commands, the oldest overdue")
        }
        // While anything is pending, the timer also fires when the oldest command is `stallLimit` overdue: with no
        // later command to time out, a silent connection would otherwise never be checked again.
        if action.close == nil, let limit = self.stallLimit, let oldest = self.pending.first {
            let stalled = oldest.deadline + limit
            if next.map({ stalled < $0 }) ?? true { next = stalled }
        }
        self.armedDeadline = next
        action.rearm = next
        return action
    }

    /// Closes the state: returns every waiter still waiting, to be failed with `error`.
    package mutating func close(_ error: RedisError) -> [Waiter] {
        guard case .active = self.state else { return [] }
        self.state = .closed(error)
        let waiters = self.pending.compactMap(\.waiter)
        self.pending.removeAll(keepingCapacity: false)
        self.abandoned = 0
        self.armedDeadline = nil
        return waiters
    }

    package var isActive: Bool {
        if case .active = self.state { return true }
        return false
    }
}
