import Foundation
import KisgwConfiguration
import TestSupport

/// A fresh directory per call, for configuration and key files (removed when the test process exits).
func temporaryDirectory() -> String {
    Scratch.directory("config")
}

/// Writes `text` to a new file and returns its path.
func writeFile(_ text: String, name: String = "gateway.toml", in directory: String = temporaryDirectory()) -> String {
    let path = directory + "/" + name
    try! text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// Loads `toml` (written to a temporary file) with `environment`.
func load(_ toml: String, environment: [String: String] = [:]) throws(ConfigError) -> KisgwConfig {
    try KisgwConfig.load(file: writeFile(toml), environment: environment)
}

/// The error loading `toml` with `environment` throws, with its description and the file path.
func loadError(_ toml: String, environment: [String: String] = [:]) -> (error: ConfigError, path: String)? {
    let path = writeFile(toml)
    do {
        _ = try KisgwConfig.load(file: path, environment: environment)
        return nil
    } catch {
        return (error, path)
    }
}

/// Base64 of `count` bytes of `value`.
func base64Key(_ count: Int, value: UInt8 = 7) -> String {
    Data(repeating: value, count: count).base64EncodedString()
}

let goodSecret = "0123456789abcdef0123456789abcdef-secret"
