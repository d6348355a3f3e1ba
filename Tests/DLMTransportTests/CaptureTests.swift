// Real kernel traffic (shared/captures) through CaptureReader + DLMCaptureDecoder, compared
// with the captures' summary.json; pcapng conversions; TCP reassembly with split,
// retransmitted and reordered segments written by PcapWriter.

import DLMCapture
import DLMTransport
import Foundation
import NIOCore
import Testing

/// `summary.json` of a capture directory (the fields these tests use).
struct CaptureSummary: Decodable {
    var capture: String
    var packets: Int
    var dlm_messages: Int
    var ip_to_nodeid: [String: Int]
    var counts_by_direction: [String: [String: Int]]
}

enum SharedCaptures {
    static let names = ["A-61-tcp-3node", "C-510-tcp", "E-612-tcp"]

    /// The pcap bytes and summary of one capture, or an issue saying what is missing.
    static func load(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) -> (ByteBuffer, CaptureSummary)? {
        let dir = RepoPaths.captures.appendingPathComponent(name)
        let pcapURL = dir.appendingPathComponent("capture.pcap")
        let summaryURL = dir.appendingPathComponent("summary.json")
        guard let pcap = FileManager.default.contents(atPath: pcapURL.path),
              let json = FileManager.default.contents(atPath: summaryURL.path) else {
            Issue.record("""
                shared capture \(name) not found at \(dir.path): the captures must be at ../shared/captures \
                next to the repository (\(RepoPaths.root.path))
                """, sourceLocation: sourceLocation)
            return nil
        }
        do {
            return (ByteBuffer(bytes: pcap), try JSONDecoder().decode(CaptureSummary.self, from: json))
        } catch {
            Issue.record("cannot parse \(summaryURL.path): \(error)", sourceLocation: sourceLocation)
            return nil
        }
    }
}

/// Per-direction counts keyed like summary.json: "1->2" -> "v3.2 OPTS>MSG REQUEST" -> n.
struct DirectionCounts {
    var nodeOf: [String: UInt32] = [:]
    var counts: [String: [String: Int]] = [:]
    var problems: [String] = []

    init(_ messages: [CapturedMessage]) {
        // Address -> nodeid from the first non-ACK message each address sends.
        for m in messages {
            guard case .success(let p) = m.packet else { continue }
            if case .ack = p { continue }
            let a = m.source.addressText
            if nodeOf[a] == nil { nodeOf[a] = p.header.nodeID }
        }
        for m in messages {
            guard case .success(let p) = m.packet else {
                problems.append("message \(m.index) \(m.source)>\(m.destination): \(m.packet)")
                continue
            }
            guard let s = nodeOf[m.source.addressText], let d = nodeOf[m.destination.addressText] else {
                problems.append("message \(m.index): no nodeid for \(m.source) or \(m.destination)")
                continue
            }
            // Every message (ACKs too) carries its sender's nodeid.
            if p.header.nodeID != s {
                problems.append("message \(m.index) from \(m.source) has h_nodeid \(p.header.nodeID), expected \(s)")
            }
            counts["\(s)->\(d)", default: [:]][p.kind, default: 0] += 1
        }
    }
}

/// Minimal pcapng writer: SHB, one IDB (with if_tsresol), one EPB per frame.
private func pcapng(_ frames: [CapturedFrame], nanoseconds: Bool) -> ByteBuffer {
    var b = ByteBuffer()
    func block(_ type: UInt32, _ body: [UInt8]) {
        let padded = body + Array(repeating: 0, count: (4 - body.count % 4) % 4)
        let length = UInt32(12 + padded.count)
        b.writeMultipleIntegers(type, length, endianness: .little)
        b.writeBytes(padded)
        b.writeInteger(length, endianness: .little)
    }
    block(0x0A0D_0D0A, le32(0x1A2B_3C4D) + le16(1) + le16(0) + le64(UInt64.max))
    let linkType = UInt16(frames.first?.linkType ?? 1)
    var idb = le16(linkType) + le16(0) + le32(262_144)
    if nanoseconds { idb += le16(9) + le16(1) + [9, 0, 0, 0] + le16(0) + le16(0) }  // if_tsresol = 9, opt_endofopt
    block(1, idb)
    for f in frames {
        let ts = UInt64((f.time * (nanoseconds ? 1e9 : 1e6)).rounded())
        let data = f.data.array
        block(6, le32(0) + le32(UInt32(ts >> 32)) + le32(UInt32(truncatingIfNeeded: ts)) + le32(UInt32(data.count))
              + le32(UInt32(data.count)) + data)
    }
    return b
}

/// One record of a classic pcap written by PcapWriter (Ethernet/IPv4/TCP, no options).
private struct TCPRecord {
    var bytes: [UInt8]  // 16-byte record header + frame
    var direction: String { "\(bytes[16 + 26...16 + 29].map(String.init)):\(port(34))>\(bytes[16 + 30...16 + 33].map(String.init)):\(port(36))" }
    var seq: UInt32 { (16 + 38...16 + 41).reduce(0) { $0 << 8 | UInt32(bytes[$1]) } }
    var payloadLength: Int { bytes.count - 16 - 54 }
    private func port(_ at: Int) -> UInt16 { UInt16(bytes[16 + at]) << 8 | UInt16(bytes[16 + at + 1]) }

    /// A SYN for this direction: same addresses, seq one before this (first) segment, no data.
    func syn() -> TCPRecord {
        var b = Array(bytes[0..<(16 + 54)])
        let s = seq &- 1
        for i in 0..<4 { b[16 + 38 + i] = UInt8(truncatingIfNeeded: s >> (24 - 8 * UInt32(i))) }
        b[16 + 47] = 0x02  // SYN
        b[16 + 16] = 0; b[16 + 17] = 40  // IPv4 total length
        let n = le32(54)
        b.replaceSubrange(8..<12, with: n)
        b.replaceSubrange(12..<16, with: n)
        return TCPRecord(bytes: b)
    }
}

private func records(_ pcap: ByteBuffer) -> [TCPRecord] {
    let all = pcap.array
    var out: [TCPRecord] = []
    var o = 24
    while o + 16 <= all.count {
        let incl = Int(all[o + 8]) | Int(all[o + 9]) << 8 | Int(all[o + 10]) << 16 | Int(all[o + 11]) << 24
        out.append(TCPRecord(bytes: Array(all[o..<(o + 16 + incl)])))
        o += 16 + incl
    }
    return out
}

private func pcapFile(_ records: [TCPRecord]) -> ByteBuffer {
    var b = PcapWriter().buffer  // just the 24-byte file header
    for r in records { b.writeBytes(r.bytes) }
    return b
}

private let nodeA: [UInt8] = [10, 9, 0, 1]
private let nodeB: [UInt8] = [10, 9, 0, 2]

/// Writes the two directions' streams as TCP segments cut at random points (1...maxPiece bytes).
private func segmentStreams(_ streams: [(src: [UInt8], sport: UInt16, dst: [UInt8], dport: UInt16, bytes: [UInt8])],
                            _ rng: inout SplitMix64, maxPiece: Int) -> ByteBuffer {
    var w = PcapWriter()
    var cursors = Array(repeating: 0, count: streams.count)
    var t = 1_700_000_000.0
    while cursors.enumerated().contains(where: { $0.element < streams[$0.offset].bytes.count }) {
        let i = rng.below(streams.count)
        let s = streams[i]
        guard cursors[i] < s.bytes.count else { continue }
        let n = min(s.bytes.count - cursors[i], rng.int(1...maxPiece))
        w.appendTCP(time: t, src: s.src, srcPort: s.sport, dst: s.dst, dstPort: s.dport,
                    payload: ByteBuffer(bytes: Array(s.bytes[cursors[i]..<(cursors[i] + n)])))
        cursors[i] += n
        t += 0.000_25
    }
    return w.buffer
}

@Suite("Captures: real kernel traffic and TCP reassembly")
struct CaptureTests {
    @Test("Shared captures decode with zero errors and match summary.json", arguments: SharedCaptures.names)
    func realCapture(_ name: String) throws {
        guard let (file, summary) = SharedCaptures.load(name) else { return }
        let decoder = try DLMCaptureDecoder.decode(file)
        #expect(decoder.problems.isEmpty, "stream problems: \(decoder.problems.prefix(5))")
        let failed = decoder.messages.filter { if case .failure = $0.packet { return true } else { return false } }
        #expect(failed.isEmpty, "\(failed.count) messages failed to decode, first: \(failed.prefix(3).map { "\($0.index): \($0.packet)" })")
        #expect(decoder.messages.count == summary.dlm_messages)

        let counts = DirectionCounts(decoder.messages)
        #expect(counts.problems.isEmpty, "\(counts.problems.prefix(5))")
        #expect(counts.nodeOf == summary.ip_to_nodeid.mapValues { UInt32($0) })
        #expect(counts.counts == summary.counts_by_direction)
        if counts.counts != summary.counts_by_direction {
            for key in Set(counts.counts.keys).union(summary.counts_by_direction.keys).sorted() {
                let ours = counts.counts[key] ?? [:]
                let theirs = summary.counts_by_direction[key] ?? [:]
                for kind in Set(ours.keys).union(theirs.keys).sorted() where ours[kind] != theirs[kind] {
                    Issue.record("\(name) \(key) \(kind): decoded \(ours[kind] ?? 0), summary.json \(theirs[kind] ?? 0)")
                }
            }
        }
        // Real kernel bytes re-encode exactly (NAMES_REPLY padding included: kernels send zeros).
        for m in decoder.messages {
            guard case .success(let p) = m.packet else { continue }
            if p.encoded() != m.bytes {
                Issue.record("\(name) message \(m.index) (\(p.kind)) does not re-encode byte for byte")
            }
        }
        // Every frame of the capture was read.
        #expect(try CaptureReader.frames(file).count == summary.packets)
    }

    @Test("The same captures converted to pcapng (micro- and nanosecond, own writer and editcap) decode identically",
          arguments: SharedCaptures.names)
    func pcapngConversion(_ name: String) throws {
        guard let (file, _) = SharedCaptures.load(name) else { return }
        let frames = try CaptureReader.frames(file)
        let reference = try DLMCaptureDecoder.decode(file).messages
        var variants: [(String, ByteBuffer)] = [
            ("pcapng µs", pcapng(frames, nanoseconds: false)),
            ("pcapng ns", pcapng(frames, nanoseconds: true)),
        ]
        if findOnPath("editcap") != nil {
            let dir = try makeTempDirectory("pcapng")
            defer { try? FileManager.default.removeItem(at: dir) }
            let src = RepoPaths.captures.appendingPathComponent(name).appendingPathComponent("capture.pcap").path
            let dst = dir.appendingPathComponent("capture.pcapng").path
            let r = try runProgram("editcap", ["-F", "pcapng", src, dst])
            #expect(r.status == 0, "editcap failed: \(String(decoding: r.err, as: UTF8.self))")
            if let data = FileManager.default.contents(atPath: dst) { variants.append(("editcap pcapng", ByteBuffer(bytes: data))) }
        } else {
            Issue.record("editcap not installed: run scripts/test (it installs tshark and wireshark-common)")
        }
        for (label, bytes) in variants {
            #expect(bytes.getInteger(at: 0, endianness: .little, as: UInt32.self) == 0x0A0D_0D0A)
            let messages = try DLMCaptureDecoder.decode(bytes).messages
            #expect(messages.count == reference.count, "\(label)")
            for (a, b) in zip(messages, reference) {
                if a.bytes != b.bytes || a.source != b.source || a.destination != b.destination || a.packet != b.packet
                    || abs(a.time - b.time) > 1e-6 {
                    Issue.record("\(label): message \(a.index) differs from the pcap decode")
                    break
                }
            }
        }
    }

    /// Two directions of random messages, segmented, retransmitted with other boundaries,
    /// duplicated and reordered: every message comes out exactly once, in stream order.
    @Test("Reassembly: split, retransmitted and reordered segments", arguments: 0..<6 as Range<UInt64>)
    func reassembly(_ seed: UInt64) {
        var gen = MessageGenerator(seed: 0xAB5E + seed)
        var rng = SplitMix64(seed: seed)
        let forward = (0..<150).map { _ in gen.packet().encoded().array }
        let backward = (0..<150).map { _ in gen.packet().encoded().array }
        let streams = [(src: nodeA, sport: UInt16(40001), dst: nodeB, dport: UInt16(21064), bytes: Array(forward.joined())),
                       (src: nodeB, sport: UInt16(21064), dst: nodeA, dport: UInt16(40001), bytes: Array(backward.joined()))]
        // The original transmission, and a retransmission of everything cut elsewhere.
        let first = records(segmentStreams(streams, &rng, maxPiece: 1448))
        let second = records(segmentStreams(streams, &rng, maxPiece: 600))
        #expect(first.count > 40 && second.count > 40)

        // Capture order: a SYN per direction first (so that even the first data segment may
        // arrive late), then the original segments locally shuffled, with duplicates and
        // retransmitted pieces of the other cut mixed in.
        var syns: [TCPRecord] = []
        for dir in Set(first.map(\.direction)).sorted() {
            if let firstSegment = first.first(where: { $0.direction == dir }) { syns.append(firstSegment.syn()) }
        }
        var order = first
        for i in stride(from: 0, to: order.count - 1, by: 1) where rng.chance(1, in: 3) {
            order.swapAt(i, min(order.count - 1, i + rng.int(1...4)))
        }
        var mixed: [TCPRecord] = []
        for r in order {
            mixed.append(r)
            if rng.chance(1, in: 8) { mixed.append(r) }  // exact duplicate
            if rng.chance(1, in: 5) { mixed.append(rng.pick(second)) }  // retransmission, other boundaries
        }
        let file = pcapFile(syns + mixed)

        let decoder: DLMCaptureDecoder
        do { decoder = try DLMCaptureDecoder.decode(file) } catch {
            Issue.record("capture did not parse: \(error)")
            return
        }
        #expect(decoder.problems.isEmpty, "\(decoder.problems.prefix(3))")
        let ab = decoder.messages.filter { $0.source.address == nodeA }.map(\.bytes.array)
        let ba = decoder.messages.filter { $0.source.address == nodeB }.map(\.bytes.array)
        #expect(ab.count == forward.count, "seed \(seed): \(ab.count) of \(forward.count) messages A->B")
        #expect(ba.count == backward.count, "seed \(seed): \(ba.count) of \(backward.count) messages B->A")
        #expect(ab == forward, "seed \(seed): A->B messages differ")
        #expect(ba == backward, "seed \(seed): B->A messages differ")
        #expect(decoder.messages.allSatisfy { if case .success = $0.packet { true } else { false } })
        // Stream offsets run on without gaps.
        var offset = 0
        for m in decoder.messages where m.source.address == nodeA {
            #expect(m.streamOffset == offset)
            offset += m.bytes.readableBytes
        }
    }

    @Test("Reassembly: in-order segments without a SYN, several messages per segment and one message over many")
    func reassemblyPlain() throws {
        var gen = MessageGenerator(seed: 0x5E6)
        let messages = (0..<300).map { _ in gen.packet().encoded().array }
        var rng = SplitMix64(seed: 12)
        let file = segmentStreams([(src: nodeA, sport: 33333, dst: nodeB, dport: 21064, bytes: Array(messages.joined()))],
                                  &rng, maxPiece: 97)
        let decoder = try DLMCaptureDecoder.decode(file)
        #expect(decoder.messages.map(\.bytes.array) == messages)
        #expect(decoder.problems.isEmpty)
        // Traffic on another port is ignored; the same traffic decodes with --port.
        #expect(try DLMCaptureDecoder.decode(file, port: 21065).messages.isEmpty)
    }

    /// A shorter retransmission that starts at the same sequence number as a longer segment
    /// still waiting out of order must not cost the longer segment's extra bytes.
    @Test("Reassembly: a shorter copy of a held-back segment does not lose the longer one's bytes")
    func reassemblyShorterDuplicate() throws {
        var gen = MessageGenerator(seed: 0x1D)
        let messages = (0..<12).map { _ in DLMPacket.message(gen.message(.request)).encoded().array }
        let stream = Array(messages.joined())
        // Segments: [0,100) [100,200) [200,end) and a retransmission [200,250).
        func segments(_ cuts: [Int]) -> [TCPRecord] {
            var w = PcapWriter()
            for (a, b) in zip(cuts, cuts.dropFirst()) {
                w.appendTCP(time: 1, src: nodeA, srcPort: 40000, dst: nodeB, dstPort: 21064,
                            payload: ByteBuffer(bytes: Array(stream[a..<b])))
            }
            return records(w.buffer)
        }
        let original = segments([0, 100, 200, stream.count])
        let retransmission = segments([0, 200, 250])[1]  // [200, 250)
        #expect(retransmission.seq == original[2].seq && retransmission.payloadLength == 50)
        // Arrival: [0,100), [200,end) (early), [200,250) (shorter copy), [100,200).
        let file = pcapFile([original[0], original[2], retransmission, original[1]])
        let decoder = try DLMCaptureDecoder.decode(file)
        // The held-back long segment must survive the shorter copy with the same seq.
        #expect(decoder.messages.count == messages.count, "messages recovered")
        // What does come out is correct, in order.
        let got = decoder.messages.map(\.bytes.array)
        #expect(got == Array(messages.prefix(got.count)))
    }
}
