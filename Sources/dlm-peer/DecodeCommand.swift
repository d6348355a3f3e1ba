import ArgumentParser
import DLMCapture
import DLMTransport
import Foundation
import NIOCore

struct DecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Decode DLM messages from hex or from a pcap/pcapng capture.",
        discussion: """
            INPUT is a capture file (pcap or pcapng: TCP and SCTP payloads to and from the DLM port, \
            reassembled per direction), a text file of hex, or hex on the command line. With no INPUT, \
            hex is read from standard input. Hex may hold several messages back to back, and may be \
            laid out as a dump ("0010: 01 00 ..."): offsets and whitespace are ignored.

            Prints one line per message with the field names of the kernel's dlm tracepoints. \
            Exits 1 if any message fails to decode, 2 if the input cannot be read.
            """)

    @Argument(help: "A capture file, a hex file, or hex bytes.")
    var input: [String] = []

    @Flag(help: "Machine-readable output: one JSON object per message (JSON Lines).")
    var json = false

    @Flag(help: "Print per-direction message counts instead of messages (with --json: one object).")
    var summary = false

    @Option(help: "The DLM port to pick out of a capture.")
    var port: UInt16 = UInt16(WireLimits.defaultPort)

    func run() throws {
        let source: DecodeInput
        do {
            source = try DecodeInput.load(input)
        } catch let failure as DecodeFailure {
            FileHandle.standardError.write(Data("dlm-peer decode: \(failure)\n".utf8))
            throw ExitCode(2)
        }
        var report = DecodeReport(json: json, summary: summary)
        switch source {
        case .capture(let bytes, let name):
            let decoder: DLMCaptureDecoder
            do throws(CaptureError) {
                decoder = try DLMCaptureDecoder.decode(bytes, port: port)
            } catch {
                throw DecodeFailure.unreadable("\(name): \(error)")
            }
            for m in decoder.messages { report.add(m) }
            for p in decoder.problems { report.add(p) }
        case .hex(let bytes):
            report.addHex(bytes)
        }
        report.finish()
        if report.errorCount > 0 { throw ExitCode(1) }
    }
}

enum DecodeFailure: Error, CustomStringConvertible {
    case unreadable(String)
    case badHex(String)
    var description: String {
        switch self {
        case .unreadable(let s): return "cannot read input: \(s)"
        case .badHex(let s): return "bad hex input: \(s)"
        }
    }
}

enum DecodeInput {
    case capture(ByteBuffer, String)
    case hex(ByteBuffer)

    static func load(_ args: [String]) throws -> DecodeInput {
        if args.count == 1, FileManager.default.fileExists(atPath: args[0]) {
            guard let data = FileManager.default.contents(atPath: args[0]) else {
                throw DecodeFailure.unreadable("cannot read \(args[0])")
            }
            let bytes = ByteBuffer(bytes: data)
            let magic = bytes.getInteger(at: 0, endianness: .little, as: UInt32.self) ?? 0
            if [0xA1B2_C3D4, 0xA1B2_3C4D, 0xD4C3_B2A1, 0x4D3C_B2A1, 0x0A0D_0D0A].contains(magic) {
                return .capture(bytes, args[0])
            }
            do {
                return .hex(try parseHex(String(decoding: data, as: UTF8.self)))
            } catch {
                throw DecodeFailure.unreadable("\(args[0]) is neither a capture (no pcap/pcapng magic) nor hex text: \(error)")
            }
        }
        if args.isEmpty || args == ["-"] {
            let data = FileHandle.standardInput.readDataToEndOfFile()
            return .hex(try parseHex(String(decoding: data, as: UTF8.self)))
        }
        return .hex(try parseHex(args.joined(separator: " ")))
    }

    /// Hex digits with optional `0x`, whitespace, `:`/`-` separators and dump offsets
    /// ("0010:" at the start of a line) ignored.
    static func parseHex(_ text: String) throws -> ByteBuffer {
        var digits: [UInt8] = []
        for var line in text.split(whereSeparator: \.isNewline) {
            if let colon = line.firstIndex(of: ":"), line[..<colon].allSatisfy({ $0.isHexDigit || $0 == " " }),
               line[line.index(after: colon)...].first == " " {
                line = line[line.index(after: colon)...]
            }
            var previous: Character = " "
            for c in line {
                if c == "x" || c == "X", previous == "0", digits.last == 0 {
                    digits.removeLast()
                } else if let v = c.hexDigitValue {
                    digits.append(UInt8(v))
                } else if !(c == " " || c == "\t" || c == ":" || c == "-" || c == ",") {
                    let shown = c.isASCII && !c.isWhitespace ? "'\(c)'" : "U+" + String(c.unicodeScalars.first?.value ?? 0, radix: 16)
                    throw DecodeFailure.badHex("unexpected character \(shown)")
                }
                previous = c
            }
        }
        guard digits.count % 2 == 0 else { throw DecodeFailure.badHex("odd number of hex digits (\(digits.count))") }
        var buffer = ByteBuffer()
        var i = 0
        while i < digits.count {
            buffer.writeInteger(digits[i] << 4 | digits[i + 1])
            i += 2
        }
        return buffer
    }
}

/// Collects decoded messages and prints them as lines, JSON Lines or a summary.
struct DecodeReport {
    let json: Bool
    let summary: Bool
    private(set) var errorCount = 0
    private var messageCount = 0
    private var counts: [String: [String: Int]] = [:]
    private var pendingDirections: [(src: String, dst: String, kind: String)] = []
    private var nodeOfAddress: [String: UInt32] = [:]
    private var problems: [String] = []
    private let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.withoutEscapingSlashes]
        return e
    }()

    init(json: Bool, summary: Bool) {
        self.json = json
        self.summary = summary
    }

    mutating func add(_ m: CapturedMessage) {
        messageCount += 1
        let head = String(format: "#%-6d %.6f %@ %@>%@", m.index, m.time, m.transport,
                          m.source.description, m.destination.description)
        switch m.packet {
        case .success(let packet):
            if nodeOfAddress[m.source.addressText] == nil, packet.header.knownCommand != .ack {
                nodeOfAddress[m.source.addressText] = packet.header.nodeID
            }
            pendingDirections.append((m.source.addressText, m.destination.addressText, packet.kind))
            emit(head: head, extra: [
                ("index", .uint(UInt64(m.index))), ("time", .symbol(String(format: "%.6f", m.time))),
                ("transport", .symbol(m.transport)), ("src", .symbol(m.source.description)),
                ("dst", .symbol(m.destination.description)),
            ], packet: packet)
        case .failure(let error):
            fail(head: head, error: error, extra: [("index", .uint(UInt64(m.index))),
                                                   ("src", .symbol(m.source.description)),
                                                   ("dst", .symbol(m.destination.description))],
                 offsetBase: m.streamOffset)
        }
    }

    mutating func add(_ p: StreamProblem) {
        errorCount += 1
        problems.append(p.description)
        if !summary {
            if json {
                line(FieldList([("src", .symbol(p.source.description)), ("dst", .symbol(p.destination.description)),
                                ("error", .fields(errorFields(p.error, base: p.streamOffset)))]))
            } else {
                print("ERROR \(p)")
            }
        }
    }

    mutating func addHex(_ bytes: ByteBuffer) {
        var framer = DLMFramer()
        var index = 0
        var offset = 0
        do {
            try framer.append(bytes) { frame in
                index += 1
                messageCount += 1
                do throws(WireError) {
                    let packet = try DLMPacket.decode(frame)
                    pendingDirections.append(("-", "-", packet.kind))
                    emit(head: "#\(index)", extra: [("index", .uint(UInt64(index))), ("offset", .uint(UInt64(offset)))],
                         packet: packet)
                } catch {
                    fail(head: "#\(index)", error: error, extra: [("index", .uint(UInt64(index)))], offsetBase: offset)
                }
                offset += frame.readableBytes
            }
        } catch let error as FramingError {
            fail(head: "#\(index + 1)", error: error.asWireError, extra: [("index", .uint(UInt64(index + 1)))],
                 offsetBase: offset)
            return
        } catch {
            return
        }
        if framer.pendingBytes > 0 {
            let have = framer.pendingBytes
            let error: WireError
            if have < DLMHeader.size {
                error = WireError(.truncated, field: "dlm_header", offset: 0, value: Int64(have),
                                  "input ends \(have) bytes into a message header")
            } else {
                let length = bytes.getInteger(at: bytes.readerIndex + offset + 12, endianness: .little, as: UInt16.self) ?? 0
                error = WireError(.truncated, field: "h_length", offset: 12, value: Int64(length),
                                  "h_length is \(length) but the input holds only \(have) bytes of this message")
            }
            fail(head: "#\(index + 1)", error: error, extra: [("index", .uint(UInt64(index + 1)))], offsetBase: offset)
        }
        if messageCount == 0 && errorCount == 0 {
            fail(head: "#1", error: WireError(.truncated, field: "dlm_header", offset: 0, value: 0, "no input bytes"),
                 extra: [], offsetBase: 0)
        }
    }

    private func errorFields(_ e: WireError, base: Int) -> FieldList {
        FieldList([("kind", .symbol(e.kind.rawValue)), ("field", .symbol(e.field)),
                   ("offset", .uint(UInt64(base + e.offset))), ("value", .int(e.value)), ("detail", .symbol(e.detail))])
    }

    private mutating func emit(head: String, extra: [(String, FieldList.Value)], packet: DLMPacket) {
        guard !summary else { return }
        if json {
            var f = FieldList(extra)
            f.append("kind", .symbol(packet.kind))
            f.append("message", .fields(packet.fields))
            line(f)
        } else {
            print("\(head) \(packet.line)")
        }
    }

    private mutating func fail(head: String, error: WireError, extra: [(String, FieldList.Value)], offsetBase: Int) {
        errorCount += 1
        let absolute = offsetBase + error.offset
        problems.append("\(head): \(error.kind.rawValue) \(error.field) at offset \(absolute): \(error.detail)")
        guard !summary else { return }
        if json {
            var f = FieldList(extra)
            f.append("error", .fields(errorFields(error, base: offsetBase)))
            line(f)
        } else {
            print("\(head) ERROR \(error.kind.rawValue): \(error.field) at offset \(absolute) (value \(error.value)): \(error.detail)")
        }
    }

    private func line(_ f: FieldList) {
        if let data = try? encoder.encode(f) { print(String(decoding: data, as: UTF8.self)) }
    }

    mutating func finish() {
        for d in pendingDirections {
            let key: String
            if d.src == "-" {
                key = "input"
            } else {
                let s = nodeOfAddress[d.src].map(String.init) ?? d.src
                let t = nodeOfAddress[d.dst].map(String.init) ?? d.dst
                key = "\(s)->\(t)"
            }
            counts[key, default: [:]][d.kind, default: 0] += 1
        }
        if summary {
            if json {
                var f = FieldList()
                f.append("messages", .uint(UInt64(messageCount)))
                f.append("errors", .uint(UInt64(errorCount)))
                f.append("ip_to_nodeid", .fields(FieldList(nodeOfAddress.sorted { $0.key < $1.key }
                    .map { ($0.key, .uint(UInt64($0.value))) })))
                f.append("counts_by_direction", .fields(FieldList(counts.sorted { $0.key < $1.key }.map { dir in
                    (dir.key, .fields(FieldList(dir.value.sorted { $0.key < $1.key }.map { ($0.key, .uint(UInt64($0.value))) })))
                })))
                f.append("problems", .list(problems.map { .symbol($0) }))
                line(f)
            } else {
                print("\(messageCount) messages, \(errorCount) errors")
                for (dir, kinds) in counts.sorted(by: { $0.key < $1.key }) {
                    print("\(dir):")
                    for (kind, n) in kinds.sorted(by: { $0.key < $1.key }) {
                        print("  \(kind.padding(toLength: 32, withPad: " ", startingAt: 0)) \(n)")
                    }
                }
                for p in problems { print("problem: \(p)") }
            }
        } else if errorCount > 0 && !json {
            FileHandle.standardError.write(Data("dlm-peer decode: \(errorCount) message(s) failed to decode\n".utf8))
        }
    }
}
