public import Foundation

/// The kisgw executable built next to the tests (or KISGW_TEST_BINARY).
public func kisgwBinary() -> String? {
    if let p = ProcessInfo.processInfo.environment["KISGW_TEST_BINARY"], FileManager.default.isExecutableFile(atPath: p) {
        return p
    }
    var dir = Bundle.main.bundleURL
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("kisgw").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return nil
}

/// `kisgw <command>` ready to run: none of this process's KISGW_ variables, in a directory without a gateway.toml.
public func kisgwProcess(_ binary: String, _ command: String) -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = [command]
    process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("KISGW_") }
    process.currentDirectoryURL = FileManager.default.temporaryDirectory  // no ./gateway.toml is read
    return process
}
