import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The agent's local side for a dlm-peer node (`dlm-peer run`) in another process: its control
/// socket's `ls-stop LS` (returns once the lockspace is stopped) and `ls-start LS ID:W...
/// [renew=ID,...]` lines, which `PeerNode.stop(lockspace:)` / `PeerNode.start(lockspace:members:)`
/// answer. (`dlm-peer run --agent` has the agent in the process: `InProcessLockspaceControl`.)
///
/// A dlm-peer node joins its lockspaces by itself when it starts and releases them when it
/// exits, so the formation's start, `finishLeave`, `refuseJoin` and the comms entries (kernel
/// configfs only) have nothing to do.
public struct PeerLockspaceControl: LocalLockspaceControl {
    public let socketPath: String

    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    public func stop(_ lockspace: String) async throws {
        try await request("ls-stop \(lockspace)")
    }

    public func start(_ plan: StartPlan) async throws {
        guard plan.startsPeerNode else { return }
        var line = "ls-start \(plan.lockspace) " + plan.members.map { "\($0.id):\($0.weight)" }.joined(separator: " ")
        if !plan.renew.isEmpty { line += " renew=" + plan.renew.map(String.init).joined(separator: ",") }
        try await request(line)
    }

    public func finishLeave(_ lockspace: String) async throws {}
    public func refuseJoin(_ lockspace: String, errno: Int32) async throws {}
    public func addComm(_ node: ClusterConfig.Node, local: Bool) async throws {}
    public func removeComm(_ node: AgentNodeID) async throws {}

    /// One line to the control socket; an answer containing `"error"` is a failure.
    func request(_ line: String) async throws {
        let path = socketPath
        let reply = try await blocking { try Self.exchange(line, path: path) }
        if reply.contains("\"error\"") {
            throw LocalControlError("\(path): \(line): \(reply.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    static func exchange(_ line: String, path: String) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LocalControlError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var sa = sockaddr_un()
        sa.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: sa.sun_path) else { throw LocalControlError("\(path): path too long") }
        withUnsafeMutableBytes(of: &sa.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
        }
        let rc = withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw LocalControlError("connect \(path): \(String(cString: strerror(errno))) (is `dlm-peer run` running?)") }
        let out = Array((line + "\n").utf8)
        guard out.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == out.count else {
            throw LocalControlError("write \(path): \(String(cString: strerror(errno)))")
        }
        var reply: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            reply += buf[0..<n]
        }
        return String(decoding: reply, as: UTF8.self)
    }
}

extension StartPlan {
    /// Whether a dlm-peer node has anything to start: `dlm-peer run` joins its lockspaces with the
    /// config's member list when it starts, and that is the formation G0 already.
    var startsPeerNode: Bool { change != .formation }
}

/// The agent's local side inside `dlm-peer run --agent`: the node's own `PeerNode` stop and start.
/// The node's lockspaces are created stopped (`PeerNode.start(.byClusterManager)`), so every
/// start, the formation's too, is the agent's, as dlm_controld's is on a kernel node; a node may
/// thus also join after the formation. A coordinated leave (the agent's `offline`) ends in
/// `finishLeave`, which `onLeaveFinished` reports (the node then leaves for real, with its FIN
/// handshakes).
public struct InProcessLockspaceControl: LocalLockspaceControl {
    public let node: PeerNode
    public let onLeaveFinished: @Sendable (String) -> Void

    public init(node: PeerNode, onLeaveFinished: @escaping @Sendable (String) -> Void = { _ in }) {
        self.node = node
        self.onLeaveFinished = onLeaveFinished
    }

    public func stop(_ lockspace: String) async throws {
        try await node.stop(lockspace: lockspace)
    }

    public func start(_ plan: StartPlan) async throws {
        try await node.start(lockspace: plan.lockspace, members: plan.members.map { (id: $0.id, weight: $0.weight) },
                             renewed: Set(plan.renew))
    }

    public func finishLeave(_ lockspace: String) async throws { onLeaveFinished(lockspace) }
    public func refuseJoin(_ lockspace: String, errno: Int32) async throws {}
    public func addComm(_ node: ClusterConfig.Node, local: Bool) async throws {}
    public func removeComm(_ node: AgentNodeID) async throws {}
}
