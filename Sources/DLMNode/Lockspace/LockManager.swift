import DLMTransport
import NIOCore

/// The lock manager of one lockspace on one node, sans-IO (locking.md §1–§7): local API calls,
/// received `DLM_MSG`s, membership and timer ticks go in; messages to send, completion and blocking
/// callbacks for local clients, and log lines come out. Time is a parameter (`now`), never read.
///
/// It keeps the node's resources (`rsb`: master state, directory records, cached masters), its locks
/// (local copies, process copies of locks mastered elsewhere, master copies of other nodes' locks)
/// with ids allocated like the kernel's (lowest free non-zero integer), the waiters (one outstanding
/// operation per lock, plus an overlapping unlock/cancel), the lookup serialisation (`first_lkid` and
/// the lookup list) and the inactive ("toss") list with REMOVE after `toss_secs`. Grants, conversions,
/// queues and value blocks are the grant engine's (`Resource`); this type turns its outcomes into
/// messages and callbacks.
///
/// Recovery (node failures, RCOM) is in `LockManager+Recovery.swift`.
public struct LockManager: Sendable {
    // MARK: - Public types

    public struct Configuration: Sendable {
        /// `h_lockspace`.
        public var lockspaceID: UInt32
        public var ourNodeID: UInt32
        /// The lockspace's lvblen.
        public var lvbLength: Int
        public var protocolVersion: ProtocolVersion
        /// `toss_secs`: how long an unused rsb is kept before the scan reaps it.
        public var tossTime: Duration
        /// `scan_secs`: the interval of the inactive-rsb scan.
        public var scanInterval: Duration

        public init(
            lockspaceID: UInt32, ourNodeID: UInt32, lvbLength: Int, protocolVersion: ProtocolVersion = .v3_2,
            tossTime: Duration = .seconds(10), scanInterval: Duration = .seconds(5)
        ) {
            self.lockspaceID = lockspaceID
            self.ourNodeID = ourNodeID
            self.lvbLength = lvbLength
            self.protocolVersion = protocolVersion
            self.tossTime = tossTime
            self.scanInterval = scanInterval
        }
    }

    /// A lockspace member and its directory weight.
    public struct Member: Sendable, Equatable {
        public var nodeID: UInt32
        public var weight: Int
        public init(nodeID: UInt32, weight: Int = 1) {
            self.nodeID = nodeID
            self.weight = weight
        }
    }

    /// A completion ("AST") for a local client: `sb_status`, the lock's granted mode afterwards (IV at
    /// end of life), `sb_flags` and the lock's value block buffer.
    public struct Completion: Sendable, Equatable {
        public var tag: UInt64
        public var lkid: UInt32
        public var status: LockResult
        public var mode: LockMode
        public var statusFlags: LockStatusFlags
        public var lvb: [UInt8]?
        /// The lock id is no longer valid after this completion.
        public var endOfLife: Bool
    }

    public enum Action: Sendable, Equatable {
        /// Send this (fully formed) message to node `to`.
        case send(DLMMessage, to: UInt32)
        case completion(Completion)
        /// A blocking callback: somebody waits for `mode`.
        case blocking(tag: UInt64, lkid: UInt32, mode: LockMode)
        case log(String)
    }

    /// The synchronous answer of an API call (`dlm_lock`/`dlm_unlock`'s return value): nil error =
    /// accepted (for lock/convert exactly one completion follows). `lkid` names the lock.
    public struct CallResult: Sendable {
        public var error: LockResult?
        public var lkid: UInt32
        public var actions: [Action]
    }

    // MARK: - Internal state

    /// One lock (`lkb`) as the message layer sees it. The `LockEntry` lives on the rsb's queues while
    /// the lock is queued, and in `detached` while it is on no queue (a new request in flight or parked).
    struct Lkb: Sendable {
        var id: UInt32
        var name: [UInt8]
        var isMasterCopy: Bool
        var tag: UInt64
        var detached: LockEntry?
        /// `lkb_wait_type`: the message whose reply is awaited.
        var waitType: MessageType?
        var waitCount = 0
        var waitNode: UInt32 = 0
        var overlapUnlock = false
        var overlapCancel = false
        /// On the rsb's lookup list.
        var parked = false
        var callbacks = CallbackQueue()
        /// The most recent call supplied a blocking callback (the owner drops BASTs otherwise, §7.3).
        var deliverBlocking = false
    }

    struct Rsb: Sendable {
        var name: [UInt8]
        var hash: UInt32
        var resource: Resource
        /// `res_master_nodeid`: 0 = unknown; our id = we are master.
        var master: UInt32 = 0
        var firstLkid: UInt32 = 0
        var lookupList: [UInt32] = []
        var masterUncertain = false
        /// Inactive since (nil = active).
        var tossedAt: Duration?
        /// Locks referring to this rsb (any kind).
        var refs = 0
    }

    public let config: Configuration
    var rsbs: [ResourceName: Rsb] = [:]
    var lkbs: [UInt32: Lkb] = [:]
    public private(set) var members: [Member] = []
    var memberIDs: Set<UInt32> = []
    /// Freed ids, in descending order (the last is the lowest).
    var freeIDs: [UInt32] = []
    var nextID: UInt32 = 1
    var lastScan: Duration?
    var now: Duration = .zero
    var out: [Action] = []
    /// Recovery bookkeeping (`LockManager+Recovery.swift`).
    var recovery = LockRecoveryState()

    var us: UInt32 { config.ourNodeID }
    var lvbLength: Int { config.lvbLength }

    public init(_ config: Configuration, members: [Member] = []) {
        self.config = config
        self.members = members.sorted { $0.nodeID < $1.nodeID }
        self.memberIDs = Set(members.map(\.nodeID))
    }

    // MARK: - Membership and time

    /// Set the lockspace members (as recovery leaves them). Directory placement follows immediately.
    public mutating func setMembers(_ newMembers: [Member], now: Duration) -> [Action] {
        self.now = now
        members = newMembers.sorted { $0.nodeID < $1.nodeID }
        memberIDs = Set(members.map(\.nodeID))
        return drain()
    }

    /// `dlm_hash2nodeid`: the directory node of a name hash.
    public func directoryNode(hash: UInt32) -> UInt32 {
        if members.count <= 1 { return us }
        return DLMTransport.directoryNode(hash: hash, members: members.map { ($0.nodeID, $0.weight) }) ?? us
    }

    /// A timer tick: runs the inactive-rsb scan every `scanInterval` (§3.9.2).
    public mutating func tick(now: Duration) -> [Action] {
        self.now = now
        if let last = lastScan, now - last < config.scanInterval { return drain() }
        lastScan = now
        scanToss()
        return drain()
    }

    /// §3.9.2: reap inactive rsbs older than toss_secs; a master that is not the dir node sends REMOVE.
    mutating func scanToss() {
        let names = rsbs.sortedNames
        for name in names {
            guard let r = rsbs[name], let tossed = r.tossedAt else { continue }
            let dir = directoryNode(hash: r.hash)
            if dir == us && r.master != us { continue }  // a directory record: never reaped by time
            if now < tossed + config.tossTime { continue }
            rsbs[name] = nil
            if r.master == us && dir != us {
                send(LockMessages.remove(name: name, hash: r.hash, header: header()), to: dir)
                log("remove \(printable(name)) → dir \(dir)")
            }
        }
    }

    // MARK: - Helpers

    func header() -> DLMHeader {
        LockMessages.header(lockspace: config.lockspaceID, sender: us, version: config.protocolVersion)
    }

    mutating func drain() -> [Action] {
        let actions = out
        out = []
        return actions
    }

    mutating func send(_ message: DLMMessage, to node: UInt32) {
        out.append(.send(message, to: node))
    }

    mutating func log(_ line: String) {
        out.append(.log(line))
    }

    func printable(_ name: [UInt8]) -> String {
        String(decoding: name, as: UTF8.self)
    }

    /// The lowest free non-zero id (as the kernel's idr/xarray allocation).
    mutating func allocateID() -> UInt32 {
        if let id = freeIDs.popLast() { return id }
        defer { nextID += 1 }
        return nextID
    }

    mutating func releaseID(_ id: UInt32) {
        if id == nextID - 1 {
            nextID -= 1
            // Fold freed ids that now sit at the top back into the counter.
            while let first = freeIDs.first, first == nextID - 1 {
                freeIDs.removeFirst()
                nextID -= 1
            }
            return
        }
        // Keep descending order.
        var lo = 0
        var hi = freeIDs.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if freeIDs[mid] > id { lo = mid + 1 } else { hi = mid }
        }
        freeIDs.insert(id, at: lo)
    }

    func normalisedLVB(_ lvb: [UInt8]?) -> [UInt8]? {
        guard var lvb else { return nil }
        if lvb.count > lvbLength { lvb = Array(lvb.prefix(lvbLength)) }
        if lvb.count < lvbLength { lvb += [UInt8](repeating: 0, count: lvbLength - lvb.count) }
        return lvb
    }

    /// The lock's entry, wherever it is.
    func entry(_ id: UInt32) -> LockEntry? {
        guard let lkb = lkbs[id] else { return nil }
        if let detached = lkb.detached { return detached }
        return rsbs[lkb.name]?.resource.lock(id)
    }

    /// Change the lock's entry, wherever it is.
    mutating func updateEntry(_ id: UInt32, _ body: (inout LockEntry) -> Void) {
        guard var lkb = lkbs[id] else { return }
        if var detached = lkb.detached {
            body(&detached)
            lkb.detached = detached
            lkbs[id] = lkb
        } else {
            rsbs[lkb.name]?.resource.update(id, body)
        }
    }

    /// Forget a lock: free its id, drop the rsb reference (the rsb goes inactive with its last lock).
    mutating func freeLkb(_ id: UInt32) {
        guard let lkb = lkbs.removeValue(forKey: id) else { return }
        releaseID(id)
        if lkb.detached == nil { rsbs[lkb.name]?.resource.removeLock(id) }
        if lkb.parked { rsbs[lkb.name]?.lookupList.removeAll { $0 == id } }
        if var r = rsbs[lkb.name] {
            r.refs -= 1
            rsbs[lkb.name] = r
            tossIfUnused(lkb.name)
        }
    }

    /// §1.6: an rsb nobody references becomes inactive; its LVB buffer is freed (KQ).
    mutating func tossIfUnused(_ name: [UInt8]) {
        guard var r = rsbs[name], r.refs == 0, r.tossedAt == nil else { return }
        r.tossedAt = now
        r.resource.discardValueBlock()
        r.firstLkid = 0
        r.masterUncertain = false
        rsbs[name] = r
    }

    // MARK: - Callbacks

    /// `queue_cast`: a completion for a local lock (deliver in generation order, coalesced per
    /// `CallbackQueue`).
    mutating func queueCast(_ id: UInt32, _ status: LockResult, lock: LockEntry?, endOfLife: Bool = false) {
        guard var lkb = lkbs[id] else { return }
        let mode = endOfLife ? LockMode.iv : (lock?.grantedMode ?? .iv)
        let flags = lock?.statusFlags ?? []
        lkb.callbacks.enqueue(.completion(status, mode: mode, flags: flags))
        _ = lkb.callbacks.dequeue()
        lkbs[id] = lkb
        out.append(
            .completion(
                Completion(
                    tag: lkb.tag, lkid: id, status: status, mode: mode, statusFlags: flags, lvb: lock?.lvb,
                    endOfLife: endOfLife)))
    }

    /// `queue_bast` for a local or process copy.
    mutating func queueBast(_ id: UInt32, _ mode: LockMode) {
        guard var lkb = lkbs[id], lkb.deliverBlocking else { return }
        let queued = lkb.callbacks.enqueue(.blocking(mode))
        if queued { _ = lkb.callbacks.dequeue() }
        lkbs[id] = lkb
        if queued { out.append(.blocking(tag: lkb.tag, lkid: id, mode: mode)) }
    }

    /// Carry out the grant engine's effects: on a master copy GRANT/BAST messages, on a local lock
    /// callbacks.
    mutating func runEffects(_ effects: [LockEffect], rsb name: [UInt8]) {
        guard let hash = rsbs[name]?.hash else { return }
        for effect in effects {
            switch effect {
            case .grant(let lock):
                guard let lkb = lkbs[lock.id] else { continue }
                if lkb.isMasterCopy {
                    let message = LockMessages.lockMessage(
                        .grant, lock: lock, hash: hash, name: name, lvbLength: lvbLength, header: header())
                    send(message, to: UInt32(bitPattern: lock.nodeID))
                } else {
                    queueCast(lock.id, .granted, lock: lock)
                }
            case .blockingAST(let lock, let mode):
                guard let lkb = lkbs[lock.id] else { continue }
                if lkb.isMasterCopy {
                    let message = LockMessages.lockMessage(
                        .bast, lock: lock, hash: hash, name: name, lvbLength: lvbLength, header: header(), bastMode: mode)
                    send(message, to: UInt32(bitPattern: lock.nodeID))
                } else {
                    queueBast(lock.id, mode)
                }
            }
        }
    }

    // MARK: - find_rsb (§3.4)

    enum FindReason {
        case local
        case received(from: UInt32)
    }

    /// `find_rsb`: the rsb for `name`, activated, or the error the kernel returns.
    mutating func findRsb(_ name: [UInt8], _ reason: FindReason) -> Int32? {
        guard name.count <= WireLimits.maxResourceNameLength else { return WireErrno.einval }
        if var r = rsbs[name] {
            if r.tossedAt == nil { return nil }
            switch reason {
            case .received(let from):
                let fromDir = from == directoryNode(hash: r.hash)
                if r.master != us && !fromDir { return WireErrno.enotblk }
                if r.master != us && fromDir {
                    log("find_rsb \(printable(name)): dir \(from) sent a request, taking mastery from \(r.master)")
                    r.master = us
                    r.masterUncertain = false
                }
            case .local:
                if r.master != 0 && r.master != us {
                    r.masterUncertain = true
                    r.firstLkid = 0
                }
            }
            r.tossedAt = nil
            rsbs[name] = r
            return nil
        }
        let hash = JHash.hash(name)
        let dir = directoryNode(hash: hash)
        var r = Rsb(name: name, hash: hash, resource: Resource(name: name, lvbLength: lvbLength))
        switch reason {
        case .local:
            r.master = dir == us ? us : 0
        case .received(let from):
            guard from == dir || dir == us else { return WireErrno.ebadr }
            r.master = us
        }
        rsbs[name] = r
        return nil
    }

    // MARK: - Waiters (§6.1)

    /// `add_to_waiters`: nil on success, else the error (-EINVAL / -EBUSY).
    mutating func addToWaiters(_ id: UInt32, _ type: MessageType, node: UInt32) -> LockResult? {
        guard var lkb = lkbs[id] else { return .notFound }
        if lkb.overlapUnlock || (lkb.overlapCancel && type == .cancel) { return .invalid }
        if lkb.waitType != nil || lkb.overlapCancel {
            switch type {
            case .unlock: lkb.overlapUnlock = true
            case .cancel: lkb.overlapCancel = true
            default: return .busy
            }
            lkb.waitCount += 1
        } else {
            lkb.waitType = type
            lkb.waitCount = 1
            lkb.waitNode = node
        }
        lkbs[id] = lkb
        return nil
    }

    /// `remove_from_waiters` for a reply of `type` with `result`; false = the reply is not expected
    /// (ignore it).
    mutating func removeFromWaiters(_ id: UInt32, _ type: MessageType, result: Int32) -> Bool {
        guard var lkb = lkbs[id] else { return false }
        var overlapDone = false
        if type == .unlockReply && lkb.overlapUnlock {
            lkb.overlapUnlock = false
            overlapDone = true
        } else if type == .cancelReply && lkb.overlapCancel {
            lkb.overlapCancel = false
            overlapDone = true
        } else if type == .cancelReply && lkb.waitType != .cancel {
            log("remwait \(String(id, radix: 16)) cancel_reply wait_type \(lkb.waitType.map { "\($0)" } ?? "0")")
            return false
        } else if type == .convertReply && lkb.waitType == .convert && result == 0 && lkb.overlapCancel {
            // The conversion was granted: the outstanding cancel is moot; drop its count now.
            lkb.overlapCancel = false
            lkb.waitType = nil
            lkb.waitCount -= 1
        } else if lkb.waitType != nil {
            lkb.waitType = nil
        } else {
            log("remwait error \(String(id, radix: 16)) reply \(type) wait_type 0")
            return false
        }
        if overlapDone && lkb.waitType != nil {
            log("remwait error \(String(id, radix: 16)) reply \(type) wait_type \(lkb.waitType!) overlap")
            lkb.waitCount -= 1
            lkb.waitType = nil
        }
        lkb.waitCount -= 1
        lkbs[id] = lkb
        return true
    }
}
