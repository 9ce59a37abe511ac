import Synchronization

/// A Lua script run with `EVALSHA`.
///
/// Create scripts once (e.g. as `static let`) and reuse them: the SHA-1 the
/// server reports on the first `SCRIPT LOAD` is remembered, and a `NOSCRIPT`
/// reply (after a restart or `SCRIPT FLUSH`) reloads it transparently.
///
/// ```swift
/// static let release = RedisScript(name: "release", """
///     if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
///     return 0
///     """)
/// let reply = try await redis.evaluate(Self.release, keys: [key], arguments: [token])
/// ```
public final class RedisScript: Sendable {
    /// A name for logs.
    public let name: String
    /// The Lua source.
    public let source: String
    private let sha = Mutex<String?>(nil)

    public init(name: String, _ source: String) {
        self.name = name
        self.source = source
    }

    /// The SHA-1 the server reported, once loaded.
    var sha1: String? {
        get { self.sha.withLock { $0 } }
        set { self.sha.withLock { $0 = newValue } }
    }
}
