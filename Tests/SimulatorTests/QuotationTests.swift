import Foundation
import NIOHTTP1
import NIOCore
import KIS
import Testing
@testable import Simulator
import TestSupport

@Suite("Simulator: quotation gate — headers, tokens, tr_id, rate limits (kis-api.md §3, §6, §7)")
struct GateTests {
    let q = "FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=005930&FID_INPUT_DATE_1=20250102&FID_INPUT_DATE_2=20250131&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=0"

    @Test("missing or wrong headers are answered as KIS answers them")
    func headers() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let path = KISPath.domesticDailyChart + "?" + q
            let full = SimClient.kisHeaders(token: token, trID: KISTrID.domesticDailyChart)
            let cases: [(String, [(String, String)], String)] = [
                ("no appkey", full.filter { $0.0 != "appkey" }, "EGW00102"),
                ("no appsecret", full.filter { $0.0 != "appsecret" }, "EGW00104"),
                ("no authorization", full.filter { $0.0 != "authorization" }, "EGW00122"),
                ("no Bearer", full.map { $0.0 == "authorization" ? ($0.0, token) : $0 }, "EGW00205"),
                ("unknown token", full.map { $0.0 == "authorization" ? ($0.0, "Bearer abc.def.ghi") : $0 }, "EGW00121"),
                ("wrong tr_id", full.map { $0.0 == "tr_id" ? ($0.0, "HHDFS76240000") : $0 }, "OPSQ0002"),
                ("no tr_id", full.filter { $0.0 != "tr_id" }, "OPSQ0002"),
                ("no custtype", full.filter { $0.0 != "custtype" }, "EGW00208"),
                ("bad custtype", full.map { $0.0 == "custtype" ? ($0.0, "X") : $0 }, "EGW00208"),
                ("another app key", full.map { $0.0 == "appkey" ? ($0.0, "PSsomeone-else") : $0 }, "EGW00121"),
            ]
            for (name, headers, code) in cases {
                let r = try await sim.request(.GET, path, headers: headers)
                #expect(r.status == 500, "\(name)")
                #expect(r.json["rt_cd"] as? String == "1", "\(name)")
                #expect(r.json["msg_cd"] as? String == code, "\(name)")
                #expect((r.json["msg1"] as? String)?.isEmpty == false, "\(name)")
                #expect(r.json["output2"] == nil, "\(name)")
            }
            // Without --credentials any secret goes with the app key (sim.md: any pair is accepted).
            let anySecret = try await sim.request(.GET, path, headers: full.map { $0.0 == "appsecret" ? ($0.0, "other") : $0 })
            #expect(anySecret.status == 200)
        }
        // With --credentials, only the app key's own.
        try await withSimulator(SimulatorConfiguration(port: 0, issueInterval: 0,
                                                       credentials: ["PSappkey-test-0001": "secret-0001"])) { sim in
            let token = try await sim.accessToken()
            let full = SimClient.kisHeaders(token: token, trID: KISTrID.domesticDailyChart)
            let r = try await sim.request(.GET, KISPath.domesticDailyChart + "?" + q,
                                          headers: full.map { $0.0 == "appsecret" ? ($0.0, "wrong") : $0 })
            #expect(r.status == 500)
            #expect(r.json["msg_cd"] as? String == "EGW00105")
        }
    }

    @Test("header names match case-insensitively, as KIS's samples mix them")
    func caseInsensitiveHeaders() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let headers = [("Authorization", "Bearer " + token), ("appKey", "PSappkey-test-0001"),
                           ("appSecret", "secret-0001"), ("TR_ID", KISTrID.domesticDailyChart), ("CustType", "P")]
            let r = try await sim.request(.GET, KISPath.domesticDailyChart + "?" + q.lowercased().replacingOccurrences(of: "fid_cond_mrkt_div_code=j", with: "fid_cond_mrkt_div_code=J").replacingOccurrences(of: "=d&", with: "=D&"), headers: headers)
            #expect(r.status == 200)
            #expect(r.json["rt_cd"] as? String == "0")
        }
    }

    @Test("response headers are KIS's: charset JSON, lower-case tr_id/tr_cont/gt_uid, no other custom header")
    func responseHeaders() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            for r in [
                try await sim.domestic(token: token, from: "20250102", to: "20250131"),
                try await sim.overseas(token: token),
                try await sim.domestic(token: "bogus", from: "20250102", to: "20250131"),
            ] {
                #expect(r.header("Content-Type") == "application/json; charset=utf-8")
                #expect(r.header("tr_id") != nil)
                #expect(r.header("tr_cont") != nil)
                #expect(r.header("gt_uid")?.count == 32)
                let names = Set(r.headers.map { $0.0.lowercased() })
                #expect(names.isSubset(of: ["content-type", "content-length", "date", "tr_id", "tr_cont", "gt_uid",
                                            "connection", "keep-alive"]), "\(names)")
                #expect(r.headers.contains { $0.0 == "tr_id" })  // written in lower case
            }
        }
    }

    /// sim.md: KIS's headers "on every quotation response including overseas ones" — refusals too: the rate limit's
    /// `EGW00201` and a `kis_error` fault are KIS's error answers, read by clients (PK puts `gt_uid` into its
    /// `KisAPIError`) exactly as KIS's own.
    @Test("refusals carry KIS's headers and envelope: EGW00201 from the rate limit and from a kis_error fault, domestic and overseas")
    func refusalHeaders() async throws {
        @Sendable func expectKISError(_ r: SimResponse, trID: String, code: String, _ name: String) {
            #expect(r.status == 500, "\(name)")
            #expect(r.header("Content-Type") == "application/json; charset=utf-8", "\(name)")
            #expect(r.headers.contains { $0.0 == "tr_id" && $0.1 == trID }, "\(name): \(r.headers)")  // lower case, echoed
            #expect(r.headers.contains { $0.0 == "tr_cont" }, "\(name): \(r.headers)")
            let gtUID = r.headers.first { $0.0 == "gt_uid" }?.1 ?? ""
            #expect(gtUID.count == 32 && gtUID.allSatisfy(\.isHexDigit), "\(name): gt_uid \(gtUID)")
            let names = Set(r.headers.map { $0.0.lowercased() })
            #expect(names.isSubset(of: ["content-type", "content-length", "date", "tr_id", "tr_cont", "gt_uid",
                                        "connection", "keep-alive"]), "\(name): \(names)")
            // KIS's error envelope, nothing more (kis-api.md §6).
            #expect(Set(r.json.keys) == ["rt_cd", "msg_cd", "msg1"], "\(name): \(r.text)")
            #expect(r.json["rt_cd"] as? String == "1", "\(name)")
            #expect(r.json["msg_cd"] as? String == code, "\(name)")
            #expect(r.json["msg1"] as? String == KISMessage.text(code), "\(name)")
        }
        // The rate limit (1 call a second): the second of two calls at once is refused, unless the machine stalls
        // for a second between them — then a third is.
        try await withSimulator(SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1)) { sim in
            let token = try await sim.accessToken()
            for name in ["domestic", "overseas"] {
                var refusal: SimResponse?
                for _ in 0..<3 where refusal == nil {
                    let r = name == "domestic"
                        ? try await sim.domestic(token: token, from: "20250102", to: "20250110")
                        : try await sim.overseas(token: token)
                    if r.status != 200 { refusal = r }
                }
                let r = try #require(refusal, "\(name): three calls in a row at 1/s, none refused")
                let trID = name == "domestic" ? KISTrID.domesticDailyChart : KISTrID.overseasDailyPrice
                expectKISError(r, trID: trID, code: "EGW00201", "rate limit, \(name)")
                try await Task.sleep(for: .milliseconds(1100))
            }
        }
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            _ = try await sim.post("/__sim/faults", ["mode": "kis_error", "msg_cd": "EGW00201"])
            expectKISError(try await sim.domestic(token: token, from: "20250102", to: "20250110"),
                           trID: KISTrID.domesticDailyChart, code: "EGW00201", "kis_error fault, domestic")
            expectKISError(try await sim.overseas(token: token), trID: KISTrID.overseasDailyPrice, code: "EGW00201",
                           "kis_error fault, overseas")
        }
    }

    /// README: "Fault `http500` answers as a proxy in front of KIS would, an HTML page with none of KIS's headers" —
    /// the fault that is not KIS's own answer (`kis_error` is), for a client's handling of a 500 that is not KIS's
    /// envelope. It still sends no custom header (a header such as `x-request-id` breaks KIS's Python samples).
    @Test("the http500 fault is a bare 500, as a proxy in front of KIS answers: no KIS headers, no other custom header; garbage keeps KIS's headers")
    func faultHeaders() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            _ = try await sim.post("/__sim/faults", ["mode": "http500"])
            for r in [try await sim.domestic(token: token, from: "20250102", to: "20250110"), try await sim.overseas(token: token)] {
                #expect(r.status == 500)
                #expect(r.header("Content-Type")?.hasPrefix("text/html") == true)
                let names = Set(r.headers.map { $0.0.lowercased() })
                #expect(names.isSubset(of: ["content-type", "content-length", "date", "connection", "keep-alive"]),
                        "\(names)")
                #expect(r.text.contains("500"))
            }
            _ = try await sim.post("/__sim/faults", ["mode": "garbage"])
            let r = try await sim.overseas(token: token)
            #expect(r.status == 200)
            #expect(r.header("Content-Type") == "application/json; charset=utf-8")
            #expect(r.headers.contains { $0.0 == "tr_id" && $0.1 == KISTrID.overseasDailyPrice })
            #expect(r.header("gt_uid")?.count == 32)
        }
    }

    @Test("the sandbox allows one call per second per app key, then 500 EGW00201; the window slides")
    func sandboxRate() async throws {
        try await withSimulator(SimulatorConfiguration(port: 0, environment: .sandbox, issueInterval: 0)) { sim in
            let token = try await sim.accessToken()
            // Two calls at once: the second falls in the same second — again, in a fresh window, when the machine
            // stalled for a second and could not tell.
            var refusedInAll = 0
            let checked = try await untilTimely { attempt in
                if attempt > 1 { try await Task.sleep(for: .milliseconds(1100)) }
                let started = ContinuousClock.now
                async let a = sim.domestic(token: token, from: "20250102", to: "20250110")
                async let b = sim.domestic(token: token, from: "20250102", to: "20250110")
                let first = try await a
                let second = try await b
                let elapsed = ContinuousClock.now - started
                var refused: [SimResponse] = []
                var accepted = 0
                for r in [first, second] {
                    if r.status == 500 { refused.append(r) } else if r.status == 200 { accepted += 1 }
                }
                #expect(accepted >= 1)
                refusedInAll += refused.count
                for r in refused {
                    #expect(r.json["msg_cd"] as? String == "EGW00201")
                    #expect(r.json["msg1"] as? String == "초당 거래건수를 초과하였습니다.")
                }
                guard elapsed < .milliseconds(900) else { return false }
                #expect(refused.count == 1, "\(elapsed): \([first, second].map(\.status))")
                return true
            }
            #expect(checked, "no attempt made both calls within 0.9 s")
            // Another app key has its own budget.
            let other = try await sim.accessToken(appKey: "PSanother")
            #expect(try await sim.domestic(token: other, from: "20250102", to: "20250110", appKey: "PSanother").status == 200)
            try await Task.sleep(for: .milliseconds(1100))
            #expect(try await sim.domestic(token: token, from: "20250102", to: "20250110").status == 200)
            let stats = try await sim.request(.GET, "/__sim/stats").json
            #expect((stats["errors"] as? [String: Int])?["EGW00201"] == refusedInAll)
        }
    }

    @Test("a burst above --rate-per-s is cut to the limit within any one-second window")
    func burst() async throws {
        let config = SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 5)
        try await withSimulator(config) { sim in
            let token = try await sim.accessToken()
            let started = ContinuousClock.now
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<30 {
                    group.addTask { try await sim.domestic(token: token, from: "20250102", to: "20250103").status }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            let elapsed = ContinuousClock.now - started
            let ok = statuses.filter { $0 == 200 }.count
            let seconds = Int(elapsed.components.seconds) + 1
            #expect(ok >= 1)
            #expect(ok <= 5 * seconds, "\(ok) successes in \(elapsed)")
            #expect(statuses.filter { $0 == 500 }.count == 30 - ok)
        }
    }

    /// sim.md: `--environment` sets the per-app-key rate, 18/s live and 1/s sandbox (kis-api.md §7), and
    /// `--rate-per-s` overrides it either way. A burst of `limit + 12` calls at once: within one second exactly
    /// `limit` pass and the rest get 500 `EGW00201`. The exact split needs the burst to take under 0.9 s (a machine
    /// that stalls longer lets a few more through, legitimately): a slower burst is tried again in a fresh window.
    @Test("the default rate follows --environment (live 18/s, sandbox 1/s) and --rate-per-s overrides it", arguments: [
        (KISEnvironment.live, Int?.none, 18), (.sandbox, nil, 1), (.sandbox, 3, 3), (.live, 2, 2), (.live, 25, 25),
    ])
    func defaultRates(environment: KISEnvironment, override: Int?, limit: Int) async throws {
        let config = SimulatorConfiguration(port: 0, environment: environment, issueInterval: 0, ratePerSecond: override)
        #expect(config.effectiveRatePerSecond == limit)
        try await withSimulator(config) { sim in
            let token = try await sim.accessToken()
            let calls = limit + 12
            var refusedInAll = 0
            // Again, in a fresh window, when the machine stalled and the burst took longer.
            let checked = try await untilTimely { attempt in
                if attempt > 1 { try await Task.sleep(for: .milliseconds(1100)) }
                let started = ContinuousClock.now
                let answers = try await withThrowingTaskGroup(of: SimResponse.self) { group in
                    for _ in 0..<calls {
                        group.addTask { try await sim.domestic(token: token, from: "20250102", to: "20250103") }
                    }
                    return try await group.reduce(into: [SimResponse]()) { $0.append($1) }
                }
                let elapsed = ContinuousClock.now - started
                let passed = answers.filter { $0.status == 200 }.count
                let refused = answers.filter { $0.status == 500 && $0.json["msg_cd"] as? String == "EGW00201" }.count
                refusedInAll += refused
                #expect(passed + refused == calls, "statuses \(answers.map(\.status))")
                #expect(passed >= limit, "\(passed) of \(calls) passed in \(elapsed)")
                #expect(passed <= limit * (Int(elapsed.components.seconds) + 1), "\(passed) of \(calls) passed in \(elapsed)")
                guard elapsed < .milliseconds(900) else { return false }
                #expect(passed == limit, "\(passed) of \(calls) passed in \(elapsed)")
                #expect(refused == 12)
                return true
            }
            #expect(checked, "no burst took under 0.9 s")
            let stats = try await sim.request(.GET, "/__sim/stats").json
            #expect((stats["errors"] as? [String: Int])?["EGW00201"] ?? 0 == refusedInAll)
        }
    }
}

@Suite("Simulator: domestic daily chart (kis-api.md §4)")
struct DomesticChartTests {
    /// The fields of KIS's own example (kis-api.md §4), no more, no fewer.
    static let rowKeys: Set<String> = [
        "stck_bsop_date", "stck_clpr", "stck_oprc", "stck_hgpr", "stck_lwpr", "acml_vol", "acml_tr_pbmn",
        "flng_cls_code", "prtt_rate", "mod_yn", "prdy_vrss_sign", "prdy_vrss", "revl_issu_reas",
    ]
    static let output1Keys: Set<String> = [
        "prdy_vrss", "prdy_vrss_sign", "prdy_ctrt", "stck_prdy_clpr", "acml_vol", "acml_tr_pbmn", "hts_kor_isnm",
        "stck_prpr", "stck_shrn_iscd", "prdy_vol", "stck_mxpr", "stck_llam", "stck_oprc", "stck_hgpr", "stck_lwpr",
        "stck_prdy_oprc", "stck_prdy_hgpr", "stck_prdy_lwpr", "askp", "bidp", "prdy_vrss_vol", "vol_tnrt",
        "stck_fcam", "lstn_stcn", "cpfn", "hts_avls", "per", "eps", "pbr", "itewhol_loan_rmnd_ratem",
    ]

    @Test("100 rows at most, newest first, weekdays that are not KRX holidays, plausible candles")
    func firstPage() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let r = try await sim.domestic(token: token, from: "20240101", to: "20250331")
            #expect(r.status == 200)
            #expect(r.json["rt_cd"] as? String == "0")
            #expect(r.json["msg_cd"] as? String == "MCA00000")
            #expect(r.json["msg1"] as? String == "정상처리 되었습니다.")
            #expect(r.header("tr_cont") == "D")  // kis-api.md §5: the chart TRs page by date, not by tr_cont
            let rows = r.rows
            #expect(rows.count == 100)
            let dates = rows.compactMap { $0["stck_bsop_date"] as? String }
            #expect(dates == dates.sorted(by: >))
            #expect(dates.first == "20250331")
            #expect(!dates.contains("20250303"))  // substitute holiday
            #expect(!dates.contains("20250301"))  // Saturday
            for row in rows {
                #expect(Set(row.keys) == Self.rowKeys)
                let o = Int(row["stck_oprc"] as! String)!, h = Int(row["stck_hgpr"] as! String)!
                let l = Int(row["stck_lwpr"] as! String)!, c = Int(row["stck_clpr"] as! String)!
                #expect(h >= max(o, c) && l <= min(o, c) && l > 0)
                #expect(Int(row["acml_vol"] as! String)! > 0)
                #expect(c % Int(MarketData.krxTick(Double(c))) == 0 || c % Int(MarketData.krxTick(Double(c) - 1)) == 0)
                let date = CivilDate(yyyymmdd: row["stck_bsop_date"] as! String)!
                #expect(Exchange.krx.isTradingDay(date))
            }
            // Change fields agree with consecutive closes.
            for i in 0..<(rows.count - 1) {
                let c = Int(rows[i]["stck_clpr"] as! String)!, p = Int(rows[i + 1]["stck_clpr"] as! String)!
                #expect(Int(rows[i]["prdy_vrss"] as! String)! == c - p)
                #expect(rows[i]["prdy_vrss_sign"] as? String == (c > p ? "2" : c < p ? "5" : "3"))
            }
            #expect(Set(r.output1.keys) == Self.output1Keys)
            #expect(r.output1["hts_kor_isnm"] as? String == "삼성전자")
            #expect(r.output1["stck_shrn_iscd"] as? String == "005930")
        }
    }

    @Test("FID_INPUT_DATE_1=00000101 (pykis's \"no start date\") is taken, as KIS takes it: the same page as a real start")
    func sinceListing() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let open = try await sim.domestic(token: token, from: "00000101", to: "20250331")
            let dated = try await sim.domestic(token: token, from: "19000101", to: "20250331")
            #expect(open.status == 200 && open.json["rt_cd"] as? String == "0", "\(open.json)")
            #expect(open.rows.count == 100 && open.header("tr_cont") == "D")
            #expect(open.rows.compactMap { $0["stck_bsop_date"] as? String }
                == dated.rows.compactMap { $0["stck_bsop_date"] as? String })
            // Only year 0000 means that: other unreadable dates are still refused.
            #expect(try await sim.domestic(token: token, from: "2025013x", to: "20250331").json["rt_cd"] as? String == "2")
        }
    }

    @Test("paging by date: DATE_2 = oldest − 1 day continues with no gap and no overlap; the same data every time")
    func datePaging() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            var end = "20250331"
            var all: [String] = []
            var pages = 0
            while true {
                let r = try await sim.domestic(token: token, from: "20240101", to: end)
                let dates = r.rows.compactMap { $0["stck_bsop_date"] as? String }
                all += dates
                pages += 1
                guard dates.count == 100, let oldest = dates.last else { break }
                end = CivilDate(yyyymmdd: oldest)!.adding(days: -1).yyyymmdd
            }
            let expected = (CivilDate(yyyymmdd: "20240101")!.dayNumber...CivilDate(yyyymmdd: "20250331")!.dayNumber)
                .map(CivilDate.init(dayNumber:)).filter { Exchange.krx.isTradingDay($0) }.map(\.yyyymmdd)
            #expect(pages == expected.count / 100 + 1)
            #expect(Set(all).count == all.count)
            #expect(all == expected.reversed())
            // Deterministic.
            let a = try await sim.domestic(token: token, from: "20240102", to: "20240131").rows
            let b = try await sim.domestic(token: token, from: "20240102", to: "20240131").rows
            #expect(NSArray(array: a).isEqual(to: b))
        }
    }

    @Test("--tr-cont-paging: tr_cont N after M continues from where the same query stopped")
    func trContPaging() async throws {
        try await withSimulator(SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000,
                                                       trContPaging: true)) { sim in
            let token = try await sim.accessToken()
            let first = try await sim.domestic(token: token, from: "20240101", to: "20250331")
            let second = try await sim.domestic(
                token: token, from: "20240101", to: "20250331", extraHeaders: [("tr_cont", "N")])
            let oldestFirst = first.rows.last!["stck_bsop_date"] as! String
            let newestSecond = second.rows.first!["stck_bsop_date"] as! String
            #expect(newestSecond < oldestFirst)
            #expect(second.header("tr_cont") == "M")
            var last = second
            var pages = 2
            while last.header("tr_cont") == "M", pages < 10 {
                last = try await sim.domestic(
                    token: token, from: "20240101", to: "20250331", extraHeaders: [("tr_cont", "N")])
                pages += 1
            }
            #expect(last.header("tr_cont") == "D")
            #expect(pages == 4)
            #expect(last.rows.last!["stck_bsop_date"] as? String == "20240102")
        }
    }

    /// kis-api.md §5: "For the simulator, default to `tr_cont` "D" or empty and support date paging." A client that
    /// follows `M` with `N` (KIS's overseas sample, up to ten times) makes one call per page by date, as against KIS.
    @Test("by default every chart page says tr_cont D, and a tr_cont N is answered with the first page again")
    func trContByDefault() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let first = try await sim.domestic(token: token, from: "20240101", to: "20250331")
            let again = try await sim.domestic(
                token: token, from: "20240101", to: "20250331", extraHeaders: [("tr_cont", "N")])
            #expect(first.rows.count == 100 && first.header("tr_cont") == "D")
            #expect(again.header("tr_cont") == "D")
            #expect(again.rows.compactMap { $0["stck_bsop_date"] as? String }
                == first.rows.compactMap { $0["stck_bsop_date"] as? String })
            let overseas = try await sim.overseas(token: token, bymd: "20250331")
            #expect(overseas.rows.count == 100, "\(overseas.text.prefix(200))")
            #expect(overseas.status == 200 && overseas.header("tr_cont") == "D")
        }
    }

    @Test("weekly, monthly and yearly bars are aggregated from the dailies")
    func aggregation() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let days = try await sim.domestic(token: token, from: "20250101", to: "20250228").rows
            for (period, key) in [("W", { (d: CivilDate) in d.startOfWeek }), ("M", { $0.startOfMonth })] {
                let bars = try await sim.domestic(token: token, from: "20250101", to: "20250228", period: period).rows
                let groups = Dictionary(grouping: days) { key(CivilDate(yyyymmdd: $0["stck_bsop_date"] as! String)!) }
                #expect(bars.count == groups.count)
                for bar in bars {
                    let date = CivilDate(yyyymmdd: bar["stck_bsop_date"] as! String)!
                    let members = groups[key(date)]!.sorted { ($0["stck_bsop_date"] as! String) < ($1["stck_bsop_date"] as! String) }
                    #expect(bar["stck_bsop_date"] as? String == members.first!["stck_bsop_date"] as? String)
                    #expect(bar["stck_oprc"] as? String == members.first!["stck_oprc"] as? String)
                    #expect(bar["stck_clpr"] as? String == members.last!["stck_clpr"] as? String)
                    #expect(Int(bar["stck_hgpr"] as! String) == members.map { Int($0["stck_hgpr"] as! String)! }.max())
                    #expect(Int(bar["stck_lwpr"] as! String) == members.map { Int($0["stck_lwpr"] as! String)! }.min())
                    #expect(Int(bar["acml_vol"] as! String) == members.map { Int($0["acml_vol"] as! String)! }.reduce(0, +))
                }
            }
            let years = try await sim.domestic(token: token, from: "20150101", to: "20241231", period: "Y").rows
            #expect(years.count == 10)
            #expect(years.first?["stck_bsop_date"] as? String == "20240102")
        }
    }

    @Test("adjusted (FID_ORG_ADJ_PRC=0) and original (1) differ before a simulated split, agree after")
    func adjusted() async throws {
        var found: String? = nil
        for n in 10_000..<11_000 where found == nil {
            let candidate = String(n * 10)
            if MarketData.profile(symbol: candidate, exchange: .krx)?.split != nil { found = candidate }
        }
        let code = try #require(found)
        let split = MarketData.profile(symbol: code, exchange: .krx)!.split!
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let from = split.date.adding(days: -20).yyyymmdd, to = split.date.adding(days: 20).yyyymmdd
            let adj = try await sim.domestic(token: token, code: code, from: from, to: to, adj: "0").rows
            let org = try await sim.domestic(token: token, code: code, from: from, to: to, adj: "1").rows
            #expect(adj.count == org.count && !adj.isEmpty)
            for (a, o) in zip(adj, org) {
                let date = CivilDate(yyyymmdd: a["stck_bsop_date"] as! String)!
                let ac = Double(a["stck_clpr"] as! String)!, oc = Double(o["stck_clpr"] as! String)!
                if date < split.date {
                    #expect(abs(oc / ac - Double(split.ratio)) / Double(split.ratio) < 0.05, "\(date)")
                    #expect(Int(o["acml_vol"] as! String)! < Int(a["acml_vol"] as! String)!)
                } else {
                    #expect(ac == oc)
                }
            }
        }
    }

    @Test("unknown symbols: rt_cd 0, stck_prpr 0, no rows; an empty range gives [{}]")
    func unknown() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let r = try await sim.domestic(token: token, code: "999999", from: "20250102", to: "20250131")
            #expect(r.status == 200)
            #expect(r.json["rt_cd"] as? String == "0")
            #expect(r.output1["stck_prpr"] as? String == "0")
            #expect(r.rows.isEmpty)
            let weekend = try await sim.domestic(token: token, from: "20250104", to: "20250105")
            #expect(weekend.rows.count == 1 && weekend.rows[0].isEmpty)
            let etn = try await sim.domestic(token: token, code: "Q500001", from: "20250102", to: "20250110")
            #expect(etn.rows.count == 7)  // 2, 3, 6, 7, 8, 9, 10 January
        }
    }

    @Test("bad input is answered with rt_cd 2 and KIS's OPSQ codes", arguments: [
        ("FID_COND_MRKT_DIV_CODE=X&FID_INPUT_ISCD=005930&FID_INPUT_DATE_1=20250102&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=0", "OPSQ2001"),
        ("FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=005930&FID_INPUT_DATE_1=2025-01-02&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=0", "OPSQ2002"),
        ("FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=005930&FID_INPUT_DATE_1=20251302&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=0", "OPSQ2001"),
        ("FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=005930&FID_INPUT_DATE_1=2025010A&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=0", "OPSQ2001"),
        ("FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=005930&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=0", "OPSQ2001"),
        ("FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=005930&FID_INPUT_DATE_1=20250102&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=Q&FID_ORG_ADJ_PRC=0", "OPSQ2001"),
        ("FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=005930&FID_INPUT_DATE_1=20250102&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=2", "OPSQ2001"),
        ("FID_COND_MRKT_DIV_CODE=J&FID_INPUT_DATE_1=20250102&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=0", "OPSQ2001"),
        ("FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=0059300000000&FID_INPUT_DATE_1=20250102&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=0", "OPSQ2002"),
    ])
    func badInput(query: String, code: String) async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let r = try await sim.request(
                .GET, KISPath.domesticDailyChart + "?" + query,
                headers: SimClient.kisHeaders(token: token, trID: KISTrID.domesticDailyChart))
            #expect(r.status == 200)
            #expect(r.json["rt_cd"] as? String == "2")
            #expect(r.json["msg_cd"] as? String == code)
            #expect((r.json["msg1"] as? String)?.hasPrefix("ERROR : INPUT") == true)
        }
    }
}

@Suite("Simulator: overseas daily price (kis-api.md §5)")
struct OverseasTests {
    @Test("zdiv decimals as strings, unsigned diff, signed rate, rsym and nrec")
    func shape() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let r = try await sim.overseas(token: token, bymd: "20250305")
            #expect(r.status == 200)
            #expect(r.json["rt_cd"] as? String == "0")
            #expect(r.output1["rsym"] as? String == "DNASAAPL")
            #expect(r.output1["zdiv"] as? String == "4")
            let rows = r.rows
            #expect(rows.count == 100)
            #expect(r.output1["nrec"] as? String == "100")
            #expect(rows.first?["xymd"] as? String == "20250305")
            for (i, row) in rows.enumerated() {
                for f in ["clos", "open", "high", "low", "diff", "pbid", "pask"] {
                    let v = row[f] as! String
                    #expect(v.split(separator: ".").last?.count == 4, "\(f)=\(v)")
                    #expect(Decimal(string: v)! >= 0)
                }
                let rate = row["rate"] as! String
                let sign = row["sign"] as! String
                #expect(sign == "3" ? rate == "0.00" : (rate.hasPrefix(sign == "2" ? "+" : "-")), "\(sign) \(rate)")
                if i + 1 < rows.count {
                    let diff = Decimal(string: row["clos"] as! String)! - Decimal(string: rows[i + 1]["clos"] as! String)!
                    #expect(Decimal(string: row["diff"] as! String)! == abs(diff))
                }
                let h = Decimal(string: row["high"] as! String)!, l = Decimal(string: row["low"] as! String)!
                let o = Decimal(string: row["open"] as! String)!, c = Decimal(string: row["clos"] as! String)!
                #expect(h >= max(o, c) && l <= min(o, c))
            }
            #expect(Set(rows[0].keys) == ["xymd", "clos", "sign", "diff", "rate", "open", "high", "low", "tvol", "tamt",
                                          "pbid", "vbid", "pask", "vask"])
        }
    }

    @Test("paging by BYMD and weekly/monthly GUBN; other exchanges carry their own zdiv")
    func pagingAndExchanges() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let p1 = try await sim.overseas(token: token, bymd: "20250305").rows
            let next = CivilDate(yyyymmdd: p1.last!["xymd"] as! String)!.adding(days: -1).yyyymmdd
            let p2 = try await sim.overseas(token: token, bymd: next).rows
            #expect((p2.first!["xymd"] as! String) < (p1.last!["xymd"] as! String))
            let weekly = try await sim.overseas(token: token, gubn: "1", bymd: "20250305").rows
            #expect(weekly.count == 100)
            // Weeks are dated by their first trading day: here a Monday (2025-02-24 was no NYSE holiday).
            #expect(CivilDate(yyyymmdd: weekly[1]["xymd"] as! String)!.weekday == 1)
            for (excd, sym, zdiv) in [("HKS", "0700", "3"), ("TSE", "7203", "1"), ("SHS", "600519", "2"),
                                      ("HSX", "VNM", "0"), ("nys", "BRK/B", "4")] {
                let r = try await sim.overseas(token: token, excd: excd, symbol: sym, bymd: "20250305")
                #expect(r.output1["zdiv"] as? String == zdiv, "\(excd)")
                #expect(r.rows.count == 100, "\(excd)")
            }
        }
    }

    /// sim.md: overseas rows are the exchange's trading days — NYSE's holidays (and Tokyo's, Hong Kong's) skipped.
    @Test("overseas daily rows skip the exchange's holidays: none of NYSE's, JPX's or HKEX's in 2024", arguments: [
        ("NYS", "IBM"), ("TSE", "7203"), ("HKS", "0700"),
    ])
    func overseasHolidays(excd: String, symbol: String) async throws {
        let exchange = try #require(Exchange(rawValue: excd))
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            var dates: [CivilDate] = []
            var bymd = "20241231"
            while true {  // pages of 100 rows, newest first, back into 2023
                let rows = try await sim.overseas(token: token, excd: excd, symbol: symbol, bymd: bymd).rows
                let page = rows.compactMap { ($0["xymd"] as? String).flatMap { CivilDate(yyyymmdd: $0) } }
                dates += page
                guard page.count == 100, let oldest = page.last, oldest.yyyymmdd > "20240101" else { break }
                bymd = oldest.adding(days: -1).yyyymmdd
            }
            let year = dates.filter { $0.yyyymmdd.hasPrefix("2024") }
            var weekdays = 0
            var day = CivilDate(yyyymmdd: "20240101")!
            while day.yyyymmdd <= "20241231" {
                if day.weekday != 0 && day.weekday != 6 { weekdays += 1 }
                day = day.adding(days: 1)
            }
            let holidays = year.filter { !exchange.isTradingDay($0) }
            #expect(holidays.isEmpty, "\(excd) rows on holidays: \(holidays)")
            // Every trading day of the year, and not one weekday holiday kept as a row.
            #expect(year.count < weekdays - 5 && year.count > weekdays - 25,
                    "\(excd): \(year.count) rows for \(weekdays) weekdays")
            #expect(Set(year).count == year.count)
        }
    }

    @Test("MODP=1 is adjusted, MODP=0 is not (the opposite of domestic)")
    func modp() async throws {
        let symbol = try #require(["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "TSLA", "META", "QQQ", "INTC", "AMD", "CSCO",
                                   "PEP", "COST", "ADBE", "NFLX", "PYPL", "SBUX", "MU", "TXN", "QCOM"]
            .first { MarketData.profile(symbol: $0, exchange: .nas)?.split != nil })
        let split = MarketData.profile(symbol: symbol, exchange: .nas)!.split!
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let bymd = split.date.adding(days: 10).yyyymmdd
            let adj = try await sim.overseas(token: token, symbol: symbol, bymd: bymd, modp: "1").rows
            let raw = try await sim.overseas(token: token, symbol: symbol, bymd: bymd, modp: "0").rows
            let before = zip(adj, raw).first { CivilDate(yyyymmdd: $0.0["xymd"] as! String)! < split.date }!
            let a = Double(before.0["clos"] as! String)!, o = Double(before.1["clos"] as! String)!
            #expect(abs(o / a - Double(split.ratio)) / Double(split.ratio) < 0.05)
            #expect(adj.first!["clos"] as? String == raw.first!["clos"] as? String)
        }
    }

    @Test("unknown symbols and bad parameters")
    func errors() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            let unknown = try await sim.overseas(token: token, symbol: "ZZZZ")
            #expect(unknown.json["rt_cd"] as? String == "0")
            #expect(unknown.output1["nrec"] as? String == "")
            #expect(unknown.rows.isEmpty)
            for (excd, gubn, bymd, modp) in [("XXX", "0", "", "1"), ("NAS", "5", "", "1"), ("NAS", "0", "2025-03-05", "1"),
                                             ("NAS", "0", "20251340", "1"), ("NAS", "0", "", "7")] {
                let r = try await sim.overseas(token: token, excd: excd, gubn: gubn, bymd: bymd, modp: modp)
                #expect(r.json["rt_cd"] as? String == "2", "\(excd) \(gubn) \(bymd) \(modp)")
            }
        }
    }
}
