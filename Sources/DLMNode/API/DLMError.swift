import DLMTransport

/// The error of a lock API call: the DLM status code (`sb_status`, or the synchronous return value
/// of `dlm_lock`/`dlm_unlock`) with a sentence about what went wrong.
///
/// ```swift
/// do {
///     let lock = try await ls.lock("res", mode: .ex, flags: .noQueue)
/// } catch let e as DLMError where e.code == .eagain {
///     // somebody else holds it
/// }
/// ```
public struct DLMError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The status codes, with the kernel's (negative, x86-64) numbers as raw values.
    public enum Code: Int32, Sendable, CaseIterable, CustomStringConvertible {
        /// -EAGAIN: a NOQUEUE request or conversion could not be granted at once.
        case eagain = -11
        /// -EDEADLK: a conversion deadlock (the conversion was refused; the lock keeps its mode).
        case edeadlk = -35
        /// -DLM_ECANCEL: the request or conversion was cancelled.
        case ecancel = -65537
        /// -DLM_EUNLOCK: the lock was unlocked while the operation waited (force-unlock).
        case eunlock = -65538
        /// -EINVAL: bad arguments (mode, flag combination, LVB size, unknown lockspace, a master copy).
        case einval = -22
        /// -EBUSY: another operation of the lock is outstanding, or the lock is not granted.
        case ebusy = -16
        /// -ENOENT: no such lock.
        case enoent = -2
        /// -ETIMEDOUT (reported by old kernels for timed-out requests).
        case etimedout = -110
        /// -EPROTO: an unexpected result from the master (see `DLMError.raw`).
        case eproto = -71
        /// -ESHUTDOWN: the node left the lockspace while the call waited.
        case eshutdown = -108

        /// The errno name without the minus sign: "EAGAIN", "DLM_ECANCEL".
        public var name: String {
            switch self {
            case .eagain: return "EAGAIN"
            case .edeadlk: return "EDEADLK"
            case .ecancel: return "DLM_ECANCEL"
            case .eunlock: return "DLM_EUNLOCK"
            case .einval: return "EINVAL"
            case .ebusy: return "EBUSY"
            case .enoent: return "ENOENT"
            case .etimedout: return "ETIMEDOUT"
            case .eproto: return "EPROTO"
            case .eshutdown: return "ESHUTDOWN"
            }
        }

        public var description: String { name }

        /// The code for an errno name, with or without "-" and the "DLM_" prefix ("EAGAIN", "-ECANCEL").
        public init?(name: String) {
            var n = name.uppercased()
            if n.hasPrefix("-") { n.removeFirst() }
            if n.hasPrefix("DLM_") { n.removeFirst(4) }
            switch n {
            case "ECANCEL": self = .ecancel
            case "EUNLOCK": self = .eunlock
            default:
                guard let c = Code.allCases.first(where: { $0.name == n }) else { return nil }
                self = c
            }
        }
    }

    public var code: Code
    /// What happened, for people.
    public var message: String
    /// The status as received when it is none of `Code` (then `code` is `.eproto`).
    public var raw: Int32

    public init(_ code: Code, _ message: String = "", raw: Int32? = nil) {
        self.code = code
        self.message = message
        self.raw = raw ?? code.rawValue
    }

    /// The errno value (negative), as `sb_status` would hold it.
    public var errno: Int32 { raw }

    public var description: String {
        message.isEmpty ? code.name : "\(code.name): \(message)"
    }

    /// The error a lock manager status stands for; nil for success (granted) and "queued".
    public init?(_ result: LockResult, _ message: String = "") {
        switch result {
        case .granted, .queued: return nil
        case .wouldBlock: self.init(.eagain, message)
        case .deadlock: self.init(.edeadlk, message)
        case .busy: self.init(.ebusy, message)
        case .notFound: self.init(.enoent, message)
        case .invalid: self.init(.einval, message)
        case .cancelled: self.init(.ecancel, message)
        case .unlocked: self.init(.eunlock, message)
        }
    }

    /// From a raw status value (`m_result`, `sb_status`).
    public init(status: Int32, _ message: String = "") {
        if let code = Code(rawValue: status) {
            self.init(code, message)
        } else {
            self.init(.eproto, message.isEmpty ? "status \(WireErrno.names[status] ?? "\(status)")" : message, raw: status)
        }
    }
}
