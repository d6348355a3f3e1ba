import ArgumentParser
import DLMTransport
import Foundation
import NIOCore

/// `dlm-peer bench codec`: decode and encode rates for a realistic message mix, next to
/// copying the same bytes.
struct CodecBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "codec",
        abstract: "Decode/encode messages per second for a realistic mix, against a byte-copy baseline.")

    @OptionGroup var options: BenchOptions

    func run() throws {
        AllocationCounter.reexecWithInterposerIfAvailable()
        let counter = AllocationCounter.loaded()
        let mix = CodecWorkload.mix()
        let repeats = 512
        var stream = ByteBuffer()
        for _ in 0..<repeats {
            for p in mix { p.encode(into: &stream) }
        }
        var frames: [ByteBuffer] = []
        var framer = DLMFramer()
        try framer.append(stream) { frames.append($0) }
        let perBatch = frames.count
        let fixedFrames = frames.filter { (try? DLMPacket.decode($0)).map(CodecWorkload.isFixedSize) ?? false }

        var results: [Measurement] = []
        var sink: UInt64 = 0

        results.append(measure("copy (baseline)", perBatch: perBatch) {
            var scratch = ByteBuffer()
            scratch.reserveCapacity(8192)
            for f in frames {
                scratch.clear()
                var copy = f
                scratch.writeBuffer(&copy)
                sink &+= UInt64(scratch.readableBytes)
            }
        })
        results.append(measure("decode", perBatch: perBatch) {
            for f in frames {
                if let p = try? DLMPacket.decode(f) { sink &+= UInt64(p.header.length) }
            }
        })
        results.append(measure("frame+decode", perBatch: perBatch) {
            var framer = DLMFramer(maximumBufferSize: 1 << 24)
            try? framer.append(stream) { f in
                if let p = try? DLMPacket.decode(f) { sink &+= UInt64(p.header.length) }
            }
        })
        let packets = frames.compactMap { try? DLMPacket.decode($0) }
        results.append(measure("encode", perBatch: perBatch) {
            var out = ByteBuffer()
            out.reserveCapacity(8192)
            for p in packets {
                out.clear()
                p.encode(into: &out)
                sink &+= UInt64(out.readableBytes)
            }
        })

        var allocations: [String: Double] = [:]
        if let counter {
            let n = fixedFrames.count
            allocations["decode_fixed_size"] = Double(counter.count {
                for f in fixedFrames { if let p = try? DLMPacket.decode(f) { sink &+= UInt64(p.header.length) } }
            }) / Double(n)
            allocations["decode_mix"] = Double(counter.count {
                for f in frames { if let p = try? DLMPacket.decode(f) { sink &+= UInt64(p.header.length) } }
            }) / Double(frames.count)
            var out = ByteBuffer()
            out.reserveCapacity(8192)
            allocations["encode_mix"] = Double(counter.count {
                for p in packets {
                    out.clear()
                    p.encode(into: &out)
                }
            }) / Double(packets.count)
        }

        let baseline = results[0].messagesPerSecond
        let report = BenchReport(
            benchmark: "codec",
            mix: CodecWorkload.description,
            messagesPerBatch: perBatch,
            bytesPerBatch: stream.readableBytes,
            results: results,
            ratiosToBaseline: Dictionary(uniqueKeysWithValues: results.dropFirst().map {
                ($0.name, $0.messagesPerSecond / baseline)
            }),
            allocationsPerMessage: counter == nil ? nil : allocations,
            note: counter == nil
                ? "allocation counts unavailable: \(AllocationCounter.library) not beside the binary (scripts/bench builds it)"
                : nil,
            checksum: sink)
        report.print(json: options.json)
    }

    func measure(_ name: String, perBatch: Int, _ body: () -> Void) -> Measurement {
        body()  // warm up
        let clock = ContinuousClock()
        var best = Duration.seconds(1_000_000)
        var batches = 0
        let start = clock.now
        repeat {
            let t0 = clock.now
            body()
            let t = clock.now - t0
            if t < best { best = t }
            batches += 1
        } while clock.now - start < .seconds(options.seconds)
        let total = clock.now - start
        let seconds = Double(best.components.seconds) + Double(best.components.attoseconds) * 1e-18
        let avg = (Double(total.components.seconds) + Double(total.components.attoseconds) * 1e-18) / Double(batches)
        return Measurement(name: name, messagesPerSecond: Double(perBatch) / seconds,
                           nanosecondsPerMessage: seconds * 1e9 / Double(perBatch),
                           averageMessagesPerSecond: Double(perBatch) / avg, batches: batches)
    }
}

enum CodecWorkload {
    static let description =
        "per round: OPTS>REQUEST (9-byte name), OPTS>REQUEST_REPLY, OPTS>GRANT (32-byte LVB), OPTS>CONVERT, OPTS>UNLOCK, OPTS>UNLOCK_REPLY, ACK, ACK, bare RCOM_STATUS"

    static func mix() -> [DLMPacket] {
        let ls: UInt32 = 0x521B_2683
        func msg(_ type: MessageType, from node: UInt32, extra: ByteBuffer = ByteBuffer(), result: Int32 = 0) -> DLMMessage {
            DLMMessage(header: DLMHeader(version: .v3_2, word: ls, nodeID: node, length: 0, command: .message),
                       type: type.rawValue, nodeID: 2, pid: 4242, lkid: 0x1_0001, remid: 0x2_0003, flags: 1,
                       hash: 0xD4E6_3041, status: 2, grmode: LockMode.ex.rawValue, rqmode: LockMode.ex.rawValue,
                       asts: 3, result: result, extra: extra)
        }
        var seq: UInt32 = 100
        func wrap(_ m: DLMMessage) -> DLMPacket {
            seq += 1
            return .opts(DLMOpts(header: DLMHeader(version: .v3_2, word: seq, nodeID: m.header.nodeID, length: 0,
                                                   command: .opts), inner: .message(m)))
        }
        let lvb = ByteBuffer(bytes: (0..<32).map { UInt8($0) })
        let ack = DLMPacket.ack(DLMHeader(version: .v3_2, word: 4711, nodeID: 2, length: 16, command: .ack))
        let status = DLMPacket.rcom(DLMRcom(
            header: DLMHeader(version: .v3_2, word: ls, nodeID: 1, length: 0, command: .rcom),
            type: RcomType.status.rawValue, id: 0xD659_8149_34D4_ABAC, seq: 7, payload: .status(RcomStatus(flags: 0))))
        return [
            wrap(msg(.request, from: 1, extra: ByteBuffer(string: "res-ex-01"))),
            wrap(msg(.requestReply, from: 2)),
            wrap(msg(.grant, from: 2, extra: lvb)),
            wrap(msg(.convert, from: 1)),
            wrap(msg(.unlock, from: 1)),
            wrap(msg(.unlockReply, from: 2, result: WireErrno.dlmEUnlock)),
            ack, ack, status,
        ]
    }

    /// Messages with no variable part (no name, LVB, slots or name list).
    static func isFixedSize(_ p: DLMPacket) -> Bool {
        switch p {
        case .ack, .fin: return true
        case .message(let m): return m.extra.readableBytes == 0
        case .rcom(let r): if case .status = r.payload { return true } else { return false }
        case .opts(let o):
            switch o.inner {
            case .message(let m): return m.extra.readableBytes == 0
            case .rcom(let r): if case .status = r.payload { return true } else { return false }
            case .fin: return true
            }
        }
    }
}

struct Measurement: Encodable {
    var name: String
    /// Best batch.
    var messagesPerSecond: Double
    var nanosecondsPerMessage: Double
    /// All batches.
    var averageMessagesPerSecond: Double
    var batches: Int
}

struct BenchReport: Encodable {
    var benchmark: String
    var mix: String
    var messagesPerBatch: Int
    var bytesPerBatch: Int
    var results: [Measurement]
    var ratiosToBaseline: [String: Double]
    var allocationsPerMessage: [String: Double]?
    var note: String?
    var checksum: UInt64

    func print(json: Bool) {
        if json {
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys]
            e.keyEncodingStrategy = .convertToSnakeCase
            if let d = try? e.encode(self) { Swift.print(String(decoding: d, as: UTF8.self)) }
            return
        }
        Swift.print("bench \(benchmark): \(messagesPerBatch) messages (\(bytesPerBatch) bytes) per batch")
        Swift.print("mix: \(mix)")
        let base = results.first?.messagesPerSecond ?? 1
        for r in results {
            Swift.print("  " + r.name.padding(toLength: 18, withPad: " ", startingAt: 0) + String(format: "%12.0f msg/s  %7.1f ns/msg  %5.2fx baseline  (avg %.0f msg/s over %d batches)",
                               r.messagesPerSecond, r.nanosecondsPerMessage,
                               r.messagesPerSecond / base, r.averageMessagesPerSecond, r.batches))
        }
        if let a = allocationsPerMessage {
            for (k, v) in a.sorted(by: { $0.key < $1.key }) {
                Swift.print("  allocations/msg " + k.padding(toLength: 18, withPad: " ", startingAt: 0) + String(format: "%.3f", v))
            }
        }
        if let note { Swift.print("  note: \(note)") }
    }
}
