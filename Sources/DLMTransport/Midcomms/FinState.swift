/// The DLM_FIN termination state of one peer (wire.md §8.7). Raw values are the kernel's.
///
/// Only used with 3.2 peers. A peer starts CLOSED; it becomes ESTABLISHED when it is added
/// to a lockspace (or, depending on the kernel generation emulated, when a session-start
/// RCOM arrives or the version is detected), and returns to CLOSED through the 4-way
/// FIN handshake, a shutdown timeout, or a reset.
public enum FinState: Int, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    case closed = 1
    case established = 2
    case finWait1 = 3
    case finWait2 = 4
    case closeWait = 5
    case lastAck = 6
    case closing = 7

    /// The kernel's debugfs spelling.
    public var description: String {
        switch self {
        case .closed: return "CLOSED"
        case .established: return "ESTABLISHED"
        case .finWait1: return "FIN_WAIT1"
        case .finWait2: return "FIN_WAIT2"
        case .closeWait: return "CLOSE_WAIT"
        case .lastAck: return "LAST_ACK"
        case .closing: return "CLOSING"
        }
    }

    /// A termination is under way (the states the kernel calls "stuck" when a new session starts).
    public var isTerminating: Bool {
        switch self {
        case .closed, .established: return false
        case .finWait1, .finWait2, .closeWait, .lastAck, .closing: return true
        }
    }
}
