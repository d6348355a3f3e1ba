// Values every node must compute exactly as the kernel and dlm_controld do (wire.md §11).

/// The lockspace global id (`h_lockspace`) dlm_controld writes to /sys/kernel/dlm/<ls>/id:
/// zlib's CRC-32 of `"dlm:ls:" + name` **including the trailing NUL byte**.
public func lockspaceGlobalID(_ name: String) -> UInt32 {
    var bytes = Array("dlm:ls:\(name)".utf8)
    bytes.append(0)
    return CRC32.checksum(bytes)
}

/// CRC-32 as zlib computes it (IEEE 802.3 polynomial, reflected, init and final xor 0xFFFFFFFF).
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 {
            c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1
        }
        return c
    }

    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8)
        }
        return crc ^ 0xFFFF_FFFF
    }
}

/// The kernel's `jhash(key, length, initval)`: Bob Jenkins' lookup3 over bytes, as in
/// include/linux/jhash.h. The DLM uses initval 0 for `m_hash` and directory placement.
public enum JHash {
    @inlinable @inline(__always)
    static func rol(_ x: UInt32, _ k: UInt32) -> UInt32 { (x << k) | (x >> (32 - k)) }

    @inlinable @inline(__always)
    static func mix(_ a: inout UInt32, _ b: inout UInt32, _ c: inout UInt32) {
        a &-= c; a ^= rol(c, 4); c &+= b
        b &-= a; b ^= rol(a, 6); a &+= c
        c &-= b; c ^= rol(b, 8); b &+= a
        a &-= c; a ^= rol(c, 16); c &+= b
        b &-= a; b ^= rol(a, 19); a &+= c
        c &-= b; c ^= rol(b, 4); b &+= a
    }

    @inlinable @inline(__always)
    static func final(_ a: inout UInt32, _ b: inout UInt32, _ c: inout UInt32) {
        c ^= b; c &-= rol(b, 14)
        a ^= c; a &-= rol(c, 11)
        b ^= a; b &-= rol(a, 25)
        c ^= b; c &-= rol(b, 16)
        a ^= c; a &-= rol(c, 4)
        b ^= a; b &-= rol(a, 14)
        c ^= b; c &-= rol(b, 24)
    }

    /// Inlinable so that callers in other modules get it specialized for their collection type
    /// (resource names are hashed on every rsb look-up).
    @inlinable
    public static func hash<C: Collection>(_ key: C, initval: UInt32 = 0) -> UInt32 where C.Element == UInt8 {
        var a: UInt32 = 0xDEAD_BEEF &+ UInt32(truncatingIfNeeded: key.count) &+ initval
        var b = a
        var c = a
        var i = key.startIndex
        var remaining = key.count

        @inline(__always) func word(_ n: Int) -> UInt32 {
            // Little-endian word from up to 4 bytes starting at i, byte k at bit 8k.
            var w: UInt32 = 0
            var j = i
            for k in 0..<n {
                w |= UInt32(key[j]) << (8 * UInt32(k))
                j = key.index(after: j)
            }
            i = j
            return w
        }

        while remaining > 12 {
            a &+= word(4)
            b &+= word(4)
            c &+= word(4)
            mix(&a, &b, &c)
            remaining -= 12
        }
        if remaining == 0 { return c }
        a &+= word(min(remaining, 4))
        if remaining > 4 { b &+= word(min(remaining - 4, 4)) }
        if remaining > 8 { c &+= word(remaining - 8) }
        final(&a, &b, &c)
        return c
    }
}

/// The directory node of a resource (wire.md §11.3, locking.md §3): members sorted by
/// nodeid, each repeated `weight` times (all counted once when every weight is 0), and
/// the node at `(hash >> 16) % count` of that array.
public func directoryNode(hash: UInt32, members: [(nodeID: UInt32, weight: Int)]) -> UInt32? {
    let sorted = members.sorted { $0.nodeID < $1.nodeID }
    let total = sorted.reduce(0) { $0 + max(0, $1.weight) }
    if total == 0 {
        guard !sorted.isEmpty else { return nil }
        return sorted[Int(hash >> 16) % sorted.count].nodeID
    }
    var index = Int(hash >> 16) % total
    for m in sorted where m.weight > 0 {
        if index < m.weight { return m.nodeID }
        index -= m.weight
    }
    return nil
}
