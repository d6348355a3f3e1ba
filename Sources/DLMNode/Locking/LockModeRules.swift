import DLMTransport

// The fixed tables of the lock manager: mode compatibility, the LVB operation table, and the
// QUECVT table (locking.md §2.2–§2.4; kernel fs/dlm/lock.c and lvb_table.h). The kernel indexes its
// 8×8 tables with `mode + 1`; here the six modes plus IV are indexed the same way (IV = 0, NL = 1 …
// EX = 6) and the kernel's padding row/column is left out.

/// What a grant does with the value block (`dlm_lvb_operations`).
public enum LVBOperation: Sendable, Equatable, CustomStringConvertible {
    /// The resource's LVB is copied into the lock ("returned to the caller").
    case read
    /// The lock's LVB is written into the resource (or the resource is invalidated with IVVALBLK).
    case write
    /// Nothing happens to the LVB.
    case none

    public var description: String {
        switch self {
        case .read: return "R"
        case .write: return "W"
        case .none: return "-"
        }
    }
}

extension LockMode {
    /// Row/column of this mode in the kernel's tables (`mode + 1`): IV 0, NL 1, …, EX 6.
    public var tableIndex: Int { Int(rawValue) + 1 }

    /// The seven modes in table order (IV first).
    public static let tableOrder: [LockMode] = [.iv, .nl, .cr, .cw, .pr, .pw, .ex]

    /// `__dlm_compat_matrix` without the padding: `compat[held][wanted]`, symmetric.
    static let compatTable: [[Bool]] = [
        //  IV    NL    CR     CW     PR     PW     EX
        [true, true, true, true, true, true, true],  // IV
        [true, true, true, true, true, true, true],  // NL
        [true, true, true, true, true, true, false],  // CR
        [true, true, true, true, false, false, false],  // CW
        [true, true, true, false, true, false, false],  // PR
        [true, true, true, false, false, false, false],  // PW
        [true, true, false, false, false, false, false],  // EX
    ]

    /// `dlm_lvb_operations` without the padding: `[granted][requested]`.
    static let lvbTable: [[LVBOperation]] = [
        //  IV     NL      CR      CW      PR      PW      EX
        [.none, .read, .read, .read, .read, .read, .read],  // IV (new request)
        [.none, .read, .read, .read, .read, .read, .read],  // NL
        [.none, .none, .read, .read, .read, .read, .read],  // CR
        [.none, .none, .none, .read, .read, .read, .read],  // CW
        [.none, .none, .none, .none, .read, .read, .read],  // PR
        [.none, .write, .write, .write, .write, .write, .read],  // PW
        [.none, .write, .write, .write, .write, .write, .write],  // EX
    ]

    /// `__quecvt_compat_matrix` without the padding: `[granted][requested]`.
    static let quecvtTable: [[Bool]] = [
        //  IV     NL     CR     CW     PR     PW     EX
        [false, false, false, false, false, false, false],  // IV
        [false, false, true, true, true, true, true],  // NL
        [false, false, false, true, true, true, true],  // CR
        [false, false, false, false, true, true, true],  // CW
        [false, false, false, true, false, true, true],  // PR
        [false, false, false, false, false, false, true],  // PW
        [false, false, false, false, false, false, false],  // EX
    ]

    /// `dlm_modes_compat(self, other)`: may a lock granted in `self` coexist with one in `other`?
    public func isCompatible(with other: LockMode) -> Bool {
        LockMode.compatTable[tableIndex][other.tableIndex]
    }

    /// The LVB operation of a grant from `granted` to `requested` (the lock's modes before the grant).
    public static func lvbOperation(granted: LockMode, requested: LockMode) -> LVBOperation {
        lvbTable[granted.tableIndex][requested.tableIndex]
    }

    /// Whether `DLM_LKF_QUECVT` is accepted for a conversion from `granted` to `requested`.
    public static func queuedConversionAllowed(granted: LockMode, requested: LockMode) -> Bool {
        quecvtTable[granted.tableIndex][requested.tableIndex]
    }

    /// PR→CW or CW→PR: neither mode dominates; counted as an up-conversion (`middle_conversion`).
    public static func isMiddleConversion(granted: LockMode, requested: LockMode) -> Bool {
        (granted == .pr && requested == .cw) || (granted == .cw && requested == .pr)
    }

    /// `down_conversion`: requested below granted and not PR↔CW. Down-conversions are granted in
    /// place and the master sends no reply. A same-mode conversion is *not* a down-conversion.
    public static func isDownConversion(granted: LockMode, requested: LockMode) -> Bool {
        !isMiddleConversion(granted: granted, requested: requested) && requested.rawValue < granted.rawValue
    }

    /// The higher of two modes by numeric value (`max_t(int, …)` in the kernel; IV is lowest).
    public static func higher(_ a: LockMode, _ b: LockMode) -> LockMode {
        a.rawValue >= b.rawValue ? a : b
    }
}

/// `DLM_SBF_*` as an option set (the constants live in DLMTransport's `StatusBlockFlags`).
/// Produced by the master, carried in `m_sbflags`, and reported in the completion's `sb_flags`.
public struct LockStatusFlags: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// CONVDEADLK demoted the granted mode to NL.
    public static let demoted = LockStatusFlags(rawValue: StatusBlockFlags.demoted)
    /// The resource's LVB is marked invalid.
    public static let valueNotValid = LockStatusFlags(rawValue: StatusBlockFlags.valNotValid)
    /// ALTPR/ALTCW: granted in the alternate mode.
    public static let alternateMode = LockStatusFlags(rawValue: StatusBlockFlags.altMode)

    public var description: String { flagNames(rawValue, StatusBlockFlags.names) }
}
