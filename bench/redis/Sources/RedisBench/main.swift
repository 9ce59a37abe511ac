// GET throughput and latency of the kisgw Redis client, shaped like
// `redis-benchmark -t get -d SIZE -c CLIENTS -n REQUESTS [-P PIPELINE]`.
import Foundation
import Logging
import NIOCore
import Redis

struct Options {
    var url = "redis://127.0.0.1:6379/0"
    var clients = 50
    var requests = 200_000
    var pipeline = 1
    var valueSize = 6000
    var poolSize = 0  // 0: one connection per client, like redis-benchmark

    init(_ arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let flag = iterator.next() {
            let value = iterator.next() ?? ""
            switch flag {
            case "--url": self.url = value
            case "-c", "--clients": self.clients = Int(value) ?? self.clients
            case "-n", "--requests": self.requests = Int(value) ?? self.requests
            case "-P", "--pipeline": self.pipeline = max(1, Int(value) ?? 1)
            case "-d", "--size": self.valueSize = Int(value) ?? self.valueSize
            case "--pool": self.poolSize = Int(value) ?? 0
            default:
                FileHandle.standardError.write(Data("unknown option \(flag)\n".utf8))
                exit(2)
            }
        }
    }
}

final class Recorder: @unchecked Sendable {
    // @unchecked: each worker owns one slot of `latencies`; results are read after all workers finished.
    var latencies: [[Double]]
    init(workers: Int) { self.latencies = Array(repeating: [], count: workers) }
}

let options = Options(CommandLine.arguments)
var logger = Logger(label: "redis-bench")
logger.logLevel = .warning
var configuration = try RedisConfiguration(url: options.url)
configuration.poolSize = options.poolSize == 0 ? options.clients : options.poolSize
configuration.commandTimeout = .seconds(30)
let client = RedisClient(configuration: configuration, logger: logger)

let key = "kisgw-bench:key"
try await client.set(key, to: ByteBuffer(repeating: UInt8(ascii: "x"), count: options.valueSize))
// Warm up every pooled connection.
try await withThrowingTaskGroup(of: Void.self) { group in
    for _ in 0..<options.clients { group.addTask { _ = try await client.get(key) } }
    try await group.waitForAll()
}

let batches = options.requests / options.pipeline
let recorder = Recorder(workers: options.clients)
let getCommand: RedisCommand = ["GET", RedisArgument(key)]
let batch = [RedisCommand](repeating: getCommand, count: options.pipeline)
let clock = ContinuousClock()
let remaining = ManagedAtomicCounter(batches)
let started = clock.now
try await withThrowingTaskGroup(of: Void.self) { group in
    for worker in 0..<options.clients {
        group.addTask {
            var local: [Double] = []
            local.reserveCapacity(batches / options.clients + 1)
            while remaining.take() {
                let begin = clock.now
                if options.pipeline == 1 {
                    guard let value = try await client.get(key), value.readableBytes == options.valueSize else {
                        fatalError("wrong reply")
                    }
                } else {
                    for result in try await client.pipeline(batch) {
                        guard try result.get().byteBuffer?.readableBytes == options.valueSize else { fatalError("wrong reply") }
                    }
                }
                let elapsed = begin.duration(to: clock.now)
                local.append(Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000)
            }
            recorder.latencies[worker] = local
        }
    }
    try await group.waitForAll()
}
let total = started.duration(to: clock.now)
let seconds = Double(total.components.seconds) + Double(total.components.attoseconds) / 1e18
let all = recorder.latencies.flatMap { $0 }.sorted()
func percentile(_ p: Double) -> Double { all.isEmpty ? 0 : all[min(all.count - 1, Int(Double(all.count) * p))] }
let done = all.count * options.pipeline
print(String(format: "kisgw GET: %d requests, %d clients, pool %d, pipeline %d, %d-byte values: %.0f requests/s, p50 %.3f ms, p99 %.3f ms",
             done, options.clients, configuration.poolSize, options.pipeline, options.valueSize, Double(done) / seconds, percentile(0.5), percentile(0.99)))
_ = try await client.delete([key])
await client.shutdown()

/// Hands out a fixed number of work items to concurrent workers.
final class ManagedAtomicCounter: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private var left: Int
    private let lock = NSLock()
    init(_ count: Int) { self.left = count }
    func take() -> Bool {
        self.lock.lock()
        defer { self.lock.unlock() }
        guard self.left > 0 else { return false }
        self.left -= 1
        return true
    }
}
