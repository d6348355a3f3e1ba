import DLMTransport

// Orphan locks (locking.md §7.5, §4.14; the kernel's user.c/lock.c `dlm_clear_proc_locks`,
// `orphan_proc_lock`, `dlm_user_adopt_orphan`, `do_purge`). A lock requested with PERSISTENT
// outlives its owner: when the owner goes away the lock becomes an orphan (`DLM_IFL_ORPHAN`, which
// travels in `m_flags` and RCOM_LOCK `rl_flags`), keeps its mode and place on the master, delivers
// no more callbacks, and stays on the lockspace's orphan list until a request with ORPHAN adopts it
// or a purge releases it.

extension LockManager {
    /// Whether local lock `lkid` survives its owner: its most recent call carried PERSISTENT (the
    /// kernel tests `lkb_exflags`, which every lock/convert call replaces).
    public func isPersistent(_ lkid: UInt32) -> Bool {
        guard let lkb = lkbs[lkid], !lkb.isMasterCopy, let e = entry(lkid) else { return false }
        return e.flags.contains(.persistent)
    }

    /// `orphan_proc_lock`: the owner of local lock `lkid` went away and the lock is PERSISTENT. It
    /// joins the orphan list with `DLM_IFL_ORPHAN` set, and its waiting request or conversion is
    /// cancelled as the kernel's cancel with no flags does: nothing when a reply is outstanding or
    /// the request is parked on the lookup list (-EBUSY there; the outcome then leaves a granted or
    /// still-waiting orphan), a local cancel on our own master, a CANCEL to a remote master (sent
    /// even for a granted lock, which the master answers with 0; it carries ORPHAN to the master
    /// copy). A new request cancelled here ends its life (the kernel keeps such an IV lock on the
    /// orphan list until a purge; nothing can adopt it).
    public mutating func orphan(lkid: UInt32, now: Duration) -> CallResult {
        self.now = now
        guard let lkb = lkbs[lkid], entry(lkid) != nil else { return CallResult(error: .notFound, lkid: lkid, actions: drain()) }
        if lkb.isMasterCopy || lkb.orphan { return CallResult(error: .invalid, lkid: lkid, actions: drain()) }
        lkbs.modify(lkid) { $0.orphan = true }
        updateEntry(lkid) { $0.wireFlags |= LockBlockFlags.orphan }
        orphans.append(lkid)
        log("orphan \(String(lkid, radix: 16)) \(printable(rsbName(of: lkid)))")
        guard lkb.waitType == nil, lkb.waitCount == 0, !lkb.parked, let master = rsbs.rsb(at: lkb.slot)?.master else {
            return CallResult(error: nil, lkid: lkid, actions: drain())
        }
        if master == us {
            cancelLocal(lkid, rsb: lkb.slot)
        } else if master != 0, addToWaiters(lkid, .cancel, node: master) == nil, let pc = entry(lkid) {
            sendLockMessage(.cancel, lock: pc, rsb: lkb.slot, to: master)
        }
        return CallResult(error: nil, lkid: lkid, actions: drain())
    }

    /// `dlm_user_adopt_orphan`: the oldest orphan on `name` granted in `mode` gets a new owner
    /// (`tag`, `pid`, its callbacks); its `exflags` become `flags` and `DLM_IFL_ORPHAN` is cleared.
    /// -EAGAIN (`.wouldBlock`) when orphans on `name` exist only in other modes, -ENOENT
    /// (`.notFound`) when there is none. No completion follows: the lock is already granted (the
    /// kernel returns its id from the write). Nothing is sent.
    public mutating func adoptOrphan(
        name: [UInt8], mode: LockMode, flags: LockFlags = [], pid: UInt32 = 0, tag: UInt64, blocking: Bool = true,
        now: Duration
    ) -> CallResult {
        self.now = now
        var otherMode = false
        var found: Int?
        for (i, id) in orphans.enumerated() where rsbName(of: id) == name {
            guard entry(id)?.grantedMode == mode else {
                otherMode = true
                continue
            }
            found = i
            break
        }
        guard let index = found else {
            return CallResult(error: otherMode ? .wouldBlock : .notFound, lkid: 0, actions: drain())
        }
        let id = orphans.remove(at: index)
        lkbs.modify(id) { lkb in
            lkb.orphan = false
            lkb.tag = tag
            lkb.deliverBlocking = blocking
            lkb.callbacks = CallbackQueue.Coalescing()
        }
        updateEntry(id) { e in
            e.wireFlags &= ~LockBlockFlags.orphan
            e.flags = flags
            e.pid = pid
        }
        log("adopt orphan \(String(id, radix: 16)) \(printable(name)) \(mode)")
        return CallResult(error: nil, lkid: id, actions: drain())
    }

    /// `dlm_user_purge`: release the orphans of process `pid` (0: every orphan) of node `nodeID`.
    /// Another member's orphans: a PURGE message to it (`send_purge`); ours (`nodeID` 0 or us):
    /// `do_purge`. -EINVAL for a node that is not a member.
    public mutating func purge(nodeID: UInt32, pid: UInt32, now: Duration) -> CallResult {
        self.now = now
        if nodeID != 0 && nodeID != us {
            guard memberIDs.contains(nodeID) else { return CallResult(error: .invalid, lkid: 0, actions: drain()) }
            send(LockMessages.purge(nodeID: nodeID, pid: pid, header: header()), to: nodeID)
        } else {
            purgeOrphans(pid: pid)
        }
        return CallResult(error: nil, lkid: 0, actions: drain())
    }

    /// `do_purge`: force-unlock (with IVVALBLK, as `unlock_proc_lock`) every orphan owned by `pid`
    /// (all when 0) and take it off the orphan list. A lock whose unlock waits for a remote master's
    /// reply stays an orphan (no callbacks) until the reply frees it.
    mutating func purgeOrphans(pid: UInt32) {
        let purged = orphans.filter { pid == 0 || entry($0)?.pid == pid }
        guard !purged.isEmpty else { return }
        orphans.removeAll { purged.contains($0) }
        for id in purged {
            if let error = unlockLock(id, flags: [.forceUnlock, .ivValBlk], lvb: nil) {
                log("purge \(String(id, radix: 16)): \(error)")
            }
        }
        log("purged \(purged.count) orphan lock(s) of pid \(pid)")
    }
}
