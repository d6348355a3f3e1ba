import NIOCore

/// A message rendered as an ordered list of named fields, the names being those of the
/// kernel's `dlm_*_message`/`dlm_*_rcom` tracepoints. One rendering feeds both the
/// one-line text form and JSON, so the two never disagree.
public struct FieldList: Sendable, Hashable {
    public enum Value: Sendable, Hashable {
        case int(Int64)
        case uint(UInt64)
        /// A 32-bit id shown in hex (h_lockspace, m_hash, lkids).
        case hex32(UInt32)
        case hex64(UInt64)
        /// A symbolic name (mode, type, flag set, version).
        case symbol(String)
        /// Raw bytes, shown as hex; `text` is the printable form when every byte is printable.
        case bytes([UInt8])
        case list([Value])
        case fields(FieldList)
    }

    public var entries: [(String, Value)]

    public init(_ entries: [(String, Value)] = []) { self.entries = entries }

    public mutating func append(_ name: String, _ value: Value) { entries.append((name, value)) }

    public subscript(name: String) -> Value? { entries.first { $0.0 == name }?.1 }

    public static func == (a: FieldList, b: FieldList) -> Bool {
        a.entries.count == b.entries.count && zip(a.entries, b.entries).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    }

    public func hash(into hasher: inout Hasher) {
        for (k, v) in entries {
            hasher.combine(k)
            hasher.combine(v)
        }
    }

    /// `name=value name=value ...`; nested lists in brackets.
    public var text: String {
        entries.map { "\($0.0)=\(Self.text($0.1))" }.joined(separator: " ")
    }

    static func text(_ v: Value) -> String {
        switch v {
        case .int(let i): return String(i)
        case .uint(let u): return String(u)
        case .hex32(let x): return "0x" + hex(x, width: 8)
        case .hex64(let x): return "0x" + hex(x, width: 16)
        case .symbol(let s): return s
        case .bytes(let b): return bytesText(b)
        case .list(let items): return "[" + items.map { text($0) }.joined(separator: ",") + "]"
        case .fields(let f): return "{" + f.text + "}"
        }
    }

    /// Printable ASCII names in quotes, anything else as 0x hex (tracepoints print hex).
    static func bytesText(_ b: [UInt8]) -> String {
        if !b.isEmpty, b.allSatisfy({ $0 >= 0x20 && $0 < 0x7F && $0 != 0x22 && $0 != 0x5C }) {
            return "\"" + String(decoding: b, as: UTF8.self) + "\""
        }
        if b.isEmpty { return "\"\"" }
        return "0x" + b.map { hex($0, width: 2) }.joined()
    }
}

extension FieldList: Encodable {
    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        for (k, v) in entries {
            try c.encode(JSONValue(v), forKey: Key(k))
        }
    }

    struct JSONValue: Encodable {
        var value: Value
        init(_ v: Value) { value = v }
        func encode(to encoder: Encoder) throws {
            var c = encoder.singleValueContainer()
            switch value {
            case .int(let i): try c.encode(i)
            case .uint(let u): try c.encode(u)
            case .hex32(let x): try c.encode(x)
            case .hex64(let x): try c.encode(x)
            case .symbol(let s): try c.encode(s)
            case .bytes(let b): try c.encode(b.map { hex($0, width: 2) }.joined())
            case .list(let items): try c.encode(items.map(JSONValue.init))
            case .fields(let f): try c.encode(f)
            }
        }
    }
}
