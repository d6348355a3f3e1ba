// The stream framer: any split of the input gives the same frames; bad h_length is a
// FramingError; an incomplete message stays pending.

import DLMTransport
import NIOCore
import Testing

/// Feeds `chunks` in order; returns the frames and the error that stopped the stream, if any.
private func frame(_ chunks: [[UInt8]], framer: inout DLMFramer) -> (frames: [[UInt8]], error: FramingError?) {
    var frames: [[UInt8]] = []
    for chunk in chunks {
        do {
            try framer.append(ByteBuffer(bytes: chunk)) { frames.append($0.array) }
        } catch let e as FramingError {
            return (frames, e)
        } catch {
            Issue.record("append threw a non-FramingError: \(error)")
            return (frames, nil)
        }
    }
    return (frames, nil)
}

private func frame(_ chunks: [[UInt8]]) -> (frames: [[UInt8]], error: FramingError?) {
    var f = DLMFramer()
    return frame(chunks, framer: &f)
}

/// Cuts `bytes` at random points.
private func randomSplit(_ bytes: [UInt8], _ rng: inout SplitMix64, maxPiece: Int) -> [[UInt8]] {
    var out: [[UInt8]] = []
    var i = 0
    while i < bytes.count {
        let n = min(bytes.count - i, rng.int(1...maxPiece))
        out.append(Array(bytes[i..<(i + n)]))
        i += n
    }
    return out
}

@Suite("Framer")
struct FramerTests {
    static func stream(count: Int, seed: UInt64) -> (messages: [[UInt8]], bytes: [UInt8]) {
        var gen = MessageGenerator(seed: seed)
        let messages = (0..<count).map { _ in gen.packet().encoded().array }
        return (messages, messages.flatMap { $0 })
    }

    @Test("Whole, one byte at a time, and random splits give the same frames")
    func splits() {
        let (messages, bytes) = Self.stream(count: 600, seed: 0xF8A3E)
        let whole = frame([bytes])
        #expect(whole.error == nil)
        #expect(whole.frames == messages)

        // One byte at a time over the first 150 messages (about 100k appends).
        let (someMessages, someBytes) = (Array(messages.prefix(150)), Array(messages.prefix(150).joined()))
        var byteByByte = DLMFramer()
        var frames: [[UInt8]] = []
        for (i, b) in someBytes.enumerated() {
            do {
                try byteByByte.append(ByteBuffer(bytes: [b])) { frames.append($0.array) }
            } catch {
                Issue.record("byte \(i): \(error)")
                return
            }
        }
        #expect(frames == someMessages)
        #expect(byteByByte.pendingBytes == 0)
        #expect(byteByByte.consumed == someBytes.count)

        var rng = SplitMix64(seed: 99)
        for round in 0..<16 {
            let maxPiece = [2, 7, 16, 17, 100, 1500, 5000, 20000][round % 8]
            let result = frame(randomSplit(bytes, &rng, maxPiece: maxPiece))
            #expect(result.error == nil)
            #expect(result.frames == messages, "round \(round), pieces up to \(maxPiece)")
        }
        // Every frame decodes back to a packet that encodes to the same bytes.
        for m in whole.frames {
            #expect(decodeResult(m).map { $0.encoded().array } == .success(m))
        }
    }

    @Test("A partial message stays pending until its last byte")
    func pending() throws {
        var gen = MessageGenerator(seed: 4)
        let msg = DLMPacket.message(gen.message(.request)).encoded().array
        let ack = gen.ack().encoded().array
        var f = DLMFramer()
        var frames: [[UInt8]] = []
        // Less than a header.
        try f.append(ByteBuffer(bytes: Array(msg[0..<10]))) { frames.append($0.array) }
        #expect(frames.isEmpty)
        #expect(f.pendingBytes == 10)
        // A header and part of the body.
        try f.append(ByteBuffer(bytes: Array(msg[10..<(msg.count - 1)]))) { frames.append($0.array) }
        #expect(frames.isEmpty)
        #expect(f.pendingBytes == msg.count - 1)
        #expect(f.consumed == 0)
        // The last byte, and a whole ACK and 3 bytes of the next message in the same piece.
        try f.append(ByteBuffer(bytes: [msg[msg.count - 1]] + ack + Array(msg[0..<3]))) { frames.append($0.array) }
        #expect(frames == [msg, ack])
        #expect(f.pendingBytes == 3)
        #expect(f.consumed == msg.count + 16)
    }

    @Test("h_length below 16 or above 4096 throws FramingError", arguments: [0, 1, 15, 4097, 0x8000, 0xFFFF])
    func badLength(_ length: Int) {
        var header = rawHeader(nodeID: 7, length: length, cmd: 1)
        let r = frame([header + Array(repeating: 0, count: 100)])
        #expect(r.frames.isEmpty)
        #expect(r.error?.length == length)
        #expect(r.error?.nodeID == 7)
        #expect(r.error?.asWireError.kind == .invalidLength)
        #expect(r.error?.asWireError.value == Int64(length))

        // Fed one byte at a time, the error comes by the 16th byte, not later.
        var f = DLMFramer()
        var thrownAt: Int?
        for i in 0..<16 where thrownAt == nil {
            do { try f.append(ByteBuffer(bytes: [header[i]])) { _ in } } catch { thrownAt = i }
        }
        #expect(thrownAt != nil && thrownAt! <= 15)

        // Frames before the bad header are delivered, then the error.
        var gen = MessageGenerator(seed: UInt64(length))
        let good = [gen.packet().encoded().array, gen.ack().encoded().array]
        header = rawHeader(length: length, cmd: 3)
        let r2 = frame([good[0] + good[1] + header])
        #expect(r2.frames == good)
        #expect(r2.error?.length == length)
    }

    @Test("h_length 16 and 4096 are the limits that are accepted")
    func limits() throws {
        let ack = rawHeader(length: 16, cmd: 4)
        #expect(frame([ack]).frames == [ack])
        let big = rawHeader(length: 4096, cmd: 1) + Array(repeating: 0, count: 4080)
        let r = frame([big, ack])
        #expect(r.error == nil)
        #expect(r.frames == [big, ack])
        // The framer does not judge content: an unknown h_cmd is the decoder's business.
        let odd = rawHeader(length: 20, cmd: 0x77) + [1, 2, 3, 4]
        #expect(frame([odd]).frames == [odd])
    }

    @Test("Random splits of random streams, many seeds")
    func manySeeds() {
        for seed in 0..<30 as Range<UInt64> {
            let (messages, bytes) = Self.stream(count: 60, seed: seed &* 7919)
            var rng = SplitMix64(seed: seed)
            let r = frame(randomSplit(bytes, &rng, maxPiece: rng.int(1...300)))
            #expect(r.error == nil)
            #expect(r.frames == messages, "seed \(seed)")
        }
    }
}
