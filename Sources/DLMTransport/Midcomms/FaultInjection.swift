/// Faults the midcomms machine applies to its own output, on purpose (tests now, the CLI later).
///
/// Pure state: the machine consults and decrements it as frames go out. Killing connections
/// is lowcomms' business (it owns the sockets); together they reproduce what `tcpkill` did in
/// the kernel test suites.
public struct FaultInjection: Hashable, Sendable {
    /// Which outgoing frames `dropNext`/`duplicateNext` count and affect.
    public enum Scope: Hashable, Sendable {
        /// Sequenced (OPTS-wrapped) messages only, first copies and retransmissions.
        case sequenced
        /// Every frame we write: sequenced, bare RCOM/MSG and ACK.
        case all
    }

    /// Send no DLM_ACK at all while set (each one withheld is counted).
    public var withholdAcks: Bool
    /// Do not write the next N frames in scope. A dropped sequenced message stays in the
    /// unacknowledged queue, exactly as if the bytes had been lost in flight: only a
    /// reconnect brings it back.
    public var dropNext: Int
    /// Write the next N frames in scope twice.
    public var duplicateNext: Int
    public var scope: Scope

    public init(withholdAcks: Bool = false, dropNext: Int = 0, duplicateNext: Int = 0, scope: Scope = .sequenced) {
        self.withholdAcks = withholdAcks
        self.dropNext = dropNext
        self.duplicateNext = duplicateNext
        self.scope = scope
    }

    public static let none = FaultInjection()

    public var isActive: Bool { withholdAcks || dropNext > 0 || duplicateNext > 0 }

    /// What to do with one outgoing frame; consumes one unit of drop/duplicate budget when it applies.
    mutating func decide(sequenced: Bool) -> Decision {
        switch scope {
        case .sequenced where !sequenced: return .write
        case .sequenced, .all: break
        }
        if dropNext > 0 {
            dropNext -= 1
            return .drop
        }
        if duplicateNext > 0 {
            duplicateNext -= 1
            return .duplicate
        }
        return .write
    }

    enum Decision: Sendable {
        case write, drop, duplicate
    }
}
