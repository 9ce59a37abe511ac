package import Logging
package import NIOCore
import NIOPosix
import Synchronization

/// A bounded pool of pipelined connections with automatic reconnection.
///
/// The state machine runs under a mutex; connecting, closing and completing
/// waiters happen outside it.
package final class ConnectionPool: Sendable {
    private typealias Machine = PoolStateMachine<RedisConnection, CheckedContinuation<RedisConnection, any Error>>

    private let state: Mutex<Machine>
    private let waiterIDs = Atomic<Int>(0)
    /// Whether a failed connection attempt was logged as a warning since a connection last opened: the first failure
    /// of a streak (Redis down, a wrong password) is a warning naming the cause, the retries after it are debug.
    private let failureReported = Atomic<Bool>(false)
    private let configuration: RedisConfiguration
    private let group: any EventLoopGroup
    /// The group's loops: slot `i` always connects on `loops[i % loops.count]`, so the connections are spread
    /// evenly and every loop has its own (``connection(deadline:)`` prefers the caller's loop).
    private let loops: [any EventLoop]
    private let logger: Logger

    package init(configuration: RedisConfiguration, group: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.loops = Array(group.makeIterator())
        self.logger = logger
        self.state = Mutex(
            Machine(
                size: max(1, configuration.poolSize),
                initialDelay: configuration.initialReconnectDelay,
                maximumDelay: configuration.maximumReconnectDelay
            )
        )
    }

    /// A ready connection, waiting up to `deadline` for one to open; fails at once while Redis is down.
    ///
    /// Called on one of the group's event loops (a task that prefers it, or a handler), a connection on that
    /// same loop when one is ready: the command is written and its reply read where the caller runs, with no
    /// thread to wake either way.
    package func connection(deadline: NIODeadline) async throws -> RedisConnection {
        let here = MultiThreadedEventLoopGroup.currentEventLoop
        let (result, effects) = self.state.withLock { state in
            if let here { state.acquire(preferring: { $0.eventLoop === here }) } else { state.acquire() }
        }
        self.run(effects)
        switch result {
        case .use(let connection): return connection
        case .fail(let error): throw error
        case .wait: break
        }
        let id = self.waiterIDs.add(1, ordering: .relaxed).newValue
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<RedisConnection, any Error>) in
                let (immediate, effects) = self.state.withLock { $0.wait(id: id, waiter: continuation) }
                self.run(effects)
                switch immediate {
                case .use(let connection): continuation.resume(returning: connection)
                case .fail(let error): continuation.resume(throwing: error)
                case .wait: continuation.resume(throwing: RedisError(.unavailable, "internal: unexpected wait"))
                case nil:
                    // Cancelled before the waiter was queued, `onCancel` found nothing to remove: it ends here, not
                    // when a connection opens or the deadline passes.
                    if Task.isCancelled {
                        self.failWaiter(id: id, Self.cancelled)
                        return
                    }
                    self.group.any().scheduleTask(deadline: deadline) {
                        self.failWaiter(id: id, RedisError(.timeout, "timed out waiting for a connection to \(self.configuration.endpointDescription)"))
                    }
                }
            }
        } onCancel: {
            self.failWaiter(id: id, Self.cancelled)
        }
    }

    private static let cancelled = RedisError(.cancelled, "cancelled while waiting for a Redis connection")

    private func failWaiter(id: Int, _ error: RedisError) {
        if let waiter = self.state.withLock({ $0.cancelWaiter(id: id) }) {
            waiter.resume(throwing: error)
        }
    }

    /// Closes every connection and fails waiters; later requests fail with ``RedisError/Code/shutdown``.
    package func shutdown() async {
        let effects = self.state.withLock { $0.shutdown() }
        var closing: [EventLoopFuture<Void>] = []
        for effect in effects {
            if case .close(let connections) = effect {
                for connection in connections {
                    connection.close()
                    closing.append(connection.closeFuture)
                }
            }
        }
        self.run(effects.filter { if case .close = $0 { false } else { true } })
        for future in closing { try? await future.get() }
    }

    private func run(_ effects: [Machine.Effect]) {
        for effect in effects {
            switch effect {
            case .connect(let slot, let generation):
                self.connect(slot: slot, generation: generation)
            case .scheduleReconnect(let slot, let generation, let delay):
                self.logger.debug(
                    "redis reconnect scheduled",
                    metadata: ["slot": "\(slot)", "delay_ms": "\(delay.components.seconds * 1000 + delay.components.attoseconds / 1_000_000_000_000_000)"]
                )
                self.group.any().scheduleTask(in: TimeAmount(delay)) {
                    let effects = self.state.withLock { $0.reconnectTimerFired(slot: slot, generation: generation) }
                    self.run(effects)
                }
            case .succeedWaiters(let waiters, let connection):
                for waiter in waiters { waiter.resume(returning: connection) }
            case .failWaiters(let waiters, let error):
                for waiter in waiters { waiter.resume(throwing: error) }
            case .close(let connections):
                for connection in connections { connection.close() }
            }
        }
    }

    private func connect(slot: Int, generation: Int) {
        let eventLoop = self.loops[slot % self.loops.count]
        Task {
            do {
                let connection = try await RedisConnection.connect(
                    configuration: self.configuration,
                    id: slot,
                    eventLoop: eventLoop,
                    logger: self.logger
                )
                if self.failureReported.exchange(false, ordering: .relaxed) {
                    self.logger.notice("redis connection restored", metadata: ["endpoint": "\(self.configuration.endpointDescription)"])
                } else {
                    self.logger.debug("redis connection ready", metadata: ["slot": "\(slot)", "endpoint": "\(self.configuration.endpointDescription)"])
                }
                let effects = self.state.withLock { $0.connected(slot: slot, generation: generation, connection: connection) }
                self.run(effects)
                // Registered after the slot is ready, so a close that already happened is seen.
                connection.closeFuture.whenComplete { _ in
                    self.logger.debug("redis connection closed", metadata: ["slot": "\(slot)"])
                    let effects = self.state.withLock { $0.connectionClosed(slot: slot, generation: generation) }
                    self.run(effects)
                }
            } catch {
                let redisError = error as? RedisError ?? RedisError(.unavailable, "\(error)")
                // The message names the endpoint and the server's answer (WRONGPASS, NOAUTH, …), never the password.
                if !self.failureReported.exchange(true, ordering: .relaxed) {
                    self.logger.warning("redis connect failed; retrying in the background: \(redisError.message)")
                } else {
                    self.logger.debug("redis connect failed", metadata: ["slot": "\(slot)", "error": "\(redisError.message)"])
                }
                let effects = self.state.withLock { $0.connectFailed(slot: slot, generation: generation, error: redisError) }
                self.run(effects)
            }
        }
    }
}
