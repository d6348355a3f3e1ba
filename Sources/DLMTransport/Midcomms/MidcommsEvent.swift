import NIOCore

/// Identifies one TCP/SCTP connection to a peer (assigned by lowcomms; opaque here).
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "conn#\(rawValue)" }
}

/// How a connection ended.
public enum ConnectionLoss: Hashable, Sendable {
    /// A socket error (reset, refused, timeout): the kernel resends unacknowledged messages.
    case error(String)
    /// A clean end of stream from the peer. 6.1 does not resend after this; we do unless
    /// `MidcommsConfig.retransmitAfterEOF` is off.
    case endOfFile
    /// We closed it ourselves (shutdown, fault injection, malformed stream).
    case closedLocally
}

/// What the upper layer asks midcomms to send. Header fields `h_version` and `h_nodeid` are
/// stamped by the machine; `h_lockspace` (the header's `word`) is the caller's.
public enum MidcommsPayload: Hashable, Sendable {
    case message(DLMMessage)
    case rcom(DLMRcom)

    public var header: DLMHeader {
        switch self {
        case .message(let m): return m.header
        case .rcom(let r): return r.header
        }
    }

    /// The message's size on the wire (bare, without an OPTS envelope).
    public var encodedLength: Int {
        switch self {
        case .message(let m): return m.encodedLength
        case .rcom(let r): return r.encodedLength
        }
    }

    /// Appends the bare message (the bytes `DLMPacket.message`/`.rcom` encode to).
    @inlinable
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .message(let m): m.encode(into: &buffer)
        case .rcom(let r): r.encode(into: &buffer)
        }
    }

    /// Sets `h_version`, `h_nodeid` and `h_cmd` as midcomms sends them, in place.
    mutating func stamp(version: ProtocolVersion, nodeID: UInt32) {
        switch self {
        case .message(var m):
            m.header.version = version
            m.header.nodeID = nodeID
            m.header.command = HeaderCommand.message.rawValue
            self = .message(m)
        case .rcom(var r):
            r.header.version = version
            r.header.nodeID = nodeID
            r.header.command = HeaderCommand.rcom.rawValue
            self = .rcom(r)
        }
    }
}

/// Inputs of `MidcommsPeer`. Time comes separately, as the `now` argument of `handle`.
public enum MidcommsEvent: Sendable {
    /// `connection` is now the one we transmit on for this peer (our own connect succeeded, or
    /// an accepted connection became the send socket). Resends what is unacknowledged.
    case connectionUp(ConnectionID)
    /// A connection of this peer ended. Only the loss of the transmit connection matters to
    /// midcomms; others (receive-only "othercon") are counted and logged.
    case connectionLost(ConnectionID, ConnectionLoss)
    /// One decoded message from the peer, read from `connection`.
    case received(DLMPacket, on: ConnectionID)
    /// One framed but not yet decoded message (exactly `h_length` bytes). Decoded here; bytes
    /// that do not decode are handled as the kernel would (a sane OPTS envelope still
    /// consumes its sequence number).
    case receivedFrame(ByteBuffer, on: ConnectionID)
    /// The read burst that delivered the previous `received*` events is over (6.1's
    /// `dlm_midcomms_receive_done`: the per-batch ACK point).
    case receiveBatchDone
    /// The upper layer sends one message to this peer.
    case send(MidcommsPayload)
    /// The peer became a member of one more lockspace of ours (`users` + 1).
    case memberAdded
    /// The peer left one of our lockspaces (`users` − 1; at 0 a CLOSE_WAIT peer gets our FIN).
    case memberRemoved
    /// This node is shutting down midcomms towards this peer (the kernel does this when the
    /// node's last lockspace is released): FIN handshake for a 3.2 peer, then close.
    case closeRequested
    /// The peer was removed from the cluster or fenced (`dlm_midcomms_close`): drop everything.
    case peerRemoved
    /// The timer requested by `.scheduleTimer` fired (or any time later).
    case timerFired
    /// Send an ACK now if anything delivered is not acknowledged yet (never sent by kernels on
    /// their own; harmless to them, and it lets an idle stream drain the peer's queue).
    case flushAck
    /// Replace the fault-injection settings.
    case setFaults(FaultInjection)
}
