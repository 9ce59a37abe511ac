import NIOCore

/// Runs the jobs of the tasks that prefer it on one NIO event loop, as event-loop tasks.
///
/// A miss the hit path answers runs on the event loop of the connection that asked: the store's Redis
/// connection on that loop (the Redis client prefers one of the calling loop) and the KIS call on that loop
/// (``KIS/KISClient`` asks AsyncHTTPClient for a connection there) complete the task where it waits, so a miss
/// crosses no thread from the request's read to its answer's write. Each crossing is a wake-up of a sleeping
/// thread, the dearest step of an isolated miss on an idle machine (`bench/HISTORY.md`, "Miss path").
///
/// Jobs run between the loop's I/O events; none may block, which holds for everything `ChartService` runs
/// (it awaits, it never waits). What a fetched chart costs in CPU — reading KIS's pages, building and rendering the
/// candles, a few hundred microseconds for one page and about a millisecond for a ten-year range — is spent on the
/// loop, between the hits it serves; misses are bounded by KIS's rate per app key.
final class EventLoopExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
