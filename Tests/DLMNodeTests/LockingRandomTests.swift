import DLMTransport
import Testing

@testable import DLMNode

struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Many random operations on one resource, as kernel owners would issue them (arguments valid per
/// `LockValidation`), checking locking.md §9 (1, 2, 4, 5, 11/12 per resource, 13, 14, 15) after every step.
@Suite("Locking randomized")
struct LockingRandomTests {
    static let modes: [LockMode] = [.nl, .cr, .cw, .pr, .pw, .ex]

    @Test("random operations keep the invariants", arguments: 0..<24)
    func randomOperations(seed: Int) {
        var rng = SplitMix64(state: UInt64(seed) &* 7919 &+ 1)
        var r = Resource.testResource()
        var outstanding = Set<UInt32>()  // requests/conversions not yet answered
        var trace: [String] = []
        let ids: [UInt32] = Array(1...9)
        var failures = 0

        func flags(_ candidates: [LockFlags]) -> LockFlags {
            var f: LockFlags = []
            for c in candidates where Int.random(in: 0..<6, using: &rng) == 0 { f.insert(c) }
            return f
        }

        for step in 0..<1500 {
            let id = ids.randomElement(using: &rng)!
            let before = r
            var outcome: LockOutcome
            var checkFixpoint = false
            let lvb = (0..<8).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var expectWrite = false

            if let lock = r.lock(id) {
                let choice = Int.random(in: 0..<10, using: &rng)
                if lock.status == .granted && !outstanding.contains(id) && choice < 6 {
                    let mode = Self.modes.randomElement(using: &rng)!
                    var f = flags([.noQueue, .convDeadlk, .noDlckWt, .queCvt, .headQue, .noOrder, .altPR, .altCW, .valBlk, .ivValBlk, .noQueueBast])
                    f.insert(.convert)
                    if f.contains(.convDeadlk) { f.remove(.noQueue) }
                    if f.contains(.queCvt) && !LockMode.queuedConversionAllowed(granted: lock.grantedMode, requested: mode) {
                        f.remove(.queCvt)
                    }
                    #expect(LockValidation.checkLockArguments(mode: mode, flags: f, hasLVB: true) == nil)
                    if !lock.isMasterCopy { #expect(LockValidation.checkConversion(of: lock, to: mode, flags: f) == nil) }
                    outcome = r.convert(id, to: mode, flags: f, lvb: lvb)
                    // The table row/column the grant really used: after a CONVDEADLK demotion the
                    // lock converts from NL; with ALTPR/ALTCW it converts to the alternate mode.
                    let from: LockMode = outcome.lock?.statusFlags.contains(.demoted) == true ? .nl : lock.grantedMode
                    let op = LockMode.lvbOperation(granted: from, requested: outcome.lock?.grantedMode ?? mode)
                    trace.append("cvt \(id) \(mode) \(flagNames(f.rawValue, LockFlags.names)) → \(outcome.result)")
                    expectWrite = outcome.result == .granted && op == .write && f.contains(.valBlk) && !f.contains(.ivValBlk)
                    switch outcome.result {
                    case .granted:
                        checkFixpoint = true
                        #expect(outcome.lock?.grantedMode == mode || outcome.lock?.statusFlags.contains(.alternateMode) == true)
                    case .queued: outstanding.insert(id)
                    case .wouldBlock, .deadlock: break
                    default: Issue.record("unexpected convert result \(outcome.result)")
                    }
                } else if choice < 8 || lock.status == .granted {
                    let f = flags([.valBlk, .ivValBlk, .forceUnlock])
                    expectWrite = lock.grantedMode.rawValue >= LockMode.pw.rawValue
                        && lock.flags.union(f).contains(.valBlk) && !lock.flags.union(f).contains(.ivValBlk)
                    outcome = r.unlock(id, flags: f, lvb: lvb)
                    trace.append("unlock \(id) → \(outcome.result)")
                    #expect(outcome.result == .unlocked)
                    outstanding.remove(id)
                    checkFixpoint = true
                } else {
                    outcome = r.cancel(id, flags: .cancel)
                    trace.append("cancel \(id) → \(outcome.result)")
                    #expect(outcome.result == (outstanding.contains(id) ? .cancelled : .granted))
                    if outcome.result == .cancelled { checkFixpoint = true }
                    outstanding.remove(id)
                }
            } else {
                let mode = Self.modes.randomElement(using: &rng)!
                var f = flags([.noQueue, .noQueueBast, .headQue, .noOrder, .altPR, .altCW, .valBlk, .expedite])
                if f.contains(.expedite) && (mode != .nl || f.contains(.noQueue)) { f.remove(.expedite) }
                #expect(LockValidation.checkLockArguments(mode: mode, flags: f, hasLVB: true) == nil)
                let wantsBast = Bool.random(using: &rng)
                outcome = r.request(LockEntry(id: id, nodeID: Int32.random(in: 0...3, using: &rng), mode: mode, flags: f, lvb: lvb, wantsBlocking: wantsBast))
                trace.append("req \(id) \(mode) \(flagNames(f.rawValue, LockFlags.names)) → \(outcome.result)")
                switch outcome.result {
                case .granted, .wouldBlock: break
                case .queued: outstanding.insert(id)
                default: Issue.record("unexpected request result \(outcome.result)")
                }
            }

            // Effects: every grant answers an outstanding request exactly once; BAST sanity (§9.13).
            for effect in outcome.allEffects {
                switch effect {
                case .grant(let lock):
                    if outstanding.remove(lock.id) == nil { Issue.record("grant of \(lock.id) which was not waiting") }
                    #expect(lock.status == .granted && lock.requestedMode == .iv)
                case .blockingAST(let lock, let mode):
                    let selfBast = lock.flags.contains(.noDlckWt) && lock.status == .convert && mode == lock.requestedMode
                    #expect(lock.status == .granted || lock.status == .convert)
                    #expect(lock.wantsBlocking || selfBast)
                    let pairCase = LockMode.isMiddleConversion(granted: lock.grantedMode, requested: mode)
                    #expect(!lock.grantedMode.isCompatible(with: mode) || pairCase || selfBast || (lock.grantedMode == .pr && mode.rawValue >= LockMode.cw.rawValue))
                }
            }

            // Outstanding ⇔ on the convert or wait queue.
            let queued = Set((r.convertQueue + r.waitQueue).map(\.id))
            if queued != outstanding {
                Issue.record("queued \(queued.sorted()) vs outstanding \(outstanding.sorted())")
            }
            // §9.14 LVB sequence.
            let delta = r.lvbSeq &- before.lvbSeq
            #expect(delta == (expectWrite ? 1 : 0), "lvbseq delta at step \(step): \(trace.last ?? "")")

            let problems = r.invariantViolations(.init(checkFixpoint: checkFixpoint))
            if !problems.isEmpty {
                Issue.record("step \(step): \(problems)\n\(trace.suffix(12).joined(separator: "\n"))\n\(r.allLocks)")
                failures += 1
            }
            if failures > 3 { break }
        }

        // Drain: unlock everything; every request is then answered and the resource empty.
        for lock in r.allLocks {
            let o = r.unlock(lock.id)
            outstanding.remove(lock.id)
            for effect in o.allEffects {
                if case .grant(let l) = effect, outstanding.remove(l.id) == nil { Issue.record("drain grant \(l.id)") }
            }
        }
        #expect(r.isEmpty && outstanding.isEmpty)
    }
}
