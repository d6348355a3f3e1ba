// The cluster config file: the examples, defaults, global ids, directory arrays, and a table of
// bad configs, each with the exact line, column and message it must produce.

import DLMTransport
import Foundation
import Testing
@testable import DLMNode

/// `Config/` of the repository.
private let configDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Config")

/// A small valid config; the bad cases replace or append numbered lines, so the line numbers in
/// the expectations can be read off this listing.
private let baseLines = [
    /* 1 */ "[cluster]",
    /* 2 */ "name = \"lab\"",
    /* 3 */ "",
    /* 4 */ "[[node]]",
    /* 5 */ "id = 1",
    /* 6 */ "addresses = [\"10.0.0.1\"]",
    /* 7 */ "kind = \"kernel\"",
    /* 8 */ "",
    /* 9 */ "[[node]]",
    /* 10 */ "id = 2",
    /* 11 */ "addresses = [\"10.0.0.2\"]",
    /* 12 */ "kind = \"peer\"",
    /* 13 */ "",
    /* 14 */ "[[lockspace]]",
    /* 15 */ "name = \"alpha\"",
    /* 16 */ "members = [1, 2]",
]

private func variant(_ replace: [Int: String] = [:], append: [String] = []) -> String {
    var lines = baseLines
    for (n, text) in replace { lines[n - 1] = text }
    return (lines + append).joined(separator: "\n") + "\n"
}

struct ConfigExpected: Hashable, Sendable, CustomStringConvertible {
    var line: Int
    var column: Int
    var message: String
    init(_ line: Int, _ column: Int, _ message: String) {
        self.line = line
        self.column = column
        self.message = message
    }
    var description: String { "\(line):\(column): \(message)" }
}

struct BadConfigCase: Sendable, CustomTestStringConvertible {
    var name: String
    var text: String
    var errors: [ConfigExpected]
    var testDescription: String { name }

    init(_ name: String, _ replace: [Int: String] = [:], append: [String] = [], _ errors: ConfigExpected...) {
        self.name = name
        self.text = variant(replace, append: append)
        self.errors = errors
    }
}

private let timeouts = "lock timeouts (TIMEOUT/TIMEWARN) are not offered by dlm-peer (deprecated in 6.1 and removed from newer kernels)"

private let badConfigs: [BadConfigCase] = [
    BadConfigCase("duplicate node id", [10: "id = 1"],
              ConfigExpected(10, 6, "duplicate node id 1 (also the [[node]] at line 4): give every node its own id"),
              ConfigExpected(16, 15, "member 2 of lockspace \"alpha\" is not a node: add a [[node]] with id = 2, or remove it")),
    BadConfigCase("unknown member", [16: "members = [1, 3]"],
              ConfigExpected(16, 15, "member 3 of lockspace \"alpha\" is not a node: add a [[node]] with id = 3, or remove it")),
    BadConfigCase("member listed twice", [16: "members = [1, 2, 1]"],
              ConfigExpected(16, 18, "member 1 of lockspace \"alpha\" is listed twice: remove one")),
    BadConfigCase("duplicate address", [11: "addresses = [\"10.0.0.1\"]"],
              ConfigExpected(11, 14, "address 10.0.0.1 is also used by node 1 (line 6): every address belongs to one node")),
    BadConfigCase("duplicate address in another spelling", [6: "addresses = [\"fd00::1\"]", 11: "addresses = [\"fd00:0:0::0:1\"]"],
              ConfigExpected(11, 14, "address fd00::1 is also used by node 1 (line 6): every address belongs to one node")),
    BadConfigCase("not an address", [11: "addresses = [\"10.0.0.256\"]"],
              ConfigExpected(11, 14, "\"10.0.0.256\" is not an IPv4 or IPv6 address: write the address the node's DLM connects from (names are not resolved)")),
    BadConfigCase("lvb length not a multiple of 8", append: ["lvb_length = 12"],
              ConfigExpected(17, 14, "lvb_length 12 of lockspace \"alpha\" must be a multiple of 8 from 0 to 3912 (32 for lockspaces made through /dev/dlm-control)")),
    BadConfigCase("lvb length too large", append: ["lvb_length = 4096"],
              ConfigExpected(17, 14, "lvb_length 4096 of lockspace \"alpha\" must be a multiple of 8 from 0 to 3912 (32 for lockspaces made through /dev/dlm-control)")),
    BadConfigCase("lvb length other than 32 with a kernel member", append: ["lvb_length = 64"],
              ConfigExpected(17, 14, "lvb_length is 64 but kernel node 1 is a member: a lockspace made through the kernel's device interface always has lvb_length 32")),
    BadConfigCase("bad protocol", [13: "protocol = \"3.3\""],
              ConfigExpected(13, 12, "protocol \"3.3\" is not supported: use \"3.2\" (5.14 and newer) or \"3.1\" (emulate a kernel before 5.14)")),
    BadConfigCase("protocol as a number", [13: "protocol = 3.1"],
              ConfigExpected(13, 12, "protocol must be a string, not a floating-point number (write protocol = \"3.1\")")),
    BadConfigCase("protocol on a kernel node", [8: "protocol = \"3.1\""],
              ConfigExpected(8, 1, "protocol is for kind = \"peer\" only (a kernel node speaks what its kernel speaks): remove it")),
    BadConfigCase("unknown key with a suggestion", [8: "adresses = [\"10.0.0.9\"]"],
              ConfigExpected(8, 1, "unknown key \"adresses\" in [[node]]: did you mean \"addresses\"?")),
    BadConfigCase("unknown key with an alias suggestion", append: ["lvblen = 32"],
              ConfigExpected(17, 1, "unknown key \"lvblen\" in [[lockspace]]: did you mean \"lvb_length\"?")),
    BadConfigCase("unknown key without a suggestion", append: ["colour = \"blue\""],
              ConfigExpected(17, 1, "unknown key \"colour\" in [[lockspace]]: remove it (known keys: name, members, lvb_length, flags, id, allow_custom_id, nodir)")),
    BadConfigCase("unknown table", [9: "[[nodes]]"],
              ConfigExpected(9, 1, "unknown key \"nodes\" at the top level: did you mean [[node]]?"),
              ConfigExpected(16, 15, "member 2 of lockspace \"alpha\" is not a node: add a [[node]] with id = 2, or remove it")),
    BadConfigCase("syntax error", [5: "id ="],
              ConfigExpected(5, 5, "TOML syntax: Error while parsing key-value pair: expected value, saw '\\n'")),
    BadConfigCase("id as a string", [5: "id = \"1\""],
              ConfigExpected(5, 6, "id must be an integer, not a string (write id = 1 without quotes)")),
    BadConfigCase("port as a string", [3: "port = \"21064\""],
              ConfigExpected(3, 8, "port must be an integer, not a string (write port = 21064 without quotes)")),
    BadConfigCase("addresses as a string", [11: "addresses = \"10.0.0.2\""],
              ConfigExpected(11, 13, "addresses must be an array of strings, not a string (write addresses = [\"10.0.0.2\"])")),
    BadConfigCase("members as an integer", [16: "members = 1"],
              ConfigExpected(16, 11, "members must be an array of integers, not an integer (write members = [1])")),
    BadConfigCase("node id out of range", [10: "id = 2147483648"],
              ConfigExpected(10, 6, "node id 2147483648 is out of range: use 1...2147483647")),
    BadConfigCase("too many addresses", [6: "addresses = [\"10.0.0.1\", \"10.0.0.3\", \"10.0.0.4\", \"10.0.0.5\"]"],
              ConfigExpected(6, 50, "node 1 has 4 addresses; the kernel takes at most 3 per node (configfs comms addr): remove 1")),
    BadConfigCase("mixed families in one node", [6: "addresses = [\"10.0.0.1\", \"fd00::1\"]"],
              ConfigExpected(6, 26, "node 1 mixes IPv4 and IPv6 addresses: the kernel uses one address family per node, like its first address 10.0.0.1")),
    BadConfigCase("different families on two nodes", [11: "addresses = [\"fd00::2\"]"],
              ConfigExpected(11, 14, "node 2 uses IPv6 but node 1 uses IPv4: every node must use the same address family (the kernel compares incoming connections in the local node's family)")),
    BadConfigCase("custom id mismatch", append: ["id = 1"],
              ConfigExpected(17, 6, "id 0x00000001 of lockspace \"alpha\" is not its global id 0x521b2683 (CRC-32 of \"dlm:ls:alpha\\0\", what dlm_controld writes): remove id, or add allow_custom_id = true to test a wrong id")),
    BadConfigCase("TIMEWARN flag", append: ["flags = 2"],
              ConfigExpected(17, 9, "flags 0x00000002 asks for TIMEWARN (0x2): \(timeouts); remove it")),
    BadConfigCase("the old NODIR lockspace flag", append: ["flags = 1"],
              ConfigExpected(17, 9, "flags 0x00000001 has bit 0x1 (the old DLM_LSFL_NODIR): current kernels take nodir from sysfs, not from the lockspace flags, and would see a config mismatch; remove it and write nodir = true")),
    BadConfigCase("nodir as a string", append: ["nodir = \"yes\""],
              ConfigExpected(17, 9, "nodir must be true or false, not a string")),
    BadConfigCase("lock timeout key", append: ["timeout = 10"],
              ConfigExpected(17, 1, "timeout in [[lockspace]] is refused: \(timeouts); remove it")),
    BadConfigCase("missing [cluster]", [1: "# no cluster", 2: ""],
              ConfigExpected(1, 1, "missing [cluster] table: add [cluster] with name = \"...\" (and transport, port)")),
    BadConfigCase("unknown kind", [12: "kind = \"vm\""],
              ConfigExpected(12, 8, "kind \"vm\" is not known: use \"kernel\" (the kernel's DLM, managed by `dlm-peer agent`) or \"peer\" (a `dlm-peer run` process)")),
    BadConfigCase("duplicate lockspace name", append: ["", "[[lockspace]]", "name = \"alpha\"", "members = [1]"],
              ConfigExpected(19, 8, "duplicate lockspace name \"alpha\" (also the [[lockspace]] at line 14): give every lockspace its own name")),
    BadConfigCase("heartbeat timeout too short", [3: "heartbeat_timeout = 1"],
              ConfigExpected(3, 21, "heartbeat_timeout (1 s) must be at least twice heartbeat_interval (1 s), so that one late heartbeat does not declare a node failed")),
    BadConfigCase("kernel the lab cannot boot", [8: "kernel = \"4.19\""],
              ConfigExpected(8, 10, "kernel \"4.19\" is not one the lab can boot: use \"6.1\", \"6.12\", \"5.10\"")),
    BadConfigCase("weight out of range", [13: "weight = -1"],
              ConfigExpected(13, 10, "weight -1 is out of range: use 0...1000 (0 = never a directory node; the kernel keeps one directory slot per unit of weight)")),
]

@Suite("Cluster config")
struct ConfigTests {
    @Test("every example in Config/ loads", arguments: try! FileManager.default
        .contentsOfDirectory(atPath: configDirectory.path).filter { $0.hasSuffix(".toml") }.sorted())
    func examplesLoad(_ name: String) throws {
        let config = try ClusterConfig.load(path: configDirectory.appendingPathComponent(name).path)
        #expect(config.warnings.isEmpty, "\(config.warnings)")
        #expect(!config.nodes.isEmpty)
        // lab-peer-badid.toml gives alpha another id on purpose (the lab's S12 scenario)
        #expect(config.lockspace(named: "alpha")?.globalID == (name == "lab-peer-badid.toml" ? 0x1234_5678 : 0x521B_2683))
    }

    @Test("the example with two kernels and two peers")
    func peerAndKernels() throws {
        let c = try ClusterConfig.load(path: configDirectory.appendingPathComponent("peer-and-kernels.toml").path)
        #expect(c.name == "lab" && c.transport == .tcp && c.port == 21064)
        #expect(c.nodes.map(\.id) == [1, 2, 3, 4])
        #expect(c.nodes.map(\.kind) == [.kernel, .kernel, .peer, .peer])
        #expect(c.nodes.map(\.protocolVersion) == [.v3_2, .v3_2, .v3_2, .v3_1])
        #expect(c.node(4)?.emulatedProtocol == .v3_1)
        #expect(c.node(1)?.emulatedProtocol == nil)
        #expect(c.lockspaces.map(\.name) == ["alpha", "beta"])
        let alpha = try #require(c.lockspace(named: "alpha"))
        let beta = try #require(c.lockspace(named: "beta"))
        #expect(c.directoryNodes(of: alpha) == [1, 2, 3, 4, 4])
        #expect(beta.members == [2, 3, 4] && beta.lvbLength == 32 && beta.flags == 0)
        #expect(beta.globalID == lockspaceGlobalID("beta"))
        #expect(c.peers(of: 1).map(\.id) == [2, 3, 4])
        #expect(c.lockspaces(of: 1).map(\.name) == ["alpha"])
        #expect(c.protocolBetween(4, 2) == .v3_1)
        #expect(c.protocolBetween(3, 2) == .v3_2)
    }

    @Test("defaults: tcp, port 21064, kind kernel, weight 1, peers speak 3.2, lvb 32, flags 0")
    func defaults() throws {
        let c = try ClusterConfig.parse("""
            [cluster]
            name = "c"
            [[node]]
            id = 7
            addresses = ["127.0.0.1"]
            [[node]]
            id = 8
            addresses = ["127.0.0.2", "127.0.0.3"]
            kind = "peer"
            [[lockspace]]
            name = "x"
            members = [8, 7]
            """)
        #expect(c.transport == .tcp && c.port == 21064 && c.fenceCommand == nil && c.heartbeat == nil)
        #expect(c.node(7)?.kind == .kernel && c.node(7)?.weight == 1 && c.node(7)?.kernel == nil)
        #expect(c.node(7)?.protocolVersion == nil)
        #expect(c.node(8)?.protocolVersion == .v3_2)
        #expect(c.node(8)?.addresses.map(\.description) == ["127.0.0.2", "127.0.0.3"])
        let x = try #require(c.lockspace(named: "x"))
        #expect(x.lvbLength == 32 && x.flags == 0 && x.members == [8, 7] && !x.hasCustomID)
        #expect(c.directoryNodes(of: x) == [7, 8])
    }

    @Test("global ids: CRC-32 of \"dlm:ls:<name>\\0\" (recovery.md §1.2)", arguments: [
        ("alpha", 0x521B_2683 as UInt32), ("foo", 0x6CE2_339D), ("clvmd", 0x4104_EEFA),
        ("lvm_global", 0x12AA_BD2D), ("gfs2fs", 0x86E7_99CB), ("testls", 0xE5AD_EF01),
    ])
    func globalIDs(_ name: String, _ id: UInt32) throws {
        #expect(lockspaceGlobalID(name) == id)
        #expect(ClusterConfig.Lockspace(name: name, members: [1]).globalID == id)
        let c = try ClusterConfig.parse(variant([15: "name = \"\(name)\""]))
        #expect(c.lockspaces[0].globalID == id)
        // An explicit id equal to the rule is accepted.
        let d = try ClusterConfig.parse(variant([15: "name = \"\(name)\""], append: ["id = \(id)"]))
        #expect(d.lockspaces[0].globalID == id && !d.lockspaces[0].hasCustomID)
    }

    @Test("nodir = true reaches the lockspace and its recovery config, not the flags")
    func nodir() throws {
        #expect(try ClusterConfig.parse(variant()).lockspaces.first?.nodir == false)
        let c = try ClusterConfig.parse(variant(append: ["nodir = true"]))
        #expect(c.lockspaces.first?.nodir == true && c.lockspaces.first?.flags == 0)
        let rc = RecoveryConfig(config: c, lockspace: c.lockspaces[0], node: 2)
        #expect(rc.nodir && rc.lockspaceFlags == 0)
    }

    @Test("allow_custom_id keeps a wrong id (for the wrong-id scenario)")
    func customID() throws {
        let c = try ClusterConfig.parse(variant(append: ["id = 0x12345678", "allow_custom_id = true"]))
        #expect(c.lockspaces[0].globalID == 0x1234_5678)
        #expect(c.lockspaces[0].hasCustomID)
    }

    @Test("directory node array: ascending ids repeated by weight; all zero counts each once")
    func directoryArrays() throws {
        func config(_ weights: [Int]) throws -> ClusterConfig {
            var text = "[cluster]\nname = \"w\"\n"
            for (i, w) in weights.enumerated() {
                text += "[[node]]\nid = \(weights.count - i)\naddresses = [\"10.1.0.\(i + 1)\"]\nkind = \"peer\"\nweight = \(w)\n"
            }
            text += "[[lockspace]]\nname = \"ls\"\nmembers = [\((1...weights.count).map(String.init).joined(separator: ", "))]\n"
            return try ClusterConfig.parse(text)
        }
        // Nodes are written 3, 2, 1: the array is by ascending id regardless.
        let a = try config([2, 0, 1])  // node 3 weight 2, node 2 weight 0, node 1 weight 1
        #expect(a.directoryNodes(of: a.lockspaces[0]) == [1, 3, 3])
        let b = try config([0, 0, 0])
        #expect(b.directoryNodes(of: b.lockspaces[0]) == [1, 2, 3])
        // The same placement as DLMTransport's directoryNode for every hash bucket.
        let ls = a.lockspaces[0]
        let array = a.directoryNodes(of: ls)
        for top in UInt32(0)..<64 {
            let hash = top << 16 | 0x1234
            #expect(directoryNode(hash: hash, members: a.weightedMembers(of: ls)) == array[Int(top) % array.count])
        }
    }

    @Test("each bad config gives exactly these errors, with file, line and column", arguments: badConfigs)
    func badConfig(_ bad: BadConfigCase) {
        let (config, diagnostics) = ClusterConfig.check(bad.text, file: "bad.toml")
        #expect(config == nil)
        let errors = diagnostics.filter { $0.severity == .error }
        #expect(errors.map { ConfigExpected($0.line, $0.column, $0.message) } == bad.errors)
        #expect(errors.allSatisfy { $0.file == "bad.toml" })
        #expect(errors.allSatisfy { $0.description == "bad.toml:\($0.line):\($0.column): error: \($0.message)" })
    }

    @Test("all errors are collected, in file order")
    func manyErrors() {
        let text = """
            [cluster]
            name = "my lab"
            transprt = "tcp"

            [[node]]
            id = 1
            addresses = ["10.0.0.1"]

            [[node]]
            id = 1
            addresses = ["10.0.0.1"]
            kind = "peer"
            protocol = "3.0"

            [[lockspace]]
            name = "a/b"
            members = [1, 9]
            flags = 2
            """
        do throws(ConfigError) {
            _ = try ClusterConfig.parse(text, file: "many.toml")
            Issue.record("parsed")
        } catch {
            #expect(error.kind == .invalid)
            #expect(error.errors.map(\.line) == [2, 3, 10, 11, 13, 16, 17, 18])
            #expect(error.description.hasPrefix("many.toml: invalid cluster config (8 errors):\nmany.toml:2:8: error: cluster name \"my lab\""))
        }
    }

    @Test("warnings do not fail the load and carry their line")
    func warnings() throws {
        let c = try ClusterConfig.parse(variant([3: "heartbeat_timeout = 5", 13: "kernel = \"6.1\""]), file: "w.toml")
        #expect(c.heartbeat == .init(interval: .seconds(1), timeout: .seconds(5)))
        #expect(c.node(2)?.kernel == nil)
        #expect(c.warnings.map(\.description) == [
            "w.toml:3:1: warning: heartbeat_timeout without fence_command: a silent node is only reported, never removed (it may still be alive); add fence_command, or remove nodes with `dlm-peer node-down`",
            "w.toml:13:1: warning: kernel is meaningless for a peer node (lab only: the kernel a VM boots): remove it",
        ])
        let fenced = try ClusterConfig.parse(variant([2: "name = \"lab\"\nfence_command = \"fence %s\"\nheartbeat_interval = 0.5\nheartbeat_timeout = 3"]))
        #expect(fenced.warnings.isEmpty)
        #expect(fenced.fenceCommand == "fence %s")
        #expect(fenced.heartbeat == .init(interval: .milliseconds(500), timeout: .seconds(3)))
    }

    @Test("the file the lab writes for a run (Interop/lab/config.py to_toml) loads")
    func labGenerated() throws {
        let c = try ClusterConfig.parse("""
            # generated by Interop/run from Config/lab-2node.toml
            [cluster]
            name = "lab"
            transport = "sctp"
            port = 21064

            [[node]]
            id = 1
            addresses = ["10.77.0.1"]
            kind = "kernel"
            kernel = "5.10"
            weight = 1

            [[node]]
            id = 3
            addresses = ["10.77.0.100"]
            kind = "peer"
            weight = 1
            protocol = "3.1"

            [[lockspace]]
            name = "alpha"
            members = [1, 3]
            lvb_length = 32
            """)
        #expect(c.transport == .sctp)
        #expect(c.node(1)?.protocolVersion == .v3_1)
        #expect(c.protocolBetween(1, 3) == .v3_1)
    }

    @Test("unreadable and invalid files")
    func files() throws {
        #expect(throws: ConfigError.self) { try ClusterConfig.load(path: "/nonexistent/cluster.toml") }
        do throws(ConfigError) {
            _ = try ClusterConfig.load(path: "/nonexistent/cluster.toml")
        } catch {
            #expect(error.kind == .unreadable)
            #expect(error.description == "/nonexistent/cluster.toml: cannot read the cluster config: No such file or directory")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("config-tests-\(ProcessInfo.processInfo.processIdentifier)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let bad = dir.appendingPathComponent("bad.toml")
        try Data(variant([16: "members = [1, 5]"]).utf8).write(to: bad)
        do throws(ConfigError) {
            _ = try ClusterConfig.load(path: bad.path)
            Issue.record("loaded")
        } catch {
            #expect(error.kind == .invalid)
            #expect(error.errors.map(\.description) == ["\(bad.path):16:15: error: member 5 of lockspace \"alpha\" is not a node: add a [[node]] with id = 5, or remove it"])
        }
        let binary = dir.appendingPathComponent("binary.toml")
        try Data([0x5B, 0xFF, 0xFE, 0x5D]).write(to: binary)
        do throws(ConfigError) {
            _ = try ClusterConfig.load(path: binary.path)
            Issue.record("loaded")
        } catch {
            #expect(error.kind == .unreadable && error.detail == "not UTF-8 text")
        }
    }

    @Test("did-you-mean suggestions")
    func suggestions() {
        #expect(ConfigSchema.suggestion(for: "adress", among: ConfigSchema.node) == "addresses")
        #expect(ConfigSchema.suggestion(for: "Weight", among: ConfigSchema.node) == "weight")
        #expect(ConfigSchema.suggestion(for: "nodeid", among: ConfigSchema.node) == "id")
        #expect(ConfigSchema.suggestion(for: "member", among: ConfigSchema.lockspace) == "members")
        #expect(ConfigSchema.suggestion(for: "lockspaces", among: ConfigSchema.root) == "lockspace")
        #expect(ConfigSchema.suggestion(for: "transprt", among: ConfigSchema.cluster) == "transport")
        #expect(ConfigSchema.suggestion(for: "zzz", among: ConfigSchema.cluster) == nil)
    }

    @Test("config check report: summary, --node, exit codes")
    func report() throws {
        let path = configDirectory.appendingPathComponent("peer-and-kernels.toml").path
        let text = try ClusterConfig.readText(path)
        let r = ConfigReport.check(text, file: "pk.toml", nodeID: 4)
        #expect(r.exitCode == 0)
        #expect(r.text.contains("  alpha  id 0x521b2683  members 1,2,3,4  lvb_length 32  flags 0\n"))
        #expect(r.text.contains("directory nodes [1, 2, 3, 4, 4]\n"))
        #expect(r.text.contains("node 4: a dlm-peer node; run it with `dlm-peer run --config pk.toml --node 4`"))
        #expect(r.text.contains("    2  kernel  10.77.0.2  protocol 3.1  (alpha, beta)\n"))
        #expect(r.json.contains("\"global_id_hex\":\"0x521b2683\""))
        let missing = ConfigReport.check(text, file: "pk.toml", nodeID: 9)
        #expect(missing.exitCode == 1)
        #expect(missing.nodeProblem == "no [[node]] with id = 9: the nodes are 1, 2, 3, 4")
        let bad = ConfigReport.check(variant([10: "id = 1"]), file: "bad.toml")
        #expect(bad.exitCode == 1 && bad.text.isEmpty && bad.errors.count == 2)
        #expect(bad.json.hasPrefix("{\"errors\":[{\"column\":6,\"file\":\"bad.toml\",\"line\":10,"))
    }
}
