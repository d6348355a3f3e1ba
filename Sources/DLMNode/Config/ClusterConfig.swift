import DLMTransport

/// The cluster config file: who is in the cluster, how they talk, and which lockspaces they share.
///
/// One file describes the whole cluster and every node (kernel nodes running `dlm-peer agent`
/// and dlm-peer nodes running `dlm-peer run`) reads the same file, so that all of them agree on
/// what the kernel never checks (recovery.md §5.2): members, weights, global ids, port, transport.
/// The schema is documented at the top of `Config/peer-and-kernels.toml`; the interop lab reads the
/// same files with `Interop/lab/config.py`.
///
/// Load with `ClusterConfig.load(path:)` or `ClusterConfig.parse(_:file:)`; both validate
/// everything and throw a `ConfigError` with every problem, each with its line and column.
public struct ClusterConfig: Hashable, Sendable {
    public enum Transport: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
        case tcp
        case sctp
        public var description: String { rawValue }
    }

    public enum NodeKind: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
        /// The kernel's DLM; the node runs `dlm-peer agent` as its cluster manager.
        case kernel
        /// A dlm-peer process (`dlm-peer run`).
        case peer
        public var description: String { rawValue }
    }

    /// Failure detection by heartbeats between the agents (for the cluster manager; optional).
    public struct Heartbeat: Hashable, Sendable {
        public var interval: Duration
        /// A node silent this long is declared failed (and fenced, when `fenceCommand` is set).
        public var timeout: Duration

        public init(interval: Duration, timeout: Duration) {
            self.interval = interval
            self.timeout = timeout
        }
    }

    public struct Node: Hashable, Sendable, Identifiable {
        /// The DLM nodeid, 1...Int32.max (`h_nodeid`, configfs `comms/<id>`).
        public var id: UInt32
        /// 1 to 3 addresses of one family; the first is the one connected to and from.
        public var addresses: [IPAddress]
        /// Directory weight (configfs `nodes/<id>/weight`): 0 = never a directory node.
        public var weight: Int
        public var kind: NodeKind
        /// Peers: the protocol to speak (3.2, or 3.1 to emulate a ≤ 5.13 kernel). Kernel nodes: nil.
        public var emulatedProtocol: ProtocolVersion?
        /// Lab only: the kernel a kernel node's VM boots ("6.1", "6.12", "5.10").
        public var kernel: String?

        public init(id: UInt32, addresses: [IPAddress], weight: Int = 1, kind: NodeKind,
                    emulatedProtocol: ProtocolVersion? = nil, kernel: String? = nil) {
            self.id = id
            self.addresses = addresses
            self.weight = weight
            self.kind = kind
            self.emulatedProtocol = emulatedProtocol
            self.kernel = kernel
        }

        public var family: IPAddress.Family { addresses.first?.family ?? .ipv4 }

        /// The protocol this node speaks, when the config tells: a peer's configured one, a kernel
        /// node's from its lab `kernel` (5.10 → 3.1, 6.x → 3.2); nil for a kernel of unknown version.
        public var protocolVersion: ProtocolVersion? {
            switch kind {
            case .peer:
                return emulatedProtocol ?? .v3_2
            case .kernel:
                guard let kernel else { return nil }
                return ClusterConfig.protocolOfKernel(kernel)
            }
        }
    }

    public struct Lockspace: Hashable, Sendable {
        /// 1 to 64 bytes; never on the wire (configfs/sysfs/uevent name only).
        public var name: String
        /// `h_lockspace`: the CRC-32 rule (`lockspaceGlobalID(name)`), unless `allow_custom_id`.
        public var globalID: UInt32
        /// Members as written in the file (unique, all configured node ids).
        public var members: [UInt32]
        /// `ls_lvblen`, checked by every member's RCOM_STATUS_REPLY.
        public var lvbLength: Int
        /// `ls_exflags` (`rf_lsflags`); always 0 today.
        public var flags: UInt32
        /// No resource directory (sysfs `nodir`, dlm_controld's `nodir=1`): every member must agree;
        /// current kernels neither exchange nor compare it.
        public var nodir: Bool

        public init(name: String, globalID: UInt32? = nil, members: [UInt32], lvbLength: Int = 32,
                    flags: UInt32 = 0, nodir: Bool = false) {
            self.name = name
            self.globalID = globalID ?? lockspaceGlobalID(name)
            self.members = members
            self.lvbLength = lvbLength
            self.flags = flags
            self.nodir = nodir
        }

        /// Whether `globalID` deviates from what dlm_controld computes (a test of a wrong id).
        public var hasCustomID: Bool { globalID != lockspaceGlobalID(name) }
    }

    /// The file the config came from (used in messages).
    public var file: String
    /// Cluster name (configfs `cluster_name`), under 32 bytes, no spaces.
    public var name: String
    public var transport: Transport
    /// Listen and connect port of every node (configfs `tcp_port`).
    public var port: Int
    /// TCP port of the agents' control connections (`dlm-peer agent`), on each node's first address.
    public var agentPort: Int = ClusterConfig.defaultAgentPort
    /// Run by the cluster manager to fence a failed node before it is removed; `/bin/sh -c`.
    public var fenceCommand: String?
    public var heartbeat: Heartbeat?
    /// In file order.
    public var nodes: [Node]
    /// In file order.
    public var lockspaces: [Lockspace]
    /// Non-fatal findings of the load (each with its line).
    public var warnings: [ConfigDiagnostic]

    public init(file: String = "<config>", name: String, transport: Transport = .tcp,
                port: Int = ClusterConfig.defaultPort, fenceCommand: String? = nil,
                heartbeat: Heartbeat? = nil, nodes: [Node], lockspaces: [Lockspace],
                warnings: [ConfigDiagnostic] = []) {
        self.file = file
        self.name = name
        self.transport = transport
        self.port = port
        self.fenceCommand = fenceCommand
        self.heartbeat = heartbeat
        self.nodes = nodes
        self.lockspaces = lockspaces
        self.warnings = warnings
    }

    // MARK: Constants of the schema

    public static let defaultPort = 21064
    public static let defaultAgentPort = 21065
    /// DLM_USER_LVB_LEN: every lockspace made through /dev/dlm-control has this LVB length.
    public static let userLVBLength = 32
    /// The largest LVB that fits the largest LVB-carrying message, RCOM_LOCK (156 + lvblen ≤
    /// 4072), rounded down to a multiple of 8.
    public static let maxLVBLength =
        (WireLimits.maxAppMessageSize - WireLimits.rcomFixedSize - WireLimits.rcomLockSize) / 8 * 8
    public static let maxAddressesPerNode = 3
    public static let maxNodeID = UInt32(Int32.max)
    public static let maxWeight = 1000
    /// configfs cluster_name / dlm_controld: at most 31 bytes.
    public static let maxClusterNameLength = 31
    /// Kernels the interop lab can boot (`kernel` of a kernel node).
    public static let labKernels = ["6.1", "6.12", "5.10"]

    /// The protocol a kernel release speaks: 3.1 before 5.14, 3.2 from then on.
    public static func protocolOfKernel(_ release: String) -> ProtocolVersion? {
        let parts = release.split(separator: ".").compactMap { Int($0) }
        guard parts.count >= 2 else { return nil }
        return (parts[0], parts[1]) < (5, 14) ? .v3_1 : .v3_2
    }

    // MARK: Queries

    public func node(_ id: UInt32) -> Node? {
        nodes.first { $0.id == id }
    }

    public func lockspace(named name: String) -> Lockspace? {
        lockspaces.first { $0.name == name }
    }

    /// The lockspaces `node` is a member of, in file order.
    public func lockspaces(of node: UInt32) -> [Lockspace] {
        lockspaces.filter { $0.members.contains(node) }
    }

    /// The nodes `node` shares at least one lockspace with (the ones it talks DLM to), by id.
    public func peers(of node: UInt32) -> [Node] {
        let ids = Set(lockspaces(of: node).flatMap(\.members)).subtracting([node])
        return nodes.filter { ids.contains($0.id) }.sorted { $0.id < $1.id }
    }

    /// The members of `lockspace` with their weights, ascending by id.
    public func weightedMembers(of lockspace: Lockspace) -> [(nodeID: UInt32, weight: Int)] {
        lockspace.members.sorted().map { id in (id, node(id)?.weight ?? 1) }
    }

    /// The directory node array of a lockspace (wire.md §11.3, locking.md §3.2): members in
    /// ascending id, each repeated `weight` times; each once if every weight is 0. The directory
    /// node of a resource is `array[(hash >> 16) % array.count]`.
    public func directoryNodes(of lockspace: Lockspace) -> [UInt32] {
        let members = weightedMembers(of: lockspace)
        if members.allSatisfy({ $0.weight == 0 }) { return members.map(\.nodeID) }
        return members.flatMap { Array(repeating: $0.nodeID, count: max(0, $0.weight)) }
    }

    /// The protocol two nodes end up speaking (a 3.2 node falls back to 3.1 towards a 3.1 node);
    /// nil when one side's version is unknown.
    public func protocolBetween(_ a: UInt32, _ b: UInt32) -> ProtocolVersion? {
        guard let va = node(a)?.protocolVersion, let vb = node(b)?.protocolVersion else { return nil }
        return va.rawValue <= vb.rawValue ? va : vb
    }
}
