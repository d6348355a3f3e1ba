import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What an agent drives on its own node: the kernel's lockspaces (`KernelLockspaceControl`,
/// sysfs and configfs) or a dlm-peer's (`PeerLockspaceControl`). The agent's protocol does not
/// care which (recovery.md §5.4, last bullet).
public protocol LocalLockspaceControl: Sendable {
    /// Stops the lockspace; returns once it is stopped (the kernel's `control`=0 is synchronous).
    func stop(_ lockspace: String) async throws
    /// Writes the membership (with renew) and starts; when `plan.joining`, also completes the join.
    func start(_ plan: StartPlan) async throws
    /// Completes a leave (after `stop`): membership removed, the `offline` answered.
    func finishLeave(_ lockspace: String) async throws
    /// Refuses a join (the application's create fails with -errno).
    func refuseJoin(_ lockspace: String, errno: Int32) async throws
    /// The node's cluster-wide communication entry (configfs `comms/<id>`).
    func addComm(_ node: ClusterConfig.Node, local: Bool) async throws
    func removeComm(_ node: AgentNodeID) async throws
}

public struct LocalControlError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

// MARK: - The file system operations of the kernel side

/// configfs/sysfs operations, so that tests can record them (`RealControlFS` does them).
public protocol ControlFS: Sendable {
    func mkdir(_ path: String) throws
    func rmdir(_ path: String) throws
    /// One write() of all bytes (configfs `addr` takes exactly one 128-byte write).
    func write(_ path: String, _ bytes: [UInt8]) throws
    func exists(_ path: String) -> Bool
    /// Entry names of a directory (no `.`/`..`); empty when it does not exist.
    func list(_ path: String) -> [String]
}

extension ControlFS {
    public func write(_ path: String, _ text: String) throws {
        try write(path, Array(text.utf8))
    }
}

public struct RealControlFS: ControlFS {
    public init() {}

    public func mkdir(_ path: String) throws {
        if Glibc.mkdir(path, 0o755) != 0, errno != EEXIST {
            throw LocalControlError("mkdir \(path): \(String(cString: strerror(errno)))")
        }
    }

    public func rmdir(_ path: String) throws {
        if Glibc.rmdir(path) != 0, errno != ENOENT {
            throw LocalControlError("rmdir \(path): \(String(cString: strerror(errno)))")
        }
    }

    public func write(_ path: String, _ bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { throw LocalControlError("open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n < 0 { throw LocalControlError("write \(path): \(String(cString: strerror(errno)))") }
        if n != bytes.count { throw LocalControlError("write \(path): \(n) of \(bytes.count) bytes written") }
    }

    public func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    public func list(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var out: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafePointer(to: e.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { out.append(name) }
        }
        return out.sorted()
    }
}

// MARK: - The kernel

/// The kernel DLM of this node through configfs and sysfs, in dlm_controld's order
/// (recovery.md §2.8, §2.9).
public struct KernelLockspaceControl: LocalLockspaceControl {
    public let fs: any ControlFS
    /// `/sys/kernel/config/dlm/cluster`
    public let cluster: String
    /// `/sys/kernel/dlm`
    public let sysfs: String

    public init(fs: any ControlFS = RealControlFS(), configfs: String = "/sys/kernel/config/dlm",
                sysfs: String = "/sys/kernel/dlm") {
        self.fs = fs
        self.cluster = configfs + "/cluster"
        self.sysfs = sysfs
    }

    /// Lockspaces the kernel has now (`/sys/kernel/dlm/*`).
    public func existingLockspaces() -> [String] {
        fs.list(sysfs)
    }

    /// Node bring-up (§2.9 A): a fresh cluster directory with the cluster settings and a comms
    /// entry per configured node. Leftovers of an earlier agent are removed first.
    public func setUpCluster(_ config: ClusterConfig, me: AgentNodeID) throws {
        try tearDownCluster()
        try fs.mkdir(cluster)
        if config.transport == .sctp { try fs.write("\(cluster)/protocol", "1") }
        if config.port != ClusterConfig.defaultPort { try fs.write("\(cluster)/tcp_port", "\(config.port)") }
        try fs.write("\(cluster)/cluster_name", config.name)   // no newline (§2.2.1)
        // the local entry first: the kernel needs it for its first lockspace
        for node in config.nodes.sorted(by: { ($0.id != me ? 1 : 0, $0.id) < ($1.id != me ? 1 : 0, $1.id) }) {
            try writeComm(node, local: node.id == me)
        }
    }

    /// rmdir everything under the cluster directory (node dirs first), then the directory.
    public func tearDownCluster() throws {
        guard fs.exists(cluster) else { return }
        for space in fs.list("\(cluster)/spaces") {
            for n in fs.list("\(cluster)/spaces/\(space)/nodes") {
                try fs.rmdir("\(cluster)/spaces/\(space)/nodes/\(n)")
            }
            try fs.rmdir("\(cluster)/spaces/\(space)")
        }
        for c in fs.list("\(cluster)/comms") {
            try fs.rmdir("\(cluster)/comms/\(c)")
        }
        try fs.rmdir(cluster)
    }

    private func writeComm(_ node: ClusterConfig.Node, local: Bool) throws {
        let d = "\(cluster)/comms/\(node.id)"
        try fs.mkdir(d)
        try fs.write("\(d)/nodeid", "\(node.id)")     // before addr (§2.2.2)
        for a in node.addresses {
            try fs.write("\(d)/addr", Self.sockaddrStorage(a))
        }
        if local { try fs.write("\(d)/local", "1") }  // last
    }

    /// The 128-byte `struct sockaddr_storage` configfs `addr` takes (port 0, §2.2.2).
    public static func sockaddrStorage(_ ip: IPAddress) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 128)
        switch ip.family {
        case .ipv4:
            b[0] = UInt8(AF_INET)
            for (i, byte) in ip.bytes.enumerated() { b[4 + i] = byte }
        case .ipv6:
            b[0] = UInt8(AF_INET6)
            for (i, byte) in ip.bytes.enumerated() { b[8 + i] = byte }
        }
        return b
    }

    public func addComm(_ node: ClusterConfig.Node, local: Bool) async throws {
        try await blocking { try writeComm(node, local: local) }
    }

    public func removeComm(_ node: AgentNodeID) async throws {
        try await blocking { try fs.rmdir("\(cluster)/comms/\(node)") }
    }

    public func stop(_ lockspace: String) async throws {
        try await blocking { try fs.write("\(sysfs)/\(lockspace)/control", "0") }
    }

    public func start(_ plan: StartPlan) async throws {
        try await blocking {
            let ls = plan.lockspace
            if plan.joining { try fs.write("\(sysfs)/\(ls)/id", "\(plan.globalID)") }
            // dlm_controld's order: nodir before the first start (it cannot be cleared).
            if plan.joining && plan.nodir { try fs.write("\(sysfs)/\(ls)/nodir", "1") }
            let space = "\(cluster)/spaces/\(ls)"
            if !fs.exists(space) { try fs.mkdir(space) }
            let wanted = Set(plan.members.map(\.id))
            for n in fs.list("\(space)/nodes") {
                if let id = AgentNodeID(n), wanted.contains(id), !plan.renew.contains(id) { continue }
                try fs.rmdir("\(space)/nodes/\(n)")
            }
            let present = Set(fs.list("\(space)/nodes"))
            for m in plan.members where !present.contains("\(m.id)") {
                let d = "\(space)/nodes/\(m.id)"
                try fs.mkdir(d)
                try fs.write("\(d)/nodeid", "\(m.id)")
                try fs.write("\(d)/weight", "\(m.weight)")
            }
            try fs.write("\(sysfs)/\(ls)/control", "1")
            if plan.joining { try fs.write("\(sysfs)/\(ls)/event_done", "0") }
        }
    }

    public func finishLeave(_ lockspace: String) async throws {
        try await blocking {
            let space = "\(cluster)/spaces/\(lockspace)"
            for n in fs.list("\(space)/nodes") { try fs.rmdir("\(space)/nodes/\(n)") }
            if fs.exists(space) { try fs.rmdir(space) }
            try fs.write("\(sysfs)/\(lockspace)/event_done", "0")
        }
    }

    public func refuseJoin(_ lockspace: String, errno: Int32) async throws {
        try await blocking { try fs.write("\(sysfs)/\(lockspace)/event_done", "-\(errno)") }
    }
}

/// Runs blocking file IO (a `control`=0 write waits for the kernel) off the async threads.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
        let t = Thread { c.resume(with: Result { try body() }) }
        t.start()
    }
}
