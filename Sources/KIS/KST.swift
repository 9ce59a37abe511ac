public import Foundation

/// KIS writes token expiry as Korean wall-clock time with no offset (`2025-03-06 08:30:00`).
/// Korea has no daylight saving, so KST is a fixed UTC+9.
public enum KST {
    public static let offsetSeconds = 9 * 3600

    /// Formats `instant` as `YYYY-MM-DD HH:MM:SS` in KST.
    public static func format(_ instant: Date) -> String {
        let local = Int(instant.timeIntervalSince1970.rounded(.down)) + offsetSeconds
        let day = Int((Double(local) / 86400).rounded(.down))
        let secs = local - day * 86400
        let d = CivilDate(dayNumber: day)
        return d.iso + " " + two(secs / 3600) + ":" + two(secs / 60 % 60) + ":" + two(secs % 60)
    }

    /// Parses `YYYY-MM-DD HH:MM:SS` as KST; nil if malformed.
    public static func parse(_ text: String) -> Date? {
        let parts = text.split(separator: " ")
        guard parts.count == 2, let date = CivilDate(parts[0]), parts[0].count == 10 else { return nil }
        let hms = parts[1].split(separator: ":")
        guard hms.count == 3, let h = Int(hms[0]), let m = Int(hms[1]), let s = Int(hms[2]),
            (0..<24).contains(h), (0..<60).contains(m), (0..<60).contains(s)
        else { return nil }
        let local = date.dayNumber * 86400 + h * 3600 + m * 60 + s
        return Date(timeIntervalSince1970: TimeInterval(local - offsetSeconds))
    }

    /// ISO 8601 with the +09:00 offset (`2024-11-26T14:00:00+09:00`), as the broker answers.
    public static func iso8601(_ instant: Date) -> String {
        format(instant).replacingOccurrences(of: " ", with: "T") + "+09:00"
    }

    private static func two(_ v: Int) -> String { v < 10 ? "0\(v)" : String(v) }
}
