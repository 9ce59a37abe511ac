import Store
import Testing

/// The rate-limit arithmetic shared by the Lua script and the memory store.
@Suite("GCRA")
struct GCRATests {
    let interval: Int64 = 100_000  // 10 per second

    @Test func burstThenSpacing() {
        var tat: Int64? = nil
        var now: Int64 = 1_000_000
        // Burst of 3 at one instant.
        for _ in 0..<3 {
            let outcome = GCRA.decide(tat: tat, now: now, interval: interval, burst: 3, cost: 1, maxWait: 0)
            #expect(outcome.allowed)
            #expect(outcome.wait == 0)
            tat = outcome.newTAT
        }
        let denied = GCRA.decide(tat: tat, now: now, interval: interval, burst: 3, cost: 1, maxWait: 0)
        #expect(!denied.allowed)
        #expect(denied.wait == interval)
        #expect(denied.newTAT == nil)
        // Exactly one interval later one more conforms.
        now += interval
        let next = GCRA.decide(tat: tat, now: now, interval: interval, burst: 3, cost: 1, maxWait: 0)
        #expect(next.allowed)
        #expect(next.wait == 0)
    }

    @Test func reservationsQueueInOrder() {
        var tat: Int64? = nil
        let now: Int64 = 5_000_000
        var waits: [Int64] = []
        for _ in 0..<5 {
            let outcome = GCRA.decide(tat: tat, now: now, interval: interval, burst: 1, cost: 1, maxWait: 1_000_000)
            #expect(outcome.allowed)
            waits.append(outcome.wait)
            tat = outcome.newTAT
        }
        #expect(waits == [0, 100_000, 200_000, 300_000, 400_000])
        // Beyond maxWait nothing is reserved.
        let tooLate = GCRA.decide(tat: tat, now: now, interval: interval, burst: 1, cost: 1, maxWait: 450_000)
        #expect(!tooLate.allowed)
        #expect(tooLate.wait == 500_000)
    }

    @Test func idleTimeDoesNotBankMoreThanTheBurst() {
        let stale: Int64 = 1_000
        let now: Int64 = 100_000_000
        var tat: Int64? = stale
        var allowed = 0
        for _ in 0..<10 {
            let outcome = GCRA.decide(tat: tat, now: now, interval: interval, burst: 4, cost: 1, maxWait: 0)
            if outcome.allowed {
                allowed += 1
                tat = outcome.newTAT
            }
        }
        #expect(allowed == 4)
    }

    @Test func costCountsAsSeveralRequests() {
        let now: Int64 = 0
        let outcome = GCRA.decide(tat: nil, now: now, interval: interval, burst: 5, cost: 3, maxWait: 0)
        #expect(outcome.allowed)
        #expect(outcome.newTAT == 300_000)
        let second = GCRA.decide(tat: outcome.newTAT, now: now, interval: interval, burst: 5, cost: 3, maxWait: 0)
        #expect(!second.allowed)
        #expect(second.wait == 100_000)
        #expect(outcome.keepFor == 300_000)
    }

    @Test func intervalRoundsUp() {
        #expect(RateLimit(rate: 18).intervalMicroseconds == 55_556)
        #expect(RateLimit(rate: 1).intervalMicroseconds == 1_000_000)
        #expect(RateLimit(rate: 3).intervalMicroseconds == 333_334)
    }

    /// What a rate-limit key must hold to count as a TAT (the Lua script reads it the same way).
    @Test func storedTAT() {
        #expect(GCRA.storedTAT("1732500000000000") == 1_732_500_000_000_000)
        #expect(GCRA.storedTAT("+42") == 42)
        #expect(GCRA.storedTAT("-42") == -42)
        #expect(GCRA.storedTAT("999999999999999999") == 999_999_999_999_999_999)
        for junk in ["", "+", "garbage", "12abc", "1.5", "1e300", "nan", "inf", " 42", "42 ", "0x10", "9999999999999999999"] {
            #expect(GCRA.storedTAT(junk) == nil, "\(junk.debugDescription)")
        }
    }

    /// Every positive rate gives an interval the stores can compute with: at most an hour (what `Int64` and Lua's
    /// doubles hold with room for `interval × cost`), at least a microsecond. Before, a rate below about 1.1e-13
    /// overflowed `Int64` and trapped — the gateway's first miss with `[kis] sandbox_rate_per_s = 1e-13`.
    @Test func intervalIsClamped() {
        let hour: Int64 = 3_600_000_000
        #expect(RateLimit(rate: 1e-13).intervalMicroseconds == hour)
        #expect(RateLimit(rate: .leastNonzeroMagnitude).intervalMicroseconds == hour)
        #expect(RateLimit(rate: 1.0 / 3600).intervalMicroseconds == hour)
        #expect(RateLimit(rate: 1.0 / 7200).intervalMicroseconds == hour)
        #expect(RateLimit(rate: 0.01).intervalMicroseconds == 100_000_000)
        #expect(RateLimit(rate: 1e7).intervalMicroseconds == 1)
        #expect(RateLimit(rate: .greatestFiniteMagnitude).intervalMicroseconds == 1)
        #expect(RateLimit(rate: .infinity).intervalMicroseconds == 1)
    }
}
