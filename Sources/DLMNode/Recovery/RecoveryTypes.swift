import DLMTransport
import NIOCore

/// Settings of one lockspace's recovery machine (recovery.md §1, §3.15).
public struct RecoveryConfig: Hashable, Sendable {
    /// Our nodeid (`h_nodeid`, `dlm_our_nodeid()`).
    public var ourNodeID: UInt32
    /// `h_lockspace` of everything we send (`ls_global_id`).
    public var globalID: UInt32
    /// `ls_lvblen`: sent as `rf_lvblen` and checked in every STATUS_REPLY.
    public var lvbLength: UInt32
    /// `ls_exflags`: sent as `rf_lsflags` and checked in every STATUS_REPLY (0 for every real user).
    public var lockspaceFlags: UInt32
    /// `recover_timer`: how long a STATUS/NAMES waits for its reply before it is resent with a new `rc_id`.
    public var recoverTimer: TimeAmount
    /// `h_version` we put on our RCOMs (midcomms restamps it; kept for the bare path and tests).
    public var protocolVersion: ProtocolVersion
    /// `rc_buf` size of a NAMES_REPLY: 4024 (h_length 4072, 5.14+) or 4048 (h_length 4096, 5.10 / 3.1).
    public var namesBufferSize: Int
    /// `nodir`: no resource directory (all members must agree; never exchanged).
    public var nodir: Bool
    /// `ls_rcom_seq` before the first synchronous request (the kernel starts at a random value).
    public var initialRcomID: UInt64
    /// `ls_recover_seq` at creation: 0 on 6.1, random on the newest kernels.
    public var initialRecoverSeq: UInt64

    public init(ourNodeID: UInt32, globalID: UInt32, lvbLength: UInt32 = 32, lockspaceFlags: UInt32 = 0,
                recoverTimer: TimeAmount = .seconds(5), protocolVersion: ProtocolVersion = .v3_2,
                namesBufferSize: Int? = nil, nodir: Bool = false, initialRcomID: UInt64 = 0,
                initialRecoverSeq: UInt64 = 0) {
        self.ourNodeID = ourNodeID
        self.globalID = globalID
        self.lvbLength = lvbLength
        self.lockspaceFlags = lockspaceFlags
        self.recoverTimer = recoverTimer
        self.protocolVersion = protocolVersion
        self.namesBufferSize = namesBufferSize
            ?? (protocolVersion == .v3_1 ? WireLimits.namesReplyBufferSizeV31 : WireLimits.namesReplyBufferSize)
        self.nodir = nodir
        self.initialRcomID = initialRcomID
        self.initialRecoverSeq = initialRecoverSeq
    }

    /// The settings of `lockspace` for `node` as the cluster config file gives them.
    public init(config: ClusterConfig, lockspace: ClusterConfig.Lockspace, node: UInt32,
                initialRcomID: UInt64 = UInt64.random(in: 1...UInt64.max / 2)) {
        let version = config.node(node)?.protocolVersion ?? .v3_2
        self.init(ourNodeID: node, globalID: lockspace.globalID, lvbLength: UInt32(lockspace.lvbLength),
                  lockspaceFlags: lockspace.flags, protocolVersion: version, nodir: lockspace.nodir,
                  initialRcomID: initialRcomID)
    }
}

/// One entry of the member list a start carries (configfs `spaces/<ls>/nodes/<n>`).
public struct RecoveryMember: Hashable, Sendable {
    public var nodeID: UInt32
    /// Directory weight (0 = never a directory node unless every weight is 0).
    public var weight: Int
    /// configfs `new` = 1 on a node that is already a member: it left or failed and came back
    /// between two starts, so its old incarnation is removed and the new one added (the renew rule).
    public var renewed: Bool

    public init(nodeID: UInt32, weight: Int = 1, renewed: Bool = false) {
        self.nodeID = nodeID
        self.weight = weight
        self.renewed = renewed
    }
}

/// The recovery status bits (`ls_recover_status`, `DLM_RS_*`), as carried in a STATUS_REPLY's `rc_result`.
public struct RecoveryStatus: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let nodes = RecoveryStatus(rawValue: UInt32(RecoveryStatusBits.nodes))
    public static let nodesAll = RecoveryStatus(rawValue: UInt32(RecoveryStatusBits.nodesAll))
    public static let dir = RecoveryStatus(rawValue: UInt32(RecoveryStatusBits.dir))
    public static let dirAll = RecoveryStatus(rawValue: UInt32(RecoveryStatusBits.dirAll))
    public static let locks = RecoveryStatus(rawValue: UInt32(RecoveryStatusBits.locks))
    public static let locksAll = RecoveryStatus(rawValue: UInt32(RecoveryStatusBits.locksAll))
    public static let done = RecoveryStatus(rawValue: UInt32(RecoveryStatusBits.done))
    public static let doneAll = RecoveryStatus(rawValue: UInt32(RecoveryStatusBits.doneAll))

    /// X_ALL for a barrier bit X (`status << 1`).
    public var all: RecoveryStatus { RecoveryStatus(rawValue: rawValue << 1) }

    public var description: String {
        if rawValue == 0 { return "0" }
        let names = RecoveryStatusBits.names.filter { rawValue & $0.0 != 0 }.map(\.1)
        return "\(rawValue)(" + names.joined(separator: "|") + ")"
    }
}

/// Where the recovery thread is (recovery.md §3.4, Appendix B).
/// A progress report of the recovery in progress (`LockspaceRecovery.progress`).
public struct RecoveryProgress: Hashable, Sendable, CustomStringConvertible {
    public var phase: RecoveryPhase
    /// Directory entries received with RCOM_NAMES so far (R4).
    public var directoryNames: Int
    /// RCOM_LOOKUPs sent and not answered yet (R7.2).
    public var lookupsOutstanding: Int
    /// Our RCOM_LOCKs sent and not answered yet (R7.3).
    public var locksOutstanding: Int
    /// Master copies rebuilt here from other nodes' RCOM_LOCKs (R7.3).
    public var locksIn: Int

    public var description: String {
        "\(phase): \(directoryNames) directory names in, \(lookupsOutstanding) lookups and \(locksOutstanding) locks "
            + "awaiting replies, \(locksIn) locks rebuilt here"
    }
}

public enum RecoveryPhase: Hashable, Sendable, CustomStringConvertible {
    /// Created, never started (stopped from birth, generation 0).
    case new
    /// Stopped by the cluster manager; waiting for a start.
    case stopped
    /// R1: pinging the members with RCOM_STATUS.
    case members
    /// R3: the NODES barrier (slots and generation).
    case nodesBarrier
    /// R4: rebuilding our part of the directory with RCOM_NAMES.
    case directory
    /// R5: the DIR barrier.
    case dirBarrier
    /// R7.2: waiting for RCOM_LOOKUP_REPLYs.
    case masters
    /// R7.3: waiting for RCOM_LOCK_REPLYs.
    case locks
    /// R7.4: the LOCKS barrier.
    case locksBarrier
    /// R9: the DONE barrier.
    case doneBarrier
    /// Recovery completed; locking enabled.
    case running
    /// Recovery ended with a hard error; stopped until the next stop/start.
    case failed(RecoveryFailure)

    public var description: String {
        switch self {
        case .new: return "new"
        case .stopped: return "stopped"
        case .members: return "members"
        case .nodesBarrier: return "nodes-barrier"
        case .directory: return "directory"
        case .dirBarrier: return "dir-barrier"
        case .masters: return "masters"
        case .locks: return "locks"
        case .locksBarrier: return "locks-barrier"
        case .doneBarrier: return "done-barrier"
        case .running: return "running"
        case .failed(let f): return "failed(\(f))"
        }
    }
}

/// Why a recovery ended permanently (not -EINTR): the lockspace stays stopped until the next stop/start.
public enum RecoveryFailure: Hashable, Sendable, CustomStringConvertible {
    /// A STATUS_REPLY's `h_version` major is not 3 (-EPROTO).
    case versionMismatch(node: UInt32, version: UInt32)
    /// `rf_lvblen` / `rf_lsflags` of `node` differ from ours (-EPROTO; the kernel logs "config mismatch").
    case configMismatch(node: UInt32, ourLVBLength: UInt32, ourFlags: UInt32, theirLVBLength: UInt32, theirFlags: UInt32)
    /// A NAMES_REPLY named a resource whose directory node is not us: the member lists differ (-EINVAL).
    case directoryMismatch(node: UInt32, name: [UInt8], directoryNode: UInt32)
    /// A LOOKUP_REPLY carried a negative result (the directory node refused: member lists differ).
    case lookupFailed(node: UInt32, name: [UInt8], errno: Int32)
    /// The start's member list does not contain our own nodeid.
    case notAMember

    /// The errno the kernel would return from `ls_recover` (and a joining `dlm_new_lockspace`).
    public var errno: Int32 {
        switch self {
        case .versionMismatch, .configMismatch: return -71   // -EPROTO
        case .directoryMismatch, .lookupFailed, .notAMember: return -22   // -EINVAL
        }
    }

    public var description: String {
        switch self {
        case .versionMismatch(let n, let v):
            return "version mismatch: nodeid \(n) speaks 0x\(String(v, radix: 16)) (-EPROTO)"
        case .configMismatch(let n, let ol, let of, let tl, let tf):
            return "config mismatch: \(ol),\(String(of, radix: 16)) nodeid \(n): \(tl),\(String(tf, radix: 16)) "
                + "(lvb length and lockspace flags must be equal on every member; -EPROTO)"
        case .directoryMismatch(let n, let name, let d):
            return "recover_dir: nodeid \(n) sent name \(printableName(name)) whose directory node is \(d), not us "
                + "(members disagree on the member list or weights; -EINVAL)"
        case .lookupFailed(let n, let name, let e):
            return "recover_master: directory node \(n) answered \(e) for \(printableName(name)) (-EINVAL)"
        case .notAMember:
            return "the start's member list does not contain our nodeid (-EINVAL)"
        }
    }
}

/// A summary of a completed recovery (`dlm_recover <seq> generation <g> done: <ms> ms`).
public struct RecoveryReport: Hashable, Sendable {
    public var seq: UInt64
    public var generation: UInt32
    public var ourSlot: UInt16
    public var members: [UInt32]
    public var slots: [RcomSlot]
    public var departed: [UInt32]
    public var elapsed: TimeAmount
    /// Whether this was the node's first completed recovery (a join).
    public var joined: Bool
}

/// Directory placement (`ls_node_array`, `dlm_hash2nodeid`): the members in ascending nodeid, each
/// repeated `weight` times (all once when every weight is 0); a name's directory node is
/// `array[(jhash(name) >> 16) % array.count]`, or ourselves when we are the only member.
public struct DirectoryPlacement: Hashable, Sendable {
    public private(set) var nodeArray: [UInt32]
    public let ourNodeID: UInt32
    public let memberCount: Int

    public init(members: [(nodeID: UInt32, weight: Int)], ourNodeID: UInt32) {
        let sorted = members.sorted { $0.nodeID < $1.nodeID }
        self.ourNodeID = ourNodeID
        self.memberCount = sorted.count
        if sorted.allSatisfy({ $0.weight <= 0 }) {
            nodeArray = sorted.map(\.nodeID)
        } else {
            nodeArray = sorted.flatMap { Array(repeating: $0.nodeID, count: max(0, $0.weight)) }
        }
    }

    public func directoryNode(hash: UInt32) -> UInt32 {
        if memberCount == 1 || nodeArray.isEmpty { return ourNodeID }
        return nodeArray[Int(hash >> 16) % nodeArray.count]
    }

    public func directoryNode<C: Collection>(of name: C) -> UInt32 where C.Element == UInt8 {
        directoryNode(hash: JHash.hash(name))
    }
}

/// A name for log lines: printable ASCII as is, anything else in hex.
func printableName(_ name: [UInt8]) -> String {
    if name.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
        return "\"" + String(decoding: name, as: UTF8.self) + "\""
    }
    return "0x" + name.map { String($0, radix: 16).leftPadded(2) }.joined()
}

extension String {
    fileprivate func leftPadded(_ n: Int) -> String {
        count >= n ? self : String(repeating: "0", count: n - count) + self
    }
}
