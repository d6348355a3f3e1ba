import DLMNode
import DLMTransport
import NIOCore
import Testing

/// The N-node simulation: random joins, leaves, crashes, renewals and membership changes during
/// recovery, with the invariants of recovery.md §7.1 checked after every step (safety) and at every
/// quiescent point (agreement, one master, directory, no departed locks, slots, generation).
@Suite("Recovery simulation")
struct RecoverySimulationTests {
    struct Figures {
        var runs = 0
        var changes = 0
        var recoveries = 0
        var interrupted = 0
        var messages = 0
        var timeouts = 0
        var locks = 0
        var checks = 0
        var maxNodes = 0
        var lookups = 0
        var lockCopies = 0
    }

    /// One random run; returns the simulation for its counters.
    static func runScenario(seed: UInt64, operations: Int) -> RecoverySim {
        let sim = RecoverySim(seed: seed)
        var rng = RecoveryRNG(seed: seed ^ 0xABCD)
        let pool = UInt32(Int.random(in: 2...6, using: &rng))
        let ids = Array(1...pool)
        for id in ids { sim.weights[id] = [0, 1, 1, 1, 2].randomElement(using: &rng)! }
        var initial = ids.filter { _ in Bool.random(using: &rng) }
        if initial.count < 2 { initial = Array(ids.prefix(2)) }
        sim.change(to: initial)
        if !sim.runUntilQuiescent() {
            sim.violations.append("initial formation of \(initial) did not complete")
            return sim
        }
        sim.checkQuiescent()
        sim.randomLockOps(Int.random(in: 5...40, using: &rng), pool: 8)
        sim.checkQuiescent()

        for _ in 0..<operations {
            let current = sim.members
            let outside = ids.filter { !current.contains($0) }
            switch Int.random(in: 0..<6, using: &rng) {
            case 0 where !outside.isEmpty:
                // Join.
                sim.change(to: current + [outside.randomElement(using: &rng)!])
            case 1 where current.count > 1:
                // Planned leave.
                let leaver = current.randomElement(using: &rng)!
                sim.change(to: current.filter { $0 != leaver })
            case 2 where current.count > 1:
                // Crash; the CM notices a little later (possibly while nothing else happens).
                let victim = current.randomElement(using: &rng)!
                sim.crash(victim)
                sim.run(for: .milliseconds(Int64.random(in: 0...6000, using: &rng)))
                sim.change(to: current.filter { $0 != victim })
            case 3 where current.count > 1:
                // Crash and come back before the next start: renewed in the same change.
                let victim = current.randomElement(using: &rng)!
                sim.crash(victim)
                sim.change(to: current, renewed: [victim])
            case 4:
                // A change while the previous change's recovery runs.
                var next = current
                if let j = outside.randomElement(using: &rng) { next.append(j) }
                sim.change(to: next)
                sim.run(for: .milliseconds(Int64.random(in: 0...400, using: &rng)))
                if next.count > 1, Bool.random(using: &rng) {
                    let victim = next.randomElement(using: &rng)!
                    sim.crash(victim)
                    next.removeAll { $0 == victim }
                }
                sim.change(to: next)
            default:
                sim.randomLockOps(Int.random(in: 1...20, using: &rng), pool: 8)
                sim.checkQuiescent()
                continue
            }
            if !sim.runUntilQuiescent() {
                let states = sim.members.map { id in
                    "\(id):\(sim.nodes[id].map { "\($0.machine.phase) waiting \(String(describing: $0.machine.waitingFor))" } ?? "-")"
                }
                sim.violations.append("recovery did not complete for \(sim.members): \(states)")
                return sim
            }
            sim.checkQuiescent()
            if Bool.random(using: &rng) {
                sim.randomLockOps(Int.random(in: 1...15, using: &rng), pool: 8)
                sim.checkQuiescent()
            }
        }
        return sim
    }

    @Test("random membership changes keep the invariants (seeded)", arguments: 0..<8)
    func randomRuns(batch: Int) {
        var f = Figures()
        for i in 0..<25 {
            let seed = UInt64(batch * 1000 + i) &* 0x9E37_79B9
            let sim = Self.runScenario(seed: seed, operations: 8)
            #expect(sim.violations.isEmpty, "seed \(seed): \(sim.violations.prefix(5))")
            if !sim.violations.isEmpty { return }
            for n in sim.nodes.values { #expect(n.failures.isEmpty, "seed \(seed): \(n.failures)") }
            f.runs += 1
            f.changes += sim.changes
            f.recoveries += sim.completedRecoveries
            f.interrupted += sim.interrupted
            f.messages += sim.messagesDelivered
            f.timeouts += sim.timeouts
            f.locks += sim.locksCreated
            f.checks += sim.quiescentChecks
            f.maxNodes = max(f.maxNodes, sim.nodes.count)
            f.lookups += sim.delivered[.lookup, default: 0]
            f.lockCopies += sim.delivered[.lock, default: 0]
        }
        print("recovery simulation batch \(batch): \(f.runs) runs, up to \(f.maxNodes) nodes, \(f.changes) membership "
            + "changes, \(f.recoveries) completed / \(f.interrupted) interrupted recoveries, \(f.messages) RCOMs, "
            + "\(f.timeouts) timeout resends, \(f.locks) locks, \(f.lookups) RCOM_LOOKUP, \(f.lockCopies) RCOM_LOCK, "
            + "\(f.checks) quiescent checks")
    }

    @Test("a member whose lvb length differs makes both sides fail, nothing hangs")
    func configMismatch() {
        let sim = RecoverySim(seed: 7)
        sim.lvbLength[2] = 64
        sim.dropProbability = 0
        sim.change(to: [1, 2])
        sim.run(for: .seconds(10))
        #expect(!sim.isQuiescent)
        for id: UInt32 in [1, 2] {
            let f = sim.nodes[id]!.failures
            #expect(f.count == 1)
            if case .configMismatch(let n, let ol, _, let tl, _)? = f.first {
                #expect(n == (id == 1 ? 2 : 1))
                #expect(ol == (id == 1 ? 32 : 64) && tl == (id == 1 ? 64 : 32))
            } else {
                Issue.record("node \(id): \(f)")
            }
            #expect(f.first?.errno == -71)
        }
        // The CM fixes it by removing node 2: node 1 recovers alone.
        sim.crash(2)
        sim.change(to: [1])
        #expect(sim.runUntilQuiescent())
        sim.checkQuiescent()
        #expect(sim.violations.isEmpty, "\(sim.violations)")
    }

    @Test("a node that has not created the lockspace is polled until it does (not ready)")
    func lateJoiner() {
        let sim = RecoverySim(seed: 11)
        sim.dropProbability = 0
        sim.change(to: [1, 2, 3], joinDelayMs: 0)
        #expect(sim.runUntilQuiescent())
        sim.randomLockOps(30, pool: 10)
        // Node 4 joins, but creates its lockspace 3 s later.
        sim.change(to: [1, 2, 3, 4])
        sim.scheduled = sim.scheduled.map { s in
            if case .start(4, _, _) = s.what { return (sim.now + .seconds(3), s.what) }
            return s
        }
        sim.run(for: .seconds(2))
        #expect(!sim.isQuiescent)
        #expect(sim.runUntilQuiescent())
        sim.checkQuiescent()
        #expect(sim.violations.isEmpty, "\(sim.violations)")
        #expect(sim.nodes[4]!.machine.generation == 2)
    }
}
