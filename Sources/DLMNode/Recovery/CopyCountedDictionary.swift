/// A dictionary with value semantics that counts its own copy-on-write copies.
///
/// The recovery pass keeps one entry per outstanding RCOM_LOOKUP and per outstanding RCOM_LOCK
/// (a hundred thousand in a big recovery) and removes one per reply. Should any code hold a copy
/// of the pass (`let p = pass`) while it changes such a table, every change copies the whole
/// table: the recovery turns quadratic in the number of locks, silently (issue 5's 57 s at 100k
/// locks). The tests read `copies` to catch that without timing anything.
///
/// Copy-on-write is explicit: the entries live in a box, and a change through a box that is
/// shared copies the entries into a new box first, counting one copy.
struct CopyCountedDictionary<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    /// Immutable once shared: it is only changed while uniquely referenced (see `makeUnique`).
    private final class Box: @unchecked Sendable {
        var entries: [Key: Value]
        let copies: Int

        init(_ entries: [Key: Value], copies: Int) {
            self.entries = entries
            self.copies = copies
        }
    }

    private var box = Box([:], copies: 0)

    init() {}

    /// Copy-on-write copies made by changes to this value and to the values it was copied from.
    var copies: Int { box.copies }
    var count: Int { box.entries.count }
    var isEmpty: Bool { box.entries.isEmpty }

    subscript(key: Key) -> Value? {
        get { box.entries[key] }
        set {
            makeUnique()
            box.entries[key] = newValue
        }
    }

    @discardableResult
    mutating func removeValue(forKey key: Key) -> Value? {
        // Nothing to remove: no copy either.
        guard box.entries[key] != nil else { return nil }
        makeUnique()
        return box.entries.removeValue(forKey: key)
    }

    private mutating func makeUnique() {
        if !isKnownUniquelyReferenced(&box) {
            box = Box(box.entries, copies: box.copies + 1)
        }
    }
}
