import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A kernel DLM uevent (recovery.md §2.4): `online@/kernel/dlm/<ls>` or `offline@...`.
public enum DLMUevent: Hashable, Sendable {
    case online(String)
    case offline(String)

    /// Parses the first NUL-terminated string of a uevent message (what dlm_controld reads);
    /// nil for any other action or subsystem.
    public static func parse(_ message: [UInt8]) -> DLMUevent? {
        let head = String(decoding: message.prefix { $0 != 0 }, as: UTF8.self)
        guard let at = head.firstIndex(of: "@") else { return nil }
        let action = head[..<at]
        let path = head[head.index(after: at)...]
        let prefix = "/kernel/dlm/"
        guard path.hasPrefix(prefix) else { return nil }
        let ls = String(path.dropFirst(prefix.count))
        guard !ls.isEmpty, !ls.contains("/") else { return nil }
        switch action {
        case "online": return .online(ls)
        case "offline": return .offline(ls)
        default: return nil
        }
    }
}

#if os(Linux)
/// A NETLINK_KOBJECT_UEVENT socket (multicast group 1) read on its own thread.
public final class UeventListener: @unchecked Sendable {
    private let fd: Int32
    private let handler: @Sendable (DLMUevent) -> Void

    /// Binds the socket (so that no event after this returns is missed); `start` reads.
    public init(handler: @escaping @Sendable (DLMUevent) -> Void) throws {
        let s = socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 15 /* NETLINK_KOBJECT_UEVENT */)
        guard s >= 0 else {
            throw LocalControlError("uevent socket: \(String(cString: strerror(errno)))")
        }
        // struct sockaddr_nl { sa_family_t nl_family; unsigned short nl_pad; __u32 nl_pid; __u32 nl_groups; }
        var sa = [UInt8](repeating: 0, count: 12)
        sa[0] = UInt8(AF_NETLINK & 0xff)
        sa[8] = 1   // nl_groups = 1 (little endian)
        let rc = sa.withUnsafeBytes {
            bind(s, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(12))
        }
        guard rc == 0 else {
            let e = String(cString: strerror(errno))
            close(s)
            throw LocalControlError("uevent socket bind: \(e)")
        }
        var size: Int32 = 1 << 20
        _ = setsockopt(s, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        fd = s
        self.handler = handler
    }

    public func start() {
        let t = Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 8192)
            while true {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n < 0 {
                    if errno == EINTR || errno == ENOBUFS { continue }
                    return
                }
                if let ev = DLMUevent.parse(Array(buf[0..<n])) { handler(ev) }
            }
        }
        t.name = "uevent"
        t.start()
    }
}
#endif
