import DLMTransport

// Read-only views of a lock manager for dumps, tests and simulations, and the invariants of
// locking.md §9 that one node can check about itself.

extension LockManager {
    /// One resource as this node sees it.
    public struct ResourceView: Sendable {
        public var name: [UInt8]
        public var hash: UInt32
        /// `res_master_nodeid` (0 = unknown).
        public var master: UInt32
        public var active: Bool
        /// We are its dir node.
        public var isDirectoryNode: Bool
        /// The grant engine's state: master queues (local and master copies) when we are master,
        /// process copies otherwise.
        public var resource: Resource
        public var firstLkid: UInt32
        public var lookupList: [UInt32]
    }

    /// One lock as this node sees it.
    public struct LockView: Sendable {
        public var lock: LockEntry
        public var name: [UInt8]
        public var isMasterCopy: Bool
        /// On no queue (a new request in flight or parked).
        public var detached: Bool
        public var waitType: MessageType?
        public var waitCount: Int
        public var overlapUnlock: Bool
        public var overlapCancel: Bool
        public var parked: Bool
        public var tag: UInt64
    }

    public func resourceView(_ name: [UInt8]) -> ResourceView? {
        rsbs.slot(of: name).flatMap { resourceView(slot: $0) }
    }

    func resourceView(slot: RsbSlot) -> ResourceView? {
        guard let r = rsbs.rsb(at: slot) else { return nil }
        return ResourceView(
            name: r.name, hash: r.hash, master: r.master, active: r.tossedAt == nil,
            isDirectoryNode: directoryNode(hash: r.hash) == us, resource: r.resource, firstLkid: r.firstLkid,
            lookupList: r.lookupList)
    }

    /// All resources (active, inactive and directory records), sorted by name.
    public var resourceViews: [ResourceView] {
        rsbs.slotsSortedByName.compactMap { resourceView(slot: $0) }
    }

    public func lockView(_ id: UInt32) -> LockView? {
        guard let lkb = lkbs[id], let lock = entry(id) else { return nil }
        return LockView(
            lock: lock, name: rsbName(of: id), isMasterCopy: lkb.isMasterCopy, detached: lkb.isDetached,
            waitType: lkb.waitType, waitCount: Int(lkb.waitCount), overlapUnlock: lkb.overlapUnlock,
            overlapCancel: lkb.overlapCancel, parked: lkb.parked, tag: lkb.tag)
    }

    /// All locks, sorted by id.
    public var lockViews: [LockView] {
        lkbs.ids.compactMap { lockView($0) }
    }

    /// The directory: names whose dir node we are → the master we record.
    public var directory: [[UInt8]: UInt32] {
        var records: [[UInt8]: UInt32] = [:]
        for r in rsbs.values where directoryNode(hash: r.hash) == us && r.master != 0 {
            records[r.name] = r.master
        }
        return records
    }

    /// No operation of ours is waiting for a reply or parked on a lookup.
    public var hasOutstandingOperations: Bool {
        lkbs.values.contains { $0.waitCount > 0 || $0.waitType != nil || $0.parked || $0.overlapCancel || $0.overlapUnlock }
    }

    /// The single-node invariants (§9.1, 9.2, 9.5, 9.10, 9.15, 9.16, 9.17); empty when all hold.
    public func invariantViolations() -> [String] {
        var problems: [String] = []
        var refs: [RsbSlot: Int32] = [:]
        for lkb in lkbs.values {
            let id = lkb.id
            refs[lkb.slot, default: 0] += 1
            if id == 0 { problems.append("lock id 0") }
            guard let r = rsbs.rsb(at: lkb.slot) else {
                problems.append("lock \(id) on missing rsb")
                continue
            }
            if r.tossedAt != nil { problems.append("lock \(id) on inactive rsb \(printable(r.name))") }
            // KQ: up to 3 replies can be awaited at once (a conversion, then a cancel and a
            // force-unlock overlapping it), as the kernel's wait_count allows.
            if lkb.waitCount < 0 || lkb.waitCount > 3 { problems.append("lock \(id) wait_count \(lkb.waitCount)") }
            if lkb.waitType != nil && lkb.waitCount < 1 { problems.append("lock \(id) wait_type without count") }
            if !lkb.isDetached && r.resource.lock(id) == nil { problems.append("lock \(id) neither queued nor detached") }
            if lkb.isDetached && r.resource.lock(id) != nil { problems.append("lock \(id) both queued and detached") }
            if lkb.isDetached && lkbs.detachedEntry(id) == nil { problems.append("lock \(id) detached without an entry") }
            if lkb.isMasterCopy && r.master != us { problems.append("master copy \(id) on rsb mastered by \(r.master)") }
            if lkb.parked != r.lookupList.contains(id) { problems.append("lock \(id) parked mismatch") }
        }
        for slot in rsbs.allSlots {
            guard let r = rsbs.rsb(at: slot) else { continue }
            let name = r.name
            if (refs[slot] ?? 0) != r.refs { problems.append("rsb \(printable(name)) refs \(r.refs) vs \(refs[slot] ?? 0)") }
            if r.master == us {
                for p in r.resource.invariantViolations() { problems.append("\(printable(name)): \(p)") }
            }
            for lock in r.resource.allLocks where lkbs[lock.id] == nil {
                problems.append("\(printable(name)): queued lock \(lock.id) has no lkb")
            }
            // Master copies of one owner lock are unique.
            var pairs = Set<[UInt32]>()
            for lock in r.resource.allLocks where lock.nodeID != 0 && r.master == us {
                if !pairs.insert([UInt32(bitPattern: lock.nodeID), lock.remoteID]).inserted {
                    problems.append("\(printable(name)): duplicate master copy \(lock)")
                }
            }
        }
        return problems
    }
}
