import Broker
import Foundation
import Hummingbird
import NIOCore
import NIOHTTP1
import Testing
import TestSupport
import Web

/// web-client.md: the UI is "embedded in the binary as resources and served by the broker at `/`". It was SwiftPM
/// resources, which live in a `kisgw_Web.resources` folder next to the executable: an installed `kisgw` (the binary
/// alone) crashed on the first `GET /` (`Bundle.module` ends in `fatalError` when the folder is not found). Now the
/// build plugin embeds the files, and nothing is read from disk at run time.
@Suite("Web UI files embedded in the binary")
struct WebAssetsTests {
    static let resources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Sources/Web/Resources")

    @Test("every file of Sources/Web/Resources is embedded, byte for byte, and nothing else")
    func everyFileExactly() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: Self.resources.path)
            .filter { !$0.hasPrefix(".") }.sorted()
        #expect(names.contains("index.html") && names.contains("kis-client.js"))
        #expect(WebAssets.fileNames == names)
        for name in names {
            let bytes = try [UInt8](Data(contentsOf: Self.resources.appendingPathComponent(name)))
            #expect(WebAssets.asset(path: "/ui/" + name)?.bytes == bytes, "\(name)")
        }
        #expect(WebAssets.asset(path: "/ui/../Package.swift") == nil)
    }

    /// The page fetches from its own origin (the broker) and the gateway only: `connect-src` was `'self' http: https:`,
    /// which let a script that got into the page send the KIS token to any host.
    @Test("the page's Content-Security-Policy lets it fetch from the broker and the gateway's origin only")
    func contentSecurityPolicy() {
        func connectSources(_ gatewayURL: String) -> String? {
            webContentSecurityPolicy(gatewayURL: gatewayURL).split(separator: ";")
                .map { $0.trimmingCharacters(in: .whitespaces) }
                .first { $0.hasPrefix("connect-src ") }
        }
        #expect(connectSources("http://127.0.0.1:8000") == "connect-src 'self' http://127.0.0.1:8000")
        #expect(connectSources("https://gw.example.com/kis/v1") == "connect-src 'self' https://gw.example.com")
        #expect(connectSources("HTTPS://[::1]:9443") == "connect-src 'self' https://[::1]:9443")
        #expect(connectSources("/relative") == "connect-src 'self'")
        #expect(connectSources("https://a.example; script-src *") == "connect-src 'self'")
        let policy = webContentSecurityPolicy(gatewayURL: "https://gw.example.com")
        #expect(policy.contains("script-src 'self';") && policy.contains("frame-ancestors 'none'"))
    }

    @Test("the broker serves them at / and /ui/ over a real socket")
    func servedByTheBroker() async throws {
        try await withBroker { b in
            try await b.withBroker(extraRoutes: { router in
                addWebRoutes(to: router, gatewayURL: "http://127.0.0.1:8000", demo: false, maxRangeDays: 400)
            }) { url in
                let index = try await http(.GET, url + "/")
                #expect(index.status == 200)
                #expect(index.header("Content-Security-Policy")?.contains("connect-src 'self' http://127.0.0.1:8000;") == true)
                let config = try await http(.GET, url + "/ui/config.json")
                #expect(config.body == Data(#"{"demo":false,"gatewayUrl":"http://127.0.0.1:8000","maxRangeDays":400}"#.utf8))
                #expect(index.header("Content-Type") == "text/html; charset=utf-8")
                #expect(index.body == (try Data(contentsOf: Self.resources.appendingPathComponent("index.html"))))
                let client = try await http(.GET, url + "/ui/kis-client.js")
                #expect(client.header("Content-Type") == "text/javascript; charset=utf-8")
                #expect(client.body == (try Data(contentsOf: Self.resources.appendingPathComponent("kis-client.js"))))
            }
        }
    }
}
