import DLMTransport
import NIOCore

@testable import DLMNode

/// A lean deterministic cluster for recovery at scale: each node a `LockspaceRecovery` with a
/// `LockManager`, wired as `PeerNode` wires them; one FIFO network (no delays, no drops), a clock
/// that jumps to the next timer when the network is idle. No invariant checks per step (that is
/// `LockRecoverySim`'s job): it is for runs with thousands of locks, as `dlm-peer bench recovery`
/// does on loopback, where the per-step checks would dominate.
final class RecoveryScalingCluster {
    struct Node {
        var machine: LockspaceRecovery
        var locks: LockManager
        var alive = true
        var timer: NIODeadline?
    }

    enum Payload {
        case rcom(DLMRcom)
        case message(DLMMessage)
    }

    let globalID: UInt32 = 0x0BE7_C401
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var nodes: [UInt32: Node] = [:]
    /// The network: FIFO, consumed from `head`.
    private var network: [(from: UInt32, to: UInt32, payload: Payload)] = []
    private var head = 0
    var granted = 0
    var failures: [String] = []
    var recoveriesDone = 0
    /// RCOMs sent, by type (reset by the caller between phases).
    var sent: [RcomType: Int] = [:]

    init(nodes count: Int) {
        for id in 1...UInt32(count) {
            let cfg = RecoveryConfig(ourNodeID: id, globalID: globalID, lvbLength: 32, initialRcomID: UInt64(id) << 40)
            let lm = LockManager(.init(lockspaceID: globalID, ourNodeID: id, lvbLength: 32))
            nodes[id] = Node(machine: LockspaceRecovery(config: cfg), locks: lm)
        }
    }

    var clock: Duration { .nanoseconds(Int64(now.uptimeNanoseconds)) }
    var alive: [UInt32] { nodes.keys.filter { nodes[$0]!.alive }.sorted() }

    /// The cluster manager: stop every live node, then start each with the live members.
    func restartLiveMembers() {
        let members = alive.map { RecoveryMember(nodeID: $0, weight: 1) }
        for id in alive { apply(id, .stop) }
        for id in alive { apply(id, .start(members)) }
    }

    /// Node `id` dies: its queued and future traffic is lost.
    func kill(_ id: UInt32) { nodes[id]!.alive = false }

    /// Takes one `mode` lock per name on node `id` and runs until the network is idle.
    func lock(on id: UInt32, names: [[UInt8]], mode: LockMode) {
        for name in names {
            let r = nodes[id]!.locks.lock(name: name, mode: mode, tag: 1, now: clock)
            if let e = r.error { failures.append("lock on \(id): \(e)") }
            lockActions(r.actions, from: id)
            runUntilIdle()
        }
    }

    func runUntilIdle() {
        while true {
            if head < network.count {
                let m = network[head]
                head += 1
                if head == network.count {
                    network.removeAll(keepingCapacity: true)
                    head = 0
                }
                deliver(m)
                continue
            }
            let timers = alive.compactMap { id in nodes[id]!.timer.map { (id, $0) } }
            guard let next = timers.min(by: { $0.1 < $1.1 }) else { return }
            now = max(now, next.1)
            nodes[next.0]!.timer = nil
            apply(next.0, .timerFired)
        }
    }

    private func deliver(_ m: (from: UInt32, to: UInt32, payload: Payload)) {
        guard nodes[m.from]!.alive, nodes[m.to]!.alive else { return }
        switch m.payload {
        case .rcom(let rc):
            apply(m.to, .received(rc, from: m.from))
        case .message(let msg):
            apply(m.to, .lockMessage(msg, from: m.from))
        }
    }

    func apply(_ id: UInt32, _ event: RecoveryEvent) {
        // Taken out while it runs: the only reference, so no copy-on-write of its tables.
        var n = nodes.removeValue(forKey: id)!
        defer { nodes[id] = n }
        n.locks.now = clock
        let actions = n.machine.handle(event, now: now, locks: &n.locks)
        // What the lock manager did inside `handle` comes first, as in `PeerNode.run`.
        lockActions(n.locks.takeActions(), from: id)
        for action in actions { perform(action, on: &n, id: id) }
    }

    private func perform(_ action: RecoveryAction, on n: inout Node, id: UInt32) {
        switch action {
        case .send(let rc, let to):
            if let type = rc.rcomType { sent[type, default: 0] += 1 }
            network.append((id, to, .rcom(rc)))
        case .scheduleTimer(let deadline):
            n.timer = deadline
        case .cancelTimer:
            n.timer = nil
        case .deliverLockMessage(let m, let from):
            lockActions(n.locks.receive(m, from: from, now: clock), from: id)
        case .resendInFlightOperations:
            lockActions(n.locks.recoverWaitersPost(now: clock), from: id)
        case .grantPass:
            lockActions(n.locks.recoverGrant(now: clock), from: id)
        case .recoveryDone:
            recoveriesDone += 1
        case .recoveryFailed(let f):
            failures.append("node \(id) recovery failed: \(f)")
        case .lockingEnabled, .recoveryInterrupted, .log, .statusChanged, .membersChanged:
            break
        }
    }

    private func lockActions(_ actions: [LockManager.Action], from id: UInt32) {
        for a in actions {
            switch a {
            case .send(let m, let to):
                network.append((id, to, .message(m)))
            case .completion(let c):
                if c.status == .granted { granted += 1 } else { failures.append("node \(id) lock \(c.lkid): \(c.status)") }
            case .blocking, .log:
                break
            }
        }
    }
}
