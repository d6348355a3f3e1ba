import DLMTransport
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

// The event-loop side of the Swift lock API: every call hops onto the node's loop, drives the
// lockspace's LockManager there, and routes the completions and blocking callbacks of each lock
// to its `DLMLockRouter`, which fulfils the promises the async calls wait on.

/// Who took a lock through the API (shown by `dlm-peer locks`).
public enum DLMLockOwner: String, Sendable, Codable {
    /// A Swift caller of `DLMLockspace`.
    case api
    /// `dlm-peer lock` over the control socket (kept by the node until `dlm-peer unlock`).
    case cli
    /// `dlm-peer hold`: released when its control connection closes.
    case hold
}

/// The completions and blocking callbacks of one API lock; confined to the node's event loop.
final class DLMLockRouter: @unchecked Sendable {
    let eventLoop: EventLoop
    let owner: DLMLockOwner
    /// The owner session (`DLMLockspace.openSession()`, a `hold` connection) the lock belongs to;
    /// nil: the node's.
    var session: UInt64?
    let continuation: AsyncStream<LockMode>.Continuation
    let onBlocking: (@Sendable (LockMode) -> Void)?
    var handle: DLMLock?
    /// The request or conversion in flight.
    var operation: EventLoopPromise<LockManager.Completion>?
    /// The unlock in flight.
    var unlocking: EventLoopPromise<LockManager.Completion>?
    /// Cancels in flight: true = cancelled, false = nothing was left to cancel (granted first).
    var cancels: [EventLoopPromise<Bool>] = []
    /// Observers of every completion (the `hold` session's event stream).
    var observers: [(LockManager.Completion) -> Void] = []

    init(eventLoop: EventLoop, owner: DLMLockOwner, session: UInt64?, continuation: AsyncStream<LockMode>.Continuation,
         onBlocking: (@Sendable (LockMode) -> Void)?) {
        self.eventLoop = eventLoop
        self.owner = owner
        self.session = session
        self.continuation = continuation
        self.onBlocking = onBlocking
    }

    func completed(_ c: LockManager.Completion, in ls: PeerNode.LockspaceState) {
        handle?.completed(c)
        let what = handle.map { "\($0.resourceName) lkid \(String($0.lkid, radix: 16))" } ?? "lkid \(c.lkid)"
        switch c.status {
        case .granted:
            operation?.succeed(c)
            operation = nil
            for p in cancels { p.succeed(false) }
            cancels = []
        case .cancelled:
            operation?.fail(DLMError(.ecancel, "\(what) cancelled"))
            operation = nil
            for p in cancels { p.succeed(true) }
            cancels = []
        case .unlocked:
            operation?.fail(DLMError(.eunlock, "\(what) unlocked"))
            operation = nil
            unlocking?.succeed(c)
            unlocking = nil
        case .queued:
            break
        case .wouldBlock, .deadlock, .busy, .notFound, .invalid:
            let error = DLMError(c.status, "\(what) \(Self.describe(c.status))") ?? DLMError(.eproto)
            if let op = operation {
                op.fail(error)
                operation = nil
            } else if let u = unlocking {
                u.fail(error)
                unlocking = nil
            } else {
                for p in cancels { p.fail(error) }
                cancels = []
            }
        }
        for o in observers { o(c) }
        if c.endOfLife {
            end(DLMError(.enoent, "\(what) is no longer valid"))
            if ls.api[c.lkid] === self { ls.api[c.lkid] = nil }
        }
    }

    func blocking(_ mode: LockMode) {
        handle?.blocked(mode)
        continuation.yield(mode)
        onBlocking?(mode)
    }

    /// The lock's life is over: fail whatever still waits, finish the BAST stream.
    func end(_ error: DLMError) {
        handle?.ended()
        operation?.fail(error)
        operation = nil
        unlocking?.fail(error)
        unlocking = nil
        for p in cancels { p.fail(error) }
        cancels = []
        observers = []
        continuation.finish()
    }

    static func describe(_ status: LockResult) -> String {
        switch status {
        case .granted: return "granted"
        case .queued: return "queued"
        case .wouldBlock: return "could not be granted at once (NOQUEUE)"
        case .deadlock: return "conversion deadlock"
        case .busy: return "busy: another operation is outstanding or the lock is not granted"
        case .notFound: return "no such lock"
        case .invalid: return "invalid arguments"
        case .cancelled: return "cancelled"
        case .unlocked: return "unlocked"
        }
    }
}

/// What closing an owner session did: the lock ids it orphaned and those it unlocked.
public struct DLMSessionClosed: Sendable, Equatable {
    public var orphaned: [UInt32] = []
    public var unlocked: [UInt32] = []
}

/// A request or conversion the lock manager accepted, and the future of its completion.
struct DLMSubmitted: Sendable {
    var lock: DLMLock
    var completion: EventLoopFuture<LockManager.Completion>
}

extension PeerNode {
    /// The state of lockspace `name` (on the loop).
    func lockspaceState(named name: String) -> LockspaceState? {
        lockspaces.values.first { $0.name == name }
    }

    /// Runs `body` on the loop with lockspace `name` once locking is enabled: API calls wait while
    /// the lockspace is joining or stopped for a membership change, as `dlm_lock` blocks during
    /// recovery (in call order with `PeerNode.lock`'s waiting calls; PeerNode+Lockspaces.swift).
    func onJoined<T: Sendable>(_ name: String, _ body: @escaping @Sendable (LockspaceState) throws -> EventLoopFuture<T>)
        -> EventLoopFuture<T>
    {
        eventLoop.flatSubmit { [self] in
            guard let ls = lockspaceState(named: name) else {
                return eventLoop.makeFailedFuture(DLMError(.einval, "not a member of lockspace \(name)"))
            }
            let abandoned: (BlockedCallEnd, String) -> Error = { why, reason in
                switch why {
                case .left: return DLMError(.eshutdown, reason)
                case .joinFailed: return DLMError(.einval, reason)
                }
            }
            return whenRunning(ls, abandoned: abandoned) { try body(ls) }.flatMap { $0 }
        }
    }

    func checkLVB(_ lvb: [UInt8]?, _ ls: LockspaceState) throws {
        if let lvb, lvb.count > ls.locks.config.lvbLength {
            throw DLMError(.einval, "an LVB of \(lvb.count) bytes exceeds lockspace \(ls.name)'s lvblen \(ls.locks.config.lvbLength)")
        }
    }

    func router(_ lkid: UInt32, _ ls: LockspaceState) throws -> DLMLockRouter {
        if let r = ls.api[lkid] { return r }
        if let view = ls.locks.lockView(lkid) {
            if view.isMasterCopy {
                throw DLMError(.einval, "lock \(String(lkid, radix: 16)) in \(ls.name) is node \(view.lock.nodeID)'s lock (a master copy)")
            }
            throw DLMError(.einval, "lock \(String(lkid, radix: 16)) in \(ls.name) was not taken through the lock API")
        }
        throw DLMError(.enoent, "no lock \(String(lkid, radix: 16)) in lockspace \(ls.name)")
    }

    /// `dlm_lock` for a new lock: accepted → the handle and the future of its completion. With
    /// ORPHAN (and not CONVERT) the request adopts an orphan instead (`adopt`).
    func apiRequest(lockspace: String, resource: [UInt8], mode: LockMode, flags: LockFlags, lvb: [UInt8]?,
                    owner: DLMLockOwner, session: UInt64? = nil, onBlocking: (@Sendable (LockMode) -> Void)?)
        -> EventLoopFuture<DLMSubmitted>
    {
        onJoined(lockspace) { [self] ls in
            guard !resource.isEmpty, resource.count <= WireLimits.maxResourceNameLength else {
                throw DLMError(.einval, "a resource name has 1...\(WireLimits.maxResourceNameLength) bytes, not \(resource.count)")
            }
            guard mode != .iv else { throw DLMError(.einval, "mode IV cannot be requested") }
            try checkLVB(lvb, ls)
            let (router, tag, stream) = newRouter(ls, resource: resource, owner: owner, session: session, onBlocking: onBlocking)
            if flags.contains(.orphan) && !flags.contains(.convert) {
                return try adopt(ls, resource: resource, mode: mode, flags: flags, router: router, tag: tag, stream: stream)
            }
            // VALBLK without a buffer: give the lock a zeroed one (libdlm requires sb_lvbptr).
            let buffer = lvb ?? (flags.contains(.valBlk) ? [] : nil)
            let result = ls.locks.lock(name: resource, mode: mode, flags: flags, lvb: buffer, pid: UInt32(getpid()),
                                       tag: tag, now: elapsed)
            if let error = result.error {
                ls.clients[tag] = nil
                router.continuation.finish()
                perform(result.actions, ls)
                throw DLMError(error, "lock \(String(decoding: resource, as: UTF8.self)) \(mode): \(DLMLockRouter.describe(error))")
                    ?? DLMError(.eproto)
            }
            let promise = eventLoop.makePromise(of: LockManager.Completion.self)
            let handle = DLMLock(lockspace: ls.name, resource: resource, lkid: result.lkid, requested: mode,
                                 lvb: ls.locks.lockView(result.lkid)?.lock.lvb, blockingCallbacks: stream)
            handle.started(mode, completion: promise.futureResult, lvb: nil)
            router.handle = handle
            router.operation = promise
            ls.api[result.lkid] = router
            perform(result.actions, ls)
            return eventLoop.makeSucceededFuture(DLMSubmitted(lock: handle, completion: promise.futureResult))
        }
    }

    /// A router for a new API lock, registered as the client of a fresh tag.
    private func newRouter(_ ls: LockspaceState, resource: [UInt8], owner: DLMLockOwner, session: UInt64?,
                           onBlocking: (@Sendable (LockMode) -> Void)?) -> (DLMLockRouter, UInt64, AsyncStream<LockMode>) {
        let (stream, continuation) = AsyncStream<LockMode>.makeStream(bufferingPolicy: .bufferingNewest(64))
        let router = DLMLockRouter(eventLoop: eventLoop, owner: owner, session: session, continuation: continuation,
                                   onBlocking: onBlocking)
        let tag = nextTag
        nextTag += 1
        ls.clients[tag] = LocalLock(
            name: String(decoding: resource, as: UTF8.self),
            onCompletion: { [weak ls] c in if let ls { router.completed(c, in: ls) } },
            onBlocking: { mode in router.blocking(mode) })
        return (router, tag, stream)
    }

    /// `dlm_user_adopt_orphan`: the orphan on `resource` granted in `mode` becomes this router's
    /// lock; its completion is "granted" at once, with the lock's value block (the kernel returns
    /// the lock id from the write and queues no callback). EAGAIN: orphans on the resource exist
    /// only in other modes; ENOENT: none.
    private func adopt(_ ls: LockspaceState, resource: [UInt8], mode: LockMode, flags: LockFlags, router: DLMLockRouter,
                       tag: UInt64, stream: AsyncStream<LockMode>) throws -> EventLoopFuture<DLMSubmitted> {
        let result = ls.locks.adoptOrphan(name: resource, mode: mode, flags: flags, pid: UInt32(getpid()), tag: tag,
                                          now: elapsed)
        perform(result.actions, ls)
        guard result.error == nil, let view = ls.locks.lockView(result.lkid) else {
            ls.clients[tag] = nil
            router.continuation.finish()
            let name = String(decoding: resource, as: UTF8.self)
            switch result.error {
            case .wouldBlock?: throw DLMError(.eagain, "adopt \(name) \(mode): the orphans on \(name) hold other modes")
            default: throw DLMError(.enoent, "adopt \(name) \(mode): no orphan lock on \(name)")
            }
        }
        let handle = DLMLock(lockspace: ls.name, resource: resource, lkid: result.lkid, requested: mode,
                             lvb: view.lock.lvb, blockingCallbacks: stream)
        let c = LockManager.Completion(tag: tag, lkid: result.lkid, status: .granted, mode: view.lock.grantedMode,
                                       statusFlags: view.lock.statusFlags, lvb: view.lock.lvb, endOfLife: false)
        let completion = eventLoop.makeSucceededFuture(c)
        handle.started(mode, completion: completion, lvb: nil)
        handle.completed(c)
        router.handle = handle
        ls.api[result.lkid] = router
        return eventLoop.makeSucceededFuture(DLMSubmitted(lock: handle, completion: completion))
    }

    /// `dlm_lock` with CONVERT on an API lock.
    func apiConvert(lockspace: String, lkid: UInt32, mode: LockMode, flags: LockFlags, lvb: [UInt8]?)
        -> EventLoopFuture<DLMSubmitted>
    {
        onJoined(lockspace) { [self] ls in
            let router = try router(lkid, ls)
            guard let handle = router.handle else { throw DLMError(.enoent, "no lock \(String(lkid, radix: 16))") }
            guard mode != .iv else { throw DLMError(.einval, "mode IV cannot be requested") }
            try checkLVB(lvb, ls)
            if router.operation != nil || router.unlocking != nil {
                throw DLMError(.ebusy, "lock \(String(lkid, radix: 16)) has an operation outstanding")
            }
            let promise = eventLoop.makePromise(of: LockManager.Completion.self)
            router.operation = promise
            let result = ls.locks.convert(lkid: lkid, mode: mode, flags: flags, lvb: lvb, now: elapsed)
            if let error = result.error {
                router.operation = nil
                let e = DLMError(error, "convert \(String(lkid, radix: 16)) to \(mode): \(DLMLockRouter.describe(error))")
                    ?? DLMError(.eproto)
                promise.fail(e)
                perform(result.actions, ls)
                throw e
            }
            handle.started(mode, completion: promise.futureResult, lvb: lvb.flatMap { _ in ls.locks.lockView(lkid)?.lock.lvb })
            perform(result.actions, ls)
            return eventLoop.makeSucceededFuture(DLMSubmitted(lock: handle, completion: promise.futureResult))
        }
    }

    /// `dlm_unlock`: the future of the unlock's completion (the lock's value block at the end).
    func apiUnlock(lockspace: String, lkid: UInt32, flags: LockFlags, lvb: [UInt8]?)
        -> EventLoopFuture<LockManager.Completion>
    {
        onJoined(lockspace) { [self] ls in
            let router = try router(lkid, ls)
            try checkLVB(lvb, ls)
            if flags.contains(.cancel) { throw DLMError(.einval, "use cancel to cancel") }
            if router.unlocking != nil { throw DLMError(.ebusy, "lock \(String(lkid, radix: 16)) is being unlocked") }
            let promise = eventLoop.makePromise(of: LockManager.Completion.self)
            router.unlocking = promise
            let result = ls.locks.unlock(lkid: lkid, flags: flags, lvb: lvb, now: elapsed)
            if let error = result.error {
                router.unlocking = nil
                let e = DLMError(error, "unlock \(String(lkid, radix: 16)): \(DLMLockRouter.describe(error))") ?? DLMError(.eproto)
                promise.fail(e)
                perform(result.actions, ls)
                throw e
            }
            perform(result.actions, ls)
            return promise.futureResult
        }
    }

    /// `dlm_unlock` with CANCEL: true when the request/conversion was cancelled, false when there
    /// was nothing left to cancel (it had been granted).
    func apiCancel(lockspace: String, lkid: UInt32) -> EventLoopFuture<Bool> {
        onJoined(lockspace) { [self] ls in
            let router = try router(lkid, ls)
            let promise = eventLoop.makePromise(of: Bool.self)
            router.cancels.append(promise)
            let result = ls.locks.cancel(lkid: lkid, now: elapsed)
            if let error = result.error {
                router.cancels.removeAll { $0.futureResult === promise.futureResult }
                let e = DLMError(error, "cancel \(String(lkid, radix: 16)): \(DLMLockRouter.describe(error))") ?? DLMError(.eproto)
                promise.fail(e)
                perform(result.actions, ls)
                throw e
            }
            perform(result.actions, ls)
            // Granted with nothing outstanding: the lock manager had nothing to cancel.
            if router.cancels.contains(where: { $0.futureResult === promise.futureResult }),
               let view = ls.locks.lockView(lkid), view.lock.status == .granted, view.waitType == nil,
               !view.overlapCancel, !view.parked
            {
                router.cancels.removeAll { $0.futureResult === promise.futureResult }
                promise.succeed(false)
            }
            return promise.futureResult
        }
    }

    /// Completes when the operation whose completion is `completion` either completed or sits on
    /// the master's grant/convert/wait queue with no reply outstanding ("queued": -EINPROGRESS
    /// received, or queued on our own master). Until then it is in flight (a LOOKUP, REQUEST or
    /// CONVERT awaiting its reply), which is polled on the loop.
    func whenQueuedOrDone(lockspace: String, lkid: UInt32, completion: EventLoopFuture<LockManager.Completion>)
        -> EventLoopFuture<Void>
    {
        let promise = eventLoop.makePromise(of: Void.self)
        let done = PollDone()
        promise.futureResult.whenComplete { _ in done.value = true }
        completion.whenComplete { _ in promise.succeed(()) }
        eventLoop.execute { [self] in pollQueued(lockspace: lockspace, lkid: lkid, promise, done, delay: 2) }
        return promise.futureResult
    }

    /// Set once the poll's promise is fulfilled (on the loop).
    final class PollDone: @unchecked Sendable {
        var value = false
    }

    /// Checks at 2, 4, 8 ... 100 ms intervals (a reply from a node that died may take a recovery).
    private func pollQueued(lockspace: String, lkid: UInt32, _ promise: EventLoopPromise<Void>, _ done: PollDone,
                            delay: Int64) {
        if done.value { return }
        guard let ls = lockspaceState(named: lockspace), let v = ls.locks.lockView(lkid) else {
            promise.succeed(())
            return
        }
        // No reply outstanding: queued (wait/convert queue) or already granted; done either way.
        if !v.detached && !v.parked && v.waitType == nil && v.lock.status != nil {
            promise.succeed(())
            return
        }
        eventLoop.scheduleTask(in: .milliseconds(delay)) { [self] in
            pollQueued(lockspace: lockspace, lkid: lkid, promise, done, delay: min(delay * 2, 100))
        }
    }

    /// The owner session `session` ends (`dlm_clear_proc_locks`): its PERSISTENT locks become
    /// orphans (their handles end; `DLMLockspace` requests with ORPHAN adopt them), the others are
    /// force-unlocked with IVVALBLK, as the kernel does when a process closes the lockspace device.
    func apiCloseSession(lockspace: String, session: UInt64) -> EventLoopFuture<DLMSessionClosed> {
        onJoined(lockspace) { [self] ls in
            var closed = DLMSessionClosed()
            var unlocks: [EventLoopFuture<LockManager.Completion>] = []
            for (lkid, router) in ls.api.sorted(by: { $0.key < $1.key }) where router.session == session {
                if ls.locks.isPersistent(lkid) {
                    ls.api[lkid] = nil
                    if let tag = ls.locks.lockView(lkid)?.tag { ls.clients[tag] = nil }  // an orphan has no client
                    let result = ls.locks.orphan(lkid: lkid, now: elapsed)
                    perform(result.actions, ls)
                    router.end(DLMError(.enoent, "lock \(String(lkid, radix: 16)) was orphaned: its owner session closed"))
                    closed.orphaned.append(lkid)
                } else {
                    closed.unlocked.append(lkid)
                    unlocks.append(apiUnlock(lockspace: lockspace, lkid: lkid, flags: [.forceUnlock, .ivValBlk], lvb: nil))
                }
            }
            return EventLoopFuture.whenAllComplete(unlocks, on: eventLoop).map { _ in closed }
        }
    }

    /// `dlm_user_purge`: release the orphans of process `pid` (0: all) of node `nodeID` (0: this
    /// node; another member gets a PURGE message).
    func apiPurge(lockspace: String, nodeID: UInt32, pid: UInt32) -> EventLoopFuture<Int> {
        onJoined(lockspace) { [self] ls in
            let before = ls.locks.orphans.count
            let result = ls.locks.purge(nodeID: nodeID, pid: pid, now: elapsed)
            perform(result.actions, ls)
            if result.error != nil { throw DLMError(.einval, "node \(nodeID) is not a member of \(ls.name)") }
            return eventLoop.makeSucceededFuture(before - ls.locks.orphans.count)
        }
    }

    /// The handle of API lock `lkid` (nil when there is none).
    func apiLock(lockspace: String, lkid: UInt32) -> EventLoopFuture<DLMLock?> {
        eventLoop.submit { [self] in lockspaceState(named: lockspace)?.api[lkid]?.handle }
    }

    /// Adds an observer of lock `lkid`'s completions (on the loop).
    func apiObserve(lockspace: String, lkid: UInt32, _ observer: @escaping (LockManager.Completion) -> Void) {
        eventLoop.assertInEventLoop()
        lockspaceState(named: lockspace)?.api[lkid]?.observers.append(observer)
    }

    /// Fails every API call still waiting in `ls` (the node leaves it).
    func failAPILocks(_ ls: LockspaceState, reason: String) {
        let routers = ls.api.values
        ls.api.removeAll()
        for r in routers { r.end(DLMError(.eshutdown, reason)) }
    }
}
