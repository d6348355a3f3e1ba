/// Per-peer lowcomms figures, next to the peer's midcomms counters.
public struct LowcommsPeerCounters: Hashable, Sendable {
    public var nodeID: UInt32
    /// The midcomms machine's counters (version, FIN state, seqs, unacked, retransmits, drops…).
    public var midcomms: PeerCounters
    /// Connections open now (outgoing and accepted).
    public var connectionsOpen: Int = 0
    /// The connection we transmit on, if any, and whether we opened it.
    public var transmitConnection: ConnectionID?
    public var transmitIsOutgoing: Bool = false
    /// Outgoing connects started / established / failed (refused included).
    public var connectAttempts: Int = 0
    public var connectsSucceeded: Int = 0
    public var connectsFailed: Int = 0
    /// Connect attempts refused (the peer does not listen: normal while it has no lockspace).
    public var connectsRefused: Int = 0
    /// Connections from this peer that we accepted.
    public var connectionsAccepted: Int = 0
    /// Accepted connections closed because a newer one from the same peer replaced them (othercon).
    public var connectionsReplaced: Int = 0
    /// Transmit connections that came up again after an earlier one was lost.
    public var reconnects: Int = 0
    /// Connections that ended, by how.
    public var connectionsLostError: Int = 0
    public var connectionsLostEOF: Int = 0
    public var connectionsClosedLocally: Int = 0
    /// Fault injection: kill operations and connections aborted by them.
    public var kills: Int = 0
    public var connectionsKilled: Int = 0
    /// Connections closed because of a bad `h_length` / an overfull receive buffer.
    public var framingErrors: Int = 0
    public var receiveBufferOverflows: Int = 0
    public var bytesIn: Int = 0
    public var bytesOut: Int = 0
    public var framesIn: Int = 0
    public var framesOut: Int = 0

    public init(nodeID: UInt32, midcomms: PeerCounters) {
        self.nodeID = nodeID
        self.midcomms = midcomms
    }
}

/// A snapshot of a whole node's lowcomms.
public struct LowcommsCounters: Hashable, Sendable {
    public var peers: [UInt32: LowcommsPeerCounters] = [:]
    /// Accepted connections from addresses not in the config ("connect from non cluster node").
    public var rejectedUnknownAddress: Int = 0
    /// Connections accepted from configured peers.
    public var accepted: Int = 0

    public init() {}
}
