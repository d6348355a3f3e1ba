import ArgumentParser
import DLMNode
import Foundation

/// `dlm-peer config check FILE [--node ID] [--json]`.
struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Work with the cluster config file.",
        subcommands: [ConfigCheckCommand.self])
}

struct ConfigCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate a cluster config file and summarise it.",
        discussion: """
            Prints the cluster, its nodes (kind, addresses, weight, protocol) and lockspaces (global id, \
            members, LVB length, directory node array). Every problem is printed as FILE:LINE:COL: error: \
            message (warnings likewise), all of them, not just the first. With --node, also checks that \
            the node exists and shows what it will do: its peers and its lockspaces.

            Exits 0 if the file is valid (warnings allowed), 1 if it has errors or --node names no node, \
            2 if the file cannot be read.
            """)

    @Argument(help: "The cluster config file (TOML).")
    var file: String

    @Option(help: "Also check this node id and show what the node will do.")
    var node: UInt32?

    @Flag(help: "Machine-readable output: one JSON object on standard output.")
    var json = false

    func run() throws {
        let text: String
        do throws(ConfigError) {
            text = try ClusterConfig.readText(file)
        } catch {
            if json {
                let escaped = error.detail.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                let f = file.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                print("{\"file\":\"\(f)\",\"ok\":false,\"unreadable\":\"\(escaped)\"}")
            } else {
                FileHandle.standardError.write(Data("\(error)\n".utf8))
            }
            throw ExitCode(2)
        }
        let report = ConfigReport.check(text, file: file, nodeID: node)
        if json {
            print(report.json, terminator: "")
        } else {
            var err = report.diagnostics.map(\.description)
            if let p = report.nodeProblem { err.append("\(file): error: \(p)") }
            if !err.isEmpty { FileHandle.standardError.write(Data((err.joined(separator: "\n") + "\n").utf8)) }
            print(report.text, terminator: "")
            if report.exitCode != 0 {
                let n = report.errors.count + (report.nodeProblem == nil ? 0 : 1)
                FileHandle.standardError.write(Data("\(file): \(n) error\(n == 1 ? "" : "s")\n".utf8))
            }
        }
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }
}
