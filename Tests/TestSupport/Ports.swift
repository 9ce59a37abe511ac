import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether `port` on 127.0.0.1 can be bound now (nothing listens on it, nor holds it).
public func loopbackPortIsFree(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    } == 0
}

/// A `kisgw demo --port-base` whose every port (the gateway's, the broker's at +80, the simulators' at +1443 and
/// +21443) is free now, from 20000–40000.
public func freeDemoPortBase() throws -> Int {
    for _ in 0..<200 {
        let base = Int.random(in: 20_000...40_000)
        if [0, 80, 1443, 21443].allSatisfy({ loopbackPortIsFree(base + $0) }) { return base }
    }
    throw PortError(description: "no free demo port base in 20000–40000 after 200 tries")
}

public struct PortError: Error, CustomStringConvertible {
    public let description: String
}
