import ArgumentParser
import Broker
import Foundation
import NIOCore

/// A role that cannot start — its address taken, not one of this machine's, or its database file unusable — says so
/// in one line naming what it tried (`kisgw: …`, exit 1), instead of the error's internal description (`bind(descriptor:
/// ptr:bytes:): Address already in use) (errno: 98)`, `Error Domain=NSCocoaErrorDomain Code=4 …`).
enum StartupFailure {
    /// Runs `body`; a failure it recognises is written to standard error and becomes exit status 1.
    /// - Parameter listening: what the role listens on, as the message should name it (`[server] 127.0.0.1:8000`).
    static func reported<T>(listening: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            guard let message = message(for: error, listening: listening) else { throw error }
            FileHandle.standardError.write(Data("kisgw: \(message)\n".utf8))
            throw ExitCode.failure
        }
    }

    static func message(for error: any Error, listening: String) -> String? {
        switch error {
        // Only a failure to bind is "cannot listen": the same error type reports other socket failures later on.
        case let e as IOError where "\(e)".hasPrefix("bind("):
            let why = switch e.errnoCode {
            case EADDRINUSE: "the address is in use (another process listens there)"
            case EADDRNOTAVAIL: "no interface of this machine has that address"
            case EACCES: "permission denied (a port below 1024 needs privileges)"
            default: String(cString: strerror(e.errnoCode))
            }
            return "cannot listen on \(listening): \(why)"
        case is SocketAddressError:
            return "cannot listen on \(listening): the host is not an address or a name this machine can resolve"
        case let e as SQLiteOpenError:
            return e.description
        case let e as RepositoryError:
            return "[broker] database: " + e.message
        default:
            return nil
        }
    }
}
