import NIOCore
import NIOPosix
import Redis
import Testing
import TestSupport

/// Subscriptions coming and going on different threads over one client's pub/sub connection.
@Suite("Redis pub/sub races against KISGW_TEST_REDIS_URL", .timeLimit(.minutes(3)))
struct PubSubRaceTests {
    /// The last subscriber of a channel (or pattern) leaves on one thread while a new one subscribes to it from the
    /// pub/sub connection's event loop. The UNSUBSCRIBE decided first must reach Redis first: written after the new
    /// SUBSCRIBE (the subscribe wrote at once on the loop, the unsubscribe's write was queued behind it), it
    /// unsubscribed the new subscriber at the server, which stayed registered here and never heard a message. And
    /// `subscribe` must return only once Redis has its own SUBSCRIBE: the confirmation of the leaver's SUBSCRIBE,
    /// still in flight, is not one. Every round, a PUBLISH after `subscribe` returned must reach every new subscriber.
    @Test func resubscribingAsTheLastSubscriberLeavesStillHears() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var configuration = try RedisConfiguration(url: TestServices.requireRedisURL())
        configuration.commandTimeout = .seconds(10)
        let client = RedisClient(configuration: configuration, eventLoopGroup: group, logger: TestEnvironment.logger)
        let publisher = RedisClient(configuration: configuration, logger: TestEnvironment.logger)
        let loop = group.next()
        let base = TestEnvironment.uniqueKey()
        let width = 12
        var heard = 0
        var missed: [String] = []
        for round in 0..<25 {
            let channels = (0..<width).map { "\(base):r\(round):c\($0)" }
            let patterns = (0..<width).map { "\(base):r\(round):p\($0):*" }
            // One subscriber to each channel and pattern, confirmed, read by a task of its own.
            var readers: [Task<Void, Never>] = []
            for index in 0..<width {
                for subscription in [try await client.subscribe(to: [channels[index]]),
                                     try await client.subscribe(to: [], patterns: [patterns[index]])] {
                    readers.append(Task { for await _ in subscription {} })
                }
            }
            // Each leaves (its reader cancelled, from the global executor) as a new one subscribes on the loop.
            let renewed = try await withThrowingTaskGroup(of: (String, RedisSubscription)?.self) { tasks in
                for index in 0..<width {
                    for (offset, isPattern) in [(0, false), (1, true)] {
                        let reader = readers[2 * index + offset]
                        tasks.addTask { reader.cancel(); return nil }
                        tasks.addTask(executorPreference: OnLoop(loop)) {
                            let subscription = isPattern
                                ? try await client.subscribe(to: [], patterns: [patterns[index]])
                                : try await client.subscribe(to: [channels[index]])
                            return (isPattern ? patterns[index] : channels[index], subscription)
                        }
                    }
                }
                return try await tasks.reduce(into: [(String, RedisSubscription)]()) { if let new = $1 { $0.append(new) } }
            }
            #expect(renewed.count == 2 * width)
            // A message on each channel (a channel each pattern matches): each new subscriber must hear its own.
            for index in 0..<width {
                _ = try await publisher.publish(RedisArgument(channels[index]), to: channels[index])
                let matching = String(patterns[index].dropLast()) + "x"
                _ = try await publisher.publish(RedisArgument(patterns[index]), to: matching)
            }
            let outcomes = await withTaskGroup(of: (String, Bool).self) { tasks in
                for (name, subscription) in renewed {
                    tasks.addTask { (name, await Self.first(of: subscription, within: .seconds(2))?.string == name) }
                }
                return await tasks.reduce(into: [(String, Bool)]()) { $0.append($1) }
            }
            for (name, ok) in outcomes {
                if ok { heard += 1 } else { missed.append(name) }
            }
        }
        let missedCount = missed.count
        #expect(missedCount == 0, "\(missedCount) new subscribers heard nothing (\(heard) did), e.g. \(missed.prefix(3))")
        await client.shutdown()
        await publisher.shutdown()
        try await group.shutdownGracefully()
    }

    /// The first message of `subscription`, or `nil` when none comes within `timeout`. (The read is cancelled
    /// then, which ends the subscription.)
    private static func first(of subscription: RedisSubscription, within timeout: Duration) async -> RedisPubSubMessage? {
        await withTaskGroup(of: RedisPubSubMessage?.self) { group in
            group.addTask {
                var iterator = subscription.makeAsyncIterator()
                return await iterator.next()
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }
}

/// Runs a task's jobs on one event loop.
private final class OnLoop: TaskExecutor {
    let loop: any EventLoop
    init(_ loop: any EventLoop) { self.loop = loop }
    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
