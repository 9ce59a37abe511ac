import ArgumentParser
import Foundation
import KisgwConfiguration
import ServerKit

/// `--config FILE`, and loading it with the environment's overrides. A bad file or value stops start-up with one
/// line naming the source, the key and the problem.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: "Configuration file (default: the file KISGW_CONFIG names, else ./gateway.toml if present, else built-in defaults).")
    var config: String?

    func load(for role: KisgwConfig.Role) throws -> KisgwConfig {
        do {
            let loaded = try KisgwConfig.load(file: config, environment: ProcessInfo.processInfo.environment)
            try loaded.validate(for: role)
            // Secret files other users may read: a warning each (naming key, path and mode, never the content), not
            // a refusal — containers commonly mount secrets 0644. On standard error, as the configuration's errors
            // are: before logging starts, and `kisgw jwt`'s standard output is the token alone.
            for warning in loaded.looseSecretFileWarnings(for: role) {
                FileHandle.standardError.write(Data("kisgw: warning: \(warning)\n".utf8))
            }
            return loaded
        } catch {
            FileHandle.standardError.write(Data("kisgw: \(error)\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
    }

    /// The keys in `[auth.jwt] public_keys_file` read as the verifier will read them, so that a file that holds no
    /// usable key stops start-up like any other bad value (one line naming the key, exit 78) instead of failing the
    /// server's construction with an internal error.
    func checkJWTKeys(_ config: KisgwConfig) async throws {
        guard let file = config.auth.jwt.publicKeysFile, config.auth.jwt.algorithms.contains(where: \.isAsymmetric) else {
            return
        }
        do {
            _ = try await JWTVerifier(settings: .init(config: config.auth.jwt))
        } catch let problem as Problem {
            FileHandle.standardError.write(Data("kisgw: [auth.jwt] \(problem.detail): \"\(file)\"\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
    }
}
