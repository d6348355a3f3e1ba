import DLMTransport
import Foundation
import NIOCore

/// What `dlm-peer locks LS` shows: the lockspace's resources with their master, value block and
/// the granted, conversion, waiting and lookup queues (the kernel's debugfs `<ls>` file), the
/// directory records this node keeps, and the operations waiting for a reply (`<ls>_waiters`).
/// Encoded as JSON with snake_case keys; `text` renders the kernel's layout.
public struct LockDump: Codable, Sendable, Equatable {
    public struct Lock: Codable, Sendable, Equatable {
        /// `lkb_id`.
        public var lkid: UInt32
        /// `%08x`.
        public var lkidHex: String
        /// "granted", "convert", "waiting", or "lookup" (parked on the rsb's lookup list), or
        /// "none" (a request in flight, on no queue; such locks are listed under waiters).
        public var queue: String
        public var grmode: String
        public var rqmode: String
        /// `lkb_nodeid`: on the master the owner (0 = ours), on an owner the master (-1 = unknown).
        public var nodeid: Int32
        /// `lkb_remid`: the other copy's lock id.
        public var remid: UInt32
        public var pid: UInt32
        /// `lkb_exflags` by name.
        public var exflags: [String]
        /// `sb_flags` by name.
        public var sbflags: [String]
        /// The awaited reply's `DLM_MSG` type number, 0 when none (`lkb_wait_type`).
        public var waitType: UInt32
        public var lvbSeq: UInt32
        /// The lock's value block (hex) when it has one.
        public var lvb: String?
        /// A master copy: the lock belongs to node `nodeid`.
        public var masterCopy: Bool
        /// Who took it through the lock API ("api", "cli", "hold", "run"), "orphan" for an orphan
        /// (a PERSISTENT lock whose owner went away); nil for others.
        public var owner: String?
    }

    public struct Resource: Codable, Sendable, Equatable {
        /// The name with unprintable bytes as '.', as debugfs prints it.
        public var name: String
        public var nameHex: String
        public var length: Int
        /// The name's jhash (`res_hash`), also printed where the kernel prints the rsb address.
        public var hash: String
        /// The master's node id; nil while unknown.
        public var master: UInt32?
        /// `res_nodeid` as the kernel keeps it: 0 = this node masters it, -1 = looking up, else the master.
        public var resNodeid: Int32
        public var directoryNode: UInt32
        /// `res_first_lkid`: the request doing the master lookup.
        public var firstLkid: UInt32
        public var active: Bool
        public var lvb: String?
        public var lvbSeq: UInt32
        public var valueNotValid: Bool
        public var granted: [Lock]
        public var converting: [Lock]
        public var waiting: [Lock]
        public var lookup: [Lock]
    }

    public struct Waiter: Codable, Sendable, Equatable {
        public var lkid: UInt32
        public var lkidHex: String
        /// The awaited reply's message type number and name.
        public var waitType: UInt32
        public var waitTypeName: String
        /// Replies still expected (an unlock/cancel overlapping a request counts twice).
        public var waitCount: Int
        /// `lkb_nodeid` (the node asked).
        public var nodeid: Int32
        public var resource: String
    }

    public struct DirectoryRecord: Codable, Sendable, Equatable {
        public var name: String
        public var nameHex: String
        public var master: UInt32
    }

    public var lockspace: String
    /// `h_lockspace` in hex.
    public var id: String
    public var node: UInt32
    public var lvbLength: Int
    public var members: [UInt32]
    /// Active resources (those with locks), sorted by name.
    public var resources: [Resource]
    /// Inactive resources kept for reuse (cached masters, masters without locks), sorted by name.
    public var inactive: [Resource]
    public var directory: [DirectoryRecord]
    public var waiters: [Waiter]

    // MARK: - Building

    static func printable(_ name: [UInt8]) -> String {
        String(name.map { (0x20...0x7e).contains($0) ? Character(UnicodeScalar($0)) : "." })
    }

    static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    static func hex8(_ v: UInt32) -> String { String(format: "%08x", v) }

    static func mode(_ m: LockMode) -> String {
        switch m {
        case .iv: return "--"
        case .nl, .cr, .cw, .pr, .pw, .ex: return m.description
        }
    }

    static func flagList(_ value: UInt32, _ table: [(UInt32, String)]) -> [String] {
        table.filter { value & $0.0 != 0 }.map(\.1)
    }

    init(lockspace: String, id: UInt32, node: UInt32, members: [UInt32], manager lm: LockManager,
         owners: [UInt32: DLMLockOwner]) {
        self.lockspace = lockspace
        self.id = "0x" + String(id, radix: 16)
        self.node = node
        self.lvbLength = lm.config.lvbLength
        self.members = members
        var views: [UInt32: LockManager.LockView] = [:]
        for v in lm.lockViews { views[v.lock.id] = v }
        let orphans = Set(lm.orphans)
        func lock(_ e: LockEntry, queue: String) -> Lock {
            let v = views[e.id]
            return Lock(lkid: e.id, lkidHex: Self.hex8(e.id), queue: queue, grmode: Self.mode(e.grantedMode),
                        rqmode: Self.mode(e.requestedMode), nodeid: e.nodeID, remid: e.remoteID, pid: e.pid,
                        exflags: Self.flagList(e.flags.rawValue, LockFlags.names),
                        sbflags: Self.flagList(e.statusFlags.rawValue, StatusBlockFlags.names),
                        waitType: v?.waitType?.rawValue ?? 0, lvbSeq: e.lvbSeq, lvb: e.lvb.map(Self.hex),
                        masterCopy: v?.isMasterCopy ?? e.isMasterCopy,
                        owner: owners[e.id]?.rawValue ?? (orphans.contains(e.id) ? "orphan" : nil))
        }
        var active: [Resource] = []
        var inactive: [Resource] = []
        for r in lm.resourceViews {
            let dir = lm.directoryNode(hash: r.hash)
            // A directory record of a name mastered elsewhere is not a resource of ours.
            if !r.active && r.master != node && r.master != 0 && dir == node { continue }
            let resNodeid: Int32 = r.master == node ? 0 : (r.master == 0 ? -1 : Int32(bitPattern: r.master))
            let res = r.resource
            let lookup = r.lookupList.compactMap { id -> Lock? in
                views[id].map { lock($0.lock, queue: "lookup") }
            }
            let entry = Resource(
                name: Self.printable(r.name), nameHex: Self.hex(r.name), length: r.name.count,
                hash: Self.hex8(r.hash), master: r.master == 0 ? nil : r.master, resNodeid: resNodeid,
                directoryNode: dir, firstLkid: r.firstLkid, active: r.active, lvb: res.lvb.map(Self.hex),
                lvbSeq: res.lvbSeq, valueNotValid: res.valueNotValid,
                granted: res.grantQueue.map { lock($0, queue: "granted") },
                converting: res.convertQueue.map { lock($0, queue: "convert") },
                waiting: res.waitQueue.map { lock($0, queue: "waiting") }, lookup: lookup)
            if r.active { active.append(entry) } else { inactive.append(entry) }
        }
        self.resources = active
        self.inactive = inactive
        self.directory = lm.directory.map { name, master in
            DirectoryRecord(name: Self.printable(name), nameHex: Self.hex(name), master: master)
        }.sorted { $0.nameHex < $1.nameHex }
        self.waiters = lm.lockViews.compactMap { v -> Waiter? in
            guard v.waitType != nil || v.waitCount > 0 else { return nil }
            let wait = v.waitType ?? (v.overlapUnlock ? MessageType.unlock : .cancel)
            return Waiter(lkid: v.lock.id, lkidHex: Self.hex8(v.lock.id), waitType: wait.rawValue,
                          waitTypeName: wait.description, waitCount: v.waitCount, nodeid: v.lock.nodeID,
                          resource: Self.printable(v.name))
        }
    }

    // MARK: - Text

    /// The kernel's debugfs layout: `<ls>` (print_format1) for each active resource, then the
    /// directory records and `<ls>_waiters` lines (`lkid wait_type nodeid name`).
    public var text: String {
        var out = "lockspace \(lockspace) (\(id)) on node \(node): \(resources.count) resources"
        out += ", \(resources.reduce(0) { $0 + $1.granted.count + $1.converting.count + $1.waiting.count + $1.lookup.count }) locks"
        out += ", members \(members.map(String.init).joined(separator: ","))\n"
        for r in resources { out += Self.format1(r, lvbLength: lvbLength) }
        if !inactive.isEmpty {
            out += "\nInactive resources\n"
            for r in inactive {
                out += "\"\(r.name)\" \(r.master.map { $0 == node ? "master" : "master node \($0)" } ?? "master unknown")\n"
            }
        }
        out += "\nDirectory (names whose directory node is \(node))\n"
        for d in directory { out += "\"\(d.name)\" master \(d.master)\n" }
        out += "\nWaiters\n"
        for w in waiters {
            out += "\(String(w.lkid, radix: 16)) \(w.waitType) \(w.nodeid) \(w.resource)\n"
        }
        return out
    }

    static func format1(_ r: Resource, lvbLength: Int) -> String {
        // The kernel prints the rsb's address here; we print its hash in the same width.
        var out = "\nResource \(String(repeating: "0", count: 8))\(r.hash) Name (len=\(r.length)) \"\(r.name)\"\n"
        switch r.resNodeid {
        case 0: out += "Master Copy\n"
        case -1: out += "Looking up master (lkid \(String(r.firstLkid, radix: 16)))\n"
        default: out += "Local Copy, Master is node \(r.resNodeid)\n"
        }
        if let lvb = r.lvb {
            let bytes = stride(from: 0, to: lvb.count, by: 2).map { i -> String in
                let a = lvb.index(lvb.startIndex, offsetBy: i)
                return String(lvb[a..<lvb.index(a, offsetBy: 2)])
            }
            out += "LVB: "
            for (i, b) in bytes.enumerated() {
                if i == lvbLength / 2 && i > 0 { out += "\n     " }
                out += b + " "
            }
            if r.valueNotValid { out += " (INVALID)" }
            out += "\n"
        }
        func line(_ l: Lock) -> String {
            var s = "\(l.lkidHex) \(l.grmode)"
            if l.queue == "convert" || l.queue == "waiting" { s += " (\(l.rqmode))" }
            if l.nodeid != 0 {
                if l.nodeid != r.resNodeid {
                    s += " Remote: " + String(format: "%3d", l.nodeid) + " " + hex8(l.remid)
                } else {
                    s += " Master:     " + hex8(l.remid)
                }
            }
            if l.waitType != 0 { s += " wait_type: \(l.waitType)" }
            return s + "\n"
        }
        out += "Granted Queue\n"
        for l in r.granted { out += line(l) }
        out += "Conversion Queue\n"
        for l in r.converting { out += line(l) }
        out += "Waiting Queue\n"
        for l in r.waiting { out += line(l) }
        if !r.lookup.isEmpty {
            out += "Lookup Queue\n"
            for l in r.lookup {
                out += "\(l.lkidHex) \(l.rqmode)" + (l.waitType != 0 ? " wait_type: \(l.waitType)" : "") + "\n"
            }
        }
        return out
    }

    // MARK: - JSON

    public static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys]
        return e
    }

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }
}

extension PeerNode {
    /// Dumps of every lockspace, by name.
    public func lockDumps() -> EventLoopFuture<[LockDump]> {
        eventLoop.submit { [self] in
            lockspaces.values.sorted { $0.name < $1.name }.map { dump($0) }
        }
    }

    func dump(_ ls: LockspaceState) -> LockDump {
        LockDump(lockspace: ls.name, id: ls.locks.config.lockspaceID, node: nodeID,
                 members: ls.locks.members.map(\.nodeID), manager: ls.locks, owners: ls.api.mapValues(\.owner))
    }

    /// A dump of lockspace `name`'s lock state, taken on the event loop.
    public func lockDump(lockspace name: String) -> EventLoopFuture<LockDump> {
        eventLoop.submit { [self] in
            guard let ls = lockspaceState(named: name) else {
                throw DLMError(.einval, "not a member of lockspace \(name)")
            }
            return dump(ls)
        }
    }
}
