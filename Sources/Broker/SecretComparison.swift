/// Whether two app secrets are the same, compared byte for byte (their UTF-8) in a time that does not depend on where
/// they differ: every byte of the longer one is looked at and no comparison ends early on content, so how long an
/// answer takes tells nothing of how much of a guessed secret was right. (`==` on `String` stops at the first
/// difference, and equates canonically equivalent text, which two secrets sent to KIS as header values are not.)
///
/// Every comparison of an app secret in the broker goes through it.
func secretsEqual(_ a: String, _ b: String) -> Bool {
    var a = a, b = b
    return a.withUTF8 { x in
        b.withUTF8 { y in
            // The lengths' difference counts as a difference; the bytes are compared over the longer length all the
            // same (a missing byte reads as 0, its absence already counted).
            var difference = UInt64(truncatingIfNeeded: x.count ^ y.count)
            let count = max(x.count, y.count)
            var i = 0
            while i < count {
                let p: UInt8 = i < x.count ? x[i] : 0
                let q: UInt8 = i < y.count ? y[i] : 0
                difference |= UInt64(p ^ q)
                i += 1
            }
            return difference == 0
        }
    }
}
