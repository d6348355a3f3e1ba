/// Types shared by the agent's coordination core (`AgentCore`), its IO shell (`AgentRuntime`)
/// and its wire protocol (`AgentMessage`): the cluster manager for kernel nodes and dlm-peers
/// (recovery.md §2.8, §2.9, §5.4).

public typealias AgentNodeID = UInt32

/// One lockspace member as written into configfs `spaces/<ls>/nodes/<id>/{nodeid,weight}`.
public struct AgentMember: Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    public var id: AgentNodeID
    public var weight: Int

    public init(id: AgentNodeID, weight: Int = 1) {
        self.id = id
        self.weight = weight
    }

    public static func < (a: AgentMember, b: AgentMember) -> Bool { a.id < b.id }
    public var description: String { weight == 1 ? "\(id)" : "\(id):\(weight)" }
}

/// The number of a membership change of one lockspace: `seq` counts changes (0 = the initial
/// formation from the config), `origin` is the agent that proposed it, so that two agents
/// proposing concurrently still order their changes the same way everywhere.
public struct ChangeID: Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    public var seq: UInt64
    public var origin: AgentNodeID

    public init(seq: UInt64, origin: AgentNodeID) {
        self.seq = seq
        self.origin = origin
    }

    public static let formation = ChangeID(seq: 0, origin: 0)

    public static func < (a: ChangeID, b: ChangeID) -> Bool {
        (a.seq, a.origin) < (b.seq, b.origin)
    }

    public var description: String { seq == 0 ? "G0" : "G\(seq).\(origin)" }
}

/// A membership M(G) of one lockspace. `renew`: members that must be removed and re-added in
/// configfs by an agent that has them from an earlier start (a fresh incarnation of the node).
public struct MembershipChange: Hashable, Sendable, Codable, CustomStringConvertible {
    public var id: ChangeID
    /// Ascending by id.
    public var members: [AgentMember]
    public var renew: [AgentNodeID]

    public init(id: ChangeID, members: [AgentMember], renew: [AgentNodeID] = []) {
        self.id = id
        self.members = members.sorted()
        self.renew = Array(Set(renew)).sorted()
    }

    public var memberIDs: Set<AgentNodeID> { Set(members.map(\.id)) }
    public func contains(_ node: AgentNodeID) -> Bool { members.contains { $0.id == node } }

    public var description: String {
        "\(id) [\(members.map(\.description).joined(separator: ","))]"
            + (renew.isEmpty ? "" : " renew \(renew.map(String.init).joined(separator: ","))")
    }
}

/// What the local side must do to start a lockspace (the kernel: sysfs `id` when joining,
/// configfs members with renew, `control`=1, `event_done`=0 when joining).
public struct StartPlan: Hashable, Sendable {
    public var lockspace: String
    public var globalID: UInt32
    public var change: ChangeID
    public var members: [AgentMember]
    /// Members to rmdir and mkdir again (they were in the previous start and are a new
    /// incarnation now: the kernel then purges the old one's locks, recovery.md §2.2.3).
    public var renew: [AgentNodeID]
    /// First start after the `online` uevent: write `id` before and `event_done`=0 after.
    public var joining: Bool
    /// A nodir lockspace: the first start writes sysfs `nodir`=1 after `id`.
    public var nodir: Bool

    public init(lockspace: String, globalID: UInt32, change: ChangeID, members: [AgentMember],
                renew: [AgentNodeID], joining: Bool, nodir: Bool = false) {
        self.lockspace = lockspace
        self.globalID = globalID
        self.change = change
        self.members = members
        self.renew = renew
        self.joining = joining
        self.nodir = nodir
    }
}

/// Per lockspace and node: what an agent tells the others about itself (in `hello`).
public struct LockspaceReport: Hashable, Sendable, Codable {
    public var name: String
    public var target: MembershipChange?
    public var started: ChangeID?
    /// The sender's own intent: true = it has the lockspace and wants to be a member, false =
    /// it left, nil = it never had it (since its agent started).
    public var member: Bool?

    public init(name: String, target: MembershipChange?, started: ChangeID?, member: Bool? = nil) {
        self.name = name
        self.target = target
        self.started = started
        self.member = member
    }
}

/// The messages agents exchange over their control connections (one JSON object per line).
public enum AgentMessage: Hashable, Sendable, Codable {
    /// First message on a connection: who is talking, which incarnation (random per start),
    /// and its newest known change per lockspace (a restarted agent learns the current ones).
    case hello(node: AgentNodeID, incarnation: UInt64, lockspaces: [LockspaceReport])
    /// `node` has its lockspace and wants to be a member (`online`), or left it (`offline`).
    case intent(lockspace: String, node: AgentNodeID, member: Bool)
    /// A new membership of `lockspace` (proposed by `change.id.origin`, the coordinator).
    case change(lockspace: String, change: MembershipChange)
    /// `node` has stopped `lockspace` for `change` (or is stopped from birth: joining).
    case stopped(lockspace: String, node: AgentNodeID, change: MembershipChange)
    /// `node` was declared failed (node-down or a fenced heartbeat timeout) by `by`.
    case nodeDown(node: AgentNodeID, by: AgentNodeID)
    /// Liveness (when heartbeats are configured).
    case heartbeat(node: AgentNodeID)
}

/// Inputs of `AgentCore`.
public enum AgentEvent: Hashable, Sendable {
    /// The config was (re)loaded: per lockspace this node may belong to, the configured
    /// members; `nodes` are all configured node ids.
    case configLoaded(lockspaces: [ConfiguredLockspace], nodes: [AgentNodeID])
    /// The kernel (or the local dlm-peer) wants to join `lockspace` (uevent `online`).
    case online(lockspace: String)
    /// The kernel wants to leave `lockspace` (uevent `offline`).
    case offline(lockspace: String)
    /// A `control`=0 the core asked for has returned (the lockspace is stopped).
    case stopDone(lockspace: String)
    /// A stop or start failed on the local side.
    case localFailed(lockspace: String, error: String)
    /// A message from the agent of `from`.
    case received(AgentMessage, from: AgentNodeID)
    /// The control connection to `node` is up (the shell then sends our `hello`).
    case connected(node: AgentNodeID)
    /// The connection to `node` was lost (no membership consequence by itself).
    case disconnected(node: AgentNodeID)
    /// An operator (`dlm-peer node-down`) declares `node` failed: dead or fenced.
    case nodeDownRequested(node: AgentNodeID)
    /// Heartbeat check: `node` has been silent longer than the timeout.
    case heartbeatTimeout(node: AgentNodeID)
    /// The fence command for `node` finished.
    case fenceDone(node: AgentNodeID, success: Bool)
}

public struct ConfiguredLockspace: Hashable, Sendable {
    public var name: String
    public var globalID: UInt32
    public var members: [AgentMember]
    /// No resource directory (sysfs `nodir`).
    public var nodir: Bool

    public init(name: String, globalID: UInt32, members: [AgentMember], nodir: Bool = false) {
        self.name = name
        self.globalID = globalID
        self.members = members.sorted()
        self.nodir = nodir
    }
}

/// Outputs of `AgentCore`, executed in order by the shell.
public enum AgentAction: Hashable, Sendable {
    /// `control`=0 (synchronous); report `.stopDone` when it returns.
    case stop(lockspace: String)
    /// Start with this membership.
    case start(StartPlan)
    /// Answer an `offline` uevent: (already stopped) rmdir configfs members and the space,
    /// `event_done`=0.
    case finishLeave(lockspace: String)
    /// Refuse an `online` uevent: `event_done`=-errno (the app's create fails).
    case refuseJoin(lockspace: String, errno: Int32, reason: String)
    case send(AgentMessage, to: AgentNodeID)
    /// configfs `comms/<id>`: remove (a failed node: drops its queue and protocol state)...
    case removeComm(node: AgentNodeID)
    /// ... and create again (the node is back).
    case addComm(node: AgentNodeID)
    /// Run the config's fence command for `node`; report `.fenceDone`.
    case fence(node: AgentNodeID)
    case log(AgentLogLevel, String)
}

public enum AgentLogLevel: String, Hashable, Sendable {
    case info
    case warning
    case error
}
