#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address as the config file writes it, parsed with `inet_pton` and kept in the
/// canonical text form of `inet_ntop` (RFC 5952 for IPv6, the same as Python's `ipaddress`), so
/// that `"10.0.0.1"` and `"fd00::0:1"`/`"fd00::1"` compare as the kernel would compare them.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    public enum Family: String, Hashable, Sendable, CustomStringConvertible {
        case ipv4 = "IPv4"
        case ipv6 = "IPv6"
        public var description: String { rawValue }
    }

    public let family: Family
    /// The address bytes in network order (4 or 16).
    public let bytes: [UInt8]
    /// Canonical text.
    public let description: String

    /// Parses a literal address; `nil` for anything else (names, zone ids, prefixes, ports).
    public init?(_ text: String) {
        if text.contains(":") {
            var a = in6_addr()
            guard inet_pton(AF_INET6, text, &a) == 1 else { return nil }
            family = .ipv6
            bytes = withUnsafeBytes(of: &a) { Array($0) }
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            guard inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count)) != nil else { return nil }
            description = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        } else {
            var a = in_addr()
            guard inet_pton(AF_INET, text, &a) == 1 else { return nil }
            family = .ipv4
            bytes = withUnsafeBytes(of: &a) { Array($0) }
            description = bytes.map(String.init).joined(separator: ".")
        }
    }

    /// 0.0.0.0 or ::.
    public var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }

    /// 224.0.0.0/4, 255.255.255.255, ff00::/8: nothing a node can connect from.
    public var isMulticastOrBroadcast: Bool {
        switch family {
        case .ipv4: return bytes[0] >= 224
        case .ipv6: return bytes[0] == 0xFF
        }
    }
}
