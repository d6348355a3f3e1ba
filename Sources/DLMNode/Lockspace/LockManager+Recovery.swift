import DLMTransport
import NIOCore

// Lock state through recovery (recovery.md §3.7–§3.14, kernel recover.c, recoverd.c and the
// recovery parts of lock.c): the lock manager is the `RecoveryLockState` of its lockspace's
// `LockspaceRecovery`, and after R10 it runs the waiters post-pass (R12) and the grant pass (R13).
//
// Per-resource recovery flags (NEW_MASTER, NEW_MASTER2, RECOVER_CONVERT, RECOVER_LVB_INVAL), the
// RESEND marks of R6 and the root list live in `LockRecoveryState`, one stored property of the lock
// manager; RECOVER_GRANT and VALNOTVALID are the grant engine's own (`Resource.recoverGrant`,
// `Resource.valueNotValid`). Like the kernel's rsb flags they survive an aborted recovery.
//
// Differences from 6.1, all in the direction of the newest kernels or strictly safer:
// * Middle conversions (PR↔CW) in flight to a departed master are resent after recovery like any
//   up-conversion (upstream commit 1416bd508c78, "dlm: fix recovery pending middle conversion"),
//   instead of 6.1's fake "in progress" reply with granted mode IV. Our RCOM_LOCK for such a lock
//   carries `rl_wait_type` 0, so that a 6.1 master rebuilds it granted (as the newest kernels do)
//   and the resent CONVERT finds it there. KQ.
// * As master we accept both variants: a 6.1 lock (wait type CONVERT, middle modes) is queued as
//   converting with granted mode IV; a newest-kernel lock on the convert queue in a middle
//   conversion flags RECOVER_CONVERT; any rebuilt converting lock with granted mode IV also flags
//   it (6.1 owners send those after their own fake reply; 6.1 would leave them stuck). KQ.
// * The waiters post-pass only resends an operation that is still waiting for the reply it waited
//   for in R6 (a reply processed from the requestqueue in R11 may have completed it).
// * A cancel to a dead master of a lock that was granted meanwhile completes silently (6.1 fakes
//   -DLM_ECANCEL for it).
// * An overlapping force-unlock still waiting for a dead master after its cancel was faked is
//   faked too (-DLM_EUNLOCK); 6.1 leaves it waiting forever.
// * A conversion resent with both a cancel and a force-unlock overlapping is cancelled and then
//   unlocked (6.1 only cancels it and drops the unlock).
// * When a resent request ends instead (an unlock/cancel overlapped it), or any resource we now
//   master is left with `res_first_lkid` naming a lock that waits for nothing, the master is
//   confirmed so that requests parked behind it proceed (the kernel leaves them parked).

/// The lock manager's recovery bookkeeping (see above).
struct LockRecoveryState: Sendable {
    /// The root list: the resources active when the recovery began (R0), sorted by name.
    var root: [[UInt8]] = []
    /// `RSB_NEW_MASTER`: our locks must be sent to the (new) master.
    var newMaster: Set<[UInt8]> = []
    /// `RSB_NEW_MASTER2`: the master changed in this recovery (LVB recovery, grant).
    var newMaster2: Set<[UInt8]> = []
    /// `RSB_RECOVER_CONVERT`.
    var recoverConvert: Set<[UInt8]> = []
    /// `RSB_RECOVER_LVB_INVAL`: a departed PW/EX holder with VALBLK was purged.
    var lvbInvalid: Set<[UInt8]> = []
    /// `DLM_IFL_RESEND`, with the wait type the lock had when it was marked (R6).
    var resend: [UInt32: MessageType] = [:]
    /// RCOM_LOCKs still unanswered per resource (`res_recover_locks_count`).
    var locksOut: [[UInt8]: Int] = [:]
    /// `lkb_recover_seq` of master copies rebuilt from RCOM_LOCK (nodir purges the older ones).
    var masterCopySeq: [UInt32: UInt64] = [:]
}

extension LockManager {
    // MARK: - Storage accessors (the only places that touch `rsbs`/`lkbs` layout directly)

    /// Every resource name we hold (active, inactive, directory records).
    func recoveryAllNames() -> [[UInt8]] { rsbs.sortedNames }

    func recoveryIsActive(_ name: [UInt8]) -> Bool { rsbs[name].map { $0.tossedAt == nil } ?? false }

    func recoveryMaster(_ name: [UInt8]) -> UInt32? { rsbs[name]?.master }

    mutating func recoverySetMaster(_ name: [UInt8], _ master: UInt32) { rsbs[name]?.master = master }

    func recoveryResource(_ name: [UInt8]) -> Resource? { rsbs[name]?.resource }

    mutating func recoveryUpdateResource(_ name: [UInt8], _ body: (inout Resource) -> Void) {
        guard var r = rsbs[name] else { return }
        body(&r.resource)
        rsbs[name] = r
    }

    mutating func recoveryRemoveResource(_ name: [UInt8]) { rsbs[name] = nil }

    /// A directory record (an inactive rsb naming `master`).
    mutating func recoveryAddRecord(_ name: [UInt8], master: UInt32) {
        var record = Rsb(name: name, hash: JHash.hash(name), resource: Resource(name: name, lvbLength: lvbLength))
        record.master = master
        record.tossedAt = now
        rsbs[name] = record
    }

    func recoveryIsMasterCopy(_ id: UInt32) -> Bool { lkbs[id]?.isMasterCopy ?? false }

    func recoveryLkb(_ id: UInt32) -> Lkb? { lkbs[id] }

    mutating func recoveryUpdateLkb(_ id: UInt32, _ body: (inout Lkb) -> Void) {
        guard var lkb = lkbs[id] else { return }
        body(&lkb)
        lkbs[id] = lkb
    }

    /// Our locks waiting for a reply (or with an overlapping unlock/cancel), by id.
    func recoveryWaiters() -> [UInt32] {
        lkbs.values.filter { !$0.isMasterCopy && ($0.waitType != nil || $0.overlapCancel || $0.overlapUnlock) }
            .map(\.id).sorted()
    }

    /// A master copy rebuilt from an RCOM_LOCK: queued on `name` with the given status.
    mutating func recoveryAttachMasterCopy(_ entry: LockEntry, status: LockStatus, name: [UInt8]) {
        guard var r = rsbs[name] else { return }
        r.resource.insert(entry, status: status)
        r.refs += 1
        r.tossedAt = nil
        rsbs[name] = r
        lkbs[entry.id] = Lkb(id: entry.id, name: name, isMasterCopy: true, tag: 0, detached: nil)
    }

    mutating func recoveryCreateResource(_ name: [UInt8], master: UInt32) {
        var r = Rsb(name: name, hash: JHash.hash(name), resource: Resource(name: name, lvbLength: lvbLength))
        r.master = master
        r.tossedAt = now
        rsbs[name] = r
    }

    func recoveryFirstLkid(_ name: [UInt8]) -> UInt32 { rsbs[name]?.firstLkid ?? 0 }

    // MARK: - Public surface for the node

    /// Everything the recovery hooks produced since the last call (completions of unlocks and
    /// cancels aimed at departed masters, log lines). Call after each `LockspaceRecovery.handle`.
    public mutating func takeActions() -> [Action] { drain() }

    /// Operations marked for resending in R6 (`DLM_IFL_RESEND`).
    public var recoveryResendCount: Int { recovery.resend.count }

    // MARK: - R0, R2: root list, placement

    public mutating func recoveryBegin(_ context: RecoveryContext) {
        // The members and weights of this start (placement's node array repeats each member by weight).
        var weights: [UInt32: Int] = [:]
        for id in context.placement.nodeArray { weights[id, default: 0] += 1 }
        let newMembers = context.members.map { Member(nodeID: $0, weight: weights[$0] ?? 0) }
        // setMembers drains the pending actions; keep them in order.
        out.append(contentsOf: setMembers(newMembers, now: now))
        // R0: forget inactive resources: directory records, cached masters, unused mastered rsbs.
        var root: [[UInt8]] = []
        for name in recoveryAllNames() {
            if recoveryIsActive(name) {
                root.append(name)
            } else {
                recoveryRemoveResource(name)
                recovery.newMaster.remove(name)
                recovery.newMaster2.remove(name)
                recovery.recoverConvert.remove(name)
                recovery.lvbInvalid.remove(name)
            }
        }
        recovery.root = root
        recovery.locksOut = [:]
        recovery.masterCopySeq = recovery.masterCopySeq.filter { lkbs[$0.key] != nil }
        recovery.resend = recovery.resend.filter { lkbs[$0.key] != nil }
    }

    public func masteredResourceNames() -> [[UInt8]] {
        recovery.root.filter { recoveryIsActive($0) && recoveryMaster($0) == us }
    }

    // MARK: - R4: directory rebuild

    public mutating func directoryAdd(name: [UInt8], master: UInt32, _ context: RecoveryContext) -> DirectoryAddOutcome {
        guard let old = recoveryMaster(name) else {
            recoveryAddRecord(name, master: master)
            return .added
        }
        if old == master { return .matched }
        if old == us { return .conflictKeptOurs }
        recoverySetMaster(name, master)
        if old == 0 { return .added }
        // The node became master in an aborted recovery: our locks must go to it.
        if recoveryIsActive(name) { recovery.newMaster.insert(name) }
        return .changedMaster(from: old)
    }

    // MARK: - R6: waiters pre-pass

    public mutating func recoverWaitersPre(_ context: RecoveryContext) {
        for id in recoveryWaiters() {
            guard let lkb = recoveryLkb(id), let lock = entry(id) else { continue }
            if lkb.waitType == .lookup {
                // The directory was rebuilt: every outstanding lookup is redone.
                recovery.resend[id] = .lookup
                continue
            }
            guard context.nodir || context.isDeparted(lkb.waitNode) else { continue }
            switch lkb.waitType {
            case .request?:
                recovery.resend[id] = .request
            case .convert?:
                if LockMode.isMiddleConversion(granted: lock.grantedMode, requested: lock.requestedMode)
                    || lock.requestedMode.rawValue >= lock.grantedMode.rawValue
                {
                    recovery.resend[id] = .convert
                }
            case .unlock?:
                fakeUnlockReply(id, result: WireErrno.dlmEUnlock)
                fakeOverlapReplies(id)
            case .cancel?:
                fakeCancelReply(id, result: WireErrno.dlmECancel)
                // A force-unlock sent after the cancel waits for the same dead master. The kernel does
                // not fake it here (its caller would wait forever); we do. KQ.
                fakeOverlapReplies(id)
            case nil:
                fakeOverlapReplies(id)
            case .requestReply?, .convertReply?, .unlockReply?, .cancelReply?, .grant?, .bast?, .lookup?, .remove?,
                .lookupReply?, .purge?:
                log("waiters_pre \(String(id, radix: 16)): unexpected wait type \(lkb.waitType!)")
            }
        }
    }

    /// The main reply came (wait type 0); the overlapping unlock/cancel's reply never will: fake it
    /// (unlock wins when both are pending).
    mutating func fakeOverlapReplies(_ id: UInt32) {
        guard let lkb = recoveryLkb(id), lkb.waitType == nil, let lock = entry(id) else { return }
        if lkb.overlapUnlock {
            fakeUnlockReply(id, result: lock.grantedMode == .iv ? WireErrno.enoent : WireErrno.dlmEUnlock)
        } else if lkb.overlapCancel {
            fakeCancelReply(id, result: lock.grantedMode == .iv ? 0 : WireErrno.dlmECancel)
        }
    }

    /// `_receive_unlock_reply` with a stub message from the departed master.
    mutating func fakeUnlockReply(_ id: UInt32, result: Int32) {
        guard removeFromWaiters(id, .unlockReply, result: result) else { return }
        log("waiters_pre \(String(id, radix: 16)): unlock to departed master completes \(WireErrno.names[result] ?? "\(result)")")
        let status: LockResult = result == WireErrno.dlmEUnlock ? .unlocked : (LockResult(rawValue: result) ?? .notFound)
        queueCast(id, status, lock: entry(id), endOfLife: true)
        freeLkb(id)
    }

    /// `_receive_cancel_reply` with a stub message from the departed master.
    mutating func fakeCancelReply(_ id: UInt32, result: Int32) {
        guard removeFromWaiters(id, .cancelReply, result: result), let name = recoveryLkb(id)?.name else { return }
        log("waiters_pre \(String(id, radix: 16)): cancel to departed master completes \(WireErrno.names[result] ?? "\(result)")")
        guard result == WireErrno.dlmECancel else { return }
        // The lock was granted before the master died (its GRANT came, the cancel lost the race):
        // nothing was cancelled, so no completion, as a real CANCEL_REPLY 0 would say. The kernel's
        // stub reply says -DLM_ECANCEL regardless and the caller sees a cancel of a granted lock. KQ.
        if entry(id)?.status == .granted { return }
        var reverted: (lock: LockEntry, change: Resource.RevertChange)?
        recoveryUpdateResource(name) { reverted = $0.revertLock(id) }
        guard let reverted else { return }
        switch reverted.change {
        case .removed:
            recoveryUpdateLkb(id) { $0.detached = reverted.lock }
            queueCast(id, .cancelled, lock: reverted.lock, endOfLife: true)
            freeLkb(id)
        case .backToGranted, .none:
            queueCast(id, .cancelled, lock: reverted.lock)
        }
    }

    // MARK: - R7.1: purge

    public mutating func purgeDepartedLocks(_ context: RecoveryContext) -> Int {
        guard !context.departed.isEmpty else { return 0 }
        var count = 0
        for name in recovery.root where recoveryMaster(name) == us {
            guard let resource = recoveryResource(name) else { continue }
            var purged = false
            for lock in resource.allLocks where recoveryIsMasterCopy(lock.id) {
                guard context.isDeparted(UInt32(bitPattern: lock.nodeID)) else { continue }
                if lock.flags.contains(.valBlk) && lock.grantedMode.rawValue >= LockMode.pw.rawValue {
                    recovery.lvbInvalid.insert(name)
                }
                freeLkb(lock.id)
                recovery.masterCopySeq[lock.id] = nil
                count += 1
                purged = true
            }
            if purged { recoveryUpdateResource(name) { $0.recoverGrant = true } }
        }
        return count
    }

    // MARK: - R7.2: masters

    public mutating func recoverMasters(_ context: RecoveryContext) -> [[UInt8]] {
        var lookups: [[UInt8]] = []
        for name in recovery.root {
            guard let master = recoveryMaster(name) else { continue }
            let dir = context.placement.directoryNode(of: name)
            if context.nodir {
                // recover_master_static: every master copy not rebuilt in this pass goes.
                for lock in recoveryResource(name)?.allLocks ?? [] where recoveryIsMasterCopy(lock.id) {
                    if recovery.masterCopySeq[lock.id] != context.seq {
                        freeLkb(lock.id)
                        recovery.masterCopySeq[lock.id] = nil
                    }
                }
                guard recoveryResource(name) != nil else { continue }
                recoverySetMaster(name, dir)
                setNewMasterLocks(name)
                continue
            }
            if master == us { continue }
            let removed = master != 0 && context.isDeparted(master)
            guard removed || recovery.newMaster.contains(name) else { continue }
            if dir == us {
                if removed { recoverySetMaster(name, us) }
                setNewMasterLocks(name)
            } else {
                lookups.append(name)
            }
        }
        return lookups
    }

    /// `set_new_master`: our locks on the queues now belong to the resource's master; their remote
    /// ids are unknown until the LOCK_REPLY.
    mutating func setNewMasterLocks(_ name: [UInt8]) {
        guard let master = recoveryMaster(name), let resource = recoveryResource(name) else { return }
        let node: Int32 = master == us ? 0 : Int32(bitPattern: master)
        for lock in resource.allLocks where !recoveryIsMasterCopy(lock.id) {
            recoveryUpdateResource(name) { r in
                r.update(lock.id) { e in
                    e.nodeID = node
                    e.remoteID = 0
                }
            }
        }
        recovery.newMaster.insert(name)
        recovery.newMaster2.insert(name)
    }

    public mutating func setNewMaster(name: [UInt8], master: UInt32, _ context: RecoveryContext) {
        guard recoveryMaster(name) != nil else {
            log("recover_master_reply \(printable(name)): no rsb")
            return
        }
        recoverySetMaster(name, master)
        setNewMasterLocks(name)
    }

    public mutating func directoryRecoverMaster(name: [UInt8], requester: UInt32, _ context: RecoveryContext) -> Int32 {
        guard let master = recoveryMaster(name) else {
            recoveryAddRecord(name, master: requester)
            return Int32(bitPattern: requester)
        }
        if master == 0 || (master != us && context.isDeparted(master)) {
            // The first node to ask after its master departed becomes the master.
            recoverySetMaster(name, requester)
            if recoveryIsActive(name) { recovery.newMaster.insert(name) }
            return Int32(bitPattern: requester)
        }
        return Int32(bitPattern: master)
    }

    // MARK: - R7.3: RCOM_LOCK, sender side

    public mutating func locksToRecover(_ context: RecoveryContext) -> [ResourceLocksToRecover] {
        var groups: [ResourceLocksToRecover] = []
        for name in recovery.root {
            guard let master = recoveryMaster(name), let resource = recoveryResource(name) else { continue }
            if master == us {
                recovery.newMaster.remove(name)
                continue
            }
            guard recovery.newMaster.contains(name) else { continue }
            var copies: [RecoveryLockCopy] = []
            for status in [LockStatus.granted, .convert, .waiting] {
                for lock in resource.queue(status) where !recoveryIsMasterCopy(lock.id) {
                    copies.append(RecoveryLockCopy(lock: rcomLock(lock, status: status, name: name), lvb: lock.lvb))
                }
            }
            if copies.isEmpty {
                recovery.newMaster.remove(name)
                continue
            }
            recovery.locksOut[name] = copies.count
            groups.append(ResourceLocksToRecover(name: name, master: master, locks: copies))
        }
        return groups
    }

    /// `pack_rcom_lock`: the process copy as the new master rebuilds it.
    func rcomLock(_ lock: LockEntry, status: LockStatus, name: [UInt8]) -> RcomLock {
        var waitType = UInt16(truncatingIfNeeded: recoveryLkb(lock.id)?.waitType?.rawValue ?? 0)
        if recovery.resend[lock.id] == .convert
            && LockMode.isMiddleConversion(granted: lock.grantedMode, requested: lock.requestedMode)
        {
            waitType = 0  // resent after recovery; rebuild it granted (see the file comment, KQ)
        }
        return RcomLock(
            ownpid: lock.pid, lkid: lock.id, exflags: lock.flags.rawValue,
            flags: lock.wireFlags & LockBlockFlags.distributedMask, lvbseq: lock.lvbSeq,
            rqmode: Int8(truncatingIfNeeded: lock.requestedMode.rawValue),
            grmode: Int8(truncatingIfNeeded: lock.grantedMode.rawValue),
            status: Int8(truncatingIfNeeded: status.rawValue), asts: Int8(truncatingIfNeeded: lock.callbackBits),
            waitType: waitType, name: ByteBuffer(bytes: name))
    }

    public mutating func lockRecovered(name: [UInt8], lockID: UInt32, remoteID: UInt32, result: Int32) {
        guard let lkb = recoveryLkb(lockID), !lkb.isMasterCopy, lkb.name == name else {
            log("dlm_recover_process_copy no lkid \(String(lockID, radix: 16))")
            return
        }
        if result == 0 || result == WireErrno.eexist {
            updateEntry(lockID) { $0.remoteID = remoteID }
        }
        let left = (recovery.locksOut[name] ?? 1) - 1
        recovery.locksOut[name] = left > 0 ? left : nil
        if left <= 0 { recovery.newMaster.remove(name) }
    }

    // MARK: - R7.3: RCOM_LOCK, master side

    public mutating func recoverMasterCopy(from node: UInt32, lock: RcomLock, lvb: [UInt8],
                                           _ context: RecoveryContext) -> (result: Int32, lockID: UInt32) {
        if lock.parentLkid != 0 { return (WireErrno.eopnotsupp, 0) }
        let name = Array(lock.name.readableBytesView)
        guard !name.isEmpty, name.count <= WireLimits.maxResourceNameLength else { return (WireErrno.einval, 0) }
        if context.nodir {
            guard context.placement.directoryNode(of: name) == us else { return (WireErrno.ebadr, 0) }
            if recoveryMaster(name) == nil { recoveryCreateResource(name, master: us) }
        }
        // Directory mode: only an rsb we have (our own masters recovery may not have run yet).
        guard let resource = recoveryResource(name) else { return (WireErrno.ebadr, 0) }
        let owner = Int32(bitPattern: node)
        if let existing = resource.allLocks.first(where: {
            recoveryIsMasterCopy($0.id) && $0.nodeID == owner && $0.remoteID == lock.lkid
        }) {
            return (WireErrno.eexist, existing.id)
        }
        guard let granted = LockMode(rawValue: Int32(lock.grmode)), let requested = LockMode(rawValue: Int32(lock.rqmode)),
              var status = LockStatus(rawValue: Int32(lock.status)), node != us
        else {
            log("rcom_lock from \(node) \(printable(name)): bad modes/status gr \(lock.grmode) rq \(lock.rqmode) "
                + "status \(lock.status)")
            return (WireErrno.einval, 0)
        }
        let flags = LockFlags(rawValue: lock.exflags)
        var buffer: [UInt8]?
        if flags.contains(.valBlk) {
            guard lvb.count <= lvbLength else { return (WireErrno.einval, 0) }
            buffer = lvb + [UInt8](repeating: 0, count: lvbLength - lvb.count)
        }
        var entry = LockEntry(
            id: allocateID(), nodeID: owner, remoteID: lock.lkid, pid: lock.ownpid, mode: requested, flags: flags,
            wireFlags: lock.flags & LockBlockFlags.distributedMask, lvb: buffer, lvbSeq: lock.lvbseq,
            wantsCompletion: UInt32(truncatingIfNeeded: lock.asts) & CallbackFlags.cast != 0,
            wantsBlocking: UInt32(truncatingIfNeeded: lock.asts) & CallbackFlags.bast != 0)
        entry.grantedMode = granted
        let middle = LockMode.isMiddleConversion(granted: granted, requested: requested)
        if lock.waitType == UInt16(MessageType.convert.rawValue) && middle {
            // 6.1: the real granted mode is decided once every lock is rebuilt (recover_conversion).
            status = .convert
            entry.grantedMode = .iv
            recovery.recoverConvert.insert(name)
        } else if status == .convert && (middle || granted == .iv) {
            recovery.recoverConvert.insert(name)
        }
        if status == .waiting { entry.grantedMode = .iv }
        recoveryAttachMasterCopy(entry, status: status, name: name)
        recovery.masterCopySeq[entry.id] = context.seq
        if let r = recoveryResource(name), !r.convertQueue.isEmpty || !r.waitQueue.isEmpty {
            recoveryUpdateResource(name) { $0.recoverGrant = true }
        }
        return (0, entry.id)
    }

    // MARK: - R7.5: dlm_recover_rsbs

    public mutating func finishMasterRecovery(_ context: RecoveryContext) {
        for name in recovery.root {
            guard recoveryResource(name) != nil else { continue }
            if recoveryMaster(name) == us {
                if recovery.recoverConvert.contains(name) { recoverConversion(name) }
                recoverLVB(name)
                if recovery.newMaster2.contains(name), let r = recoveryResource(name),
                   !r.convertQueue.isEmpty || !r.waitQueue.isEmpty {
                    recoveryUpdateResource(name) { $0.recoverGrant = true }
                }
            } else {
                recoveryUpdateResource(name) { $0.valueNotValid = false }
            }
            recovery.recoverConvert.remove(name)
            recovery.lvbInvalid.remove(name)
            recovery.newMaster2.remove(name)
        }
    }

    /// `recover_conversion`: converting locks rebuilt with granted mode IV (6.1 owners) take the
    /// granted middle mode on the grant queue, or their requested mode; a converting middle lock
    /// whose granted mode clashes with the other middle mode held on the resource drops to NL
    /// (newest kernels) and is granted by the grant pass.
    mutating func recoverConversion(_ name: [UInt8]) {
        guard let resource = recoveryResource(name) else { return }
        let middle = resource.grantQueue.first { $0.grantedMode == .pr || $0.grantedMode == .cw }?.grantedMode
        for lock in resource.convertQueue {
            if lock.grantedMode == .iv {
                let mode = middle ?? lock.requestedMode
                log("recover_conversion \(String(lock.id, radix: 16)) set gr \(mode)")
                recoveryUpdateResource(name) { r in r.update(lock.id) { $0.grantedMode = mode } }
            } else if LockMode.isMiddleConversion(granted: lock.grantedMode, requested: lock.requestedMode) {
                let other: LockMode = lock.grantedMode == .pr ? .cw : .pr
                let clash = (resource.grantQueue + resource.convertQueue).contains {
                    $0.id != lock.id && $0.grantedMode == other
                }
                if clash {
                    log("recover_conversion \(String(lock.id, radix: 16)) gr \(lock.grantedMode) rq "
                        + "\(lock.requestedMode): other gr \(other), set gr=NL")
                    recoveryUpdateResource(name) { r in r.update(lock.id) { $0.grantedMode = .nl } }
                }
            }
        }
    }

    /// `recover_lvb` (recovery.md §3.11).
    mutating func recoverLVB(_ name: [UInt8]) {
        guard let resource = recoveryResource(name) else { return }
        guard recovery.newMaster2.contains(name) else {
            if recovery.lvbInvalid.contains(name) {
                log("recover_lvb \(printable(name)): a departed PW/EX holder: VALNOTVALID")
                recoveryUpdateResource(name) { $0.valueNotValid = true }
            }
            return
        }
        var big: LockEntry?
        var high: LockEntry?
        var highSeq: UInt32 = 0
        var exists = false
        for lock in resource.grantQueue + resource.convertQueue where lock.flags.contains(.valBlk) {
            exists = true
            if lock.grantedMode.rawValue > LockMode.cr.rawValue {
                big = lock
                break
            }
            if Int32(bitPattern: lock.lvbSeq &- highSeq) >= 0 {
                high = lock
                highSeq = lock.lvbSeq
            }
        }
        guard exists else { return }
        let zero = [UInt8](repeating: 0, count: lvbLength)
        recoveryUpdateResource(name) { r in
            if big == nil { r.valueNotValid = true }
            if let big {
                r.lvb = big.lvb ?? zero
                r.lvbSeq = big.lvbSeq
            } else if let high {
                r.lvb = high.lvb ?? zero
                r.lvbSeq = high.lvbSeq
            } else {
                r.lvb = zero
                r.lvbSeq = 0
            }
        }
    }

    public mutating func recoveryEnd(_ context: RecoveryContext) {
        recovery.root = []
        recovery.locksOut = [:]
    }

    // MARK: - R12: waiters post-pass

    /// `dlm_recover_waiters_post`: resend (or finish, when an unlock/cancel overlapped them) the
    /// operations marked in R6. Call after the requestqueue was drained.
    public mutating func recoverWaitersPost(now: Duration) -> [Action] {
        self.now = now
        let marked = recovery.resend.sorted { $0.key < $1.key }
        recovery.resend = [:]
        for (id, type) in marked {
            guard let lkb = recoveryLkb(id), lkb.waitType == type, let lock = entry(id) else { continue }
            let name = lkb.name
            let oc = lkb.overlapCancel
            let ou = lkb.overlapUnlock
            recoveryUpdateLkb(id) { l in
                l.waitType = nil
                l.waitCount = 0
                l.overlapCancel = false
                l.overlapUnlock = false
            }
            log("waiters_post \(String(id, radix: 16)) \(type)\(oc ? " overlap cancel" : "")\(ou ? " overlap unlock" : "")")
            switch type {
            case .lookup, .request:
                if oc || ou {
                    let wasFirst = recoveryFirstLkid(name) == id
                    queueCast(id, ou ? .unlocked : .cancelled, lock: lock, endOfLife: true)
                    freeLkb(id)
                    // The kernel leaves res_first_lkid naming the freed lock (later requests would park
                    // behind it for good unless the grant pass confirms the master): hand over instead.
                    if wasFirst { confirmMaster(name, result: recoveryMaster(name) == us ? 0 : WireErrno.eagain) }
                } else {
                    requestLock(id)
                    if recoveryMaster(name) == us { confirmMaster(name, result: 0) }
                }
            case .convert:
                guard let master = recoveryMaster(name) else { continue }
                // The kernel does only the cancel when both overlapped (the force-unlock is forgotten
                // and its caller never hears back); we cancel the conversion and then unlock. KQ.
                if oc {
                    var reverted: LockEntry?
                    recoveryUpdateResource(name) { reverted = $0.revertLock(id)?.lock }
                    queueCast(id, .cancelled, lock: reverted ?? lock)
                }
                if ou {
                    updateEntry(id) { $0.flags.insert(.forceUnlock) }
                    if master == us {
                        unlockLocal(id, rsb: name)
                    } else if addToWaiters(id, .unlock, node: master) == nil, let current = entry(id) {
                        sendLockMessage(.unlock, lock: current, rsb: name, to: master)
                    }
                }
                if oc || ou { continue }
                if master == us {
                    convertLocal(id, to: lock.requestedMode, flags: lock.flags)
                } else {
                    convertRemote(id, to: lock.requestedMode, master: master)
                }
            case .unlock, .cancel, .requestReply, .convertReply, .unlockReply, .cancelReply, .grant, .bast, .remove,
                .lookupReply, .purge:
                log("waiters_post \(String(id, radix: 16)): bad wait type \(type)")
            }
        }
        // Safety net (deliberate): a resource we now master whose first_lkid names a lock that no
        // longer waits for a lookup/request reply would park every later request forever.
        for name in recoveryAllNames() where recoveryMaster(name) == us {
            let first = recoveryFirstLkid(name)
            guard first != 0 else { continue }
            if let lkb = recoveryLkb(first), lkb.waitType == .lookup || lkb.waitType == .request { continue }
            log("waiters_post \(printable(name)): first_lkid \(String(first, radix: 16)) not waiting; confirm master")
            confirmMaster(name, result: 0)
        }
        return drain()
    }

    // MARK: - R13: grant pass

    /// `dlm_recover_grant`: on every resource flagged RECOVER_GRANT that we master, grant what can
    /// be granted (conversions in any order) and send BASTs; then confirm the master.
    public mutating func recoverGrant(now: Duration) -> [Action] {
        self.now = now
        var count = 0
        for name in recoveryAllNames() {
            guard let resource = recoveryResource(name), resource.recoverGrant else { continue }
            guard recoveryMaster(name) == us else {
                recoveryUpdateResource(name) { $0.recoverGrant = false }
                continue
            }
            var effects: [LockEffect] = []
            recoveryUpdateResource(name) { r in
                effects = r.grantPendingLocks()
                r.recoverGrant = false
            }
            runEffects(effects, rsb: name)
            confirmMaster(name, result: 0)
            count += 1
        }
        if count > 0 { log("dlm_recover_grant \(count) resources") }
        return drain()
    }
}

extension LockManager: RecoveryLockState {}
