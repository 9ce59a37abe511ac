package import Logging
package import NIOCore

/// A command on its way to the socket: RESP bytes already encoded by the caller.
package struct RedisRequest: Sendable {
    package var bytes: ByteBuffer
    /// Completed with the reply; `nil` for commands whose replies arrive as
    /// pushes (SUBSCRIBE and friends on a pub/sub connection).
    package var reply: RedisPendingReply?
    package var deadline: NIODeadline

    package init(bytes: ByteBuffer, reply: RedisPendingReply?, deadline: NIODeadline) {
        self.bytes = bytes
        self.reply = reply
        self.deadline = deadline
    }
}

/// What the handler accepts from the pipeline's tail.
package enum RedisOutbound: Sendable {
    case one(RedisRequest)
    /// Several commands written back to back with one flush.
    case batch([RedisRequest])
}

/// Outbound user events understood by ``RedisChannelHandler``.
package enum RedisHandlerEvent: Sendable {
    /// From now on every reply is a pub/sub push and goes to the closure
    /// (called on the event loop).
    case enterPubSub(@Sendable (RESPValue) -> Void)
}

/// The thin NIO side of a connection: writes encoded commands, feeds received
/// bytes to hiredis's reader and matches replies to commands in FIFO order.
/// All decisions are taken by ``ConnectionStateMachine``.
package final class RedisChannelHandler: ChannelDuplexHandler {
    package typealias InboundIn = ByteBuffer
    package typealias OutboundIn = RedisOutbound
    package typealias OutboundOut = ByteBuffer

    private var state: ConnectionStateMachine<RedisPendingReply>
    private let reader = HiredisReader()
    private let logger: Logger
    private var timer: Scheduled<Void>?
    private var flushPending = false
    private var context: ChannelHandlerContext?
    private var pushHandler: (@Sendable (RESPValue) -> Void)?

    package init(maximumAbandoned: Int, stallLimit: TimeAmount? = nil, logger: Logger) {
        self.state = ConnectionStateMachine(maximumAbandoned: maximumAbandoned, stallLimit: stallLimit)
        self.logger = logger
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.closeState(RedisError(.connectionClosed, "connection handler removed"))
        self.context = nil
    }

    package func channelInactive(context: ChannelHandlerContext) {
        self.closeState(RedisError(.connectionClosed, "connection to Redis closed with the command in flight"))
        context.fireChannelInactive()
    }

    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("redis connection error", metadata: ["error": "\(error)"])
        let redisError = error as? RedisError ?? RedisError(.connectionClosed, "connection error: \(error)")
        self.closeState(redisError)
        context.close(promise: nil)
    }

    // MARK: outbound

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch self.unwrapOutboundIn(data) {
        case .one(let request):
            self.write(request, context: context)
        case .batch(let requests):
            for request in requests { self.write(request, context: context) }
        }
        promise?.succeed()
        self.scheduleFlush(context: context)
    }

    /// Writes requests handed over directly by ``RedisConnection`` (not through
    /// the pipeline), then flushes at once (`flushNow`) or coalesced with other
    /// writes of this event-loop tick.
    ///
    /// Once the handler is closed or removed from the pipeline every request
    /// fails with ``RedisError/Code/connectionClosed``; none is ever dropped.
    package func submit(_ requests: some Collection<RedisRequest>, flushNow: Bool) {
        guard let context = self.context else {
            let error = RedisError(.connectionClosed, "connection to Redis closed before the command was sent")
            for request in requests { request.reply?.fail(error) }
            return
        }
        for request in requests { self.write(request, context: context) }
        if flushNow {
            self.flushPending = false
            context.flush()
        } else {
            self.scheduleFlush(context: context)
        }
    }

    private func write(_ request: RedisRequest, context: ChannelHandlerContext) {
        guard let reply = request.reply else {
            // A push-answered command (pub/sub); nothing to pair.
            if self.state.isActive {
                context.write(self.wrapOutboundOut(request.bytes), promise: nil)
            }
            return
        }
        switch self.state.enqueue(reply, deadline: request.deadline) {
        case .fail(let reply, let error):
            reply.fail(error)
        case .write(let arm):
            context.write(self.wrapOutboundOut(request.bytes), promise: nil)
            if let arm { self.arm(arm, context: context) }
        }
    }

    /// Coalesces flushes: all writes that reach the loop before the flush task
    /// runs go out with one syscall.
    private func scheduleFlush(context: ChannelHandlerContext) {
        guard !self.flushPending else { return }
        self.flushPending = true
        context.eventLoop.assumeIsolated().execute {
            self.flushPending = false
            self.context?.flush()
        }
    }

    package func flush(context: ChannelHandlerContext) {
        self.flushPending = false
        context.flush()
    }

    package func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let event = event as? RedisHandlerEvent {
            switch event {
            case .enterPubSub(let handler):
                self.pushHandler = handler
            }
            promise?.succeed()
        } else {
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }

    // MARK: inbound

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try self.reader.read(self.unwrapInboundIn(data), allocator: context.channel.allocator) { value throws(RedisError) in
                try self.received(value)
            }
        } catch {
            self.logger.warning("closing redis connection", metadata: ["error": "\(error)"])
            self.closeState(error)
            context.close(promise: nil)
        }
    }

    private func received(_ value: RESPValue) throws(RedisError) {
        if let pushHandler = self.pushHandler, self.state.pending.isEmpty {
            pushHandler(value)
            return
        }
        switch self.state.received(value) {
        case .succeed(let reply, let value):
            reply.succeed(value)
        case .fail(let reply, let error):
            reply.fail(error)
        case .discard:
            break
        case .close(let error):
            throw error
        }
    }

    // MARK: timer

    private func arm(_ deadline: NIODeadline, context: ChannelHandlerContext) {
        self.timer?.cancel()
        let loop = context.eventLoop.assumeIsolated()
        self.timer = loop.scheduleTask(deadline: deadline) {
            self.timerFired()
        }
    }

    private func timerFired() {
        self.timer = nil
        let action = self.state.timerFired(now: .now())
        for reply in action.expired {
            reply.fail(RedisError(.timeout, "Redis did not reply in time"))
        }
        if let error = action.close {
            self.logger.warning("recycling redis connection", metadata: ["reason": "\(error.message)"])
            self.closeState(error)
            self.context?.close(promise: nil)
            return
        }
        if let next = action.rearm, let context = self.context {
            self.arm(next, context: context)
        }
    }

    private func closeState(_ error: RedisError) {
        self.timer?.cancel()
        self.timer = nil
        for reply in self.state.close(error) {
            reply.fail(error)
        }
    }
}

@available(*, unavailable)
extension RedisChannelHandler: Sendable {}
