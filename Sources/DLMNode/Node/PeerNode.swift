import DLMTransport
import Logging
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// A dlm-peer node: lowcomms (TCP, midcomms per peer) plus one recovery machine per lockspace,
/// all on one event loop. It joins every lockspace the config lists it in, takes part in
/// recovery as a kernel node would, and leaves with the FIN handshake.
///
/// Lock traffic (DLM_MSG) goes to the lockspace's `LockManager`, which is also the recovery
/// machine's lock state: locks survive membership changes (`stop(lockspace:)` /
/// `start(lockspace:members:)`, see PeerNode+Lockspaces.swift) as on a kernel node.
public final class PeerNode: @unchecked Sendable {
    public let config: ClusterConfig
    public let nodeID: UInt32
    public let eventLoop: EventLoop
    let logger: Logger
    fileprivate var lowcomms: Lowcomms?
    var lockspaces: [UInt32: LockspaceState] = [:]

    /// Per-lockspace state; confined to `eventLoop` (hence `@unchecked Sendable`: only closures
    /// that run on that loop capture it).
    final class LockspaceState: @unchecked Sendable {
        let name: String
        var recovery: LockspaceRecovery
        var timer: Scheduled<Void>?
        /// Completed by the first recovery (the join); later recoveries only log.
        var joined: EventLoopPromise<RecoveryReport>?
        var lastRecovery: RecoveryReport?
        var locks: LockManager
        /// Local lock calls by client tag: what to do on completion.
        var clients: [UInt64: LocalLock] = [:]
        /// The join failed; the lockspace only answers RCOM_STATUS until it is dropped.
        var failed = false
        /// Locks taken through the Swift API (`DLMLockspace`), by lkid (API/PeerNode+API.swift).
        var api: [UInt32: DLMLockRouter] = [:]
        /// Local lock calls (PeerNode.lock/unlock and the Swift API) made while locking is stopped
        /// or the join is under way (the kernel blocks them); run after the next recovery.
        var blockedCalls: [BlockedCall] = []
        /// `waitForRecovery` callers: completed by the next recovery that ends (done or failed).
        var recoveryWaiters: [EventLoopPromise<RecoveryReport>] = []

        init(name: String, recovery: LockspaceRecovery, locks: LockManager,
             joined: EventLoopPromise<RecoveryReport>) {
            self.name = name
            self.recovery = recovery
            self.locks = locks
            self.joined = joined
        }
    }

    /// A lock taken through `lock(...)`, with its callbacks.
    struct LocalLock {
        var name: String
        var onCompletion: @Sendable (LockManager.Completion) -> Void
        var onBlocking: @Sendable (LockMode) -> Void
    }

    private let started = ContinuousClock.now
    var nextTag: UInt64 = 1
    /// How deep we are in applications' lock callbacks (see `onLoop`).
    var callbackDepth = 0
    fileprivate var tickTask: RepeatedTask?

    /// Time since the node started: the lock manager's clock.
    var elapsed: Duration { ContinuousClock.now - started }

    public init(config: ClusterConfig, nodeID: UInt32, eventLoop: EventLoop,
                logger: Logger = Logger(label: "dlm.node")) throws {
        guard let me = config.node(nodeID) else {
            throw PeerNodeError("node \(nodeID) is not in \(config.file)")
        }
        self.config = config
        self.nodeID = nodeID
        self.eventLoop = eventLoop
        var logger = logger
        logger[metadataKey: "node"] = "\(nodeID)"
        self.logger = logger
        let peers = config.peers(of: nodeID).map { n in
            LowcommsConfig.Peer(nodeID: n.id, addresses: n.addresses.map(\.description))
        }
        let lc = LowcommsConfig(nodeID: nodeID, addresses: me.addresses.map(\.description), port: config.port,
                                peers: peers, emulate31: me.emulatedProtocol == .v3_1)
        lowcomms = try Lowcomms(config: lc, eventLoop: eventLoop, logger: logger,
                                onEvent: { [weak self] e in self?.lowcommsEvent(e) },
                                onDelivery: { [weak self] node, d in self?.delivered(from: node, d) })
    }

    /// How the node's lockspaces get their first start.
    public enum JoinMode: Sendable {
        /// At once, with the config's member list (no cluster manager).
        case immediately
        /// Created stopped, as a kernel's new lockspace is: a cluster manager (the agent in the
        /// process, `dlm-peer run --agent`) starts them with `start(lockspace:members:)`.
        /// `created` runs (on the loop) once they all exist.
        case byClusterManager(created: @Sendable () -> Void)
    }

    /// Starts listening and creates every configured lockspace of this node, started as `mode`
    /// says. The future completes when every join's first recovery has finished.
    public func start(_ mode: JoinMode = .immediately) -> EventLoopFuture<[String: RecoveryReport]> {
        guard let lowcomms else { return eventLoop.makeFailedFuture(PeerNodeError("no transport")) }
        return lowcomms.start().flatMap { [self] in
            let startNow: Bool
            switch mode {
            case .immediately: startNow = true
            case .byClusterManager: startNow = false
            }
            let joins = config.lockspaces(of: nodeID).map { ls in join(ls, startNow: startNow).map { (ls.name, $0) } }
            if case .byClusterManager(let created) = mode { created() }
            return EventLoopFuture.whenAllSucceed(joins, on: eventLoop).map { Dictionary(uniqueKeysWithValues: $0) }
        }
    }

    /// Creates `ls` and, when `startNow`, starts it with the member list of the config (the
    /// cluster manager's start); else it waits, stopped, for `start(lockspace:members:)`.
    func join(_ ls: ClusterConfig.Lockspace, startNow: Bool = true) -> EventLoopFuture<RecoveryReport> {
        eventLoop.assertInEventLoop()
        let promise = eventLoop.makePromise(of: RecoveryReport.self)
        let rc = RecoveryConfig(config: config, lockspace: ls, node: nodeID)
        let lmConfig = LockManager.Configuration(lockspaceID: ls.globalID, ourNodeID: nodeID,
                                                 lvbLength: ls.lvbLength,
                                                 protocolVersion: config.node(nodeID)?.protocolVersion ?? .v3_2,
                                                 nodir: ls.nodir)
        let state = LockspaceState(name: ls.name, recovery: LockspaceRecovery(config: rc),
                                   locks: LockManager(lmConfig), joined: promise)
        if tickTask == nil {
            tickTask = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [weak self] _ in
                self?.tick()
            }
        }
        lockspaces[ls.globalID] = state
        guard startNow else {
            logger.info("lockspace \(ls.name) (id 0x\(String(ls.globalID, radix: 16))) created; the cluster manager starts it")
            return promise.futureResult
        }
        logger.info("joining lockspace \(ls.name) (id 0x\(String(ls.globalID, radix: 16))), members \(ls.members)")
        let members = config.weightedMembers(of: ls).map { RecoveryMember(nodeID: $0.nodeID, weight: $0.weight) }
        run(state, .start(members))
        return promise.futureResult
    }

    /// A lockspace whose join failed: its members no longer use their sessions. It still
    /// answers RCOM_STATUS for a few seconds, so that members that ask after us see the same
    /// mismatch and refuse too (rather than "not ready" until their cluster manager's timeout),
    /// then it is dropped.
    func abandon(_ ls: LockspaceState) {
        ls.timer?.cancel()
        ls.timer = nil
        ls.failed = true
        failAPILocks(ls, reason: "the join of lockspace \(ls.name) failed")
        abandonBlockedCalls(ls, .joinFailed, reason: "lockspace \(ls.name) could not be joined")
        for n in ls.recovery.memberIDs where n != nodeID { lowcomms?.memberRemoved(n) }
        logger.info("\(ls.name): not joined; the lockspace is dropped in \(Self.failedLockspaceGrace)")
        eventLoop.scheduleTask(in: Self.failedLockspaceGrace) { [weak self, ls] in
            guard let self, let id = self.lockspaces.first(where: { $0.value === ls })?.key else { return }
            self.lockspaces[id] = nil
            ls.timer?.cancel()
            ls.timer = nil
        }
    }

    static let failedLockspaceGrace = TimeAmount.seconds(5)

    /// Leaves every lockspace and closes every peer session with the DLM FIN handshake.
    public func leave() -> EventLoopFuture<Void> {
        eventLoop.flatSubmit { [self] in
            for (_, ls) in lockspaces {
                failAPILocks(ls, reason: "the node left lockspace \(ls.name)")
                abandonBlockedCalls(ls, .left, reason: "the node left lockspace \(ls.name)")
                ls.timer?.cancel()
                logger.info("leaving lockspace \(ls.name)")
                if ls.failed { continue }     // its members were released when its join failed
                for m in ls.recovery.memberIDs where m != nodeID { lowcomms?.memberRemoved(m) }
            }
            lockspaces.removeAll()
            tickTask?.cancel()
            tickTask = nil
            return lowcomms?.shutdown() ?? eventLoop.makeSucceededVoidFuture()
        }
    }

    // MARK: - Events from the transport (on the loop)

    private func delivered(from node: UInt32, _ d: Delivery) {
        switch d.payload {
        case .rcom(let rc):
            guard let ls = lockspaces[rc.header.lockspace] else {
                if rc.rcomType == .status {
                    // As the kernel: "not ready" for a lockspace we do not have (yet).
                    let reply = LockspaceRecovery.notReadyReply(to: rc, ourNodeID: nodeID)
                    lowcomms?.send(.rcom(reply), to: node)
                } else {
                    logger.debug("RCOM \(RcomType.name(rc.type)) from node \(node) for unknown lockspace 0x\(String(rc.header.lockspace, radix: 16)) dropped")
                }
                return
            }
            run(ls, .received(rc, from: node))
        case .message(let m):
            guard let ls = lockspaces[m.header.lockspace] else {
                logger.warning("DLM_MSG \(MessageType.name(m.type)) from node \(node) for unknown lockspace 0x\(String(m.header.lockspace, radix: 16)) dropped")
                return
            }
            if ls.recovery.deliversLockMessage(from: node) {
                // Locking enabled and nothing held back: straight to the lock manager (what the
                // recovery machine would ask for, without building its actions).
                perform(ls.locks.receive(m, from: node, now: elapsed), ls)
            } else {
                run(ls, .lockMessage(m, from: node))
            }
        }
    }

    private func lowcommsEvent(_ e: LowcommsEvent) {
        switch e {
        case .versionDetected(let node, let v):
            logger.info("node \(node) speaks DLM \(v)")
        case .sessionReset(let node, let reason):
            logger.info("node \(node): session reset (\(reason))")
        case .closed(let node, let graceful):
            logger.info("node \(node): connections closed\(graceful ? "" : " (timeout)")")
        case .finStateChanged, .connectionUp, .connectionDown, .transmitConnection, .acknowledged:
            break
        }
    }

    // MARK: - Recovery actions

    func run(_ ls: LockspaceState, _ event: RecoveryEvent) {
        ls.locks.now = elapsed
        let actions = ls.recovery.handle(event, now: .now(), locks: &ls.locks)
        // What the recovery hooks did to local locks (completions of unlocks/cancels to departed
        // masters) comes first: it happened inside `handle`.
        perform(ls.locks.takeActions(), ls)
        for action in actions { perform(action, ls) }
    }

    private func perform(_ action: RecoveryAction, _ ls: LockspaceState) {
        switch action {
        case .send(let rc, let node):
            lowcomms?.send(.rcom(rc), to: node)
        case .statusChanged(let status):
            logger.debug("\(ls.name): recover_status \(status)")
        case .membersChanged(let added, let removed):
            // A renewed member is in both lists: drop the old incarnation before adding the new one.
            for n in removed where n != nodeID { lowcomms?.memberRemoved(n) }
            for n in added where n != nodeID { lowcomms?.memberAdded(n) }
        case .lockingEnabled:
            logger.debug("\(ls.name): locking enabled")
        case .deliverLockMessage(let m, let node):
            perform(ls.locks.receive(m, from: node, now: elapsed), ls)
        case .resendInFlightOperations:
            perform(ls.locks.recoverWaitersPost(now: elapsed), ls)
        case .grantPass:
            perform(ls.locks.recoverGrant(now: elapsed), ls)
        case .recoveryDone(let report):
            logger.info("\(ls.name): recovery done: generation \(report.generation), members \(report.members)")
            ls.lastRecovery = report
            ls.joined?.succeed(report)
            ls.joined = nil
            for w in ls.recoveryWaiters { w.succeed(report) }
            ls.recoveryWaiters = []
            runBlockedCalls(ls)
        case .recoveryFailed(let failure):
            logger.error("\(ls.name): recovery failed: \(failure)")
            for w in ls.recoveryWaiters { w.fail(PeerNodeError("\(ls.name): recovery failed: \(failure)")) }
            ls.recoveryWaiters = []
            if let joined = ls.joined {
                // The join failed: as the kernel's failed create, the lockspace is gone and its
                // members no longer count as users of their sessions, so a peer that closes
                // its session (a kernel whose own join failed shuts its comms down) gets our
                // FIN at once instead of waiting in CLOSE_WAIT.
                ls.joined = nil
                abandon(ls)
                joined.fail(PeerNodeError("\(ls.name): recovery failed: \(failure)"))
            }
        case .recoveryInterrupted(let seq):
            logger.info("\(ls.name): recovery \(seq) interrupted")
        case .scheduleTimer(let deadline):
            ls.timer?.cancel()
            ls.timer = eventLoop.scheduleTask(deadline: deadline) { [weak self, ls] in
                ls.timer = nil
                self?.run(ls, .timerFired)
            }
        case .cancelTimer:
            ls.timer?.cancel()
            ls.timer = nil
        case .log(let level, let text):
            switch level {
            case .debug: logger.debug("\(ls.name): \(text)")
            case .info: logger.info("\(ls.name): \(text)")
            case .warning: logger.warning("\(ls.name): \(text)")
            }
        }
    }
}

extension PeerNode {
    /// Takes a lock in lockspace `lockspace` as a local application would (on the event loop).
    public func lock(lockspace: String, name: String, mode: LockMode, flags: LockFlags = [],
                     onCompletion: @escaping @Sendable (LockManager.Completion) -> Void,
                     onBlocking: @escaping @Sendable (LockMode) -> Void = { _ in }) -> EventLoopFuture<UInt32> {
        onLoop { [self] in
            guard let ls = lockspaces.values.first(where: { $0.name == lockspace }) else {
                return eventLoop.makeFailedFuture(PeerNodeError("not a member of lockspace \(lockspace)"))
            }
            // While the lockspace is stopped the call waits (as a kernel caller blocks).
            return whenRunning(ls) { [self] in
                let tag = nextTag
                nextTag += 1
                ls.clients[tag] = LocalLock(name: name, onCompletion: onCompletion, onBlocking: onBlocking)
                let result = ls.locks.lock(name: Array(name.utf8), mode: mode, flags: flags, pid: UInt32(getpid()),
                                           tag: tag, now: elapsed)
                perform(result.actions, ls)
                if let error = result.error {
                    ls.clients[tag] = nil
                    throw PeerNodeError("lock \(name) \(mode): \(error)")
                }
                return result.lkid
            }
        }
    }

    /// Releases lock `lkid` of `lockspace`; its completion reports -DLM_EUNLOCK.
    public func unlock(lockspace: String, lkid: UInt32) -> EventLoopFuture<Void> {
        onLoop { [self] in
            guard let ls = lockspaces.values.first(where: { $0.name == lockspace }) else {
                return eventLoop.makeFailedFuture(PeerNodeError("not a member of lockspace \(lockspace)"))
            }
            return whenRunning(ls) { [self] in
                let result = ls.locks.unlock(lkid: lkid, now: elapsed)
                perform(result.actions, ls)
                if let error = result.error { throw PeerNodeError("unlock \(lkid): \(error)") }
            }
        }
    }

    /// A snapshot of every lockspace and peer, taken on the event loop.
    public func status() -> EventLoopFuture<NodeStatus> {
        eventLoop.submit { [self] in
            let now = NIODeadline.now()
            let spaces = lockspaces.values.sorted { $0.name < $1.name }.map { ls -> NodeStatus.LockspaceStatus in
                let r = ls.recovery
                let resources = ls.locks.resourceViews.count
                return NodeStatus.LockspaceStatus(
                    name: ls.name, id: "0x" + String(r.config.globalID, radix: 16), members: r.memberIDs,
                    generation: r.generation, ourSlot: r.ourSlot, slots: r.slots.map { "\($0.nodeID):\($0.slot)" },
                    phase: "\(r.phase)", recoverStatus: "\(r.status)", recoverSeq: r.recoverSeq,
                    completedRecoveries: r.completedRecoveries,
                    lastRecoveryMilliseconds: ls.lastRecovery.map { Double($0.elapsed.nanoseconds) / 1e6 },
                    waitingFor: r.waitingFor, resources: resources, locks: ls.locks.lockViews.count,
                    rcomSent: r.counters.sent, rcomReceived: r.counters.received, rcomTimeouts: r.counters.timeouts)
            }
            let counters = lowcomms?.countersOnLoop() ?? LowcommsCounters()
            let peers = counters.peers.values.sorted { $0.nodeID < $1.nodeID }.map { p -> NodeStatus.PeerStatus in
                let m = p.midcomms
                return NodeStatus.PeerStatus(
                    node: p.nodeID, version: m.version.map { "\($0)" } ?? "unknown", finState: "\(m.finState)",
                    nextSendSeq: m.nextSendSequence, nextExpectedSeq: m.nextExpectedSequence, unacked: m.unackedCount,
                    oldestUnackedAgeMilliseconds: m.oldestUnackedSentAt.map { Double((now - $0).nanoseconds) / 1e6 },
                    sent: m.sent, delivered: m.delivered, retransmits: m.retransmits, reconnects: p.reconnects,
                    drops: Dictionary(uniqueKeysWithValues: m.drops.map { ("\($0.key)", $0.value) }),
                    connectionsOpen: p.connectionsOpen,
                    transmitConnectionOutgoing: p.transmitConnection == nil ? nil : p.transmitIsOutgoing,
                    bytesIn: p.bytesIn, bytesOut: p.bytesOut)
            }
            return NodeStatus(node: nodeID, cluster: config.name,
                              uptimeSeconds: Double((ContinuousClock.now - started).components.seconds),
                              lockspaces: spaces, peers: peers)
        }
    }

    func tick() {
        // The inactive-rsb scan skips lockspaces in recovery (as dlm_scand does).
        for ls in lockspaces.values where ls.recovery.isRunning { perform(ls.locks.tick(now: elapsed), ls) }
    }

    /// Carries out the lock manager's actions: first every message, in order, then the
    /// applications' callbacks, in order. A callback may call the lock API again at once (on the
    /// loop, without a hop), so the lock manager's messages of this step are all out before the
    /// messages of whatever the callback does.
    func perform(_ actions: [LockManager.Action], _ ls: LockspaceState) {
        var callbacks = false
        for action in actions {
            switch action {
            case .send(let m, let node):
                lowcomms?.send(.message(m), to: node)
            case .log(let text):
                logger.debug("\(ls.name): \(text)")
            case .completion, .blocking:
                callbacks = true
            }
        }
        guard callbacks else { return }
        callbackDepth += 1
        defer { callbackDepth -= 1 }
        for action in actions {
            switch action {
            case .completion(let c):
                let client = ls.clients[c.tag]
                if c.endOfLife { ls.clients[c.tag] = nil }
                client?.onCompletion(c)
            case .blocking(let tag, _, let mode):
                ls.clients[tag]?.onBlocking(mode)
            case .send, .log:
                break
            }
        }
    }

    /// Runs `body` on the event loop: at once when called there (a lock call from a completion
    /// callback, say), else as a task. Callbacks that lock again from inside callbacks (a local
    /// master grants at once) would nest without end, so past a few levels the call is a task.
    func onLoop<T: Sendable>(_ body: @escaping @Sendable () -> EventLoopFuture<T>) -> EventLoopFuture<T> {
        eventLoop.inEventLoop && callbackDepth < Self.inlineCallbackDepth ? body() : eventLoop.flatSubmit(body)
    }

    static let inlineCallbackDepth = 4
}

public struct PeerNodeError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
