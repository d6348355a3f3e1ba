// Shared helpers for the codec, framer, hash, capture and tshark test suites:
// a seeded RNG, hex helpers, random message generators and repository paths.

import DLMTransport
import Foundation
import NIOCore
import Testing

// MARK: - Seeded randomness

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and fully determined by its seed, so
/// every failing random case can be replayed from the seed printed with it.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value below `bound` (bound > 0), without the modulo bias mattering for tests.
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }

    mutating func int(_ range: ClosedRange<Int>) -> Int { range.lowerBound + below(range.count) }

    mutating func u8() -> UInt8 { UInt8(truncatingIfNeeded: next()) }
    mutating func u16() -> UInt16 { UInt16(truncatingIfNeeded: next()) }
    mutating func u32() -> UInt32 { UInt32(truncatingIfNeeded: next()) }
    mutating func i32() -> Int32 { Int32(truncatingIfNeeded: next()) }
    mutating func i8() -> Int8 { Int8(truncatingIfNeeded: next()) }
    mutating func bool() -> Bool { next() & 1 == 1 }

    /// True with probability `n` in `d`.
    mutating func chance(_ n: Int, in d: Int) -> Bool { below(d) < n }

    mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in u8() } }

    mutating func buffer(_ count: Int) -> ByteBuffer { ByteBuffer(bytes: bytes(count)) }

    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }

    /// A 32-bit value biased towards the interesting ones (0, -1, small, extremes).
    mutating func edgyU32() -> UInt32 {
        switch below(8) {
        case 0: return 0
        case 1: return 0xFFFF_FFFF
        case 2: return UInt32(below(16))
        case 3: return 0x8000_0000
        default: return u32()
        }
    }
}

// MARK: - Hex

/// Bytes from hex text. Accepts plain hex with any whitespace and spec-style dumps
/// (`0010: 01 00 ...`): anything up to a `:` on a line is an offset and is dropped.
func hexBytes(_ text: String) -> [UInt8] {
    var out: [UInt8] = []
    for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
        var line = Substring(rawLine)
        if let colon = line.firstIndex(of: ":") { line = line[line.index(after: colon)...] }
        let digits = line.filter { !$0.isWhitespace }
        precondition(digits.count % 2 == 0, "odd number of hex digits in test vector line: \(rawLine)")
        var i = digits.startIndex
        while i < digits.endIndex {
            let j = digits.index(i, offsetBy: 2)
            guard let b = UInt8(digits[i..<j], radix: 16) else {
                preconditionFailure("bad hex in test vector: \(digits[i..<j])")
            }
            out.append(b)
            i = j
        }
    }
    return out
}

func hexString<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    bytes.map { String(format: "%02x", $0) }.joined()
}

extension ByteBuffer {
    /// The readable bytes as an array.
    var array: [UInt8] { getBytes(at: readerIndex, length: readableBytes) ?? [] }
}

// MARK: - Decoding helpers

/// Decodes or returns the typed error; a non-WireError is impossible (typed throws).
func decodeResult(_ bytes: [UInt8]) -> Result<DLMPacket, WireError> {
    do throws(WireError) {
        return .success(try DLMPacket.decode(ByteBuffer(bytes: bytes)))
    } catch {
        return .failure(error)
    }
}

/// The WireError decoding `bytes` throws, or nil if it decodes.
func decodeError(_ bytes: [UInt8]) -> WireError? {
    if case .failure(let e) = decodeResult(bytes) { return e }
    return nil
}

func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

/// A raw 16-byte header.
func rawHeader(version: UInt32 = 0x0003_0002, word: UInt32 = 0x1234_5678, nodeID: UInt32 = 1,
               length: Int, cmd: UInt8, pad: UInt8 = 0) -> [UInt8] {
    le32(version) + le32(word) + le32(nodeID) + le16(UInt16(truncatingIfNeeded: length)) + [cmd, pad]
}

/// Sets the little-endian `h_length` at `offset + 12` of an encoded message.
func patchLength(_ bytes: inout [UInt8], at headerOffset: Int = 0, to length: Int) {
    bytes[headerOffset + 12] = UInt8(truncatingIfNeeded: length)
    bytes[headerOffset + 13] = UInt8(truncatingIfNeeded: length >> 8)
}

// MARK: - Random messages

/// Generates random, well-formed messages of every kind. "Well-formed" means what the
/// codec's round trip promises to preserve: header lengths equal to the encoded length,
/// `rf_num_slots` equal to the slots attached, name lists that fit their buffer.
struct MessageGenerator {
    var rng: SplitMix64

    init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    static let lvbSizes = [0, 8, 32, 64]

    mutating func version() -> ProtocolVersion {
        switch rng.below(6) {
        case 0, 1: return .v3_1
        case 2, 3, 4: return .v3_2
        default: return ProtocolVersion(rawValue: rng.u32())  // the codec keeps any value
        }
    }

    mutating func header(_ cmd: HeaderCommand, word: UInt32? = nil) -> DLMHeader {
        DLMHeader(version: version(), word: word ?? rng.edgyU32(), nodeID: rng.edgyU32(), length: 0,
                  command: cmd.rawValue, pad: rng.chance(1, in: 4) ? rng.u8() : 0)
    }

    /// A resource name, 1...64 arbitrary bytes.
    mutating func name(_ range: ClosedRange<Int> = 1...64) -> ByteBuffer { rng.buffer(rng.int(range)) }

    mutating func message(_ type: MessageType) -> DLMMessage {
        let extra: ByteBuffer
        switch type.extraKind {
        case .resourceName: extra = name()
        case .lvb: extra = rng.buffer(rng.pick(Self.lvbSizes))
        case .none: extra = ByteBuffer()
        }
        var m = DLMMessage(
            header: header(.message), type: type.rawValue, nodeID: rng.i32(), pid: rng.edgyU32(),
            lkid: rng.edgyU32(), remid: rng.edgyU32(), parentLkid: rng.chance(1, in: 4) ? rng.u32() : 0,
            parentRemid: rng.chance(1, in: 4) ? rng.u32() : 0, exflags: rng.u32() & 0x7FFFF, sbflags: rng.u32() & 7,
            flags: rng.edgyU32(), lvbseq: rng.edgyU32(), hash: rng.u32(), status: Int32(rng.int(0...3)),
            grmode: Int32(rng.int(-1...5)), rqmode: Int32(rng.int(-1...5)), bastmode: Int32(rng.int(-1...5)),
            asts: UInt32(rng.int(0...3)), result: rng.chance(1, in: 3) ? rng.i32() : Int32(-rng.int(0...120)),
            extra: extra)
        m.header.length = UInt16(m.encodedLength)
        return m
    }

    mutating func rcomLock(exact: Bool) -> RcomLock {
        var lock = RcomLock(
            ownpid: rng.edgyU32(), lkid: rng.edgyU32(), remid: rng.edgyU32(), parentLkid: rng.edgyU32(),
            parentRemid: rng.edgyU32(), exflags: rng.u32(), flags: rng.u32(), lvbseq: rng.u32(), result: rng.i32(),
            rqmode: rng.i8(), grmode: rng.i8(), status: rng.i8(), asts: rng.i8(), waitType: rng.u16(), name: name())
        if !exact {
            // Raw field contents a kernel would never send: the codec must still keep them byte for byte.
            lock.namelen = rng.u16()
            lock.nameField = rng.buffer(64)
        }
        return lock
    }

    mutating func nameList(bufferSize: Int) -> RcomNameList {
        var names: [ByteBuffer] = []
        var used = 2
        let target = rng.chance(1, in: 4) ? bufferSize : rng.int(2...bufferSize)
        while true {
            let n = name()
            // The kernel writes a record only if len + 4 bytes remain (room for the end marker).
            guard used + 2 + n.readableBytes <= target else { break }
            names.append(n)
            used += 2 + n.readableBytes
        }
        return RcomNameList(names: names, end: rng.bool() ? .endOfList : .endOfBlock, bufferSize: bufferSize)
    }

    mutating func rcomPayload(_ type: RcomType, maxSlots: Int = 249) -> RcomPayload {
        switch type {
        case .status:
            return .status(RcomStatus(flags: rng.edgyU32(), unused1: rng.chance(1, in: 4) ? rng.u32() : 0,
                                      unused2: rng.chance(1, in: 4) ? rng.next() : 0))
        case .statusReply:
            let count = rng.chance(1, in: 3) ? 0 : rng.int(0...maxSlots)
            let slots = (0..<count).map { _ in
                RcomSlot(nodeID: rng.edgyU32(), slot: rng.u16(), unused1: rng.chance(1, in: 8) ? rng.u16() : 0,
                         unused2: rng.chance(1, in: 8) ? rng.next() : 0)
            }
            let config = RcomConfig(lvblen: rng.edgyU32(), lsflags: rng.edgyU32(), flags: rng.edgyU32(),
                                    ourSlot: rng.u16(), numSlots: UInt16(count), generation: rng.u32(),
                                    unused1: rng.chance(1, in: 4) ? rng.u32() : 0,
                                    unused2: rng.chance(1, in: 4) ? rng.next() : 0)
            return .statusReply(config, slots: slots)
        case .names:
            return .names(lastName: name(0...64))
        case .namesReply:
            return .namesReply(nameList(bufferSize: rng.bool() ? WireLimits.namesReplyBufferSize
                                                                : WireLimits.namesReplyBufferSizeV31))
        case .lookup:
            return .lookup(name: name())
        case .lookupReply:
            return .lookupReply
        case .lock:
            return .lock(rcomLock(exact: rng.chance(3, in: 4)), lvb: rng.buffer(rng.pick(Self.lvbSizes)))
        case .lockReply:
            // Kernels never echo an LVB, but the codec must carry one if present.
            return .lockReply(rcomLock(exact: rng.chance(3, in: 4)),
                              lvb: rng.chance(3, in: 4) ? ByteBuffer() : rng.buffer(rng.pick(Self.lvbSizes)))
        }
    }

    mutating func rcom(_ type: RcomType, maxSlots: Int = 249) -> DLMRcom {
        var r = DLMRcom(header: header(.rcom), type: type.rawValue, result: rng.chance(1, in: 2) ? rng.i32() : 0,
                        id: rng.next(), seq: rng.chance(1, in: 2) ? rng.next() : UInt64(rng.below(10)),
                        seqReply: rng.next(), payload: rcomPayload(type, maxSlots: maxSlots))
        r.header.length = UInt16(r.encodedLength)
        return r
    }

    /// An RCOM whose rc_type is not defined: the payload travels as raw bytes.
    mutating func unknownRcom() -> DLMRcom {
        let type = rng.bool() ? UInt32(rng.int(9...20)) : (rng.bool() ? 0 : rng.u32() | 0x100)
        var r = DLMRcom(header: header(.rcom), type: type, result: rng.i32(), id: rng.next(), seq: rng.next(),
                        seqReply: rng.next(), payload: .unknown(rng.buffer(rng.int(0...200))))
        r.header.length = UInt16(r.encodedLength)
        return r
    }

    mutating func finHeader() -> DLMHeader {
        var h = header(.fin, word: rng.chance(3, in: 4) ? 0 : rng.u32())
        h.length = 16
        return h
    }

    mutating func ack() -> DLMPacket {
        var h = header(.ack)
        h.length = 16
        return .ack(h)
    }

    /// TLV-looking option bytes (`dlm_opt_header` + value), or arbitrary bytes.
    mutating func options(room: Int) -> ByteBuffer {
        guard room > 0, rng.chance(1, in: 3) else { return ByteBuffer() }
        if rng.bool() && room >= 8 {
            let valueLength = min(rng.int(0...24), room - 8)
            return ByteBuffer(bytes: le16(rng.u16()) + le16(UInt16(valueLength)) + le32(0) + rng.bytes(valueLength))
        }
        return rng.buffer(rng.int(1...min(room, 40)))
    }

    mutating func opts(_ inner: DLMInner) -> DLMPacket? {
        let room = WireLimits.maxMessageSize - DLMOpts.headerSize - inner.encodedLength
        guard room >= 0 else { return nil }
        var o = DLMOpts(header: header(.opts), inner: inner, options: options(room: room),
                        pad: rng.chance(1, in: 8) ? rng.u8() : 0, pad2: rng.chance(1, in: 8) ? rng.u32() : 0)
        o.header.length = UInt16(o.encodedLength)
        return .opts(o)
    }

    /// Any packet: every h_cmd, every m_type and rc_type, bare or wrapped.
    mutating func packet() -> DLMPacket {
        switch rng.below(100) {
        case 0..<30: return .message(message(rng.pick(MessageType.allCases)))
        case 30..<45: return .rcom(rcom(rng.pick(RcomType.allCases)))
        case 45..<47: return .rcom(unknownRcom())
        case 47..<55: return ack()
        case 55..<58: return .fin(finHeader())
        case 58..<61: return opts(.fin(finHeader()))!
        case 61..<85: return opts(.message(message(rng.pick(MessageType.allCases))))!
        default:
            // Wrapped RCOM: keep it within 4096 (a 4048-byte NAMES_REPLY buffer cannot be wrapped).
            while true {
                let r = rng.chance(1, in: 20) ? unknownRcom() : rcom(rng.pick(RcomType.allCases), maxSlots: 249)
                if let p = opts(.rcom(r)) { return p }
            }
        }
    }
}

// MARK: - Paths

enum RepoPaths {
    /// The repository root: three levels up from this file (Tests/DLMTransportTests/x.swift).
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// `../shared` next to the repository (read-only references).
    static let shared: URL = root.deletingLastPathComponent().appendingPathComponent("shared")
    static let captures: URL = shared.appendingPathComponent("captures")
    static let spec: URL = shared.appendingPathComponent("spec")
}

/// Runs a program found on PATH; returns exit status, stdout and stderr.
func runProgram(_ name: String, _ arguments: [String]) throws -> (status: Int32, out: Data, err: Data) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [name] + arguments
    let out = Pipe()
    let err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // Read both pipes to the end before waiting, so a large output cannot block the child.
    let box = DataBox()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        box.data = err.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    p.waitUntilExit()
    return (p.terminationStatus, outData, box.data)
}

private final class DataBox: @unchecked Sendable {
    var data = Data()
}

/// Finds an executable on PATH.
func findOnPath(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
    for dir in path.split(separator: ":") {
        let candidate = "\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

/// A fresh temporary directory for one test.
func makeTempDirectory(_ label: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("dlm-peer-tests-\(label)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}
