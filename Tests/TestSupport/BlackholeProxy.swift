import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A TCP proxy on 127.0.0.1 to a local port, for tests of a peer that goes silent without a reset (a failover, a
/// network partition): after ``blackhole()``, every connection open at that moment forwards nothing either way and
/// is never closed; connections opened later are forwarded as usual. While ``delay`` is above zero, each chunk a
/// client sends reaches the server that much later (in order; the server's bytes pass at once): a command reaches
/// Redis late, as over a congested link.
///
/// Each descriptor is closed once, by the thread that owns it (the accept thread its listener, the last pump of a
/// connection both of its sockets); ``stop()`` only shuts them down, which wakes those threads.
public final class BlackholeProxy: @unchecked Sendable {  // state under `lock`; the threads only read it through it
    public let port: Int
    private let target: Int
    private let listener: Int32
    private let lock = NSLock()
    private var generation = 0
    private var held: Duration = .zero
    private var sockets: [Int32] = []
    private var stopped = false
    /// Pumps still running, by connection (its client socket).
    private var pumps: [Int32: Int] = [:]

    public init(to target: Int) throws {
        self.target = target
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            close(fd)
            throw RedisServerProcess.ServerError(message: "the proxy cannot listen: errno \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.listener = fd
        self.port = Int(UInt16(bigEndian: address.sin_port))
        Thread.detachNewThread { self.acceptLoop() }
    }

    /// How long each chunk from a client is held before it is passed on.
    public var delay: Duration {
        get { lock.withLock { held } }
        set { lock.withLock { held = newValue } }
    }

    /// Silences every connection open now, for good.
    public func blackhole() {
        lock.withLock { generation += 1 }
    }

    /// Stops accepting and ends every connection. Idempotent.
    public func stop() {
        let all = lock.withLock { () -> [Int32]? in
            guard !stopped else { return nil }
            stopped = true
            return sockets
        }
        guard let all else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        for fd in all { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    deinit { stop() }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    private func acceptLoop() {
        defer { close(listener) }
        while !lock.withLock({ stopped }) {
            let client = accept(listener, nil, nil)
            if client < 0 { continue }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.loopback(port: UInt16(target))
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            let generation = lock.withLock { () -> Int? in
                guard !stopped, connected == 0 else { return nil }
                sockets += [client, server]
                pumps[client] = 2
                return self.generation
            }
            guard let generation else {
                close(client)
                close(server)
                continue
            }
            Thread.detachNewThread { self.pump(from: client, to: server, generation: generation, delayed: true, pair: client) }
            Thread.detachNewThread { self.pump(from: server, to: client, generation: generation, delayed: false, pair: client) }
        }
    }

    /// Copies `from` to `to` until either closes, each chunk after ``delay`` when `delayed`; once silenced, reads and
    /// drops. The connection's last pump to end closes both sockets.
    private func pump(from: Int32, to: Int32, generation: Int, delayed: Bool, pair: Int32) {
        defer {
            let last = lock.withLock { () -> Bool in
                pumps[pair, default: 1] -= 1
                guard pumps[pair] == 0 else { return false }
                pumps[pair] = nil
                sockets.removeAll { $0 == from || $0 == to }
                return true
            }
            if last {
                close(from)
                close(to)
            }
        }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
            if n <= 0 {
                shutdown(to, Int32(SHUT_WR))
                return
            }
            if lock.withLock({ self.generation != generation }) { continue }
            if delayed {
                let wait = self.delay
                if wait > .zero {
                    let (seconds, attoseconds) = wait.components
                    usleep(useconds_t(seconds * 1_000_000 + attoseconds / 1_000_000_000_000))
                }
            }
            var sent = 0
            while sent < n {
                let w = buffer.withUnsafeBytes { send(to, $0.baseAddress! + sent, n - sent, Int32(MSG_NOSIGNAL)) }
                if w <= 0 {
                    shutdown(from, Int32(SHUT_RDWR))  // the other pump's socket: it ends too
                    return
                }
                sent += w
            }
        }
    }
}
