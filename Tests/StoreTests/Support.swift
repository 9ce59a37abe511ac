import Foundation
import Logging
import NIOCore
import Redis
import Store

/// Which implementation a parameterised contract test runs against.
enum Backend: String, CustomStringConvertible, Sendable {
    case memory
    case redis

    var description: String { self.rawValue }

    static let redisURL: String? = {
        let value = ProcessInfo.processInfo.environment["KISGW_TEST_REDIS_URL"]
        return value?.isEmpty == false ? value : nil
    }()

    /// Memory always; Redis when `KISGW_TEST_REDIS_URL` is set.
    static let available: [Backend] = redisURL == nil ? [.memory] : [.memory, .redis]

    static let logger: Logger = {
        var logger = Logger(label: "kisgw.store.tests")
        logger.logLevel = .critical
        return logger
    }()

    /// A fresh store whose keys no other test shares (unique prefix), and a way to close it.
    func makeStore() throws -> (store: any SharedStore, close: @Sendable () async -> Void) {
        let prefix = "kisgw-test-\(UUID().uuidString.prefix(8).lowercased()):"
        switch self {
        case .memory:
            return (MemoryStore(keyPrefix: prefix), {})
        case .redis:
            var configuration = try RedisConfiguration(url: Self.redisURL!)
            configuration.commandTimeout = .seconds(10)
            let client = RedisClient(configuration: configuration, logger: Self.logger)
            return (RedisStore(client: client, keyPrefix: prefix), { await client.shutdown() })
        }
    }
}

extension ByteBuffer {
    var text: String { String(buffer: self) }
}
