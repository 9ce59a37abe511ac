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

    @Test("the broker serves them at / and /ui/ over a real socket")
    func servedByTheBroker() async throws {
        try await withBroker { b in
            try await b.withBroker(extraRoutes: { router in
                addWebRoutes(to: router) { #"{"demo": false, "gatewayUrl": "http://127.0.0.1:8000"}"# }
            }) { url in
                let index = try await http(.GET, url + "/")
                #expect(index.status == 200)
                #expect(index.header("Content-Type") == "text/html; charset=utf-8")
                #expect(index.body == (try Data(contentsOf: Self.resources.appendingPathComponent("index.html"))))
                let client = try await http(.GET, url + "/ui/kis-client.js")
                #expect(client.header("Content-Type") == "text/javascript; charset=utf-8")
                #expect(client.body == (try Data(contentsOf: Self.resources.appendingPathComponent("kis-client.js"))))
            }
        }
    }
}
