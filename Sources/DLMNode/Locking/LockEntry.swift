import DLMTransport

/// One lock (`lkb`) as the grant engine sees it: a local copy (owner = master, `nodeID == 0`), a
/// master copy (`nodeID` = the owner's node), or, on an owner, a process copy mirrored on its
/// resource. A value type: the engine keeps the authoritative copy on the resource's queues and hands
/// out snapshots in outcomes and effects.
public struct LockEntry: Sendable, Equatable, CustomStringConvertible {
    /// `lkb_id`: this node's id for the lock (non-zero, unique in the lockspace).
    public var id: UInt32
    /// `lkb_nodeid`: on a master, the owner's node (0 = a local lock); on an owner, the master.
    public var nodeID: Int32
    /// `lkb_remid`: the other copy's id (0 while unknown / for local locks).
    public var remoteID: UInt32
    /// `lkb_ownpid`.
    public var pid: UInt32
    /// `lkb_grmode`: IV until first granted.
    public var grantedMode: LockMode
    /// `lkb_rqmode`: IV when nothing is requested. KQ: a conversion that fails with -EAGAIN leaves
    /// its target here (the kernel does not reset it), on the master copy as on the owner.
    public var requestedMode: LockMode
    /// `lkb_exflags`: the `DLM_LKF_*` flags of the most recent call (accumulated for unlock/cancel).
    public var flags: LockFlags
    /// `lkb_sbflags`.
    public var statusFlags: LockStatusFlags
    /// Distributed low 16 bits of `lkb_flags` (`DLM_IFL_USER`, `DLM_IFL_ORPHAN`); the engine never
    /// looks at them, they are kept for the message layer.
    public var wireFlags: UInt32
    /// `lkb_lvbptr`: the lock's value block (lvblen bytes) or nil when the lock has none.
    public var lvb: [UInt8]?
    /// `lkb_lvbseq`.
    public var lvbSeq: UInt32
    /// `lkb_highbast`: the highest mode a blocking callback was sent for since the last grant
    /// (reset to NL, the kernel's 0, on every grant).
    public var highBast: LockMode
    /// A completion callback was supplied (`DLM_CB_CAST` in `m_asts`).
    public var wantsCompletion: Bool
    /// A blocking callback was supplied (`DLM_CB_BAST` in `m_asts`); only such locks get BASTs
    /// (except the NODLCKWT self-BAST, which the kernel sends regardless).
    public var wantsBlocking: Bool
    /// `lkb_status`: which queue the lock is on; nil = on none.
    public internal(set) var status: LockStatus?

    public init(
        id: UInt32, nodeID: Int32 = 0, remoteID: UInt32 = 0, pid: UInt32 = 0,
        mode: LockMode, flags: LockFlags = [], statusFlags: LockStatusFlags = [], wireFlags: UInt32 = 0,
        lvb: [UInt8]? = nil, lvbSeq: UInt32 = 0,
        wantsCompletion: Bool = true, wantsBlocking: Bool = false
    ) {
        self.id = id
        self.nodeID = nodeID
        self.remoteID = remoteID
        self.pid = pid
        self.grantedMode = .iv
        self.requestedMode = mode
        self.flags = flags
        self.statusFlags = statusFlags
        self.wireFlags = wireFlags
        self.lvb = lvb
        self.lvbSeq = lvbSeq
        self.highBast = .nl
        self.wantsCompletion = wantsCompletion
        self.wantsBlocking = wantsBlocking
        self.status = nil
    }

    /// A master copy (`DLM_IFL_MSTCPY`): the owner is another node.
    public var isMasterCopy: Bool { nodeID != 0 }
    /// `lkb_grmode != IV`: the lock holds a mode, so a request on it is a conversion.
    public var isConversion: Bool { grantedMode != .iv }
    /// The value block participates: the lock has a buffer and VALBLK.
    var usesLVB: Bool { lvb != nil && flags.contains(.valBlk) }

    /// `m_asts` bits for this lock.
    public var callbackBits: UInt32 {
        (wantsCompletion ? CallbackFlags.cast : 0) | (wantsBlocking ? CallbackFlags.bast : 0)
    }

    public var description: String {
        var s = "\(String(id, radix: 16)) n\(nodeID) \(status.map { "\($0)" } ?? "-") gr \(grantedMode) rq \(requestedMode)"
        if !flags.isEmpty { s += " f " + flagNames(flags.rawValue, LockFlags.names) }
        if !statusFlags.isEmpty { s += " sb \(statusFlags)" }
        return s
    }
}

/// The result of a lock operation, with the kernel's numbers (`m_result`, `sb_status`).
public enum LockResult: Int32, Sendable, CustomStringConvertible {
    /// 0: granted (request/convert); for cancel, "nothing to cancel, the lock is granted".
    case granted = 0
    /// -EINPROGRESS: queued; a grant (or cancel/unlock) follows later.
    case queued = -115
    /// -EAGAIN: NOQUEUE and not grantable.
    case wouldBlock = -11
    /// -EDEADLK: conversion deadlock.
    case deadlock = -35
    /// -EBUSY: convert of a lock that is not granted.
    case busy = -16
    /// -ENOENT: no such lock.
    case notFound = -2
    /// -EINVAL: invalid arguments.
    case invalid = -22
    /// -DLM_ECANCEL: the request/conversion was cancelled.
    case cancelled = -65537
    /// -DLM_EUNLOCK: unlocked.
    case unlocked = -65538

    /// The value as it travels in `m_result`.
    public var wireValue: Int32 { rawValue }

    public var description: String { WireErrno.names[rawValue] ?? "\(rawValue)" }
}

/// Something the grant engine asks its caller to do, in order. On a master copy a `.grant` becomes a
/// GRANT message and a `.blockingAST` a BAST message (if the owner asked for BASTs, which the engine
/// has already checked except for the NODLCKWT self-BAST); on a local lock both become callbacks.
public enum LockEffect: Sendable, Equatable, CustomStringConvertible {
    /// A queued lock was granted (`grant_lock_pending`); the snapshot is the lock after the grant.
    case grant(LockEntry)
    /// A blocking callback with the mode somebody waits for (`queue_bast`); snapshot after the
    /// `highBast` update.
    case blockingAST(LockEntry, mode: LockMode)

    public var lockID: UInt32 {
        switch self {
        case .grant(let lock): return lock.id
        case .blockingAST(let lock, _): return lock.id
        }
    }

    public var description: String {
        switch self {
        case .grant(let lock): return "grant \(String(lock.id, radix: 16)) \(lock.grantedMode)"
        case .blockingAST(let lock, let mode): return "bast \(String(lock.id, radix: 16)) \(mode)"
        }
    }
}

/// The answer of one operation: the result for the requester (a reply message, or the lock's own
/// completion for a local lock), the lock's state afterwards, and the effects on other locks.
public struct LockOutcome: Sendable, Equatable {
    public var result: LockResult
    /// The lock after the operation (also when it was freed: unlocked, cancelled while waiting,
    /// or a request failing with -EAGAIN; then `status` is nil). nil when the lock was not found.
    public var lock: LockEntry?
    /// Effects produced *inside* the operation, before its reply: only the pending-conversion pass
    /// that follows a CONVDEADLK demotion in `do_convert`.
    public var preReplyEffects: [LockEffect]
    /// Effects after the reply (`do_*_effects`).
    public var effects: [LockEffect]
    /// A down-conversion: the master sends no CONVERT_REPLY.
    public var suppressReply: Bool

    public init(
        result: LockResult, lock: LockEntry?, preReplyEffects: [LockEffect] = [], effects: [LockEffect] = [],
        suppressReply: Bool = false
    ) {
        self.result = result
        self.lock = lock
        self.preReplyEffects = preReplyEffects
        self.effects = effects
        self.suppressReply = suppressReply
    }

    /// Pre-reply and post-reply effects in order.
    public var allEffects: [LockEffect] { preReplyEffects + effects }
}

/// How an operation's flags combine with the lock's stored `exflags`.
public enum FlagUpdate: Sendable {
    /// `exflags ← flags` (a master's flag intake from `m_exflags`; and every `dlm_lock` call).
    case replace
    /// `exflags |= flags` (a local `dlm_unlock`/cancel: KQ, the flags accumulate until the next
    /// lock call, so a PW/EX lock obtained with VALBLK writes its LVB back on a plain unlock).
    case accumulate
}
