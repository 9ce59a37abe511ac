import Foundation
import Logging
import NIOCore
import NIOPosix
import Redis
import Testing
import TestSupport

/// Command families against the shared server named by `KISGW_TEST_REDIS_URL` (each test fails when it is unset).
@Suite("Redis client against KISGW_TEST_REDIS_URL", .timeLimit(.minutes(2)))
struct RedisClientTests {
    let client: RedisClient

    init() throws {
        var configuration = try RedisConfiguration(url: TestServices.requireRedisURL())
        configuration.commandTimeout = .seconds(10)
        configuration.poolSize = 4
        self.client = RedisClient(configuration: configuration, logger: TestEnvironment.logger)
    }

    @Test func stringsRoundTrip() async throws {
        defer { Task { [client] in await client.shutdown() } }
        let key = TestEnvironment.uniqueKey()
        #expect(try await client.get(key) == nil)
        #expect(try await client.set(key, to: "hello"))
        #expect(try await client.getString(key) == "hello")
        #expect(try await client.set(key, to: "other", condition: .ifAbsent) == false)
        #expect(try await client.set(key, to: "second", condition: .ifPresent))
        #expect(try await client.getString(key) == "second")
        #expect(try await client.exists([key, key + ":missing"]) == 1)
        #expect(try await client.delete([key]) == 1)
        #expect(try await client.set(key, to: "new", condition: .ifPresent) == false)
        #expect(try await client.set(key, to: "new", condition: .ifAbsent))
        #expect(try await client.delete([key, key + ":missing"]) == 1)
        await client.shutdown()
    }

    @Test func binarySafeValues() async throws {
        let key = TestEnvironment.uniqueKey()
        var bytes: [UInt8] = Array(0...255) + Array("\r\n$-1\r\n*3\r\n".utf8) + [0, 0, 13, 10]
        for index in 0..<6000 { bytes.append(UInt8(truncatingIfNeeded: index &* 31)) }
        try await client.set(key, to: ByteBuffer(bytes: bytes), expiration: .seconds(60))
        let stored = try await client.get(key)
        #expect(stored.map { Array($0.readableBytesView) } == bytes)
        // A binary key, too.
        let binaryKey: [UInt8] = Array(key.utf8) + [0, 255, 13, 10]
        _ = try await client.send(["SET", RedisArgument(binaryKey), RedisArgument(bytes), "PX", 60000])
        let reply = try await client.send(["GET", RedisArgument(binaryKey)])
        #expect(reply.bytes == bytes)
        #expect(try await client.send(["STRLEN", RedisArgument(binaryKey)]) == .integer(bytes.count))
        // Empty values are distinct from missing ones.
        try await client.set(key, to: "")
        #expect(try await client.get(key)?.readableBytes == 0)
        _ = try await client.send(["DEL", RedisArgument(key), RedisArgument(binaryKey)])
        await client.shutdown()
    }

    @Test func expiryAndCounters() async throws {
        let key = TestEnvironment.uniqueKey()
        #expect(try await client.timeToLive(key) == .missing)
        try await client.set(key, to: "v")
        #expect(try await client.timeToLive(key) == .persistent)
        #expect(try await client.expire(key, after: .seconds(30)))
        guard case .expiresIn(let ttl) = try await client.timeToLive(key) else {
            Issue.record("expected an expiry")
            return
        }
        #expect(ttl > .seconds(20) && ttl <= .seconds(30))
        try await client.set(key, to: "v", expiration: .milliseconds(50))
        #expect(await eventually { (try? await client.get(key)) == .some(nil) })
        let counter = TestEnvironment.uniqueKey() + ":n"
        #expect(try await client.increment(counter) == 1)
        #expect(try await client.increment(counter, by: 41) == 42)
        #expect(try await client.increment(counter, by: -2) == 40)
        try await client.delete([counter])
        await client.shutdown()
    }

    @Test func sets() async throws {
        let key = TestEnvironment.uniqueKey()
        #expect(try await client.setAdd(key, members: ["a", "b", "c"]) == 3)
        #expect(try await client.setAdd(key, members: ["c", "d"]) == 1)
        #expect(try await client.setCount(key) == 4)
        #expect(try await client.setIsMember(key, member: "b"))
        #expect(try await client.setIsMember(key, member: "z") == false)
        #expect(try await client.setRemove(key, members: ["a", "z"]) == 1)
        let members = Set(try await client.setMembers(key).map { String(buffer: $0) })
        #expect(members == ["b", "c", "d"])
        #expect(try await client.setMembers(key + ":missing").isEmpty)
        try await client.delete([key])
        await client.shutdown()
    }

    @Test func serverErrorsAreTypedAndHarmless() async throws {
        let key = TestEnvironment.uniqueKey()
        try await client.set(key, to: "not a number")
        do {
            _ = try await client.increment(key)
            Issue.record("INCR on text must fail")
        } catch {
            #expect(error.code == .server)
            #expect(error.serverErrorPrefix == "ERR")
        }
        do {
            _ = try await client.setAdd(key, members: ["x"])
            Issue.record("SADD on a string must fail")
        } catch {
            #expect(error.code == .server)
            #expect(error.serverErrorPrefix == "WRONGTYPE")
        }
        do {
            _ = try await client.send(["NOSUCHCOMMAND", "x"])
            Issue.record("unknown command must fail")
        } catch {
            #expect(error.code == .server)
        }
        // The connection is still in step.
        #expect(try await client.send(["ECHO", "after errors"]).string == "after errors")
        try await client.delete([key])
        await client.shutdown()
    }

    @Test func nestedRepliesDecode() async throws {
        let reply = try await client.send(["EVAL", "return {1, 'two', {3, false}, redis.error_reply('boom')}", 0])
        let elements = try #require(reply.array)
        #expect(elements.count == 4)
        #expect(elements.prefix(3) == [.integer(1), .bulkString(ByteBuffer(string: "two")), .array([.integer(3), .null])])
        guard case .error(let message) = elements[3] else {
            Issue.record("expected a nested error, got \(elements[3])")
            return
        }
        #expect(message.hasSuffix("boom"))
        await client.shutdown()
    }

    @Test func pipelineOfTenThousandCommands() async throws {
        let key = TestEnvironment.uniqueKey()
        let commands = (0..<10_000).map { _ in RedisCommand("INCR", [RedisArgument(key)]) }
        let results = try await client.pipeline(commands, timeout: .seconds(60))
        #expect(results.count == 10_000)
        let values = results.compactMap { try? $0.get().int }
        #expect(values == Array(1...10_000))
        // Mixed commands with an error in the middle keep their order.
        let mixed = try await client.pipeline([
            ["ECHO", "a"], ["INCRBY", RedisArgument(key), "x"], ["ECHO", "b"], ["GET", RedisArgument(key)],
        ])
        #expect(try mixed[0].get().string == "a")
        #expect((try? mixed[1].get()) == nil)
        #expect(try mixed[2].get().string == "b")
        #expect(try mixed[3].get().string == "10000")
        try await client.delete([key])
        await client.shutdown()
    }

    @Test func tenThousandConcurrentPipelinedSends() async throws {
        // Independent sends from many tasks share the pool's connections and are pipelined.
        let prefix = TestEnvironment.uniqueKey()
        let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<200 {
                group.addTask {
                    var mismatches = 0
                    for step in 0..<50 {
                        let token = "\(prefix):\(worker):\(step)"
                        let echoed = try await client.send(["ECHO", RedisArgument(token)], timeout: .seconds(60))
                        if echoed.string != token { mismatches += 1 }
                        let key = "\(prefix):\(worker)"
                        try await client.set(key, to: token, expiration: .seconds(60))
                        if try await client.getString(key) != token { mismatches += 1 }
                    }
                    return mismatches
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(mismatches == 0)
        await client.shutdown()
    }

    @Test func aTaskOnAnEventLoopUsesThatLoopsConnections() async throws {
        // Two loops, four connections (opened on the loops in turn): commands sent from a task running on one loop
        // go over that loop's connections only, and the task resumes there.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        var configuration = try RedisConfiguration(url: TestServices.requireRedisURL())
        configuration.poolSize = 4
        let client = RedisClient(configuration: configuration, eventLoopGroup: group, logger: TestEnvironment.logger)
        // Open all four: the pool grows by one connection per use until it is full.
        for _ in 0..<40 where try await Set(clientIDs(client, count: 8)).count < 4 {
            try await Task.sleep(for: .milliseconds(20))
        }
        var seen: [Set<Int>] = []
        for loop in group.makeIterator() {
            let ids = try await Task(executorPreference: OnLoop(loop)) {
                var ids: Set<Int> = []
                for _ in 0..<12 {
                    ids.insert(try await client.send(["CLIENT", "ID"]).int ?? -1)
                    #expect(loop.inEventLoop)
                }
                return ids
            }.value
            seen.append(ids)
        }
        #expect(seen.count == 2 && seen.allSatisfy { $0.count == 2 })
        #expect(seen[0].isDisjoint(with: seen[1]))
        await client.shutdown()
        try await group.shutdownGracefully()
        await self.client.shutdown()
    }

    /// The connection ids of `count` concurrent `CLIENT ID` calls.
    private func clientIDs(_ client: RedisClient, count: Int) async throws -> [Int] {
        try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<count { group.addTask { try await client.send(["CLIENT", "ID"]).int ?? -1 } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
    }

    @Test func scriptsRunAndSurviveScriptFlush() async throws {
        let key = TestEnvironment.uniqueKey()
        let script = RedisScript(name: "incr-twice", "redis.call('INCR', KEYS[1]); return redis.call('INCRBY', KEYS[1], ARGV[1])")
        #expect(try await client.evaluate(script, keys: [RedisArgument(key)], arguments: [5]) == .integer(6))
        #expect(try await client.evaluate(script, keys: [RedisArgument(key)], arguments: [5]) == .integer(12))
        _ = try await client.send(["SCRIPT", "FLUSH"])
        #expect(try await client.evaluate(script, keys: [RedisArgument(key)], arguments: [1]) == .integer(14))
        // A script error is a server error, not a crash.
        let failing = RedisScript(name: "failing", "return redis.call('INCR', KEYS[1], 'extra')")
        await #expect(throws: RedisError.self) {
            try await client.evaluate(failing, keys: [RedisArgument(key)])
        }
        try await client.delete([key])
        await client.shutdown()
    }

    @Test func publishAndSubscribe() async throws {
        let channel = TestEnvironment.uniqueKey()
        let subscription = try await client.subscribe(to: [channel], patterns: [channel + ":*"])
        var iterator = subscription.makeAsyncIterator()
        #expect(try await client.publish("one", to: channel) >= 1)
        #expect(try await client.publish(RedisArgument([0, 1, 2]), to: channel + ":sub") >= 1)
        let first = await iterator.next()
        #expect(first?.channel == channel)
        #expect(first?.string == "one")
        #expect(first?.pattern == nil)
        let second = await iterator.next()
        #expect(second?.channel == channel + ":sub")
        #expect(second?.pattern == channel + ":*")
        #expect(second.map { Array($0.payload.readableBytesView) } == [0, 1, 2])
        await client.shutdown()
        // Shutdown ends the subscription.
        #expect(await iterator.next() == nil)
    }

    @Test func killedConnectionIsReplaced() async throws {
        var configuration = client.configuration
        configuration.poolSize = 1
        let single = RedisClient(configuration: configuration, logger: TestEnvironment.logger)
        let id = try #require(try await single.send(["CLIENT", "ID"]).int)
        #expect(try await client.send(["CLIENT", "KILL", "ID", RedisArgument(id)]) == .integer(1))
        let recovered = await eventually {
            guard let newID = try? await single.send(["CLIENT", "ID"]).int else { return false }
            return newID != id
        }
        #expect(recovered)
        #expect(try await single.send(["ECHO", "still paired"]).string == "still paired")
        await single.shutdown()
        await client.shutdown()
    }

    /// The mechanism behind the killed-connection race: the pool can hand out a connection just before it learns
    /// that the socket closed. A command sent after NIO has torn the channel's pipeline down must fail at once
    /// with `connectionClosed`, not vanish with the handler and wait forever (the handler owns the deadline timer).
    @Test func sendOnAClosedConnectionFailsAtOnce() async throws {
        let connection = try await RedisConnection.connect(
            configuration: client.configuration,
            id: 0,
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: TestEnvironment.logger
        )
        connection.close()
        try await connection.closeFuture.get()
        let deadline = NIODeadline.now() + .seconds(30)
        let single = connection.send(RESPEncoder.encode(["PING"]), deadline: deadline)
        let batch = connection.send(batch: [RESPEncoder.encode(["PING"]), RESPEncoder.encode(["PING"])], deadline: deadline)
        for reply in [single] + batch {
            // Before the fix these replies were never completed: give up on them after 5 s.
            let giveUp = connection.eventLoop.scheduleTask(in: .seconds(5)) {
                reply.fail(RedisError(.timeout, "never completed"))
            }
            do {
                _ = try await reply.get()
                Issue.record("a command on a closed connection succeeded")
            } catch {
                #expect(error.code == .connectionClosed, "\(error)")
            }
            giveUp.cancel()
        }
        await client.shutdown()
    }

    @Test func cancelledCommandDoesNotShiftReplies() async throws {
        var configuration = client.configuration
        configuration.poolSize = 1
        let single = RedisClient(configuration: configuration, logger: TestEnvironment.logger)
        let key = TestEnvironment.uniqueKey()
        _ = try await single.send(["PING"])
        // BLPOP blocks this connection for up to 3 s; cancel the waiting task meanwhile.
        let blocked = Task { try await single.send(["BLPOP", RedisArgument(key), "3"], timeout: .seconds(30)) }
        // Cancelled once Redis has it (a client blocked in BLPOP), not after a guess at how long sending takes.
        let blocking = try await eventually(timeout: .seconds(5), every: .milliseconds(10)) {
            let clients = try await client.send(["CLIENT", "LIST"]).string ?? ""
            return clients.split(separator: "\n").contains { $0.contains("cmd=blpop") && $0.contains("flags=b") }
        }
        #expect(blocking, "BLPOP never reached Redis")
        blocked.cancel()
        let result = await blocked.result
        #expect(throws: RedisError.self) { try result.get() }
        // The next command on the same connection gets its own reply, not BLPOP's.
        for index in 0..<5 {
            #expect(try await single.send(["ECHO", RedisArgument("after \(index)")], timeout: .seconds(30)).string == "after \(index)")
        }
        await single.shutdown()
        await client.shutdown()
    }

    @Test func commandsAfterShutdownFail() async throws {
        _ = try await client.send(["PING"])
        await client.shutdown()
        do {
            _ = try await client.send(["PING"])
            Issue.record("expected shutdown error")
        } catch {
            #expect(error.code == .shutdown)
        }
    }
}

/// Runs a task's jobs on one event loop (as the gateway runs a miss on its connection's loop).
final class OnLoop: TaskExecutor {
    let loop: any EventLoop
    init(_ loop: any EventLoop) { self.loop = loop }
    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
