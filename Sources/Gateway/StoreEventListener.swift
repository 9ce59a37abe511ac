import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Store
import Tokens

/// Listens to the store's channels for as long as the gateway runs: `events` (a `revoked` token is forgotten at
/// once) and the chart-filled channel (wakes requests waiting on another gateway's fetch). Subscriptions are
/// retried with backoff while the store is down. When a `revoked` event may have gone by unseen — the subscriptions
/// resume after the store's pub/sub connection was lost, or an event was dropped because this listener fell 4096
/// behind on the events channel — every remembered KIS token decision is dropped, and the next request for each token
/// reads its record again. (Fill notices lost the same way only cost their waiters a poll.)
struct StoreEventListener: Service {
    let store: any SharedStore
    let authorizer: TokenAuthorizer
    let notifier: FillNotifier
    let filledChannel: String
    let logger: Logger
    /// Where malformed events are logged (one line a minute at most).
    let failures: ThrottledLog

    private struct Event: Decodable {
        var type: String
        var sha256: String
    }

    func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.listen(to: TokenDirectory.eventsChannel, onLoss: {
                    self.authorizer.forgetAll()
                    self.logger.warning("token events were dropped (this gateway fell behind): KIS token decisions dropped")
                }, onSubscribed: { retried in
                    // Until now no event reached this gateway — since it started, or since the last subscription
                    // ended (the channel refused, the store down): a decision taken meanwhile may be of a token revoked
                    // since, and would be kept up to its recheck. Each is taken again from the token's record.
                    self.authorizer.forgetAll()
                    if retried {
                        self.logger.notice("token events subscribed after a failure: KIS token decisions dropped")
                    }
                }) { self.handleEvent($0) }
            }
            group.addTask { await self.listen(to: self.filledChannel) { self.notifier.notify(String(buffer: $0)) } }
            group.addTask {
                let gaps = self.store.subscriptionGaps()
                await cancelWhenGracefulShutdown {
                    for await _ in gaps {
                        self.authorizer.forgetAll()
                        self.logger.notice("store subscriptions resumed after a gap: KIS token decisions dropped")
                    }
                }
            }
            await group.waitForAll()
        }
    }

    private func handleEvent(_ payload: ByteBuffer) {
        guard let event = try? JSONDecoder().decode(Event.self, from: Data(payload.readableBytesView)) else {
            // Not store.md's shape: a publisher of another version, or a hand-typed PUBLISH. Skipped, and said once a
            // minute at most, with the payload's size and first bytes only (it came from outside: it may hold anything).
            failures.warning(
                kind: "malformed event", "a malformed event on the events channel was skipped",
                metadata: ["bytes": "\(payload.readableBytes)",
                           "start": "\(ThrottledLog.excerpt(payload.readableBytesView, max: 32))"])
            return
        }
        if event.type == "revoked" { authorizer.forget(sha256: event.sha256) }
    }

    /// - Parameters:
    ///   - onLoss: called when messages of the channel were dropped because this reader fell behind, before the next
    ///     message is handled.
    ///   - onSubscribed: called each time the store has confirmed the channel's subscription, before its first message
    ///     is handled; `retried` when an attempt failed or a subscription ended before.
    private func listen(to channel: String, onLoss: (@Sendable () -> Void)? = nil,
                        onSubscribed: (@Sendable (_ retried: Bool) -> Void)? = nil,
                        _ handle: @escaping @Sendable (ByteBuffer) -> Void) async {
        var delay = Duration.milliseconds(100)
        var retried = false
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            defer { retried = true }
            do {
                let subscription = try await store.subscribe(to: channel)
                onSubscribed?(retried)
                delay = .milliseconds(100)
                // One task reads the whole subscription until graceful shutdown. `cancelOnGracefulShutdown()` on the
                // sequence merges it with the shutdown signal, which hands every message through a task of its own:
                // a second thread hand-off for each message (each fill notice, i.e. each miss of every gateway).
                await cancelWhenGracefulShutdown {
                    var lost = 0
                    for await message in subscription {
                        if let onLoss, subscription.lostMessages != lost {
                            lost = subscription.lostMessages
                            onLoss()
                        }
                        handle(message)
                    }
                }
            } catch {
                // Says why: a Redis user refused the channel (NOPERM: ACL `resetchannels`, `-subscribe`) is not an
                // outage, and revocations do not reach this gateway until it is allowed.
                logger.warning("store subscription failed; retrying",
                               metadata: ["channel": "\(channel)", "error": "\(error)"])
            }
            // The backoff ends early on graceful shutdown (up to 5 s while the store is down).
            try? await cancelWhenGracefulShutdown { [delay] in try await Task.sleep(for: delay) }
            delay = min(delay * 2, .seconds(5))
        }
    }
}
