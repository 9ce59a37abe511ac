import KIS
public import NIOCore

/// `Date` values (IMF-fixdate), formatted once a second.
public struct HTTPDateCache {
    public init() {}

    private var second: Int64 = -1
    private var bytes = ByteBuffer()

    /// `Date: <IMF-fixdate>` and the blank line that ends a head.
    public mutating func line(at epoch: Int64) -> ByteBuffer {
        if epoch != second {
            second = epoch
            bytes = ByteBuffer(string: "Date: " + Self.format(epoch) + "\r\n\r\n")
        }
        return bytes
    }

    private static let days = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]  // 1970-01-01 was a Thursday
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7) for Unix seconds.
    public static func format(_ epoch: Int64) -> String {
        let day = epoch >= 0 ? epoch / 86400 : (epoch - 86399) / 86400
        let secs = Int(epoch - day * 86400)
        let (y, m, d) = CivilDate(dayNumber: Int(day)).components
        let weekday = Int(((day % 7) + 7) % 7)
        func two(_ v: some BinaryInteger) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(days[weekday]), \(two(d)) \(months[m - 1]) \(y) \(two(secs / 3600)):\(two(secs / 60 % 60)):\(two(secs % 60)) GMT"
    }
}
