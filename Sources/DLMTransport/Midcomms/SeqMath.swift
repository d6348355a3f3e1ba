/// Midcomms sequence-number arithmetic (wire.md §8.2).
///
/// Sequence numbers are 32-bit, per peer and per direction, and wrap modulo 2^32. Ordering
/// is the TCP-style "before": `a` is before `b` when the signed 32-bit difference is negative.
public enum SeqMath {
    /// `a` comes before `b` (wrap-aware): `Int32(bitPattern: a &- b) < 0`.
    @inlinable
    public static func before(_ a: UInt32, _ b: UInt32) -> Bool {
        Int32(bitPattern: a &- b) < 0
    }

    /// `a` comes after `b` (wrap-aware).
    @inlinable
    public static func after(_ a: UInt32, _ b: UInt32) -> Bool {
        before(b, a)
    }

    /// Number of sequence numbers from `from` up to (not including) `to`, modulo 2^32.
    @inlinable
    public static func distance(from: UInt32, to: UInt32) -> UInt32 {
        to &- from
    }
}
