import AsyncHTTPClient
import Foundation
import KIS
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
@testable import Simulator
import Testing
import TestSupport

/// A certificate for localhost and 127.0.0.1 and its key, signed by a CA of the test's own (made with `openssl`, in
/// the test process's scratch folder, never committed).
private func testCertificates() throws -> (certificate: String, key: String, ca: String, caKey: String) {
    let pem = try #require(RedisServerProcess.makeTestCertificates(), "openssl could not make a test certificate")
    // makeTestCertificates writes the CA's key next to its certificate.
    return (pem.certificate, pem.key, pem.ca, URL(fileURLWithPath: pem.ca).deletingLastPathComponent().path + "/ca.key")
}

/// One request with `client`, read as the other tests read answers.
private func call(
    _ client: HTTPClient, _ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], body: String? = nil
) async throws -> HTTPResult {
    var request = HTTPClientRequest(url: url)
    request.method = method
    for (n, v) in headers { request.headers.add(name: n, value: v) }
    if let body {
        request.headers.add(name: "content-type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: body))
    }
    let response = try await client.execute(request, timeout: .seconds(10))
    let bytes = try await response.body.collect(upTo: 1 << 20)
    return HTTPResult(status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) },
                      body: Data(bytes.readableBytesView))
}

/// An HTTPS client that trusts `ca` only (hostname checked: the certificate names 127.0.0.1).
private func withTrustingClient<T: Sendable>(ca: String, _ body: (HTTPClient) async throws -> T) async throws -> T {
    var tls = TLSConfiguration.makeClientConfiguration()
    tls.trustRoots = .file(ca)
    let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
    do {
        let result = try await body(client)
        try await client.shutdown()
        return result
    } catch {
        try? await client.shutdown()
        throw error
    }
}

/// A token and a domestic chart over `base`, as a KIS client does them.
private func tokenAndChart(_ client: HTTPClient, base: String) async throws -> (token: HTTPResult, chart: HTTPResult) {
    let token = try await call(client, .POST, base + KISPath.tokenP,
                               body: #"{"grant_type":"client_credentials","appkey":"PStls","appsecret":"secret"}"#)
    let accessToken = token.json["access_token"] as? String ?? ""
    let q = "FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=005930&FID_INPUT_DATE_1=20250102&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=0"
    let chart = try await call(
        client, .GET, base + KISPath.domesticDailyChart + "?" + q,
        headers: SimClient.kisHeaders(token: accessToken, appKey: "PStls", appSecret: "secret",
                                      trID: KISTrID.domesticDailyChart))
    return (token, chart)
}

@Suite("Simulator: HTTPS (--tls-cert, --tls-key)")
struct TLSTests {
    @Test("with a certificate and key it serves HTTPS: a client trusting the certificate gets KIS's answers; plain HTTP and a client that does not trust it get none")
    func https() async throws {
        let pem = try testCertificates()
        var logger = Logger(label: "sim-tls")
        logger.logLevel = .critical  // the refused handshakes below are logged by the server
        let config = SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000,
                                            tlsCertificatePath: pem.certificate, tlsKeyPath: pem.key)
        try await withApp({ onPort in try await buildSimulator(config, logger: logger) { onPort($0) } }) { port in
            try await withTrustingClient(ca: pem.ca) { client in
                let (token, chart) = try await tokenAndChart(client, base: "https://127.0.0.1:\(port)")
                #expect(token.status == 200, "\(token.text)")
                #expect(chart.status == 200, "\(chart.text)")
                #expect(chart.json["rt_cd"] as? String == "0")
                #expect(chart.headers.contains { $0.0 == "tr_id" && $0.1 == KISTrID.domesticDailyChart })
                let stats = try await call(client, .GET, "https://127.0.0.1:\(port)/__sim/stats")
                #expect((stats.json["calls"] as? [String: Int])?["domestic_daily"] == 1)
            }
            // Plain HTTP to the HTTPS port: the server wants a TLS handshake, and the connection ends without an answer.
            await #expect(throws: (any Error).self) {
                _ = try await http(.GET, "http://127.0.0.1:\(port)/__sim/stats", timeout: .seconds(5))
            }
            // A client with the system's trust roots refuses the test CA's certificate: this is TLS with that
            // certificate. (AsyncHTTPClient tries a failed handshake again until the deadline, hence a short one.)
            await #expect(throws: (any Error).self) {
                _ = try await http(.GET, "https://127.0.0.1:\(port)/__sim/stats", timeout: .seconds(1))
            }
        }
    }

    @Test("a certificate or key that cannot be read is refused before the server starts, naming its option and file")
    func badFiles() throws {
        let pem = try testCertificates()
        let missing = Scratch.directory("sim-tls") + "/missing.pem"
        let notPEM = Scratch.directory("sim-tls") + "/not.pem"
        try Data("not a certificate\n".utf8).write(to: URL(fileURLWithPath: notPEM))
        let cases: [(cert: String, key: String, option: String, file: String)] = [
            (missing, pem.key, "--tls-cert", missing),
            (notPEM, pem.key, "--tls-cert", notPEM),
            (pem.key, pem.key, "--tls-cert", pem.key),  // a key where the certificate belongs
            (pem.certificate, missing, "--tls-key", missing),
            (pem.certificate, notPEM, "--tls-key", notPEM),
            (pem.certificate, pem.certificate, "--tls-key", pem.certificate),
        ]
        for c in cases {
            let config = SimulatorConfiguration(port: 0, tlsCertificatePath: c.cert, tlsKeyPath: c.key)
            #expect {
                try config.validate()
            } throws: { error in
                let text = "\(error)"
                let other = c.option == "--tls-cert" ? "--tls-key" : "--tls-cert"
                return text.contains(c.option) && text.contains(c.file) && !text.contains(other)
            }
        }
        // A key that is not the certificate's (the CA's key with the server's certificate): both named.
        #expect {
            try SimulatorConfiguration(port: 0, tlsCertificatePath: pem.certificate, tlsKeyPath: pem.caKey).validate()
        } throws: { error in
            "\(error)".contains("--tls-key \(pem.caKey) is not the private key of --tls-cert \(pem.certificate)")
        }
        #expect(throws: Never.self) {
            try SimulatorConfiguration(port: 0, tlsCertificatePath: pem.certificate, tlsKeyPath: pem.key).validate()
        }
    }
}

/// `kisgw sim` as a process: what its options make of it, seen from outside.
@Suite("Simulator: the kisgw sim command", .serialized)
struct SimCommandTests {
    /// A running `kisgw sim` and its first line of output.
    struct Running {
        let process: Process
        let banner: String
        let stderr: Pipe

        /// The port in the banner ("… listening on http://127.0.0.1:PORT (…)").
        var port: Int? {
            guard let range = banner.range(of: "127.0.0.1:") else { return nil }
            return Int(banner[range.upperBound...].prefix { $0.isNumber })
        }

        /// SIGTERM, then its exit status (the simulator stops gracefully on it).
        func stop() async throws -> Int32 {
            kill(process.processIdentifier, SIGTERM)
            let process = UncheckedProcess(process: process)
            return try await onThread {
                process.process.waitUntilExit()
                return process.process.terminationStatus
            }
        }
    }

    /// `Process` crosses to the thread that waits for it; nothing else touches it meanwhile.
    struct UncheckedProcess: @unchecked Sendable { let process: Process }

    /// Starts `kisgw sim --port 0 ARGUMENTS` and waits for its banner (killed if it has none within 60 s).
    static func start(_ arguments: [String]) async throws -> Running {
        let binary = try #require(kisgwBinary(), "the kisgw executable (build it, or set KISGW_TEST_BINARY)")
        let process = kisgwProcess(binary, "sim")
        process.arguments = ["sim", "--host", "127.0.0.1", "--port", "0", "--log-level", "error"] + arguments
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        let pid = process.processIdentifier
        let watchdog = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + 60, execute: watchdog)
        let handle = stdout.fileHandleForReading
        let banner = try await onThread {
            var bytes = Data()
            while !bytes.contains(UInt8(ascii: "\n")) {
                let chunk = handle.availableData
                if chunk.isEmpty { break }  // the process ended
                bytes.append(chunk)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        watchdog.cancel()
        return Running(process: process, banner: banner, stderr: stderr)
    }

    /// Runs `kisgw sim ARGUMENTS`, which should stop at once: its exit status and standard error.
    static func runToExit(_ arguments: [String]) async throws -> (status: Int32, stderr: String) {
        let binary = try #require(kisgwBinary(), "the kisgw executable (build it, or set KISGW_TEST_BINARY)")
        let process = kisgwProcess(binary, "sim")
        process.arguments = ["sim", "--host", "127.0.0.1", "--port", "0"] + arguments
        let running = UncheckedProcess(process: process)
        let text = try await onThread { try running.process.runToExit() }
        return (process.terminationStatus, text)
    }

    @Test("--tls-cert and --tls-key: the banner says https, KIS's answers come over TLS, SIGTERM exits 0")
    func serveHTTPS() async throws {
        let pem = try testCertificates()
        let sim = try await Self.start(["--tls-cert", pem.certificate, "--tls-key", pem.key])
        let port = try #require(sim.port, "banner: \(sim.banner)")
        #expect(sim.banner.contains("https://127.0.0.1:\(port)"), "\(sim.banner)")
        do {
            try await withTrustingClient(ca: pem.ca) { client in
                let (token, chart) = try await tokenAndChart(client, base: "https://127.0.0.1:\(port)")
                #expect(token.status == 200, "\(token.text)")
                #expect(chart.status == 200 && chart.json["rt_cd"] as? String == "0", "\(chart.text)")
            }
            await #expect(throws: (any Error).self) {
                _ = try await http(.GET, "http://127.0.0.1:\(port)/__sim/stats", timeout: .seconds(5))
            }
        } catch {
            _ = try await sim.stop()
            throw error
        }
        #expect(try await sim.stop() == 0)
    }

    @Test("a missing or unreadable --tls-cert or --tls-key: one error naming the option and the file, a non-zero exit, nothing served",
          arguments: ["cert-missing", "key-missing", "cert-not-pem", "key-not-pem", "cert-only"])
    func badTLSFiles(problem: String) async throws {
        let pem = try testCertificates()
        let missing = Scratch.directory("sim-tls") + "/missing.pem"
        let notPEM = Scratch.directory("sim-tls") + "/not.pem"
        try Data("not a certificate\n".utf8).write(to: URL(fileURLWithPath: notPEM))
        let (arguments, option, file): ([String], String, String?) = switch problem {
        case "cert-missing": (["--tls-cert", missing, "--tls-key", pem.key], "--tls-cert", missing)
        case "key-missing": (["--tls-cert", pem.certificate, "--tls-key", missing], "--tls-key", missing)
        case "cert-not-pem": (["--tls-cert", notPEM, "--tls-key", pem.key], "--tls-cert", notPEM)
        case "key-not-pem": (["--tls-cert", pem.certificate, "--tls-key", notPEM], "--tls-key", notPEM)
        default: (["--tls-cert", pem.certificate], "--tls-key", nil)
        }
        let (status, stderr) = try await Self.runToExit(arguments)
        #expect(status != 0, "\(stderr)")
        #expect(stderr.contains(option), "\(stderr)")
        if let file {
            // The file's own option only, so that the user knows which of the two to fix.
            #expect(stderr.contains(file), "\(stderr)")
            #expect(!stderr.contains(option == "--tls-cert" ? "--tls-key" : "--tls-cert"), "\(stderr)")
        }
        #expect(!stderr.contains("listening"))
    }

    /// The banner states the rate the limiter applies (`effectiveRatePerSecond`): 18/s live and 1/s sandbox when
    /// `--rate-per-s` is not given (kis-api.md §7), the option's value when it is.
    @Test("the rate by --environment when --rate-per-s is not given (live 18/s, sandbox 1/s), else --rate-per-s", arguments: [
        (["--environment", "live"], "(live, 18 calls/s per app key)", 18),
        (["--environment", "sandbox"], "(sandbox, 1 call/s per app key)", 1),
        ([], "(sandbox, 1 call/s per app key)", 1),
        (["--environment", "live", "--rate-per-s", "5"], "(live, 5 calls/s per app key)", 5),
        (["--environment", "sandbox", "--rate-per-s", "30"], "(sandbox, 30 calls/s per app key)", 30),
    ])
    func rateBanner(arguments: [String], expected: String, limit: Int) async throws {
        let sim = try await Self.start(arguments)
        #expect(sim.banner.contains(expected), "\(sim.banner)")
        do {
            // And the process's limiter applies it: of a burst of limit + 5 calls at once, the first `limit` pass
            // and, when the burst took under 0.9 s, no more.
            let client = SimClient(base: "http://127.0.0.1:\(try #require(sim.port, "\(sim.banner)"))")
            let token = try await client.accessToken()
            // Again, in a fresh window, when the machine stalled and the burst took longer.
            let checked = try await untilTimely { attempt in
                if attempt > 1 { try await Task.sleep(for: .milliseconds(1100)) }
                let started = ContinuousClock.now
                let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                    for _ in 0..<(limit + 5) {
                        group.addTask { try await client.domestic(token: token, from: "20250102", to: "20250103").status }
                    }
                    return try await group.reduce(into: [Int]()) { $0.append($1) }
                }
                let elapsed = ContinuousClock.now - started
                let passed = statuses.filter { $0 == 200 }.count
                #expect(passed >= limit, "\(statuses) in \(elapsed)")
                #expect(statuses.filter { $0 == 500 }.count == limit + 5 - passed)
                guard elapsed < .milliseconds(900) else { return false }
                #expect(passed == limit, "\(statuses) in \(elapsed)")
                return true
            }
            #expect(checked, "no burst took under 0.9 s")
        } catch {
            _ = try await sim.stop()
            throw error
        }
        #expect(try await sim.stop() == 0)
    }
}
