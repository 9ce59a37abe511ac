/// Lower-case hex of `bytes` (`[0x0a, 0xff]` → `"0aff"`), for digests in keys and ETags.
public func lowercaseHex(_ bytes: some Sequence<UInt8>) -> String {
    var out: [UInt8] = []
    out.reserveCapacity(bytes.underestimatedCount * 2)
    for byte in bytes {
        out.append(hexDigits[Int(byte >> 4)])
        out.append(hexDigits[Int(byte & 0x0f)])
    }
    return String(decoding: out, as: UTF8.self)
}

private let hexDigits = Array("0123456789abcdef".utf8)
