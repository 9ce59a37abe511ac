@testable import Broker
import Foundation
import KIS
import Store
import Testing
import TestSupport
import Tokens

/// The broker's SQLite file holds every account's sealed app key and secret: created 0644 (SQLite's default, less the
/// umask) it was readable by every user of the machine, and so were its journal files, which SQLite creates with the
/// database file's mode.
@Suite("The broker's SQLite database file")
struct SQLiteFileModeTests {
    private static func mode(_ path: String) throws -> Int {
        try #require(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) & 0o7777
    }

    @Test("a new database file (and its folder's journal files) is 0600; an existing file keeps its mode")
    func newFileIsPrivate() async throws {
        let folder = Scratch.directory("sqlite-mode") + "/data"  // created by the repository, as on first start
        let path = folder + "/broker.sqlite"
        let repo = try SQLiteRepository(path: path)
        try await repo.migrate()
        let keyring = SealKeyring.ephemeral()
        try await repo.saveAccount(try BrokerAPITests.sealedAccount("u1", appKey("mode"), keyring: keyring), token: nil)
        #expect(try Self.mode(path) == 0o600)
        for name in try FileManager.default.contentsOfDirectory(atPath: folder) {
            #expect(try Self.mode(folder + "/" + name) == 0o600, "\(name)")
        }
        #expect(try await repo.account(userID: "u1", environment: .sandbox) != nil)

        // An operator's choice stands: an existing file is opened as it is.
        let existing = folder + "/existing.sqlite"
        _ = FileManager.default.createFile(atPath: existing, contents: nil, attributes: [.posixPermissions: 0o640])
        let other = try SQLiteRepository(path: existing)
        try await other.migrate()
        #expect(try Self.mode(existing) == 0o640)
    }
}
