// Values that must match the kernel and dlm_controld exactly: jhash, CRC-32 global ids,
// and the directory node (wire.md §10.e/§11, locking.md §3.1-3.2).

import DLMTransport
import Foundation
import Testing

/// An independent transcription of lookup3 `hashlittle` (byte-at-a-time tail, as in
/// the kernel's jhash), used to cross-check the codec's implementation on random keys.
private func referenceJHash(_ key: [UInt8], _ initval: UInt32 = 0) -> UInt32 {
    func rot(_ x: UInt32, _ k: UInt32) -> UInt32 { (x << k) | (x >> (32 - k)) }
    var a = 0xDEAD_BEEF &+ UInt32(key.count) &+ initval
    var b = a
    var c = a
    var k = 0
    var length = key.count
    func w(_ i: Int) -> UInt32 { i < key.count ? UInt32(key[i]) : 0 }
    while length > 12 {
        a &+= w(k) | w(k + 1) << 8 | w(k + 2) << 16 | w(k + 3) << 24
        b &+= w(k + 4) | w(k + 5) << 8 | w(k + 6) << 16 | w(k + 7) << 24
        c &+= w(k + 8) | w(k + 9) << 8 | w(k + 10) << 16 | w(k + 11) << 24
        a &-= c; a ^= rot(c, 4); c &+= b
        b &-= a; b ^= rot(a, 6); a &+= c
        c &-= b; c ^= rot(b, 8); b &+= a
        a &-= c; a ^= rot(c, 16); c &+= b
        b &-= a; b ^= rot(a, 19); a &+= c
        c &-= b; c ^= rot(b, 4); b &+= a
        length -= 12
        k += 12
    }
    if length == 0 { return c }
    // switch (length) { case 12: c += k[11] << 24 ... case 1: a += k[0]; }
    let tail = (0..<length).map { UInt32(key[k + $0]) }
    for (i, byte) in tail.enumerated() {
        let shifted = byte << (8 * UInt32(i % 4))
        switch i / 4 {
        case 0: a &+= shifted
        case 1: b &+= shifted
        default: c &+= shifted
        }
    }
    c ^= b; c &-= rot(b, 14)
    a ^= c; a &-= rot(c, 11)
    b ^= a; b &-= rot(a, 25)
    c ^= b; c &-= rot(b, 16)
    a ^= c; a &-= rot(c, 4)
    b ^= a; b &-= rot(a, 14)
    c ^= b; c &-= rot(b, 24)
    return c
}

/// Bitwise CRC-32 (no table), zlib parameters.
private func referenceCRC32(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        crc ^= UInt32(b)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
    }
    return ~crc
}

/// The directory node the slow way: build the kernel's `ls_node_array` and index it.
private func referenceDirNode(_ hash: UInt32, _ members: [(nodeID: UInt32, weight: Int)]) -> UInt32? {
    let sorted = members.sorted { $0.nodeID < $1.nodeID }
    var array: [UInt32] = []
    let allZero = sorted.allSatisfy { $0.weight <= 0 }
    for m in sorted {
        let copies = allZero ? 1 : max(0, m.weight)
        array += Array(repeating: m.nodeID, count: copies)
    }
    guard !array.isEmpty else { return nil }
    return array[Int(hash >> 16) % array.count]
}

@Suite("Hashes: jhash, lockspace global id, directory node")
struct HashTests {
    static let jhashVectors: [(String, UInt32)] = [
        // wire.md §10.e
        ("", 0xDEAD_BEEF), ("a", 0x58D6_8708), ("foo", 0xE18F_6896), ("abcdefghijkl", 0x4012_F87B),
        ("abcdefghijklm", 0x9281_28F9), ("Four score and seven years ago", 0x1777_0551),
        // locking.md §3.1
        ("abc", 0x0E39_7631), ("hello world!", 0x4B89_46DB), ("hello world!!", 0xBDFD_2524),
        ("LVM_global", 0xDC64_0C81),
    ]

    @Test("jhash vectors of wire.md §10.e and locking.md §3.1", arguments: jhashVectors)
    func jhash(_ vector: (String, UInt32)) {
        let key = Array(vector.0.utf8)
        #expect(JHash.hash(key) == vector.1)
        #expect(JHash.hash(key, initval: 0) == vector.1)
        #expect(referenceJHash(key) == vector.1, "the reference implementation itself disagrees")
        // Any collection of bytes: a String's UTF-8 view, Data, an ArraySlice not starting at 0.
        #expect(JHash.hash(vector.0.utf8) == vector.1)
        #expect(JHash.hash(Data(key)) == vector.1)
        let padded = [0xAA, 0xBB] + key + [0xCC]
        #expect(JHash.hash(padded[2..<(2 + key.count)]) == vector.1)
    }

    @Test("lookup3's published initval-1 vector")
    func jhashInitval() {
        #expect(JHash.hash(Array("Four score and seven years ago".utf8), initval: 1) == 0xCD62_8161)
    }

    @Test("jhash agrees with an independent transcription on random keys of 0...100 bytes")
    func jhashRandom() {
        var rng = SplitMix64(seed: 0x4A48)
        for length in 0...100 {
            for _ in 0..<20 {
                let key = rng.bytes(length)
                let initval: UInt32 = rng.chance(1, in: 4) ? rng.u32() : 0
                #expect(JHash.hash(key, initval: initval) == referenceJHash(key, initval), "length \(length)")
            }
        }
    }

    @Test("Lockspace global id: CRC-32 of \"dlm:ls:<name>\" with the trailing NUL")
    func globalID() {
        #expect(lockspaceGlobalID("test") == 0x7722_2027)
        #expect(lockspaceGlobalID("foo") == 0x6CE2_339D)
        #expect(lockspaceGlobalID("alpha") == 0x521B_2683)  // the captures' lockspace
        #expect(CRC32.checksum(Array("dlm:ls:alpha".utf8) + [0]) == 0x521B_2683)
        // Without the NUL it would be something else.
        #expect(CRC32.checksum(Array("dlm:ls:alpha".utf8)) != 0x521B_2683)
        // zlib's check value.
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([UInt8]()) == 0)
    }

    @Test("CRC-32 agrees with a bitwise implementation on random inputs")
    func crcRandom() {
        var rng = SplitMix64(seed: 0xC3C)
        for length in 0...200 {
            let bytes = rng.bytes(length)
            #expect(CRC32.checksum(bytes) == referenceCRC32(bytes))
        }
    }

    @Test("Directory node: locking.md §3.2 example, members {1,2,3} weight 1, \"a\" -> node 3")
    func dirNodeExample() {
        let hash = JHash.hash(Array("a".utf8))
        #expect(hash == 0x58D6_8708)
        #expect(Int(hash >> 16) == 22742)
        #expect(directoryNode(hash: hash, members: [(1, 1), (2, 1), (3, 1)]) == 3)
        // Member order in the input does not matter: the array is built in nodeid order.
        #expect(directoryNode(hash: hash, members: [(3, 1), (1, 1), (2, 1)]) == 3)
        // All weights 0: every member counts once, same answer.
        #expect(directoryNode(hash: hash, members: [(1, 0), (2, 0), (3, 0)]) == 3)
    }

    @Test("Directory node with weights, zero weights and edge cases")
    func dirNodeWeights() {
        // hash >> 16 = 5: [1,1,2,3,3,3] -> index 5 -> 3; [1,1,2] -> 5 % 3 = 2 -> 2.
        let h: UInt32 = 5 << 16 | 0xFFFF
        #expect(directoryNode(hash: h, members: [(1, 2), (2, 1), (3, 3)]) == 3)
        #expect(directoryNode(hash: h, members: [(1, 2), (2, 1), (3, 0)]) == 2)
        // Zero-weight members are skipped when any weight is non-zero.
        #expect(directoryNode(hash: h, members: [(1, 0), (2, 0), (3, 1)]) == 3)
        for top in 0..<50 as Range<UInt32> {
            #expect(directoryNode(hash: top << 16, members: [(10, 0), (20, 1), (30, 0)]) == 20)
        }
        // Only the high 16 bits of the hash count.
        #expect(directoryNode(hash: 0x0001_0000, members: [(1, 1), (2, 1)]) == 2)
        #expect(directoryNode(hash: 0x0000_FFFF, members: [(1, 1), (2, 1)]) == 1)
        // One member: that member. No members: nil.
        #expect(directoryNode(hash: 0xFFFF_FFFF, members: [(42, 1)]) == 42)
        #expect(directoryNode(hash: 0xFFFF_FFFF, members: [(42, 0)]) == 42)
        #expect(directoryNode(hash: 1, members: []) == nil)
    }

    @Test("Directory node agrees with the kernel's array construction for random memberships")
    func dirNodeRandom() {
        var rng = SplitMix64(seed: 0xD1D)
        for _ in 0..<5000 {
            let count = rng.int(1...12)
            var ids = Set<UInt32>()
            while ids.count < count { ids.insert(UInt32(rng.int(1...64))) }
            let allZero = rng.chance(1, in: 6)
            let members = ids.shuffled(using: &rng).map { (nodeID: $0, weight: allZero ? 0 : rng.int(0...4)) }
            let hash = rng.u32()
            #expect(directoryNode(hash: hash, members: members) == referenceDirNode(hash, members),
                    "hash \(hash) members \(members)")
        }
    }
}
