// The per-message shortcuts of midcomms give exactly what the general paths give: the OPTS
// envelope written in place, the in-order DLM_MSG decoded without DLMPacket, and the send
// store that keeps unacknowledged messages back to back in shared chunks.

@testable import DLMTransport
import NIOCore
import Testing

@Suite("Midcomms: per-message fast paths match the general paths")
struct MidcommsFastPathTests {
    static func opts(_ seq: UInt32, _ payload: MidcommsPayload, from node: UInt32) -> DLMPacket {
        let inner: DLMInner
        switch payload {
        case .message(let m): inner = .message(m)
        case .rcom(let r): inner = .rcom(r)
        }
        return .opts(DLMOpts(header: DLMHeader(version: .v3_2, word: seq, nodeID: node, length: 0, command: .opts), inner: inner))
    }

    static func payloads() -> [MidcommsPayload] {
        var list: [MidcommsPayload] = []
        for n in 0..<40 { list.append(MC.request(UInt32(n), from: 2, nameLength: n)) }
        list.append(.message(DLMMessage(header: MC.header(.message, from: 2), type: MessageType.grant.rawValue)))
        list.append(MC.lookup(3, from: 2))
        for t in [RcomType.status, .statusReply, .names, .namesReply, .lookupReply] { list.append(MC.rcom(t, from: 2)) }
        return list
    }

    @Test("the envelope written in place is byte for byte DLMOpts(header:inner:).encode")
    func envelope() {
        for (i, p) in Self.payloads().enumerated() {
            let seq = UInt32(i) &* 0x9E37_79B9
            let expected = Self.opts(seq, p, from: 2).encoded()
            var bytes = ByteBuffer()
            DLMOpts.writeEnvelope(seq: seq, nodeID: 2, innerLength: p.encodedLength, innerCommand: p.header.command, into: &bytes)
            p.encode(into: &bytes)
            #expect(bytes == expected, "payload \(i)")
            #expect(bytes.readableBytes == DLMOpts.headerSize + p.encodedLength)
        }
    }

    @Test("decodeSequencedMessage returns a message exactly when DLMPacket.decode gives OPTS{MSG}, for mutated frames too")
    func decodeMatchesGeneral() throws {
        var rng = SplitMix64(seed: 0xFA57)
        var frames: [ByteBuffer] = []
        for (i, p) in Self.payloads().enumerated() { frames.append(Self.opts(UInt32(i), p, from: 2).encoded()) }
        // An envelope with options (kernels send none, the codec accepts them).
        var withOptions = Self.opts(9, MC.request(9, from: 2), from: 2)
        if case .opts(var o) = withOptions {
            o.options = ByteBuffer(bytes: [1, 2, 3, 4, 5, 6, 7, 8])
            withOptions = .opts(o)
        }
        frames.append(withOptions.encoded())
        // Mutations of the fields both paths check: lengths, o_nextcmd, o_optlen, inner h_cmd/h_length.
        let base = frames
        for _ in 0..<3000 {
            var f = rng.pick(base)
            let offset = rng.pick([12, 13, 16, 18, 19, 24 + 12, 24 + 13, 24 + 14, Int(rng.next() % UInt64(f.readableBytes))])
            guard offset < f.readableBytes else { continue }
            f.setInteger(UInt8(truncatingIfNeeded: rng.next()), at: offset)
            frames.append(f)
            if rng.chance(1, in: 4), f.readableBytes > 30 {
                frames.append(f.getSlice(at: 0, length: f.readableBytes - Int(rng.next() % 30)) ?? f)
            }
        }
        var fast = 0
        var rejected = 0
        for f in frames {
            guard let header = try? DLMHeader.peek(f), header.command == HeaderCommand.opts.rawValue else { continue }
            let general: DLMMessage?
            if case .opts(let o)? = try? DLMPacket.decode(f), case .message(let m) = o.inner {
                general = m
            } else {
                general = nil
            }
            let shortcut = MidcommsPeer.decodeSequencedMessage(f, header: header)
            #expect(shortcut == general, "\(MC.describe(f)) \(Array(f.readableBytesView.prefix(48)))")
            if shortcut != nil { fast += 1 } else { rejected += 1 }
        }
        #expect(fast > 40)
        // The mutations reach both outcomes: many frames the general path refuses or reads otherwise.
        #expect(rejected > 500, "\(rejected) frames without a fast-path message")
    }

    @Test("frames in order or not, through receivedFrame (fast paths) and received (decoded first): the same actions")
    func machineMatchesGeneral() throws {
        var rng = SplitMix64(seed: 0x5E0)
        var viaFrame = session()
        var viaPacket = session()
        var next: UInt32 = 0
        for i in 0..<2000 {
            let p = rng.chance(1, in: 10) ? MC.lookup(UInt32(i), from: 2) : MC.request(UInt32(i), from: 2, nameLength: i % 50)
            // Mostly in order; now and then a duplicate or a gap.
            let seq: UInt32 = rng.chance(1, in: 20) ? next &- 1 : (rng.chance(1, in: 40) ? next &+ 3 : next)
            if seq == next { next &+= 1 }
            let bytes = Self.opts(seq, p, from: 2).encoded()
            let a = viaFrame.handle(.receivedFrame(bytes, on: ConnectionID(2)))
            let b = viaPacket.handle(.received(try DLMPacket.decode(bytes), on: ConnectionID(2)))
            #expect(a == b, "frame \(i) seq \(seq)")
            if rng.chance(1, in: 8) {
                #expect(viaFrame.handle(.receiveBatchDone) == viaPacket.handle(.receiveBatchDone))
            }
        }
        #expect(viaFrame.delivered.count > 1500)
        #expect(viaFrame.peer.nextExpectedSequence == next)
    }

    @Test("the send store: slices hold their bytes across later appends, chunks go once acknowledged")
    func sendStore() {
        var store = SendStore()
        var refs: [SendStore.Ref] = []
        var expected: [ByteBuffer] = []
        var held: [ByteBuffer] = []
        for i in 0..<5000 {
            store.beginHandling()
            var msg = ByteBuffer()
            msg.writeRepeatingByte(UInt8(truncatingIfNeeded: i), count: 20 + i % 200)
            msg.writeInteger(UInt32(i))
            let ref = store.append(reserving: msg.readableBytes) { $0.writeImmutableBuffer(msg) }
            refs.append(ref)
            expected.append(msg)
            // Every 7th slice is kept (as a test link would) while appending goes on.
            let slice = store.bytes(ref)
            if i % 7 == 0 { held.append(slice) }
            #expect(slice == msg)
        }
        for (i, ref) in refs.enumerated() where i % 97 == 0 { #expect(store.bytes(ref) == expected[i]) }
        for (n, slice) in held.enumerated() { #expect(slice == expected[n * 7], "held slice \(n)") }
        let all = store.retainedBytes
        #expect(all >= expected.reduce(0) { $0 + $1.readableBytes })
        #expect(store.chunkCount > 5)
        // Acknowledge the first 4000: the chunks before the one holding message 4000 are freed.
        store.release(keeping: refs[4000])
        #expect(store.retainedBytes < all / 3)
        for i in 4000..<5000 { #expect(store.bytes(refs[i]) == expected[i]) }
        store.release(keeping: nil)
        #expect(store.retainedBytes == 0)
        #expect(store.chunkCount == 1)
        for (n, slice) in held.enumerated() { #expect(slice == expected[n * 7], "held slice \(n) after release") }
    }

    @Test("a burst in one handle (held messages sent once the version is known) shares chunks, bytes right")
    func burstSharesChunks() throws {
        var e = connected()
        let held = 3000
        for i in 0..<held { e.handle(.send(MC.request(UInt32(i), from: 1, nameLength: i % 64))) }
        #expect(e.outbox.isEmpty)
        e.handle(.received(MC.bare(MC.rcom(.status, from: 2)), on: ConnectionID(2)))
        let frames = e.takeOutbox()
        #expect(frames.count == held)
        for (i, f) in frames.enumerated() {
            #expect(f.kind == .sequenced(seq: UInt32(i), retransmission: false))
            #expect(f.bytes == Self.opts(UInt32(i), MC.request(UInt32(i), from: 1, nameLength: i % 64), from: 1).encoded(), "seq \(i)")
        }
        // About 3000 × 130 bytes in 64 KiB chunks: a handful, not one per message.
        #expect(e.peer.store.chunkCount < 12, "\(e.peer.store.chunkCount) chunks")
        // A reconnect resends them all from the store, byte for byte.
        e.handle(.connectionLost(ConnectionID(1), .error("ECONNRESET")))
        e.handle(.connectionUp(ConnectionID(5)))
        let resent = e.takeOutbox().filter { if case .sequenced = $0.kind { return true } else { return false } }
        #expect(resent.map(\.bytes) == frames.map(\.bytes))
    }

    @Test("a long stream: every frame written is the OPTS of its message, and ACKs free the store")
    func streamFreesStore() throws {
        var e = session()
        var written = 0
        for i in 0..<20_000 {
            let p = MC.request(UInt32(i), from: 1, nameLength: i % 64)
            for a in e.peer.handle(.send(p), now: MC.now()) {
                guard case .write(let frame, _) = a else { continue }
                guard case .sequenced(let seq, false) = frame.kind else {
                    Issue.record("unexpected \(frame.kind)")
                    continue
                }
                #expect(frame.bytes == Self.opts(seq, p, from: 1).encoded(), "seq \(seq)")
                written += 1
            }
            if i % 1000 == 999 {
                _ = e.peer.handle(.received(MC.ack(e.peer.nextSendSequence), on: ConnectionID(2)), now: MC.now())
                #expect(e.peer.unackedCount == 0)
                #expect(e.peer.store.retainedBytes == 0)
            }
        }
        #expect(written == 20_000)
    }
}
