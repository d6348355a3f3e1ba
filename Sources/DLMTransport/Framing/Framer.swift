import NIOCore

/// Cuts a DLM byte stream (TCP, or SCTP read as a stream) into messages by `h_length`.
///
/// Accepts input in pieces of any size. A frame is returned once all `h_length` bytes are
/// there; `h_length` below 16 or above 4096 is a `FramingError`: the stream cannot be
/// resynchronised after that, so the caller drops the connection (the kernel aborts
/// parsing; we close, which its peer handles as a socket error and recovers from).
public struct DLMFrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = ByteBuffer

    public init() {}

    public mutating func decode(buffer: inout ByteBuffer) throws -> ByteBuffer? {
        guard buffer.readableBytes >= DLMHeader.size,
              let length = buffer.getInteger(at: buffer.readerIndex + 12, endianness: .little, as: UInt16.self)
        else { return nil }
        let n = Int(length)
        guard n >= DLMHeader.size, n <= WireLimits.maxMessageSize else {
            throw FramingError(length: n, nodeID: buffer.getInteger(at: buffer.readerIndex + 8, endianness: .little, as: UInt32.self))
        }
        return buffer.readSlice(length: n)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ByteBuffer? {
        try decode(buffer: &buffer)
    }
}

/// `h_length` outside 16...4096: the stream is lost from here on.
public struct FramingError: Error, Hashable, Sendable, CustomStringConvertible {
    public var length: Int
    /// `h_nodeid` of the bad header, for the log line.
    public var nodeID: UInt32?

    public var asWireError: WireError {
        WireError(.invalidLength, field: "h_length", offset: 12, value: Int64(length),
                  "h_length must be 16...4096; the stream cannot be framed past this point")
    }

    public var description: String {
        "received invalid length header: \(length) (h_nodeid \(nodeID.map(String.init) ?? "?")); must be 16...4096"
    }
}

/// A sans-IO framer: append bytes as they arrive, take whole messages out.
///
/// Wraps NIO's single-step processor so that the same decoder serves both the channel
/// pipeline and pure code (tests, the pcap reader, the fuzzer).
public struct DLMFramer {
    private var processor: NIOSingleStepByteToMessageProcessor<DLMFrameDecoder>
    /// Total bytes consumed as complete frames, for stream offsets in errors.
    public private(set) var consumed: Int = 0

    public init(maximumBufferSize: Int = 1 << 20) {
        processor = NIOSingleStepByteToMessageProcessor(DLMFrameDecoder(), maximumBufferSize: maximumBufferSize)
    }

    /// Feeds `bytes` and calls `body` for every complete frame, in order. Throws
    /// `FramingError` on a bad `h_length` (everything after it is unusable).
    public mutating func append(_ bytes: ByteBuffer, _ body: (ByteBuffer) throws -> Void) throws {
        var count = 0
        try processor.process(buffer: bytes) { frame in
            count += frame.readableBytes
            try body(frame)
        }
        consumed += count
    }

    /// Bytes held back as the start of an incomplete message.
    public var pendingBytes: Int { processor.unprocessedBytes }
}
