// KernelLockspaceControl: the configfs/sysfs writes a kernel node's agent makes, in
// dlm_controld's order (recovery.md §2.8, §2.9), recorded by an in-memory file system that
// behaves like configfs where it matters (mkdir/rmdir of directories, rmdir of a missing one).

import NIOConcurrencyHelpers
import Testing
@testable import DLMNode

final class RecordingFS: ControlFS {
    struct State {
        var dirs: Set<String> = []
        var files: [String: [UInt8]] = [:]
        var ops: [String] = []
    }

    let state = NIOLockedValueBox(State())

    init(dirs: [String] = []) {
        state.withLockedValue { $0.dirs = Set(dirs) }
    }

    var ops: [String] { state.withLockedValue { $0.ops } }
    func clear() { state.withLockedValue { $0.ops = [] } }

    func mkdir(_ path: String) throws {
        try state.withLockedValue { s in
            let parent = String(path[..<path.lastIndex(of: "/")!])
            guard s.dirs.contains(parent) else { throw LocalControlError("mkdir \(path): no parent") }
            s.dirs.insert(path)
            if path.hasSuffix("/cluster") {   // configfs makes the default groups
                s.dirs.formUnion([path + "/comms", path + "/spaces"])
            }
            if parent.hasSuffix("/spaces") { s.dirs.insert(path + "/nodes") }
            s.ops.append("mkdir \(path)")
        }
    }

    func rmdir(_ path: String) throws {
        try state.withLockedValue { s in
            guard s.dirs.contains(path) else { return }
            if path.hasSuffix("/cluster") { s.dirs.subtract([path + "/comms", path + "/spaces"]) }
            if path.dropLast(path.count - (path.lastIndex(of: "/").map { path.distance(from: path.startIndex, to: $0) } ?? 0)).hasSuffix("/spaces") {
                s.dirs.remove(path + "/nodes")
            }
            guard !s.dirs.contains(where: { $0.hasPrefix(path + "/") }) else { throw LocalControlError("rmdir \(path): not empty") }
            s.dirs.remove(path)
            s.ops.append("rmdir \(path)")
        }
    }

    func write(_ path: String, _ bytes: [UInt8]) throws {
        state.withLockedValue { s in
            s.files[path] = bytes
            let text = bytes.count == 128 ? "<\(bytes.count) bytes>" : String(decoding: bytes, as: UTF8.self)
            s.ops.append("write \(path) \(text)")
        }
    }

    func exists(_ path: String) -> Bool { state.withLockedValue { $0.dirs.contains(path) } }

    func list(_ path: String) -> [String] {
        state.withLockedValue { s in
            s.dirs.filter { $0.hasPrefix(path + "/") && !$0.dropFirst(path.count + 1).contains("/") }
                .map { String($0.dropFirst(path.count + 1)) }.sorted()
        }
    }
}

@Suite("Kernel lockspace control (configfs/sysfs writes)")
struct AgentKernelControlTests {
    static let C = "/cfg/cluster"

    static func control() -> (KernelLockspaceControl, RecordingFS) {
        let fs = RecordingFS(dirs: ["/cfg", "/sys", "/sys/alpha"])
        return (KernelLockspaceControl(fs: fs, configfs: "/cfg", sysfs: "/sys"), fs)
    }

    @Test("bring-up: cluster attributes, then comms with nodeid before addr and local last, the local node first")
    func setUp() throws {
        let (k, fs) = Self.control()
        let config = try ClusterConfig.parse("""
            [cluster]
            name = "lab"
            transport = "sctp"
            port = 21070
            [[node]]
            id = 1
            addresses = ["10.77.0.1"]
            [[node]]
            id = 2
            addresses = ["10.77.0.2", "10.77.1.2"]
            [[lockspace]]
            name = "alpha"
            members = [1, 2]
            """)
        // comms simulate what configfs creates with the cluster dir
        try k.setUpCluster(config, me: 2)
        let C = Self.C
        #expect(fs.ops == [
            "mkdir \(C)", "write \(C)/protocol 1", "write \(C)/tcp_port 21070", "write \(C)/cluster_name lab",
            "mkdir \(C)/comms/2", "write \(C)/comms/2/nodeid 2", "write \(C)/comms/2/addr <128 bytes>",
            "write \(C)/comms/2/addr <128 bytes>", "write \(C)/comms/2/local 1",
            "mkdir \(C)/comms/1", "write \(C)/comms/1/nodeid 1", "write \(C)/comms/1/addr <128 bytes>",
        ].map { $0 })
        let addr = fs.state.withLockedValue { $0.files["\(C)/comms/1/addr"]! }
        #expect(addr.count == 128)
        #expect(Array(addr[0..<8]) == [2, 0, 0, 0, 10, 77, 0, 1])   // AF_INET, port 0, 10.77.0.1
        #expect(addr[8...].allSatisfy { $0 == 0 })
    }

    @Test("join: id, members, control=1, event_done=0; a restart renews and removes members")
    func startAndRenew() async throws {
        let (k, fs) = Self.control()
        fs.state.withLockedValue { $0.dirs.formUnion([Self.C, "\(Self.C)/spaces", "\(Self.C)/comms"]) }
        let C = Self.C
        try await k.start(StartPlan(lockspace: "alpha", globalID: 0x521b2683, change: .formation,
                                    members: [AgentMember(id: 1), AgentMember(id: 2, weight: 3)], renew: [], joining: true))
        #expect(fs.ops == [
            "write /sys/alpha/id 1377511043",
            "mkdir \(C)/spaces/alpha",
            "mkdir \(C)/spaces/alpha/nodes/1", "write \(C)/spaces/alpha/nodes/1/nodeid 1", "write \(C)/spaces/alpha/nodes/1/weight 1",
            "mkdir \(C)/spaces/alpha/nodes/2", "write \(C)/spaces/alpha/nodes/2/nodeid 2", "write \(C)/spaces/alpha/nodes/2/weight 3",
            "write /sys/alpha/control 1", "write /sys/alpha/event_done 0",
        ])
        fs.clear()
        try await k.stop("alpha")
        #expect(fs.ops == ["write /sys/alpha/control 0"])
        fs.clear()
        // members 1, 3 with 1 renewed (it left and came back): 2 goes, 1 is rmdir'ed and mkdir'ed
        try await k.start(StartPlan(lockspace: "alpha", globalID: 0x521b2683, change: ChangeID(seq: 2, origin: 3),
                                    members: [AgentMember(id: 1), AgentMember(id: 3)], renew: [1], joining: false))
        #expect(fs.ops == [
            "rmdir \(C)/spaces/alpha/nodes/1", "rmdir \(C)/spaces/alpha/nodes/2",
            "mkdir \(C)/spaces/alpha/nodes/1", "write \(C)/spaces/alpha/nodes/1/nodeid 1", "write \(C)/spaces/alpha/nodes/1/weight 1",
            "mkdir \(C)/spaces/alpha/nodes/3", "write \(C)/spaces/alpha/nodes/3/nodeid 3", "write \(C)/spaces/alpha/nodes/3/weight 1",
            "write /sys/alpha/control 1",
        ])
        fs.clear()
        // A nodir lockspace: nodir=1 right after the id, on the first start only.
        try await k.start(StartPlan(lockspace: "beta", globalID: 7, change: .formation, members: [AgentMember(id: 1)],
                                    renew: [], joining: true, nodir: true))
        #expect(Array(fs.ops.prefix(2)) == ["write /sys/beta/id 7", "write /sys/beta/nodir 1"])
        fs.clear()
        try await k.finishLeave("alpha")
        #expect(fs.ops == ["rmdir \(C)/spaces/alpha/nodes/1", "rmdir \(C)/spaces/alpha/nodes/3", "rmdir \(C)/spaces/alpha",
                           "write /sys/alpha/event_done 0"])
        fs.clear()
        try await k.refuseJoin("alpha", errno: 1)
        #expect(fs.ops == ["write /sys/alpha/event_done -1"])
    }
}

@Suite("Config: agent_port")
struct AgentConfigTests {
    static func text(_ cluster: String) -> String {
        """
        [cluster]
        name = "lab"
        \(cluster)
        [[node]]
        id = 1
        addresses = ["10.0.0.1"]
        [[lockspace]]
        name = "alpha"
        members = [1]
        """
    }

    @Test("default 21065, or the configured one")
    func values() throws {
        #expect(try ClusterConfig.parse(Self.text("")).agentPort == 21065)
        #expect(try ClusterConfig.parse(Self.text("agent_port = 30000")).agentPort == 30000)
    }

    @Test("out of range or the DLM port itself: an error at the value, with file, line and column")
    func errors() {
        for (line, what) in [("agent_port = 70000", "out of range"), ("port = 21070\nagent_port = 21070", "the DLM port too")] {
            let (config, diagnostics) = ClusterConfig.check(Self.text(line), file: "a.toml")
            #expect(config == nil)
            let e = diagnostics.first { $0.severity == .error }
            #expect(e?.message.contains(what) == true, "\(diagnostics)")
            #expect(e?.file == "a.toml")
            #expect(e?.position.line == (line.hasPrefix("port") ? 4 : 3))
            #expect(e?.position.column == 14)
        }
        let (_, warnings) = ClusterConfig.check(Self.text("port = 21065"), file: "a.toml")
        #expect(warnings.contains { $0.severity == .warning && $0.message.contains("agent_port") })
    }
}
