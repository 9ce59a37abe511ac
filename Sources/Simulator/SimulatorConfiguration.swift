public import Foundation
public import KIS
import NIOCore
import NIOSSL

/// How `kisgw sim` behaves (../shared/spec/sim.md).
public struct SimulatorConfiguration: Sendable {
    public var host: String
    public var port: Int
    public var environment: KISEnvironment
    /// Life of a new token (KIS: 24 h).
    public var tokenTTL: Int
    /// A token request within this many seconds of the last issuance returns the same token (KIS: 6 h).
    public var reuseWindow: Int
    /// A second token request within this many seconds gets `EGW00133` (KIS: one a minute).
    public var issueInterval: Int
    /// Per-app-key quotation calls per second (sliding one-second window); nil = the environment's default.
    public var ratePerSecond: Int?
    /// Latency added to every quotation call that passes the checks (a refused one — bad headers or token,
    /// `EGW00201` — is answered at once).
    public var latencyMs: Int
    /// Latency added to every `tokenP` and `revokeP` call before it is answered (KIS's token endpoint takes a while:
    /// what a broker refreshing many tokens at once has to live with).
    public var tokenLatencyMs: Int
    /// When set, only these app key → secret pairs get tokens.
    public var credentials: [String: String]?
    /// PEM files for HTTPS.
    public var tlsCertificatePath: String?
    public var tlsKeyPath: String?
    /// On a reused token, `expires_in` counts the seconds left (true) or still says the full life (false).
    public var reuseReportsRemaining: Bool
    /// Where quotation data is dated from; nil = the real clock (the token clock is separate, see `/__sim/clock`).
    public var marketNow: (@Sendable () -> Date)?
    /// Whether a daily chart with more than 100 rows says `tr_cont: M` and continues on `tr_cont: N`. KIS marks both
    /// chart TRs "cannot page with tr_cont" (kis-api.md §5): off, every page says `D` and clients page by date, as
    /// with KIS; on, for clients written to KIS's samples that follow `M`.
    public var trContPaging: Bool
    /// How long a connection may stay with no request part read and nothing in progress, and a request's body
    /// unfinished, before the simulator closes it, as servers do (KIS's idle limit is not documented). Longer than
    /// AsyncHTTPClient's pool keeps an idle connection (60 s), so a client's pool closes first.
    public var idleTimeout: Duration

    public var effectiveRatePerSecond: Int { ratePerSecond ?? environment.defaultRatePerSecond }

    public init(
        host: String = "127.0.0.1", port: Int = 29443, environment: KISEnvironment = .sandbox,
        tokenTTL: Int = 86400, reuseWindow: Int = 21600, issueInterval: Int = 60, ratePerSecond: Int? = nil,
        latencyMs: Int = 0, credentials: [String: String]? = nil, tlsCertificatePath: String? = nil,
        tlsKeyPath: String? = nil, reuseReportsRemaining: Bool = true, marketNow: (@Sendable () -> Date)? = nil,
        trContPaging: Bool = false, tokenLatencyMs: Int = 0, idleTimeout: Duration = .seconds(120)
    ) {
        self.host = host
        self.port = port
        self.environment = environment
        self.tokenTTL = tokenTTL
        self.reuseWindow = reuseWindow
        self.issueInterval = issueInterval
        self.ratePerSecond = ratePerSecond
        self.latencyMs = latencyMs
        self.tokenLatencyMs = tokenLatencyMs
        self.credentials = credentials
        self.tlsCertificatePath = tlsCertificatePath
        self.tlsKeyPath = tlsKeyPath
        self.reuseReportsRemaining = reuseReportsRemaining
        self.marketNow = marketNow
        self.trContPaging = trContPaging
        self.idleTimeout = idleTimeout
    }

    /// Reads a `--credentials` file: `[{"appKey": "…", "appSecret": "…"}, …]`.
    public static func loadCredentials(path: String) throws -> [String: String] {
        struct Pair: Decodable {
            let appKey: String
            let appSecret: String
        }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw SimulatorError("cannot read credentials file \(path): \(error.localizedDescription)")
        }
        let pairs: [Pair]
        do { pairs = try JSONDecoder().decode([Pair].self, from: data) } catch {
            throw SimulatorError(
                "credentials file \(path) is not a JSON array of {\"appKey\", \"appSecret\"} objects")
        }
        var out: [String: String] = [:]
        for (i, p) in pairs.enumerated() {
            guard !p.appKey.isEmpty, !p.appSecret.isEmpty else {
                throw SimulatorError("credentials file \(path): entry \(i) has an empty appKey or appSecret")
            }
            guard out.updateValue(p.appSecret, forKey: p.appKey) == nil else {
                throw SimulatorError("credentials file \(path): entry \(i) repeats an appKey of an entry before it")
            }
        }
        guard !out.isEmpty else {
            throw SimulatorError("credentials file \(path) lists no credentials: every token request would be refused")
        }
        return out
    }

    /// Checks ranges, and that the TLS files read as PEM; the message names the option.
    public func validate() throws {
        guard (0...65535).contains(port) else { throw SimulatorError("--port must be from 0 to 65535, got \(port)") }
        do { _ = try SocketAddress.makeAddressResolvingHost(host, port: port) } catch {
            throw SimulatorError("--host \"\(host)\" is not an address or host name this machine can listen on")
        }
        // Bounded above too: a token life or latency near Int.max overflowed (a crash) when added to a time.
        func within(_ value: Int, _ range: ClosedRange<Int>, _ option: String, _ note: String = "") throws {
            guard range.contains(value) else {
                throw SimulatorError("\(option) must be from \(range.lowerBound) to \(range.upperBound)\(note), got \(value)")
            }
        }
        let years = 10 * 365 * 86400
        try within(tokenTTL, 1...years, "--token-ttl-s", " (ten years)")
        try within(reuseWindow, 0...years, "--reuse-window-s", " (ten years)")
        try within(issueInterval, 0...years, "--issue-interval-s", " (ten years)")
        if let r = ratePerSecond { try within(r, 1...1_000_000, "--rate-per-s") }
        try within(latencyMs, 0...600_000, "--latency-ms")
        try within(tokenLatencyMs, 0...600_000, "--token-latency-ms")
        switch (tlsCertificatePath, tlsKeyPath) {
        case (.some, nil): throw SimulatorError("--tls-cert needs --tls-key, the certificate's private key")
        case (nil, .some): throw SimulatorError("--tls-key needs --tls-cert, the certificate it is the key of")
        default: _ = try loadTLS()
        }
    }

    /// The server's TLS configuration from the certificate chain of `--tls-cert` and the private key of `--tls-key`,
    /// read now; nil for plain HTTP. A file that cannot be read, or does not hold what its option wants in PEM, is
    /// named with that option alone; a key that is not the certificate's, with both.
    func loadTLS() throws -> TLSConfiguration? {
        guard let certificatePath = tlsCertificatePath, let keyPath = tlsKeyPath else { return nil }
        func mustRead(_ path: String, _ option: String) throws {
            guard !FileManager.default.isReadableFile(atPath: path) else { return }
            let why = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "no such file"
            throw SimulatorError("\(option) \(path): \(why)")
        }
        try mustRead(certificatePath, "--tls-cert")
        let chain: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(certificatePath) } catch {
            throw SimulatorError("--tls-cert \(certificatePath): not a PEM certificate chain (\(error))")
        }
        guard !chain.isEmpty else {
            throw SimulatorError("--tls-cert \(certificatePath): not a PEM certificate chain (no certificate in it)")
        }
        try mustRead(keyPath, "--tls-key")
        let key: NIOSSLPrivateKey
        do { key = try NIOSSLPrivateKey(file: keyPath, format: .pem) } catch {
            throw SimulatorError("--tls-key \(keyPath): not a PEM private key (\(error))")
        }
        let configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        // What the server will do with them when it starts: OpenSSL checks the key against the certificate.
        do { _ = try NIOSSLContext(configuration: configuration) } catch {
            throw SimulatorError(
                "--tls-key \(keyPath) is not the private key of --tls-cert \(certificatePath) (\(error))")
        }
        return configuration
    }
}

/// A simulator start-up problem, with a message fit for a terminal.
public struct SimulatorError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
