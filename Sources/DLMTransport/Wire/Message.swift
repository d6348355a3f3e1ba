import NIOCore

/// `struct dlm_message` (h_cmd DLM_MSG): 88 fixed bytes, then `m_extra`.
///
/// Integer fields keep their raw wire values (modes and results are signed) so that any
/// message, even one with values this implementation would never send, decodes and
/// re-encodes byte for byte.
public struct DLMMessage: Hashable, Sendable {
    public var header: DLMHeader
    /// `m_type`, raw (see `MessageType`).
    public var type: UInt32
    public var nodeID: Int32
    public var pid: UInt32
    public var lkid: UInt32
    public var remid: UInt32
    public var parentLkid: UInt32
    public var parentRemid: UInt32
    public var exflags: UInt32
    public var sbflags: UInt32
    public var flags: UInt32
    public var lvbseq: UInt32
    public var hash: UInt32
    public var status: Int32
    public var grmode: Int32
    public var rqmode: Int32
    public var bastmode: Int32
    public var asts: UInt32
    public var result: Int32
    /// `m_extra`: the resource name (REQUEST, LOOKUP, REMOVE) or the LVB; may be empty.
    public var extra: ByteBuffer

    public static let fixedSize = WireLimits.messageFixedSize

    public init(
        header: DLMHeader, type: UInt32, nodeID: Int32 = 0, pid: UInt32 = 0, lkid: UInt32 = 0, remid: UInt32 = 0,
        parentLkid: UInt32 = 0, parentRemid: UInt32 = 0, exflags: UInt32 = 0, sbflags: UInt32 = 0, flags: UInt32 = 0,
        lvbseq: UInt32 = 0, hash: UInt32 = 0, status: Int32 = 0, grmode: Int32 = 0, rqmode: Int32 = 0,
        bastmode: Int32 = 0, asts: UInt32 = 0, result: Int32 = 0, extra: ByteBuffer = ByteBuffer()
    ) {
        self.header = header
        self.type = type
        self.nodeID = nodeID
        self.pid = pid
        self.lkid = lkid
        self.remid = remid
        self.parentLkid = parentLkid
        self.parentRemid = parentRemid
        self.exflags = exflags
        self.sbflags = sbflags
        self.flags = flags
        self.lvbseq = lvbseq
        self.hash = hash
        self.status = status
        self.grmode = grmode
        self.rqmode = rqmode
        self.bastmode = bastmode
        self.asts = asts
        self.result = result
        self.extra = extra
    }

    public var messageType: MessageType? { MessageType(rawValue: type) }

    /// The encoded size: 88 + extra.
    public var encodedLength: Int { Self.fixedSize + extra.readableBytes }

    /// Decodes one DLM_MSG occupying exactly the readable bytes of `buffer`.
    /// `base` is the offset of this message inside an enclosing one (for error offsets).
    @inlinable
    public static func decode(_ buffer: ByteBuffer, header: DLMHeader, base: Int = 0) throws(WireError) -> DLMMessage {
        let count = buffer.readableBytes
        guard count >= fixedSize else {
            throw WireError(.truncated, field: "h_length", offset: base + 12, value: Int64(count),
                            "a DLM_MSG needs at least 88 bytes")
        }
        // Hot path: one bounds check above, then unaligned little-endian loads.
        var m = buffer.withUnsafeReadableBytes { raw -> DLMMessage in
            @inline(__always) func u(_ o: Int) -> UInt32 { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
            @inline(__always) func i(_ o: Int) -> Int32 { Int32(bitPattern: u(o)) }
            return DLMMessage(
                header: header, type: u(16), nodeID: i(20), pid: u(24), lkid: u(28), remid: u(32), parentLkid: u(36),
                parentRemid: u(40), exflags: u(44), sbflags: u(48), flags: u(52), lvbseq: u(56), hash: u(60),
                status: i(64), grmode: i(68), rqmode: i(72), bastmode: i(76), asts: u(80), result: i(84))
        }
        if count > fixedSize {
            m.extra = buffer.getSlice(at: buffer.readerIndex + fixedSize, length: count - fixedSize) ?? ByteBuffer()
        }
        return m
    }

    /// Appends the encoded message; `h_length` is computed, `h_cmd` is written as stored.
    @inlinable
    public func encode(into buffer: inout ByteBuffer) {
        let length = encodedLength
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.fixedSize) { raw in
            header.store(into: raw, length: length)
            @inline(__always) func u(_ o: Int, _ v: UInt32) { raw.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt32.self) }
            @inline(__always) func i(_ o: Int, _ v: Int32) { u(o, UInt32(bitPattern: v)) }
            u(16, type); i(20, nodeID); u(24, pid); u(28, lkid); u(32, remid); u(36, parentLkid)
            u(40, parentRemid); u(44, exflags); u(48, sbflags); u(52, flags); u(56, lvbseq); u(60, hash)
            i(64, status); i(68, grmode); i(72, rqmode); i(76, bastmode); u(80, asts); i(84, result)
            return Self.fixedSize
        }
        if extra.readableBytes > 0 {
            buffer.writeImmutableBuffer(extra)
        }
    }
}
