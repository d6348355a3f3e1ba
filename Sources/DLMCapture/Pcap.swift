import NIOCore

/// A captured link-layer frame.
public struct CapturedFrame: Sendable {
    /// Seconds since the epoch.
    public var time: Double
    /// pcap/pcapng LINKTYPE_* of the interface.
    public var linkType: UInt32
    public var data: ByteBuffer
}

public struct CaptureError: Error, CustomStringConvertible, Sendable {
    public var offset: Int
    public var detail: String
    public var description: String { "capture file offset \(offset): \(detail)" }
}

/// Reads classic pcap (either byte order, micro- or nanosecond) and pcapng (SHB, IDB,
/// EPB, SPB, OPB; other blocks skipped) files.
public enum CaptureReader {
    public static func frames(_ file: ByteBuffer) throws(CaptureError) -> [CapturedFrame] {
        guard let magic = file.getInteger(at: file.readerIndex, endianness: .little, as: UInt32.self) else {
            throw CaptureError(offset: 0, detail: "file is shorter than a capture header")
        }
        switch magic {
        case 0xA1B2_C3D4, 0xA1B2_3C4D: return try classic(file, endianness: .little, nano: magic == 0xA1B2_3C4D)
        case 0xD4C3_B2A1, 0x4D3C_B2A1: return try classic(file, endianness: .big, nano: magic == 0x4D3C_B2A1)
        case 0x0A0D_0D0A: return try pcapng(file)
        default:
            throw CaptureError(offset: 0, detail: "not a pcap or pcapng file (magic 0x\(String(magic, radix: 16)))")
        }
    }

    static func classic(_ file: ByteBuffer, endianness: Endianness, nano: Bool) throws(CaptureError) -> [CapturedFrame] {
        let s = file.readerIndex
        guard let linkType = file.getInteger(at: s + 20, endianness: endianness, as: UInt32.self) else {
            throw CaptureError(offset: 0, detail: "truncated pcap file header (24 bytes needed)")
        }
        var frames: [CapturedFrame] = []
        var o = s + 24
        while o < file.writerIndex {
            guard let sec = file.getInteger(at: o, endianness: endianness, as: UInt32.self),
                  let frac = file.getInteger(at: o + 4, endianness: endianness, as: UInt32.self),
                  let incl = file.getInteger(at: o + 8, endianness: endianness, as: UInt32.self),
                  let data = file.getSlice(at: o + 16, length: Int(incl))
            else {
                throw CaptureError(offset: o - s, detail: "truncated packet record")
            }
            let t = Double(sec) + Double(frac) / (nano ? 1e9 : 1e6)
            frames.append(CapturedFrame(time: t, linkType: linkType & 0x0FFF_FFFF, data: data))
            o += 16 + Int(incl)
        }
        return frames
    }

    static func pcapng(_ file: ByteBuffer) throws(CaptureError) -> [CapturedFrame] {
        var frames: [CapturedFrame] = []
        var endianness: Endianness = .little
        var interfaces: [(linkType: UInt32, tsDivisor: Double)] = []
        let s = file.readerIndex
        var o = s
        while o < file.writerIndex {
            guard let rawType = file.getInteger(at: o, endianness: .little, as: UInt32.self) else { break }
            if rawType == 0x0A0D_0D0A {
                guard let bom = file.getInteger(at: o + 8, endianness: .little, as: UInt32.self) else {
                    throw CaptureError(offset: o - s, detail: "truncated section header block")
                }
                endianness = bom == 0x1A2B_3C4D ? .little : .big
                interfaces = []
            }
            guard let type = file.getInteger(at: o, endianness: endianness, as: UInt32.self),
                  let length = file.getInteger(at: o + 4, endianness: endianness, as: UInt32.self),
                  length >= 12, length % 4 == 0, o + Int(length) <= file.writerIndex
            else {
                throw CaptureError(offset: o - s, detail: "bad or truncated pcapng block")
            }
            let body = o + 8
            switch type {
            case 1:  // Interface Description Block
                let link = UInt32(file.getInteger(at: body, endianness: endianness, as: UInt16.self) ?? 1)
                var divisor = 1e6
                // Options: look for if_tsresol (code 9).
                var p = body + 8
                while p + 4 <= o + Int(length) - 4 {
                    guard let code = file.getInteger(at: p, endianness: endianness, as: UInt16.self),
                          let olen = file.getInteger(at: p + 2, endianness: endianness, as: UInt16.self) else { break }
                    if code == 0 { break }
                    if code == 9, let v = file.getInteger(at: p + 4, as: UInt8.self) {
                        divisor = v & 0x80 != 0 ? Double(1 << Int(v & 0x7F)) : pow10(Int(v))
                    }
                    p += 4 + (Int(olen) + 3) / 4 * 4
                }
                interfaces.append((link, divisor))
            case 6, 2:  // Enhanced Packet Block, obsolete Packet Block
                let ifIndex = type == 6
                    ? Int(file.getInteger(at: body, endianness: endianness, as: UInt32.self) ?? 0)
                    : Int(file.getInteger(at: body, endianness: endianness, as: UInt16.self) ?? 0)
                guard let hi = file.getInteger(at: body + 4, endianness: endianness, as: UInt32.self),
                      let lo = file.getInteger(at: body + 8, endianness: endianness, as: UInt32.self),
                      let caplen = file.getInteger(at: body + 12, endianness: endianness, as: UInt32.self),
                      ifIndex < interfaces.count,
                      let data = file.getSlice(at: body + 20, length: Int(caplen))
                else {
                    throw CaptureError(offset: o - s, detail: "bad enhanced packet block")
                }
                let ts = Double((UInt64(hi) << 32) | UInt64(lo)) / interfaces[ifIndex].tsDivisor
                frames.append(CapturedFrame(time: ts, linkType: interfaces[ifIndex].linkType, data: data))
            case 3:  // Simple Packet Block (no timestamp, interface 0)
                guard let orig = file.getInteger(at: body, endianness: endianness, as: UInt32.self),
                      let first = interfaces.first else {
                    throw CaptureError(offset: o - s, detail: "simple packet block before any interface")
                }
                let caplen = min(Int(orig), Int(length) - 16)
                if let data = file.getSlice(at: body + 4, length: caplen) {
                    frames.append(CapturedFrame(time: 0, linkType: first.linkType, data: data))
                }
            default:
                break
            }
            o += Int(length)
        }
        return frames
    }

    static func pow10(_ n: Int) -> Double {
        var r = 1.0
        for _ in 0..<n { r *= 10 }
        return r
    }
}

/// Writes a classic little-endian microsecond pcap with Ethernet framing, used by tests
/// (the tshark cross-check) and by `dlm-peer` to export what it sends and receives.
public struct PcapWriter {
    public private(set) var buffer: ByteBuffer
    private var tcpSeq: [String: UInt32] = [:]

    public init() {
        buffer = ByteBuffer()
        buffer.writeMultipleIntegers(UInt32(0xA1B2_C3D4), UInt16(2), UInt16(4), UInt32(0), UInt32(0), UInt32(65535),
                                     UInt32(1), endianness: .little)
    }

    /// Appends one Ethernet/IPv4/TCP segment carrying `payload` from `src` to `dst`
    /// (IPv4 addresses as 4 bytes). Sequence numbers run on per direction, so a
    /// reassembling reader sees one continuous stream.
    public mutating func appendTCP(time: Double, src: [UInt8], srcPort: UInt16, dst: [UInt8], dstPort: UInt16,
                                   payload: ByteBuffer) {
        let key = "\(src):\(srcPort)>\(dst):\(dstPort)"
        let seq = tcpSeq[key, default: 1000]
        tcpSeq[key] = seq &+ UInt32(payload.readableBytes)
        var frame = ByteBuffer()
        // Ethernet
        frame.writeBytes([0x02, 0, 0, 0, 0, dst.last ?? 0, 0x02, 0, 0, 0, 0, src.last ?? 0])
        frame.writeInteger(UInt16(0x0800))
        // IPv4
        let totalLength = 20 + 20 + payload.readableBytes
        var ip = ByteBuffer()
        ip.writeMultipleIntegers(UInt8(0x45), UInt8(0), UInt16(totalLength), UInt16(0), UInt16(0x4000), UInt8(64),
                                 UInt8(6), UInt16(0))
        ip.writeBytes(src)
        ip.writeBytes(dst)
        let ipSum = Self.checksum(ip.readableBytesView)
        ip.setInteger(ipSum, at: 10)
        frame.writeBuffer(&ip)
        // TCP: ACK|PSH, no options, checksum left 0 (readers do not check it).
        frame.writeMultipleIntegers(srcPort, dstPort, seq, UInt32(1), UInt8(0x50), UInt8(0x18), UInt16(65535),
                                    UInt16(0), UInt16(0))
        var p = payload
        frame.writeBuffer(&p)
        let usec = UInt32((time - time.rounded(.down)) * 1e6)
        buffer.writeMultipleIntegers(UInt32(time), usec, UInt32(frame.readableBytes), UInt32(frame.readableBytes),
                                     endianness: .little)
        buffer.writeBuffer(&frame)
    }

    static func checksum(_ bytes: ByteBufferView) -> UInt16 {
        var sum: UInt32 = 0
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let hi = UInt32(bytes[i])
            let lo = bytes.index(after: i) < bytes.endIndex ? UInt32(bytes[bytes.index(after: i)]) : 0
            sum &+= hi << 8 | lo
            i = bytes.index(i, offsetBy: 2, limitedBy: bytes.endIndex) ?? bytes.endIndex
        }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }
}
