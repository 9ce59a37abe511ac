import Foundation
import Logging
import NIOCore
import NIOSSL
import Redis
import Synchronization
import Testing
import TestSupport

/// Restarts, kills and pauses — each test runs its own `redis-server` (so it needs no KISGW_TEST_REDIS_URL, only
/// redis-server installed; where it is not, each test fails saying so).
@Suite(
    "Redis client resilience (own redis-server)",
    .serialized,
    .timeLimit(.minutes(3))
)
struct ResilienceTests {
    func makeClient(_ server: RedisServerProcess, poolSize: Int = 4, timeout: Duration = .seconds(5),
                    stallLimit: Duration = .seconds(1)) throws -> RedisClient {
        var configuration = try RedisConfiguration(url: server.url)
        configuration.poolSize = poolSize
        configuration.commandTimeout = timeout
        configuration.stallLimit = stallLimit
        configuration.initialReconnectDelay = .milliseconds(20)
        configuration.maximumReconnectDelay = .milliseconds(500)
        return RedisClient(configuration: configuration, logger: TestEnvironment.logger)
    }

    /// Counts outcomes of a load of ECHO/SET/GET whose replies are checked against what was sent.
    final class Tally: Sendable {
        let succeeded = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
        let mispaired = Atomic<Int>(0)
        let codes = Mutex<Set<String>>([])
        let stop = Atomic<Bool>(false)

        func record(_ error: RedisError) {
            self.failed.add(1, ordering: .relaxed)
            _ = self.codes.withLock { $0.insert("\(error.code)") }
        }
    }

    /// After a load through an outage: no reply went to the wrong command, every failure was one an outage
    /// explains, and the client answers again; then shuts it down.
    func expectRecovered(_ client: RedisClient, tally: Tally) async throws {
        #expect(tally.mispaired.load(ordering: .relaxed) == 0)
        let codes = tally.codes.withLock { $0 }
        #expect(codes.isSubset(of: ["connectionClosed", "unavailable", "timeout"]), "unexpected errors: \(codes)")
        #expect(try await client.send(["ECHO", "done"]).string == "done")
        await client.shutdown()
    }

    /// Runs `workers` tasks that send uniquely tagged commands until `stop` is set.
    func runLoad(_ client: RedisClient, workers: Int, tally: Tally) async {
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask {
                    var step = 0
                    let key = TestEnvironment.uniqueKey("load\(worker)")
                    while !tally.stop.load(ordering: .relaxed) {
                        step += 1
                        let token = "w\(worker)-s\(step)"
                        do {
                            let echoed = try await client.send(["ECHO", RedisArgument(token)])
                            if echoed.string != token { tally.mispaired.add(1, ordering: .relaxed) }
                            try await client.set(key, to: token)
                            let value = try await client.getString(key)
                            // A restart between SET and GET may lose the value, but never swap it.
                            if value != nil && value != token { tally.mispaired.add(1, ordering: .relaxed) }
                            tally.succeeded.add(1, ordering: .relaxed)
                        } catch {
                            tally.record(error as? RedisError ?? RedisError.unknown)
                            try? await Task.sleep(for: .milliseconds(5))
                        }
                    }
                }
            }
        }
    }

    @Test func restartDuringLoadRecoversWithoutMispairing() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let client = try makeClient(server)
        let tally = Tally()
        let load = Task { await runLoad(client, workers: 50, tally: tally) }
        #expect(await eventually { tally.succeeded.load(ordering: .relaxed) > 200 })
        try server.restart()
        let before = tally.succeeded.load(ordering: .relaxed)
        // Traffic resumes on new connections.
        #expect(await eventually { tally.succeeded.load(ordering: .relaxed) > before + 500 })
        tally.stop.store(true, ordering: .relaxed)
        await load.value
        try await expectRecovered(client, tally: tally)
    }

    @Test func commandsFailFastWhileDownAndRecover() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let client = try makeClient(server, timeout: .seconds(30))
        try await client.ping()
        server.stop()
        // After the connection drops and a reconnect fails, calls fail at once
        // with `unavailable` instead of waiting out their 30 s timeout.
        let sawUnavailable = await eventually {
            do {
                try await client.ping()
                return false
            } catch {
                return (error as? RedisError)?.code == .unavailable
            }
        }
        #expect(sawUnavailable)
        let started = ContinuousClock.now
        do {
            try await client.ping()
            Issue.record("ping succeeded with the server stopped")
        } catch {
            #expect(error.code == .unavailable)
            #expect(error.message.contains("127.0.0.1:\(server.port)"))
        }
        // Far below the 30 s command timeout: the call did not wait for it.
        #expect(started.duration(to: .now) < .seconds(15))
        try server.start()
        #expect(await eventually { (try? await client.ping()) != nil })
        #expect(try await client.send(["ECHO", "back"]).string == "back")
        await client.shutdown()
    }

    @Test func clientKillDuringLoad() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let client = try makeClient(server)
        let admin = try makeClient(server, poolSize: 1)
        let tally = Tally()
        let load = Task { await runLoad(client, workers: 20, tally: tally) }
        #expect(await eventually { tally.succeeded.load(ordering: .relaxed) > 100 })
        let adminID = try #require(try await admin.send(["CLIENT", "ID"]).int)
        let killed = try await admin.send(["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        #expect((killed.int ?? 0) >= 1)
        let before = tally.succeeded.load(ordering: .relaxed)
        #expect(await eventually { tally.succeeded.load(ordering: .relaxed) > before + 300 })
        tally.stop.store(true, ordering: .relaxed)
        await load.value
        #expect(tally.mispaired.load(ordering: .relaxed) == 0)
        #expect(try await admin.send(["CLIENT", "ID"]).int == adminID)
        await client.shutdown()
        await admin.shutdown()
    }

    /// The race behind the once-intermittent `killedConnectionIsReplaced`: the pool hands out a connection just as
    /// the server kills it. With one or two connections and commands always in flight, kill them again and again:
    /// every call ends within its deadline (a reply or an error, never a hang), no reply is mis-paired, and traffic
    /// resumes after every kill.
    @Test(arguments: [1, 2])
    func repeatedKillsWithCommandsInFlight(poolSize: Int) async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let client = try makeClient(server, poolSize: poolSize, timeout: .seconds(2))
        let admin = try makeClient(server, poolSize: 1)
        let tally = Tally()
        let finished = Atomic<Bool>(false)
        let load = Task {
            await runLoad(client, workers: 16, tally: tally)
            finished.store(true, ordering: .relaxed)
        }
        #expect(await eventually { tally.succeeded.load(ordering: .relaxed) > 50 })
        for _ in 0..<20 {
            _ = try await admin.send(["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            let before = tally.succeeded.load(ordering: .relaxed)
            #expect(await eventually { tally.succeeded.load(ordering: .relaxed) > before + 20 })
        }
        tally.stop.store(true, ordering: .relaxed)
        // Each worker is at most one call (2 s deadline) from noticing `stop`.
        let ended = await eventually(timeout: .seconds(10)) { finished.load(ordering: .relaxed) }
        #expect(ended, "a command outlived its deadline")
        if !ended { load.cancel() }
        await load.value
        try await expectRecovered(client, tally: tally)
        await admin.shutdown()
    }

    @Test func pausedServerTimesOutThenRepliesStayPaired() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        // The connection stays: the pause (1.5 s of timeouts) is not taken for a dead peer.
        let client = try makeClient(server, poolSize: 1, timeout: .milliseconds(300), stallLimit: .seconds(60))
        #expect(try await client.send(["ECHO", "warm"]).string == "warm")
        server.pause()
        // Commands time out instead of hanging; their replies will come later.
        var timeouts = 0
        for index in 0..<5 {
            do {
                _ = try await client.send(["ECHO", RedisArgument("lost \(index)")])
            } catch {
                if error.code == .timeout { timeouts += 1 }
            }
        }
        #expect(timeouts == 5)
        server.resume()
        // The late replies to the timed-out commands are discarded, not handed to these.
        #expect(await eventually { (try? await client.ping()) != nil })
        for index in 0..<20 {
            #expect(try await client.send(["ECHO", RedisArgument("fresh \(index)")]).string == "fresh \(index)")
        }
        await client.shutdown()
    }

    @Test func slowCommandTimesOutAndNextCommandGetsItsOwnReply() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let client = try makeClient(server, poolSize: 1, timeout: .seconds(10))
        _ = try await client.ping()
        let busy = RedisScript(name: "busy", "local t = redis.call('TIME'); local s = t[1] * 1000000 + t[2]; while true do local n = redis.call('TIME'); if n[1] * 1000000 + n[2] - s > 700000 then break end end; return 'slow'")
        do {
            _ = try await client.evaluate(busy, timeout: .milliseconds(200))
            Issue.record("a 700 ms script must time out at 200 ms")
        } catch {
            #expect(error.code == .timeout)
        }
        #expect(try await client.send(["ECHO", "next"]).string == "next")
        // DEBUG SLEEP too.
        do {
            _ = try await client.send(["DEBUG", "SLEEP", "0.5"], timeout: .milliseconds(100))
            Issue.record("DEBUG SLEEP 0.5 must time out at 100 ms")
        } catch {
            #expect(error.code == .timeout)
        }
        #expect(try await client.send(["ECHO", "after sleep"]).string == "after sleep")
        await client.shutdown()
    }

    @Test func scriptsReloadAfterRestart() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let client = try makeClient(server)
        let script = RedisScript(name: "answer", "return tonumber(ARGV[1]) * 2")
        #expect(try await client.evaluate(script, arguments: [21]) == .integer(42))
        try server.restart()
        #expect(await eventually { (try? await client.evaluate(script, arguments: [4])) == .integer(8) })
        await client.shutdown()
    }

    /// A redis-server of its own and, for `body`, a client that reaches it through a proxy that can silence its
    /// connections (a peer gone without a reset).
    func withSilenceableClient(
        _ body: (_ server: RedisServerProcess, _ proxy: BlackholeProxy, _ client: RedisClient) async throws -> Void
    ) async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let proxy = try BlackholeProxy(to: server.port)
        defer { proxy.stop() }
        var configuration = try RedisConfiguration(url: "redis://127.0.0.1:\(proxy.port)/0")
        configuration.poolSize = 1  // the one command connection is silenced (a pool opens more only on demand)
        configuration.commandTimeout = .milliseconds(250)
        configuration.stallLimit = .seconds(1)
        configuration.pubSubPingInterval = .milliseconds(500)
        configuration.initialReconnectDelay = .milliseconds(20)
        configuration.maximumReconnectDelay = .milliseconds(200)
        try await body(server, proxy, RedisClient(configuration: configuration, logger: TestEnvironment.logger))
    }

    /// Before, such a connection stayed in the pool until 1,024 commands had timed out on it: each command waited
    /// its whole timeout, and a gateway's readiness stayed 503 long after Redis was reachable again.
    @Test func commandConnectionsWhosePeerWentSilentAreReplaced() async throws {
        try await withSilenceableClient { (_: RedisServerProcess, proxy: BlackholeProxy, client: RedisClient) async throws in
            #expect(try await client.send(["ECHO", "before"]).string == "before")
            proxy.blackhole()
            let started = ContinuousClock.now
            var timeouts = 0
            let answered = await eventually(timeout: .seconds(10), every: .milliseconds(100)) {
                do {
                    return try await client.send(["ECHO", "after"]).string == "after"
                } catch {
                    if (error as? RedisError)?.code == .timeout { timeouts += 1 }
                    return false
                }
            }
            #expect(answered)
            #expect(timeouts >= 1)  // the silent connections were in use first
            #expect(started.duration(to: .now) < .seconds(5), "answered after \(started.duration(to: .now))")
            await client.shutdown()
        }
    }

    /// Before, a silent pub/sub connection waited for TCP keep-alive (hours), every message published meanwhile lost
    /// without a word to the subscribers.
    @Test func aPubSubConnectionWhosePeerWentSilentIsReopenedAndTheGapTold() async throws {
        try await withSilenceableClient { (server: RedisServerProcess, proxy: BlackholeProxy, client: RedisClient) async throws in
            let publisher = try makeClient(server, poolSize: 1)
            let restorations = client.subscriptionRestorations()
            let gaps = Mutex(0)
            let watcher = Task { for await _ in restorations { gaps.withLock { $0 += 1 } } }
            let subscription = try await client.subscribe(to: ["silent"])
            let received = Mutex<[String]>([])
            let reader = Task { for await m in subscription { received.withLock { $0.append(m.string) } } }
            #expect(try await publisher.publish("one", to: "silent") == 1)
            #expect(await eventually { received.withLock { $0 } == ["one"] })
            proxy.blackhole()
            #expect(try await publisher.publish("lost", to: "silent") == 1)  // Redis sends it into the silence
            #expect(await eventually(timeout: .seconds(10)) { gaps.withLock { $0 } == 1 })
            #expect(await eventually {
                ((try? await publisher.publish("three", to: "silent")) ?? 0) >= 1 && received.withLock { $0.last } == "three"
            })
            #expect(!received.withLock { $0 }.contains("lost"))
            await client.shutdown()
            await publisher.shutdown()
            await watcher.value
            await reader.value
        }
    }

    /// What a subscriber misses while the pub/sub connection is down cannot be replayed; `subscriptionRestorations`
    /// says when that happened (the gateway then drops what it remembered from the messages).
    @Test func restorationsTellOfEachGapAndNotOfTheFirstConnection() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let client = try makeClient(server)
        let restorations = client.subscriptionRestorations()
        let count = Mutex(0)
        let watcher = Task { for await _ in restorations { count.withLock { $0 += 1 } } }
        let subscription = try await client.subscribe(to: ["gaps"])
        let reader = Task { for await _ in subscription {} }  // holds the subscription until shutdown ends it
        #expect(try await client.publish("first", to: "gaps") == 1)
        try await Task.sleep(for: .milliseconds(200))
        #expect(count.withLock { $0 } == 0, "the first connection is no gap")
        try server.restart()
        #expect(await eventually { count.withLock { $0 } == 1 })
        #expect(await eventually { ((try? await client.publish("probe", to: "gaps")) ?? 0) == 1 })
        await client.shutdown()
        await watcher.value  // the sequence ends at shutdown
        await reader.value
        #expect(count.withLock { $0 } == 1)
    }

    /// A gateway that starts while Redis is down subscribes at once (no connection yet) and decides tokens meanwhile
    /// from records it reads when Redis answers; the `revoked` events published before its pub/sub connection opened
    /// reached nobody. The first connection after failed attempts is a gap too (it was told of none).
    @Test func aFirstConnectionThatCouldNotBeOpenedAtOnceIsAGap() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        server.stop()
        let client = try makeClient(server)
        let restorations = client.subscriptionRestorations()
        let count = Mutex(0)
        let watcher = Task { for await _ in restorations { count.withLock { $0 += 1 } } }
        let subscription = try await client.subscribe(to: ["late"])  // returns at once: Redis is down
        let reader = Task { for await _ in subscription {} }
        try await Task.sleep(for: .seconds(1))  // at least one attempt failed (nothing listens: refused at once)
        try server.start()
        #expect(await eventually(timeout: .seconds(10)) { count.withLock { $0 } == 1 })
        #expect(await eventually { ((try? await client.publish("probe", to: "late")) ?? 0) == 1 })
        await client.shutdown()
        await watcher.value
        await reader.value
        #expect(count.withLock { $0 } == 1)
    }

    /// A subscriber that falls more than 4096 messages behind loses the oldest, and its subscription counts them
    /// (`lostMessages`): a `revoked` event may be among them. The other subscriptions, and the connection's gap
    /// notices, are not concerned.
    @Test func aSubscriberThatFallsBehindCountsWhatItLost() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let client = try makeClient(server)
        let restorations = client.subscriptionRestorations()
        let gaps = Mutex(0)
        let watcher = Task { for await _ in restorations { gaps.withLock { $0 += 1 } } }
        let behind = try await client.subscribe(to: ["behind"])
        let reading = try await client.subscribe(to: ["behind"])
        let read = Mutex(0)
        let reader = Task { for await _ in reading { read.withLock { $0 += 1 } } }
        // Nobody reads `behind` yet: 4,096 are kept, the rest dropped and counted.
        for batch in 0..<7 {
            for n in batch * 600..<(batch + 1) * 600 { _ = try await client.publish(RedisArgument("m\(n)"), to: "behind") }
            #expect(await eventually { read.withLock { $0 } == (batch + 1) * 600 })
        }
        #expect(behind.lostMessages == 4_200 - 4_096)
        #expect(reading.lostMessages == 0)
        var iterator = behind.makeAsyncIterator()
        #expect(await iterator.next()?.string == "m104")
        #expect(gaps.withLock { $0 } == 0, "a slow reader is no gap of the connection")
        await client.shutdown()
        await watcher.value
        await reader.value
    }

    /// Before, the gap was told as soon as the renewed SUBSCRIBE was handed to the new connection, before Redis had
    /// it: a gateway dropped its token decisions and read each record again while a `revoked` event published then
    /// still reached nobody, and the decision made from the record was kept up to its recheck (30 s).
    @Test func aGapIsToldOnceTheRenewedSubscriptionsAreConfirmed() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let proxy = try BlackholeProxy(to: server.port)  // with a delay, not silenced
        defer { proxy.stop() }
        var configuration = try RedisConfiguration(url: "redis://127.0.0.1:\(proxy.port)/0")
        configuration.initialReconnectDelay = .milliseconds(20)
        configuration.maximumReconnectDelay = .milliseconds(200)
        let client = RedisClient(configuration: configuration, logger: TestEnvironment.logger)
        let admin = try makeClient(server, poolSize: 1)
        let restorations = client.subscriptionRestorations()
        let subscription = try await client.subscribe(to: ["revocations"], patterns: ["revoc*"])
        let received = Mutex<[String]>([])
        let reader = Task { for await m in subscription { received.withLock { $0.append(m.string) } } }
        #expect(try await admin.publish("before", to: "revocations") == 2)
        // From now on what the client sends reaches Redis 300 ms late (the new connection's handshake included).
        proxy.delay = .milliseconds(300)
        // What a PUBLISH made the moment the gap is told reaches: the channel and the pattern, both renewed.
        let reachedWhenTold = Mutex<[Int]>([])
        let watcher = Task {
            for await _ in restorations {
                let reached = (try? await admin.publish("right when told", to: "revocations")) ?? -1
                reachedWhenTold.withLock { $0.append(reached) }
            }
        }
        _ = try await admin.send(["CLIENT", "KILL", "TYPE", "pubsub"])
        #expect(await eventually(timeout: .seconds(10)) { !reachedWhenTold.withLock { $0 }.isEmpty })
        #expect(reachedWhenTold.withLock { $0 } == [2], "told before the renewed subscriptions were in place")
        #expect(await eventually { received.withLock { $0.filter { $0 == "right when told" }.count } == 2 })
        await client.shutdown()
        await admin.shutdown()
        await watcher.value
        await reader.value
    }

    /// A user that may not subscribe to a channel (Redis 7's default `resetchannels`, or `-subscribe`).
    func withRestrictedUser(
        _ rules: [String], _ body: (_ user: String, _ admin: RedisClient, _ client: RedisClient) async throws -> Void
    ) async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let admin = try makeClient(server, poolSize: 1)
        let user = "restricted-\(UUID().uuidString.prefix(8).lowercased())"
        let setUser = ["ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all"] + rules
        _ = try await admin.send(RedisCommand(arguments: setUser.map { RedisArgument($0) }))
        var configuration = try RedisConfiguration(url: "redis://\(user):pw@127.0.0.1:\(server.port)/0")
        configuration.initialReconnectDelay = .milliseconds(20)
        configuration.maximumReconnectDelay = .milliseconds(200)
        let client = RedisClient(configuration: configuration, logger: TestEnvironment.logger)
        do {
            try await body(user, admin, client)
        } catch {
            await client.shutdown()
            _ = try? await admin.send(["ACL", "DELUSER", RedisArgument(user)])
            await admin.shutdown()
            throw error
        }
        await client.shutdown()
        _ = try await admin.send(["ACL", "DELUSER", RedisArgument(user)])
        await admin.shutdown()
    }

    /// Subscribes to `channels`/`patterns`, which the server refuses: the call must throw at once, saying so.
    func expectRefused(_ client: RedisClient, channels: [String] = [], patterns: [String] = []) async {
        let started = ContinuousClock.now
        do {
            _ = try await client.subscribe(to: channels, patterns: patterns)
            Issue.record("a refused subscription was reported as made")
        } catch {
            #expect(error.code == .server, "\(error)")
            #expect(error.message.contains("NOPERM"), "\(error)")
        }
        #expect(started.duration(to: .now) < .seconds(1), "the refusal took \(started.duration(to: .now))")
    }

    /// Before, the refusal (`-NOPERM`) was dropped unseen: `subscribe` waited out its confirmation time (2.25 s) and
    /// returned a subscription that never yielded anything.
    @Test func aSubscriptionTheServerRefusesThrows() async throws {
        try await withRestrictedUser(["resetchannels", "&allowed"]) { _, admin, client in
            await expectRefused(client, channels: ["refused"])
            await expectRefused(client, channels: ["refused"])  // asked again: the refused channel was not kept
            await expectRefused(client, patterns: ["ref*"])
            // The connection serves what the user may subscribe to.
            let subscription = try await client.subscribe(to: ["allowed"])
            #expect(try await admin.publish("hello", to: "allowed") == 1)
            var iterator = subscription.makeAsyncIterator()
            #expect(await iterator.next()?.string == "hello")
        }
        try await withRestrictedUser(["-subscribe"]) { _, admin, client in
            await expectRefused(client, channels: ["any"])
            let subscription = try await client.subscribe(to: [], patterns: ["an*"])
            #expect(try await admin.publish("hi", to: "any") == 1)
            var iterator = subscription.makeAsyncIterator()
            #expect(await iterator.next()?.string == "hi")
        }
    }

    /// A channel the server refuses when it is renewed after a gap (the user's permissions changed meanwhile): the
    /// subscription ends, so its owner finds out (and subscribes again, which throws while refused), and the gap is
    /// still told.
    @Test func aSubscriptionRefusedOnRenewalEnds() async throws {
        try await withRestrictedUser([]) { user, admin, client in
            let restorations = client.subscriptionRestorations()
            let gaps = Mutex(0)
            let watcher = Task { for await _ in restorations { gaps.withLock { $0 += 1 } } }
            let kept = try await client.subscribe(to: ["kept"])
            let revoked = try await client.subscribe(to: ["revoked"])
            let ended = Mutex(false)
            let reader = Task {
                for await _ in revoked {}
                ended.withLock { $0 = true }
            }
            let received = Mutex<[String]>([])
            let keptReader = Task { for await m in kept { received.withLock { $0.append(m.string) } } }
            // Redis 7 closes the user's pub/sub connection when its channel permissions shrink.
            _ = try await admin.send(["ACL", "SETUSER", RedisArgument(user), "resetchannels", "&kept"])
            #expect(await eventually(timeout: .seconds(10)) { ended.withLock { $0 } }, "the refused subscription did not end")
            #expect(await eventually(timeout: .seconds(10)) { gaps.withLock { $0 } == 1 })
            #expect(try await admin.publish("still", to: "kept") == 1)
            #expect(await eventually { received.withLock { $0 } == ["still"] })
            await expectRefused(client, channels: ["revoked"])
            watcher.cancel()
            keptReader.cancel()
            reader.cancel()  // ended already, unless the test failed
            await watcher.value
            await keptReader.value
            await reader.value
        }
    }

    @Test func pubSubResubscribesAfterRestart() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let client = try makeClient(server)
        let subscription = try await client.subscribe(to: ["events"], patterns: ["ev*"])
        let received = Mutex<[RedisPubSubMessage]>([])
        let reader = Task {
            for await message in subscription {
                received.withLock { $0.append(message) }
            }
        }
        #expect(try await client.publish("before", to: "events") == 2)
        #expect(await eventually { received.withLock { $0.count } == 2 })
        try server.restart()
        // Publish until both subscriptions are live again on the new connection.
        #expect(await eventually { ((try? await client.publish("probe", to: "events")) ?? 0) == 2 })
        #expect(try await client.publish("after", to: "events") == 2)
        #expect(await eventually {
            received.withLock { messages in messages.filter { $0.string == "after" }.count } == 2
        })
        let messages = received.withLock { $0 }
        #expect(messages.allSatisfy { $0.channel == "events" })
        #expect(Set(messages.compactMap(\.pattern)) == ["ev*"])
        await client.shutdown()
        await reader.value
    }

    @Test func authAndSelectOnEveryConnection() async throws {
        let server = try RedisServerProcess(extraArguments: ["--requirepass", "s3cret-pw"])
        defer { server.stop() }
        var good = try RedisConfiguration(url: "redis://:s3cret-pw@127.0.0.1:\(server.port)/5")
        good.poolSize = 2
        let client = RedisClient(configuration: good, logger: TestEnvironment.logger)
        let key = TestEnvironment.uniqueKey()
        try await client.set(key, to: "in db 5")
        #expect(try await client.send(["CLIENT", "INFO"]).string?.contains("db=5") == true)
        // A second client on db 0 does not see it.
        let db0 = RedisClient(configuration: try RedisConfiguration(url: "redis://:s3cret-pw@127.0.0.1:\(server.port)/0"), logger: TestEnvironment.logger)
        #expect(try await db0.get(key) == nil)
        // After the connections are killed, the replacements authenticate and select again.
        _ = try await db0.send(["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        #expect(await eventually { (try? await client.getString(key)) == "in db 5" })
        // A wrong password is a clear error that does not echo the password.
        let bad = RedisClient(configuration: try RedisConfiguration(url: "redis://:wrong-pw-123@127.0.0.1:\(server.port)/0"), logger: TestEnvironment.logger)
        do {
            try await bad.ping()
            Issue.record("a wrong password must fail")
        } catch {
            #expect(error.code == .unavailable)
            #expect(error.message.contains("AUTH"))
            #expect(!error.message.contains("wrong-pw-123"))
        }
        await bad.shutdown()
        await db0.shutdown()
        await client.shutdown()
    }

    @Test func tlsConnectionsAndReconnect() async throws {
        let files = try #require(RedisServerProcess.makeTestCertificates(), "openssl is needed to make test certificates")
        let server = try RedisServerProcess(tls: files)
        defer { server.stop() }
        var configuration = try RedisConfiguration(url: "rediss://localhost:\(server.port)/0")
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(files.ca))
        configuration.tls = tls
        configuration.initialReconnectDelay = .milliseconds(20)
        configuration.maximumReconnectDelay = .milliseconds(500)
        let client = RedisClient(configuration: configuration, logger: TestEnvironment.logger)
        let key = TestEnvironment.uniqueKey()
        try await client.set(key, to: ByteBuffer(repeating: 7, count: 6000))
        #expect(try await client.get(key)?.readableBytes == 6000)
        let results = try await client.pipeline((0..<100).map { RedisCommand("ECHO", [RedisArgument($0)]) })
        #expect(results.compactMap { try? $0.get().int } == Array(0..<100))
        let subscription = try await client.subscribe(to: ["tls-events"])
        #expect(try await client.publish("hi", to: "tls-events") == 1)
        var iterator = subscription.makeAsyncIterator()
        #expect(await iterator.next()?.string == "hi")
        try server.restart()
        #expect(await eventually { (try? await client.send(["ECHO", "tls back"]).string) == "tls back" })
        #expect(await eventually { ((try? await client.publish("again", to: "tls-events")) ?? 0) == 1 })
        // Without the CA the server is not trusted.
        var untrusted = configuration
        untrusted.tls = .makeClientConfiguration()
        let stranger = RedisClient(configuration: untrusted, logger: TestEnvironment.logger)
        await #expect(throws: RedisError.self) { try await stranger.ping() }
        await stranger.shutdown()
        await client.shutdown()
    }

    @Test func subscriptionsEndWhenDropped() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let client = try makeClient(server)
        let observer = try makeClient(server, poolSize: 1)
        var subscription: RedisSubscription? = try await client.subscribe(to: ["gone"])
        #expect(try await observer.publish("x", to: "gone") == 1)
        #expect(subscription != nil)
        subscription = nil
        #expect(await eventually { ((try? await observer.publish("x", to: "gone")) ?? -1) == 0 })
        await client.shutdown()
        await observer.shutdown()
    }
}

extension RedisError {
    /// Stand-in for non-Redis errors in tallies (none are expected).
    fileprivate static var unknown: RedisError {
        // No public initializer: obtain a real error value by parsing a bad URL.
        do {
            _ = try RedisConfiguration(url: "bogus://")
        } catch {
            return error
        }
        fatalError("unreachable")
    }
}
