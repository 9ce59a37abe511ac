import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Test environment: the shared Redis named by `KISGW_TEST_REDIS_URL`, and
/// private `redis-server` processes for tests that stop, restart or pause it.
enum TestEnvironment {
    static let redisURL: String? = {
        let value = ProcessInfo.processInfo.environment["KISGW_TEST_REDIS_URL"]
        return value?.isEmpty == false ? value : nil
    }()

    static var hasRedis: Bool { redisURL != nil }

    static let logger: Logger = {
        var logger = Logger(label: "kisgw.redis.tests")
        logger.logLevel = ProcessInfo.processInfo.environment["KISGW_TEST_LOG"] == "debug" ? .debug : .critical
        return logger
    }()

    /// A key no other test (or test run) uses.
    static func uniqueKey(_ name: String = #function) -> String {
        let clean = name.prefix { $0 != "(" }
        return "test:\(clean):\(UUID().uuidString.prefix(8))"
    }
}
