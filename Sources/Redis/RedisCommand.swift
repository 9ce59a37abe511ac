public import NIOCore

/// One argument of a Redis command: binary-safe bytes.
///
/// String, integer and byte-buffer literals convert implicitly, so commands
/// read naturally: `["SET", key, value, "PX", 250]`.
public struct RedisArgument: Sendable, Hashable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    @usableFromInline
    enum Storage: Sendable, Hashable {
        case string(String)
        case bytes(ByteBuffer)
        case array([UInt8])
    }

    @usableFromInline
    let storage: Storage

    /// The UTF-8 bytes of `string`.
    public init(_ string: String) { self.storage = .string(string) }
    /// The readable bytes of `buffer`.
    public init(_ buffer: ByteBuffer) { self.storage = .bytes(buffer) }
    /// The bytes of `bytes`.
    public init(_ bytes: [UInt8]) { self.storage = .array(bytes) }
    /// The decimal text of `value`.
    public init(_ value: Int) { self.storage = .string(String(value)) }
    /// The decimal text of `value`.
    public init<I: BinaryInteger>(integer value: I) { self.storage = .string(String(value)) }

    public init(stringLiteral value: String) { self.storage = .string(value) }
    public init(integerLiteral value: Int) { self.storage = .string(String(value)) }

    /// Number of bytes this argument occupies.
    @usableFromInline
    var byteCount: Int {
        switch self.storage {
        case .string(let s): s.utf8.count
        case .bytes(let b): b.readableBytes
        case .array(let a): a.count
        }
    }

    /// Appends the argument's bytes to `buffer`.
    @usableFromInline
    func write(to buffer: inout ByteBuffer) {
        switch self.storage {
        case .string(let s): buffer.writeString(s)
        case .bytes(let b): buffer.writeImmutableBuffer(b)
        case .array(let a): buffer.writeBytes(a)
        }
    }
}

/// A command ready to be sent: its name and arguments.
///
/// ```swift
/// let reply = try await redis.send(RedisCommand("HSET", ["h", "field", "value"]))
/// ```
public struct RedisCommand: Sendable, Hashable, ExpressibleByArrayLiteral {
    /// The command name followed by its arguments.
    public var arguments: [RedisArgument]

    /// A command from a name and its arguments.
    public init(_ name: String, _ arguments: [RedisArgument] = []) {
        self.arguments = [RedisArgument(name)] + arguments
    }

    /// A command from a full argument vector (name first).
    public init(arguments: [RedisArgument]) {
        precondition(!arguments.isEmpty, "a Redis command needs a name")
        self.arguments = arguments
    }

    public init(arrayLiteral elements: RedisArgument...) {
        self.init(arguments: elements)
    }

    /// The command name, upper-cased, for logs (arguments are never logged).
    public var name: String {
        guard let first = self.arguments.first else { return "" }
        switch first.storage {
        case .string(let s): return s.uppercased()
        case .bytes(let b): return String(buffer: b).uppercased()
        case .array(let a): return String(decoding: a, as: UTF8.self).uppercased()
        }
    }
}
