import Synchronization

/// The in-process cache in front of the shared store: bounded by entries and by bytes, evicting with the CLOCK
/// algorithm (an LRU approximation whose hits only set a bit, so a hit costs one short lock and no reordering).
/// `maxEntries` 0 turns it off (`[cache] l1_entries = 0`): it keeps nothing.
final class L1Cache<Value: Sendable>: Sendable {
    private struct Slot {
        var key: String
        var value: Value
        var cost: Int
        var referenced: Bool
    }

    private struct State {
        var index: [String: Int] = [:]
        var slots: [Slot?] = []
        var free: [Int] = []
        var hand = 0
        var bytes = 0
    }

    let maxEntries: Int
    let maxBytes: Int
    private let state = Mutex(State())

    init(maxEntries: Int, maxBytes: Int) {
        self.maxEntries = max(0, maxEntries)
        self.maxBytes = max(1, maxBytes)
    }

    func get(_ key: String) -> Value? {
        state.withLock { s in
            guard let i = s.index[key] else { return nil }
            s.slots[i]!.referenced = true
            return s.slots[i]!.value
        }
    }

    func set(_ key: String, _ value: Value, cost: Int) {
        guard maxEntries > 0, cost <= maxBytes else { return }
        state.withLock { s in Self.insert(&s, key, value, cost: cost, maxEntries: maxEntries, maxBytes: maxBytes) }
    }

    /// Keeps `value` under `key` unless what `key` holds already is to be kept instead (`keepsHeld(held)`), in one
    /// step: a copy read from the shared store while this process fetched a newer one does not replace it. Returns
    /// what `key` holds afterwards (`value` when nothing is kept: the cache off, or `value` too large).
    func offer(_ key: String, _ value: Value, cost: Int, keepsHeld: (_ held: Value) -> Bool) -> Value {
        guard maxEntries > 0, cost <= maxBytes else { return value }
        return state.withLock { s in
            if let i = s.index[key], keepsHeld(s.slots[i]!.value) {
                s.slots[i]!.referenced = true
                return s.slots[i]!.value
            }
            Self.insert(&s, key, value, cost: cost, maxEntries: maxEntries, maxBytes: maxBytes)
            return value
        }
    }

    private static func insert(_ s: inout State, _ key: String, _ value: Value, cost: Int, maxEntries: Int,
                               maxBytes: Int) {
        if let i = s.index[key] {
            s.bytes += cost - s.slots[i]!.cost
            s.slots[i] = Slot(key: key, value: value, cost: cost, referenced: true)
        } else {
            let slot = Slot(key: key, value: value, cost: cost, referenced: false)
            if let i = s.free.popLast() {
                s.slots[i] = slot
                s.index[key] = i
            } else {
                s.slots.append(slot)
                s.index[key] = s.slots.count - 1
            }
            s.bytes += cost
        }
        evict(&s, maxEntries: maxEntries, maxBytes: maxBytes, keep: key)
    }

    func remove(_ key: String) {
        state.withLock { s in
            guard let i = s.index.removeValue(forKey: key) else { return }
            s.bytes -= s.slots[i]!.cost
            s.slots[i] = nil
            s.free.append(i)
        }
    }

    var count: Int { state.withLock { $0.index.count } }
    var bytes: Int { state.withLock { $0.bytes } }

    private static func evict(_ s: inout State, maxEntries: Int, maxBytes: Int, keep: String) {
        var guardSteps = 0
        while s.index.count > maxEntries || s.bytes > maxBytes, guardSteps < 4 * s.slots.count + 8 {
            guardSteps += 1
            if s.hand >= s.slots.count { s.hand = 0 }
            defer { s.hand += 1 }
            guard let slot = s.slots[s.hand], slot.key != keep else { continue }
            if slot.referenced {
                s.slots[s.hand]!.referenced = false
                continue
            }
            s.index.removeValue(forKey: slot.key)
            s.bytes -= slot.cost
            s.slots[s.hand] = nil
            s.free.append(s.hand)
        }
    }
}
