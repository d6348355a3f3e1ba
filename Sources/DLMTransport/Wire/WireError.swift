/// A decoding failure: which field, where, and what was found there.
///
/// Every problem caused by received bytes is one of these values; nothing in the codec
/// traps on input. `offset` counts from the first byte of the outermost message.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, Hashable, Sendable {
        /// Fewer bytes than the field or structure needs.
        case truncated
        /// `h_length` outside 16...4096 (framing cannot continue).
        case invalidLength
        /// A length field that disagrees with the bytes present (inner vs outer, slot count, ...).
        case lengthMismatch
        /// An `h_cmd` (or `o_nextcmd`) this protocol does not define.
        case unknownCommand
        /// A field whose value is outside what the protocol allows.
        case invalidValue
    }

    public var kind: Kind
    /// Kernel name of the field, e.g. `h_length`, `o_nextcmd`, `rf_num_slots`.
    public var field: String
    /// Byte offset of the field from the start of the outermost message.
    public var offset: Int
    /// The offending value (or the number of bytes available, for `truncated`).
    public var value: Int64
    /// One sentence for a human.
    public var detail: String

    public init(_ kind: Kind, field: String, offset: Int, value: Int64, _ detail: String) {
        self.kind = kind
        self.field = field
        self.offset = offset
        self.value = value
        self.detail = detail
    }

    public var description: String {
        "\(kind.rawValue): \(field) at offset \(offset) (value \(value)): \(detail)"
    }
}
