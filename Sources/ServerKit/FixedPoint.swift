/// `value` with `decimals` digits after the point (0...6): what `String(format: "%.Nf", value)` writes for
/// timings, without Foundation's formatter on every request. The value is scaled, then rounded half away from
/// zero, so the last digit can differ from printf's (which rounds the exact binary value) where the scaled value
/// lands on a half: 1.115 → "1.12" (printf "1.11"), 0.25 → "0.3" ("0.2").
/// Other values (negative, not finite, 10¹² or more) are written by `description`.
public func fixedPoint(_ value: Double, decimals: Int) -> String {
    precondition((0...6).contains(decimals), "0 to 6 decimals")
    var scale: Int64 = 1
    for _ in 0..<decimals { scale *= 10 }
    guard value.isFinite, value >= 0, value < 1e12 else { return "\(value)" }
    let units = Int64((value * Double(scale)).rounded())
    let whole = units / scale
    guard decimals > 0 else { return String(whole) }
    let fraction = String(units % scale)
    return String(whole) + "." + String(repeating: "0", count: decimals - fraction.count) + fraction
}
