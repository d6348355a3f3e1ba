import Testing

@testable import DLMNode

@Suite("CopyCountedDictionary")
struct CopyCountedDictionaryTests {
    @Test("a dictionary: insert, read, replace, remove, count")
    func dictionary() {
        var d = CopyCountedDictionary<UInt32, String>()
        #expect(d.isEmpty && d.count == 0)
        d[1] = "a"
        d[2] = "b"
        d[1] = "c"
        #expect(d[1] == "c" && d[2] == "b" && d[3] == nil && d.count == 2)
        #expect(d.removeValue(forKey: 1) == "c")
        #expect(d.removeValue(forKey: 1) == nil)
        d[2] = nil
        #expect(d.isEmpty)
        #expect(d.copies == 0)
    }

    @Test("changes to a uniquely held value copy nothing")
    func uniqueChangesDoNotCopy() {
        var d = CopyCountedDictionary<UInt64, [UInt8]>()
        for i in 0..<1000 { d[UInt64(i)] = [UInt8(truncatingIfNeeded: i)] }
        for i in 0..<1000 where i % 2 == 0 { d.removeValue(forKey: UInt64(i)) }
        #expect(d.count == 500)
        #expect(d.copies == 0)
    }

    @Test("a change while a copy is held copies once and leaves the copy as it was")
    func valueSemantics() {
        var d = CopyCountedDictionary<Int, Int>()
        d[1] = 10
        let held = d
        d[2] = 20
        #expect(d.copies == 1)
        #expect(held.copies == 0 && held.count == 1 && held[2] == nil)
        // The copy is unique now: further changes cost nothing.
        d[3] = 30
        d.removeValue(forKey: 1)
        #expect(d.copies == 1 && d.count == 2 && held[1] == 10)
        var other = held
        other.removeValue(forKey: 1)
        #expect(other.copies == 1 && other.isEmpty && held[1] == 10)
    }

    @Test("the pattern behind issue 5: a copy held across each removal copies every time")
    func heldCopyPerChange() {
        struct Pass { var table = CopyCountedDictionary<Int, Int>() }
        var pass: Pass? = Pass()
        for i in 0..<100 { pass!.table[i] = i }
        for i in 0..<100 {
            let p = pass   // held across the change, as `guard let p = pass` did
            pass!.table.removeValue(forKey: i)
            #expect(p!.table.count == 100 - i)
        }
        #expect(pass!.table.copies == 100)
        #expect(pass!.table.isEmpty)
    }

    @Test("removing an absent key does not copy a shared value")
    func absentKeyNoCopy() {
        var d = CopyCountedDictionary<Int, Int>()
        d[1] = 1
        let held = d
        #expect(d.removeValue(forKey: 7) == nil)
        #expect(d.copies == 0 && held.count == 1)
    }
}
