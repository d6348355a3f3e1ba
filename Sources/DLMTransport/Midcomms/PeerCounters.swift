import NIOCore

/// Why an inbound message was not delivered (each has its own counter and log line).
public enum DropReason: String, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// `h_version` is neither 0x00030001 nor 0x00030002 (3.1 emulation: major not 3).
    case invalidVersion
    /// The message's version is not the one fixed for this peer ("version mismatch detected").
    case versionMismatch
    /// The bytes do not decode (lengths, payload shape); the kernel would skip it as well.
    case malformed
    /// `h_cmd` not accepted on this path: bare MSG/FIN from a 3.2 peer, OPTS/ACK/FIN from a
    /// 3.1 peer or while emulating 3.1.
    case unsupportedCommand
    /// A bare RCOM from a 3.2 peer whose type is not STATUS/NAMES(+REPLY).
    case unsupportedBareRcom
    /// A sequenced message older than the one expected (re-ACKed).
    case duplicate
    /// A sequenced message newer than the one expected (dropped silently, as the kernel does).
    case futureSequence
    /// A FIN received in order in a state that does not expect one.
    case unexpectedFin
    /// An ACK for sequence numbers we never sent (a stale peer state, wire.md §8.8).
    case bogusAck
    /// The sequence number was consumed but the inner message could not be decoded.
    case undecodableInner
    /// MSG/RCOM whose `h_nodeid` is not the peer's (the kernel's "invalid h_nodeid").
    case wrongNodeID

    public var description: String { rawValue }
}

/// Per-peer figures for the upper layers, debugfs-style dumps and `--json`.
public struct PeerCounters: Hashable, Sendable {
    /// Peer version as detected (nil: not yet known).
    public var version: ProtocolVersion?
    public var finState: FinState
    /// Next sequence number we will assign.
    public var nextSendSequence: UInt32
    /// Next sequence number we expect from the peer.
    public var nextExpectedSequence: UInt32
    /// Sequenced messages sent and not yet acknowledged.
    public var unackedCount: Int
    /// When the oldest unacknowledged message was first queued (from the `now` parameter).
    public var oldestUnackedSentAt: NIODeadline?
    /// Stateful messages held because the peer's version is not known yet.
    public var waitingForVersion: Int
    /// Lockspaces this peer shares with us (the kernel's `users`).
    public var users: Int
    /// Sequenced messages written again on a new connection.
    public var retransmits: Int = 0
    /// Transmit connections that came up after an earlier one was lost.
    public var reconnects: Int = 0
    /// Transmit connections lost (error or EOF).
    public var connectionLosses: Int = 0
    public var drops: [DropReason: Int] = [:]
    /// Messages handed to the upper layer (bare and sequenced).
    public var delivered: Int = 0
    /// Messages written for the upper layer, first copies only (bare and sequenced, FIN included).
    public var sent: Int = 0
    public var acksSent: Int = 0
    public var acksReceived: Int = 0
    /// Session resets (FIN completion, shutdown timeout, stuck state, close).
    public var resets: Int = 0
    /// Fault injection: ACKs withheld, frames dropped, frames duplicated.
    public var faultAcksWithheld: Int = 0
    public var faultDropped: Int = 0
    public var faultDuplicated: Int = 0

    public init(version: ProtocolVersion?, finState: FinState, nextSendSequence: UInt32,
                nextExpectedSequence: UInt32, unackedCount: Int, oldestUnackedSentAt: NIODeadline?,
                waitingForVersion: Int, users: Int) {
        self.version = version
        self.finState = finState
        self.nextSendSequence = nextSendSequence
        self.nextExpectedSequence = nextExpectedSequence
        self.unackedCount = unackedCount
        self.oldestUnackedSentAt = oldestUnackedSentAt
        self.waitingForVersion = waitingForVersion
        self.users = users
    }

    /// Total drops of all reasons.
    public var totalDrops: Int { drops.values.reduce(0, +) }

    public func drops(_ reason: DropReason) -> Int { drops[reason, default: 0] }

    /// Age of the oldest unacknowledged message at `now`.
    public func oldestUnackedAge(at now: NIODeadline) -> TimeAmount? {
        oldestUnackedSentAt.map { now - $0 }
    }
}
