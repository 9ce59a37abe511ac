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

extension Process {
    /// Starts the process with its standard error written to `file` (created empty first) and its standard output
    /// discarded.
    public func run(stderrTo file: URL) throws {
        _ = FileManager.default.createFile(atPath: file.path, contents: nil)
        let handle = try FileHandle(forWritingTo: file)
        standardError = handle
        standardOutput = FileHandle.nullDevice
        try run()
        try? handle.close()  // the child has its own
    }

    /// Kills the process by its PID if it still runs, and waits (10 s at most) until it has exited: SIGKILL, so that
    /// one that hangs does not outlive its test. Polled: Foundation's `waitUntilExit` can wait forever when called
    /// from a cooperative thread.
    public func killIfRunning() {
        if isRunning { kill(processIdentifier, SIGKILL) }
        for _ in 0..<400 where isRunning { usleep(25_000) }
    }

    /// Which of its outputs ``runToExit(capturing:watchdog:)`` returns; the other is discarded.
    public enum Captured: Sendable { case standardOutput, standardError }

    /// Runs the process to its end and returns what it wrote to `captured`. One still running after `watchdog`
    /// seconds (a command meant to stop at once that starts serving instead, a regression) is killed, so that its
    /// test fails on the exit instead of waiting forever. Blocks its thread: from async code, call it `onThread`.
    public func runToExit(capturing captured: Captured = .standardError, watchdog: TimeInterval = 60) throws -> String {
        let pipe = Pipe()
        switch captured {
        case .standardOutput:
            standardOutput = pipe
            standardError = FileHandle.nullDevice
        case .standardError:
            standardError = pipe
            standardOutput = FileHandle.nullDevice
        }
        try run()
        let pid = processIdentifier
        let dog = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + watchdog, execute: dog)
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        while isRunning { usleep(5_000) }  // polled, as in killIfRunning
        dog.cancel()
        return String(decoding: data, as: UTF8.self)
    }
}
