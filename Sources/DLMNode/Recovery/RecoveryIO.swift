import DLMTransport
import NIOCore

/// Inputs of `LockspaceRecovery`. Time comes separately, as the `now` argument of `handle`.
public enum RecoveryEvent: Sendable {
    /// The cluster manager stops the lockspace (`control` ← 0, `dlm_ls_stop`). The caller blocks
    /// new local lock calls and waits for those in progress before handing this in.
    case stop
    /// The cluster manager starts the lockspace with this member list (`control` ← 1, `dlm_ls_start`).
    /// The list includes us; `renewed` marks members whose old incarnation must be removed.
    case start([RecoveryMember])
    /// An RCOM of this lockspace from `node` (the transport has checked `h_nodeid` against the
    /// connection and unwrapped DLM_OPTS; bare and sequenced RCOMs are handled alike).
    case received(DLMRcom, from: UInt32)
    /// A normal lock message (DLM_MSG) of this lockspace from `node`: passed through when running,
    /// held in the requestqueue (or dropped at generation 0) while stopped.
    case lockMessage(DLMMessage, from: UInt32)
    /// The timer requested with `.scheduleTimer` fired (or any time later).
    case timerFired
}

/// Outputs of `LockspaceRecovery`, to be carried out in order.
///
/// The transport picks the class per RCOM type (recovery.md §4.4): STATUS and STATUS_REPLY bare,
/// NAMES/NAMES_REPLY bare (6.1) or sequenced (newest), LOOKUP, LOCK and their replies sequenced.
/// Everything to one node must keep one FIFO order.
public enum RecoveryAction: Sendable {
    /// Send this RCOM to `node`.
    case send(DLMRcom, to: UInt32)
    /// Our `ls_recover_status` changed (sysfs `recover_status`).
    case statusChanged(RecoveryStatus)
    /// The member list changed: midcomms user counts (`memberAdded` / `memberRemoved`) and
    /// connections to added nodes.
    case membersChanged(added: [UInt32], removed: [UInt32])
    /// R10: locking is enabled again; blocked local lock calls may proceed.
    case lockingEnabled
    /// A lock message for the lock layer: passed through while running, or (R11) from the
    /// requestqueue in arrival order, before any newer one.
    case deliverLockMessage(DLMMessage, from: UInt32)
    /// R12 (`dlm_recover_waiters_post`): resend the operations the lock layer marked in R6.
    case resendInFlightOperations
    /// R13 (`dlm_recover_grant`): run the grant pass on resources flagged RECOVER_GRANT.
    case grantPass
    /// The recovery completed (completes a waiting join).
    case recoveryDone(RecoveryReport)
    /// The recovery ended with a hard error; the lockspace stays stopped (a waiting join fails).
    case recoveryFailed(RecoveryFailure)
    /// A stop (or a newer start) interrupted the recovery of `seq` (-EINTR); the next start runs a new one.
    case recoveryInterrupted(seq: UInt64)
    /// Call `handle(.timerFired, now:)` at this deadline (replaces any earlier request).
    case scheduleTimer(NIODeadline)
    case cancelTimer
    case log(LogLevel, String)
}

// MARK: - The boundary to the lock and directory state

/// What one recovery pass tells the lock layer about the lockspace.
public struct RecoveryContext: Sendable {
    public var ourNodeID: UInt32
    /// The recovery's `ls_recover_seq` (tags master copies made in this pass).
    public var seq: UInt64
    /// Members after this start, ascending.
    public var members: [UInt32]
    /// `ls_nodes_gone`: departed members, and renewed ones (whose old incarnation departed).
    public var departed: Set<UInt32>
    public var placement: DirectoryPlacement
    public var nodir: Bool

    public func isDeparted(_ node: UInt32) -> Bool { departed.contains(node) }
}

/// What a "directory add" (R4, `dlm_master_lookup` with RECOVER_DIR) found.
public enum DirectoryAddOutcome: Hashable, Sendable {
    /// No entry existed; one was made with the reported master.
    case added
    /// The entry already named this master.
    case matched
    /// The entry named another master (set in an aborted recovery): now the reported one, NEW_MASTER set.
    case changedMaster(from: UInt32)
    /// We master it ourselves and another node claims it: kept ours (the kernel logs an error).
    case conflictKeptOurs
}

/// One lock to rebuild on a new master (RCOM_LOCK payload) and its LVB, if it has a buffer.
public struct RecoveryLockCopy: Hashable, Sendable {
    public var lock: RcomLock
    public var lvb: [UInt8]?

    public init(lock: RcomLock, lvb: [UInt8]?) {
        self.lock = lock
        self.lvb = lvb
    }
}

/// The process-copy locks we hold on a resource whose new master is another node (R7.3).
public struct ResourceLocksToRecover: Hashable, Sendable {
    public var name: [UInt8]
    public var master: UInt32
    /// Grant queue, then convert queue, then wait queue.
    public var locks: [RecoveryLockCopy]

    public init(name: [UInt8], master: UInt32, locks: [RecoveryLockCopy]) {
        self.name = name
        self.master = master
        self.locks = locks
    }
}

/// What recovery needs from the lock manager and the directory (implemented by `LockManager`,
/// LockManager+Recovery.swift; `RecoveryLockTable` is a small reference model for the simulation). All calls are synchronous and local:
/// the recovery machine decides what goes on the wire.
public protocol RecoveryLockState {
    /// R0 and R2: forget inactive resources (no locks: cached masters, directory-only entries),
    /// pin the active ones for this pass (the root list) and recompute their directory nodes.
    mutating func recoveryBegin(_ context: RecoveryContext)

    /// Names of the root resources we master, in an order that stays the same for the whole pass
    /// (the NAMES responder pages through them, keeping those whose directory node is the asker).
    func masteredResourceNames() -> [[UInt8]]

    /// R4: `name`'s master is `master` (from its NAMES_REPLY); we are the name's directory node.
    mutating func directoryAdd(name: [UInt8], master: UInt32, _ context: RecoveryContext) -> DirectoryAddOutcome

    /// R6 (`dlm_recover_waiters_pre`): mark operations waiting for departed nodes (or lookups) for
    /// resending; complete unlocks/cancels aimed at departed masters.
    mutating func recoverWaitersPre(_ context: RecoveryContext)

    /// R7.1 (`dlm_recover_purge`): delete master copies held by departed nodes; returns how many.
    mutating func purgeDepartedLocks(_ context: RecoveryContext) -> Int

    /// R7.2 (`dlm_recover_masters`), local part: for each root resource whose master departed
    /// (or flagged NEW_MASTER), take mastery when we are its directory node, and return the names
    /// that need an RCOM_LOOKUP to their directory node. nodir: assign the static masters, return [].
    mutating func recoverMasters(_ context: RecoveryContext) -> [[UInt8]]

    /// A LOOKUP_REPLY: `master` is the resource's new master ("set new master").
    mutating func setNewMaster(name: [UInt8], master: UInt32, _ context: RecoveryContext)

    /// As directory node, RCOM_LOOKUP from `requester` (`dlm_master_lookup` with RECOVER_MASTER):
    /// the master (the requester if the old one departed or none is known), or a negative errno.
    mutating func directoryRecoverMaster(name: [UInt8], requester: UInt32, _ context: RecoveryContext) -> Int32

    /// R7.3 (`dlm_recover_locks`): the locks to send, per resource with a new master that is not us.
    mutating func locksToRecover(_ context: RecoveryContext) -> [ResourceLocksToRecover]

    /// A LOCK_REPLY for our lock `lockID` on `name`: `result` 0 or -EEXIST stores `remoteID`.
    mutating func lockRecovered(name: [UInt8], lockID: UInt32, remoteID: UInt32, result: Int32)

    /// As new master, RCOM_LOCK from `from` (`dlm_recover_master_copy`): returns `rl_result` and
    /// our lock id for `rl_remid` (-EBADR: no such resource here, the sender resends).
    mutating func recoverMasterCopy(from node: UInt32, lock: RcomLock, lvb: [UInt8],
                                    _ context: RecoveryContext) -> (result: Int32, lockID: UInt32)

    /// R7.5 (`dlm_recover_rsbs`): conversions, LVB recovery and RECOVER_GRANT on the resources we master.
    mutating func finishMasterRecovery(_ context: RecoveryContext)

    /// R8: release the root list.
    mutating func recoveryEnd(_ context: RecoveryContext)
}
