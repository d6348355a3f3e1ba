import NIOCore

/// `struct dlm_header`: the 16-byte little-endian prefix of every message.
public struct DLMHeader: Hashable, Sendable {
    /// `h_version`.
    public var version: ProtocolVersion
    /// `u.h_lockspace` (DLM_MSG, DLM_RCOM) or `u.h_seq` (DLM_OPTS, DLM_ACK); 0 in an inner FIN.
    public var word: UInt32
    /// `h_nodeid`: the sender.
    public var nodeID: UInt32
    /// `h_length`: the whole message including this header.
    public var length: UInt16
    /// `h_cmd`, raw (see `HeaderCommand`).
    public var command: UInt8
    /// `h_pad`, kept so that a decode/encode round trip is byte exact.
    public var pad: UInt8

    public init(version: ProtocolVersion, word: UInt32, nodeID: UInt32, length: UInt16, command: UInt8, pad: UInt8 = 0) {
        self.version = version
        self.word = word
        self.nodeID = nodeID
        self.length = length
        self.command = command
        self.pad = pad
    }

    public init(version: ProtocolVersion, word: UInt32, nodeID: UInt32, length: UInt16, command: HeaderCommand) {
        self.init(version: version, word: word, nodeID: nodeID, length: length, command: command.rawValue)
    }

    public var lockspace: UInt32 {
        get { word }
        set { word = newValue }
    }

    public var seq: UInt32 {
        get { word }
        set { word = newValue }
    }

    public var knownCommand: HeaderCommand? { HeaderCommand(rawValue: command) }

    public static let size = WireLimits.headerSize

    /// Reads the header at `offset` of `buffer` (relative to its reader index).
    /// `base` is added to error offsets. Checks nothing but that 16 bytes are there.
    @inlinable
    public static func peek(_ buffer: ByteBuffer, at offset: Int = 0, base: Int = 0) throws(WireError) -> DLMHeader {
        guard offset >= 0, buffer.readableBytes - offset >= size else {
            throw WireError(.truncated, field: "dlm_header", offset: base + offset,
                            value: Int64(max(0, buffer.readableBytes - offset)),
                            "a dlm_header needs 16 bytes")
        }
        return buffer.withUnsafeReadableBytes { raw in
            DLMHeader(
                version: ProtocolVersion(rawValue: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self))),
                word: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)),
                nodeID: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self)),
                length: UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt16.self)),
                command: raw[offset + 14], pad: raw[offset + 15])
        }
    }

    /// Writes the 16 bytes, with `length` as given (callers pass the computed length).
    @inlinable
    public func write(into buffer: inout ByteBuffer, length: Int) {
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.size) { raw in
            store(into: raw, length: length)
            return Self.size
        }
    }

    /// Stores the 16 bytes at the start of `raw`, which must hold at least 16 bytes.
    @inlinable
    func store(into raw: UnsafeMutableRawBufferPointer, length: Int) {
        raw.storeBytes(of: version.rawValue.littleEndian, toByteOffset: 0, as: UInt32.self)
        raw.storeBytes(of: word.littleEndian, toByteOffset: 4, as: UInt32.self)
        raw.storeBytes(of: nodeID.littleEndian, toByteOffset: 8, as: UInt32.self)
        raw.storeBytes(of: UInt16(truncatingIfNeeded: length).littleEndian, toByteOffset: 12, as: UInt16.self)
        raw[14] = command
        raw[15] = pad
    }
}

/// Little-endian field reader over one message held in a `ByteBuffer`, with offsets relative
/// to the message start and errors that name the field.
@usableFromInline
struct FieldReader {
    @usableFromInline let buffer: ByteBuffer
    @usableFromInline let start: Int
    /// Added to offsets in errors (where this message sits inside an outer one).
    @usableFromInline let base: Int

    @inlinable
    init(_ buffer: ByteBuffer, base: Int) {
        self.buffer = buffer
        self.start = buffer.readerIndex
        self.base = base
    }

    @inlinable
    var count: Int { buffer.readableBytes }

    /// The integer of type `T` at `offset`, or a `truncated` error naming `field`.
    @inlinable
    func integer<T: FixedWidthInteger>(_ offset: Int, _ field: StaticString, _ endianness: Endianness = .little,
                                       as: T.Type = T.self) throws(WireError) -> T {
        let size = MemoryLayout<T>.size
        guard offset >= 0, offset + size <= count,
              let v = buffer.getInteger(at: start + offset, endianness: endianness, as: T.self) else {
            throw truncated(offset, field, size)
        }
        return v
    }

    @inlinable
    func u32(_ offset: Int, _ field: StaticString) throws(WireError) -> UInt32 { try integer(offset, field) }
    @inlinable
    func i32(_ offset: Int, _ field: StaticString) throws(WireError) -> Int32 { try integer(offset, field) }
    @inlinable
    func u64(_ offset: Int, _ field: StaticString) throws(WireError) -> UInt64 { try integer(offset, field) }
    @inlinable
    func u16(_ offset: Int, _ field: StaticString) throws(WireError) -> UInt16 { try integer(offset, field) }
    @inlinable
    func be16(_ offset: Int, _ field: StaticString) throws(WireError) -> UInt16 { try integer(offset, field, .big) }
    @inlinable
    func u8(_ offset: Int, _ field: StaticString) throws(WireError) -> UInt8 { try integer(offset, field) }
    @inlinable
    func i8(_ offset: Int, _ field: StaticString) throws(WireError) -> Int8 { try integer(offset, field) }

    @inlinable
    func slice(_ offset: Int, _ length: Int, _ field: StaticString) throws(WireError) -> ByteBuffer {
        guard length >= 0, offset + length <= count, let s = buffer.getSlice(at: start + offset, length: length) else {
            throw truncated(offset, field, length)
        }
        return s
    }

    @inlinable
    func rest(from offset: Int) -> ByteBuffer {
        buffer.getSlice(at: start + offset, length: max(0, count - offset)) ?? ByteBuffer()
    }

    @usableFromInline
    func truncated(_ offset: Int, _ field: StaticString, _ need: Int) -> WireError {
        WireError(.truncated, field: "\(field)", offset: base + offset, value: Int64(count),
                  "message of \(count) bytes ends before \(field) (\(need) bytes at offset \(offset))")
    }
}
