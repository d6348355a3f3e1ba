/// The agent's coordination logic as a value-type state machine: `AgentEvent`s in,
/// `AgentAction`s out, no IO (the shell is `AgentRuntime`).
///
/// Membership of a lockspace L is a sequence of changes M(G) (recovery.md §5.4):
///
/// * **Formation** (G0): the config's member list. A node whose lockspace comes online while
///   L is still at G0 writes the full list and starts at once, without a barrier: every
///   member is stopped by construction and the kernels' recovery waits for all of them.
/// * **Intents**: every agent broadcasts its own intent per lockspace: `member` true when its
///   lockspace came online (join), false when it left (`offline`).
/// * **One coordinator proposes** every later change: the lowest node that is not down among
///   this agent and the agents it has heard from. It folds the facts into the membership:
///   M' = (M ∪ nodes that want in) − nodes that left − nodes declared down − nodes the config
///   no longer lists, and broadcasts `change` (G+1). A single proposer means no update is lost;
///   if two agents coordinate at once (they disagree on who is alive) the higher (seq, origin)
///   wins everywhere and the coordinator re-proposes from there.
/// * **Barrier**: for the newest change T, every node that has the lockspace stops
///   (`control`=0, synchronous) and then broadcasts `stopped(L, T)`; a joining node is stopped
///   from birth; a node without the lockspace announces at once unless T lists it. An agent
///   starts T (configfs members with renew, `control`=1, `event_done`=0 when joining) once it
///   has `stopped(L, T)` from every member of T **and** from every node of the memberships it
///   has seen since its last start (a node a newer change drops may still be running an older
///   one), leaving out nodes declared down. A newer change before the start replaces T;
///   after the start it stops again.
/// * A node is only removed because it left, was declared down (`node-down`, or a heartbeat
///   timeout with a successful fence), its agent restarted (so its old instance is gone), or a
///   reload dropped it; a node dropped while it still runs L is stopped and stays stopped (it
///   must remove and recreate L to rejoin).
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
        /// Members of every membership seen since our last start: they must all be stopped
        /// (or down) before we start.
        public var sinceStart: Set<AgentNodeID> = []
        /// Members removed (or renewed) since our last start: re-added ones need a renew.
        public var removedSinceStart: Set<AgentNodeID> = []
        /// Each node's intent (true: wants in, false: left; none: never said).
        public var intents: [AgentNodeID: Bool] = [:]
        /// An `online` waiting until the agents of all members have said hello.
        public var joinPending = false
        /// Removed from the membership while the lockspace still existed here.
        public var evicted = false

        init(name: String, globalID: UInt32, target: MembershipChange) {
            self.name = name
            self.globalID = globalID
            self.target = target
            self.sinceStart = target.memberIDs
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
            return LockspaceReport(name: name, target: s.target, started: s.started?.id, member: s.intents[me])
        })
    }

    /// The agent that proposes changes, in this agent's view.
    public var coordinator: AgentNodeID? {
        Set(nodes).intersection(synced.union([me])).subtracting(down).min()
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
                if s.announced == s.target.id {
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

    private func broadcast(_ message: AgentMessage, _ out: inout [AgentAction], except: AgentNodeID? = nil) {
        for n in nodes where n != me && n != except && !down.contains(n) {
            out.append(.send(message, to: n))
        }
    }

    // MARK: Config

    private mutating func configLoaded(_ list: [ConfiguredLockspace], nodes newNodes: [AgentNodeID],
                                       _ out: inout [AgentAction]) {
        let first = configured.isEmpty && lockspaces.isEmpty
        if !first {
            for n in Set(newNodes).subtracting(nodes).sorted() where n != me {
                out.append(.addComm(node: n))
            }
            for n in Set(nodes).subtracting(newNodes).sorted() where n != me {
                out.append(.removeComm(node: n))
            }
        }
        nodes = newNodes.sorted()
        let old = configured
        configured = Dictionary(list.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for ls in list {
            if var state = lockspaces[ls.name] {
                // G0 is never rewritten: other nodes may have started it already
                state.globalID = ls.globalID
                lockspaces[ls.name] = state
            } else {
                lockspaces[ls.name] = LockspaceState(
                    name: ls.name, globalID: ls.globalID,
                    target: MembershipChange(id: .formation, members: ls.members))
            }
        }
        for name in Set(old.keys).subtracting(configured.keys) {
            out.append(.log(.warning, "\(name): no longer in the config; its membership is kept as it is"))
        }
        coordinateAll(&out)
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
        state.joinPending = true
        state.announced = nil
        state.intents[me] = true
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
        // what must be stopped before our first start: the current members
        state.sinceStart = state.target.memberIDs
        lockspaces[ls] = state
        broadcast(.intent(lockspace: ls, node: me, member: true), &out)
        if state.target.id == .formation, state.target.contains(me) {
            out.append(.log(.info, "\(ls): formation \(state.target): start without a barrier"))
            start(ls, &out)
            return
        }
        coordinate(ls, &out)
        progress(ls, &out)
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
            state.intents[me] = false
            lockspaces[ls] = state
            out.append(.finishLeave(lockspace: ls))
            broadcast(.intent(lockspace: ls, node: me, member: false), &out)
            coordinate(ls, &out)
            progress(ls, &out)
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
            stopDone(ls, &out)
        case .absent, .joining, .running, .stopped:
            break
        }
    }

    // MARK: Coordination

    private mutating func coordinateAll(_ out: inout [AgentAction]) {
        for name in lockspaces.keys.sorted() { coordinate(name, &out) }
    }

    /// The coordinator folds intents, failures and the config into a new change.
    private mutating func coordinate(_ ls: String, _ out: inout [AgentAction]) {
        guard coordinator == me, let state = lockspaces[ls], let conf = configured[ls] else { return }
        let weights = Dictionary(conf.members.map { ($0.id, $0.weight) }, uniquingKeysWith: { a, _ in a })
        var desired = Set(state.target.memberIDs.filter { state.intents[$0] != false })
        for (n, wants) in state.intents where wants { desired.insert(n) }
        desired = desired.subtracting(down).filter { weights[$0] != nil }
        guard desired != state.target.memberIDs, !desired.isEmpty else { return }
        let members = desired.sorted().map { AgentMember(id: $0, weight: weights[$0] ?? 1) }
        propose(ls, members: members, &out)
    }

    private mutating func propose(_ ls: String, members: [AgentMember], _ out: inout [AgentAction]) {
        guard let state = lockspaces[ls] else { return }
        let seq = max(state.target.id.seq, state.stoppedFrom.keys.map(\.seq).max() ?? 0) + 1
        let change = MembershipChange(id: ChangeID(seq: seq, origin: me), members: members)
        out.append(.log(.info, "\(ls): proposing \(change)"))
        broadcast(.change(lockspace: ls, change: change), &out)
        adopt(ls, change, &out)
    }

    private mutating func adopt(_ ls: String, _ change: MembershipChange, _ out: inout [AgentAction]) {
        guard var state = lockspaces[ls], change.id > state.target.id else { return }
        let old = state.target
        state.removedSinceStart.formUnion(old.memberIDs.subtracting(change.memberIDs))
        state.removedSinceStart.formUnion(change.renew)
        state.sinceStart.formUnion(old.memberIDs)
        state.sinceStart.formUnion(change.memberIDs)
        state.target = change
        state.stoppedFrom = state.stoppedFrom.filter { $0.key >= change.id }
        lockspaces[ls] = state
        out.append(.log(.info, "\(ls): change \(change) (was \(old))"))
        progress(ls, &out)
        // a change from another coordinator may have missed something we know
        coordinate(ls, &out)
    }

    /// Moves the local side towards the target: stop, announce, start when the barrier is full.
    private mutating func progress(_ ls: String, _ out: inout [AgentAction]) {
        guard var state = lockspaces[ls] else { return }
        let t = state.target
        let member = t.contains(me)
        switch state.local {
        case .leaving, .stopping:
            return
        case .absent:
            // nothing runs here: stopped for any change that does not list us
            if member { return }
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
            if state.joinPending || !member { return }   // the coordinator adds us
        case .stopped:
            if !member, !state.evicted {
                state.evicted = true
                lockspaces[ls] = state
                out.append(.log(.error, "\(ls): this node was removed by \(t) while it has the lockspace: it stays stopped"))
            }
            if member, state.evicted {
                out.append(.log(.error, "\(ls): \(t) includes this node, but it was removed earlier and still has its old lockspace: not taking part (remove and recreate the lockspace)"))
                return
            }
        }
        if state.announced != t.id {
            state.announced = t.id
            state.stoppedFrom[t.id, default: []].insert(me)
            lockspaces[ls] = state
            broadcast(.stopped(lockspace: ls, node: me, change: t), &out)
        }
        checkBarrier(ls, &out)
    }

    /// Whether this node's leave of `ls` is over for the other agents: its lockspace is gone and it
    /// has announced stopped(L, T) for a change T without it, the last thing the others wait for
    /// (an agent that exits before that leaves them stopped). True for an unknown lockspace.
    public func hasLeft(_ ls: String) -> Bool {
        guard let state = lockspaces[ls] else { return true }
        return state.local == .absent && !state.target.contains(me) && state.announced == state.target.id
    }

    /// Who must have announced stopped(L, T) before this node starts T.
    public func required(_ state: LockspaceState) -> Set<AgentNodeID> {
        state.target.memberIDs.union(state.sinceStart).subtracting(down)
    }

    private mutating func checkBarrier(_ ls: String, _ out: inout [AgentAction]) {
        guard let state = lockspaces[ls] else { return }
        let t = state.target
        // a change that lists a failed node is replaced by the coordinator's next one
        guard t.contains(me), t.memberIDs.isDisjoint(with: down),
              state.local == .joining || state.local == .stopped, !state.evicted,
              state.announced == t.id, required(state).isSubset(of: state.stoppedFrom[t.id] ?? []) else { return }
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
                                    renew: renew.sorted(), joining: joining, nodir: configured[ls]?.nodir ?? false)))
        state.local = .running
        state.started = t
        state.removedSinceStart = []
        state.sinceStart = t.memberIDs
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
                guard lockspaces[r.name] != nil else { continue }
                if let m = r.member { lockspaces[r.name]!.intents[node] = m }
                if let t = r.target { adoptIfKnown(r.name, t, &out) }
            }
            for name in lockspaces.keys.sorted() { tryJoin(name, &out) }
            coordinateAll(&out)
        case .intent(let ls, let node, let member):
            guard node == from, lockspaces[ls] != nil else { return }
            lockspaces[ls]!.intents[node] = member
            coordinate(ls, &out)
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
    /// its node has lockspaces), so are its old lockspace instances: its comms are renewed and
    /// it counts as having left every lockspace until it says otherwise.
    private mutating func restarted(_ node: AgentNodeID, _ out: inout [AgentAction]) {
        out.append(.log(.warning, "node \(node) restarted (new agent incarnation)"))
        out.append(.removeComm(node: node))
        out.append(.addComm(node: node))
        for name in lockspaces.keys.sorted() {
            lockspaces[name]!.intents[node] = false
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
        broadcast(.nodeDown(node: node, by: me), &out, except: node)
        markDown(node, by: me, &out)
    }

    private mutating func markDown(_ node: AgentNodeID, by: AgentNodeID, _ out: inout [AgentAction]) {
        guard !down.contains(node) else { return }
        down.insert(node)
        synced.remove(node)
        for name in lockspaces.keys.sorted() { lockspaces[name]!.intents[node] = nil }
        out.append(.log(.warning, "node \(node) is down (declared by node \(by))"))
        out.append(.removeComm(node: node))
        for name in lockspaces.keys.sorted() {
            tryJoin(name, &out)       // joins waiting for its agent no longer do
            coordinate(name, &out)
            checkBarrier(name, &out)  // it no longer has to be stopped
        }
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
