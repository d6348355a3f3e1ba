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
        if let _ = findRsb(name, .local) {
            return CallResult(error: .invalid, lkid: 0, actions: drain())
        }
        let id = allocateID()
        let entry = LockEntry(
            id: id, nodeID: 0, pid: pid, mode: mode, flags: flags, wireFlags: user ? LockBlockFlags.user : 0,
            lvb: normalisedLVB(lvb), wantsCompletion: true, wantsBlocking: blocking)
        lkbs[id] = Lkb(id: id, name: name, isMasterCopy: false, tag: tag, detached: entry, deliverBlocking: blocking)
        rsbs[name]!.refs += 1
        requestLock(id)
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
        var updated = lkb
        updated.deliverBlocking = blocking
        lkbs[lkid] = updated
        let newLVB = normalisedLVB(lvb)
        updateEntry(lkid) { e in
            e.flags = flags
            e.statusFlags = []
            if let newLVB { e.lvb = newLVB }
            e.wantsBlocking = blocking
        }
        let rsb = rsbs[lkb.name]!
        if rsb.master == us {
            convertLocal(lkid, to: mode, flags: flags)
        } else {
            convertRemote(lkid, to: mode, master: rsb.master)
        }
        return CallResult(error: nil, lkid: lkid, actions: drain())
    }

    mutating func convertLocal(_ id: UInt32, to mode: LockMode, flags: LockFlags) {
        let name = lkbs[id]!.name
        let outcome = rsbs[name]!.resource.convert(id, to: mode, flags: flags, statusFlags: [])
        runEffects(outcome.preReplyEffects, rsb: name)
        switch outcome.result {
        case .queued:
            break
        case .granted, .wouldBlock, .deadlock, .busy, .invalid, .notFound, .cancelled, .unlocked:
            queueCast(id, outcome.result, lock: outcome.lock ?? entry(id))
        }
        runEffects(outcome.effects, rsb: name)
    }

    mutating func convertRemote(_ id: UInt32, to mode: LockMode, master: UInt32) {
        let name = lkbs[id]!.name
        updateEntry(id) { $0.requestedMode = mode }
        if let error = addToWaiters(id, .convert, node: master) {
            log("convert \(String(id, radix: 16)): add_to_waiters \(error)")
            return
        }
        let pc = entry(id)!
        sendLockMessage(.convert, lock: pc, rsb: name, to: master)
        if LockMode.isDownConversion(granted: pc.grantedMode, requested: pc.requestedMode) {
            // §4.2/§6.3: no reply will come; complete locally with a fabricated "granted".
            _ = removeFromWaiters(id, .convertReply, result: 0)
            rsbs[name]!.resource.grantProcessCopy(id, extra: [], lvbSeq: pc.lvbSeq)
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
        guard var lkb = lkbs[id], let current = entry(id) else { return .notFound }
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
                lkb.overlapCancel = true
                lkbs[id] = lkb
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
                lkb.overlapUnlock = true
                lkbs[id] = lkb
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
        let name = lkb.name
        let rsb = rsbs[name]!
        if rsb.master == us {
            if cancel { cancelLocal(id, rsb: name) } else { unlockLocal(id, rsb: name) }
            return nil
        }
        let type: MessageType = cancel ? .cancel : .unlock
        if let error = addToWaiters(id, type, node: rsb.master) { return error }
        sendLockMessage(type, lock: entry(id)!, rsb: name, to: rsb.master)
        return nil
    }

    mutating func unlockLocal(_ id: UInt32, rsb name: [UInt8]) {
        let outcome = rsbs[name]!.resource.unlock(id, flags: [], flagUpdate: .accumulate, statusFlags: [])
        queueCast(id, .unlocked, lock: outcome.lock, endOfLife: true)
        freeLkb(id)
        runEffects(outcome.effects, rsb: name)
        tossIfUnused(name)
    }

    mutating func cancelLocal(_ id: UInt32, rsb name: [UInt8]) {
        let outcome = rsbs[name]!.resource.cancel(id, flags: [], flagUpdate: .accumulate, statusFlags: [])
        guard outcome.result == .cancelled, let lock = outcome.lock else { return }
        let removed = lock.status == nil
        queueCast(id, .cancelled, lock: lock, endOfLife: removed)
        if removed { freeLkb(id) }
        runEffects(outcome.effects, rsb: name)
        tossIfUnused(name)
    }

    // MARK: - set_master / _request_lock (§3.8)

    /// `_request_lock`: local `do_request`, REQUEST to the master, LOOKUP to the dir node, or park.
    mutating func requestLock(_ id: UInt32) {
        guard let lkb = lkbs[id], var r = rsbs[lkb.name] else { return }
        let name = lkb.name
        var target: UInt32
        if r.masterUncertain {
            r.masterUncertain = false
            r.firstLkid = id
            target = r.master
        } else if r.firstLkid != 0 && r.firstLkid != id {
            r.lookupList.append(id)
            rsbs[name] = r
            lkbs[id]!.parked = true
            return
        } else if r.master == us {
            target = us
        } else if r.master != 0 {
            target = r.master
        } else if directoryNode(hash: r.hash) == us {
            r.master = us
            target = us
        } else {
            r.firstLkid = id
            rsbs[name] = r
            let dir = directoryNode(hash: r.hash)
            updateEntry(id) { $0.nodeID = -1 }
            _ = addToWaiters(id, .lookup, node: dir)
            sendLockMessage(.lookup, lock: entry(id)!, rsb: name, to: dir)
            return
        }
        rsbs[name] = r
        if target == us {
            requestLocal(id)
        } else {
            updateEntry(id) { $0.nodeID = Int32(bitPattern: target) }
            _ = addToWaiters(id, .request, node: target)
            sendLockMessage(.request, lock: entry(id)!, rsb: name, to: target)
        }
    }

    /// `do_request` on a local master for a local lock.
    mutating func requestLocal(_ id: UInt32) {
        guard var lkb = lkbs[id], var lock = lkb.detached else { return }
        let name = lkb.name
        lock.nodeID = 0
        lock.remoteID = 0
        lkb.detached = nil
        lkbs[id] = lkb
        let outcome = rsbs[name]!.resource.request(lock)
        switch outcome.result {
        case .queued:
            break
        case .granted:
            queueCast(id, .granted, lock: outcome.lock)
        case .wouldBlock, .deadlock, .busy, .invalid, .notFound, .cancelled, .unlocked:
            lkbs[id]!.detached = outcome.lock ?? lock
            queueCast(id, outcome.result, lock: outcome.lock, endOfLife: true)
            freeLkb(id)
        }
        runEffects(outcome.effects, rsb: name)
        tossIfUnused(name)
    }

    /// `confirm_master` (§3.8).
    mutating func confirmMaster(_ name: [UInt8], result: Int32) {
        guard var r = rsbs[name], r.firstLkid != 0 else { return }
        switch result {
        case 0, WireErrno.einprogress:
            r.firstLkid = 0
            rsbs[name] = r
            processLookupList(name)
        case WireErrno.eagain, WireErrno.ebadr, WireErrno.enotblk:
            r.firstLkid = 0
            if !r.lookupList.isEmpty {
                let next = r.lookupList.removeFirst()
                r.firstLkid = next
                rsbs[name] = r
                lkbs[next]?.parked = false
                requestLock(next)
            } else {
                rsbs[name] = r
            }
        default:
            break
        }
    }

    /// `process_lookup_list`: resubmit every parked request.
    mutating func processLookupList(_ name: [UInt8]) {
        guard var r = rsbs[name] else { return }
        let parked = r.lookupList
        r.lookupList = []
        rsbs[name] = r
        for id in parked {
            lkbs[id]?.parked = false
            requestLock(id)
        }
    }

    /// Send a message about one of our locks (or a master copy) on rsb `name`.
    mutating func sendLockMessage(
        _ type: MessageType, lock: LockEntry, rsb name: [UInt8], to node: UInt32, result: Int32 = 0
    ) {
        let hash = rsbs[name]?.hash ?? JHash.hash(name)
        let message = LockMessages.lockMessage(
            type, lock: lock, hash: hash, name: name, lvbLength: lvbLength, header: header(), result: result)
        send(message, to: node)
    }
}
