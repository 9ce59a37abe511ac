import Foundation

/// Prometheus's text exposition format, read back: samples by name and exact label set, and `# TYPE` lines.
public struct Exposition {
    public struct Sample {
        public let name: String
        public let labels: [String: String]
        public let value: Double
    }

    public private(set) var samples: [Sample] = []
    public private(set) var types: [String: String] = [:]

    public init(_ text: String) {
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                if parts.count == 4 { types[String(parts[2])] = String(parts[3]) }
            } else if !line.hasPrefix("#"), let sample = Self.sample(Array(line)) {
                samples.append(sample)
            }
        }
    }

    /// `name{k="v",…} value [timestamp]`, with `\\`, `\"` and `\n` escapes in label values; nil if malformed.
    private static func sample(_ c: [Character]) -> Sample? {
        var i = 0
        while i < c.count, c[i] != "{", c[i] != " " { i += 1 }
        let name = String(c[0..<i])
        var labels: [String: String] = [:]
        if i < c.count, c[i] == "{" {
            i += 1
            while i < c.count, c[i] != "}" {
                var key = ""
                while i < c.count, c[i] != "=" { key.append(c[i]); i += 1 }
                guard i + 1 < c.count, c[i + 1] == "\"" else { return nil }
                i += 2
                var value = ""
                while i < c.count, c[i] != "\"" {
                    if c[i] == "\\", i + 1 < c.count {
                        i += 1
                        value.append(c[i] == "n" ? "\n" : c[i])
                    } else {
                        value.append(c[i])
                    }
                    i += 1
                }
                guard i < c.count else { return nil }
                i += 1
                labels[key.trimmingCharacters(in: .whitespaces)] = value
                if i < c.count, c[i] == "," { i += 1 }
            }
            guard i < c.count else { return nil }
            i += 1
        }
        let rest = String(c[i...]).split(separator: " ")
        guard let first = rest.first, let value = Double(first) else { return nil }
        return Sample(name: name, labels: labels, value: value)
    }

    /// The value of the sample with exactly these labels.
    public func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }

    public func samples(_ name: String) -> [Sample] { samples.filter { $0.name == name } }
}
