import Foundation
import GRDB
import KIS
import KisgwConfiguration
import Logging
import PostgresNIO
import Store
import Synchronization
import Testing
import Tokens

@testable import Broker
import TestSupport

@Suite("Broker storage: one contract, SQLite and PostgreSQL")
struct RepositoryContractTests {
    static func account(_ user: String, _ env: KISEnvironment = .sandbox, kid: String = "k1", at t: Int64 = 1000)
        -> StoredAccount
    {
        StoredAccount(userID: user, environment: env, appKey: "sealed-key-\(user)", appSecret: "sealed-secret",
                      accountNumber: "sealed-number", kid: kid, isActive: true, createdAt: t, updatedAt: t)
    }

    static func token(_ user: String, _ sha: String, issuedAt: Int64, status: TokenStatus = .active,
                      env: KISEnvironment = .sandbox) -> StoredToken
    {
        StoredToken(userID: user, environment: env, accessToken: "sealed-\(sha)", tokenSHA256: sha, kid: "k1",
                    issuedAt: issuedAt, expiresAt: issuedAt + 86400, status: status, updatedAt: issuedAt)
    }

    @Test("migrations run twice without harm; accounts upsert per user and environment, keeping created_at",
          arguments: DatabaseKind.allCases)
    func accounts(kind: DatabaseKind) async throws {
        let db = try await TestDatabase.make(kind)
        try await withRepository(db) { repo in
            try await repo.migrate()
            #expect(try await repo.account(userID: "u1", environment: .sandbox) == nil)
            try await repo.saveAccount(Self.account("u1"), token: nil)
            try await repo.saveAccount(Self.account("u1", .live), token: nil)
            var changed = Self.account("u1", at: 2000)
            changed.accountNumber = "sealed-other"
            try await repo.saveAccount(changed, token: nil)
            let got = try #require(try await repo.account(userID: "u1", environment: .sandbox))
            #expect(got.accountNumber == "sealed-other")
            #expect(got.createdAt == 1000)
            #expect(got.updatedAt == 2000)
            #expect(try await repo.allAccounts().count == 2)
            try await repo.setAccountActive(userID: "u1", environment: .sandbox, isActive: false, updatedAt: 3000)
            #expect(try await repo.account(userID: "u1", environment: .sandbox)?.isActive == false)
            #expect(try await repo.account(userID: "u1", environment: .live)?.isActive == true)
        }
    }

    @Test("tokens: newest first, upsert by sha256, status changes, delete takes the account's tokens",
          arguments: DatabaseKind.allCases)
    func tokens(kind: DatabaseKind) async throws {
        let db = try await TestDatabase.make(kind)
        try await withRepository(db) { repo in
            try await repo.saveAccount(Self.account("u1"), token: Self.token("u1", "a", issuedAt: 100))
            try await repo.saveToken(Self.token("u1", "b", issuedAt: 200))
            try await repo.saveAccount(Self.account("u2"), token: Self.token("u2", "c", issuedAt: 150))
            #expect(try await repo.tokens(userID: "u1", environment: .sandbox).map(\.tokenSHA256) == ["b", "a"])
            #expect(try await repo.token(sha256: "c")?.userID == "u2")
            #expect(try await repo.token(sha256: "none") == nil)
            var again = Self.token("u1", "a", issuedAt: 100)
            again.expiresAt = 5
            try await repo.saveToken(again)
            #expect(try await repo.tokens(userID: "u1", environment: .sandbox).count == 2)
            #expect(try await repo.tokens(userID: "u1", environment: .sandbox).last?.expiresAt == 5)
            try await repo.setStatus(.revoked, tokenSHA256s: ["a", "c"], updatedAt: 300)
            #expect(Set(try await repo.tokens(status: .revoked).map(\.tokenSHA256)) == ["a", "c"])
            #expect(try await repo.tokens(status: .active).map(\.tokenSHA256) == ["b"])
            #expect(try await repo.deleteAccount(userID: "u1", environment: .sandbox))
            #expect(try await repo.deleteAccount(userID: "u1", environment: .sandbox) == false)
            #expect(try await repo.tokens(userID: "u1", environment: .sandbox).isEmpty)
            #expect(try await repo.tokens(userID: "u2", environment: .sandbox).count == 1)
        }
    }

    @Test("re-sealing replaces a row only while it is still as read: its key id and sealed fields", arguments: DatabaseKind.allCases)
    func resealCompareAndSet(kind: DatabaseKind) async throws {
        let db = try await TestDatabase.make(kind)
        try await withRepository(db) { repo in
            try await repo.saveAccount(Self.account("u1"), token: Self.token("u1", "a", issuedAt: 100))
            var fresh = Self.account("u1", kid: "k2")
            fresh.appSecret = "resealed"
            // Written since it was read, with the same key id: each sealed field alone tells.
            for change in [\StoredAccount.appKey, \.appSecret, \.accountNumber] {
                var read = Self.account("u1")
                read[keyPath: change] = "sealed-before"
                #expect(try await repo.replaceAccountSeal(fresh, replacing: read) == false)
            }
            #expect(try await repo.account(userID: "u1", environment: .sandbox)?.appSecret == "sealed-secret")
            #expect(try await repo.replaceAccountSeal(fresh, replacing: Self.account("u1")))
            #expect(try await repo.replaceAccountSeal(fresh, replacing: Self.account("u1")) == false)
            #expect(try await repo.account(userID: "u1", environment: .sandbox)?.appSecret == "resealed")
            #expect(try await repo.replaceTokenSeal(tokenSHA256: "a", accessToken: "x", kid: "k2", expectedKid: "k1"))
            #expect(try await repo.replaceTokenSeal(tokenSHA256: "a", accessToken: "y", kid: "k3", expectedKid: "k1") == false)
            #expect(try await repo.tokens(userID: "u1", environment: .sandbox).first?.kid == "k2")
        }
    }

    @Test("accounts are looked up by (key id, app key fingerprint) in one environment, with those without a fingerprint",
          arguments: DatabaseKind.allCases)
    func appKeyFingerprintLookup(kind: DatabaseKind) async throws {
        let db = try await TestDatabase.make(kind)
        try await withRepository(db) { repo in
            func account(_ user: String, _ env: KISEnvironment = .sandbox, kid: String, fp: String?) -> StoredAccount {
                var a = Self.account(user, env, kid: kid)
                a.appKeyFingerprint = fp
                return a
            }
            try await repo.saveAccount(account("u1", kid: "k1", fp: "f1"), token: nil)
            try await repo.saveAccount(account("u2", kid: "k2", fp: "f1"), token: nil)  // f1, but under another key
            try await repo.saveAccount(account("u3", .live, kid: "k1", fp: "f1"), token: nil)  // another environment
            try await repo.saveAccount(account("u4", kid: "k1", fp: nil), token: nil)  // stored before app_key_fp
            try await repo.saveAccount(account("u5", kid: "k1", fp: "f2"), token: nil)
            func found(_ fingerprints: [String: String], _ env: KISEnvironment = .sandbox) async throws -> Set<String> {
                Set(try await repo.accounts(environment: env, appKeyFingerprints: fingerprints).map(\.userID))
            }
            #expect(try await found(["k1": "f1", "k3": "f9"]) == ["u1", "u4"])
            #expect(try await found(["k1": "f9", "k2": "f1"]) == ["u2", "u4"])
            #expect(try await found([:]) == ["u4"])
            #expect(try await found(["k1": "f1"], .live) == ["u3"])
            #expect(try await repo.account(userID: "u1", environment: .sandbox)?.appKeyFingerprint == "f1")

            // Filling a missing fingerprint: only while the row is sealed as it was read, and only once.
            let u4 = try #require(try await repo.accountsWithoutAppKeyFingerprint().first)
            #expect(try await repo.accountsWithoutAppKeyFingerprint().map(\.userID) == ["u4"])
            var filled = u4
            filled.appKeyFingerprint = "f4"
            var resealed = filled
            resealed.appKey = "sealed-otherwise"
            #expect(try await repo.setAppKeyFingerprint(resealed) == false)
            resealed = filled
            resealed.kid = "k2"
            #expect(try await repo.setAppKeyFingerprint(resealed) == false)
            #expect(try await repo.setAppKeyFingerprint(filled))
            filled.appKeyFingerprint = "f5"
            #expect(try await repo.setAppKeyFingerprint(filled) == false)
            #expect(try await repo.accountsWithoutAppKeyFingerprint().isEmpty)
            #expect(try await found(["k1": "f4"]) == ["u4"])
            #expect(try await found(["k1": "f1"]) == ["u1"])

            // Saving and re-sealing write the fingerprint with the sealed columns.
            try await repo.saveAccount(account("u1", kid: "k1", fp: "f6"), token: nil)
            #expect(try await found(["k1": "f1"]).isEmpty)
            #expect(try await found(["k1": "f6"]) == ["u1"])
            #expect(try await repo.replaceAccountSeal(account("u1", kid: "k2", fp: "f7"),
                                                    replacing: account("u1", kid: "k1", fp: "f6")))
            #expect(try await found(["k1": "f6"]).isEmpty)
            #expect(try await found(["k2": "f7"]) == ["u1"])
            #expect(try await repo.allAccounts().count == 5)
        }
    }

    @Test("a PostgreSQL URL's password is read from the authority or from a password= parameter, as libpq reads it")
    func postgresPassword() throws {
        #expect(try PostgresRepository.configuration(url: "postgres://u:a%40b@db/x").password == "a@b")
        #expect(try PostgresRepository.configuration(url: "postgres://u@db/x?sslmode=disable&password=p%26w").password == "p&w")
        #expect(try PostgresRepository.configuration(url: "postgres://u@db/x?PASSWORD=pw").password == "pw")
        #expect(try PostgresRepository.configuration(url: "postgres://u@db/x").password == nil)
    }

    /// config.md: the database password may be given "through the environment or a file path". A role of the test
    /// cluster that must give its password (scripts/test: scram-sha-256 for it, trust for the others) connects with
    /// the one read from `[broker] database_password_file`, and is refused with a wrong one or none.
    @Test("a PostgreSQL password from database_password_file reaches the server; a wrong one or none is refused")
    func postgresPasswordFile() async throws {
        let password = "pw-\(UInt64.random(in: 0...UInt64.max))&:@ x"
        try TestServices.requirePostgresURL()
        let role = try TestServices.requirePostgresPasswordRole()
        let url = try await TestDatabase.make(.postgres, owner: role, password: password).location
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kisgw-pgpw-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }

        /// Opens the database as `[broker] database` = `url` and the password file holding `secret` (none: no file)
        /// say, and migrates it — or the error, within 15 s.
        func open(_ secret: String?) async throws -> (any Error)? {
            var environment = ["KISGW_BROKER_DATABASE": url]
            if let secret {
                let file = dir.appendingPathComponent(UUID().uuidString)
                try Data((secret + "\n").utf8).write(to: file)
                environment["KISGW_BROKER_DATABASE_PASSWORD_FILE"] = file.path
            }
            let config = try KisgwConfig.load(file: nil, environment: environment)
            let repository = try makeBrokerRepository(config.broker.resolvedDatabase(), logger: quietLogger)
            let pg = try #require(repository as? PostgresRepository)
            return try await withThrowingTaskGroup(of: (any Error)?.self) { group in
                group.addTask { try await pg.run(); return nil }
                group.addTask {
                    do {
                        try await repository.migrate()
                        try await repository.ping()
                        return nil
                    } catch {
                        return error
                    }
                }
                group.addTask {
                    try await Task.sleep(for: .seconds(15))
                    return TestFailure("no answer within 15 s")
                }
                defer { group.cancelAll() }
                // The first to end: migrate and ping, or the timer (run() ends only when cancelled).
                return try await group.next() ?? nil
            }
        }
        #expect(try await open(password) == nil)
        // Refused at once with PostgreSQL's reason (the pool alone tried again for ever: the broker hung at start-up).
        let wrong = try await open(password + "x")
        #expect("\(String(describing: wrong))".contains("refused the broker") && "\(String(describing: wrong))".contains("SQLSTATE 28P01"),
                "\(String(describing: wrong))")
        #expect(!"\(String(reflecting: wrong))".contains(password))
        let none = try await open(nil)
        #expect("\(String(describing: none))".contains("refused the broker: it asks for a password and none is configured"),
                "\(String(describing: none))")
    }

    /// A repository on a loopback port nothing listens on.
    static func unreachableRepository() throws -> (PostgresRepository, port: Int) {
        let port = try RedisServerProcess.freePort()
        return (try PostgresRepository(url: "postgres://kisgw@127.0.0.1:\(port)/kisgw?sslmode=disable", logger: quietLogger),
                port)
    }

    @Test("a PostgreSQL server that cannot be reached is tried again, then named in the error; a cancelled wait ends at once")
    func postgresUnreachable() async throws {
        let (repository, port) = try Self.unreachableRepository()
        let started = ContinuousClock.now
        await #expect {
            try await repository.checkLogin(within: .seconds(1))
        } throws: { error in
            "\(error)".contains("cannot reach PostgreSQL at 127.0.0.1:\(port): connection refused")
        }
        #expect(ContinuousClock.now - started >= .seconds(1))
        // Cancelled (a SIGTERM while the broker waits for its database): the wait ends at once, not at its deadline.
        let waiting = Task { try await repository.checkLogin(within: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(300))
        let cancelled = ContinuousClock.now
        waiting.cancel()
        await #expect {
            try await waiting.value
        } throws: { error in
            "\(error)".contains("stopped while waiting for PostgreSQL at 127.0.0.1:\(port)")
        }
        #expect(ContinuousClock.now - cancelled < .seconds(5))
    }

    /// Runs `body` with an unreachable repository whose pool runs (its operations wait for a connection).
    static func withUnreachableRunning(_ body: (PostgresRepository) async -> Void) async throws {
        let (repository, _) = try unreachableRepository()
        await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await repository.run() }
            defer { group.cancelAll() }
            await body(repository)
        }
    }

    /// How `operation` ended, and after how long.
    static func timed(_ operation: @escaping @Sendable () async throws -> Void) async -> (Result<Void, any Error>, Duration) {
        let started = ContinuousClock.now
        let outcome = await Task { try await operation() }.result
        return (outcome, ContinuousClock.now - started)
    }

    /// postgres-nio's pool waits for a connection for ever: with the server gone, every broker request and `/readyz`
    /// hung. Each operation now fails after `operationTimeout` (the broker answers `store_unavailable`, readiness 503).
    @Test("with the server gone, operations fail after operationTimeout instead of waiting for a connection for ever")
    func postgresGoneFailsOperations() async throws {
        try await Self.withUnreachableRunning { repository in
            // Both at once: a read the broker's routes make, and the readiness check's ping.
            async let account = Self.timed { _ = try await repository.account(userID: "u1", environment: .sandbox) }
            async let ping = Self.timed { try await repository.ping() }
            for (name, (outcome, waited)) in [("account", await account), ("ping", await ping)] {
                guard case .failure(let error) = outcome else {
                    Issue.record("\(name) succeeded without a server")
                    continue
                }
                #expect("\(error)".contains("did not answer within 5"), "\(name): \(error)")
                #expect(waited >= PostgresRepository.operationTimeout && waited < .seconds(9), "\(name): \(waited)")
            }
        }
    }

    @Test("a cancelled caller is not held for the operation's 5 s")
    func postgresCancelledCaller() async throws {
        try await Self.withUnreachableRunning { repository in
            let started = ContinuousClock.now
            let read = Task { _ = try await repository.account(userID: "u1", environment: .sandbox) }
            try? await Task.sleep(for: .milliseconds(200))
            read.cancel()
            _ = await read.result
            #expect(ContinuousClock.now - started < .seconds(2), "\(ContinuousClock.now - started)")
        }
    }

    /// A query already sent cannot be cancelled in postgres-nio: one stuck behind a lock another session holds used
    /// to wait as long as the lock was held.
    @Test("a statement stuck behind another session's lock fails after operationTimeout")
    func postgresLockedFailsOperations() async throws {
        let db = try await TestDatabase.make(.postgres)
        try await withRepository(db) { repo in
            try await repo.saveAccount(RepositoryContractTests.account("u1"), token: nil)
            // The holder without the broker's statement_timeout: it keeps the lock for the whole sleep.
            var configuration = try PostgresRepository.configuration(url: db.location)
            configuration.options.additionalStartupParameters = []
            let holder = PostgresClient(configuration: configuration)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await holder.run() }
                let locked = AsyncStream.makeStream(of: Void.self)
                group.addTask {
                    try await holder.withTransaction(logger: quietLogger) { conn in
                        try await conn.query("LOCK TABLE kis_accounts IN ACCESS EXCLUSIVE MODE", logger: quietLogger)
                        locked.continuation.yield()
                        try await conn.query("SELECT pg_sleep(7)", logger: quietLogger)
                    }
                }
                var it = locked.stream.makeAsyncIterator()
                _ = await it.next()
                let (outcome, waited) = await Self.timed {
                    try await repo.setAccountActive(userID: "u1", environment: .sandbox, isActive: false, updatedAt: 2)
                }
                guard case .failure = outcome else {
                    Issue.record("the update went through a lock held for 7 s")
                    return
                }
                #expect(waited < .milliseconds(6500), "\(waited)")
                try await group.next()  // the holder's transaction ends
                group.cancelAll()
                // The server ended the update (lock_timeout) rather than running it once the lock was gone.
                #expect(try await repo.account(userID: "u1", environment: .sandbox)?.isActive == true)
            }
        }
    }

    @Test("the SQLite file and its folders are created on first start")
    func sqliteCreatesFile() async throws {
        let db = try await TestDatabase.make(.sqlite)
        #expect(!FileManager.default.fileExists(atPath: db.location))
        try await withRepository(db) { repo in try await repo.ping() }
        #expect(FileManager.default.fileExists(atPath: db.location))
    }

    /// The app key check runs twice per connect: reading every account of the environment made a connect cost grow
    /// with the accounts stored (40 ms with a thousand, 360 ms with ten thousand: bench/broker-reconcile).
    @Test("SQLite: the app key look-up is one index search on (environment, app_key_fp) per seal key and one for rows without a fingerprint — no scan",
          arguments: [1, 2, 3])
    func sqliteAppKeyLookupSearchesTheIndex(keys: Int) async throws {
        let db = try await TestDatabase.make(.sqlite)
        try await withRepository(db) { repo in try await repo.ping() }  // migrated
        let fingerprints = Dictionary(uniqueKeysWithValues: (1...keys).map { ("k\($0)", "fp\($0)") })
        let queue = try DatabaseQueue(path: db.location)
        let plan = try await queue.read { db in
            try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + SQLiteRepository.appKeyLookup(count: keys),
                             arguments: SQLiteRepository.appKeyLookupArguments(.live, fingerprints))
                .map { $0["detail"] as String }
        }
        let search = "SEARCH kis_accounts USING INDEX kis_accounts_app_key_fp (environment=? AND app_key_fp=?)"
        #expect(plan.filter { $0 == search }.count == keys + 1, "\(plan)")
        #expect(!plan.contains { $0.hasPrefix("SCAN") }, "\(plan)")
    }
}

@Suite("Broker sealing: per-field AES-256-GCM with key ids, and rotation")
struct VaultTests {
    static func key(_ byte: UInt8) -> [UInt8] { [UInt8](repeating: byte, count: 32) }

    /// A vault whose keys are `keys` (id → the byte each of its 32 bytes is) and seals with `current`.
    static func vault(_ current: String, _ keys: [String: UInt8]) throws -> AccountVault {
        AccountVault(keyring: try SealKeyring(current: current, keys: keys.mapValues(key)))
    }

    static let account = Account(
        userID: "42", environment: .live, appKey: "PSabcdefghijklmnopqrstuvwxyz012345", appSecret: "very-secret",
        accountNumber: "12345678-01", createdAt: 1, updatedAt: 1)

    @Test("sealed fields open with the seal key and not without it, nor in another row or column")
    func sealing() throws {
        let vault = AccountVault(keyring: try SealKeyring(current: "k1", keys: ["k1": Self.key(1)]))
        let row = try vault.seal(Self.account)
        #expect(row.kid == "k1")
        for field in [row.appKey, row.appSecret, row.accountNumber] {
            #expect(!field.contains("very-secret") && !field.contains("12345678") && !field.contains("PSabcdef"))
        }
        #expect(try vault.open(row) == Self.account)
        let stranger = AccountVault(keyring: try SealKeyring(current: "k1", keys: ["k1": Self.key(2)]))
        #expect(throws: StoreError.self) { try stranger.open(row) }
        var swapped = row
        swapped.appKey = row.appSecret
        #expect(throws: StoreError.self) { try vault.open(swapped) }
        var moved = row
        moved.userID = "43"
        #expect(throws: StoreError.self) { try vault.open(moved) }

        let token = BrokerToken(userID: "42", environment: .live, accessToken: "eyJ.token", issuedAt: 1, expiresAt: 2)
        let sealedToken = try vault.seal(token, updatedAt: 1)
        #expect(!sealedToken.accessToken.contains("eyJ.token"))
        #expect(try vault.open(sealedToken) == token)
        #expect(throws: StoreError.self) { try stranger.open(sealedToken) }
    }

    @Test("the app key fingerprint: one per key id and environment, never equal across key ids, no app key in it")
    func appKeyFingerprint() throws {
        let vault = try Self.vault("k2", ["k1": 1, "k2": 2, "k3": 1])
        let key = Self.account.appKey
        let all = vault.appKeyFingerprints(key, .live)
        #expect(all.keys.sorted() == ["k1", "k2", "k3"])
        #expect(Set(all.values).count == 3)  // k3 has k1's bytes, and a fingerprint of its own all the same
        for (kid, fp) in all {
            #expect(try fp == vault.appKeyFingerprint(key, .live, kid: kid))
            #expect(fp.count == 64 && fp.allSatisfy(\.isHexDigit) && !fp.contains(key))
            #expect(try fp != vault.appKeyFingerprint(key, .sandbox, kid: kid))
            #expect(try fp != vault.appKeyFingerprint(key + "x", .live, kid: kid))
        }
        // Another key under the same id: another fingerprint (it is keyed, not a plain hash).
        let stranger = try Self.vault("k1", ["k1": 9])
        #expect(try stranger.appKeyFingerprint(key, .live, kid: "k1") != all["k1"])
        #expect(throws: StoreError.self) { try vault.appKeyFingerprint(key, .live, kid: "k0") }
        // Sealing writes the fingerprint under the key that sealed.
        #expect(try vault.seal(Self.account).appKeyFingerprint == all["k2"])
    }

    @Test("start-up fills the fingerprint of rows stored without one, under the row's own key; rows that do not open stay",
          arguments: DatabaseKind.allCases)
    func fillFingerprints(kind: DatabaseKind) async throws {
        let db = try await TestDatabase.make(kind)
        let old = try Self.vault("k1", ["k1": 1]), both = try Self.vault("k2", ["k1": 1, "k2": 2])
        let lost = try Self.vault("k0", ["k0": 9])
        @Sendable func stored(_ user: String, by vault: AccountVault, fingerprinted: Bool = false) throws -> StoredAccount {
            var account = Self.account
            account.userID = user
            var row = try vault.seal(account)
            if !fingerprinted { row.appKeyFingerprint = nil }
            return row
        }
        try await withRepository(db) { repo in
            try await repo.saveAccount(try stored("old", by: old), token: nil)
            try await repo.saveAccount(try stored("lost", by: lost), token: nil)
            try await repo.saveAccount(try stored("new", by: both, fingerprinted: true), token: nil)
            #expect(try await both.fillAppKeyFingerprints(in: repo, logger: quietLogger) == 1)
            #expect(try await both.fillAppKeyFingerprints(in: repo, logger: quietLogger) == 0)
            let filled = try await repo.account(userID: "old", environment: .live)
            #expect(filled?.kid == "k1")
            #expect(try filled?.appKeyFingerprint == both.appKeyFingerprint(Self.account.appKey, .live, kid: "k1"))
            #expect(try await repo.accountsWithoutAppKeyFingerprint().map(\.userID) == ["lost"])
            let found = try await repo.accounts(environment: .live,
                                                appKeyFingerprints: both.appKeyFingerprints(Self.account.appKey, .live))
            #expect(Set(found.map(\.userID)) == ["old", "new", "lost"])  // "lost" as a row without a fingerprint
        }
    }

    @Test("rotation: a new current key re-encrypts old rows at start-up; the old key can then go",
          arguments: DatabaseKind.allCases)
    func rotation(kind: DatabaseKind) async throws {
        let db = try await TestDatabase.make(kind)
        let old = try Self.vault("k1", ["k1": 1]), both = try Self.vault("k2", ["k1": 1, "k2": 2])
        let onlyNew = try Self.vault("k2", ["k2": 2])
        let token = BrokerToken(userID: "42", environment: .live, accessToken: "eyJ.token", issuedAt: 1, expiresAt: 2)
        try await withRepository(db) { repo in
            try await repo.saveAccount(try old.seal(Self.account), token: try old.seal(token, updatedAt: 1))
            let stored = try #require(try await repo.account(userID: "42", environment: .live))
            #expect(throws: StoreError.self) { try onlyNew.open(stored) }
            #expect(try await both.resealStaleRows(in: repo, logger: quietLogger) == 2)
            #expect(try await both.resealStaleRows(in: repo, logger: quietLogger) == 0)
            let rotated = try #require(try await repo.account(userID: "42", environment: .live))
            #expect(rotated.kid == "k2")
            #expect(try onlyNew.open(rotated) == Self.account)
            // Its app key fingerprint is made anew with the key: found with the new key alone.
            #expect(try rotated.appKeyFingerprint == onlyNew.appKeyFingerprint(Self.account.appKey, .live, kid: "k2"))
            let found = try await repo.accounts(
                environment: .live, appKeyFingerprints: onlyNew.appKeyFingerprints(Self.account.appKey, .live))
            #expect(found.map(\.userID) == ["42"])
            let t = try #require(try await repo.tokens(userID: "42", environment: .live).first)
            #expect(t.kid == "k2")
            #expect(try onlyNew.open(t) == token)

            // A row sealed with a key the broker no longer has is left alone; the others are not held up by it.
            let lost = try Self.vault("k0", ["k0": 9])
            var orphan = Self.account
            orphan.userID = "99"
            try await repo.saveAccount(try lost.seal(orphan), token: nil)
            try await repo.saveAccount(try old.seal(Self.account), token: nil)
            #expect(try await both.resealStaleRows(in: repo, logger: quietLogger) == 1)
            #expect(try await repo.account(userID: "99", environment: .live)?.kid == "k0")
            #expect(try await repo.account(userID: "42", environment: .live)?.kid == "k2")
        }
    }

    /// The re-encryption reads every row sealed with an old key, then writes each back sealed with the new one. A
    /// user connecting a new key pair meanwhile through another broker copy — still sealing with the old key, as
    /// copies not yet restarted do during a rotation — kept the old key id, and the re-encryption wrote the old key
    /// pair back over the new one. It is left as written now, and re-encrypted at the next start.
    @Test("rotation: an account written while the re-encryption ran keeps what was written", arguments: DatabaseKind.allCases)
    func resealLeavesANewerRow(kind: DatabaseKind) async throws {
        let db = try await TestDatabase.make(kind)
        let old = try Self.vault("k1", ["k1": 1]), both = try Self.vault("k2", ["k1": 1, "k2": 2])
        var connected = Self.account
        connected.appKey = "PSnewkeyxxxxxxxxxxxxxxxxxxxxxxxxwxyz"
        connected.appSecret = "the-new-secret"
        connected.accountNumber = "87654321-01"
        let replacement = connected
        try await withRepository(db) { inner in
            try await inner.saveAccount(try old.seal(Self.account), token: nil)
            let repo = SwitchableRepository(inner)
            // Right after the re-encryption listed the rows: the user connects another key pair through a copy that
            // still seals with k1.
            repo.afterAllAccounts.withLock { $0 = { try await inner.saveAccount(try old.seal(replacement), token: nil) } }
            #expect(try await both.resealStaleRows(in: repo, logger: quietLogger) == 0)
            #expect(repo.afterAllAccounts.withLock { $0 == nil }, "the account was not written during the re-encryption")
            let stored = try #require(try await inner.account(userID: "42", environment: .live))
            #expect(try both.open(stored) == replacement, "the re-encryption wrote the old key pair back over the new one")
            #expect(stored.kid == "k1")
            // Re-encrypted at the next start, as written.
            #expect(try await both.resealStaleRows(in: repo, logger: quietLogger) == 1)
            let rotated = try #require(try await inner.account(userID: "42", environment: .live))
            #expect(rotated.kid == "k2")
            #expect(try both.open(rotated) == replacement)
        }
    }
}

@Suite("Broker storage: a database created before app_key_fp")
struct AppKeyFingerprintMigrationTests {
    /// The schema before this change: migration v1 as `SQLiteRepository` and `PostgresRepository` ran it (and recorded
    /// it: GRDB's migrator by name, PostgreSQL in `kisgw_schema_migrations`), with a row written as that code wrote it.
    static func createBeforeFingerprints(_ db: TestDatabase, with row: StoredAccount) async throws {
        let columns = "user_id, environment, app_key, app_secret, account_number, seal_kid, is_active, created_at, updated_at"
        switch db.kind {
        case .sqlite:
            let url = URL(fileURLWithPath: db.location)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            let queue = try DatabaseQueue(path: url.path)
            var migrator = DatabaseMigrator()
            migrator.registerMigration("v1: kis_accounts and kis_tokens") { db in
                try db.execute(sql: """
                    CREATE TABLE kis_accounts (
                        user_id TEXT NOT NULL,
                        environment TEXT NOT NULL CHECK (environment IN ('LIVE', 'SANDBOX')),
                        app_key TEXT NOT NULL,
                        app_secret TEXT NOT NULL,
                        account_number TEXT NOT NULL,
                        seal_kid TEXT NOT NULL,
                        is_active INTEGER NOT NULL DEFAULT 1,
                        created_at INTEGER NOT NULL,
                        updated_at INTEGER NOT NULL,
                        PRIMARY KEY (user_id, environment)
                    );
                    CREATE TABLE kis_tokens (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        user_id TEXT NOT NULL,
                        environment TEXT NOT NULL CHECK (environment IN ('LIVE', 'SANDBOX')),
                        access_token TEXT NOT NULL,
                        token_sha256 TEXT NOT NULL UNIQUE,
                        seal_kid TEXT NOT NULL,
                        issued_at INTEGER NOT NULL,
                        expires_at INTEGER NOT NULL,
                        status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'REVOKED', 'EXPIRED')),
                        updated_at INTEGER NOT NULL
                    );
                    CREATE INDEX kis_tokens_account ON kis_tokens (user_id, environment);
                    CREATE INDEX kis_tokens_status ON kis_tokens (status);
                    """)
            }
            try migrator.migrate(queue)
            try await queue.write { db in
                try db.execute(
                    sql: "INSERT INTO kis_accounts (\(columns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    arguments: [
                        row.userID, row.environment.rawValue, row.appKey, row.appSecret, row.accountNumber, row.kid,
                        row.isActive, row.createdAt, row.updatedAt,
                    ])
            }
        case .postgres:
            let client = PostgresClient(configuration: try PostgresRepository.configuration(url: db.location))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await client.run() }
                defer { group.cancelAll() }
                try await client.withTransaction(logger: quietLogger) { conn in
                    try await conn.query(
                        "CREATE TABLE kisgw_schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
                        logger: quietLogger)
                    try await conn.query(
                        """
                        CREATE TABLE kis_accounts (
                            user_id TEXT NOT NULL,
                            environment TEXT NOT NULL CHECK (environment IN ('LIVE', 'SANDBOX')),
                            app_key TEXT NOT NULL,
                            app_secret TEXT NOT NULL,
                            account_number TEXT NOT NULL,
                            seal_kid TEXT NOT NULL,
                            is_active BOOLEAN NOT NULL DEFAULT TRUE,
                            created_at BIGINT NOT NULL,
                            updated_at BIGINT NOT NULL,
                            PRIMARY KEY (user_id, environment)
                        )
                        """, logger: quietLogger)
                    try await conn.query(
                        """
                        CREATE TABLE kis_tokens (
                            id BIGSERIAL PRIMARY KEY,
                            user_id TEXT NOT NULL,
                            environment TEXT NOT NULL CHECK (environment IN ('LIVE', 'SANDBOX')),
                            access_token TEXT NOT NULL,
                            token_sha256 TEXT NOT NULL UNIQUE,
                            seal_kid TEXT NOT NULL,
                            issued_at BIGINT NOT NULL,
                            expires_at BIGINT NOT NULL,
                            status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'REVOKED', 'EXPIRED')),
                            updated_at BIGINT NOT NULL
                        )
                        """, logger: quietLogger)
                    try await conn.query("CREATE INDEX kis_tokens_account ON kis_tokens (user_id, environment)",
                                         logger: quietLogger)
                    try await conn.query("CREATE INDEX kis_tokens_status ON kis_tokens (status)", logger: quietLogger)
                    try await conn.query("INSERT INTO kisgw_schema_migrations (version, applied_at) VALUES (1, 1000)",
                                         logger: quietLogger)
                    let env = row.environment.rawValue
                    try await conn.query(
                        """
                        INSERT INTO kis_accounts (\(unescaped: columns)) VALUES (\(row.userID), \(env), \(row.appKey),
                            \(row.appSecret), \(row.accountNumber), \(row.kid), \(row.isActive), \(row.createdAt),
                            \(row.updatedAt))
                        """, logger: quietLogger)
                }
            }
        }
    }

    @Test("migrating adds app_key_fp, the broker fills it at start-up, and the app key is still its user's",
          arguments: DatabaseKind.allCases)
    func upgrade(kind: DatabaseKind) async throws {
        let db = try await TestDatabase.make(kind)
        let keyring = try SealKeyring(current: "k1", keys: ["k1": VaultTests.key(1)])
        let vault = AccountVault(keyring: keyring)
        let key = appKey("upgraded")
        try await Self.createBeforeFingerprints(db, with: try BrokerAPITests.sealedAccount("u1", key, keyring: keyring))
        try await withRepository(db) { repo in
            try await repo.migrate()  // at every start: a second time changes nothing
            let row = try #require(try await repo.account(userID: "u1", environment: .sandbox))
            #expect(row.appKeyFingerprint == nil)
            #expect(try vault.open(row).appKey == key)
            #expect(try await repo.accountsWithoutAppKeyFingerprint().map(\.userID) == ["u1"])
            // Found without a fingerprint, until it has one.
            let found = try await repo.accounts(environment: .sandbox, appKeyFingerprints: vault.appKeyFingerprints(key, .sandbox))
            #expect(found.map(\.userID) == ["u1"])
        }
        try await withBroker(keyring: keyring, existingDatabase: db, config: quietSchedulerConfig) { b in
            try await withRepository(db) { repo in
                #expect(try await repo.accountsWithoutAppKeyFingerprint().isEmpty)
                let row = try #require(try await repo.account(userID: "u1", environment: .sandbox))
                #expect(try row.appKeyFingerprint == vault.appKeyFingerprint(key, .sandbox, kid: "k1"))
                let other = try await repo.accounts(environment: .sandbox,
                                                    appKeyFingerprints: vault.appKeyFingerprints(appKey("other"), .sandbox))
                #expect(other.isEmpty)
            }
            try await BrokerAPITests.expectAnotherUsersAppKey(b, key, user: "u2")
            #expect(try await b.post("/api/kis/token", accountBody(key), jwt: try await b.jwt("u1")).status == 200)
        }
    }
}

@Suite("Broker rules without sockets")
struct BrokerRuleTests {
    @Test("backoff doubles from the base up to the cap, jittered into the upper half, and resets on success")
    func backoff() {
        var b = RefreshBackoff(base: 10, cap: 100)
        #expect(b.mayAttempt("a", now: 0))
        #expect(b.failed("a", now: 0, jitter: 1) == 10)
        #expect(!b.mayAttempt("a", now: 9.9))
        #expect(b.mayAttempt("a", now: 10))
        #expect(b.failed("a", now: 10, jitter: 0) == 10)  // 20 · 0.5
        #expect(b.failed("a", now: 20, jitter: 1) == 40)
        #expect(b.failed("a", now: 60, jitter: 1) == 80)
        #expect(b.failed("a", now: 140, jitter: 1) == 100)
        #expect(b.failed("a", now: 240, jitter: 0.5) == 75)
        #expect(b.failed("a", now: 0, jitter: 0, atLeast: 61) == 61)
        #expect(b.mayAttempt("b", now: 0))
        b.succeeded("a")
        #expect(b.mayAttempt("a", now: 0))
        #expect(b.failureCount("a") == 0)
        // Accounts gone since they failed are forgotten at the next pass.
        b.failed("gone", now: 0, jitter: 1)
        b.failed("kept", now: 0, jitter: 1)
        b.keepOnly(["kept", "new"])
        #expect(b.remembered == 1 && b.failureCount("kept") == 1 && b.failureCount("gone") == 0)
    }

    @Test("a refused key pair is given up after three refusals in a row over half an hour; a success starts again")
    func refusals() {
        var b = RefreshBackoff(base: 10, cap: 100)
        #expect(b.refused("a", now: 0) == (false, 1, 0))
        #expect(b.refused("a", now: 600) == (false, 2, 0))
        #expect(b.refused("a", now: 1799) == (false, 3, 0))  // three, but not yet half an hour
        #expect(b.refused("a", now: 1800) == (true, 4, 0))
        #expect(b.refused("b", now: 0) == (false, 1, 0))
        #expect(b.refused("b", now: 5000) == (false, 2, 0))  // half an hour, but two refusals
        b.succeeded("b")
        #expect(b.refused("b", now: 6000) == (false, 1, 6000))
        b.keepOnly(["c"])
        #expect(b.refused("a", now: 7000) == (false, 1, 7000))
    }

    @Test("account numbers: 8 digits, an optional dash, 2 digits", arguments: [
        ("12345678-01", "12345678-01"), ("1234567801", "12345678-01"), ("1234567-801", nil), ("12345678-1", nil),
        ("abcdefgh-01", nil), ("", nil), ("12345678--01", nil), ("１２３４５６７８-01", nil),
    ] as [(String, String?)])
    func accountNumbers(raw: String, normalized: String?) {
        #expect(RequestForm.accountNumber(raw) == normalized)
    }

    @Test("masking shows the first and last four of an app key and hides the middle of an account number")
    func masking() {
        #expect(Mask.accountNumber("12345678-01") == "1234****-01")
        #expect(Mask.appKey("PSabcdefghijklmnopqrstuvwxyz012345wxyz") == "PSab…wxyz")
        #expect(Mask.appKey("short") == "****")
    }

    @Test("demo user ids: 1 to 64 letters, digits or -_.@")
    func userIDs() {
        #expect(RequestForm.isUserID("alice"))
        #expect(RequestForm.isUserID("a.b-c_d@example.com"))
        #expect(!RequestForm.isUserID(""))
        #expect(!RequestForm.isUserID(String(repeating: "a", count: 65)))
        #expect(!RequestForm.isUserID("a b"))
        #expect(!RequestForm.isUserID("a/b"))
    }
}

/// `sslmode` with libpq's meaning, against the test cluster serving TLS with a certificate of a CA of its own (as a
/// managed database does, or Debian's default self-signed one): `prefer` and `require` encrypt without checking the
/// certificate — the broker used to verify it in full, so it could not start against such a server where psql
/// connects — and `verify-ca` / `verify-full` check it against `sslrootcert` or the system's CAs.
@Suite("Broker storage: PostgreSQL TLS as libpq's sslmode", .serialized)
struct PostgresTLSTests {
    /// The cluster's administrator URL with `query` in place of its parameters.
    static func url(_ query: String) throws -> String {
        var c = try #require(URLComponents(string: try TestServices.requirePostgresURL()))
        c.query = query
        return try #require(c.string)
    }

    /// Whether a connection made as `url` says is encrypted (`pg_stat_ssl`), after a login check.
    static func connectsEncrypted(_ url: String) async throws -> Bool {
        try await PostgresRepository(url: url, logger: quietLogger).checkLogin(within: .seconds(5))
        let client = PostgresClient(configuration: try PostgresRepository.configuration(url: url))
        return try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask { await client.run(); return false }
            defer { group.cancelAll() }
            let rows = try await client.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            for try await (ssl) in rows.decode(Bool.self) { return ssl }
            return false
        }
    }

    @Test("prefer, allow and require encrypt without checking the certificate",
          arguments: ["sslmode=prefer", "sslmode=require", "sslmode=allow"])
    func encryptedUnverified(_ query: String) async throws {
        #expect(try await Self.connectsEncrypted(try Self.url(query)))
    }

    @Test("disable: a plain connection")
    func disabled() async throws {
        #expect(try await Self.connectsEncrypted(try Self.url("sslmode=disable")) == false)
    }

    @Test("verify-ca and verify-full check the certificate against sslrootcert (and the host, for verify-full)")
    func verified() async throws {
        let ca = try TestServices.requirePostgresTLSCA()
        for mode in ["verify-ca", "verify-full", "require"] {
            #expect(try await Self.connectsEncrypted(try Self.url("sslmode=\(mode)&sslrootcert=\(ca)")), "\(mode)")
        }
    }

    @Test("verify-full without the server's CA, or require with another CA: refused at the login check, naming TLS")
    func unverifiable() async throws {
        // The system's CAs did not sign the test cluster's certificate.
        let system = "/etc/ssl/certs/ca-certificates.crt"
        for query in ["sslmode=verify-full", "sslmode=verify-ca", "sslmode=require&sslrootcert=\(system)"] {
            let repository = try PostgresRepository(url: try Self.url(query), logger: quietLogger)
            do {
                try await repository.checkLogin(within: .seconds(5))
                Issue.record("\(query): the login check passed")
            } catch {
                #expect("\(error)".contains("refused the broker: TLS failed"), "\(query): \(error)")
            }
        }
    }

    @Test("an sslrootcert that cannot be read is refused when the repository is made, naming it")
    func unreadableRootCertificate() throws {
        #expect(throws: RepositoryError.self) {
            _ = try PostgresRepository(url: try Self.url("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"), logger: quietLogger)
        }
    }
}
