import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import ServerKit

/// Hummingbird's HTTP/1.1 child channel with the gateway's hit path (`HitPathHandler`) in front of the
/// conversion to HTTPTypes: the same pipeline as `HTTP1Channel`, plus one handler.
struct GatewayHTTP1Channel: HTTPChannelHandler {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>

    let responder: HTTPChannelHandler.Responder
    let hitPath: HitPath
    /// How long a connection may sit with no request part read and nothing in progress (`HitPathHandler`).
    let idleTimeout: Duration?

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            var limits = NIOHTTPDecoderLimitConfiguration()
            // `[server] max_header_bytes` is enforced on the parsed head (`HitPath.HeadSize`), where the request's
            // `Origin` is known and the refusal can carry CORS headers; the decoder stops reading at twice the limit
            // (a head longer than that is refused without them).
            limits.maxHeaderFieldSize = 2 * hitPath.maxHeaderBytes
            limits.maxHeaderListSize = 2 * hitPath.maxHeaderBytes
            limits.maxHeaderFieldCount = 1000  // Hummingbird's default
            // What `configureHTTPServerPipeline` sets up without pipelining assistance (the hit path and the async
            // channel keep answers in order), error handling (Hummingbird answers parse errors) or header
            // validation — but with the encoder and decoder unpaired: paired, the decoder tells the encoder every
            // request's method, and the encoder pairs them with the heads it writes, which the hit path's answers
            // do not go through. `HitPathHandler` keeps that record for the requests it passes on instead.
            try channel.pipeline.syncOperations.addHandler(HTTPResponseEncoder(configuration: .init()))
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder(
                leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop, limitConfiguration: limits)))
            try channel.pipeline.syncOperations.addHandler(
                HitPathHandler(path: hitPath, idleTimeout: idleTimeout.map { TimeAmount($0) }))
            // What the hit path passes on (it answers only requests that keep the connection) keeps HTTP/1.1's
            // persistence rules at the router too. The hit path answers the requests the decoder refuses.
            try channel.pipeline.syncOperations.addHandler(ConnectionCloseHandler(answersRefusals: false))
            try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            // No idle timeout here: this handler sees only what the router answers (`HitPathHandler` keeps it).
            try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
            return try NIOAsyncChannel(wrappingChannelSynchronously: channel,
                                       configuration: .init(isOutboundHalfClosureEnabled: true))
        }
    }

    func handle(value asyncChannel: Value, logger: Logger) async {
        await handleHTTP(asyncChannel: asyncChannel, logger: logger)
    }
}

extension HTTPServerBuilder {
    /// HTTP/1.1 with the gateway's hit path.
    static func gateway(hitPath: HitPath, idleTimeout: Duration? = nil) -> HTTPServerBuilder {
        .init { responder in
            GatewayHTTP1Channel(responder: responder, hitPath: hitPath, idleTimeout: idleTimeout)
        }
    }
}
