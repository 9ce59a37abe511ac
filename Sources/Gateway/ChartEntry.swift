import Crypto
import Foundation
import KIS
import NIOCore
import Tokens

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
        self.etag = "\"" + lowercaseHex(SHA256.hash(data: body.readableBytesView).prefix(12)) + "\""
    }

    private init(body: ByteBuffer, etag: String, storedAt: Int64, freshUntil: Int64) {
        self.body = body
        self.etag = etag
        self.storedAt = storedAt
        self.freshUntil = freshUntil
    }

    /// Bytes this entry holds, for the L1's byte bound: the body's whole allocation (a `ByteBuffer`'s storage is a
    /// power of two, up to twice the body), not only the body's bytes, so that the bound is on memory.
    var cost: Int { body.capacity + etag.utf8.count + 64 }

    /// `Cache-Control: max-age` at `now` (Unix seconds): the entry's whole freshness lifetime while it is fresh, 0
    /// past it. A cache — the browser's — holds an answer fresh while its `max-age` exceeds its age, which counts from
    /// the `Age` header on (RFC 9111 §4.2): what is left of the freshness goes without saying, and a `max-age` of
    /// what is left would be counted down twice.
    func maxAge(at now: Int64) -> Int64 { now < freshUntil ? freshUntil - storedAt : 0 }

    /// `Age` at `now`: seconds since the entry was stored (by this gateway or another).
    func age(at now: Int64) -> Int64 { max(0, now - storedAt) }

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
        // A copy of its own: the store's value can be a slice of a whole received buffer, which an L1 entry must
        // not keep alive.
        return ChartEntry(body: ByteBuffer(bytes: view[(newline + 1)...]), etag: String(parts[3]), storedAt: stored,
                          freshUntil: fresh)
    }

    // MARK: the response body

    static func render(_ query: ChartQuery, chart: DailyChart) -> ByteBuffer {
        // Written piece by piece into the buffer: no interpolated string per candle (a miss renders up to thousands).
        var out = ByteBuffer()
        out.reserveCapacity(256 + chart.candles.count * 120)
        out.writeStaticString("{\"market\":\"")
        out.writeString(query.market.rawValue)
        out.writeStaticString("\",\"exchange\":\"")
        out.writeString(query.exchange.rawValue)
        out.writeStaticString("\",\"symbol\":")
        out.writeString(jsonString(query.symbol))
        if let name = chart.name, !name.isEmpty {
            out.writeStaticString(",\"name\":")
            out.writeString(jsonString(name))
        }
        out.writeStaticString(",\"currency\":\"")
        out.writeString(query.exchange.currency)
        out.writeStaticString("\",\"period\":\"")
        out.writeString(query.period)
        out.writeStaticString(query.adjusted ? "\",\"adjusted\":true,\"start\":\"" : "\",\"adjusted\":false,\"start\":\"")
        out.writeString(query.start.iso)
        out.writeStaticString("\",\"end\":\"")
        out.writeString(query.end.iso)
        out.writeStaticString("\",\"candles\":[")
        for (i, c) in chart.candles.enumerated() {
            out.writeStaticString(i == 0 ? "{\"date\":\"" : ",{\"date\":\"")
            out.writeString(c.date.iso)
            out.writeStaticString("\",\"open\":")
            out.writeString(c.open.text)
            out.writeStaticString(",\"high\":")
            out.writeString(c.high.text)
            out.writeStaticString(",\"low\":")
            out.writeString(c.low.text)
            out.writeStaticString(",\"close\":")
            out.writeString(c.close.text)
            out.writeStaticString(",\"volume\":")
            out.writeString(c.volume.text)
            if let t = c.turnover {
                out.writeStaticString(",\"turnover\":")
                out.writeString(t.text)
            }
            out.writeStaticString("}")
        }
        out.writeStaticString("]}")
        return out
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
