import Foundation
internal import KISJSON
import Synchronization

/// A quotation answer read straight out of KIS's JSON by ``KISAnswerReader`` (simdjson), without `Codable`.
///
/// Every KIS quotation answer has the same shape: the envelope strings at the top, an optional object (`output1`)
/// and an optional array of row objects (`output2`), every value a JSON string. A conforming type names the fields
/// it reads and builds itself from what was found. Foundation's `JSONDecoder` took 0.6–0.9 ms for a 100-row page
/// on the 2-core bench machine, simdjson 0.03–0.04 ms (bench/HISTORY.md, "Miss path").
protocol KISTableAnswer: KISEnveloped, Decodable, Sendable {
    static var shape: KISTableShape { get }
    /// Nil when a field the type requires (the envelope's) is missing.
    init?(_ table: KISTable)
}

/// The field names a ``KISTableAnswer`` reads, as the C strings the reader takes (made once per type, kept for the
/// life of the process).
final class KISTableShape: @unchecked Sendable {
    static let envelope = ["rt_cd", "msg_cd", "msg1"]

    fileprivate let raw: UnsafeMutablePointer<kisjson_shape>
    var headFieldCount: Int { raw.pointee.head_count }
    var rowFieldCount: Int { raw.pointee.row_field_count }

    /// `head` and `rows` name the object and the array; `headFields` and `rowFields` the strings read in them.
    init(head: String?, headFields: [String], rows: String?, rowFields: [String]) {
        func names(_ list: [String]) -> UnsafePointer<UnsafePointer<CChar>?> {
            let p = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: max(list.count, 1))
            for (i, name) in list.enumerated() { p[i] = UnsafePointer(strdup(name)) }
            return UnsafePointer(p)
        }
        raw = .allocate(capacity: 1)
        raw.initialize(to: kisjson_shape(
            top: names(Self.envelope), top_count: Self.envelope.count,
            head: head.map { UnsafePointer(strdup($0)) }, head_fields: names(headFields), head_count: headFields.count,
            rows: rows.map { UnsafePointer(strdup($0)) }, row_fields: names(rowFields),
            row_field_count: rowFields.count))
    }
}

/// What the reader found, valid only inside ``KISAnswerReader/read(_:from:)``'s call of `init?(_:)`: each value is
/// copied into a `String` there.
struct KISTable {
    private let values: UnsafeBufferPointer<kisjson_text>
    private let headCount: Int
    private let width: Int
    /// The head object is there (neither absent nor `null`).
    let hasHead: Bool
    /// The rows array is there (neither absent nor `null`).
    let hasRows: Bool
    let rowCount: Int

    fileprivate init(_ values: UnsafeBufferPointer<kisjson_text>, _ table: kisjson_table, _ shape: KISTableShape) {
        self.values = values
        headCount = shape.headFieldCount
        width = shape.rowFieldCount
        hasHead = table.head_present != 0
        hasRows = table.rows_present != 0
        rowCount = table.row_count
    }

    /// The envelope's fields, in ``KISTableShape/envelope``'s order.
    var rt_cd: String? { string(0) }
    var msg_cd: String? { string(1) }
    var msg1: String? { string(2) }

    /// Field `field` (an index into the shape's `headFields`) of the head object.
    func head(_ field: Int) -> String? { string(KISTableShape.envelope.count + field) }

    /// Field `field` (an index into the shape's `rowFields`) of row `row`.
    func row(_ row: Int, _ field: Int) -> String? {
        string(KISTableShape.envelope.count + headCount + row * width + field)
    }

    private func string(_ index: Int) -> String? {
        let text = values[index]
        guard let bytes = text.bytes else { return nil }
        return String(decoding: UnsafeRawBufferPointer(start: bytes, count: text.length), as: UTF8.self)
    }
}

/// Why an answer could not be read.
struct KISAnswerReadError: Error, CustomStringConvertible {
    enum Kind { case notJSON, shape, missingEnvelope }
    let kind: Kind
    let description: String
}

/// Reads KIS answers with simdjson. Readers (each a simdjson parser with its buffers) are pooled, so a page is parsed
/// without allocating them again; a reader that has grown for an unusually long answer is not kept.
final class KISAnswerReader: Sendable {
    static let shared = KISAnswerReader()

    /// The longest answer read: the client accepts no longer body.
    static let maxBytes = 16 << 20
    /// Readers that read an answer longer than this are dropped after it rather than pooled.
    private static let keepBelowBytes = 1 << 20
    private static let maxIdle = 8

    private final class Handle: @unchecked Sendable {
        let raw: OpaquePointer
        init?() {
            guard let raw = kisjson_reader_create(KISAnswerReader.maxBytes) else { return nil }
            self.raw = raw
        }
        deinit { kisjson_reader_destroy(raw) }
    }

    private let idle = Mutex<[Handle]>([])

    func read<T: KISTableAnswer>(_ type: T.Type, from bytes: UnsafeRawBufferPointer) throws(KISAnswerReadError) -> T {
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), !bytes.isEmpty else {
            throw KISAnswerReadError(kind: .notJSON, description: "not JSON: the answer is empty")
        }
        guard let handle = idle.withLock({ $0.popLast() }) ?? Handle() else {
            throw KISAnswerReadError(kind: .notJSON, description: "out of memory reading the answer")
        }
        defer {
            if bytes.count < Self.keepBelowBytes {
                idle.withLock { if $0.count < Self.maxIdle { $0.append(handle) } }
            }
        }
        let shape = T.shape
        var table = kisjson_table()
        var message: UnsafePointer<CChar>?
        let code = kisjson_read_table(handle.raw, base, bytes.count, shape.raw, &table, &message)
        guard code == 0 else {
            throw KISAnswerReadError(kind: code == 1 ? .notJSON : .shape,
                                     description: message.map { String(cString: $0) } ?? "unreadable answer")
        }
        let count = KISTableShape.envelope.count + shape.headFieldCount + table.row_count * shape.rowFieldCount
        let values = UnsafeBufferPointer(start: table.values, count: count)
        guard let answer = T(KISTable(values, table, shape)) else {
            throw KISAnswerReadError(kind: .missingEnvelope, description: "the answer has no rt_cd, msg_cd or msg1")
        }
        return answer
    }
}

extension KISAnswerReader {
    /// The answer read with simdjson or, when simdjson refuses the body, with `JSONDecoder`; nil when neither reads
    /// it. simdjson checks the whole document and `JSONDecoder` only what it reads: an invalid UTF-8 sequence or a
    /// raw control character in a field the gateway never reads must not make a page unreadable.
    func answer<T: KISTableAnswer>(_ type: T.Type, from data: Data) -> T? {
        (try? read(T.self, from: data)) ?? (try? JSONDecoder().decode(T.self, from: data))
    }

    func read<T: KISTableAnswer>(_ type: T.Type, from data: Data) throws(KISAnswerReadError) -> T {
        try data.withUnsafeBytes { bytes in
            Result { () throws(KISAnswerReadError) in try self.read(T.self, from: bytes) }
        }.get()
    }
}

// MARK: - the chart pages

extension KISDomesticChartPage: KISTableAnswer {
    static let shape = KISTableShape(
        head: "output1", headFields: ["stck_prpr", "hts_kor_isnm"],
        rows: "output2",
        rowFields: ["stck_bsop_date", "stck_clpr", "stck_oprc", "stck_hgpr", "stck_lwpr", "acml_vol", "acml_tr_pbmn"])

    init?(_ t: KISTable) {
        guard let rt_cd = t.rt_cd, let msg_cd = t.msg_cd, let msg1 = t.msg1 else { return nil }
        self.rt_cd = rt_cd
        self.msg_cd = msg_cd
        self.msg1 = msg1
        output1 = t.hasHead ? Snapshot(stck_prpr: t.head(0), hts_kor_isnm: t.head(1)) : nil
        output2 = t.hasRows
            ? (0..<t.rowCount).map { r in
                Row(stck_bsop_date: t.row(r, 0), stck_clpr: t.row(r, 1), stck_oprc: t.row(r, 2),
                    stck_hgpr: t.row(r, 3), stck_lwpr: t.row(r, 4), acml_vol: t.row(r, 5), acml_tr_pbmn: t.row(r, 6))
            } : nil
    }
}

extension KISOverseasChartPage: KISTableAnswer {
    static let shape = KISTableShape(
        head: "output1", headFields: ["nrec"],
        rows: "output2", rowFields: ["xymd", "clos", "open", "high", "low", "tvol", "tamt"])

    init?(_ t: KISTable) {
        guard let rt_cd = t.rt_cd, let msg_cd = t.msg_cd, let msg1 = t.msg1 else { return nil }
        self.rt_cd = rt_cd
        self.msg_cd = msg_cd
        self.msg1 = msg1
        output1 = t.hasHead ? Summary(nrec: t.head(0)) : nil
        output2 = t.hasRows
            ? (0..<t.rowCount).map { r in
                Row(xymd: t.row(r, 0), clos: t.row(r, 1), open: t.row(r, 2), high: t.row(r, 3), low: t.row(r, 4),
                    tvol: t.row(r, 5), tamt: t.row(r, 6))
            } : nil
    }
}
