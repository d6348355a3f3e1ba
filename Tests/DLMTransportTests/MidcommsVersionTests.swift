// Version detection and the 3.1/3.2 matrix, what is bare and what is sequenced per kernel
// generation, and the two ACK policies.

import DLMTransport
import NIOCore
import Testing

extension MC {
    /// An inbound OPTS from `node` with `seq` around `payload` (already stamped by the test).
    static func opts(_ seq: UInt32, _ payload: MidcommsPayload, from node: UInt32 = 2) -> DLMPacket {
        let inner: DLMInner
        switch payload {
        case .message(let m): inner = .message(m)
        case .rcom(let r): inner = .rcom(r)
        }
        return .opts(DLMOpts(header: DLMHeader(version: .v3_2, word: seq, nodeID: node, length: 0, command: .opts), inner: inner))
    }

    static func bare(_ payload: MidcommsPayload) -> DLMPacket {
        switch payload {
        case .message(let m): return .message(m)
        case .rcom(let r): return .rcom(r)
        }
    }

    static func ack(_ value: UInt32, from node: UInt32 = 2) -> DLMPacket {
        .ack(DLMHeader(version: .v3_2, word: value, nodeID: node, length: 16, command: .ack))
    }
}

/// A machine for node 1 talking to node 2, with its transmit connection up.
func connected(_ config: MidcommsConfig = .node(1, peer: 2)) -> Endpoint {
    var e = Endpoint("A", config)
    e.handle(.connectionUp(ConnectionID(1)))
    e.handle(.memberAdded)
    return e
}

struct FirstMessageCase: Sendable, CustomStringConvertible {
    var rcom: RcomType
    var version: ProtocolVersion
    var description: String { "first \(rcom) with \(version)" }
}

@Suite("Midcomms: versions and ACK policies")
struct MidcommsVersionTests {
    @Test("3.2 ↔ 3.2: STATUS exchange fixes 3.2 on both sides; stateful traffic is wrapped and ACKed")
    func both32() {
        var link = PacketLink(a: .node(1, peer: 2), b: .node(2, peer: 1))
        link.connect()
        link.on(.a, .memberAdded)
        link.on(.b, .memberAdded)
        link.on(.a, .send(MC.rcom(.status, from: 1)))
        link.step(.a)
        link.on(.b, .send(MC.rcom(.statusReply, from: 2)))
        link.step(.b)
        link.on(.a, .send(MC.request(0, from: 1)))
        link.step(.a)
        link.on(.b, .flushAck)
        link.step(.b)
        #expect(link.trace == ["A→B RCOM STATUS", "B→A RCOM STATUS_REPLY", "A→B OPTS{MSG REQUEST} seq 0", "B→A ACK 1"])
        #expect(link.a.versions == [.v3_2] && link.b.versions == [.v3_2])
        #expect(link.a.peer.unackedCount == 0)
        #expect(link.b.deliveredText == ["RCOM STATUS", "MSG #0 seq 0"])
    }

    @Test("3.2 ↔ 3.1 emulation: all bare, 3.2 node keeps writing 0x00030002, no OPTS/ACK/FIN")
    func mixed() {
        var link = PacketLink(a: .node(1, peer: 2), b: .node(2, peer: 1, emulate31: true))
        link.connect()
        link.on(.a, .memberAdded)
        link.on(.b, .memberAdded)
        link.on(.a, .send(MC.rcom(.status, from: 1)))
        link.step(.a)
        link.on(.b, .send(MC.rcom(.statusReply, from: 2)))
        link.step(.b)
        link.on(.a, .send(MC.request(0, from: 1)))
        link.on(.a, .send(MC.rcom(.names, from: 1)))
        link.on(.a, .send(MC.lookup(1, from: 1)))
        link.on(.b, .send(MC.request(0, from: 2)))
        link.drain()
        for _ in 0..<3 { link.on(.a, .flushAck); link.on(.b, .flushAck); link.drain() }
        link.on(.a, .memberRemoved)
        link.on(.a, .closeRequested)
        #expect(link.trace == ["A→B RCOM STATUS", "B→A RCOM STATUS_REPLY v3.1",
                               "A→B MSG REQUEST", "B→A MSG REQUEST v3.1", "A→B RCOM NAMES", "A→B RCOM LOOKUP"])
        #expect(link.a.versions == [.v3_1])
        #expect(link.b.deliveredText == ["RCOM STATUS", "MSG #0", "RCOM NAMES", "RCOM LOOKUP"])
        #expect(link.a.deliveredText == ["RCOM STATUS_REPLY", "MSG #0"])
        #expect(link.a.closes == [true])
        #expect(link.a.peer.unackedCount == 0)
    }

    @Test("3.1 emulation skips OPTS, ACK and FIN as 5.10–5.13 did, and accepts bare 0x0003xxxx")
    func emulationReceive() {
        var e = connected(.node(1, peer: 2, emulate31: true))
        e.handle(.received(MC.opts(0, MC.request(0, from: 2)), on: ConnectionID(2)))
        e.handle(.received(MC.ack(3), on: ConnectionID(2)))
        e.handle(.received(.fin(DLMHeader(version: .v3_2, word: 0, nodeID: 2, length: 16, command: .fin)), on: ConnectionID(2)))
        e.handle(.received(MC.bare(MC.request(7, from: 2)), on: ConnectionID(2)))
        e.handle(.received(MC.bare(MC.lookup(8, from: 2)), on: ConnectionID(2)))
        var odd = MC.request(9, from: 2)
        if case .message(var m) = odd { m.header.version = ProtocolVersion(rawValue: 0x0003_0007); odd = .message(m) }
        e.handle(.received(MC.bare(odd), on: ConnectionID(2)))
        e.handle(.received(MC.bare(MC.request(10, from: 2, version: ProtocolVersion(rawValue: 0x0004_0001))), on: ConnectionID(2)))
        #expect(e.drops == [.unsupportedCommand, .unsupportedCommand, .unsupportedCommand, .invalidVersion])
        #expect(e.deliveredText == ["MSG #7", "RCOM LOOKUP", "MSG #9"])
        // And it sends 0x00030001, bare, whatever it sends; it never ACKs.
        e.handle(.send(MC.request(1, from: 1)))
        e.handle(.send(MC.rcom(.statusReply, from: 1, result: WireErrno.esrch)))
        e.handle(.flushAck)
        #expect(e.outboxText == ["MSG REQUEST v3.1", "RCOM STATUS_REPLY(-ESRCH) v3.1"])
    }

    static let firstMessages: [FirstMessageCase] = [RcomType.status, .statusReply, .names, .namesReply].flatMap { t in
        [FirstMessageCase(rcom: t, version: .v3_1), FirstMessageCase(rcom: t, version: .v3_2)]
    }

    @Test("the first message of each kind fixes the version; held stateful sends follow", arguments: firstMessages)
    func firstMessage(_ c: FirstMessageCase) {
        for generation in [MidcommsConfig.Generation.kernel61, .newest] {
            var e = connected(.node(1, peer: 2, generation))
            // Before the version is known: STATUS goes bare as 3.2, a REQUEST is held.
            e.handle(.send(MC.rcom(.status, from: 1)))
            e.handle(.send(MC.request(0, from: 1)))
            #expect(e.outboxText == ["RCOM STATUS"])
            #expect(e.peer.counters.waitingForVersion == 1)
            e.outbox.removeAll()
            e.handle(.received(MC.bare(MC.rcom(c.rcom, from: 2, version: c.version)), on: ConnectionID(2)))
            #expect(e.versions == [c.version])
            #expect(e.deliveredText == ["RCOM \(c.rcom)"])
            #expect(e.peer.counters.waitingForVersion == 0)
            #expect(e.outboxText == [c.version == .v3_2 ? "OPTS{MSG REQUEST} seq 0" : "MSG REQUEST"])
            // A later message of the other version is dropped.
            let other: ProtocolVersion = c.version == .v3_2 ? .v3_1 : .v3_2
            e.handle(.received(MC.bare(MC.rcom(.status, from: 2, version: other)), on: ConnectionID(2)))
            #expect(e.drops == [.versionMismatch])
            #expect(e.deliveredText.count == 1)
            #expect(e.peer.counters.drops(.versionMismatch) == 1)
        }
    }

    @Test("a version change mid-session is dropped, in both directions")
    func versionChange() {
        var e = connected()
        e.handle(.received(MC.bare(MC.rcom(.status, from: 2)), on: ConnectionID(2)))
        e.handle(.received(MC.opts(0, MC.request(0, from: 2)), on: ConnectionID(2)))
        e.handle(.received(MC.bare(MC.request(1, from: 2, version: .v3_1)), on: ConnectionID(2)))
        e.handle(.received(MC.bare(MC.rcom(.statusReply, from: 2, version: .v3_1)), on: ConnectionID(2)))
        #expect(e.drops == [.versionMismatch, .versionMismatch])
        #expect(e.deliveredText == ["RCOM STATUS", "MSG #0 seq 0"])

        var f = connected()
        f.handle(.received(MC.bare(MC.rcom(.status, from: 2, version: .v3_1)), on: ConnectionID(2)))
        f.handle(.received(MC.opts(0, MC.request(0, from: 2)), on: ConnectionID(2)))
        f.handle(.received(MC.ack(1), on: ConnectionID(2)))
        #expect(f.drops == [.versionMismatch, .versionMismatch])
        #expect(f.peer.version == .v3_1)
    }

    @Test("what goes bare and what is sequenced, per generation")
    func statelessTable() {
        let kinds: [(MidcommsPayload, String)] = [
            (MC.rcom(.status, from: 1), "STATUS"), (MC.rcom(.statusReply, from: 1), "STATUS_REPLY"),
            (MC.rcom(.statusReply, from: 1, result: WireErrno.esrch), "STATUS_REPLY(-ESRCH)"),
            (MC.rcom(.names, from: 1), "NAMES"), (MC.rcom(.namesReply, from: 1), "NAMES_REPLY"),
            (MC.rcom(.lookup, from: 1), "LOOKUP"), (MC.rcom(.lookupReply, from: 1), "LOOKUP_REPLY"),
            (MC.request(0, from: 1), "REQUEST"),
        ]
        let expected61 = ["RCOM STATUS", "RCOM STATUS_REPLY", "OPTS{RCOM STATUS_REPLY(-ESRCH)} seq 0", "RCOM NAMES",
                          "RCOM NAMES_REPLY", "OPTS{RCOM LOOKUP} seq 1", "OPTS{RCOM LOOKUP_REPLY} seq 2", "OPTS{MSG REQUEST} seq 3"]
        let expectedNew = ["RCOM STATUS", "RCOM STATUS_REPLY", "OPTS{RCOM STATUS_REPLY(-ESRCH)} seq 0", "OPTS{RCOM NAMES} seq 1",
                           "OPTS{RCOM NAMES_REPLY} seq 2", "OPTS{RCOM LOOKUP} seq 3", "OPTS{RCOM LOOKUP_REPLY} seq 4",
                           "OPTS{MSG REQUEST} seq 5"]
        for (generation, expected) in [(MidcommsConfig.Generation.kernel61, expected61), (.newest, expectedNew)] {
            var e = connected(.node(1, peer: 2, generation))
            e.handle(.received(MC.bare(MC.rcom(.status, from: 2)), on: ConnectionID(2)))
            for (p, _) in kinds { e.handle(.send(p)) }
            #expect(e.outboxText == expected, "\(generation)")
            // Everything we write carries h_version 0x00030002 and our nodeid.
            for f in e.outbox {
                let h = try? DLMHeader.peek(f.bytes)
                #expect(h?.version == .v3_2 && h?.nodeID == 1)
            }
        }
    }

    @Test("receiving: NAMES(+REPLY) and the -ESRCH reply accepted bare and wrapped; other bare RCOMs and bare MSG/FIN dropped")
    func acceptance() {
        var e = connected()
        e.handle(.received(MC.bare(MC.rcom(.names, from: 2)), on: ConnectionID(2)))
        e.handle(.received(MC.opts(0, MC.rcom(.names, from: 2)), on: ConnectionID(2)))
        e.handle(.received(MC.bare(MC.rcom(.namesReply, from: 2)), on: ConnectionID(2)))
        e.handle(.received(MC.opts(1, MC.rcom(.namesReply, from: 2)), on: ConnectionID(2)))
        e.handle(.received(MC.bare(MC.rcom(.statusReply, from: 2, result: WireErrno.esrch)), on: ConnectionID(2)))
        e.handle(.received(MC.opts(2, MC.rcom(.statusReply, from: 2, result: WireErrno.esrch)), on: ConnectionID(2)))
        #expect(e.deliveredText == ["RCOM NAMES", "RCOM NAMES seq 0", "RCOM NAMES_REPLY", "RCOM NAMES_REPLY seq 1",
                                    "RCOM STATUS_REPLY", "RCOM STATUS_REPLY seq 2"])
        e.handle(.received(MC.bare(MC.rcom(.lookup, from: 2)), on: ConnectionID(2)))
        e.handle(.received(MC.bare(MC.request(5, from: 2)), on: ConnectionID(2)))
        e.handle(.received(.fin(DLMHeader(version: .v3_2, word: 0, nodeID: 2, length: 16, command: .fin)), on: ConnectionID(2)))
        e.handle(.received(MC.bare(MC.request(5, from: 2, version: ProtocolVersion(rawValue: 0x0003_0003))), on: ConnectionID(2)))
        e.handle(.received(MC.opts(3, MC.request(6, from: 9)), on: ConnectionID(2)))
        e.handle(.received(MC.opts(4, MC.request(7, from: 2)), on: ConnectionID(2)))
        #expect(e.drops == [.unsupportedBareRcom, .unsupportedCommand, .unsupportedCommand, .invalidVersion, .wrongNodeID])
        // The wrong-nodeid message still consumed its seq, so #7 (seq 4) is delivered.
        #expect(e.deliveredText.last == "MSG #7 seq 4")
        #expect(e.peer.nextExpectedSequence == 5)
    }

    @Test("per-batch ACK (6.1): one ACK per batch that delivered something, ESTABLISHED only")
    func perBatch() {
        var e = connected(.node(1, peer: 2, .kernel61))
        e.handle(.received(MC.bare(MC.rcom(.status, from: 2)), on: ConnectionID(2)))
        for s in 0..<10 { e.handle(.received(MC.opts(UInt32(s), MC.request(UInt32(s), from: 2)), on: ConnectionID(2))) }
        #expect(e.outboxText.isEmpty)
        e.handle(.receiveBatchDone)
        #expect(e.outboxText == ["ACK 10"])
        e.outbox.removeAll()
        e.handle(.receiveBatchDone)                   // nothing delivered: no ACK
        for s in 10..<15 {
            e.handle(.received(MC.opts(UInt32(s), MC.request(UInt32(s), from: 2)), on: ConnectionID(2)))
            e.handle(.receiveBatchDone)
        }
        #expect(e.outboxText == ["ACK 11", "ACK 12", "ACK 13", "ACK 14", "ACK 15"])
        #expect(e.peer.counters.acksSent == 6)
        // A bare STATUS delivers but is not sequenced: no ACK.
        e.outbox.removeAll()
        e.handle(.received(MC.bare(MC.rcom(.status, from: 2)), on: ConnectionID(2)))
        e.handle(.receiveBatchDone)
        #expect(e.outboxText.isEmpty)
        // Sending does not trigger ACKs under this policy.
        for s in 15..<60 { e.handle(.received(MC.opts(UInt32(s), MC.request(UInt32(s), from: 2)), on: ConnectionID(2))) }
        e.handle(.send(MC.request(0, from: 1)))
        #expect(e.outboxText == ["OPTS{MSG REQUEST} seq 0"])
    }

    @Test("threshold ACK (newest): >32 delivered → ACK just before our next sequenced send; >256 on receive")
    func threshold() {
        var e = connected()
        e.handle(.received(MC.bare(MC.rcom(.status, from: 2)), on: ConnectionID(2)))
        for s in 0..<32 { e.handle(.received(MC.opts(UInt32(s), MC.request(UInt32(s), from: 2)), on: ConnectionID(2))) }
        e.handle(.receiveBatchDone)
        e.handle(.send(MC.request(0, from: 1)))
        #expect(e.outboxText == ["OPTS{MSG REQUEST} seq 0"])     // 32 is not more than 32
        e.outbox.removeAll()
        e.handle(.received(MC.opts(32, MC.request(32, from: 2)), on: ConnectionID(2)))
        e.handle(.send(MC.request(1, from: 1)))
        e.handle(.send(MC.rcom(.status, from: 1)))               // bare sends do not trigger it
        #expect(e.outboxText == ["ACK 33", "OPTS{MSG REQUEST} seq 1", "RCOM STATUS"])
        e.outbox.removeAll()
        // Receive side: the 257th delivery since the last threshold ACK triggers one.
        for s in 33..<(33 + 256) { e.handle(.received(MC.opts(UInt32(s), MC.request(UInt32(s), from: 2)), on: ConnectionID(2))) }
        #expect(e.outboxText.isEmpty)
        e.handle(.received(MC.opts(289, MC.request(289, from: 2)), on: ConnectionID(2)))
        #expect(e.outboxText == ["ACK 290"])
        // Duplicate: immediate ACK regardless of policy.
        e.outbox.removeAll()
        e.handle(.received(MC.opts(3, MC.request(3, from: 2)), on: ConnectionID(2)))
        #expect(e.outboxText == ["ACK 290"])
    }
}
