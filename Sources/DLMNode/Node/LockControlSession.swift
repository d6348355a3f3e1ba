import DLMTransport
import Foundation
import Logging
import NIOCore

/// One control connection that asked for a lock command (`ControlRequest`), on the node's event
/// loop (the control server runs on it).
///
/// * `lock`, `convert`, `unlock`, `cancel`, `locks`, `purge`: one JSON line (`LockReply`,
///   `LockDump`, or an array of `LockDump` for `locks` without a lockspace), then the server
///   closes. A `lock`/`convert` that waits answers when it is granted or fails (`nowait`: "queued"
///   at once). Locks taken by `lock` belong to the node and stay held after the connection closes
///   (until `unlock LS LKID`); if the client goes away while its request still waits, the request
///   is cancelled (the client never learnt the lock id). `lock` with ORPHAN adopts an orphan.
/// * `hold`: the connection is an owner session (as a process that opened the lockspace device)
///   and carries one JSON line per event: "queued", "granted", "bast" (each blocking callback),
///   "converted"/"convert_failed" for its conversions, then "unlocked" or "failed". The client
///   sends `HoldRequest` lines: `convert MODE ...`, `cancel`, `unlock ...` (which ends the hold).
///   Closing the connection ends the session as the kernel closes the device: a PERSISTENT lock
///   becomes an orphan, any other is force-unlocked with IVVALBLK.
final class LockControlSession: @unchecked Sendable {
    let node: PeerNode
    let channel: Channel
    let logger: Logger
    private var buffer = ByteBuffer()
    private var closed = false
    /// A `lock`/`hold` whose request may still be waiting: cancelled if the client goes away.
    private var waiting: (lockspace: String, lkid: UInt32)?
    /// The lock of a `hold` connection.
    private var held: (lockspace: String, lkid: UInt32)?
    private var isHold = false
    private var releasing = false
    /// `unlock` arrived before the request was accepted: release as soon as it is.
    private var earlyRelease: (flags: LockFlags, lvb: [UInt8]?)?
    /// The owner session of a `hold` connection's lock.
    private let session = DLMSessionIDs.next()

    init(node: PeerNode, channel: Channel, logger: Logger) {
        self.node = node
        self.channel = channel
        self.logger = logger
    }

    /// Whether `line` is a lock request (its first word).
    static func handles(_ line: String) -> Bool {
        guard let verb = line.split(separator: " ", maxSplits: 1).first else { return false }
        return ControlRequest.lockVerbs.contains(String(verb))
    }

    func start(_ line: String) {
        let request: ControlRequest
        do {
            request = try ControlRequest.parse(line)
        } catch {
            finish(LockReply.failure(DLMError(.einval, error.description)).json)
            return
        }
        switch request {
        case .status:
            finish(LockReply.failure(DLMError(.einval, "status is not a lock request")).json)
        case .lock(let a):
            lock(a, hold: false)
        case .hold(let a):
            lock(a, hold: true)
        case .convert(let ls, let lkid, let mode, let flags, let lvb, let wait):
            node.apiConvert(lockspace: ls, lkid: lkid, mode: mode, flags: flags, lvb: lvb).whenComplete { [self] result in
                switch result {
                case .failure(let e):
                    finish(LockReply.failure(e, lockspace: ls, lkid: lkid).json)
                case .success(let submitted):
                    answer(submitted, wait: wait)
                }
            }
        case .unlock(let ls, let lkid, let flags, let lvb):
            node.apiUnlock(lockspace: ls, lkid: lkid, flags: flags, lvb: lvb).whenComplete { [self] result in
                switch result {
                case .failure(let e):
                    finish(LockReply.failure(e, lockspace: ls, lkid: lkid).json)
                case .success(let c):
                    finish(Self.unlocked(c, lockspace: ls).json)
                }
            }
        case .cancel(let ls, let lkid):
            node.apiCancel(lockspace: ls, lkid: lkid).whenComplete { [self] result in
                switch result {
                case .failure(let e):
                    finish(LockReply.failure(e, lockspace: ls, lkid: lkid).json)
                case .success(let cancelled):
                    var r = LockReply(ok: true, status: cancelled ? "cancelled" : "not cancelled")
                    r.lockspace = ls
                    r.lkid = lkid
                    r.lkidHex = String(format: "%08x", lkid)
                    if !cancelled { r.error = nil }
                    finish(r.json)
                }
            }
        case .locks(let ls?):
            node.lockDump(lockspace: ls).whenComplete { [self] result in
                finishEncoding(result, lockspace: ls)
            }
        case .locks(nil):
            node.lockDumps().whenComplete { [self] result in
                finishEncoding(result, lockspace: nil)
            }
        case .purge(let ls, let nodeID, let pid):
            node.apiPurge(lockspace: ls, nodeID: nodeID, pid: pid).whenComplete { [self] result in
                switch result {
                case .failure(let e):
                    finish(LockReply.failure(e, lockspace: ls).json)
                case .success(let count):
                    var r = LockReply(ok: true, status: nodeID == 0 || nodeID == node.nodeID ? "purged" : "purge sent")
                    r.lockspace = ls
                    r.purged = count
                    finish(r.json)
                }
            }
        }
    }

    private func finishEncoding<T: Encodable>(_ result: Result<T, any Error>, lockspace: String?) {
        switch result {
        case .failure(let e):
            finish(LockReply.failure(e, lockspace: lockspace).json)
        case .success(let value):
            let data = (try? LockDump.encoder().encode(value)) ?? Data()
            finish(String(decoding: data, as: UTF8.self))
        }
    }

    /// More bytes from the client (a `hold` connection's `HoldRequest` lines).
    func received(_ bytes: inout ByteBuffer) {
        buffer.writeBuffer(&bytes)
        while let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let line = String(decoding: buffer.readableBytesView[..<newline], as: UTF8.self)
                .trimmingCharacters(in: .whitespaces)
            buffer.moveReaderIndex(to: newline + 1)
            guard isHold, !line.isEmpty else { continue }
            do {
                switch try HoldRequest.parse(line) {
                case .unlock(let flags, let lvb): release(flags: flags, lvb: lvb)
                case .convert(let mode, let flags, let lvb): convertHeld(mode, flags: flags, lvb: lvb)
                case .cancel: cancelHeld()
                }
            } catch {
                holdError(DLMError(.einval, error.description))
            }
        }
        if buffer.readableBytes > 4096 { channel.close(promise: nil) }
    }

    /// The connection closed.
    func inactive() {
        closed = true
        if let w = waiting, !isHold {
            // The client went away while its request waited: cancel it.
            waiting = nil
            node.apiCancel(lockspace: w.lockspace, lkid: w.lkid).whenSuccess { [logger] cancelled in
                logger.info("control: client gone, request \(w.lockspace) \(String(w.lkid, radix: 16)) \(cancelled ? "cancelled" : "was granted")")
            }
        }
        if isHold, let h = held, !releasing {
            releasing = true
            closeSession(h.lockspace)
        }
    }

    /// The hold's owner session ends: a PERSISTENT lock becomes an orphan, any other is unlocked.
    private func closeSession(_ lockspace: String) {
        node.apiCloseSession(lockspace: lockspace, session: session).whenSuccess { [logger] c in
            logger.info("control: hold connection closed in \(lockspace): orphaned \(c.orphaned.map { String($0, radix: 16) }), unlocked \(c.unlocked.map { String($0, radix: 16) })")
        }
    }

    // MARK: - lock / hold

    private func lock(_ a: ControlRequest.LockArguments, hold: Bool) {
        isHold = hold
        var onBlocking: (@Sendable (LockMode) -> Void)?
        if hold {
            onBlocking = { @Sendable [weak self] (mode: LockMode) -> Void in self?.bast(mode) }
        }
        node.apiRequest(lockspace: a.lockspace, resource: a.resource, mode: a.mode, flags: a.flags, lvb: a.lvb,
                        owner: hold ? .hold : .cli, session: hold ? session : nil,
                        onBlocking: onBlocking).whenComplete { [self] result in
            switch result {
            case .failure(let e):
                var r = LockReply.failure(e, lockspace: a.lockspace)
                r.resource = LockDump.printable(a.resource)
                if hold { r.event = "failed" }
                finish(r.json)
            case .success(let submitted):
                if closed && hold {
                    // The client left before the request was accepted (e.g. while the lockspace
                    // was joining): the session ends.
                    releasing = true
                    closeSession(a.lockspace)
                } else if closed {
                    // Nobody knows this lock, so do not keep it.
                    forget(submitted.lock)
                } else if hold {
                    holdStarted(submitted)
                } else {
                    answer(submitted, wait: a.wait)
                }
            }
        }
    }

    /// Answers a lock/convert: now if it completed or `wait` is false, else when it completes.
    private func answer(_ submitted: DLMSubmitted, wait: Bool) {
        let lock = submitted.lock
        let done = lock.status.requestedMode == nil
        if !done { waiting = (lock.lockspace, lock.lkid) }
        if !done && !wait {
            node.whenQueuedOrDone(lockspace: lock.lockspace, lkid: lock.lkid, completion: submitted.completion)
                .whenComplete { [self] _ in
                    if lock.status.requestedMode != nil {
                        waiting = nil
                        finish(LockReply.describing(lock, status: "queued").json)
                    }
                }
        }
        submitted.completion.whenComplete { [self] result in
            waiting = nil
            guard !closed else { return }
            switch result {
            case .success:
                finish(LockReply.describing(lock, status: "granted").json)
            case .failure(let e):
                finish(Self.failed(lock, e).json)
            }
        }
    }

    private func holdStarted(_ submitted: DLMSubmitted) {
        let lock = submitted.lock
        held = (lock.lockspace, lock.lkid)
        defer {
            if let early = earlyRelease {
                earlyRelease = nil
                release(flags: early.flags, lvb: early.lvb)
            }
        }
        if lock.status.requestedMode != nil {
            waiting = (lock.lockspace, lock.lkid)
            reportQueued(submitted)
        }
        submitted.completion.whenComplete { [self] result in
            waiting = nil
            switch result {
            case .success:
                if closed { return }  // inactive() closed the session
                var r = LockReply.describing(lock, status: "granted")
                r.event = "granted"
                write(r.json)
                node.apiObserve(lockspace: lock.lockspace, lkid: lock.lkid) { [weak self] c in
                    guard let self, c.endOfLife, !self.closed else { return }
                    var r = LockReply.describing(lock, status: c.status == .unlocked ? "unlocked" : "\(c.status)")
                    r.event = c.status == .unlocked ? "unlocked" : "failed"
                    self.finish(r.json)
                }
            case .failure(let e):
                held = nil
                var r = Self.failed(lock, e)
                r.event = "failed"
                finish(r.json)
            }
        }
    }

    /// A `lock` whose client left before it was accepted: cancel it, or unlock it if granted.
    private func forget(_ lock: DLMLock) {
        let (ls, lkid, node) = (lock.lockspace, lock.lkid, node)
        node.apiCancel(lockspace: ls, lkid: lkid).whenSuccess { cancelled in
            if !cancelled && lock.status.lastResult == .granted && !lock.isReleased {
                node.apiUnlock(lockspace: ls, lkid: lkid, flags: [], lvb: nil).whenComplete { _ in }
            }
        }
    }

    private func bast(_ mode: LockMode) {
        guard !closed, let h = held else { return }
        var r = LockReply(ok: true, status: "bast")
        r.event = "bast"
        r.lockspace = h.lockspace
        r.lkid = h.lkid
        r.lkidHex = String(format: "%08x", h.lkid)
        r.bastMode = mode.description
        write(r.json)
    }

    private func release(flags: LockFlags, lvb: [UInt8]?) {
        guard let h = held else {
            earlyRelease = (flags, lvb)
            return
        }
        guard !releasing else { return }
        releasing = true
        if waiting != nil {
            // Not granted yet: cancel (the completion then reports the cancel as "failed" and
            // closes); if the grant wins the race, unlock (the observer reports "unlocked").
            node.apiCancel(lockspace: h.lockspace, lkid: h.lkid).whenSuccess { [node] cancelled in
                if !cancelled {
                    node.apiUnlock(lockspace: h.lockspace, lkid: h.lkid, flags: flags, lvb: lvb).whenComplete { _ in }
                }
            }
            return
        }
        node.apiUnlock(lockspace: h.lockspace, lkid: h.lkid, flags: flags, lvb: lvb)
            .whenFailure { [self] e in
                releasing = false
                var r = LockReply.failure(e, lockspace: h.lockspace, lkid: h.lkid)
                r.event = "failed"
                write(r.json)
            }
        // Success: the observer installed at the grant writes "unlocked" and closes.
    }

    /// `convert MODE ...` on a hold connection: "queued" when it waits, then "converted" or
    /// "convert_failed" (the lock keeps its mode); a refused call is an "error" line.
    private func convertHeld(_ mode: LockMode, flags: LockFlags, lvb: [UInt8]?) {
        guard let h = held, waiting == nil, !releasing else {
            holdError(DLMError(.ebusy, "the hold's lock is not granted (or is being released)"))
            return
        }
        node.apiConvert(lockspace: h.lockspace, lkid: h.lkid, mode: mode, flags: flags, lvb: lvb).whenComplete { [self] result in
            switch result {
            case .failure(let e):
                holdError(e)
            case .success(let submitted):
                let lock = submitted.lock
                reportQueued(submitted)
                submitted.completion.whenComplete { [self] outcome in
                    switch outcome {
                    case .success:
                        var r = LockReply.describing(lock, status: "granted")
                        r.event = "converted"
                        write(r.json)
                    case .failure(let e):
                        var r = Self.failed(lock, e)
                        r.event = "convert_failed"
                        write(r.json)
                    }
                }
            }
        }
    }

    /// A "queued" event once the request or conversion waits on the master's queue (none if it
    /// completes first).
    private func reportQueued(_ submitted: DLMSubmitted) {
        let lock = submitted.lock
        node.whenQueuedOrDone(lockspace: lock.lockspace, lkid: lock.lkid, completion: submitted.completion)
            .whenComplete { [self] _ in
                guard lock.status.requestedMode != nil else { return }
                var r = LockReply.describing(lock, status: "queued")
                r.event = "queued"
                write(r.json)
            }
    }

    /// `cancel` on a hold connection: cancels the waiting conversion (its "convert_failed" follows)
    /// or the waiting request (the hold then fails).
    private func cancelHeld() {
        guard let h = held else {
            holdError(DLMError(.enoent, "the hold's request has not been accepted yet"))
            return
        }
        node.apiCancel(lockspace: h.lockspace, lkid: h.lkid).whenComplete { [self] result in
            switch result {
            case .failure(let e):
                holdError(e)
            case .success(let cancelled):
                var r = LockReply(ok: true, status: cancelled ? "cancelled" : "not cancelled")
                r.event = "cancel"
                r.lockspace = h.lockspace
                r.lkid = h.lkid
                r.lkidHex = String(format: "%08x", h.lkid)
                write(r.json)
            }
        }
    }

    /// An "error" line on a hold connection, which stays open.
    private func holdError(_ e: any Error) {
        var r = LockReply.failure(e, lockspace: held?.lockspace, lkid: held?.lkid)
        r.event = "error"
        write(r.json)
    }

    /// The reply for a lock whose request or conversion failed with `e`.
    static func failed(_ lock: DLMLock, _ e: any Error) -> LockReply {
        var r = LockReply.describing(lock, status: "error", ok: false)
        if let e = e as? DLMError {
            r.status = e.code.name
            r.result = e.errno
        }
        r.error = "\(e)"
        return r
    }

    static func unlocked(_ c: LockManager.Completion, lockspace: String) -> LockReply {
        var r = LockReply(ok: true, status: "unlocked")
        r.lockspace = lockspace
        r.lkid = c.lkid
        r.lkidHex = String(format: "%08x", c.lkid)
        r.result = c.status.rawValue
        r.mode = LockDump.mode(c.mode)
        r.sbFlags = LockDump.flagList(c.statusFlags.rawValue, StatusBlockFlags.names)
        r.lvb = c.lvb.map(LockDump.hex)
        return r
    }

    // MARK: - Output

    private func write(_ line: String) {
        guard !closed else { return }
        channel.writeAndFlush(ByteBuffer(string: line + "\n"), promise: nil)
    }

    private func finish(_ line: String) {
        guard !closed else { return }
        closed = true
        channel.writeAndFlush(ByteBuffer(string: line + "\n")).whenComplete { [channel] _ in
            channel.close(promise: nil)
        }
    }
}
