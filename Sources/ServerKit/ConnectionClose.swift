import Foundation
import HTTPTypes
public import HummingbirdCore
public import Logging
public import NIOCore
public import NIOHTTP1
public import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// Keeps a connection's persistence as HTTP/1.1 has it (RFC 9112 §9.3, §9.6) for the requests Hummingbird answers,
/// between NIO's HTTP/1 codec and the conversion to HTTPTypes:
///
/// - A request that does not keep the connection — HTTP/1.0 without `keep-alive`, or a `close` option in any case or
///   in a list (`Connection: Close`, `Connection: keep-alive, close`) — reaches Hummingbird with `Connection: close`
///   exactly: the one form its loop checks before closing. (The conversion to HTTPTypes drops the version, and the
///   connection was kept open until its idle timeout: a client reading to the end of the stream waited that long.)
/// - Its answer says `Connection: close`.
/// - A request the decoder cannot read (not HTTP, a head too large, bad framing), or an HTTP/1.1 request without
///   exactly one `Host` (RFC 9112 §3.2), is answered with a problem
///   (`invalid_parameter`, saying what was wrong) once the answers before it are out, and the connection closes —
///   instead of Hummingbird's bare 400 with no body.
/// - A framing error in the body of a request already answered (a bad chunk after the router answered the head)
///   closes the connection: the client had its answer, and a second one — Hummingbird's bare 400 — would be read as
///   the answer to its next request.
/// - A request's body must be whole within `bodyTimeout` of the end of the read that left it unfinished, or the
///   connection closes: Hummingbird's idle timer counts each byte read as activity, so a body trickled in a byte a
///   minute (declaring a terabyte) held its connection for ever — a few thousand such, all the descriptors.
public final class ConnectionCloseHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias InboundOut = HTTPServerRequestPart
    public typealias OutboundIn = HTTPServerResponsePart
    public typealias OutboundOut = HTTPServerResponsePart

    /// For each request read whose answer has not ended, oldest first: whether the connection closes after it.
    private var closes = CircularBuffer<Bool>(initialCapacity: 2)
    /// A request's head was read and its end not yet.
    private var bodyOpen = false
    /// The decoder failed in the body of a request not answered yet.
    private var errorInBody = false
    /// That request's answer is written, or a refusal's: the connection is closing.
    private var closingAfterBadBody = false
    /// What a request refused in its head (by the decoder, or for its `Host`) is told, once the answers before it
    /// are out.
    private var refusal: String?
    /// When the last answer's end is written: the connection is not closed before it (a close drops pending writes).
    private var lastAnswerWritten: EventLoopFuture<Void>?
    /// A request that closes the connection was read: what follows it is dropped, and the decoder's errors about it
    /// (NIO's parser refuses any bytes after such a message) are not answered.
    private var closeRequested = false

    private let answersRefusals: Bool
    private let bodyTimeout: TimeAmount?
    /// Closes the connection when the body being read is still unfinished.
    private var bodyTimer: Scheduled<Void>?

    /// - Parameters:
    ///   - answersRefusals: whether this handler answers the requests the decoder refuses in their head (false where
    ///     a handler before it does: the gateway's hit path, which adds CORS headers).
    ///   - bodyTimeout: how long a request's body may take to arrive after a read leaves it unfinished (nil: for
    ///     ever).
    public init(answersRefusals: Bool = true, bodyTimeout: TimeAmount? = nil) {
        self.answersRefusals = answersRefusals
        self.bodyTimeout = bodyTimeout
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        if bodyOpen, bodyTimer == nil, let bodyTimeout {
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            bodyTimer = context.eventLoop.scheduleTask(in: bodyTimeout) {
                let (handler, context) = bound.value
                handler.bodyTimer = nil
                if handler.bodyOpen { context.close(promise: nil) }
            }
        }
        context.fireChannelReadComplete()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        bodyTimer?.cancel()
        bodyTimer = nil
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        bodyTimer?.cancel()
        bodyTimer = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // After a refused head, or a bad body, nothing more is read: the connection closes once its answer is out.
        // RFC 9112 §9.6: nor is anything after a request that closes the connection (once its own body has ended).
        if refusal != nil || closingAfterBadBody || (closeRequested && !bodyOpen) { return }
        switch unwrapInboundIn(data) {
        case .head(var head):
            if answersRefusals, head.version == .http1_1, !HTTPRefusal.hasOneHost(head.headers) {
                refusal = HTTPRefusal.hostDetail
                if closes.isEmpty { refuse(context: context) }
                return
            }
            bodyOpen = true
            let close = !head.isKeepAlive
            closes.append(close)
            closeRequested = close
            if close, head.headers[canonicalForm: "connection"] != ["close"] {
                head.headers.replaceOrAdd(name: "connection", value: "close")
                context.fireChannelRead(wrapInboundOut(.head(head)))
                return
            }
        case .end:
            bodyOpen = false
            bodyTimer?.cancel()
            bodyTimer = nil
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if closingAfterBadBody {
            // Hummingbird's bare 400 for the body error, after the answer already written: not sent.
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        switch unwrapOutboundIn(data) {
        case .head(var head) where head.status.code >= 200 && closes.first == true:
            head.headers.replaceOrAdd(name: "connection", value: "close")
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .end:
            if !closes.isEmpty { closes.removeFirst() }
            let written = promise ?? context.eventLoop.makePromise(of: Void.self)
            lastAnswerWritten = written.futureResult
            guard errorInBody, closes.isEmpty else {
                context.write(data, promise: written)
                if refusal != nil, closes.isEmpty { refuse(context: context) }
                return
            }
            // The answer to the request whose body was bad (the route's own, had it read the body) is complete:
            // the connection closes once it is out, and nothing after it is written.
            closingAfterBadBody = true
            context.writeAndFlush(data, promise: written)
            closeWhenWritten(context: context)
        default:
            context.write(data, promise: promise)
        }
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Once the connection is closing, the decoder's later errors (it reports every read after its first error)
        // go nowhere: passed on, Hummingbird would close the channel at once, dropping the answers not yet sent.
        if refusal != nil || closingAfterBadBody || (closeRequested && !bodyOpen),
            error is HTTPParserError || error is ByteToMessageDecoderError
        {
            return
        }
        guard let bad = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        if bodyOpen {
            guard !closes.isEmpty else {
                // Its request was answered already: closed once that answer is out.
                closingAfterBadBody = true
                context.flush()
                closeWhenWritten(context: context)
                return
            }
            // Passed on (a route reading the body answers it); the connection closes after this request's answer.
            errorInBody = true
            context.fireErrorCaught(error)
            return
        }
        // In a head: no request to pass on. Answered here, after the answers to the requests before it.
        guard answersRefusals else {
            context.fireErrorCaught(error)
            return
        }
        guard refusal == nil, !closingAfterBadBody else { return }
        refusal = HTTPRefusal.detail(bad)
        if closes.isEmpty { refuse(context: context) }
    }

    private func refuse(context: ChannelHandlerContext) {
        guard let detail = refusal else { return }
        closingAfterBadBody = true  // nothing written after this answer
        let rendered = ProblemRenderer.rendered(Problem(.invalidParameter, detail))
        var headers = HTTPHeaders()
        for field in rendered.headers { headers.add(name: field.name.rawName, value: field.value) }
        headers.add(name: "content-length", value: String(rendered.body.readableBytes))
        headers.add(name: "connection", value: "close")
        headers.add(name: "date", value: HTTPDateCache.format(Int64(Date().timeIntervalSince1970)))
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers))),
                      promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(rendered.body))), promise: nil)
        let written = context.eventLoop.makePromise(of: Void.self)
        lastAnswerWritten = written.futureResult
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: written)
        closeWhenWritten(context: context)
    }

    /// Closes the connection once the last answer is written, lingering (``closeAfterLinger(_:linger:)``).
    private func closeWhenWritten(context: ChannelHandlerContext) {
        let channel = context.channel
        guard let written = lastAnswerWritten else {
            closeAfterLinger(channel)
            return
        }
        written.whenComplete { _ in closeAfterLinger(channel) }
    }
}

/// Ends a connection after its last answer: the output first (the client reads the answer, then the end of the
/// stream), then — after `linger`, while what the client still sends is read and dropped — the whole of it. Closed
/// at once, a socket with unread bytes is reset, and a client still sending (a large head or body) may see the reset
/// before the answer.
public func closeAfterLinger(_ channel: any Channel, linger: TimeAmount = .seconds(2)) {
    channel.close(mode: .output).whenComplete { result in
        if case .failure = result {
            channel.close(promise: nil)
            return
        }
        channel.eventLoop.scheduleTask(in: linger) { channel.close(promise: nil) }
    }
}

/// What a request the HTTP decoder refused is told, in words (NIO's own descriptions name its parser's internals).
public enum HTTPRefusal {
    /// RFC 9112 §3.2: a server answers 400 to an HTTP/1.1 request without a `Host`, or with more than one.
    public static let hostDetail = "the request is not valid HTTP/1.1: it must have exactly one Host header field"

    /// Whether `headers` hold exactly one `Host` (names compared without case, without allocating).
    public static func hasOneHost(_ headers: HTTPHeaders) -> Bool {
        var count = 0
        for (name, _) in headers where HeaderName.equals(name.utf8, "host") { count += 1 }
        return count == 1
    }

    public static func detail(_ error: HTTPParserError) -> String {
        let what: String
        switch error {
        case .headerOverflow:
            return "the request's head is too large: more than 1000 header fields, or longer than this server reads"
        case .invalidVersion: what = "its HTTP version is not HTTP/1.x"
        // NIO's parser knows a fixed list of methods (RFC 9110's, WebDAV's and a few others), upper case only: a
        // method outside it (`FOO`, `get`) is a token HTTP allows, but not one this server reads.
        case .invalidMethod: what = "its method is not one this server knows (methods are case-sensitive: GET, HEAD, OPTIONS, POST)"
        case .invalidURL, .invalidPath, .invalidQueryString, .invalidFragment, .invalidHost, .invalidPort:
            what = "its request target is not valid"
        case .invalidHeaderToken, .invalidCharactersUsed, .invalidConstant:
            what = "a header field's name or value has a character HTTP does not allow, or a field is folded"
        case .lfExpected, .strictModeAssertion:
            what = "a line does not end in CRLF"
        case .invalidContentLength, .unexpectedContentLength:
            what = "its Content-Length is not valid, repeated with different values, or sent with Transfer-Encoding"
        case .invalidChunkSize:
            what = "its chunked body is not valid"
        default:
            what = "its framing is not valid (for instance both Content-Length and Transfer-Encoding, or an HTTP/2 preface)"
        }
        return "the request is not valid HTTP/1.1: " + what
    }
}

/// Hummingbird's HTTP/1.1 channel (`HTTP1Channel`) with `ConnectionCloseHandler` before the conversion to HTTPTypes.
public struct ClosingHTTP1Channel: HTTPChannelHandler {
    public typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>

    public let responder: HTTPChannelHandler.Responder
    let idleTimeout: Duration?
    let decoderLimits: NIOHTTPDecoderLimitConfiguration

    public func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                withPipeliningAssistance: false,  // the async channel keeps answers in order
                withErrorHandling: false,  // Hummingbird answers parse errors
                withOutboundHeaderValidation: false,  // HTTPTypes validates the fields
                withEncoderConfiguration: .init(),
                withDecoderLimitConfiguration: decoderLimits)
            try channel.pipeline.syncOperations.addHandler(
                ConnectionCloseHandler(bodyTimeout: idleTimeout.map { TimeAmount($0) }))
            try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(idleTimeout: idleTimeout, logger: logger))
            return try NIOAsyncChannel(wrappingChannelSynchronously: channel,
                                       configuration: .init(isOutboundHalfClosureEnabled: true))
        }
    }

    public func handle(value asyncChannel: Value, logger: Logger) async {
        await handleHTTP(asyncChannel: asyncChannel, logger: logger)
    }
}

extension HTTPServerBuilder {
    /// HTTP/1.1 as `.http1(configuration:)` builds it, with `ConnectionCloseHandler`.
    public static func closingHTTP1(idleTimeout: Duration? = nil,
                                    decoderLimits: NIOHTTPDecoderLimitConfiguration = .hummingbird) -> HTTPServerBuilder {
        .init { responder in
            ClosingHTTP1Channel(responder: responder, idleTimeout: idleTimeout, decoderLimits: decoderLimits)
        }
    }
}

extension NIOHTTPDecoderLimitConfiguration {
    /// Hummingbird's own limits (`.http1`): 80 KiB of header fields, and at most 1000 of them (NIO's default count is
    /// 65534).
    public static var hummingbird: NIOHTTPDecoderLimitConfiguration {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = 80 * 1024
        limits.maxHeaderListSize = 80 * 1024
        limits.maxHeaderFieldCount = 1000
        return limits
    }
}

/// Header names compared as HTTP compares them: ASCII, without case.
public enum HeaderName {
    /// Whether `name` is `lower` (given in lower case), without allocating.
    @inlinable
    public static func equals(_ name: String.UTF8View, _ lower: StaticString) -> Bool {
        lower.withUTF8Buffer { b in
            guard name.count == b.count else { return false }
            var i = 0
            for c in name {
                let folded = (c >= 65 && c <= 90) ? c | 0x20 : c
                guard folded == b[i] else { return false }
                i += 1
            }
            return true
        }
    }
}
