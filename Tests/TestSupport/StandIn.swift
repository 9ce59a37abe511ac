public import Hummingbird
public import Logging

/// Serves `router` on a free loopback port as a stand-in for KIS, for what the simulator cannot produce (a failure
/// of one given call, a `revokeP` that fails, a slow `tokenP`); the caller stops the server when done
/// (``stopping(_:after:)``).
public func startStandInKIS(_ router: Router<BasicRequestContext>, logger: Logger)
    async -> (url: String, server: TestServer)
{
    let (ports, cont) = AsyncStream.makeStream(of: Int.self)
    let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                          onServerRunning: { cont.yield($0.localAddress?.port ?? 0) }, logger: logger)
    let server = TestServer(app)
    Task { try await server.run() }
    var it = ports.makeAsyncIterator()
    return ("http://127.0.0.1:\(await it.next()!)", server)
}
