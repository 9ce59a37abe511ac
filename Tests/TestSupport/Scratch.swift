import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Test files (configuration files, keys, SQLite databases, certificates) live in one folder per test process,
/// removed when the process exits, so that test runs do not leave folders behind in the temporary directory.
public enum Scratch {
    /// `$TMPDIR/kisgw-tests-PID-RANDOM`, created on first use; its removal is registered with `atexit`.
    public static let root: String = {
        let path = NSTemporaryDirectory() + "kisgw-tests-\(getpid())-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: Scratch.root) }
        return path
    }()

    /// A new, empty folder inside `root`, its name starting with `prefix`.
    public static func directory(_ prefix: String) -> String {
        let path = root + "/" + prefix + "-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
