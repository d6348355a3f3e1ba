import DLMTransport
import NIOCore

@testable import DLMNode

/// A deterministic in-process cluster of real nodes (no sockets): each node is a `LockspaceRecovery`
/// with a `LockManager` as its lock state, exactly as `PeerNode` wires them. One seeded scheduler
/// delivers RCOMs and DLM_MSGs with random delays, FIFO per node pair (one midcomms stream), drops
/// bare STATUS/NAMES now and then (recover_timer resends), plays the cluster manager (stop every
/// member, then start every member with the new list), crashes nodes, and lets clients lock,
/// convert, unlock and cancel at random on every running node, also while messages to a dying
/// master are in flight.
///
/// Checked after every step: no two incompatible locks held cluster-wide (the owners' view),
/// every completion belongs to a pending call and comes once, the single-node invariants of each
/// lock manager while it runs. At every R10 (locking enabled): the LVB rule of recovery.md §7.1-9
/// on the resources the node masters. At every quiescent point (all members running the CM's list,
/// network empty, nothing waiting for a reply): one master per active resource named by its
/// directory node, every process copy matched by its master copy and vice versa, no lock of a
/// departed node, no call left unanswered except requests queued behind other locks.
final class LockRecoverySim {
    struct SimNode {
        var id: UInt32
        var incarnation: Int
        var machine: LockspaceRecovery
        var locks: LockManager
        var alive = true
        var created = false
        var timer: NIODeadline?
    }

    enum Payload {
        case rcom(DLMRcom)
        case message(DLMMessage)
    }

    struct InFlight {
        var at: NIODeadline
        var order: Int
        var from: UInt32
        var fromIncarnation: Int
        var to: UInt32
        var payload: Payload
    }

    struct ClientLock: CustomStringConvertible {
        var node: UInt32
        var incarnation: Int
        var lkid: UInt32
        var name: [UInt8]
        var opPending = true
        var unlockPending = false
        var mode: LockMode = .iv
        var description: String {
            "n\(node)/\(incarnation) lkid \(lkid) \(String(decoding: name, as: UTF8.self)) mode \(mode)"
                + "\(opPending ? " op-pending" : "")\(unlockPending ? " unlock-pending" : "")"
        }
    }

    struct Stats {
        var steps = 0
        var changes = 0
        var recoveries = 0
        var interrupted = 0
        var rcoms = 0
        var messages = 0
        var calls = 0
        var accepted = 0
        var completions = 0
        var stepChecks = 0
        var quiescentChecks = 0
        var lvbChecks = 0
        var purged = 0
        var rcomLocks = 0
        var rcomLookups = 0
        var resends = 0
        var fakedUnlockCancel = 0
        var crashesWithTraffic = 0
    }

    let globalID: UInt32 = 0x6CE2_339D
    let lvbLength = 16
    var rng: RecoveryRNG
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var nodes: [UInt32: SimNode] = [:]
    var weights: [UInt32: Int] = [:]
    var inflight: [InFlight] = []
    var order = 0
    var lastArrival: [UInt64: NIODeadline] = [:]
    var scheduled: [(at: NIODeadline, id: UInt32, incarnation: Int, list: [RecoveryMember])] = []
    var members: [UInt32] = []
    var clients: [UInt64: ClientLock] = [:]
    var nextTag: UInt64 = 1
    let names: [[UInt8]]
    var problems: [String] = []
    var stats = Stats()
    var dropProbability = 0.02
    /// For the LVB rule: before a membership change, who mastered each resource and whether a
    /// departing node held it PW/EX with VALBLK there (recovery.md §3.10/§3.11).
    var lvbBefore: [[UInt8]: (master: UInt32, departedWriter: Bool)] = [:]
    var departedSinceQuiet: Set<UInt32> = []
    /// Debugging: every event and action, when on.
    var tracing = false
    var trace: [String] = []
    func note(_ line: @autoclosure () -> String) {
        if tracing { trace.append("t=\(now.uptimeNanoseconds / 1_000_000) \(line())") }
    }
    /// Every completion, in order (for scenario tests).
    var completionLog: [(tag: UInt64, completion: LockManager.Completion)] = []

    /// A nodir lockspace (every node's recovery and lock manager).
    let nodir: Bool

    init(seed: UInt64, names: Int, nodir: Bool = false) {
        self.nodir = nodir
        rng = RecoveryRNG(seed: seed)
        self.names = (0..<names).map { Array("res-\($0)".utf8) }
    }

    var clock: Duration { .nanoseconds(Int64(now.uptimeNanoseconds)) }

    func problem(_ text: String) {
        if problems.count < 20 { problems.append("t=\(now.uptimeNanoseconds / 1_000_000)ms step \(stats.steps): \(text)") }
    }

    // MARK: - Nodes and the cluster manager

    func makeNode(_ id: UInt32, incarnation: Int) -> SimNode {
        let cfg = RecoveryConfig(ourNodeID: id, globalID: globalID, lvbLength: UInt32(lvbLength), nodir: nodir,
                                 initialRcomID: rng.next() >> 8)
        let lm = LockManager(.init(lockspaceID: globalID, ourNodeID: id, lvbLength: lvbLength, nodir: nodir))
        return SimNode(id: id, incarnation: incarnation, machine: LockspaceRecovery(config: cfg), locks: lm)
    }

    /// Stop every running member, then start every member of `newMembers` (joiners create the
    /// lockspace) after random delays. Nodes left out must be dead or leaving: they are released.
    func change(to newMembers: [UInt32], renewed: Set<UInt32> = [], joinDelayMs: Int64 = 800) {
        stats.changes += 1
        let old = Set(members)
        members = newMembers.sorted()
        let gone = old.subtracting(members).union(renewed)
        snapshotLVB(departing: gone)
        departedSinceQuiet.formUnion(gone)
        for id in nodes.keys.sorted() where nodes[id]!.alive && nodes[id]!.created {
            if !members.contains(id) {
                release(id)
                continue
            }
            apply(id, .stop)
        }
        scheduled.removeAll()
        let list = members.map { RecoveryMember(nodeID: $0, weight: weights[$0] ?? 1, renewed: renewed.contains($0)) }
        for id in members {
            if nodes[id] == nil || !nodes[id]!.alive {
                let inc = (nodes[id]?.incarnation ?? 0) + 1
                nodes[id] = makeNode(id, incarnation: inc)
                scheduled.append((now + .milliseconds(Int64.random(in: 0...joinDelayMs, using: &rng)), id, inc, list))
            } else {
                scheduled.append((now + .milliseconds(Int64.random(in: 0...200, using: &rng)), id,
                                  nodes[id]!.incarnation, list))
            }
        }
    }

    func crash(_ id: UInt32) {
        if inflight.contains(where: { $0.to == id || $0.from == id }) { stats.crashesWithTraffic += 1 }
        release(id)
    }

    /// The node is gone (crashed or left): its clients go with it.
    func release(_ id: UInt32) {
        nodes[id]?.alive = false
        clients = clients.filter { $0.value.node != id }
    }

    func snapshotLVB(departing: Set<UInt32>) {
        // Keep the view of the last quiescent cluster across changes made during a recovery.
        let fresh = lvbBefore.isEmpty
        for (id, n) in nodes where n.alive && n.created {
            for view in n.locks.resourceViews where view.active && view.master == id {
                var writer = false
                for lock in view.resource.grantQueue + view.resource.convertQueue {
                    guard let lv = n.locks.lockView(lock.id), lv.isMasterCopy else { continue }
                    if departing.contains(UInt32(bitPattern: lock.nodeID)) && lock.flags.contains(.valBlk)
                        && lock.grantedMode.rawValue >= LockMode.pw.rawValue
                    {
                        writer = true
                    }
                }
                if fresh || lvbBefore[view.name] == nil {
                    lvbBefore[view.name] = (id, writer)
                } else if writer {
                    lvbBefore[view.name]!.departedWriter = true
                }
            }
        }
    }

    // MARK: - Running one node

    func apply(_ id: UInt32, _ event: RecoveryEvent) {
        guard var n = nodes[id], n.alive else { return }
        switch event {
        case .lockMessage(let m, let from): note("n\(id) <- n\(from) \(MessageType.name(m.type)) lkid \(m.lkid) remid \(m.remid) result \(m.result)")
        case .received(let rc, let from): if rc.rcomType == .lock || rc.rcomType == .lockReply || rc.rcomType == .lookup || rc.rcomType == .lookupReply { note("n\(id) <- n\(from) \(rc.rcomType!) \(rc.payload)") }
        case .stop, .start: note("n\(id) \(event)")
        case .timerFired: break
        }
        n.locks.now = clock
        let actions = n.machine.handle(event, now: now, locks: &n.locks)
        let early = n.locks.takeActions()
        nodes[id] = n
        lockActions(early, node: id)
        for a in actions {
            switch a {
            case .send(let rc, let to):
                if rc.rcomType == .lock { stats.rcomLocks += 1 }
                if rc.rcomType == .lookup { stats.rcomLookups += 1 }
                enqueue(.rcom(rc), from: id, to: to)
            case .scheduleTimer(let d):
                nodes[id]!.timer = d
            case .cancelTimer:
                nodes[id]!.timer = nil
            case .deliverLockMessage(let m, let from):
                let out = nodes[id]!.locks.receive(m, from: from, now: clock)
                lockActions(out, node: id)
            case .lockingEnabled:
                checkLVBRule(id)
            case .resendInFlightOperations:
                stats.resends += nodes[id]!.locks.recoveryResendCount
                let out = nodes[id]!.locks.recoverWaitersPost(now: clock)
                lockActions(out, node: id)
            case .grantPass:
                let out = nodes[id]!.locks.recoverGrant(now: clock)
                lockActions(out, node: id)
            case .recoveryDone(let report):
                note("n\(id) recovery done \(report.members)")
                stats.recoveries += 1
                if report.generation == 0 { problem("node \(id) completed with generation 0") }
            case .recoveryFailed(let f):
                problem("node \(id) recovery failed: \(f)")
            case .recoveryInterrupted:
                stats.interrupted += 1
            case .log(_, let text):
                if text.hasPrefix("dlm_recover_purge "), let n = Int(text.split(separator: " ")[1]) { stats.purged += n }
            case .statusChanged, .membersChanged:
                break
            }
        }
    }

    func lockActions(_ actions: [LockManager.Action], node: UInt32) {
        for action in actions {
            note("n\(node) action \(action)")
            switch action {
            case .send(let m, let to):
                stats.messages += 1
                enqueue(.message(m), from: node, to: to)
            case .completion(let c):
                stats.completions += 1
                completed(c, node: node)
            case .blocking:
                break
            case .log(let line):
                if line.contains("to departed master completes") { stats.fakedUnlockCancel += 1 }
            }
        }
    }

    func completed(_ c: LockManager.Completion, node: UInt32) {
        completionLog.append((c.tag, c))
        guard var lock = clients[c.tag] else {
            // A client of a dead incarnation never gets here (the node is gone); anything else is a bug.
            return problem("completion for unknown tag \(c.tag) lkid \(c.lkid) on n\(node): \(c.status)")
        }
        guard lock.node == node, lock.lkid == c.lkid else {
            return problem("completion for \(lock) delivered on n\(node) lkid \(c.lkid)")
        }
        switch c.status {
        case .unlocked:
            if !lock.unlockPending { problem("unlock completion without unlock: \(lock)") }
            lock.unlockPending = false
            lock.opPending = false
        case .cancelled:
            if !lock.opPending { problem("cancel completion without a pending operation: \(lock)") }
            lock.opPending = false
        case .granted, .wouldBlock, .deadlock:
            if !lock.opPending { problem("completion \(c.status) without a pending operation: \(lock)") }
            lock.opPending = false
        case .queued, .busy, .notFound, .invalid:
            // -ENOENT ends a lock whose unlock found nothing on the master (never granted).
            if !(c.status == .notFound && lock.unlockPending) { problem("completion status \(c.status) for \(lock)") }
            lock.opPending = false
            lock.unlockPending = false
        }
        lock.mode = c.mode
        if c.endOfLife {
            // A lock that ends (e.g. its request failed with -EAGAIN while a force-unlock overlapped)
            // answers its overlapping unlock too: one completion per lock end, as in the kernel.
            clients[c.tag] = nil
        } else {
            clients[c.tag] = lock
        }
    }

    func enqueue(_ payload: Payload, from: UInt32, to: UInt32) {
        if case .rcom(let rc) = payload {
            switch rc.rcomType {
            case .status?, .statusReply?, .names?, .namesReply?:
                if Double.random(in: 0..<1, using: &rng) < dropProbability { return }
            default:
                break
            }
        }
        let key = UInt64(from) << 32 | UInt64(to)
        var at = now + .microseconds(Int64.random(in: 50...8000, using: &rng))
        if let last = lastArrival[key], last > at { at = last }
        lastArrival[key] = at
        order += 1
        inflight.append(InFlight(at: at, order: order, from: from, fromIncarnation: nodes[from]!.incarnation, to: to,
                                 payload: payload))
    }

    // MARK: - Scheduler

    @discardableResult
    func step() -> Bool {
        var best: NIODeadline?
        func consider(_ t: NIODeadline?) {
            guard let t else { return }
            if best == nil || t < best! { best = t }
        }
        let mi = inflight.indices.min { (inflight[$0].at, inflight[$0].order) < (inflight[$1].at, inflight[$1].order) }
        consider(mi.map { inflight[$0].at })
        let timerNode = nodes.values.filter { $0.alive && $0.timer != nil }.min { ($0.timer!, $0.id) < ($1.timer!, $1.id) }
        consider(timerNode?.timer)
        let si = scheduled.indices.min { scheduled[$0].at < scheduled[$1].at }
        consider(si.map { scheduled[$0].at })
        guard let t = best else { return false }
        stats.steps += 1
        now = max(now, t)
        if let si, scheduled[si].at == t {
            let s = scheduled.remove(at: si)
            if let n = nodes[s.id], n.alive, n.incarnation == s.incarnation {
                nodes[s.id]!.created = true
                apply(s.id, .start(s.list))
            }
        } else if let mi, inflight[mi].at == t {
            deliver(inflight.remove(at: mi))
        } else if let tn = timerNode, tn.timer == t {
            nodes[tn.id]!.timer = nil
            apply(tn.id, .timerFired)
        }
        checkEveryStep()
        return true
    }

    func deliver(_ m: InFlight) {
        guard let src = nodes[m.from], src.incarnation == m.fromIncarnation, src.alive else { return }
        guard let dst = nodes[m.to], dst.alive else { return }
        switch m.payload {
        case .rcom(let rc):
            stats.rcoms += 1
            if !dst.created {
                if rc.rcomType == .status {
                    enqueue(.rcom(LockspaceRecovery.notReadyReply(to: rc, ourNodeID: m.to)), from: m.to, to: m.from)
                }
                return
            }
            apply(m.to, .received(rc, from: m.from))
        case .message(let msg):
            guard dst.created else { return }
            apply(m.to, .lockMessage(msg, from: m.from))
        }
    }

    func run(for duration: TimeAmount) {
        let end = now + duration
        while now < end, step() {}
        if now < end { now = end }
    }

    var recovered: Bool {
        scheduled.isEmpty && !members.isEmpty && members.allSatisfy { id in
            guard let n = nodes[id], n.alive else { return false }
            return n.machine.isRunning && n.machine.memberIDs == members
        }
    }

    var quiescent: Bool {
        recovered && inflight.isEmpty && members.allSatisfy { !nodes[$0]!.locks.hasOutstandingOperations }
    }

    /// Runs until every member runs the CM's list and the network is empty.
    func runUntilQuiescent(limit: TimeAmount = .seconds(300)) -> Bool {
        let end = now + limit
        while !quiescent {
            if !step() || now >= end { return quiescent }
        }
        return true
    }

    // MARK: - Clients

    /// One random call by a client on a random running member.
    func clientCall() {
        let running = members.filter { nodes[$0]?.alive == true && nodes[$0]!.machine.isRunning }
        guard let node = running.randomElement(using: &rng) else { return }
        stats.calls += 1
        var n = nodes[node]!
        let inc = n.incarnation
        let mine = clients.filter { $0.value.node == node }.sorted { $0.key < $1.key }
        let roll = Int.random(in: 0..<100, using: &rng)
        let modes: [LockMode] = [.nl, .cr, .cw, .pr, .pw, .ex]
        if mine.isEmpty || roll < 35 {
            let name = names.randomElement(using: &rng)!
            let mode = modes.randomElement(using: &rng)!
            var flags: LockFlags = []
            if Int.random(in: 0..<100, using: &rng) < 10 { flags.insert(.noQueue) }
            let valblk = Int.random(in: 0..<100, using: &rng) < 40
            if valblk { flags.insert(.valBlk) }
            let tag = nextTag
            nextTag += 1
            let lvb = valblk ? [UInt8](repeating: UInt8(truncatingIfNeeded: tag), count: lvbLength) : nil
            let r = n.locks.lock(name: name, mode: mode, flags: flags, lvb: lvb, pid: 100 + node, tag: tag,
                                 blocking: Bool.random(using: &rng), now: clock)
            note("n\(node) call lock \(String(decoding: name, as: UTF8.self)) \(mode) \(flags.rawValue) -> \(r.lkid) \(String(describing: r.error))")
            nodes[node] = n
            if r.error == nil {
                stats.accepted += 1
                clients[tag] = ClientLock(node: node, incarnation: inc, lkid: r.lkid, name: name)
            }
            lockActions(r.actions, node: node)
            return
        }
        let (tag, lock) = mine.randomElement(using: &rng)!
        let result: LockManager.CallResult
        var kind = 0
        if roll < 65 {
            var flags: LockFlags = []
            if Int.random(in: 0..<100, using: &rng) < 15 { flags.insert(.noQueue) }
            if Int.random(in: 0..<100, using: &rng) < 40 { flags.insert(.valBlk) }
            result = n.locks.convert(lkid: lock.lkid, mode: modes.randomElement(using: &rng)!, flags: flags,
                                     lvb: [UInt8](repeating: UInt8(truncatingIfNeeded: tag &+ UInt64(roll)), count: lvbLength),
                                     now: clock)
            kind = 1
        } else if roll < 80 {
            result = n.locks.unlock(lkid: lock.lkid, flags: Bool.random(using: &rng) ? .valBlk : [],
                                    lvb: [UInt8](repeating: UInt8(truncatingIfNeeded: roll), count: lvbLength), now: clock)
            kind = 2
        } else if roll < 92 {
            result = n.locks.cancel(lkid: lock.lkid, now: clock)
        } else {
            result = n.locks.unlock(lkid: lock.lkid, flags: .forceUnlock, now: clock)
            kind = 2
        }
        nodes[node] = n
        note("n\(node) call kind \(kind) roll \(roll) lkid \(lock.lkid) -> \(String(describing: result.error))")
        if result.error == nil, clients[tag] != nil {
            stats.accepted += 1
            switch kind {
            case 1: clients[tag]!.opPending = true
            case 2: clients[tag]!.unlockPending = true
            default: break
            }
        }
        lockActions(result.actions, node: node)
    }

    // MARK: - Deterministic calls (scenario tests)

    /// A new lock on `node`; returns its client tag (nil if refused synchronously).
    @discardableResult
    func lock(_ node: UInt32, _ name: String, _ mode: LockMode, _ flags: LockFlags = [], lvb: [UInt8]? = nil) -> UInt64? {
        let tag = nextTag
        nextTag += 1
        var n = nodes[node]!
        let r = n.locks.lock(name: Array(name.utf8), mode: mode, flags: flags, lvb: lvb, pid: 100 + node, tag: tag,
                             now: clock)
        nodes[node] = n
        if r.error == nil { clients[tag] = ClientLock(node: node, incarnation: n.incarnation, lkid: r.lkid, name: Array(name.utf8)) }
        lockActions(r.actions, node: node)
        return r.error == nil ? tag : nil
    }

    func convert(_ tag: UInt64, _ mode: LockMode, _ flags: LockFlags = [], lvb: [UInt8]? = nil) -> LockResult? {
        let c = clients[tag]!
        var n = nodes[c.node]!
        let r = n.locks.convert(lkid: c.lkid, mode: mode, flags: flags, lvb: lvb, now: clock)
        nodes[c.node] = n
        if r.error == nil { clients[tag]!.opPending = true }
        lockActions(r.actions, node: c.node)
        return r.error
    }

    func unlock(_ tag: UInt64, _ flags: LockFlags = [], lvb: [UInt8]? = nil) -> LockResult? {
        let c = clients[tag]!
        var n = nodes[c.node]!
        let r = n.locks.unlock(lkid: c.lkid, flags: flags, lvb: lvb, now: clock)
        nodes[c.node] = n
        if r.error == nil { clients[tag]!.unlockPending = true }
        lockActions(r.actions, node: c.node)
        return r.error
    }

    func cancel(_ tag: UInt64) -> LockResult? {
        let c = clients[tag]!
        var n = nodes[c.node]!
        let r = n.locks.cancel(lkid: c.lkid, now: clock)
        nodes[c.node] = n
        lockActions(r.actions, node: c.node)
        return r.error
    }

    func completions(_ tag: UInt64) -> [LockManager.Completion] {
        completionLog.filter { $0.tag == tag }.map(\.completion)
    }

    /// The resource as its (single, running) master sees it.
    func masterView(_ name: String) -> (node: UInt32, view: LockManager.ResourceView)? {
        for id in members {
            if let v = nodes[id]?.locks.resourceView(Array(name.utf8)), v.active, v.master == id { return (id, v) }
        }
        return nil
    }

    /// Inactive-rsb scans on running members (REMOVE to directory nodes).
    func tick() {
        for id in members where nodes[id]?.alive == true && nodes[id]!.machine.isRunning {
            let out = nodes[id]!.locks.tick(now: clock)
            lockActions(out, node: id)
        }
    }

    // MARK: - Invariants

    func checkEveryStep() {
        stats.stepChecks += 1
        let live = nodes.values.filter { $0.alive && $0.created }
        for n in live where n.machine.isRunning && n.machine.memberIDs == members {
            // KQ: convert + cancel + force-unlock make wait_count 3 (the kernel allows it); the lock
            // manager's own check stops at 2.
            for p in n.locks.invariantViolations() where !p.contains("master copy") && !p.hasSuffix("wait_count 3") {
                problem("n\(n.id): \(p)")
            }
        }
        for name in names {
            var held: [(UInt32, LockEntry)] = []
            for n in live {
                guard let view = n.locks.resourceView(name), view.active else { continue }
                for lock in view.resource.grantQueue + view.resource.convertQueue {
                    guard let lv = n.locks.lockView(lock.id), !lv.isMasterCopy else { continue }
                    let middle = LockMode.isMiddleConversion(granted: lock.grantedMode, requested: lock.requestedMode)
                    if middle && (lv.waitType == .convert || lock.status == .convert) { continue }
                    if lv.waitType == .unlock || lv.overlapUnlock { continue }
                    held.append((n.id, lock))
                }
            }
            for i in held.indices {
                for j in held.indices where j > i && !held[i].1.grantedMode.isCompatible(with: held[j].1.grantedMode) {
                    problem("incompatible holders of \(String(decoding: name, as: UTF8.self)): "
                        + "n\(held[i].0) \(held[i].1) / n\(held[j].0) \(held[j].1)")
                }
            }
        }
    }

    /// At R10 on `id`: the LVB rule on every resource it masters (recovery.md §3.11, §7.1-9).
    func checkLVBRule(_ id: UInt32) {
        let n = nodes[id]!
        for view in n.locks.resourceViews where view.active && view.master == id {
            stats.lvbChecks += 1
            let r = view.resource
            let before = lvbBefore[view.name]
            let valblk = (r.grantQueue + r.convertQueue).filter { $0.flags.contains(.valBlk) }
            if nodir {
                // Every root rsb gets a new master (recover_master_static), so recover_lvb rebuilds
                // the value on every recovery and ignores a departed writer: a surviving PW/EX
                // holder's value, else VALNOTVALID while NL/CR holders with VALBLK remain. An rsb
                // the master first saw in this recovery's RCOM_LOCKs is on no root list: the
                // kernel leaves its value alone (not checked).
                guard let before, before.master == id, !valblk.isEmpty else { continue }
                if let big = valblk.first(where: { $0.grantedMode.rawValue > LockMode.cr.rawValue }) {
                    if r.lvb != big.lvb || r.lvbSeq != big.lvbSeq {
                        problem("n\(id) \(String(decoding: view.name, as: UTF8.self)): nodir, LVB not taken from the \(big.grantedMode) holder")
                    }
                } else if !r.valueNotValid {
                    problem("n\(id) \(String(decoding: view.name, as: UTF8.self)): nodir, only NL/CR holders, LVB not flagged VALNOTVALID")
                }
                continue
            }
            if let before, before.master == id {
                if before.departedWriter && !r.valueNotValid {
                    problem("n\(id) \(String(decoding: view.name, as: UTF8.self)): a departed PW/EX writer, "
                        + "LVB not flagged VALNOTVALID")
                }
            } else if let before, departedSinceQuiet.contains(before.master), !valblk.isEmpty {
                // New master after the old one departed: the value is a surviving holder's.
                if let big = valblk.first(where: { $0.grantedMode.rawValue > LockMode.cr.rawValue }) {
                    if r.lvb != big.lvb || r.lvbSeq != big.lvbSeq {
                        problem("n\(id) \(String(decoding: view.name, as: UTF8.self)): LVB not taken from the "
                            + "surviving \(big.grantedMode) holder")
                    }
                } else if !r.valueNotValid {
                    problem("n\(id) \(String(decoding: view.name, as: UTF8.self)): only NL/CR holders left, "
                        + "LVB not flagged VALNOTVALID")
                } else if let lvb = r.lvb, !valblk.contains(where: { $0.lvb == lvb && $0.lvbSeq == r.lvbSeq }) {
                    problem("n\(id) \(String(decoding: view.name, as: UTF8.self)): LVB is no holder's value")
                }
            }
        }
    }

    func checkQuiescent() {
        stats.quiescentChecks += 1
        lvbBefore = [:]
        departedSinceQuiet = []
        let placement = nodes[members[0]]!.machine.placement
        for id in members {
            let n = nodes[id]!
            for p in n.locks.invariantViolations() where !p.hasSuffix("wait_count 3") { problem("quiescent n\(id): \(p)") }
        }
        var active = Set<[UInt8]>()
        for id in members {
            for v in nodes[id]!.locks.resourceViews where v.active { active.insert(v.name) }
        }
        for name in active.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            let label = String(decoding: name, as: UTF8.self)
            let holders = members.filter { nodes[$0]!.locks.resourceView(name)?.active == true }
            let masters = holders.filter { nodes[$0]!.locks.resourceView(name)!.master == $0 }
            guard masters.count == 1, let master = masters.first else {
                problem("\(label): masters \(masters) among holders \(holders)")
                continue
            }
            for h in holders where nodes[h]!.locks.resourceView(name)!.master != master {
                problem("\(label): n\(h) believes master \(nodes[h]!.locks.resourceView(name)!.master), real \(master)")
            }
            let dir = placement.directoryNode(of: name)
            if nodir && master != dir { problem("\(label): nodir, mastered by n\(master), hashes to n\(dir)") }
            if nodes[dir]!.locks.directory[name] != master {
                problem("\(label): dir n\(dir) says \(String(describing: nodes[dir]!.locks.directory[name])), master \(master)")
            }
            let ml = nodes[master]!.locks
            for lock in ml.resourceView(name)!.resource.allLocks {
                guard let lv = ml.lockView(lock.id), lv.isMasterCopy else { continue }
                let owner = UInt32(bitPattern: lock.nodeID)
                guard members.contains(owner) else {
                    problem("\(label): master copy \(lock) of departed node \(owner) on n\(master)")
                    continue
                }
                guard let pc = nodes[owner]!.locks.lockView(lock.remoteID), !pc.isMasterCopy, pc.name == name,
                      pc.lock.remoteID == lock.id else {
                    problem("\(label): master copy \(lock) on n\(master) has no process copy on n\(owner)")
                    continue
                }
                if pc.lock.status != lock.status || pc.lock.grantedMode != lock.grantedMode
                    || (lock.status != .granted && pc.lock.requestedMode != lock.requestedMode)
                {
                    problem("\(label): copies differ: n\(owner) \(pc.lock) / n\(master) \(lock)")
                }
            }
            for h in holders where h != master {
                for lock in nodes[h]!.locks.resourceView(name)!.resource.allLocks {
                    guard let lv = nodes[h]!.locks.lockView(lock.id) else { continue }
                    if lv.isMasterCopy {
                        problem("\(label): n\(h) holds master copy \(lock) of a resource mastered by n\(master)")
                        continue
                    }
                    guard let mc = ml.lockView(lock.remoteID), mc.isMasterCopy,
                          UInt32(bitPattern: mc.lock.nodeID) == h, mc.lock.remoteID == lock.id else {
                        problem("\(label): process copy \(lock) on n\(h) has no master copy on n\(master)")
                        continue
                    }
                }
            }
        }
        // Every call answered: nothing pending but requests/conversions queued behind other locks.
        for (tag, c) in clients {
            if c.unlockPending { problem("unlock of \(c) (tag \(tag)) never completed") }
            guard c.opPending else { continue }
            guard let lv = nodes[c.node]?.locks.lockView(c.lkid), !lv.detached,
                  lv.lock.status == .waiting || lv.lock.status == .convert else {
                problem("call of \(c) (tag \(tag)) never answered")
                continue
            }
        }
        // No lock of a departed node anywhere.
        for id in members {
            for lv in nodes[id]!.locks.lockViews where lv.isMasterCopy {
                if !members.contains(UInt32(bitPattern: lv.lock.nodeID)) {
                    problem("n\(id) keeps lock \(lv.lock) of departed node \(lv.lock.nodeID)")
                }
            }
        }
    }

    /// End of a run: force-unlock everything; every call must complete and every node end empty.
    func drain() {
        var rounds = 0
        while !clients.isEmpty && rounds < 50 {
            rounds += 1
            for (tag, c) in clients.sorted(by: { $0.key < $1.key }) where !c.unlockPending {
                guard var n = nodes[c.node], n.alive else { continue }
                let r = n.locks.unlock(lkid: c.lkid, flags: .forceUnlock, now: clock)
                nodes[c.node] = n
                if r.error == nil { clients[tag]!.unlockPending = true }
                lockActions(r.actions, node: c.node)
            }
            _ = runUntilQuiescent(limit: .seconds(60))
        }
        if !clients.isEmpty { problem("drain left \(clients.count) locks: \(clients.values.prefix(4).map(\.description))") }
        for id in members {
            let left = nodes[id]!.locks.lockViews
            if !left.isEmpty { problem("n\(id) keeps \(left.count) locks after drain: \(left.prefix(3).map(\.lock))") }
        }
    }
}
