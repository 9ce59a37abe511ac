// GET throughput and latency of the kisgw Redis client, shaped like
// `redis-benchmark -t get -d SIZE -c CLIENTS -n REQUESTS [-P PIPELINE]`.
//   RedisBench --url URL -c CLIENTS -n REQUESTS -P PIPELINE -d SIZE [--pool N] [--threads N] [--on-loop]
// --threads N: a MultiThreadedEventLoopGroup of N threads (default: the singleton, one per core);
// --on-loop: the driving tasks run on the group's event loops instead of Swift's cooperative pool;
// --nio-executor: NIO's singleton event loops become Swift's global executor (all tasks run on them).
import Foundation
import Logging
import NIOCore
import NIOPosix
import Redis

struct Options {
    var url = "redis://127.0.0.1:6379/0"
    var clients = 50
    var requests = 200_000
    var pipeline = 1
    var valueSize = 6000
    var poolSize = 0  // 0: one connection per client, like redis-benchmark
    var threads = 0  // 0: MultiThreadedEventLoopGroup.singleton (one thread per core)
    var onLoop = false  // run the worker tasks on the event loops (task executor preference)
    var nioExecutor = false  // make NIO's singleton event loops Swift's global executor

    init(_ arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let flag = iterator.next() {
            if flag == "--on-loop" {
                self.onLoop = true
                continue
            }
            if flag == "--nio-executor" {
                self.nioExecutor = true
                continue
            }
            let value = iterator.next() ?? ""
            switch flag {
            case "--url": self.url = value
            case "-c", "--clients": self.clients = Int(value) ?? self.clients
            case "-n", "--requests": self.requests = Int(value) ?? self.requests
            case "-P", "--pipeline": self.pipeline = max(1, Int(value) ?? 1)
            case "-d", "--size": self.valueSize = Int(value) ?? self.valueSize
            case "--pool": self.poolSize = Int(value) ?? 0
            case "--threads": self.threads = Int(value) ?? 0
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
ProcessHeap.keepFreedMemory()  // as kisgw does at start (Sources/kisgw/Runtime.swift)
if options.nioExecutor && !NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor() {
    FileHandle.standardError.write(Data("could not install the NIO event loops as the global executor\n".utf8))
    exit(2)
}
var logger = Logger(label: "redis-bench")
logger.logLevel = .warning
var configuration = try RedisConfiguration(url: options.url)
configuration.poolSize = options.poolSize == 0 ? options.clients : options.poolSize
configuration.commandTimeout = .seconds(30)
let group: MultiThreadedEventLoopGroup =
    options.threads == 0 ? .singleton : MultiThreadedEventLoopGroup(numberOfThreads: options.threads)
let client = RedisClient(configuration: configuration, eventLoopGroup: group, logger: logger)
// With --on-loop each worker task runs on one of the group's event loops (so a
// single-thread group runs client, driving tasks and I/O on one thread, like redis-benchmark).
let executors = options.onLoop ? group.makeIterator().map { EventLoopTaskExecutor($0) } : []

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
        group.addTask(executorPreference: executors.isEmpty ? nil : executors[worker % executors.count]) {
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
let threads = options.threads == 0 ? "\(System.coreCount) (singleton)" : "\(options.threads)"
print(String(format: "kisgw GET: %d requests, %d clients, pool %d, pipeline %d, %d-byte values, event loop threads %@%@: %.0f requests/s, p50 %.3f ms, p99 %.3f ms",
             done, options.clients, configuration.poolSize, options.pipeline, options.valueSize, threads, options.onLoop ? ", tasks on the loops" : options.nioExecutor ? ", NIO global executor" : "",
             Double(done) / seconds, percentile(0.5), percentile(0.99)))
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

/// Runs tasks on one NIO event loop: a task preferring this executor runs its jobs
/// as event-loop tasks, on the loop's own thread, instead of Swift's cooperative pool.
final class EventLoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop
    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.loop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
