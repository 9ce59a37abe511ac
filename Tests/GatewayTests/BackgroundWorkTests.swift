@testable import Gateway
import Synchronization
import Testing

@Suite("Background work, counted for graceful shutdown")
struct BackgroundWorkTests {
    @Test("drained() returns at once when nothing runs, and once the last task of several has returned")
    func drainedWaitsForTheLast() async throws {
        let work = BackgroundWork()
        await work.drained()
        let finished = Mutex(0)
        for delay in [50, 150, 100] {
            work.start {
                try? await Task.sleep(for: .milliseconds(delay))
                finished.withLock { $0 += 1 }
            }
        }
        #expect(work.running == 3)
        await work.drained()
        #expect(finished.withLock { $0 } == 3)
        #expect(work.running == 0)
    }

    @Test("a cancelled wait returns while the work goes on")
    func cancelledWait() async throws {
        let work = BackgroundWork()
        let release = AsyncStream<Void>.makeStream()
        work.start { for await _ in release.stream {} }
        let waiter = Task { await work.drained() }
        try await Task.sleep(for: .milliseconds(50))
        waiter.cancel()
        await waiter.value
        #expect(work.running == 1)
        release.continuation.finish()
        await work.drained()
        #expect(work.running == 0)
    }
}
