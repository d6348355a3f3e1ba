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
    // MARK: - Storage helpers
    //
    // Recovery keys its bookkeeping by resource name (the root list, the flag sets), as the kernel's
    // rsb flags belong to the rsb of that name; it reads and changes the rsbs in place through their
    // slots (`rsbs[slot]...`, see the storage notes in LockManager.swift). A name is turned into a
    // slot once per phase; a slot is not kept across phases (lock messages processed between them
    // may remove an rsb and reuse its slot).

    /// The master of the rsb in `slot` (nil for a free slot).
    func recoveryMaster(at slot: RsbSlot) -> UInt32? { rsbs.contains(slot) ? rsbs[slot].master : nil }

    func recoveryIsMasterCopy(_ id: UInt32) -> Bool { lkbs[id]?.isMasterCopy ?? false }

    /// An inactive rsb naming `master`: a directory record (R4, RCOM_LOOKUP) or, without a
    /// directory, a resource we master until its locks are rebuilt (RCOM_LOCK).
    @discardableResult
    mutating func recoveryAddInactive(_ name: [UInt8], hash: UInt32, master: UInt32) -> RsbSlot {
        var record = Rsb(name: name, hash: hash, lvbLength: lvbLength)
        record.master = master
        record.tossedAt = now
        return rsbs.insert(record)
    }

    /// Our locks waiting for a reply (or with an overlapping unlock/cancel), by ascending id.
    func recoveryWaiters() -> [UInt32] {
        lkbs.values.filter { !$0.isMasterCopy && ($0.waitType != nil || $0.overlapCancel || $0.overlapUnlock) }
            .map(\.id)
    }

    /// `slots` ordered by their rsbs' names (the kernel walks its rsb tree in name order).
    func sortedByName(_ slots: [RsbSlot]) -> [RsbSlot] {
        // Each name read once (not once per comparison).
        slots.map { (name: rsbs[$0].name, slot: $0) }
            .sorted { $0.name.lexicographicallyPrecedes($1.name) }
            .map(\.slot)
    }

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
        var active: [RsbSlot] = []
        for slot in rsbs.allSlots {
            if rsbs[slot].tossedAt == nil {
                active.append(slot)
            } else {
                let name = rsbs[slot].name
                rsbs.remove(slot)
                recovery.newMaster.remove(name)
                recovery.newMaster2.remove(name)
                recovery.recoverConvert.remove(name)
                recovery.lvbInvalid.remove(name)
            }
        }
        recovery.root = sortedByName(active).map { rsbs[$0].name }
        recovery.locksOut = [:]
        recovery.masterCopySeq = recovery.masterCopySeq.filter { lkbs[$0.key] != nil }
        recovery.resend = recovery.resend.filter { lkbs[$0.key] != nil }
    }

    public func masteredResourceNames() -> [[UInt8]] {
        recovery.root.filter { name in
            guard let slot = rsbs.slot(of: name) else { return false }
            return rsbs[slot].tossedAt == nil && rsbs[slot].master == us
        }
    }

    // MARK: - R4: directory rebuild

    public mutating func directoryAdd(name: [UInt8], master: UInt32, _ context: RecoveryContext) -> DirectoryAddOutcome {
        let hash = JHash.hash(name)
        guard let slot = rsbs.slot(of: name, hash: hash) else {
            recoveryAddInactive(name, hash: hash, master: master)
            return .added
        }
        let old = rsbs[slot].master
        if old == master { return .matched }
        if old == us { return .conflictKeptOurs }
        rsbs[slot].master = master
        if old == 0 { return .added }
        // The node became master in an aborted recovery: our locks must go to it.
        if rsbs[slot].tossedAt == nil { recovery.newMaster.insert(name) }
        return .changedMaster(from: old)
    }

    // MARK: - R6: waiters pre-pass

    public mutating func recoverWaitersPre(_ context: RecoveryContext) {
        for id in recoveryWaiters() {
            guard let lkb = lkbs[id], let lock = entry(id) else { continue }
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
        guard let lkb = lkbs[id], lkb.waitType == nil, let lock = entry(id) else { return }
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
        guard removeFromWaiters(id, .cancelReply, result: result), let slot = lkbs[id]?.slot else { return }
        log("waiters_pre \(String(id, radix: 16)): cancel to departed master completes \(WireErrno.names[result] ?? "\(result)")")
        guard result == WireErrno.dlmECancel else { return }
        // The lock was granted before the master died (its GRANT came, the cancel lost the race):
        // nothing was cancelled, so no completion, as a real CANCEL_REPLY 0 would say. The kernel's
        // stub reply says -DLM_ECANCEL regardless and the caller sees a cancel of a granted lock. KQ.
        if entry(id)?.status == .granted { return }
        guard rsbs.contains(slot), let reverted = rsbs[slot].resource.revertLock(id) else { return }
        switch reverted.change {
        case .removed:
            lkbs.setDetached(id, reverted.lock)
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
        for name in recovery.root {
            guard let slot = rsbs.slot(of: name), rsbs[slot].master == us else { continue }
            var purged = false
            for lock in rsbs[slot].resource.allLocks where recoveryIsMasterCopy(lock.id) {
                guard context.isDeparted(UInt32(bitPattern: lock.nodeID)) else { continue }
                if lock.flags.contains(.valBlk) && lock.grantedMode.rawValue >= LockMode.pw.rawValue {
                    recovery.lvbInvalid.insert(name)
                }
                freeLkb(lock.id)
                recovery.masterCopySeq[lock.id] = nil
                count += 1
                purged = true
            }
            if purged { rsbs[slot].resource.recoverGrant = true }
        }
        return count
    }

    // MARK: - R7.2: masters

    public mutating func recoverMasters(_ context: RecoveryContext) -> [[UInt8]] {
        var lookups: [[UInt8]] = []
        for name in recovery.root {
            guard let slot = rsbs.slot(of: name) else { continue }
            let master = rsbs[slot].master
            let dir = context.placement.directoryNode(of: name)
            if context.nodir {
                // recover_master_static: every master copy not rebuilt in this pass goes.
                for lock in rsbs[slot].resource.allLocks where recoveryIsMasterCopy(lock.id) {
                    if recovery.masterCopySeq[lock.id] != context.seq {
                        freeLkb(lock.id)
                        recovery.masterCopySeq[lock.id] = nil
                    }
                }
                guard rsbs.contains(slot) else { continue }
                rsbs[slot].master = dir
                setNewMasterLocks(slot)
                continue
            }
            if master == us { continue }
            let removed = master != 0 && context.isDeparted(master)
            guard removed || recovery.newMaster.contains(name) else { continue }
            if dir == us {
                if removed { rsbs[slot].master = us }
                setNewMasterLocks(slot)
            } else {
                lookups.append(name)
            }
        }
        return lookups
    }

    /// `set_new_master`: our locks on the queues now belong to the resource's master; their remote
    /// ids are unknown until the LOCK_REPLY.
    mutating func setNewMasterLocks(_ slot: RsbSlot) {
        guard let master = recoveryMaster(at: slot) else { return }
        let node: Int32 = master == us ? 0 : Int32(bitPattern: master)
        let ours = rsbs[slot].resource.allLocks.compactMap { recoveryIsMasterCopy($0.id) ? nil : $0.id }
        for id in ours {
            rsbs[slot].resource.update(id) { e in
                e.nodeID = node
                e.remoteID = 0
            }
        }
        let name = rsbs[slot].name
        recovery.newMaster.insert(name)
        recovery.newMaster2.insert(name)
    }

    public mutating func setNewMaster(name: [UInt8], master: UInt32, _ context: RecoveryContext) {
        guard let slot = rsbs.slot(of: name) else {
            log("recover_master_reply \(printable(name)): no rsb")
            return
        }
        rsbs[slot].master = master
        setNewMasterLocks(slot)
    }

    public mutating func directoryRecoverMaster(name: [UInt8], requester: UInt32, _ context: RecoveryContext) -> Int32 {
        let hash = JHash.hash(name)
        guard let slot = rsbs.slot(of: name, hash: hash) else {
            recoveryAddInactive(name, hash: hash, master: requester)
            return Int32(bitPattern: requester)
        }
        let master = rsbs[slot].master
        if master == 0 || (master != us && context.isDeparted(master)) {
            // The first node to ask after its master departed becomes the master.
            rsbs[slot].master = requester
            if rsbs[slot].tossedAt == nil { recovery.newMaster.insert(name) }
            return Int32(bitPattern: requester)
        }
        return Int32(bitPattern: master)
    }

    // MARK: - R7.3: RCOM_LOCK, sender side

    public mutating func locksToRecover(_ context: RecoveryContext) -> [ResourceLocksToRecover] {
        var groups: [ResourceLocksToRecover] = []
        for name in recovery.root {
            guard let slot = rsbs.slot(of: name) else { continue }
            let master = rsbs[slot].master
            if master == us {
                recovery.newMaster.remove(name)
                continue
            }
            guard recovery.newMaster.contains(name) else { continue }
            var copies: [RecoveryLockCopy] = []
            for status in [LockStatus.granted, .convert, .waiting] {
                for lock in rsbs[slot].resource.queue(status) where !recoveryIsMasterCopy(lock.id) {
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
        var waitType = UInt16(truncatingIfNeeded: lkbs[lock.id]?.waitType?.rawValue ?? 0)
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
        guard let lkb = lkbs[lockID], !lkb.isMasterCopy, rsbs.contains(lkb.slot), rsbs[lkb.slot].name == name else {
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
        let hash = JHash.hash(name)
        var found = rsbs.slot(of: name, hash: hash)
        if context.nodir {
            guard context.placement.directoryNode(of: name) == us else { return (WireErrno.ebadr, 0) }
            if found == nil { found = recoveryAddInactive(name, hash: hash, master: us) }
        }
        // Directory mode: only an rsb we have (our own masters recovery may not have run yet).
        guard let slot = found else { return (WireErrno.ebadr, 0) }
        let owner = Int32(bitPattern: node)
        if let existing = rsbs[slot].resource.allLocks.first(where: {
            recoveryIsMasterCopy($0.id) && $0.nodeID == owner && $0.remoteID == lock.lkid
        }) {
            if context.nodir && recovery.masterCopySeq[existing.id] != context.seq {
                // nodir: every master copy older than this recovery is purged (R7.2), so rebuild it
                // from the owner's state now, as when the purge ran first. (The kernel answers
                // -EEXIST and keeps the old copy if the RCOM_LOCK wins that race; with the held
                // messages all dropped in nodir, a GRANT in flight then leaves the copies apart.)
                rsbs[slot].refs += 1  // the rsb (and its value) stays while the copy is replaced
                freeLkb(existing.id)
                rsbs[slot].refs -= 1
                recovery.masterCopySeq[existing.id] = nil
            } else {
                // Tagged with this recovery (the kernel's `out_remid`).
                recovery.masterCopySeq[existing.id] = context.seq
                return (WireErrno.eexist, existing.id)
            }
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
        // The master copy, queued as rebuilt; the rsb is active again.
        rsbs[slot].resource.insert(entry, status: status)
        rsbs[slot].refs += 1
        rsbs[slot].tossedAt = nil
        lkbs[entry.id] = Lkb(id: entry.id, rsb: slot, isMasterCopy: true, tag: 0)
        recovery.masterCopySeq[entry.id] = context.seq
        if !rsbs[slot].resource.convertQueue.isEmpty || !rsbs[slot].resource.waitQueue.isEmpty {
            rsbs[slot].resource.recoverGrant = true
        }
        return (0, entry.id)
    }

    // MARK: - R7.5: dlm_recover_rsbs

    public mutating func finishMasterRecovery(_ context: RecoveryContext) {
        for name in recovery.root {
            guard let slot = rsbs.slot(of: name) else { continue }
            if rsbs[slot].master == us {
                if recovery.recoverConvert.contains(name) { recoverConversion(slot) }
                recoverLVB(slot, name: name)
                if recovery.newMaster2.contains(name),
                   !rsbs[slot].resource.convertQueue.isEmpty || !rsbs[slot].resource.waitQueue.isEmpty
                {
                    rsbs[slot].resource.recoverGrant = true
                }
            } else {
                rsbs[slot].resource.valueNotValid = false
            }
            recovery.recoverConvert.remove(name)
            recovery.lvbInvalid.remove(name)
            recovery.newMaster2.remove(name)
        }
    }

    /// `recover_conversion`: converting locks rebuilt with granted mode IV (6.1 owners) take the
    /// granted middle mode on the grant queue, or their requested mode; a converting middle lock
    /// whose granted mode clashes with the other middle mode held on the resource drops to NL
    /// (newest kernels) and is granted by the grant pass. Every decision reads the queues as they
    /// were on entry; the changes are made afterwards, in place.
    mutating func recoverConversion(_ slot: RsbSlot) {
        guard rsbs.contains(slot) else { return }
        var changes: [(id: UInt32, mode: LockMode)] = []
        do {
            // Read-only views of the queues, released before the changes below (a live copy would
            // make them copy the queue arrays).
            let grantQueue = rsbs[slot].resource.grantQueue
            let convertQueue = rsbs[slot].resource.convertQueue
            let middle = grantQueue.first { $0.grantedMode == .pr || $0.grantedMode == .cw }?.grantedMode
            for lock in convertQueue {
                if lock.grantedMode == .iv {
                    let mode = middle ?? lock.requestedMode
                    log("recover_conversion \(String(lock.id, radix: 16)) set gr \(mode)")
                    changes.append((lock.id, mode))
                } else if LockMode.isMiddleConversion(granted: lock.grantedMode, requested: lock.requestedMode) {
                    let other: LockMode = lock.grantedMode == .pr ? .cw : .pr
                    let clash = (grantQueue + convertQueue).contains { $0.id != lock.id && $0.grantedMode == other }
                    if clash {
                        log("recover_conversion \(String(lock.id, radix: 16)) gr \(lock.grantedMode) rq "
                            + "\(lock.requestedMode): other gr \(other), set gr=NL")
                        changes.append((lock.id, .nl))
                    }
                }
            }
        }
        for change in changes {
            rsbs[slot].resource.update(change.id) { $0.grantedMode = change.mode }
        }
    }

    /// `recover_lvb` (recovery.md §3.11).
    mutating func recoverLVB(_ slot: RsbSlot, name: [UInt8]) {
        guard rsbs.contains(slot) else { return }
        guard recovery.newMaster2.contains(name) else {
            if recovery.lvbInvalid.contains(name) {
                log("recover_lvb \(printable(name)): a departed PW/EX holder: VALNOTVALID")
                rsbs[slot].resource.valueNotValid = true
            }
            return
        }
        var big: LockEntry?
        var high: LockEntry?
        var highSeq: UInt32 = 0
        var exists = false
        for lock in rsbs[slot].resource.grantQueue + rsbs[slot].resource.convertQueue where lock.flags.contains(.valBlk) {
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
        if big == nil { rsbs[slot].resource.valueNotValid = true }
        if let big {
            rsbs[slot].resource.lvb = big.lvb ?? zero
            rsbs[slot].resource.lvbSeq = big.lvbSeq
        } else if let high {
            rsbs[slot].resource.lvb = high.lvb ?? zero
            rsbs[slot].resource.lvbSeq = high.lvbSeq
        } else {
            rsbs[slot].resource.lvb = zero
            rsbs[slot].resource.lvbSeq = 0
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
            guard let lkb = lkbs[id], lkb.waitType == type, let lock = entry(id) else { continue }
            let slot = lkb.slot
            let oc = lkb.overlapCancel
            let ou = lkb.overlapUnlock
            lkbs.modify(id) { l in
                l.waitType = nil
                l.waitCount = 0
                l.overlapCancel = false
                l.overlapUnlock = false
            }
            log("waiters_post \(String(id, radix: 16)) \(type)\(oc ? " overlap cancel" : "")\(ou ? " overlap unlock" : "")")
            switch type {
            case .lookup, .request:
                if oc || ou {
                    let wasFirst = rsbs.contains(slot) && rsbs[slot].firstLkid == id
                    queueCast(id, ou ? .unlocked : .cancelled, lock: lock, endOfLife: true)
                    freeLkb(id)
                    // The kernel leaves res_first_lkid naming the freed lock (later requests would park
                    // behind it for good unless the grant pass confirms the master): hand over instead.
                    if wasFirst {
                        confirmMaster(slot, result: recoveryMaster(at: slot) == us ? 0 : WireErrno.eagain)
                    }
                } else {
                    requestLock(id)
                    if recoveryMaster(at: slot) == us { confirmMaster(slot, result: 0) }
                }
            case .convert:
                guard let master = recoveryMaster(at: slot) else { continue }
                // The kernel does only the cancel when both overlapped (the force-unlock is forgotten
                // and its caller never hears back); we cancel the conversion and then unlock. KQ.
                if oc {
                    let reverted = rsbs[slot].resource.revertLock(id)?.lock
                    queueCast(id, .cancelled, lock: reverted ?? lock)
                }
                if ou {
                    updateEntry(id) { $0.flags.insert(.forceUnlock) }
                    if master == us {
                        unlockLocal(id, rsb: slot)
                    } else if addToWaiters(id, .unlock, node: master) == nil, let current = entry(id) {
                        sendLockMessage(.unlock, lock: current, rsb: slot, to: master)
                    }
                }
                if oc || ou { continue }
                if master == us {
                    convertLocal(id, rsb: slot, to: lock.requestedMode, flags: lock.flags)
                } else {
                    convertRemote(id, rsb: slot, to: lock.requestedMode, master: master)
                }
            case .unlock, .cancel, .requestReply, .convertReply, .unlockReply, .cancelReply, .grant, .bast, .remove,
                .lookupReply, .purge:
                log("waiters_post \(String(id, radix: 16)): bad wait type \(type)")
            }
        }
        // Safety net (deliberate): a resource we now master whose first_lkid names a lock that no
        // longer waits for a lookup/request reply would park every later request forever. (Only
        // rsbs with a first_lkid are candidates; each is checked again when its turn comes.)
        let candidates = rsbs.allSlots.filter { slot in
            let r = rsbs[slot]
            return r.master == us && r.firstLkid != 0
        }
        for slot in sortedByName(candidates) where recoveryMaster(at: slot) == us {
            let first = rsbs[slot].firstLkid
            guard first != 0 else { continue }
            if let lkb = lkbs[first], lkb.waitType == .lookup || lkb.waitType == .request { continue }
            log("waiters_post \(printable(rsbs[slot].name)): first_lkid \(String(first, radix: 16)) not waiting; confirm master")
            confirmMaster(slot, result: 0)
        }
        return drain()
    }

    // MARK: - R13: grant pass

    /// `dlm_recover_grant`: on every resource flagged RECOVER_GRANT that we master, grant what can
    /// be granted (conversions in any order) and send BASTs; then confirm the master.
    public mutating func recoverGrant(now: Duration) -> [Action] {
        self.now = now
        var count = 0
        let flagged = sortedByName(rsbs.allSlots.filter { rsbs[$0].resource.recoverGrant })
        for slot in flagged {
            guard rsbs.contains(slot), rsbs[slot].resource.recoverGrant else { continue }
            guard rsbs[slot].master == us else {
                rsbs[slot].resource.recoverGrant = false
                continue
            }
            let effects = rsbs[slot].resource.grantPendingLocks()
            rsbs[slot].resource.recoverGrant = false
            runEffects(effects, rsb: slot)
            confirmMaster(slot, result: 0)
            count += 1
        }
        if count > 0 { log("dlm_recover_grant \(count) resources") }
        return drain()
    }
}

extension LockManager: RecoveryLockState {}
