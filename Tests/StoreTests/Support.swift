import Foundation
import Logging
import NIOCore
import Redis
import Store
import TestSupport

/// Which implementation a parameterised contract test runs against.
/// Every case runs every time: without `KISGW_TEST_REDIS_URL` the Redis ones fail, naming it.
enum Backend: String, CaseIterable, CustomStringConvertible, Sendable {
    case memory
    case redis

    var description: String { self.rawValue }

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
            var configuration = try RedisConfiguration(url: TestServices.requireRedisURL())
            configuration.commandTimeout = .seconds(10)
            let client = RedisClient(configuration: configuration, logger: Self.logger)
            return (RedisStore(client: client, keyPrefix: prefix), { await client.shutdown() })
        }
    }
}

extension ByteBuffer {
    var text: String { String(buffer: self) }
}
