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
        let r = FieldReader(buffer, base: base)
        guard r.count >= fixedSize else {
            throw WireError(.truncated, field: "h_length", offset: base + 12, value: Int64(r.count),
                            "a DLM_MSG needs at least 88 bytes")
        }
        return DLMMessage(
            header: header,
            type: try r.u32(16, "m_type"),
            nodeID: try r.i32(20, "m_nodeid"),
            pid: try r.u32(24, "m_pid"),
            lkid: try r.u32(28, "m_lkid"),
            remid: try r.u32(32, "m_remid"),
            parentLkid: try r.u32(36, "m_parent_lkid"),
            parentRemid: try r.u32(40, "m_parent_remid"),
            exflags: try r.u32(44, "m_exflags"),
            sbflags: try r.u32(48, "m_sbflags"),
            flags: try r.u32(52, "m_flags"),
            lvbseq: try r.u32(56, "m_lvbseq"),
            hash: try r.u32(60, "m_hash"),
            status: try r.i32(64, "m_status"),
            grmode: try r.i32(68, "m_grmode"),
            rqmode: try r.i32(72, "m_rqmode"),
            bastmode: try r.i32(76, "m_bastmode"),
            asts: try r.u32(80, "m_asts"),
            result: try r.i32(84, "m_result"),
            extra: r.rest(from: fixedSize)
        )
    }

    /// Appends the encoded message; `h_length` is computed, `h_cmd` is written as stored.
    @inlinable
    public func encode(into buffer: inout ByteBuffer) {
        header.write(into: &buffer, length: encodedLength)
        buffer.writeMultipleIntegers(
            type, UInt32(bitPattern: nodeID), pid, lkid, remid, parentLkid, parentRemid, exflags, sbflags,
            endianness: .little)
        buffer.writeMultipleIntegers(
            flags, lvbseq, hash, UInt32(bitPattern: status), UInt32(bitPattern: grmode), UInt32(bitPattern: rqmode),
            UInt32(bitPattern: bastmode), asts, UInt32(bitPattern: result),
            endianness: .little)
        var extra = self.extra
        buffer.writeBuffer(&extra)
    }
}
