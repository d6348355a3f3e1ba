import DLMTransport
import NIOCore

/// What a start did (the kernel's `dlm_ls_start` ignores a start of a running lockspace silently;
/// we say so).
public enum LockspaceStartOutcome: Sendable, Equatable, CustomStringConvertible {
    /// A recovery with this `ls_recover_seq` runs now.
    case started(seq: UInt64)
    /// The lockspace is running: stop it first (recovery.md §3.3 step 2).
    case ignoredRunning

    public var description: String {
        switch self {
        case .started(let seq): return "started (recovery seq \(seq))"
        case .ignoredRunning: return "start ignored: lockspace running (stop it first)"
        }
    }
}

/// The two controls a kernel node's lockspace offers its cluster manager (recovery.md §2.3, §5.4),
/// for dlm-peer's local agent: stop (sysfs `control` ← 0, synchronous) and start with a member list
/// (configfs `nodes/*`, then `control` ← 1, asynchronous). The agent must stop every member of the
/// new membership before starting any of them.
extension PeerNode {
    /// Stops lockspace `name`: locking is disabled, lock messages from other nodes are held in the
    /// requestqueue, a recovery in progress is aborted (-EINTR), the status bits are reset. Returns
    /// when stopped. Local lock calls made from now on wait until a recovery completes. Stopping a
    /// stopped lockspace is harmless.
    public func stop(lockspace name: String) async throws {
        try await eventLoop.submit { [self] in
            let ls = try requireLockspace(named: name)
            // Our local calls run to completion on this loop, so none is "inside" the lockspace now.
            logger.info("\(name): stop")
            run(ls, .stop)
        }.get()
    }

    /// Starts lockspace `name` with `members` (it must include this node; `weight` is the directory
    /// weight and must be the same on every member). `renewed` lists members that left or failed and
    /// came back since this node's previous start (configfs `new`): their old incarnation's locks
    /// are purged. Returns once the recovery is under way; `waitForRecovery` waits for its end.
    @discardableResult
    public func start(lockspace name: String, members: [(id: UInt32, weight: Int)],
                      renewed: Set<UInt32> = []) async throws -> LockspaceStartOutcome {
        try await eventLoop.submit { [self] in
            let ls = try requireLockspace(named: name)
            guard !members.isEmpty else { throw PeerNodeError("\(name): start with no members") }
            guard members.contains(where: { $0.id == nodeID }) else {
                throw PeerNodeError("\(name): the member list must include this node (\(nodeID))")
            }
            if let unknown = members.first(where: { config.node($0.id) == nil }) {
                throw PeerNodeError("\(name): node \(unknown.id) is not in \(config.file)")
            }
            let reachable = Set(config.peers(of: nodeID).map(\.id)).union([nodeID])
            if let stranger = members.first(where: { !reachable.contains($0.id) }) {
                throw PeerNodeError("\(name): node \(stranger.id) shares no lockspace with node \(nodeID) in "
                    + "\(config.file), so the transport has no connection for it")
            }
            if Set(members.map(\.id)).count != members.count {
                throw PeerNodeError("\(name): a node is listed twice")
            }
            if ls.recovery.isRunning { return .ignoredRunning }
            let list = members.map { RecoveryMember(nodeID: $0.id, weight: $0.weight, renewed: renewed.contains($0.id)) }
            logger.info("\(name): start with members \(members.map { "\($0.id):\($0.weight)" }.joined(separator: " "))")
            run(ls, .start(list))
            return .started(seq: ls.recovery.recoverSeq)
        }.get()
    }

    /// Waits for the end of the lockspace's current (or next) recovery; returns at once with the last
    /// report if it is running. Throws if the recovery fails.
    public func waitForRecovery(lockspace name: String) async throws -> RecoveryReport {
        try await eventLoop.flatSubmit { [self] () -> EventLoopFuture<RecoveryReport> in
            let ls: LockspaceState
            do { ls = try requireLockspace(named: name) } catch { return eventLoop.makeFailedFuture(error) }
            if ls.recovery.isRunning, let last = ls.lastRecovery { return eventLoop.makeSucceededFuture(last) }
            let promise = eventLoop.makePromise(of: RecoveryReport.self)
            ls.recoveryWaiters.append(promise)
            return promise.futureResult
        }.get()
    }

    /// The progress of the lockspace's recovery (nil if we are not a member).
    public func recoveryProgress(lockspace name: String) -> EventLoopFuture<RecoveryProgress?> {
        eventLoop.submit { [self] in lockspaceState(named: name)?.recovery.progress }
    }

    func requireLockspace(named name: String) throws -> LockspaceState {
        eventLoop.assertInEventLoop()
        guard let ls = lockspaceState(named: name) else {
            throw PeerNodeError("not a member of lockspace \(name)")
        }
        return ls
    }

    /// Runs `body` now if locking is enabled, else once the next recovery completes (in call order
    /// with the other waiting calls). If the lockspace goes away first (the node leaves it, or its
    /// join fails), the call fails with `abandoned(why, reason)`.
    func whenRunning<T: Sendable>(_ ls: LockspaceState,
                        abandoned: @escaping (BlockedCallEnd, String) -> Error = { PeerNodeError($1) },
                        _ body: @escaping () throws -> T) -> EventLoopFuture<T> {
        if ls.recovery.isRunning {
            do {
                return eventLoop.makeSucceededFuture(try body())
            } catch {
                return eventLoop.makeFailedFuture(error)
            }
        }
        if ls.failed {
            return eventLoop.makeFailedFuture(abandoned(.joinFailed, "lockspace \(ls.name) could not be joined"))
        }
        let promise = eventLoop.makePromise(of: T.self)
        ls.blockedCalls.append(BlockedCall(
            run: { promise.completeWith(Result { try body() }) },
            abandon: { why, reason in promise.fail(abandoned(why, reason)) }))
        return promise.futureResult
    }

    /// After a recovery: the local calls that waited for it, in call order.
    func runBlockedCalls(_ ls: LockspaceState) {
        let calls = ls.blockedCalls
        ls.blockedCalls = []
        for call in calls {
            // A stop issued by one of them holds back the rest again.
            if ls.recovery.isRunning { call.run() } else { ls.blockedCalls.append(call) }
        }
    }

    /// The lockspace goes away (leave, failed join): the calls waiting for locking fail, and so do
    /// the `waitForRecovery` callers.
    func abandonBlockedCalls(_ ls: LockspaceState, _ why: BlockedCallEnd, reason: String) {
        let calls = ls.blockedCalls
        ls.blockedCalls = []
        for call in calls { call.abandon(why, reason) }
        let waiters = ls.recoveryWaiters
        ls.recoveryWaiters = []
        for w in waiters { w.fail(PeerNodeError(reason)) }
    }
}

/// Why a call that waited for locking to be enabled will never run.
enum BlockedCallEnd: Sendable {
    /// The node left the lockspace.
    case left
    /// The lockspace's join failed.
    case joinFailed
}

/// A local call made while locking is stopped (the kernel blocks it): run after the next recovery,
/// or abandoned when the lockspace goes away.
struct BlockedCall {
    var run: () -> Void
    var abandon: (BlockedCallEnd, String) -> Void
}
