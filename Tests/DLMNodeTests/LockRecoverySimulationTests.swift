import DLMTransport
import NIOCore
import Testing

@testable import DLMNode

/// Random runs of `LockRecoverySim`: real lock managers through joins, planned leaves, crashes
/// (with lock traffic in flight), crash-and-return (renew) and membership changes during recovery.
@Suite("Lock state through recovery (simulation)")
struct LockRecoverySimulationTests {
    /// One run: formation, then `changes` membership changes with client traffic before, during and
    /// after each; a drain at the end.
    static func runScenarioTraced(seed: UInt64, nodir: Bool = false) -> LockRecoverySim {
        runScenario(seed: seed, changes: 10, tracing: true, nodir: nodir)
    }

    static func runScenario(seed: UInt64, changes: Int, tracing: Bool = false, nodir: Bool = false) -> LockRecoverySim {
        var rng = RecoveryRNG(seed: seed ^ 0x5EED)
        let sim = LockRecoverySim(seed: seed, names: Int.random(in: 4...12, using: &rng), nodir: nodir)
        sim.tracing = tracing
        let pool = UInt32(Int.random(in: 3...5, using: &rng))
        let ids = Array(1...pool)
        for id in ids { sim.weights[id] = [0, 1, 1, 1, 2].randomElement(using: &rng)! }
        var initial = ids.filter { _ in Int.random(in: 0..<3, using: &rng) > 0 }
        if initial.count < 2 { initial = Array(ids.prefix(2)) }
        sim.change(to: initial, joinDelayMs: 200)
        guard sim.runUntilQuiescent() else {
            sim.problem("formation of \(initial) did not complete")
            return sim
        }
        sim.checkQuiescent()

        func traffic(_ calls: Int) {
            for _ in 0..<calls {
                sim.clientCall()
                for _ in 0..<Int.random(in: 0...3, using: &rng) { sim.step() }
                if Int.random(in: 0..<40, using: &rng) == 0 {
                    sim.now = sim.now + .seconds(Int64.random(in: 1...6, using: &rng))
                    sim.tick()
                }
            }
        }

        for _ in 0..<changes {
            traffic(Int.random(in: 20...80, using: &rng))
            let current = sim.members
            let outside = ids.filter { !current.contains($0) }
            switch Int.random(in: 0..<6, using: &rng) {
            case 0 where !outside.isEmpty:
                sim.change(to: current + [outside.randomElement(using: &rng)!])
            case 1 where current.count > 1:
                let leaver = current.randomElement(using: &rng)!
                sim.change(to: current.filter { $0 != leaver })
            case 2 where current.count > 1, 3 where current.count > 1:
                // A crash with messages in flight; the survivors keep locking until the CM acts.
                let victim = current.randomElement(using: &rng)!
                sim.crash(victim)
                traffic(Int.random(in: 0...15, using: &rng))
                sim.run(for: .milliseconds(Int64.random(in: 0...2000, using: &rng)))
                sim.change(to: current.filter { $0 != victim })
            case 4 where current.count > 1:
                // Crash and come back before the next start: renewed.
                let victim = current.randomElement(using: &rng)!
                sim.crash(victim)
                sim.change(to: current, renewed: [victim])
            default:
                // A change while the previous change's recovery runs (and clients on nodes that resumed).
                var next = current
                if let j = outside.randomElement(using: &rng) { next.append(j) }
                sim.change(to: next)
                sim.run(for: .milliseconds(Int64.random(in: 0...300, using: &rng)))
                traffic(Int.random(in: 0...10, using: &rng))
                if next.count > 1, Bool.random(using: &rng) {
                    let victim = next.randomElement(using: &rng)!
                    sim.crash(victim)
                    next.removeAll { $0 == victim }
                }
                sim.change(to: next)
            }
            // Clients on members that resumed early (the low node resumes first).
            for _ in 0..<Int.random(in: 0...20, using: &rng) {
                for _ in 0..<Int.random(in: 1...8, using: &rng) { sim.step() }
                sim.clientCall()
            }
            guard sim.runUntilQuiescent() else {
                let states = sim.members.map { id in
                    "\(id):\(sim.nodes[id].map { "\($0.machine.phase) waiting \(String(describing: $0.machine.waitingFor)) outstanding \($0.locks.hasOutstandingOperations)" } ?? "-")"
                }
                sim.problem("no quiescence for \(sim.members): \(states) inflight \(sim.inflight.count)")
                return sim
            }
            sim.checkQuiescent()
            if !sim.problems.isEmpty { return sim }
        }
        traffic(30)
        _ = sim.runUntilQuiescent()
        sim.checkQuiescent()
        sim.drain()
        return sim
    }

    @Test("random membership changes with lock traffic keep the invariants (seeded)", arguments: 0..<6)
    func randomRuns(batch: Int) {
        _ = Self.runBatch(batch, nodir: false)
    }

    @Test("the same in nodir lockspaces: static masters, no RCOM_LOOKUP, master copies rebuilt every recovery",
          arguments: 0..<3)
    func randomRunsNodir(batch: Int) {
        let t = Self.runBatch(batch, nodir: true)
        #expect(t.rcomLookups == 0 && t.rcomLocks > 0)
    }

    /// Eight seeded scenarios; the totals of their counters.
    static func runBatch(_ batch: Int, nodir: Bool) -> LockRecoverySim.Stats {
        var total = LockRecoverySim.Stats()
        var runs = 0
        for i in 0..<8 {
            let seed = UInt64(batch * 100 + i) &* 0x9E37_79B9_7F4A
            let sim = Self.runScenario(seed: seed, changes: 10, nodir: nodir)
            #expect(sim.problems.isEmpty, "seed \(seed) nodir \(nodir): \(sim.problems.prefix(6))")
            if !sim.problems.isEmpty {
                // The same run again with a trace of every event, for whoever debugs it.
                let traced = Self.runScenarioTraced(seed: seed, nodir: nodir)
                print("seed \(seed), last events:\n" + traced.trace.suffix(60).joined(separator: "\n"))
                return total
            }
            runs += 1
            let s = sim.stats
            total.steps += s.steps
            total.changes += s.changes
            total.recoveries += s.recoveries
            total.interrupted += s.interrupted
            total.rcoms += s.rcoms
            total.messages += s.messages
            total.calls += s.calls
            total.accepted += s.accepted
            total.completions += s.completions
            total.stepChecks += s.stepChecks
            total.quiescentChecks += s.quiescentChecks
            total.lvbChecks += s.lvbChecks
            total.purged += s.purged
            total.rcomLocks += s.rcomLocks
            total.rcomLookups += s.rcomLookups
            total.resends += s.resends
            total.fakedUnlockCancel += s.fakedUnlockCancel
            total.crashesWithTraffic += s.crashesWithTraffic
        }
        let t = total
        print("lock recovery simulation\(nodir ? " (nodir)" : "") batch \(batch): \(runs) seeds, \(t.steps) steps, \(t.changes) membership changes, "
            + "\(t.recoveries) node recoveries (\(t.interrupted) interrupted), \(t.crashesWithTraffic) crashes with "
            + "traffic in flight, \(t.rcoms) RCOMs (\(t.rcomLookups) RCOM_LOOKUP, \(t.rcomLocks) RCOM_LOCK), \(t.messages) DLM_MSGs, \(t.calls) "
            + "client calls (\(t.accepted) accepted, \(t.completions) completions), \(t.purged) locks purged, "
            + "\(t.resends) resends, \(t.fakedUnlockCancel) unlock/cancel faked, checks: \(t.stepChecks) per-step, "
            + "\(t.lvbChecks) LVB, \(t.quiescentChecks) quiescent")
        #expect(t.recoveries > 0 && t.quiescentChecks > 0)
        return t
    }
}
