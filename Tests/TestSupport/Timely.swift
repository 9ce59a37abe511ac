/// Runs `attempt` until it says its timing let it check what it meant to, `tries` times at most; returns whether one
/// did. For a check that needs one step to follow another within a bound (inside the same second of a rate window)
/// that a stalled machine can miss: the attempt returns false when it was too late to tell, instead of passing
/// without checking, and the caller expects `true` — a machine that stalls every time fails the test, loudly.
public func untilTimely(tries: Int = 3, _ attempt: (_ number: Int) async throws -> Bool) async rethrows -> Bool {
    for number in 1...max(1, tries) where try await attempt(number) { return true }
    return false
}
