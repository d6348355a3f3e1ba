import DLMTransport
import NIOCore

// The owner side: the local API (`dlm_lock`, `dlm_unlock`; locking.md §7.1, §6.2), master
// discovery (`set_master`, `confirm_master`, the lookup list; §3.8) and sending REQUEST, LOOKUP,
// CONVERT, UNLOCK and CANCEL.

extension LockManager {
    // MARK: - dlm_lock (new lock)

    /// A new lock on `name` in `mode`. `lvb`: the client's value block buffer (required with VALBLK).
    /// `blocking`: the client wants blocking callbacks. `user`: the lock belongs to an application
    /// (`DLM_IFL_USER` in `m_flags`, as 6.12 sends for /dev/dlm locks).
    public mutating func lock(
        name: [UInt8], mode: LockMode, flags: LockFlags = [], lvb: [UInt8]? = nil, pid: UInt32 = 0, tag: UInt64 = 0,
        blocking: Bool = true, user: Bool = false, now: Duration
    ) -> CallResult {
        self.now = now
        if flags.contains(.convert) {
            return CallResult(error: .invalid, lkid: 0, actions: drain())
        }
        if let error = LockValidation.checkLockArguments(mode: mode, flags: flags, hasLVB: lvb != nil, nameLength: name.count) {
            return CallResult(error: error, lkid: 0, actions: drain())
        }
        let slot: RsbSlot
        switch findRsb(name, .local) {
        case .found(let s): slot = s
        case .error: return CallResult(error: .invalid, lkid: 0, actions: drain())
        }
        let id = allocateID()
        let entry = LockEntry(
            id: id, nodeID: 0, pid: pid, mode: mode, flags: flags, wireFlags: user ? LockBlockFlags.user : 0,
            lvb: normalisedLVB(lvb), wantsCompletion: true, wantsBlocking: blocking)
        lkbs[id] = Lkb(id: id, rsb: slot, isMasterCopy: false, tag: tag, deliverBlocking: blocking)
        rsbs[slot].refs += 1
        requestLock(id, fresh: entry)
        return CallResult(error: nil, lkid: id, actions: drain())
    }

    // MARK: - dlm_lock (conversion)

    /// Convert lock `lkid` to `mode`. `lvb` replaces the lock's buffer when given (the kernel takes
    /// the new lksb's buffer).
    public mutating func convert(
        lkid: UInt32, mode: LockMode, flags: LockFlags = [], lvb: [UInt8]? = nil, blocking: Bool = true, now: Duration
    ) -> CallResult {
        self.now = now
        let flags = flags.union(.convert)
        guard let lkb = lkbs[lkid], let current = entry(lkid) else {
            return CallResult(error: .notFound, lkid: lkid, actions: drain())
        }
        if lkb.isMasterCopy { return CallResult(error: .invalid, lkid: lkid, actions: drain()) }
        if let error = LockValidation.checkLockArguments(
            mode: mode, flags: flags, hasLVB: (lvb ?? current.lvb) != nil, nameLength: 0)
        {
            return CallResult(error: error, lkid: lkid, actions: drain())
        }
        if flags.contains(.queCvt) && current.status == .granted
            && !LockMode.queuedConversionAllowed(granted: current.grantedMode, requested: mode)
        {
            return CallResult(error: .invalid, lkid: lkid, actions: drain())
        }
        if lkb.parked || lkb.waitType != nil || lkb.waitCount > 0 || lkb.overlapCancel || lkb.overlapUnlock
            || current.status != .granted
        {
            return CallResult(error: .busy, lkid: lkid, actions: drain())
        }
        lkbs.modify(lkid) { $0.deliverBlocking = blocking }
        let newLVB = normalisedLVB(lvb)
        updateEntry(lkid) { e in
            e.flags = flags
            e.statusFlags = []
            if let newLVB { e.lvb = newLVB }
            e.wantsBlocking = blocking
        }
        guard let master = rsbs.rsb(at: lkb.slot)?.master else {
            log("convert \(String(lkid, radix: 16)): no rsb")
            return CallResult(error: .notFound, lkid: lkid, actions: drain())
        }
        if master == us {
            convertLocal(lkid, rsb: lkb.slot, to: mode, flags: flags)
        } else {
            convertRemote(lkid, rsb: lkb.slot, to: mode, master: master)
        }
        return CallResult(error: nil, lkid: lkid, actions: drain())
    }

    mutating func convertLocal(_ id: UInt32, rsb slot: RsbSlot, to mode: LockMode, flags: LockFlags) {
        let outcome = rsbs[slot].resource.convert(id, to: mode, flags: flags, statusFlags: [])
        runEffects(outcome.preReplyEffects, rsb: slot)
        switch outcome.result {
        case .queued:
            break
        case .granted, .wouldBlock, .deadlock, .busy, .invalid, .notFound, .cancelled, .unlocked:
            queueCast(id, outcome.result, lock: outcome.lock ?? entry(id))
        }
        runEffects(outcome.effects, rsb: slot)
    }

    mutating func convertRemote(_ id: UInt32, rsb slot: RsbSlot, to mode: LockMode, master: UInt32) {
        updateEntry(id) { $0.requestedMode = mode }
        if let error = addToWaiters(id, .convert, node: master) {
            log("convert \(String(id, radix: 16)): add_to_waiters \(error)")
            return
        }
        guard let pc = entry(id) else { return }
        sendLockMessage(.convert, lock: pc, rsb: slot, to: master)
        if LockMode.isDownConversion(granted: pc.grantedMode, requested: pc.requestedMode) {
            // §4.2/§6.3: no reply will come; complete locally with a fabricated "granted".
            _ = removeFromWaiters(id, .convertReply, result: 0)
            rsbs[slot].resource.grantProcessCopy(id, extra: [], lvbSeq: pc.lvbSeq)
            queueCast(id, .granted, lock: entry(id))
        }
    }

    // MARK: - dlm_unlock (unlock, force-unlock, cancel)

    /// `dlm_unlock`: `flags` ⊆ {CANCEL, VALBLK, IVVALBLK, FORCEUNLOCK}. `lvb` (with VALBLK) replaces the
    /// lock's buffer before it is written back.
    public mutating func unlock(lkid: UInt32, flags: LockFlags = [], lvb: [UInt8]? = nil, now: Duration) -> CallResult {
        self.now = now
        let error = unlockLock(lkid, flags: flags, lvb: lvb)
        return CallResult(error: error, lkid: lkid, actions: drain())
    }

    /// `dlm_unlock` with CANCEL.
    public mutating func cancel(lkid: UInt32, now: Duration) -> CallResult {
        unlock(lkid: lkid, flags: .cancel, now: now)
    }

    /// `validate_unlock_args` + `_unlock_lock`/`_cancel_lock`. nil = accepted (or recorded).
    mutating func unlockLock(_ id: UInt32, flags: LockFlags, lvb: [UInt8]?) -> LockResult? {
        if let error = LockValidation.checkUnlockArguments(flags: flags) { return error }
        guard let lkb = lkbs[id], let current = entry(id) else { return .notFound }
        let cancel = flags.contains(.cancel)
        let force = flags.contains(.forceUnlock)
        // Rule 1: a normal unlock while anything is outstanding.
        if !cancel && !force && (lkb.waitType != nil || lkb.waitCount != 0) { return .busy }
        // Rule 2: parked on the lookup list.
        if lkb.parked {
            if !cancel && !force { return .busy }
            queueCast(id, cancel ? .cancelled : .unlocked, lock: current, endOfLife: true)
            freeLkb(id)
            return nil
        }
        if lkb.isMasterCopy { return .invalid }
        if cancel {
            if current.flags.contains(.cancel) { return .invalid }
            if lkb.overlapCancel || lkb.overlapUnlock { return .invalid }
            if current.status == .granted && lkb.waitType == nil { return nil }  // nothing to cancel
            switch lkb.waitType {
            case .lookup?, .request?:
                lkbs.modify(id) { $0.overlapCancel = true }
                return nil
            case .unlock?, .cancel?:
                return .invalid
            default:
                break
            }
        } else if force {
            if current.flags.contains(.forceUnlock) || lkb.overlapUnlock { return .invalid }
            switch lkb.waitType {
            case .lookup?, .request?:
                lkbs.modify(id) { $0.overlapUnlock = true }
                return nil
            case .unlock?:
                return .invalid
            default:
                break
            }
        }
        // out_ok: the flags accumulate, sbflags reset.
        let newLVB = flags.contains(.valBlk) ? normalisedLVB(lvb) : nil
        updateEntry(id) { e in
            e.flags.formUnion(flags)
            e.statusFlags = []
            if let newLVB { e.lvb = newLVB }
        }
        let slot = lkb.slot
        guard let master = rsbs.rsb(at: slot)?.master else {
            log("unlock \(String(id, radix: 16)): no rsb")
            return .notFound
        }
        if master == us {
            if cancel { cancelLocal(id, rsb: slot) } else { unlockLocal(id, rsb: slot) }
            return nil
        }
        let type: MessageType = cancel ? .cancel : .unlock
        if let error = addToWaiters(id, type, node: master) { return error }
        if let pc = entry(id) { sendLockMessage(type, lock: pc, rsb: slot, to: master) }
        return nil
    }

    mutating func unlockLocal(_ id: UInt32, rsb slot: RsbSlot) {
        let outcome = rsbs[slot].resource.unlock(id, flags: [], flagUpdate: .accumulate, statusFlags: [])
        queueCast(id, .unlocked, lock: outcome.lock, endOfLife: true)
        freeLkb(id)
        runEffects(outcome.effects, rsb: slot)
        tossIfUnused(slot)
    }

    mutating func cancelLocal(_ id: UInt32, rsb slot: RsbSlot) {
        let outcome = rsbs[slot].resource.cancel(id, flags: [], flagUpdate: .accumulate, statusFlags: [])
        guard outcome.result == .cancelled, let lock = outcome.lock else { return }
        let removed = lock.status == nil
        queueCast(id, .cancelled, lock: lock, endOfLife: removed)
        if removed { freeLkb(id) }
        runEffects(outcome.effects, rsb: slot)
        tossIfUnused(slot)
    }

    // MARK: - set_master / _request_lock (§3.8)

    /// `_request_lock`: local `do_request`, REQUEST to the master, LOOKUP to the dir node, or park.
    /// `fresh`: the entry of a new lock that is not stored yet (a `dlm_lock` call); otherwise the lock's
    /// detached entry is used.
    mutating func requestLock(_ id: UInt32, fresh: LockEntry? = nil) {
        guard let lkb = lkbs[id], rsbs.contains(lkb.slot) else { return }
        let slot = lkb.slot
        guard var lock = fresh ?? lkbs.takeDetached(id) else {
            log("request \(String(id, radix: 16)): the lock has no entry")
            return
        }
        // Scalars only: a copy of the rsb kept alive here would make the queue changes below copy.
        let (masterUncertain, firstLkid, master, hash) = (
            rsbs[slot].masterUncertain, rsbs[slot].firstLkid, rsbs[slot].master, rsbs[slot].hash
        )
        var target: UInt32
        if masterUncertain {
            rsbs[slot].masterUncertain = false
            rsbs[slot].firstLkid = id
            target = master
        } else if firstLkid != 0 && firstLkid != id {
            rsbs[slot].lookupList.append(id)
            lkbs.modify(id) { $0.parked = true }
            lkbs.setDetached(id, lock)
            return
        } else if master == us {
            target = us
        } else if master != 0 {
            target = master
        } else if directoryNode(hash: hash) == us {
            rsbs[slot].master = us
            target = us
        } else {
            rsbs[slot].firstLkid = id
            let dir = directoryNode(hash: hash)
            lock.nodeID = -1
            lkbs.setDetached(id, lock)
            _ = addToWaiters(id, .lookup, node: dir)
            sendLockMessage(.lookup, lock: lock, rsb: slot, to: dir)
            return
        }
        if target == us {
            requestLocal(id, lock, rsb: slot)
        } else {
            lock.nodeID = Int32(bitPattern: target)
            lkbs.setDetached(id, lock)
            _ = addToWaiters(id, .request, node: target)
            sendLockMessage(.request, lock: lock, rsb: slot, to: target)
        }
    }

    /// `do_request` on a local master for a local lock (`lock`: its entry, on no queue and not
    /// stored as detached).
    mutating func requestLocal(_ id: UInt32, _ lock: LockEntry, rsb slot: RsbSlot) {
        var lock = lock
        lock.nodeID = 0
        lock.remoteID = 0
        let outcome = rsbs[slot].resource.request(lock)
        switch outcome.result {
        case .queued:
            break
        case .granted:
            queueCast(id, .granted, lock: outcome.lock)
        case .wouldBlock, .deadlock, .busy, .invalid, .notFound, .cancelled, .unlocked:
            // The lock is on no queue; freeLkb finds nothing to dequeue.
            queueCast(id, outcome.result, lock: outcome.lock, endOfLife: true)
            freeLkb(id)
        }
        runEffects(outcome.effects, rsb: slot)
        tossIfUnused(slot)
    }

    /// `confirm_master` (§3.8).
    mutating func confirmMaster(_ slot: RsbSlot, result: Int32) {
        guard let firstLkid = rsbs.rsb(at: slot)?.firstLkid, firstLkid != 0 else { return }
        switch result {
        case 0, WireErrno.einprogress:
            rsbs[slot].firstLkid = 0
            processLookupList(slot)
        case WireErrno.eagain, WireErrno.ebadr, WireErrno.enotblk:
            rsbs[slot].firstLkid = 0
            if !rsbs[slot].lookupList.isEmpty {
                let next = rsbs[slot].lookupList.removeFirst()
                rsbs[slot].firstLkid = next
                lkbs.modify(next) { $0.parked = false }
                requestLock(next)
            }
        default:
            break
        }
    }

    /// `process_lookup_list`: resubmit every parked request.
    mutating func processLookupList(_ slot: RsbSlot) {
        guard let parked = rsbs.rsb(at: slot)?.lookupList else { return }
        rsbs[slot].lookupList = []
        for id in parked {
            lkbs.modify(id) { $0.parked = false }
            requestLock(id)
        }
    }

    /// Send a message about one of our locks (or a master copy) on the rsb in `slot`.
    mutating func sendLockMessage(
        _ type: MessageType, lock: LockEntry, rsb slot: RsbSlot, to node: UInt32, result: Int32 = 0
    ) {
        guard rsbs.contains(slot) else {
            log("send \(type) for \(String(lock.id, radix: 16)): no rsb")
            return
        }
        // Field reads, not a copy of the rsb (that would retain its queues).
        let message = LockMessages.lockMessage(
            type, lock: lock, hash: rsbs[slot].hash, name: rsbs[slot].name, lvbLength: lvbLength, header: header(),
            result: result)
        send(message, to: node)
    }
}
