/// The agent's coordination logic as a value-type state machine: `AgentEvent`s in,
/// `AgentAction`s out, no IO (the shell is `AgentRuntime`).
///
/// Membership of a lockspace L is a sequence of changes M(G) (recovery.md §5.4):
///
/// * **Formation** (G0): the config's member list. A node whose lockspace comes online while
///   L is still at G0 writes the full list and starts at once, without a barrier: every
///   member is stopped by construction and the kernels' recovery waits for all of them.
/// * **Later changes** are proposed by one agent and broadcast (`change`), numbered
///   (seq, origin): a joining node (its `online` after formation) proposes M ∪ {itself}; a
///   leaving node (its `offline`) proposes M − {itself}; `node-down F` (or a fenced heartbeat
///   timeout) proposes M − {F}; a config reload that removes a member proposes M − {it}
///   (members a reload adds join by themselves when their lockspace comes online).
/// * **Barrier**: for the newest change T every member of T that runs L stops (`control`=0,
///   synchronous) and then announces `stopped(L, T)`; a joining node is stopped from birth and
///   announces at once. An agent that has `stopped(L, T)` from every member of T writes T into
///   configfs (renewing members that were removed and came back since its last start) and
///   starts. A newer change before the start simply replaces T (everyone stopped stays stopped
///   and announces again); a newer change after the start stops again.
/// * A node is only ever removed because it left, was declared down (`node-down`, or a
///   heartbeat timeout with a successful fence), or a reload dropped it; a node removed while
///   it still runs L is stopped and stays stopped (it must remove and recreate L to rejoin).
public struct AgentCore: Sendable {
    public enum Local: String, Hashable, Sendable, Codable {
        /// No local lockspace.
        case absent
        /// `online` seen: the lockspace exists, stopped from birth, `event_done` pending.
        case joining
        /// Started (`control`=1 written) with `started`.
        case running
        /// `control`=0 issued, not returned yet.
        case stopping
        /// Stopped for a newer change.
        case stopped
        /// `offline` seen: stopping, then configfs cleanup and `event_done`.
        case leaving
    }

    public struct LockspaceState: Hashable, Sendable {
        public var name: String
        public var globalID: UInt32
        /// The newest change known.
        public var target: MembershipChange
        public var local: Local = .absent
        /// The change this node last started (what its configfs holds).
        public var started: MembershipChange?
        /// stopped(L, G) announcements received (and our own), per change.
        public var stoppedFrom: [ChangeID: Set<AgentNodeID>] = [:]
        /// The change we announced stopped for.
        public var announced: ChangeID?
        /// Members removed (or renewed) since our last start: re-added ones need a renew.
        public var removedSinceStart: Set<AgentNodeID> = []
        /// An `online` waiting until the agents of all members have said hello.
        public var joinPending = false
        /// Removed from the membership while the lockspace still existed here.
        public var evicted = false
        /// This node left (answered `offline`) and has not come online again: a newer change
        /// that still lists it (proposed concurrently) gets a new proposal without it.
        public var left = false

        init(name: String, globalID: UInt32, target: MembershipChange) {
            self.name = name
            self.globalID = globalID
            self.target = target
        }
    }

    public let me: AgentNodeID
    public let incarnation: UInt64
    /// Whether a fence command is configured (a silent node may then be fenced and removed).
    public var canFence: Bool
    public private(set) var nodes: [AgentNodeID] = []
    public private(set) var configured: [String: ConfiguredLockspace] = [:]
    public private(set) var lockspaces: [String: LockspaceState] = [:]
    /// Declared failed and not back yet.
    public private(set) var down: Set<AgentNodeID> = []
    /// Agents that said hello (their newest changes are merged).
    public private(set) var synced: Set<AgentNodeID> = []
    public private(set) var incarnations: [AgentNodeID: UInt64] = [:]
    public private(set) var fencing: Set<AgentNodeID> = []

    public init(me: AgentNodeID, incarnation: UInt64, canFence: Bool = false) {
        self.me = me
        self.incarnation = incarnation
        self.canFence = canFence
    }

    public var hello: AgentMessage {
        .hello(node: me, incarnation: incarnation, lockspaces: lockspaces.keys.sorted().map { name in
            let s = lockspaces[name]!
            return LockspaceReport(name: name, target: s.target, started: s.started?.id)
        })
    }

    // MARK: Events

    public mutating func handle(_ event: AgentEvent) -> [AgentAction] {
        var out: [AgentAction] = []
        switch event {
        case .configLoaded(let list, let nodes):
            configLoaded(list, nodes: nodes, &out)
        case .online(let ls):
            online(ls, &out)
        case .offline(let ls):
            offline(ls, &out)
        case .stopDone(let ls):
            stopDone(ls, &out)
        case .localFailed(let ls, let error):
            localFailed(ls, error, &out)
        case .received(let message, let from):
            received(message, from: from, &out)
        case .connected(let node):
            out.append(.send(hello, to: node))
            // what it may have missed while we were not connected
            for name in lockspaces.keys.sorted() {
                let s = lockspaces[name]!
                if s.announced == s.target.id, s.target.contains(node) {
                    out.append(.send(.stopped(lockspace: name, node: me, change: s.target), to: node))
                }
            }
        case .disconnected(let node):
            out.append(.log(.info, "agent of node \(node) disconnected"))
        case .nodeDownRequested(let node):
            declareDown(node, &out)
        case .heartbeatTimeout(let node):
            heartbeatTimeout(node, &out)
        case .fenceDone(let node, let success):
            fencing.remove(node)
            if success {
                out.append(.log(.warning, "node \(node) fenced: removing it"))
                declareDown(node, &out)
            } else {
                out.append(.log(.error, "fencing node \(node) failed: it stays a member (it may still be alive)"))
            }
        }
        return out
    }

    // MARK: Config

    private mutating func configLoaded(_ list: [ConfiguredLockspace], nodes newNodes: [AgentNodeID],
                                       _ out: inout [AgentAction]) {
        let first = configured.isEmpty && lockspaces.isEmpty
        let old = configured
        if !first {
            for n in Set(newNodes).subtracting(nodes).sorted() where n != me {
                out.append(.addComm(node: n))
            }
            for n in Set(nodes).subtracting(newNodes).sorted() where n != me {
                out.append(.removeComm(node: n))
            }
        }
        nodes = newNodes.sorted()
        configured = Dictionary(list.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for ls in list {
            guard var state = lockspaces[ls.name] else {
                lockspaces[ls.name] = LockspaceState(
                    name: ls.name, globalID: ls.globalID,
                    target: MembershipChange(id: .formation, members: ls.members))
                continue
            }
            // G0 is never rewritten: other nodes may have started it already (a node the
            // reload adds joins with a change of its own).
            state.globalID = ls.globalID
            lockspaces[ls.name] = state
            let before = Set(old[ls.name]?.members.map(\.id) ?? [])
            let removed = before.subtracting(ls.members.map(\.id))
            let drop = state.target.memberIDs.intersection(removed)
            if !drop.isEmpty {
                out.append(.log(.info, "\(ls.name): the config removes \(sortedList(drop))"))
                propose(ls.name, members: state.target.members.filter { !drop.contains($0.id) }, renew: [], &out)
            }
        }
        for name in Set(old.keys).subtracting(configured.keys) {
            out.append(.log(.warning, "\(name): no longer in the config; its membership is kept as it is"))
        }
    }

    // MARK: Local lockspace

    private mutating func online(_ ls: String, _ out: inout [AgentAction]) {
        guard let conf = configured[ls], conf.members.contains(where: { $0.id == me }),
              var state = lockspaces[ls] else {
            out.append(.refuseJoin(lockspace: ls, errno: 1,
                                   reason: "lockspace \(ls) has no [[lockspace]] with node \(me) among its members in the config"))
            return
        }
        guard state.local == .absent else {
            out.append(.log(.warning, "\(ls): online while \(state.local.rawValue): ignored"))
            return
        }
        state.local = .joining
        state.evicted = false
        state.left = false
        state.joinPending = true
        state.announced = nil
        lockspaces[ls] = state
        out.append(.log(.info, "\(ls): online (joining)"))
        tryJoin(ls, &out)
    }

    /// The agents whose view a joining node waits for before it acts.
    private func awaited(_ state: LockspaceState) -> Set<AgentNodeID> {
        let conf = Set(configured[state.name]?.members.map(\.id) ?? [])
        return conf.union(state.target.memberIDs).subtracting([me]).subtracting(down).subtracting(synced)
    }

    private mutating func tryJoin(_ ls: String, _ out: inout [AgentAction]) {
        guard var state = lockspaces[ls], state.local == .joining, state.joinPending else { return }
        let missing = awaited(state)
        if !missing.isEmpty {
            out.append(.log(.info, "\(ls): join waits for the agents of \(sortedList(missing))"))
            return
        }
        state.joinPending = false
        lockspaces[ls] = state
        if state.target.id == .formation, state.target.contains(me) {
            out.append(.log(.info, "\(ls): formation \(state.target): start without a barrier"))
            start(ls, &out)
            return
        }
        let weight = configured[ls]?.members.first { $0.id == me }?.weight ?? 1
        var members = state.target.members.filter { $0.id != me }
        members.append(AgentMember(id: me, weight: weight))
        propose(ls, members: members, renew: state.target.contains(me) ? [me] : [], &out)
    }

    private mutating func offline(_ ls: String, _ out: inout [AgentAction]) {
        guard var state = lockspaces[ls] else {
            out.append(.finishLeave(lockspace: ls))
            return
        }
        out.append(.log(.info, "\(ls): offline (leaving) while \(state.local.rawValue)"))
        switch state.local {
        case .absent:
            out.append(.finishLeave(lockspace: ls))
            return
        case .joining, .running, .stopped:
            state.local = .leaving
            lockspaces[ls] = state
            out.append(.stop(lockspace: ls))
        case .stopping:
            state.local = .leaving
            lockspaces[ls] = state
        case .leaving:
            break
        }
    }

    private mutating func stopDone(_ ls: String, _ out: inout [AgentAction]) {
        guard var state = lockspaces[ls] else { return }
        switch state.local {
        case .stopping:
            state.local = .stopped
            lockspaces[ls] = state
            out.append(.log(.info, "\(ls): stopped for \(state.target.id)"))
            progress(ls, &out)
        case .leaving:
            state.local = .absent
            state.started = nil
            state.announced = nil
            state.joinPending = false
            state.evicted = false
            state.left = true
            lockspaces[ls] = state
            out.append(.finishLeave(lockspace: ls))
            if state.target.contains(me), state.target.members.count > 1 {
                propose(ls, members: state.target.members.filter { $0.id != me }, renew: [], &out)
            }
        case .absent, .joining, .running, .stopped:
            break
        }
    }

    private mutating func localFailed(_ ls: String, _ error: String, _ out: inout [AgentAction]) {
        out.append(.log(.error, "\(ls): local lockspace control failed: \(error)"))
        guard var state = lockspaces[ls] else { return }
        switch state.local {
        case .stopping:
            // control=0 only fails when the lockspace is gone
            state.local = .stopped
            lockspaces[ls] = state
            progress(ls, &out)
        case .leaving:
            lockspaces[ls] = state
            stopDone(ls, &out)
        case .absent, .joining, .running, .stopped:
            break
        }
    }

    // MARK: Changes and the barrier

    private mutating func propose(_ ls: String, members: [AgentMember], renew: [AgentNodeID],
                                  _ out: inout [AgentAction]) {
        guard let state = lockspaces[ls] else { return }
        let seq = max(state.target.id.seq, state.stoppedFrom.keys.map(\.seq).max() ?? 0) + 1
        let change = MembershipChange(id: ChangeID(seq: seq, origin: me), members: members, renew: renew)
        out.append(.log(.info, "\(ls): proposing \(change)"))
        for n in nodes where n != me && !down.contains(n) {
            out.append(.send(.change(lockspace: ls, change: change), to: n))
        }
        adopt(ls, change, &out)
    }

    private mutating func adopt(_ ls: String, _ change: MembershipChange, _ out: inout [AgentAction]) {
        guard var state = lockspaces[ls], change.id > state.target.id else { return }
        let old = state.target
        state.removedSinceStart.formUnion(old.memberIDs.subtracting(change.memberIDs))
        state.removedSinceStart.formUnion(change.renew)
        state.target = change
        state.stoppedFrom = state.stoppedFrom.filter { $0.key >= change.id }
        lockspaces[ls] = state
        out.append(.log(.info, "\(ls): change \(change) (was \(old))"))
        progress(ls, &out)
    }

    /// Moves the local side towards the target: stop, announce, start when the barrier is full.
    private mutating func progress(_ ls: String, _ out: inout [AgentAction]) {
        guard var state = lockspaces[ls] else { return }
        let t = state.target
        let member = t.contains(me)
        // a concurrent change that still lists a failed node: the lowest live member removes it
        let failed = t.memberIDs.intersection(down)
        if !failed.isEmpty, t.memberIDs.subtracting(down).min() == me {
            out.append(.log(.warning, "\(ls): \(t) lists failed node(s) \(sortedList(failed)): proposing it without them"))
            propose(ls, members: t.members.filter { !down.contains($0.id) }, renew: [], &out)
            return
        }
        switch state.local {
        case .absent:
            if state.left, member, t.members.count > 1 {
                // our leave lost against a concurrent change: leave again
                propose(ls, members: t.members.filter { $0.id != me }, renew: [], &out)
            }
            return
        case .leaving, .stopping:
            return
        case .running:
            guard state.started?.id != t.id else { return }
            state.local = .stopping
            if !member {
                state.evicted = true
                out.append(.log(.error, "\(ls): this node is not a member of \(t) but still has the lockspace: stopping it; remove and recreate it to rejoin"))
            }
            lockspaces[ls] = state
            out.append(.stop(lockspace: ls))
            return
        case .joining:
            if state.joinPending { return }
            if !member {
                // our join lost against a concurrent change: ask again
                let weight = configured[ls]?.members.first { $0.id == me }?.weight ?? 1
                propose(ls, members: t.members + [AgentMember(id: me, weight: weight)], renew: [], &out)
                return
            }
        case .stopped:
            if !member {
                if !state.evicted {
                    state.evicted = true
                    lockspaces[ls] = state
                    out.append(.log(.error, "\(ls): this node was removed by \(t) while it has the lockspace: it stays stopped"))
                }
                return
            }
            if state.evicted {
                out.append(.log(.error, "\(ls): \(t) includes this node, but it was removed earlier and still has its old lockspace: not taking part (remove and recreate the lockspace)"))
                return
            }
        }
        if state.announced != t.id {
            state.announced = t.id
            state.stoppedFrom[t.id, default: []].insert(me)
            lockspaces[ls] = state
            for n in t.members.map(\.id) where n != me {
                out.append(.send(.stopped(lockspace: ls, node: me, change: t), to: n))
            }
        }
        checkBarrier(ls, &out)
    }

    private mutating func checkBarrier(_ ls: String, _ out: inout [AgentAction]) {
        guard let state = lockspaces[ls] else { return }
        let t = state.target
        guard state.announced == t.id, t.memberIDs.isSubset(of: state.stoppedFrom[t.id] ?? []) else { return }
        out.append(.log(.info, "\(ls): every member of \(t) is stopped: starting"))
        start(ls, &out)
    }

    private mutating func start(_ ls: String, _ out: inout [AgentAction]) {
        guard var state = lockspaces[ls] else { return }
        let t = state.target
        let previous = state.started?.memberIDs ?? []
        let renew = t.memberIDs.intersection(previous).intersection(state.removedSinceStart).subtracting([me])
        let joining = state.local == .joining
        out.append(.start(StartPlan(lockspace: ls, globalID: state.globalID, change: t.id, members: t.members,
                                    renew: renew.sorted(), joining: joining)))
        state.local = .running
        state.started = t
        state.removedSinceStart = []
        state.announced = nil
        state.stoppedFrom = state.stoppedFrom.filter { $0.key > t.id }
        lockspaces[ls] = state
    }

    // MARK: Messages

    private mutating func received(_ message: AgentMessage, from: AgentNodeID, _ out: inout [AgentAction]) {
        switch message {
        case .hello(let node, let incarnation, let reports):
            guard node == from else {
                out.append(.log(.warning, "hello from node \(from) claims to be node \(node): ignored"))
                return
            }
            let previous = incarnations[node]
            incarnations[node] = incarnation
            synced.insert(node)
            if down.remove(node) != nil {
                out.append(.log(.info, "node \(node) is back"))
                out.append(.addComm(node: node))
            } else if let previous, previous != incarnation {
                restarted(node, &out)
            }
            for r in reports {
                if let t = r.target { adoptIfKnown(r.name, t, &out) }
            }
            for name in lockspaces.keys.sorted() { tryJoin(name, &out) }
        case .change(let ls, let change):
            adoptIfKnown(ls, change, &out)
        case .stopped(let ls, let node, let change):
            guard lockspaces[ls] != nil else { return }
            adoptIfKnown(ls, change, &out)
            guard var state = lockspaces[ls], change.id >= state.target.id else { return }
            state.stoppedFrom[change.id, default: []].insert(node)
            lockspaces[ls] = state
            checkBarrier(ls, &out)
        case .nodeDown(let node, let by):
            if node == me {
                out.append(.log(.error, "node \(by) declared this node down: its lockspaces are being removed from the cluster"))
                return
            }
            markDown(node, by: by, &out)
        case .heartbeat:
            break
        }
    }

    private mutating func adoptIfKnown(_ ls: String, _ change: MembershipChange, _ out: inout [AgentAction]) {
        guard lockspaces[ls] != nil else {
            out.append(.log(.warning, "change \(change) of lockspace \(ls), which is not in this node's config: ignored"))
            return
        }
        adopt(ls, change, &out)
    }

    /// A new incarnation of `node`'s agent: its old one is gone (an agent refuses to start while
    /// its node has lockspaces), so its old lockspace instances are dead. Its comms are renewed,
    /// and the lowest other member removes it from lockspaces it still belongs to.
    private mutating func restarted(_ node: AgentNodeID, _ out: inout [AgentAction]) {
        out.append(.log(.warning, "node \(node) restarted (new agent incarnation)"))
        out.append(.removeComm(node: node))
        out.append(.addComm(node: node))
        for name in lockspaces.keys.sorted() {
            let state = lockspaces[name]!
            guard state.target.contains(node), state.target.id != .formation || state.started != nil else { continue }
            let others = state.target.memberIDs.subtracting([node]).subtracting(down)
            guard others.min() == me else { continue }
            propose(name, members: state.target.members.filter { $0.id != node }, renew: [], &out)
        }
    }

    // MARK: Failures

    private mutating func declareDown(_ node: AgentNodeID, _ out: inout [AgentAction]) {
        guard node != me else {
            out.append(.log(.error, "node-down \(node): that is this node; run it on another node"))
            return
        }
        guard nodes.contains(node) else {
            out.append(.log(.error, "node-down \(node): no such node in the config"))
            return
        }
        for n in nodes where n != me && n != node {
            out.append(.send(.nodeDown(node: node, by: me), to: n))
        }
        markDown(node, by: me, &out)
        for name in lockspaces.keys.sorted() {
            let state = lockspaces[name]!
            guard state.target.contains(node) else { continue }
            propose(name, members: state.target.members.filter { $0.id != node }, renew: [], &out)
        }
    }

    private mutating func markDown(_ node: AgentNodeID, by: AgentNodeID, _ out: inout [AgentAction]) {
        guard !down.contains(node) else { return }
        down.insert(node)
        synced.remove(node)
        out.append(.log(.warning, "node \(node) is down (declared by node \(by))"))
        out.append(.removeComm(node: node))
        // joins waiting for its agent no longer do
        for name in lockspaces.keys.sorted() { tryJoin(name, &out) }
    }

    private mutating func heartbeatTimeout(_ node: AgentNodeID, _ out: inout [AgentAction]) {
        guard !down.contains(node), node != me, !fencing.contains(node) else { return }
        guard canFence else {
            out.append(.log(.warning, "node \(node) is silent, but no fence_command is configured: it is not removed (it may still be alive); use `dlm-peer node-down \(node)` once it is dead"))
            return
        }
        let live = Set(nodes).subtracting(down).subtracting([node]).filter { $0 == me || synced.contains($0) }
        guard live.min() == me else { return }
        fencing.insert(node)
        out.append(.log(.warning, "node \(node) is silent: fencing it"))
        out.append(.fence(node: node))
    }
}

func sortedList(_ ids: Set<AgentNodeID>) -> String {
    ids.sorted().map(String.init).joined(separator: ", ")
}
