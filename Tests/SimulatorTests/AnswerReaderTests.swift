import Foundation
@testable import KIS
import Testing
@testable import Simulator
import TestSupport

/// The simdjson reader the KIS client reads chart pages with must read exactly what `JSONDecoder` reads from the
/// same bytes: the simulator's real answers over a real socket, and hand-made bodies for what it never sends.
@Suite("KIS answer reader (simdjson) agrees with JSONDecoder and names what it cannot read")
struct AnswerReaderTests {
    func read<T: KISTableAnswer>(_ type: T.Type, _ data: Data) throws -> T {
        try KISAnswerReader.shared.read(T.self, from: data)
    }

    func read<T: KISTableAnswer>(_ type: T.Type, _ json: String) throws -> T {
        try read(T.self, Data(json.utf8))
    }

    /// Every body is read as `JSONDecoder` reads it.
    func expectReadsLikeJSONDecoder<T: KISTableAnswer & Equatable>(_ type: T.Type, _ bodies: [Data]) throws {
        for body in bodies {
            #expect(try read(T.self, body) == JSONDecoder().decode(T.self, from: body))
        }
    }

    func failure<T: KISTableAnswer>(_ type: T.Type, _ json: String) -> KISAnswerReadError? {
        do {
            _ = try read(T.self, json)
            return nil
        } catch { return error as? KISAnswerReadError }
    }

    @Test("the simulator's domestic pages (daily, weekly, monthly, several pages, unknown symbol, empty range)")
    func domesticPages() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            var bodies: [Data] = []
            for (code, from, to, period) in [
                ("005930", "20240101", "20250331", "D"), ("005930", "20230101", "20231231", "D"),
                ("000660", "20200101", "20250331", "W"), ("035420", "20100101", "20250331", "M"),
                ("999999", "20250101", "20250131", "D"), ("005930", "20250301", "20250302", "D"),
            ] {
                let r = try await sim.domestic(token: token, code: code, from: from, to: to, period: period)
                #expect(r.status == 200)
                bodies.append(r.body)
            }
            try expectReadsLikeJSONDecoder(KISDomesticChartPage.self, bodies)
            #expect(try read(KISDomesticChartPage.self, bodies[0]).output2?.count == 100)
            #expect(try read(KISDomesticChartPage.self, bodies[0]).output1?.hts_kor_isnm == "삼성전자")
        }
    }

    @Test("the simulator's overseas pages (NAS daily, weekly, another exchange) and its error answers")
    func overseasPages() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            var bodies: [Data] = []
            for (excd, symbol, gubn, bymd) in [
                ("NAS", "AAPL", "0", "20250305"), ("NAS", "AAPL", "1", ""), ("HKS", "00700", "0", "20240628"),
            ] {
                let r = try await sim.overseas(token: token, excd: excd, symbol: symbol, gubn: gubn, bymd: bymd)
                #expect(r.status == 200)
                bodies.append(r.body)
            }
            try expectReadsLikeJSONDecoder(KISOverseasChartPage.self, bodies)
            // An error answer (a bad FID code) is read as its envelope, like JSONDecoder reads it.
            let bad = try await sim.domestic(token: token, from: "20250101", to: "20250131", market: "X")
            let page = try read(KISDomesticChartPage.self, bad.body)
            #expect(page.rt_cd != "0")
            #expect(page == (try JSONDecoder().decode(KISDomesticChartPage.self, from: bad.body)))
        }
    }

    @Test("escapes, Korean text, null and absent parts, keys in any order, extra fields of any type")
    func shapes() throws {
        let page = try read(KISDomesticChartPage.self, #"""
            {"output2":[{"stck_clpr":"71000","x":[1,{"y":null}],"stck_bsop_date":"20250102","acml_vol":null},
                        {}],
             "msg1":"\uc870\ud68c \"\uc644\ub8cc\"\n","rt_cd":"0","msg_cd":"MCA00000",
             "output1":{"hts_kor_isnm":"삼성전자","stck_prpr":"0","n":1.5e3}}
            """#)
        #expect(page.msg1 == "조회 \"완료\"\n")
        #expect(page.output1 == KISDomesticChartPage.Snapshot(stck_prpr: "0", hts_kor_isnm: "삼성전자"))
        #expect(page.output2 == [
            KISDomesticChartPage.Row(stck_bsop_date: "20250102", stck_clpr: "71000"), KISDomesticChartPage.Row(),
        ])
        let bare = try read(KISOverseasChartPage.self, #"{"rt_cd":"1","msg_cd":"E","msg1":"","output1":null}"#)
        #expect(bare.output1 == nil && bare.output2 == nil && bare.rt_cd == "1")
        let empty = try read(KISOverseasChartPage.self, #"{"rt_cd":"0","msg_cd":"M","msg1":"","output2":[]}"#)
        #expect(empty.output2 == [] && empty.output1 == nil)
        // Two reads in a row: the first answer's strings are its own (copied before its reader is used again).
        let a = try read(KISOverseasChartPage.self, #"{"rt_cd":"0","msg_cd":"A","msg1":"first","output1":{"nrec":"1"}}"#)
        let b = try read(KISOverseasChartPage.self, #"{"rt_cd":"0","msg_cd":"B","msg1":"second"}"#)
        #expect(a.msg1 == "first" && a.output1?.nrec == "1" && b.msg1 == "second" && b.output1 == nil)
    }

    @Test("what is not a KIS answer is refused with a message that names the place", arguments: [
        (#"{"rt_cd":"0","msg_cd":"M","msg1":"", "output2":[{"stck_clpr":71000}]}"#, KISAnswerReadError.Kind.shape,
         "output2[0].stck_clpr is a number, not a string"),
        (#"{"rt_cd":"0","msg_cd":"M","msg1":"", "output2":[{},"row"]}"#, .shape, "output2[1] is a string, not an object"),
        (#"{"rt_cd":"0","msg_cd":"M","msg1":"", "output2":{}}"#, .shape, "output2 is an object, not an array"),
        (#"{"rt_cd":"0","msg_cd":"M","msg1":"", "output1":[]}"#, .shape, "output1 is an array, not an object"),
        (#"{"rt_cd":"0","msg_cd":"M","msg1":"", "output1":{"stck_prpr":true}}"#, .shape,
         "output1.stck_prpr is a boolean, not a string"),
        (#"{"rt_cd":0,"msg_cd":"M","msg1":""}"#, .shape, "rt_cd is a number, not a string"),
        (#"[{"rt_cd":"0"}]"#, .shape, "the answer is an array, not an object"),
        (#"{"msg_cd":"M","msg1":""}"#, .missingEnvelope, "the answer has no rt_cd, msg_cd or msg1"),
        (#"{"rt_cd":"0","msg_cd":"M","msg1":"", "output2":[{"stck_clpr":"7"#, .notJSON, "not JSON"),
        ("", .notJSON, "not JSON"),
        ("<html>502 Bad Gateway</html>", .notJSON, "not JSON"),
    ])
    func refusals(json: String, kind: KISAnswerReadError.Kind, message: String) {
        let error = failure(KISDomesticChartPage.self, json)
        #expect(error?.kind == kind)
        #expect(error?.description.hasPrefix(message) == true, "\(String(describing: error))")
        // JSONDecoder refuses the same bodies.
        #expect((try? JSONDecoder().decode(KISDomesticChartPage.self, from: Data(json.utf8))) == nil)
    }

    @Test("bytes that are not UTF-8 are not JSON")
    func notUTF8() {
        var bytes = Array(#"{"rt_cd":"0","msg_cd":"M","msg1":"x"}"#.utf8)
        bytes[bytes.count - 3] = 0xFF
        #expect(throws: KISAnswerReadError.self) { try read(KISOverseasChartPage.self, Data(bytes)) }
        #expect((try? JSONDecoder().decode(KISOverseasChartPage.self, from: Data(bytes))) == nil)
    }

    @Test("repeated keys: the first counts, as with JSONDecoder", arguments: [
        #"{"rt_cd":"1","rt_cd":"0","msg_cd":"M","msg1":"x"}"#,
        #"{"rt_cd":"0","rt_cd":0,"msg_cd":"M","msg1":"x","msg1":"y"}"#,
        #"{"rt_cd":"0","msg_cd":"M","msg1":"","output1":{"stck_prpr":"1","stck_prpr":"2"},"output1":null}"#,
        #"{"rt_cd":"0","msg_cd":"M","msg1":"","output2":[{"stck_clpr":"1","stck_clpr":2}],"output2":null}"#,
    ])
    func repeatedKeys(json: String) throws {
        let expected = try JSONDecoder().decode(KISDomesticChartPage.self, from: Data(json.utf8))
        #expect(try read(KISDomesticChartPage.self, json) == expected)
    }

    @Test("a body simdjson refuses for a field nobody reads is still read, by JSONDecoder, as it was before")
    func fallback() throws {
        let tab = #"{"rt_cd":"0","msg_cd":"M","msg1":"","output1":{"stck_prpr":"1","prdy_vrss":"a\#tb"}}"#
        var broken = Array(#"{"rt_cd":"0","msg_cd":"M","msg1":"","output1":{"stck_prpr":"1","prdy_vrss":"ab"}}"#.utf8)
        broken[broken.count - 4] = 0xC3  // a two-byte sequence cut short, inside a field the gateway never reads
        for body in [Data(tab.utf8), Data(broken)] {
            #expect(throws: KISAnswerReadError.self) { try read(KISDomesticChartPage.self, body) }
            let page = KISAnswerReader.shared.answer(KISDomesticChartPage.self, from: body)
            #expect(page?.output1?.stck_prpr == "1")
            #expect(page == (try? JSONDecoder().decode(KISDomesticChartPage.self, from: body)))
        }
        #expect(KISAnswerReader.shared.answer(KISDomesticChartPage.self, from: Data("{".utf8)) == nil)
    }

    @Test("an answer longer than the client's body limit is refused; the next one is read")
    func tooLong() throws {
        let filler = String(repeating: "a", count: KISAnswerReader.maxBytes)
        let error = failure(KISOverseasChartPage.self, #"{"rt_cd":"0","msg_cd":"M","msg1":"\#(filler)"}"#)
        #expect(error?.kind == .notJSON)
        #expect(try read(KISOverseasChartPage.self, #"{"rt_cd":"0","msg_cd":"M","msg1":"ok"}"#).msg1 == "ok")
    }
}

@Suite("KIS text helpers")
struct KISTextTests {
    @Test(arguments: ["삼성전자", "  삼성전자", "삼성전자 \t", "\u{3000}삼성 전자\u{00A0}", "\u{200B}삼성전자\u{200B}\u{2009}", "\u{1680}\u{202F}\u{205F}", "   ", "", "\t", "a", " a b "])
    func trimmingSpacesIsFoundationsWhitespaceTrim(_ text: String) {
        #expect(text.trimmingSpaces() == text.trimmingCharacters(in: .whitespaces))
    }
}

@Suite("KIS wire types")
struct KISWireTests {
    @Test("revokeP's code is read as a number or as a string (KIS sends a number, its spec says string)")
    func revokeCode() throws {
        let decode = { (json: String) in try JSONDecoder().decode(KISRevokeResponse.self, from: Data(json.utf8)) }
        #expect(try decode(#"{"code":200,"message":"접근토큰 폐기에 성공하였습니다"}"#).code == 200)
        #expect(try decode(#"{"code":"200","message":"접근토큰 폐기에 성공하였습니다"}"#).code == 200)
        #expect(try decode(#"{"code":" 500 "}"#).code == 500)
        #expect(throws: DecodingError.self) { try decode(#"{"code":"OK","message":""}"#) }
        #expect(throws: DecodingError.self) { try decode(#"{"message":""}"#) }
    }
}
