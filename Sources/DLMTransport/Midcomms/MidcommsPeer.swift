import NIOCore

/// The sans-IO midcomms machine for one peer node: versions, sequence numbers, ACKs,
/// resending after reconnects, and the DLM_FIN close (wire.md §8, kernel `fs/dlm/midcomms.c`).
///
/// A value type with no IO and no clock: feed it `MidcommsEvent`s with the current time and
/// carry out the returned `MidcommsAction`s in order. Lowcomms owns one per configured peer.
///
/// Where we differ from the kernel (and why a kernel peer cannot tell):
/// * Stateful sends before the peer's version is known are held and sent once it is known;
///   the kernel fails them (-ENOBUFS and a WARN).
/// * Unacknowledged messages are resent after any loss of the transmit connection, a clean
///   EOF included (6.1 resends only after a socket error; the peer drops duplicates and
///   re-ACKs, as it does after every kernel resend). `retransmitAfterEOF` restores 6.1.
/// * The loss of a receive-only connection does not make us resend (6.1 closes its primary
///   connection and resends; the kernel peer simply sees fewer duplicates).
/// * After a reconnect we send ACK(next expected) first if we have received anything in this
///   session: the kernel never resends a lost ACK, and a lost FIN ACK would stall the peer's
///   close until its shutdown timeout.
/// * Every FIN received in order is ACKed at once, also in the states where the kernel logs
///   "unexpected state" and sends nothing; the ACK is truthful and cumulative.
/// * Duplicate detection is wrap-aware (6.1 compares plainly, so near 2^32 it fails to re-ACK).
/// * An ACK for sequence numbers we never sent is ignored and logged (the kernel empties the
///   whole send queue, losing the messages of a stale session silently).
/// * An OPTS whose envelope passes the kernel's length checks but whose inner message we
///   cannot decode still consumes its sequence number (as in the kernel) and is then dropped.
public struct MidcommsPeer: Sendable {
    /// A peer version as midcomms knows it (`DLM_VERSION_3_1` / `DLM_VERSION_3_2`).
    enum PeerVersion: Sendable {
        case v31, v32

        var wire: ProtocolVersion {
            switch self {
            case .v31: return .v3_1
            case .v32: return .v3_2
            }
        }
    }

    /// Which side's FIN a queued message is (its ACK runs the kernel's `ack_rcv` callback).
    enum FinRole: Sendable {
        case active, passive
    }

    struct Unacked: Sendable {
        var seq: UInt32
        /// The encoded DLM_OPTS in `store`.
        var ref: SendStore.Ref
        var fin: FinRole?
        var queuedAt: NIODeadline
        /// Written to some connection at least once (it may be lost in flight).
        var written: Bool
    }

    public let config: MidcommsConfig
    public private(set) var finState: FinState = .closed
    var peerVersion: PeerVersion?
    var seqSend: UInt32
    var seqNext: UInt32
    var users = 0
    var unacked = CircularBuffer<Unacked>()
    /// The bytes of the `unacked` messages.
    var store = SendStore()
    /// `.write` actions of this `handle` (index in its output) still to get their stored bytes.
    var storedWrites: [(index: Int, ref: SendStore.Ref)] = []
    /// Stateful sends waiting for the version (see the type comment).
    var waitingForVersion = CircularBuffer<MidcommsPayload>()
    /// Bare frames that found no transmit connection.
    var pendingBare: [ByteBuffer] = []
    /// An ACK that found no transmit connection (sent with the then current value on connect).
    var ackOwed = false
    var transmit: ConnectionID?
    var hadTransmitConnection = false
    var resendOnUp = false
    var connectRequested = false
    /// Threshold policy: sequenced messages delivered since the last threshold ACK (`ulp_delivered`).
    var deliveredSinceAck = 0
    /// Per-batch policy: something was delivered in this batch (`DLM_NODE_ULP_DELIVERED`).
    var deliveredInBatch = false
    /// Value of the last ACK we sent.
    var ackedUpTo: UInt32
    /// We sent our FIN (`DLM_NODE_FLAG_STOP_TX`).
    var stopTx = false
    /// We received the peer's FIN (`DLM_NODE_FLAG_STOP_RX`).
    var stopRx = false
    /// Deadline of our pending `closeRequested`.
    var closeDeadline: NIODeadline?
    var versionJustDetected = false
    public private(set) var faults = FaultInjection.none
    var stats: PeerCounters
    var now = NIODeadline.uptimeNanoseconds(0)
    let allocator = ByteBufferAllocator()

    public init(config: MidcommsConfig) {
        self.config = config
        seqSend = config.initialSequence
        seqNext = config.initialSequence
        ackedUpTo = config.initialSequence
        stats = PeerCounters(version: nil, finState: .closed, nextSendSequence: config.initialSequence,
                             nextExpectedSequence: config.initialSequence, unackedCount: 0,
                             oldestUnackedSentAt: nil, waitingForVersion: 0, users: 0)
    }

    // MARK: - Public view

    /// The peer's version once detected.
    public var version: ProtocolVersion? { peerVersion?.wire }
    public var nextSendSequence: UInt32 { seqSend }
    public var nextExpectedSequence: UInt32 { seqNext }
    public var unackedCount: Int { unacked.count }
    public var transmitConnection: ConnectionID? { transmit }
    /// Our `closeRequested` is waiting for the handshake.
    public var isClosing: Bool { closeDeadline != nil }

    public var counters: PeerCounters {
        var c = stats
        c.version = version
        c.finState = finState
        c.nextSendSequence = seqSend
        c.nextExpectedSequence = seqNext
        c.unackedCount = unacked.count
        c.oldestUnackedSentAt = unacked.first?.queuedAt
        c.waitingForVersion = waitingForVersion.count
        c.users = users
        return c
    }

    // MARK: - Entry points

    /// Handles one event at time `now` and returns what to do, in order.
    public mutating func handle(_ event: MidcommsEvent, now: NIODeadline) -> [MidcommsAction] {
        var out: [MidcommsAction] = []
        handle(event, now: now, into: &out)
        return out
    }

    /// Handles one event at time `now`, appending the actions to `out` (no allocation per call).
    public mutating func handle(_ event: MidcommsEvent, now: NIODeadline, into out: inout [MidcommsAction]) {
        self.now = now
        store.beginHandling()
        switch event {
        case .connectionUp(let id):
            connectionUp(id, &out)
        case .connectionLost(let id, let loss):
            connectionLost(id, loss, &out)
        case .received(let packet, _):
            receive(packet, &out)
        case .receivedFrame(let bytes, _):
            receiveFrame(bytes, &out)
        case .receiveBatchDone:
            receiveBatchDone(&out)
        case .send(let payload):
            send(payload, &out)
        case .memberAdded:
            memberAdded(&out)
        case .memberRemoved:
            memberRemoved(&out)
        case .closeRequested:
            closeRequested(&out)
        case .peerRemoved:
            peerRemoved(&out)
        case .timerFired:
            timerFired(&out)
        case .flushAck:
            flushAck(&out)
        case .setFaults(let f):
            faults = f
        }
        if versionJustDetected {
            versionJustDetected = false
            flushWaitingForVersion(&out)
        }
        if !storedWrites.isEmpty { fillStoredWrites(&out) }
    }

    /// Gives the writes of stored messages queued by this `handle` their bytes, now that no
    /// more messages will be appended to the store in it: slices taken earlier would have shared
    /// the store's newest chunk while more messages were encoded into it (see `SendStore`).
    mutating func fillStoredWrites(_ out: inout [MidcommsAction]) {
        for (index, ref) in storedWrites {
            guard case .write(var frame, let conn) = out[index] else { continue }
            frame.bytes = store.bytes(ref)
            out[index] = .write(frame, on: conn)
        }
        if storedWrites.count == 1 {
            storedWrites.removeLast()
        } else {
            storedWrites.removeAll(keepingCapacity: true)
        }
    }

    // MARK: - Connections

    mutating func connectionUp(_ id: ConnectionID, _ out: inout [MidcommsAction]) {
        if let old = transmit, old != id {
            // A new transmit connection replaces the old one: whatever was in flight on it may be lost.
            out.append(.log(.info, "node \(config.peerNodeID): transmit connection \(old) replaced by \(id)"))
            resendOnUp = true
        }
        let reconnect = hadTransmitConnection && transmit != id
        if reconnect { stats.reconnects &+= 1 }
        transmit = id
        hadTransmitConnection = true
        connectRequested = false

        // On a reconnect we re-send our current ACK before anything else: an ACK lost with the old
        // connection is never resent by the kernel, and a lost ACK of a FIN leaves the peer in
        // CLOSING/FIN_WAIT1 until its shutdown timeout. The ACK is cumulative and truthful, so a
        // kernel peer just frees its queue a little earlier.
        if ackOwed || (reconnect && seqNext != config.initialSequence) {
            ackOwed = false
            sendAck(seqNext, &out)
        }
        var resent = 0
        var firstResent: UInt32 = 0
        var lastResent: UInt32 = 0
        for i in unacked.indices {
            if unacked[i].written {
                guard resendOnUp else { continue }
                if resent == 0 { firstResent = unacked[i].seq }
                lastResent = unacked[i].seq
                resent += 1
                writeFrame(OutboundFrame(kind: .sequenced(seq: unacked[i].seq, retransmission: true), bytes: ByteBuffer()),
                           sequenced: true, stored: unacked[i].ref, &out)
            } else {
                unacked[i].written = true
                writeFrame(OutboundFrame(kind: .sequenced(seq: unacked[i].seq, retransmission: false), bytes: ByteBuffer()),
                           sequenced: true, stored: unacked[i].ref, &out)
            }
        }
        if resent > 0 {
            stats.retransmits &+= resent
            out.append(.log(.info, "retransmit dlm msg, seq \(firstResent)…\(lastResent) (\(resent)), nodeid \(config.peerNodeID)"))
        }
        resendOnUp = false
        let bare = pendingBare
        pendingBare = []
        for bytes in bare {
            writeFrame(OutboundFrame(kind: .bare, bytes: bytes), sequenced: false, &out)
        }
    }

    mutating func connectionLost(_ id: ConnectionID, _ loss: ConnectionLoss, _ out: inout [MidcommsAction]) {
        guard id == transmit else {
            out.append(.log(.debug, "node \(config.peerNodeID): receive-only connection \(id) ended (\(loss))"))
            return
        }
        transmit = nil
        connectRequested = false
        stats.connectionLosses &+= 1
        switch loss {
        case .error(let why):
            resendOnUp = true
            out.append(.log(.info, "node \(config.peerNodeID): transmit connection \(id) failed: \(why)"))
        case .endOfFile:
            if config.retransmitAfterEOF { resendOnUp = true }
            out.append(.log(.info, "node \(config.peerNodeID): transmit connection \(id) closed by peer"))
        case .closedLocally:
            resendOnUp = true
            out.append(.log(.debug, "node \(config.peerNodeID): transmit connection \(id) closed locally"))
        }
        let resendable = resendOnUp ? !unacked.isEmpty : unacked.contains { !$0.written }
        if resendable || !pendingBare.isEmpty || ackOwed {
            requestConnect(&out)
        }
    }

    mutating func requestConnect(_ out: inout [MidcommsAction]) {
        guard transmit == nil, !connectRequested else { return }
        connectRequested = true
        out.append(.connect)
    }

    // MARK: - Writing

    /// Writes one frame on the transmit connection, through the fault injector. With `stored`,
    /// the frame's bytes are those of that stored message, filled in at the end of `handle`.
    mutating func writeFrame(_ frame: OutboundFrame, sequenced: Bool, stored: SendStore.Ref? = nil,
                             _ out: inout [MidcommsAction]) {
        guard let conn = transmit else { return }
        switch faults.decide(sequenced: sequenced) {
        case .write:
            if let stored { storedWrites.append((out.count, stored)) }
            out.append(.write(frame, on: conn))
        case .drop:
            stats.faultDropped &+= 1
            out.append(.log(.info, "fault injection: dropped outgoing \(frame.kind) to node \(config.peerNodeID)"))
        case .duplicate:
            stats.faultDuplicated &+= 1
            if let stored { storedWrites.append((out.count, stored)) }
            out.append(.write(frame, on: conn))
            if let stored { storedWrites.append((out.count, stored)) }
            out.append(.write(frame, on: conn))
        }
    }

    mutating func writeBare(_ payload: MidcommsPayload, _ out: inout [MidcommsAction]) {
        var bytes = allocator.buffer(capacity: payload.encodedLength)
        payload.encode(into: &bytes)
        stats.sent &+= 1
        if transmit == nil {
            pendingBare.append(bytes)
            requestConnect(&out)
        } else {
            writeFrame(OutboundFrame(kind: .bare, bytes: bytes), sequenced: false, &out)
        }
    }

    /// Sends DLM_ACK(`value`) to a 3.2 peer (never to a 3.1 peer, never as a 3.1 node).
    mutating func sendAck(_ value: UInt32, _ out: inout [MidcommsAction]) {
        guard !config.emulate31, case .v32 = peerVersion else { return }
        if faults.withholdAcks {
            stats.faultAcksWithheld &+= 1
            return
        }
        guard transmit != nil else {
            ackOwed = true
            requestConnect(&out)
            return
        }
        ackedUpTo = value
        stats.acksSent &+= 1
        let header = DLMHeader(version: .v3_2, word: value, nodeID: config.localNodeID,
                               length: UInt16(DLMHeader.size), command: .ack)
        var bytes = allocator.buffer(capacity: DLMHeader.size)
        header.write(into: &bytes, length: DLMHeader.size)
        writeFrame(OutboundFrame(kind: .ack(value), bytes: bytes), sequenced: false, &out)
    }

    /// Wraps `payload` in DLM_OPTS with the next sequence number, keeps it until acknowledged,
    /// writes it. Encodes the envelope and the message straight into the send store (the bytes
    /// `DLMPacket.opts(DLMOpts(header:inner:)).encoded()` gives, without building those values).
    mutating func sendSequenced(_ payload: MidcommsPayload, _ out: inout [MidcommsAction]) {
        ackBeforeSequenced(&out)
        let seq = seqSend
        seqSend &+= 1
        let innerLength = payload.encodedLength
        let nodeID = config.localNodeID
        let ref = store.append(reserving: DLMOpts.headerSize + innerLength) { bytes in
            DLMOpts.writeEnvelope(seq: seq, nodeID: nodeID, innerLength: innerLength,
                                  innerCommand: payload.header.command, into: &bytes)
            payload.encode(into: &bytes)
        }
        queueSequenced(seq, ref, fin: nil, &out)
    }

    /// Wraps `inner` in DLM_OPTS with the next sequence number, keeps it until acknowledged, writes it.
    mutating func sendSequenced(_ inner: DLMInner, fin: FinRole?, _ out: inout [MidcommsAction]) {
        ackBeforeSequenced(&out)
        let seq = seqSend
        seqSend &+= 1
        let header = DLMHeader(version: .v3_2, word: seq, nodeID: config.localNodeID, length: 0, command: .opts)
        let opts = DLMOpts(header: header, inner: inner)
        let ref = store.append(reserving: opts.encodedLength) { opts.encode(into: &$0) }
        queueSequenced(seq, ref, fin: fin, &out)
    }

    /// Newer kernels: ACK what we owe before a sequenced message once more than 32 are pending.
    @inline(__always)
    mutating func ackBeforeSequenced(_ out: inout [MidcommsAction]) {
        switch config.ackPolicy {
        case .threshold(let onSend, _):
            if deliveredSinceAck > onSend {
                deliveredSinceAck = 0
                sendAck(seqNext, &out)
            }
        case .perBatch:
            break
        }
    }

    /// Keeps the encoded OPTS `seq` until acknowledged and writes it (or asks for a connection).
    @inline(__always)
    mutating func queueSequenced(_ seq: UInt32, _ ref: SendStore.Ref, fin: FinRole?, _ out: inout [MidcommsAction]) {
        let written = transmit != nil
        unacked.append(Unacked(seq: seq, ref: ref, fin: fin, queuedAt: now, written: written))
        stats.sent &+= 1
        if written {
            writeFrame(OutboundFrame(kind: .sequenced(seq: seq, retransmission: false), bytes: ByteBuffer()), sequenced: true,
                       stored: ref, &out)
        } else {
            requestConnect(&out)
        }
    }

    mutating func sendFin(_ role: FinRole, _ out: inout [MidcommsAction]) {
        stopTx = true
        let header = DLMHeader(version: .v3_2, word: 0, nodeID: config.localNodeID,
                               length: UInt16(DLMHeader.size), command: .fin)
        sendSequenced(.fin(header), fin: role, &out)
    }

    // MARK: - Upper-layer sends

    /// The RCOMs sent bare (unsequenced) to a 3.2 peer, per kernel generation (wire.md §8.3).
    func isStateless(_ payload: MidcommsPayload) -> Bool {
        switch payload {
        case .message:
            return false
        case .rcom(let r):
            switch r.rcomType {
            case .status:
                return true
            case .statusReply:
                // The "lockspace not ready" reply goes through the sequenced path in every kernel.
                return r.result != WireErrno.esrch
            case .names, .namesReply:
                switch config.statelessStyle {
                case .kernel61: return true
                case .newest: return false
                }
            case .lookup, .lock, .lookupReply, .lockReply, nil:
                return false
            }
        }
    }

    mutating func send(_ payload: MidcommsPayload, _ out: inout [MidcommsAction]) {
        var p = payload
        p.stamp(version: config.ownVersion, nodeID: config.localNodeID)
        if config.emulate31 {
            writeBare(p, &out)
            return
        }
        if stopTx {
            // The kernel WARNs here and sends anyway.
            out.append(.log(.warning, "node \(config.peerNodeID): sending after our FIN (state \(finState))"))
        }
        let stateless = isStateless(p)
        switch peerVersion {
        case nil:
            if stateless {
                writeBare(p, &out)
            } else {
                waitingForVersion.append(p)
                out.append(.log(.debug, "node \(config.peerNodeID): version unknown, holding a stateful message (\(waitingForVersion.count) held)"))
            }
        case .v31:
            writeBare(p, &out)
        case .v32:
            if stateless {
                writeBare(p, &out)
            } else {
                sendSequenced(p, &out)
            }
        }
    }

    mutating func flushWaitingForVersion(_ out: inout [MidcommsAction]) {
        guard peerVersion != nil, !waitingForVersion.isEmpty else { return }
        let held = waitingForVersion
        waitingForVersion.removeAll()
        out.append(.log(.debug, "node \(config.peerNodeID): version known, sending \(held.count) held message(s)"))
        for p in held { send(p, &out) }
    }

    // MARK: - Receiving

    mutating func drop(_ reason: DropReason, _ detail: String, _ out: inout [MidcommsAction]) {
        stats.drops[reason, default: 0] &+= 1
        out.append(.dropped(reason, "node \(config.peerNodeID): \(detail)"))
    }

    static func isSessionStart(_ r: DLMRcom) -> Bool {
        switch r.rcomType {
        case .status, .statusReply, .names, .namesReply: return true
        case .lookup, .lock, .lookupReply, .lockReply, nil: return false
        }
    }

    mutating func receiveFrame(_ bytes: ByteBuffer, _ out: inout [MidcommsAction]) {
        if !config.emulate31, case .v32 = peerVersion, let header = try? DLMHeader.peek(bytes),
           header.version == .v3_2, header.command == HeaderCommand.opts.rawValue {
            if header.seq != seqNext {
                // As the kernel does it: an out-of-order OPTS from a known 3.2 peer is judged by its
                // outer header alone (after the envelope length checks); the inner message is never
                // decoded. This keeps the duplicate bursts after a reconnect cheap.
                if Self.optsEnvelopeAcceptable(bytes) {
                    receiveSequenced(header.seq, nil, &out)
                    return
                }
            } else if let m = Self.decodeSequencedMessage(bytes, header: header) {
                // The stream's common case, a DLM_MSG in order: decoded without the DLMPacket,
                // DLMOpts and DLMInner values around it (what the general path below would
                // conclude for these bytes, see `decodeSequencedMessage`).
                receiveInOrder(header.seq, .message(m), &out)
                return
            }
        }
        let packet: DLMPacket
        do {
            packet = try DLMPacket.decode(bytes)
        } catch {
            receiveUndecodable(bytes, error, &out)
            return
        }
        receive(packet, &out)
    }

    mutating func receive(_ packet: DLMPacket, _ out: inout [MidcommsAction]) {
        let header = packet.header
        if config.emulate31 {
            receiveAs31Node(packet, &out)
            return
        }
        switch header.version {
        case .v3_1:
            receiveFrom31(packet, &out)
        case .v3_2:
            receiveFrom32(packet, &out)
        default:
            drop(.invalidVersion, "received invalid version header: 0x\(String(header.version.rawValue, radix: 16)), \(HeaderCommand.name(header.command)) skipped", &out)
        }
    }

    /// 6.1: a bare STATUS/NAMES(+REPLY) starts a session (CLOSED → ESTABLISHED) and resets a stuck termination.
    mutating func sessionStartRcom(_ out: inout [MidcommsAction]) {
        switch config.sessionStart {
        case .versionDetection: return
        case .statusFamily: break
        }
        switch finState {
        case .closed:
            setState(.established, &out)
        case .established:
            break
        case .finWait1, .finWait2, .closeWait, .lastAck, .closing:
            out.append(.log(.info, "reset node \(config.peerNodeID) because shutdown stuck"))
            reset(.stuckTermination, &out)
            setState(.established, &out)
        }
    }

    /// The kernel's version check: the first accepted message fixes the version; the other version is dropped after.
    mutating func versionCheck(_ v: PeerVersion, _ command: UInt8, _ out: inout [MidcommsAction]) -> Bool {
        switch peerVersion {
        case nil:
            peerVersion = v
            versionJustDetected = true
            out.append(.versionDetected(v.wire))
            out.append(.log(.info, "version 0x\(String(v.wire.rawValue, radix: 16, uppercase: false).leftPadded(8)) for node \(config.peerNodeID) detected"))
            switch config.sessionStart {
            case .versionDetection:
                if finState == .closed { setState(.established, &out) }
            case .statusFamily:
                break
            }
            return true
        case .some(let known):
            if known == v { return true }
            drop(.versionMismatch, "version mismatch detected, assumed \(v.wire) but node has \(known.wire); \(HeaderCommand.name(command)) skipped", &out)
            return false
        }
    }

    /// We are 3.2 and the message says 3.1.
    mutating func receiveFrom31(_ packet: DLMPacket, _ out: inout [MidcommsAction]) {
        if case .rcom(let r) = packet, Self.isSessionStart(r) { sessionStartRcom(&out) }
        guard versionCheck(.v31, packet.header.command, &out) else { return }
        switch packet {
        case .message(let m):
            deliver(.message(m), seq: nil, &out)
        case .rcom(let r):
            deliver(.rcom(r), seq: nil, &out)
        case .opts, .ack, .fin:
            drop(.unsupportedCommand, "unsupported h_cmd received: \(packet.header.command) from a 3.1 message, skipped", &out)
        }
    }

    /// We are 3.2 and the message says 3.2.
    mutating func receiveFrom32(_ packet: DLMPacket, _ out: inout [MidcommsAction]) {
        if case .rcom(let r) = packet, Self.isSessionStart(r) { sessionStartRcom(&out) }
        guard versionCheck(.v32, packet.header.command, &out) else { return }
        switch packet {
        case .rcom(let r):
            guard Self.isSessionStart(r) else {
                drop(.unsupportedBareRcom, "unsupported rcom type received: \(RcomType.name(r.type)) bare, skipped", &out)
                return
            }
            if stopRx { out.append(.log(.warning, "node \(config.peerNodeID): \(RcomType.name(r.type)) after its FIN")) }
            deliver(.rcom(r), seq: nil, &out)
        case .opts(let o):
            receiveSequenced(o.header.seq, o.inner, &out)
        case .ack(let h):
            receiveAck(h.seq, &out)
        case .message, .fin:
            drop(.unsupportedCommand, "unsupported h_cmd received: \(HeaderCommand.name(packet.header.command)) bare from a 3.2 node, skipped", &out)
        }
    }

    /// We pose as a 5.10–5.13 node: no version checks beyond the major, no OPTS/ACK/FIN.
    mutating func receiveAs31Node(_ packet: DLMPacket, _ out: inout [MidcommsAction]) {
        let header = packet.header
        guard header.version.major == 3 else {
            drop(.invalidVersion, "invalid h_version 0x\(String(header.version.rawValue, radix: 16)), skipped", &out)
            return
        }
        switch packet {
        case .message(let m):
            noteVersionSeen(header.version, &out)
            deliver(.message(m), seq: nil, &out)
        case .rcom(let r):
            noteVersionSeen(header.version, &out)
            deliver(.rcom(r), seq: nil, &out)
        case .opts, .ack, .fin:
            drop(.unsupportedCommand, "unsupported h_cmd received: \(header.command), will skip this message", &out)
        }
    }

    /// 3.1 emulation keeps no version state; the counters still show what the peer sends.
    mutating func noteVersionSeen(_ v: ProtocolVersion, _ out: inout [MidcommsAction]) {
        guard peerVersion == nil else { return }
        switch v {
        case .v3_1: peerVersion = .v31
        case .v3_2: peerVersion = .v32
        default: return
        }
        out.append(.versionDetected(v))
    }

    @inline(__always)
    mutating func deliver(_ payload: MidcommsPayload, seq: UInt32?, _ out: inout [MidcommsAction]) {
        let sender = payload.header.nodeID
        guard sender == config.peerNodeID else {
            drop(.wrongNodeID, "invalid h_nodeid \(sender) from node \(config.peerNodeID), skipped", &out)
            return
        }
        stats.delivered &+= 1
        out.append(.deliver(Delivery(payload: payload, seq: seq)))
    }

    /// An OPTS from a 3.2 peer: deliver only the expected sequence number.
    mutating func receiveSequenced(_ seq: UInt32, _ inner: DLMInner?, _ out: inout [MidcommsAction]) {
        if seq == seqNext {
            switch inner {
            case .fin:
                seqNext &+= 1
                receiveFin(&out)
            case .message(let m):
                receiveInOrder(seq, .message(m), &out)
            case .rcom(let r):
                receiveInOrder(seq, .rcom(r), &out)
            case nil:
                seqNext &+= 1
                drop(.undecodableInner, "seq \(seq) consumed but its inner message does not decode", &out)
                countInOrder(&out)
            }
        } else if SeqMath.before(seq, seqNext) {
            drop(.duplicate, "ignore dlm msg because seq mismatch, seq: \(seq), expected: \(seqNext)", &out)
            sendAck(seqNext, &out)
        } else {
            drop(.futureSequence, "ignore dlm msg because seq mismatch, seq: \(seq), expected: \(seqNext)", &out)
        }
    }

    /// The OPTS `seq` (== `seqNext`) carried `payload`: consume the number, deliver, count for ACKs.
    @inline(__always)
    mutating func receiveInOrder(_ seq: UInt32, _ payload: MidcommsPayload, _ out: inout [MidcommsAction]) {
        seqNext &+= 1
        if stopRx {
            switch payload {
            case .message: out.append(.log(.warning, "node \(config.peerNodeID): message after its FIN, seq \(seq)"))
            case .rcom: out.append(.log(.warning, "node \(config.peerNodeID): rcom after its FIN, seq \(seq)"))
            }
        }
        deliver(payload, seq: seq, &out)
        countInOrder(&out)
    }

    /// A sequence number other than a FIN's was consumed: the ACK policies' bookkeeping.
    @inline(__always)
    mutating func countInOrder(_ out: inout [MidcommsAction]) {
        deliveredInBatch = true
        deliveredSinceAck &+= 1
        switch config.ackPolicy {
        case .threshold(_, let onReceive):
            if deliveredSinceAck > onReceive {
                deliveredSinceAck = 0
                sendAck(seqNext, &out)
            }
        case .perBatch:
            break
        }
    }

    mutating func receiveFin(_ out: inout [MidcommsAction]) {
        // We ACK every FIN received in order (the kernel does not in CLOSED/CLOSE_WAIT/CLOSING/LAST_ACK).
        switch finState {
        case .established:
            sendAck(seqNext, &out)
            stopRx = true
            if users == 0 {
                setState(.lastAck, &out)
                sendFin(.passive, &out)
            } else {
                setState(.closeWait, &out)
            }
        case .finWait1:
            sendAck(seqNext, &out)
            stopRx = true
            setState(.closing, &out)
        case .finWait2:
            sendAck(seqNext, &out)
            reset(.finHandshakeComplete, &out)
        case .lastAck, .closed, .closeWait, .closing:
            sendAck(seqNext, &out)
            drop(.unexpectedFin, "FIN received in state \(finState)", &out)
        }
    }

    mutating func receiveAck(_ value: UInt32, _ out: inout [MidcommsAction]) {
        stats.acksReceived &+= 1
        guard !SeqMath.after(value, seqSend) else {
            drop(.bogusAck, "ACK \(value) but the next seq we send is \(seqSend) (stale peer state?)", &out)
            return
        }
        var finAcked: FinRole?
        var freed = false
        while let first = unacked.first, SeqMath.before(first.seq, value) {
            if let role = first.fin { finAcked = role }
            unacked.removeFirst()
            freed = true
        }
        if freed { store.release(keeping: unacked.first?.ref) }
        guard let role = finAcked else { return }
        switch role {
        case .active:
            switch finState {
            case .finWait1:
                setState(.finWait2, &out)
            case .closing:
                reset(.finHandshakeComplete, &out)
            case .closed:
                break
            case .established, .finWait2, .closeWait, .lastAck:
                out.append(.log(.warning, "node \(config.peerNodeID): ACK of our FIN in unexpected state \(finState)"))
            }
        case .passive:
            switch finState {
            case .lastAck:
                reset(.finHandshakeComplete, &out)
            case .closed:
                break
            case .established, .finWait1, .finWait2, .closeWait, .closing:
                out.append(.log(.warning, "node \(config.peerNodeID): ACK of our FIN in unexpected state \(finState)"))
            }
        }
    }

    /// A frame `DLMPacket.decode` rejects. Handled as the kernel handles what it can parse.
    mutating func receiveUndecodable(_ bytes: ByteBuffer, _ error: WireError, _ out: inout [MidcommsAction]) {
        guard let header = try? DLMHeader.peek(bytes) else {
            drop(.malformed, "\(error)", &out)
            return
        }
        if config.emulate31 {
            guard header.version.major == 3 else {
                drop(.invalidVersion, "invalid h_version 0x\(String(header.version.rawValue, radix: 16)), skipped", &out)
                return
            }
            switch HeaderCommand(rawValue: header.command) {
            case .opts, .ack, .fin, nil:
                drop(.unsupportedCommand, "unsupported h_cmd received: \(header.command), will skip this message", &out)
            case .message, .rcom:
                drop(.malformed, "\(HeaderCommand.name(header.command)): \(error)", &out)
            }
            return
        }
        switch header.version {
        case .v3_1, .v3_2: break
        default:
            drop(.invalidVersion, "received invalid version header: 0x\(String(header.version.rawValue, radix: 16)), skipped", &out)
            return
        }
        if header.version == .v3_2, header.command == HeaderCommand.opts.rawValue, Self.optsEnvelopeAcceptable(bytes) {
            guard versionCheck(.v32, header.command, &out) else { return }
            receiveSequenced(header.seq, nil, &out)
            return
        }
        drop(.malformed, "\(HeaderCommand.name(header.command)): \(error)", &out)
    }

    /// The kernel's OPTS length checks (`dlm_opts_check_msglen` and the inner re-check).
    static func optsEnvelopeAcceptable(_ bytes: ByteBuffer) -> Bool {
        let total = bytes.readableBytes
        let base = bytes.readerIndex
        guard total >= DLMOpts.headerSize,
              let nextCmd = bytes.getInteger(at: base + 16, as: UInt8.self),
              let optlen = bytes.getInteger(at: base + 18, endianness: .little, as: UInt16.self)
        else { return false }
        let innerStart = DLMOpts.headerSize + Int(optlen)
        guard innerStart <= total else { return false }
        func minimum(_ cmd: UInt8) -> Int? {
            switch HeaderCommand(rawValue: cmd) {
            case .fin: return DLMHeader.size
            case .message: return DLMMessage.fixedSize
            case .rcom: return DLMRcom.fixedSize
            case .opts, .ack, nil: return nil
            }
        }
        guard let need = minimum(nextCmd), total - innerStart >= need,
              let innerCmd = bytes.getInteger(at: base + innerStart + 14, as: UInt8.self),
              let innerLength = bytes.getInteger(at: base + innerStart + 12, endianness: .little, as: UInt16.self),
              let innerNeed = minimum(innerCmd)
        else { return false }
        return Int(innerLength) >= innerNeed
    }

    mutating func receiveBatchDone(_ out: inout [MidcommsAction]) {
        let delivered = deliveredInBatch
        deliveredInBatch = false
        switch config.ackPolicy {
        case .perBatch:
            guard delivered, case .v32 = peerVersion, finState == .established else { return }
            sendAck(seqNext, &out)
        case .threshold:
            break
        }
    }

    mutating func flushAck(_ out: inout [MidcommsAction]) {
        guard !config.emulate31, case .v32 = peerVersion, seqNext != ackedUpTo else { return }
        deliveredSinceAck = 0
        sendAck(seqNext, &out)
    }

    // MARK: - Membership and termination

    mutating func setState(_ next: FinState, _ out: inout [MidcommsAction]) {
        guard next != finState else { return }
        let previous = finState
        finState = next
        out.append(.finStateChanged(from: previous, to: next))
    }

    mutating func memberAdded(_ out: inout [MidcommsAction]) {
        if users == 0 {
            switch finState {
            case .established:
                break
            case .closed:
                setState(.established, &out)
            case .finWait1, .finWait2, .closeWait, .lastAck, .closing:
                out.append(.log(.info, "reset node \(config.peerNodeID) because shutdown stuck"))
                reset(.stuckTermination, &out)
                setState(.established, &out)
            }
        }
        users += 1
    }

    mutating func memberRemoved(_ out: inout [MidcommsAction]) {
        guard users > 0 else {
            out.append(.log(.warning, "node \(config.peerNodeID): member removed but it is in none of our lockspaces"))
            return
        }
        users -= 1
        guard users == 0 else { return }
        switch finState {
        case .established, .lastAck, .closed:
            break
        case .closeWait:
            setState(.lastAck, &out)
            sendFin(.passive, &out)
        case .finWait1, .finWait2, .closing:
            out.append(.log(.warning, "node \(config.peerNodeID): last member removal in unexpected state \(finState)"))
        }
    }

    mutating func closeRequested(_ out: inout [MidcommsAction]) {
        guard closeDeadline == nil else {
            out.append(.log(.debug, "node \(config.peerNodeID): close already requested"))
            return
        }
        if users > 0 {
            // The kernel releases every lockspace (users → 0) before its shutdown.
            out.append(.log(.warning, "node \(config.peerNodeID): close requested while it shares \(users) lockspace(s); removing"))
            users = 1
            memberRemoved(&out)
        }
        guard !config.emulate31, case .v32 = peerVersion else {
            // Old protocol or nothing known: no handshake, just go.
            finishClose(reason: .shutdown, graceful: true, &out)
            return
        }
        switch finState {
        case .established:
            setState(.finWait1, &out)
            sendFin(.active, &out)
        case .closed:
            finishClose(reason: .shutdown, graceful: true, &out)
            return
        case .finWait1, .finWait2, .closeWait, .lastAck, .closing:
            // A termination is already under way; wait for it as the kernel does.
            break
        }
        let deadline = now + config.shutdownTimeout
        closeDeadline = deadline
        out.append(.scheduleTimer(deadline))
    }

    mutating func finishClose(reason: ResetReason, graceful: Bool, _ out: inout [MidcommsAction]) {
        if closeDeadline != nil {
            closeDeadline = nil
            out.append(.cancelTimer)
        }
        if finState != .closed || peerVersion != nil || !unacked.isEmpty {
            reset(reason, &out)
        }
        waitingForVersion.removeAll()
        pendingBare.removeAll()
        ackOwed = false
        out.append(.closeConnections(graceful: graceful))
    }

    mutating func timerFired(_ out: inout [MidcommsAction]) {
        guard let deadline = closeDeadline else { return }
        guard now >= deadline else {
            out.append(.scheduleTimer(deadline))
            return
        }
        out.append(.log(.info, "active shutdown timed out for node \(config.peerNodeID) with state \(finState)"))
        closeDeadline = nil
        reset(.shutdownTimeout, &out)
        waitingForVersion.removeAll()
        pendingBare.removeAll()
        ackOwed = false
        out.append(.closeConnections(graceful: false))
    }

    mutating func peerRemoved(_ out: inout [MidcommsAction]) {
        users = 0
        if closeDeadline != nil {
            closeDeadline = nil
            out.append(.cancelTimer)
        }
        reset(.peerRemoved, &out)
        waitingForVersion.removeAll()
        pendingBare.removeAll()
        ackOwed = false
        out.append(.closeConnections(graceful: false))
    }

    /// `midcomms_node_reset`: seq 0/0 (or `initialSequence`), version unknown, queue dropped, CLOSED.
    mutating func reset(_ reason: ResetReason, _ out: inout [MidcommsAction]) {
        seqSend = config.initialSequence
        seqNext = config.initialSequence
        ackedUpTo = config.initialSequence
        peerVersion = nil
        stopTx = false
        stopRx = false
        deliveredSinceAck = 0
        deliveredInBatch = false
        ackOwed = false
        unacked.removeAll()
        // Writes queued earlier in this `handle` take their bytes before the store is emptied.
        if !storedWrites.isEmpty { fillStoredWrites(&out) }
        store.release(keeping: nil)
        setState(.closed, &out)
        stats.resets &+= 1
        out.append(.sessionReset(reason))
        out.append(.log(.info, "reset node \(config.peerNodeID): \(reason)"))
        if reason == .finHandshakeComplete, closeDeadline != nil {
            closeDeadline = nil
            out.append(.cancelTimer)
            waitingForVersion.removeAll()
            pendingBare.removeAll()
            out.append(.closeConnections(graceful: true))
        }
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
