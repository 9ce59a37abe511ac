public import NIOCore
import Logging

/// The condition of a `SET`.
public enum RedisSetCondition: Sendable, Hashable {
    /// Always set (plain `SET`).
    case always
    /// Only if the key does not exist (`NX`).
    case ifAbsent
    /// Only if the key exists (`XX`).
    case ifPresent
}

/// The answer of `PTTL`.
public enum RedisTimeToLive: Sendable, Hashable {
    /// The key does not exist.
    case missing
    /// The key exists and has no expiry.
    case persistent
    /// The key expires after this long.
    case expiresIn(Duration)
}

extension RedisClient {
    /// `PING`: round trip to the server.
    public func ping() async throws(RedisError) {
        _ = try await self.send(["PING"])
    }

    /// `GET`: the value, or `nil` if the key does not exist.
    public func get(_ key: String) async throws(RedisError) -> ByteBuffer? {
        switch try await self.send(["GET", RedisArgument(key)]) {
        case .bulkString(let buffer): return buffer
        case .null: return nil
        case let other: throw Self.unexpected("GET", other)
        }
    }

    /// `GET` decoded as UTF-8.
    public func getString(_ key: String) async throws(RedisError) -> String? {
        try await self.get(key).map { String(buffer: $0) }
    }

    /// `SET` with optional expiry (millisecond precision) and condition.
    /// - Returns: whether the value was written (always `true` for ``RedisSetCondition/always``).
    @discardableResult
    public func set(
        _ key: String,
        to value: RedisArgument,
        expiration: Duration? = nil,
        condition: RedisSetCondition = .always
    ) async throws(RedisError) -> Bool {
        var arguments: [RedisArgument] = ["SET", RedisArgument(key), value]
        if let expiration {
            arguments.append("PX")
            arguments.append(RedisArgument(Self.milliseconds(expiration)))
        }
        switch condition {
        case .always: break
        case .ifAbsent: arguments.append("NX")
        case .ifPresent: arguments.append("XX")
        }
        switch try await self.send(RedisCommand(arguments: arguments)) {
        case .simpleString: return true
        case .null: return false
        case let other: throw Self.unexpected("SET", other)
        }
    }

    /// `SET` of bytes.
    @discardableResult
    public func set(
        _ key: String,
        to value: ByteBuffer,
        expiration: Duration? = nil,
        condition: RedisSetCondition = .always
    ) async throws(RedisError) -> Bool {
        try await self.set(key, to: RedisArgument(value), expiration: expiration, condition: condition)
    }

    /// `SET` of a string's UTF-8 bytes.
    @discardableResult
    public func set(
        _ key: String,
        to value: String,
        expiration: Duration? = nil,
        condition: RedisSetCondition = .always
    ) async throws(RedisError) -> Bool {
        try await self.set(key, to: RedisArgument(value), expiration: expiration, condition: condition)
    }

    /// `DEL`: the number of keys removed.
    @discardableResult
    public func delete(_ keys: [String]) async throws(RedisError) -> Int {
        guard !keys.isEmpty else { return 0 }
        return try await self.integer(RedisCommand("DEL", keys.map { RedisArgument($0) }), "DEL")
    }

    /// `EXISTS`: how many of the keys exist.
    public func exists(_ keys: [String]) async throws(RedisError) -> Int {
        guard !keys.isEmpty else { return 0 }
        return try await self.integer(RedisCommand("EXISTS", keys.map { RedisArgument($0) }), "EXISTS")
    }

    /// `PEXPIRE`: whether the key exists and the expiry was set.
    @discardableResult
    public func expire(_ key: String, after duration: Duration) async throws(RedisError) -> Bool {
        try await self.integer(RedisCommand("PEXPIRE", [RedisArgument(key), RedisArgument(Self.milliseconds(duration))]), "PEXPIRE") == 1
    }

    /// `PTTL`: the key's remaining time to live.
    public func timeToLive(_ key: String) async throws(RedisError) -> RedisTimeToLive {
        let milliseconds = try await self.integer(["PTTL", RedisArgument(key)], "PTTL")
        switch milliseconds {
        case -2: return .missing
        case -1: return .persistent
        default: return .expiresIn(.milliseconds(milliseconds))
        }
    }

    /// `INCRBY`: the new value.
    @discardableResult
    public func increment(_ key: String, by amount: Int = 1) async throws(RedisError) -> Int {
        try await self.integer(["INCRBY", RedisArgument(key), RedisArgument(amount)], "INCRBY")
    }

    /// `SADD`: the number of members added.
    @discardableResult
    public func setAdd(_ key: String, members: [RedisArgument]) async throws(RedisError) -> Int {
        guard !members.isEmpty else { return 0 }
        return try await self.integer(RedisCommand("SADD", [RedisArgument(key)] + members), "SADD")
    }

    /// `SREM`: the number of members removed.
    @discardableResult
    public func setRemove(_ key: String, members: [RedisArgument]) async throws(RedisError) -> Int {
        guard !members.isEmpty else { return 0 }
        return try await self.integer(RedisCommand("SREM", [RedisArgument(key)] + members), "SREM")
    }

    /// `SMEMBERS`: all members (in no particular order).
    public func setMembers(_ key: String) async throws(RedisError) -> [ByteBuffer] {
        let reply = try await self.send(["SMEMBERS", RedisArgument(key)])
        guard let values = reply.array else { throw Self.unexpected("SMEMBERS", reply) }
        var members: [ByteBuffer] = []
        members.reserveCapacity(values.count)
        for value in values {
            guard let buffer = value.byteBuffer else { throw Self.unexpected("SMEMBERS", reply) }
            members.append(buffer)
        }
        return members
    }

    /// `SISMEMBER`.
    public func setIsMember(_ key: String, member: RedisArgument) async throws(RedisError) -> Bool {
        try await self.integer(["SISMEMBER", RedisArgument(key), member], "SISMEMBER") == 1
    }

    /// `SCARD`.
    public func setCount(_ key: String) async throws(RedisError) -> Int {
        try await self.integer(["SCARD", RedisArgument(key)], "SCARD")
    }

    /// `PUBLISH`: the number of subscribers that received the message.
    @discardableResult
    public func publish(_ message: RedisArgument, to channel: String) async throws(RedisError) -> Int {
        try await self.integer(["PUBLISH", RedisArgument(channel), message], "PUBLISH")
    }

    /// Runs a Lua script with `EVALSHA`, loading it with `SCRIPT LOAD` first
    /// when the server does not know it (first use, after a restart or
    /// `SCRIPT FLUSH`).
    public func evaluate(
        _ script: RedisScript,
        keys: [RedisArgument] = [],
        arguments: [RedisArgument] = [],
        timeout: Duration? = nil
    ) async throws(RedisError) -> RESPValue {
        if let sha = script.sha1 {
            do {
                return try await self.send(Self.evalsha(sha, keys: keys, arguments: arguments), timeout: timeout)
            } catch where error.serverErrorPrefix == "NOSCRIPT" {
                self.logger.debug("redis script missing on server, loading it", metadata: ["script": "\(script.name)"])
            }
        }
        // Another client may flush scripts between our load and our call: retry a few times.
        var attempt = 0
        while true {
            attempt += 1
            let loaded = try await self.send(["SCRIPT", "LOAD", RedisArgument(script.source)], timeout: timeout)
            guard let sha = loaded.string, sha.utf8.count == 40 else { throw Self.unexpected("SCRIPT LOAD", loaded) }
            script.sha1 = sha
            do {
                return try await self.send(Self.evalsha(sha, keys: keys, arguments: arguments), timeout: timeout)
            } catch where error.serverErrorPrefix == "NOSCRIPT" && attempt < 3 {
                continue
            }
        }
    }

    private static func evalsha(_ sha: String, keys: [RedisArgument], arguments: [RedisArgument]) -> RedisCommand {
        RedisCommand("EVALSHA", [RedisArgument(sha), RedisArgument(keys.count)] + keys + arguments)
    }

    private func integer(_ command: RedisCommand, _ name: String) async throws(RedisError) -> Int {
        let reply = try await self.send(command)
        guard case .integer(let value) = reply else { throw Self.unexpected(name, reply) }
        return value
    }

    static func unexpected(_ name: String, _ value: RESPValue) -> RedisError {
        RedisError(.unexpectedReply, "unexpected reply to \(name): \(value)")
    }

    static func milliseconds(_ duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        // Round up: an expiry is never shortened.
        let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return max(1, Int(milliseconds))
    }
}
