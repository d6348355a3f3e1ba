import DLMTransport
import Testing

@testable import DLMNode

/// The lock manager's tables against a `Dictionary` model, with forced hash collisions (many names
/// on one hash, and hashes whose home bucket is the last one so that probe chains wrap around).
@Suite("LockManager tables")
struct LockManagerTablesTests {
    /// A deterministic generator (xorshift64*).
    struct Rng {
        var state: UInt64
        mutating func next(_ n: Int) -> Int {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            return Int((state &* 0x2545_F491_4F6C_DD1D) >> 33) % n
        }
    }

    /// Colliding hashes: 13 values near 0 and 13 near UInt32.max (home bucket at the end of the table).
    static func hash(_ k: Int) -> UInt32 {
        k % 2 == 0 ? UInt32(k % 13) : UInt32.max - UInt32(k % 13)
    }

    @Test("RsbTable: insert, look-up and removal agree with a dictionary", arguments: [1, 2, 3])
    func rsbTableMatchesModel(seed: UInt64) {
        var rng = Rng(state: 0x9E37_79B9_7F4A_7C15 &* seed)
        var table = RsbTable()
        var model: [[UInt8]: (hash: UInt32, slot: RsbSlot)] = [:]
        for step in 0..<4000 {
            let k = rng.next(200)
            let name = Array("name-\(k)".utf8)
            let hash = Self.hash(k)
            if let known = model[name] {
                if rng.next(3) == 0 {
                    table.remove(known.slot)
                    model[name] = nil
                } else {
                    table[known.slot].master = UInt32(step)
                    #expect(table.rsb(at: known.slot)?.master == UInt32(step))
                }
            } else {
                let slot = table.insert(LockManager.Rsb(name: name, hash: hash, lvbLength: 0))
                #expect(!model.values.contains { $0.slot == slot }, "slot \(slot) handed out twice")
                model[name] = (hash, slot)
            }
            #expect(table.count == model.count)
            if step % 50 == 0 || step > 3900 {
                for (name, entry) in model {
                    #expect(table.slot(of: name, hash: entry.hash) == entry.slot)
                    #expect(table.rsb(at: entry.slot)?.name == name)
                }
                for k in 200..<210 {
                    #expect(table.slot(of: Array("name-\(k)".utf8), hash: Self.hash(k)) == nil)
                }
                #expect(Set(table.allSlots) == Set(model.values.map(\.slot)))
                #expect(table.sortedNames == model.keys.sorted { $0.lexicographicallyPrecedes($1) })
                // slots(where:): the model's slots of the rsbs matching, ascending.
                let odd = model.values.filter { table[$0.slot].master % 2 == 1 }.map(\.slot).sorted()
                #expect(table.slots { $0.master % 2 == 1 } == odd)
            }
        }
    }

    @Test("RsbTable: name subscript inserts, replaces and removes")
    func rsbTableNameSubscript() {
        var table = RsbTable()
        let name = Array("res".utf8)
        #expect(table[name] == nil)
        var r = LockManager.Rsb(name: name, hash: JHash.hash(name), lvbLength: 8)
        r.master = 3
        table[name] = r
        #expect(table[name]?.master == 3)
        #expect(table.count == 1)
        r.master = 4
        table[name] = r
        #expect(table[name]?.master == 4)
        #expect(table.count == 1)
        table[name] = nil
        #expect(table[name] == nil)
        #expect(table.count == 0)
        #expect(!table.contains(0))
        #expect(table.rsb(at: -1) == nil)
    }

    @Test("LockTable: ids, in-place changes and detached entries agree with a dictionary")
    func lockTableMatchesModel() {
        var rng = Rng(state: 0xDEAD_BEEF_CAFE_F00D)
        var table = LockTable()
        var model: [UInt32: (tag: UInt64, detached: LockEntry?)] = [:]
        for step in 0..<4000 {
            let id = UInt32(1 + rng.next(120))
            switch (model[id] != nil, rng.next(4)) {
            case (false, _):
                table[id] = LockManager.Lkb(id: id, rsb: 0, isMasterCopy: false, tag: UInt64(step))
                model[id] = (UInt64(step), nil)
            case (true, 0):
                #expect(table.removeValue(forKey: id)?.id == id)
                model[id] = nil
            case (true, 1):
                let entry = LockEntry(id: id, pid: UInt32(step), mode: .pr)
                table.setDetached(id, entry)
                model[id]?.detached = entry
            case (true, 2):
                #expect(table.takeDetached(id) == model[id]?.detached)
                model[id]?.detached = nil
            default:
                table.modify(id) { $0.tag = UInt64(step) }
                model[id]?.tag = UInt64(step)
            }
            #expect(table.count == model.count)
            #expect(table[0] == nil)
            if step % 40 == 0 {
                #expect(table.ids == model.keys.sorted())
                for (id, m) in model {
                    #expect(table[id]?.tag == m.tag)
                    #expect(table[id]?.isDetached == (m.detached != nil))
                    #expect(table.detachedEntry(id) == m.detached)
                }
                for id in UInt32(121)...125 { #expect(table[id] == nil) }
            }
        }
        // A removed lock leaves no detached entry behind for a later lock with the same id.
        table[500] = LockManager.Lkb(id: 500, rsb: 0, isMasterCopy: false, tag: 1)
        table.setDetached(500, LockEntry(id: 500, mode: .ex))
        table[500] = nil
        table[500] = LockManager.Lkb(id: 500, rsb: 0, isMasterCopy: false, tag: 2)
        #expect(table.detachedEntry(500) == nil)
        #expect(table[500]?.isDetached == false)
    }

    @Test("directory placement kept with the members agrees with dlm_hash2nodeid over random weights, after every change")
    func placementFollowsMembers() {
        var rng = SystemRandomNumberGenerator()
        var lm = LockManager(.init(lockspaceID: 7, ourNodeID: 1, lvbLength: 8), members: [.init(nodeID: 1)])
        for round in 0..<200 {
            let count = Int.random(in: 1...6, using: &rng)
            var ids = Set<UInt32>([1])
            while ids.count < count { ids.insert(UInt32.random(in: 2...40, using: &rng)) }
            let allZero = round % 7 == 0
            let members = ids.shuffled(using: &rng).map {
                LockManager.Member(nodeID: $0, weight: allZero ? 0 : Int.random(in: 0...3, using: &rng))
            }
            _ = lm.setMembers(members, now: .seconds(round))
            let pairs = members.map { (nodeID: $0.nodeID, weight: $0.weight) }
            for _ in 0..<50 {
                let hash = UInt32.random(in: 0...UInt32.max, using: &rng)
                let expected = count == 1 ? 1 : (directoryNode(hash: hash, members: pairs) ?? 1)
                #expect(lm.directoryNode(hash: hash) == expected, "members \(pairs) hash \(hash)")
            }
        }
    }
}
