import DLMTransport
import NIOConcurrencyHelpers
import NIOCore

/// A lock taken through `DLMLockspace`: the lock id and the lock status block (`struct dlm_lksb`)
/// as the last completion left it, plus the lock's blocking callbacks.
///
/// A handle is a view: dropping it does not release the lock (as with libdlm, the lock belongs to
/// the node until `unlock`). Its properties can be read from any thread; they change when a
/// completion arrives on the node's event loop.
public final class DLMLock: Sendable, CustomStringConvertible {
    /// The lock status block after the most recent completion.
    public struct Status: Sendable, Equatable {
        /// The granted mode (`lkb_grmode`): IV until first granted, and after the end of life.
        public var mode: LockMode
        /// The mode of the request or conversion in flight; nil when nothing is outstanding.
        public var requestedMode: LockMode?
        /// `sb_flags`: DEMOTED, VALNOTVALID, ALTMODE, reset by every call.
        public var flags: LockStatusFlags
        /// The lock's value block buffer (`sb_lvbptr`, lvblen bytes) or nil without one.
        public var lvb: [UInt8]?
        /// `sb_status` of the last completion (nil before the first).
        public var lastResult: LockResult?
        /// The lock id is no longer valid (unlocked, cancelled or refused request, or the node left).
        public var released: Bool
        /// The mode of the last blocking callback since the last grant (nil: none).
        public var blockedMode: LockMode?
    }

    /// The lockspace's name.
    public let lockspace: String
    /// The resource name (1…64 bytes).
    public let resource: [UInt8]
    /// `sb_lkid`: this node's id of the lock.
    public let lkid: UInt32
    /// Blocking callbacks ("BASTs"): each element is the mode another request waits for. The stream
    /// keeps the 64 newest undelivered callbacks and finishes when the lock's life ends.
    public let blockingCallbacks: AsyncStream<LockMode>

    let state: NIOLockedValueBox<Status>
    /// The completion of the most recent lock/convert call.
    let pending: NIOLockedValueBox<EventLoopFuture<LockManager.Completion>?>

    init(lockspace: String, resource: [UInt8], lkid: UInt32, requested: LockMode, lvb: [UInt8]?,
         blockingCallbacks: AsyncStream<LockMode>) {
        self.lockspace = lockspace
        self.resource = resource
        self.lkid = lkid
        self.blockingCallbacks = blockingCallbacks
        self.state = NIOLockedValueBox(Status(mode: .iv, requestedMode: requested, flags: [], lvb: lvb,
                                              lastResult: nil, released: false, blockedMode: nil))
        self.pending = NIOLockedValueBox(nil)
    }

    /// A snapshot of the status block.
    public var status: Status { state.withLockedValue { $0 } }
    /// The granted mode (IV when not granted).
    public var mode: LockMode { status.mode }
    /// The value block as the last completion left it (the resource's value after a grant that reads it).
    public var lvb: [UInt8]? { status.lvb }
    /// `sb_flags`.
    public var statusFlags: LockStatusFlags { status.flags }
    /// `DLM_SBF_VALNOTVALID`: the resource's value block is marked invalid.
    public var valueNotValid: Bool { status.flags.contains(.valueNotValid) }
    /// `DLM_SBF_DEMOTED`: the granted mode was lowered to NL to resolve a conversion deadlock.
    public var demoted: Bool { status.flags.contains(.demoted) }
    /// `DLM_SBF_ALTMODE`: granted in the alternate mode (ALTPR/ALTCW).
    public var alternateMode: Bool { status.flags.contains(.alternateMode) }
    /// The lock id is no longer valid.
    public var isReleased: Bool { status.released }
    /// The resource name as text (invalid UTF-8 repaired).
    public var resourceName: String { String(decoding: resource, as: UTF8.self) }

    /// Waits for the outcome of the most recent request or conversion: returns once it is granted,
    /// throws its `DLMError` (EAGAIN, EDEADLK, DLM_ECANCEL, ...) otherwise. Returns at once when
    /// nothing was requested through this handle.
    public func wait() async throws {
        guard let future = pending.withLockedValue({ $0 }) else { return }
        _ = try await future.get()
    }

    public var description: String {
        let s = status
        var text = "\(lockspace)/\(resourceName) lkid \(String(lkid, radix: 16)) \(s.mode)"
        if let r = s.requestedMode { text += " (\(r))" }
        if s.released { text += " released" }
        return text
    }

    // MARK: - Updates (on the event loop)

    func started(_ requested: LockMode, completion: EventLoopFuture<LockManager.Completion>, lvb: [UInt8]?) {
        state.withLockedValue { s in
            s.requestedMode = requested
            s.flags = []
            if let lvb { s.lvb = lvb }
        }
        pending.withLockedValue { $0 = completion }
    }

    func completed(_ c: LockManager.Completion) {
        state.withLockedValue { s in
            s.mode = c.mode
            s.flags = c.statusFlags
            if let lvb = c.lvb { s.lvb = lvb }
            s.lastResult = c.status
            switch c.status {
            case .granted:
                s.requestedMode = nil
                s.blockedMode = nil
            case .wouldBlock, .deadlock, .busy, .notFound, .invalid, .cancelled, .unlocked:
                s.requestedMode = nil
            case .queued:
                break
            }
            if c.endOfLife {
                s.released = true
                s.requestedMode = nil
            }
        }
    }

    func blocked(_ mode: LockMode) {
        state.withLockedValue { $0.blockedMode = mode }
    }

    func ended() {
        state.withLockedValue { s in
            s.released = true
            s.requestedMode = nil
        }
    }
}
