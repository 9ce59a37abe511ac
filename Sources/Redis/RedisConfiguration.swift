public import NIOSSL

/// How to reach a Redis server and how the client behaves.
///
/// ```swift
/// var configuration = try RedisConfiguration(url: "redis://:secret@127.0.0.1:6379/0")
/// configuration.poolSize = 8
/// configuration.commandTimeout = .milliseconds(250)
/// ```
public struct RedisConfiguration: Sendable {
    /// Host name or IP address.
    public var host: String
    /// TCP port (6379 by default).
    public var port: Int
    /// ACL user name for `AUTH user password` (Redis 6+); `nil` uses `AUTH password`.
    public var username: String?
    /// Password sent with `AUTH` on every new connection.
    public var password: String?
    /// Database index sent with `SELECT` on every new connection (0 by default).
    public var database: Int
    /// TLS settings; `nil` for plain TCP. A `rediss://` URL sets a default client configuration.
    public var tls: TLSConfiguration?
    /// Maximum number of command connections (each connection pipelines many commands).
    public var poolSize: Int
    /// Default time limit for each command, from the call until its reply.
    public var commandTimeout: Duration
    /// Time limit for opening a connection, including TLS, AUTH and SELECT.
    public var connectTimeout: Duration
    /// First delay before reconnecting after a failed attempt; doubled up to ``maximumReconnectDelay``.
    public var initialReconnectDelay: Duration
    /// Upper bound of the reconnect delay.
    public var maximumReconnectDelay: Duration
    /// A connection carrying more than this many timed-out commands whose
    /// replies are still outstanding is closed and replaced.
    public var maximumAbandonedCommands: Int
    /// A command connection whose oldest command is this long past its deadline with no reply is closed and
    /// replaced: its peer is gone without a reset (a failover, a network partition) or stalled.
    public var stallLimit: Duration
    /// How often the pub/sub connection is pinged; one that answered nothing (pong or message) since the last
    /// ping is closed and opened again, its subscriptions renewed.
    public var pubSubPingInterval: Duration
    /// Name sent with `CLIENT SETNAME` (visible in `CLIENT LIST`), or `nil`.
    public var clientName: String?

    /// A configuration for `host:port` with defaults for everything else.
    public init(host: String = "127.0.0.1", port: Int = 6379) {
        self.host = host
        self.port = port
        self.username = nil
        self.password = nil
        self.database = 0
        self.tls = nil
        self.poolSize = 8
        self.commandTimeout = .milliseconds(250)
        self.connectTimeout = .seconds(2)
        self.initialReconnectDelay = .milliseconds(50)
        self.maximumReconnectDelay = .seconds(2)
        self.maximumAbandonedCommands = 1024
        self.stallLimit = .seconds(1)
        self.pubSubPingInterval = .seconds(5)
        self.clientName = nil
    }

    /// Parses `redis://[[user]:password@]host[:port][/db]` or `rediss://…` (TLS).
    ///
    /// Percent-escapes in the user name and password are decoded. IPv6 hosts go
    /// in brackets: `redis://[::1]:6379/0`.
    public init(url: String) throws(RedisError) {
        self.init()
        var rest = Substring(url)
        if rest.hasPrefix("redis://") {
            rest = rest.dropFirst("redis://".count)
        } else if rest.hasPrefix("rediss://") {
            rest = rest.dropFirst("rediss://".count)
            self.tls = .makeClientConfiguration()
            self.port = 6380
        } else {
            throw RedisError(.invalidURL, "Redis URL must start with redis:// or rediss://")
        }
        // Strip query and fragment, which we do not use.
        if let index = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) { rest = rest[..<index] }
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                let user = userinfo[..<colon]
                let password = userinfo[userinfo.index(after: colon)...]
                self.username = user.isEmpty ? nil : try Self.percentDecode(user)
                self.password = try Self.percentDecode(password)
            } else if !userinfo.isEmpty {
                // `redis://password@host` is a common shorthand.
                self.password = try Self.percentDecode(userinfo)
            }
        }
        var host = rest
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw RedisError(.invalidURL, "Redis URL has an unterminated IPv6 address")
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                guard let port = Int(after.dropFirst()), (1...65535).contains(port) else {
                    throw RedisError(.invalidURL, "Redis URL has an invalid port")
                }
                self.port = port
            } else if !after.isEmpty {
                throw RedisError(.invalidURL, "Redis URL has text after the IPv6 address")
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            guard let port = Int(rest[rest.index(after: colon)...]), (1...65535).contains(port) else {
                throw RedisError(.invalidURL, "Redis URL has an invalid port")
            }
            self.port = port
        }
        guard !host.isEmpty else { throw RedisError(.invalidURL, "Redis URL has no host") }
        self.host = String(host)
        if !path.isEmpty {
            guard let database = Int(path), database >= 0 else {
                throw RedisError(.invalidURL, "Redis URL path must be a database number")
            }
            self.database = database
        }
    }

    /// `host:port` for messages (never includes credentials).
    public var endpointDescription: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "\(self.tls == nil ? "redis" : "rediss")://\(host):\(self.port)/\(self.database)"
    }

    private static func percentDecode(_ text: Substring) throws(RedisError) -> String {
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(Self.hexValue), let low = iterator.next().flatMap(Self.hexValue)
                else { throw RedisError(.invalidURL, "Redis URL has an invalid percent-escape") }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

extension RedisConfiguration: CustomStringConvertible {
    /// Describes the endpoint; the password is shown as `***`.
    public var description: String {
        "RedisConfiguration(\(self.endpointDescription), auth: \(self.password == nil ? "none" : "***"), pool: \(self.poolSize))"
    }
}
