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
///
/// ## Storage (for code that reads or changes the tables, e.g. recovery)
///
/// * `rsbs: RsbTable` — the resources, in a slab addressed by `RsbSlot` (an `Int`), with an index
///   keyed by the name's jhash (`Rsb.hash`). A slot is stable while the rsb exists (an rsb with
///   locks is never removed) and reused after it is removed.
///   - look up: `rsbs.slot(of: name)` (or `slot(of:hash:)` when the jhash is known) → `RsbSlot?`;
///     `rsbs[name]` → `Rsb?` (a copy, dictionary-style; setting it inserts/replaces/removes).
///   - read / change in place: `rsbs[slot]` (get and `_modify`: `rsbs[slot].master = x`,
///     `rsbs[slot].resource.insert(...)`); only for slots that hold an rsb (it traps otherwise);
///     `rsbs.rsb(at: slot)` → `Rsb?` and `rsbs.contains(slot)` never trap.
///   - iterate: `rsbs.allSlots` (slot order), `rsbs.slotsSortedByName`, `rsbs.sortedNames`,
///     `rsbs.values` (copies), `rsbs.count`.
///   - add / remove: `rsbs.insert(Rsb(name:hash:lvbLength:))` → slot; `rsbs.remove(slot)`.
///   - the name is `rsb.name` (= `rsb.resource.name`); the grant engine's queues are
///     `rsb.resource` (`grantQueue`/`convertQueue`/`waitQueue`, `lock(id)`, `insert`, `removeLock`).
///   Mutate through `rsbs[slot]...` directly rather than copying an `Rsb` out and writing it back:
///   a live copy makes the next queue change copy the queue arrays.
/// * `lkbs: LockTable` — the locks by lock id (ids are the lowest free integers, as the kernel's
///   idr, so the table is a dense array indexed by `id - 1`).
///   - `lkbs[id]` → `Lkb?` (get/set; setting nil removes the lock and its detached entry);
///     `lkbs.modify(id) { $0.parked = true }` changes one in place; `lkbs.ids` (ascending),
///     `lkbs.values`, `lkbs.count`.
///   - a lock's rsb is `lkb.slot` (`rsbs[lkb.slot]`); its name `rsbName(of: id)`.
///   - its `LockEntry`: `entry(id)` wherever it is; `updateEntry(id) { ... }` changes it in place.
///     A lock on no queue (`lkb.isDetached`: request in flight or parked) keeps its entry in
///     `lkbs.detachedEntry(id)` / `lkbs.setDetached(id, entry)` / `lkbs.takeDetached(id)`; a
///     queued lock's entry is on `rsbs[lkb.slot].resource`'s queues.
///   - new ids come from `allocateID()` and go back with `releaseID(_:)` (`freeLkb` does both and
///     drops the rsb reference).
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
        /// No resource directory (`dlm_no_directory`, locking.md §3.10): the node a name hashes to
        /// is its master; no LOOKUP or REMOVE is sent.
        public var nodir: Bool

        public init(
            lockspaceID: UInt32, ourNodeID: UInt32, lvbLength: Int, protocolVersion: ProtocolVersion = .v3_2,
            tossTime: Duration = .seconds(10), scanInterval: Duration = .seconds(5), nodir: Bool = false
        ) {
            self.nodir = nodir
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
    /// the lock is queued, and in the lock table's detached entries while it is on no queue (a new
    /// request in flight or parked; `isDetached`).
    struct Lkb: Sendable {
        var id: UInt32
        /// The slot of the lock's rsb in `rsbs` (the rsb lives while the lock references it).
        var rsb: Int32
        var tag: UInt64
        var waitNode: UInt32 = 0
        var waitCount: Int16 = 0
        /// `lkb_wait_type`: the message whose reply is awaited.
        var waitType: MessageType?
        var isMasterCopy: Bool
        /// On no queue: the entry is `lkbs.detachedEntry(id)`.
        var isDetached = false
        var overlapUnlock = false
        var overlapCancel = false
        /// On the rsb's lookup list.
        var parked = false
        /// The most recent call supplied a blocking callback (the owner drops BASTs otherwise, §7.3).
        var deliverBlocking = false
        /// An orphan (`DLM_IFL_ORPHAN`): a PERSISTENT lock whose owner went away; on `orphans`, no
        /// callbacks are delivered for it (LockManager+Orphans.swift).
        var orphan = false
        /// The callback coalescing state (`lkb_last_cast`/`lkb_last_cb`, see `CallbackQueue`).
        var callbacks = CallbackQueue.Coalescing()

        init(id: UInt32, rsb: RsbSlot, isMasterCopy: Bool, tag: UInt64, deliverBlocking: Bool = false) {
            self.id = id
            self.rsb = Int32(rsb)
            self.isMasterCopy = isMasterCopy
            self.tag = tag
            self.deliverBlocking = deliverBlocking
        }

        var slot: RsbSlot { Int(rsb) }
    }

    struct Rsb: Sendable {
        /// The grant engine's state; its `name` is the rsb's name.
        var resource: Resource
        var hash: UInt32
        /// `res_master_nodeid`: 0 = unknown; our id = we are master.
        var master: UInt32 = 0
        var firstLkid: UInt32 = 0
        /// Locks referring to this rsb (any kind).
        var refs: Int32 = 0
        var lookupList: [UInt32] = []
        private var tossedTime: Duration = .zero
        private var tossed = false
        var masterUncertain = false

        init(name: [UInt8], hash: UInt32, lvbLength: Int) {
            resource = Resource(name: name, lvbLength: lvbLength)
            self.hash = hash
        }

        var name: [UInt8] { resource.name }

        /// Inactive since (nil = active).
        var tossedAt: Duration? {
            get { tossed ? tossedTime : nil }
            set {
                tossed = newValue != nil
                tossedTime = newValue ?? .zero
            }
        }
    }

    public let config: Configuration
    var rsbs = RsbTable()
    var lkbs = LockTable()
    public private(set) var members: [Member] = [] {
        didSet {
            memberIDs = Set(members.map(\.nodeID))
            placement = DirectoryPlacement(members: members.map { ($0.nodeID, $0.weight) }, ourNodeID: config.ourNodeID)
        }
    }
    var memberIDs: Set<UInt32> = []
    /// Directory placement of the current members (built when they change, not per message).
    var placement: DirectoryPlacement
    /// Freed ids, in descending order (the last is the lowest).
    var freeIDs: [UInt32] = []
    var nextID: UInt32 = 1
    var lastScan: Duration?
    var now: Duration = .zero
    var out: [Action] = []
    /// Recovery bookkeeping (`LockManager+Recovery.swift`).
    var recovery = LockRecoveryState()
    /// `ls_orphans`: the orphan locks, oldest first (`LockManager+Orphans.swift`).
    public internal(set) var orphans: [UInt32] = []

    var us: UInt32 { config.ourNodeID }
    var lvbLength: Int { config.lvbLength }

    public init(_ config: Configuration, members: [Member] = []) {
        self.config = config
        let sorted = members.sorted { $0.nodeID < $1.nodeID }
        self.members = sorted
        self.memberIDs = Set(sorted.map(\.nodeID))
        placement = DirectoryPlacement(members: sorted.map { ($0.nodeID, $0.weight) }, ourNodeID: config.ourNodeID)
    }

    // MARK: - Membership and time

    /// Set the lockspace members (as recovery leaves them). Directory placement follows immediately.
    public mutating func setMembers(_ newMembers: [Member], now: Duration) -> [Action] {
        self.now = now
        members = newMembers.sorted { $0.nodeID < $1.nodeID }
        return drain()
    }

    /// `dlm_hash2nodeid`: the directory node of a name hash.
    public func directoryNode(hash: UInt32) -> UInt32 {
        placement.directoryNode(hash: hash)
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
    /// nodir: there are no directory records and nothing is sent; inactive rsbs are simply freed.
    mutating func scanToss() {
        // Only the inactive rsbs tossed long enough ago are sorted (not every rsb on every scan:
        // with 100k active resources that sort dominated an idle node).
        let expired = rsbs.slots { r in r.tossedAt.map { now >= $0 + config.tossTime } ?? false }
        for slot in sortedByName(expired) {
            guard let r = rsbs.rsb(at: slot) else { continue }
            let dir = directoryNode(hash: r.hash)
            if !config.nodir && dir == us && r.master != us { continue }  // a directory record: never reaped by time
            rsbs.remove(slot)
            if !config.nodir && r.master == us && dir != us {
                send(LockMessages.remove(name: r.name, hash: r.hash, header: header()), to: dir)
                log("remove \(printable(r.name)) → dir \(dir)")
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
        if lvb.count == lvbLength { return lvb }
        if lvb.count > lvbLength { lvb = Array(lvb.prefix(lvbLength)) }
        if lvb.count < lvbLength { lvb += [UInt8](repeating: 0, count: lvbLength - lvb.count) }
        return lvb
    }

    /// The lock's entry, wherever it is.
    func entry(_ id: UInt32) -> LockEntry? {
        guard let lkb = lkbs[id] else { return nil }
        if lkb.isDetached { return lkbs.detachedEntry(id) }
        return rsbs.rsb(at: lkb.slot)?.resource.lock(id)
    }

    /// Change the lock's entry, wherever it is.
    mutating func updateEntry(_ id: UInt32, _ body: (inout LockEntry) -> Void) {
        guard let lkb = lkbs[id] else { return }
        if lkb.isDetached {
            guard var detached = lkbs.detachedEntry(id) else { return }
            body(&detached)
            lkbs.setDetached(id, detached)
        } else if rsbs.contains(lkb.slot) {
            rsbs[lkb.slot].resource.update(id, body)
        }
    }

    /// The name of a lock's rsb (empty if the lock is unknown).
    func rsbName(of id: UInt32) -> [UInt8] {
        guard let lkb = lkbs[id], let r = rsbs.rsb(at: lkb.slot) else { return [] }
        return r.name
    }

    /// Forget a lock: free its id, drop the rsb reference (the rsb goes inactive with its last lock).
    mutating func freeLkb(_ id: UInt32) {
        guard let lkb = lkbs.removeValue(forKey: id) else { return }
        releaseID(id)
        if lkb.orphan { orphans.removeAll { $0 == id } }
        let slot = lkb.slot
        guard rsbs.contains(slot) else {
            log("free lock \(String(id, radix: 16)): its rsb (slot \(slot)) is gone")
            return
        }
        if !lkb.isDetached { rsbs[slot].resource.removeLock(id) }
        if lkb.parked { rsbs[slot].lookupList.removeAll { $0 == id } }
        rsbs[slot].refs -= 1
        tossIfUnused(slot)
    }

    /// §1.6: an rsb nobody references becomes inactive; its LVB buffer is freed (KQ).
    mutating func tossIfUnused(_ slot: RsbSlot) {
        guard rsbs.contains(slot), rsbs[slot].refs == 0, rsbs[slot].tossedAt == nil else { return }
        rsbs[slot].tossedAt = now
        rsbs[slot].resource.discardValueBlock()
        rsbs[slot].firstLkid = 0
        rsbs[slot].masterUncertain = false
    }

    // MARK: - Callbacks

    /// `queue_cast`: a completion for a local lock (deliver in generation order, coalesced per
    /// `CallbackQueue`).
    mutating func queueCast(_ id: UInt32, _ status: LockResult, lock: LockEntry?, endOfLife: Bool = false) {
        let mode = endOfLife ? LockMode.iv : (lock?.grantedMode ?? .iv)
        let flags = lock?.statusFlags ?? []
        var tag: UInt64 = 0
        var orphan = false
        guard lkbs.modify(id, { lkb in
            orphan = lkb.orphan
            if orphan { return }
            _ = lkb.callbacks.admit(.completion(status, mode: mode, flags: flags))
            tag = lkb.tag
        }), !orphan else { return }
        out.append(
            .completion(
                Completion(
                    tag: tag, lkid: id, status: status, mode: mode, statusFlags: flags, lvb: lock?.lvb,
                    endOfLife: endOfLife)))
    }

    /// `queue_bast` for a local or process copy.
    mutating func queueBast(_ id: UInt32, _ mode: LockMode) {
        var queued = false
        var tag: UInt64 = 0
        lkbs.modify(id) { lkb in
            guard lkb.deliverBlocking, !lkb.orphan else { return }
            queued = lkb.callbacks.admit(.blocking(mode))
            tag = lkb.tag
        }
        if queued { out.append(.blocking(tag: tag, lkid: id, mode: mode)) }
    }

    /// Carry out the grant engine's effects: on a master copy GRANT/BAST messages, on a local lock
    /// callbacks.
    mutating func runEffects(_ effects: [LockEffect], rsb slot: RsbSlot) {
        guard !effects.isEmpty, rsbs.contains(slot) else { return }
        let hash = rsbs[slot].hash
        let name = rsbs[slot].name
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

    enum FindResult {
        case found(RsbSlot)
        case error(Int32)
    }

    /// `find_rsb`: the rsb for `name`, activated, or the error the kernel returns. `name`: any byte
    /// collection (a received message's bytes); an array is made only for a new rsb.
    mutating func findRsb<Name: Collection>(_ name: Name, _ reason: FindReason) -> FindResult where Name.Element == UInt8 {
        guard name.count <= WireLimits.maxResourceNameLength else { return .error(WireErrno.einval) }
        let hash = JHash.hash(name)
        if config.nodir { return findRsbNodir(name, hash: hash, reason) }
        if let slot = rsbs.slot(of: name, hash: hash) {
            let r = rsbs[slot]
            if r.tossedAt == nil { return .found(slot) }
            switch reason {
            case .received(let from):
                let fromDir = from == directoryNode(hash: r.hash)
                if r.master != us && !fromDir { return .error(WireErrno.enotblk) }
                if r.master != us && fromDir {
                    log("find_rsb \(printable(Array(name))): dir \(from) sent a request, taking mastery from \(r.master)")
                    rsbs[slot].master = us
                    rsbs[slot].masterUncertain = false
                }
            case .local:
                if r.master != 0 && r.master != us {
                    rsbs[slot].masterUncertain = true
                    rsbs[slot].firstLkid = 0
                }
            }
            rsbs[slot].tossedAt = nil
            return .found(slot)
        }
        let dir = directoryNode(hash: hash)
        var r = Rsb(name: Array(name), hash: hash, lvbLength: lvbLength)
        switch reason {
        case .local:
            r.master = dir == us ? us : 0
        case .received(let from):
            guard from == dir || dir == us else { return .error(WireErrno.ebadr) }
            r.master = us
        }
        return .found(rsbs.insert(r))
    }

    /// `find_rsb_nodir`: a new rsb's master is the node the name hashes to; an inactive rsb we do
    /// not master answers another node's request -ENOTBLK (and is made ours if the name hashes to
    /// us). An active rsb is returned as it is (the request path checks mastery).
    mutating func findRsbNodir<Name: Collection>(_ name: Name, hash: UInt32, _ reason: FindReason) -> FindResult
    where Name.Element == UInt8 {
        let dir = directoryNode(hash: hash)
        if let slot = rsbs.slot(of: name, hash: hash) {
            guard rsbs[slot].tossedAt != nil else { return .found(slot) }
            if rsbs[slot].master != us {
                if case .received(let from) = reason {
                    log("find_rsb \(printable(Array(name))): request from \(from), master \(rsbs[slot].master) dir \(dir)")
                    return .error(WireErrno.enotblk)
                }
                if dir == us { rsbs[slot].master = us }
            }
            rsbs[slot].tossedAt = nil
            return .found(slot)
        }
        var r = Rsb(name: Array(name), hash: hash, lvbLength: lvbLength)
        r.master = dir
        return .found(rsbs.insert(r))
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
        if overlapDone, let waitType = lkb.waitType {
            log("remwait error \(String(id, radix: 16)) reply \(type) wait_type \(waitType) overlap")
            lkb.waitCount -= 1
            lkb.waitType = nil
        }
        lkb.waitCount -= 1
        lkbs[id] = lkb
        return true
    }
}
