import KisgwConfiguration
import Observability
import Testing

@Suite("Redis URLs and databases")
struct ValueTests {
    @Test(arguments: [
        ("redis://localhost", "redis://localhost:6379/0", false, "localhost", 6379, 0, nil as String?, nil as String?),
        ("redis://127.0.0.1:6380/3", "redis://127.0.0.1:6380/3", false, "127.0.0.1", 6380, 3, nil, nil),
        ("rediss://:pw@cache.example.com", "rediss://:[REDACTED]@cache.example.com:6379/0", true, "cache.example.com", 6379, 0, nil, "pw"),
        ("redis://app:p%40ss%2Fw@[::1]:7000/1", "redis://app:[REDACTED]@[::1]:7000/1", false, "::1", 7000, 1, "app", "p@ss/w"),
        ("redis://app@localhost/", "redis://app@localhost:6379/0", false, "localhost", 6379, 0, "app", nil),
        ("REDIS://LOCALHOST", "redis://localhost:6379/0", false, "localhost", 6379, 0, nil, nil),
    ])
    func goodRedisURLs(
        text: String, description: String, tls: Bool, host: String, port: Int, db: Int, user: String?, password: String?
    ) throws {
        let url = try #require(RedisURL(text))
        #expect(url.description == description)
        #expect(url.tls == tls)
        #expect(url.host == host)
        #expect(url.port == port)
        #expect(url.database == db)
        #expect(url.username == user)
        #expect(url.password?.value == password)
    }

    @Test(arguments: [
        "localhost:6379", "redis://", "redis:///0", "redis://localhost:0", "redis://localhost:99999", "redis://local host",
        "redis://localhost/db", "redis://localhost/1?x=1", "redis://localhost/-1", "http://localhost", "redis://[::1",
        "redis://bad_host",
    ])
    func badRedisURLs(text: String) {
        #expect(RedisURL(text) == nil)
    }

    @Test func databases() throws {
        for (text, expected) in [
            ("sqlite:data/broker.sqlite", BrokerDatabase.sqlite(path: "data/broker.sqlite")),
            ("sqlite:///var/lib/kisgw/b.sqlite", .sqlite(path: "/var/lib/kisgw/b.sqlite")),
            ("sqlite::memory:", .sqlite(path: ":memory:")),
            ("postgres://kisgw@db:5432/kisgw", .postgres(url: Secret("postgres://kisgw@db:5432/kisgw"))),
        ] {
            let config = try load("[broker]\ndatabase = \"\(text)\"\n")
            #expect(config.broker.database == expected)
        }
        // A password comes through the environment (a file may not hold it: ErrorTests).
        let withPassword = try load("", environment: ["KISGW_BROKER_DATABASE": "postgresql://u:secretpw@db/kisgw"])
        #expect(withPassword.broker.database.description == "postgresql://u:[REDACTED]@db/kisgw")
        #expect(!"\(withPassword.broker)".contains("secretpw"))
        let parameter = try load("", environment: ["KISGW_BROKER_DATABASE": "postgres://u@db/kisgw?sslmode=disable&password=secretpw"])
        #expect(parameter.broker.database.description == "postgres://[REDACTED]@db/kisgw?sslmode=disable&password=[REDACTED]")
        for bad in ["sqlite:", "postgres://", "postgres:///kisgw", "data/broker.sqlite", "redis://x"] {
            #expect(loadError("[broker]\ndatabase = \"\(bad)\"\n") != nil, "\(bad) was accepted")
        }
    }

    @Test(arguments: ["127.0.0.1", "0.0.0.0", "::", "::1", "[::1]", "localhost", "gw-1.internal.example.com"])
    func goodBindHosts(host: String) throws {
        // Brackets are URL syntax: `[::1]` is bound as `::1` (getaddrinfo refuses "[::1]").
        let bound = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        #expect(try load("[server]\nhost = \"\(host)\"\n").server.host == bound)
        #expect(try load("[broker]\nhost = \"\(host)\"\n").broker.host == bound)
    }

    @Test(arguments: ["", "127.0.0.1:8000", "http://localhost", "256.1.1.1", "bad host", "a..b", "-x.com", "1.2.3"])
    func badBindHosts(host: String) {
        #expect(loadError("[broker]\nhost = \"\(host)\"\n") != nil)
    }

    @Test(arguments: [
        ("https://openapi.koreainvestment.com:9443", "https://openapi.koreainvestment.com:9443"),
        ("HTTP://127.0.0.1:29443/", "http://127.0.0.1:29443"),
        ("https://proxy.example.com/kis/", "https://proxy.example.com/kis"),
        ("http://[::1]:29443", "http://[::1]:29443"),
    ])
    func kisURLsAreNormalised(text: String, expected: String) throws {
        #expect(try load("[kis]\nlive_url = \"\(text)\"\n").kis.liveURL == expected)
    }

    @Test(arguments: [
        "127.0.0.1:29443", "https://", "https://user:pw@example.com", "https://example.com#x", "https://exa mple.com",
        "https://example.com:99999", "file:///etc/passwd",
    ])
    func badKISURLs(text: String) {
        #expect(loadError("[kis]\nsandbox_url = \"\(text)\"\n") != nil)
    }
}
