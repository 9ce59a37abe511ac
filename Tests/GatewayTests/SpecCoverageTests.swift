import Foundation
@testable import Gateway
import Hummingbird
import KIS
import KisgwConfiguration
import Logging
import NIOHTTP1
import Redis
@testable import Simulator
import Store
import TestSupport
import Testing
import Tokens

/// Rules of gateway-api.md checked over real sockets: freshness headers, parameters, the shared cache, coalescing
/// and problem bodies.
@Suite("Gateway: spec rules over real sockets")
struct GatewaySpecTests {
    static func maxAge(_ r: HTTPResult) -> Int? {
        (r.header("Cache-Control")?.firstMatch(of: /^private, max-age=(\d+)$/)).flatMap { Int($0.1) }
    }

    static func age(_ r: HTTPResult) -> Int? { r.header("Age").flatMap { Int($0) } }

    /// KIS chart calls the simulator has answered, domestic and overseas.
    static func chartCalls(_ g: GatewayFixture) async throws -> Int {
        try await g.simStats().filter { $0.key.hasSuffix("_daily") }.values.reduce(0, +)
    }

    // MARK: Cache-Control and Age

    /// A range that ended long ago is settled: fresh for settled_ttl_s (86400) from when the gateway stored it.
    /// Served again 2 s later by the hit path (same user), the router (another user) and another gateway (from the
    /// shared store), each answer says the entry's age and its freshness lifetime: a browser holds an answer fresh
    /// while `max-age` exceeds its age, which counts from `Age` (RFC 9111 §4.2), so `max-age` stays settled_ttl_s —
    /// what is left of it would be counted down twice (the browser's copy stale after 86400 − 2 × Age).
    static func settledAges(_ kind: StoreKind) async throws {
        try await withGateway(store: kind, gateways: 2) { g, urls in
            let a = "age-a-\(kind)", b = "age-b-\(kind)"
            let (jwtA, kisA) = try await g.signIn(a)
            let (jwtB, kisB) = try await g.signIn(b)
            let path = "/domestic/chart/daily/005380?start=2025-01-02&end=2025-02-28"
            let miss = try await g.get(path, jwt: jwtA, kis: kisA)
            #expect(miss.status == 200)
            #expect(miss.header("X-Cache") == "MISS")
            #expect(miss.header("Age").flatMap { Int($0) }.map { $0 <= 1 } == true)
            try await waitUntilShared(g.store, domesticChart: path)
            try await Task.sleep(for: .milliseconds(2100))
            let calls = try await Self.chartCalls(g)

            let viaHitPath = try await g.get(path, jwt: jwtA, kis: kisA)
            let viaRouter = try await g.get(path, jwt: jwtB, kis: kisB)
            let viaStore = try await g.get(path, jwt: jwtA, kis: kisA, base: urls[1])
            for (what, r) in [("same user", viaHitPath), ("another user", viaRouter), ("other gateway", viaStore)] {
                #expect(r.status == 200, "\(what)")
                #expect(r.header("X-Cache") == "HIT", "\(what)")
                #expect(r.header("ETag") == miss.header("ETag"), "\(what)")
                #expect(r.body == miss.body, "\(what)")
                let age = try #require(Self.age(r), "\(what): Age \(r.header("Age") ?? "missing")")
                let maxAge = try #require(Self.maxAge(r), "\(what): \(r.header("Cache-Control") ?? "no Cache-Control")")
                #expect(age >= 2 && age < 60, "\(what): Age \(age)")
                #expect(maxAge == 86_400, "\(what): max-age \(maxAge), Age \(age)")
            }
            #expect(try await Self.chartCalls(g) == calls)
        }
    }

    @Test("Age counts from when the entry was stored; max-age is settled_ttl_s, the freshness lifetime (memory store)")
    func settledAgesMemory() async throws {
        try await Self.settledAges(.memory)
    }

    @Test("Age counts from when the entry was stored; max-age is settled_ttl_s, the freshness lifetime (Redis)")
    func settledAgesRedis() async throws {
        try await Self.settledAges(.redis)
    }

    /// KIS takes over a second here: the entry is stored, and its age counted, from when KIS answered, so the
    /// answer says settled_ttl_s and an age of at most a second — not a lifetime that began at the request.
    @Test("a slow miss: max-age is settled_ttl_s and Age counts from when KIS answered")
    func slowMissMaxAge() async throws {
        let sim = SimulatorConfiguration(port: 0, environment: .live, issueInterval: 0, ratePerSecond: 1000,
                                         latencyMs: 1100)
        try await withGateway(sim: sim) { g, _ in
            let (jwt, kis) = try await g.signIn("slow-miss")
            let r = try await g.get("/domestic/chart/daily/012330?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(r.status == 200)
            #expect(r.header("X-Cache") == "MISS")
            let maxAge = try #require(Self.maxAge(r), "\(r.header("Cache-Control") ?? "no Cache-Control")")
            let age = try #require(Self.age(r))
            #expect(maxAge == 86_400, "max-age \(maxAge)")
            #expect(age <= 1, "Age \(age)")
        }
    }

    /// gateway-api.md, Freshness, through the gateway: a chart whose range includes today is live — `live_ttl_s`
    /// while the session is open, then a minute at a time while the day's bar settles, then until the next opening (at
    /// most settled_ttl_s) — and one that ended before the current trading day is settled. Whatever the hour the test
    /// runs at, the answer's max-age is the policy's TTL for that query at the moment the entry was stored, between
    /// what the policy says just before the request and just after it; and it is not settled_ttl_s.
    @Test("a chart that includes today is fresh for the policy's TTL at that moment (live, settling or until the next open), not settled_ttl_s",
          arguments: ["/domestic/chart/daily/000270", "/overseas/NAS/chart/daily/AAPL", "/overseas/TSE/chart/daily/7203"])
    func todayFreshnessThroughTheGateway(route: String) async throws {
        let cache = KisgwConfig.Cache(liveTTLS: 7, settledTTLS: 30 * 86_400)
        let policy = FreshnessPolicy(liveTTL: 7, settledTTL: 30 * 86_400)
        try await withGateway(config: { testConfig(simURL: $0, cache: cache) }) { g, _ in
            let (jwt, kis) = try await g.signIn("today-fresh")
            let parts = route.split(separator: "/")
            func query(_ now: Date) throws -> ChartQuery {  // no start, no end: the default range, ending today
                parts[0] == "domestic"
                    ? try ChartQuery.domestic(symbol: parts[3], query: [:], maxRangeDays: 3660, now: now)
                    : try ChartQuery.overseas(exchange: parts[1], symbol: parts[4], query: [:], maxRangeDays: 3660, now: now)
            }
            let before = Date()
            let ttlBefore = policy.ttl(for: try query(before), now: before)
            let r = try await g.get(route, jwt: jwt, kis: kis)
            let after = Date()
            let ttlAfter = policy.ttl(for: try query(after), now: after)
            #expect(r.status == 200, "\(r.status) \(r.text)")
            #expect(r.header("X-Cache") == "MISS")
            let maxAge = try #require(Self.maxAge(r), "\(r.header("Cache-Control") ?? "no Cache-Control")")
            #expect(min(ttlBefore, ttlAfter) <= maxAge && maxAge <= max(ttlBefore, ttlAfter),
                    "max-age \(maxAge), the policy's TTL \(ttlBefore) before the request and \(ttlAfter) after")
            #expect(maxAge < 30 * 86_400, "max-age \(maxAge) is settled_ttl_s: today's chart was taken as settled")
        }
    }

    // MARK: parameters

    /// kis-api.md §4 and §5: `FID_ORG_ADJ_PRC` `0` and `MODP` `1` ask for adjusted prices. The body's `adjusted` flag
    /// was asserted, not the prices: KIS called with either flag the wrong way round would have served original
    /// prices as adjusted (and cached them for everyone). The simulator's split makes the two differ.
    /// KIS's overseas chart has no start date and dates a week's (month's) candle by its first trading day: for a
    /// range starting mid-week that candle came dated before `start` and was dropped — an empty chart for a range
    /// inside one week or month. Kept now, with KIS's values, dated at the range's first weekday.
    @Test("overseas weekly and monthly: the period that contains start is in the chart, dated at the range's first weekday")
    func overseasFirstPeriod() async throws {
        try await withGateway { g, _ in
            let (jwt, kis) = try await g.signIn("first-period")
            func candles(_ query: String) async throws -> [[String: Any]] {
                let r = try await g.get("/overseas/NAS/chart/daily/AAPL?" + query, jwt: jwt, kis: kis)
                #expect(r.status == 200, "\(query): \(r.text)")
                return r.json["candles"] as? [[String: Any]] ?? []
            }
            func values(_ c: [String: Any]) -> [String] {
                ["open", "high", "low", "close", "volume"].map { "\(c[$0] ?? "-")" }
            }
            // 2025-01-06 is a Monday; the week from it, asked whole and from its Wednesday.
            let week = try await candles("start=2025-01-06&end=2025-01-10&period=W")
            let fromWednesday = try await candles("start=2025-01-08&end=2025-01-10&period=W")
            #expect(week.map { $0["date"] as? String } == ["2025-01-06"])
            #expect(fromWednesday.map { $0["date"] as? String } == ["2025-01-08"])
            #expect(fromWednesday.map(values) == week.map(values))
            // A range from a Saturday: the next week's candle only (the week of the Saturday traded before it).
            let fromSaturday = try await candles("start=2025-01-11&end=2025-01-17&period=W")
            #expect(fromSaturday.map { $0["date"] as? String } == ["2025-01-13"])
            #expect(try await candles("start=2025-01-11&end=2025-01-12&period=W").isEmpty)
            // A month from its 15th (a Wednesday), and over two months: the first one's candle dated the 15th.
            let january = try await candles("start=2025-01-01&end=2025-01-31&period=M")
            let fromMidJanuary = try await candles("start=2025-01-15&end=2025-02-28&period=M")
            #expect(fromMidJanuary.map { $0["date"] as? String } == ["2025-01-15", "2025-02-03"])
            #expect(fromMidJanuary.first.map(values) == january.first.map(values))
            // Daily candles are as they were: none before start.
            #expect(try await candles("start=2025-01-14&end=2025-01-16").map { $0["date"] as? String }
                    == ["2025-01-14", "2025-01-15", "2025-01-16"])
        }
    }

    @Test("adjusted=true gives KIS's split-adjusted prices and adjusted=false the original ones, domestic and overseas",
          arguments: [Exchange.krx, .nas])
    func adjustedPricesReachKIS(exchange: Exchange) async throws {
        var found: (symbol: String, split: (date: CivilDate, ratio: Int64))? = nil
        for n in 1..<2_000 where found == nil {
            // Six digits at KRX, three capital letters at Nasdaq.
            let letters = [n / 676 % 26, n / 26 % 26, n % 26].map { UInt8(65 + $0) }
            let symbol = exchange == .krx ? String(format: "%06d", n * 10) : String(decoding: letters, as: UTF8.self)
            if let split = MarketData.profile(symbol: symbol, exchange: exchange)?.split,
                split.date > CivilDate(yyyymmdd: "20160101")!
            {
                found = (symbol, split)
            }
        }
        let (symbol, split) = try #require(found)
        try await withGateway { g, _ in
            let (jwt, kis) = try await g.signIn("adj-\(exchange.rawValue)")
            let range = "start=\(split.date.adding(days: -20).iso)&end=\(split.date.adding(days: 20).iso)"
            let path = exchange == .krx ? "/domestic/chart/daily/\(symbol)?\(range)" : "/overseas/NAS/chart/daily/\(symbol)?\(range)"
            func closes(_ adjusted: Bool) async throws -> [String: Double] {
                let r = try await g.get(path + "&adjusted=\(adjusted)", jwt: jwt, kis: kis)
                #expect(r.status == 200, "\(r.text)")
                var out: [String: Double] = [:]
                for c in r.candles { out[c["date"] as! String] = (c["close"] as! NSNumber).doubleValue }
                return out
            }
            let adjusted = try await closes(true), original = try await closes(false)
            #expect(!adjusted.isEmpty && Set(adjusted.keys) == Set(original.keys))
            var before = 0
            for (date, a) in adjusted {
                let o = original[date]!
                if date < split.date.iso {
                    before += 1
                    #expect(abs(o / a - Double(split.ratio)) / Double(split.ratio) < 0.05, "\(date): \(o) / \(a)")
                } else {
                    #expect(a == o, "\(date)")
                }
            }
            #expect(before > 5)
        }
    }

    @Test("period=w&adjusted=false: 200 and the body says W and false; without them D and true")
    func periodAndAdjusted() async throws {
        try await withGateway { g, _ in
            let (jwt, kis) = try await g.signIn("params")
            let base = "/domestic/chart/daily/005930?start=2024-01-02&end=2025-03-31"
            let weekly = try await g.get(base + "&period=w&adjusted=false", jwt: jwt, kis: kis)
            #expect(weekly.status == 200, "\(weekly.text)")
            #expect(weekly.json["period"] as? String == "W")
            #expect(weekly.json["adjusted"] as? Bool == false)
            let daily = try await g.get(base, jwt: jwt, kis: kis)
            #expect(daily.status == 200)
            #expect(daily.json["period"] as? String == "D")
            #expect(daily.json["adjusted"] as? Bool == true)
            // The period reached KIS: a week's bar per week, not a day's.
            #expect(!weekly.candles.isEmpty && weekly.candles.count * 3 < daily.candles.count)
            let yearly = try await g.get(base + "&period=Y", jwt: jwt, kis: kis)
            #expect(yearly.status == 200)
            #expect(yearly.json["period"] as? String == "Y")

            let monthly = try await g.get("/overseas/nas/chart/daily/aapl?start=2024-01-02&end=2025-03-31&period=m&adjusted=false",
                                          jwt: jwt, kis: kis)
            #expect(monthly.status == 200, "\(monthly.text)")
            #expect(monthly.json["market"] as? String == "overseas")
            #expect(monthly.json["period"] as? String == "M")
            #expect(monthly.json["adjusted"] as? Bool == false)
            let overseasYearly = try await g.get("/overseas/NAS/chart/daily/AAPL?period=y", jwt: jwt, kis: kis)
            #expect(overseasYearly.status == 400)
            #expect(overseasYearly.code == "invalid_parameter")
        }
    }

    @Test("every overseas exchange, in lower case: 200 with market overseas, its code and its currency")
    func everyExchange() async throws {
        let cases: [(String, String, String)] = [
            ("nas", "aapl", "USD"), ("nys", "jpm", "USD"), ("ams", "spy", "USD"), ("hks", "0700", "HKD"),
            ("tse", "7203", "JPY"), ("shs", "600519", "CNY"), ("szs", "000001", "CNY"), ("hsx", "vnm", "VND"),
            ("hnx", "shb", "VND"),
        ]
        try await withGateway { g, _ in
            let (jwt, kis) = try await g.signIn("excd")
            for (exchange, symbol, currency) in cases {
                let r = try await g.get("/overseas/\(exchange)/chart/daily/\(symbol)?start=2025-01-06&end=2025-01-31",
                                        jwt: jwt, kis: kis)
                #expect(r.status == 200, "\(exchange): \(r.text)")
                #expect(r.json["market"] as? String == "overseas", "\(exchange)")
                #expect(r.json["exchange"] as? String == exchange.uppercased(), "\(exchange)")
                #expect(r.json["symbol"] as? String == symbol.uppercased(), "\(exchange)")
                #expect(r.json["currency"] as? String == currency, "\(exchange)")
                #expect(r.json["period"] as? String == "D", "\(exchange)")
                #expect(r.json["adjusted"] as? Bool == true, "\(exchange)")
                #expect(!r.candles.isEmpty, "\(exchange)")
            }
        }
    }

    @Test("symbols and exchanges: 00593- and the overseas route for KRX are refused; q500001 is upper-cased")
    func symbolsAndExchanges() async throws {
        try await withGateway { g, _ in
            let (jwt, kis) = try await g.signIn("sym")
            for path in ["/domestic/chart/daily/00593-", "/overseas/KRX/chart/daily/AAPL", "/overseas/krx/chart/daily/005930"] {
                let r = try await g.get(path, jwt: jwt, kis: kis)
                #expect(r.status == 400, "\(path)")
                #expect(r.code == "invalid_parameter", "\(path)")
            }
            let etn = try await g.get("/domestic/chart/daily/q500001?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(etn.status == 200, "\(etn.text)")
            #expect(etn.json["symbol"] as? String == "Q500001")
            #expect(!etn.candles.isEmpty)
            #expect(try await g.simStats()["domestic_daily"] == 1)
        }
    }

    @Test("unknown query parameters are ignored: the same cache entry answers, no new KIS call")
    func unknownParameters() async throws {
        try await withGateway { g, _ in
            let (jwt, kis) = try await g.signIn("unk")
            let path = "/domestic/chart/daily/000270?start=2025-01-02&end=2025-01-31"
            let first = try await g.get(path, jwt: jwt, kis: kis)
            #expect(first.status == 200 && first.header("X-Cache") == "MISS")
            let calls = try await Self.chartCalls(g)
            // Also the same resolved values written otherwise: the key is built from what they resolve to.
            for variant in [path + "&foo=1", path + "&foo", "/domestic/chart/daily/000270?foo=1&start=20250102&end=20250131",
                            path + "&period=D&adjusted=true"] {
                let r = try await g.get(variant, jwt: jwt, kis: kis)
                #expect(r.status == 200, "\(variant): \(r.text)")
                #expect(r.header("X-Cache") == "HIT", "\(variant)")
                #expect(r.body == first.body, "\(variant)")
            }
            #expect(try await Self.chartCalls(g) == calls)
        }
    }

    // MARK: the shared cache

    @Test("the cache is shared by all users; its key includes period and adjusted")
    func sharedAcrossUsers() async throws {
        try await withGateway { g, _ in
            let (jwtA, kisA) = try await g.signIn("share-a")
            let (jwtB, kisB) = try await g.signIn("share-b")
            let path = "/domestic/chart/daily/055550?start=2025-01-02&end=2025-02-28"
            let a = try await g.get(path, jwt: jwtA, kis: kisA)
            #expect(a.status == 200 && a.header("X-Cache") == "MISS")
            let calls = try await Self.chartCalls(g)
            #expect(calls >= 1)
            let b = try await g.get(path, jwt: jwtB, kis: kisB)
            #expect(b.status == 200)
            #expect(b.header("X-Cache") == "HIT")
            #expect(b.body == a.body)
            #expect(b.header("ETag") == a.header("ETag"))
            #expect(try await Self.chartCalls(g) == calls)

            let raw = try await g.get(path + "&adjusted=false", jwt: jwtB, kis: kisB)
            #expect(raw.status == 200)
            #expect(raw.header("X-Cache") == "MISS")
            #expect(raw.json["adjusted"] as? Bool == false)
            let afterRaw = try await Self.chartCalls(g)
            #expect(afterRaw > calls)
            let weekly = try await g.get(path + "&period=W", jwt: jwtB, kis: kisB)
            #expect(weekly.status == 200)
            #expect(weekly.header("X-Cache") == "MISS")
            #expect(try await Self.chartCalls(g) > afterRaw)
            // And user A now finds user B's entries.
            #expect(try await g.get(path + "&adjusted=false", jwt: jwtA, kis: kisA).header("X-Cache") == "HIT")

            // The ETag is a validator of the body (gateway-api.md: "a strong validator of the body"), not of the
            // user or the URL alone: other bodies have other ETags, so a client's copy of one never answers 304 for
            // another.
            let etags = [a, raw, weekly].compactMap { $0.header("ETag") }
            #expect(etags.count == 3 && Set(etags).count == 3, "\(etags)")
            #expect(Set([a.body, raw.body, weekly.body]).count == 3)
            let other = try await g.get(path + "&period=W", jwt: jwtA, kis: kisA, headers: [("If-None-Match", etags[0])])
            #expect(other.status == 200 && other.body == weekly.body)
            #expect(try await g.get(path + "&period=W", jwt: jwtA, kis: kisA,
                                    headers: [("If-None-Match", etags[2])]).status == 304)
        }
    }

    // MARK: coalescing

    @Test("50 concurrent identical misses: one KIS fetch, and the requests that waited for it say MISS")
    func coalescedWaitersSayMiss() async throws {
        try await withGateway { g, _ in
            let (jwt, kis) = try await g.signIn("co-miss")
            _ = try await g.sim(.POST, "/__sim/faults", #"{"mode":"none","latency_ms":300}"#)
            let answers = try await withThrowingTaskGroup(of: (Int, String?).self) { group in
                for _ in 0..<50 {
                    group.addTask {
                        let r = try await g.get("/domestic/chart/daily/006400?start=2025-01-02&end=2025-03-31",
                                                jwt: jwt, kis: kis)
                        return (r.status, r.header("X-Cache"))
                    }
                }
                return try await group.reduce(into: [(Int, String?)]()) { $0.append($1) }
            }
            #expect(answers.allSatisfy { $0.0 == 200 })
            #expect(try await g.simStats()["domestic_daily"] == 1)
            let misses = answers.filter { $0.1 == "MISS" }.count
            #expect(misses > 1, "X-Cache: \(answers.map { $0.1 ?? "-" })")
            #expect(answers.allSatisfy { $0.1 == "MISS" || $0.1 == "HIT" })
        }
    }

    // MARK: problems and CORS

    @Test("problem bodies carry title and status equal to the HTTP status")
    func problemBodies() async throws {
        try await withGateway { g, _ in
            let (jwt, kis) = try await g.signIn("prob")
            let answers = [
                try await g.get("/domestic/chart/daily/00593-", jwt: jwt, kis: kis),
                try await g.get("/domestic/chart/daily/005930?start=2000-01-01&end=2020-01-01", jwt: jwt, kis: kis),
                try await g.get("/domestic/chart/daily/005930", jwt: nil, kis: kis),
                try await g.get("/domestic/chart/daily/005930", jwt: "not.a.jwt", kis: kis),
                try await g.get("/nope", jwt: nil, kis: nil),
                try await http(.DELETE, g.gatewayURL + "/domestic/chart/daily/005930"),
            ]
            #expect(answers.map(\.status) == [400, 400, 401, 401, 404, 405])
            for r in answers {
                #expect(r.header("Content-Type") == "application/problem+json", "\(r.status)")
                #expect(r.json["status"] as? Int == r.status, "\(r.text)")
                let title = r.json["title"] as? String
                #expect(title?.isEmpty == false, "\(r.text)")
                #expect(r.json["type"] as? String == "https://kisgw.dev/problems/\(r.code ?? "")", "\(r.text)")
            }
            // The spec's own example.
            _ = try await g.sim(.POST, "/__sim/expire", #"{"access_token":"\#(kis)"}"#)
            let expired = try await g.get("/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31", jwt: jwt, kis: kis)
            #expect(expired.status == 401)
            #expect(expired.code == "kis_token_expired")
            #expect(expired.json["title"] as? String == "KIS token expired")
            #expect(expired.json["status"] as? Int == 401)
        }
    }

    @Test("an allowed origin gets Access-Control-Allow-Credentials: true and the exposed headers on errors, on success and on a 304")
    func credentialsOnErrors() async throws {
        try await withGateway { g, _ in
            let origin = [("Origin", "http://localhost:3000")]
            let kis = try await g.connect(user: "acac", appKey: "PSapp-acac")
            let expiredJWT = try await g.jwt("acac", ttl: -3600)
            let path = "/domestic/chart/daily/005930?start=2025-01-02&end=2025-01-31"
            // No credentials; an expired JWT twice (the second is answered from what the first taught); a 400.
            let answers = [
                try await g.get(path, jwt: nil, kis: nil, headers: origin),
                try await g.get(path, jwt: expiredJWT, kis: kis, headers: origin),
                try await g.get(path, jwt: expiredJWT, kis: kis, headers: origin),
                try await g.get("/domestic/chart/daily/00593-", jwt: try await g.jwt("acac"), kis: kis, headers: origin),
                try await g.get(path, jwt: try await g.jwt("acac"), kis: kis, headers: origin),
            ]
            // And a 304 (the hit path's answer, as the 200 above may be the router's).
            let etag = try #require(answers[4].header("ETag"))
            let notModified = try await g.get(path, jwt: try await g.jwt("acac"), kis: kis,
                                              headers: origin + [("If-None-Match", etag)])
            #expect(answers.map(\.status) + [notModified.status] == [401, 401, 401, 400, 200, 304])
            for r in answers + [notModified] {
                #expect(r.header("Access-Control-Allow-Origin") == "http://localhost:3000", "\(r.status)")
                #expect(r.header("Access-Control-Allow-Credentials") == "true", "\(r.status)")
                #expect(r.header("Access-Control-Expose-Headers") == "ETag, X-Cache, Age, Retry-After, Server-Timing",
                        "\(r.status)")
            }
        }
    }

    @Test("range boundary: end − start = max_range_days (3660) is answered, one day more is range_too_large")
    func rangeBoundary() async throws {
        try await withGateway { g, _ in
            let (jwt, kis) = try await g.signIn("range")
            let longest = try await g.get("/domestic/chart/daily/005930?start=2015-01-01&end=2025-01-08&period=M",
                                          jwt: jwt, kis: kis)
            #expect(longest.status == 200, "\(longest.text)")
            #expect(longest.json["start"] as? String == "2015-01-01")
            for path in ["/domestic/chart/daily/005930?start=2015-01-01&end=2025-01-09&period=M",
                         "/overseas/NAS/chart/daily/AAPL?start=20150101&end=20250109"] {
                let r = try await g.get(path, jwt: jwt, kis: kis)
                #expect(r.status == 400, "\(path)")
                #expect(r.code == "range_too_large", "\(path)")
                #expect(r.json["status"] as? Int == 400)
            }
        }
    }

    /// `[limits] max_range_days` set to 30 reaches both ways a request is answered: the hit path (a user's second
    /// request) and the router (the first), domestic and overseas; and the default range (150 days before `end`) is
    /// cut to it rather than refused.
    @Test("[limits] max_range_days = 30: 30 days are answered, 31 are range_too_large, the default range is 30 days")
    func configuredRangeLimit() async throws {
        try await withGateway(config: { testConfig(simURL: $0, maxRangeDays: 30) }) { g, _ in
            let (jwt, kis) = try await g.signIn("range-30")
            for _ in 0..<2 {  // the router's answer first, then the hit path's for the same user
                for base in ["/domestic/chart/daily/005930", "/overseas/NAS/chart/daily/AAPL"] {
                    let longest = try await g.get(base + "?start=2025-01-01&end=2025-01-31", jwt: jwt, kis: kis)
                    #expect(longest.status == 200, "\(base): \(longest.text)")
                    let tooLong = try await g.get(base + "?start=2025-01-01&end=2025-02-01", jwt: jwt, kis: kis)
                    #expect(tooLong.status == 400, "\(base)")
                    #expect(tooLong.code == "range_too_large", "\(base): \(tooLong.text)")
                    let defaulted = try await g.get(base + "?end=2025-03-31", jwt: jwt, kis: kis)
                    #expect(defaulted.status == 200, "\(base): \(defaulted.text)")
                    #expect(defaulted.json["start"] as? String == "2025-03-01", "\(base)")
                }
            }
        }
    }
}
