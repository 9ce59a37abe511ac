import Crypto
import Foundation
import KIS
import NIOCore

/// A cached chart: the encoded body ready to write, its ETag, and when it was stored and stops being fresh.
/// Immutable and shared between requests: the hit path does no JSON work.
struct ChartEntry: Sendable {
    let body: ByteBuffer
    let etag: String
    /// Unix seconds.
    let storedAt: Int64
    let freshUntil: Int64

    init(body: ByteBuffer, storedAt: Int64, freshUntil: Int64) {
        self.body = body
        self.storedAt = storedAt
        self.freshUntil = freshUntil
        let digest = SHA256.hash(data: body.readableBytesView)
        self.etag = "\"" + digest.prefix(12).map { String(format: "%02x", $0) }.joined() + "\""
    }

    private init(body: ByteBuffer, etag: String, storedAt: Int64, freshUntil: Int64) {
        self.body = body
        self.etag = etag
        self.storedAt = storedAt
        self.freshUntil = freshUntil
    }

    /// Bytes this entry holds, for the L1's byte bound.
    var cost: Int { body.readableBytes + etag.utf8.count + 64 }

    // MARK: store encoding: "kc1 <storedAt> <freshUntil> <etag>\n<body>"

    func encoded() -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(body.readableBytes + 64)
        out.writeString("kc1 \(storedAt) \(freshUntil) \(etag)\n")
        out.writeImmutableBuffer(body)
        return out
    }

    static func decode(_ buffer: ByteBuffer) -> ChartEntry? {
        let view = buffer.readableBytesView
        guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let headerLength = newline - view.startIndex
        guard let header = buffer.getString(at: buffer.readerIndex, length: headerLength) else { return nil }
        let parts = header.split(separator: " ")
        guard parts.count == 4, parts[0] == "kc1", let stored = Int64(parts[1]), let fresh = Int64(parts[2]) else {
            return nil
        }
        guard let body = buffer.getSlice(at: buffer.readerIndex + headerLength + 1,
                                         length: buffer.readableBytes - headerLength - 1) else { return nil }
        return ChartEntry(body: body, etag: String(parts[3]), storedAt: stored, freshUntil: fresh)
    }

    // MARK: the response body

    static func render(_ query: ChartQuery, chart: DailyChart) -> ByteBuffer {
        var s = ""
        s.reserveCapacity(96 + chart.candles.count * 110)
        s += "{\"market\":\"\(query.market.rawValue)\",\"exchange\":\"\(query.exchange.rawValue)\",\"symbol\":"
        s += jsonString(query.symbol)
        if let name = chart.name, !name.isEmpty { s += ",\"name\":" + jsonString(name) }
        s += ",\"currency\":\"\(query.exchange.currency)\",\"period\":\"\(query.period)\",\"adjusted\":\(query.adjusted)"
        s += ",\"start\":\"\(query.start.iso)\",\"end\":\"\(query.end.iso)\",\"candles\":["
        for (i, c) in chart.candles.enumerated() {
            if i > 0 { s += "," }
            s += "{\"date\":\"\(c.date.iso)\",\"open\":\(c.open.text),\"high\":\(c.high.text),\"low\":\(c.low.text)"
            s += ",\"close\":\(c.close.text),\"volume\":\(c.volume.text)"
            if let t = c.turnover { s += ",\"turnover\":\(t.text)" }
            s += "}"
        }
        s += "]}"
        return ByteBuffer(string: s)
    }

    static func jsonString(_ v: String) -> String {
        var out = "\""
        for scalar in v.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20: out += String(format: "\\u%04x", c.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
