import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the Redis client's tests share: a quiet logger and keys of their own (the shared Redis is
/// `TestServices.requireRedisURL()`; the tests that stop, restart or pause one run a `RedisServerProcess`).
enum TestEnvironment {
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
