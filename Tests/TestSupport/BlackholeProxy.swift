import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A TCP proxy on 127.0.0.1 to a local port, for tests of a peer that goes silent without a reset (a failover, a
/// network partition): after ``blackhole()``, every connection open at that moment forwards nothing either way and
/// is never closed; connections opened later are forwarded as usual.
public final class BlackholeProxy: @unchecked Sendable {  // state under `lock`; the threads only read it through it
    public let port: Int
    private let target: Int
    private let listener: Int32
    private let lock = NSLock()
    private var generation = 0
    private var sockets: [Int32] = []
    private var stopped = false

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

    /// Silences every connection open now, for good.
    public func blackhole() {
        lock.withLock { generation += 1 }
    }

    /// Closes the listener and every connection.
    public func stop() {
        let all = lock.withLock { () -> [Int32] in
            stopped = true
            defer { sockets = [] }
            return sockets
        }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for fd in all {
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
        }
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
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if lock.withLock({ stopped }) { return }
                continue
            }
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
                return self.generation
            }
            guard let generation else {
                close(client)
                close(server)
                continue
            }
            Thread.detachNewThread { self.pump(from: client, to: server, generation: generation) }
            Thread.detachNewThread { self.pump(from: server, to: client, generation: generation) }
        }
    }

    /// Copies `from` to `to` until either closes; once silenced, reads and drops.
    private func pump(from: Int32, to: Int32, generation: Int) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
            if n <= 0 {
                shutdown(to, Int32(SHUT_WR))
                return
            }
            if lock.withLock({ self.generation != generation }) { continue }
            var sent = 0
            while sent < n {
                let w = buffer.withUnsafeBytes { write(to, $0.baseAddress! + sent, n - sent) }
                if w <= 0 { return }
                sent += w
            }
        }
    }
}
