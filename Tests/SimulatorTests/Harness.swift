import AsyncHTTPClient
import Foundation
import NIOHTTP1
import NIOCore
import Hummingbird
import KIS
import Logging
import NIOCore
import NIOFoundationCompat
@testable import Simulator
import TestSupport

/// Runs the simulator on a real loopback port for the duration of `body`.
func withSimulator<T: Sendable>(
    _ configuration: SimulatorConfiguration = SimulatorConfiguration(
        port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000),
    _ body: @Sendable (SimClient) async throws -> T
) async throws -> T {
    var configuration = configuration
    configuration.port = 0
    var logger = Logger(label: "sim-test")
    logger.logLevel = .warning
    return try await withApp({ onPort in try await buildSimulator(configuration, logger: logger) { onPort($0) } }) { port in
        try await body(SimClient(base: "http://127.0.0.1:\(port)"))
    }
}

/// Builds an application with `make` (given the callback its server calls with its port), runs it on a loopback
/// port for the duration of `body`, then stops it.
func withApp<App: ApplicationProtocol, T: Sendable>(
    _ make: (@escaping @Sendable (Int) -> Void) async throws -> App, _ body: @Sendable (Int) async throws -> T
) async throws -> T {
    let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
    let app = try await make { continuation.yield($0) }
    let server = TestServer(app)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await server.run() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw SimulatorError("the server did not start") }
        return try await stopping([server]) { try await body(port) }
    }
}

/// The simulator's answers are read like every other HTTP answer in the tests.
typealias SimResponse = HTTPResult

/// A thin AsyncHTTPClient wrapper speaking to the simulator over a real socket.
struct SimClient: Sendable {
    let base: String

    func request(
        _ method: HTTPMethod, _ path: String, headers: [(String, String)] = [], body: String? = nil,
        timeout: TimeAmount = .seconds(20)
    ) async throws -> SimResponse {
        // A body is KIS-style JSON.
        let h = body == nil ? headers : headers + [("content-type", "application/json")]
        return try await http(method, base + path, headers: h, body: body, timeout: timeout)
    }

    func post(_ path: String, _ json: [String: Any]) async throws -> SimResponse {
        let data = try JSONSerialization.data(withJSONObject: json)
        return try await request(.POST, path, body: String(decoding: data, as: UTF8.self))
    }

    func token(appKey: String = "PSappkey-test-0001", appSecret: String = "secret-0001") async throws -> SimResponse {
        try await post(KISPath.tokenP, ["grant_type": "client_credentials", "appkey": appKey, "appsecret": appSecret])
    }

    /// Obtains a token or fails the test.
    func accessToken(appKey: String = "PSappkey-test-0001", appSecret: String = "secret-0001") async throws -> String {
        let r = try await token(appKey: appKey, appSecret: appSecret)
        guard r.status == 200, let t = r.json["access_token"] as? String else {
            throw SimulatorError("token request failed: \(r.status) \(r.text)")
        }
        return t
    }

    static func kisHeaders(token: String, appKey: String = "PSappkey-test-0001", appSecret: String = "secret-0001",
                           trID: String, custType: String? = "P") -> [(String, String)] {
        var h = [("authorization", "Bearer " + token), ("appkey", appKey), ("appsecret", appSecret), ("tr_id", trID)]
        if let custType { h.append(("custtype", custType)) }
        return h
    }

    func domestic(
        token: String, code: String = "005930", from: String, to: String, period: String = "D", adj: String = "0",
        market: String = "J", appKey: String = "PSappkey-test-0001", appSecret: String = "secret-0001",
        extraHeaders: [(String, String)] = []
    ) async throws -> SimResponse {
        let q = "FID_COND_MRKT_DIV_CODE=\(market)&FID_INPUT_ISCD=\(code)&FID_INPUT_DATE_1=\(from)&FID_INPUT_DATE_2=\(to)&FID_PERIOD_DIV_CODE=\(period)&FID_ORG_ADJ_PRC=\(adj)"
        return try await request(
            .GET, KISPath.domesticDailyChart + "?" + q,
            headers: Self.kisHeaders(token: token, appKey: appKey, appSecret: appSecret, trID: KISTrID.domesticDailyChart)
                + extraHeaders)
    }

    func overseas(
        token: String, excd: String = "NAS", symbol: String = "AAPL", gubn: String = "0", bymd: String = "",
        modp: String = "1", extraHeaders: [(String, String)] = []
    ) async throws -> SimResponse {
        let q = "AUTH=&EXCD=\(excd)&SYMB=\(symbol)&GUBN=\(gubn)&BYMD=\(bymd)&MODP=\(modp)"
        return try await request(
            .GET, KISPath.overseasDailyPrice + "?" + q,
            headers: Self.kisHeaders(token: token, trID: KISTrID.overseasDailyPrice, custType: nil) + extraHeaders)
    }
}

extension SimResponse {
    var rows: [[String: Any]] { json["output2"] as? [[String: Any]] ?? [] }
    var output1: [String: Any] { json["output1"] as? [String: Any] ?? [:] }
}
