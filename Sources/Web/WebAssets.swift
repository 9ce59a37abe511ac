import Foundation

/// The web UI's static files (`Sources/Web/Resources`), shipped as package resources.
///
/// Every file is read once, at first use, into an immutable table keyed by its file name; a lookup can only
/// return one of those files, so no request path can reach anything else on disk.
///
/// ```swift
/// if let asset = WebAssets.asset(path: "app.js") {
///     print(asset.contentType, asset.bytes.count)   // text/javascript; charset=utf-8 …
/// }
/// ```
public enum WebAssets {
    /// The bytes and `Content-Type` of the file named `path` (`"index.html"`, `"app.js"`, or `"/ui/app.js"`), or
    /// nil when there is no such file. Only plain file names are accepted: no `..`, no sub-folders, no hidden
    /// files.
    public static func asset(path: String) -> (bytes: [UInt8], contentType: String)? {
        var name = Substring(path)
        if name.hasPrefix("/ui/") {
            name = name.dropFirst(4)
        } else if name.hasPrefix("/") {
            name = name.dropFirst()
        }
        guard isPlainFileName(name), let bytes = table[String(name)] else { return nil }
        return (bytes, contentType(forFileName: name))
    }

    /// The names of every file served, sorted.
    public static var fileNames: [String] { table.keys.sorted() }

    /// `Content-Type` by file extension; unknown extensions are `application/octet-stream`.
    public static func contentType(forFileName name: some StringProtocol) -> String {
        let ext = name.split(separator: ".").last.map { $0.lowercased() } ?? ""
        switch ext {
        case "html": return "text/html; charset=utf-8"
        case "css": return "text/css; charset=utf-8"
        case "js", "mjs": return "text/javascript; charset=utf-8"
        case "json": return "application/json; charset=utf-8"
        case "svg": return "image/svg+xml"
        case "png": return "image/png"
        case "ico": return "image/x-icon"
        case "txt": return "text/plain; charset=utf-8"
        default: return "application/octet-stream"
        }
    }

    /// `[A-Za-z0-9_-]` segments joined by single dots, not starting with a dot, at most 100 characters.
    static func isPlainFileName(_ name: Substring) -> Bool {
        guard !name.isEmpty, name.count <= 100, name.first != ".", name.last != "." else { return false }
        var previousDot = false
        for scalar in name.unicodeScalars {
            switch scalar {
            case "a"..."z", "A"..."Z", "0"..."9", "_", "-":
                previousDot = false
            case ".":
                if previousDot { return false }
                previousDot = true
            default:
                return false
            }
        }
        return true
    }

    /// File name → bytes, for every regular file directly inside the bundle's `Resources` folder.
    private static let table: [String: [UInt8]] = {
        guard let folder = Bundle.module.url(forResource: "Resources", withExtension: nil) else { return [:] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        var table: [String: [UInt8]] = [:]
        for name in names where isPlainFileName(Substring(name)) {
            let url = folder.appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue,
                let data = try? Data(contentsOf: url)
            else { continue }
            table[name] = [UInt8](data)
        }
        return table
    }()
}
