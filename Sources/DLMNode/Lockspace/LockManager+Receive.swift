import DLMTransport
import NIOCore

// Received DLM_MSGs (locking.md §4.0.5–§4.14): the master side (REQUEST, CONVERT, UNLOCK, CANCEL),
// the directory (LOOKUP, REMOVE), the owner side (the four replies, GRANT, BAST, LOOKUP_REPLY) and
// PURGE.

extension LockManager {
    /// A message from node `sender` (the transport has checked `h_nodeid`).
    public mutating func receive(_ message: DLMMessage, from sender: UInt32, now: Duration) -> [Action] {
        self.now = now
        guard message.header.lockspace == config.lockspaceID else {
            log("drop message for lockspace \(message.header.lockspace)")
            return drain()
        }
        guard memberIDs.contains(sender) else {
            log("drop \(MessageType.name(message.type)) from non-member \(sender)")
            return drain()
        }
        guard let type = message.messageType else {
            log("unknown message type \(message.type) from \(sender)")
            return drain()
        }
        switch type {
        case .request: receiveRequest(message, from: sender, replyType: .requestReply)
        case .convert: receiveConvert(message, from: sender)
        case .unlock: receiveUnlock(message, from: sender)
        case .cancel: receiveCancel(message, from: sender)
        case .requestReply: receiveRequestReply(message, from: sender)
        case .convertReply: receiveConvertReply(message, from: sender)
        case .unlockReply: receiveUnlockReply(message, from: sender)
        case .cancelReply: receiveCancelReply(message, from: sender)
        case .grant: receiveGrant(message, from: sender)
        case .bast: receiveBast(message, from: sender)
        case .lookup: receiveLookup(message, from: sender)
        case .remove: receiveRemove(message, from: sender)
        case .lookupReply: receiveLookupReply(message, from: sender)
        case .purge: receivePurge(message, from: sender)
        }
        return drain()
    }

    // MARK: - validate_message (§4.0.6)

    func validate(_ message: DLMMessage, _ type: MessageType, lkb: Lkb, lock: LockEntry, sender: UInt32) -> Bool {
        let flags = message.flags & LockBlockFlags.distributedMask
        if flags & LockBlockFlags.user != 0 && lock.wireFlags & LockBlockFlags.user == 0 { return false }
        let from = Int32(bitPattern: sender)
        switch type {
        case .convert, .unlock, .cancel:
            return lkb.isMasterCopy && lock.nodeID == from
        case .convertReply, .unlockReply, .cancelReply, .grant, .bast:
            return !lkb.isMasterCopy && lock.nodeID == from
        case .requestReply:
            return !lkb.isMasterCopy && (lock.nodeID == -1 || lock.nodeID == from)
        case .request, .lookup, .remove, .lookupReply, .purge:
            return true
        }
    }

    mutating func invalid(_ message: DLMMessage, from sender: UInt32) {
        log("validate_message failed: \(MessageType.name(message.type)) from \(sender) lkid \(String(message.lkid, radix: 16)) remid \(String(message.remid, radix: 16))")
    }

    mutating func stub(_ type: MessageType, to sender: UInt32, _ message: DLMMessage, _ result: Int32) {
        send(LockMessages.stubReply(type, to: sender, requestLkid: message.lkid, result: result, header: header()), to: sender)
    }

    // MARK: - Master side

    /// REQUEST (and LOOKUP handled as a request, §3.7): a new master copy, `do_request`,
    /// REQUEST_REPLY, effects.
    mutating func receiveRequest(_ message: DLMMessage, from sender: UInt32, replyType: MessageType) {
        guard let mode = LockMode(rawValue: message.rqmode) else {
            stub(replyType, to: sender, message, WireErrno.einval)
            return
        }
        let slot: RsbSlot
        // The name is hashed and compared in the message's buffer: an array only for a new rsb.
        let found = message.extra.withUnsafeReadableBytes { name in findRsb(name, .received(from: sender)) }
        switch found {
        case .found(let s): slot = s
        case .error(let error):
            stub(replyType, to: sender, message, error)
            return
        }
        if rsbs[slot].master != us {
            // `validate_master_nodeid`: nodir never takes mastery from a request.
            if !config.nodir && sender == directoryNode(hash: rsbs[slot].hash) {
                rsbs[slot].master = us
            } else {
                stub(replyType, to: sender, message, WireErrno.enotblk)
                tossIfUnused(slot)
                return
            }
        }
        let id = allocateID()
        let lock = LockEntry(
            id: id, nodeID: Int32(bitPattern: sender), remoteID: message.lkid, pid: message.pid, mode: mode,
            flags: LockFlags(rawValue: message.exflags), statusFlags: LockStatusFlags(rawValue: message.sbflags),
            wireFlags: message.flags & LockBlockFlags.distributedMask,
            wantsCompletion: message.asts & CallbackFlags.cast != 0, wantsBlocking: message.asts & CallbackFlags.bast != 0)
        lkbs[id] = Lkb(id: id, rsb: slot, isMasterCopy: true, tag: 0)
        rsbs[slot].refs += 1
        let outcome = rsbs[slot].resource.request(lock)
        sendLockMessage(.requestReply, lock: outcome.lock ?? lock, rsb: slot, to: sender, result: outcome.result.wireValue)
        switch outcome.result {
        case .granted, .queued:
            break
        case .wouldBlock, .deadlock, .busy, .invalid, .notFound, .cancelled, .unlocked:
            freeLkb(id)  // on no queue: nothing to dequeue
        }
        runEffects(outcome.effects, rsb: slot)
        tossIfUnused(slot)
    }

    /// The master copy named by `m_remid` (CONVERT, UNLOCK, CANCEL).
    func masterCopy(_ message: DLMMessage, checkRemid: Bool) -> (Lkb, LockEntry)? {
        guard let lkb = lkbs[message.remid], lkb.isMasterCopy, let lock = entry(lkb.id) else { return nil }
        if checkRemid && lock.remoteID != message.lkid { return nil }
        return (lkb, lock)
    }

    mutating func receiveConvert(_ message: DLMMessage, from sender: UInt32) {
        guard let (lkb, lock) = masterCopy(message, checkRemid: true) else {
            stub(.convertReply, to: sender, message, WireErrno.enoent)
            return
        }
        guard validate(message, .convert, lkb: lkb, lock: lock, sender: sender) else { return invalid(message, from: sender) }
        let slot = lkb.slot
        let mode = LockMode(rawValue: message.rqmode) ?? .iv
        rsbs[slot].resource.update(lkb.id) { $0.wireFlags = message.flags & LockBlockFlags.distributedMask }
        let extra = LockMessages.extraBytes(message)
        let outcome = rsbs[slot].resource.convert(
            lkb.id, to: mode, flags: LockFlags(rawValue: message.exflags),
            statusFlags: LockStatusFlags(rawValue: message.sbflags), lvb: extra.isEmpty ? nil : extra,
            lvbSeq: message.lvbseq)
        runEffects(outcome.preReplyEffects, rsb: slot)
        if !outcome.suppressReply {
            sendLockMessage(
                .convertReply, lock: outcome.lock ?? lock, rsb: slot, to: sender, result: outcome.result.wireValue)
        }
        runEffects(outcome.effects, rsb: slot)
    }

    mutating func receiveUnlock(_ message: DLMMessage, from sender: UInt32) {
        guard let (lkb, lock) = masterCopy(message, checkRemid: true) else {
            stub(.unlockReply, to: sender, message, WireErrno.enoent)
            return
        }
        guard validate(message, .unlock, lkb: lkb, lock: lock, sender: sender) else { return invalid(message, from: sender) }
        let slot = lkb.slot
        rsbs[slot].resource.update(lkb.id) { $0.wireFlags = message.flags & LockBlockFlags.distributedMask }
        let extra = LockMessages.extraBytes(message)
        let outcome = rsbs[slot].resource.unlock(
            lkb.id, flags: LockFlags(rawValue: message.exflags), flagUpdate: .replace,
            statusFlags: LockStatusFlags(rawValue: message.sbflags), lvb: extra.isEmpty ? nil : extra)
        sendLockMessage(.unlockReply, lock: outcome.lock ?? lock, rsb: slot, to: sender, result: outcome.result.wireValue)
        freeLkb(lkb.id)  // unlocked: on no queue any more
        runEffects(outcome.effects, rsb: slot)
        tossIfUnused(slot)
    }

    mutating func receiveCancel(_ message: DLMMessage, from sender: UInt32) {
        guard let (lkb, lock) = masterCopy(message, checkRemid: false) else {
            // An expected race (the lock was unlocked or its request failed meanwhile).
            stub(.cancelReply, to: sender, message, WireErrno.enoent)
            return
        }
        let slot = lkb.slot
        // KQ: the flags are taken before the message is validated.
        rsbs[slot].resource.update(lkb.id) { e in
            e.flags = LockFlags(rawValue: message.exflags)
            e.statusFlags = LockStatusFlags(rawValue: message.sbflags)
            e.wireFlags = message.flags & LockBlockFlags.distributedMask
        }
        guard validate(message, .cancel, lkb: lkb, lock: lock, sender: sender) else { return invalid(message, from: sender) }
        let outcome = rsbs[slot].resource.cancel(
            lkb.id, flags: LockFlags(rawValue: message.exflags), flagUpdate: .replace,
            statusFlags: LockStatusFlags(rawValue: message.sbflags))
        sendLockMessage(.cancelReply, lock: outcome.lock ?? lock, rsb: slot, to: sender, result: outcome.result.wireValue)
        if let after = outcome.lock, after.status == nil {
            freeLkb(lkb.id)  // removed from the wait queue
        }
        if outcome.result == .cancelled { runEffects(outcome.effects, rsb: slot) }
        tossIfUnused(slot)
    }

    // MARK: - Directory

    /// LOOKUP (§3.5, §4.11): answer from the directory; when we are the master, process it as a
    /// REQUEST and answer with REQUEST_REPLY (§3.7).
    mutating func receiveLookup(_ message: DLMMessage, from sender: UInt32) {
        let name = LockMessages.extraBytes(message)
        func reply(_ master: Int32, _ result: Int32) {
            send(LockMessages.lookupReply(lkid: message.lkid, master: master, result: result, header: header()), to: sender)
        }
        guard name.count <= WireLimits.maxResourceNameLength, sender != us else { return reply(-1, WireErrno.einval) }
        let hash = JHash.hash(name)
        guard directoryNode(hash: hash) == us else {
            log("lookup \(printable(name)) from \(sender): we are not its dir node")
            return reply(-1, WireErrno.einval)
        }
        let answer: UInt32
        if let slot = rsbs.slot(of: name, hash: hash) {
            if rsbs[slot].master == 0 { rsbs[slot].master = sender }
            if rsbs[slot].tossedAt != nil { rsbs[slot].tossedAt = now }
            answer = rsbs[slot].master
        } else {
            var record = Rsb(name: name, hash: hash, lvbLength: lvbLength)
            record.master = sender
            record.tossedAt = now
            rsbs.insert(record)
            answer = sender
        }
        if answer == us {
            receiveRequest(message, from: sender, replyType: .requestReply)
        } else {
            reply(Int32(bitPattern: answer), 0)
        }
    }

    /// REMOVE (§3.9.4): forget an inactive record naming the sender.
    mutating func receiveRemove(_ message: DLMMessage, from sender: UInt32) {
        let name = LockMessages.extraBytes(message)
        guard name.count <= WireLimits.maxResourceNameLength else { return }
        guard directoryNode(hash: message.hash) == us else {
            log("remove \(printable(name)) from \(sender): bad nodeid (not dir)")
            return
        }
        guard let slot = rsbs.slot(of: name) else {
            log("remove \(printable(name)) from \(sender): no record")
            return
        }
        let r = rsbs[slot]
        if r.tossedAt == nil {
            log("remove \(printable(name)) from \(sender): rsb active, ignored")
        } else if r.master != sender {
            log("remove \(printable(name)) from \(sender): record names \(r.master), ignored")
        } else {
            rsbs.remove(slot)
        }
    }

    /// PURGE (§4.14): release our orphans of `m_pid` (0: all); `m_nodeid` is not checked.
    mutating func receivePurge(_ message: DLMMessage, from sender: UInt32) {
        log("purge from \(sender) for node \(message.nodeID) pid \(message.pid): \(orphans.count) orphan(s)")
        purgeOrphans(pid: message.pid)
    }

    // MARK: - Owner side

    /// A process copy named by `m_remid` (or `m_lkid` for LOOKUP_REPLY), if it exists.
    /// The process copy a master's reply or callback names in `m_remid`, checked as
    /// `validate_message` does; nil (logged) for an unknown lock or a rejected message. Only a
    /// REQUEST_REPLY may be for a lock still on no queue (a request in flight).
    mutating func replyTarget(_ message: DLMMessage, _ type: MessageType, from sender: UInt32,
                              awaitingRequestReply: Bool = false) -> Lkb? {
        guard let (lkb, lock) = processCopy(message.remid), lkb.isDetached == awaitingRequestReply else {
            log("\(type.description.lowercased()) from \(sender): no lock \(String(message.remid, radix: 16))")
            return nil
        }
        guard validate(message, type, lkb: lkb, lock: lock, sender: sender) else {
            invalid(message, from: sender)
            return nil
        }
        return lkb
    }

    func processCopy(_ id: UInt32) -> (Lkb, LockEntry)? {
        guard let lkb = lkbs[id], !lkb.isMasterCopy, let lock = entry(id) else { return nil }
        return (lkb, lock)
    }

    /// Owner-side flag intake (§4.0.7).
    mutating func intake(_ id: UInt32, _ message: DLMMessage) {
        updateEntry(id) { Self.intake(&$0, message) }
    }

    static func intake(_ e: inout LockEntry, _ message: DLMMessage) {
        e.statusFlags = LockStatusFlags(rawValue: message.sbflags)
        e.wireFlags = (e.wireFlags & ~LockBlockFlags.distributedMask) | (message.flags & LockBlockFlags.distributedMask)
    }

    /// `munge_altmode`: granted in the alternate mode.
    mutating func mungeAltMode(_ id: UInt32, _ message: DLMMessage) {
        guard message.sbflags & StatusBlockFlags.altMode != 0 else { return }
        updateEntry(id) { Self.mungeAltMode(&$0, message) }
    }

    static func mungeAltMode(_ e: inout LockEntry, _ message: DLMMessage) {
        guard message.sbflags & StatusBlockFlags.altMode != 0 else { return }
        if e.flags.contains(.altPR) {
            e.requestedMode = .pr
        } else if e.flags.contains(.altCW) {
            e.requestedMode = .cw
        }
    }

    mutating func receiveRequestReply(_ message: DLMMessage, from sender: UInt32) {
        guard let lkb = replyTarget(message, .requestReply, from: sender, awaitingRequestReply: true) else { return }
        let id = lkb.id
        let slot = lkb.slot
        let waited = lkb.waitType
        let result = message.result
        guard removeFromWaiters(id, .requestReply, result: result) else { return }
        if waited == .lookup {
            rsbs[slot].master = sender
            updateEntry(id) { $0.nodeID = Int32(bitPattern: sender) }
        }
        switch result {
        case WireErrno.eagain:
            queueCast(id, .wouldBlock, lock: entry(id), endOfLife: true)
            freeLkb(id)
            confirmMaster(slot, result: result)
        case 0, WireErrno.einprogress:
            // The request's entry is detached: change it once, then queue it.
            guard var pc = lkbs.takeDetached(id) else {
                log("request_reply \(String(id, radix: 16)): the lock has no entry")
                return
            }
            Self.intake(&pc, message)
            pc.remoteID = message.lkid
            pc.nodeID = Int32(bitPattern: sender)
            Self.mungeAltMode(&pc, message)
            pc.grantedMode = .iv
            rsbs[slot].resource.insert(pc, status: .waiting)
            if result == 0 {
                let granted = rsbs[slot].resource.grantProcessCopy(
                    id, extra: LockMessages.extraBytes(message), lvbSeq: message.lvbseq)
                queueCast(id, .granted, lock: granted)
            }
            confirmMaster(slot, result: result)
        case WireErrno.ebadr, WireErrno.enotblk:
            log("request_reply \(String(id, radix: 16)) \(WireErrno.names[result] ?? "\(result)") from \(sender): redo lookup")
            if rsbs[slot].master != us { rsbs[slot].master = 0 }
            updateEntry(id) { $0.nodeID = -1 }
            guard let current = lkbs[id] else { return }
            if current.overlapUnlock || current.overlapCancel {
                queueCast(id, current.overlapUnlock ? .unlocked : .cancelled, lock: entry(id), endOfLife: true)
                freeLkb(id)
                confirmMaster(slot, result: result)
            } else {
                requestLock(id)
                if rsbs.rsb(at: slot)?.master == us { confirmMaster(slot, result: 0) }
            }
        default:
            // KQ: the kernel only logs and leaves the lock stuck; we complete it with the error.
            log("request_reply \(String(id, radix: 16)) unexpected result \(result) from \(sender)")
            queueCast(id, LockResult(rawValue: result) ?? .invalid, lock: entry(id), endOfLife: true)
            freeLkb(id)
            confirmMaster(slot, result: WireErrno.eagain)
        }
        // Overlap follow-up (§4.5 step 5).
        guard let after = lkbs[id] else { return }
        let unlock = after.overlapUnlock
        let cancel = after.overlapCancel
        lkbs.modify(id) { lkb in
            lkb.overlapUnlock = false
            lkb.overlapCancel = false
        }
        if unlock && (result == 0 || result == WireErrno.einprogress) {
            guard let master = rsbs.rsb(at: slot)?.master else { return }
            if master == us {
                unlockLocal(id, rsb: slot)
            } else if addToWaiters(id, .unlock, node: master) == nil, let pc = entry(id) {
                sendLockMessage(.unlock, lock: pc, rsb: slot, to: master)
            }
        } else if cancel && result == WireErrno.einprogress {
            guard let master = rsbs.rsb(at: slot)?.master else { return }
            if master == us {
                cancelLocal(id, rsb: slot)
            } else if addToWaiters(id, .cancel, node: master) == nil, let pc = entry(id) {
                sendLockMessage(.cancel, lock: pc, rsb: slot, to: master)
            }
        }
    }

    mutating func receiveConvertReply(_ message: DLMMessage, from sender: UInt32) {
        guard let lkb = replyTarget(message, .convertReply, from: sender) else { return }
        let id = lkb.id
        let slot = lkb.slot
        let result = message.result
        guard removeFromWaiters(id, .convertReply, result: result) else { return }
        switch result {
        case 0:
            intake(id, message)
            if message.sbflags & StatusBlockFlags.demoted != 0 { updateEntry(id) { $0.grantedMode = .nl } }
            // The kernel's convert-reply path does not munge ALTMODE (only request reply and GRANT do);
            // we do, so that the owner's mode matches the master's.
            mungeAltMode(id, message)
            let granted = rsbs[slot].resource.grantProcessCopy(
                id, extra: LockMessages.extraBytes(message), lvbSeq: message.lvbseq)
            queueCast(id, .granted, lock: granted)
        case WireErrno.einprogress:
            intake(id, message)
            if message.sbflags & StatusBlockFlags.demoted != 0 { updateEntry(id) { $0.grantedMode = .nl } }
            rsbs[slot].resource.moveLock(id, to: .convert)
        case WireErrno.edeadlk:
            intake(id, message)
            _ = rsbs[slot].resource.revertLock(id)
            queueCast(id, .deadlock, lock: entry(id))
        case WireErrno.eagain:
            // KQ: the lock stays granted in its old mode and keeps its rqmode.
            queueCast(id, .wouldBlock, lock: entry(id))
        default:
            // KQ: the kernel only logs; we complete the conversion with the error (lock stays granted).
            log("convert_reply \(String(id, radix: 16)) unexpected result \(result) from \(sender)")
            _ = rsbs[slot].resource.revertLock(id)
            queueCast(id, LockResult(rawValue: result) ?? .invalid, lock: entry(id))
        }
    }

    mutating func receiveUnlockReply(_ message: DLMMessage, from sender: UInt32) {
        guard let lkb = replyTarget(message, .unlockReply, from: sender) else { return }
        let id = lkb.id
        guard removeFromWaiters(id, .unlockReply, result: message.result) else { return }
        switch message.result {
        case WireErrno.dlmEUnlock:
            intake(id, message)
            queueCast(id, .unlocked, lock: entry(id), endOfLife: true)
            freeLkb(id)
        default:
            // KQ: -ENOENT is only logged by the kernel (the master lost the lock); we end the lock.
            log("unlock_reply \(String(id, radix: 16)) result \(message.result) from \(sender)")
            queueCast(id, LockResult(rawValue: message.result) ?? .invalid, lock: entry(id), endOfLife: true)
            freeLkb(id)
        }
    }

    mutating func receiveCancelReply(_ message: DLMMessage, from sender: UInt32) {
        guard let lkb = replyTarget(message, .cancelReply, from: sender) else { return }
        let id = lkb.id
        guard removeFromWaiters(id, .cancelReply, result: message.result) else { return }
        switch message.result {
        case WireErrno.dlmECancel:
            intake(id, message)
            guard let (reverted, change) = rsbs[lkb.slot].resource.revertLock(id) else { return }
            switch change {
            case .removed:
                queueCast(id, .cancelled, lock: reverted, endOfLife: true)
                freeLkb(id)
            case .backToGranted, .none:
                queueCast(id, .cancelled, lock: reverted)
            }
        case 0:
            break  // already granted: its completion came with the GRANT / reply
        default:
            log("cancel_reply \(String(id, radix: 16)) result \(message.result) from \(sender)")
        }
    }

    mutating func receiveGrant(_ message: DLMMessage, from sender: UInt32) {
        guard let lkb = replyTarget(message, .grant, from: sender) else { return }
        let id = lkb.id
        intake(id, message)
        mungeAltMode(id, message)
        let granted = rsbs[lkb.slot].resource.grantProcessCopy(
            id, extra: LockMessages.extraBytes(message), lvbSeq: message.lvbseq)
        queueCast(id, .granted, lock: granted)
    }

    mutating func receiveBast(_ message: DLMMessage, from sender: UInt32) {
        guard let lkb = replyTarget(message, .bast, from: sender) else { return }
        guard let mode = LockMode(rawValue: message.bastmode) else { return }
        updateEntry(lkb.id) { $0.highBast = mode }
        queueBast(lkb.id, mode)
    }

    mutating func receiveLookupReply(_ message: DLMMessage, from sender: UInt32) {
        guard let (lkb, _) = processCopy(message.lkid), lkb.isDetached else {
            log("lookup_reply from \(sender): no lock \(String(message.lkid, radix: 16))")
            return
        }
        let id = lkb.id
        let slot = lkb.slot
        guard removeFromWaiters(id, .lookupReply, result: message.result) else { return }
        let answer = message.nodeID
        if answer == Int32(bitPattern: us) {
            rsbs[slot].master = us
            rsbs[slot].firstLkid = 0
        } else if answer == -1 {
            log("lookup_reply \(printable(rsbs[slot].name)) from \(sender): master unknown (membership disagreement)")
            rsbs[slot].master = 0
            updateEntry(id) { $0.nodeID = -1 }
        } else {
            rsbs[slot].master = UInt32(bitPattern: answer)
        }
        guard let current = lkbs[id] else { return }
        if current.overlapUnlock || current.overlapCancel {
            queueCast(id, current.overlapUnlock ? .unlocked : .cancelled, lock: entry(id), endOfLife: true)
            freeLkb(id)
            // Deliberate difference (§4.13 KQ): hand the lookup over to the next parked lock instead of
            // leaving first_lkid naming the freed lock.
            if answer != Int32(bitPattern: us) { confirmMaster(slot, result: WireErrno.eagain) }
        } else {
            requestLock(id)
        }
        if answer == Int32(bitPattern: us) { processLookupList(slot) }
    }
}
