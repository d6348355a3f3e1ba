import DLMTransport

// The grant engine: the four master-side operations (`do_request`, `do_convert`, `do_unlock`,
// `do_cancel`) and the grant passes, as in the kernel's fs/dlm/lock.c (locking.md §2.5–§2.9).
// Used for master copies (the caller turns the result into a reply and the effects into GRANT/BAST
// messages) and for local locks (the caller turns both into callbacks). Nothing here validates the
// caller's arguments beyond what the kernel's master does; see `LockValidation` for the API checks.

extension Resource {
    // MARK: - Operations

    /// `do_request` + `do_request_effects`: a new lock. The lock's `requestedMode` is the mode
    /// wanted; its granted mode, status and highbast are reset. With VALBLK and no buffer a zeroed
    /// buffer is allocated (as `receive_request_args` does for a master copy).
    public mutating func request(_ newLock: LockEntry) -> LockOutcome {
        var lock = newLock
        lock.grantedMode = .iv
        lock.status = nil
        lock.highBast = .nl
        lock.lvb = normalised(lock.lvb)
        if lock.lvb == nil && lock.flags.contains(.valBlk) { lock.lvb = [UInt8](repeating: 0, count: lvbLength) }
        // Deliberate difference: the kernel master accepts m_rqmode IV and leaks a lock on no queue.
        guard lock.requestedMode != .iv, locate(lock.id) == nil else {
            return LockOutcome(result: .invalid, lock: lock)
        }

        if canBeGranted(&lock, now: true, recover: false).grant {
            grantLock(&lock, at: nil)
            return LockOutcome(result: .granted, lock: self.lock(lock.id))
        }
        if !lock.flags.contains(.noQueue) {
            add(lock, to: .waiting)
            let effects = blockingASTs(for: lock, includeConvertQueue: false)
            return LockOutcome(result: .queued, lock: self.lock(lock.id), effects: effects)
        }
        let effects = lock.flags.contains(.noQueueBast) ? blockingASTs(for: lock, includeConvertQueue: true) : []
        return LockOutcome(result: .wouldBlock, lock: lock, effects: effects)
    }

    /// `receive_convert_args` + `do_convert` + `do_convert_effects`: convert a granted lock to `mode`.
    /// As on a master, `flags`/`statusFlags` replace the lock's exflags/sbflags first (also when the
    /// answer is -EBUSY); with VALBLK, `lvb` (if given) is stored in the lock's buffer and `lvbSeq`
    /// (if given) replaces the lock's sequence number.
    public mutating func convert(
        _ id: UInt32, to mode: LockMode, flags: LockFlags, statusFlags: LockStatusFlags = [],
        lvb newLVB: [UInt8]? = nil, lvbSeq newSeq: UInt32? = nil
    ) -> LockOutcome {
        guard let location = locate(id) else { return LockOutcome(result: .notFound, lock: nil) }
        var lock = self[location]
        lock.flags = flags
        lock.statusFlags = statusFlags
        guard location.status == .granted, mode != .iv else {
            self[location] = lock
            return LockOutcome(result: location.status == .granted ? .invalid : .busy, lock: lock)
        }
        if flags.contains(.valBlk), let newLVB { lock.lvb = storing(newLVB, into: lock.lvb) }
        lock.requestedMode = mode
        if let newSeq { lock.lvbSeq = newSeq }
        let down = LockMode.isDownConversion(granted: lock.grantedMode, requested: mode)

        let check = canBeGranted(&lock, now: true, recover: false)
        self[location] = lock  // keeps a CONVDEADLK demotion / restored alt mode
        if check.grant {
            grantLock(&lock, at: location)
            let granted = self.lock(id)
            return LockOutcome(result: .granted, lock: granted, effects: grantPendingLocks(), suppressReply: down)
        }
        if check.deadlock && !lock.flags.contains(.noDlckWt) {
            // revert_lock on a granted lock: rqmode back to IV, it stays granted.
            lock.requestedMode = .iv
            self[location] = lock
            return LockOutcome(result: .deadlock, lock: lock, suppressReply: down)
        }
        var pre: [LockEffect] = []
        if lock.statusFlags.contains(.demoted) {
            // The demotion may unblock other conversions, and then this one.
            var cw = false
            _ = grantPendingConvert(high: .iv, cw: &cw, trackCW: false, effects: &pre)
            let here = locate(id)!
            lock = self[here]
            if canBeGrantedCore(lock, now: true, recover: false) {
                grantLock(&lock, at: here)
                return LockOutcome(
                    result: .granted, lock: self.lock(id), preReplyEffects: pre, effects: grantPendingLocks(),
                    suppressReply: down)
            }
        }
        let here = locate(id)!
        if !lock.flags.contains(.noQueue) {
            move(lock, from: here, to: .convert)
            let queued = self.lock(id)!
            let effects = blockingASTs(for: queued, includeConvertQueue: false)
            return LockOutcome(result: .queued, lock: queued, preReplyEffects: pre, effects: effects, suppressReply: down)
        }
        // KQ: the lock stays granted and keeps its rqmode.
        let effects = lock.flags.contains(.noQueueBast) ? blockingASTs(for: lock, includeConvertQueue: true) : []
        return LockOutcome(
            result: .wouldBlock, lock: self.lock(id), preReplyEffects: pre, effects: effects, suppressReply: down)
    }

    /// `do_unlock` + `do_unlock_effects`: remove the lock from whatever queue it is on (granted,
    /// converting or waiting — the master does not check), writing back a PW/EX LVB first.
    /// `flags` combine with the lock's exflags per `flagUpdate`; with VALBLK, `lvb` (if given) is
    /// stored in the lock's buffer before the write-back.
    public mutating func unlock(
        _ id: UInt32, flags: LockFlags = [], flagUpdate: FlagUpdate = .accumulate,
        statusFlags: LockStatusFlags = [], lvb newLVB: [UInt8]? = nil
    ) -> LockOutcome {
        guard let location = locate(id) else { return LockOutcome(result: .notFound, lock: nil) }
        var lock = self[location]
        apply(flags, flagUpdate, statusFlags, to: &lock)
        if lock.flags.contains(.valBlk), let newLVB { lock.lvb = storing(newLVB, into: lock.lvb) }
        applyLVBOnUnlock(lock)
        remove(at: location)
        lock.grantedMode = .iv
        lock.status = nil
        return LockOutcome(result: .unlocked, lock: lock, effects: grantPendingLocks())
    }

    /// `do_cancel` + `do_cancel_effects`: a converting lock returns to its granted mode, a waiting
    /// lock is removed (-DLM_ECANCEL, then a grant pass); a granted lock is left alone (0).
    public mutating func cancel(
        _ id: UInt32, flags: LockFlags = [], flagUpdate: FlagUpdate = .accumulate,
        statusFlags: LockStatusFlags = []
    ) -> LockOutcome {
        guard let location = locate(id) else { return LockOutcome(result: .notFound, lock: nil) }
        var lock = self[location]
        apply(flags, flagUpdate, statusFlags, to: &lock)
        self[location] = lock
        guard let (reverted, change) = revertLock(id) else { return LockOutcome(result: .notFound, lock: nil) }
        switch change {
        case .none:
            return LockOutcome(result: .granted, lock: reverted)
        case .backToGranted, .removed:
            return LockOutcome(result: .cancelled, lock: reverted, effects: grantPendingLocks())
        }
    }

    private func apply(_ flags: LockFlags, _ update: FlagUpdate, _ statusFlags: LockStatusFlags, to lock: inout LockEntry) {
        switch update {
        case .replace: lock.flags = flags
        case .accumulate: lock.flags.formUnion(flags)
        }
        lock.statusFlags = statusFlags
    }

    // MARK: - Grantability (`_can_be_granted`, `can_be_granted`, conversion deadlock)

    /// `queue_conflict`: some *other* lock on `queue` holds a mode incompatible with `lock`'s rqmode.
    func queueConflict(_ queue: [LockEntry], _ lock: LockEntry) -> Bool {
        for other in queue where other.id != lock.id {
            if !other.grantedMode.isCompatible(with: lock.requestedMode) { return true }
        }
        return false
    }

    /// `_can_be_granted` (locking.md §2.5, rules 1–11 in order). `now`: the operation is being
    /// processed for the first time; `recover`: the post-recovery pass (conversion order ignored).
    public func canBeGrantedCore(_ lock: LockEntry, now: Bool, recover: Bool) -> Bool {
        let conversion = lock.grantedMode != .iv
        if lock.flags.contains(.expedite) { return true }
        if queueConflict(grantQueue, lock) { return false }
        if queueConflict(convertQueue, lock) { return false }
        if conversion && recover { return true }
        if now && conversion && !lock.flags.contains(.queCvt) { return true }
        if now && conversion && lock.flags.contains(.queCvt) { return convertQueue.isEmpty }
        if lock.flags.contains(.noOrder) { return true }
        if !now && conversion && convertQueue.first?.id == lock.id { return true }
        if now && !conversion && convertQueue.isEmpty && waitQueue.isEmpty { return true }
        if !now && !conversion && convertQueue.isEmpty && waitQueue.first?.id == lock.id { return true }
        return false
    }

    /// `conversion_deadlock_detect`: walking the convert queue, a lock *ahead of* `lock` (every lock,
    /// when `lock` is not on the queue) whose rqmode is blocked by `lock`'s grmode is a deadlock; a
    /// lock behind it is one only if each blocks the other.
    public func conversionDeadlock(_ lock: LockEntry) -> Bool {
        var passedSelf = false
        for other in convertQueue {
            if other.id == lock.id {
                passedSelf = true
                continue
            }
            let lockBlocksOther = !lock.grantedMode.isCompatible(with: other.requestedMode)
            if !passedSelf {
                if lockBlocksOther { return true }
            } else if lockBlocksOther && !other.grantedMode.isCompatible(with: lock.requestedMode) {
                return true
            }
        }
        return false
    }

    /// `can_be_granted`. May change `lock`: CONVDEADLK demotes its grmode to NL and sets DEMOTED
    /// (answer no); a successful ALTPR/ALTCW retry sets rqmode to PR/CW and ALTMODE (answer yes).
    /// `deadlock` reports a conversion deadlock that was not resolved by demotion.
    func canBeGranted(_ lock: inout LockEntry, now: Bool, recover: Bool) -> (grant: Bool, deadlock: Bool) {
        if canBeGrantedCore(lock, now: now, recover: recover) { return (true, false) }

        if lock.isConversion && !lock.flags.contains(.noQueue) && conversionDeadlock(lock) {
            if lock.flags.contains(.convDeadlk) {
                lock.grantedMode = .nl
                lock.statusFlags.insert(.demoted)
                return (false, false)
            }
            return (false, true)
        }

        let wanted = lock.requestedMode
        let alternate: LockMode?
        if wanted != .pr && lock.flags.contains(.altPR) {
            alternate = .pr
        } else if wanted != .cw && lock.flags.contains(.altCW) {
            alternate = .cw
        } else {
            alternate = nil
        }
        if let alternate {
            lock.requestedMode = alternate
            // The retry never uses `recover` (kernel passes 0).
            if canBeGrantedCore(lock, now: now, recover: false) {
                lock.statusFlags.insert(.alternateMode)
                return (true, false)
            }
            lock.requestedMode = wanted
        }
        return (false, false)
    }

    /// `grant_lock`: LVB rule, then `_grant_lock`. `location` is where the lock is queued (nil for a
    /// new request); the stored entry is replaced by `lock`.
    mutating func grantLock(_ lock: inout LockEntry, at location: Location?) {
        applyLVBOnGrant(&lock)
        finishGrant(&lock, at: location)
    }

    // MARK: - Grant passes

    /// `grant_pending_locks`: grant what can be granted — conversions first (restarting after every
    /// pass that granted something, and once more after a CONVDEADLK demotion), then waiting
    /// requests — and send blocking ASTs to granted locks for the highest mode still blocked. Public
    /// for recovery's grant pass (set `recoverGrant` first to ignore conversion order).
    public mutating func grantPendingLocks() -> [LockEffect] {
        var effects: [LockEffect] = []
        var cw = false
        var high = grantPendingConvert(high: .iv, cw: &cw, trackCW: true, effects: &effects)
        high = grantPendingWait(high: high, cw: &cw, effects: &effects)
        if high == .iv { return effects }

        for id in grantQueue.map(\.id) {
            guard let location = locate(id) else { continue }
            var lock = self[location]
            guard lock.wantsBlocking, lockRequiresBast(lock, high: high, cw: cw) else { continue }
            let mode: LockMode = (cw && high == .pr && lock.grantedMode == .pr) ? .cw : high
            lock.highBast = high
            self[location] = lock
            effects.append(.blockingAST(lock, mode: mode))
        }
        return effects
    }

    /// `grant_pending_convert`. Returns max(high, highest rqmode still blocked in the last pass);
    /// `cw` is set (and never cleared, as in the kernel) when a blocked conversion wants CW.
    mutating func grantPendingConvert(
        high: LockMode, cw: inout Bool, trackCW: Bool, effects: inout [LockEffect]
    ) -> LockMode {
        let recover = recoverGrant
        var quit = false
        var hi = LockMode.iv
        while true {
            var grantRestart = false
            var demoteRestart = false
            hi = .iv
            for id in convertQueue.map(\.id) {
                guard let location = locate(id), location.status == .convert else { continue }
                var lock = self[location]
                let wasDemoted = lock.statusFlags.contains(.demoted)
                let check = canBeGranted(&lock, now: false, recover: recover)
                self[location] = lock
                if check.grant {
                    grantLockPending(&lock, at: location, effects: &effects)
                    grantRestart = true
                    continue
                }
                if !wasDemoted && lock.statusFlags.contains(.demoted) {
                    demoteRestart = true
                    continue
                }
                if check.deadlock {
                    // NODLCKWT: ask the lock's own owner to back off (sent whether or not it asked
                    // for BASTs, as the kernel does); otherwise the kernel only logs.
                    if lock.flags.contains(.noDlckWt) && lock.highBast.rawValue < lock.requestedMode.rawValue {
                        lock.highBast = lock.requestedMode
                        self[location] = lock
                        effects.append(.blockingAST(lock, mode: lock.requestedMode))
                    }
                    continue
                }
                hi = LockMode.higher(lock.requestedMode, hi)
                if trackCW && lock.requestedMode == .cw { cw = true }
            }
            if grantRestart { continue }
            if demoteRestart && !quit {
                quit = true
                continue
            }
            break
        }
        return LockMode.higher(high, hi)
    }

    /// `grant_pending_wait`.
    mutating func grantPendingWait(high: LockMode, cw: inout Bool, effects: inout [LockEffect]) -> LockMode {
        var high = high
        for id in waitQueue.map(\.id) {
            guard let location = locate(id), location.status == .waiting else { continue }
            var lock = self[location]
            if canBeGranted(&lock, now: false, recover: false).grant {
                self[location] = lock
                grantLockPending(&lock, at: location, effects: &effects)
            } else {
                self[location] = lock
                high = LockMode.higher(lock.requestedMode, high)
                if lock.requestedMode == .cw { cw = true }
            }
        }
        return high
    }

    /// `grant_lock_pending`: grant, then a GRANT message (master copy) or completion 0 (local).
    mutating func grantLockPending(_ lock: inout LockEntry, at location: Location, effects: inout [LockEffect]) {
        grantLock(&lock, at: location)
        effects.append(.grant(self.lock(lock.id)!))
    }

    // MARK: - Blocking ASTs (locking.md §2.9)

    /// Rule B (`lock_requires_bast`), after a grant pass left locks blocked.
    func lockRequiresBast(_ granted: LockEntry, high: LockMode, cw: Bool) -> Bool {
        if granted.grantedMode == .pr && cw {
            return granted.highBast.rawValue < LockMode.ex.rawValue
        }
        return granted.highBast.rawValue < high.rawValue && !granted.grantedMode.isCompatible(with: high)
    }

    /// Rule A (`modes_require_bast`), for a request or conversion just queued (or failed with
    /// NOQUEUEBAST).
    func modesRequireBast(_ granted: LockEntry, _ requester: LockEntry) -> Bool {
        if LockMode.isMiddleConversion(granted: granted.grantedMode, requested: requester.requestedMode) {
            return granted.highBast.rawValue < LockMode.ex.rawValue
        }
        return granted.highBast.rawValue < requester.requestedMode.rawValue
            && !granted.grantedMode.isCompatible(with: requester.requestedMode)
    }

    /// `send_blocking_asts` / `send_blocking_asts_all`: BAST(requester's rqmode) to each other lock on
    /// the grant queue (and the convert queue) that asked for BASTs and needs one.
    mutating func blockingASTs(for requester: LockEntry, includeConvertQueue: Bool) -> [LockEffect] {
        var effects: [LockEffect] = []
        let statuses: [LockStatus] = includeConvertQueue ? [.granted, .convert] : [.granted]
        for status in statuses {
            for index in queue(status).indices {
                let location = Location(status: status, index: index)
                var lock = self[location]
                guard lock.id != requester.id, lock.wantsBlocking, modesRequireBast(lock, requester) else { continue }
                lock.highBast = requester.requestedMode
                self[location] = lock
                effects.append(.blockingAST(lock, mode: requester.requestedMode))
            }
        }
        return effects
    }
}
