// Duplicates, future sequence numbers, wrap-around near 2^32, bogus ACKs, undecodable input,
// fault injection and the counters.

import DLMTransport
import NIOCore
import Testing

/// A connected node 1 that already knows node 2 as 3.2.
func session(_ config: MidcommsConfig = .node(1, peer: 2)) -> Endpoint {
    var e = connected(config)
    e.handle(.received(MC.bare(MC.rcom(.status, from: 2)), on: ConnectionID(2)))
    e.delivered.removeAll()
    return e
}

@Suite("Midcomms: sequence numbers, ACKs and bad input")
struct MidcommsSequenceTests {
    @Test("duplicates are dropped and re-ACKed, future seqs dropped silently, nothing buffered")
    func duplicatesAndFuture() {
        var e = session()
        for s: UInt32 in 0..<3 { e.handle(.received(MC.opts(s, MC.request(s, from: 2)), on: ConnectionID(2))) }
        e.handle(.received(MC.opts(1, MC.request(1, from: 2)), on: ConnectionID(2)))
        #expect(e.outboxText == ["ACK 3"])
        e.outbox.removeAll()
        e.handle(.received(MC.opts(5, MC.request(5, from: 2)), on: ConnectionID(2)))
        e.handle(.received(MC.opts(4, MC.request(4, from: 2)), on: ConnectionID(2)))
        #expect(e.outboxText.isEmpty)
        e.handle(.received(MC.opts(3, MC.request(3, from: 2)), on: ConnectionID(2)))
        #expect(e.deliveredText == ["MSG #0 seq 0", "MSG #1 seq 1", "MSG #2 seq 2", "MSG #3 seq 3"])
        #expect(e.drops == [.duplicate, .futureSequence, .futureSequence])
        let c = e.peer.counters
        #expect(c.drops(.duplicate) == 1 && c.drops(.futureSequence) == 2 && c.delivered == 5)   // + the STATUS
        #expect(c.nextExpectedSequence == 4)
    }

    @Test("receiving across 2^32: in order through the wrap, duplicates before the wrap still re-ACKed")
    func receiveWrap() {
        var config = MidcommsConfig.node(1, peer: 2)
        config.initialSequence = 0xFFFF_FFFE
        var e = session(config)
        for s: UInt32 in [0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1] {
            e.handle(.received(MC.opts(s, MC.request(s, from: 2)), on: ConnectionID(2)))
        }
        #expect(e.delivered.map(\.seq) == [0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1])
        #expect(e.peer.nextExpectedSequence == 2)
        // 0xFFFFFFFF is before 2 (wrap-aware); 6.1's plain compare would not re-ACK it.
        e.handle(.received(MC.opts(0xFFFF_FFFF, MC.request(9, from: 2)), on: ConnectionID(2)))
        #expect(e.outboxText == ["ACK 2"])
        #expect(e.drops == [.duplicate])
        e.outbox.removeAll()
        e.handle(.received(MC.opts(3, MC.request(9, from: 2)), on: ConnectionID(2)))
        #expect(e.drops == [.duplicate, .futureSequence])
        #expect(e.outboxText.isEmpty)
    }

    @Test("sending across 2^32: seqs wrap, a cumulative ACK across the wrap frees the right ones")
    func sendWrap() {
        var config = MidcommsConfig.node(1, peer: 2)
        config.initialSequence = 0xFFFF_FFFE
        var e = session(config)
        for n: UInt32 in 0..<4 { e.handle(.send(MC.request(n, from: 1))) }
        #expect(e.outboxText == ["OPTS{MSG REQUEST} seq 4294967294", "OPTS{MSG REQUEST} seq 4294967295",
                                 "OPTS{MSG REQUEST} seq 0", "OPTS{MSG REQUEST} seq 1"])
        e.handle(.received(MC.ack(0xFFFF_FFFF), on: ConnectionID(2)))
        #expect(e.peer.unackedCount == 3)
        e.handle(.received(MC.ack(1), on: ConnectionID(2)))
        #expect(e.peer.unackedCount == 1)
        e.handle(.received(MC.ack(2), on: ConnectionID(2)))
        #expect(e.peer.unackedCount == 0)
        #expect(e.drops.isEmpty)
    }

    @Test("bogus ACKs: beyond what we sent is ignored and logged; old ACKs change nothing")
    func bogusAcks() {
        var e = session()
        for n: UInt32 in 0..<3 { e.handle(.send(MC.request(n, from: 1))) }
        e.handle(.received(MC.ack(1000), on: ConnectionID(2)))
        #expect(e.drops == [.bogusAck])
        #expect(e.peer.unackedCount == 3)
        e.handle(.received(MC.ack(0x8000_0000), on: ConnectionID(2)))
        #expect(e.peer.unackedCount == 3)
        e.handle(.received(MC.ack(2), on: ConnectionID(2)))
        #expect(e.peer.unackedCount == 1)
        e.handle(.received(MC.ack(1), on: ConnectionID(2)))      // late, older ACK
        e.handle(.received(MC.ack(0), on: ConnectionID(2)))
        #expect(e.peer.unackedCount == 1)
        e.handle(.received(MC.ack(3), on: ConnectionID(2)))      // exactly everything sent
        #expect(e.peer.unackedCount == 0)
        #expect(e.peer.counters.acksReceived == 6)
        #expect(e.peer.counters.drops(.bogusAck) == 2)
    }

    @Test("an OPTS that passes the kernel's length checks but does not decode still consumes its seq")
    func undecodableInner() {
        var e = session()
        // Seq 0: an OPTS around an RCOM_STATUS_REPLY whose rf_num_slots (byte 24+48+14) claims 3 slots
        // that are not there. The outer and inner lengths are consistent, so the kernel would deliver it.
        var bad = MC.opts(0, MC.rcom(.statusReply, from: 2)).encoded()
        bad.setInteger(UInt16(3), at: bad.readerIndex + 24 + 48 + 14, endianness: .little)
        #expect((try? DLMPacket.decode(bad)) == nil)
        e.handle(.receivedFrame(bad, on: ConnectionID(2)))
        e.handle(.receivedFrame(MC.opts(1, MC.request(1, from: 2)).encoded(), on: ConnectionID(2)))
        #expect(e.drops == [.undecodableInner])
        #expect(e.deliveredText == ["MSG #1 seq 1"])
        // Garbage that does not even pass the envelope checks consumes nothing.
        var junk = ByteBuffer()
        DLMHeader(version: .v3_2, word: 2, nodeID: 2, length: 0, command: .opts).write(into: &junk, length: 30)
        junk.writeRepeatingByte(0xEE, count: 14)
        e.handle(.receivedFrame(junk, on: ConnectionID(2)))
        #expect(e.drops == [.undecodableInner, .malformed])
        #expect(e.peer.nextExpectedSequence == 2)
    }

    @Test("random frames never trap; every one is delivered, dropped or an ACK", arguments: [UInt64(11), 12, 13])
    func fuzz(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        for generation in [MidcommsConfig.Generation.kernel61, .newest] {
            for emulate in [false, true] {
                var peer = MidcommsPeer(config: .node(1, peer: 2, generation, emulate31: emulate))
                _ = peer.handle(.connectionUp(ConnectionID(1)), now: MC.now())
                var out: [MidcommsAction] = []
                for i in 0..<3_000 {
                    var frame = ByteBuffer()
                    let length = rng.int(16...200)
                    let version: UInt32 = rng.pick([0x0003_0001, 0x0003_0002, 0x0003_0002, rng.u32()])
                    let cmd: UInt8 = rng.chance(1, in: 8) ? rng.u8() : UInt8(rng.int(1...5))
                    DLMHeader(version: ProtocolVersion(rawValue: version), word: rng.chance(1, in: 2) ? UInt32(rng.below(8)) : rng.u32(),
                              nodeID: rng.chance(7, in: 8) ? 2 : rng.u32(), length: 0, command: cmd)
                        .write(into: &frame, length: length)
                    if cmd == 3 && length >= 24 {
                        frame.writeInteger(UInt8(rng.int(1...5)))
                        frame.writeInteger(UInt8(0))
                        frame.writeInteger(UInt16(rng.chance(1, in: 4) ? rng.below(64) : 0), endianness: .little)
                        frame.writeInteger(UInt32(0))
                    }
                    frame.writeBytes(rng.bytes(length - frame.readableBytes))
                    out.removeAll(keepingCapacity: true)
                    peer.handle(.receivedFrame(frame, on: ConnectionID(2)), now: MC.now(Double(i) / 1000), into: &out)
                    if rng.chance(1, in: 50) { peer.handle(.send(MC.request(UInt32(i), from: 1)), now: MC.now(), into: &out) }
                    if rng.chance(1, in: 200) { peer.handle(.connectionLost(ConnectionID(1), .error("x")), now: MC.now(), into: &out) }
                    if rng.chance(1, in: 100) { peer.handle(.connectionUp(ConnectionID(UInt64(i + 10))), now: MC.now(), into: &out) }
                    if rng.chance(1, in: 300) { peer.handle(rng.pick([.closeRequested, .memberAdded, .memberRemoved, .timerFired]), now: MC.now(), into: &out) }
                    peer.handle(.receiveBatchDone, now: MC.now(), into: &out)
                }
                let c = peer.counters
                #expect(c.delivered + c.totalDrops > 0)
                if emulate { #expect(c.acksSent == 0) }
            }
        }
    }

    @Test("fault injection: dropped sequenced messages come back only with a reconnect; duplicates are dropped by the peer")
    func faults() {
        var link = PacketLink(a: .node(1, peer: 2), b: .node(2, peer: 1))
        link.establish()
        link.on(.a, .setFaults(FaultInjection(dropNext: 2)))
        for n: UInt32 in 0..<4 { link.on(.a, .send(MC.request(n, from: 1))) }
        link.drain()
        #expect(link.b.deliveredText.filter { $0.hasPrefix("MSG") }.isEmpty)      // seq 0, 1 lost; 2, 3 are "future"
        #expect(link.b.drops == [.futureSequence, .futureSequence])
        #expect(link.a.peer.counters.faultDropped == 2)
        #expect(link.a.peer.unackedCount == 4)
        link.kill(.a)
        link.connect()
        link.drain()
        #expect(link.b.deliveredText.filter { $0.hasPrefix("MSG") } == ["MSG #0 seq 0", "MSG #1 seq 1", "MSG #2 seq 2", "MSG #3 seq 3"])
        #expect(link.a.peer.counters.retransmits == 4)
        // Duplicates (ACKs included, scope .all).
        link.on(.a, .setFaults(FaultInjection(duplicateNext: 1, scope: .all)))
        link.on(.a, .send(MC.request(4, from: 1)))
        link.drain()
        #expect(link.b.deliveredText.filter { $0.hasPrefix("MSG") }.count == 5)
        #expect(link.b.drops.last == .duplicate)
        // Withheld ACKs: the peer's queue grows, nothing is lost.
        link.on(.b, .setFaults(FaultInjection(withholdAcks: true)))
        link.on(.a, .send(MC.request(5, from: 1)))
        link.drain()
        link.on(.b, .flushAck)
        link.drain()
        #expect(link.b.peer.counters.faultAcksWithheld == 1)
        #expect(link.a.peer.unackedCount == 1)
        link.on(.b, .setFaults(.none))
        link.on(.b, .flushAck)
        link.drain()
        #expect(link.a.peer.unackedCount == 0)
    }

    @Test("counters: send time of the oldest unacked, connection losses, reconnects, resets")
    func counters() {
        var e = session()
        e.handle(.send(MC.request(0, from: 1)), now: MC.now(10))
        e.handle(.send(MC.request(1, from: 1)), now: MC.now(11))
        #expect(e.peer.counters.oldestUnackedSentAt == MC.now(10))
        #expect(e.peer.counters.oldestUnackedAge(at: MC.now(12.5)) == .milliseconds(2500))
        e.handle(.received(MC.ack(1), on: ConnectionID(2)), now: MC.now(12))
        #expect(e.peer.counters.oldestUnackedSentAt == MC.now(11))
        e.handle(.connectionLost(ConnectionID(1), .endOfFile))
        #expect(e.connectRequests == 1)
        e.handle(.send(MC.request(2, from: 1)), now: MC.now(13))
        #expect(e.connectRequests == 1)                                  // once per outage
        e.outbox.removeAll()
        e.handle(.connectionUp(ConnectionID(7)))
        #expect(e.outboxText == ["OPTS{MSG REQUEST} seq 1", "OPTS{MSG REQUEST} seq 2"])
        let c = e.peer.counters
        #expect(c.connectionLosses == 1 && c.reconnects == 1 && c.retransmits == 1 && c.sent == 3)
        #expect(c.unackedCount == 2 && c.nextSendSequence == 3 && c.version == .v3_2 && c.finState == .established)
        // 6.1 exactly: no resend after a clean EOF.
        var config = MidcommsConfig.node(1, peer: 2, .kernel61)
        config.retransmitAfterEOF = false
        var f = session(config)
        f.handle(.send(MC.request(0, from: 1)))
        f.handle(.connectionLost(ConnectionID(1), .endOfFile))
        f.outbox.removeAll()
        f.handle(.connectionUp(ConnectionID(2)))
        #expect(f.outboxText.isEmpty)
        f.handle(.connectionLost(ConnectionID(2), .error("ECONNRESET")))
        f.handle(.connectionUp(ConnectionID(3)))
        #expect(f.outboxText == ["OPTS{MSG REQUEST} seq 0"])
    }

    @Test("a receive-only connection's loss changes nothing; peer removal drops everything")
    func otherConnections() {
        var e = session()
        e.handle(.send(MC.request(0, from: 1)))
        e.outbox.removeAll()
        e.handle(.connectionLost(ConnectionID(42), .error("ECONNRESET")))
        #expect(e.peer.transmitConnection == ConnectionID(1))
        #expect(e.outbox.isEmpty && e.connectRequests == 0)
        e.handle(.peerRemoved)
        #expect(e.resets == [.peerRemoved])
        #expect(e.closes == [false])
        #expect(e.peer.unackedCount == 0 && e.peer.version == nil && e.peer.finState == .closed)
    }
}
