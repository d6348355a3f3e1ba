import ArgumentParser
import DLMNode
import DLMTransport
import Foundation
import Logging
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// `dlm-peer bench locks`: lock + unlock pairs (issue 6, Benchmark), each next to a baseline
/// measured in the same run:
/// - local master: one `LockManager` whose only member is us, EX lock + unlock pairs on one
///   core, on one name and cycling over many names; baseline: `Dictionary<[UInt8], UInt32>`
///   insert + remove of the same names, timed the same way;
/// - many locks at once: N locks on distinct names held together, then all unlocked;
///   baseline: N dictionary inserts, then N removes;
/// - memory per held lock: (RSS after − RSS before) / N with N NL locks held in one manager;
/// - the lock managers' share of a remote pair: node 1 and node 2 as two `LockManager`s in this
///   process, messages handed from one to the other as values (no encoding, no transport);
/// - remote master: this process is node 1 (127.0.0.1), a child `dlm-peer bench locks --serve`
///   is node 2 (127.0.0.2) and masters the resource (it takes an NL lock on it first and keeps
///   it); node 1 does EX lock + unlock round trips (REQUEST/REQUEST_REPLY, UNLOCK/UNLOCK_REPLY);
///   baseline: a raw TCP ping-pong of 152-byte messages (the size of a wrapped DLM_MSG) to the
///   same child, on the same event loop.
struct LockBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "locks",
        abstract: "Lock + unlock pairs per second and latency (local and remote master), memory per held lock.")

    @OptionGroup var options: BenchOptions

    @Option(help: "Names the local many-names run cycles over.")
    var names: Int = 10_000

    @Option(help: "Locks held at once in the many-locks run.")
    var inFlight: Int = 10_000

    @Option(help: "Locks held for the memory figure (0 skips it).")
    var memoryLocks: Int = 1_000_000

    @Flag(help: "Skip the two-process remote-master run.")
    var noRemote = false

    @Flag(help: "Only count heap allocations per lock + unlock pair (re-executes with the malloc interposer built beside the binary; kept apart because the interposer inflates the memory figure).")
    var allocations = false

    @Option(help: "Base port (lowcomms on it, raw TCP on port+1); random 30000-40000 by default.")
    var port: Int?

    @Flag(help: .hidden)
    var serve = false

    static let messageSize = 152
    static let lockspaceName = "bench"
    static let remoteName = "bench-remote-res"

    func run() throws {
        let port = self.port ?? Int.random(in: 30000..<39990)
        if serve {
            try LockBenchServer.run(port: port, inFlight: inFlight)
            return
        }
        if allocations {
            // The malloc interposer (scripts/bench builds it beside the binary) counts allocations.
            AllocationCounter.reexecWithInterposerIfAvailable()
            guard let counter = AllocationCounter.loaded() else {
                throw ValidationError("\(AllocationCounter.library) is not beside the binary (scripts/bench builds it)")
            }
            let many = (0..<max(1, names)).map { LocalLockBench.name($0, prefix: "m") }
            let counts = LocalLockBench.allocationsPerPair(counter, names: many)
            if options.json {
                let data = try JSONSerialization.data(withJSONObject: ["benchmark": "locks", "allocations_per_pair": counts],
                                                      options: [.sortedKeys, .prettyPrinted])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print("allocations per lock + unlock pair (steady state): " + counts.keys.sorted().map {
                    String(format: "%@ %.2f", $0, counts[$0] ?? 0)
                }.joined(separator: ", "))
            }
            return
        }
        // Preloaded by hand: the counts are shown, but the memory figure includes the interposer's cost.
        let counter = AllocationCounter.loaded()
        let seconds = options.seconds
        var sections: [String: Any] = ["benchmark": "locks", "seconds_per_run": seconds]
        var text: [String] = ["locks bench: \(seconds) s per run, release build recommended"]

        // 3. Memory first, so that heap freed by the other runs is not reused by it.
        if memoryLocks > 0 {
            let m = LocalLockBench.memory(locks: memoryLocks)
            sections["memory"] = [
                "locks": m.locks, "mode": "NL", "rss_before_bytes": m.before, "rss_after_bytes": m.after,
                "bytes_per_lock": m.bytesPerLock, "seconds_to_lock_all": m.lockSeconds, "aim_bytes_per_lock": 400,
                "aim_met": m.bytesPerLock <= 400,
            ]
            text.append(String(format: "memory: %d NL locks on distinct names held in one LockManager: %.0f bytes/lock (RSS %.1f → %.1f MB; locked in %.2f s) (aim ≤ 400)",
                               m.locks, m.bytesPerLock, Double(m.before) / 1e6, Double(m.after) / 1e6, m.lockSeconds))
        }

        // 1. Local master.
        let oneName = [Array("bench-one".utf8)]
        let many = (0..<max(1, names)).map { LocalLockBench.name($0, prefix: "m") }
        let rows: [(String, LocalLockBench.Pairs)] = [
            ("dict insert+remove, 1 name (baseline)", LocalLockBench.dictionaryPairs(names: oneName, seconds: seconds)),
            ("lock EX+unlock, 1 name", LocalLockBench.lockPairs(names: oneName, seconds: seconds)),
            ("dict insert+remove, \(many.count) names (baseline)", LocalLockBench.dictionaryPairs(names: many, seconds: seconds)),
            ("lock EX+unlock, \(many.count) names", LocalLockBench.lockPairs(names: many, seconds: seconds)),
        ]
        var local: [[String: Any]] = []
        text.append("local master (single member, one core)          pairs/s   p50 ns   p99 ns   x baseline")
        for (i, (name, p)) in rows.enumerated() {
            let base = rows[i & ~1].1.pairsPerSecond
            local.append(["name": name, "pairs_per_sec": p.pairsPerSecond, "p50_ns": p.p50, "p99_ns": p.p99,
                          "pairs": p.pairs, "ratio_to_baseline": p.pairsPerSecond / base])
            text.append("  " + name.padding(toLength: 44, withPad: " ", startingAt: 0)
                        + String(format: "%11.0f %8.0f %8.0f   %5.2f", p.pairsPerSecond, p.p50, p.p99, p.pairsPerSecond / base))
        }
        let minLocal = min(rows[1].1.pairsPerSecond, rows[3].1.pairsPerSecond)
        sections["local"] = ["results": local, "aim_pairs_per_sec": 300_000, "aim_met": minLocal >= 300_000,
                             "baseline": "Dictionary<[UInt8], UInt32> insert + removeValue of the same names, timed the same way"]
        text.append(String(format: "  aim ≥ 300000 pairs/s: %@ (lowest %.0f)", minLocal >= 300_000 ? "met" : "NOT met", minLocal))

        // 1b. The lock-manager side of a remote pair, in memory.
        let inMemory = LocalLockBench.inMemoryRemotePairs(seconds: seconds)
        sections["remote_lock_managers_in_memory"] = [
            "setup": "node 1 requests, node 2 masters (holds NL); two LockManagers in one process, each message handed to the other manager as a value: no encoding, no transport",
            "pairs_per_sec": inMemory.pairsPerSecond, "p50_ns": inMemory.p50, "p99_ns": inMemory.p99, "pairs": inMemory.pairs,
        ]
        text.append(String(format: "remote pair, lock managers only (node 1 + node 2 in memory, no transport): %.0f pairs/s, p50 %.0f ns, p99 %.0f ns",
                           inMemory.pairsPerSecond, inMemory.p50, inMemory.p99))

        if let counter {
            let allocations = LocalLockBench.allocationsPerPair(counter, names: many)
            sections["allocations_per_pair"] = allocations
            text.append("allocations per lock + unlock pair: " + allocations.keys.sorted().map {
                String(format: "%@ %.2f", $0, allocations[$0] ?? 0)
            }.joined(separator: ", "))
            if memoryLocks > 0 { text.append("  (the malloc interposer is loaded: the memory figure above is inflated by it)") }
        } else {
            text.append("allocations per pair: see `dlm-peer bench locks --allocations`")
        }

        // 2. Many locks at once.
        let held = (0..<max(1, inFlight)).map { LocalLockBench.name($0, prefix: "f") }
        let dictBatch = LocalLockBench.dictionaryBatch(names: held, seconds: seconds)
        let lockBatch = LocalLockBench.lockBatch(names: held, seconds: seconds)
        sections["many_in_flight"] = [
            "locks": held.count,
            "baseline_dict_pairs_per_sec": dictBatch.best, "baseline_dict_avg_pairs_per_sec": dictBatch.average,
            "lock_pairs_per_sec": lockBatch.best, "lock_avg_pairs_per_sec": lockBatch.average, "rounds": lockBatch.rounds,
            "ratio_to_baseline": lockBatch.best / dictBatch.best,
        ]
        text.append(String(format: "many at once: %d EX locks on distinct names, all held, then all unlocked: %.0f pairs/s (avg %.0f, %d rounds); dict baseline %.0f pairs/s; ratio %.2f",
                           held.count, lockBatch.best, lockBatch.average, lockBatch.rounds, dictBatch.best, lockBatch.best / dictBatch.best))

        // 4. Remote master, two processes.
        if !noRemote {
            let r = try RemoteLockBench(port: port, seconds: seconds, inFlight: inFlight).run()
            let rawRTT50 = r.raw.p50, pairP50 = r.pair.p50, lockP50 = r.lock.p50
            let ratioRT = rawRTT50 > 0 ? (pairP50 / 2) / rawRTT50 : 0
            let ratioLock = rawRTT50 > 0 ? lockP50 / rawRTT50 : 0
            func lat(_ s: LocalLockBench.Stats) -> [String: Any] { ["p50_us": s.p50 / 1000, "p99_us": s.p99 / 1000, "count": s.count] }
            sections["remote"] = [
                "setup": "two processes on loopback: node 1 (127.0.0.1, this process) requests, node 2 (127.0.0.2, child) masters the resource (holds NL); raw ping-pong and lock pairs alternate in 4 slices each, one at a time on the same event loop",
                "raw_tcp_ping_pong": lat(r.raw).merging(["message_bytes": LockBench.messageSize, "round_trips_per_sec": r.rawPerSecond]) { a, _ in a },
                "pair": lat(r.pair).merging(["pairs_per_sec": r.pairsPerSecond]) { a, _ in a },
                "lock": lat(r.lock), "unlock": lat(r.unlock),
                "in_flight": [
                    "locks": inFlight,
                    "lock_pairs_per_sec": r.lockBatch.best, "lock_avg_pairs_per_sec": r.lockBatch.average, "rounds": r.lockBatch.rounds,
                    "baseline_raw_pingpongs_per_sec": r.rawBatch.best, "baseline_raw_avg_per_sec": r.rawBatch.average,
                    "baseline": "rounds of \(inFlight) raw \(LockBench.messageSize)-byte pings written at once, each round ending when all echoes are back",
                    "ratio_to_baseline": r.lockBatch.best / r.rawBatch.best,
                ] as [String: Any],
                "round_trip_ratio_p50": ratioRT, "lock_ratio_p50": ratioLock,
                "aim_round_trip_ratio": 1.5, "aim_met": ratioRT <= 1.5,
            ]
            func us(_ s: LocalLockBench.Stats) -> String { String(format: "%7.1f / %7.1f", s.p50 / 1000, s.p99 / 1000) }
            text.append("remote master (two processes on loopback)        per s    p50 / p99 µs")
            text.append("  raw TCP ping-pong, \(LockBench.messageSize) B (baseline)  " + String(format: "%9.0f", r.rawPerSecond) + "   " + us(r.raw))
            text.append("  lock EX + unlock pair (2 round trips)  " + String(format: "%9.0f", r.pairsPerSecond) + "   " + us(r.pair))
            text.append("    lock (REQUEST → grant)                          " + us(r.lock))
            text.append("    unlock (UNLOCK → completion)                    " + us(r.unlock))
            text.append(String(format: "  %d EX requests in flight (names mastered by node 2), then all unlocked: %.0f pairs/s (avg %.0f, %d rounds); raw TCP %d pings in flight: %.0f/s (%.3fx; a pair is 2 round trips)",
                               inFlight, r.lockBatch.best, r.lockBatch.average, r.lockBatch.rounds, inFlight, r.rawBatch.best, r.lockBatch.best / r.rawBatch.best))
            text.append(String(format: "  per round trip (pair p50 / 2) vs raw RTT p50: %.2fx (aim ≤ 1.5: %@); lock alone vs raw: %.2fx",
                               ratioRT, ratioRT <= 1.5 ? "met" : "NOT met", ratioLock))
            if pairP50 > 0 {
                text.append(String(format: "  lock-manager work in a pair (in-memory p50 above): %.1f%% of the pair's p50",
                                   100 * inMemory.p50 / pairP50))
            }
        }

        if options.json {
            print(String(decoding: try JSONSerialization.data(withJSONObject: sections, options: [.sortedKeys, .prettyPrinted]), as: UTF8.self))
        } else {
            for line in text { print(line) }
        }
    }
}

// MARK: - Local master

enum LocalLockBench {
    struct Stats {
        var p50: Double = 0
        var p99: Double = 0
        var count = 0
        init(_ ns: [UInt64]) {
            guard !ns.isEmpty else { return }
            let s = ns.sorted()
            p50 = Double(s[s.count / 2])
            p99 = Double(s[min(s.count - 1, Int(Double(s.count) * 0.99))])
            count = s.count
        }
    }

    struct Pairs {
        var pairsPerSecond: Double
        var p50: Double
        var p99: Double
        var pairs: Int
    }

    static let lockspaceID: UInt32 = 0x521B_2683

    static func manager() -> LockManager {
        LockManager(LockManager.Configuration(lockspaceID: lockspaceID, ourNodeID: 1, lvbLength: 32),
                    members: [LockManager.Member(nodeID: 1)])
    }

    /// `prefix` followed by 7 decimal digits ("r0000042").
    static func name(_ i: Int, prefix: UInt8) -> [UInt8] {
        var b = [UInt8](repeating: 0x30, count: 8)
        b[0] = prefix
        var v = i
        var k = 7
        while k > 0 {
            b[k] = 0x30 + UInt8(v % 10)
            v /= 10
            k -= 1
        }
        return b
    }

    static func name(_ i: Int, prefix: String) -> [UInt8] { name(i, prefix: Array(prefix.utf8)[0]) }

    static func granted(_ r: LockManager.CallResult) -> Bool {
        guard r.error == nil else { return false }
        for case .completion(let c) in r.actions where c.status == .granted { return true }
        return false
    }

    static func released(_ r: LockManager.CallResult) -> Bool {
        guard r.error == nil else { return false }
        for case .completion(let c) in r.actions where c.endOfLife { return true }
        return false
    }

    /// Runs `pair(i)` for `seconds` after a warm-up, with one clock read per pair: the pair's
    /// latency is the time between consecutive reads.
    static func timedPairs(seconds: Double, _ pair: (Int) -> Void) -> Pairs {
        for i in 0..<10_000 { pair(i) }
        var lat: [UInt64] = []
        lat.reserveCapacity(Int(seconds * 5_000_000))
        let start = monotonicNanos()
        let end = start + UInt64(seconds * 1e9)
        var prev = start
        var i = 0
        while prev < end {
            for _ in 0..<256 {
                pair(i)
                i &+= 1
                let now = monotonicNanos()
                lat.append(now &- prev)
                prev = now
            }
        }
        let s = Stats(lat)
        return Pairs(pairsPerSecond: Double(lat.count) / (Double(prev - start) / 1e9), p50: s.p50, p99: s.p99, pairs: lat.count)
    }

    static func lockPairs(names: [[UInt8]], seconds: Double) -> Pairs {
        var lm = manager()
        var failures = 0
        let n = names.count
        let p = timedPairs(seconds: seconds) { i in
            let r = lm.lock(name: names[i % n], mode: .ex, now: .zero)
            if !granted(r) { failures += 1 }
            let u = lm.unlock(lkid: r.lkid, now: .zero)
            if !released(u) { failures += 1 }
        }
        precondition(failures == 0, "bench locks: \(failures) lock/unlock calls did not complete at once")
        return p
    }

    static func dictionaryPairs(names: [[UInt8]], seconds: Double) -> Pairs {
        var d: [[UInt8]: UInt32] = [:]
        var sink: UInt32 = 0
        let n = names.count
        let p = timedPairs(seconds: seconds) { i in
            d[names[i % n]] = UInt32(truncatingIfNeeded: i)
            sink &+= d.removeValue(forKey: names[i % n]) ?? 1
        }
        if sink == 0xFFFF_FFFF { print("") }
        return p
    }

    /// Node 1 (requester) and node 2 (master, holding NL on the name) as two `LockManager`s in this
    /// process; every message goes to the other manager as a value. EX lock + unlock pairs from
    /// node 1: REQUEST, REQUEST_REPLY, UNLOCK, UNLOCK_REPLY — the lock managers' share of a remote
    /// pair, without codec and transport.
    struct InMemoryRemote {
        var nodes: [LockManager]
        let name = Array(LockBench.remoteName.utf8)
        var pending: [(LockManager.Action, UInt32)] = []
        var granted = 0
        var released = 0
        var failures = 0

        init() {
            let members = [LockManager.Member(nodeID: 1), LockManager.Member(nodeID: 2)]
            nodes = [
                LockManager(LockManager.Configuration(lockspaceID: lockspaceID, ourNodeID: 1, lvbLength: 32), members: members),
                LockManager(LockManager.Configuration(lockspaceID: lockspaceID, ourNodeID: 2, lvbLength: 32), members: members),
            ]
            pending.reserveCapacity(16)
            run(nodes[1].lock(name: name, mode: .nl, now: .zero).actions, from: 2)
        }

        /// Hands the messages on until none is left; counts node 1's completions.
        mutating func run(_ first: [LockManager.Action], from node: UInt32) {
            pending.removeAll(keepingCapacity: true)
            for a in first { pending.append((a, node)) }
            var i = 0
            while i < pending.count {
                let (action, sender) = pending[i]
                i += 1
                switch action {
                case .send(let message, let to):
                    guard to == 1 || to == 2 else { continue }
                    for a in nodes[Int(to) - 1].receive(message, from: sender, now: .zero) { pending.append((a, to)) }
                case .completion(let c):
                    guard sender == 1 else { continue }
                    if c.endOfLife { released += 1 } else if c.status == .granted { granted += 1 }
                case .blocking, .log:
                    break
                }
            }
        }

        mutating func pair() {
            let (g, r) = (granted, released)
            let call = nodes[0].lock(name: name, mode: .ex, now: .zero)
            run(call.actions, from: 1)
            run(nodes[0].unlock(lkid: call.lkid, now: .zero).actions, from: 1)
            if granted != g + 1 || released != r + 1 { failures += 1 }
        }
    }

    static func inMemoryRemotePairs(seconds: Double) -> Pairs {
        var bench = InMemoryRemote()
        let p = timedPairs(seconds: seconds) { _ in bench.pair() }
        precondition(bench.failures == 0, "bench locks: \(bench.failures) in-memory remote pairs did not complete")
        return p
    }

    /// Heap allocations per lock + unlock pair (steady state): local master on one name, local
    /// master cycling over `names`, and the in-memory remote pair (both managers and the harness's
    /// message hand-over, which reuses its buffer).
    static func allocationsPerPair(_ counter: AllocationCounter, names: [[UInt8]]) -> [String: Double] {
        let n = 10_000
        var out: [String: Double] = [:]
        var lm = manager()
        let one = Array("bench-one".utf8)
        for _ in 0..<1000 { _ = lm.unlock(lkid: lm.lock(name: one, mode: .ex, now: .zero).lkid, now: .zero) }
        out["local_1_name"] = Double(counter.count {
            for _ in 0..<n { _ = lm.unlock(lkid: lm.lock(name: one, mode: .ex, now: .zero).lkid, now: .zero) }
        }) / Double(n)
        for name in names { _ = lm.unlock(lkid: lm.lock(name: name, mode: .ex, now: .zero).lkid, now: .zero) }
        out["local_\(names.count)_names"] = Double(counter.count {
            for i in 0..<n {
                _ = lm.unlock(lkid: lm.lock(name: names[i % names.count], mode: .ex, now: .zero).lkid, now: .zero)
            }
        }) / Double(n)
        var remote = InMemoryRemote()
        for _ in 0..<1000 { remote.pair() }
        out["remote_pair_in_memory"] = Double(counter.count { for _ in 0..<n { remote.pair() } }) / Double(n)
        return out
    }

    struct Batch {
        var best: Double
        var average: Double
        var rounds: Int
    }

    static func timedRounds(perRound: Int, seconds: Double, _ round: () -> Void) -> Batch {
        round()
        var best = Double.infinity
        var rounds = 0
        let start = monotonicNanos()
        let end = start + UInt64(seconds * 1e9)
        var now = start
        repeat {
            let t0 = now
            round()
            now = monotonicNanos()
            best = min(best, Double(now - t0))
            rounds += 1
        } while now < end
        return Batch(best: Double(perRound) / (best / 1e9), average: Double(perRound * rounds) / (Double(now - start) / 1e9), rounds: rounds)
    }

    static func lockBatch(names: [[UInt8]], seconds: Double) -> Batch {
        var lm = manager()
        var ids = [UInt32](repeating: 0, count: names.count)
        var failures = 0
        let b = timedRounds(perRound: names.count, seconds: seconds) {
            for i in names.indices {
                let r = lm.lock(name: names[i], mode: .ex, now: .zero)
                if !granted(r) { failures += 1 }
                ids[i] = r.lkid
            }
            for i in names.indices {
                if !released(lm.unlock(lkid: ids[i], now: .zero)) { failures += 1 }
            }
        }
        precondition(failures == 0, "bench locks: \(failures) lock/unlock calls did not complete at once")
        return b
    }

    static func dictionaryBatch(names: [[UInt8]], seconds: Double) -> Batch {
        var d: [[UInt8]: UInt32] = [:]
        var sink: UInt32 = 0
        let b = timedRounds(perRound: names.count, seconds: seconds) {
            for i in names.indices { d[names[i]] = UInt32(truncatingIfNeeded: i) }
            for i in names.indices { sink &+= d.removeValue(forKey: names[i]) ?? 1 }
        }
        if sink == 0xFFFF_FFFF { print("") }
        return b
    }

    static func rss() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = s.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    struct Memory {
        var locks: Int
        var before: Int
        var after: Int
        var bytesPerLock: Double
        var lockSeconds: Double
    }

    /// `locks` NL locks on distinct names ("r0000000"...) held in one manager; the names are
    /// made on the fly, so the manager holds the only copies.
    static func memory(locks: Int) -> Memory {
        var lm = manager()
        let before = rss()
        let t0 = monotonicNanos()
        var failures = 0
        for i in 0..<locks {
            if !granted(lm.lock(name: name(i, prefix: UInt8(ascii: "r")), mode: .nl, now: .zero)) { failures += 1 }
        }
        let t1 = monotonicNanos()
        let after = rss()
        precondition(failures == 0, "bench locks: \(failures) locks not granted")
        withExtendedLifetime(lm) {}
        return Memory(locks: locks, before: before, after: after, bytesPerLock: Double(after - before) / Double(locks),
                      lockSeconds: Double(t1 - t0) / 1e9)
    }
}

// MARK: - Remote master

func lockBenchConfig(port: Int) throws -> ClusterConfig {
    try loopbackClusterConfig(nodes: 2, port: port, lockspace: LockBench.lockspaceName)
}

/// Node 2: masters the bench resource (NL held) and echoes raw TCP pings.
enum LockBenchServer {
    static func remoteInFlightName(_ i: Int) -> String { String(decoding: LocalLockBench.name(i, prefix: "f"), as: UTF8.self) }

    /// Counts the NL grants of node 2's start-up locks (on the loop).
    final class Counter: @unchecked Sendable {
        var left = 0
    }

    static func run(port: Int, inFlight: Int) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let logger = { var l = Logger(label: "dlm.bench.locks.serve"); l.logLevel = .warning; return l }()
        let config = try lockBenchConfig(port: port)
        let peer = try loop.submit { try PeerNode(config: config, nodeID: 2, eventLoop: loop, logger: logger) }.wait()
        _ = try ServerBootstrap(group: loop)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandlers([ByteToMessageHandler(DLMFrameDecoder()),
                                                                TransportBenchServer.RawHandler()])
                }
            }
            .bind(to: try SocketAddress(ipAddress: "127.0.0.2", port: port + 1)).wait()
        let joined = try loop.submit { peer.start() }.wait()
        FileHandle.standardOutput.write(Data("ready\n".utf8))
        joined.whenComplete { result in
            switch result {
            case .failure(let e):
                FileHandle.standardOutput.write(Data("failed \(e)\n".utf8))
            case .success:
                // Node 2 locks first, so it masters the pair run's resource and the in-flight names.
                let names = [LockBench.remoteName] + (0..<inFlight).map(remoteInFlightName)
                let counter = Counter()
                counter.left = names.count
                for name in names {
                    peer.lock(lockspace: LockBench.lockspaceName, name: name, mode: .nl, onCompletion: { c in
                        guard c.status == .granted else {
                            FileHandle.standardOutput.write(Data("failed \(c.status)\n".utf8))
                            return
                        }
                        counter.left -= 1
                        if counter.left == 0 { FileHandle.standardOutput.write(Data("locked\n".utf8)) }
                    }).whenFailure { e in FileHandle.standardOutput.write(Data("failed \(e)\n".utf8)) }
                }
            }
        }
        // Runs until the parent stops us (SIGTERM by PID) or our stdin closes.
        while let _ = readLine() {}
        exit(0)
    }
}

struct RemoteLockBench {
    let port: Int
    let seconds: Double
    let inFlight: Int

    struct Result {
        var raw: LocalLockBench.Stats
        var rawPerSecond: Double
        var lock: LocalLockBench.Stats
        var unlock: LocalLockBench.Stats
        var pair: LocalLockBench.Stats
        var pairsPerSecond: Double
        var rawBatch: LocalLockBench.Batch
        var lockBatch: LocalLockBench.Batch
    }

    /// Reads the child's stdout until a line starting with one of `words`.
    static func waitFor(_ words: [String], in handle: FileHandle, buffer: inout String) throws -> String {
        while true {
            for line in buffer.split(separator: "\n") {
                if let w = words.first(where: { line.hasPrefix($0) }) {
                    if w == "failed" { throw ValidationError("bench locks --serve child: \(line)") }
                    return w
                }
            }
            let d = handle.availableData
            if d.isEmpty { throw ValidationError("bench locks --serve child exited") }
            buffer += String(decoding: d, as: UTF8.self)
        }
    }

    func run() throws -> Result {
        let child = try BenchChild(arguments: ["bench", "locks", "--serve", "--port", "\(port)", "--in-flight", "\(inFlight)"])
        defer { child.stop() }
        var buffer = ""
        _ = try Self.waitFor(["ready", "failed"], in: child.output.fileHandleForReading, buffer: &buffer)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        let logger = { var l = Logger(label: "dlm.bench.locks"); l.logLevel = .warning; return l }()
        let config = try lockBenchConfig(port: port)
        let peer = try loop.submit { try PeerNode(config: config, nodeID: 1, eventLoop: loop, logger: logger) }.wait()
        _ = try loop.flatSubmit { peer.start() }.wait()
        buffer = ""
        _ = try Self.waitFor(["locked", "failed"], in: child.output.fileHandleForReading, buffer: &buffer)

        // Baseline: raw TCP ping-pong to the child, same loop.
        let raw = try RawClient.connect(loop: loop, port: port + 1)
        // Ping-pong latency on this shared machine drifts with the load of the other core, so the
        // raw and lock runs alternate in four slices each.
        let slices = 4
        var rawRTT: [UInt64] = []
        var r = RemoteDriver.Samples()
        for _ in 0..<slices {
            rawRTT += try raw.pingPong(size: LockBench.messageSize, seconds: seconds / Double(slices)).rtt
            let part = try RemoteDriver(peer: peer, seconds: seconds / Double(slices)).run().wait()
            r.lock += part.lock
            r.unlock += part.unlock
            r.pair += part.pair
            r.elapsed += part.elapsed
        }
        let rawBatch = try RawBatch(raw: raw, count: inFlight, size: LockBench.messageSize, seconds: seconds).run().wait()
        try? raw.channel.close().wait()
        let rawTotal = rawRTT.reduce(0, +)

        let lockBatch = try InFlightDriver(peer: peer, count: inFlight, seconds: seconds).run().wait()

        let sem = DispatchSemaphore(value: 0)
        peer.leave().whenComplete { _ in sem.signal() }
        _ = sem.wait(timeout: .now() + 2)

        return Result(raw: LocalLockBench.Stats(rawRTT),
                      rawPerSecond: rawTotal > 0 ? Double(rawRTT.count) / (Double(rawTotal) / 1e9) : 0,
                      lock: LocalLockBench.Stats(r.lock), unlock: LocalLockBench.Stats(r.unlock),
                      pair: LocalLockBench.Stats(r.pair),
                      pairsPerSecond: Double(r.pair.count) / r.elapsed, rawBatch: rawBatch, lockBatch: lockBatch)
    }
}

/// Lock + unlock round trips from node 1, one pair at a time; confined to the peer's loop.
final class RemoteDriver: @unchecked Sendable {
    struct Samples: Sendable {
        var lock: [UInt64] = []
        var unlock: [UInt64] = []
        var pair: [UInt64] = []
        var elapsed: Double = 0
    }

    let peer: PeerNode
    let seconds: Double
    let promise: EventLoopPromise<Samples>
    var samples = Samples()
    var warmup = 50
    var start: UInt64 = 0
    var end: UInt64 = 0
    var t0: UInt64 = 0
    var t1: UInt64 = 0

    init(peer: PeerNode, seconds: Double) {
        self.peer = peer
        self.seconds = seconds
        promise = peer.eventLoop.makePromise()
    }

    func run() -> EventLoopFuture<Samples> {
        peer.eventLoop.execute { [self] in
            start = monotonicNanos()
            end = start + UInt64(seconds * 1e9)
            next()
        }
        return promise.futureResult
    }

    private func next() {
        t0 = monotonicNanos()
        peer.lock(lockspace: LockBench.lockspaceName, name: LockBench.remoteName, mode: .ex, onCompletion: { [self] c in
            completed(c)
        }).whenFailure { [self] e in promise.fail(e) }
    }

    private func completed(_ c: LockManager.Completion) {
        let now = monotonicNanos()
        if !c.endOfLife {
            guard c.status == .granted else {
                promise.fail(PeerNodeError("remote lock: \(c.status)"))
                return
            }
            t1 = now
            peer.unlock(lockspace: LockBench.lockspaceName, lkid: c.lkid).whenFailure { [self] e in promise.fail(e) }
            return
        }
        if warmup > 0 {
            warmup -= 1
            if warmup == 0 { start = now; end = now + UInt64(seconds * 1e9) }
        } else {
            samples.lock.append(t1 - t0)
            samples.unlock.append(now - t1)
            samples.pair.append(now - t0)
        }
        if warmup == 0 && now >= end {
            samples.elapsed = Double(now - start) / 1e9
            promise.succeed(samples)
        } else {
            next()
        }
    }
}

/// Rounds of `count` raw pings written at once, each round ending when every echo is back.
final class RawBatch: @unchecked Sendable {
    let raw: RawClient
    let count: Int
    let size: Int
    let seconds: Double
    let promise: EventLoopPromise<LocalLockBench.Batch>
    var left = 0
    var rounds: BatchRounds

    init(raw: RawClient, count: Int, size: Int, seconds: Double) {
        self.raw = raw
        self.count = count
        self.size = size
        self.seconds = seconds
        rounds = BatchRounds(count: count, seconds: seconds)
        promise = raw.channel.eventLoop.makePromise()
    }

    func run() -> EventLoopFuture<LocalLockBench.Batch> {
        raw.channel.eventLoop.execute { [self] in
            raw.handler.onWritable = nil
            raw.handler.onFrame = { [self] frame in
                guard let h = try? DLMHeader.peek(frame), h.command == 2 else { return }
                left -= 1
                if left == 0 { roundDone() }
            }
            round()
        }
        return promise.futureResult
    }

    private func round() {
        let t0 = rounds.begin()
        left = count
        let template = RawMsg.make(cmd: 2, size: size, stamp: t0)
        for _ in 0..<count { raw.channel.write(template, promise: nil) }
        raw.channel.flush()
    }

    private func roundDone() {
        if let batch = rounds.end() { promise.succeed(batch) } else { round() }
    }
}

/// Timing of repeated rounds of `count` operations: the first round warms up, then rounds run
/// until `seconds` have passed; the result is the best round's rate and the average.
struct BatchRounds {
    let count: Int
    let seconds: Double
    private var rounds = -1
    private var start: UInt64 = 0
    private var t0: UInt64 = 0
    private var best = Double.infinity

    init(count: Int, seconds: Double) {
        self.count = count
        self.seconds = seconds
    }

    /// Starts a round; returns its start time.
    mutating func begin() -> UInt64 {
        t0 = monotonicNanos()
        return t0
    }

    /// Ends a round: the result once enough time has passed, else nil (run another round).
    mutating func end() -> LocalLockBench.Batch? {
        let now = monotonicNanos()
        rounds += 1
        if rounds == 0 {
            start = now
        } else {
            best = min(best, Double(now - t0))
        }
        guard rounds > 0 && now - start >= UInt64(seconds * 1e9) else { return nil }
        return LocalLockBench.Batch(best: Double(count) / (best / 1e9),
                                    average: Double(count * rounds) / (Double(now - start) / 1e9),
                                    rounds: rounds)
    }
}

/// Rounds of `count` EX requests on distinct names mastered by node 2, all in flight at once;
/// once all are granted, all are unlocked; a round ends when every unlock has completed.
final class InFlightDriver: @unchecked Sendable {
    let peer: PeerNode
    let count: Int
    let seconds: Double
    let names: [String]
    let promise: EventLoopPromise<LocalLockBench.Batch>
    var lkids: [UInt32]
    var left = 0
    var rounds: BatchRounds
    var failed = false

    init(peer: PeerNode, count: Int, seconds: Double) {
        self.peer = peer
        self.count = count
        self.seconds = seconds
        names = (0..<count).map(LockBenchServer.remoteInFlightName)
        lkids = [UInt32](repeating: 0, count: count)
        rounds = BatchRounds(count: count, seconds: seconds)
        promise = peer.eventLoop.makePromise()
    }

    func run() -> EventLoopFuture<LocalLockBench.Batch> {
        peer.eventLoop.execute { [self] in
            round()  // the first round warms up (directory lookups)
        }
        return promise.futureResult
    }

    private func fail(_ e: Error) {
        guard !failed else { return }
        failed = true
        promise.fail(e)
    }

    private func round() {
        _ = rounds.begin()
        left = count
        for i in 0..<count {
            peer.lock(lockspace: LockBench.lockspaceName, name: names[i], mode: .ex, onCompletion: { [self] c in
                completed(i, c)
            }).whenFailure { [self] e in fail(e) }
        }
    }

    private func completed(_ i: Int, _ c: LockManager.Completion) {
        guard !failed else { return }
        if !c.endOfLife {
            guard c.status == .granted else { return fail(PeerNodeError("in-flight lock: \(c.status)")) }
            lkids[i] = c.lkid
            left -= 1
            if left == 0 {
                left = count
                for id in lkids {
                    peer.unlock(lockspace: LockBench.lockspaceName, lkid: id).whenFailure { [self] e in fail(e) }
                }
            }
            return
        }
        left -= 1
        guard left == 0 else { return }
        if let batch = rounds.end() { promise.succeed(batch) } else { round() }
    }
}
