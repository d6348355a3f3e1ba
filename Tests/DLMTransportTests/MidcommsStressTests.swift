// Two midcomms machines against each other through a simulated byte stream: messages are
// encoded, cut into random pieces, reframed with DLMFramer and decoded again; connections are
// killed at random points (bytes in flight, partial messages included, are lost) and come back;
// fault injection drops and duplicates outgoing messages. Every message must arrive exactly
// once and in order, and both send queues must be empty at the end.

import DLMTransport
import NIOCore
import Testing

/// One direction of a TCP connection: bytes written and not yet read, and the reader's framer.
struct BytePipe {
    var inFlight = ByteBuffer()
    var framer = DLMFramer()
    var conn: ConnectionID?
}

struct StressFigures: CustomStringConvertible {
    var steps = 0
    var kills = 0
    var reconnects = 0
    var retransmits = 0
    var duplicatesDropped = 0
    var futureDropped = 0
    var acksSent = 0
    var faultDrops = 0
    var faultDuplicates = 0
    var bytes = 0
    var description: String {
        "steps \(steps), kills \(kills), reconnects \(reconnects), retransmits \(retransmits), duplicate drops \(duplicatesDropped), "
            + "future drops \(futureDropped), ACKs \(acksSent), fault drops \(faultDrops), fault dups \(faultDuplicates), bytes \(bytes)"
    }
}

struct StressSim {
    var peers: [MidcommsPeer]
    /// pipes[0]: A→B (A's transmit connection), pipes[1]: B→A.
    var pipes = [BytePipe(), BytePipe()]
    var issued = [0, 0]
    /// Next `m_lkid` expected by side i (from the other side).
    var expected: [UInt32] = [0, 0]
    var failures: [String] = []
    var rng: SplitMix64
    var nowNs: UInt64 = 1_000_000_000
    var nextConn: UInt64 = 1
    var figures = StressFigures()
    var scratch: [MidcommsAction] = []
    let total: Int
    let ids: [UInt32] = [1, 2]
    /// 1 in `killOdds` of the rare-event steps kills something (about 0.9 × 9/killOdds per 100 steps).
    var killOdds = 20

    init(seed: UInt64, total: Int, configure: (inout MidcommsConfig) -> Void = { _ in }) {
        var a = MidcommsConfig.node(1, peer: 2)
        var b = MidcommsConfig.node(2, peer: 1)
        configure(&a)
        configure(&b)
        peers = [MidcommsPeer(config: a), MidcommsPeer(config: b)]
        rng = SplitMix64(seed: seed)
        self.total = total
    }

    var now: NIODeadline { .uptimeNanoseconds(nowNs) }

    mutating func handle(_ side: Int, _ event: MidcommsEvent) {
        scratch.removeAll(keepingCapacity: true)
        peers[side].handle(event, now: now, into: &scratch)
        let actions = scratch
        for action in actions {
            switch action {
            case .write(let frame, let conn):
                guard pipes[side].conn == conn else {
                    failures.append("side \(side) wrote on \(conn) but the transmit connection is \(String(describing: pipes[side].conn))")
                    continue
                }
                var bytes = frame.bytes
                figures.bytes += bytes.readableBytes
                pipes[side].inFlight.writeBuffer(&bytes)
            case .deliver(let d):
                switch d.payload {
                case .message(let m):
                    if m.lkid != expected[side] {
                        failures.append("side \(side) got #\(m.lkid), expected #\(expected[side]) (seq \(String(describing: d.seq)))")
                    }
                    expected[side] = m.lkid &+ 1
                case .rcom(let r):
                    switch r.rcomType {
                    case .status:
                        // The session start: answer a STATUS with a STATUS_REPLY.
                        handle(side, .send(MC.rcom(.statusReply, from: ids[side])))
                    case .lookup:
                        let n = UInt32(truncatingIfNeeded: r.id)
                        if n != expected[side] {
                            failures.append("side \(side) got #\(n), expected #\(expected[side]) (seq \(String(describing: d.seq)))")
                        }
                        expected[side] = n &+ 1
                    default:
                        break
                    }
                }
            case .connect, .versionDetected, .finStateChanged, .scheduleTimer, .cancelTimer, .log:
                break
            case .sessionReset(let why):
                failures.append("side \(side) reset: \(why)")
            case .closeConnections:
                failures.append("side \(side) asked to close connections")
            case .dropped(let reason, let text):
                switch reason {
                case .duplicate: figures.duplicatesDropped += 1
                case .futureSequence: figures.futureDropped += 1
                case .invalidVersion, .versionMismatch, .malformed, .unsupportedCommand, .unsupportedBareRcom,
                     .unexpectedFin, .bogusAck, .undecodableInner, .wrongNodeID:
                    failures.append("side \(side) unexpected drop \(reason): \(text)")
                }
            }
        }
    }

    mutating func connectUp(_ side: Int) {
        guard pipes[side].conn == nil else { return }
        let id = ConnectionID(nextConn)
        nextConn += 1
        pipes[side].conn = id
        handle(side, .connectionUp(id))
    }

    /// Reads up to `count` bytes from the pipe written by `writer` into the other side.
    mutating func read(from writer: Int, count: Int) {
        let reader = 1 - writer
        let n = min(count, pipes[writer].inFlight.readableBytes)
        guard n > 0, let chunk = pipes[writer].inFlight.readSlice(length: n) else { return }
        var frames: [ByteBuffer] = []
        do {
            try pipes[writer].framer.append(chunk) { frames.append($0) }
        } catch {
            failures.append("framing error: \(error)")
        }
        let conn = pipes[writer].conn ?? ConnectionID(0)
        for f in frames { handle(reader, .receivedFrame(f, on: conn)) }
        handle(reader, .receiveBatchDone)
    }

    /// Kills the connection written by `writer`: the reader gets a random prefix of what is in
    /// flight (often ending inside a message), the rest is lost.
    mutating func kill(_ writer: Int) {
        guard let conn = pipes[writer].conn else { return }
        let inFlight = pipes[writer].inFlight.readableBytes
        if inFlight > 0 { read(from: writer, count: rng.below(inFlight + 1)) }
        pipes[writer].inFlight.clear()
        pipes[writer].framer = DLMFramer()
        pipes[writer].conn = nil
        figures.kills += 1
        let loss: ConnectionLoss = rng.bool() ? .error("ECONNRESET") : .endOfFile
        handle(writer, .connectionLost(conn, loss))
        handle(1 - writer, .connectionLost(conn, loss))
    }

    mutating func dripSize() -> Int {
        switch rng.below(4) {
        case 0: return rng.int(1...24)
        case 1: return rng.int(1...200)
        default: return rng.int(1...2000)
        }
    }

    mutating func start() {
        connectUp(0)
        connectUp(1)
        handle(0, .memberAdded)
        handle(1, .memberAdded)
        handle(0, .send(MC.rcom(.status, from: 1)))
        read(from: 0, count: 1 << 20)
        read(from: 1, count: 1 << 20)
    }

    mutating func run(faults: Bool) {
        start()
        var stall = 0
        while expected[0] < total || expected[1] < total {
            figures.steps += 1
            nowNs += 1_000_000
            guard failures.isEmpty, figures.steps < 5_000_000 else { break }
            let r = rng.below(1000)
            switch r {
            case 0..<300:
                let side = r < 150 ? 0 : 1
                for _ in 0..<rng.int(1...8) where issued[side] < total {
                    // Mostly RCOM_LOOKUP (cheaper to encode in a debug build), every 8th a DLM_MSG REQUEST;
                    // both are sequenced. The number travels in rc_id / m_lkid.
                    let n = UInt32(issued[side])
                    let payload = n % 8 == 0
                        ? MC.request(n, from: ids[side], nameLength: rng.int(1...64))
                        : MC.lookup(n, from: ids[side], nameLength: rng.int(1...64))
                    handle(side, .send(payload))
                    issued[side] += 1
                }
            case 300..<650:
                read(from: 0, count: dripSize())
            case 650..<990:
                read(from: 1, count: dripSize())
            case 990..<999:
                // Rare events, scaled so that a run sees a few hundred kills whatever its length.
                let roll = rng.below(killOdds)
                if roll < 6 {
                    kill(rng.below(2))
                } else if roll < 9 {
                    kill(0)
                    kill(1)
                } else if roll < 14, faults {
                    let side = rng.below(2)
                    switch rng.below(3) {
                    case 0: handle(side, .setFaults(FaultInjection(dropNext: rng.int(1...3))))
                    case 1: handle(side, .setFaults(FaultInjection(duplicateNext: rng.int(1...3), scope: .all)))
                    default: handle(side, .setFaults(FaultInjection(withholdAcks: true)))
                    }
                } else if roll < 30 {
                    // Withheld ACKs come back soon (the point is a longer queue, not a stuck one).
                    handle(rng.below(2), .setFaults(.none))
                }
            default:
                break
            }
            for side in 0..<2 where pipes[side].conn == nil && rng.chance(1, in: 20) {
                connectUp(side)
            }
            // Everything issued and the wire idle but something missing: only a reconnect resends
            // (that is the protocol), so kill both connections as tcpkill would.
            if issued[0] == total, issued[1] == total, pipes[0].inFlight.readableBytes == 0, pipes[1].inFlight.readableBytes == 0 {
                stall += 1
                if stall > 50 {
                    stall = 0
                    kill(0)
                    kill(1)
                }
            } else {
                stall = 0
            }
        }
        finish()
    }

    /// Clears faults, drains both pipes, then the final ACK exchange.
    mutating func finish() {
        for side in 0..<2 {
            handle(side, .setFaults(.none))
            connectUp(side)
        }
        for _ in 0..<3 {
            read(from: 0, count: 1 << 24)
            read(from: 1, count: 1 << 24)
            handle(0, .flushAck)
            handle(1, .flushAck)
        }
        read(from: 0, count: 1 << 24)
        read(from: 1, count: 1 << 24)
        for side in 0..<2 {
            let c = peers[side].counters
            figures.retransmits += c.retransmits
            figures.reconnects += c.reconnects
            figures.acksSent += c.acksSent
            figures.faultDrops += c.faultDropped
            figures.faultDuplicates += c.faultDuplicated
        }
    }
}

@Suite("Midcomms: two machines over a lossy byte stream")
struct MidcommsStressTests {
    func check(_ sim: StressSim, total: Int) {
        #expect(sim.failures.isEmpty, "\(sim.failures.prefix(5))")
        #expect(sim.expected[0] == UInt32(total), "A received \(sim.expected[0]) of \(total)")
        #expect(sim.expected[1] == UInt32(total), "B received \(sim.expected[1]) of \(total)")
        for side in 0..<2 {
            let c = sim.peers[side].counters
            #expect(c.unackedCount == 0, "side \(side) still holds \(c.unackedCount) unacked")
            #expect(c.oldestUnackedSentAt == nil)
            #expect(c.waitingForVersion == 0)
            #expect(c.version == .v3_2)
            #expect(c.finState == .established)
            // Every sequenced message of the other side was delivered once: STATUS_REPLY (bare or not) + total.
            #expect(c.nextExpectedSequence == UInt32(total))
            #expect(c.nextSendSequence == UInt32(total))
        }
    }

    @Test("100,000 messages each way, newest policy, kills mid-message, drip-fed bytes, faults")
    func hundredThousandEachWay() {
        let total = 100_000
        var sim = StressSim(seed: 0x5EED_0003, total: total)
        sim.killOdds = 40
        sim.run(faults: true)
        check(sim, total: total)
        #expect(sim.figures.kills > 200, "\(sim.figures)")
        #expect(sim.figures.retransmits > 0)
        #expect(sim.figures.duplicatesDropped > 0)
        print("midcomms stress (threshold ACKs): \(total) messages each way; \(sim.figures)")
    }

    @Test("10,000 messages each way, 6.1 per-batch ACKs", arguments: [UInt64(1), 2])
    func perBatch(seed: UInt64) {
        let total = 10_000
        var sim = StressSim(seed: seed, total: total) { $0 = MidcommsConfig(localNodeID: $0.localNodeID, peerNodeID: $0.peerNodeID, generation: .kernel61) }
        sim.run(faults: true)
        check(sim, total: total)
        // 6.1 ACKs after every batch that delivered something: far more ACKs than the threshold policy.
        #expect(sim.figures.acksSent > total / 10, "\(sim.figures)")
    }

    @Test("sequence numbers wrapping through 2^32 under kills")
    func wrapAround() {
        let total = 5_000
        var sim = StressSim(seed: 77, total: total) { $0.initialSequence = 0xFFFF_FFFF - 2_000 }
        sim.run(faults: true)
        #expect(sim.failures.isEmpty, "\(sim.failures.prefix(5))")
        #expect(sim.expected == [UInt32(total), UInt32(total)])
        #expect(sim.figures.kills > 10)
        for side in 0..<2 {
            #expect(sim.peers[side].counters.unackedCount == 0)
            #expect(sim.peers[side].nextSendSequence == UInt32(total) &+ (0xFFFF_FFFF - 2_000))
        }
    }
}
