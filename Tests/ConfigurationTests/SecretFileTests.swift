import Foundation
import KisgwConfiguration
import Testing

/// Secret files other users may read or write are warned about at start-up (one warning each, naming the key, the
/// path and the mode, never the content); a file only its owner may read is not. A warning, not a refusal:
/// containers commonly mount secrets 0644.
@Suite("Secret files readable or writable by other users")
struct SecretFileTests {
    private func chmod(_ path: String, _ mode: Int) throws {
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
    }

    @Test("a 0644 HS256 secret file (KISGW_AUTH_JWT_HS256_SECRET_FILE) is one warning naming key, path and mode; 0600 none")
    func jwtSecretFile() throws {
        let secret = writeFile(goodSecret + "\n", name: "jwt-secret")
        try chmod(secret, 0o644)
        let environment = ["KISGW_AUTH_JWT_HS256_SECRET_FILE": secret]
        let config = try KisgwConfig.load(environmentOnly: environment)
        for role in [KisgwConfig.Role.gateway, .broker, .jwt] {
            let warnings = config.looseSecretFileWarnings(for: role)
            #expect(warnings == [
                "[auth.jwt] hs256_secret_file (KISGW_AUTH_JWT_HS256_SECRET_FILE) \"\(secret)\" is readable by other users "
                    + "(mode 0644); chmod 600 it",
            ], "\(role)")
            #expect(!warnings.joined().contains(goodSecret))
        }
        try chmod(secret, 0o600)
        #expect(try KisgwConfig.load(environmentOnly: environment).looseSecretFileWarnings(for: .broker).isEmpty)
        try chmod(secret, 0o400)
        #expect(try KisgwConfig.load(environmentOnly: environment).looseSecretFileWarnings(for: .broker).isEmpty)
        try chmod(secret, 0o620)
        #expect(config.looseSecretFileWarnings(for: .broker).first?.contains("is writable by other users (mode 0620)") == true)
    }

    @Test("the seal keys file and the password files: a warning each, for the roles that read them")
    func otherSecretFiles() throws {
        let dir = temporaryDirectory()
        let keys = writeFile("k1 = \"\(base64Key(32))\"\n", name: "keys.toml", in: dir)
        let redisPassword = writeFile("redis-password\n", name: "redis-password", in: dir)
        let dbPassword = writeFile("db-password\n", name: "db-password", in: dir)
        try chmod(keys, 0o640)
        try chmod(redisPassword, 0o666)
        try chmod(dbPassword, 0o604)
        let toml = writeFile("""
            [store]
            backend = "redis"
            [redis]
            url = "redis://127.0.0.1:6379/0"
            password_file = "\(redisPassword)"
            [seal]
            keys_file = "\(keys)"
            [broker]
            database = "postgres://kisgw@127.0.0.1:5432/kisgw"
            database_password_file = "\(dbPassword)"
            """, in: dir)
        let config = try KisgwConfig.load(file: toml, environment: [:])
        #expect(config.looseSecretFileWarnings(for: .broker) == [
            "[seal] keys_file (KISGW_SEAL_KEYS_FILE) \"\(keys)\" is readable by other users (mode 0640); chmod 600 it",
            "[redis] password_file (KISGW_REDIS_PASSWORD_FILE) \"\(redisPassword)\" is readable and writable by other "
                + "users (mode 0666); chmod 600 it",
            "[broker] database_password_file (KISGW_BROKER_DATABASE_PASSWORD_FILE) \"\(dbPassword)\" is readable by "
                + "other users (mode 0604); chmod 600 it",
        ])
        // The gateway reads no database password; `kisgw jwt` neither the seal keys nor Redis's.
        #expect(config.looseSecretFileWarnings(for: .gateway).count == 2)
        #expect(config.looseSecretFileWarnings(for: .jwt).isEmpty)
        for file in [keys, redisPassword, dbPassword] { try chmod(file, 0o600) }
        #expect(config.looseSecretFileWarnings(for: .broker).isEmpty)
    }
}
