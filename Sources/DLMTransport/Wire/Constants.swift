// Protocol constants of the Linux kernel DLM wire format (protocol 3.1 and 3.2).
// Values are those of fs/dlm/dlm_internal.h and include/uapi/linux/dlm*.h; see
// shared/spec/wire.md §6 for the tables they come from.

/// The `h_version` word of every `dlm_header`: major in the high 16 bits, minor in the low 16.
public struct ProtocolVersion: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Pre-5.14 kernels: no midcomms (no OPTS, ACK or FIN).
    public static let v3_1 = ProtocolVersion(rawValue: 0x0003_0001)
    /// 5.14 and newer: midcomms with sequence numbers, ACK and FIN.
    public static let v3_2 = ProtocolVersion(rawValue: 0x0003_0002)

    public var major: UInt16 { UInt16(truncatingIfNeeded: rawValue >> 16) }
    public var minor: UInt16 { UInt16(truncatingIfNeeded: rawValue) }

    /// "3.1", "3.2", or the hex word for anything else (the tracepoint notation).
    public var description: String {
        switch self {
        case .v3_1: return "3.1"
        case .v3_2: return "3.2"
        default: return "0x" + hex(rawValue, width: 8)
        }
    }
}

/// `h_cmd`: the message class.
public enum HeaderCommand: UInt8, CaseIterable, Sendable, CustomStringConvertible {
    case message = 1   // DLM_MSG
    case rcom = 2      // DLM_RCOM
    case opts = 3      // DLM_OPTS
    case ack = 4       // DLM_ACK
    case fin = 5       // DLM_FIN

    public var description: String {
        switch self {
        case .message: return "MSG"
        case .rcom: return "RCOM"
        case .opts: return "OPTS"
        case .ack: return "ACK"
        case .fin: return "FIN"
        }
    }

    /// Name for a raw `h_cmd` value, known or not.
    public static func name(_ raw: UInt8) -> String {
        HeaderCommand(rawValue: raw)?.description ?? "CMD(\(raw))"
    }
}

/// `m_type` of a DLM_MSG.
public enum MessageType: UInt32, CaseIterable, Sendable, CustomStringConvertible {
    case request = 1
    case convert = 2
    case unlock = 3
    case cancel = 4
    case requestReply = 5
    case convertReply = 6
    case unlockReply = 7
    case cancelReply = 8
    case grant = 9
    case bast = 10
    case lookup = 11
    case remove = 12
    case lookupReply = 13
    case purge = 14

    public var description: String {
        switch self {
        case .request: return "REQUEST"
        case .convert: return "CONVERT"
        case .unlock: return "UNLOCK"
        case .cancel: return "CANCEL"
        case .requestReply: return "REQUEST_REPLY"
        case .convertReply: return "CONVERT_REPLY"
        case .unlockReply: return "UNLOCK_REPLY"
        case .cancelReply: return "CANCEL_REPLY"
        case .grant: return "GRANT"
        case .bast: return "BAST"
        case .lookup: return "LOOKUP"
        case .remove: return "REMOVE"
        case .lookupReply: return "LOOKUP_REPLY"
        case .purge: return "PURGE"
        }
    }

    /// What `m_extra` carries for this type (wire.md §3.1).
    public var extraKind: ExtraKind {
        switch self {
        case .request, .lookup, .remove: return .resourceName
        case .convert, .unlock, .requestReply, .convertReply, .grant: return .lvb
        case .cancel, .unlockReply, .cancelReply, .bast, .lookupReply, .purge: return .none
        }
    }

    public static func name(_ raw: UInt32) -> String {
        MessageType(rawValue: raw)?.description ?? "TYPE(\(raw))"
    }
}

/// What the variable part of a DLM_MSG holds.
public enum ExtraKind: Sendable, Equatable {
    /// No extra bytes (`h_length` = 88).
    case none
    /// The resource name, 1...64 bytes, not NUL-terminated.
    case resourceName
    /// The lock value block (`ls_lvblen` bytes) when the sender's lock has one, else nothing.
    case lvb
}

/// `rc_type` of a DLM_RCOM.
public enum RcomType: UInt32, CaseIterable, Sendable, CustomStringConvertible {
    case status = 1
    case names = 2
    case lookup = 3
    case lock = 4
    case statusReply = 5
    case namesReply = 6
    case lookupReply = 7
    case lockReply = 8

    public var description: String {
        switch self {
        case .status: return "STATUS"
        case .names: return "NAMES"
        case .lookup: return "LOOKUP"
        case .lock: return "LOCK"
        case .statusReply: return "STATUS_REPLY"
        case .namesReply: return "NAMES_REPLY"
        case .lookupReply: return "LOOKUP_REPLY"
        case .lockReply: return "LOCK_REPLY"
        }
    }

    public static func name(_ raw: UInt32) -> String {
        RcomType(rawValue: raw)?.description ?? "TYPE(\(raw))"
    }
}

/// Lock modes as they travel in `m_grmode`/`m_rqmode`/`m_bastmode` (le32) and `rl_*mode` (s8).
public enum LockMode: Int32, CaseIterable, Sendable, CustomStringConvertible {
    case iv = -1
    case nl = 0
    case cr = 1
    case cw = 2
    case pr = 3
    case pw = 4
    case ex = 5

    public var description: String {
        switch self {
        case .iv: return "IV"
        case .nl: return "NL"
        case .cr: return "CR"
        case .cw: return "CW"
        case .pr: return "PR"
        case .pw: return "PW"
        case .ex: return "EX"
        }
    }

    public static func name(_ raw: Int32) -> String {
        LockMode(rawValue: raw)?.description ?? "MODE(\(raw))"
    }
}

/// `DLM_LKF_*`: request flags, carried in `m_exflags` and `rl_exflags`.
public struct LockFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let noQueue = LockFlags(rawValue: 0x0000_0001)
    public static let cancel = LockFlags(rawValue: 0x0000_0002)
    public static let convert = LockFlags(rawValue: 0x0000_0004)
    public static let valBlk = LockFlags(rawValue: 0x0000_0008)
    public static let queCvt = LockFlags(rawValue: 0x0000_0010)
    public static let ivValBlk = LockFlags(rawValue: 0x0000_0020)
    public static let convDeadlk = LockFlags(rawValue: 0x0000_0040)
    public static let persistent = LockFlags(rawValue: 0x0000_0080)
    public static let noDlckWt = LockFlags(rawValue: 0x0000_0100)
    public static let noDlckBlk = LockFlags(rawValue: 0x0000_0200)
    public static let expedite = LockFlags(rawValue: 0x0000_0400)
    public static let noQueueBast = LockFlags(rawValue: 0x0000_0800)
    public static let headQue = LockFlags(rawValue: 0x0000_1000)
    public static let noOrder = LockFlags(rawValue: 0x0000_2000)
    public static let orphan = LockFlags(rawValue: 0x0000_4000)
    public static let altPR = LockFlags(rawValue: 0x0000_8000)
    public static let altCW = LockFlags(rawValue: 0x0001_0000)
    public static let forceUnlock = LockFlags(rawValue: 0x0002_0000)
    public static let timeout = LockFlags(rawValue: 0x0004_0000)

    /// Names in bit order, as the kernel's tracepoints print them.
    public static let names: [(UInt32, String)] = [
        (0x0000_0001, "NOQUEUE"), (0x0000_0002, "CANCEL"), (0x0000_0004, "CONVERT"),
        (0x0000_0008, "VALBLK"), (0x0000_0010, "QUECVT"), (0x0000_0020, "IVVALBLK"),
        (0x0000_0040, "CONVDEADLK"), (0x0000_0080, "PERSISTENT"), (0x0000_0100, "NODLCKWT"),
        (0x0000_0200, "NODLCKBLK"), (0x0000_0400, "EXPEDITE"), (0x0000_0800, "NOQUEUEBAST"),
        (0x0000_1000, "HEADQUE"), (0x0000_2000, "NOORDER"), (0x0000_4000, "ORPHAN"),
        (0x0000_8000, "ALTPR"), (0x0001_0000, "ALTCW"), (0x0002_0000, "FORCEUNLOCK"),
        (0x0004_0000, "TIMEOUT"),
    ]
}

/// `DLM_SBF_*`: status block flags, carried in `m_sbflags`.
public enum StatusBlockFlags {
    public static let demoted: UInt32 = 0x01
    public static let valNotValid: UInt32 = 0x02
    public static let altMode: UInt32 = 0x04
    public static let names: [(UInt32, String)] = [(0x01, "DEMOTED"), (0x02, "VALNOTVALID"), (0x04, "ALTMODE")]
}

/// Bits of `m_flags` / `rl_flags`. Only the low 16 bits are meaningful to a receiver;
/// 5.10 and 6.1 leak node-private lkb flags in the high bits (wire.md §6.4).
public enum LockBlockFlags {
    public static let user: UInt32 = 0x0000_0001
    public static let orphan: UInt32 = 0x0000_0002
    /// Mask a receiver applies before using the value.
    public static let distributedMask: UInt32 = 0x0000_FFFF
    /// A 6.1 receiver skips flag processing of a reply whose m_flags is exactly this; never send it.
    public static let stubMS: UInt32 = 0x0200_0000
    public static let names: [(UInt32, String)] = [
        (0x0000_0001, "USER"), (0x0000_0002, "ORPHAN"),
        (0x0001_0000, "MSTCPY"), (0x0002_0000, "RESEND"), (0x0004_0000, "DEAD"),
        (0x0008_0000, "OVERLAP_UNLOCK"), (0x0010_0000, "OVERLAP_CANCEL"), (0x0020_0000, "ENDOFLIFE"),
        (0x0040_0000, "WATCH_TIMEWARN"), (0x0080_0000, "TIMEOUT_CANCEL"), (0x0100_0000, "DEADLOCK_CANCEL"),
        (0x0200_0000, "STUB_MS"),
    ]
}

/// `DLM_CB_*` bits of `m_asts` / `rl_asts`.
public enum CallbackFlags {
    public static let cast: UInt32 = 0x1
    public static let bast: UInt32 = 0x2
}

/// `DLM_LKSTS_*`: which queue a lock is on (`m_status`, `rl_status`).
public enum LockStatus: Int32, Sendable, CustomStringConvertible {
    case waiting = 1
    case granted = 2
    case convert = 3
    public var description: String {
        switch self {
        case .waiting: return "WAITING"
        case .granted: return "GRANTED"
        case .convert: return "CONVERT"
        }
    }
}

/// `DLM_RS_*`: recovery status bits in `rc_result` of RCOM_STATUS_REPLY.
public enum RecoveryStatusBits {
    public static let nodes: Int32 = 0x01
    public static let nodesAll: Int32 = 0x02
    public static let dir: Int32 = 0x04
    public static let dirAll: Int32 = 0x08
    public static let locks: Int32 = 0x10
    public static let locksAll: Int32 = 0x20
    public static let done: Int32 = 0x40
    public static let doneAll: Int32 = 0x80
    public static let names: [(UInt32, String)] = [
        (0x01, "NODES"), (0x02, "NODES_ALL"), (0x04, "DIR"), (0x08, "DIR_ALL"),
        (0x10, "LOCKS"), (0x20, "LOCKS_ALL"), (0x40, "DONE"), (0x80, "DONE_ALL"),
    ]
}

/// `rs_flags` of RCOM_STATUS.
public enum StatusRequestFlags {
    public static let needSlots: UInt32 = 0x1
    public static let names: [(UInt32, String)] = [(0x1, "NEED_SLOTS")]
}

/// Sizes and limits (wire.md §1.3, §6.1).
public enum WireLimits {
    public static let headerSize = 16
    public static let messageFixedSize = 88
    public static let rcomFixedSize = 48
    public static let optsHeaderSize = 24
    public static let rcomStatusSize = 16
    public static let rcomConfigSize = 32
    public static let rcomSlotSize = 16
    public static let rcomLockSize = 108
    /// Largest `h_length` of anything on the wire (outer length, OPTS included).
    public static let maxMessageSize = 4096
    /// Largest message before OPTS wrapping.
    public static let maxAppMessageSize = 4096 - 24
    public static let maxResourceNameLength = 64
    public static let maxLockspaceNameLength = 64
    /// rc_buf of a NAMES_REPLY on 5.14+ kernels (h_length 4072) and on older ones (h_length 4096).
    public static let namesReplyBufferSize = 4072 - 48
    public static let namesReplyBufferSizeV31 = 4096 - 48
    /// The default TCP/SCTP port.
    public static let defaultPort = 21064
}

/// Errno values as they appear on the wire (x86-64 numbering; `to_dlm_errno()` fixes the
/// seven architecture-dependent ones to these same numbers). `m_result` is negative.
public enum WireErrno {
    public static let names: [Int32: String] = [
        0: "0", -2: "-ENOENT", -3: "-ESRCH", -11: "-EAGAIN", -12: "-ENOMEM", -15: "-ENOTBLK",
        -16: "-EBUSY", -17: "-EEXIST", -22: "-EINVAL", -35: "-EDEADLK", -53: "-EBADR",
        -57: "-EBADSLT", -71: "-EPROTO", -95: "-EOPNOTSUPP", -110: "-ETIMEDOUT",
        -115: "-EINPROGRESS", -65537: "-DLM_ECANCEL", -65538: "-DLM_EUNLOCK",
    ]
    public static let enoent: Int32 = -2
    public static let esrch: Int32 = -3
    public static let eagain: Int32 = -11
    public static let enomem: Int32 = -12
    public static let enotblk: Int32 = -15
    public static let ebusy: Int32 = -16
    public static let eexist: Int32 = -17
    public static let einval: Int32 = -22
    public static let edeadlk: Int32 = -35
    public static let ebadr: Int32 = -53
    public static let eproto: Int32 = -71
    public static let eopnotsupp: Int32 = -95
    public static let etimedout: Int32 = -110
    public static let einprogress: Int32 = -115
    public static let dlmECancel: Int32 = -65537
    public static let dlmEUnlock: Int32 = -65538
}

/// Render a flag word as `A|B|0x...` in bit order, "0" when empty (tracepoint style).
public func flagNames(_ value: UInt32, _ table: [(UInt32, String)]) -> String {
    if value == 0 { return "0" }
    var parts: [String] = []
    var rest = value
    for (bit, name) in table where value & bit != 0 {
        parts.append(name)
        rest &= ~bit
    }
    if rest != 0 { parts.append("0x" + hex(rest, width: 1)) }
    return parts.joined(separator: "|")
}

@inlinable
func hex<T: BinaryInteger>(_ value: T, width: Int) -> String {
    let digits = String(value, radix: 16)
    return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
}
