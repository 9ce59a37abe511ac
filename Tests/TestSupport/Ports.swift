import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A TCP socket bound to 127.0.0.1:`port` (0: a free port the kernel picks), or nil when the port is taken. The
/// caller closes it.
func loopbackSocket(boundTo port: Int) -> Int32? {
    loopbackSocket(port: port) { bind($0, $1, $2) }
}

/// Whether `port` on 127.0.0.1 can be bound now (nothing listens on it, nor holds it).
public func loopbackPortIsFree(_ port: Int) -> Bool {
    guard let fd = loopbackSocket(boundTo: port) else { return false }
    close(fd)
    return true
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

/// A port on 127.0.0.1 that nothing listens on now (a connection to it is refused), from 40000–60000.
public func unusedLoopbackPort() throws -> Int {
    for _ in 0..<200 {
        let port = Int.random(in: 40_000...60_000)
        if loopbackPortIsFree(port) { return port }
    }
    throw PortError(description: "no free loopback port in 40000–60000 after 200 tries")
}
