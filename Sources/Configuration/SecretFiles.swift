import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension KisgwConfig {
    /// One warning for each secret file `role` reads that other users may read or write (its mode has a group or
    /// other bit, `mode & 0o077 != 0`): `[auth.jwt] hs256_secret_file`, `[seal] keys_file`, `[redis] password_file`,
    /// `[broker] database_password_file`. Each names the key, the path and the mode, never the content. For the log at
    /// start-up, not a refusal: containers commonly mount secrets 0644.
    ///
    /// Only the files `role` reads (config.md: each role reads its sections): the seal keys by the broker and by a
    /// gateway on the Redis store, the Redis password by the roles that open Redis, the database's by the broker; the
    /// JWT secret by every role but `demo`, which reads no file. A file named twice is warned about once; a file that
    /// is not a regular file (a pipe, a device), or that cannot be looked at, is passed over.
    public func looseSecretFileWarnings(for role: Role) -> [String] {
        let redisStore = store.backend == .redis
        var files: [(section: String, key: String, path: String?)] = []
        if role != .demo { files.append(("auth.jwt", "hs256_secret_file", auth.jwt.hs256SecretFile)) }
        if role == .broker || (role == .gateway && redisStore) { files.append(("seal", "keys_file", seal.keysFile)) }
        if (role == .broker || role == .gateway) && redisStore && redis.url != nil {
            files.append(("redis", "password_file", redis.passwordFile))
        }
        if role == .broker { files.append(("broker", "database_password_file", broker.databasePasswordFile)) }
        var warned: Set<String> = []
        var warnings: [String] = []
        for (section, key, path) in files {
            guard let path, !warned.contains(path), let mode = Self.looseMode(ofFileAt: path) else { continue }
            warned.insert(path)
            warnings.append(Self.looseSecretFileWarning(section: section, key: key, path: path, mode: mode))
        }
        return warnings
    }

    /// The permission bits of the regular file at `path` (symbolic links followed) when a group or other bit is set;
    /// nil otherwise, or when it cannot be looked at.
    static func looseMode(ofFileAt path: String) -> UInt32? {
        var info = stat()
        // S_IFMT, S_IFREG: a regular file.
        guard stat(path, &info) == 0, UInt32(info.st_mode) & 0o170000 == 0o100000 else { return nil }
        let mode = UInt32(info.st_mode) & 0o7777
        return mode & 0o077 != 0 ? mode : nil
    }

    /// `[seal] keys_file (KISGW_SEAL_KEYS_FILE) "/run/secrets/seal.toml" is readable by other users (mode 0644); chmod
    /// 600 it`.
    static func looseSecretFileWarning(section: String, key: String, path: String, mode: UInt32) -> String {
        var how: [String] = []
        if mode & 0o044 != 0 { how.append("readable") }
        if mode & 0o022 != 0 { how.append("writable") }
        if how.isEmpty { how.append("executable") }  // only x bits: still more than its owner needs
        var octal = String(mode, radix: 8)
        while octal.count < 4 { octal = "0" + octal }
        return "[\(section)] \(key) (\(environmentName(section: section, key: key))) \(Loader.quoted(path)) is "
            + "\(how.joined(separator: " and ")) by other users (mode \(octal)); chmod 600 it"
    }
}
