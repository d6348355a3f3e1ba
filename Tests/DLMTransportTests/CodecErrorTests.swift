// Malformed input: every rejection is a typed WireError naming kind, field, offset and value;
// and a seeded garbage/mutation loop that must never trap.

import DLMTransport
import NIOCore
import Testing

/// Expects decoding `bytes` to fail with exactly this kind, field, offset and value.
private func expectError(_ bytes: [UInt8], _ kind: WireError.Kind, _ field: String, offset: Int, value: Int64,
                         sourceLocation: SourceLocation = #_sourceLocation) {
    guard let e = decodeError(bytes) else {
        Issue.record("decoded without error, expected \(kind) \(field)@\(offset)=\(value)", sourceLocation: sourceLocation)
        return
    }
    #expect(e.kind == kind, "\(e)", sourceLocation: sourceLocation)
    #expect(e.field == field, "\(e)", sourceLocation: sourceLocation)
    #expect(e.offset == offset, "\(e)", sourceLocation: sourceLocation)
    #expect(e.value == value, "\(e)", sourceLocation: sourceLocation)
    #expect(!e.detail.isEmpty, sourceLocation: sourceLocation)
    #expect(e.description.contains(field) && e.description.contains("offset \(offset)"), sourceLocation: sourceLocation)
}

/// A valid message of the given kind, encoded.
private func encoded(_ p: DLMPacket) -> [UInt8] { p.encoded().array }

/// Wraps raw inner bytes in a DLM_OPTS envelope with the given o_nextcmd and options.
private func wrapRaw(_ inner: [UInt8], nextcmd: UInt8? = nil, options: [UInt8] = [], optlen: Int? = nil,
                     outerLength: Int? = nil) -> [UInt8] {
    let total = 24 + options.count + inner.count
    return rawHeader(word: 5, length: outerLength ?? total, cmd: 3)
        + [nextcmd ?? inner[14], 0] + le16(UInt16(optlen ?? options.count)) + le32(0) + options + inner
}

private func rcomBytes(type: RcomType, payload: [UInt8], version: UInt32 = 0x0003_0002) -> [UInt8] {
    let length = 48 + payload.count
    return rawHeader(version: version, length: length, cmd: 2) + le32(type.rawValue) + le32(0) + le64(1) + le64(2)
        + le64(3) + payload
}

private func msgBytes(type: MessageType = .request, extra: [UInt8] = Array("foo".utf8), length: Int? = nil) -> [UInt8] {
    var b = rawHeader(length: length ?? 88 + extra.count, cmd: 1) + le32(type.rawValue)
    b += Array(repeating: 0, count: 68) + extra
    return b
}

@Suite("Codec: malformed input gives typed errors")
struct CodecErrorTests {
    @Test("Fewer than 16 bytes: truncated dlm_header")
    func shortHeader() {
        for n in 0..<16 {
            expectError(Array(rawHeader(length: 16, cmd: 4).prefix(n)), .truncated, "dlm_header", offset: 0, value: Int64(n))
        }
    }

    @Test("h_length disagreeing with the buffer")
    func lengthDisagrees() {
        let ack = rawHeader(length: 16, cmd: 4)
        var longer = ack
        patchLength(&longer, to: 17)
        expectError(longer, .lengthMismatch, "h_length", offset: 12, value: 17)
        var msg = msgBytes()
        patchLength(&msg, to: 90)  // 91 bytes present
        expectError(msg, .lengthMismatch, "h_length", offset: 12, value: 90)
        expectError(msg + [0], .lengthMismatch, "h_length", offset: 12, value: 90)
        patchLength(&msg, to: 4096)
        expectError(msg, .lengthMismatch, "h_length", offset: 12, value: 4096)
        patchLength(&msg, to: 0)
        expectError(msg, .lengthMismatch, "h_length", offset: 12, value: 0)
        // Trailing bytes after a valid message are not silently ignored.
        expectError(encoded(.ack(DLMHeader(version: .v3_2, word: 1, nodeID: 1, length: 16, command: .ack))) + [0, 0],
                    .lengthMismatch, "h_length", offset: 12, value: 16)
    }

    @Test("Unknown h_cmd", arguments: [0, 6, 7, 0x7F, 0xFF] as [UInt8])
    func unknownCommand(_ cmd: UInt8) {
        expectError(rawHeader(length: 16, cmd: cmd), .unknownCommand, "h_cmd", offset: 14, value: Int64(cmd))
        expectError(rawHeader(length: 100, cmd: cmd) + Array(repeating: 0, count: 84), .unknownCommand, "h_cmd",
                    offset: 14, value: Int64(cmd))
    }

    @Test("ACK and bare FIN must be exactly 16 bytes")
    func bareHeaderLength() {
        for cmd: UInt8 in [4, 5] {
            expectError(rawHeader(length: 20, cmd: cmd) + [0, 0, 0, 0], .lengthMismatch, "h_length", offset: 12, value: 20)
        }
    }

    @Test("Truncated DLM_MSG (< 88 bytes)", arguments: [16, 17, 50, 84, 87])
    func truncatedMessage(_ n: Int) {
        var b = Array(msgBytes(extra: []).prefix(n))
        patchLength(&b, to: n)
        expectError(b, .truncated, "h_length", offset: 12, value: Int64(n))
        // The same inside OPTS: offsets count from the outer message.
        expectError(wrapRaw(b), .truncated, "h_length", offset: 24 + 12, value: Int64(n))
    }

    @Test("Truncated DLM_RCOM (< 48 bytes)", arguments: [16, 20, 47])
    func truncatedRcom(_ n: Int) {
        var b = Array(rcomBytes(type: .lookupReply, payload: []).prefix(n))
        patchLength(&b, to: n)
        expectError(b, .truncated, "h_length", offset: 12, value: Int64(n))
        expectError(wrapRaw(b), .truncated, "h_length", offset: 36, value: Int64(n))
    }

    @Test("RCOM_LOCK / LOCK_REPLY shorter than 156 bytes", arguments: [RcomType.lock, .lockReply])
    func truncatedRcomLock(_ type: RcomType) {
        for payload in [0, 1, 60, 107] {
            let b = rcomBytes(type: type, payload: Array(repeating: 0, count: payload))
            // value: the message size, as for every other truncation error.
            expectError(b, .truncated, "rcom_lock", offset: 48, value: Int64(48 + payload))
            expectError(wrapRaw(b), .truncated, "rcom_lock", offset: 24 + 48, value: Int64(48 + payload))
        }
        // 108 bytes exactly is fine.
        #expect(decodeError(rcomBytes(type: type, payload: Array(repeating: 0, count: 108))) == nil)
    }

    @Test("STATUS_REPLY: rf_num_slots larger or smaller than the slots present")
    func slotCount() {
        func reply(numSlots: UInt16, slotBytes: Int) -> [UInt8] {
            let config = le32(32) + le32(0) + le32(0) + le16(0) + le16(numSlots) + le32(0) + le32(0) + le64(0)
            return rcomBytes(type: .statusReply, payload: config + Array(repeating: 0, count: slotBytes))
        }
        // rf_num_slots is at 48 + 14 = 62.
        expectError(reply(numSlots: 1, slotBytes: 0), .truncated, "rf_num_slots", offset: 62, value: 1)
        expectError(reply(numSlots: 3, slotBytes: 32), .truncated, "rf_num_slots", offset: 62, value: 3)
        expectError(reply(numSlots: 0xFFFF, slotBytes: 16), .truncated, "rf_num_slots", offset: 62, value: 0xFFFF)
        expectError(reply(numSlots: 1, slotBytes: 32), .lengthMismatch, "rf_num_slots", offset: 62, value: 1)
        expectError(reply(numSlots: 0, slotBytes: 8), .lengthMismatch, "rf_num_slots", offset: 62, value: 0)
        expectError(wrapRaw(reply(numSlots: 2, slotBytes: 16)), .truncated, "rf_num_slots", offset: 24 + 62, value: 2)
        #expect(decodeError(reply(numSlots: 2, slotBytes: 32)) == nil)
        // Less than a whole rcom_config.
        let short = rcomBytes(type: .statusReply, payload: Array(repeating: 0, count: 31))
        expectError(short, .truncated, "rcom_config", offset: 48, value: 79)
    }

    @Test("Fixed-size RCOM payloads of the wrong size")
    func fixedPayloads() {
        expectError(rcomBytes(type: .status, payload: Array(repeating: 0, count: 15)), .truncated, "rcom_status",
                    offset: 48, value: 15)
        expectError(rcomBytes(type: .status, payload: Array(repeating: 0, count: 17)), .lengthMismatch, "rcom_status",
                    offset: 48, value: 17)
        expectError(rcomBytes(type: .status, payload: []), .truncated, "rcom_status", offset: 48, value: 0)
        expectError(rcomBytes(type: .lookupReply, payload: [1]), .lengthMismatch, "rc_buf", offset: 48, value: 1)
    }

    @Test("NAMES_REPLY: big-endian lengths, no terminator, a name longer than 64, a record past the end")
    func namesReply() throws {
        // be16 length 3 "foo", then the 0xFFFF end: decodes (a little-endian reader would see 0x0300).
        let good = [0x00, 0x03] + Array("foo".utf8) + [0xFF, 0xFF, 0, 0, 0]
        guard case .rcom(let r) = try DLMPacket.decode(ByteBuffer(bytes: rcomBytes(type: .namesReply, payload: good))),
              case .namesReply(let list) = r.payload else {
            Issue.record("NAMES_REPLY did not decode")
            return
        }
        #expect(list.names.map(\.array) == [Array("foo".utf8)])
        #expect(list.end == .endOfList)
        #expect(list.bufferSize == good.count)

        // Records that fill the buffer without an end marker: the read of the next length runs off the end.
        let noEnd = [0x00, 0x03] + Array("foo".utf8) + [0x00, 0x01, 0x61]
        expectError(rcomBytes(type: .namesReply, payload: noEnd), .truncated, "rc_buf name length", offset: 48 + 8,
                    value: Int64(48 + noEnd.count))
        // Odd tail: one byte where a 2-byte length should be.
        expectError(rcomBytes(type: .namesReply, payload: [0x00, 0x01, 0x61, 0x00]), .truncated, "rc_buf name length",
                    offset: 48 + 3, value: 52)
        // Empty buffer.
        expectError(rcomBytes(type: .namesReply, payload: []), .truncated, "rc_buf name length", offset: 48, value: 48)
        // 65 bytes, and 0x4100 (what the little-endian misreading of 00 41 would be).
        expectError(rcomBytes(type: .namesReply, payload: [0x00, 0x41] + Array(repeating: 0x61, count: 65) + [0xFF, 0xFF]),
                    .invalidValue, "rc_buf name length", offset: 48, value: 65)
        expectError(rcomBytes(type: .namesReply, payload: [0x00, 0x02, 0x61, 0x62, 0x41, 0x00, 0xFF, 0xFF]),
                    .invalidValue, "rc_buf name length", offset: 52, value: 0x4100)
        // A record whose name runs past the end of the message.
        expectError(rcomBytes(type: .namesReply, payload: [0x00, 0x10, 0x61, 0x62]), .truncated, "rc_buf name",
                    offset: 50, value: 52)
        // Inside OPTS, offsets count from the outer header.
        expectError(wrapRaw(rcomBytes(type: .namesReply, payload: [0x00, 0x41] + Array(repeating: 0, count: 70))),
                    .invalidValue, "rc_buf name length", offset: 24 + 48, value: 65)
    }

    @Test("DLM_OPTS: short envelope, o_optlen past the end, bad o_nextcmd, mismatched inner header")
    func opts() {
        let inner = msgBytes()  // 91 bytes, h_cmd 1
        // Shorter than the 24-byte dlm_opts.
        for n in [16, 20, 23] {
            var b = Array(wrapRaw(inner).prefix(n))
            patchLength(&b, to: n)
            expectError(b, .truncated, "h_length", offset: 12, value: Int64(n))
        }
        // o_optlen past the end.
        expectError(wrapRaw(inner, optlen: 92), .truncated, "o_optlen", offset: 18, value: 92)
        expectError(wrapRaw(inner, optlen: 0xFFFF), .truncated, "o_optlen", offset: 18, value: 0xFFFF)
        // o_optlen eating into the inner message: the inner header is then read from the wrong place.
        let shifted = wrapRaw(inner, optlen: 8)
        #expect(decodeError(shifted) != nil)
        // o_optlen that leaves fewer than 16 bytes for the inner header.
        expectError(wrapRaw(inner, optlen: 80), .truncated, "dlm_header", offset: 24 + 80, value: 11)
        expectError(wrapRaw([], nextcmd: 1), .truncated, "dlm_header", offset: 24, value: 0)
        // o_nextcmd that cannot be inside OPTS.
        for bad: UInt8 in [0, 3, 4, 6, 0xFF] {
            expectError(wrapRaw(inner, nextcmd: bad), .unknownCommand, "o_nextcmd", offset: 16, value: Int64(bad))
        }
        // o_nextcmd valid but different from the inner h_cmd.
        expectError(wrapRaw(inner, nextcmd: 2), .invalidValue, "inner h_cmd", offset: 24 + 14, value: 1)
        let fin = rawHeader(word: 0, length: 16, cmd: 5)
        expectError(wrapRaw(fin, nextcmd: 1), .invalidValue, "inner h_cmd", offset: 38, value: 5)
        // With options, the inner offsets move along.
        expectError(wrapRaw(inner, nextcmd: 5, options: [1, 2, 3]), .invalidValue, "inner h_cmd", offset: 24 + 3 + 14,
                    value: 1)
    }

    @Test("DLM_OPTS: inner h_length disagreeing with the outer one")
    func innerOuterMismatch() {
        var inner = msgBytes()
        patchLength(&inner, to: 95)  // 91 bytes present
        expectError(wrapRaw(inner), .lengthMismatch, "inner h_length", offset: 36, value: 95)
        patchLength(&inner, to: 88)
        expectError(wrapRaw(inner), .lengthMismatch, "inner h_length", offset: 36, value: 88)
        // Outer h_length 1 byte short of the inner message: the outer check fires first.
        patchLength(&inner, to: 91)
        var outer = wrapRaw(inner)
        patchLength(&outer, to: outer.count - 1)
        expectError(outer, .lengthMismatch, "h_length", offset: 12, value: Int64(outer.count - 1))
        // A wrapped FIN must be 16 bytes.
        let longFin = rawHeader(word: 0, length: 20, cmd: 5) + [0, 0, 0, 0]
        expectError(wrapRaw(longFin), .lengthMismatch, "h_length", offset: 24 + 12, value: 20)
    }

    @Test("WireError describes itself with field, offset and value")
    func description() throws {
        let e = try #require(decodeError(rawHeader(length: 16, cmd: 9)))
        #expect(e.description.hasPrefix("unknownCommand: h_cmd at offset 14 (value 9)"))
        var framer = DLMFramer()
        var caught: FramingError?
        do { try framer.append(ByteBuffer(bytes: rawHeader(nodeID: 3, length: 5000, cmd: 1))) { _ in } } catch let e as FramingError {
            caught = e
        } catch {}
        let f = try #require(caught)
        #expect(f.asWireError == WireError(.invalidLength, field: "h_length", offset: 12, value: 5000, f.asWireError.detail))
        #expect(f.description.contains("5000") && f.description.contains("h_nodeid 3"))
    }

    /// Decodes every input; a success must re-encode byte for byte (except zero padding of a
    /// NAMES_REPLY buffer, which the codec does not keep) and decode to the same value again.
    @Test("100k seeded garbage and mutated inputs never trap: decode succeeds or throws WireError")
    func garbage() {
        var rng = SplitMix64(seed: 0x6A7B_A6E5)
        var gen = MessageGenerator(seed: 0x5EED_F00D)
        let valid: [[UInt8]] = (0..<400).map { _ in gen.packet().encoded().array }
        var successes = 0
        var failures: [WireError.Kind: Int] = [:]
        for i in 0..<100_000 {
            var b: [UInt8]
            switch rng.below(10) {
            case 0:
                // Pure noise.
                b = rng.bytes(rng.int(0...200))
            case 1:
                // Noise behind a plausible header with h_length = the byte count.
                let n = rng.int(16...400)
                b = rawHeader(version: rng.pick([0x0003_0001, 0x0003_0002]), length: n, cmd: UInt8(rng.int(0...6)))
                    + rng.bytes(n - 16)
                if b[14] == 3 && n >= 24 { b[16] = UInt8(rng.int(0...6)) }
            default:
                // A valid message with a few mutations.
                b = rng.pick(valid)
                for _ in 0..<rng.int(1...4) {
                    switch rng.below(6) {
                    case 0 where !b.isEmpty: b[rng.below(b.count)] = rng.u8()
                    case 1 where !b.isEmpty: b[rng.below(b.count)] ^= UInt8(1) << UInt8(rng.below(8))
                    case 2: b = Array(b.prefix(rng.int(0...b.count)))
                    case 3: b += rng.bytes(rng.int(1...40))
                    case 4 where b.count >= 16:
                        // Re-aim one of the interesting fields.
                        let at = rng.pick([12, 13, 14, 16, 18, 19, 36, 38, 62, 63, 90, 91])
                        if at < b.count { b[at] = rng.pick([0, 1, 2, 3, 4, 5, 0x40, 0x41, 0xFF, rng.u8()]) }
                    default:
                        if b.count >= 16 { patchLength(&b, to: b.count) }
                    }
                }
                if rng.bool(), b.count >= 16 { patchLength(&b, to: b.count) }
            }
            switch decodeResult(b) {
            case .failure(let e):
                failures[e.kind, default: 0] += 1
                if e.offset < 0 || e.offset > max(b.count, 16) { Issue.record("offset out of range: \(e) input #\(i)") }
            case .success(let p):
                successes += 1
                let again = p.encoded().array
                // Every decoded message re-encodes byte for byte, NAMES_REPLY padding included.
                if again != b {
                    Issue.record("encode(decode(b)) != b for input #\(i): \(hexString(b.prefix(64)))")
                }
                if decodeResult(again) != .success(p) { Issue.record("decode(encode(decode(b))) differs, input #\(i)") }
                if i % 16 == 0 {
                    // Rendering must not trap on odd values either.
                    _ = p.line
                    _ = p.kind
                }
            }
        }
        // The loop exercised both outcomes and every error kind a decoder can produce.
        #expect(successes > 1000)
        #expect(Set(failures.keys) == [.truncated, .lengthMismatch, .unknownCommand, .invalidValue])
    }
}
