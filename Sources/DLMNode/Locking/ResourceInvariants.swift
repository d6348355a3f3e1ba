import DLMTransport

/// The invariants of locking.md §9 that one master resource can check about itself. Returns a
/// description of every violation (empty = all hold). Used by tests and simulations after every step.
extension Resource {
    public struct InvariantOptions: Sendable {
        /// §9.4: also require that no queued lock is grantable (only meaningful right after an unlock,
        /// a cancel that cancelled something, a granted conversion, or a recovery grant pass).
        public var checkFixpoint = false
        public init(checkFixpoint: Bool = false) { self.checkFixpoint = checkFixpoint }
    }

    public func invariantViolations(_ options: InvariantOptions = InvariantOptions()) -> [String] {
        var problems: [String] = []

        // §9.1 compatibility of everything holding a mode (grant and convert queues).
        let holders = grantQueue + convertQueue
        for i in holders.indices {
            for j in holders.indices where j > i {
                if !holders[i].grantedMode.isCompatible(with: holders[j].grantedMode) {
                    problems.append("incompatible holders \(holders[i]) / \(holders[j])")
                }
            }
        }

        // §9.2 queue/state consistency; §16 unique ids.
        var seen = Set<UInt32>()
        for status in [LockStatus.granted, .convert, .waiting] {
            for lock in queue(status) {
                if !seen.insert(lock.id).inserted { problems.append("lock \(lock.id) queued twice") }
                if lock.status != status { problems.append("\(lock) on the \(status) queue") }
                switch status {
                case .waiting:
                    if lock.grantedMode != .iv || lock.requestedMode == .iv { problems.append("bad waiting \(lock)") }
                case .convert:
                    if lock.grantedMode == .iv || lock.requestedMode == .iv { problems.append("bad converting \(lock)") }
                case .granted:
                    // KQ: a conversion refused with -EAGAIN keeps its rqmode on the grant queue.
                    if lock.grantedMode == .iv { problems.append("bad granted \(lock)") }
                }
            }
        }

        // §9.5 no two conversions blocking each other, unless one has NODLCKWT.
        for i in convertQueue.indices {
            for j in convertQueue.indices where j > i {
                let a = convertQueue[i]
                let b = convertQueue[j]
                if !a.grantedMode.isCompatible(with: b.requestedMode) && !b.grantedMode.isCompatible(with: a.requestedMode)
                    && !a.flags.contains(.noDlckWt) && !b.flags.contains(.noDlckWt) && !recoverGrant
                {
                    problems.append("conversion deadlock on the queue: \(a) / \(b)")
                }
            }
        }

        // §9.15 mode flags.
        for lock in allLocks {
            if lock.statusFlags.contains(.alternateMode) && lock.status == .granted {
                let ok =
                    (lock.flags.contains(.altPR) && lock.grantedMode == .pr)
                    || (lock.flags.contains(.altCW) && lock.grantedMode == .cw)
                if !ok { problems.append("ALTMODE without ALTPR/ALTCW grant: \(lock)") }
            }
            if lock.statusFlags.contains(.demoted) && !lock.flags.contains(.convDeadlk) {
                problems.append("DEMOTED without CONVDEADLK: \(lock)")
            }
        }

        // §9.4 fixpoint.
        if options.checkFixpoint {
            for lock in convertQueue + waitQueue {
                var probe = lock
                if canBeGranted(&probe, now: false, recover: recoverGrant).grant {
                    problems.append("grantable but still queued: \(lock)")
                }
            }
        }
        return problems
    }
}
