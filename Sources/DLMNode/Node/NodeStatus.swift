import DLMTransport
import NIOCore

/// What `dlm-peer status` shows: every lockspace (members, generation, slot, recovery phase and
/// timing) and every peer (protocol version, FIN state, sequence numbers, unacknowledged
/// messages, retransmits, connections). Encoded as JSON with snake_case keys.
public struct NodeStatus: Codable, Sendable {
    public struct LockspaceStatus: Codable, Sendable {
        public var name: String
        /// `h_lockspace` in hex.
        public var id: String
        public var members: [UInt32]
        public var generation: UInt32
        public var ourSlot: UInt16
        public var slots: [String]
        public var phase: String
        public var recoverStatus: String
        public var recoverSeq: UInt64
        public var completedRecoveries: Int
        public var lastRecoveryMilliseconds: Double?
        public var waitingFor: UInt32?
        public var resources: Int
        public var locks: Int
        public var rcomSent: Int
        public var rcomReceived: Int
        public var rcomTimeouts: Int
    }

    public struct PeerStatus: Codable, Sendable {
        public var node: UInt32
        public var version: String
        public var finState: String
        public var nextSendSeq: UInt32
        public var nextExpectedSeq: UInt32
        public var unacked: Int
        public var oldestUnackedAgeMilliseconds: Double?
        public var sent: Int
        public var delivered: Int
        public var retransmits: Int
        public var reconnects: Int
        public var drops: [String: Int]
        public var connectionsOpen: Int
        public var transmitConnectionOutgoing: Bool?
        public var bytesIn: Int
        public var bytesOut: Int
    }

    public var node: UInt32
    public var cluster: String
    public var uptimeSeconds: Double
    public var lockspaces: [LockspaceStatus]
    public var peers: [PeerStatus]

    /// A few aligned lines for people.
    public var text: String {
        var out = "node \(node) of cluster \(cluster), up \(String(format: "%.1f", uptimeSeconds)) s\n"
        out += "lockspaces:\n"
        for l in lockspaces {
            out += "  \(l.name) (\(l.id))  members \(l.members.map(String.init).joined(separator: ","))"
            out += "  generation \(l.generation)  slot \(l.ourSlot)  phase \(l.phase)  recoveries \(l.completedRecoveries)"
            if let ms = l.lastRecoveryMilliseconds { out += String(format: " (last %.0f ms)", ms) }
            out += "  resources \(l.resources)  locks \(l.locks)\n"
        }
        out += "peers:\n"
        for p in peers {
            out += "  node \(p.node)  \(p.version)  \(p.finState)  seq out \(p.nextSendSeq) in \(p.nextExpectedSeq)"
            out += "  unacked \(p.unacked)  retransmits \(p.retransmits)  reconnects \(p.reconnects)"
            out += "  connections \(p.connectionsOpen)  drops \(p.drops.values.reduce(0, +))\n"
        }
        return out
    }
}
