import Foundation
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

    /// After a reconnect, the renewed SUBSCRIBE is on its way (the client's bytes held 400 ms by a proxy) when the
    /// channel's only subscriber leaves, and a new one subscribes once Redis has the renewal. Redis has the
    /// UNSUBSCRIBE 400 ms later and the new SUBSCRIBE 400 ms after that: the answer to the renewal does not confirm
    /// the new subscription. Taken for its confirmation (it came after the UNSUBSCRIBE was sent), `subscribe`
    /// returned at once, and a message published while Redis counted no subscriber reached nobody.
    @Test func anEarlierSubscribesAnswerDoesNotConfirmALaterOne() async throws {
        let server = try RedisConfiguration(url: TestServices.requireRedisURL())
        let proxy = try BlackholeProxy(to: server.port)
        defer { proxy.stop() }
        var configuration = server
        configuration.host = "127.0.0.1"
        configuration.port = proxy.port
        configuration.commandTimeout = .seconds(10)
        configuration.connectTimeout = .seconds(10)
        let name = "kisgw-test-\(UUID().uuidString.prefix(8).lowercased())"
        configuration.clientName = name  // only its pub/sub connection is opened: no command goes through its pool
        let client = RedisClient(configuration: configuration, logger: TestEnvironment.logger)
        var direct = server
        direct.commandTimeout = .seconds(10)
        let admin = RedisClient(configuration: direct, logger: TestEnvironment.logger)
        let channel = TestEnvironment.uniqueKey()

        let old = try await client.subscribe(to: [channel])
        let reader = Task { for await _ in old {} }
        let oldIDs = try await Self.clientIDs(named: name, on: admin)
        #expect(oldIDs.count == 1)
        proxy.delay = .milliseconds(400)
        for id in oldIDs { _ = try await admin.send(["CLIENT", "KILL", "ID", RedisArgument(id)]) }
        // The new connection is named at the server (its handshake done): its renewed SUBSCRIBE is on its way.
        let reopened = await eventually(timeout: .seconds(10), every: .milliseconds(5)) {
            guard let ids = try? await Self.clientIDs(named: name, on: admin) else { return false }
            return !ids.isEmpty && ids.isDisjoint(with: oldIDs)
        }
        try #require(reopened)
        // The client has its answer a moment later and renews the channel: the subscriber leaves once it has (the
        // renewal reaches Redis 400 ms after it was sent).
        try await Task.sleep(for: .milliseconds(100))
        reader.cancel()
        // Redis has the renewal (it counts the subscriber again): the proxy has the UNSUBSCRIBE now, and passes it
        // on 400 ms later; the new SUBSCRIBE comes after it.
        let renewed = await eventually(timeout: .seconds(10), every: .milliseconds(5)) {
            (try? await admin.send(["PUBSUB", "NUMSUB", RedisArgument(channel)])) == Self.numsub(channel, 1)
        }
        try #require(renewed)
        let new = try await client.subscribe(to: [channel])
        // From now on Redis must count the subscriber. Watched for 1.5 s (the proxy passes the client's bytes on a
        // chunk at a time, each 400 ms after it took it); a message is published the moment Redis counts none, or at
        // the end.
        let watched = ContinuousClock.now + .seconds(1.5)
        var unsubscribed = false
        while ContinuousClock.now < watched {
            if try await admin.send(["PUBSUB", "NUMSUB", RedisArgument(channel)]) == Self.numsub(channel, 0) {
                unsubscribed = true
                break
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        _ = try await admin.publish("after subscribe returned", to: channel)
        let heard = await Self.first(of: new, within: .seconds(3))
        #expect(!unsubscribed, "Redis counted no subscriber after subscribe returned")
        #expect(heard?.string == "after subscribe returned")
        await client.shutdown()
        await admin.shutdown()
    }

    /// `PUBSUB NUMSUB channel`'s answer when `channel` has `count` subscribers.
    private static func numsub(_ channel: String, _ count: Int) -> RESPValue {
        .array([.bulkString(ByteBuffer(string: channel)), .integer(count)])
    }

    /// The ids of the server's connections named `name`.
    private static func clientIDs(named name: String, on admin: RedisClient) async throws -> Set<Int> {
        let list = try await admin.send(["CLIENT", "LIST"]).string ?? ""
        var ids: Set<Int> = []
        for line in list.split(separator: "\n") where line.contains(" name=\(name) ") {
            if let field = line.split(separator: " ").first(where: { $0.hasPrefix("id=") }), let id = Int(field.dropFirst(3)) {
                ids.insert(id)
            }
        }
        return ids
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
