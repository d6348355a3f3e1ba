import ArgumentParser
import DLMNode
import Foundation

/// `dlm-peer node-down ID`: declares a node failed through the local agent.
struct NodeDownCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node-down",
        abstract: "Declare a node failed (dead or fenced): the agents remove it from every lockspace (stop all, then start without it) and reset its comms.",
        discussion: "Only for a node that is really down: a live node removed this way keeps its locks while the others grant them again.")

    @Argument(help: "The failed node's id.")
    var failed: UInt32

    @Option(help: "The local agent's node id (finds its default admin socket).")
    var node: UInt32?

    @Option(help: "The agent's admin socket.")
    var admin: String?

    func run() throws {
        let path = try agentSocket(node: node, admin: admin)
        try adminReply(try ControlClient.request("node-down \(failed)", path: path))
        print("node \(failed) declared down")
    }
}
