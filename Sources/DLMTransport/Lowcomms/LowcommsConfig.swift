import NIOCore

/// What lowcomms needs to know about the cluster: who we are, where we listen, and where every
/// peer lives (wire.md §7.1: the kernel's configfs `comms/<nodeid>` entries and `tcp_port`).
public struct LowcommsConfig: Sendable {
    /// One peer node.
    public struct Peer: Sendable, Hashable {
        public var nodeID: UInt32
        /// The peer's configured IP addresses (the first is connected to). An accepted connection
        /// is mapped to this peer when its source IP equals one of them (port ignored, §7.3).
        public var addresses: [String]
        /// The midcomms behaviour towards this peer (kernel generation, 3.1 emulation, …).
        /// `nil`: `MidcommsConfig(localNodeID:peerNodeID:generation:emulate31:)` from the node's
        /// defaults below.
        public var midcomms: MidcommsConfig?

        public init(nodeID: UInt32, addresses: [String], midcomms: MidcommsConfig? = nil) {
            self.nodeID = nodeID
            self.addresses = addresses
            self.midcomms = midcomms
        }
    }

    /// Our nodeid (`h_nodeid` of everything we send).
    public var nodeID: UInt32
    /// Our configured addresses; the first one is listened on and bound as the source of every
    /// outgoing connection, so that the kernel maps us by source IP (§7.3).
    public var addresses: [String]
    /// Listen and connect port, cluster-wide (`tcp_port`, default 21064).
    public var port: Int
    public var peers: [Peer]
    /// Defaults for peers without their own `midcomms` config.
    public var generation: MidcommsConfig.Generation
    /// Pose as a 3.1 (≤ 5.13) node towards every peer without its own config.
    public var emulate31: Bool

    /// Listen backlog (6.1: 5, ≥ 6.4: 128).
    public var backlog: Int = 128
    /// Bytes a connection may hold back as an incomplete message. A valid stream never needs more
    /// than 4095 (h_length ≤ 4096); above this the connection is closed as malformed.
    public var receiveBufferLimit: Int = 64 * 1024
    /// First delay after a failed connect; doubles up to `reconnectMaxDelay`, reset on success.
    /// The first attempt after a lost connection is immediate, as in the kernel.
    public var reconnectInitialDelay: TimeAmount = .milliseconds(50)
    public var reconnectMaxDelay: TimeAmount = .seconds(1)
    /// Connect timeout of one attempt.
    public var connectTimeout: TimeAmount = .seconds(5)
    /// After our half-close (TCP FIN) at shutdown, how long to wait for the peer's EOF before
    /// force-closing (6.1: 10 s, newest: 5 s).
    public var eofTimeout: TimeAmount = .seconds(10)
    /// Send a DLM_ACK for everything delivered at the end of a read batch when the policy would
    /// leave it unacknowledged (midcomms `flushAck`). Off by default: kernels never do it; useful
    /// for one-way streams between two dlm-peer nodes in tests and benchmarks.
    public var flushAckEveryBatch: Bool = false

    public init(nodeID: UInt32, addresses: [String], port: Int = 21064, peers: [Peer],
                generation: MidcommsConfig.Generation = .newest, emulate31: Bool = false) {
        self.nodeID = nodeID
        self.addresses = addresses
        self.port = port
        self.peers = peers
        self.generation = generation
        self.emulate31 = emulate31
    }

    /// The midcomms config used for `peer`.
    public func midcommsConfig(for peer: Peer) -> MidcommsConfig {
        if var c = peer.midcomms {
            c.localNodeID = nodeID
            c.peerNodeID = peer.nodeID
            return c
        }
        return MidcommsConfig(localNodeID: nodeID, peerNodeID: peer.nodeID, generation: generation, emulate31: emulate31)
    }
}

/// Errors of the lowcomms layer (API misuse and setup; received bytes never throw).
public struct LowcommsError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        case invalidAddress
        case unknownPeer
        case notStarted
        case alreadyStarted
        case shutDown
    }

    public var kind: Kind
    public var detail: String

    public init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { "lowcomms: \(kind): \(detail)" }
}

/// Something the upper layer may want to know about a peer (called on the lowcomms event loop).
public enum LowcommsEvent: Sendable, Hashable {
    /// The peer's protocol version became known.
    case versionDetected(node: UInt32, ProtocolVersion)
    case finStateChanged(node: UInt32, from: FinState, to: FinState)
    case sessionReset(node: UInt32, ResetReason)
    /// A connection is established (`outgoing`: we connected; otherwise accepted).
    case connectionUp(node: UInt32, ConnectionID, outgoing: Bool)
    case connectionDown(node: UInt32, ConnectionID)
    /// `connection` is now the one we transmit on for `node`.
    case transmitConnection(node: UInt32, ConnectionID)
    /// At the end of a read batch: ACKs freed part of the send queue; `unacked` remain.
    case acknowledged(node: UInt32, unacked: Int)
    /// Our `closeRequested` for the peer finished (graceful: handshake completed).
    case closed(node: UInt32, graceful: Bool)
}
