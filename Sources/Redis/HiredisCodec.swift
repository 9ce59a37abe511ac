import CHiredis
package import NIOCore

/// Encodes commands with hiredis's `redisFormatCommandArgv`.
///
/// Pure CPU work, no I/O: callers encode on their own task, so the event loop
/// only copies finished bytes to the socket.
package enum HiredisEncoder {
    /// Appends the RESP encoding of `command` to `buffer`.
    package static func encode(_ command: RedisCommand, into buffer: inout ByteBuffer) {
        let arguments = command.arguments
        let count = arguments.count
        // All arguments back to back in one scratch array, then pointers into it.
        var scratch: [UInt8] = []
        scratch.reserveCapacity(arguments.reduce(0) { $0 + $1.byteCount })
        var lengths = [Int](repeating: 0, count: count)
        for (index, argument) in arguments.enumerated() {
            let before = scratch.count
            argument.append(to: &scratch)
            lengths[index] = scratch.count - before
        }
        // An empty scratch array has no base address; give it one byte.
        if scratch.isEmpty { scratch.append(0) }
        scratch.withUnsafeBufferPointer { bytes in
            let base = UnsafeRawPointer(bytes.baseAddress!).assumingMemoryBound(to: CChar.self)
            var pointers = [UnsafePointer<CChar>](repeating: base, count: count)
            var offset = 0
            for index in 0..<count {
                pointers[index] = base + offset
                offset += lengths[index]
            }
            var target: UnsafeMutablePointer<CChar>? = nil
            let encodedLength = pointers.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeBufferPointer { argvlen in
                    kisgw_format_command(&target, Int32(count), argv.baseAddress!, argvlen.baseAddress!)
                }
            }
            defer { kisgw_free_command(target) }
            guard encodedLength >= 0, let target else {
                // hiredis fails only when malloc fails.
                fatalError("redisFormatCommandArgv failed (out of memory)")
            }
            buffer.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(encodedLength)))
        }
    }

    /// The RESP encoding of `command` in a new buffer.
    package static func encode(_ command: RedisCommand, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 32 + command.arguments.reduce(0) { $0 + $1.byteCount + 16 })
        self.encode(command, into: &buffer)
        return buffer
    }
}

/// Decodes replies with hiredis's reply reader.
///
/// Owns a `redisReader`; not thread-safe, lives inside one channel handler.
package final class HiredisReader {
    private let reader: UnsafeMutablePointer<redisReader>

    package init() {
        guard let reader = kisgw_reader_create() else {
            fatalError("redisReaderCreate failed (out of memory)")
        }
        self.reader = reader
    }

    deinit {
        kisgw_reader_free(self.reader)
    }

    /// Hands received bytes to the reader.
    package func feed(_ buffer: ByteBuffer) throws(RedisError) {
        let rc = buffer.withUnsafeReadableBytes { bytes -> Int32 in
            guard let base = bytes.baseAddress, bytes.count > 0 else { return REDIS_OK }
            return kisgw_reader_feed(self.reader, base.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        if rc != REDIS_OK {
            throw RedisError(.protocolError, "cannot buffer reply bytes: \(String(cString: kisgw_reader_errstr(self.reader)))")
        }
    }

    /// The next complete reply, or `nil` if more bytes are needed.
    ///
    /// A top-level error reply is returned as ``RESPValue/error(_:)``; the caller decides.
    package func next(allocator: ByteBufferAllocator) throws(RedisError) -> RESPValue? {
        var reply: UnsafeMutablePointer<redisReply>? = nil
        guard kisgw_reader_get_reply(self.reader, &reply) == REDIS_OK else {
            throw RedisError(.protocolError, "invalid reply from server: \(String(cString: kisgw_reader_errstr(self.reader)))")
        }
        guard let reply else { return nil }
        defer { kisgw_free_reply(reply) }
        return Self.convert(reply, allocator: allocator)
    }

    private static func string(_ reply: UnsafeMutablePointer<redisReply>) -> String {
        guard let str = kisgw_reply_str(reply) else { return "" }
        let raw = UnsafeRawBufferPointer(start: str, count: kisgw_reply_len(reply))
        return String(decoding: raw, as: UTF8.self)
    }

    private static func convert(_ reply: UnsafeMutablePointer<redisReply>, allocator: ByteBufferAllocator) -> RESPValue {
        switch kisgw_reply_type(reply) {
        case KISGW_REPLY_STRING, KISGW_REPLY_VERB:
            let length = kisgw_reply_len(reply)
            var buffer = allocator.buffer(capacity: length)
            if let str = kisgw_reply_str(reply), length > 0 {
                buffer.writeBytes(UnsafeRawBufferPointer(start: str, count: length))
            }
            return .bulkString(buffer)
        case KISGW_REPLY_STATUS, KISGW_REPLY_BIGNUM:
            return .simpleString(self.string(reply))
        case KISGW_REPLY_ERROR:
            return .error(self.string(reply))
        case KISGW_REPLY_INTEGER:
            return .integer(Int(kisgw_reply_integer(reply)))
        case KISGW_REPLY_NIL:
            return .null
        case KISGW_REPLY_DOUBLE:
            return .double(kisgw_reply_double(reply))
        case KISGW_REPLY_BOOL:
            return .bool(kisgw_reply_integer(reply) != 0)
        case KISGW_REPLY_ARRAY, KISGW_REPLY_MAP, KISGW_REPLY_SET, KISGW_REPLY_PUSH, KISGW_REPLY_ATTR:
            let count = kisgw_reply_elements(reply)
            var values: [RESPValue] = []
            values.reserveCapacity(count)
            for index in 0..<count {
                values.append(self.convert(kisgw_reply_element(reply, index), allocator: allocator))
            }
            return .array(values)
        default:
            return .error("unknown hiredis reply type \(kisgw_reply_type(reply))")
        }
    }
}
