import NIOCore

/// One encoded message to write to the peer's transmit connection.
public struct OutboundFrame: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        /// DLM_OPTS with this sequence number; `retransmission` for a copy of an earlier write.
        case sequenced(seq: UInt32, retransmission: Bool)
        /// DLM_ACK with this value (next sequence number expected).
        case ack(UInt32)
        /// A bare DLM_MSG/DLM_RCOM (stateless RCOMs, any message to or as a 3.1 node).
        case bare
    }

    public var kind: Kind
    /// The whole message, `h_length` bytes. Retransmissions are the stored bytes, unchanged.
    public var bytes: ByteBuffer

    public init(kind: Kind, bytes: ByteBuffer) {
        self.kind = kind
        self.bytes = bytes
    }
}

/// A message for the upper layer (lock manager or recovery), in order, exactly once.
public struct Delivery: Hashable, Sendable {
    public var payload: MidcommsPayload
    /// The midcomms sequence number, nil for a bare message.
    public var seq: UInt32?

    public init(payload: MidcommsPayload, seq: UInt32?) {
        self.payload = payload
        self.seq = seq
    }
}

/// Why the peer's session state (seq numbers, version, queue) was reset.
public enum ResetReason: Hashable, Sendable, CustomStringConvertible {
    /// The FIN handshake completed (from LAST_ACK, CLOSING or FIN_WAIT2).
    case finHandshakeComplete
    /// The shutdown timeout expired before the handshake completed.
    case shutdownTimeout
    /// A new session started while a termination was still under way ("shutdown stuck").
    case stuckTermination
    /// The node left (our shutdown towards a peer that has no FIN: 3.1, version unknown, CLOSED).
    case shutdown
    /// `peerRemoved`: the peer was removed from the cluster.
    case peerRemoved

    public var description: String {
        switch self {
        case .finHandshakeComplete: return "FIN handshake complete"
        case .shutdownTimeout: return "shutdown timeout"
        case .stuckTermination: return "shutdown stuck"
        case .shutdown: return "shutdown"
        case .peerRemoved: return "peer removed"
        }
    }
}

public enum LogLevel: Int, Hashable, Sendable, Comparable {
    case debug, info, warning
    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
}

/// Outputs of `MidcommsPeer`, to be carried out in order.
public enum MidcommsAction: Hashable, Sendable {
    /// Write the frame on `connection` (the current transmit connection).
    case write(OutboundFrame, on: ConnectionID)
    /// There is something to send and no transmit connection: connect (once per outage).
    case connect
    /// Hand a message to the upper layer.
    case deliver(Delivery)
    /// The peer's protocol version became known (first accepted message since the last reset).
    case versionDetected(ProtocolVersion)
    /// The FIN state changed.
    case finStateChanged(from: FinState, to: FinState)
    /// Sequence numbers, version and send queue were reset (both sides start again at 0).
    case sessionReset(ResetReason)
    /// Our `closeRequested` is done (handshake finished, timed out, or nothing to do):
    /// `graceful` false after a timeout (the kernel force-closes then).
    case closeConnections(graceful: Bool)
    /// Call `handle(.timerFired, now:)` at `deadline` (replaces any earlier request).
    case scheduleTimer(NIODeadline)
    case cancelTimer
    /// An inbound message was dropped; counted under `reason`.
    case dropped(DropReason, String)
    case log(LogLevel, String)
}
