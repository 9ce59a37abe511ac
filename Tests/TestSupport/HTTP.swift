public import AsyncHTTPClient
public import Foundation
public import NIOCore
public import NIOHTTP1

/// An HTTP answer as the tests read it: status, headers in order, body.
public struct HTTPResult: Sendable {
    public let status: Int
    public let headers: [(String, String)]
    public let body: Data

    public init(status: Int, headers: [(String, String)], body: Data) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The first value of a header, by case-insensitive name.
    public func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    /// Every value of a header, by case-insensitive name.
    public func headers(_ name: String) -> [String] { headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1) }
    public var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:] }
    public var text: String { String(decoding: body, as: UTF8.self) }
    /// The `code` of a problem+json body.
    public var code: String? { json["code"] as? String }
    public func decode<T: Decodable>(_ type: T.Type) throws -> T { try JSONDecoder().decode(T.self, from: body) }
}

/// One request over a real socket with AsyncHTTPClient.
public func http(_ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], body: String? = nil,
                 timeout: TimeAmount = .seconds(30), client: HTTPClient = .shared) async throws -> HTTPResult {
    var request = HTTPClientRequest(url: url)
    request.method = method
    for (n, v) in headers { request.headers.add(name: n, value: v) }
    if let body { request.body = .bytes(ByteBuffer(string: body)) }
    let response = try await client.execute(request, timeout: timeout)
    let bytes = try await response.body.collect(upTo: 16 << 20)
    return HTTPResult(status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) },
                      body: Data(bytes.readableBytesView))
}
