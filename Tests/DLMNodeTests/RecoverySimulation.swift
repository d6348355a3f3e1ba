import DLMNode
import DLMTransport
import NIOCore

/// A deterministic in-process cluster of `LockspaceRecovery` machines (no sockets): a seeded
/// scheduler delivers RCOMs with random delays (FIFO per node pair, as one TCP stream would),
/// drops bare STATUS/NAMES traffic now and then (exercising the recover_timer resend), plays the
/// cluster manager (stop everywhere, then start everywhere, staggered), crashes nodes and checks
/// the invariants of recovery.md §7.1 after every step.
struct RecoveryRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

let recoveryLockCompatible: [[Bool]] = [
    // NL    CR     CW     PR     PW     EX
    [true, true, true, true, true, true],     // NL
    [true, true, true, true, true, false],    // CR
    [true, true, true, false, false, false],  // CW
    [true, true, false, true, false, false],  // PR
    [true, true, false, false, false, false], // PW
    [true, false, false, false, false, false], // EX
]

func recoveryCompatible(_ a: LockMode, _ b: LockMode) -> Bool {
    guard a.rawValue >= 0, b.rawValue >= 0 else { return true }
    return recoveryLockCompatible[Int(a.rawValue)][Int(b.rawValue)]
}

final class RecoverySim {
    struct SimNode {
        var id: UInt32
        var incarnation: Int
        var machine: LockspaceRecovery
        var table: RecoveryLockTable
        var alive = true
        /// The lockspace exists (before: STATUS gets the "not ready" reply).
        var created = false
        var timer: NIODeadline?
        var done = 0
        var failures: [RecoveryFailure] = []
    }

    struct InFlight {
        var at: NIODeadline
        var order: Int
        var from: UInt32
        var fromIncarnation: Int
        var to: UInt32
        var rc: DLMRcom
    }

    enum Scheduled {
        case start(UInt32, incarnation: Int, [RecoveryMember])
    }

    let globalID: UInt32 = 0x521B_2683
    var rng: RecoveryRNG
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var nodes: [UInt32: SimNode] = [:]
    var weights: [UInt32: Int] = [:]
    var lvbLength: [UInt32: UInt32] = [:]
    var inflight: [InFlight] = []
    var order = 0
    var lastArrival: [UInt64: NIODeadline] = [:]
    var scheduled: [(at: NIODeadline, what: Scheduled)] = []
    /// The membership the CM last applied (the target of the current change).
    var members: [UInt32] = []
    var violations: [String] = []
    var dropProbability = 0.02
    var maxDelayMs: Int64 = 8
    var messagesDelivered = 0
    var timeouts = 0
    var changes = 0
    var completedRecoveries = 0
    var interrupted = 0
    var firstSlot: [String: UInt16] = [:]
    var lastGeneration: UInt32 = 0
    var lastIncarnations: Set<String> = []
    var quiescentChecks = 0
    var locksCreated = 0
    /// Delivered RCOMs by type, and (when `recordTrace`) the delivered messages in order.
    var delivered: [RcomType: Int] = [:]
    var recordTrace = false
    var trace: [(from: UInt32, to: UInt32, rc: DLMRcom)] = []

    init(seed: UInt64) {
        rng = RecoveryRNG(seed: seed)
    }

    // MARK: Nodes and the cluster manager

    func makeNode(_ id: UInt32, incarnation: Int) -> SimNode {
        let cfg = RecoveryConfig(ourNodeID: id, globalID: globalID, lvbLength: lvbLength[id] ?? 32,
                                 initialRcomID: rng.next() >> 8)
        return SimNode(id: id, incarnation: incarnation, machine: LockspaceRecovery(config: cfg),
                       table: RecoveryLockTable(ourNodeID: id, lvbLength: Int(lvbLength[id] ?? 32)))
    }

    func memberList(_ ids: [UInt32], renewed: Set<UInt32> = []) -> [RecoveryMember] {
        ids.sorted().map { RecoveryMember(nodeID: $0, weight: weights[$0] ?? 1, renewed: renewed.contains($0)) }
    }

    /// The CM applies a new membership: stop every running member now, then start everyone
    /// (joiners create their lockspace) after random delays.
    func change(to newMembers: [UInt32], renewed: Set<UInt32> = [], joinDelayMs: Int64 = 1500) {
        changes += 1
        members = newMembers.sorted()
        // Stop every live node that has the lockspace (old members included: they are being removed
        // and must be dead or gone; a live removed node is told to leave).
        for id in nodes.keys.sorted() where nodes[id]!.alive && nodes[id]!.created {
            if !members.contains(id) {
                nodes[id]!.alive = false   // left: its lockspace is released
                continue
            }
            apply(id, .stop)
        }
        scheduled.removeAll()
        let list = memberList(members, renewed: renewed)
        for id in members {
            if nodes[id] == nil || !nodes[id]!.alive {
                let inc = (nodes[id]?.incarnation ?? 0) + 1
                nodes[id] = makeNode(id, incarnation: inc)
                let delay = Int64.random(in: 0...joinDelayMs, using: &rng)
                scheduled.append((now + .milliseconds(delay), .start(id, incarnation: inc, list)))
            } else {
                let delay = Int64.random(in: 0...300, using: &rng)
                scheduled.append((now + .milliseconds(delay), .start(id, incarnation: nodes[id]!.incarnation, list)))
            }
        }
    }

    func crash(_ id: UInt32) {
        nodes[id]?.alive = false
    }

    // MARK: Running

    func apply(_ id: UInt32, _ event: RecoveryEvent) {
        guard var n = nodes[id], n.alive else { return }
        let wasStopped = n.machine.isStopped
        let actions = n.machine.handle(event, now: now, locks: &n.table)
        nodes[id] = n
        var isReceive = false
        if case .received = event { isReceive = true }
        for a in actions {
            switch a {
            case .send(let rc, let to):
                if isReceive && wasStopped && rc.rcomType != .statusReply {
                    violations.append("node \(id) sent \(rc.rcomType!) while stopped")
                }
                enqueue(rc, from: id, to: to)
            case .scheduleTimer(let d):
                nodes[id]!.timer = d
            case .cancelTimer:
                nodes[id]!.timer = nil
            case .statusChanged(let s):
                checkBarrier(id, s)
            case .recoveryDone(let report):
                nodes[id]!.done += 1
                completedRecoveries += 1
                if report.generation == 0 { violations.append("node \(id) completed with generation 0") }
            case .recoveryFailed(let f):
                nodes[id]!.failures.append(f)
            case .recoveryInterrupted:
                interrupted += 1
            case .log(let level, let text):
                if level == .info && text.contains("timed out") { timeouts += 1 }
            case .membersChanged, .lockingEnabled, .deliverLockMessage, .resendInFlightOperations, .grantPass:
                break
            }
        }
    }

    func enqueue(_ rc: DLMRcom, from: UInt32, to: UInt32) {
        switch rc.rcomType {
        case .status?, .statusReply?, .names?, .namesReply?:
            if Double.random(in: 0..<1, using: &rng) < dropProbability { return }
        default:
            break
        }
        let key = UInt64(from) << 32 | UInt64(to)
        var at = now + .microseconds(Int64.random(in: 50...(maxDelayMs * 1000), using: &rng))
        if let last = lastArrival[key], last > at { at = last }
        lastArrival[key] = at
        order += 1
        inflight.append(InFlight(at: at, order: order, from: from, fromIncarnation: nodes[from]!.incarnation, to: to,
                                 rc: rc))
    }

    /// Processes the next event; false when nothing is pending.
    @discardableResult
    func step() -> Bool {
        var best: NIODeadline?
        func consider(_ t: NIODeadline?) {
            guard let t else { return }
            if best == nil || t < best! { best = t }
        }
        let mi = inflight.indices.min { (inflight[$0].at, inflight[$0].order) < (inflight[$1].at, inflight[$1].order) }
        consider(mi.map { inflight[$0].at })
        let timerNode = nodes.values.filter { $0.alive && $0.timer != nil }.min { $0.timer! < $1.timer! }
        consider(timerNode?.timer)
        let si = scheduled.indices.min { scheduled[$0].at < scheduled[$1].at }
        consider(si.map { scheduled[$0].at })
        guard let t = best else { return false }
        now = max(now, t)
        if let si, scheduled[si].at == t {
            let s = scheduled.remove(at: si)
            switch s.what {
            case .start(let id, let inc, let list):
                if let n = nodes[id], n.alive, n.incarnation == inc {
                    nodes[id]!.created = true
                    apply(id, .start(list))
                }
            }
        } else if let mi, inflight[mi].at == t {
            let m = inflight.remove(at: mi)
            deliver(m)
        } else if let tn = timerNode, tn.timer == t {
            nodes[tn.id]!.timer = nil
            apply(tn.id, .timerFired)
        }
        checkSafety()
        return true
    }

    func deliver(_ m: InFlight) {
        guard let src = nodes[m.from], src.incarnation == m.fromIncarnation, src.alive else { return }
        guard let dst = nodes[m.to], dst.alive else { return }
        messagesDelivered += 1
        if let t = m.rc.rcomType { delivered[t, default: 0] += 1 }
        if recordTrace { trace.append((m.from, m.to, m.rc)) }
        if !dst.created {
            if m.rc.rcomType == .status {
                enqueue(LockspaceRecovery.notReadyReply(to: m.rc, ourNodeID: m.to), from: m.to, to: m.from)
            }
            return
        }
        apply(m.to, .received(m.rc, from: m.from))
    }

    func run(for duration: TimeAmount) {
        let end = now + duration
        while step() {
            if now >= end { break }
        }
        if now < end { now = end }
    }

    /// Runs until every live member is running with the CM's member list (true) or `limit` passes.
    func runUntilQuiescent(limit: TimeAmount = .seconds(120)) -> Bool {
        let end = now + limit
        while !isQuiescent {
            if !step() || now >= end { return isQuiescent }
        }
        return true
    }

    var liveMembers: [UInt32] { members.filter { nodes[$0]?.alive == true } }

    var isQuiescent: Bool {
        scheduled.isEmpty && !members.isEmpty && members.allSatisfy { id in
            guard let n = nodes[id], n.alive else { return false }
            return n.machine.isRunning && n.machine.memberIDs == members
        }
    }

    // MARK: Invariants

    func checkBarrier(_ id: UInt32, _ s: RecoveryStatus) {
        let n = nodes[id]!
        guard n.machine.isLowNode else { return }
        for bit in [RecoveryStatus.nodes, .dir, .locks, .done] where s.contains(bit.all) {
            for m in n.machine.memberIDs where m != id {
                guard let other = nodes[m], other.alive, other.created else { continue }
                if !other.machine.status.contains(bit) {
                    violations.append("low node \(id) set \(bit.all) while node \(m) has status \(other.machine.status)")
                }
            }
        }
    }

    /// Checked after every step: granted modes on every master are compatible.
    func checkSafety() {
        for n in nodes.values where n.alive {
            for r in n.table.resources.values where r.master == n.id {
                let granted = r.locks.filter { $0.status != .waiting }.map(\.grmode)
                for i in granted.indices {
                    for j in granted.indices where j > i && !recoveryCompatible(granted[i], granted[j]) {
                        violations.append("node \(n.id) masters \(r.name) with incompatible \(granted[i]) and \(granted[j])")
                    }
                }
            }
        }
    }

    /// Checked whenever the cluster is quiescent (all members running the same membership).
    func checkQuiescent() {
        quiescentChecks += 1
        let live = members
        let machines = live.map { nodes[$0]!.machine }
        // Members, generation and slots agree.
        let gen = machines[0].generation
        for m in machines {
            if m.memberIDs != live { violations.append("node \(m.ourNodeID) members \(m.memberIDs) != \(live)") }
            if m.generation != gen { violations.append("node \(m.ourNodeID) generation \(m.generation) != \(gen)") }
            if m.ourSlot == 0 { violations.append("node \(m.ourNodeID) has no slot") }
            if m.status != (m.isLowNode ? RecoveryStatus(rawValue: 0xFF) : RecoveryStatus(rawValue: 0x55)) {
                violations.append("node \(m.ourNodeID) ends with status \(m.status)")
            }
            for other in machines {
                let mine = other.members.first { $0.nodeID == m.ourNodeID }
                if let mine, mine.slot != Int(m.ourSlot) {
                    violations.append("node \(other.ourNodeID) thinks node \(m.ourNodeID) has slot \(mine.slot), it says \(m.ourSlot)")
                }
            }
            let key = "\(m.ourNodeID)/\(nodes[m.ourNodeID]!.incarnation)"
            if let first = firstSlot[key], first != m.ourSlot {
                violations.append("node \(key) slot changed \(first) -> \(m.ourSlot)")
            }
            firstSlot[key] = m.ourSlot
        }
        if Set(machines.map(\.ourSlot)).count != machines.count {
            violations.append("duplicate slots \(machines.map(\.ourSlot))")
        }
        // A lockspace whose members are all new incarnations starts a new life (generation from 0).
        let incarnations = Set(live.map { "\($0)/\(nodes[$0]!.incarnation)" })
        if !incarnations.isDisjoint(with: lastIncarnations) && gen < lastGeneration {
            violations.append("generation went back \(lastGeneration) -> \(gen)")
        }
        lastGeneration = gen
        lastIncarnations = incarnations

        // One master per active resource, the directory names it, lock copies match.
        var names = Set<[UInt8]>()
        for id in live { names.formUnion(nodes[id]!.table.resources.filter { !$0.value.isEmpty }.keys) }
        for name in names {
            let holders = live.filter { nodes[$0]!.table.resources[name].map { !$0.isEmpty } ?? false }
            let masters = live.filter { nodes[$0]!.table.resources[name]?.master == $0 }
            guard masters.count == 1, let master = masters.first else {
                violations.append("\(String(decoding: name, as: UTF8.self)): masters \(masters) holders \(holders)")
                continue
            }
            for h in holders where nodes[h]!.table.resources[name]!.master != master {
                violations.append("\(String(decoding: name, as: UTF8.self)): node \(h) believes master "
                    + "\(nodes[h]!.table.resources[name]!.master), real \(master)")
            }
            let dir = machines[0].placement.directoryNode(of: name)
            if nodes[dir]!.table.directoryLookup(name) != master {
                violations.append("\(String(decoding: name, as: UTF8.self)): dir node \(dir) says "
                    + "\(String(describing: nodes[dir]!.table.directoryLookup(name))), master \(master)")
            }
            let mr = nodes[master]!.table.resources[name]!
            for c in mr.locks where c.isMasterCopy {
                guard live.contains(c.owner) else {
                    violations.append("\(String(decoding: name, as: UTF8.self)): lock of departed node \(c.owner) on \(master)")
                    continue
                }
                let p = nodes[c.owner]!.table.resources[name]?.locks.first { $0.id == c.remoteID && !$0.isMasterCopy }
                if p == nil || p!.remoteID != c.id || p!.grmode != c.grmode {
                    violations.append("\(String(decoding: name, as: UTF8.self)): master copy \(c.id) of node \(c.owner) "
                        + "has no matching process copy")
                }
            }
            for h in holders where h != master {
                for l in nodes[h]!.table.resources[name]!.locks {
                    if l.isMasterCopy {
                        violations.append("node \(h) holds a master copy of a resource mastered by \(master)")
                    } else if !mr.locks.contains(where: { $0.isMasterCopy && $0.owner == h && $0.remoteID == l.id
                                                         && $0.id == l.remoteID }) {
                        violations.append("\(String(decoding: name, as: UTF8.self)): process copy \(l.id) on \(h) "
                            + "missing on master \(master)")
                    }
                }
            }
        }
    }

    // MARK: Lock workload (only while quiescent: a completed request/unlock, applied on both sides)

    func randomLockOps(_ count: Int, pool: Int) {
        for _ in 0..<count {
            let live = members
            guard let a = live.randomElement(using: &rng) else { return }
            if Int.random(in: 0..<4, using: &rng) == 0, let (name, lock) = randomProcessLock(of: a) {
                release(a, name: name, lock: lock)
                continue
            }
            let name = Array("res-\(Int.random(in: 0..<pool, using: &rng))".utf8)
            let mode = [LockMode.nl, .nl, .cr, .cr, .pr, .pr, .pr, .pw, .ex].randomElement(using: &rng)!
            acquire(a, name: name, mode: mode)
        }
    }

    func randomProcessLock(of a: UInt32) -> ([UInt8], RecoveryLockTable.Lock)? {
        let mine = nodes[a]!.table.resources.values.flatMap { r in
            r.locks.filter { !$0.isMasterCopy }.map { (r.name, $0) }
        }
        return mine.randomElement(using: &rng)
    }

    func acquire(_ a: UInt32, name: [UInt8], mode: LockMode) {
        let placement = nodes[a]!.machine.placement
        let dir = placement.directoryNode(of: name)
        let master: UInt32
        if let r = nodes[a]!.table.resources[name], r.master != 0 {
            master = r.master
        } else if let m = nodes[dir]!.table.directoryLookup(name) {
            master = m
        } else {
            master = a
            if dir != a { nodes[dir]!.table.setDirectoryEntry(name, master: a) }
        }
        let existing = nodes[master]!.table.resources[name]?.locks ?? []
        guard existing.allSatisfy({ recoveryCompatible($0.grmode, mode) }) else { return }
        let valblk: UInt32 = Bool.random(using: &rng) ? RecoveryLockTable.valblk : 0
        let lvb: [UInt8]? = valblk != 0 ? (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) } : nil
        locksCreated += 1
        if master == a {
            nodes[a]!.table.addLock(name: name, master: a, owner: a, grmode: mode, exflags: valblk, lvb: lvb)
        } else {
            let pid = nodes[a]!.table.addLock(name: name, master: master, owner: a, grmode: mode, exflags: valblk,
                                              lvb: lvb)
            let mid = nodes[master]!.table.addLock(name: name, master: master, owner: a, remoteID: pid, grmode: mode,
                                                   exflags: valblk, lvb: lvb)
            nodes[a]!.table.setRemoteID(name: name, lockID: pid, remoteID: mid)
        }
    }

    func release(_ a: UInt32, name: [UInt8], lock: RecoveryLockTable.Lock) {
        let master = nodes[a]!.table.resources[name]!.master
        nodes[a]!.table.removeLock(name: name, lockID: lock.id)
        if master != a {
            let gone = nodes[master]!.table.removeLock(name: name, lockID: lock.remoteID)
            if gone {
                let dir = nodes[a]!.machine.placement.directoryNode(of: name)
                if dir != master { nodes[dir]!.table.removeDirectoryEntry(name) }
            }
        } else if nodes[a]!.table.resources[name] == nil {
            let dir = nodes[a]!.machine.placement.directoryNode(of: name)
            if dir != a { nodes[dir]!.table.removeDirectoryEntry(name) }
        }
    }
}
