import DLMTransport
import Foundation

/// What `dlm-peer config check` prints: a summary of a valid config (and, for one node, what that
/// node will do), as text or JSON. Kept here rather than in the command so that tests and `status`
/// can use it.
public struct ConfigReport: Sendable {
    public var file: String
    public var config: ClusterConfig?
    /// Errors and warnings, in file order.
    public var diagnostics: [ConfigDiagnostic]
    /// `--node`: the node to describe.
    public var nodeID: UInt32?

    public init(file: String, config: ClusterConfig?, diagnostics: [ConfigDiagnostic], nodeID: UInt32? = nil) {
        self.file = file
        self.config = config
        self.diagnostics = diagnostics
        self.nodeID = nodeID
    }

    /// Checks `text` (the contents of `file`) and, with `nodeID`, that the node exists.
    public static func check(_ text: String, file: String, nodeID: UInt32? = nil) -> ConfigReport {
        let (config, diagnostics) = ClusterConfig.check(text, file: file)
        return ConfigReport(file: file, config: config, diagnostics: diagnostics, nodeID: nodeID)
    }

    public var errors: [ConfigDiagnostic] { diagnostics.filter { $0.severity == .error } }
    public var warnings: [ConfigDiagnostic] { diagnostics.filter { $0.severity == .warning } }

    /// The `--node` problem, if the config is valid but has no such node.
    public var nodeProblem: String? {
        guard let config, let nodeID, config.node(nodeID) == nil else { return nil }
        return "no [[node]] with id = \(nodeID): the nodes are \(config.nodes.map { String($0.id) }.joined(separator: ", "))"
    }

    /// 0: valid (warnings allowed); 1: errors (or `--node` names no node).
    public var exitCode: Int32 { config == nil || nodeProblem != nil ? 1 : 0 }

    // MARK: Text

    /// The summary of a valid config (empty if invalid); diagnostics are printed separately.
    public var text: String {
        guard let c = config else { return "" }
        var out: [String] = []
        out.append("cluster \"\(c.name)\": \(c.transport), port \(c.port), \(c.nodes.count) node\(c.nodes.count == 1 ? "" : "s"), \(c.lockspaces.count) lockspace\(c.lockspaces.count == 1 ? "" : "s") (\(file))")
        if let f = c.fenceCommand { out.append("  fence_command: \(f)") }
        if let h = c.heartbeat {
            out.append("  heartbeat: every \(Self.seconds(h.interval)) s; a node silent for \(Self.seconds(h.timeout)) s is declared failed")
        }
        out.append("nodes:")
        let addrWidth = c.nodes.map { $0.addresses.map(\.description).joined(separator: ",").count }.max() ?? 0
        let idWidth = c.nodes.map { String($0.id).count }.max() ?? 1
        for n in c.nodes {
            let addrs = n.addresses.map(\.description).joined(separator: ",")
            out.append("  " + Self.pad(String(n.id), idWidth, right: true) + "  " + Self.pad(n.kind.rawValue, 6)
                       + "  " + Self.pad(addrs, addrWidth) + "  weight \(n.weight)  " + Self.protocolText(n))
        }
        out.append("lockspaces:")
        let nameWidth = c.lockspaces.map(\.name.count).max() ?? 0
        for ls in c.lockspaces {
            var line = "  " + Self.pad(ls.name, nameWidth) + "  id \(Self.hex(ls.globalID))"
            if ls.hasCustomID { line += " (custom; the CRC rule gives \(Self.hex(lockspaceGlobalID(ls.name))))" }
            line += "  members \(ls.members.map(String.init).joined(separator: ","))  lvb_length \(ls.lvbLength)  flags \(ls.flags)"
            if ls.nodir { line += "  nodir" }
            out.append(line)
            out.append("  " + String(repeating: " ", count: nameWidth) + "  directory nodes " + Self.arrayText(c.directoryNodes(of: ls)))
        }
        if let nodeID, let n = c.node(nodeID) {
            out.append(contentsOf: nodeText(c, n))
        }
        return out.joined(separator: "\n") + "\n"
    }

    private func nodeText(_ c: ClusterConfig, _ n: ClusterConfig.Node) -> [String] {
        var out: [String] = []
        switch n.kind {
        case .peer:
            out.append("node \(n.id): a dlm-peer node; run it with `dlm-peer run --config \(file) --node \(n.id)`")
            out.append("  listens on \(n.addresses[0]) port \(c.port) (\(c.transport)) and connects from \(n.addresses[0])")
            out.append("  speaks DLM protocol \(n.protocolVersion ?? .v3_2)\(n.emulatedProtocol == .v3_1 ? " (emulating a kernel before 5.14)" : "")")
        case .kernel:
            out.append("node \(n.id): a kernel node; its cluster manager is `dlm-peer agent --config \(file) --node \(n.id)`")
            out.append("  configfs: cluster \"\(c.name)\", tcp_port \(c.port), protocol \(c.transport == .tcp ? 0 : 1), comms for nodes \(c.nodes.map { String($0.id) }.joined(separator: ", ")) (local: \(n.id))")
            if let k = n.kernel { out.append("  lab kernel \(k): speaks DLM protocol \(n.protocolVersion.map(\.description) ?? "?")") }
        }
        let peers = c.peers(of: n.id)
        if peers.isEmpty {
            out.append("  peers: none (it shares no lockspace with another node)")
        } else {
            out.append("  peers:")
            for p in peers {
                let shared = c.lockspaces(of: n.id).filter { $0.members.contains(p.id) }.map(\.name)
                let proto = c.protocolBetween(n.id, p.id).map { "protocol \($0)" } ?? "protocol negotiated (\(p.kind) of unknown version)"
                out.append("    \(p.id)  \(Self.pad(p.kind.rawValue, 6))  \(p.addresses.map(\.description).joined(separator: ","))  \(proto)  (\(shared.joined(separator: ", ")))")
            }
        }
        let mine = c.lockspaces(of: n.id)
        if mine.isEmpty {
            out.append("  lockspaces: none")
        } else {
            out.append("  lockspaces:")
            for ls in mine {
                let others = ls.members.filter { $0 != n.id }.sorted()
                let low = ls.members.min() ?? n.id
                let coordinator = low == n.id ? "it coordinates recovery (lowest id)" : "node \(low) coordinates recovery"
                out.append("    \(ls.name)  id \(Self.hex(ls.globalID))  with \(others.isEmpty ? "no other node" : others.map(String.init).joined(separator: ", "))  lvb_length \(ls.lvbLength); \(coordinator)")
            }
        }
        return out
    }

    // MARK: JSON

    public var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(jsonValue) else { return "{}" }
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    struct JSONDiagnostic: Encodable {
        var file: String
        var line: Int?
        var column: Int?
        var severity: String
        var message: String
    }

    struct JSONNode: Encodable {
        var id: UInt32
        var kind: String
        var addresses: [String]
        var family: String
        var weight: Int
        var `protocol`: String?
        var emulated_protocol: String?
        var kernel: String?
    }

    struct JSONLockspace: Encodable {
        var name: String
        var global_id: UInt32
        var global_id_hex: String
        var custom_id: Bool
        var members: [UInt32]
        var lvb_length: Int
        var flags: UInt32
        var nodir: Bool
        var directory_nodes: [UInt32]
    }

    struct JSONHeartbeat: Encodable {
        var interval_s: Double
        var timeout_s: Double
    }

    struct JSONPeer: Encodable {
        var id: UInt32
        var kind: String
        var addresses: [String]
        var `protocol`: String?
        var lockspaces: [String]
    }

    struct JSONNodeView: Encodable {
        var id: UInt32
        var kind: String
        var command: String
        var listen: String
        var `protocol`: String?
        var peers: [JSONPeer]
        var lockspaces: [String]
    }

    struct JSONReport: Encodable {
        var file: String
        var ok: Bool
        var errors: [JSONDiagnostic]
        var warnings: [JSONDiagnostic]
        var cluster: String?
        var transport: String?
        var port: Int?
        var fence_command: String?
        var heartbeat: JSONHeartbeat?
        var nodes: [JSONNode]?
        var lockspaces: [JSONLockspace]?
        var node: JSONNodeView?
    }

    var jsonValue: JSONReport {
        func diag(_ d: ConfigDiagnostic) -> JSONDiagnostic {
            JSONDiagnostic(file: d.file, line: d.line, column: d.column, severity: d.severity.rawValue, message: d.message)
        }
        var errs = errors.map(diag)
        if let p = nodeProblem {
            errs.append(JSONDiagnostic(file: file, line: nil, column: nil, severity: "error", message: p))
        }
        var r = JSONReport(file: file, ok: exitCode == 0, errors: errs, warnings: warnings.map(diag))
        guard let c = config else { return r }
        r.cluster = c.name
        r.transport = c.transport.rawValue
        r.port = c.port
        r.fence_command = c.fenceCommand
        r.heartbeat = c.heartbeat.map { JSONHeartbeat(interval_s: Self.seconds($0.interval), timeout_s: Self.seconds($0.timeout)) }
        r.nodes = c.nodes.map { n in
            JSONNode(id: n.id, kind: n.kind.rawValue, addresses: n.addresses.map(\.description),
                     family: n.family.rawValue, weight: n.weight, protocol: n.protocolVersion?.description,
                     emulated_protocol: n.emulatedProtocol?.description, kernel: n.kernel)
        }
        r.lockspaces = c.lockspaces.map { ls in
            JSONLockspace(name: ls.name, global_id: ls.globalID, global_id_hex: Self.hex(ls.globalID),
                          custom_id: ls.hasCustomID, members: ls.members, lvb_length: ls.lvbLength,
                          flags: ls.flags, nodir: ls.nodir, directory_nodes: c.directoryNodes(of: ls))
        }
        if let nodeID, let n = c.node(nodeID) {
            let peers = c.peers(of: n.id).map { p in
                JSONPeer(id: p.id, kind: p.kind.rawValue, addresses: p.addresses.map(\.description),
                         protocol: c.protocolBetween(n.id, p.id)?.description,
                         lockspaces: c.lockspaces(of: n.id).filter { $0.members.contains(p.id) }.map(\.name))
            }
            r.node = JSONNodeView(
                id: n.id, kind: n.kind.rawValue,
                command: n.kind == .peer ? "dlm-peer run --config \(file) --node \(n.id)"
                    : "dlm-peer agent --config \(file) --node \(n.id)",
                listen: "\(n.addresses[0]):\(c.port)", protocol: n.protocolVersion?.description,
                peers: peers, lockspaces: c.lockspaces(of: n.id).map(\.name))
        }
        return r
    }

    // MARK: Helpers

    static func hex(_ v: UInt32) -> String {
        let h = String(v, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, 8 - h.count)) + h
    }

    static func seconds(_ d: Duration) -> Double {
        let (s, atto) = d.components
        return Double(s) + Double(atto) / 1e18
    }

    static func pad(_ s: String, _ width: Int, right: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - s.count))
        return right ? fill + s : s + fill
    }

    static func protocolText(_ n: ClusterConfig.Node) -> String {
        switch n.kind {
        case .peer:
            let v = n.protocolVersion ?? .v3_2
            return "protocol \(v)" + (v == .v3_1 ? " (emulated)" : "")
        case .kernel:
            guard let k = n.kernel else { return "protocol of its kernel" }
            return "protocol \(n.protocolVersion.map(\.description) ?? "?") (kernel \(k))"
        }
    }

    /// `[1, 2, 3]`, or runs (`[1×40, 2×3]`) when long.
    static func arrayText(_ a: [UInt32]) -> String {
        if a.count <= 32 { return "[" + a.map(String.init).joined(separator: ", ") + "]" }
        var runs: [(UInt32, Int)] = []
        for x in a {
            if let last = runs.last, last.0 == x { runs[runs.count - 1].1 += 1 } else { runs.append((x, 1)) }
        }
        return "[" + runs.map { $0.1 == 1 ? "\($0.0)" : "\($0.0)×\($0.1)" }.joined(separator: ", ") + "] (\(a.count) entries)"
    }
}
