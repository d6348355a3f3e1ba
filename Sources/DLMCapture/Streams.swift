import DLMTransport
import NIOCore

/// One endpoint of a captured connection.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: [UInt8]
    public var port: UInt16

    public var addressText: String {
        if address.count == 4 { return address.map(String.init).joined(separator: ".") }
        var groups: [String] = []
        var i = 0
        while i + 1 < address.count {
            groups.append(String(UInt16(address[i]) << 8 | UInt16(address[i + 1]), radix: 16))
            i += 2
        }
        return "[" + groups.joined(separator: ":") + "]"
    }

    public var description: String { "\(addressText):\(port)" }
}

/// One DLM message found in a capture.
public struct CapturedMessage: Sendable {
    public var index: Int
    public var time: Double
    public var transport: String
    public var source: Endpoint
    public var destination: Endpoint
    /// Offset of the message in its direction's byte stream.
    public var streamOffset: Int
    public var bytes: ByteBuffer
    /// The decoded message, or why it did not decode.
    public var packet: Result<DLMPacket, WireError>
}

/// A stream that stopped being framable (bad `h_length`), or a capture-level problem.
public struct StreamProblem: Sendable, CustomStringConvertible {
    public var source: Endpoint
    public var destination: Endpoint
    public var streamOffset: Int
    public var error: WireError
    public var description: String { "\(source)>\(destination) stream offset \(streamOffset): \(error)" }
}

/// Extracts DLM messages from TCP and SCTP traffic to or from a port (21064 by default):
/// TCP is reassembled per direction (retransmitted bytes dropped, out-of-order segments
/// held back), SCTP DATA chunks are ordered by TSN; each direction's bytes go through the
/// same `DLMFramer` the node uses.
public struct DLMCaptureDecoder {
    public var port: UInt16
    public private(set) var messages: [CapturedMessage] = []
    public private(set) var problems: [StreamProblem] = []

    private struct Key: Hashable {
        var src: Endpoint
        var dst: Endpoint
        var proto: UInt8
    }

    private struct Stream {
        var framer = DLMFramer()
        var failed = false
        /// TCP: next expected sequence number; nil until the first segment.
        var next: UInt32?
        /// Out-of-order data waiting, by sequence number (TCP) or TSN (SCTP).
        var pending: [UInt32: (Double, ByteBuffer)] = [:]
        var offset = 0
    }

    private var streams: [Key: Stream] = [:]

    public init(port: UInt16 = UInt16(WireLimits.defaultPort)) { self.port = port }

    public static func decode(_ file: ByteBuffer, port: UInt16 = UInt16(WireLimits.defaultPort)) throws(CaptureError) -> DLMCaptureDecoder {
        var d = DLMCaptureDecoder(port: port)
        for frame in try CaptureReader.frames(file) { d.add(frame) }
        return d
    }

    public mutating func add(_ frame: CapturedFrame) {
        var data = frame.data
        let ethertype: UInt16?
        switch frame.linkType {
        case 1:  // Ethernet, with optional 802.1Q tags
            guard data.readableBytes >= 14 else { return }
            data.moveReaderIndex(forwardBy: 12)
            var t = data.readInteger(as: UInt16.self)
            while t == 0x8100 || t == 0x88A8 {
                data.moveReaderIndex(forwardBy: 2)
                t = data.readInteger(as: UInt16.self)
            }
            ethertype = t
        case 113:  // Linux cooked v1
            guard data.readableBytes >= 16 else { return }
            ethertype = data.getInteger(at: data.readerIndex + 14, as: UInt16.self)
            data.moveReaderIndex(forwardBy: 16)
        case 276:  // Linux cooked v2
            guard data.readableBytes >= 20 else { return }
            ethertype = data.getInteger(at: data.readerIndex, as: UInt16.self)
            data.moveReaderIndex(forwardBy: 20)
        case 0, 108:  // BSD loopback
            guard let family = data.readInteger(endianness: frame.linkType == 0 ? .little : .big, as: UInt32.self) else { return }
            ethertype = family == 2 ? 0x0800 : 0x86DD
        case 101, 12, 14:  // raw IP
            guard let v = data.getInteger(at: data.readerIndex, as: UInt8.self) else { return }
            ethertype = v >> 4 == 4 ? 0x0800 : 0x86DD
        default:
            return
        }
        switch ethertype {
        case 0x0800: ipv4(frame.time, data)
        case 0x86DD: ipv6(frame.time, data)
        default: return
        }
    }

    private mutating func ipv4(_ time: Double, _ packet: ByteBuffer) {
        var p = packet
        guard let vihl = p.getInteger(at: p.readerIndex, as: UInt8.self), vihl >> 4 == 4,
              let total = p.getInteger(at: p.readerIndex + 2, as: UInt16.self),
              let fragment = p.getInteger(at: p.readerIndex + 6, as: UInt16.self),
              let proto = p.getInteger(at: p.readerIndex + 9, as: UInt8.self),
              let src = p.getBytes(at: p.readerIndex + 12, length: 4),
              let dst = p.getBytes(at: p.readerIndex + 16, length: 4)
        else { return }
        guard fragment & 0x3FFF == 0 else { return }  // fragments: not reassembled (DLM never fragments)
        let ihl = Int(vihl & 0xF) * 4
        let length = min(Int(total), p.readableBytes)
        guard length >= ihl, let payload = p.getSlice(at: p.readerIndex + ihl, length: length - ihl) else { return }
        p = payload
        transport(time, proto, src, dst, p)
    }

    private mutating func ipv6(_ time: Double, _ packet: ByteBuffer) {
        guard let plen = packet.getInteger(at: packet.readerIndex + 4, as: UInt16.self),
              let next = packet.getInteger(at: packet.readerIndex + 6, as: UInt8.self),
              let src = packet.getBytes(at: packet.readerIndex + 8, length: 16),
              let dst = packet.getBytes(at: packet.readerIndex + 24, length: 16),
              let payload = packet.getSlice(at: packet.readerIndex + 40, length: min(Int(plen), packet.readableBytes - 40))
        else { return }
        transport(time, next, src, dst, payload)
    }

    private mutating func transport(_ time: Double, _ proto: UInt8, _ src: [UInt8], _ dst: [UInt8], _ seg: ByteBuffer) {
        switch proto {
        case 6: tcp(time, src, dst, seg)
        case 132: sctp(time, src, dst, seg)
        default: return
        }
    }

    private mutating func tcp(_ time: Double, _ srcIP: [UInt8], _ dstIP: [UInt8], _ seg: ByteBuffer) {
        let s = seg.readerIndex
        guard let sport = seg.getInteger(at: s, as: UInt16.self),
              let dport = seg.getInteger(at: s + 2, as: UInt16.self),
              let seq = seg.getInteger(at: s + 4, as: UInt32.self),
              let off = seg.getInteger(at: s + 12, as: UInt8.self),
              let flags = seg.getInteger(at: s + 13, as: UInt8.self),
              sport == port || dport == port
        else { return }
        let hlen = Int(off >> 4) * 4
        guard hlen >= 20, hlen <= seg.readableBytes, let data = seg.getSlice(at: s + hlen, length: seg.readableBytes - hlen)
        else { return }
        let key = Key(src: Endpoint(address: srcIP, port: sport), dst: Endpoint(address: dstIP, port: dport), proto: 6)
        let syn = flags & 0x02 != 0
        if syn {
            // A new connection on this 4-tuple starts a new stream.
            streams[key] = Stream(next: seq &+ 1)
            return
        }
        var stream = streams[key] ?? Stream()
        if stream.next == nil { stream.next = seq }
        if data.readableBytes > 0 {
            // A retransmission may be cut differently: keep the longest segment per start.
            if (stream.pending[seq]?.1.readableBytes ?? 0) < data.readableBytes {
                stream.pending[seq] = (time, data)
            }
            drainTCP(&stream, key)
        }
        streams[key] = stream
    }

    private mutating func drainTCP(_ stream: inout Stream, _ key: Key) {
        while let next = stream.next {
            // Find a segment covering `next`: exact start, or an earlier start that overlaps.
            var found: (UInt32, Double, ByteBuffer)?
            for (seq, entry) in stream.pending {
                let ahead = Int32(bitPattern: next &- seq)  // bytes of this segment already delivered
                if ahead >= 0 {
                    if Int(ahead) >= entry.1.readableBytes {
                        stream.pending[seq] = nil  // pure retransmission
                        continue
                    }
                    found = (seq, entry.0, entry.1.getSlice(at: entry.1.readerIndex + Int(ahead),
                                                           length: entry.1.readableBytes - Int(ahead)) ?? ByteBuffer())
                    break
                }
            }
            guard let (seq, time, bytes) = found else { return }
            stream.pending[seq] = nil
            stream.next = next &+ UInt32(bytes.readableBytes)
            feed(&stream, key, time, bytes, transport: "tcp")
        }
    }

    private mutating func sctp(_ time: Double, _ srcIP: [UInt8], _ dstIP: [UInt8], _ packet: ByteBuffer) {
        let s = packet.readerIndex
        guard let sport = packet.getInteger(at: s, as: UInt16.self),
              let dport = packet.getInteger(at: s + 2, as: UInt16.self),
              sport == port || dport == port
        else { return }
        let key = Key(src: Endpoint(address: srcIP, port: sport), dst: Endpoint(address: dstIP, port: dport), proto: 132)
        var stream = streams[key] ?? Stream()
        var o = s + 12
        while let type = packet.getInteger(at: o, as: UInt8.self),
              let length = packet.getInteger(at: o + 2, as: UInt16.self), length >= 4 {
            switch type {
            case 0:  // DATA: TSN at +4, user data at +16
                if length > 16, let tsn = packet.getInteger(at: o + 4, as: UInt32.self),
                   let data = packet.getSlice(at: o + 16, length: Int(length) - 16) {
                    if stream.next == nil { stream.next = tsn }
                    if let next = stream.next, Int32(bitPattern: tsn &- next) >= 0 {
                        stream.pending[tsn] = (time, data)
                    }
                }
            case 1, 2:  // INIT, INIT ACK: a new association; initial TSN at +16
                if let tsn = packet.getInteger(at: o + 16, as: UInt32.self) {
                    stream = Stream(next: tsn)
                }
            default:
                break
            }
            o += (Int(length) + 3) / 4 * 4
        }
        while let next = stream.next, let (time, data) = stream.pending.removeValue(forKey: next) {
            stream.next = next &+ 1
            feed(&stream, key, time, data, transport: "sctp")
        }
        streams[key] = stream
    }

    private mutating func feed(_ stream: inout Stream, _ key: Key, _ time: Double, _ bytes: ByteBuffer, transport: String) {
        guard !stream.failed else { return }
        var frames: [ByteBuffer] = []
        do {
            try stream.framer.append(bytes) { frames.append($0) }
        } catch let error as FramingError {
            stream.failed = true
            problems.append(StreamProblem(source: key.src, destination: key.dst,
                                          streamOffset: stream.offset, error: error.asWireError))
        } catch {
            stream.failed = true
        }
        for frame in frames {
            let packet: Result<DLMPacket, WireError>
            do throws(WireError) {
                packet = .success(try DLMPacket.decode(frame))
            } catch {
                packet = .failure(error)
            }
            messages.append(CapturedMessage(index: messages.count + 1, time: time, transport: transport,
                                            source: key.src, destination: key.dst, streamOffset: stream.offset,
                                            bytes: frame, packet: packet))
            stream.offset += frame.readableBytes
        }
    }
}
