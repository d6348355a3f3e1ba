import DLMTransport
import NIOConcurrencyHelpers
import NIOCore

/// The lock API of one lockspace of a running `PeerNode`: libdlm's `dlm_ls_lock` / `dlm_ls_unlock`
/// (locking.md §7) as Swift `async` calls.
///
/// ```swift
/// let ls = node.lockspace("alpha")
/// let lock = try await ls.lock("res-1", mode: .ex, flags: .valBlk)      // waits for the grant
/// Task { for await mode in lock.blockingCallbacks { print("someone wants \(mode)") } }
/// try await ls.convert(lock, to: .pr, flags: .valBlk, lvb: Array("v2".utf8))  // writes the LVB
/// let lvb = try await ls.unlock(lock)                                      // the final value block
/// ```
///
/// Semantics are the kernel's: one completion per request or conversion (the awaited result),
/// blocking callbacks on `DLMLock.blockingCallbacks`, value blocks read on grants whose LVB table
/// entry reads and written by down-conversions and unlocks from PW/EX when the lock has VALBLK.
/// Failures throw `DLMError`: EAGAIN (NOQUEUE not grantable), EDEADLK (conversion deadlock),
/// DLM_ECANCEL (cancelled), EINVAL (bad arguments, unknown lockspace), EBUSY (another operation
/// outstanding), ENOENT (no such lock).
///
/// Every call hops onto the node's event loop; the handle and this type are `Sendable` and may be
/// used from any task. A call made while the lockspace is still joining waits for the join.
/// Locks stay held until unlocked: they belong to the node, not to the task or the handle.
///
/// ## Owner sessions, persistent and orphan locks
///
/// `openSession()` returns a view whose locks belong to an owner session, as a process that opened
/// libdlm's lockspace device owns its locks. `closeSession()` ends it the way the kernel closes the
/// device (`dlm_clear_proc_locks`): locks whose most recent request or conversion had PERSISTENT
/// become orphans (granted locks keep their mode and value block; a waiting request or conversion
/// is cancelled), the others are force-unlocked with IVVALBLK. An orphan delivers no callbacks;
/// a request with ORPHAN (and without CONVERT) adopts the oldest orphan on the resource granted in
/// the requested mode and returns it granted at once (EAGAIN: orphans there hold other modes;
/// ENOENT: none). `purgeOrphans` releases orphans (`dlm_ls_purge`).
public struct DLMLockspace: Sendable {
    public let name: String
    public let node: PeerNode
    /// The owner session of this view's new locks (nil: the node's).
    public let session: UInt64?

    public init(node: PeerNode, name: String) {
        self.node = node
        self.name = name
        self.session = nil
    }

    init(node: PeerNode, name: String, session: UInt64?) {
        self.node = node
        self.name = name
        self.session = session
    }

    // MARK: - Owner sessions

    /// A view of this lockspace whose new locks belong to a new owner session.
    public func openSession() -> DLMLockspace {
        DLMLockspace(node: node, name: name, session: DLMSessionIDs.next())
    }

    /// Ends this view's owner session: PERSISTENT locks become orphans, the others are unlocked
    /// (FORCEUNLOCK, IVVALBLK). Returns which. EINVAL on a view without a session.
    @discardableResult
    public func closeSession() async throws -> DLMSessionClosed {
        guard let session else { throw DLMError(.einval, "this view of \(name) has no owner session") }
        return try await node.apiCloseSession(lockspace: name, session: session).get()
    }

    /// `dlm_ls_purge`: releases the orphan locks of process `pid` (0: all) on node `nodeID` (0:
    /// this node; another member is sent a PURGE message). Returns how many of this node's
    /// orphans were released (0 for another node).
    @discardableResult
    public func purgeOrphans(nodeID: UInt32 = 0, pid: UInt32 = 0) async throws -> Int {
        try await node.apiPurge(lockspace: name, nodeID: nodeID, pid: pid).get()
    }

    /// The ids of this node's orphan locks, oldest first.
    public func orphans() async throws -> [UInt32] {
        try await node.eventLoop.submit { [node, name] in node.lockspaceState(named: name)?.locks.orphans ?? [] }.get()
    }

    // MARK: - New locks

    /// Requests `mode` on `resource` and waits until it is granted. Throws `DLMError` (`.eagain` when
    /// `flags` has NOQUEUE and the lock is not grantable at once, `.einval` for bad arguments,
    /// `.ecancel` when cancelled). Cancelling the calling task cancels the request (`cancel`);
    /// if the grant wins the race the lock is returned.
    ///
    /// `lvb`: the lock's value block buffer (at most lvblen bytes, zero-padded); with VALBLK and no
    /// buffer the lock gets a zeroed one, which a grant that reads the LVB fills.
    /// `onBlocking`: called on the node's event loop for each blocking callback, in addition to
    /// `DLMLock.blockingCallbacks` (keep it short; it must not block).
    public func lock(_ resource: String, mode: LockMode, flags: LockFlags = [], lvb: [UInt8]? = nil,
                     onBlocking: (@Sendable (LockMode) -> Void)? = nil) async throws -> DLMLock {
        try await lock(Array(resource.utf8), mode: mode, flags: flags, lvb: lvb, onBlocking: onBlocking)
    }

    /// `lock(_:mode:flags:lvb:onBlocking:)` with a binary resource name.
    public func lock(_ resource: [UInt8], mode: LockMode, flags: LockFlags = [], lvb: [UInt8]? = nil,
                     onBlocking: (@Sendable (LockMode) -> Void)? = nil) async throws -> DLMLock {
        let submitted = try await node.apiRequest(lockspace: name, resource: resource, mode: mode, flags: flags, lvb: lvb,
                                                  owner: .api, session: session, onBlocking: onBlocking).get()
        try await waitCancellingOnTaskCancel(submitted)
        return submitted.lock
    }

    /// Requests `mode` on `resource` and returns as soon as the request is accepted (`dlm_lock`'s
    /// return): the lock may still be waiting. `DLMLock.wait()` waits for the outcome.
    public func request(_ resource: String, mode: LockMode, flags: LockFlags = [], lvb: [UInt8]? = nil,
                        onBlocking: (@Sendable (LockMode) -> Void)? = nil) async throws -> DLMLock {
        try await request(Array(resource.utf8), mode: mode, flags: flags, lvb: lvb, onBlocking: onBlocking)
    }

    /// `request(_:mode:flags:lvb:onBlocking:)` with a binary resource name.
    public func request(_ resource: [UInt8], mode: LockMode, flags: LockFlags = [], lvb: [UInt8]? = nil,
                        onBlocking: (@Sendable (LockMode) -> Void)? = nil) async throws -> DLMLock {
        try await node.apiRequest(lockspace: name, resource: resource, mode: mode, flags: flags, lvb: lvb,
                                  owner: .api, session: session, onBlocking: onBlocking).get().lock
    }

    // MARK: - Conversions

    /// Converts `lock` to `mode` and waits for the outcome. A down-conversion completes at once;
    /// from PW/EX with VALBLK it writes the lock's value block (`lvb` replaces it when given).
    /// Throws `.eagain` (NOQUEUE), `.edeadlk` (conversion deadlock; the lock keeps its mode, or NL
    /// with CONVDEADLK), `.ebusy` (another operation outstanding), `.ecancel` (cancelled).
    public func convert(_ lock: DLMLock, to mode: LockMode, flags: LockFlags = [], lvb: [UInt8]? = nil) async throws {
        let submitted = try await node.apiConvert(lockspace: name, lkid: lock.lkid, mode: mode, flags: flags, lvb: lvb).get()
        try await waitCancellingOnTaskCancel(submitted)
    }

    /// Starts a conversion and returns once it is accepted; `DLMLock.wait()` waits for the outcome.
    public func requestConversion(_ lock: DLMLock, to mode: LockMode, flags: LockFlags = [], lvb: [UInt8]? = nil) async throws {
        _ = try await node.apiConvert(lockspace: name, lkid: lock.lkid, mode: mode, flags: flags, lvb: lvb).get()
    }

    // MARK: - Unlock and cancel

    /// Releases `lock` and waits for the completion (-DLM_EUNLOCK). Returns the lock's value block
    /// at the end: the value written to the resource for a PW/EX lock with VALBLK (`lvb` replaces
    /// it first when given with VALBLK), else the buffer as the last grant left it.
    /// `flags` ⊆ {VALBLK, IVVALBLK, FORCEUNLOCK}. Throws `.ebusy` while a request or conversion is
    /// outstanding (cancel it first, or FORCEUNLOCK), `.enoent` for a released lock.
    @discardableResult
    public func unlock(_ lock: DLMLock, flags: LockFlags = [], lvb: [UInt8]? = nil) async throws -> [UInt8]? {
        let c = try await node.apiUnlock(lockspace: name, lkid: lock.lkid, flags: flags, lvb: lvb).get()
        return c.lvb
    }

    /// Cancels the lock's waiting request or conversion: the waiting call throws `.ecancel`, a new
    /// lock is released, a conversion stays granted in its old mode. Returns false when nothing was
    /// left to cancel (the request or conversion had been granted).
    @discardableResult
    public func cancel(_ lock: DLMLock) async throws -> Bool {
        try await node.apiCancel(lockspace: name, lkid: lock.lkid).get()
    }

    // MARK: - Lookups

    /// The handle of a lock taken through this API (by any caller, e.g. `dlm-peer lock`), or nil.
    public func lock(id lkid: UInt32) async throws -> DLMLock? {
        try await node.apiLock(lockspace: name, lkid: lkid).get()
    }

    /// The lockspace's resources, queues, directory records and waiters (`dlm-peer locks`).
    public func dump() async throws -> LockDump {
        try await node.lockDump(lockspace: name).get()
    }

    // MARK: -

    private func waitCancellingOnTaskCancel(_ submitted: DLMSubmitted) async throws {
        let node = self.node
        let name = self.name
        let lkid = submitted.lock.lkid
        _ = try await withTaskCancellationHandler {
            try await submitted.completion.get()
        } onCancel: {
            node.apiCancel(lockspace: name, lkid: lkid).whenComplete { _ in }
        }
    }
}

/// Owner session ids, unique in the process.
enum DLMSessionIDs {
    private static let counter = NIOLockedValueBox<UInt64>(0)

    static func next() -> UInt64 {
        counter.withLockedValue { v in
            v += 1
            return v
        }
    }
}

extension PeerNode {
    /// The lock API of lockspace `name`. Calls fail with `DLMError.einval` when the node is not a
    /// member of it.
    public func lockspace(_ name: String) -> DLMLockspace {
        DLMLockspace(node: self, name: name)
    }
}
