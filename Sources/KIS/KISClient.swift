import AsyncHTTPClient
public import Foundation
public import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// The credentials a quotation call is made with: the app key pair and the access token it issued.
public struct KISCredentials: Sendable, Hashable {
    public var appKey: String
    public var appSecret: String
    public var accessToken: String
    public init(appKey: String, appSecret: String, accessToken: String) {
        self.appKey = appKey
        self.appSecret = appSecret
        self.accessToken = accessToken
    }
}

/// A failed KIS call, classified by KIS's own code (`msg_cd` / `error_code`) whatever the HTTP status.
/// Never carries a token, key or secret.
public struct KISClientError: Error, CustomStringConvertible, Sendable {
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Base: String { case tokenExpired, tokenInvalid, rateLimited, credentialsRejected,
            issuanceTooFrequent, transient, upstream, unreadable, timeout, transport }
        fileprivate let base: Base
        /// `EGW00123`: the access token expired.
        public static let tokenExpired = Kind(base: .tokenExpired)
        /// `EGW00121`/`EGW00122`: unknown, revoked or missing token.
        public static let tokenInvalid = Kind(base: .tokenInvalid)
        /// `EGW00201`/`EGW00215`: too many calls per second.
        public static let rateLimited = Kind(base: .rateLimited)
        /// `EGW00102`–`EGW00105`: KIS refused the app key or secret.
        public static let credentialsRejected = Kind(base: .credentialsRejected)
        /// `EGW00133`: a token was issued less than a minute ago.
        public static let issuanceTooFrequent = Kind(base: .issuanceTooFrequent)
        /// `EGW00001`/`EGW00002`: a transient KIS error ("일시적 오류", "서버 에러"): worth another try.
        public static let transient = Kind(base: .transient)
        /// Any other KIS error (see `msgCode`, `message`).
        public static let upstream = Kind(base: .upstream)
        /// A body that is not the JSON KIS sends.
        public static let unreadable = Kind(base: .unreadable)
        /// No answer within the deadline.
        public static let timeout = Kind(base: .timeout)
        /// The connection failed.
        public static let transport = Kind(base: .transport)
        public var description: String { base.rawValue }

        /// The `outcome` label of a failed call in the call metrics: `timeout`, `transport`, `unreadable`, or
        /// `kis_error` for an answer of KIS's (whose `msg_cd` goes beside it).
        public var outcome: String {
            switch base {
            case .timeout: "timeout"
            case .transport: "transport"
            case .unreadable: "unreadable"
            default: "kis_error"
            }
        }
    }

    public let kind: Kind
    /// KIS's `msg_cd` or `error_code`, when it gave one.
    public let msgCode: String?
    /// KIS's `msg1` or `error_description`, trimmed; or what went wrong, when KIS gave no answer to read.
    public let message: String?
    public let httpStatus: Int?

    /// KIS's own message: ``message`` when KIS gave a code with it, nil when the message is kisgw's.
    public var kisMessage: String? { msgCode == nil ? nil : message }

    public init(kind: Kind, msgCode: String? = nil, message: String? = nil, httpStatus: Int? = nil) {
        self.kind = kind
        self.msgCode = msgCode
        self.message = message
        self.httpStatus = httpStatus
    }

    public var description: String {
        var s = "KIS \(kind)"
        if let msgCode { s += " \(msgCode)" }
        if let message { s += ": \(message)" }
        if let httpStatus { s += " (HTTP \(httpStatus))" }
        return s
    }

    /// Classifies a KIS code as KISClient keeps it (``KISClient/kisError(code:message:status:)`` drops the whitespace
    /// KIS may put around it).
    public static func kind(forCode code: String) -> Kind {
        switch code {
        case "EGW00123": .tokenExpired
        case "EGW00121", "EGW00122": .tokenInvalid
        case "EGW00201", "EGW00215": .rateLimited
        // The app key or secret is bad or missing, the app is not entitled to the API (EGW00206), or a paper-trading
        // app key called the live domain (EGW02004): each concerns one app key, not the request.
        case "EGW00102", "EGW00103", "EGW00104", "EGW00105", "EGW00206", "EGW02004": .credentialsRejected
        case "EGW00133": .issuanceTooFrequent
        case "EGW00001", "EGW00002": .transient
        default: .upstream
        }
    }
}

/// A token as KIS issued it, with its expiry taken from KIS's answer (never guessed).
public struct KISIssuedToken: Sendable, Equatable {
    public var accessToken: String
    public var expiresAt: Date
    public var expiresIn: Int
    /// When KIS issued it, by KIS's clock, as far as its answer tells: `access_token_token_expired` less
    /// `expires_in`, when the answer gives both. Within its reuse window KIS answers with the token it issued before
    /// (kis-api.md §2.1): if `expires_in` then counts the seconds left, this is the time of the answer; if it still
    /// says the full life (`kisgw sim --reused-expires-in full`), it is the first issuance. nil when the answer gives
    /// only one of the two.
    public var issuedAt: Date?
}

/// A REST client for the KIS endpoints kisgw uses, on AsyncHTTPClient (`KISHTTPClients`: keep-alive pools, a call
/// made on one of the servers' event loops goes over a connection of that loop; TLS for real KIS).
///
/// Each method makes exactly one HTTP call; paging and rate limiting are the caller's (see `DailyChartPager`).
public struct KISClient: Sendable {
    public let baseURL: String
    public let http: KISHTTPClients
    public let timeout: Duration
    public let logger: Logger
    /// The logger AsyncHTTPClient gets: `logger` when it logs at debug or trace (AsyncHTTPClient logs nothing
    /// above debug), else one that drops everything — AsyncHTTPClient attaches each request's id and details to its
    /// logger's metadata, work for nothing (7 % of a miss's CPU between its Redis reply and its KIS request) when no
    /// line is ever written.
    let httpLogger: Logger

    /// What every call names its client as: `kisgw/<version>`. KIS's own samples send a `User-Agent` too
    /// (kis-api.md §2.1), and KIS can then tell kisgw's calls from others of the same app key.
    public static let userAgent = "kisgw/" + KisgwVersion.current

    public init(baseURL: String, http: KISHTTPClients = .shared, timeout: Duration = .seconds(5), logger: Logger) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.http = http
        self.timeout = timeout
        self.logger = logger
        self.httpLogger = logger.logLevel <= .debug ? logger : Logger(label: logger.label, factory: { _ in SwiftLogNoOpLogHandler() })
    }

    // MARK: tokens

    /// `POST /oauth2/tokenP`.
    public func issueToken(appKey: String, appSecret: String) async throws -> KISIssuedToken {
        let body = try Self.tokenEndpointBody(KISTokenRequest(appkey: appKey, appsecret: appSecret))
        let (status, data, _) = try await send(.POST, KISPath.tokenP, headers: [], body: body)
        if status == 200, let t = try? JSONDecoder().decode(TokenAnswer.self, from: data), t.hasAccessToken {
            // KIS issued something: that issuance counts against its 1-per-minute limit whatever else the answer
            // holds, so only a token that is no token is refused.
            guard let token = t.access_token, Self.isTokenText(token) else {
                throw KISClientError(kind: .unreadable, message: "KIS answered tokenP with an access_token that is not a token",
                                     httpStatus: status)
            }
            // Expiry: KST wall clock as KIS wrote it; `expires_in` when that is missing or unreadable.
            let now = Date()
            let stated = t.access_token_token_expired.flatMap(KST.parse)
            guard let expiry = stated ?? t.expires_in.map({ now.addingTimeInterval(TimeInterval($0)) }) else {
                throw KISClientError(kind: .unreadable, message: "KIS issued a token without a readable expiry",
                                     httpStatus: status)
            }
            let issuedAt = stated.flatMap { at in t.expires_in.map { at.addingTimeInterval(-TimeInterval($0)) } }
            return KISIssuedToken(accessToken: token, expiresAt: expiry,
                                  expiresIn: t.expires_in ?? Int(expiry.timeIntervalSince(now)), issuedAt: issuedAt)
        }
        let error = Self.classify(status: status, data: data)
        if status == 200 && error.kind == .unreadable {
            throw KISClientError(kind: .unreadable, message: "KIS answered tokenP with no access_token", httpStatus: status)
        }
        throw error
    }

    /// `tokenP`'s answer as read: the token, and its expiry in either of the two forms KIS gives (kis-api.md §2.1).
    /// Each field is read on its own, so that one KIS writes in another type than its spec's does not throw the token
    /// away: `expires_in` is a number there, and a string of digits (`"86400"`) is read as that number; any other
    /// value of it, or of the expiry text, counts as missing.
    private struct TokenAnswer: Decodable {
        /// Whether the answer has an `access_token` field at all, whatever its value.
        var hasAccessToken: Bool
        /// nil when it is not a string.
        var access_token: String?
        var access_token_token_expired: String?
        var expires_in: Int?

        private enum CodingKeys: String, CodingKey { case access_token, access_token_token_expired, expires_in }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            hasAccessToken = c.contains(.access_token)
            access_token = try? c.decode(String.self, forKey: .access_token)
            access_token_token_expired = try? c.decode(String.self, forKey: .access_token_token_expired)
            if let seconds = try? c.decode(Int.self, forKey: .expires_in) {
                expires_in = seconds
            } else if let text = (try? c.decode(String.self, forKey: .expires_in))?.trimmingSpaces(), !text.isEmpty,
                      text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) {
                expires_in = Int(text)  // nil past Int.max
            } else {
                expires_in = nil
            }
        }
    }

    /// Whether `token` can be sent back as `authorization: Bearer <token>`: not empty, visible ASCII only (KIS's
    /// tokens are JWTs).
    static func isTokenText(_ token: String) -> Bool {
        !token.isEmpty && token.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }

    /// A `tokenP`/`revokeP` body. `/` is written as itself: app secrets are base64-like and hold `/`, and KIS's own
    /// samples send them so; `JSONEncoder` by default writes `\/`, valid JSON but not what KIS is known to read. Keys
    /// are sorted so that a body is the same bytes on every run (`JSONEncoder`'s order otherwise changes from one
    /// process to the next).
    private static func tokenEndpointBody(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        return try encoder.encode(value)
    }

    /// `POST /oauth2/revokeP`.
    public func revokeToken(appKey: String, appSecret: String, token: String) async throws {
        let body = try Self.tokenEndpointBody(KISRevokeRequest(appkey: appKey, appsecret: appSecret, token: token))
        let (status, data, _) = try await send(.POST, KISPath.revokeP, headers: [], body: body)
        if status == 200, let r = try? JSONDecoder().decode(KISRevokeResponse.self, from: data), r.code == 200 {
            return
        }
        throw Self.classify(status: status, data: data)
    }

    // MARK: quotations

    /// One page of `inquire-daily-itemchartprice` (`FHKST03010100`).
    public func domesticDailyPage(
        _ credentials: KISCredentials, symbol: String, start: CivilDate, end: CivilDate, period: String, adjusted: Bool
    ) async throws -> KISDomesticChartPage {
        let query = [
            ("FID_COND_MRKT_DIV_CODE", "J"), ("FID_INPUT_ISCD", symbol), ("FID_INPUT_DATE_1", start.yyyymmdd),
            ("FID_INPUT_DATE_2", end.yyyymmdd), ("FID_PERIOD_DIV_CODE", period),
            ("FID_ORG_ADJ_PRC", adjusted ? "0" : "1"),  // KIS: 0 = adjusted
        ]
        return try await quotation(
            KISDomesticChartPage.self, KISPath.domesticDailyChart, query: query, trID: KISTrID.domesticDailyChart,
            credentials: credentials)
    }

    /// One page of `dailyprice` (`HHDFS76240000`).
    public func overseasDailyPage(
        _ credentials: KISCredentials, exchange: Exchange, symbol: String, period: String, end: CivilDate?,
        adjusted: Bool
    ) async throws -> KISOverseasChartPage {
        let gubn = period == "W" ? "1" : period == "M" ? "2" : "0"
        let query = [
            ("AUTH", ""), ("EXCD", exchange.rawValue), ("SYMB", symbol), ("GUBN", gubn),
            ("BYMD", end?.yyyymmdd ?? ""), ("MODP", adjusted ? "1" : "0"),  // overseas: 1 = adjusted
        ]
        return try await quotation(
            KISOverseasChartPage.self, KISPath.overseasDailyPrice, query: query, trID: KISTrID.overseasDailyPrice,
            credentials: credentials)
    }

    /// One quotation call, its body read once (simdjson, ``KISAnswerReader``): KIS's envelope fields are part of
    /// every answer type. A body that is not the answer's shape is classified with `JSONDecoder`.
    private func quotation<T: KISTableAnswer>(
        _ type: T.Type, _ path: String, query: [(String, String)], trID: String, credentials: KISCredentials
    ) async throws -> T {
        let headers = [
            ("authorization", "Bearer " + credentials.accessToken), ("appkey", credentials.appKey),
            ("appsecret", credentials.appSecret), ("tr_id", trID), ("tr_cont", ""), ("custtype", "P"),
        ]
        let q = query.map { "\($0.0)=\(Self.percentEncode($0.1))" }.joined(separator: "&")
        let (status, data, _) = try await send(.GET, path + "?" + q, headers: headers, body: nil)
        // KIS answers errors as 200 or 500 alike: the body decides.
        if status == 200 || status == 500 || status == 403,
           let answer = KISAnswerReader.shared.answer(T.self, from: data) {
            if answer.rt_cd == "0" { return answer }
            throw Self.kisError(code: answer.msg_cd, message: answer.msg1, status: status)
        }
        throw Self.classify(status: status, data: data)
    }

    /// KIS's error as it wrote it: its code, whitespace around it dropped, classified; its message trimmed (KIS pads
    /// `msg1` with spaces, kis-api.md §6), nil when there is none.
    static func kisError(code: String, message: String?, status: Int) -> KISClientError {
        let code = code.trimmingCharacters(in: .whitespacesAndNewlines)
        return KISClientError(kind: KISClientError.kind(forCode: code), msgCode: code,
                              message: message?.trimmingCharacters(in: .whitespacesAndNewlines), httpStatus: status)
    }

    /// Classifies an answer that is not the one asked for by its body: the token endpoints' shape (`error_code`),
    /// KIS's envelope with a non-zero `rt_cd` (its `msg_cd` decides; `msg1` may be missing), or neither.
    static func classify(status: Int, data: Data) -> KISClientError {
        if let e = try? JSONDecoder().decode(ErrorBody.self, from: data) {
            if let code = e.error_code { return kisError(code: code, message: e.error_description, status: status) }
            if let result = e.rt_cd?.trimmingCharacters(in: .whitespacesAndNewlines) {
                if result == "0" {
                    return KISClientError(kind: .unreadable, message: "KIS answered rt_cd 0 with a body kisgw cannot read",
                                          httpStatus: status)
                }
                if let code = e.msg_cd { return kisError(code: code, message: e.msg1, status: status) }
                return KISClientError(kind: .unreadable, message: "KIS answered rt_cd \(result) with no msg_cd",
                                      httpStatus: status)
            }
        }
        return KISClientError(kind: .unreadable, message: "KIS answered HTTP \(status) with no KIS error body",
                              httpStatus: status)
    }

    /// The fields of KIS's two error shapes (kis-api.md §6 and §2.1), each read on its own: one missing, or not a
    /// string, leaves the others readable.
    private struct ErrorBody: Decodable {
        var rt_cd, msg_cd, msg1, error_code, error_description: String?

        private enum CodingKeys: String, CodingKey { case rt_cd, msg_cd, msg1, error_code, error_description }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            rt_cd = try? c.decode(String.self, forKey: .rt_cd)
            msg_cd = try? c.decode(String.self, forKey: .msg_cd)
            msg1 = try? c.decode(String.self, forKey: .msg1)
            error_code = try? c.decode(String.self, forKey: .error_code)
            error_description = try? c.decode(String.self, forKey: .error_description)
        }
    }

    private func send(
        _ method: HTTPMethod, _ pathAndQuery: String, headers: [(String, String)], body: Data?
    ) async throws -> (Int, Data, HTTPHeaders) {
        var headerFields = HTTPHeaders()
        headerFields.reserveCapacity(headers.count + 3)
        headerFields.add(name: "content-type", value: "application/json; charset=utf-8")
        headerFields.add(name: "accept", value: "application/json")
        headerFields.add(name: "user-agent", value: Self.userAgent)
        for (name, value) in headers { headerFields.add(name: name, value: value) }
        let deadline = NIODeadline.now() + TimeAmount(timeout)
        do {
            // The whole answer is gathered on the event loop and handed over once (the streaming API hands every
            // read of the body over to the task, each a thread switch; a page is read whole anyway).
            let request = try HTTPClient.Request(
                url: baseURL + pathAndQuery, method: method, headers: headerFields,
                body: body.map { .byteBuffer(ByteBuffer(data: $0)) })
            let response = try await http.current.execute(
                request: request, delegate: ResponseAccumulator(request: request, maxBodySize: 16 << 20),
                deadline: deadline, logger: httpLogger
            ).get()
            return (Int(response.status.code), response.body.map { Data(buffer: $0) } ?? Data(), response.headers)
        } catch let error as HTTPClientError {
            switch error {
            case .deadlineExceeded, .readTimeout, .connectTimeout, .writeTimeout:
                throw KISClientError(kind: .timeout, message: "KIS did not answer within \(timeout)")
            default:
                throw KISClientError(kind: .transport, message: "cannot reach KIS: \(error)")
            }
        } catch let error as KISClientError {
            throw error
        } catch {
            throw KISClientError(kind: .transport, message: "cannot reach KIS: \(error)")
        }
    }

    private static func percentEncode(_ s: String) -> String {
        // KIS's query values are codes, dates and digits: unreserved characters need no Foundation call.
        if s.utf8.allSatisfy(Self.isUnreserved) { return s }
        return s.addingPercentEncoding(withAllowedCharacters: .urlQueryValueAllowed) ?? s
    }

    /// RFC 3986 unreserved: letters, digits, `-`, `.`, `_`, `~`.
    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            true
        default:
            false
        }
    }
}

extension CharacterSet {
    fileprivate static let urlQueryValueAllowed: CharacterSet = {
        var set = CharacterSet.urlQueryAllowed
        set.remove(charactersIn: "&=+?#")
        return set
    }()
}
