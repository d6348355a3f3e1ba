import ArgumentParser
import DLMNode
import Foundation

/// `dlm-peer reload --node ID`: asks the local agent to re-read its config file.
struct ReloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Make a running agent re-read its config file (like SIGHUP); lockspace member changes are coordinated with the other agents.")

    @Option(help: "The agent's node id (finds its default admin socket).")
    var node: UInt32?

    @Option(help: "The agent's admin socket.")
    var admin: String?

    func run() throws {
        let path = try agentSocket(node: node, admin: admin)
        try adminReply(try ControlClient.request("reload", path: path))
        print("reloaded")
    }
}
