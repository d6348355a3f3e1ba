import DLMTransport
import Testing

@testable import DLMNode

/// Recovery work is linear in the number of locks (issue 5: 4 nodes took 57 s for 100k locks, as
/// every RCOM_LOOKUP_REPLY copied the table of all outstanding LOOKUPs). Work is counted, never
/// timed: the per-lock tables' copy-on-write copies and the RCOMs of each kind.
@Suite("Recovery scaling")
struct RecoveryScalingTests {
    struct Work {
        var tableCopies = 0
        var sent: [RcomType: Int] = [:]
        func count(_ type: RcomType) -> Int { sent[type] ?? 0 }
    }

    /// Node 1 masters `count` names and node 2 another `count`; node 2 holds PR on node 1's names,
    /// node 3 PR on both sets. Node 1 dies and the others recover: NAMES pages for node 2's names,
    /// LOOKUPs for node 1's, LOCKs from whichever of nodes 2 and 3 lost the race to master them.
    /// Checks that no lock was lost and returns the recovery's work.
    func recover(nodes: Int, locks count: Int) -> Work {
        let c = RecoveryScalingCluster(nodes: nodes)
        c.restartLiveMembers()
        c.runUntilIdle()
        let first = (0..<count).map { Array("rb-\($0)".utf8) }
        let second = (0..<count).map { Array("rs-\($0)".utf8) }
        c.lock(on: 1, names: first, mode: .pr)
        c.lock(on: 2, names: second, mode: .pr)
        c.lock(on: 2, names: first, mode: .pr)
        c.lock(on: 3, names: first + second, mode: .pr)
        #expect(c.granted == 5 * count)
        let before = c.alive.map { c.nodes[$0]!.machine.counters.passTableCopies }.reduce(0, +)
        c.sent = [:]
        c.kill(1)
        c.restartLiveMembers()
        c.runUntilIdle()
        #expect(c.failures.isEmpty, "\(c.failures.prefix(5))")
        for id in c.alive {
            #expect(c.nodes[id]!.machine.isRunning, "node \(id) did not finish its recovery")
        }
        #expect(c.recoveriesDone == nodes + (nodes - 1))   // formation, then the survivors
        #expect(holdsRebuiltLocks(c, node: 2) == 2 * count)
        #expect(holdsRebuiltLocks(c, node: 3) == 2 * count)
        let after = c.alive.map { c.nodes[$0]!.machine.counters.passTableCopies }.reduce(0, +)
        return Work(tableCopies: after - before, sent: c.sent)
    }

    /// Node `id`'s granted PR locks whose master (itself or another survivor) holds them.
    func holdsRebuiltLocks(_ c: RecoveryScalingCluster, node id: UInt32) -> Int {
        let locks = c.nodes[id]!.locks
        var held = 0
        for view in locks.lockViews where !view.isMasterCopy && view.lock.status == .granted && view.lock.grantedMode == .pr {
            guard let master = locks.resourceView(view.name)?.master, c.alive.contains(master) else { continue }
            if master == id {
                held += 1
            } else if let copy = c.nodes[master]!.locks.lockView(view.lock.remoteID), copy.isMasterCopy,
                      copy.lock.nodeID == Int32(id), copy.lock.remoteID == view.lock.id {
                held += 1
            }
        }
        return held
    }

    @Test("no table copies, RCOMs linear in the locks", arguments: [4, 8])
    func linear(nodes: Int) {
        let n = 300
        let small = recover(nodes: nodes, locks: n)
        let large = recover(nodes: nodes, locks: 2 * n)
        // No pass table was ever copied (one copy per reply was issue 5's quadratic cost).
        #expect(small.tableCopies == 0)
        #expect(large.tableCopies == 0)
        // At most one LOOKUP per resource and requester, one LOCK per lock: doubling the locks
        // doubles them (give or take the hashing of names to directory nodes).
        for type in [RcomType.lookup, .lock, .names] {
            #expect(small.count(type) > 0, "no \(type) exercised")
            #expect(large.count(type) <= 2 * small.count(type) + n / 5, "\(type): \(small.count(type)) -> \(large.count(type))")
        }
        #expect(large.count(.lookup) <= 2 * 2 * n)
        #expect(large.count(.lock) <= 2 * 2 * n)
        let total = { (w: Work) in w.sent.values.reduce(0, +) }
        #expect(total(large) <= 2 * total(small) + n / 2)
    }
}
