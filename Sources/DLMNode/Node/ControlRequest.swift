import DLMTransport
import Foundation

/// One request line of the control socket. The line is words separated by single spaces; names
/// (lockspace, resource) are percent-encoded (`%20` for a space, any byte as `%XX`), lock ids are
/// hex (as the debugfs dumps print them, optional `0x`), options are `key=value` words:
///
/// ```
/// status
/// lock LS RES MODE [flags=NOQUEUE,VALBLK,...] [lvb=HEX] [nowait]
/// hold LS RES MODE [flags=...] [lvb=HEX]          (the connection stays open; see LockControlSession)
/// convert LS LKID MODE [flags=...] [lvb=HEX] [nowait]
/// unlock LS LKID [flags=VALBLK,IVVALBLK,FORCEUNLOCK] [lvb=HEX]
/// cancel LS LKID
/// locks [LS]                                      (no LS: every lockspace, a JSON array)
/// purge LS [node=ID] [pid=PID]                    (release orphan locks; node 0/absent = this node)
/// ```
///
/// A `hold` connection then accepts lines for its lock: `convert MODE [flags=...] [lvb=HEX]`,
/// `cancel` and `unlock [flags=...] [lvb=HEX]` (`HoldRequest`).
///
/// MODE is NL, CR, CW, PR, PW or EX; flag names are the kernel's `DLM_LKF_*` without the prefix,
/// any case. The answer is one JSON line (`LockReply`, `NodeStatus` or `LockDump`).
public enum ControlRequest: Equatable, Sendable {
    case status
    case lock(LockArguments)
    case hold(LockArguments)
    case convert(lockspace: String, lkid: UInt32, mode: LockMode, flags: LockFlags, lvb: [UInt8]?, wait: Bool)
    case unlock(lockspace: String, lkid: UInt32, flags: LockFlags, lvb: [UInt8]?)
    case cancel(lockspace: String, lkid: UInt32)
    /// nil: every lockspace.
    case locks(lockspace: String?)
    /// Release the orphans of process `pid` (0: all) on node `nodeID` (0: this node).
    case purge(lockspace: String, nodeID: UInt32, pid: UInt32)

    public struct LockArguments: Equatable, Sendable {
        public var lockspace: String
        public var resource: [UInt8]
        public var mode: LockMode
        public var flags: LockFlags
        public var lvb: [UInt8]?
        /// Answer once granted (or failed); false: answer "queued" at once when it waits.
        public var wait: Bool

        public init(lockspace: String, resource: [UInt8], mode: LockMode, flags: LockFlags = [], lvb: [UInt8]? = nil,
                    wait: Bool = true) {
            self.lockspace = lockspace
            self.resource = resource
            self.mode = mode
            self.flags = flags
            self.lvb = lvb
            self.wait = wait
        }
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible, Sendable {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// The first word of every lock request (for the server's dispatch).
    public static let lockVerbs: Set<String> = ["lock", "hold", "convert", "unlock", "cancel", "locks", "purge"]

    // MARK: - Encoding

    /// The request line (without the newline).
    public var line: String {
        switch self {
        case .status:
            return "status"
        case .lock(let a):
            return (["lock"] + Self.lockWords(a) + (a.wait ? [] : ["nowait"])).joined(separator: " ")
        case .hold(let a):
            return (["hold"] + Self.lockWords(a)).joined(separator: " ")
        case .convert(let ls, let lkid, let mode, let flags, let lvb, let wait):
            var words = ["convert", Self.encodeName(Array(ls.utf8)), String(lkid, radix: 16), mode.description]
            words += Self.optionWords(flags: flags, lvb: lvb)
            if !wait { words.append("nowait") }
            return words.joined(separator: " ")
        case .unlock(let ls, let lkid, let flags, let lvb):
            return (["unlock", Self.encodeName(Array(ls.utf8)), String(lkid, radix: 16)]
                + Self.optionWords(flags: flags, lvb: lvb)).joined(separator: " ")
        case .cancel(let ls, let lkid):
            return "cancel \(Self.encodeName(Array(ls.utf8))) \(String(lkid, radix: 16))"
        case .locks(let ls?):
            return "locks \(Self.encodeName(Array(ls.utf8)))"
        case .locks(nil):
            return "locks"
        case .purge(let ls, let node, let pid):
            return "purge \(Self.encodeName(Array(ls.utf8))) node=\(node) pid=\(pid)"
        }
    }

    static func lockWords(_ a: LockArguments) -> [String] {
        [Self.encodeName(Array(a.lockspace.utf8)), Self.encodeName(a.resource), a.mode.description]
            + optionWords(flags: a.flags, lvb: a.lvb)
    }

    static func optionWords(flags: LockFlags, lvb: [UInt8]?) -> [String] {
        var words: [String] = []
        if !flags.isEmpty { words.append("flags=" + Self.flagNames(flags).joined(separator: ",")) }
        if let lvb { words.append("lvb=" + lvb.map { String(format: "%02x", $0) }.joined()) }
        return words
    }

    /// Percent-encoding: letters, digits and `-._~:/@+` stay, every other byte becomes `%XX`.
    public static func encodeName(_ bytes: [UInt8]) -> String {
        var out = ""
        for b in bytes {
            let c = Character(UnicodeScalar(b))
            if b < 0x80, c.isLetter || c.isNumber || "-._~:/@+".contains(c) {
                out.append(c)
            } else {
                out += String(format: "%%%02X", b)
            }
        }
        return out
    }

    // MARK: - Parsing

    public static func parse(_ line: String) throws(ParseError) -> ControlRequest {
        let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let verb = words.first else { throw ParseError("empty request") }
        let args = Array(words.dropFirst())
        switch verb {
        case "status":
            guard args.isEmpty else { throw ParseError("status takes no arguments") }
            return .status
        case "lock", "hold":
            guard args.count >= 3 else { throw ParseError("usage: \(verb) LOCKSPACE RESOURCE MODE [flags=...] [lvb=HEX]\(verb == "lock" ? " [nowait]" : "")") }
            let ls = try lockspaceName(args[0])
            let resource = try decodeName(args[1], what: "resource name")
            guard !resource.isEmpty, resource.count <= WireLimits.maxResourceNameLength else {
                throw ParseError("a resource name has 1...\(WireLimits.maxResourceNameLength) bytes, not \(resource.count)")
            }
            let mode = try parseMode(args[2])
            let o = try options(Array(args.dropFirst(3)), allowWait: verb == "lock")
            let a = LockArguments(lockspace: ls, resource: resource, mode: mode, flags: o.flags, lvb: o.lvb, wait: o.wait)
            return verb == "lock" ? .lock(a) : .hold(a)
        case "convert":
            guard args.count >= 3 else { throw ParseError("usage: convert LOCKSPACE LKID MODE [flags=...] [lvb=HEX] [nowait]") }
            let o = try options(Array(args.dropFirst(3)), allowWait: true)
            return .convert(lockspace: try lockspaceName(args[0]), lkid: try parseLkid(args[1]), mode: try parseMode(args[2]),
                            flags: o.flags, lvb: o.lvb, wait: o.wait)
        case "unlock":
            guard args.count >= 2 else { throw ParseError("usage: unlock LOCKSPACE LKID [flags=...] [lvb=HEX]") }
            let o = try options(Array(args.dropFirst(2)), allowWait: false)
            return .unlock(lockspace: try lockspaceName(args[0]), lkid: try parseLkid(args[1]), flags: o.flags, lvb: o.lvb)
        case "cancel":
            guard args.count == 2 else { throw ParseError("usage: cancel LOCKSPACE LKID") }
            return .cancel(lockspace: try lockspaceName(args[0]), lkid: try parseLkid(args[1]))
        case "locks":
            guard args.count <= 1 else { throw ParseError("usage: locks [LOCKSPACE]") }
            return .locks(lockspace: try args.first.map { w throws(ParseError) in try lockspaceName(w) })
        case "purge":
            guard !args.isEmpty else { throw ParseError("usage: purge LOCKSPACE [node=ID] [pid=PID]") }
            var node: UInt32 = 0
            var pid: UInt32 = 0
            for w in args.dropFirst() {
                let number = { (text: Substring) throws(ParseError) -> UInt32 in
                    guard let v = UInt32(text) else { throw ParseError("bad number in \(w.prefix(40))") }
                    return v
                }
                if w.hasPrefix("node=") {
                    node = try number(w.dropFirst(5))
                } else if w.hasPrefix("pid=") {
                    pid = try number(w.dropFirst(4))
                } else {
                    throw ParseError("unexpected word \(w.prefix(40))")
                }
            }
            return .purge(lockspace: try lockspaceName(args[0]), nodeID: node, pid: pid)
        default:
            throw ParseError("unknown request: \(verb.prefix(40))")
        }
    }

    struct Options {
        var flags: LockFlags = []
        var lvb: [UInt8]?
        var wait = true
    }

    static func options(_ words: [String], allowWait: Bool) throws(ParseError) -> Options {
        var o = Options()
        for w in words {
            if w == "nowait" && allowWait {
                o.wait = false
            } else if w.hasPrefix("flags=") {
                o.flags = try parseFlags(String(w.dropFirst(6)))
            } else if w.hasPrefix("lvb=") {
                o.lvb = try parseHex(String(w.dropFirst(4)))
            } else {
                throw ParseError("unexpected word \(w.prefix(40))")
            }
        }
        return o
    }

    static func lockspaceName(_ word: String) throws(ParseError) -> String {
        let bytes = try decodeName(word, what: "lockspace name")
        guard !bytes.isEmpty, bytes.count <= WireLimits.maxLockspaceNameLength,
              let name = String(bytes: bytes, encoding: .utf8) else {
            throw ParseError("bad lockspace name \(word.prefix(70))")
        }
        return name
    }

    public static func decodeName(_ word: String, what: String) throws(ParseError) -> [UInt8] {
        var out: [UInt8] = []
        var bytes = Array(word.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%") {
                guard bytes.count >= 2, bytes.prefix(2).allSatisfy(isHexDigit),
                      let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) else {
                    throw ParseError("bad %-escape in \(what) \(word.prefix(70))")
                }
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return out
    }

    /// NL, CR, CW, PR, PW or EX (any case).
    public static func parseMode(_ word: String) throws(ParseError) -> LockMode {
        guard let m = LockMode.allCases.first(where: { $0 != .iv && $0.description == word.uppercased() }) else {
            throw ParseError("bad mode \(word.prefix(20)): expected NL, CR, CW, PR, PW or EX")
        }
        return m
    }

    /// A lock id in hex (`1a`, `0000001a`, `0x1a`).
    public static func parseLkid(_ word: String) throws(ParseError) -> UInt32 {
        var w = Substring(word)
        if w.hasPrefix("0x") || w.hasPrefix("0X") { w = w.dropFirst(2) }
        guard !w.isEmpty, w.count <= 8, w.utf8.allSatisfy(isHexDigit), let v = UInt32(w, radix: 16), v != 0 else {
            throw ParseError("bad lock id \(word.prefix(20)): expected a non-zero hex id like 0000001a")
        }
        return v
    }

    /// Comma-separated `DLM_LKF_*` names without the prefix (NOQUEUE,VALBLK); an empty word is no flag.
    public static func parseFlags(_ text: String) throws(ParseError) -> LockFlags {
        var flags: LockFlags = []
        for part in text.split(separator: ",", omittingEmptySubsequences: true) {
            var name = part.uppercased()
            if name.hasPrefix("DLM_LKF_") { name.removeFirst(8) }
            guard let bit = LockFlags.names.first(where: { $0.1 == name })?.0 else {
                let known = LockFlags.names.map(\.1).joined(separator: " ")
                throw ParseError("unknown flag \(part.prefix(20)); known: \(known)")
            }
            flags.insert(LockFlags(rawValue: bit))
        }
        return flags
    }

    static func isHexDigit(_ c: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(c)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(c)
    }

    public static func flagNames(_ flags: LockFlags) -> [String] {
        LockFlags.names.filter { flags.rawValue & $0.0 != 0 }.map(\.1)
    }

    /// Hex bytes (an even number of digits, optional `0x`).
    public static func parseHex(_ text: String) throws(ParseError) -> [UInt8] {
        var t = Substring(text)
        if t.hasPrefix("0x") || t.hasPrefix("0X") { t = t.dropFirst(2) }
        let digits = Array(t.utf8)
        guard digits.allSatisfy(isHexDigit) else { throw ParseError("bad hex \(text.prefix(40))") }
        guard digits.count % 2 == 0 else { throw ParseError("bad hex \(text.prefix(40)): odd number of digits") }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        var i = 0
        while i < digits.count {
            guard let v = UInt8(String(decoding: digits[i..<i + 2], as: UTF8.self), radix: 16) else {
                throw ParseError("bad hex \(text.prefix(40))")
            }
            out.append(v)
            i += 2
        }
        return out
    }
}

/// A line a `hold` connection accepts for its lock after the `hold` request.
public enum HoldRequest: Equatable, Sendable {
    /// Convert the held lock (`convert MODE [flags=...] [lvb=HEX]`).
    case convert(mode: LockMode, flags: LockFlags, lvb: [UInt8]?)
    /// Cancel the waiting conversion (or the waiting request, which ends the hold).
    case cancel
    /// Release the lock and end the hold (`unlock [flags=...] [lvb=HEX]`; an LVB implies VALBLK).
    case unlock(flags: LockFlags, lvb: [UInt8]?)

    public static let usage = "a hold connection accepts `convert MODE [flags=...] [lvb=HEX]`, `cancel`, `unlock [flags=...] [lvb=HEX]`"

    public var line: String {
        switch self {
        case .convert(let mode, let flags, let lvb):
            return (["convert", mode.description] + ControlRequest.optionWords(flags: flags, lvb: lvb)).joined(separator: " ")
        case .cancel:
            return "cancel"
        case .unlock(let flags, let lvb):
            return (["unlock"] + ControlRequest.optionWords(flags: flags, lvb: lvb)).joined(separator: " ")
        }
    }

    public static func parse(_ line: String) throws(ControlRequest.ParseError) -> HoldRequest {
        let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        switch words.first {
        case "convert"?:
            guard words.count >= 2 else { throw .init("usage: convert MODE [flags=...] [lvb=HEX]") }
            let o = try ControlRequest.options(Array(words.dropFirst(2)), allowWait: false)
            return .convert(mode: try ControlRequest.parseMode(words[1]), flags: o.flags, lvb: o.lvb)
        case "cancel"?:
            guard words.count == 1 else { throw .init("usage: cancel") }
            return .cancel
        case "unlock"?:
            let o = try ControlRequest.options(Array(words.dropFirst()), allowWait: false)
            return .unlock(flags: o.lvb == nil ? o.flags : o.flags.union(.valBlk), lvb: o.lvb)
        default:
            throw .init(usage)
        }
    }
}

/// The answer to a lock request (and each event of a `hold` connection), one JSON line with
/// snake_case keys.
public struct LockReply: Codable, Sendable, Equatable {
    /// False: `error` says why (the request was refused or the operation failed).
    public var ok: Bool
    /// For `hold` connections: "queued", "granted", "bast", "unlocked", "failed" (the hold is over);
    /// for its conversions "converted" or "convert_failed" (the lock keeps its mode), "cancel"
    /// (the answer to `cancel`), "error" (a line the hold could not act on).
    public var event: String?
    public var lockspace: String?
    public var resource: String?
    public var lkid: UInt32?
    /// `%08x`.
    public var lkidHex: String?
    /// "granted", "queued", "unlocked", "cancelled", "not cancelled" (nothing left to cancel), or the
    /// error code ("EAGAIN", ...).
    public var status: String
    /// `sb_status` (0, -11, -65537, ...).
    public var result: Int32?
    /// The granted mode ("--" when none).
    public var mode: String?
    /// The mode in flight, when queued.
    public var requested: String?
    public var sbFlags: [String]?
    /// The lock's value block, hex.
    public var lvb: String?
    /// For "bast" events: the mode another request waits for.
    public var bastMode: String?
    /// For `purge`: how many of this node's orphan locks were released.
    public var purged: Int?
    public var error: String?

    public init(ok: Bool, status: String) {
        self.ok = ok
        self.status = status
    }

    /// An error answer.
    public static func failure(_ error: any Error, lockspace: String? = nil, lkid: UInt32? = nil) -> LockReply {
        var r = LockReply(ok: false, status: "error")
        r.lockspace = lockspace
        if let lkid {
            r.lkid = lkid
            r.lkidHex = String(format: "%08x", lkid)
        }
        if let e = error as? DLMError {
            r.status = e.code.name
            r.result = e.errno
            r.error = e.description
        } else {
            r.error = "\(error)"
        }
        return r
    }

    /// The answer describing `lock` now.
    public static func describing(_ lock: DLMLock, status: String, ok: Bool = true) -> LockReply {
        let s = lock.status
        var r = LockReply(ok: ok, status: status)
        r.lockspace = lock.lockspace
        r.resource = LockDump.printable(lock.resource)
        r.lkid = lock.lkid
        r.lkidHex = String(format: "%08x", lock.lkid)
        r.result = s.lastResult?.rawValue
        r.mode = LockDump.mode(s.mode)
        r.requested = s.requestedMode.map { LockDump.mode($0) }
        r.sbFlags = LockDump.flagList(s.flags.rawValue, StatusBlockFlags.names)
        r.lvb = s.lvb.map(LockDump.hex)
        return r
    }

    public var json: String {
        let data = (try? LockDump.encoder().encode(self)) ?? Data("{\"ok\":false,\"status\":\"error\"}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// One line for people: `lkid 00000001 granted EX sb_flags VALNOTVALID lvb 6869.. "hi"`.
    public var text: String {
        if !ok { return (event == "convert_failed" ? "conversion failed: " : "error: ") + (error ?? status) }
        if let purged { return "\(status): \(purged) orphan lock(s) of this node released" }
        var s = ""
        if let h = lkidHex { s += "lkid \(h) " }
        switch event {
        case "bast"?:
            return s + "BAST: a \(bastMode ?? "?") request is waiting"
        case "converted"?:
            s += "converted to"
        default:
            s += status
        }
        if let m = mode, m != "--" { s += " \(m)" }
        if let r = requested { s += " (\(r))" }
        if let f = sbFlags, !f.isEmpty { s += " sb_flags " + f.joined(separator: "|") }
        if let lvb, let bytes = try? ControlRequest.parseHex(lvb) {
            var trimmed = bytes
            while trimmed.last == 0 { trimmed.removeLast() }
            s += " lvb \(lvb)"
            if !trimmed.isEmpty, trimmed.allSatisfy({ (0x20...0x7e).contains($0) }) {
                s += " \"\(String(decoding: trimmed, as: UTF8.self))\""
            }
        }
        return s
    }
}
