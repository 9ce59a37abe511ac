import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A new TCP socket on which `call` (`connect` or `bind`) to 127.0.0.1:`port` succeeded, `configure` applied to it
/// first; nil (the socket closed) otherwise. The caller closes it.
func loopbackSocket(port: Int, configure: (Int32) -> Void = { _ in },
                    _ call: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    configure(fd)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let done = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard done == 0 else {
        close(fd)
        return nil
    }
    return fd
}

/// A TCP socket connected to `port` on loopback, `configure` applied to it before connecting; nil if the connection
/// failed. The caller closes it.
public func connectToLoopback(port: Int, configure: (Int32) -> Void = { _ in }) -> Int32? {
    loopbackSocket(port: port, configure: configure) { connect($0, $1, $2) }
}

/// Runs blocking `body` (a client on a raw socket, say) on a thread of its own.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

/// Writes `request` as it is to a new connection to `port` on loopback and reads until the server closes it:
/// bytes no HTTP client would send (a bad chunk size, a head too long). Throws if the connection cannot be made or
/// the server keeps it open past `seconds`.
public func exchangeRawBytes(port: Int, _ request: String, timeout seconds: Int = 10) async throws -> String {
    try await onThread {
        let connected = connectToLoopback(port: port) { fd in
            var timeout = timeval(tv_sec: seconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        guard let fd = connected else { throw RawBytesError("cannot connect to port \(port)") }
        defer { close(fd) }
        let bytes = Array(request.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            // The server may answer and close before it has read everything (a head too long): read what it said.
            guard n > 0 else { break }
            sent += n
        }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n == 0 { break }
            if n < 0 {
                // ECONNRESET after an answer: the server closed with unread bytes; what it sent is still the answer.
                if errno == ECONNRESET, !received.isEmpty { break }
                throw RawBytesError(errno == EAGAIN || errno == EWOULDBLOCK
                    ? "the server kept the connection open for \(seconds) s" : "read failed: errno \(errno)")
            }
            received += buffer[0..<n]
        }
        return String(decoding: received, as: UTF8.self)
    }
}

public struct RawBytesError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
