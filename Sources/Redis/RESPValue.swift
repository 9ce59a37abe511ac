public import NIOCore

/// A decoded Redis reply.
///
/// Replies of the error type that arrive at the top level are thrown as
/// ``RedisError`` with code ``RedisError/Code/server``; inside an array (e.g.
/// the results of `EXEC`) they stay as ``error(_:)`` values.
public enum RESPValue: Sendable, Hashable {
    /// A status reply such as `OK` or `PONG`.
    case simpleString(String)
    /// A binary-safe bulk string.
    case bulkString(ByteBuffer)
    /// An integer reply.
    case integer(Int)
    /// A nested error reply (only inside arrays).
    case error(String)
    /// A null bulk string or null array.
    case null
    /// An array of replies.
    case array([RESPValue])
    /// A RESP3 double (only with hiredis 1.x and a RESP3 connection).
    case double(Double)
    /// A RESP3 boolean (only with hiredis 1.x and a RESP3 connection).
    case bool(Bool)
}

extension RESPValue {
    /// The bytes of a bulk or simple string, `nil` for anything else.
    public var byteBuffer: ByteBuffer? {
        switch self {
        case .bulkString(let buffer): buffer
        case .simpleString(let string): ByteBuffer(string: string)
        default: nil
        }
    }

    /// The bytes of a bulk or simple string as an array.
    public var bytes: [UInt8]? {
        self.byteBuffer.map { Array($0.readableBytesView) }
    }

    /// A bulk or simple string decoded as UTF-8 (lossy), an integer as its decimal text.
    public var string: String? {
        switch self {
        case .bulkString(let buffer): String(buffer: buffer)
        case .simpleString(let string): string
        case .integer(let value): String(value)
        default: nil
        }
    }

    /// An integer reply, or a string reply holding a decimal integer.
    public var int: Int? {
        switch self {
        case .integer(let value): value
        case .bulkString(let buffer): Int(String(buffer: buffer))
        case .simpleString(let string): Int(string)
        case .bool(let value): value ? 1 : 0
        default: nil
        }
    }

    /// The elements of an array reply.
    public var array: [RESPValue]? {
        if case .array(let values) = self { return values }
        return nil
    }

    /// `true` for ``null``.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}

extension RESPValue: CustomStringConvertible {
    public var description: String {
        switch self {
        case .simpleString(let s): "+\(s)"
        case .bulkString(let b): "$\(b.readableBytes):\(String(buffer: b).prefix(64).debugDescription)"
        case .integer(let i): ":\(i)"
        case .error(let e): "-\(e)"
        case .null: "(nil)"
        case .array(let a): "[\(a.map(\.description).joined(separator: ", "))]"
        case .double(let d): ",\(d)"
        case .bool(let b): "#\(b ? "t" : "f")"
        }
    }
}
