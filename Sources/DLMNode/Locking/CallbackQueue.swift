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

    public private(set) var pending: [Callback] = []
    /// `lkb_last_cast`'s mode: the granted mode carried by the last completion queued.
    public private(set) var lastCompletionMode: LockMode?
    /// `lkb_last_cb`: the last callback queued.
    public private(set) var lastQueued: Callback?

    public init() {}

    /// Queue a callback; returns false if it was coalesced away.
    @discardableResult
    public mutating func enqueue(_ callback: Callback) -> Bool {
        switch callback {
        case .blocking(let mode):
            if let last = lastCompletionMode, mode.isCompatible(with: last) { return false }
            if case .blocking(let previous)? = lastQueued {
                if previous == mode { return false }
                if previous.rawValue > mode.rawValue && previous.rawValue > LockMode.pr.rawValue { return false }
            }
        case .completion(_, let mode, _):
            lastCompletionMode = mode
        }
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
