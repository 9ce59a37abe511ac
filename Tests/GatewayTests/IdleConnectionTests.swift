import Foundation
@testable import Gateway
import Synchronization
import Testing
import TestSupport

/// A blocking HTTP/1.1 client on one socket, for tests of what happens to a connection (not to a request).
final class RawConnection: @unchecked Sendable {  // used by one thread at a time (`onThread`)
    private let fd: Int32

    /// - Parameter receiveBuffer: `SO_RCVBUF`, set before connecting (a small one makes a slow reader).
    init(port: Int, receiveTimeout seconds: Int = 10, receiveBuffer: Int32? = nil) throws {
        let connected = connectToLoopback(port: port) { fd in
            var timeout = timeval(tv_sec: seconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            if var size = receiveBuffer {
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        guard let connected else { throw RawConnectionError("cannot connect to port \(port)") }
        fd = connected
    }

    deinit { close(fd) }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw RawConnectionError("the connection is closed") }
            sent += n
        }
    }

    /// Where the head that starts at `start` in `bytes` ends (its blank line), if it is all there.
    static func headEnd(in bytes: [UInt8], from start: Int = 0) -> Int? {
        let separator = Array("\r\n\r\n".utf8)
        return (start..<max(start, bytes.count - 3)).first { Array(bytes[$0..<$0 + 4]) == separator }
    }

    /// An answer head's `Content-Length` (0 without one).
    static func contentLength(_ head: String) -> Int {
        head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
            .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
    }

    /// One answer's status code (its body read and dropped).
    func answer() throws -> Int {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            if let end = Self.headEnd(in: received) {
                let head = String(decoding: received[0..<end], as: UTF8.self)
                let length = Self.contentLength(head)
                while received.count < end + 4 + length {
                    let n = read(fd, &buffer, buffer.count)
                    guard n > 0 else { throw RawConnectionError("the answer ended early") }
                    received += buffer[0..<n]
                }
                return Int(head.split(separator: " ")[1]) ?? 0
            }
            let n = read(fd, &buffer, buffer.count)
            guard n > 0 else { throw RawConnectionError(n == 0 ? "closed before an answer" : "no answer in time") }
            received += buffer[0..<n]
        }
    }

    /// What arrives within `milliseconds`, without waiting longer for more (`poll`, then what is there).
    func readAvailable(within milliseconds: Int32) -> [UInt8] {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var waiting = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while poll(&waiting, 1, milliseconds) > 0 {
            let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            guard n > 0 else { break }
            received += buffer[0..<n]
        }
        return received
    }

    /// Everything until the end of the stream (or the receive timeout).
    func readToEnd() -> [UInt8] {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { return received }
            received += buffer[0..<n]
        }
    }

    /// Sends a byte, then reads what came without waiting: true once the server has closed the connection (end of
    /// the stream, or the byte refused).
    func trickleAndCheckClosed() -> Bool {
        var byte = UInt8(ascii: "a")
        guard Glibc.send(fd, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 else { return true }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n > 0 { continue }  // an answer given early: read and dropped
            return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)
        }
    }

    /// Sends `request` again and again, never reading, until a send waits longer than `blocked` or `limit` bytes
    /// went; the bytes sent, and whether the sending was stopped (the server stopped reading).
    func pipelineUntilBlocked(_ request: String, blocked: Int, limit: Int) -> (sent: Int, stopped: Bool) {
        var timeout = timeval(tv_sec: blocked, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let batch = Array(String(repeating: request, count: 64).utf8)
        var sent = 0
        while sent < limit {
            var offset = 0
            while offset < batch.count {
                let n = batch.withUnsafeBytes {
                    Glibc.send(fd, $0.baseAddress! + offset, batch.count - offset, Int32(MSG_NOSIGNAL))
                }
                guard n > 0 else { return (sent + offset, true) }
                offset += n
            }
            sent += batch.count
        }
        return (sent, false)
    }

    /// Whether the server closed the connection (end of stream) within the receive timeout; an answer given before
    /// (the router answers a preflight at its head, whatever body is declared) is read and dropped.
    func closedByServer() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n > 0 { continue }
            return n == 0
        }
    }
}

struct RawConnectionError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

@Suite("Gateway: idle connections", .serialized)
struct IdleConnectionTests {
    static func port(_ url: String) -> Int { Int(url.split(separator: ":").last!)! }

    /// A client sending a request head a byte at a time (slowloris) holds a socket for as long as it likes unless
    /// the server gives up on it. The hit path decides a preflight at its head and answers at its end: a client that
    /// declares a body and never sends it must not pass for a request in progress for ever either.
    @Test("a connection that never completes its request head, or its declared body, is closed after the idle timeout",
          arguments: [
              "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ",
              "OPTIONS /domestic/chart/daily/005930 HTTP/1.1\r\nHost: t\r\nOrigin: http://localhost:3000\r\n"
                  + "Access-Control-Request-Method: GET\r\nContent-Length: 1000000\r\n\r\n",
          ])
    func unfinishedRequestIsClosed(_ sent: String) async throws {
        try await withGateway(dependencies: { _, deps in deps.idleTimeout = .seconds(1) }) { g, urls in
            let started = ContinuousClock.now
            let closed = try await onThread {
                let c = try RawConnection(port: Self.port(urls[0]), receiveTimeout: 6)
                try c.send(sent)
                return c.closedByServer()
            }
            #expect(closed)
            #expect(ContinuousClock.now - started < .seconds(4))
        }
    }

    /// Each byte of a body counts as activity for an idle timer, so a body trickled in a byte at a time — a
    /// terabyte declared — held its connection for ever, with no credentials: the gateway (its hit path, and the
    /// router's answer given before the body), and the router-only gateway (whose `ConnectionCloseHandler` the
    /// broker uses too). A body must now be whole within one to two idle timeouts of the read that left it open.
    @Test("a request body trickled in a byte at a time is closed after the idle timeout, answered early or not",
          arguments: [true, false], [
              "POST /token/refresh HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n",
              "GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n",
              "OPTIONS /domestic/chart/daily/005930 HTTP/1.1\r\nHost: t\r\nOrigin: http://localhost:3000\r\n"
                  + "Access-Control-Request-Method: GET\r\nContent-Length: 1000000\r\n\r\n",
          ])
    func trickledBodyIsClosed(hitPath: Bool, head: String) async throws {
        try await withGateway(dependencies: { _, deps in
            deps.idleTimeout = .seconds(1)
            deps.hitPathEnabled = hitPath
        }) { g, urls in
            let started = ContinuousClock.now
            let closed = try await onThread {
                let c = try RawConnection(port: Self.port(urls[0]), receiveTimeout: 6)
                try c.send(head)
                for _ in 0..<30 {  // a byte every 200 ms, 6 s at most
                    usleep(200_000)
                    if c.trickleAndCheckClosed() { return true }
                }
                return false
            }
            #expect(closed, "still open after 6 s of a byte every 200 ms (idle timeout 1 s)")
            #expect(ContinuousClock.now - started < .seconds(4))
        }
    }

    /// The hit path answers hits itself, straight to the channel: a client pipelining requests and never reading the
    /// answers made it queue them in memory without bound (100 MB in 30 s, with no credentials: a rejected JWT is a
    /// hit too). It now stops reading while the channel is not writable, as the router's writer does, so the
    /// client's sending stops once the sockets' buffers are full.
    @Test("a client pipelining hits without reading the answers is not read from once the answers back up")
    func pipelinedHitsWithoutReading() async throws {
        try await withGateway { g, urls in
            let (jwt, kis) = try await g.signIn("flood1")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).status == 200)  // credentials and chart known: hits
            let request = "GET \(path) HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(jwt)\r\nX-KIS-Token: \(kis)\r\n\r\n"
            let (sent, stopped) = try await onThread {
                let c = try RawConnection(port: Self.port(urls[0]), receiveBuffer: 4096)
                // The loopback sockets hold some megabytes; 96 MB of requests would be some 600 MB of answers.
                return c.pipelineUntilBlocked(request, blocked: 2, limit: 96 << 20)
            }
            #expect(stopped, "the gateway read \(sent >> 20) MiB of requests whose answers nobody read")
            #expect(sent < 48 << 20, "\(sent >> 20) MiB of requests read before the gateway stopped")
        }
    }

    /// Hummingbird's own idle timer sees only what the router answers: it would close a connection kept busy by the
    /// hit path. The connection's timer counts every request part and answer.
    @Test("a keep-alive connection busy with hit-path answers stays open past the idle timeout; idle, it is closed")
    func busyConnectionStaysOpen() async throws {
        // Closed between one and two timeouts after its last request: requests 300 ms apart for 4.8 s keep it open past
        // twice the timeout, with 1.7 s to spare for a stalled machine.
        try await withGateway(dependencies: { _, deps in deps.idleTimeout = .seconds(2) }) { g, urls in
            let kis = try await g.connect(user: "idle1", appKey: "PSapp-idle")
            let jwt = try await g.jwt("idle1")
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            #expect(try await g.get(path, jwt: jwt, kis: kis).status == 200)  // credentials and chart known
            let (statuses, closed) = try await onThread {
                let c = try RawConnection(port: Self.port(urls[0]))
                var statuses: [Int] = []
                for _ in 0..<16 {  // 4.8 s of requests, 300 ms apart
                    try c.send("GET \(path) HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(jwt)\r\nX-KIS-Token: \(kis)\r\n\r\n")
                    statuses.append(try c.answer())
                    usleep(300_000)
                }
                return (statuses, c.closedByServer())
            }
            #expect(statuses == Array(repeating: 200, count: 16))
            #expect(closed)
        }
    }
}
