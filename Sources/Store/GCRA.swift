/// The generic cell rate algorithm, in integer microseconds.
///
/// The same arithmetic runs in Lua inside Redis (``RedisStore``) and in Swift
/// (``MemoryStore``). The state is one number per key, the *theoretical
/// arrival time* (TAT): when the next request would be on schedule if
/// requests came exactly every `interval`. A request of `cost` units pushes
/// the TAT `interval × cost` ahead; it conforms when the new TAT is at most
/// `interval × burst` ahead of now. If it would conform within `maxWait`, the
/// TAT is stored anyway and the caller waits the difference: a reservation.
public enum GCRA {
    /// A decision and the state to store.
    public struct Outcome: Sendable, Hashable {
        /// Whether the request was admitted (possibly after ``wait``).
        public var allowed: Bool
        /// Microseconds until the request conforms (for admitted requests: how long to wait first).
        public var wait: Int64
        /// The TAT to store if admitted.
        public var newTAT: Int64?
        /// How long the stored TAT stays relevant (its key's expiry), in microseconds.
        public var keepFor: Int64
    }

    /// Decides one request.
    ///
    /// - Parameters:
    ///   - tat: the stored TAT, or `nil` if none (or expired).
    ///   - now: current time in microseconds.
    ///   - interval: emission interval in microseconds (> 0).
    ///   - burst: requests allowed back to back (≥ 1).
    ///   - cost: units this request consumes (≥ 0).
    ///   - maxWait: the longest wait the caller accepts, in microseconds; a negative one (a deadline already passed)
    ///     is zero, as ``RedisStore`` sends it to the script.
    public static func decide(tat: Int64?, now: Int64, interval: Int64, burst: Int64, cost: Int64, maxWait: Int64) -> Outcome {
        let base = max(tat ?? now, now)
        let newTAT = base + interval * cost
        let wait = max(0, newTAT - interval * burst - now)
        if wait > max(0, maxWait) {
            return Outcome(allowed: false, wait: wait, newTAT: nil, keepFor: 0)
        }
        return Outcome(allowed: true, wait: wait, newTAT: newTAT, keepFor: newTAT - now)
    }

    /// The TAT a rate-limit key holds as text: an optional sign and 1 to 18 digits (what the stores write, with room
    /// to spare: 10^18 µs is 31,000 years). Anything else — not a number, a fraction, `nan`, a number beyond that —
    /// is `nil`, and the key counts as absent: the decision replaces it. The Lua version reads it the same way, so
    /// both stores decide alike on a key written by hand or by another program (store.md).
    public static func storedTAT(_ text: String) -> Int64? {
        var digits = Substring(text)
        if let sign = digits.first, sign == "+" || sign == "-" { digits = digits.dropFirst() }
        guard (1...18).contains(digits.utf8.count), digits.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return Int64(text)
    }

    /// `kisgw_gcra(key, interval, burst, cost, maxwait)`: the Lua version of
    /// ``decide(tat:now:interval:burst:cost:maxWait:)`` as a local function, for the store's scripts (`EVALSHA`).
    /// `key` holds the TAT; the others are µs or counts. Time comes from the Redis server (`TIME`), so every gateway
    /// shares one clock. Returns `{allowed (0/1), wait_us}`.
    static let luaFunction = """
        local function kisgw_gcra(key, interval, burst, cost, maxwait)
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
            interval = tonumber(interval)
            burst = tonumber(burst)
            cost = tonumber(cost)
            maxwait = tonumber(maxwait)
            local tat = now
            -- What is not a TAT (GCRA.storedTAT: a sign and 1 to 18 digits), or a key of another type (GET's error),
            -- counts as absent, as in the memory store; the SET below replaces it.
            local stored = redis.pcall('GET', key)
            if type(stored) == 'string' then
                local digits = string.match(stored, '^[+-]?(%d+)$')
                if digits and #digits <= 18 then
                    local t = tonumber(stored)
                    if t > now then tat = t end
                end
            end
            local newtat = tat + interval * cost
            local wait = newtat - interval * burst - now
            if wait < 0 then wait = 0 end
            if wait > maxwait then
                return {0, wait}
            end
            local keep = math.floor((newtat - now) / 1000) + 1
            redis.call('SET', key, string.format('%d', newtat), 'PX', keep)
            return {1, wait}
        end

        """
}
