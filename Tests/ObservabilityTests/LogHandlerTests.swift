import Foundation
import Logging
import Metrics
import Observability
import Prometheus
import Testing

@Suite("Log handlers")
struct LogHandlerTests {
    private func logger(_ format: LogFormat, _ buffer: LogBuffer, level: Logger.Level = .trace) -> Logger {
        Logger(label: "kisgw.test") { label in
            LoggingSetup.makeHandler(label: label, level: level, format: format, output: buffer.output)
        }
    }

    private func logSecrets(_ logger: Logger) {
        var logger = logger
        logger[metadataKey: "app_key"] = "\(Samples.appKey)"
        logger.info(
            "issued \(Samples.jwt) for account \(Samples.account) with appsecret=\(Samples.appSecret)",
            metadata: [
                "token": "\(Samples.jwt)",
                "appsecret": "\(Samples.appSecret)",
                "account_number": "\(Samples.account)",
                "note": "account \(Samples.account) token \(Samples.jwt)",
                "detail": ["x-kis-token": "\(Samples.jwt)", "symbol": "005930"],
                "symbol": "005930",
            ]
        )
    }

    @Test(arguments: LogFormat.allCases)
    func secretsNeverReachTheOutput(format: LogFormat) {
        let buffer = LogBuffer()
        logSecrets(logger(format, buffer))
        let text = buffer.text
        #expect(buffer.lines.count == 1)
        for secret in [Samples.jwt, Samples.appKey, Samples.appSecret, Samples.account, "eyJ", "12345678"] {
            #expect(!text.contains(secret), "\(format) output leaked \(secret): \(text)")
        }
        #expect(text.contains("005930"))
        #expect(text.contains("1234****-01"))
        #expect(text.contains("[REDACTED]"))
    }

    @Test func jsonLinesParseAndCarryTheFields() throws {
        let buffer = LogBuffer()
        var logger = logger(.json, buffer)
        logger[metadataKey: "request_id"] = "r-1"
        logger.warning(
            "quote \"x\"\nnext line\t\u{01}",
            metadata: ["symbol": "005930", "http": ["status": "200"], "list": ["a", "b"], "level": "shadow"],
            source: "Gateway"
        )
        logSecrets(logger)
        #expect(buffer.lines.count == 2)
        for line in buffer.lines {
            #expect(line.hasSuffix("}\n"))
            #expect(line.dropLast().contains("\n") == false)
        }
        let first = try #require(
            try JSONSerialization.jsonObject(with: Data(buffer.lines[0].utf8)) as? [String: Any]
        )
        #expect(first["level"] as? String == "warning")
        #expect(first["label"] as? String == "kisgw.test")
        #expect(first["message"] as? String == "quote \"x\"\nnext line\t\u{01}")
        #expect(first["source"] as? String == "Gateway")
        #expect(first["symbol"] as? String == "005930")
        #expect(first["http.status"] as? String == "200")
        #expect(first["list"] as? [String] == ["a", "b"])
        #expect(first["meta.level"] as? String == "shadow")
        #expect(first["request_id"] as? String == "r-1")
        let ts = try #require(first["ts"] as? String)
        // 2026-11-25T20:04:48.123Z
        #expect(ts.count == 24)
        #expect(ts.hasSuffix("Z"))
        #expect(ts.dropFirst(19).first == ".")
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let date = try #require(formatter.date(from: ts))
        #expect(abs(date.timeIntervalSinceNow) < 60)

        let second = try #require(
            try JSONSerialization.jsonObject(with: Data(buffer.lines[1].utf8)) as? [String: Any]
        )
        #expect(second["token"] as? String == "[REDACTED]")
        #expect(second["app_key"] as? String == "[REDACTED]")
        #expect(second["account_number"] as? String == "[REDACTED]")
        #expect(second["detail.x-kis-token"] as? String == "[REDACTED]")
        #expect(second["detail.symbol"] as? String == "005930")
    }

    @Test func textLineLooksLikeStreamLogHandler() throws {
        let buffer = LogBuffer()
        let logger = logger(.text, buffer)
        logger.error("boom", metadata: ["b": "2", "a": "1"], source: "Store")
        let line = try #require(buffer.lines.first)
        let parts = line.split(separator: " ", maxSplits: 1)
        #expect(parts.count == 2)
        #expect(parts[0].count == 24)
        #expect(parts[1] == "error kisgw.test : a=1 b=2 [Store] boom\n")
    }

    /// A value from a request (a JWT's `sub`) with a line break cannot forge a record of its own.
    @Test func textLinesStayOneLine() throws {
        let buffer = LogBuffer()
        let logger = logger(.text, buffer)
        logger.warning("refresh failed\rfor", metadata: ["user": "eve\n2026-01-01T00:00:00.000Z info kisgw : forged", "tab": "a\tb\u{1}"])
        #expect(buffer.lines.count == 1)
        let line = try #require(buffer.lines.first)
        #expect(line.filter { $0 == "\n" || $0 == "\r" }.count == 1 && line.hasSuffix("\n"))
        #expect(line.contains(#"user=eve\n2026-01-01T00:00:00.000Z info kisgw : forged"#))
        #expect(line.contains(#"tab=a\tb\u{1}"#))
        #expect(line.contains(#"refresh failed\rfor"#))
    }

    @Test func levelFiltersAndMetadataIsAValue() {
        let buffer = LogBuffer()
        let one = logger(.text, buffer, level: .notice)
        one.info("dropped")
        one.notice("kept")
        var two = one
        two[metadataKey: "only"] = "two"
        one.notice("one")
        #expect(buffer.lines.count == 2)
        #expect(!buffer.lines[1].contains("only=two"))
        two.notice("two")
        #expect(buffer.lines.count == 3)
        #expect(buffer.lines[2].contains("only=two"))
        #expect(!buffer.lines.contains { $0.contains("dropped") })
    }

    @Test func metadataProviderValuesAreScrubbedToo() {
        let buffer = LogBuffer()
        let provider = Logger.MetadataProvider { ["password": "pw-from-provider", "trace": "t1"] }
        let logger = Logger(label: "p") { label in
            LoggingSetup.makeHandler(
                label: label, format: .json, output: buffer.output, metadataProvider: provider)
        }
        logger.info("hi")
        #expect(!buffer.text.contains("pw-from-provider"))
        #expect(buffer.text.contains("\"trace\":\"t1\""))
    }

    @Test func redactingHandlerWrapsAnyHandler() {
        let buffer = LogBuffer()
        let logger = Logger(label: "w") { label in
            RedactingLogHandler(wrapping: TextLogHandler(label: label, output: buffer.output))
        }
        struct Failure: Error, CustomStringConvertible { var description: String { "failed with \(Samples.jwt)" } }
        logger.info("x \(Samples.appKey)", error: Failure())
        #expect(buffer.lines.count == 1)
        #expect(!buffer.text.contains(Samples.appKey))
        #expect(!buffer.text.contains(Samples.jwt))
    }
}

@Suite("Metrics")
struct MetricsTests {
    @Test func bootstrapIsIdempotentAndRenders() throws {
        let registry = MetricsSetup.bootstrap()
        let again = MetricsSetup.bootstrap()
        #expect(registry === again)
        // Through swift-metrics, so this checks the factory is installed.
        Counter(label: "kisgw_test_total", dimensions: [("route", "chart")]).increment(by: 3)
        Gauge(label: "kisgw_test_direct").record(2)
        let text = MetricsSetup.render(registry)
        #expect(text.contains("# TYPE kisgw_test_total counter"))
        #expect(text.contains("kisgw_test_total{route=\"chart\"} 3"))
        #expect(text.contains("kisgw_test_direct 2"))
        #expect(MetricsSetup.contentType.hasPrefix("text/plain; version=0.0.4"))
    }
}
