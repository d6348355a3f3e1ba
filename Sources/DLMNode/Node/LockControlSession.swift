import DLMTransport
import Foundation
import Logging
import NIOCore

/// One control connection that asked for a lock command (`ControlRequest`), on the node's event
/// loop (the control server runs on it).
///
/// * `lock`, `convert`, `unlock`, `cancel`, `locks`: one JSON line (`LockReply` / `LockDump`), then
///   the server closes. A `lock`/`convert` that waits answers when it is granted or fails
///   (`nowait`: "queued" at once). Locks taken by `lock` belong to the node and stay held after the
///   connection closes (until `unlock LS LKID`); if the client goes away while its request still
///   waits, the request is cancelled (the client never learnt the lock id).
/// * `hold`: the connection stays open and carries one JSON line per event: "queued", "granted",
///   "bast" (each blocking callback), then "unlocked" or "failed". The client ends the hold by
///   sending the line `unlock` (optionally `unlock lvb=HEX`) or by closing the connection; either
///   way the node releases the lock.
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
    /// `unlock` arrived before the request was accepted: release as soon as it is (its LVB).
    private var earlyRelease: [UInt8]??

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
        case .locks(let ls):
            node.lockDump(lockspace: ls).whenComplete { [self] result in
                switch result {
                case .failure(let e):
                    finish(LockReply.failure(e, lockspace: ls).json)
                case .success(let dump):
                    let data = (try? LockDump.encoder().encode(dump)) ?? Data()
                    finish(String(decoding: data, as: UTF8.self))
                }
            }
        }
    }

    /// More bytes from the client (a `hold` connection's `unlock`).
    func received(_ bytes: inout ByteBuffer) {
        buffer.writeBuffer(&bytes)
        while let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let line = String(decoding: buffer.readableBytesView[..<newline], as: UTF8.self)
                .trimmingCharacters(in: .whitespaces)
            buffer.moveReaderIndex(to: newline + 1)
            guard isHold else { continue }
            let words = line.split(separator: " ").map(String.init)
            guard words.first == "unlock" else {
                var r = LockReply(ok: false, status: "error")
                r.error = "a hold connection accepts only `unlock [lvb=HEX]`"
                write(r.json)
                continue
            }
            var lvb: [UInt8]?
            for w in words.dropFirst() where w.hasPrefix("lvb=") { lvb = try? ControlRequest.parseHex(String(w.dropFirst(4))) }
            release(lvb: lvb)
        }
        if buffer.readableBytes > 4096 { channel.close(promise: nil) }
    }

    /// The connection closed.
    func inactive() {
        closed = true
        if let w = waiting {
            // The client went away while its request waited: cancel it; if the grant won, unlock.
            waiting = nil
            let hold = isHold
            node.apiCancel(lockspace: w.lockspace, lkid: w.lkid).whenSuccess { [node, logger] cancelled in
                logger.info("control: client gone, request \(w.lockspace) \(String(w.lkid, radix: 16)) \(cancelled ? "cancelled" : "was granted")")
                if !cancelled && hold {
                    node.apiUnlock(lockspace: w.lockspace, lkid: w.lkid, flags: [], lvb: nil).whenComplete { _ in }
                }
            }
        }
        if isHold, let h = held, !releasing {
            releasing = true
            logger.info("control: hold connection closed, unlocking \(h.lockspace) \(String(h.lkid, radix: 16))")
            node.apiUnlock(lockspace: h.lockspace, lkid: h.lkid, flags: [], lvb: nil).whenComplete { _ in }
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
                        owner: hold ? .hold : .cli, onBlocking: onBlocking).whenComplete { [self] result in
            switch result {
            case .failure(let e):
                var r = LockReply.failure(e, lockspace: a.lockspace)
                r.resource = LockDump.printable(a.resource)
                if hold { r.event = "failed" }
                finish(r.json)
            case .success(let submitted):
                if closed {
                    // The client left before the request was accepted (e.g. while the lockspace
                    // was joining): nobody knows this lock, so do not keep it.
                    orphaned(submitted.lock, hold: hold)
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
                var r = LockReply.describing(lock, status: "error", ok: false)
                if let e = e as? DLMError {
                    r.status = e.code.name
                    r.result = e.errno
                }
                r.error = "\(e)"
                finish(r.json)
            }
        }
    }

    private func holdStarted(_ submitted: DLMSubmitted) {
        let lock = submitted.lock
        held = (lock.lockspace, lock.lkid)
        defer {
            if let early = earlyRelease {
                earlyRelease = nil
                release(lvb: early)
            }
        }
        if lock.status.requestedMode != nil {
            waiting = (lock.lockspace, lock.lkid)
            node.whenQueuedOrDone(lockspace: lock.lockspace, lkid: lock.lkid, completion: submitted.completion)
                .whenComplete { [self] _ in
                    guard lock.status.requestedMode != nil else { return }
                    var r = LockReply.describing(lock, status: "queued")
                    r.event = "queued"
                    write(r.json)
                }
        }
        submitted.completion.whenComplete { [self] result in
            waiting = nil
            switch result {
            case .success:
                if closed { return }  // inactive() saw `waiting` and is unlocking after its cancel
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
                var r = LockReply.describing(lock, status: "error", ok: false)
                if let e = e as? DLMError {
                    r.status = e.code.name
                    r.result = e.errno
                }
                r.error = "\(e)"
                r.event = "failed"
                finish(r.json)
            }
        }
    }

    private func orphaned(_ lock: DLMLock, hold: Bool) {
        let (ls, lkid, node) = (lock.lockspace, lock.lkid, node)
        node.apiCancel(lockspace: ls, lkid: lkid).whenSuccess { cancelled in
            if !cancelled && (hold || lock.status.lastResult == .granted) && !lock.isReleased {
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

    private func release(lvb: [UInt8]?) {
        guard let h = held else {
            earlyRelease = .some(lvb)
            return
        }
        guard !releasing else { return }
        releasing = true
        if waiting != nil {
            // Not granted yet: cancel (the completion then reports the cancel as "failed" and
            // closes); if the grant wins the race, unlock (the observer reports "unlocked").
            node.apiCancel(lockspace: h.lockspace, lkid: h.lkid).whenSuccess { [node] cancelled in
                if !cancelled {
                    node.apiUnlock(lockspace: h.lockspace, lkid: h.lkid, flags: lvb == nil ? [] : .valBlk, lvb: lvb)
                        .whenComplete { _ in }
                }
            }
            return
        }
        node.apiUnlock(lockspace: h.lockspace, lkid: h.lkid, flags: lvb == nil ? [] : .valBlk, lvb: lvb)
            .whenFailure { [self] e in
                releasing = false
                var r = LockReply.failure(e, lockspace: h.lockspace, lkid: h.lkid)
                r.event = "failed"
                write(r.json)
            }
        // Success: the observer installed at the grant writes "unlocked" and closes.
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
