import DLMTransport

/// The lock state of one resource (`rsb`) on the node that decides its grants: the three queues,
/// the resource value block and its sequence number, and the flags the grant rules read. Master
/// discovery (master/dir node ids, lookup list) is not part of this type; the message layer keeps it
/// next to it. Sans-IO: every operation returns what happened and what the caller must send or
/// deliver (see `GrantEngine.swift`).
public struct Resource: Sendable {
    /// `res_name`.
    public var name: [UInt8]
    /// The lockspace's lvblen; every LVB buffer has exactly this size (it may be 0).
    public let lvbLength: Int
    /// Granted locks not converting. Insertion follows the kernel's `lkb_add_ordered` (KQ: meant to
    /// sort by granted mode, but compares the queued locks' *requested* mode, so a new grant goes
    /// before the first lock whose rqmode is below the new grmode — in practice the head).
    public private(set) var grantQueue: [LockEntry] = []
    /// Granted locks waiting to change mode (FIFO; head with HEADQUE).
    public private(set) var convertQueue: [LockEntry] = []
    /// New requests not yet granted (FIFO; head with HEADQUE).
    public private(set) var waitQueue: [LockEntry] = []
    /// `res_lvbptr`: nil until a value is written (and again after `discardValueBlock()`).
    public var lvb: [UInt8]?
    /// `res_lvbseq`.
    public var lvbSeq: UInt32 = 0
    /// `RSB_VALNOTVALID`.
    public var valueNotValid = false
    /// `RSB_RECOVER_GRANT`: the post-recovery grant pass ignores conversion order.
    public var recoverGrant = false

    public init(name: [UInt8] = [], lvbLength: Int) {
        precondition(lvbLength >= 0)
        self.name = name
        self.lvbLength = lvbLength
    }

    /// No lock on any queue.
    public var isEmpty: Bool { grantQueue.isEmpty && convertQueue.isEmpty && waitQueue.isEmpty }
    /// Number of locks on the three queues.
    public var lockCount: Int { grantQueue.count + convertQueue.count + waitQueue.count }
    /// All locks: grant, convert, then wait queue, each in queue order.
    public var allLocks: [LockEntry] { grantQueue + convertQueue + waitQueue }

    /// The lock with this id, wherever it is queued.
    public func lock(_ id: UInt32) -> LockEntry? {
        locate(id).map { self[$0] }
    }

    /// The queue in the kernel's order.
    public func queue(_ status: LockStatus) -> [LockEntry] {
        switch status {
        case .granted: return grantQueue
        case .convert: return convertQueue
        case .waiting: return waitQueue
        }
    }

    /// The resource went inactive: the kernel frees its LVB buffer (KQ, locking.md §1.6); the
    /// sequence number and VALNOTVALID survive on the inactive rsb.
    public mutating func discardValueBlock() {
        lvb = nil
    }

    // MARK: - Queue primitives (`add_lkb`, `del_lkb`, `move_lkb`)

    struct Location: Equatable {
        var status: LockStatus
        var index: Int
    }

    func locate(_ id: UInt32) -> Location? {
        if let i = grantQueue.firstIndex(where: { $0.id == id }) { return Location(status: .granted, index: i) }
        if let i = convertQueue.firstIndex(where: { $0.id == id }) { return Location(status: .convert, index: i) }
        if let i = waitQueue.firstIndex(where: { $0.id == id }) { return Location(status: .waiting, index: i) }
        return nil
    }

    subscript(location: Location) -> LockEntry {
        get {
            switch location.status {
            case .granted: return grantQueue[location.index]
            case .convert: return convertQueue[location.index]
            case .waiting: return waitQueue[location.index]
            }
        }
        set {
            switch location.status {
            case .granted: grantQueue[location.index] = newValue
            case .convert: convertQueue[location.index] = newValue
            case .waiting: waitQueue[location.index] = newValue
            }
        }
    }

    /// `add_lkb`: put a lock that is on no queue onto `status`'s queue.
    mutating func add(_ lock: LockEntry, to status: LockStatus) {
        var lock = lock
        lock.status = status
        switch status {
        case .waiting:
            if lock.flags.contains(.headQue) { waitQueue.insert(lock, at: 0) } else { waitQueue.append(lock) }
        case .convert:
            if lock.flags.contains(.headQue) { convertQueue.insert(lock, at: 0) } else { convertQueue.append(lock) }
        case .granted:
            // lkb_add_ordered(grmode): before the first entry whose *rqmode* is below the new grmode.
            if let at = grantQueue.firstIndex(where: { $0.requestedMode.rawValue < lock.grantedMode.rawValue }) {
                grantQueue.insert(lock, at: at)
            } else {
                grantQueue.append(lock)
            }
        }
    }

    /// `del_lkb`: take the lock off its queue; its status becomes nil.
    @discardableResult
    mutating func remove(at location: Location) -> LockEntry {
        var lock: LockEntry
        switch location.status {
        case .granted: lock = grantQueue.remove(at: location.index)
        case .convert: lock = convertQueue.remove(at: location.index)
        case .waiting: lock = waitQueue.remove(at: location.index)
        }
        lock.status = nil
        return lock
    }

    /// `move_lkb`: store `lock` (the current value of the entry at `location`) on another queue.
    mutating func move(_ lock: LockEntry, from location: Location, to status: LockStatus) {
        remove(at: location)
        add(lock, to: status)
    }

    // MARK: - Raw access for the message layer and recovery (process copies, rebuilt master copies)

    /// Put a lock on a queue with the kernel's insertion rules (`add_lkb`). Used for process copies
    /// on an owner and for locks rebuilt by recovery; the grant rules are not evaluated.
    public mutating func insert(_ lock: LockEntry, status: LockStatus) {
        precondition(locate(lock.id) == nil, "lock \(lock.id) already queued")
        add(lock, to: status)
    }

    /// Take a lock off its queue without any LVB or grant processing (`del_lkb`).
    @discardableResult
    public mutating func removeLock(_ id: UInt32) -> LockEntry? {
        guard let location = locate(id) else { return nil }
        return remove(at: location)
    }

    /// Change a queued lock's fields in place (not its queue).
    @discardableResult
    public mutating func update(_ id: UInt32, _ body: (inout LockEntry) -> Void) -> Bool {
        guard let location = locate(id) else { return false }
        var lock = self[location]
        let status = lock.status
        body(&lock)
        lock.status = status
        self[location] = lock
        return true
    }

    /// `move_lkb` for a process copy: the owner mirrors the master's answer (e.g. CONVERT_REPLY
    /// -EINPROGRESS moves the pc to its convert queue).
    @discardableResult
    public mutating func moveLock(_ id: UInt32, to status: LockStatus) -> Bool {
        guard let location = locate(id) else { return false }
        move(self[location], from: location, to: status)
        return true
    }

    // MARK: - Value block rules (locking.md §2.3)

    /// Copy an LVB received or supplied for a lock into its buffer the way `receive_lvb` does:
    /// allocate a zeroed buffer if missing, then copy `min(count, lvbLength)` bytes.
    func storing(_ bytes: [UInt8], into buffer: [UInt8]?) -> [UInt8] {
        var buffer = buffer ?? [UInt8](repeating: 0, count: lvbLength)
        if buffer.count != lvbLength {
            buffer = Array(buffer.prefix(lvbLength)) + [UInt8](repeating: 0, count: max(0, lvbLength - buffer.count))
        }
        let n = min(bytes.count, lvbLength)
        buffer.replaceSubrange(0..<n, with: bytes.prefix(n))
        return buffer
    }

    /// A buffer normalised to lvbLength bytes (a supplied LVB that is too short is zero-padded).
    func normalised(_ buffer: [UInt8]?) -> [UInt8]? {
        guard let buffer else { return nil }
        return buffer.count == lvbLength ? buffer : storing(buffer, into: nil)
    }

    /// `set_lvb_lock`: applied on a master or local copy when it is granted, before its modes change.
    mutating func applyLVBOnGrant(_ lock: inout LockEntry) {
        switch LockMode.lvbOperation(granted: lock.grantedMode, requested: lock.requestedMode) {
        case .read:
            guard lock.lvb != nil, lock.flags.contains(.valBlk), let resourceLVB = lvb else { return }
            lock.lvb = resourceLVB
            lock.lvbSeq = lvbSeq
        case .write:
            if lock.flags.contains(.ivValBlk) {
                valueNotValid = true
                return
            }
            guard let lockLVB = lock.lvb, lock.flags.contains(.valBlk) else { return }
            lvb = lockLVB
            lvbSeq &+= 1
            lock.lvbSeq = lvbSeq
            valueNotValid = false
        case .none:
            break
        }
        if valueNotValid { lock.statusFlags.insert(.valueNotValid) }
    }

    /// `set_lvb_unlock`: a PW/EX lock being unlocked writes (or invalidates) the resource LVB.
    mutating func applyLVBOnUnlock(_ lock: LockEntry) {
        guard lock.grantedMode.rawValue >= LockMode.pw.rawValue else { return }
        if lock.flags.contains(.ivValBlk) {
            valueNotValid = true
            return
        }
        guard let lockLVB = lock.lvb, lock.flags.contains(.valBlk) else { return }
        lvb = lockLVB
        lvbSeq &+= 1
        valueNotValid = false
    }

    // MARK: - Process copy (owner side)

    /// `grant_lock_pc`: the owner applies a grant from REQUEST_REPLY 0, CONVERT_REPLY 0 or GRANT to
    /// its process copy: if the lock has a buffer and VALBLK and the table (the pc's modes before the
    /// grant, after DEMOTED/ALTMODE munging) says R, copy `min(extra.count, lvbLength)` bytes of the
    /// message's LVB and take its sequence number; then grant in place (`_grant_lock`).
    @discardableResult
    public mutating func grantProcessCopy(_ id: UInt32, extra: [UInt8], lvbSeq messageSeq: UInt32) -> LockEntry? {
        guard let location = locate(id) else { return nil }
        var lock = self[location]
        if let buffer = lock.lvb, lock.flags.contains(.valBlk),
            LockMode.lvbOperation(granted: lock.grantedMode, requested: lock.requestedMode) == .read
        {
            var buffer = buffer
            let n = min(extra.count, lvbLength, buffer.count)
            buffer.replaceSubrange(0..<n, with: extra.prefix(n))
            lock.lvb = buffer
            lock.lvbSeq = messageSeq
        }
        finishGrant(&lock, at: location)
        return self.lock(id)
    }

    /// `_grant_lock`: `grmode ← rqmode`, `rqmode ← IV`, `highbast ← 0`, moving the lock to the
    /// grant queue when the mode changes (a same-mode grant of a lock already on the grant queue
    /// keeps its place, as in the kernel).
    ///
    /// Deliberate difference: the kernel does not move a *queued* lock whose grant keeps its mode
    /// (a queued CW→x conversion with ALTCW, or PR→x with ALTPR, granted in its alternate mode after
    /// QUECVT or NODLCKWT queued it). It then stays on the convert queue with rqmode IV, is "granted"
    /// again by the restarted pass, and `grant_pending_convert` loops forever sending GRANTs. Here the
    /// lock goes to the grant queue like any other grant.
    mutating func finishGrant(_ lock: inout LockEntry, at location: Location?) {
        if lock.grantedMode != lock.requestedMode || (location.map { $0.status != .granted } ?? true) {
            lock.grantedMode = lock.requestedMode
            lock.requestedMode = .iv
            lock.highBast = .nl
            if let location {
                move(lock, from: location, to: .granted)
            } else {
                add(lock, to: .granted)
            }
        } else {
            lock.requestedMode = .iv
            lock.highBast = .nl
            if let location { self[location] = lock }
        }
    }

    /// `revert_lock` (cancel; also the owner's `revert_lock_pc`): `rqmode ← IV`; a converting lock
    /// goes back to the grant queue at its old mode; a waiting lock is removed (returned, with
    /// status nil). Returns nil if the lock is unknown.
    public mutating func revertLock(_ id: UInt32) -> (lock: LockEntry, change: RevertChange)? {
        guard let location = locate(id) else { return nil }
        var lock = self[location]
        lock.requestedMode = .iv
        switch location.status {
        case .granted:
            self[location] = lock
            return (lock, .none)
        case .convert:
            move(lock, from: location, to: .granted)
            return (self.lock(id)!, .backToGranted)
        case .waiting:
            remove(at: location)
            lock.grantedMode = .iv
            lock.status = nil
            return (lock, .removed)
        }
    }

    /// What `revertLock` did (the kernel's 0 / 1 / -1).
    public enum RevertChange: Sendable, Equatable {
        case none
        case backToGranted
        case removed
    }
}
