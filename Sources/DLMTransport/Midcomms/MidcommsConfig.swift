import NIOCore

/// How a peer's midcomms machine behaves: which kernel generation it imitates, or whether it
/// poses as an old 3.1 node. Every knob that a kernel peer can observe is here.
public struct MidcommsConfig: Hashable, Sendable {
    /// Kernel generations whose observable midcomms behaviour we can reproduce (wire.md §12).
    public enum Generation: Hashable, Sendable {
        /// 5.14 … ~6.5, Debian bookworm's 6.1: NAMES bare, per-batch ACK, 180 s shutdown timeout,
        /// a session starts on a bare STATUS/NAMES(+REPLY) or member add.
        case kernel61
        /// ≥ ~6.6: only STATUS and the normal STATUS_REPLY bare, 32/256 ACK thresholds, 5 s shutdown
        /// timeout, a session starts on version detection or member add.
        case newest
    }

    /// Which RCOMs a 3.2 node sends bare (unsequenced). The "not ready" STATUS_REPLY
    /// (`rc_result` −ESRCH) is always sequenced.
    public enum StatelessStyle: Hashable, Sendable {
        /// STATUS, STATUS_REPLY, NAMES, NAMES_REPLY bare.
        case kernel61
        /// STATUS and STATUS_REPLY bare; NAMES and NAMES_REPLY sequenced.
        case newest
    }

    /// When a 3.2 receiver sends a DLM_ACK for delivered messages (besides the immediate ACKs
    /// for FINs and duplicates, which both policies send).
    public enum AckPolicy: Hashable, Sendable {
        /// 6.1: after every receive batch that delivered a sequenced message, ESTABLISHED only.
        case perBatch
        /// Newer kernels: when more than `onReceive` were delivered since the last threshold ACK
        /// (checked on delivery), or more than `onSend` just before we send a sequenced message
        /// (the ACK goes out first).
        case threshold(onSend: Int, onReceive: Int)

        /// The newest kernel's values: 32 on send, 256 on receive.
        public static let kernelThreshold = AckPolicy.threshold(onSend: 32, onReceive: 256)
    }

    /// What moves a peer from CLOSED to ESTABLISHED besides a member add, and whether a
    /// session-start message resets a termination that got stuck.
    public enum SessionStart: Hashable, Sendable {
        /// 6.1: a bare STATUS/STATUS_REPLY/NAMES/NAMES_REPLY (any version) moves CLOSED to
        /// ESTABLISHED and resets a peer found in FIN_WAIT*/CLOSE_WAIT/LAST_ACK/CLOSING.
        case statusFamily
        /// Newest: the first message that fixes the version moves CLOSED to ESTABLISHED;
        /// stuck terminations are reset only by a member add.
        case versionDetection
    }

    /// Our own nodeid (`h_nodeid` of everything we send).
    public var localNodeID: UInt32
    /// The peer's nodeid: received MSG/RCOM must carry it in `h_nodeid`.
    public var peerNodeID: UInt32
    /// Pose as a ≤ 5.13 node: `h_version` 0x00030001 everywhere, never wrap, never ACK, never
    /// FIN, skip OPTS/ACK/FIN from the peer as a 5.10–5.13 kernel does.
    public var emulate31: Bool
    public var statelessStyle: StatelessStyle
    public var ackPolicy: AckPolicy
    /// How long an active close waits for the FIN handshake (6.1: 180 s, newest: 5 s).
    public var shutdownTimeout: TimeAmount
    public var sessionStart: SessionStart
    /// Resend unacknowledged messages after any loss of the transmit connection, clean EOF
    /// included (our default). `false` copies 6.1 exactly: no resend after a clean EOF.
    public var retransmitAfterEOF: Bool
    /// First sequence number after creation or reset (the kernel's `DLM_SEQ_INIT`, 0). Tests set
    /// it near 2^32 to exercise wrap-around; both peers must agree on it.
    public var initialSequence: UInt32

    public init(
        localNodeID: UInt32,
        peerNodeID: UInt32,
        generation: Generation = .newest,
        emulate31: Bool = false
    ) {
        self.localNodeID = localNodeID
        self.peerNodeID = peerNodeID
        self.emulate31 = emulate31
        self.retransmitAfterEOF = true
        self.initialSequence = 0
        switch generation {
        case .kernel61:
            statelessStyle = .kernel61
            ackPolicy = .perBatch
            shutdownTimeout = .seconds(180)
            sessionStart = .statusFamily
        case .newest:
            statelessStyle = .newest
            ackPolicy = .kernelThreshold
            shutdownTimeout = .seconds(5)
            sessionStart = .versionDetection
        }
    }

    /// The `h_version` we put on everything we send.
    public var ownVersion: ProtocolVersion { emulate31 ? .v3_1 : .v3_2 }
}
