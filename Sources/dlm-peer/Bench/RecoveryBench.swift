import ArgumentParser
import DLMNode
import DLMTransport
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// `dlm-peer bench recovery` (issue 5, Benchmark): the time to form a lockspace and the time to
/// recover after a node failure, for clusters of dlm-peer nodes on loopback (127.0.0.1 ... .N, each
/// node on its own event loop thread, all in this process), with 0 or more locks held.
///
/// Per case (N nodes, L locks): every node starts and joins at once (form time: until the last
/// join completes). Node 1 takes L PR locks on distinct names (it masters them all), then node 2
/// takes PR on the same names (process copies, mastered by node 1). Node 1 then fails: its event
/// loop is shut down without the leave (its connections close, no DLM FIN), as a killed process.
/// The cluster manager's part follows, as recovery.md §5.4: stop every survivor (each stop returns
/// when stopped), then start them all with the new member list. Recovery time: from the first
/// start to the last survivor's recovery done (wall), and each node's own recovery duration.
/// Afterwards node 2 must still hold its L locks.
///
/// A step that runs longer than 2 s reports its progress on stderr every 2 s: the locks granted so
/// far while loading, each survivor's recovery phase and lock counts while recovering.
///
/// `--lab` adds the lab's figures in the same run (LabRecoveryBench: `Interop/run --json
/// recovery-bench-<N>n-...`, needs root and QEMU): the same sizes among kernel VMs only and mixed
/// (half kernels, half dlm-peers), node 1 (a kernel) failing, next to the dlm-peer figures.
struct RecoveryBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recovery",
        abstract: "Time to form a lockspace and to recover after a node failure (dlm-peer nodes on loopback; --lab adds kernel VMs).")

    @OptionGroup var options: BenchOptions

    @Option(parsing: .upToNextOption, help: "Cluster sizes.")
    var nodes: [Int] = [2, 4, 8]

    @Option(parsing: .upToNextOption, help: "Locks held by each of two nodes before the failure.")
    var locks: [Int] = [0, 10_000, 100_000]

    @Option(help: "Port of every node (each has its own 127.0.0.x address); random 30000-40000 by default.")
    var port: Int?

    @Flag(help: "Also run the lab's kernel recovery benchmarks (root, QEMU; see Interop/README.md).")
    var lab = false

    @Option(parsing: .upToNextOption, help: "With --lab: locks held by each of two nodes in the lab cases: 0, 10000 and/or 100000 (a 100000 case takes several minutes under QEMU, so it is not in the default).")
    var labLocks: [Int] = [0, 10_000]

    func validate() throws {
        guard nodes.allSatisfy({ (2...32).contains($0) }) else { throw ValidationError("--nodes: each between 2 and 32") }
        guard locks.allSatisfy({ $0 >= 0 }) else { throw ValidationError("--locks: not negative") }
        guard labLocks.allSatisfy(LabRecoveryBench.lockCounts.contains) else {
            throw ValidationError("--lab-locks: the lab has cases for \(LabRecoveryBench.lockCounts) locks")
        }
    }

    struct Case {
        var nodes: Int
        var locks: Int
        var formMilliseconds: Double
        var loadSeconds: Double
        var recoveryWallMilliseconds: Double
        var recoveryMilliseconds: [UInt32: Double]
        var heldAfter: Int
    }

    func run() throws {
        var cases: [Case] = []
        var text = ["recovery bench: dlm-peer nodes on 127.0.0.x, one event loop thread each, in one process; node 1 fails"]
        text.append("nodes    locks   form ms   load s   recovery wall ms   per-node recovery ms (max)   node 2 holds")
        for n in nodes {
            for l in locks {
                let port = self.port ?? Int.random(in: 30000..<40000)
                FileHandle.standardError.write(Data("bench recovery: \(n) nodes, \(l) locks ...\n".utf8))
                let c = try RecoveryBenchCase.run(nodes: n, locks: l, port: port)
                cases.append(c)
                let maxNode = c.recoveryMilliseconds.values.max() ?? 0
                text.append(String(format: "%5d %8d %9.1f %8.2f %18.1f %28.1f %14d%@", n, l, c.formMilliseconds, c.loadSeconds,
                                   c.recoveryWallMilliseconds, maxNode, c.heldAfter, c.heldAfter == l ? "" : "  LOCKS LOST"))
            }
        }
        var labResults: [[String: Any]] = []
        if lab {
            let (rows, note) = LabRecoveryBench.run(LabRecoveryBench.cases(nodes: nodes, locks: labLocks))
            labResults = rows.map(\.json)
            text.append("lab: kernel VMs under QEMU/TCG, node 1 (a kernel) fails; mixed: nodes 1...N/2 kernels, the rest dlm-peers, "
                + "node 1 and the lowest dlm-peer hold the locks (\(note))")
            text.append(LabRecoveryBench.header)
            text += rows.map(\.line)
        }
        if options.json {
            let doc: [String: Any] = [
                "benchmark": "recovery",
                "cases": cases.map { c -> [String: Any] in
                    ["nodes": c.nodes, "locks": c.locks, "form_ms": c.formMilliseconds, "load_s": c.loadSeconds,
                     "recovery_wall_ms": c.recoveryWallMilliseconds,
                     "recovery_ms_by_node": Dictionary(uniqueKeysWithValues: c.recoveryMilliseconds.map { ("\($0.key)", $0.value) }),
                     "held_after": c.heldAfter, "locks_kept": c.heldAfter == c.locks]
                },
                "lab": labResults,
            ]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(text.joined(separator: "\n"))
        }
        if cases.contains(where: { $0.heldAfter != $0.locks }) { throw ExitCode(1) }
    }
}

enum RecoveryBenchCase {
    static let lockspace = "bench"

    static func run(nodes n: Int, locks l: Int, port: Int) throws -> RecoveryBench.Case {
        let cfg = try loopbackClusterConfig(nodes: n, port: port, lockspace: lockspace)
        var logger = Logger(label: "bench.recovery")
        logger.logLevel = .error
        let groups = (0..<n).map { _ in MultiThreadedEventLoopGroup(numberOfThreads: 1) }
        var alive = Array(repeating: true, count: n)
        defer {
            for (i, g) in groups.enumerated() where alive[i] { try? g.syncShutdownGracefully() }
        }
        let peers = try (0..<n).map { i in
            let loop = groups[i].next()
            return try loop.submit { try PeerNode(config: cfg, nodeID: UInt32(i + 1), eventLoop: loop, logger: logger) }.wait()
        }
        // Form.
        let t0 = NIODeadline.now()
        let joins = peers.map { p in p.eventLoop.flatSubmit { p.start() } }
        for j in joins { _ = try j.wait() }
        let form = Double((NIODeadline.now() - t0).nanoseconds) / 1e6

        // Load: node 1 masters L names, node 2 holds PR on the same names.
        let names = (0..<l).map { "rb-\($0)" }
        let t1 = NIODeadline.now()
        for peer in peers.prefix(2) where l > 0 {
            let loader = LockLoader.start(on: peer, lockspace: lockspace, names: names, mode: .pr)
            try ProgressReporter.during("load, node \(peer.nodeID)", report: {
                "\((try? peer.eventLoop.submit { loader.granted }.wait()) ?? 0) of \(l) locks granted"
            }) {
                try loader.done.wait()
            }
        }
        let load = Double((NIODeadline.now() - t1).nanoseconds) / 1e9

        // Node 1 fails.
        try groups[0].syncShutdownGracefully()
        alive[0] = false
        let survivors = Array(peers.dropFirst())
        let members = survivors.map { (id: $0.nodeID, weight: 1) }
        try blocking {
            try await withThrowingTaskGroup(of: Void.self) { g in
                for p in survivors { g.addTask { try await p.stop(lockspace: lockspace) } }
                try await g.waitForAll()
            }
        }
        let t2 = NIODeadline.now()
        let reports = try ProgressReporter.during("recovery", report: {
            survivors.map { p in
                let state = (try? p.recoveryProgress(lockspace: lockspace).wait()).flatMap { $0.map { "\($0)" } }
                return "node \(p.nodeID) \(state ?? "?")"
            }.joined(separator: "; ")
        }) {
            try blocking { () -> [UInt32: Double] in
                for p in survivors { try await p.start(lockspace: lockspace, members: members) }
                var out: [UInt32: Double] = [:]
                for p in survivors {
                    let r = try await p.waitForRecovery(lockspace: lockspace)
                    out[p.nodeID] = Double(r.elapsed.nanoseconds) / 1e6
                }
                return out
            }
        }
        let wall = Double((NIODeadline.now() - t2).nanoseconds) / 1e6
        let held = try peers[1].status().wait().lockspaces.first { $0.name == lockspace }?.locks ?? -1
        for p in survivors { _ = try? p.leave().wait() }
        return RecoveryBench.Case(nodes: n, locks: l, formMilliseconds: form, loadSeconds: load,
                                  recoveryWallMilliseconds: wall, recoveryMilliseconds: reports, heldAfter: held)
    }
}

/// Runs `body` to completion from synchronous code (the bench command is not async).
func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let box = NIOLockedValueBox<Result<T, Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        let r: Result<T, Error>
        do { r = .success(try await body()) } catch { r = .failure(error) }
        box.withLockedValue { $0 = r }
        done.signal()
    }
    done.wait()
    return try box.withLockedValue { $0! }.get()
}

/// Takes one lock on each of `names` through `PeerNode.lock`, with up to `window` requests in
/// flight; succeeds when all are granted, fails on the first error.
final class LockLoader: @unchecked Sendable {
    let peer: PeerNode
    let lockspace: String
    let names: [String]
    let mode: LockMode
    let promise: EventLoopPromise<Void>
    var next = 0
    var granted = 0
    let window = 1024

    private init(peer: PeerNode, lockspace: String, names: [String], mode: LockMode) {
        self.peer = peer
        self.lockspace = lockspace
        self.names = names
        self.mode = mode
        self.promise = peer.eventLoop.makePromise()
    }

    /// Starts taking the locks; `done` completes when all are granted. `granted` is read on the peer's loop.
    static func start(on peer: PeerNode, lockspace: String, names: [String], mode: LockMode) -> LockLoader {
        let l = LockLoader(peer: peer, lockspace: lockspace, names: names, mode: mode)
        peer.eventLoop.execute { l.fill() }
        return l
    }

    var done: EventLoopFuture<Void> { promise.futureResult }

    func fill() {
        while next < names.count && next - granted < window {
            let name = names[next]
            next += 1
            peer.lock(lockspace: lockspace, name: name, mode: mode, onCompletion: { [self] c in
                peer.eventLoop.execute { [self] in
                    guard case .granted = c.status else {
                        promise.fail(PeerNodeError("bench lock \(name): \(c.status)"))
                        return
                    }
                    granted += 1
                    if granted == names.count { promise.succeed(()) } else { fill() }
                }
            }).whenFailure { [self] e in promise.fail(e) }
        }
    }
}

/// Reports a long bench step on stderr: `report()` every `interval` seconds until `stop()`, from a
/// dispatch queue (a silent minute is unpleasant). Nothing is printed for steps shorter than that.
final class ProgressReporter: @unchecked Sendable {
    /// Runs `body`, reporting while it runs.
    static func during<T>(_ step: String, every interval: Double = 2, report: @escaping @Sendable () -> String,
                          _ body: () throws -> T) rethrows -> T {
        let reporter = ProgressReporter(step, every: interval, report: report)
        defer { reporter.stop() }
        return try body()
    }

    private let timer: DispatchSourceTimer

    init(_ step: String, every interval: Double = 2, report: @escaping @Sendable () -> String) {
        let start = DispatchTime.now()
        timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "bench.progress"))
        timer.schedule(deadline: .now() + interval, repeating: interval)
        timer.setEventHandler {
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
            FileHandle.standardError.write(Data(String(format: "  %@ after %.0f s: %@\n", step, seconds, report()).utf8))
        }
        timer.resume()
    }

    /// Stops the reports (waits for nothing: a report being printed finishes on its own).
    func stop() { timer.cancel() }
}
