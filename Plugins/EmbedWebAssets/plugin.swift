import Foundation
import PackagePlugin

/// Embeds the files of a target's `Resources` folder in its code: `EmbedFiles` writes them into one generated Swift
/// file (`WebAssets.embedded`), so the binary carries the web UI itself (web-client.md: "embedded in the binary").
/// SwiftPM's own resources live in a `<package>_<target>.resources` folder next to the executable, which an installed
/// `kisgw` (a copy of the binary alone) does not have.
@main
struct EmbedWebAssets: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        guard let target = target as? SourceModuleTarget else { return [] }
        let folder = target.directoryURL.appending(path: "Resources")
        let files = try FileManager.default.contentsOfDirectory(at: folder, includingPropertiesForKeys: [.isRegularFileKey])
            .filter { url in
                !url.lastPathComponent.hasPrefix(".")
                    && (try? url.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true
            }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedWebAssets.swift")
        return [
            .buildCommand(
                displayName: "Embedding \(files.count) files of \(target.name)/Resources",
                executable: try context.tool(named: "EmbedFiles").url,
                arguments: [output.path] + files.map(\.path),
                inputFiles: files,
                outputFiles: [output])
        ]
    }
}
