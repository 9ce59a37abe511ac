import Foundation
import KIS
import Logging
@testable import Simulator
import Testing
import TestSupport

@Suite("Simulator: stopped while connections arrive")
struct ShutdownTests {
    /// Cancelling a Hummingbird server drops a connection it has accepted but not yet handed to a handler, and the
    /// connection's NIOAsyncWriter, deinited unfinished, crashes the test process (once in CI: a background request
    /// reached a simulator during teardown). The harness stops its servers gracefully (`TestServer`): a connection
    /// that arrives meanwhile is served or refused.
    @Test("connections keep arriving while the harness stops the simulator: the test process survives")
    func connectionsDuringStop() async throws {
        var logger = Logger(label: "sim-shutdown")
        logger.logLevel = .critical
        let configuration = SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000)
        for _ in 0..<8 {
            let hammering = try await withApp({ onPort in
                try await buildSimulator(configuration, logger: logger) { onPort($0) }
            }) { port in
                // Four clients connect, send a request and hang up, over and over, until after the stop.
                let until = ContinuousClock.now + .milliseconds(300)
                let clients = Task {
                    try await withThrowingTaskGroup(of: Int.self) { group in
                        for _ in 0..<4 { group.addTask { try await onThread { connectRepeatedly(port: port, until: until) } } }
                        return try await group.reduce(0, +)
                    }
                }
                try await Task.sleep(for: .milliseconds(100))
                return clients
            }
            // The stop did happen under load: requests reached the simulator while it ran.
            #expect(try await hammering.value > 0, "no connection reached the simulator")
        }
    }
}

/// Connects to `port` on loopback, sends a request and hangs up, again and again until `deadline` (a refused
/// connection counts as one too); returns how many connections were made and took the request.
private func connectRepeatedly(port: Int, until deadline: ContinuousClock.Instant) -> Int {
    let request = Array("GET /__sim/stats HTTP/1.1\r\nHost: t\r\n\r\n".utf8)
    var sent = 0
    while ContinuousClock.now < deadline {
        let fd = connectToLoopback(port: port) { fd in
            // A connect the full backlog leaves unanswered gives up here, not at the SYN's retry a second later.
            var timeout = timeval(tv_sec: 0, tv_usec: 50_000)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        if let fd {
            let n = request.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            if n == request.count { sent += 1 }
            close(fd)
        }
    }
    return sent
}

/// The simulator kept a connection open for as long as its client liked — idle, or sending a body a byte at a time —
/// as no server does. It closes one idle for its idle timeout (120 s by default: after AsyncHTTPClient's pool, 60 s,
/// closes its own), and one whose body has not come whole in that time.
@Suite("Simulator: idle connections")
struct SimulatorIdleTests {
    @Test("an idle connection, and one trickling a body, are closed after the idle timeout",
          arguments: ["", "POST /oauth2/tokenP HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"])
    func closedWhenIdle(_ sent: String) async throws {
        var configuration = SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000)
        configuration.idleTimeout = .seconds(1)
        try await withSimulator(configuration) { sim in
            let port = Int(sim.base.split(separator: ":").last!)!
            let started = ContinuousClock.now
            let closed = try await onThread { () -> Bool in
                guard let fd = connectToLoopback(port: port) else { return false }
                defer { close(fd) }
                let bytes = Array(sent.utf8)
                if !bytes.isEmpty { _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress!, bytes.count, Int32(MSG_NOSIGNAL)) } }
                for _ in 0..<30 {  // a byte every 200 ms (the body's), 6 s at most
                    usleep(200_000)
                    var byte = UInt8(ascii: "a")
                    if !sent.isEmpty, send(fd, &byte, 1, Int32(MSG_NOSIGNAL)) != 1 { return true }
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                    if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { return true }
                }
                return false
            }
            #expect(closed, "still open after 6 s (idle timeout 1 s)")
            #expect(ContinuousClock.now - started < .seconds(5))
        }
    }
}
