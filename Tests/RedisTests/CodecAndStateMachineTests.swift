import CHiredis
import NIOCore
@testable import Redis
import Testing

/// hiredis as codec, URL parsing and the two state machines — no server needed.
@Suite("RESP codec via hiredis")
struct CodecTests {
    @Test func encodesArgvAsRESPArray() {
        let encoded = RESPEncoder.encode(["SET", "key", RedisArgument([0, 13, 10, 255]), 42])
        let expected: [UInt8] = Array("*4\r\n$3\r\nSET\r\n$3\r\nkey\r\n$4\r\n".utf8) + [0, 13, 10, 255] + Array("\r\n$2\r\n42\r\n".utf8)
        #expect(Array(encoded.readableBytesView) == expected)
        let empty = RESPEncoder.encode(["GET", ""])
        #expect(String(buffer: empty) == "*2\r\n$3\r\nGET\r\n$0\r\n\r\n")
    }

    /// Commands of every argument kind (strings, UTF-8, bytes, a buffer read from an offset, integers, empty
    /// arguments, many arguments), one by one and as a batch of slices, against RESP spelled out argument by argument.
    @Test func encodesEveryArgumentKindAlsoInBatches() {
        var big = ByteBuffer(repeating: 0x41, count: 70_000)
        big.moveReaderIndex(forwardBy: 3)  // a buffer whose readable bytes do not start at 0
        let cases: [(RedisCommand, [[UInt8]])] = [
            (["PING"], [Array("PING".utf8)]),
            (["GET", ""], [Array("GET".utf8), []]),
            (["", ""], [[], []]),
            (["SET", "ключ", RedisArgument(big), "PX", 250, RedisArgument(integer: -7)],
             [Array("SET".utf8), Array("ключ".utf8), [UInt8](repeating: 0x41, count: 69_997), Array("PX".utf8),
              Array("250".utf8), Array("-7".utf8)]),
            (RedisCommand("MSET", (0..<12).map { RedisArgument("k\($0)") }),
             [Array("MSET".utf8)] + (0..<12).map { Array("k\($0)".utf8) }),
            (["EVALSHA", RedisArgument([0, 13, 10, 255]), 0], [Array("EVALSHA".utf8), [0, 13, 10, 255], Array("0".utf8)]),
        ]
        func resp(_ arguments: [[UInt8]]) -> [UInt8] {
            arguments.reduce(Array("*\(arguments.count)\r\n".utf8)) { $0 + Array("$\($1.count)\r\n".utf8) + $1 + [13, 10] }
        }
        for (command, arguments) in cases {
            #expect(Array(RESPEncoder.encode(command).readableBytesView) == resp(arguments))
        }
        let slices = RESPEncoder.encode(batch: cases.map(\.0))
        #expect(slices.count == cases.count)
        for (slice, (_, arguments)) in zip(slices, cases) {
            #expect(Array(slice.readableBytesView) == resp(arguments))
        }
    }

    /// Replies built by our reply-object functions: deep nesting, every element
    /// type, values that outlive the reader.
    @Test func nestedArraysAndValuesOutliveTheReader() throws {
        var values: [RESPValue] = []
        do {
            let reader = HiredisReader()
            try reader.feed(ByteBuffer(string: "*3\r\n*2\r\n*1\r\n$3\r\nabc\r\n-ERR x\r\n+S\r\n*2\r\n$-1\r\n:5\r\n$2\r\nok\r\n"))
            while let value = try reader.next(allocator: ByteBufferAllocator()) { values.append(value) }
        }
        #expect(values == [
            .array([.array([.array([.bulkString(ByteBuffer(string: "abc"))]), .error("ERR x")]), .simpleString("S"), .array([.null, .integer(5)])]),
            .bulkString(ByteBuffer(string: "ok")),
        ])
    }

    /// A partly read array is released by hiredis through freeObject, on a
    /// protocol error and when the reader goes away.
    @Test func partlyReadArraysAreReleased() throws {
        weak var probe: HiredisReader?
        do {
            let reader = HiredisReader()
            probe = reader
            try reader.feed(ByteBuffer(string: "*3\r\n*2\r\n$1\r\na\r\n"))
            #expect(try reader.next(allocator: ByteBufferAllocator()) == nil)
            // Freed with the reader (deinit) while the array is half built.
        }
        #expect(probe == nil)
        let reader = HiredisReader()
        try reader.feed(ByteBuffer(string: "*2\r\n$1\r\na\r\n?bad\r\n"))
        #expect(throws: RedisError.self) { try reader.next(allocator: ByteBufferAllocator()) }
    }

    @Test func decodesEveryRESP2TypeAcrossFragmentedReads() throws {
        let wire = "+OK\r\n-ERR bad\r\n:-42\r\n$5\r\nhe\r\no\r\n$-1\r\n*3\r\n:1\r\n*1\r\n$0\r\n\r\n*-1\r\n*0\r\n"
        let reader = HiredisReader()
        let allocator = ByteBufferAllocator()
        var values: [RESPValue] = []
        // One byte at a time: replies split anywhere must still decode.
        for byte in wire.utf8 {
            try reader.feed(ByteBuffer(bytes: [byte]))
            while let value = try reader.next(allocator: allocator) { values.append(value) }
        }
        #expect(values == [
            .simpleString("OK"),
            .error("ERR bad"),
            .integer(-42),
            .bulkString(ByteBuffer(string: "he\r\no")),
            .null,
            .array([.integer(1), .array([.bulkString(ByteBuffer())]), .null]),
            .array([]),
        ])
    }

    @Test func rejectsGarbage() throws {
        let reader = HiredisReader()
        try reader.feed(ByteBuffer(string: "?what\r\n"))
        #expect(throws: RedisError.self) { try reader.next(allocator: ByteBufferAllocator()) }
    }

    /// Pipelined replies read the way the connection reads them: whole socket reads of odd sizes, cut anywhere.
    /// A bulk string inside one read is a slice of that read's buffer (its bytes are not copied); one that spans
    /// two reads is a copy; every value is right either way, also nested in arrays and after hiredis has compacted
    /// its buffer many times.
    @Test func bulkStringsAreSlicesOfTheReadTheyLieIn() throws {
        var wire = ByteBuffer()
        var expected: [RESPValue] = []
        for i in 0..<200 {
            // 6,000-byte values like the bench's, and small ones and arrays between them.
            let value = ByteBuffer(bytes: (0..<(i % 3 == 0 ? 6_000 : 1 + i % 17)).map { UInt8(truncatingIfNeeded: i &* 7 &+ $0) })
            wire.writeString("$\(value.readableBytes)\r\n")
            wire.writeImmutableBuffer(value)
            wire.writeString("\r\n")
            expected.append(.bulkString(value))
            if i % 7 == 0 {
                wire.writeString("*2\r\n$3\r\nabc\r\n:\(i)\r\n")
                expected.append(.array([.bulkString(ByteBuffer(string: "abc")), .integer(i)]))
            }
        }
        let reader = HiredisReader()
        var values: [RESPValue] = []
        var sliced = 0, copied = 0
        let sizes = [65_536, 1, 4_097, 12_345, 3, 6_010, 30_000]
        var n = 0
        while wire.readableBytes > 0 {
            // A fresh buffer per read, as NIO's receive allocator gives one when a value still holds the last.
            let read = ByteBuffer(bytes: wire.readBytes(length: min(sizes[n % sizes.count], wire.readableBytes))!)
            n += 1
            let readRange = read.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress!)..<UInt(bitPattern: $0.baseAddress! + $0.count) }
            try reader.read(read, allocator: ByteBufferAllocator()) { value in
                values.append(value)
                if case .bulkString(let b) = value, b.readableBytes > 0 {
                    let start = b.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress!) }
                    if readRange.contains(start) { sliced += 1 } else { copied += 1 }
                }
            }
        }
        #expect(values == expected)
        #expect(sliced > 100)
        #expect(copied > 10)  // the values cut by a read's end
        #expect(try reader.next(allocator: ByteBufferAllocator()) == nil)
    }

    @Test func largeBulkString() throws {
        let payload = [UInt8](repeating: 7, count: 1 << 20)
        var wire = ByteBuffer(string: "$\(payload.count)\r\n")
        wire.writeBytes(payload)
        wire.writeString("\r\n")
        let reader = HiredisReader()
        while wire.readableBytes > 0, let slice = wire.readSlice(length: min(65_536, wire.readableBytes)) {
            try reader.feed(slice)
        }
        let value = try reader.next(allocator: ByteBufferAllocator())
        #expect(value?.bytes == payload)
    }
}

@Suite("Redis URLs")
struct URLTests {
    @Test func plain() throws {
        let configuration = try RedisConfiguration(url: "redis://127.0.0.1:6380/3")
        #expect(configuration.host == "127.0.0.1")
        #expect(configuration.port == 6380)
        #expect(configuration.database == 3)
        #expect(configuration.password == nil)
        #expect(configuration.tls == nil)
    }

    @Test func defaultsAndCredentials() throws {
        let configuration = try RedisConfiguration(url: "redis://:s%40cret%3A@cache.internal")
        #expect(configuration.host == "cache.internal")
        #expect(configuration.port == 6379)
        #expect(configuration.database == 0)
        #expect(configuration.password == "s@cret:")
        #expect(configuration.username == nil)
        let acl = try RedisConfiguration(url: "redis://app:pw@h:1/0")
        #expect(acl.username == "app")
        #expect(acl.password == "pw")
    }

    @Test func tlsAndIPv6() throws {
        let tls = try RedisConfiguration(url: "rediss://:pw@redis.example.com/1")
        #expect(tls.tls != nil)
        #expect(tls.port == 6380)
        #expect(tls.database == 1)
        let v6 = try RedisConfiguration(url: "redis://[::1]:7000/2")
        #expect(v6.host == "::1")
        #expect(v6.port == 7000)
        #expect(v6.endpointDescription == "redis://[::1]:7000/2")
    }

    @Test(arguments: ["http://x", "redis://", "redis://h:0", "redis://h:99999", "redis://h/x", "redis://[::1", "redis://h:6379/-1"])
    func rejects(_ url: String) {
        #expect(throws: RedisError.self) { try RedisConfiguration(url: url) }
    }

    @Test func descriptionsNeverShowThePassword() throws {
        let configuration = try RedisConfiguration(url: "redis://:hunter2@h:1/0")
        #expect(!configuration.description.contains("hunter2"))
        #expect(!configuration.endpointDescription.contains("hunter2"))
        #expect(configuration.description.contains("***"))
    }
}

@Suite("Connection state machine")
struct ConnectionStateMachineTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    @Test func repliesPairInOrder() {
        var machine = ConnectionStateMachine<String>(maximumAbandoned: 10)
        guard case .write(arm: let arm) = machine.enqueue("a", deadline: t0 + .seconds(1)) else {
            Issue.record("expected write")
            return
        }
        #expect(arm == t0 + .seconds(1))
        guard case .write(arm: nil) = machine.enqueue("b", deadline: t0 + .seconds(2)) else {
            Issue.record("a later deadline must not re-arm")
            return
        }
        guard case .succeed("a", .integer(1)) = machine.received(.integer(1)) else {
            Issue.record("first reply goes to a")
            return
        }
        guard case .fail("b", let error) = machine.received(.error("ERR x")) else {
            Issue.record("second reply goes to b as an error")
            return
        }
        #expect(error.code == .server)
        guard case .close = machine.received(.integer(3)) else {
            Issue.record("an unsolicited reply closes the connection")
            return
        }
    }

    @Test func timedOutEntriesKeepTheirSlotAndDiscardTheirReply() {
        var machine = ConnectionStateMachine<String>(maximumAbandoned: 10)
        _ = machine.enqueue("slow", deadline: t0 + .milliseconds(100))
        _ = machine.enqueue("next", deadline: t0 + .seconds(5))
        let action = machine.timerFired(now: t0 + .milliseconds(200))
        #expect(action.expired == ["slow"])
        #expect(action.rearm == t0 + .seconds(5))
        #expect(action.close == nil)
        #expect(machine.abandoned == 1)
        // The late reply of "slow" is dropped; "next" gets its own.
        guard case .discard = machine.received(.simpleString("late")) else {
            Issue.record("late reply must be discarded")
            return
        }
        guard case .succeed("next", .simpleString("mine")) = machine.received(.simpleString("mine")) else {
            Issue.record("next must get its own reply")
            return
        }
        #expect(machine.abandoned == 0)
    }

    @Test func earlierDeadlineRearmsTimer() {
        var machine = ConnectionStateMachine<Int>(maximumAbandoned: 10)
        _ = machine.enqueue(1, deadline: t0 + .seconds(10))
        guard case .write(arm: let arm) = machine.enqueue(2, deadline: t0 + .seconds(1)) else {
            Issue.record("expected write")
            return
        }
        #expect(arm == t0 + .seconds(1))
        let action = machine.timerFired(now: t0 + .seconds(2))
        #expect(action.expired == [2])
        #expect(action.rearm == t0 + .seconds(10))
    }

    @Test func tooManyAbandonedClosesAndFailsTheRest() {
        var machine = ConnectionStateMachine<Int>(maximumAbandoned: 2)
        for index in 0..<3 { _ = machine.enqueue(index, deadline: t0) }
        _ = machine.enqueue(99, deadline: t0 + .seconds(60))
        let action = machine.timerFired(now: t0 + .seconds(1))
        #expect(action.expired == [0, 1, 2])
        #expect(action.close?.code == .tooManyPending)
        let rest = machine.close(action.close!)
        #expect(rest == [99])
        guard case .fail(7, let error) = machine.enqueue(7, deadline: t0) else {
            Issue.record("a closed connection fails new commands at once")
            return
        }
        #expect(error.code == .tooManyPending)
    }

    /// A peer gone without a reset (a failover, a partition) answers nothing, ever: once the oldest command is
    /// `stallLimit` past its deadline, the connection is recycled.
    @Test func aConnectionWithNoReplyLongPastTheOldestDeadlineIsRecycled() {
        var machine = ConnectionStateMachine<Int>(maximumAbandoned: 1024, stallLimit: .seconds(1))
        _ = machine.enqueue(1, deadline: t0 + .milliseconds(250))
        var action = machine.timerFired(now: t0 + .milliseconds(250))
        #expect(action.expired == [1])
        #expect(action.close == nil)  // one late reply is not yet a dead connection
        #expect(action.rearm == t0 + .milliseconds(1250))  // checked again then, with or without another command
        _ = machine.enqueue(2, deadline: t0 + .milliseconds(900))
        action = machine.timerFired(now: t0 + .milliseconds(900))
        #expect(action.expired == [2])
        #expect(action.close == nil)  // the oldest is 650 ms overdue
        _ = machine.enqueue(3, deadline: t0 + .milliseconds(1300))
        action = machine.timerFired(now: t0 + .milliseconds(1300))
        #expect(action.expired == [3])
        #expect(action.close?.code == .timeout)  // the oldest is 1,050 ms overdue, and nothing came after it
    }

    /// No other command comes (sparse traffic, a readiness probe): the timer alone finds the stall.
    @Test func aStallIsFoundWithNoLaterCommand() {
        var machine = ConnectionStateMachine<Int>(maximumAbandoned: 1024, stallLimit: .seconds(1))
        _ = machine.enqueue(1, deadline: t0 + .milliseconds(250))
        let first = machine.timerFired(now: t0 + .milliseconds(250))
        #expect(first.expired == [1] && first.rearm == t0 + .milliseconds(1250))
        let second = machine.timerFired(now: t0 + .milliseconds(1250))
        #expect(second.close?.code == .timeout)
    }

    @Test func lateRepliesThatDoComeKeepTheConnection() {
        var machine = ConnectionStateMachine<Int>(maximumAbandoned: 1024, stallLimit: .seconds(1))
        _ = machine.enqueue(1, deadline: t0 + .milliseconds(250))
        _ = machine.timerFired(now: t0 + .milliseconds(250))
        guard case .discard = machine.received(.integer(1)) else {
            Issue.record("the late reply is discarded")
            return
        }
        _ = machine.enqueue(2, deadline: t0 + .seconds(3))
        let action = machine.timerFired(now: t0 + .seconds(3))
        #expect(action.expired == [2])
        #expect(action.close == nil)  // the oldest still waiting is 2's, just due
        #expect(ConnectionStateMachine<Int>(maximumAbandoned: 1024).stallLimit == nil)
    }
}

@Suite("Pool state machine")
struct PoolStateMachineTests {
    typealias Machine = PoolStateMachine<String, Int>

    func connectEffect(_ effects: [Machine.Effect]) -> (slot: Int, generation: Int)? {
        for effect in effects {
            if case .connect(let slot, let generation) = effect { return (slot, generation) }
        }
        return nil
    }

    @Test func firstUseConnectsAndServesWaiters() {
        var machine = Machine(size: 2, initialDelay: .milliseconds(10), maximumDelay: .seconds(1))
        let (result, effects) = machine.acquire()
        guard case .wait = result, let connect = connectEffect(effects) else {
            Issue.record("first acquire must wait for a new connection")
            return
        }
        #expect(machine.wait(id: 1, waiter: 100).0 == nil)
        let done = machine.connected(slot: connect.slot, generation: connect.generation, connection: "c0")
        guard case .succeedWaiters([100], "c0") = done.first else {
            Issue.record("waiters get the new connection")
            return
        }
        // Further use grows the pool to its bound, not beyond.
        let (second, growth) = machine.acquire()
        guard case .use("c0") = second, let grow = connectEffect(growth) else {
            Issue.record("expected use + growth")
            return
        }
        _ = machine.connected(slot: grow.slot, generation: grow.generation, connection: "c1")
        var used: [String] = []
        for _ in 0..<4 {
            let (result, effects) = machine.acquire()
            #expect(connectEffect(effects) == nil)
            if case .use(let connection) = result { used.append(connection) }
        }
        #expect(Set(used) == ["c0", "c1"])
    }

    @Test func preferredConnectionsInTurnElseAnyReady() {
        var machine = Machine(size: 4, initialDelay: .milliseconds(10), maximumDelay: .seconds(1))
        var effects = machine.acquire().1
        // Open all four: loop "a" holds a0 and a1, loop "b" holds b0 and b1.
        for name in ["a0", "b0", "a1", "b1"] {
            guard let connect = connectEffect(effects) else {
                Issue.record("expected the pool to grow to \(name)")
                return
            }
            _ = machine.connected(slot: connect.slot, generation: connect.generation, connection: name)
            effects = machine.acquire().1
        }
        var onA: [String] = []
        for _ in 0..<4 {
            if case .use(let connection) = machine.acquire(preferring: { $0.hasPrefix("a") }).0 { onA.append(connection) }
        }
        #expect(onA == ["a0", "a1", "a0", "a1"] || onA == ["a1", "a0", "a1", "a0"])
        // No ready connection is preferred: any ready one, still in turn.
        var any: [String] = []
        for _ in 0..<4 {
            if case .use(let connection) = machine.acquire(preferring: { $0.hasPrefix("c") }).0 { any.append(connection) }
        }
        #expect(Set(any) == ["a0", "a1", "b0", "b1"])
    }

    @Test func downFailsFastThenRecovers() {
        var machine = Machine(size: 1, initialDelay: .milliseconds(10), maximumDelay: .seconds(1))
        let (_, effects) = machine.acquire()
        let connect = connectEffect(effects)!
        _ = machine.wait(id: 1, waiter: 7)
        let failed = machine.connectFailed(slot: 0, generation: connect.generation, error: RedisError(.unavailable, "refused"))
        var retry: (Int, Int, Duration)?
        var failedWaiters: [Int] = []
        for effect in failed {
            if case .scheduleReconnect(let s, let g, let d) = effect { retry = (s, g, d) }
            if case .failWaiters(let w, _) = effect { failedWaiters = w }
        }
        #expect(failedWaiters == [7])
        #expect(machine.isDown)
        guard case .fail(let error) = machine.acquire().0 else {
            Issue.record("while down, acquire fails at once")
            return
        }
        #expect(error.code == .unavailable)
        let (slot, generation, delay) = retry!
        #expect(delay <= .milliseconds(10))
        let again = machine.reconnectTimerFired(slot: slot, generation: generation)
        let reconnect = connectEffect(again)!
        // While an attempt is in flight, callers wait for it.
        guard case .wait = machine.acquire().0 else {
            Issue.record("expected wait during a reconnect attempt")
            return
        }
        let second = machine.connectFailed(slot: 0, generation: reconnect.generation, error: RedisError(.unavailable, "refused"))
        for effect in second {
            if case .scheduleReconnect(_, _, let d) = effect { #expect(d <= .milliseconds(20) && d >= .milliseconds(15)) }
        }
        let third = connectEffect(machine.reconnectTimerFired(slot: 0, generation: reconnect.generation))!
        _ = machine.connected(slot: 0, generation: third.generation, connection: "c")
        #expect(!machine.isDown)
        guard case .use("c") = machine.acquire().0 else {
            Issue.record("recovered")
            return
        }
    }

    @Test func closedConnectionIsReplacedAndStaleEventsIgnored() {
        var machine = Machine(size: 1, initialDelay: .milliseconds(10), maximumDelay: .seconds(1))
        let first = connectEffect(machine.acquire().1)!
        _ = machine.connected(slot: 0, generation: first.generation, connection: "old")
        let replaced = connectEffect(machine.connectionClosed(slot: 0, generation: first.generation))!
        #expect(replaced.generation != first.generation)
        // A second close report for the old connection is ignored.
        #expect(machine.connectionClosed(slot: 0, generation: first.generation).isEmpty)
        _ = machine.connected(slot: 0, generation: replaced.generation, connection: "new")
        guard case .use("new") = machine.acquire().0 else {
            Issue.record("expected the replacement")
            return
        }
    }

    @Test func shutdownClosesAndFails() {
        var machine = Machine(size: 1, initialDelay: .milliseconds(10), maximumDelay: .seconds(1))
        let connect = connectEffect(machine.acquire().1)!
        _ = machine.wait(id: 1, waiter: 5)
        let effects = machine.shutdown()
        var failed: [Int] = []
        for effect in effects { if case .failWaiters(let w, _) = effect { failed = w } }
        #expect(failed == [5])
        guard case .close = machine.connected(slot: 0, generation: connect.generation, connection: "late").first else {
            Issue.record("a connection finishing after shutdown is closed")
            return
        }
        guard case .fail(let error) = machine.acquire().0 else {
            Issue.record("expected failure after shutdown")
            return
        }
        #expect(error.code == .shutdown)
    }

    @Test func backoffIsExponentialAndCapped() {
        let machine = Machine(size: 1, initialDelay: .milliseconds(100), maximumDelay: .seconds(1))
        for (failures, upper) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000)] {
            let delay = machine.delay(failures: failures)
            #expect(delay <= .milliseconds(upper))
            #expect(delay >= .milliseconds(upper) * 0.75)
        }
    }
}

@Suite("Pending reply")
struct PendingReplyTests {
    @Test func completedBeforeAwaitReturnsAtOnce() async throws {
        let reply = RedisPendingReply()
        reply.succeed(.integer(1))
        reply.fail(RedisError(.timeout, "late"))  // the first completion wins
        #expect(try await reply.get() == .integer(1))
    }

    @Test func completedWhileAwaited() async throws {
        let reply = RedisPendingReply()
        let waiter = Task { try await reply.get() }
        try await Task.sleep(for: .milliseconds(20))
        reply.succeed(.simpleString("OK"))
        #expect(try await waiter.value == .simpleString("OK"))
    }

    @Test func cancellationFailsTheWaitAndALateReplyIsIgnored() async throws {
        let reply = RedisPendingReply()
        let waiter = Task { try await reply.get() }
        try await Task.sleep(for: .milliseconds(20))
        waiter.cancel()
        do {
            _ = try await waiter.value
            Issue.record("expected cancellation")
        } catch let error as RedisError {
            #expect(error.code == .cancelled)
        }
        reply.succeed(.integer(2))
    }

    @Test func alreadyCancelledTaskFailsWithoutWaiting() async throws {
        let reply = RedisPendingReply()
        let waiter = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await reply.get()
        }
        await #expect(throws: RedisError.self) { try await waiter.value }
    }
}
