import DLMTransport

/// The callbacks of one lock on its owner, queued in generation order and coalesced the way the
/// kernel does since the unbounded callback list (≈6.4, `dlm_enqueue_lkb_callback`); nothing is ever
/// dropped for lack of room (the 6.1 six-entry limit is not reproduced, design.md §11.7):
/// * a blocking callback is not queued when its mode is compatible with the mode of the last
///   completion queued (e.g. after an unlock, mode IV, or a down-conversion);
/// * nor when the callback queued just before it is a blocking callback for the same mode, or for a
///   higher mode that is above PR (the PR/CW inversion keeps both).
public struct CallbackQueue: Sendable, Equatable {
    public enum Callback: Sendable, Equatable {
        /// The completion ("AST"): status, the lock's granted mode at that time, and `sb_flags`.
        case completion(LockResult, mode: LockMode, flags: LockStatusFlags)
        /// The blocking callback with the mode somebody is waiting for.
        case blocking(LockMode)
    }

    /// The coalescing rules and the state they read, without the queue itself: a lock whose
    /// callbacks are delivered as soon as they are queued (the lock manager's case) keeps only this.
    public struct Coalescing: Sendable, Equatable {
        /// `lkb_last_cast`'s mode: the granted mode carried by the last completion admitted.
        public private(set) var lastCompletionMode: LockMode?
        /// The mode of the last callback admitted when it was a blocking callback (nil after a
        /// completion).
        public private(set) var lastBlockingMode: LockMode?

        public init() {}

        /// Whether `callback` is queued (false: coalesced away); records it when it is.
        public mutating func admit(_ callback: Callback) -> Bool {
            switch callback {
            case .blocking(let mode):
                if let last = lastCompletionMode, mode.isCompatible(with: last) { return false }
                if let previous = lastBlockingMode {
                    if previous == mode { return false }
                    if previous.rawValue > mode.rawValue && previous.rawValue > LockMode.pr.rawValue { return false }
                }
                lastBlockingMode = mode
            case .completion(_, let mode, _):
                lastCompletionMode = mode
                lastBlockingMode = nil
            }
            return true
        }
    }

    public private(set) var pending: [Callback] = []
    private var coalescing = Coalescing()
    /// `lkb_last_cast`'s mode: the granted mode carried by the last completion queued.
    public var lastCompletionMode: LockMode? { coalescing.lastCompletionMode }
    /// `lkb_last_cb`: the last callback queued.
    public private(set) var lastQueued: Callback?

    public init() {}

    /// Queue a callback; returns false if it was coalesced away.
    @discardableResult
    public mutating func enqueue(_ callback: Callback) -> Bool {
        guard coalescing.admit(callback) else { return false }
        pending.append(callback)
        lastQueued = callback
        return true
    }

    /// The oldest undelivered callback.
    public mutating func dequeue() -> Callback? {
        pending.isEmpty ? nil : pending.removeFirst()
    }

    public var isEmpty: Bool { pending.isEmpty }
}
