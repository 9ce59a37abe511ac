public import Foundation

/// An RFC 9457 problem, as every kisgw error is answered (`application/problem+json`).
///
/// The code set is the one of the gateway and broker specs; messages never carry a token, key, secret or
/// account number.
public struct Problem: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public let status: Int
        public let title: String
        private init(_ raw: String, _ status: Int, _ title: String) {
            self.rawValue = raw
            self.status = status
            self.title = title
        }
        public static let invalidParameter = Code("invalid_parameter", 400, "Invalid parameter")
        public static let rangeTooLarge = Code("range_too_large", 400, "Date range too large")
        public static let authRequired = Code("auth_required", 401, "Authentication required")
        public static let jwtInvalid = Code("jwt_invalid", 401, "Invalid JWT")
        public static let jwtExpired = Code("jwt_expired", 401, "JWT expired")
        public static let kisTokenInvalid = Code("kis_token_invalid", 401, "KIS token invalid")
        public static let kisTokenExpired = Code("kis_token_expired", 401, "KIS token expired")
        public static let notFound = Code("not_found", 404, "Not found")
        public static let methodNotAllowed = Code("method_not_allowed", 405, "Method not allowed")
        public static let rateLimited = Code("rate_limited", 429, "Rate limited")
        public static let upstreamError = Code("upstream_error", 502, "KIS error")
        public static let storeUnavailable = Code("store_unavailable", 503, "Store unavailable")
        public static let upstreamTimeout = Code("upstream_timeout", 504, "KIS timeout")
        // Broker codes.
        public static let kisCredentialsRejected = Code("kis_credentials_rejected", 400, "KIS credentials rejected")
        public static let kisRateLimited = Code("kis_rate_limited", 429, "KIS token issuance rate limited")
        public static let accountNotFound = Code("account_not_found", 404, "Account not found")
        public static let payloadTooLarge = Code("payload_too_large", 413, "Payload too large")
        public static let internalError = Code("internal_error", 500, "Internal error")
        public var description: String { rawValue }
    }

    public var code: Code
    public var detail: String
    /// Seconds, for 429 and 503 answers.
    public var retryAfter: Int?
    /// KIS's own code and message, when KIS gave them.
    public var kisMsgCode: String?
    public var kisMessage: String?
    /// `Allow` for 405.
    public var allow: String?

    public init(_ code: Code, _ detail: String, retryAfter: Int? = nil, kisMsgCode: String? = nil,
                kisMessage: String? = nil, allow: String? = nil) {
        self.code = code
        self.detail = detail
        self.retryAfter = retryAfter
        self.kisMsgCode = kisMsgCode
        self.kisMessage = kisMessage
        self.allow = allow
    }

    public var status: Int { code.status }
    public var description: String { "\(code.rawValue): \(detail)" }

    /// The JSON body.
    public func body() -> Data {
        var object: [String: Any] = [
            "type": "https://kisgw.dev/problems/\(code.rawValue)", "title": code.title, "status": code.status,
            "code": code.rawValue, "detail": detail,
        ]
        if let kisMsgCode { object["kis_msg_cd"] = kisMsgCode }
        if let kisMessage { object["kis_msg1"] = kisMessage }
        if let retryAfter { object["retry_after"] = retryAfter }
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data()
    }

    /// `WWW-Authenticate` for 401 answers.
    public var wwwAuthenticate: String? {
        guard code.status == 401 else { return nil }
        return code == .authRequired ? "Bearer" : "Bearer error=\"invalid_token\""
    }
}

extension Problem {
    /// `wait` rounded up to whole seconds, at least 1: a `Retry-After`.
    public static func retryAfterSeconds(_ wait: Duration) -> Int {
        let (seconds, attoseconds) = wait.components
        return max(1, Int(seconds) + (attoseconds > 0 ? 1 : 0))
    }
}
