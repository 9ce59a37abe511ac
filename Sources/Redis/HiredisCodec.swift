import CHiredis
package import NIOCore

/// Encodes commands with hiredis's formatter (`redisFormatCommandArgv`): RESP arrays of bulk strings, binary-safe.
///
/// The arguments are laid out back to back in one scratch buffer, hiredis formats from pointers into it, and the
/// formatted bytes are copied into a `ByteBuffer`. Pure CPU work, no I/O: callers encode on their own task, so the
/// event loop only copies finished bytes to the socket.
package enum RESPEncoder {
    /// Appends the RESP encoding of `command` to `buffer`.
    package static func encode(_ command: RedisCommand, into buffer: inout ByteBuffer) {
        let arguments = command.arguments
        let count = arguments.count
        var scratch = ByteBufferAllocator().buffer(capacity: arguments.reduce(0) { $0 + $1.byteCount })
        for argument in arguments { argument.write(to: &scratch) }
        scratch.withUnsafeReadableBytes { bytes in
            // Arguments that are all empty leave no bytes: their pointers then point at an empty C string.
            let base = bytes.baseAddress.map { UnsafePointer<CChar>($0.assumingMemoryBound(to: CChar.self)) }
            Self.empty.withUnsafeBufferPointer { empty in
                withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>.self, capacity: count) { argv in
                    withUnsafeTemporaryAllocation(of: Int.self, capacity: count) { lengths in
                        var offset = 0
                        for (index, argument) in arguments.enumerated() {
                            let length = argument.byteCount
                            argv.initializeElement(at: index, to: base.map { $0 + offset } ?? empty.baseAddress!)
                            lengths.initializeElement(at: index, to: length)
                            offset += length
                        }
                        var target: UnsafeMutablePointer<CChar>?
                        let length = kisgw_format_command(&target, Int32(count), argv.baseAddress!, lengths.baseAddress!)
                        guard length >= 0, let target else { fatalError("redisFormatCommandArgv failed (out of memory)") }
                        defer { kisgw_free_command(target) }
                        buffer.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(length)))
                    }
                }
            }
        }
    }

    private static let empty: [CChar] = [0]

    /// The RESP encoding of `command` in a new buffer.
    package static func encode(_ command: RedisCommand, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: Self.estimatedLength(command))
        self.encode(command, into: &buffer)
        return buffer
    }

    /// The encodings of `commands`, all in one allocation: each element is a
    /// slice of a single buffer (NIO writes them with one `writev`).
    package static func encode(batch commands: [RedisCommand], allocator: ByteBufferAllocator = ByteBufferAllocator()) -> [ByteBuffer] {
        var buffer = allocator.buffer(capacity: commands.reduce(0) { $0 + Self.estimatedLength($1) })
        var ends: [Int] = []
        ends.reserveCapacity(commands.count)
        for command in commands {
            self.encode(command, into: &buffer)
            ends.append(buffer.writerIndex)
        }
        // Slices are taken only once all bytes are written: a slice shares the
        // storage, so writing after taking one would copy it.
        var slices: [ByteBuffer] = []
        slices.reserveCapacity(commands.count)
        var start = buffer.readerIndex
        for end in ends {
            slices.append(buffer.getSlice(at: start, length: end - start)!)
            start = end
        }
        return slices
    }

    /// A capacity that holds `command`'s encoding in all but huge commands: the arguments' bytes and, per
    /// argument, `$`, up to ten digits and two CRLFs.
    private static func estimatedLength(_ command: RedisCommand) -> Int {
        command.arguments.reduce(16) { $0 + $1.byteCount + 15 }
    }
}

/// Decodes replies with hiredis's reply reader.
///
/// The reader is given its own reply-object functions, so replies are built
/// directly as ``RESPValue``s and no `redisReply` is allocated. A bulk string
/// read by ``read(_:allocator:_:)`` that lies wholly inside the received buffer
/// is a slice of that buffer (no copy: like any NIO decoder's slice, it keeps
/// the receive buffer alive while it lives); one that spans two reads, and any
/// fed through ``feed(_:)``, is copied once from hiredis's read buffer.
/// A scalar reply is handed back through ``ReplyBuilder`` with a token
/// pointer; an array is an ``ArrayBox`` that hiredis holds retained until it
/// returns it (or frees it through `freeObject` on a protocol error or when
/// the reader is freed); nested arrays belong to their parent box.
///
/// Owns a `redisReader`; not thread-safe, lives inside one channel handler.
package final class HiredisReader {
    private let reader: UnsafeMutablePointer<redisReader>
    private let functions: UnsafeMutablePointer<redisReplyObjectFunctions>
    /// Referenced unretained by the reader's `privdata`; lives as long as `self`.
    private let builder = ReplyBuilder()

    package init() {
        self.functions = .allocate(capacity: 1)
        self.functions.initialize(to: redisReplyObjectFunctions())
        self.functions.pointee.createString = { task, str, len in HiredisReader.createString(task, str, len) }
        self.functions.pointee.createArray = { task, count in HiredisReader.createArray(task, Int(count)) }
        self.functions.pointee.createInteger = { task, value in HiredisReader.store(.integer(Int(value)), task) }
        self.functions.pointee.createNil = { task in HiredisReader.store(.null, task) }
        self.functions.pointee.freeObject = { object in HiredisReader.freeObject(object) }
        let privdata = Unmanaged.passUnretained(self.builder).toOpaque()
        guard let reader = kisgw_reader_create_with_functions(self.functions, privdata) else {
            fatalError("redisReaderCreate failed (out of memory)")
        }
        self.reader = reader
        self.builder.reader = reader
    }

    deinit {
        // Frees a partly read array through `freeObject` before the table goes.
        kisgw_reader_free(self.reader)
        self.functions.deinitialize(count: 1)
        self.functions.deallocate()
    }

    /// Hands received bytes to the reader (bulk strings read from them are copies).
    package func feed(_ buffer: ByteBuffer) throws(RedisError) {
        let rc = buffer.withUnsafeReadableBytes { bytes -> Int32 in
            guard let base = bytes.baseAddress, bytes.count > 0 else { return REDIS_OK }
            return kisgw_reader_feed(self.reader, base.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        if rc != REDIS_OK {
            throw RedisError(.protocolError, "cannot buffer reply bytes: \(String(cString: kisgw_reader_errstr(self.reader)))")
        }
        self.builder.fed += buffer.readableBytes
    }

    /// Feeds `buffer` (a read from the socket) and hands every reply it completes to `onReply`, in order.
    /// Bulk strings wholly inside `buffer` are slices of it.
    ///
    /// Fed in slices, draining replies after each: hiredis moves its unread bytes to the front of its buffer
    /// (`sdsrange`) after every reply once 1 KB is consumed, so one 64 KB read of pipelined 6 KB replies fed at
    /// once would cost ~0.4 MB of memmove; a 4 KB slice bounds it by the slice.
    package func read(_ buffer: ByteBuffer, allocator: ByteBufferAllocator,
                      _ onReply: (RESPValue) throws(RedisError) -> Void) throws(RedisError) {
        self.builder.source = buffer
        self.builder.sourceStart = self.builder.fed
        defer { self.builder.source = nil }  // the next read can reuse NIO's receive buffer if no value holds it
        var rest = buffer
        while let slice = rest.readSlice(length: min(rest.readableBytes, Self.feedSliceSize)), slice.readableBytes > 0 {
            try self.feed(slice)
            while let value = try self.next(allocator: allocator) {
                try onReply(value)
            }
        }
    }

    private static let feedSliceSize = 4096

    /// The next complete reply, or `nil` if more bytes are needed.
    ///
    /// A top-level error reply is returned as ``RESPValue/error(_:)``; the caller decides.
    package func next(allocator: ByteBufferAllocator) throws(RedisError) -> RESPValue? {
        self.builder.allocator = allocator
        var object: UnsafeMutableRawPointer? = nil
        guard kisgw_reader_get_object(self.reader, &object) == REDIS_OK else {
            throw RedisError(.protocolError, "invalid reply from server: \(String(cString: kisgw_reader_errstr(self.reader)))")
        }
        guard let object else { return nil }
        if object == Self.scalarToken {
            guard let value = self.builder.root.take() else {
                throw RedisError(.protocolError, "hiredis returned a reply that was never built")
            }
            return value
        }
        if Self.isDefaultObject(object) {
            // hiredis 1.x, a RESP3 double or boolean (no function given): never
            // sent on our RESP2 connections.
            return .error("unsupported hiredis reply type \(UInt(bitPattern: object))")
        }
        return Unmanaged<ArrayBox>.fromOpaque(object).takeRetainedValue().resolve()
    }

    // MARK: reply-object functions (called by hiredis inside `next`)

    /// What a function returns for a value stored in the builder or the parent box.
    private static var scalarToken: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: 1)! }

    /// hiredis 1.x returns the reply type cast to a pointer for types without a function.
    private static func isDefaultObject(_ object: UnsafeMutableRawPointer) -> Bool {
        UInt(bitPattern: object) < 4096
    }

    private static func builder(_ task: UnsafePointer<redisReadTask>) -> ReplyBuilder? {
        guard let privdata = task.pointee.privdata else { return nil }
        return Unmanaged<ReplyBuilder>.fromOpaque(privdata).takeUnretainedValue()
    }

    /// Puts a scalar into the parent array or, at the top level, into the builder.
    /// Returning `nil` makes hiredis fail the read (as out of memory).
    private static func store(_ value: RESPValue, _ task: UnsafePointer<redisReadTask>?) -> UnsafeMutableRawPointer? {
        guard let task else { return nil }
        if let parent = task.pointee.parent {
            guard let parentObject = parent.pointee.obj, !Self.isDefaultObject(parentObject) else { return nil }
            let box = Unmanaged<ArrayBox>.fromOpaque(parentObject).takeUnretainedValue()
            let index = Int(task.pointee.idx)
            guard box.elements.indices.contains(index) else { return nil }
            box.elements[index] = .value(value)
        } else {
            guard let builder = Self.builder(task) else { return nil }
            builder.root = value
        }
        return Self.scalarToken
    }

    private static func createString(_ task: UnsafePointer<redisReadTask>?, _ str: UnsafeMutablePointer<CChar>?, _ length: Int) -> UnsafeMutableRawPointer? {
        guard let task, let builder = Self.builder(task) else { return nil }
        let bytes = UnsafeRawBufferPointer(start: str, count: str == nil ? 0 : length)
        let value: RESPValue
        switch task.pointee.type {
        case KISGW_REPLY_ERROR:
            value = .error(String(decoding: bytes, as: UTF8.self))
        case KISGW_REPLY_STATUS, KISGW_REPLY_BIGNUM:
            value = .simpleString(String(decoding: bytes, as: UTF8.self))
        default:
            if let slice = builder.sliceOfSource(str, length) {
                value = .bulkString(slice)
            } else {
                var buffer = builder.allocator.buffer(capacity: bytes.count)
                buffer.writeBytes(bytes)
                value = .bulkString(buffer)
            }
        }
        return Self.store(value, task)
    }

    private static func createArray(_ task: UnsafePointer<redisReadTask>?, _ count: Int) -> UnsafeMutableRawPointer? {
        guard let task, count >= 0 else { return nil }
        let box = ArrayBox(count: count)
        if let parent = task.pointee.parent {
            guard let parentObject = parent.pointee.obj, !Self.isDefaultObject(parentObject) else { return nil }
            let parentBox = Unmanaged<ArrayBox>.fromOpaque(parentObject).takeUnretainedValue()
            let index = Int(task.pointee.idx)
            guard parentBox.elements.indices.contains(index) else { return nil }
            // The parent owns the nested box; hiredis never frees a nested object itself.
            parentBox.elements[index] = .nested(box)
            return Unmanaged.passUnretained(box).toOpaque()
        }
        // The top-level box is owned by hiredis until `next` takes it back or `freeObject` releases it.
        return Unmanaged.passRetained(box).toOpaque()
    }

    /// Called by hiredis for top-level objects only (`r->reply`).
    private static func freeObject(_ object: UnsafeMutableRawPointer?) {
        guard let object, !Self.isDefaultObject(object) else { return }
        Unmanaged<ArrayBox>.fromOpaque(object).release()
    }
}

/// Where the reply-object functions put a finished top-level scalar, and what they need to slice bulk strings
/// out of the received buffer.
private final class ReplyBuilder {
    var allocator = ByteBufferAllocator()
    var root: RESPValue?
    /// The reader (set once it exists; freed by the owning ``HiredisReader``).
    var reader: UnsafeMutablePointer<redisReader>?
    /// Bytes fed to the reader since it was created: the stream offset just past its buffered bytes.
    var fed = 0
    /// The received buffer being read, and the stream offset of its first readable byte.
    var source: ByteBuffer?
    var sourceStart = 0

    /// `length` bytes at `str` (inside the reader's buffer) as a slice of ``source``, when they came from it.
    ///
    /// The reader's buffer holds the last `reader.len` bytes fed, so a byte at `str` has the stream offset
    /// `fed - len + (str - buf)`, however hiredis has compacted or reallocated its buffer before.
    func sliceOfSource(_ str: UnsafeMutablePointer<CChar>?, _ length: Int) -> ByteBuffer? {
        guard let source, let str, length > 0, let reader, let base = reader.pointee.buf else { return nil }
        let streamOffset = self.fed - Int(reader.pointee.len) + (str - base)
        let offset = streamOffset - self.sourceStart
        guard offset >= 0, offset + length <= source.readableBytes,
            let slice = source.getSlice(at: source.readerIndex + offset, length: length)
        else { return nil }
        // Every byte in debug builds (the tests); the first and the last always, else the copy is taken.
        assert(slice.withUnsafeReadableBytes { $0.elementsEqual(UnsafeRawBufferPointer(start: str, count: length)) },
               "a bulk string sliced from the wrong place of the received buffer")
        guard slice.getInteger(at: slice.readerIndex, as: UInt8.self) == UInt8(bitPattern: str[0]),
            slice.getInteger(at: slice.readerIndex + length - 1, as: UInt8.self) == UInt8(bitPattern: str[length - 1])
        else { return nil }
        return slice
    }
}

/// An array reply under construction.
private final class ArrayBox {
    enum Element {
        case value(RESPValue)
        case nested(ArrayBox)
    }

    var elements: [Element]

    init(count: Int) {
        self.elements = Array(repeating: .value(.null), count: count)
    }

    func resolve() -> RESPValue {
        .array(self.elements.map { element in
            switch element {
            case .value(let value): value
            case .nested(let box): box.resolve()
            }
        })
    }
}
