// The agent's coordination state machine (AgentCore): formation, joins, leaves, failures,
// superseded changes, and the stop-before-start invariant under random delivery orders.

import Testing
@testable import DLMNode

/// N agents, a network that delivers in any order the test picks, and per node a fake kernel
/// lockspace that checks the kernel's assumptions (recovery.md §5.2) at every start:
/// every member of the new membership is stopped (or already started with the same change),
/// and all members are started with the same list.
struct AgentSim {
    enum Kernel: Equatable {
        case absent
        case stopped
        case running(ChangeID)
    }

    struct Pending {
        var to: AgentNodeID
        var event: AgentEvent
        /// Messages between one pair of agents keep their order (TCP).
        var from: AgentNodeID?
    }

    var cores: [AgentNodeID: AgentCore] = [:]
    var kernel: [AgentNodeID: Kernel] = [:]
    var pending: [Pending] = []
    /// Every start: node, change, members, renew, joining.
    var starts: [(node: AgentNodeID, plan: StartPlan)] = []
    var stops: [AgentNodeID] = []
    var refused: [AgentNodeID] = []
    var fences: [AgentNodeID] = []
    var leaves: [AgentNodeID] = []
    var violations: [String] = []
    /// Dead nodes: their agent neither sends nor receives.
    var dead: Set<AgentNodeID> = []
    let ls = "alpha"
    var rng: UInt64

    init(nodes: [AgentNodeID], members: [AgentNodeID], seed: UInt64 = 1, canFence: Bool = false) {
        rng = seed &* 0x9E3779B97F4A7C15 | 1
        for n in nodes {
            cores[n] = AgentCore(me: n, incarnation: UInt64(n) * 1000, canFence: canFence)
            kernel[n] = .absent
        }
        for n in nodes { feed(n, .configLoaded(lockspaces: [Self.conf(members)], nodes: nodes)) }
        // every agent connects to every other one: hellos
        for a in nodes { for b in nodes where a != b { feed(a, .connected(node: b)) } }
        run()
    }

    static func conf(_ members: [AgentNodeID]) -> ConfiguredLockspace {
        ConfiguredLockspace(name: "alpha", globalID: 0x521b2683, members: members.map { AgentMember(id: $0) })
    }

    mutating func random(_ n: Int) -> Int {
        rng ^= rng << 13
        rng ^= rng >> 7
        rng ^= rng << 17
        return Int(rng % UInt64(n))
    }

    mutating func feed(_ node: AgentNodeID, _ event: AgentEvent) {
        guard !dead.contains(node) else { return }
        if case .online = event { kernel[node] = .stopped }
        let actions = cores[node]!.handle(event)
        for a in actions { perform(node, a) }
    }

    mutating func perform(_ node: AgentNodeID, _ action: AgentAction) {
        switch action {
        case .send(let m, let to):
            if !dead.contains(to) { pending.append(Pending(to: to, event: .received(m, from: node), from: node)) }
        case .stop(let l):
            #expect(l == ls)
            stops.append(node)
            if kernel[node] != .absent { kernel[node] = .stopped }
            pending.append(Pending(to: node, event: .stopDone(lockspace: l)))
        case .start(let plan):
            for m in plan.members {
                switch kernel[m.id] ?? .absent {
                case .stopped: break
                case .absent where plan.change == .formation: break   // stopped by construction
                case .running(let c) where c == plan.change: break
                case .running(let c): violations.append("node \(node) starts \(plan.change) while member \(m) runs \(c)")
                case .absent: violations.append("node \(node) starts \(plan.change) while member \(m) has no lockspace")
                }
            }
            // a node outside the new membership must not still run an older one with our members
            for (n, k) in kernel where !plan.members.contains(where: { $0.id == n }) {
                if case .running(let c) = k, c != plan.change,
                   let theirs = starts.last(where: { $0.plan.change == c }),
                   theirs.plan.members.contains(where: { m in plan.members.contains { $0.id == m.id } }) {
                    violations.append("node \(node) starts \(plan.change) while non-member \(n) still runs \(c)")
                }
            }
            if let other = starts.last(where: { $0.plan.change == plan.change }), other.plan.members != plan.members {
                violations.append("\(plan.change) started with \(plan.members) on \(node) but \(other.plan.members) on \(other.node)")
            }
            starts.append((node, plan))
            kernel[node] = .running(plan.change)
        case .finishLeave:
            leaves.append(node)
            kernel[node] = .absent
        case .refuseJoin:
            refused.append(node)
            kernel[node] = .absent
        case .fence(let n):
            fences.append(n)
        case .removeComm, .addComm, .log:
            break
        }
    }

    /// Delivers everything, in random order (per-connection order kept).
    mutating func run(random: Bool = true, limit: Int = 100_000) {
        var steps = 0
        while !pending.isEmpty, steps < limit {
            steps += 1
            // candidates: the first pending item of each (from, to) stream
            var seen = Set<String>()
            var candidates: [Int] = []
            for (i, p) in pending.enumerated() {
                let key = "\(p.from.map(String.init) ?? "local\(p.to)")>\(p.to)"
                if seen.insert(key).inserted { candidates.append(i) }
            }
            let i = random ? candidates[self.random(candidates.count)] : candidates[0]
            let p = pending.remove(at: i)
            if dead.contains(p.to) { continue }
            feed(p.to, p.event)
        }
    }

    /// The heads of the per-connection streams (the events that may happen next).
    var choices: [Int] {
        var seen = Set<String>()
        var out: [Int] = []
        for (i, p) in pending.enumerated() {
            let key = "\(p.from.map(String.init) ?? "local\(p.to)")>\(p.to)"
            if seen.insert(key).inserted { out.append(i) }
        }
        return out
    }

    /// Every order of delivery (depth first); `check` runs on every final state. Returns the
    /// number of final states, or nil when more than `limit`.
    static func exploreAll(_ sim: AgentSim, limit: Int, _ check: (AgentSim) -> Void) -> Int? {
        var count = 0
        func go(_ s: AgentSim) -> Bool {
            let heads = s.choices
            if heads.isEmpty {
                count += 1
                check(s)
                return count <= limit
            }
            for i in heads {
                var next = s
                let p = next.pending.remove(at: i)
                next.feed(p.to, p.event)
                if !go(next) { return false }
            }
            return true
        }
        return go(sim) ? count : nil
    }

    func local(_ n: AgentNodeID) -> AgentCore.Local { cores[n]!.lockspaces[ls]!.local }
    func started(_ n: AgentNodeID) -> MembershipChange? { cores[n]!.lockspaces[ls]!.started }
    func members(_ n: AgentNodeID) -> [AgentNodeID]? { started(n)?.members.map(\.id) }
}

@Suite("Agent coordination core")
struct AgentCoreTests {
    @Test("formation: every member starts G0 with the config's list, no barrier messages")
    func formation() {
        var sim = AgentSim(nodes: [1, 2, 3], members: [1, 2, 3])
        sim.feed(1, .online(lockspace: "alpha"))
        // only its intent goes out (no change, no stopped)
        #expect(sim.pending.allSatisfy { if case .received(.intent, _) = $0.event { return true }; return false })
        #expect(sim.starts.count == 1)
        #expect(sim.starts[0].plan.change == .formation)
        #expect(sim.starts[0].plan.joining)
        #expect(sim.starts[0].plan.members.map(\.id) == [1, 2, 3])
        sim.feed(2, .online(lockspace: "alpha"))
        sim.feed(3, .online(lockspace: "alpha"))
        sim.run()
        #expect(sim.starts.count == 3)
        #expect(sim.stops.isEmpty)
        for n: AgentNodeID in [1, 2, 3] { #expect(sim.local(n) == .running) }
    }

    @Test("a join waits until the agents of all members said hello")
    func joinWaitsForHello() {
        var core = AgentCore(me: 1, incarnation: 7)
        _ = core.handle(.configLoaded(lockspaces: [AgentSim.conf([1, 2])], nodes: [1, 2]))
        let a = core.handle(.online(lockspace: "alpha"))
        #expect(!a.contains { if case .start = $0 { return true }; return false })
        let b = core.handle(.received(.hello(node: 2, incarnation: 9, lockspaces: []), from: 2))
        #expect(b.contains { if case .start(let p) = $0 { return p.change == .formation && p.joining }; return false })
    }

    @Test("an unconfigured lockspace or non-member is refused with event_done < 0")
    func refuse() {
        var sim = AgentSim(nodes: [1, 2, 3], members: [1, 2])
        sim.feed(3, .online(lockspace: "alpha"))
        #expect(sim.refused == [3])
        var core = AgentCore(me: 1, incarnation: 1)
        _ = core.handle(.configLoaded(lockspaces: [AgentSim.conf([1])], nodes: [1]))
        let a = core.handle(.online(lockspace: "beta"))
        #expect(a.contains { if case .refuseJoin("beta", 1, _) = $0 { return true }; return false })
    }

    /// Nodes 1 and 2 run G0; node 3 (configured) comes online later.
    static func formedWithJoiner(seed: UInt64) -> AgentSim {
        var sim = AgentSim(nodes: [1, 2, 3], members: [1, 2], seed: seed)
        sim.feed(1, .online(lockspace: "alpha"))
        sim.feed(2, .online(lockspace: "alpha"))
        // the config now allows node 3 (reload everywhere: additions alone change nothing)
        for n: AgentNodeID in [1, 2, 3] {
            sim.feed(n, .configLoaded(lockspaces: [AgentSim.conf([1, 2, 3])], nodes: [1, 2, 3]))
        }
        sim.run()
        #expect(sim.stops.isEmpty, "a reload that only adds a node stops nobody")
        return sim
    }

    @Test("join after formation: all members stop before any starts, the same list everywhere", arguments: 0..<200)
    func joinBarrier(seed: Int) {
        var sim = Self.formedWithJoiner(seed: UInt64(seed))
        sim.feed(3, .online(lockspace: "alpha"))
        sim.run()
        #expect(sim.violations.isEmpty, "\(sim.violations)")
        for n: AgentNodeID in [1, 2, 3] {
            #expect(sim.local(n) == .running)
            #expect(sim.members(n) == [1, 2, 3])
        }
        let joinStart = sim.starts.first { $0.node == 3 }!
        #expect(joinStart.plan.joining)
        #expect(joinStart.plan.change.seq == 1)
        #expect(sim.stops.sorted() == [1, 2])
        // nobody renews node 3: it was never in anyone's configfs
        #expect(sim.starts.allSatisfy { $0.plan.renew.isEmpty })
    }

    @Test("join after formation: every interleaving of intents, changes, stops and stopped messages")
    func joinEveryInterleaving() {
        var sim = Self.formedWithJoiner(seed: 1)
        sim.feed(3, .online(lockspace: "alpha"))
        var finals = 0
        let n = AgentSim.exploreAll(sim, limit: 2_000_000) { end in
            finals += 1
            if !end.violations.isEmpty { Issue.record("violation: \(end.violations)") }
            for node: AgentNodeID in [1, 2, 3] where end.members(node) != [1, 2, 3] || end.local(node) != .running {
                Issue.record("node \(node) ends \(end.local(node)) with \(end.members(node) ?? [])")
            }
        }
        #expect(n != nil, "more interleavings than the limit")
        print("join after formation: \(finals) interleavings explored, all end with [1, 2, 3] running, no violation")
        #expect(finals > 1000, "explored \(finals) interleavings")
    }

    @Test("planned leave: the leaver answers offline, the rest stop and start without it", arguments: 0..<100)
    func leave(seed: Int) {
        var sim = AgentSim(nodes: [1, 2, 3], members: [1, 2, 3], seed: UInt64(seed))
        for n: AgentNodeID in [1, 2, 3] { sim.feed(n, .online(lockspace: "alpha")) }
        sim.feed(3, .offline(lockspace: "alpha"))
        sim.run()
        #expect(sim.violations.isEmpty, "\(sim.violations)")
        #expect(sim.leaves == [3])
        #expect(sim.local(3) == .absent)
        #expect(sim.members(1) == [1, 2])
        #expect(sim.members(2) == [1, 2])
        // and it comes back: renewed on the members that had it in their last start? No: they
        // started without it since, so it is a plain add.
        sim.feed(3, .online(lockspace: "alpha"))
        sim.run()
        #expect(sim.violations.isEmpty, "\(sim.violations)")
        for n: AgentNodeID in [1, 2, 3] { #expect(sim.members(n) == [1, 2, 3]) }
        #expect(sim.starts.allSatisfy { $0.plan.renew.isEmpty })
    }

    @Test("G+1 before the start: a member dies mid-change; node-down of it completes the change without it", arguments: 0..<100)
    func memberDiesMidChange(seed: Int) {
        var sim = Self.formedWithJoiner(seed: UInt64(seed))
        sim.feed(3, .online(lockspace: "alpha"))
        // node 2 dies (powered off) before it has done anything for the join
        sim.dead.insert(2)
        sim.kernel[2] = .absent
        sim.run()
        #expect(sim.local(1) == .stopped, "node 1 waits for node 2's stopped")
        #expect(sim.local(3) == .joining)
        #expect(sim.starts.filter { $0.plan.change.seq > 0 }.isEmpty)
        sim.feed(1, .nodeDownRequested(node: 2))
        sim.run()
        #expect(sim.violations.isEmpty, "\(sim.violations)")
        #expect(sim.members(1) == [1, 3])
        #expect(sim.members(3) == [1, 3])
        #expect(sim.local(3) == .running)
        #expect(sim.cores[3]!.down == [2])
    }

    @Test("G+1 after the start: a running member stops again and everyone restarts with G+1", arguments: 0..<100)
    func changeAfterStart(seed: Int) {
        var sim = AgentSim(nodes: [1, 2, 3, 4], members: [1, 2, 3, 4], seed: UInt64(seed))
        for n: AgentNodeID in [1, 2, 3, 4] { sim.feed(n, .online(lockspace: "alpha")) }
        sim.feed(4, .offline(lockspace: "alpha"))
        // interleave: deliver a few events, then node 3 also leaves while the first change runs
        for _ in 0..<sim.random(6) where !sim.pending.isEmpty {
            let p = sim.pending.removeFirst()
            sim.feed(p.to, p.event)
        }
        sim.feed(3, .offline(lockspace: "alpha"))
        sim.run()
        #expect(sim.violations.isEmpty, "\(sim.violations)")
        #expect(sim.members(1) == [1, 2])
        #expect(sim.members(2) == [1, 2])
        #expect(sim.started(1)?.id == sim.started(2)?.id)
    }

    @Test("concurrent joins of two nodes converge on one membership", arguments: 0..<100)
    func concurrentJoins(seed: Int) {
        var sim = AgentSim(nodes: [1, 2, 3, 4], members: [1, 2], seed: UInt64(seed))
        sim.feed(1, .online(lockspace: "alpha"))
        sim.feed(2, .online(lockspace: "alpha"))
        for n: AgentNodeID in [1, 2, 3, 4] {
            sim.feed(n, .configLoaded(lockspaces: [AgentSim.conf([1, 2, 3, 4])], nodes: [1, 2, 3, 4]))
        }
        sim.feed(3, .online(lockspace: "alpha"))
        sim.feed(4, .online(lockspace: "alpha"))
        sim.run()
        #expect(sim.violations.isEmpty, "\(sim.violations)")
        let final = sim.started(1)!
        for n: AgentNodeID in [1, 2, 3, 4] {
            #expect(sim.local(n) == .running)
            #expect(sim.started(n) == final)
        }
        #expect(final.members.map(\.id) == [1, 2, 3, 4])
    }

    @Test("a node whose agent restarted is removed (its old instance is gone) and added again when it comes online")
    func restartedNode() {
        var sim = AgentSim(nodes: [1, 2, 3], members: [1, 2, 3])
        for n: AgentNodeID in [1, 2, 3] { sim.feed(n, .online(lockspace: "alpha")) }
        // node 3 crashes; nobody declares it down; its new incarnation says hello
        sim.cores[3] = AgentCore(me: 3, incarnation: 99)
        sim.kernel[3] = .absent
        sim.feed(3, .configLoaded(lockspaces: [AgentSim.conf([1, 2, 3])], nodes: [1, 2, 3]))
        for b: AgentNodeID in [1, 2] {
            sim.feed(3, .connected(node: b))
            sim.feed(b, .connected(node: 3))
        }
        sim.run()
        // the coordinator removed the old incarnation
        #expect(sim.violations.isEmpty, "\(sim.violations)")
        #expect(sim.members(1) == [1, 2])
        #expect(sim.members(2) == [1, 2])
        sim.feed(3, .online(lockspace: "alpha"))
        sim.run()
        #expect(sim.violations.isEmpty, "\(sim.violations)")
        for n: AgentNodeID in [1, 2, 3] { #expect(sim.members(n) == [1, 2, 3]) }
    }

    @Test("renew: a member removed and re-added between two starts of a node is rmdir'ed and mkdir'ed")
    func renewBetweenStarts() {
        var core = AgentCore(me: 1, incarnation: 1)
        _ = core.handle(.configLoaded(lockspaces: [AgentSim.conf([1, 2])], nodes: [1, 2]))
        _ = core.handle(.received(.hello(node: 2, incarnation: 2, lockspaces: []), from: 2))
        _ = core.handle(.online(lockspace: "alpha"))
        #expect(core.lockspaces["alpha"]!.local == .running)
        // G1 without 2 arrives, then G2 with a renewed 2, before node 1 started G1
        let g1 = MembershipChange(id: ChangeID(seq: 1, origin: 2), members: [AgentMember(id: 1)])
        _ = core.handle(.received(.change(lockspace: "alpha", change: g1), from: 2))
        let g2 = MembershipChange(id: ChangeID(seq: 2, origin: 2), members: [AgentMember(id: 1), AgentMember(id: 2)], renew: [2])
        _ = core.handle(.received(.change(lockspace: "alpha", change: g2), from: 2))
        _ = core.handle(.received(.stopped(lockspace: "alpha", node: 2, change: g2), from: 2))
        let out = core.handle(.stopDone(lockspace: "alpha"))
        let plan = out.compactMap { if case .start(let p) = $0 { return p }; return nil }.first
        #expect(plan?.change == g2.id)
        #expect(plan?.renew == [2])
        #expect(plan?.joining == false)
    }

    @Test("a reload that removes a member proposes the change; one that adds only allows the join")
    func reload() {
        var sim = AgentSim(nodes: [1, 2, 3], members: [1, 2, 3])
        for n: AgentNodeID in [1, 2, 3] { sim.feed(n, .online(lockspace: "alpha")) }
        sim.feed(3, .offline(lockspace: "alpha"))
        sim.run()
        let before = sim.starts.count
        sim.feed(1, .configLoaded(lockspaces: [AgentSim.conf([1, 2])], nodes: [1, 2, 3]))
        sim.run()
        #expect(sim.starts.count == before, "node 3 already left: nothing to do")
        sim.feed(1, .configLoaded(lockspaces: [AgentSim.conf([1])], nodes: [1, 2, 3]))
        sim.run()
        #expect(sim.violations.isEmpty, "\(sim.violations)")
        #expect(sim.members(1) == [1])
        #expect(sim.local(2) == .stopped, "a removed node that still has the lockspace is stopped, not left running")
        #expect(sim.cores[2]!.lockspaces["alpha"]!.evicted)
    }

    @Test("heartbeat timeout: never removed without a fence; removed after a successful one")
    func heartbeatAndFence() {
        var sim = AgentSim(nodes: [1, 2, 3], members: [1, 2, 3])
        for n: AgentNodeID in [1, 2, 3] { sim.feed(n, .online(lockspace: "alpha")) }
        sim.feed(1, .heartbeatTimeout(node: 3))
        sim.run()
        #expect(sim.fences.isEmpty)
        #expect(sim.members(1) == [1, 2, 3])

        var fenced = AgentSim(nodes: [1, 2, 3], members: [1, 2, 3], canFence: true)
        for n: AgentNodeID in [1, 2, 3] { fenced.feed(n, .online(lockspace: "alpha")) }
        fenced.dead.insert(3)
        fenced.kernel[3] = .absent
        fenced.feed(2, .heartbeatTimeout(node: 3))
        #expect(fenced.fences.isEmpty, "only the lowest live node fences")
        fenced.feed(1, .heartbeatTimeout(node: 3))
        #expect(fenced.fences == [3])
        fenced.feed(1, .fenceDone(node: 3, success: false))
        fenced.run()
        #expect(fenced.members(1) == [1, 2, 3], "a failed fence removes nobody")
        fenced.feed(1, .heartbeatTimeout(node: 3))
        fenced.feed(1, .fenceDone(node: 3, success: true))
        fenced.run()
        #expect(fenced.violations.isEmpty, "\(fenced.violations)")
        #expect(fenced.members(1) == [1, 2])
        #expect(fenced.members(2) == [1, 2])
    }

    @Test("node-down of this node itself or of an unknown node is refused")
    func nodeDownRefusals() {
        var sim = AgentSim(nodes: [1, 2], members: [1, 2])
        for n: AgentNodeID in [1, 2] { sim.feed(n, .online(lockspace: "alpha")) }
        var core = sim.cores[1]!
        let a = core.handle(.nodeDownRequested(node: 1))
        #expect(a.allSatisfy { if case .log(.error, _) = $0 { return true }; return false })
        let b = core.handle(.nodeDownRequested(node: 9))
        #expect(b.allSatisfy { if case .log(.error, _) = $0 { return true }; return false })
    }

    @Test("stopped(G+1) arriving before change(G+1) is kept and counted")
    func earlyStopped() {
        var core = AgentCore(me: 1, incarnation: 1)
        _ = core.handle(.configLoaded(lockspaces: [AgentSim.conf([1, 2, 3])], nodes: [1, 2, 3]))
        _ = core.handle(.received(.hello(node: 2, incarnation: 2, lockspaces: []), from: 2))
        _ = core.handle(.received(.hello(node: 3, incarnation: 3, lockspaces: []), from: 3))
        _ = core.handle(.online(lockspace: "alpha"))
        let g1 = MembershipChange(id: ChangeID(seq: 1, origin: 3), members: [1, 2, 3].map { AgentMember(id: $0) }, renew: [3])
        var out = core.handle(.received(.stopped(lockspace: "alpha", node: 2, change: g1), from: 2))
        #expect(out.contains(.stop(lockspace: "alpha")))
        out = core.handle(.received(.stopped(lockspace: "alpha", node: 3, change: g1), from: 3))
        #expect(!out.contains { if case .start = $0 { return true }; return false }, "not before our own stop returned")
        out = core.handle(.stopDone(lockspace: "alpha"))
        #expect(out.contains { if case .start(let p) = $0 { return p.change == g1.id && p.members.count == 3 }; return false })
    }

    @Test("a leaver has left only once it announced stopped for a change without it")
    func leaverAnnouncesBeforeLeft() {
        var core = AgentCore(me: 3, incarnation: 3)
        _ = core.handle(.configLoaded(lockspaces: [AgentSim.conf([1, 2, 3])], nodes: [1, 2, 3]))
        _ = core.handle(.received(.hello(node: 1, incarnation: 1, lockspaces: []), from: 1))
        _ = core.handle(.received(.hello(node: 2, incarnation: 2, lockspaces: []), from: 2))
        _ = core.handle(.online(lockspace: "alpha"))
        #expect(!core.hasLeft("alpha"))
        _ = core.handle(.offline(lockspace: "alpha"))
        var out = core.handle(.stopDone(lockspace: "alpha"))
        #expect(out.contains(.finishLeave(lockspace: "alpha")))
        #expect(!core.hasLeft("alpha"), "the others still wait for its stopped(G1)")
        let g1 = MembershipChange(id: ChangeID(seq: 1, origin: 1), members: [AgentMember(id: 1), AgentMember(id: 2)])
        out = core.handle(.received(.change(lockspace: "alpha", change: g1), from: 1))
        #expect(out.contains(.send(.stopped(lockspace: "alpha", node: 3, change: g1), to: 1)))
        #expect(core.hasLeft("alpha"))
        #expect(core.hasLeft("unknown"))
    }

    @Test("wire: every message round-trips through one JSON line")
    func wire() throws {
        let c = MembershipChange(id: ChangeID(seq: 4, origin: 2), members: [AgentMember(id: 1, weight: 2), AgentMember(id: 3)], renew: [3])
        let messages: [AgentMessage] = [
            .hello(node: 1, incarnation: 42, lockspaces: [LockspaceReport(name: "alpha", target: c, started: c.id)]),
            .change(lockspace: "alpha", change: c),
            .stopped(lockspace: "alpha", node: 3, change: c),
            .nodeDown(node: 3, by: 1),
            .heartbeat(node: 2),
        ]
        for m in messages {
            let line = try AgentWire.encode(m)
            #expect(!line.contains(UInt8(ascii: "\n")))
            #expect(try AgentWire.decode(line) == m)
        }
    }

    @Test("uevent parsing: online/offline of /kernel/dlm/<ls> only")
    func uevents() {
        func msg(_ s: String) -> [UInt8] { Array(s.utf8) + [0] + Array("ACTION=x".utf8) + [0] }
        #expect(DLMUevent.parse(msg("online@/kernel/dlm/alpha")) == .online("alpha"))
        #expect(DLMUevent.parse(msg("offline@/kernel/dlm/alpha")) == .offline("alpha"))
        #expect(DLMUevent.parse(msg("add@/kernel/dlm/alpha")) == nil)
        #expect(DLMUevent.parse(msg("online@/devices/virtual/net/lo")) == nil)
        #expect(DLMUevent.parse(msg("online@/kernel/dlm/")) == nil)
    }
}
