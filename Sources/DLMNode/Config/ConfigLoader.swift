import DLMTransport
import Foundation
import TOMLKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension ClusterConfig {
    /// Reads and validates a cluster config file.
    /// - Throws: `ConfigError` `.unreadable` (missing, unreadable, not UTF-8) or `.invalid` with
    ///   every error and warning, each naming the file, line and column and what to fix.
    public static func load(path: String) throws(ConfigError) -> ClusterConfig {
        try parse(readText(path), file: path)
    }

    /// Validates config text; `file` names it in messages.
    public static func parse(_ text: String, file: String = "<string>") throws(ConfigError) -> ClusterConfig {
        let result = check(text, file: file)
        if let config = result.config { return config }
        throw ConfigError(.invalid, file: file, diagnostics: result.diagnostics)
    }

    /// Validates config text without throwing: the config when there are no errors, and all
    /// diagnostics (errors and warnings) in file order.
    public static func check(_ text: String, file: String = "<string>") -> (config: ClusterConfig?, diagnostics: [ConfigDiagnostic]) {
        var loader = ConfigLoader(file: file, text: text)
        let config = loader.run()
        let diagnostics = loader.sortedDiagnostics
        if diagnostics.contains(where: { $0.severity == .error }) { return (nil, diagnostics) }
        return (config, diagnostics)
    }

    /// The text of a config file, or `.unreadable` with the reason.
    public static func readText(_ path: String) throws(ConfigError) -> String {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            throw ConfigError(.unreadable, file: path, detail: "it is a directory")
        }
        let fd = open(path, O_RDONLY)
        if fd < 0 {
            throw ConfigError(.unreadable, file: path, detail: String(cString: strerror(errno)))
        }
        close(fd)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(.unreadable, file: path, detail: "read failed")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(.unreadable, file: path, detail: "not UTF-8 text")
        }
        return text
    }
}

// MARK: - Schema

/// Keys of each table, in the order the docs list them (used for "did you mean").
enum ConfigSchema {
    static let root = ["cluster", "node", "lockspace"]
    static let cluster = ["name", "transport", "port", "agent_port", "fence_command", "heartbeat_interval", "heartbeat_timeout"]
    static let node = ["id", "addresses", "kind", "weight", "protocol", "kernel"]
    static let lockspace = ["name", "members", "lvb_length", "flags", "id", "allow_custom_id", "nodir"]

    /// Names people write for a known key that edit distance does not catch.
    static let aliases: [String: String] = [
        "nodes": "node", "lockspaces": "lockspace", "ls": "lockspace", "clusters": "cluster",
        "nodeid": "id", "node_id": "id", "address": "addresses", "addr": "addresses", "ip": "addresses",
        "type": "kind", "proto": "protocol", "version": "protocol", "protocol_version": "protocol",
        "lvblen": "lvb_length", "lvb_len": "lvb_length", "lvb_size": "lvb_length", "lvb": "lvb_length",
        "member": "members", "lsflags": "flags", "exflags": "flags", "global_id": "id",
        "cluster_name": "name", "tcp_port": "port", "fence": "fence_command",
    ]

    /// Keys asking for something dlm-peer deliberately does not offer, with the reason.
    static let refused: [String: String] = {
        let timeouts = "lock timeouts (TIMEOUT/TIMEWARN) are not offered by dlm-peer (deprecated in 6.1 and "
            + "removed from newer kernels)"
        var r: [String: String] = [:]
        for k in ["timeout", "timewarn", "timewarn_cs", "lock_timeout", "lkf_timeout", "timeout_cs"] {
            r[k] = timeouts
        }
        return r
    }()

    /// The closest known key to `key`, if it is close enough to be a likely typo.
    static func suggestion(for key: String, among known: [String]) -> String? {
        let lower = key.lowercased()
        if let a = aliases[lower], known.contains(a) { return a }
        if let exact = known.first(where: { $0 == lower }) { return exact }
        var best: (String, Int)?
        for k in known {
            let d = editDistance(lower, k)
            if d < (best?.1 ?? Int.max) { best = (k, d) }
        }
        guard let (k, d) = best else { return nil }
        let limit = max(1, min(3, k.count / 3))
        return d <= limit ? k : nil
    }

    /// Levenshtein distance.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.unicodeScalars), b = Array(b.unicodeScalars)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var prev = Array(0...b.count)
        var cur = prev
        for i in 1...a.count {
            cur[0] = i
            for j in 1...b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&prev, &cur)
        }
        return prev[b.count]
    }
}

// MARK: - The loader

struct ConfigLoader {
    typealias TableRef = TOMLSourceMap.TableRef

    /// One table of the document and where it is.
    struct Section {
        var table: TOMLTable
        var ref: TableRef
        /// `[cluster]`, `[[node]]`, `[[lockspace]]`.
        var title: String
    }

    /// A field's value, absent, or present but wrong (already reported).
    enum Field<T> {
        case absent
        case invalid
        case value(T)

        var got: T? {
            if case .value(let v) = self { return v }
            return nil
        }
    }

    let file: String
    let text: String
    let map: TOMLSourceMap
    private(set) var diagnostics: [ConfigDiagnostic] = []
    /// A [[node]] whose id is missing or wrong: a member naming an unknown id may mean that node,
    /// so that is not reported a second time.
    var someNodeIDUnknown = false

    init(file: String, text: String) {
        self.file = file
        self.text = text
        self.map = TOMLSourceMap(text)
    }

    var sortedDiagnostics: [ConfigDiagnostic] {
        // Stable: same position keeps the order of discovery.
        diagnostics.enumerated().sorted { a, b in
            a.element.position != b.element.position ? a.element.position < b.element.position : a.offset < b.offset
        }.map(\.element)
    }

    mutating func error(_ at: SourcePosition, _ message: String) {
        diagnostics.append(ConfigDiagnostic(.error, file: file, at: at, message))
    }

    mutating func warning(_ at: SourcePosition, _ message: String) {
        diagnostics.append(ConfigDiagnostic(.warning, file: file, at: at, message))
    }

    // MARK: Run

    mutating func run() -> ClusterConfig? {
        if let nul = text.unicodeScalars.firstIndex(of: "\0") {
            let prefix = text.unicodeScalars[..<nul]
            let line = prefix.filter { $0 == "\n" }.count + 1
            let column = prefix.count - (prefix.lastIndex(of: "\n").map { prefix.distance(from: prefix.startIndex, to: $0) + 1 } ?? 0) + 1
            error(SourcePosition(line: line, column: column), "NUL byte in the file: a config is plain UTF-8 text")
            return nil
        }
        let root: TOMLTable
        do {
            root = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            error(SourcePosition(line: max(1, e.source.begin.line), column: max(1, e.source.begin.column)),
                  "TOML syntax: \(e.description)")
            return nil
        } catch {
            self.error(.start, "TOML syntax: \(error)")
            return nil
        }

        let top = Section(table: root, ref: .root, title: "the top level")
        checkKeys(top, known: ConfigSchema.root)

        var config = ClusterConfig(file: file, name: "", nodes: [], lockspaces: [])
        cluster(root, into: &config)
        config.nodes = nodes(root)
        config.lockspaces = lockspaces(root, nodes: config.nodes)
        config.warnings = sortedDiagnostics.filter { $0.severity == .warning }
        return config
    }

    // MARK: [cluster]

    mutating func cluster(_ root: TOMLTable, into config: inout ClusterConfig) {
        guard let value = root["cluster"] else {
            error(.start, "missing [cluster] table: add [cluster] with name = \"...\" (and transport, port)")
            return
        }
        guard let table = value.table else {
            error(map.key("cluster", in: .root), "cluster must be a table: write [cluster] on a line of its own and its keys below it")
            return
        }
        let s = Section(table: table, ref: TableRef(path: ["cluster"]), title: "[cluster]")
        checkKeys(s, known: ConfigSchema.cluster)

        switch string(s, "name") {
        case .absent:
            error(map.table(s.ref), "[cluster] has no name: add name = \"...\" (the configfs cluster_name, under 32 bytes)")
        case .invalid:
            break
        case .value(let name):
            if name.isEmpty || name.utf8.count > ClusterConfig.maxClusterNameLength
                || name.unicodeScalars.contains(where: { $0.properties.isWhitespace }) {
                error(map.value("name", in: s.ref), "cluster name \(quoted(name)) must be 1 to \(ClusterConfig.maxClusterNameLength) bytes without spaces (it becomes configfs cluster_name)")
            } else {
                config.name = name
            }
        }

        if case .value(let t) = string(s, "transport") {
            if let transport = ClusterConfig.Transport(rawValue: t) {
                config.transport = transport
            } else {
                error(map.value("transport", in: s.ref), "transport \(quoted(t)) is not supported: use \"tcp\" or \"sctp\"")
            }
        }

        if case .value(let port) = integer(s, "port") {
            if (1...65535).contains(port) {
                config.port = port
            } else {
                error(map.value("port", in: s.ref), "port \(port) is out of range: use 1...65535 (the kernel's default is \(ClusterConfig.defaultPort))")
            }
        }

        if case .value(let port) = integer(s, "agent_port") {
            if !(1...65535).contains(port) {
                error(map.value("agent_port", in: s.ref), "agent_port \(port) is out of range: use 1...65535 (default \(ClusterConfig.defaultAgentPort))")
            } else if port == config.port {
                error(map.value("agent_port", in: s.ref), "agent_port \(port) is the DLM port too: the agents need a port of their own (default \(ClusterConfig.defaultAgentPort))")
            } else {
                config.agentPort = port
            }
        } else if config.port == ClusterConfig.defaultAgentPort, table["agent_port"] == nil {
            warning(map.value("port", in: s.ref), "port \(config.port) is the agents' default port: `dlm-peer agent` needs agent_port set to another port")
        }

        if case .value(let cmd) = string(s, "fence_command") {
            if cmd.allSatisfy(\.isWhitespace) {
                error(map.value("fence_command", in: s.ref), "fence_command is empty: give a shell command that fences the failed node, or remove the key")
            } else {
                config.fenceCommand = cmd
            }
        }

        let interval = seconds(s, "heartbeat_interval")
        let timeout = seconds(s, "heartbeat_timeout")
        switch (interval, timeout) {
        case (_, .value(let t)):
            let i = interval.got ?? .seconds(1)
            if case .invalid = interval { break }
            if t < i * 2 {
                error(map.value("heartbeat_timeout", in: s.ref), "heartbeat_timeout (\(secondsText(t))) must be at least twice heartbeat_interval (\(secondsText(i))), so that one late heartbeat does not declare a node failed")
            } else {
                config.heartbeat = .init(interval: i, timeout: t)
                if config.fenceCommand == nil, table["fence_command"] == nil {
                    warning(map.key("heartbeat_timeout", in: s.ref), "heartbeat_timeout without fence_command: a silent node is only reported, never removed (it may still be alive); add fence_command, or remove nodes with `dlm-peer node-down`")
                }
            }
        case (.value, .absent):
            warning(map.key("heartbeat_interval", in: s.ref), "heartbeat_interval has no effect without heartbeat_timeout: add heartbeat_timeout or remove it")
        default:
            break
        }
    }

    // MARK: [[node]]

    mutating func nodes(_ root: TOMLTable) -> [ClusterConfig.Node] {
        guard let sections = arrayOfTables(root, "node", what: "node") else {
            if root["node"] == nil {
                error(.start, "no [[node]] tables: add one [[node]] with id, addresses and kind for every cluster node")
            }
            return []
        }
        if sections.isEmpty {
            error(map.key("node", in: .root), "no nodes: add one [[node]] with id, addresses and kind for every cluster node")
        }
        var result: [ClusterConfig.Node] = []
        var idLines: [UInt32: Int] = [:]
        var addressOwners: [IPAddress: (node: UInt32, line: Int)] = [:]
        var clusterFamily: (family: IPAddress.Family, node: UInt32)?

        for s in sections {
            checkKeys(s, known: ConfigSchema.node)
            let header = map.table(s.ref)

            // id
            var id: UInt32?
            switch integer(s, "id") {
            case .absent:
                someNodeIDUnknown = true
                error(header, "[[node]] has no id: add id = <1...\(ClusterConfig.maxNodeID)>")
            case .invalid:
                someNodeIDUnknown = true
            case .value(let v):
                if v < 1 || v > Int(ClusterConfig.maxNodeID) {
                    someNodeIDUnknown = true
                    error(map.value("id", in: s.ref), "node id \(v) is out of range: use 1...\(ClusterConfig.maxNodeID)")
                } else if let other = idLines[UInt32(v)] {
                    error(map.value("id", in: s.ref), "duplicate node id \(v) (also the [[node]] at line \(other)): give every node its own id")
                } else {
                    id = UInt32(v)
                    idLines[UInt32(v)] = header.line
                }
            }
            // Name the node by the id written, even a duplicate one.
            let writtenID = s.table["id"]?.int.flatMap { (1...Int(ClusterConfig.maxNodeID)).contains($0) ? $0 : nil }
            let who = writtenID.map { "node \($0)" } ?? "this node"

            // kind
            var kind = ClusterConfig.NodeKind.kernel
            var kindValid = true
            if case .value(let k) = string(s, "kind") {
                if let parsed = ClusterConfig.NodeKind(rawValue: k) {
                    kind = parsed
                } else {
                    kindValid = false
                    error(map.value("kind", in: s.ref), "kind \(quoted(k)) is not known: use \"kernel\" (the kernel's DLM, managed by `dlm-peer agent`) or \"peer\" (a `dlm-peer run` process)")
                }
            } else if s.table["kind"] != nil {
                kindValid = false
            }

            // addresses
            var addresses: [IPAddress] = []
            switch stringArray(s, "addresses", example: "[\"10.0.0.1\"]") {
            case .absent:
                error(header, "\(who) has no addresses: add addresses = [\"<IP address>\"] (1 to \(ClusterConfig.maxAddressesPerNode))")
            case .invalid:
                break
            case .value(let list):
                if list.isEmpty {
                    error(map.value("addresses", in: s.ref), "\(who) has no addresses: give 1 to \(ClusterConfig.maxAddressesPerNode) IP addresses")
                }
                for (i, text) in list.enumerated() {
                    let at = map.element(i, of: "addresses", in: s.ref)
                    if i == ClusterConfig.maxAddressesPerNode {
                        error(at, "\(who) has \(list.count) addresses; the kernel takes at most \(ClusterConfig.maxAddressesPerNode) per node (configfs comms addr): remove \(list.count - ClusterConfig.maxAddressesPerNode)")
                    }
                    guard let ip = IPAddress(text) else {
                        if text.contains("%") {
                            error(at, "\(quoted(text)): zone ids are not supported: use an address without %zone (not link-local)")
                        } else if text.contains("/") {
                            error(at, "\(quoted(text)) is a network, not an address: write the node's own address without /prefix")
                        } else {
                            error(at, "\(quoted(text)) is not an IPv4 or IPv6 address: write the address the node's DLM connects from (names are not resolved)")
                        }
                        continue
                    }
                    if ip.isUnspecified || ip.isMulticastOrBroadcast {
                        error(at, "\(ip) cannot be a node address: write the unicast address the node's DLM connects from")
                        continue
                    }
                    if addresses.contains(ip) {
                        error(at, "address \(ip) is listed twice for \(who): remove one (the kernel refuses it with EEXIST)")
                        continue
                    }
                    if let first = addresses.first, first.family != ip.family {
                        error(at, "\(who) mixes \(first.family) and \(ip.family) addresses: the kernel uses one address family per node, like its first address \(first)")
                        continue
                    }
                    if let owner = addressOwners[ip] {
                        error(at, "address \(ip) is also used by node \(owner.node) (line \(owner.line)): every address belongs to one node")
                    } else if let id {
                        addressOwners[ip] = (id, at.line)
                    }
                    addresses.append(ip)
                }
                if let first = addresses.first, let id {
                    if let cf = clusterFamily, cf.family != first.family {
                        error(map.element(0, of: "addresses", in: s.ref), "node \(id) uses \(first.family) but node \(cf.node) uses \(cf.family): every node must use the same address family (the kernel compares incoming connections in the local node's family)")
                    } else if clusterFamily == nil {
                        clusterFamily = (first.family, id)
                    }
                }
            }

            // weight
            var weight = 1
            if case .value(let w) = integer(s, "weight") {
                if (0...ClusterConfig.maxWeight).contains(w) {
                    weight = w
                } else {
                    error(map.value("weight", in: s.ref), "weight \(w) is out of range: use 0...\(ClusterConfig.maxWeight) (0 = never a directory node; the kernel keeps one directory slot per unit of weight)")
                }
            }

            // protocol
            var proto: ProtocolVersion?
            if case .value(let p) = string(s, "protocol") {
                if kindValid, kind == .kernel {
                    error(map.key("protocol", in: s.ref), "protocol is for kind = \"peer\" only (a kernel node speaks what its kernel speaks): remove it")
                } else if p == "3.1" {
                    proto = .v3_1
                } else if p == "3.2" {
                    proto = .v3_2
                } else {
                    error(map.value("protocol", in: s.ref), "protocol \(quoted(p)) is not supported: use \"3.2\" (5.14 and newer) or \"3.1\" (emulate a kernel before 5.14)")
                }
            }
            if kindValid, kind == .peer, proto == nil { proto = .v3_2 }

            // kernel (lab)
            var kernel: String?
            if case .value(let k) = string(s, "kernel") {
                if !ClusterConfig.labKernels.contains(k) {
                    error(map.value("kernel", in: s.ref), "kernel \(quoted(k)) is not one the lab can boot: use \(ClusterConfig.labKernels.map { "\"\($0)\"" }.joined(separator: ", "))")
                } else if kindValid, kind == .peer {
                    warning(map.key("kernel", in: s.ref), "kernel is meaningless for a peer node (lab only: the kernel a VM boots): remove it")
                } else {
                    kernel = k
                }
            }

            if let id {  // even if other fields are wrong: members naming it are not wrong too
                result.append(ClusterConfig.Node(id: id, addresses: addresses, weight: weight, kind: kind,
                                                 emulatedProtocol: proto, kernel: kernel))
            }
        }
        return result
    }

    // MARK: [[lockspace]]

    mutating func lockspaces(_ root: TOMLTable, nodes: [ClusterConfig.Node]) -> [ClusterConfig.Lockspace] {
        guard let sections = arrayOfTables(root, "lockspace", what: "lockspace") else {
            if root["lockspace"] == nil {
                warning(endOfFile, "no [[lockspace]] tables: the nodes have nothing to join; add [[lockspace]] with name and members")
            }
            return []
        }
        let known = Set(nodes.map(\.id))
        var result: [ClusterConfig.Lockspace] = []
        var nameLines: [String: Int] = [:]
        var idOwners: [UInt32: (name: String, line: Int)] = [:]

        for s in sections {
            checkKeys(s, known: ConfigSchema.lockspace)
            let header = map.table(s.ref)
            var valid = true

            var name = ""
            switch string(s, "name") {
            case .absent:
                error(header, "[[lockspace]] has no name: add name = \"...\" (1 to \(WireLimits.maxLockspaceNameLength) bytes)")
                valid = false
            case .invalid:
                valid = false
            case .value(let n):
                name = n
                if n.isEmpty || n.utf8.count > WireLimits.maxLockspaceNameLength || n.contains("/")
                    || n.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 }) {
                    error(map.value("name", in: s.ref), "lockspace name \(quoted(n)) must be 1 to \(WireLimits.maxLockspaceNameLength) bytes without \"/\" or spaces (it names configfs and sysfs directories)")
                    valid = false
                } else if let other = nameLines[n] {
                    error(map.value("name", in: s.ref), "duplicate lockspace name \(quoted(n)) (also the [[lockspace]] at line \(other)): give every lockspace its own name")
                    valid = false
                } else {
                    nameLines[n] = header.line
                }
            }
            let which = name.isEmpty ? "this lockspace" : "lockspace \(quoted(name))"

            // members
            var members: [UInt32] = []
            switch integerArray(s, "members", example: "[1, 2]") {
            case .absent:
                error(header, "\(which) has no members: add members = [<node id>, ...]")
                valid = false
            case .invalid:
                valid = false
            case .value(let list):
                if list.isEmpty {
                    error(map.value("members", in: s.ref), "\(which) has no members: list at least one node id")
                    valid = false
                }
                for (i, m) in list.enumerated() {
                    let at = map.element(i, of: "members", in: s.ref)
                    if m < 1 || m > Int(ClusterConfig.maxNodeID) || !known.contains(UInt32(m)) {
                        valid = false
                        if someNodeIDUnknown, (1...Int(ClusterConfig.maxNodeID)).contains(m) { continue }
                        error(at, "member \(m) of \(which) is not a node: add a [[node]] with id = \(m), or remove it")
                    } else if members.contains(UInt32(m)) {
                        error(at, "member \(m) of \(which) is listed twice: remove one")
                        valid = false
                    } else {
                        members.append(UInt32(m))
                    }
                }
            }

            // lvb_length
            var lvb = ClusterConfig.userLVBLength
            if case .value(let l) = integer(s, "lvb_length") {
                if l < 0 || l > ClusterConfig.maxLVBLength || l % 8 != 0 {
                    error(map.value("lvb_length", in: s.ref), "lvb_length \(l) of \(which) must be a multiple of 8 from 0 to \(ClusterConfig.maxLVBLength) (\(ClusterConfig.userLVBLength) for lockspaces made through /dev/dlm-control)")
                    valid = false
                } else {
                    lvb = l
                    let kernels = members.filter { m in nodes.first { $0.id == m }?.kind == .kernel }
                    if !kernels.isEmpty, l != ClusterConfig.userLVBLength {
                        error(map.value("lvb_length", in: s.ref), "lvb_length is \(l) but kernel node\(kernels.count == 1 ? "" : "s") \(kernels.map(String.init).joined(separator: ", ")) \(kernels.count == 1 ? "is a member" : "are members"): a lockspace made through the kernel's device interface always has lvb_length \(ClusterConfig.userLVBLength)")
                        valid = false
                    }
                }
            }

            // flags
            var flags: UInt32 = 0
            if case .value(let f) = integer(s, "flags") {
                if let problem = Self.flagsProblem(f) {
                    error(map.value("flags", in: s.ref), problem)
                    valid = false
                } else {
                    flags = UInt32(f)
                }
            }

            // nodir
            var nodir = false
            if case .value(let b) = boolean(s, "nodir") { nodir = b }

            // id, allow_custom_id
            var allowCustom = false
            if case .value(let b) = boolean(s, "allow_custom_id") { allowCustom = b }
            var globalID = name.isEmpty ? 0 : lockspaceGlobalID(name)
            if case .value(let v) = integer(s, "id") {
                let at = map.value("id", in: s.ref)
                if v < 1 || v > Int(UInt32.max) {
                    error(at, "id \(v) of \(which) is out of range: a global id is 1...0xffffffff (0 matches a kernel lockspace whose id was never written)")
                    valid = false
                } else if !name.isEmpty, UInt32(v) != globalID, !allowCustom {
                    error(at, "id \(hex32(UInt32(v))) of \(which) is not its global id \(hex32(globalID)) (CRC-32 of \"dlm:ls:\(name)\\0\", what dlm_controld writes): remove id, or add allow_custom_id = true to test a wrong id")
                    valid = false
                } else {
                    globalID = UInt32(v)
                }
            }
            if valid, !name.isEmpty {
                if let other = idOwners[globalID] {
                    error(map.value(s.table["id"] != nil ? "id" : "name", in: s.ref), "lockspace \(quoted(name)) has the same global id \(hex32(globalID)) as lockspace \(quoted(other.name)) (line \(other.line)): the kernel matches messages by id only; rename one")
                    valid = false
                } else {
                    idOwners[globalID] = (name, header.line)
                }
            }

            if valid {
                result.append(ClusterConfig.Lockspace(name: name, globalID: globalID, members: members,
                                                      lvbLength: lvb, flags: flags, nodir: nodir))
            }
        }
        return result
    }

    /// Why an `ls_exflags` value cannot be used (recovery.md §1.4), or nil for 0.
    static func flagsProblem(_ f: Int) -> String? {
        if f == 0 { return nil }
        if f < 0 || f > Int(UInt32.max) {
            return "flags \(f) is not a 32-bit flag word: remove flags (every kernel lockspace has ls_exflags 0)"
        }
        if f & 0x2 != 0 {
            return "flags \(hex32(UInt32(f))) asks for TIMEWARN (0x2): lock timeouts (TIMEOUT/TIMEWARN) are not offered by dlm-peer (deprecated in 6.1 and removed from newer kernels); remove it"
        }
        if f & 0x1 != 0 {
            return "flags \(hex32(UInt32(f))) has bit 0x1 (the old DLM_LSFL_NODIR): current kernels take nodir from sysfs, not from the lockspace flags, and would see a config mismatch; remove it and write nodir = true"
        }
        if f & 0x1C != 0 {
            return "flags \(hex32(UInt32(f))) has creation-only bits (FS 0x4, NEWEXCL 0x8, SOFTIRQ 0x10) that never reach ls_exflags; remove them"
        }
        return "flags \(hex32(UInt32(f))) has bits no kernel knows: every kernel lockspace has ls_exflags 0 and RCOM_STATUS would fail with a config mismatch; remove flags"
    }

    // MARK: Unknown keys

    mutating func checkKeys(_ s: Section, known: [String]) {
        for key in s.table.keys where !known.contains(key) {
            let at = map.key(key, in: s.ref)
            let place = s.ref == .root ? "at the top level" : "in \(s.title)"
            if let reason = ConfigSchema.refused[key.lowercased()] {
                error(at, "\(key) \(place) is refused: \(reason); remove it")
            } else if let hint = ConfigSchema.suggestion(for: key, among: known) {
                let written = s.ref == .root ? (hint == "cluster" ? "[cluster]" : "[[\(hint)]]") : "\"\(hint)\""
                error(at, "unknown key \(quoted(key)) \(place): did you mean \(written)?")
            } else {
                error(at, "unknown key \(quoted(key)) \(place): remove it (known keys: \(known.joined(separator: ", ")))")
            }
        }
    }

    // MARK: Typed access

    /// The tables of `[[key]]`, nil if absent or not an array of tables (reported).
    mutating func arrayOfTables(_ root: TOMLTable, _ key: String, what: String) -> [Section]? {
        guard let value = root[key] else { return nil }
        if value.table != nil {
            error(map.key(key, in: .root), "\(key) must be an array of tables: write [[\(key)]] (double brackets), one per \(what)")
            return nil
        }
        guard let array = value.array else {
            error(map.key(key, in: .root), "\(key) must be an array of tables, not \(typeName(value)): write [[\(key)]] sections, one per \(what)")
            return nil
        }
        var sections: [Section] = []
        for i in 0..<array.count {
            let ref = TableRef(path: [key], index: i)
            guard let table = array[i].table else {
                error(map.table(ref), "every \(key) must be a table, not \(typeName(array[i])): write [[\(key)]] sections, one per \(what)")
                continue
            }
            sections.append(Section(table: table, ref: ref, title: "[[\(key)]]"))
        }
        return sections
    }

    mutating func typeError(_ s: Section, _ key: String, expected: String, hint: String = "") {
        let v = s.table[key]!
        error(map.value(key, in: s.ref), "\(key) must be \(expected), not \(typeName(v))\(hint)")
    }

    mutating func string(_ s: Section, _ key: String) -> Field<String> {
        guard let v = s.table[key] else { return .absent }
        if let str = v.string { return .value(str) }
        var hint = ""
        if let i = v.int { hint = " (write \(key) = \"\(i)\")" }
        if let d = v.double { hint = " (write \(key) = \"\(d)\")" }
        typeError(s, key, expected: "a string", hint: hint)
        return .invalid
    }

    mutating func integer(_ s: Section, _ key: String) -> Field<Int> {
        guard let v = s.table[key] else { return .absent }
        if let i = v.int { return .value(i) }
        var hint = ""
        if let str = v.string, let i = Int(str.trimmingCharacters(in: .whitespaces)) {
            hint = " (write \(key) = \(i) without quotes)"
        } else if let d = v.double, d.rounded() == d, abs(d) < 1e15 {
            hint = " (write \(key) = \(Int(d)))"
        }
        typeError(s, key, expected: "an integer", hint: hint)
        return .invalid
    }

    mutating func boolean(_ s: Section, _ key: String) -> Field<Bool> {
        guard let v = s.table[key] else { return .absent }
        if let b = v.bool { return .value(b) }
        var hint = ""
        if let str = v.string, str == "true" || str == "false" { hint = " (write \(key) = \(str) without quotes)" }
        typeError(s, key, expected: "true or false", hint: hint)
        return .invalid
    }

    /// A positive number of seconds (integer or float).
    mutating func seconds(_ s: Section, _ key: String) -> Field<Duration> {
        guard let v = s.table[key] else { return .absent }
        let secs: Double
        if let i = v.int {
            secs = Double(i)
        } else if let d = v.double {
            secs = d
        } else {
            typeError(s, key, expected: "a number of seconds", hint: " (for example \(key) = 1.5)")
            return .invalid
        }
        guard secs > 0, secs <= 86_400 else {
            error(map.value(key, in: s.ref), "\(key) \(secondsText(secs)) is out of range: give a number of seconds above 0 and up to 86400")
            return .invalid
        }
        return .value(.milliseconds(Int64((secs * 1000).rounded())))
    }

    mutating func stringArray(_ s: Section, _ key: String, example: String) -> Field<[String]> {
        guard let v = s.table[key] else { return .absent }
        guard let array = v.array else {
            let hint = v.string.map { " (write \(key) = [\"\($0)\"])" } ?? " (for example \(key) = \(example))"
            typeError(s, key, expected: "an array of strings", hint: hint)
            return .invalid
        }
        var out: [String] = []
        var ok = true
        for i in 0..<array.count {
            if let str = array[i].string {
                out.append(str)
            } else {
                error(map.element(i, of: key, in: s.ref), "\(key) must hold strings, not \(typeName(array[i])) (write each one in quotes, for example \(example))")
                ok = false
            }
        }
        return ok ? .value(out) : .invalid
    }

    mutating func integerArray(_ s: Section, _ key: String, example: String) -> Field<[Int]> {
        guard let v = s.table[key] else { return .absent }
        guard let array = v.array else {
            let hint = v.int.map { " (write \(key) = [\($0)])" } ?? " (for example \(key) = \(example))"
            typeError(s, key, expected: "an array of integers", hint: hint)
            return .invalid
        }
        var out: [Int] = []
        var ok = true
        for i in 0..<array.count {
            if let n = array[i].int {
                out.append(n)
            } else {
                let hint = array[i].string.flatMap { Int($0) }.map { " (write \($0) without quotes)" } ?? ""
                error(map.element(i, of: key, in: s.ref), "\(key) must hold node ids (integers), not \(typeName(array[i]))\(hint)")
                ok = false
            }
        }
        return ok ? .value(out) : .invalid
    }

    /// Past the last line (for "add ..." findings about the whole file).
    var endOfFile: SourcePosition {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        return SourcePosition(line: max(1, lines.count), column: 1)
    }
}

// MARK: - Formatting helpers

fileprivate func typeName(_ v: TOMLValueConvertible) -> String {
    switch v.type {
    case .int: return "an integer"
    case .double: return "a floating-point number"
    case .string: return "a string"
    case .bool: return "a boolean"
    case .array: return "an array"
    case .table: return "a table"
    case .date: return "a date"
    case .time: return "a time"
    case .dateTime: return "a date-time"
    }
}

/// `"text"` with quotes and backslashes escaped, as TOML would write it.
fileprivate func quoted(_ s: String) -> String {
    "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
}

/// `0x521b2683`.
fileprivate func hex32(_ v: UInt32) -> String {
    let h = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - h.count)) + h
}

fileprivate func secondsText(_ d: Duration) -> String {
    let (s, atto) = d.components
    let ms = s * 1000 + atto / 1_000_000_000_000_000
    return ms % 1000 == 0 ? "\(ms / 1000) s" : "\(Double(ms) / 1000) s"
}

fileprivate func secondsText(_ s: Double) -> String {
    s.rounded() == s && abs(s) < 1e15 ? "\(Int(s)) s" : "\(s) s"
}
