import ArgumentParser
import Foundation
import KisgwConfiguration

/// `--config FILE`, and loading it with the environment's overrides. A bad file or value stops start-up with one
/// line naming the source, the key and the problem.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: "Configuration file (default: ./gateway.toml if present, else built-in defaults).")
    var config: String?

    func load(for role: KisgwConfig.Role) throws -> KisgwConfig {
        do {
            let loaded = try KisgwConfig.load(file: config, environment: ProcessInfo.processInfo.environment)
            try loaded.validate(for: role)
            return loaded
        } catch {
            FileHandle.standardError.write(Data("kisgw: \(error)\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
    }
}
