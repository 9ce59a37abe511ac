import AsyncHTTPClient
import Hummingbird
import KIS
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing

/// A request context that knows the caller's address: the server answers with the client's port, which names the
/// client's connection.
private struct PeerContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let remotePort: Int?
    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remotePort = source.channel.remoteAddress?.port
    }
}

@Suite("The KIS HTTP clients")
struct KISHTTPClientTests {
    /// Serves `router` on a loopback port for the duration of `body`.
    private func withServer<Context: RequestContext>(
        _ router: Router<Context>, _ body: @Sendable (Int) async throws -> Void
    ) async throws where Context.Source == ApplicationRequestContextSource {
        var logger = Logger(label: "kis-http-test-server")
        logger.logLevel = .critical
        try await withApp({ onPort in
            Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                        onServerRunning: { onPort($0.localAddress?.port ?? 0) }, logger: logger)
        }, body)
    }

    /// Serves `GET /peer` (the caller's port) for the duration of `body`.
    private func withPeerServer(_ body: @Sendable (Int) async throws -> Void) async throws {
        let router = Router(context: PeerContext.self)
        router.get("peer") { _, context in "\(context.remotePort ?? -1)" }
        try await withServer(router, body)
    }

    /// Runs `body` with `KISHTTPClients(group:)` and shuts them down after it, thrown or not (before the server
    /// stops: a server waits for its keep-alive connections to close).
    private func withKISClients(
        on group: MultiThreadedEventLoopGroup = .singleton, _ body: (KISHTTPClients) async throws -> Void
    ) async throws {
        let clients = KISHTTPClients(group: group)
        do {
            try await body(clients)
        } catch {
            try? await clients.shutdown()
            throw error
        }
        try await clients.shutdown()
    }

    /// Asks `/peer` from `loop`, as a miss fetched on that loop does.
    private func peer(_ clients: KISHTTPClients, from loop: any EventLoop, port: Int) async throws -> Int {
        let request = try HTTPClient.Request(url: "http://127.0.0.1:\(port)/peer")
        let response = try await loop.flatSubmit { clients.current.execute(request: request) }.get()
        return Int(String(buffer: try #require(response.body))) ?? -1
    }

    @Test("a call from an event loop goes over a connection of that loop, from the first call on")
    func aConnectionPerLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loops = Array(group.makeIterator())
        do {
            try await withPeerServer { port in
                try await withKISClients(on: group) { clients in
                    var seen: [[Int]] = [[], []]
                    for round in 0..<6 {
                        for (index, loop) in loops.enumerated() where round % 2 == index % 2 || round > 2 {
                            seen[index].append(try await peer(clients, from: loop, port: port))
                        }
                    }
                    #expect(Set(seen[0]).count == 1 && Set(seen[1]).count == 1, "\(seen)")
                    #expect(Set(seen[0]).isDisjoint(with: seen[1]), "loop 0 used \(seen[0]), loop 1 used \(seen[1])")
                    for loop in loops {
                        let onLoop = try await loop.submit { clients.current === clients.client(on: loop) }.get()
                        #expect(onLoop)
                    }
                    // Off the loops: one client (one pool), the first loop's, whose connection the calls reuse.
                    #expect(clients.current === clients.client(on: loops[0]))
                    let request = try HTTPClient.Request(url: "http://127.0.0.1:\(port)/peer")
                    let offLoop = try await clients.current.execute(request: request).get()
                    #expect(offLoop.body.map { Int(String(buffer: $0)) } == seen[0].first)
                }
            }
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
    }

    @Test("does not follow redirects: a redirect is KIS's answer, and the app secret goes nowhere else")
    func noRedirects() async throws {
        let router = Router()
        router.get("moved") { _, _ in
            Response(status: .found, headers: [.location: "http://127.0.0.1:9/elsewhere"])
        }
        try await withServer(router) { port in
            try await withKISClients { clients in
                let response = try await clients.current.execute(
                    request: HTTPClient.Request(url: "http://127.0.0.1:\(port)/moved")).get()
                #expect(response.status == .found)
                #expect(response.headers.first(name: "location") == "http://127.0.0.1:9/elsewhere")
            }
        }
    }
}
