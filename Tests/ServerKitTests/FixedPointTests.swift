import Foundation
import ServerKit
import Testing

@Suite("fixedPoint")
struct FixedPointTests {
    @Test(arguments: [0, 0.04, 0.049, 1, 9.96, 33.12345, 123.0001, 0.51, 2.999, 1234567.891])
    func writesWhatStringFormatWrites(_ value: Double) {
        // Away from halves, where printf rounds the exact binary value and this the scaled one, half away from zero.
        for decimals in [0, 1, 2, 3] {
            #expect(fixedPoint(value, decimals: decimals) == String(format: "%.\(decimals)f", value))
        }
    }

    @Test func halvesRoundAwayFromZeroAndOddValuesFallBack() {
        #expect(fixedPoint(0.25, decimals: 1) == "0.3")
        #expect(fixedPoint(1.115, decimals: 2) == "1.12")
        #expect(fixedPoint(-1.5, decimals: 1) == "-1.5")
        #expect(fixedPoint(.infinity, decimals: 2) == "inf")
        #expect(fixedPoint(1e13, decimals: 1) == "\(1e13)")
    }
}
