public import NIOCore
import Redis

/// Messages published on a channel, as an `AsyncSequence` of payloads.
///
/// The subscription ends when the sequence is dropped, its iterating task is
/// cancelled, or the store shuts down. On Redis it survives reconnects (the
/// channel is subscribed again), but messages published while disconnected
/// are lost: pub/sub is fire and forget.
public struct StoreSubscription: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer

    enum Source: Sendable {
        case memory(AsyncStream<ByteBuffer>)
        case redis(RedisSubscription)
    }

    let source: Source
    /// The messages dropped because this subscription's reader fell behind (4096 are kept).
    let losses: SubscriptionLosses

    init(source: Source, losses: SubscriptionLosses) {
        self.source = source
        self.losses = losses
    }

    /// How many messages were dropped so far because the reader fell 4096 behind: one that keeps state from them (a
    /// cache it invalidates on `revoked`) should start afresh when this grows.
    public var lostMessages: Int { losses.count }

    public struct AsyncIterator: AsyncIteratorProtocol {
        enum Inner {
            case memory(AsyncStream<ByteBuffer>.AsyncIterator)
            case redis(RedisSubscription.AsyncIterator)
        }

        var inner: Inner

        public mutating func next() async -> ByteBuffer? {
            switch self.inner {
            case .memory(var iterator):
                let value = await iterator.next()
                self.inner = .memory(iterator)
                return value
            case .redis(var iterator):
                let value = await iterator.next()?.payload
                self.inner = .redis(iterator)
                return value
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        switch self.source {
        case .memory(let stream): AsyncIterator(inner: .memory(stream.makeAsyncIterator()))
        case .redis(let subscription): AsyncIterator(inner: .redis(subscription.makeAsyncIterator()))
        }
    }
}
