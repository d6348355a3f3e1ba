// Property-based round trips over every message kind with randomised field values
// (seeded SplitMix64, so every failure names a replayable seed).

import DLMTransport
import NIOCore
import Testing

/// Checks the round-trip properties of one packet; returns the encoded bytes.
/// (Plain `if` + `Issue.record` rather than `#expect`: this runs tens of thousands of times.)
@discardableResult
private func checkRoundTrip(_ p: DLMPacket, _ label: @autoclosure () -> String,
                           sourceLocation: SourceLocation = #_sourceLocation) -> [UInt8]? {
    func fail(_ what: String) { Issue.record("\(what): \(label())", sourceLocation: sourceLocation) }
    let bytes = p.encoded().array
    // Lengths: encodedLength, the buffer and h_length on the wire agree.
    if bytes.count != p.encodedLength { fail("encodedLength \(p.encodedLength) != \(bytes.count) bytes") }
    let wireLength = Int(bytes[12]) | Int(bytes[13]) << 8
    if wireLength != bytes.count { fail("h_length \(wireLength) on the wire, \(bytes.count) bytes") }
    if case .opts(let o) = p {
        let innerStart = DLMOpts.headerSize + o.options.readableBytes
        let innerLength = Int(bytes[innerStart + 12]) | Int(bytes[innerStart + 13]) << 8
        if innerLength != o.inner.encodedLength || innerLength != bytes.count - innerStart {
            fail("inner h_length \(innerLength)")
        }
        if bytes[16] != o.inner.header.command { fail("o_nextcmd \(bytes[16])") }
        if Int(bytes[18]) | Int(bytes[19]) << 8 != o.options.readableBytes { fail("o_optlen") }
    }
    switch decodeResult(bytes) {
    case .failure(let e):
        fail("decode(encode(x)) threw \(e) for \(hexString(bytes.prefix(128)))")
        return nil
    case .success(let d):
        if d != p { fail("decode(encode(x)) != x") }
        if d.encoded().array != bytes { fail("encode(decode(b)) != b") }
    }
    return bytes
}

@Suite("Codec: randomised round trips")
struct CodecRoundTripTests {
    static let seed: UInt64 = 0xD1_5EED_2024

    @Test("Every m_type, bare and OPTS-wrapped, names 1...64 bytes, LVB 0/8/32/64 bytes")
    func allMessageTypes() {
        var gen = MessageGenerator(seed: Self.seed)
        var seenExtra: Set<Int> = []
        for type in MessageType.allCases {
            for i in 0..<300 {
                let m = gen.message(type)
                seenExtra.insert(m.extra.readableBytes)
                switch type.extraKind {
                case .resourceName: #expect((1...64).contains(m.extra.readableBytes))
                case .lvb: #expect([0, 8, 32, 64].contains(m.extra.readableBytes))
                case .none: #expect(m.extra.readableBytes == 0)
                }
                checkRoundTrip(.message(m), "bare \(type) #\(i) seed \(Self.seed)")
                if let wrapped = gen.opts(.message(m)) {
                    checkRoundTrip(wrapped, "wrapped \(type) #\(i) seed \(Self.seed)")
                }
            }
        }
        // Every name length 1...64 and every LVB size came up at least once.
        #expect(Set(1...64).isSubset(of: seenExtra))
        #expect(Set([0, 8, 32, 64]).isSubset(of: seenExtra))
    }

    @Test("Every rc_type with its payload, bare and OPTS-wrapped", arguments: RcomType.allCases)
    func allRcomTypes(_ type: RcomType) {
        var gen = MessageGenerator(seed: Self.seed &+ UInt64(type.rawValue))
        var slotCounts: Set<Int> = []
        var ends: Set<UInt16> = []
        var bufferSizes: Set<Int> = []
        var lvbSizes: Set<Int> = []
        for i in 0..<400 {
            let r = gen.rcom(type)
            switch r.payload {
            case .statusReply(let c, let slots):
                #expect(Int(c.numSlots) == slots.count)
                #expect(slots.count <= 249)
                slotCounts.insert(slots.count)
            case .namesReply(let list):
                ends.insert(list.end.rawValue)
                bufferSizes.insert(list.bufferSize)
                #expect(list.usedBytes <= list.bufferSize)
            case .lock(_, let lvb), .lockReply(_, let lvb):
                lvbSizes.insert(lvb.readableBytes)
            default:
                break
            }
            checkRoundTrip(.rcom(r), "bare \(type) #\(i) seed \(Self.seed)")
            if let wrapped = gen.opts(.rcom(r)) {
                checkRoundTrip(wrapped, "wrapped \(type) #\(i) seed \(Self.seed)")
            } else {
                // Only a 4048-byte (3.1-era) NAMES_REPLY buffer is too big to wrap.
                #expect(r.encodedLength > WireLimits.maxAppMessageSize)
            }
        }
        switch type {
        case .statusReply:
            #expect(slotCounts.contains(0))
            #expect(slotCounts.count > 100, "slot counts 0...249 should be well covered")
        case .namesReply:
            #expect(ends == [0x0000, 0xFFFF])
            #expect(bufferSizes == [4024, 4048])
        case .lock:
            #expect(lvbSizes == [0, 8, 32, 64])
        default:
            break
        }
    }

    @Test("Extremes: 249 slots, full NAMES_REPLY buffers, 64-byte names, 4096-byte outer messages")
    func maximumSizes() throws {
        var gen = MessageGenerator(seed: Self.seed ^ 0xFFFF)
        // STATUS_REPLY with the most slots a 4072-byte message can hold: 80 + 16 * 249 = 4064.
        var r = gen.rcom(.statusReply)
        let slots = (0..<249).map { RcomSlot(nodeID: UInt32($0 + 1), slot: UInt16($0 + 1)) }
        r.payload = .statusReply(RcomConfig(lvblen: 32, lsflags: 0, numSlots: 249), slots: slots)
        r.header.length = UInt16(r.encodedLength)
        #expect(r.encodedLength == 4064)
        checkRoundTrip(.rcom(r), "249 slots")
        let maybeWrapped = gen.opts(.rcom(r))
        let wrapped = try #require(maybeWrapped)
        checkRoundTrip(wrapped, "249 slots wrapped")

        // NAMES_REPLY: 4072 bare (5.14+), 4096 wrapped (6.6+), 4096 bare (<= 5.13).
        for (bufferSize, total) in [(4024, 4072), (4048, 4096)] {
            var n = gen.rcom(.namesReply)
            let names = (0..<60).map { i in ByteBuffer(bytes: Array(repeating: UInt8(0x41 + i % 26), count: 64)) }
            n.payload = .namesReply(RcomNameList(names: names, end: .endOfBlock, bufferSize: bufferSize))
            n.header.length = UInt16(n.encodedLength)
            #expect(n.encodedLength == total)
            checkRoundTrip(.rcom(n), "NAMES_REPLY \(bufferSize)")
        }
        var n = gen.rcom(.namesReply)
        n.payload = .namesReply(RcomNameList(names: [ByteBuffer(string: "x")], end: .endOfList, bufferSize: 4024))
        n.header.length = UInt16(n.encodedLength)
        let w = DLMPacket.opts(DLMOpts(header: DLMHeader(version: .v3_2, word: 9, nodeID: 1, length: 4096, command: .opts),
                                       inner: .rcom(n)))
        #expect(w.encodedLength == WireLimits.maxMessageSize)
        checkRoundTrip(w, "wrapped NAMES_REPLY, exactly 4096 bytes")

        // A 4048-byte buffer filled to the very last byte: records of 2 + 64 then the 2-byte end.
        var full: [ByteBuffer] = []
        var used = 2
        while used + 66 <= 4048 { full.append(ByteBuffer(bytes: Array(repeating: 0x7A, count: 64))); used += 66 }
        let rest = 4048 - used - 2
        if rest > 0 { full.append(ByteBuffer(bytes: Array(repeating: 0x79, count: rest))) }
        let list = RcomNameList(names: full, end: .endOfList, bufferSize: 4048)
        #expect(list.usedBytes == 4048)
        n.payload = .namesReply(list)
        n.header.length = UInt16(n.encodedLength)
        checkRoundTrip(.rcom(n), "NAMES_REPLY with no padding at all")

        // OPTS with options up to exactly 4096 bytes outer.
        let m = gen.message(.request)
        let optlen = WireLimits.maxMessageSize - DLMOpts.headerSize - m.encodedLength
        var o = DLMOpts(header: DLMHeader(version: .v3_2, word: 1, nodeID: 1, length: 0, command: .opts),
                        inner: .message(m), options: ByteBuffer(bytes: Array(repeating: 0xAB, count: optlen)))
        o.header.length = UInt16(o.encodedLength)
        #expect(o.encodedLength == 4096)
        checkRoundTrip(.opts(o), "OPTS with \(optlen) option bytes")
    }

    @Test("OPTS wraps MSG, RCOM and FIN with and without TLV option bytes; ACK; bare FIN")
    func envelopes() {
        var gen = MessageGenerator(seed: Self.seed &* 3)
        var withOptions = 0
        var withoutOptions = 0
        for i in 0..<3000 {
            let inner: DLMInner
            switch i % 3 {
            case 0: inner = .message(gen.message(gen.rng.pick(MessageType.allCases)))
            case 1: inner = .rcom(gen.rcom(gen.rng.pick(RcomType.allCases), maxSlots: 200))
            default: inner = .fin(gen.finHeader())
            }
            guard let p = gen.opts(inner) else { continue }
            if case .opts(let o) = p { if o.options.readableBytes > 0 { withOptions += 1 } else { withoutOptions += 1 } }
            checkRoundTrip(p, "OPTS #\(i)")
            checkRoundTrip(gen.ack(), "ACK #\(i)")
            checkRoundTrip(.fin(gen.finHeader()), "FIN #\(i)")
        }
        #expect(withOptions > 500 && withoutOptions > 500)
    }

    @Test("Thousands of mixed random packets, including undefined rc_types and odd header words")
    func mixed() {
        var gen = MessageGenerator(seed: Self.seed &+ 77)
        var kinds: Set<String> = []
        for i in 0..<20000 {
            let p = gen.packet()
            #expect(p.encodedLength <= WireLimits.maxMessageSize)
            kinds.insert(p.kind.split(separator: " ").dropFirst().joined(separator: " "))
            checkRoundTrip(p, "mixed #\(i) seed \(Self.seed &+ 77)")
        }
        // 14 MSG + 14 OPTS>MSG + 8 RCOM + 8 OPTS>RCOM + ACK + FIN + OPTS>FIN, plus undefined rc_types.
        for t in MessageType.allCases {
            #expect(kinds.contains("MSG \(t)"))
            #expect(kinds.contains("OPTS>MSG \(t)"))
        }
        for t in RcomType.allCases {
            #expect(kinds.contains("RCOM \(t)"))
            #expect(kinds.contains("OPTS>RCOM \(t)"))
        }
        #expect(kinds.isSuperset(of: ["ACK", "FIN", "OPTS>FIN"]))
    }

    @Test("Unknown m_type values survive a round trip with their extra bytes")
    func unknownMessageType() {
        var gen = MessageGenerator(seed: 5)
        for t in [0, 15, 16, 0xFFFF_FFFF] as [UInt32] {
            var m = gen.message(.request)
            m.type = t
            m.header.length = UInt16(m.encodedLength)
            checkRoundTrip(.message(m), "m_type \(t)")
            #expect(DLMPacket.message(m).kind.hasSuffix("MSG TYPE(\(t))"))
        }
    }

    @Test("The header word is h_lockspace for MSG/RCOM and h_seq for OPTS/ACK, same bytes")
    func headerWord() throws {
        let h = DLMHeader(version: .v3_2, word: 0xA1B2_C3D4, nodeID: 0x0102_0304, length: 16, command: .ack)
        let bytes = DLMPacket.ack(h).encoded().array
        #expect(bytes == [0x02, 0x00, 0x03, 0x00, 0xD4, 0xC3, 0xB2, 0xA1, 0x04, 0x03, 0x02, 0x01, 0x10, 0x00, 0x04, 0x00])
        #expect(h.seq == h.lockspace)
        #expect(ProtocolVersion.v3_2.major == 3 && ProtocolVersion.v3_2.minor == 2)
        #expect(ProtocolVersion.v3_1.description == "3.1")
        #expect(ProtocolVersion(rawValue: 0x0003_0000).description == "0x00030000")
    }
}
