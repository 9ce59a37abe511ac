public import Hummingbird
public import Logging

/// Serves `router` on a free loopback port as a stand-in for KIS, for what the simulator cannot produce (a failure
/// of one given call, a `revokeP` that fails, a slow `tokenP`); the caller cancels the task when done.
public func startStandInKIS(_ router: Router<BasicRequestContext>, logger: Logger)
    async -> (url: String, task: Task<Void, any Error>)
{
    let (ports, cont) = AsyncStream.makeStream(of: Int.self)
    let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                          onServerRunning: { cont.yield($0.localAddress?.port ?? 0) }, logger: logger)
    let task = Task { try await app.runService(gracefulShutdownSignals: []) }
    var it = ports.makeAsyncIterator()
    return ("http://127.0.0.1:\(await it.next()!)", task)
}
