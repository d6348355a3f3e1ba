import DLMTransport

/// A resource name as a dictionary key. Hashed once with the kernel's jhash (the value every
/// rsb carries anyway) instead of feeding `Hasher` one byte at a time: name hashing was the
/// largest cost of a local lock + unlock.
struct ResourceName: Hashable, Sendable {
    let bytes: [UInt8]
    let jhash: UInt32

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.jhash = JHash.hash(bytes)
    }

    static func == (a: ResourceName, b: ResourceName) -> Bool {
        a.jhash == b.jhash && a.bytes == b.bytes
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(jhash)
    }
}

extension Dictionary where Key == ResourceName {
    /// Look-up by the name's bytes (the rsb table's call sites speak `[UInt8]`).
    subscript(name: [UInt8]) -> Value? {
        get { self[ResourceName(name)] }
        _modify { yield &self[ResourceName(name)] }
    }

    /// The names, sorted as bytes.
    var sortedNames: [[UInt8]] {
        keys.map(\.bytes).sorted { $0.lexicographicallyPrecedes($1) }
    }
}
