import AsyncHTTPClient
import Foundation
import NIOHTTP1
import NIOCore
import KIS
import NIOCore
import Testing
@testable import Simulator
import TestSupport

@Suite("Simulator: /__sim/ control routes and faults")
struct ControlTests {
    @Test("stats count calls and errors; reset zeroes them and keeps tokens")
    func statsAndReset() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            _ = try await sim.domestic(token: token, from: "20250102", to: "20250110")
            _ = try await sim.overseas(token: token)
            _ = try await sim.domestic(token: "bogus", from: "20250102", to: "20250110")
            var stats = try await sim.request(.GET, "/__sim/stats").json
            #expect(stats["calls"] as? [String: Int] == ["tokenP": 1, "revokeP": 0, "domestic_daily": 2, "overseas_daily": 1])
            #expect(stats["errors"] as? [String: Int] == ["EGW00121": 1])
            #expect(try await sim.request(.POST, "/__sim/reset").status == 200)
            stats = try await sim.request(.GET, "/__sim/stats").json
            #expect(stats["calls"] as? [String: Int] == ["tokenP": 0, "revokeP": 0, "domestic_daily": 0, "overseas_daily": 0])
            #expect((stats["errors"] as? [String: Int])?.isEmpty == true)
            #expect(try await sim.domestic(token: token, from: "20250102", to: "20250110").status == 200)
        }
    }

    /// sim.md: reset "zero[es] the counters, drop[s] faults (tokens stay)". The sliding rate windows are counters —
    /// each holds the app key's calls of the last second — so reset empties them too (README: "lift faults and rate
    /// windows"): a test or benchmark round starting after a reset gets each app key's full budget at once, not
    /// what the previous round left. What belongs to tokens stays: the tokens, the reuse window (the same token comes
    /// back), the issuance interval (`EGW00133`) and the token clock.
    @Test("reset empties the rate windows (they count calls) and keeps tokens, their reuse, the issue interval and the clock")
    func resetRateWindowsKeepTokens() async throws {
        let config = SimulatorConfiguration(port: 0, environment: .sandbox, issueInterval: 60)  // 1 call a second
        try await withSimulator(config) { sim in
            let token = try await sim.accessToken()
            _ = try await sim.post("/__sim/clock", ["advance_s": 30])
            // Spend the app key's budget (a call is refused), reset, and call again at once, well inside the second of
            // the last call that passed: the window is empty again. Again when the machine stalled past that second.
            let checked = try await untilTimely { attempt in
                var spent = ContinuousClock.now
                var refused = false
                for _ in 0..<3 where !refused {
                    let r = try await sim.domestic(token: token, from: "20250102", to: "20250110")
                    if r.status == 200 { spent = ContinuousClock.now } else { refused = r.json["msg_cd"] as? String == "EGW00201" }
                }
                #expect(refused, "three calls in a row at 1/s, none refused (attempt \(attempt))")
                _ = try await sim.post("/__sim/faults", ["mode": "kis_error", "msg_cd": "EGW00123"])
                #expect(try await sim.request(.POST, "/__sim/reset").status == 200)
                let r = try await sim.domestic(token: token, from: "20250102", to: "20250110")
                let since = ContinuousClock.now - spent
                #expect(r.json["msg_cd"] as? String != "EGW00123")  // the fault is gone
                guard since < .milliseconds(900) else { return false }
                #expect(r.status == 200, "\(since) after the last call that passed: \(r.status) \(r.text)")
                return true
            }
            #expect(checked, "no attempt called again within 0.9 s of the last call that passed")
            let stats = try await sim.request(.GET, "/__sim/stats").json
            #expect((stats["errors"] as? [String: Int])?["EGW00201"] == nil)
            #expect(stats["live_tokens"] as? Int == 1)
            // Tokens stay: 30 s into its minute a request is still too soon; past it, the same token comes back
            // (the reuse window), its expiry counted on the clock that was not reset.
            let soon = try await sim.token()
            #expect(soon.status == 403 && soon.json["error_code"] as? String == "EGW00133", "\(soon.text)")
            _ = try await sim.post("/__sim/clock", ["advance_s": 31])
            let again = try await sim.token().decode(KISTokenResponse.self)
            #expect(again.access_token == token)
            #expect((86400 - 61 - 10)...(86400 - 61) ~= again.expires_in, "\(again.expires_in)")
            #expect(try await sim.request(.GET, "/__sim/stats").json["issuances"] as? Int == 0)  // none since the reset
        }
    }

    @Test("faults: kis_error, http500 and garbage hit quotation calls; reset lifts them")
    func faults() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            #expect(try await sim.post("/__sim/faults", ["mode": "kis_error", "msg_cd": "EGW00201"]).status == 200)
            var r = try await sim.domestic(token: token, from: "20250102", to: "20250110")
            #expect(r.status == 500 && r.json["msg_cd"] as? String == "EGW00201")
            _ = try await sim.post("/__sim/faults", ["mode": "kis_error", "msg_cd": "EGW00123"])
            r = try await sim.overseas(token: token)
            #expect(r.json["msg_cd"] as? String == "EGW00123")
            #expect(r.status == 500 && r.json["rt_cd"] as? String == "1")
            // An input error comes as KIS sends one (kis-api.md §6): HTTP 200, rt_cd "2".
            _ = try await sim.post("/__sim/faults", ["mode": "kis_error", "msg_cd": "OPSQ2001"])
            r = try await sim.domestic(token: token, from: "20250102", to: "20250110")
            #expect(r.status == 200 && r.json["rt_cd"] as? String == "2" && r.json["msg_cd"] as? String == "OPSQ2001",
                    "\(r.status) \(r.text)")
            #expect((r.json["msg1"] as? String)?.isEmpty == false)
            _ = try await sim.post("/__sim/faults", ["mode": "http500"])
            r = try await sim.domestic(token: token, from: "20250102", to: "20250110")
            #expect(r.status == 500 && r.json.isEmpty)
            _ = try await sim.post("/__sim/faults", ["mode": "garbage"])
            r = try await sim.domestic(token: token, from: "20250102", to: "20250110")
            #expect(r.status == 200)
            #expect((try? JSONSerialization.jsonObject(with: r.body)) == nil)
            // Token issuance is never faulted.
            #expect(try await sim.token(appKey: "PSfaultfree").status == 200)
            _ = try await sim.request(.POST, "/__sim/reset")
            #expect(try await sim.domestic(token: token, from: "20250102", to: "20250110").status == 200)
        }
    }

    @Test("faults with rate 0 never fire; latency delays calls")
    func rateAndLatency() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            _ = try await sim.post("/__sim/faults", ["mode": "http500", "rate": 0.0])
            for _ in 0..<5 { #expect(try await sim.domestic(token: token, from: "20250102", to: "20250110").status == 200) }
            _ = try await sim.post("/__sim/faults", ["mode": "none", "latency_ms": 300])
            let start = ContinuousClock.now
            #expect(try await sim.domestic(token: token, from: "20250102", to: "20250110").status == 200)
            #expect(ContinuousClock.now - start >= .milliseconds(300))
        }
    }

    @Test("timeout fault: the call hangs past the client's deadline")
    func timeoutFault() async throws {
        try await withSimulator { sim in
            let token = try await sim.accessToken()
            _ = try await sim.post("/__sim/faults", ["mode": "timeout"])
            await #expect(throws: HTTPClientError.self) {
                _ = try await sim.request(
                    .GET,
                    KISPath.domesticDailyChart
                        + "?FID_COND_MRKT_DIV_CODE=J&FID_INPUT_ISCD=005930&FID_INPUT_DATE_1=20250102&FID_INPUT_DATE_2=20250110&FID_PERIOD_DIV_CODE=D&FID_ORG_ADJ_PRC=0",
                    headers: SimClient.kisHeaders(token: token, trID: KISTrID.domesticDailyChart), timeout: .milliseconds(500))
            }
            _ = try await sim.request(.POST, "/__sim/reset")
        }
    }

    @Test("bad control bodies are refused with a message", arguments: [
        ("/__sim/faults", #"{"mode":"explode"}"#),
        ("/__sim/faults", #"{"mode":"http500","rate":1.5}"#),
        ("/__sim/faults", #"{"mode":"none","latency_ms":-1}"#),
        ("/__sim/faults", "nope"),
        ("/__sim/clock", #"{"advance_s":-5}"#),
        ("/__sim/clock", #"{}"#),
        ("/__sim/clock", #"{"advance_s":1e300}"#),
        ("/__sim/clock", #"{"advance_s":3200000000}"#),
        ("/__sim/expire", #"{"token":"x"}"#),
    ])
    func badControl(path: String, body: String) async throws {
        try await withSimulator { sim in
            let r = try await sim.request(.POST, path, body: body)
            #expect(r.status == 400)
            #expect((r.json["error"] as? String)?.isEmpty == false)
        }
    }
}

@Suite("Simulator: configuration")
struct ConfigurationCheckTests {
    @Test("a credentials file is read; malformed ones are refused with the path in the message")
    func credentialsFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kisgw-sim-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let good = dir.appendingPathComponent("good.json")
        try Data(#"[{"appKey":"PSa","appSecret":"s"},{"appKey":"PSb","appSecret":"t"}]"#.utf8).write(to: good)
        #expect(try SimulatorConfiguration.loadCredentials(path: good.path) == ["PSa": "s", "PSb": "t"])
        let bad = dir.appendingPathComponent("bad.json")
        try Data(#"{"appKey":"PSa"}"#.utf8).write(to: bad)
        #expect { try SimulatorConfiguration.loadCredentials(path: bad.path) } throws: { error in
            "\(error)".contains(bad.path)
        }
        #expect(throws: SimulatorError.self) { try SimulatorConfiguration.loadCredentials(path: dir.path + "/missing") }
        // An empty list would refuse every token; a repeated appKey would keep one of two secrets.
        for (name, json, says) in [("empty.json", "[]", "no credentials"),
                                   ("twice.json", #"[{"appKey":"PSa","appSecret":"s"},{"appKey":"PSa","appSecret":"t"}]"#, "repeats")] {
            let file = dir.appendingPathComponent(name)
            try Data(json.utf8).write(to: file)
            #expect { try SimulatorConfiguration.loadCredentials(path: file.path) } throws: { "\($0)".contains(says) }
        }
    }

    @Test("out-of-range options are refused naming the option", arguments: [
        (SimulatorConfiguration(port: 70000), "--port"),
        (SimulatorConfiguration(tokenTTL: 0), "--token-ttl-s"),
        (SimulatorConfiguration(ratePerSecond: 0), "--rate-per-s"),
        (SimulatorConfiguration(latencyMs: -1), "--latency-ms"),
        (SimulatorConfiguration(tokenLatencyMs: -1), "--token-latency-ms"),
        (SimulatorConfiguration(tlsCertificatePath: "/x.pem"), "--tls-cert"),
        // Near Int.max these overflowed when added to a time (the simulator crashed at the first token or call).
        (SimulatorConfiguration(tokenTTL: Int.max), "--token-ttl-s"),
        (SimulatorConfiguration(reuseWindow: Int.max), "--reuse-window-s"),
        (SimulatorConfiguration(issueInterval: Int.max), "--issue-interval-s"),
        (SimulatorConfiguration(ratePerSecond: Int.max), "--rate-per-s"),
        (SimulatorConfiguration(latencyMs: Int.max), "--latency-ms"),
        (SimulatorConfiguration(host: "not a host"), "--host"),
        (SimulatorConfiguration(host: "999.1.1.1"), "--host"),
    ])
    func options(config: SimulatorConfiguration, option: String) {
        #expect { try config.validate() } throws: { "\($0)".contains(option) }
    }
}

@Suite("Simulator: market data")
struct MarketDataTests {
    /// sim.md: "the same candle, on every run and machine" — pinned here, so that a platform whose `sin`, `exp`,
    /// `log` or `pow` round differently (another libm), or a change to the model, shows as a failure rather than as
    /// data that moved under the users' cached charts.
    @Test("known candles, pinned: KRX, Nasdaq and Hong Kong, adjusted and as traded")
    func pinnedCandles() throws {
        func candle(_ symbol: String, _ exchange: Exchange, _ date: String, adjusted: Bool = true) throws -> [Int64] {
            let p = try #require(MarketData.profile(symbol: symbol, exchange: exchange))
            let d = MarketData.day(p, try #require(CivilDate(yyyymmdd: date)), adjusted: adjusted)
            return [d.open, d.high, d.low, d.close, d.volume, d.turnover]
        }
        // open, high, low, close (in the exchange's minor unit: won, cents), volume, turnover
        #expect(try candle("005930", .krx, "20250304")
                == [57500, 58300, 57000, 57800, 72228984, 4164000927600])
        #expect(try candle("005930", .krx, "20180510")
                == [153100, 156800, 145200, 147300, 7834980, 1179947988000])
        #expect(try candle("AAPL", .nas, "20250304")
                == [20390, 20683, 20002, 20438, 6682471, 1361770647])
        #expect(try candle("0700", .hks, "20230801")
                == [62905, 63565, 59111, 59161, 80271856, 49114736453])
        #expect(try candle("000660", .krx, "20160104", adjusted: false)
                == [697000, 698000, 684000, 689000, 1286598, 890325816000])
        #expect(try candle("000660", .krx, "20160104", adjusted: true)
                == [139500, 139600, 136900, 137800, 6432987, 890647050150])
    }

    @Test("the same symbol and date give the same candle; KRX ticks; listed vs unknown codes")
    func determinism() throws {
        let p = try #require(MarketData.profile(symbol: "005930", exchange: .krx))
        let d = CivilDate(yyyymmdd: "20250304")!
        #expect(MarketData.day(p, d, adjusted: true) == MarketData.day(p, d, adjusted: true))
        // FNV-1a, fixed across runs and machines (never Swift's per-process Hasher).
        #expect(MarketData.hash("a") == 0xaf63_dc4c_8601_ec8c)
        #expect(MarketData.profile(symbol: "000000", exchange: .krx) == nil)
        #expect(MarketData.profile(symbol: "ZZZZ", exchange: .nas) == nil)
        #expect(MarketData.profile(symbol: "BRK/B", exchange: .nys) != nil)
        #expect(MarketData.format(23593, tickDecimals: 2, zdiv: 4) == "235.9300")
        #expect(MarketData.format(5, tickDecimals: 2, zdiv: 2) == "0.05")
        #expect(MarketData.format(65000, tickDecimals: 0, zdiv: 0) == "65000")
    }

    @Test("civil dates and KST round-trip")
    func dates() {
        #expect(CivilDate("2024-02-29")?.yyyymmdd == "20240229")
        #expect(CivilDate("20230229") == nil)
        #expect(CivilDate("2024-2-29") == nil)
        #expect(CivilDate(yyyymmdd: "20250303")?.weekday == 1)
        #expect(CivilDate(dayNumber: 0).iso == "1970-01-01")
        let t = Date(timeIntervalSince1970: 1_741_217_400)  // 2025-03-05 23:30:00 UTC
        #expect(KST.format(t) == "2025-03-06 08:30:00")
        #expect(KST.parse("2025-03-06 08:30:00") == t)
        #expect(KST.iso8601(t) == "2025-03-06T08:30:00+09:00")
        #expect(KST.parse("2025-03-06T08:30:00") == nil)
        for bad in ["2024-02-30", "2024_02-29", "2024-02-2x", "202402290", "", "2024-0229", "１２３４５６７８"] {
            #expect(CivilDate(bad) == nil, "\(bad)")
        }
        #expect(CivilDate("00010101")?.iso == "0001-01-01")
        #expect(CivilDate("2025-12-31")?.yyyymmdd == "20251231")
    }

    @Test("KIS numbers keep their digits: signs, leading zeros, spaces; anything else is refused")
    func exactNumbers() {
        let good: [(String, String)] = [
            ("+0012.50", "12.50"), ("12", "12"), ("0005", "5"), ("-0012", "-12"), ("0", "0"), ("000", "0"),
            ("-0", "0"), ("-0.00", "0.00"), ("-000.50", "-0.50"), (" 185.6400\t", "185.6400"), ("+0", "0"),
            ("123456789012345678901234567890", "123456789012345678901234567890"), ("0.000001", "0.000001"),
            // Already canonical (kept as they are) and near misses.
            ("18160", "18160"), ("-260", "-260"), ("0.16", "0.16"), ("-0.50", "-0.50"), ("10.0", "10.0"),
            ("0.0", "0.0"), ("-0.0", "0.0"), ("05.5", "5.5"), ("-05", "-5"), ("00.10", "0.10"), ("7", "7"),
        ]
        for (raw, text) in good { #expect(ExactNumber(raw)?.text == text, "\(raw)") }
        for bad in ["", " ", "+", "-", ".5", "5.", "-.5", "-5.", "1.2.3", "1..2", "1,000", "1e5", "--1", "+-1", "１２", "12a", "0x10", "1 2"] {
            #expect(ExactNumber(bad) == nil, "\(bad)")
        }
    }
}
