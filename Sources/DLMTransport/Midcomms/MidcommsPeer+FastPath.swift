import NIOCore

extension MidcommsPeer {
    /// The common frame of a 3.2 stream, decoded without the `DLMPacket`/`DLMOpts`/`DLMInner`
    /// values around it: a DLM_OPTS (its outer `header` already peeked) whose inner message is a
    /// DLM_MSG. Returns the message exactly when `DLMPacket.decode(bytes)` would return
    /// `.opts(o)` with `o.inner == .message(m)`: the same checks in the same terms (`h_length`,
    /// `o_optlen`, `o_nextcmd`, the inner `h_cmd` and `h_length`, then `DLMMessage.decode`).
    /// Anything else returns nil, and the caller takes the general path, which decodes the frame
    /// again and reports what is wrong with it.
    @inline(__always)
    static func decodeSequencedMessage(_ bytes: ByteBuffer, header: DLMHeader) -> DLMMessage? {
        let count = bytes.readableBytes
        guard Int(header.length) == count, count >= DLMOpts.headerSize + DLMMessage.fixedSize else { return nil }
        let (nextCmd, optlen) = bytes.withUnsafeReadableBytes { raw in
            (raw[16], Int(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 18, as: UInt16.self))))
        }
        let innerStart = DLMOpts.headerSize + optlen
        guard nextCmd == HeaderCommand.message.rawValue, count - innerStart >= DLMMessage.fixedSize,
              let inner = bytes.getSlice(at: bytes.readerIndex + innerStart, length: count - innerStart),
              let innerHeader = try? DLMHeader.peek(inner),
              innerHeader.command == nextCmd, Int(innerHeader.length) == count - innerStart
        else { return nil }
        return try? DLMMessage.decode(inner, header: innerHeader, base: innerStart)
    }
}
