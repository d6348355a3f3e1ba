import NIOCore

/// `struct dlm_rcom` (h_cmd DLM_RCOM): 48 fixed bytes, then a payload that depends on `rc_type`.
public struct DLMRcom: Hashable, Sendable {
    public var header: DLMHeader
    /// `rc_type`, raw (see `RcomType`).
    public var type: UInt32
    /// `rc_result`: status bits, a nodeid or a raw -errno depending on the type (never remapped).
    public var result: Int32
    public var id: UInt64
    public var seq: UInt64
    public var seqReply: UInt64
    public var payload: RcomPayload

    public static let fixedSize = WireLimits.rcomFixedSize

    public init(header: DLMHeader, type: UInt32, result: Int32 = 0, id: UInt64 = 0, seq: UInt64 = 0,
                seqReply: UInt64 = 0, payload: RcomPayload) {
        self.header = header
        self.type = type
        self.result = result
        self.id = id
        self.seq = seq
        self.seqReply = seqReply
        self.payload = payload
    }

    public var rcomType: RcomType? { RcomType(rawValue: type) }

    public var encodedLength: Int { Self.fixedSize + payload.encodedLength }

    @inlinable
    public static func decode(_ buffer: ByteBuffer, header: DLMHeader, base: Int = 0) throws(WireError) -> DLMRcom {
        let r = FieldReader(buffer, base: base)
        guard r.count >= fixedSize else {
            throw WireError(.truncated, field: "h_length", offset: base + 12, value: Int64(r.count),
                            "a DLM_RCOM needs at least 48 bytes")
        }
        let type = try r.u32(16, "rc_type")
        return DLMRcom(
            header: header,
            type: type,
            result: try r.i32(20, "rc_result"),
            id: try r.u64(24, "rc_id"),
            seq: try r.u64(32, "rc_seq"),
            seqReply: try r.u64(40, "rc_seq_reply"),
            payload: try RcomPayload.decode(type: type, r)
        )
    }

    @inlinable
    public func encode(into buffer: inout ByteBuffer) {
        header.write(into: &buffer, length: encodedLength)
        buffer.writeMultipleIntegers(type, UInt32(bitPattern: result), endianness: .little)
        buffer.writeMultipleIntegers(id, seq, seqReply, endianness: .little)
        payload.encode(into: &buffer)
    }
}

/// `rc_buf`, decoded by `rc_type`.
public enum RcomPayload: Hashable, Sendable {
    /// RCOM_STATUS: `struct rcom_status`.
    case status(RcomStatus)
    /// RCOM_STATUS_REPLY: `struct rcom_config` and `rf_num_slots` slots.
    case statusReply(RcomConfig, slots: [RcomSlot])
    /// RCOM_NAMES: the last name of the previous reply (empty for the first request).
    case names(lastName: ByteBuffer)
    /// RCOM_NAMES_REPLY: the name list in its fixed-size buffer.
    case namesReply(RcomNameList)
    /// RCOM_LOOKUP: the resource name.
    case lookup(name: ByteBuffer)
    /// RCOM_LOOKUP_REPLY: no payload (`rc_result` holds the master nodeid).
    case lookupReply
    /// RCOM_LOCK: `struct rcom_lock` and the LVB, if the holder has one.
    /// Boxed (`indirect`): stored inline, these 100 bytes would make every `DLMRcom`, `DLMPacket`,
    /// `Delivery` and `MidcommsAction` that big, and the per-message paths copy those values.
    indirect case lock(RcomLock, lvb: ByteBuffer)
    /// RCOM_LOCK_REPLY: `struct rcom_lock` echoed back (kernels never add an LVB). Boxed like `lock`.
    indirect case lockReply(RcomLock, lvb: ByteBuffer)
    /// An `rc_type` this protocol does not define: the bytes as they came.
    case unknown(ByteBuffer)

    public var encodedLength: Int {
        switch self {
        case .status: return RcomStatus.size
        case .statusReply(_, let slots): return RcomConfig.size + RcomSlot.size * slots.count
        case .names(let name): return name.readableBytes
        case .namesReply(let list): return list.bufferSize
        case .lookup(let name): return name.readableBytes
        case .lookupReply: return 0
        case .lock(_, let lvb), .lockReply(_, let lvb): return RcomLock.size + lvb.readableBytes
        case .unknown(let bytes): return bytes.readableBytes
        }
    }

    @inlinable
    static func decode(type: UInt32, _ r: FieldReader) throws(WireError) -> RcomPayload {
        let p = DLMRcom.fixedSize
        let length = r.count - p
        switch RcomType(rawValue: type) {
        case .status:
            try exact(r, length, RcomStatus.size, "rcom_status")
            return .status(RcomStatus(flags: try r.u32(p, "rs_flags"), unused1: try r.u32(p + 4, "rs_unused1"),
                                      unused2: try r.u64(p + 8, "rs_unused2")))
        case .statusReply:
            guard length >= RcomConfig.size else {
                throw r.truncated(p, "rcom_config", RcomConfig.size)
            }
            let config = RcomConfig(
                lvblen: try r.u32(p, "rf_lvblen"), lsflags: try r.u32(p + 4, "rf_lsflags"),
                flags: try r.u32(p + 8, "rf_flags"), ourSlot: try r.u16(p + 12, "rf_our_slot"),
                numSlots: try r.u16(p + 14, "rf_num_slots"), generation: try r.u32(p + 16, "rf_generation"),
                unused1: try r.u32(p + 20, "rf_unused1"), unused2: try r.u64(p + 24, "rf_unused2"))
            let count = Int(config.numSlots)
            try exact(r, length, RcomConfig.size + RcomSlot.size * count, "rf_num_slots", fieldOffset: p + 14,
                      fieldValue: Int64(count))
            var slots: [RcomSlot] = []
            slots.reserveCapacity(count)
            var o = p + RcomConfig.size
            for _ in 0..<count {
                slots.append(RcomSlot(nodeID: try r.u32(o, "ro_nodeid"), slot: try r.u16(o + 4, "ro_slot"),
                                      unused1: try r.u16(o + 6, "ro_unused1"), unused2: try r.u64(o + 8, "ro_unused2")))
                o += RcomSlot.size
            }
            return .statusReply(config, slots: slots)
        case .names:
            return .names(lastName: r.rest(from: p))
        case .namesReply:
            return .namesReply(try RcomNameList.decode(r, at: p))
        case .lookup:
            return .lookup(name: r.rest(from: p))
        case .lookupReply:
            try exact(r, length, 0, "rc_buf")
            return .lookupReply
        case .lock, .lockReply:
            guard length >= RcomLock.size else {
                throw WireError(.truncated, field: "rcom_lock", offset: r.base + p, value: Int64(r.count),
                                "RCOM_LOCK/LOCK_REPLY needs a 108-byte rcom_lock (h_length >= 156)")
            }
            let lock = try RcomLock.decode(r, at: p)
            let lvb = r.rest(from: p + RcomLock.size)
            return type == RcomType.lock.rawValue ? .lock(lock, lvb: lvb) : .lockReply(lock, lvb: lvb)
        case nil:
            return .unknown(r.rest(from: p))
        }
    }

    @inlinable
    static func exact(_ r: FieldReader, _ length: Int, _ expected: Int, _ field: StaticString,
                      fieldOffset: Int? = nil, fieldValue: Int64? = nil) throws(WireError) {
        guard length != expected else { return }
        let kind: WireError.Kind = length < expected ? .truncated : .lengthMismatch
        throw WireError(kind, field: "\(field)", offset: r.base + (fieldOffset ?? DLMRcom.fixedSize),
                        value: fieldValue ?? Int64(length),
                        "rc_buf holds \(length) bytes where this rc_type needs exactly \(expected)")
    }

    @inlinable
    func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .status(let s):
            buffer.writeMultipleIntegers(s.flags, s.unused1, endianness: .little)
            buffer.writeInteger(s.unused2, endianness: .little)
        case .statusReply(let c, let slots):
            buffer.writeMultipleIntegers(c.lvblen, c.lsflags, c.flags, endianness: .little)
            buffer.writeMultipleIntegers(c.ourSlot, UInt16(truncatingIfNeeded: slots.count), endianness: .little)
            buffer.writeMultipleIntegers(c.generation, c.unused1, endianness: .little)
            buffer.writeInteger(c.unused2, endianness: .little)
            for s in slots {
                buffer.writeInteger(s.nodeID, endianness: .little)
                buffer.writeMultipleIntegers(s.slot, s.unused1, endianness: .little)
                buffer.writeInteger(s.unused2, endianness: .little)
            }
        case .names(var bytes), .lookup(var bytes), .unknown(var bytes):
            buffer.writeBuffer(&bytes)
        case .namesReply(let list):
            list.encode(into: &buffer)
        case .lookupReply:
            break
        case .lock(let lock, var lvb), .lockReply(let lock, var lvb):
            lock.encode(into: &buffer)
            buffer.writeBuffer(&lvb)
        }
    }
}

/// `struct rcom_status` (16 bytes).
public struct RcomStatus: Hashable, Sendable {
    /// `rs_flags`: `DLM_RSF_NEED_SLOTS` (0x1) asks for the slot table.
    public var flags: UInt32
    public var unused1: UInt32
    public var unused2: UInt64
    public static let size = WireLimits.rcomStatusSize

    public init(flags: UInt32, unused1: UInt32 = 0, unused2: UInt64 = 0) {
        self.flags = flags
        self.unused1 = unused1
        self.unused2 = unused2
    }
}

/// `struct rcom_config` (32 bytes): the STATUS_REPLY payload before the slots.
public struct RcomConfig: Hashable, Sendable {
    public var lvblen: UInt32
    public var lsflags: UInt32
    public var flags: UInt32
    public var ourSlot: UInt16
    /// `rf_num_slots` as decoded; encoding writes the number of slots actually attached.
    public var numSlots: UInt16
    public var generation: UInt32
    public var unused1: UInt32
    public var unused2: UInt64
    public static let size = WireLimits.rcomConfigSize

    /// `rf_lvblen` of the "lockspace not found" reply (`rc_result` -ESRCH).
    public static let notReadyLvblen: UInt32 = 0xFFFF_FFFF

    public init(lvblen: UInt32, lsflags: UInt32, flags: UInt32 = 0, ourSlot: UInt16 = 0, numSlots: UInt16 = 0,
                generation: UInt32 = 0, unused1: UInt32 = 0, unused2: UInt64 = 0) {
        self.lvblen = lvblen
        self.lsflags = lsflags
        self.flags = flags
        self.ourSlot = ourSlot
        self.numSlots = numSlots
        self.generation = generation
        self.unused1 = unused1
        self.unused2 = unused2
    }
}

/// `struct rcom_slot` (16 bytes).
public struct RcomSlot: Hashable, Sendable {
    public var nodeID: UInt32
    public var slot: UInt16
    public var unused1: UInt16
    public var unused2: UInt64
    public static let size = WireLimits.rcomSlotSize

    public init(nodeID: UInt32, slot: UInt16, unused1: UInt16 = 0, unused2: UInt64 = 0) {
        self.nodeID = nodeID
        self.slot = slot
        self.unused1 = unused1
        self.unused2 = unused2
    }
}

/// The NAMES_REPLY buffer: records of a **big-endian** 16-bit length and the name, ended by
/// 0xFFFF (end of list) or 0x0000 (buffer full, ask again), then zero padding to the
/// fixed buffer size.
public struct RcomNameList: Hashable, Sendable {
    public enum End: UInt16, Hashable, Sendable {
        /// 0x0000: more names follow; ask again starting after the last one.
        case endOfBlock = 0x0000
        /// 0xFFFF: the list is complete.
        case endOfList = 0xFFFF
    }

    public var names: [ByteBuffer]
    public var end: End
    /// The bytes after the terminator up to the end of the buffer: zeros from every kernel,
    /// kept as received so that any reply re-encodes byte for byte.
    public var padding: ByteBuffer

    /// A list in a buffer of `bufferSize` bytes (4024 on 5.14+, 4048 on older kernels),
    /// zero padded after the terminator.
    public init(names: [ByteBuffer], end: End, bufferSize: Int = WireLimits.namesReplyBufferSize) {
        self.names = names
        self.end = end
        let used = names.reduce(2) { $0 + 2 + $1.readableBytes }
        var zeros = ByteBuffer()
        zeros.writeRepeatingByte(0, count: max(0, bufferSize - used))
        self.padding = zeros
    }

    @usableFromInline
    init(names: [ByteBuffer], end: End, padding: ByteBuffer) {
        self.names = names
        self.end = end
        self.padding = padding
    }

    /// Bytes the records and terminator take (the rest of the buffer is padding).
    public var usedBytes: Int { names.reduce(2) { $0 + 2 + $1.readableBytes } }

    /// Size of the whole `rc_buf`.
    public var bufferSize: Int { usedBytes + padding.readableBytes }

    @inlinable
    static func decode(_ r: FieldReader, at start: Int) throws(WireError) -> RcomNameList {
        var names: [ByteBuffer] = []
        var o = start
        while true {
            let len = try r.be16(o, "rc_buf name length")
            if let end = End(rawValue: len) {
                return RcomNameList(names: names, end: end, padding: r.rest(from: o + 2))
            }
            guard Int(len) <= WireLimits.maxResourceNameLength else {
                throw WireError(.invalidValue, field: "rc_buf name length", offset: r.base + o, value: Int64(len),
                                "a resource name is at most 64 bytes")
            }
            names.append(try r.slice(o + 2, Int(len), "rc_buf name"))
            o += 2 + Int(len)
        }
    }

    @inlinable
    func encode(into buffer: inout ByteBuffer) {
        for name in names {
            buffer.writeInteger(UInt16(truncatingIfNeeded: name.readableBytes), endianness: .big)
            buffer.writeImmutableBuffer(name)
        }
        buffer.writeInteger(end.rawValue, endianness: .big)
        buffer.writeImmutableBuffer(padding)
    }
}

/// `struct rcom_lock` (108 bytes): a lock as the holder describes it to a new master.
public struct RcomLock: Hashable, Sendable {
    public var ownpid: UInt32
    public var lkid: UInt32
    public var remid: UInt32
    public var parentLkid: UInt32
    public var parentRemid: UInt32
    public var exflags: UInt32
    public var flags: UInt32
    public var lvbseq: UInt32
    public var result: Int32
    public var rqmode: Int8
    public var grmode: Int8
    public var status: Int8
    public var asts: Int8
    public var waitType: UInt16
    public var namelen: UInt16
    /// `rl_name`: the full 64-byte field (name, zero padded).
    public var nameField: ByteBuffer

    public static let size = WireLimits.rcomLockSize

    public init(ownpid: UInt32 = 0, lkid: UInt32 = 0, remid: UInt32 = 0, parentLkid: UInt32 = 0,
                parentRemid: UInt32 = 0, exflags: UInt32 = 0, flags: UInt32 = 0, lvbseq: UInt32 = 0,
                result: Int32 = 0, rqmode: Int8 = 0, grmode: Int8 = 0, status: Int8 = 0, asts: Int8 = 0,
                waitType: UInt16 = 0, name: ByteBuffer) {
        self.ownpid = ownpid
        self.lkid = lkid
        self.remid = remid
        self.parentLkid = parentLkid
        self.parentRemid = parentRemid
        self.exflags = exflags
        self.flags = flags
        self.lvbseq = lvbseq
        self.result = result
        self.rqmode = rqmode
        self.grmode = grmode
        self.status = status
        self.asts = asts
        self.waitType = waitType
        self.namelen = UInt16(min(name.readableBytes, WireLimits.maxResourceNameLength))
        var field = ByteBuffer()
        field.reserveCapacity(WireLimits.maxResourceNameLength)
        var n = name.getSlice(at: name.readerIndex, length: Int(namelen)) ?? ByteBuffer()
        field.writeBuffer(&n)
        field.writeRepeatingByte(0, count: WireLimits.maxResourceNameLength - field.readableBytes)
        self.nameField = field
    }

    /// The resource name: the first `rl_namelen` bytes of `rl_name` (at most 64).
    public var name: ByteBuffer {
        nameField.getSlice(at: nameField.readerIndex, length: min(Int(namelen), nameField.readableBytes)) ?? ByteBuffer()
    }

    @inlinable
    static func decode(_ r: FieldReader, at p: Int) throws(WireError) -> RcomLock {
        var lock = RcomLock(name: ByteBuffer())
        lock.ownpid = try r.u32(p, "rl_ownpid")
        lock.lkid = try r.u32(p + 4, "rl_lkid")
        lock.remid = try r.u32(p + 8, "rl_remid")
        lock.parentLkid = try r.u32(p + 12, "rl_parent_lkid")
        lock.parentRemid = try r.u32(p + 16, "rl_parent_remid")
        lock.exflags = try r.u32(p + 20, "rl_exflags")
        lock.flags = try r.u32(p + 24, "rl_flags")
        lock.lvbseq = try r.u32(p + 28, "rl_lvbseq")
        lock.result = try r.i32(p + 32, "rl_result")
        lock.rqmode = try r.i8(p + 36, "rl_rqmode")
        lock.grmode = try r.i8(p + 37, "rl_grmode")
        lock.status = try r.i8(p + 38, "rl_status")
        lock.asts = try r.i8(p + 39, "rl_asts")
        lock.waitType = try r.u16(p + 40, "rl_wait_type")
        lock.namelen = try r.u16(p + 42, "rl_namelen")
        lock.nameField = try r.slice(p + 44, WireLimits.maxResourceNameLength, "rl_name")
        return lock
    }

    @inlinable
    func encode(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(ownpid, lkid, remid, parentLkid, parentRemid, exflags, flags, lvbseq,
                                     UInt32(bitPattern: result), endianness: .little)
        buffer.writeMultipleIntegers(UInt8(bitPattern: rqmode), UInt8(bitPattern: grmode), UInt8(bitPattern: status),
                                     UInt8(bitPattern: asts))
        buffer.writeMultipleIntegers(waitType, namelen, endianness: .little)
        var field = nameField
        let n = min(field.readableBytes, WireLimits.maxResourceNameLength)
        if var head = field.readSlice(length: n) { buffer.writeBuffer(&head) }
        buffer.writeRepeatingByte(0, count: WireLimits.maxResourceNameLength - n)
    }
}
