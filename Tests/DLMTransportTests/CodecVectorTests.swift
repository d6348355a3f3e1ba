// The hex vectors of shared/spec/wire.md §10, decoded field by field and re-encoded byte
// for byte, in both directions (bytes -> value -> bytes, and value built by hand -> bytes).

import DLMTransport
import Foundation
import NIOCore
import Testing

/// The §10 dumps, copied verbatim from wire.md (`specDumpsMatchWireMd` checks they still match).
enum SpecVectors {
    static let a = """
        0000: 02 00 03 00 78 56 34 12 01 00 00 00 40 00 02 00
        0010: 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00
        0020: 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        0030: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        """
    static let a2 = """
        0000: 02 00 03 00 78 56 34 12 02 00 00 00 50 00 02 00
        0010: 05 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00
        0020: 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00
        0030: 20 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        0040: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        """
    static let a3 = """
        0000: 02 00 03 00 00 00 00 00 02 00 00 00 68 00 03 00
        0010: 02 00 00 00 00 00 00 00 02 00 03 00 78 56 34 12
        0020: 02 00 00 00 50 00 02 00 05 00 00 00 fd ff ff ff
        0030: 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        0040: 01 00 00 00 00 00 00 00 ff ff ff ff 00 00 00 00
        0050: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        0060: 00 00 00 00 00 00 00 00
        """
    static let b = """
        0000: 02 00 03 00 05 00 00 00 01 00 00 00 73 00 03 00
        0010: 01 00 00 00 00 00 00 00 02 00 03 00 78 56 34 12
        0020: 01 00 00 00 5b 00 01 00 01 00 00 00 02 00 00 00
        0030: 34 12 00 00 01 00 01 00 00 00 00 00 00 00 00 00
        0040: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
        0050: 00 00 00 00 96 68 8f e1 00 00 00 00 ff ff ff ff
        0060: 05 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00
        0070: 66 6f 6f
        """
    static let c = """
        0000: 02 00 03 00 06 00 00 00 02 00 00 00 10 00 04 00
        """
    static let d = """
        0000: 02 00 03 00 07 00 00 00 01 00 00 00 28 00 03 00
        0010: 05 00 00 00 00 00 00 00 02 00 03 00 00 00 00 00
        0020: 01 00 00 00 10 00 05 00
        """

    static let all: [(String, String)] = [("10.a", a), ("10.a2", a2), ("10.a3", a3), ("10.b", b), ("10.c", c), ("10.d", d)]
}

/// Asserts both directions for one vector: decode(bytes) == expected and encode(expected) == bytes.
private func assertBothWays(_ bytes: [UInt8], _ expected: DLMPacket, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let decoded = try DLMPacket.decode(ByteBuffer(bytes: bytes))
    #expect(decoded == expected, "decode(vector) differs from the hand-built value", sourceLocation: sourceLocation)
    #expect(expected.encoded().array == bytes, "encode(hand-built value) differs from the vector", sourceLocation: sourceLocation)
    #expect(decoded.encoded().array == bytes, "encode(decode(vector)) differs from the vector", sourceLocation: sourceLocation)
    #expect(expected.encodedLength == bytes.count, sourceLocation: sourceLocation)
}

@Suite("Codec: wire.md §10 vectors")
struct CodecVectorTests {
    @Test("10.a RCOM_STATUS, node 1 -> node 2, bare 3.2")
    func statusRequest() throws {
        let bytes = hexBytes(SpecVectors.a)
        #expect(bytes.count == 64)
        guard case .rcom(let r) = try DLMPacket.decode(ByteBuffer(bytes: bytes)) else {
            Issue.record("10.a is not decoded as a bare DLM_RCOM")
            return
        }
        #expect(r.header.version == .v3_2)
        #expect(r.header.version.rawValue == 0x0003_0002)
        #expect(r.header.lockspace == 0x1234_5678)
        #expect(r.header.nodeID == 1)
        #expect(r.header.length == 64)
        #expect(r.header.command == HeaderCommand.rcom.rawValue)
        #expect(r.header.pad == 0)
        #expect(r.type == 1)
        #expect(r.rcomType == .status)
        #expect(r.result == 0)
        #expect(r.id == 1)
        #expect(r.seq == 1)
        #expect(r.seqReply == 0)
        #expect(r.payload == .status(RcomStatus(flags: 0, unused1: 0, unused2: 0)))

        let built = DLMPacket.rcom(DLMRcom(
            header: DLMHeader(version: .v3_2, word: 0x1234_5678, nodeID: 1, length: 64, command: .rcom),
            type: RcomType.status.rawValue, result: 0, id: 1, seq: 1, seqReply: 0,
            payload: .status(RcomStatus(flags: 0))))
        try assertBothWays(bytes, built)
        #expect(built.kind == "v3.2 RCOM STATUS")
    }

    @Test("10.a2 RCOM_STATUS_REPLY, node 2 -> node 1, no slots")
    func statusReply() throws {
        let bytes = hexBytes(SpecVectors.a2)
        #expect(bytes.count == 80)
        guard case .rcom(let r) = try DLMPacket.decode(ByteBuffer(bytes: bytes)) else {
            Issue.record("10.a2 is not decoded as a bare DLM_RCOM")
            return
        }
        #expect(r.header.version == .v3_2)
        #expect(r.header.lockspace == 0x1234_5678)
        #expect(r.header.nodeID == 2)
        #expect(r.header.length == 80)
        #expect(r.header.command == 2)
        #expect(r.rcomType == .statusReply)
        #expect(r.result == RecoveryStatusBits.nodes)
        #expect(r.id == 1)
        #expect(r.seq == 1)
        #expect(r.seqReply == 1)
        guard case .statusReply(let c, let slots) = r.payload else {
            Issue.record("10.a2 payload is not rcom_config: \(r.payload)")
            return
        }
        #expect(c.lvblen == 32)
        #expect(c.lsflags == 0)
        #expect(c.flags == 0)
        #expect(c.ourSlot == 0)
        #expect(c.numSlots == 0)
        #expect(c.generation == 0)
        #expect(c.unused1 == 0)
        #expect(c.unused2 == 0)
        #expect(slots.isEmpty)

        let built = DLMPacket.rcom(DLMRcom(
            header: DLMHeader(version: .v3_2, word: 0x1234_5678, nodeID: 2, length: 80, command: .rcom),
            type: RcomType.statusReply.rawValue, result: 1, id: 1, seq: 1, seqReply: 1,
            payload: .statusReply(RcomConfig(lvblen: 32, lsflags: 0), slots: [])))
        try assertBothWays(bytes, built)
        #expect(built.kind == "v3.2 RCOM STATUS_REPLY")
    }

    @Test("10.a3 'lockspace not found' STATUS_REPLY, OPTS-wrapped, seq 0")
    func statusReplyNotFound() throws {
        let bytes = hexBytes(SpecVectors.a3)
        #expect(bytes.count == 104)
        guard case .opts(let o) = try DLMPacket.decode(ByteBuffer(bytes: bytes)) else {
            Issue.record("10.a3 is not decoded as DLM_OPTS")
            return
        }
        #expect(o.header.version == .v3_2)
        #expect(o.header.seq == 0)
        #expect(o.header.nodeID == 2)
        #expect(o.header.length == 104)
        #expect(o.header.command == HeaderCommand.opts.rawValue)
        #expect(o.nextCommand == HeaderCommand.rcom.rawValue)
        #expect(o.pad == 0)
        #expect(o.pad2 == 0)
        #expect(o.options.readableBytes == 0)
        guard case .rcom(let r) = o.inner else {
            Issue.record("10.a3 inner message is not DLM_RCOM")
            return
        }
        #expect(r.header.version == .v3_2)
        #expect(r.header.lockspace == 0x1234_5678)
        #expect(r.header.nodeID == 2)
        #expect(r.header.length == 80)
        #expect(r.header.command == 2)
        #expect(r.rcomType == .statusReply)
        #expect(r.result == -3)  // -ESRCH
        #expect(r.result == WireErrno.esrch)
        #expect(r.id == 1)
        #expect(r.seq == 0)
        #expect(r.seqReply == 1)
        guard case .statusReply(let c, let slots) = r.payload else {
            Issue.record("10.a3 payload is not rcom_config")
            return
        }
        #expect(c.lvblen == 0xFFFF_FFFF)
        #expect(c.lvblen == RcomConfig.notReadyLvblen)
        #expect(c.lsflags == 0 && c.flags == 0 && c.ourSlot == 0 && c.numSlots == 0 && c.generation == 0)
        #expect(slots.isEmpty)

        let inner = DLMRcom(
            header: DLMHeader(version: .v3_2, word: 0x1234_5678, nodeID: 2, length: 80, command: .rcom),
            type: RcomType.statusReply.rawValue, result: -3, id: 1, seq: 0, seqReply: 1,
            payload: .statusReply(RcomConfig(lvblen: 0xFFFF_FFFF, lsflags: 0), slots: []))
        let built = DLMPacket.opts(DLMOpts(
            header: DLMHeader(version: .v3_2, word: 0, nodeID: 2, length: 104, command: .opts), inner: .rcom(inner)))
        try assertBothWays(bytes, built)
        #expect(built.kind == "v3.2 OPTS>RCOM STATUS_REPLY")
        // The inner message alone is the bare 80-byte reply a 3.1 peer would get.
        #expect(DLMPacket.rcom(inner).encoded().array == Array(bytes[24...]))
    }

    /// The 10.b table, field by field.
    private func checkRequest(_ m: DLMMessage, version: ProtocolVersion) {
        #expect(m.header.version == version)
        #expect(m.header.lockspace == 0x1234_5678)
        #expect(m.header.nodeID == 1)
        #expect(m.header.length == 91)
        #expect(m.header.command == HeaderCommand.message.rawValue)
        #expect(m.header.pad == 0)
        #expect(m.type == 1)
        #expect(m.messageType == .request)
        #expect(m.nodeID == 2)
        #expect(m.pid == 0x1234)
        #expect(m.lkid == 0x0001_0001)
        #expect(m.remid == 0)
        #expect(m.parentLkid == 0)
        #expect(m.parentRemid == 0)
        #expect(m.exflags == 0)
        #expect(m.sbflags == 0)
        #expect(m.flags == 0)
        #expect(m.lvbseq == 0)
        #expect(m.hash == 0xE18F_6896)
        #expect(m.hash == JHash.hash(Array("foo".utf8)))
        #expect(m.status == 0)
        #expect(m.grmode == LockMode.iv.rawValue)
        #expect(m.rqmode == LockMode.ex.rawValue)
        #expect(m.bastmode == 0)
        #expect(m.asts == CallbackFlags.cast | CallbackFlags.bast)
        #expect(m.result == 0)
        #expect(m.extra.array == Array("foo".utf8))
    }

    private func requestFoo(version: ProtocolVersion) -> DLMMessage {
        DLMMessage(
            header: DLMHeader(version: version, word: 0x1234_5678, nodeID: 1, length: 91, command: .message),
            type: MessageType.request.rawValue, nodeID: 2, pid: 0x1234, lkid: 0x0001_0001, hash: 0xE18F_6896,
            grmode: -1, rqmode: 5, asts: 3, extra: ByteBuffer(string: "foo"))
    }

    @Test("10.b OPTS-wrapped REQUEST, seq 5, resource \"foo\", mode EX")
    func wrappedRequest() throws {
        let bytes = hexBytes(SpecVectors.b)
        #expect(bytes.count == 115)
        guard case .opts(let o) = try DLMPacket.decode(ByteBuffer(bytes: bytes)) else {
            Issue.record("10.b is not decoded as DLM_OPTS")
            return
        }
        #expect(o.header.version == .v3_2)
        #expect(o.header.seq == 5)
        #expect(o.header.nodeID == 1)
        #expect(o.header.length == 115)
        #expect(o.header.command == 3)
        #expect(o.header.pad == 0)
        #expect(o.nextCommand == 1)
        #expect(o.pad == 0)
        #expect(o.options.readableBytes == 0)
        #expect(o.pad2 == 0)
        guard case .message(let m) = o.inner else {
            Issue.record("10.b inner message is not DLM_MSG")
            return
        }
        checkRequest(m, version: .v3_2)

        let built = DLMPacket.opts(DLMOpts(
            header: DLMHeader(version: .v3_2, word: 5, nodeID: 1, length: 115, command: .opts),
            inner: .message(requestFoo(version: .v3_2))))
        try assertBothWays(bytes, built)
        #expect(built.kind == "v3.2 OPTS>MSG REQUEST")
    }

    @Test("10.b for a 3.1 peer: bytes 0x18..0x72 alone with h_version 0x00030001")
    func bareRequestV31() throws {
        var bytes = Array(hexBytes(SpecVectors.b)[0x18...])
        #expect(bytes.count == 91)
        bytes[0] = 0x01  // h_version 0x00030001: 01 00 03 00
        #expect(Array(bytes[0..<4]) == [0x01, 0x00, 0x03, 0x00])
        guard case .message(let m) = try DLMPacket.decode(ByteBuffer(bytes: bytes)) else {
            Issue.record("3.1 variant of 10.b is not decoded as a bare DLM_MSG")
            return
        }
        checkRequest(m, version: .v3_1)
        #expect(m.header.version.rawValue == 0x0003_0001)
        try assertBothWays(bytes, .message(requestFoo(version: .v3_1)))
        #expect(DLMPacket.message(m).kind == "v3.1 MSG REQUEST")

        // And the 3.2 bytes of the inner message alone decode as a bare 3.2 REQUEST.
        let inner32 = Array(hexBytes(SpecVectors.b)[0x18...])
        try assertBothWays(inner32, .message(requestFoo(version: .v3_2)))
    }

    @Test("10.c DLM_ACK of seq 5 carries h_seq 6")
    func ack() throws {
        let bytes = hexBytes(SpecVectors.c)
        #expect(bytes.count == 16)
        guard case .ack(let h) = try DLMPacket.decode(ByteBuffer(bytes: bytes)) else {
            Issue.record("10.c is not decoded as DLM_ACK")
            return
        }
        #expect(h.version == .v3_2)
        #expect(h.seq == 6)
        #expect(h.nodeID == 2)
        #expect(h.length == 16)
        #expect(h.command == HeaderCommand.ack.rawValue)
        #expect(h.pad == 0)
        try assertBothWays(bytes, .ack(DLMHeader(version: .v3_2, word: 6, nodeID: 2, length: 16, command: .ack)))
        #expect(DLMPacket.ack(h).kind == "v3.2 ACK")
    }

    @Test("10.d OPTS-wrapped DLM_FIN, seq 7")
    func wrappedFin() throws {
        let bytes = hexBytes(SpecVectors.d)
        #expect(bytes.count == 40)
        guard case .opts(let o) = try DLMPacket.decode(ByteBuffer(bytes: bytes)) else {
            Issue.record("10.d is not decoded as DLM_OPTS")
            return
        }
        #expect(o.header.version == .v3_2)
        #expect(o.header.seq == 7)
        #expect(o.header.nodeID == 1)
        #expect(o.header.length == 40)
        #expect(o.header.command == 3)
        #expect(o.nextCommand == HeaderCommand.fin.rawValue)
        #expect(o.options.readableBytes == 0)
        guard case .fin(let h) = o.inner else {
            Issue.record("10.d inner message is not DLM_FIN")
            return
        }
        #expect(h.version == .v3_2)
        #expect(h.word == 0)
        #expect(h.nodeID == 1)
        #expect(h.length == 16)
        #expect(h.command == 5)
        let built = DLMPacket.opts(DLMOpts(
            header: DLMHeader(version: .v3_2, word: 7, nodeID: 1, length: 40, command: .opts),
            inner: .fin(DLMHeader(version: .v3_2, word: 0, nodeID: 1, length: 16, command: .fin))))
        try assertBothWays(bytes, built)
        #expect(built.kind == "v3.2 OPTS>FIN")
    }

    @Test("Every §10 vector is in wire.md exactly as copied here")
    func specDumpsMatchWireMd() throws {
        let url = RepoPaths.spec.appendingPathComponent("wire.md")
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            Issue.record("cannot read \(url.path): the spec must sit at ../shared/spec next to the repository")
            return
        }
        // Hex dump code blocks of §10, in document order.
        guard let start = text.range(of: "## 10. Worked examples"), let end = text.range(of: "## 11. Appendix A") else {
            Issue.record("wire.md has no §10/§11 headings")
            return
        }
        let section = text[start.upperBound..<end.lowerBound]
        var dumps: [[UInt8]] = []
        var current: [String]?
        for line in section.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```") {
                if let c = current { dumps.append(hexBytes(c.joined(separator: "\n"))) }
                current = current == nil ? [] : nil
            } else if current != nil {
                current!.append(String(line))
            }
        }
        #expect(dumps == SpecVectors.all.map { hexBytes($0.1) }, "§10 of wire.md changed: update SpecVectors")
    }

    @Test("DLMPacket.line names the fields like the kernel tracepoints")
    func describe() throws {
        let b = try DLMPacket.decode(ByteBuffer(bytes: hexBytes(SpecVectors.b)))
        let line = b.line
        for part in ["h_version=3.2", "h_seq=5", "h_nodeid=1", "h_length=115", "h_cmd=OPTS", "o_nextcmd=MSG",
                     "h_lockspace=0x12345678", "m_type=REQUEST", "m_lkid=0x00010001", "m_hash=0xe18f6896",
                     "m_grmode=IV", "m_rqmode=EX", "res_name=\"foo\""] {
            #expect(line.contains(part), "\(part) missing from: \(line)")
        }
        let a3 = try DLMPacket.decode(ByteBuffer(bytes: hexBytes(SpecVectors.a3)))
        #expect(a3.line.contains("rc_type=STATUS_REPLY"))
        #expect(a3.line.contains("rf_lvblen=0xffffffff"))
        let c = try DLMPacket.decode(ByteBuffer(bytes: hexBytes(SpecVectors.c)))
        #expect(c.line == "h_version=3.2 h_seq=6 h_nodeid=2 h_length=16 h_cmd=ACK")
    }
}
