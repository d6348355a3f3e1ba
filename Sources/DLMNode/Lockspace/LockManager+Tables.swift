import DLMTransport

// The lock manager's two tables (see the storage notes at the top of LockManager.swift):
// `RsbTable`, the resources in a slab addressed by slot, with an open-addressing index keyed by the
// name's jhash; and `LockTable`, the locks in a slab addressed by lock id (the kernel's idr: ids are
// the lowest free integers, so the slab stays dense), plus the entries of locks on no queue.

/// The slot of an rsb in `RsbTable`: stable while the rsb exists (a lock's rsb cannot be freed, it is
/// referenced); reused after the rsb is removed.
typealias RsbSlot = Int

struct RsbTable: Sendable {
    /// The rsbs; nil = a free slot (listed in `freeSlots`).
    private var slots: [LockManager.Rsb?] = []
    private var freeSlots: [Int32] = []
    /// Open addressing with linear probing: 0 = empty, else `hash << 32 | (slot + 1)`. At most half
    /// full; removal shifts entries back (no tombstones).
    private var buckets: [UInt64] = []
    private(set) var count = 0

    init() {}

    // MARK: Look-up

    /// The slot of the rsb named `name`, whose jhash is `hash`. `name` may be any byte collection
    /// (a received message's bytes: no array is made for a look-up).
    func slot<Name: Collection>(of name: Name, hash: UInt32) -> RsbSlot? where Name.Element == UInt8 {
        guard !buckets.isEmpty else { return nil }
        let mask = buckets.count - 1
        var b = Int(hash) & mask
        while true {
            let e = buckets[b]
            if e == 0 { return nil }
            if UInt32(truncatingIfNeeded: e >> 32) == hash {
                let s = Int(UInt32(truncatingIfNeeded: e)) - 1
                if let r = slots[s], r.resource.name.count == name.count, r.resource.name.elementsEqual(name) {
                    return s
                }
            }
            b = (b + 1) & mask
        }
    }

    /// The slot of the rsb named `name` (its jhash is computed).
    func slot(of name: [UInt8]) -> RsbSlot? {
        slot(of: name, hash: JHash.hash(name))
    }

    /// The rsb in `slot`, in place. Trap-free for valid slots only: callers hold slots they got from
    /// this table (a lock's `rsb`, a look-up) while the rsb exists.
    subscript(slot: RsbSlot) -> LockManager.Rsb {
        get {
            guard let r = slots[slot] else { preconditionFailure("rsb slot \(slot) is free") }
            return r
        }
        _modify {
            // Yield the stored value itself (no copy: its queues stay uniquely referenced).
            guard slots[slot] != nil else { preconditionFailure("rsb slot \(slot) is free") }
            yield &slots[slot]!
        }
    }

    /// Whether `slot` holds an rsb.
    func contains(_ slot: RsbSlot) -> Bool {
        slot >= 0 && slot < slots.count && slots[slot] != nil
    }

    /// The rsb in `slot`, or nil if the slot is free or out of range.
    func rsb(at slot: RsbSlot) -> LockManager.Rsb? {
        guard slot >= 0, slot < slots.count else { return nil }
        return slots[slot]
    }

    /// Dictionary-style look-up by name (nil = none); setting nil removes the rsb, setting a value
    /// replaces or inserts it.
    subscript(name: [UInt8]) -> LockManager.Rsb? {
        get { slot(of: name).map { slots[$0]! } }
        set {
            let hash = newValue?.hash ?? JHash.hash(name)
            if let s = slot(of: name, hash: hash) {
                if let newValue { slots[s] = newValue } else { remove(s) }
            } else if let newValue {
                insert(newValue)
            }
        }
    }

    // MARK: Insertion and removal

    /// Add an rsb (its name must not be in the table); returns its slot.
    @discardableResult
    mutating func insert(_ rsb: LockManager.Rsb) -> RsbSlot {
        let s: Int
        if let free = freeSlots.popLast() {
            s = Int(free)
            slots[s] = rsb
        } else {
            s = slots.count
            slots.append(rsb)
        }
        count += 1
        if count * 2 > buckets.count { grow() } else { place(hash: rsb.hash, slot: s) }
        return s
    }

    /// Remove the rsb in `slot` (nothing happens for a free slot).
    mutating func remove(_ slot: RsbSlot) {
        guard slot >= 0, slot < slots.count, let r = slots[slot] else { return }
        let mask = buckets.count - 1
        let entry = (UInt64(r.hash) << 32) | UInt64(slot + 1)
        var b = Int(r.hash) & mask
        while buckets[b] != entry { b = (b + 1) & mask }
        // Backward-shift deletion.
        var hole = b
        var next = (hole + 1) & mask
        while buckets[next] != 0 {
            let home = Int(UInt32(truncatingIfNeeded: buckets[next] >> 32)) & mask
            // Move the entry back if the hole lies cyclically in [home, next).
            if (next - home) & mask >= (next - hole) & mask {
                buckets[hole] = buckets[next]
                hole = next
            }
            next = (next + 1) & mask
        }
        buckets[hole] = 0
        slots[slot] = nil
        count -= 1
        if slot == slots.count - 1 {
            slots.removeLast()
            // Trailing free slots are dropped rather than listed.
            while let last = slots.last, last == nil { slots.removeLast() }
            freeSlots.removeAll { Int($0) >= slots.count }
        } else {
            freeSlots.append(Int32(slot))
        }
    }

    private mutating func place(hash: UInt32, slot: Int) {
        let mask = buckets.count - 1
        var b = Int(hash) & mask
        while buckets[b] != 0 { b = (b + 1) & mask }
        buckets[b] = (UInt64(hash) << 32) | UInt64(slot + 1)
    }

    private mutating func grow() {
        var size = max(16, buckets.count)
        while count * 2 > size { size *= 2 }
        buckets = [UInt64](repeating: 0, count: size)
        for s in slots.indices {
            if let r = slots[s] { place(hash: r.hash, slot: s) }
        }
    }

    // MARK: Iteration

    /// The slots in use, in slot order.
    var allSlots: [RsbSlot] {
        slots.indices.filter { slots[$0] != nil }
    }

    /// The slots in use whose rsb satisfies `predicate`, in slot order.
    func slots(where predicate: (LockManager.Rsb) -> Bool) -> [RsbSlot] {
        slots.indices.filter { slots[$0].map(predicate) ?? false }
    }

    /// The slots in use, sorted by name (bytes).
    var slotsSortedByName: [RsbSlot] {
        allSlots.sorted { slots[$0]!.resource.name.lexicographicallyPrecedes(slots[$1]!.resource.name) }
    }

    /// The names, sorted as bytes.
    var sortedNames: [[UInt8]] {
        slotsSortedByName.map { slots[$0]!.resource.name }
    }

    /// Every rsb, in slot order.
    var values: [LockManager.Rsb] {
        slots.compactMap { $0 }
    }
}

struct LockTable: Sendable {
    /// The locks by id: `slots[id - 1]`; nil = a free id.
    private var slots: [LockManager.Lkb?] = []
    /// The entries of locks on no queue (`Lkb.isDetached`): a new request in flight or parked.
    private var detachedEntries: [UInt32: LockEntry] = [:]
    private(set) var count = 0

    init() {}

    /// Dictionary-style access by lock id (nil = no such lock; setting nil removes the lock and its
    /// detached entry). Ids that are not in use (0, received garbage) read as nil.
    subscript(id: UInt32) -> LockManager.Lkb? {
        get {
            let i = Int(id) &- 1
            guard i >= 0, i < slots.count else { return nil }
            return slots[i]
        }
        set {
            let i = Int(id) &- 1
            guard i >= 0 else { return }
            if let newValue {
                if i >= slots.count { slots.append(contentsOf: repeatElement(nil, count: i + 1 - slots.count)) }
                if slots[i] == nil { count += 1 }
                slots[i] = newValue
            } else {
                guard i < slots.count, let old = slots[i] else { return }
                slots[i] = nil
                count -= 1
                if old.isDetached || !detachedEntries.isEmpty { detachedEntries[id] = nil }
                if i == slots.count - 1 {
                    while let last = slots.last, last == nil { slots.removeLast() }
                }
            }
        }
    }

    /// In-place change of an existing lock (no effect if there is none). Returns whether it exists.
    @discardableResult
    mutating func modify(_ id: UInt32, _ body: (inout LockManager.Lkb) -> Void) -> Bool {
        let i = Int(id) &- 1
        guard i >= 0, i < slots.count, slots[i] != nil else { return false }
        body(&slots[i]!)
        return true
    }

    @discardableResult
    mutating func removeValue(forKey id: UInt32) -> LockManager.Lkb? {
        guard let lkb = self[id] else { return nil }
        self[id] = nil
        return lkb
    }

    /// The entry of a lock on no queue.
    func detachedEntry(_ id: UInt32) -> LockEntry? {
        guard let lkb = self[id], lkb.isDetached else { return nil }
        return detachedEntries[id]
    }

    /// Park the lock's entry off the queues (`entry` non-nil) or clear it (the caller queues it).
    mutating func setDetached(_ id: UInt32, _ entry: LockEntry?) {
        guard modify(id, { $0.isDetached = entry != nil }) else { return }
        detachedEntries[id] = entry
    }

    /// Take the detached entry out (the lock is queued next).
    mutating func takeDetached(_ id: UInt32) -> LockEntry? {
        guard let entry = detachedEntry(id) else { return nil }
        setDetached(id, nil)
        return entry
    }

    /// The ids in use, ascending.
    var ids: [UInt32] {
        slots.indices.compactMap { slots[$0] == nil ? nil : UInt32($0 + 1) }
    }

    /// The locks, by ascending id.
    var values: [LockManager.Lkb] {
        slots.compactMap { $0 }
    }
}
