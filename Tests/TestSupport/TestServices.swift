import Foundation

/// The shared services the tests talk to, named in the environment by `scripts/test`, which starts them. A test that
/// needs one asks for it here and fails, naming the variable, when it is unset: it never passes by not running.
public enum TestServices {
    /// `KISGW_TEST_REDIS_URL`: the Redis the tests share (each under a key prefix of its own).
    @discardableResult
    public static func requireRedisURL() throws -> String {
        try require("KISGW_TEST_REDIS_URL", set: "starts a redis-server and sets it")
    }

    /// `KISGW_TEST_POSTGRES_URL`: the PostgreSQL cluster's administrator, who creates a database for each test.
    @discardableResult
    public static func requirePostgresURL() throws -> String {
        try require("KISGW_TEST_POSTGRES_URL", set: "starts a PostgreSQL server and sets it")
    }

    /// `KISGW_TEST_POSTGRES_TLS_CA`: the CA (PEM) that signed the cluster's TLS certificate, for 127.0.0.1.
    @discardableResult
    public static func requirePostgresTLSCA() throws -> String {
        try require("KISGW_TEST_POSTGRES_TLS_CA", set: "serves TLS on its PostgreSQL server with a CA of its own and sets it")
    }

    /// `KISGW_TEST_POSTGRES_PASSWORD_ROLE`: a role of that cluster that must give its password.
    @discardableResult
    public static func requirePostgresPasswordRole() throws -> String {
        try require("KISGW_TEST_POSTGRES_PASSWORD_ROLE", set: "makes its PostgreSQL server ask that role for a password and sets it")
    }

    /// The variable's value; an empty one counts as unset.
    private static func require(_ variable: String, set how: String) throws -> String {
        guard let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty else {
            throw Missing(description: "\(variable) is not set (scripts/test \(how))")
        }
        return value
    }

    /// A service the test needs is not named in the environment.
    public struct Missing: Error, CustomStringConvertible {
        public let description: String
    }
}
