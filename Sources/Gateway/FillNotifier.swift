import Synchronization

/// Wakes the requests waiting for a cache key that another gateway (or this one) has just filled.
/// Fed by the store's pub/sub; every wait also ends by itself after its timeout, so a lost message costs one
/// short poll, never a hang.
final class FillNotifier: Sendable {
    private struct State {
        var waiters: [String: [Int: CheckedContinuation<Void, Never>]] = [:]
        var nextID = 0
    }

    private let state = Mutex(State())

    func notify(_ key: String) {
        let continuations = state.withLock { $0.waiters.removeValue(forKey: key) } ?? [:]
        for c in continuations.values { c.resume() }
    }

    /// Returns when `key` is filled or after `timeout`, whichever comes first.
    func wait(for key: String, timeout: Duration) async {
        let id = state.withLock { s -> Int in
            s.nextID += 1
            return s.nextID
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            state.withLock { $0.waiters[key, default: [:]][id] = c }
            Task {
                try? await Task.sleep(for: timeout)
                self.resume(key: key, id: id)
            }
        }
    }

    private func resume(key: String, id: Int) {
        let c = state.withLock { s -> CheckedContinuation<Void, Never>? in
            let c = s.waiters[key]?.removeValue(forKey: id)
            if s.waiters[key]?.isEmpty == true { s.waiters.removeValue(forKey: key) }
            return c
        }
        c?.resume()
    }

    var waiting: Int { state.withLock { $0.waiters.values.reduce(0) { $0 + $1.count } } }
}
