/// One problem found in a config file, compiler style: `FILE:LINE:COL: error: message`.
public struct ConfigDiagnostic: Hashable, Sendable, CustomStringConvertible {
    public enum Severity: String, Hashable, Sendable {
        case error
        case warning
    }

    public var severity: Severity
    public var file: String
    public var position: SourcePosition
    /// What is wrong and what to do about it, in one sentence.
    public var message: String

    public init(_ severity: Severity, file: String, at position: SourcePosition, _ message: String) {
        self.severity = severity
        self.file = file
        self.position = position
        self.message = message
    }

    public var line: Int { position.line }
    public var column: Int { position.column }

    public var description: String {
        "\(file):\(position.line):\(position.column): \(severity.rawValue): \(message)"
    }
}

/// Why a config could not be loaded: the file could not be read, or it is not a valid cluster
/// config (then `diagnostics` holds every error found, and the warnings, in file order).
public struct ConfigError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, Hashable, Sendable {
        /// The file does not exist, is not readable, or is not UTF-8 text.
        case unreadable
        /// TOML syntax error or schema violations.
        case invalid
    }

    public var kind: Kind
    public var file: String
    /// For `.unreadable`: why.
    public var detail: String
    public var diagnostics: [ConfigDiagnostic]

    public init(_ kind: Kind, file: String, detail: String = "", diagnostics: [ConfigDiagnostic] = []) {
        self.kind = kind
        self.file = file
        self.detail = detail
        self.diagnostics = diagnostics
    }

    public var errors: [ConfigDiagnostic] { diagnostics.filter { $0.severity == .error } }
    public var warnings: [ConfigDiagnostic] { diagnostics.filter { $0.severity == .warning } }

    public var description: String {
        switch kind {
        case .unreadable:
            return "\(file): cannot read the cluster config: \(detail)"
        case .invalid:
            let n = errors.count
            return "\(file): invalid cluster config (\(n) error\(n == 1 ? "" : "s")):\n"
                + diagnostics.map(\.description).joined(separator: "\n")
        }
    }
}
