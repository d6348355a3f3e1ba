import DLMTransport
import NIOCore

/// A small in-memory resource table with exactly the state recovery touches: per resource its
/// master, its locks (our process copies and the master copies we hold for other nodes) and
/// its LVB, plus the directory entries of names whose directory node we are.
///
/// It is the reference implementation of `RecoveryLockState` (recovery.md §3.7–§3.13), used by the
/// simulation tests and usable by the node until the lock manager implements the protocol itself.
/// It does not grant, convert or queue anything on its own: lock operations come from the caller.
/// Middle conversions (§3.12) are not special-cased; locks are rebuilt as sent.
public struct RecoveryLockTable: RecoveryLockState, Sendable {
    public struct Lock: Hashable, Sendable {
        /// Our lock id (`lkb_id`).
        public var id: UInt32
        /// The node whose process holds the lock (ourselves for process copies).
        public var owner: UInt32
        /// The other side's id: the master's for a process copy (0 until known), the owner's for a master copy.
        public var remoteID: UInt32
        /// A master copy (`DLM_IFL_MSTCPY`): we master the resource and `owner` holds the lock.
        public var isMasterCopy: Bool
        public var status: LockStatus
        public var grmode: LockMode
        public var rqmode: LockMode
        public var exflags: UInt32
        public var lvb: [UInt8]?
        public var lvbseq: UInt32
        /// The recovery that created this master copy (nodir purge).
        public var recoverSeq: UInt64 = 0
        public var waitType: UInt16 = 0
    }

    public struct Rsb: Hashable, Sendable {
        public var name: [UInt8]
        /// `res_master_nodeid`: 0 = unknown.
        public var master: UInt32
        /// Grant, convert and wait queue (by `status`), each in queue order.
        public var locks: [Lock] = []
        public var newMaster = false
        public var newMaster2 = false
        public var recoverGrant = false
        public var lvbInvalidOnRecovery = false
        public var valueNotValid = false
        public var lvb: [UInt8]?
        public var lvbseq: UInt32 = 0

        public var isEmpty: Bool { locks.isEmpty }

        public func queue(_ s: LockStatus) -> [Lock] { locks.filter { $0.status == s } }
        /// Grant, then convert, then wait queue.
        public var ordered: [Lock] { queue(.granted) + queue(.convert) + queue(.waiting) }
    }

    public static let valblk: UInt32 = 0x8

    public let ourNodeID: UInt32
    public let lvbLength: Int
    /// Resources with locks (active), and any kept without (inactive) until the next recovery.
    public private(set) var resources: [[UInt8]: Rsb] = [:]
    /// Directory entries of names whose directory node we are and that we hold no resource for.
    public private(set) var directory: [[UInt8]: UInt32] = [:]
    /// The root list of the recovery in progress.
    public private(set) var root: [[UInt8]] = []
    var nextLockID: UInt32 = 1

    public init(ourNodeID: UInt32, lvbLength: Int = 32) {
        self.ourNodeID = ourNodeID
        self.lvbLength = lvbLength
    }

    // MARK: - Lock-layer operations (used while running)

    /// Who the directory (as we hold it) says masters `name`.
    public func directoryLookup(_ name: [UInt8]) -> UInt32? {
        if let r = resources[name], r.master != 0 { return r.master }
        return directory[name]
    }

    public mutating func setDirectoryEntry(_ name: [UInt8], master: UInt32) {
        if var r = resources[name] {
            r.master = master
            resources[name] = r
        } else {
            directory[name] = master
        }
    }

    public mutating func removeDirectoryEntry(_ name: [UInt8]) {
        directory[name] = nil
    }

    /// Adds a lock; `owner` ourselves and `master` someone else makes a process copy, `owner`
    /// someone else makes a master copy (then `master` must be us). Returns the new lock id.
    @discardableResult
    public mutating func addLock(name: [UInt8], master: UInt32, owner: UInt32, remoteID: UInt32 = 0,
                                 status: LockStatus = .granted, grmode: LockMode, rqmode: LockMode? = nil,
                                 exflags: UInt32 = 0, lvb: [UInt8]? = nil, lvbseq: UInt32 = 0) -> UInt32 {
        var r = resources[name] ?? Rsb(name: name, master: master)
        r.master = master
        let id = nextLockID
        nextLockID &+= 1
        r.locks.append(Lock(id: id, owner: owner, remoteID: remoteID, isMasterCopy: owner != ourNodeID,
                            status: status, grmode: grmode, rqmode: rqmode ?? grmode, exflags: exflags,
                            lvb: lvb, lvbseq: lvbseq))
        resources[name] = r
        directory[name] = nil
        return id
    }

    public mutating func setRemoteID(name: [UInt8], lockID: UInt32, remoteID: UInt32) {
        guard var r = resources[name], let i = r.locks.firstIndex(where: { $0.id == lockID }) else { return }
        r.locks[i].remoteID = remoteID
        resources[name] = r
    }

    /// Removes a lock; a resource left without locks becomes inactive: only its master is kept (as a
    /// directory record or cached master) until the next recovery. Returns whether it went inactive.
    @discardableResult
    public mutating func removeLock(name: [UInt8], lockID: UInt32) -> Bool {
        guard var r = resources[name] else { return false }
        r.locks.removeAll { $0.id == lockID }
        if r.locks.isEmpty {
            resources[name] = nil
            // The inactive rsb stays as a directory record / cached master until the next recovery.
            if r.master != 0 && r.master != ourNodeID { directory[name] = r.master }
            return true
        }
        resources[name] = r
        return false
    }

    // MARK: - RecoveryLockState

    public mutating func recoveryBegin(_ context: RecoveryContext) {
        resources = resources.filter { !$0.value.isEmpty }
        directory.removeAll()
        root = resources.keys.sorted { $0.lexicographicallyPrecedes($1) }
    }

    public func masteredResourceNames() -> [[UInt8]] {
        root.filter { resources[$0]?.master == ourNodeID }
    }

    public mutating func directoryAdd(name: [UInt8], master: UInt32, _ context: RecoveryContext) -> DirectoryAddOutcome {
        if var r = resources[name] {
            if r.master == master { return .matched }
            if r.master == ourNodeID { return .conflictKeptOurs }
            let old = r.master
            r.master = master
            if old != 0 { r.newMaster = true }
            resources[name] = r
            return old == 0 ? .added : .changedMaster(from: old)
        }
        if let e = directory[name] {
            if e == master { return .matched }
            directory[name] = master
            return .changedMaster(from: e)
        }
        directory[name] = master
        return .added
    }

    public mutating func recoverWaitersPre(_ context: RecoveryContext) {}

    public mutating func purgeDepartedLocks(_ context: RecoveryContext) -> Int {
        var count = 0
        for name in root {
            guard var r = resources[name], r.master == ourNodeID else { continue }
            let before = r.locks.count
            for l in r.locks where l.isMasterCopy && context.isDeparted(l.owner) {
                if l.exflags & Self.valblk != 0 && l.grmode.rawValue >= LockMode.pw.rawValue {
                    r.lvbInvalidOnRecovery = true
                }
            }
            r.locks.removeAll { $0.isMasterCopy && context.isDeparted($0.owner) }
            if r.locks.count != before {
                count += before - r.locks.count
                r.recoverGrant = true
            }
            resources[name] = r
        }
        return count
    }

    public mutating func recoverMasters(_ context: RecoveryContext) -> [[UInt8]] {
        var need: [[UInt8]] = []
        for name in root {
            guard var r = resources[name] else { continue }
            let dir = context.placement.directoryNode(of: name)
            if context.nodir {
                r.locks.removeAll { $0.isMasterCopy && $0.recoverSeq != context.seq }
                r.master = dir
                setNewMaster(&r)
                resources[name] = r
                continue
            }
            if r.master == ourNodeID { continue }
            let removed = r.master != 0 && context.isDeparted(r.master)
            guard removed || r.newMaster else { continue }
            if dir == ourNodeID {
                if removed { r.master = ourNodeID }
                setNewMaster(&r)
                resources[name] = r
            } else {
                need.append(name)
            }
        }
        return need
    }

    mutating func setNewMaster(_ r: inout Rsb) {
        for i in r.locks.indices where !r.locks[i].isMasterCopy {
            r.locks[i].remoteID = 0
        }
        r.newMaster = true
        r.newMaster2 = true
    }

    public mutating func setNewMaster(name: [UInt8], master: UInt32, _ context: RecoveryContext) {
        guard var r = resources[name] else { return }
        r.master = master
        setNewMaster(&r)
        resources[name] = r
    }

    public mutating func directoryRecoverMaster(name: [UInt8], requester: UInt32, _ context: RecoveryContext) -> Int32 {
        if var r = resources[name] {
            if r.master == 0 || (r.master != ourNodeID && context.isDeparted(r.master)) {
                r.master = requester
                r.newMaster = true
                resources[name] = r
            }
            return Int32(bitPattern: r.master)
        }
        if let e = directory[name], !context.isDeparted(e) {
            return Int32(bitPattern: e)
        }
        directory[name] = requester
        return Int32(bitPattern: requester)
    }

    public mutating func locksToRecover(_ context: RecoveryContext) -> [ResourceLocksToRecover] {
        var out: [ResourceLocksToRecover] = []
        for name in root {
            guard var r = resources[name] else { continue }
            if r.master == ourNodeID {
                r.newMaster = false
                resources[name] = r
                continue
            }
            guard r.newMaster else { continue }
            let mine = r.ordered.filter { !$0.isMasterCopy }
            if mine.isEmpty {
                r.newMaster = false
                resources[name] = r
                continue
            }
            let copies = mine.map { l in
                RecoveryLockCopy(
                    lock: RcomLock(lkid: l.id, exflags: l.exflags, lvbseq: l.lvbseq, rqmode: Int8(l.rqmode.rawValue),
                                   grmode: Int8(l.grmode.rawValue), status: Int8(l.status.rawValue), asts: 1,
                                   waitType: l.waitType, name: ByteBuffer(bytes: name)),
                    lvb: l.lvb)
            }
            out.append(ResourceLocksToRecover(name: name, master: r.master, locks: copies))
        }
        return out
    }

    public mutating func lockRecovered(name: [UInt8], lockID: UInt32, remoteID: UInt32, result: Int32) {
        guard var r = resources[name], let i = r.locks.firstIndex(where: { $0.id == lockID }) else { return }
        if result == 0 || result == -17 {
            r.locks[i].remoteID = remoteID
        }
        if r.locks.allSatisfy({ $0.isMasterCopy || $0.remoteID != 0 }) {
            r.newMaster = false
        }
        resources[name] = r
    }

    public mutating func recoverMasterCopy(from node: UInt32, lock: RcomLock, lvb: [UInt8],
                                           _ context: RecoveryContext) -> (result: Int32, lockID: UInt32) {
        if lock.parentLkid != 0 { return (-95, 0) }
        let name = Array(lock.name.readableBytesView)
        if context.nodir {
            if context.placement.directoryNode(of: name) != ourNodeID { return (-53, 0) }
            if resources[name] == nil { resources[name] = Rsb(name: name, master: ourNodeID) }
        }
        guard var r = resources[name] else { return (-53, 0) }
        if let i = r.locks.firstIndex(where: { $0.isMasterCopy && $0.owner == node && $0.remoteID == lock.lkid }) {
            // Tagged with this recovery (the kernel's `out_remid`): a nodir purge keeps it.
            r.locks[i].recoverSeq = context.seq
            resources[name] = r
            return (-17, r.locks[i].id)
        }
        var value: [UInt8]?
        if lock.exflags & Self.valblk != 0 {
            if lvb.count > lvbLength { return (-22, 0) }
            value = lvb + [UInt8](repeating: 0, count: lvbLength - lvb.count)
        }
        let id = nextLockID
        nextLockID &+= 1
        r.locks.append(Lock(id: id, owner: node, remoteID: lock.lkid, isMasterCopy: true,
                            status: LockStatus(rawValue: Int32(lock.status)) ?? .granted,
                            grmode: LockMode(rawValue: Int32(lock.grmode)) ?? .iv,
                            rqmode: LockMode(rawValue: Int32(lock.rqmode)) ?? .iv,
                            exflags: lock.exflags, lvb: value, lvbseq: lock.lvbseq, recoverSeq: context.seq,
                            waitType: lock.waitType))
        if !r.queue(.convert).isEmpty || !r.queue(.waiting).isEmpty { r.recoverGrant = true }
        resources[name] = r
        return (0, id)
    }

    public mutating func finishMasterRecovery(_ context: RecoveryContext) {
        for name in root {
            guard var r = resources[name] else { continue }
            if r.master == ourNodeID {
                recoverLVB(&r)
                if r.newMaster2 && (!r.queue(.convert).isEmpty || !r.queue(.waiting).isEmpty) {
                    r.recoverGrant = true
                }
            }
            r.lvbInvalidOnRecovery = false
            r.newMaster2 = false
            resources[name] = r
        }
    }

    /// `recover_lvb` (§3.11).
    mutating func recoverLVB(_ r: inout Rsb) {
        if !r.newMaster2 {
            if r.lvbInvalidOnRecovery { r.valueNotValid = true }
            return
        }
        let holders = (r.queue(.granted) + r.queue(.convert)).filter { $0.exflags & Self.valblk != 0 }
        guard !holders.isEmpty else { return }
        if let big = holders.first(where: { $0.grmode.rawValue > LockMode.cr.rawValue }) {
            r.lvb = big.lvb ?? [UInt8](repeating: 0, count: lvbLength)
            r.lvbseq = big.lvbseq
            return
        }
        r.valueNotValid = true
        var high: Lock?
        var highSeq: UInt32 = 0
        for l in holders where Int32(bitPattern: l.lvbseq &- highSeq) >= 0 {
            high = l
            highSeq = l.lvbseq
        }
        r.lvb = high?.lvb ?? [UInt8](repeating: 0, count: lvbLength)
        r.lvbseq = high?.lvbseq ?? 0
    }

    public mutating func recoveryEnd(_ context: RecoveryContext) {
        root = []
    }
}
