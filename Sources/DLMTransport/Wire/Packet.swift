import NIOCore

/// One complete message as framed from the stream: the unit the transport passes around.
public enum DLMPacket: Hashable, Sendable {
    /// A bare DLM_MSG (3.1, or 3.2 traffic to a 3.1 peer).
    case message(DLMMessage)
    /// A bare DLM_RCOM.
    case rcom(DLMRcom)
    /// DLM_OPTS: a sequenced envelope around a MSG, RCOM or FIN (3.2).
    case opts(DLMOpts)
    /// DLM_ACK: the header alone; `h_seq` is the next sequence number expected (cumulative).
    case ack(DLMHeader)
    /// A bare DLM_FIN. Kernels only accept a FIN inside DLM_OPTS; it decodes so that it can be reported.
    case fin(DLMHeader)

    public var header: DLMHeader {
        switch self {
        case .message(let m): return m.header
        case .rcom(let r): return r.header
        case .opts(let o): return o.header
        case .ack(let h), .fin(let h): return h
        }
    }

    public var encodedLength: Int {
        switch self {
        case .message(let m): return m.encodedLength
        case .rcom(let r): return r.encodedLength
        case .opts(let o): return o.encodedLength
        case .ack, .fin: return DLMHeader.size
        }
    }

    /// Decodes one message that occupies exactly the readable bytes of `buffer`
    /// (the framer guarantees this: 16 <= h_length <= 4096 and h_length bytes present).
    @inlinable
    public static func decode(_ buffer: ByteBuffer) throws(WireError) -> DLMPacket {
        let header = try DLMHeader.peek(buffer)
        guard Int(header.length) == buffer.readableBytes else {
            throw WireError(.lengthMismatch, field: "h_length", offset: 12, value: Int64(header.length),
                            "h_length says \(header.length) bytes but the message holds \(buffer.readableBytes)")
        }
        switch HeaderCommand(rawValue: header.command) {
        case .message: return .message(try DLMMessage.decode(buffer, header: header))
        case .rcom: return .rcom(try DLMRcom.decode(buffer, header: header))
        case .opts: return .opts(try DLMOpts.decode(buffer, header: header))
        case .ack: return .ack(try bareHeader(header, buffer, "DLM_ACK"))
        case .fin: return .fin(try bareHeader(header, buffer, "DLM_FIN"))
        case nil:
            throw WireError(.unknownCommand, field: "h_cmd", offset: 14, value: Int64(header.command),
                            "h_cmd must be 1 (MSG), 2 (RCOM), 3 (OPTS), 4 (ACK) or 5 (FIN)")
        }
    }

    @inlinable
    static func bareHeader(_ header: DLMHeader, _ buffer: ByteBuffer, _ what: String, base: Int = 0) throws(WireError) -> DLMHeader {
        guard buffer.readableBytes == DLMHeader.size else {
            throw WireError(.lengthMismatch, field: "h_length", offset: base + 12, value: Int64(buffer.readableBytes),
                            "a \(what) is exactly 16 bytes")
        }
        return header
    }

    /// Appends the encoded message. Lengths are computed from the content.
    @inlinable
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .message(let m): m.encode(into: &buffer)
        case .rcom(let r): r.encode(into: &buffer)
        case .opts(let o): o.encode(into: &buffer)
        case .ack(let h), .fin(let h): h.write(into: &buffer, length: DLMHeader.size)
        }
    }

    /// Encodes into a new buffer.
    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: encodedLength)
        encode(into: &buffer)
        return buffer
    }
}

/// What a DLM_OPTS envelope carries.
public enum DLMInner: Hashable, Sendable {
    case message(DLMMessage)
    case rcom(DLMRcom)
    case fin(DLMHeader)

    public var header: DLMHeader {
        switch self {
        case .message(let m): return m.header
        case .rcom(let r): return r.header
        case .fin(let h): return h
        }
    }

    public var encodedLength: Int {
        switch self {
        case .message(let m): return m.encodedLength
        case .rcom(let r): return r.encodedLength
        case .fin: return DLMHeader.size
        }
    }

    /// The inner message alone, as it would travel bare to a 3.1 peer.
    public var packet: DLMPacket {
        switch self {
        case .message(let m): return .message(m)
        case .rcom(let r): return .rcom(r)
        case .fin(let h): return .fin(h)
        }
    }

    @inlinable
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .message(let m): m.encode(into: &buffer)
        case .rcom(let r): r.encode(into: &buffer)
        case .fin(let h): h.write(into: &buffer, length: DLMHeader.size)
        }
    }
}

/// `struct dlm_opts` (24 bytes), its TLV options (none are defined; kernels send none) and
/// the inner message.
public struct DLMOpts: Hashable, Sendable {
    /// Outer header: `h_cmd` 3, `h_seq` the midcomms sequence number.
    public var header: DLMHeader
    /// `o_pad`, `o_pad2`: kept for exact round trips.
    public var pad: UInt8
    public var pad2: UInt32
    /// `o_opts`: raw TLV options (skipped by every kernel; empty when we send).
    public var options: ByteBuffer
    public var inner: DLMInner

    public static let headerSize = WireLimits.optsHeaderSize

    public init(header: DLMHeader, inner: DLMInner, options: ByteBuffer = ByteBuffer(), pad: UInt8 = 0, pad2: UInt32 = 0) {
        self.header = header
        self.inner = inner
        self.options = options
        self.pad = pad
        self.pad2 = pad2
    }

    /// `o_nextcmd`: always the inner message's `h_cmd`.
    public var nextCommand: UInt8 { inner.header.command }

    public var encodedLength: Int { Self.headerSize + options.readableBytes + inner.encodedLength }

    @inlinable
    static func decode(_ buffer: ByteBuffer, header: DLMHeader) throws(WireError) -> DLMOpts {
        let count = buffer.readableBytes
        guard count >= headerSize else {
            throw WireError(.truncated, field: "h_length", offset: 12, value: Int64(count),
                            "a DLM_OPTS needs at least 24 bytes")
        }
        let (nextCmd, pad, optlen, pad2) = buffer.withUnsafeReadableBytes { raw in
            (raw[16], raw[17], Int(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 18, as: UInt16.self))),
             UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 20, as: UInt32.self)))
        }
        guard headerSize + optlen <= count else {
            throw WireError(.truncated, field: "o_optlen", offset: 18, value: Int64(optlen),
                            "options run past the end of the message (\(count) bytes)")
        }
        let options = optlen == 0 ? ByteBuffer() : buffer.getSlice(at: buffer.readerIndex + headerSize, length: optlen) ?? ByteBuffer()
        let innerStart = headerSize + optlen
        let innerBytes = buffer.getSlice(at: buffer.readerIndex + innerStart, length: count - innerStart) ?? ByteBuffer()
        switch HeaderCommand(rawValue: nextCmd) {
        case .message, .rcom, .fin: break
        case .opts, .ack, nil:
            throw WireError(.unknownCommand, field: "o_nextcmd", offset: 16, value: Int64(nextCmd),
                            "the inner message of DLM_OPTS must be MSG (1), RCOM (2) or FIN (5)")
        }
        let innerHeader = try DLMHeader.peek(innerBytes, base: innerStart)
        guard innerHeader.command == nextCmd else {
            throw WireError(.invalidValue, field: "inner h_cmd", offset: innerStart + 14, value: Int64(innerHeader.command),
                            "o_nextcmd is \(nextCmd) but the inner header says \(innerHeader.command)")
        }
        guard Int(innerHeader.length) == innerBytes.readableBytes else {
            throw WireError(.lengthMismatch, field: "inner h_length", offset: innerStart + 12,
                            value: Int64(innerHeader.length),
                            "outer h_length leaves \(innerBytes.readableBytes) bytes for the inner message")
        }
        let inner: DLMInner
        if nextCmd == HeaderCommand.message.rawValue {
            inner = .message(try DLMMessage.decode(innerBytes, header: innerHeader, base: innerStart))
        } else if nextCmd == HeaderCommand.rcom.rawValue {
            inner = .rcom(try DLMRcom.decode(innerBytes, header: innerHeader, base: innerStart))
        } else {
            inner = .fin(try DLMPacket.bareHeader(innerHeader, innerBytes, "DLM_FIN", base: innerStart))
        }
        return DLMOpts(header: header, inner: inner, options: options, pad: pad, pad2: pad2)
    }

    /// Appends the 24-byte envelope of a DLM_OPTS with sequence number `seq`, no options, and an
    /// inner message of `innerLength` bytes with `h_cmd` `innerCommand` (which the caller appends
    /// next): the bytes `DLMOpts(header:inner:).encode` writes before the inner message, for a
    /// header of version 3.2, `h_nodeid` `nodeID` and `h_pad` 0.
    @inlinable
    public static func writeEnvelope(seq: UInt32, nodeID: UInt32, innerLength: Int, innerCommand: UInt8,
                                     into buffer: inout ByteBuffer) {
        let header = DLMHeader(version: .v3_2, word: seq, nodeID: nodeID, length: 0, command: .opts)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: headerSize) { raw in
            header.store(into: raw, length: headerSize + innerLength)
            raw[16] = innerCommand
            raw[17] = 0
            raw.storeBytes(of: UInt16(0), toByteOffset: 18, as: UInt16.self)
            raw.storeBytes(of: UInt32(0), toByteOffset: 20, as: UInt32.self)
            return headerSize
        }
    }

    @inlinable
    func encode(into buffer: inout ByteBuffer) {
        let length = encodedLength
        let optlen = options.readableBytes
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.headerSize) { raw in
            header.store(into: raw, length: length)
            raw[16] = inner.header.command
            raw[17] = pad
            raw.storeBytes(of: UInt16(truncatingIfNeeded: optlen).littleEndian, toByteOffset: 18, as: UInt16.self)
            raw.storeBytes(of: pad2.littleEndian, toByteOffset: 20, as: UInt32.self)
            return Self.headerSize
        }
        if optlen > 0 { buffer.writeImmutableBuffer(options) }
        inner.encode(into: &buffer)
    }
}
