import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A `redis-server` process of the test's own, on a free loopback port.
public final class RedisServerProcess: @unchecked Sendable {
    // @unchecked: `process` is only replaced by start/stop, which the owning test calls sequentially.
    public let port: Int
    public let extraArguments: [String]
    private var process: Process?

    /// Certificate, key and CA files: serve TLS only, on ``port``.
    public let tls: (certificate: String, key: String, ca: String)?

    public init(extraArguments: [String] = [], tls: (certificate: String, key: String, ca: String)? = nil) throws {
        self.port = try Self.freePort()
        self.extraArguments = extraArguments
        self.tls = tls
        try self.start()
    }

    public var url: String { "redis://127.0.0.1:\(self.port)/0" }

    public var pid: Int32? { self.process?.processIdentifier }

    public func start() throws {
        // `init` starts it: a second start would fail to bind the port and leave the first one running, unstopped.
        if let running = self.process, running.isRunning {
            throw ServerError(message: "redis-server on port \(self.port) is running already (init starts it)")
        }
        guard let executable = Self.redisServerPath else {
            throw ServerError(message: "redis-server is not on PATH (scripts/bootstrap installs the package redis-server)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = [
            "--port", String(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--loglevel", "warning", "--enable-debug-command", "local",
        ] + self.extraArguments
        if let tls = self.tls {
            process.arguments! += [
                "--port", "0", "--tls-port", String(self.port), "--tls-cert-file", tls.certificate,
                "--tls-key-file", tls.key, "--tls-ca-cert-file", tls.ca, "--tls-auth-clients", "no",
            ]
        }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        guard self.waitUntilReady() else {
            self.stop()
            throw ServerError(message: "redis-server on port \(self.port) did not become ready")
        }
    }

    /// Stops the server and waits for it to exit.
    ///
    /// SIGKILL, because a child spawned from the test runner inherits a signal
    /// mask that blocks SIGTERM; without persistence a kill is also the
    /// harshest restart for the client under test.
    public func stop() {
        guard let process = self.process else { return }
        self.process = nil
        process.killIfRunning()
    }

    public func restart() throws {
        self.stop()
        try self.start()
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    public func pause() {
        if let pid = self.pid { kill(pid, SIGSTOP) }
    }

    /// SIGCONT after ``pause()``.
    public func resume() {
        if let pid = self.pid { kill(pid, SIGCONT) }
    }

    deinit {
        self.stop()
    }

    private func waitUntilReady() -> Bool {
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            if let process = self.process, !process.isRunning { return false }
            if self.tls != nil ? Self.accepts(port: self.port) : Self.ping(port: self.port, acceptAuthError: !self.extraArguments.isEmpty) {
                return true
            }
            usleep(20_000)
        }
        return false
    }

    /// One `PING` over a blocking socket (test helper only, not the client under test).
    public static func ping(port: Int, acceptAuthError: Bool = false) -> Bool {
        guard let fd = connectToLoopback(port: port) else { return false }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let ping = Array("PING\r\n".utf8)
        guard write(fd, ping, ping.count) == ping.count else { return false }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return false }
        let reply = String(decoding: buffer[0..<count], as: UTF8.self)
        return reply.hasPrefix("+PONG") || (acceptAuthError && reply.hasPrefix("-NOAUTH"))
    }

    /// Whether a TCP connection to the port succeeds.
    public static func accepts(port: Int) -> Bool {
        guard let fd = connectToLoopback(port: port) else { return false }
        close(fd)
        return true
    }

    /// Makes a CA and a server certificate for localhost/127.0.0.1 with `openssl`; `nil` if it is missing.
    public static func makeTestCertificates() -> (certificate: String, key: String, ca: String)? {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl") else { return nil }
        let directory = Scratch.directory("redis-tls")
        let script = """
            set -e
            mkdir -p '\(directory)' && cd '\(directory)'
            openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=kisgw-test-ca
            openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext.cnf
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return nil }
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return (directory + "/server.crt", directory + "/server.key", directory + "/ca.crt")
    }

    public static func freePort() throws -> Int {
        guard let fd = loopbackSocket(boundTo: 0) else { throw ServerError(message: "bind() to a free port failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw ServerError(message: "getsockname() failed") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// `redis-server` on PATH, else in the usual folders; nil when there is none.
    public static let redisServerPath: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let directories = path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"]
        return directories.map { $0 + "/redis-server" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    public struct ServerError: Error, CustomStringConvertible {
        public var message: String
        public var description: String { self.message }
    }
}
