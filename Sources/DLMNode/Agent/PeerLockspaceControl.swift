import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The agent's local side for a dlm-peer node (`dlm-peer run`): its control socket's
/// `ls-stop LS` (returns once the lockspace is stopped) and `ls-start LS ID:W... [renew=ID,...]` lines,
/// which `PeerNode.stop(lockspace:)` / `PeerNode.start(lockspace:members:)` answer.
///
/// State of the wiring: those two control lines are added to `dlm-peer run` on another
/// branch; until they are merged, the node answers `unknown request` and every operation here
/// fails with that message (the agent logs it). A dlm-peer node joins its lockspaces by itself
/// when it starts and releases them when it exits, so `finishLeave`, `refuseJoin` and the comms
/// entries (kernel configfs only) have nothing to do.
public struct PeerLockspaceControl: LocalLockspaceControl {
    public let socketPath: String

    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    public func stop(_ lockspace: String) async throws {
        try await request("ls-stop \(lockspace)")
    }

    public func start(_ plan: StartPlan) async throws {
        // `dlm-peer run` joins its lockspaces with the config's member list when it starts:
        // that is the formation G0 already
        if plan.change == .formation { return }
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
