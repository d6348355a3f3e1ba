import ArgumentParser
import DLMNode
import Foundation

/// `dlm-peer ls-stop LS`: stop a lockspace on a running node (sysfs `control` ← 0 on a kernel node).
struct LsStopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls-stop",
        abstract: "Stop a lockspace on a running node (returns when stopped; lock traffic is held until a start).")

    @Argument(help: "The lockspace name.")
    var lockspace: String

    @Option(help: "The node's id (finds its default control socket).")
    var node: UInt32?

    @Option(help: "The node's control socket.")
    var control: String?

    func run() throws {
        try LockspaceControlClient.send("ls-stop \(lockspace)", node: node, control: control)
    }
}

/// `dlm-peer ls-start LS ID[:WEIGHT]...`: start it with a member list (configfs members, then
/// `control` ← 1 on a kernel node).
struct LsStartCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls-start",
        abstract: "Start a stopped lockspace on a running node with a member list; recovery runs (see `status`).",
        discussion: "Stop every member of the new membership first. Members are ID or ID:WEIGHT and must include the node itself.")

    @Argument(help: "The lockspace name.")
    var lockspace: String

    @Argument(help: "Members: ID or ID:WEIGHT (directory weight, default 1).")
    var members: [String]

    @Option(name: .customLong("renew"), help: "A member that left or failed and came back since the last start (repeatable).")
    var renewed: [UInt32] = []

    @Option(help: "The node's id (finds its default control socket).")
    var node: UInt32?

    @Option(help: "The node's control socket.")
    var control: String?

    func run() throws {
        var line = "ls-start \(lockspace) " + members.joined(separator: " ")
        if !renewed.isEmpty { line += " renew=" + renewed.map(String.init).joined(separator: ",") }
        guard case .success? = LockspaceControlRequests.parse(line) else {
            if case .failure(let e)? = LockspaceControlRequests.parse(line) { throw ValidationError(e.description) }
            throw ValidationError("bad request")
        }
        try LockspaceControlClient.send(line, node: node, control: control)
    }
}

enum LockspaceControlClient {
    static func send(_ line: String, node: UInt32?, control: String?) throws {
        guard let path = control ?? node.map({ ControlServer.defaultPath(node: $0) }) else {
            throw ValidationError("give --node ID or --control PATH")
        }
        let reply = try ControlClient.request(line, path: path).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let object = try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any] else {
            throw ValidationError("unexpected answer from \(path): \(reply.prefix(200))")
        }
        if let error = object["error"] as? String {
            FileHandle.standardError.write(Data("dlm-peer: \(error)\n".utf8))
            throw ExitCode(1)
        }
        print("\(object["lockspace"] as? String ?? ""): \(object["result"] as? String ?? reply)")
    }
}
