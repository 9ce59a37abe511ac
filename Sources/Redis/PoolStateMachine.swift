/// The decisions of the connection pool, without I/O or locks.
///
/// A fixed number of slots, each holding at most one connection. Commands are
/// multiplexed (pipelined) over the ready connections in turn. A closed
/// connection is replaced at once; failed attempts back off exponentially.
/// While no connection is ready and the last attempt failed, the pool is
/// *down* and requests fail at once instead of queueing. Generic over the
/// connection and waiter types so it can be tested without sockets.
package struct PoolStateMachine<Connection, Waiter> {
    package enum Slot {
        case idle
        case connecting
        case ready(Connection)
        case backingOff
    }

    package struct SlotInfo {
        var slot: Slot = .idle
        var generation = 0
        var failures = 0
    }

    package private(set) var slots: [SlotInfo]
    private var waiters: [(id: Int, waiter: Waiter)] = []
    private var nextReady = 0
    package private(set) var lastError: RedisError?
    package private(set) var isShutdown = false
    let initialDelay: Duration
    let maximumDelay: Duration

    package init(size: Int, initialDelay: Duration, maximumDelay: Duration) {
        precondition(size > 0, "pool size must be positive")
        self.slots = Array(repeating: SlotInfo(), count: size)
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
    }

    /// Work for the caller to do outside the lock.
    package enum Effect {
        /// Open a connection for `slot`; report back with `generation`.
        case connect(slot: Int, generation: Int)
        /// Call ``reconnectTimerFired(slot:generation:)`` after `delay`.
        case scheduleReconnect(slot: Int, generation: Int, delay: Duration)
        case succeedWaiters([Waiter], Connection)
        case failWaiters([Waiter], RedisError)
        case close([Connection])
    }

    package enum AcquireResult {
        case use(Connection)
        case fail(RedisError)
        /// No connection yet, one is being opened: call ``wait(id:waiter:)``.
        case wait
    }

    private var readyCount: Int {
        self.slots.reduce(0) { if case .ready = $1.slot { $0 + 1 } else { $0 } }
    }

    private var isConnecting: Bool {
        self.slots.contains { if case .connecting = $0.slot { true } else { false } }
    }

    /// The pool is down: nothing ready, nothing about to be, and the last attempt failed.
    package var isDown: Bool {
        self.readyCount == 0 && !self.isConnecting && self.lastError != nil
    }

    private mutating func startConnecting(_ index: Int) -> Effect {
        self.slots[index].generation += 1
        self.slots[index].slot = .connecting
        return .connect(slot: index, generation: self.slots[index].generation)
    }

    /// Grows the pool by one connection if a slot has never been opened and none is being opened.
    private mutating func growIfUseful(into effects: inout [Effect]) {
        guard !self.isConnecting, let idle = self.slots.firstIndex(where: { if case .idle = $0.slot { true } else { false } })
        else { return }
        effects.append(self.startConnecting(idle))
    }

    /// A connection for one command (or batch): the ready connections in turn, or in turn among those
    /// `preferred` accepts when there is one.
    package mutating func acquire(preferring preferred: ((Connection) -> Bool)? = nil) -> (AcquireResult, [Effect]) {
        var effects: [Effect] = []
        let result = self.acquire(effects: &effects, preferring: preferred)
        return (result, effects)
    }

    private mutating func acquire(effects: inout [Effect], preferring preferred: ((Connection) -> Bool)? = nil)
        -> AcquireResult
    {
        if self.isShutdown { return .fail(RedisError(.shutdown, "the Redis client was shut down")) }
        if let preferred, let connection = self.nextReady(where: preferred, effects: &effects) { return .use(connection) }
        if let connection = self.nextReady(where: { _ in true }, effects: &effects) { return .use(connection) }
        if self.isConnecting { return .wait }
        if let lastError = self.lastError {
            return .fail(RedisError(.unavailable, "Redis is unavailable, reconnecting in the background (\(lastError.message))"))
        }
        self.growIfUseful(into: &effects)
        return .wait
    }

    /// The next ready connection `accept` takes, in turn from the last one used.
    private mutating func nextReady(where accept: (Connection) -> Bool, effects: inout [Effect]) -> Connection? {
        let count = self.slots.count
        for offset in 0..<count {
            let index = (self.nextReady + offset) % count
            if case .ready(let connection) = self.slots[index].slot, accept(connection) {
                self.nextReady = (index + 1) % count
                self.growIfUseful(into: &effects)
                return connection
            }
        }
        return nil
    }

    /// Registers a waiter after ``acquire()`` said `.wait`. The state may
    /// have moved on in between, so this can resolve at once (non-`nil` result).
    package mutating func wait(id: Int, waiter: Waiter) -> (AcquireResult?, [Effect]) {
        var effects: [Effect] = []
        switch self.acquire(effects: &effects) {
        case .wait:
            self.waiters.append((id, waiter))
            return (nil, effects)
        case let other:
            return (other, effects)
        }
    }

    /// Removes a waiter (timeout or cancellation); returns it if it was still waiting.
    package mutating func cancelWaiter(id: Int) -> Waiter? {
        guard let index = self.waiters.firstIndex(where: { $0.id == id }) else { return nil }
        return self.waiters.remove(at: index).waiter
    }

    package mutating func connected(slot: Int, generation: Int, connection: Connection) -> [Effect] {
        guard !self.isShutdown else { return [.close([connection])] }
        guard self.slots[slot].generation == generation, case .connecting = self.slots[slot].slot else {
            return [.close([connection])]
        }
        self.slots[slot].slot = .ready(connection)
        self.slots[slot].failures = 0
        self.lastError = nil
        guard !self.waiters.isEmpty else { return [] }
        let waiters = self.waiters.map(\.waiter)
        self.waiters.removeAll()
        return [.succeedWaiters(waiters, connection)]
    }

    package mutating func connectFailed(slot: Int, generation: Int, error: RedisError) -> [Effect] {
        guard !self.isShutdown, self.slots[slot].generation == generation, case .connecting = self.slots[slot].slot else {
            return []
        }
        self.slots[slot].failures += 1
        self.slots[slot].slot = .backingOff
        self.lastError = error
        var effects: [Effect] = [
            .scheduleReconnect(slot: slot, generation: generation, delay: self.delay(failures: self.slots[slot].failures))
        ]
        if self.readyCount == 0 && !self.isConnecting && !self.waiters.isEmpty {
            let waiters = self.waiters.map(\.waiter)
            self.waiters.removeAll()
            effects.append(.failWaiters(waiters, RedisError(.unavailable, error.message)))
        }
        return effects
    }

    package mutating func reconnectTimerFired(slot: Int, generation: Int) -> [Effect] {
        guard !self.isShutdown, self.slots[slot].generation == generation, case .backingOff = self.slots[slot].slot else {
            return []
        }
        return [self.startConnecting(slot)]
    }

    /// A ready connection closed (server restart, CLIENT KILL, network): replace it at once.
    package mutating func connectionClosed(slot: Int, generation: Int) -> [Effect] {
        guard !self.isShutdown, self.slots[slot].generation == generation, case .ready = self.slots[slot].slot else {
            return []
        }
        return [self.startConnecting(slot)]
    }

    package mutating func shutdown() -> [Effect] {
        guard !self.isShutdown else { return [] }
        self.isShutdown = true
        var connections: [Connection] = []
        for index in self.slots.indices {
            if case .ready(let connection) = self.slots[index].slot { connections.append(connection) }
            self.slots[index].slot = .idle
            self.slots[index].generation += 1
        }
        var effects: [Effect] = [.close(connections)]
        if !self.waiters.isEmpty {
            effects.append(.failWaiters(self.waiters.map(\.waiter), RedisError(.shutdown, "the Redis client was shut down")))
            self.waiters.removeAll()
        }
        return effects
    }

    /// Exponential backoff: initial × 2^(failures−1), capped, with up to 25 % jitter off.
    package func delay(failures: Int) -> Duration {
        let exponent = min(max(failures - 1, 0), 20)
        var delay = self.initialDelay * (1 << exponent)
        if delay > self.maximumDelay { delay = self.maximumDelay }
        let jitter = Double.random(in: 0.75...1.0)
        return delay * jitter
    }
}

extension PoolStateMachine.Effect: Sendable where Connection: Sendable, Waiter: Sendable {}
extension PoolStateMachine.AcquireResult: Sendable where Connection: Sendable {}
