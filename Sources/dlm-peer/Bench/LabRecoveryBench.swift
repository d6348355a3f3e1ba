import Foundation

/// The lab part of `dlm-peer bench recovery --lab`: kernel nodes in QEMU VMs, run through
/// `Interop/run --json` in the same run (root and QEMU needed; see Interop/README.md). One case per
/// cluster size (2, 4, 8 nodes), kind and lock count: the scenario `recovery-bench-<N>n-<kind>[-<L>k]`
/// (Interop/lab/scenarios.py, sc_recovery_bench). Kernels only: node 1 and node 2 each hold L PR
/// locks on the same names; mixed: nodes 1 ... N/2 are kernels, the others dlm-peers, and node 1 and
/// the lowest dlm-peer hold them. Node 1 (a kernel) fails in every case: its VM is powered off and
/// the survivors are stopped and started without it.
enum LabRecoveryBench {
    enum Kind: String, CaseIterable, Sendable {
        case kernels, mixed
    }

    /// The sizes and lock counts the lab has scenarios for.
    static let sizes = [2, 4, 8]
    static let lockCounts = [0, 10_000, 100_000]

    struct Case: Sendable {
        var nodes: Int
        var kind: Kind
        var locks: Int

        var scenario: String {
            "recovery-bench-\(nodes)n-\(kind.rawValue)" + (locks > 0 ? "-\(locks / 1000)k" : "")
        }
    }

    /// One scenario's outcome: its result and metrics as `Interop/run --json` reports them.
    struct Row {
        var labCase: Case
        var result: String
        var detail: String
        var metrics: [String: Double]

        /// Each survivor's own recovery (kernels: dmesg `dlm_recover ... done: N ms`; dlm-peers: status).
        var recoveryByNode: [(node: Int, ms: Double)] {
            let prefix = "recovery_ms_node"
            return metrics.compactMap { key, ms -> (node: Int, ms: Double)? in
                guard key.hasPrefix(prefix), let node = Int(key.dropFirst(prefix.count)) else { return nil }
                return (node: node, ms: ms)
            }.sorted { $0.node < $1.node }
        }

        var formMilliseconds: Double? { metrics["form"].map { $0 * 1000 } }
        var wallMilliseconds: Double? { metrics["recovery_wall"].map { $0 * 1000 } }

        var json: [String: Any] {
            var out: [String: Any] = [
                "scenario": labCase.scenario, "nodes": labCase.nodes, "kind": labCase.kind.rawValue, "locks": labCase.locks,
                "result": result, "metrics": metrics,
                "recovery_ms_by_node": Dictionary(uniqueKeysWithValues: recoveryByNode.map { ("\($0.node)", $0.ms) }),
            ]
            out["form_ms"] = formMilliseconds
            out["recovery_wall_ms"] = wallMilliseconds
            out["recovery_ms_max"] = metrics["recovery_ms_max"]
            if !detail.isEmpty { out["detail"] = detail }
            return out
        }

        var line: String {
            func ms(_ v: Double?) -> String { v.map { String(format: "%.0f", $0) } ?? "-" }
            let perNode = recoveryByNode.map { "\($0.node):\(ms($0.ms))" }.joined(separator: " ")
            func right(_ s: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - s.count)) + s }
            func left(_ s: String, _ width: Int) -> String { s + String(repeating: " ", count: max(0, width - s.count)) }
            let columns = [right("\(labCase.nodes)", 5), left(labCase.kind.rawValue, 8), right("\(labCase.locks)", 6), left(result, 7),
                           right(ms(formMilliseconds), 7), right(ms(wallMilliseconds), 17), right(ms(metrics["recovery_ms_max"]), 8)]
            return columns.joined(separator: "  ") + "   " + perNode + (detail.isEmpty ? "" : "  (\(detail.prefix(120)))")
        }
    }

    static let header = "nodes  kind       locks  result   form ms   recovery wall ms    max ms   per-survivor recovery ms"

    /// The cases for `nodes` x kinds x `locks`, limited to what the lab has scenarios for.
    static func cases(nodes: [Int], locks: [Int]) -> [Case] {
        nodes.filter(sizes.contains).flatMap { n in
            Kind.allCases.flatMap { k in locks.filter(lockCounts.contains).map { Case(nodes: n, kind: k, locks: $0) } }
        }
    }

    /// Runs `cases` through `Interop/run --json` (one run, one scenario at a time). The dlm-peer
    /// nodes of the mixed cases are this binary (`DLM_PEER`, unless already set).
    static func run(_ cases: [Case]) -> ([Row], String) {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let runner = repo.appendingPathComponent("Interop/run").path
        guard FileManager.default.isExecutableFile(atPath: runner) else { return ([], "Interop/run not found at \(runner)") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: runner)
        // a 100,000-lock case takes minutes (Interop/run's default limit is 300 s a scenario)
        p.arguments = ["--json", "--timeout", "1800"] + cases.map(\.scenario)
        var env = ProcessInfo.processInfo.environment
        if env["DLM_PEER"] == nil, let me = Bundle.main.executablePath { env["DLM_PEER"] = me }
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        do { try p.run() } catch { return ([], "cannot run \(runner): \(error)") }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard let doc = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let results = doc["results"] as? [[String: Any]] else {
            return ([], "Interop/run exited \(p.terminationStatus) without JSON results (root and QEMU needed)")
        }
        let byName = Dictionary(results.map { ($0["name"] as? String ?? "?", $0) }, uniquingKeysWith: { a, _ in a })
        let rows = cases.map { c -> Row in
            let r = byName[c.scenario] ?? [:]
            let failures = (r["failures"] as? [String] ?? []).joined(separator: "; ")
            return Row(labCase: c, result: r["status"] as? String ?? "not run",
                       detail: failures.isEmpty ? r["detail"] as? String ?? "" : failures,
                       metrics: (r["metrics"] as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.doubleValue })
        }
        return (rows, "Interop/run exit \(p.terminationStatus)")
    }
}
