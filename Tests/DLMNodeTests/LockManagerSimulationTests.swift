import DLMTransport
import Testing

@testable import DLMNode

/// A deterministic simulation of N lock managers (one per node) joined by per-pair FIFO queues
/// (midcomms keeps per-pair order; pairs interleave arbitrarily), with clients issuing random
/// requests, conversions, cancels and unlocks on a few names, and timer ticks that reap unused
/// resources (REMOVE). After every step: the single-node invariants, at most one active master per
/// name, no two incompatible locks granted across the whole cluster (owners' view, which is what
/// applications see), one completion per accepted lock/convert and none after end of life, at
/// most one reply per request message. Whenever the network is quiet: every process copy matched
/// by its master copy (same ids, status and modes), every master copy by its process copy, and
/// directory records naming the real master. At the end everything is unlocked and reaped.
@Suite("LockManager simulation")
struct LockManagerSimulationTests {
    struct RNG {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
        mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    }

    /// What a client knows about one of its locks.
    struct ClientLock {
        var node: UInt32
        var lkid: UInt32
        var name: [UInt8]
        /// A lock/convert call awaits its completion.
        var opPending = true
        /// An accepted unlock (or force-unlock) awaits its completion.
        var unlockPending = false
        /// The mode the last completion reported.
        var mode: LockMode = .iv
    }

    struct Stats {
        var steps = 0
        var calls = 0
        var accepted = 0
        var messages = 0
        var completions = 0
        var basts = 0
        var quiescentChecks = 0
        var removes = 0
        /// REQUEST_REPLY -EBADR/-ENOTBLK from a stale cached master, followed by a new lookup.
        var redoLookups = 0
        var byType: [String: Int] = [:]
    }

    struct Sim {
        var nodes: [UInt32: LockManager] = [:]
        var ids: [UInt32]
        var queues: [[UInt32]: [DLMMessage]] = [:]
        var clients: [UInt64: ClientLock] = [:]
        var nextTag: UInt64 = 1
        /// Request messages awaiting their reply, by (owner node, owner lkid).
        var awaitingReply: [[UInt32]: Int] = [:]
        var now: Duration = .seconds(1)
        var rng: RNG
        var stats = Stats()
        var problems: [String] = []
        let names: [[UInt8]]
        let lvbLength = 8
        var maxAdvanceMs = 400

        init(nodeCount: Int, seed: UInt64, names: Int, nodir: Bool = false) {
            ids = (1...UInt32(nodeCount)).map { $0 }
            rng = RNG(state: seed)
            self.names = (0..<names).map { Array("r\($0)".utf8) }
            let members = ids.map { LockManager.Member(nodeID: $0) }
            for id in ids {
                nodes[id] = LockManager(.init(lockspaceID: 0x1234, ourNodeID: id, lvbLength: lvbLength, nodir: nodir),
                                        members: members)
            }
        }

        mutating func problem(_ text: String) {
            if problems.count < 20 { problems.append("step \(stats.steps): \(text)") }
        }

        // MARK: actions

        mutating func apply(_ actions: [LockManager.Action], from node: UInt32) {
            for action in actions {
                switch action {
                case .send(let message, let to):
                    stats.messages += 1
                    stats.byType[MessageType.name(message.type), default: 0] += 1
                    queues[[node, to], default: []].append(message)
                    track(sent: message, from: node, to: to)
                case .completion(let c):
                    stats.completions += 1
                    completed(c, node: node)
                case .blocking(let tag, _, let mode):
                    stats.basts += 1
                    if let lock = clients[tag], lock.mode != .iv, mode.isCompatible(with: lock.mode), lock.mode != .pr {
                        problem("bast \(mode) for compatible held mode \(lock.mode)")
                    }
                case .log(let line):
                    if line.contains("redo lookup") { stats.redoLookups += 1 }
                }
            }
        }

        /// §9.11 bookkeeping: a REQUEST, LOOKUP, up-CONVERT, UNLOCK or CANCEL expects one reply.
        mutating func track(sent message: DLMMessage, from node: UInt32, to: UInt32) {
            guard let type = message.messageType else { return }
            switch type {
            case .request, .lookup, .unlock, .cancel:
                awaitingReply[[node, message.lkid], default: 0] += 1
            case .convert:
                let gr = LockMode(rawValue: message.grmode) ?? .iv
                let rq = LockMode(rawValue: message.rqmode) ?? .iv
                if !LockMode.isDownConversion(granted: gr, requested: rq) {
                    awaitingReply[[node, message.lkid], default: 0] += 1
                }
            case .remove:
                stats.removes += 1
            case .requestReply, .convertReply, .unlockReply, .cancelReply, .lookupReply:
                let key = type == .lookupReply ? [to, message.lkid] : [to, message.remid]
                let count = awaitingReply[key, default: 0]
                if count <= 0 { problem("unexpected \(type) to \(to) for \(key[1])") }
                awaitingReply[key] = count - 1 == 0 ? nil : count - 1
            case .grant, .bast, .purge:
                break
            }
        }

        mutating func completed(_ c: LockManager.Completion, node: UInt32) {
            guard var lock = clients[c.tag], lock.node == node, lock.lkid == c.lkid else {
                return problem("completion for unknown lock tag \(c.tag) lkid \(c.lkid) on \(node): \(c.status)")
            }
            switch c.status {
            case .unlocked:
                if !lock.unlockPending { problem("unlock completion without unlock: \(lock)") }
            case .granted, .wouldBlock, .deadlock, .cancelled:
                if !lock.opPending { problem("completion \(c.status) without a pending operation: \(lock)") }
                lock.opPending = false
            case .queued, .busy, .notFound, .invalid:
                problem("completion status \(c.status) for \(lock)")
                lock.opPending = false
            }
            lock.mode = c.mode
            if c.endOfLife {
                clients[c.tag] = nil
            } else {
                clients[c.tag] = lock
            }
        }

        // MARK: steps

        mutating func clientStep() {
            let node = ids[rng.below(ids.count)]
            let mine = clients.filter { $0.value.node == node }.sorted { $0.key < $1.key }
            let roll = rng.below(100)
            stats.calls += 1
            if mine.isEmpty || roll < 35 {
                let name = names[rng.below(names.count)]
                let mode = LockMode.allCases.filter { $0 != .iv }[rng.below(6)]
                var flags: LockFlags = []
                if rng.chance(15) { flags.insert(.noQueue) }
                let valblk = rng.chance(30)
                if valblk { flags.insert(.valBlk) }
                let tag = nextTag
                nextTag += 1
                var nodeState = nodes[node]!
                let r = nodeState.lock(
                    name: name, mode: mode, flags: flags, lvb: valblk ? [UInt8](repeating: UInt8(tag & 0xFF), count: lvbLength) : nil,
                    pid: 100 + node, tag: tag, blocking: rng.chance(70), now: now)
                nodes[node] = nodeState
                if r.error == nil {
                    stats.accepted += 1
                    clients[tag] = ClientLock(node: node, lkid: r.lkid, name: name)
                }
                apply(r.actions, from: node)
                return
            }
            let (tag, lock) = mine[rng.below(mine.count)]
            var nodeState = nodes[node]!
            let result: LockManager.CallResult
            var kind = ""
            if roll < 60 {
                let mode = LockMode.allCases.filter { $0 != .iv }[rng.below(6)]
                var flags: LockFlags = []
                if rng.chance(20) { flags.insert(.noQueue) }
                if rng.chance(20) { flags.insert(.valBlk) }
                result = nodeState.convert(
                    lkid: lock.lkid, mode: mode, flags: flags, lvb: [UInt8](repeating: UInt8(tag & 0xFF), count: lvbLength),
                    now: now)
                kind = "convert"
            } else if roll < 80 {
                result = nodeState.unlock(lkid: lock.lkid, flags: rng.chance(30) ? .valBlk : [], now: now)
                kind = "unlock"
            } else if roll < 92 {
                result = nodeState.cancel(lkid: lock.lkid, now: now)
                kind = "cancel"
            } else {
                result = nodeState.unlock(lkid: lock.lkid, flags: .forceUnlock, now: now)
                kind = "force"
            }
            nodes[node] = nodeState
            if result.error == nil {
                stats.accepted += 1
                var updated = clients[tag]!
                switch kind {
                case "convert": updated.opPending = true
                case "unlock", "force": updated.unlockPending = true
                default: break
                }
                clients[tag] = updated
            }
            apply(result.actions, from: node)
        }

        mutating func deliverStep() -> Bool {
            let pairs = queues.keys.filter { !(queues[$0]?.isEmpty ?? true) }.sorted { ($0[0], $0[1]) < ($1[0], $1[1]) }
            guard !pairs.isEmpty else { return false }
            let pair = pairs[rng.below(pairs.count)]
            let message = queues[pair]!.removeFirst()
            var target = nodes[pair[1]]!
            let actions = target.receive(message, from: pair[0], now: now)
            nodes[pair[1]] = target
            apply(actions, from: pair[1])
            return true
        }

        mutating func tickStep() {
            now += .milliseconds(rng.below(maxAdvanceMs))
            for id in ids {
                var node = nodes[id]!
                let actions = node.tick(now: now)
                nodes[id] = node
                apply(actions, from: id)
            }
        }

        var networkQuiet: Bool { queues.values.allSatisfy(\.isEmpty) }

        // MARK: checks

        mutating func checkEveryStep() {
            for id in ids {
                for p in nodes[id]!.invariantViolations() { problem("node \(id): \(p)") }
            }
            for name in names {
                var masters: [UInt32] = []
                var held: [(UInt32, LockEntry)] = []
                for id in ids {
                    guard let view = nodes[id]!.resourceView(name), view.active else { continue }
                    if view.master == id { masters.append(id) }
                    // The owners' view: local copies and process copies holding a mode.
                    for lock in view.resource.queue(.granted) + view.resource.queue(.convert) {
                        // A lock whose unlock is in flight is released on the master first, on the owner
                        // when UNLOCK_REPLY arrives: it no longer counts as held.
                        // Likewise a PR↔CW conversion under way: the master may already have granted the
                        // new mode (and another lock compatible with it) while the owner still shows the old.
                        guard let lv = nodes[id]!.lockView(lock.id), !lv.isMasterCopy else { continue }
                        let middle = LockMode.isMiddleConversion(granted: lock.grantedMode, requested: lock.requestedMode)
                        if middle && (lv.waitType == .convert || lock.status == .convert) { continue }
                        if lv.waitType != .unlock, !lv.overlapUnlock {
                            held.append((id, lock))
                        }
                    }
                }
                if masters.count > 1 { problem("\(String(decoding: name, as: UTF8.self)) mastered by \(masters)") }
                for i in held.indices {
                    for j in held.indices where j > i {
                        if !held[i].1.grantedMode.isCompatible(with: held[j].1.grantedMode) {
                            problem("incompatible holders of \(String(decoding: name, as: UTF8.self)): n\(held[i].0) \(held[i].1) / n\(held[j].0) \(held[j].1)")
                        }
                    }
                }
            }
        }

        var quiescent: Bool {
            networkQuiet && ids.allSatisfy { !nodes[$0]!.hasOutstandingOperations }
        }

        mutating func checkQuiescent() {
            stats.quiescentChecks += 1
            if !awaitingReply.isEmpty { problem("requests without reply: \(awaitingReply)") }
            for id in ids {
                let node = nodes[id]!
                for lv in node.lockViews {
                    guard let r = node.resourceView(lv.name) else { continue }
                    if lv.isMasterCopy {
                        let owner = UInt32(bitPattern: lv.lock.nodeID)
                        let pc = nodes[owner]?.lockView(lv.lock.remoteID)
                        if pc == nil || pc!.isMasterCopy || pc!.lock.remoteID != lv.lock.id || pc!.name != lv.name {
                            problem("master copy \(lv.lock) on n\(id) has no process copy")
                        }
                    } else if r.master != id {
                        guard let mc = nodes[r.master]?.lockView(lv.lock.remoteID), mc.isMasterCopy,
                            mc.lock.remoteID == lv.lock.id, UInt32(bitPattern: mc.lock.nodeID) == id
                        else {
                            problem("process copy \(lv.lock) on n\(id) (master \(r.master)) has no master copy")
                            continue
                        }
                        let p = lv.lock
                        let m = mc.lock
                        if p.status != m.status || p.grantedMode != m.grantedMode
                            || (p.status != .granted && p.requestedMode != m.requestedMode)
                        {
                            problem("copies differ: n\(id) \(p) / n\(r.master) \(m)")
                        }
                    }
                }
                // Directory records name the real master.
                for view in node.resourceViews where view.active && view.master == id {
                    let dir = node.directoryNode(hash: view.hash)
                    let record = nodes[dir]!.directory[view.name]
                    if record != id {
                        problem("\(String(decoding: view.name, as: UTF8.self)) mastered by n\(id) but dir n\(dir) says \(record.map { "\($0)" } ?? "nothing")")
                    }
                }
            }
        }

        mutating func run(steps: Int) {
            for _ in 0..<steps {
                stats.steps += 1
                let roll = rng.below(100)
                if roll < 30 {
                    clientStep()
                } else if roll < 92 {
                    if !deliverStep() { clientStep() }
                } else {
                    tickStep()
                }
                checkEveryStep()
                if quiescent { checkQuiescent() }
                if problems.count >= 20 { return }
            }
        }

        /// Unlock everything, deliver everything, reap everything.
        mutating func drain() {
            var rounds = 0
            while (!clients.isEmpty || !networkQuiet) && rounds < 100_000 {
                rounds += 1
                stats.steps += 1
                if !deliverStep() {
                    for (tag, lock) in clients.sorted(by: { $0.key < $1.key }) where !lock.unlockPending {
                        var node = nodes[lock.node]!
                        let r = node.unlock(lkid: lock.lkid, flags: .forceUnlock, now: now)
                        nodes[lock.node] = node
                        if r.error == nil { clients[tag]!.unlockPending = true }
                        apply(r.actions, from: lock.node)
                    }
                    if networkQuiet && !clients.isEmpty {
                        // Locks whose force-unlock was refused (e.g. already unlocking): let replies flow.
                        if clients.values.allSatisfy(\.unlockPending) && networkQuiet {
                            problem("locks left with unlock pending and nothing in flight: \(clients.values.map { "\($0)" })")
                            return
                        }
                    }
                }
                checkEveryStep()
                if problems.count >= 20 { return }
            }
            if quiescent { checkQuiescent() }
            for id in ids where !nodes[id]!.lockViews.isEmpty { problem("n\(id) still has locks \(nodes[id]!.lockViews.map(\.lock))") }
            // Let the scans reap everything: two toss periods.
            for _ in 0..<10 {
                now += .seconds(3)
                for id in ids {
                    var node = nodes[id]!
                    let actions = node.tick(now: now)
                    nodes[id] = node
                    apply(actions, from: id)
                }
                while deliverStep() {}
            }
            for id in ids {
                let left = nodes[id]!.resourceViews.filter { !($0.isDirectoryNode && $0.master != id) }
                if !left.isEmpty { problem("n\(id) keeps rsbs \(left.map { String(decoding: $0.name, as: UTF8.self) })") }
                if !nodes[id]!.directory.isEmpty { problem("n\(id) keeps dir records \(nodes[id]!.directory.map { String(decoding: $0.key, as: UTF8.self) })") }
            }
        }
    }

    /// (nodes, seed, names, largest clock step per tick in ms: larger steps let resources idle past
    /// toss_secs, so REMOVEs, stale cached masters and -EBADR/-ENOTBLK retries happen more often).
    static let configurations: [(nodes: Int, seed: UInt64, names: Int, advance: Int)] = [
        (3, 1, 3, 400), (3, 2, 5, 400), (4, 3, 4, 400), (4, 4, 6, 400), (5, 5, 5, 400), (5, 6, 8, 400),
        (4, 7, 12, 6000), (5, 8, 16, 6000),
    ]

    @Test("random workload keeps the invariants", arguments: 0..<configurations.count)
    func randomWorkload(_ index: Int) {
        let c = Self.configurations[index]
        var sim = Sim(nodeCount: c.nodes, seed: c.seed, names: c.names)
        sim.maxAdvanceMs = c.advance
        sim.run(steps: 10_000)
        sim.drain()
        for p in sim.problems { Issue.record("\(p)") }
        let s = sim.stats
        print(
            "sim nodes=\(c.nodes) names=\(c.names) seed=\(c.seed): steps \(s.steps) calls \(s.calls) accepted \(s.accepted) messages \(s.messages) completions \(s.completions) basts \(s.basts) quiescent-checks \(s.quiescentChecks) removes \(s.removes) redo-lookups \(s.redoLookups) \(s.byType.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))"
        )
        #expect(s.quiescentChecks > 0)
        // With three nodes and these seeds every name ends up mastered by its own dir node (all
        // LOOKUPs are answered with REQUEST_REPLY), so no REMOVE is due; the larger clusters send them.
        if c.nodes > 3 { #expect(s.removes > 0) }
    }

    @Test("random workload in a nodir lockspace: no directory traffic, every name mastered where it hashes",
          arguments: 0..<configurations.count)
    func randomWorkloadNodir(_ index: Int) {
        let c = Self.configurations[index]
        var sim = Sim(nodeCount: c.nodes, seed: c.seed, names: c.names, nodir: true)
        sim.maxAdvanceMs = c.advance
        sim.run(steps: 10_000)
        for id in sim.ids {
            for r in sim.nodes[id]!.resourceViews where r.active {
                #expect(r.master == sim.nodes[id]!.directoryNode(hash: r.hash), "n\(id) \(r.name) master \(r.master)")
            }
        }
        sim.drain()
        for p in sim.problems { Issue.record("\(p)") }
        let s = sim.stats
        #expect(s.quiescentChecks > 0 && s.calls > 0)
        #expect(s.removes == 0 && s.redoLookups == 0)
        #expect(s.byType["LOOKUP"] == nil && s.byType["LOOKUP_REPLY"] == nil && s.byType["REMOVE"] == nil, "\(s.byType)")
        #expect((s.byType["REQUEST"] ?? 0) > 0)
    }
}
