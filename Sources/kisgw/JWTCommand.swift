import ArgumentParser
import Foundation
import KisgwConfiguration
import Observability
import ServerKit

/// `kisgw jwt --sub ID [--ttl SECONDS]`: a development JWT signed with the configured HS256 secret.
struct JWTCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jwt",
        abstract: "Print an HS256 JWT signed with the configured secret, for development and load tests.",
        discussion: "The secret comes from KISGW_AUTH_JWT_HS256_SECRET (or hs256_secret_file); iss and aud from [auth.jwt]."
    )

    @Option(help: "The user id (the JWT's sub claim).") var sub: String
    @Option(help: "Lifetime in seconds.") var ttl: Int = 3600
    @OptionGroup var configOptions: ConfigOptions

    func validate() throws {
        guard !sub.isEmpty, sub.count <= 256 else { throw ValidationError("--sub must be 1 to 256 characters") }
        // The verifiers refuse such a sub (it keys the store and the database, and is written in logs): a token
        // printed with one would never be accepted.
        guard !JWTVerifier.hasControlCharacter(sub) else {
            throw ValidationError("--sub must not contain control characters (the gateway and the broker refuse such a sub)")
        }
        guard (1...31_536_000).contains(ttl) else { throw ValidationError("--ttl must be from 1 to 31536000 seconds, got \(ttl)") }
    }

    func run() async throws {
        let config = try configOptions.load(for: .jwt)
        guard let secret = config.auth.jwt.hs256Secret else { throw ExitCode(78) }
        let token = try await JWTVerifier.mintHS256(
            secret: Array(secret.value.utf8), sub: sub, ttl: TimeInterval(ttl), issuer: config.auth.jwt.issuer,
            audience: config.auth.jwt.audience)
        print(token)
    }
}
