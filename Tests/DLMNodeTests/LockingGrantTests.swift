import DLMTransport
import Testing

@testable import DLMNode

/// A table row: set up a resource, run one step, check the result (and optionally more).
struct GrantCase: Sendable, CustomTestStringConvertible {
    let name: String
    let setup: [LockStep]
    let step: LockStep
    let result: LockResult
    var grants: [UInt32] = []
    var basts: [String]? = nil
    var verify: (@Sendable (Resource, LockOutcome) -> Void)? = nil
    var testDescription: String { name }
}

@Suite("Locking grant rules")
struct LockingGrantTests {
    // MARK: - locking.md §2.5 rules, one or more rows each

    static let ruleCases: [GrantCase] = [
        GrantCase(
            name: "1 EXPEDITE NL granted ahead of waiters", setup: [.request(1, .ex), .request(2, .pr)],
            step: .request(3, .nl, .expedite), result: .granted),
        GrantCase(
            name: "9 plain NL waits behind waiters", setup: [.request(1, .ex), .request(2, .pr)],
            step: .request(3, .nl), result: .queued),
        GrantCase(
            name: "2 grant queue conflict", setup: [.request(1, .pr)], step: .request(2, .ex), result: .queued),
        GrantCase(
            name: "3 convert queue granted-mode conflict",
            setup: [.request(1, .cr), .request(2, .pr), .convert(2, .ex)],
            step: .request(3, .cw), result: .queued),
        GrantCase(
            name: "5 in-place conversion jumps queued conversions",
            setup: [.request(1, .cr), .request(2, .nl), .request(3, .nl), .convert(2, .ex)],
            step: .convert(3, .cr), result: .granted,
            verify: { r, _ in #expect(r.ids(.convert) == [2]) }),
        GrantCase(
            name: "6 QUECVT queues behind conversions",
            setup: [.request(1, .cr), .request(2, .nl), .request(3, .nl), .convert(2, .ex)],
            step: .convert(3, .cr, .queCvt), result: .queued,
            verify: { r, _ in #expect(r.ids(.convert) == [2, 3]) }),
        GrantCase(
            name: "6 QUECVT granted with empty convert queue", setup: [.request(1, .cr), .request(3, .nl)],
            step: .convert(3, .cr, .queCvt), result: .granted),
        GrantCase(
            name: "7 NOORDER request skips waiters", setup: [.request(1, .cr), .request(2, .ex)],
            step: .request(3, .cr, .noOrder), result: .granted),
        GrantCase(
            name: "9 without NOORDER a compatible request waits", setup: [.request(1, .cr), .request(2, .ex)],
            step: .request(3, .cr), result: .queued),
        GrantCase(
            name: "8 first conversion granted when its blocker leaves",
            setup: [.request(1, .cr), .request(2, .nl), .convert(2, .ex)],
            step: .unlock(1), result: .unlocked, grants: [2]),
        GrantCase(
            name: "9 new request with empty queues", setup: [.request(1, .pr)], step: .request(2, .pr),
            result: .granted),
        GrantCase(
            name: "9 new request waits while conversions are queued",
            setup: [.request(1, .cr), .request(2, .nl), .convert(2, .ex)],
            step: .request(3, .nl), result: .queued),
        GrantCase(
            name: "10 waiters granted in order", setup: [.request(1, .ex), .request(2, .pr), .request(3, .pr)],
            step: .unlock(1), result: .unlocked, grants: [2, 3]),
        GrantCase(
            name: "10 waiter not granted while a conversion is queued",
            setup: [.request(5, .nl), .request(1, .pr), .request(2, .pr), .convert(2, .ex), .request(3, .nl)],
            step: .unlock(5), result: .unlocked, grants: []),
        GrantCase(
            name: "10 conversions are served before waiters",
            setup: [.request(1, .ex), .request(2, .nl), .request(3, .pr), .convert(2, .pr, .queCvt)],
            step: .unlock(1), result: .unlocked, grants: [2, 3]),
    ]

    @Test("grant rules (§2.5)", arguments: ruleCases)
    func rules(_ c: GrantCase) { Self.check(c) }

    static func check(_ c: GrantCase) {
        var r = Resource.testResource()
        r.run(c.setup)
        let outcome = r.run(c.step)
        #expect(outcome.result == c.result)
        #expect(outcome.grants == c.grants)
        if let basts = c.basts { #expect(outcome.basts == basts) }
        c.verify?(r, outcome)
        #expect(r.invariantViolations() == [])
    }

    @Test("rule 4: conversion order ignored in the recovery pass", arguments: [false, true])
    func recoveryPass(recover: Bool) {
        var r = Resource.testResource()
        var g = LockEntry(id: 1, mode: .cr)
        g.grantedMode = .cr
        g.requestedMode = .iv
        r.insert(g, status: .granted)
        for (id, mode) in [(UInt32(2), LockMode.ex), (3, .pr)] {
            var c = LockEntry(id: id, mode: mode)
            c.grantedMode = .nl
            r.insert(c, status: .convert)
        }
        r.recoverGrant = recover
        let effects = r.grantPendingLocks()
        let granted = effects.compactMap { if case .grant(let l) = $0 { return l.id } else { return nil } }
        #expect(granted == (recover ? [3] : []))
    }

    // MARK: - Conversions (§2.4)

    static let modes: [LockMode] = [.nl, .cr, .cw, .pr, .pw, .ex]

    @Test("every conversion on an otherwise empty resource", arguments: modes, modes)
    func conversionAlone(from: LockMode, to: LockMode) {
        var r = Resource.testResource()
        r.run(.request(1, from))
        let o = r.run(.convert(1, to))
        #expect(o.result == .granted)
        #expect(o.lock?.grantedMode == to && o.lock?.requestedMode == .iv && o.lock?.status == .granted)
        #expect(o.suppressReply == LockMode.isDownConversion(granted: from, requested: to))
    }

    @Test("conversion next to a PR holder", arguments: modes, modes)
    func conversionAgainstHolder(from: LockMode, to: LockMode) {
        var r = Resource.testResource()
        r.run(.request(1, .pr))
        guard r.run(.request(2, from)).result == .granted else { return }  // from incompatible with PR
        let o = r.run(.convert(2, to))
        #expect(o.result == (to.isCompatible(with: .pr) ? .granted : .queued))
        #expect(r.invariantViolations() == [])
    }

    @Test func convertOfQueuedLockIsBusy() {
        var r = Resource.testResource()
        r.run([.request(1, .ex), .request(2, .pr)])
        let o = r.run(.convert(2, .cr, .valBlk))
        #expect(o.result == .busy)
        #expect(o.lock?.flags == .valBlk, "flag intake happens before the status check")
        #expect(r.run(.convert(9, .cr)).result == .notFound)
    }

    // MARK: - Flags

    static let flagCases: [GrantCase] = [
        GrantCase(
            name: "NOQUEUE request fails and is not kept", setup: [.request(1, .ex)],
            step: .request(2, .pr, .noQueue), result: .wouldBlock,
            verify: { r, o in
                #expect(r.lock(2) == nil)
                #expect(o.lock?.status == nil && o.lock?.grantedMode == .iv)
            }),
        GrantCase(
            name: "NOQUEUE conversion fails; lock stays granted and keeps rqmode (KQ)",
            setup: [.request(1, .pr), .request(2, .pr)], step: .convert(2, .ex, .noQueue), result: .wouldBlock,
            verify: { r, _ in
                let l = r.lock(2)!
                #expect(l.status == .granted && l.grantedMode == .pr && l.requestedMode == .ex)
            }),
        GrantCase(
            name: "HEADQUE request goes to the head of the wait queue",
            setup: [.request(1, .ex), .request(2, .pr)], step: .request(3, .cr, .headQue), result: .queued,
            verify: { r, _ in #expect(r.ids(.waiting) == [3, 2]) }),
        GrantCase(
            name: "HEADQUE conversion goes to the head of the convert queue",
            setup: [.request(1, .pr), .request(2, .nl), .request(3, .nl), .convert(2, .ex)],
            step: .convert(3, .pw, .headQue), result: .queued,
            verify: { r, _ in #expect(r.ids(.convert) == [3, 2]) }),
        GrantCase(
            name: "ALTPR grants PR with ALTMODE", setup: [.request(1, .pr)], step: .request(2, .ex, .altPR),
            result: .granted,
            verify: { _, o in
                #expect(o.lock?.grantedMode == .pr && o.lock?.statusFlags == .alternateMode)
            }),
        GrantCase(
            name: "ALTCW grants CW with ALTMODE", setup: [.request(1, .cw)], step: .request(2, .ex, .altCW),
            result: .granted,
            verify: { _, o in #expect(o.lock?.grantedMode == .cw && o.lock?.statusFlags == .alternateMode) }),
        GrantCase(
            name: "ALTPR wins over ALTCW (ALTCW not tried)", setup: [.request(1, .cw)],
            step: .request(2, .ex, [.altPR, .altCW]), result: .queued,
            verify: { r, _ in #expect(r.lock(2)?.requestedMode == .ex && r.lock(2)?.statusFlags == []) }),
        GrantCase(
            name: "ALTPR applies in the grant pass", setup: [.request(1, .pw), .request(2, .ex, .altPR)],
            step: .convert(1, .pr), result: .granted, grants: [2],
            verify: { r, _ in
                #expect(r.lock(2)?.grantedMode == .pr && r.lock(2)?.statusFlags == .alternateMode)
            }),
        GrantCase(
            name: "ALTPR conversion granted as PR", setup: [.request(1, .pr), .request(2, .nl)],
            step: .convert(2, .ex, .altPR), result: .granted,
            verify: { r, _ in #expect(r.lock(2)?.grantedMode == .pr) }),
        GrantCase(
            name: "ALTCW equal to the held mode: granted in place", setup: [.request(1, .cw), .request(2, .cr)],
            step: .convert(1, .ex, .altCW), result: .granted,
            verify: { r, o in
                #expect(o.lock?.grantedMode == .cw && o.lock?.statusFlags == .alternateMode)
                #expect(r.ids(.granted) == [2, 1], "same-mode grant keeps its place")
            }),
        GrantCase(
            name: "queued ALTCW conversion granted in its held mode leaves the convert queue (kernel livelocks)",
            setup: [
                .request(1, .cw), .request(2, .nl), .request(4, .cr), .convert(2, .ex),
                .convert(1, .ex, [.queCvt, .altCW, .noDlckWt]),
            ],
            step: .cancel(2), result: .cancelled, grants: [1],
            verify: { r, _ in
                let l = r.lock(1)!
                #expect(l.status == .granted && l.grantedMode == .cw && l.requestedMode == .iv && r.convertQueue.isEmpty)
            }),
        GrantCase(
            name: "NODLCKBLK changes nothing (not implemented by the kernel)",
            setup: [.request(1, .pr), .request(2, .pr), .convert(1, .ex)],
            step: .convert(2, .ex, .noDlckBlk), result: .deadlock),
        GrantCase(
            name: "PERSISTENT/ORPHAN/FORCEUNLOCK make no difference on the master",
            setup: [.request(1, .pr)], step: .request(2, .pr, [.persistent, .orphan, .forceUnlock]),
            result: .granted),
        GrantCase(
            name: "FORCEUNLOCK unlocks a waiting lock", setup: [.request(1, .ex), .request(2, .ex)],
            step: .unlock(2, .forceUnlock), result: .unlocked,
            verify: { r, _ in #expect(r.lockCount == 1) }),
        GrantCase(
            name: "plain unlock of a waiting lock is honoured by the master (KQ)",
            setup: [.request(1, .ex), .request(2, .ex)], step: .unlock(2), result: .unlocked),
    ]

    @Test("flags", arguments: flagCases)
    func flags(_ c: GrantCase) { Self.check(c) }

    // MARK: - Conversion deadlock (§2.6)

    static let deadlockCases: [GrantCase] = [
        GrantCase(
            name: "PR→EX against a queued PR→EX: -EDEADLK, reverted",
            setup: [.request(1, .pr), .request(2, .pr), .convert(1, .ex)],
            step: .convert(2, .ex), result: .deadlock,
            verify: { r, o in
                #expect(o.lock?.status == .granted && o.lock?.grantedMode == .pr && o.lock?.requestedMode == .iv)
                #expect(r.ids(.convert) == [1])
            }),
        GrantCase(
            name: "ahead rule: our granted mode blocks an earlier conversion (NL→EX, then CR→PW)",
            setup: [.request(1, .nl), .request(2, .cr), .request(3, .pr), .convert(1, .ex)],
            step: .convert(2, .pw), result: .deadlock),
        GrantCase(
            name: "a grantable conversion is never a deadlock (in place, NL→EX queued, PR→PW)",
            setup: [.request(1, .nl), .request(2, .pr), .request(3, .cr), .convert(1, .ex)],
            step: .convert(2, .pw), result: .granted),
        GrantCase(
            name: "no deadlock when our mode does not block the earlier conversion",
            setup: [.request(1, .cr), .request(2, .cr), .request(3, .pr), .convert(1, .pw)],
            step: .convert(2, .pw), result: .queued),
        GrantCase(
            name: "NOQUEUE skips deadlock detection", setup: [.request(1, .pr), .request(2, .pr), .convert(1, .ex)],
            step: .convert(2, .ex, .noQueue), result: .wouldBlock),
        GrantCase(
            name: "CONVDEADLK demotes to NL, lets the earlier conversion through, then queues",
            setup: [.request(1, .pr), .request(2, .pr), .convert(1, .ex)],
            step: .convert(2, .ex, .convDeadlk), result: .queued, grants: [1], basts: ["1:EX"],
            verify: { r, o in
                #expect(o.preReplyEffects.count == 1)
                let l = r.lock(2)!
                #expect(l.status == .convert && l.grantedMode == .nl && l.statusFlags.contains(.demoted))
            }),
        GrantCase(
            name: "CONVDEADLK without a deadlock just queues",
            setup: [.request(1, .pr), .request(2, .pr), .convert(1, .ex, .convDeadlk)],
            step: .unlock(2), result: .unlocked, grants: [1]),
        GrantCase(
            name: "CONVDEADLK: demoted, the earlier PR→CW granted, then this PR→CW granted from NL",
            setup: [.request(1, .pr), .request(2, .pr), .convert(1, .cw)],
            step: .convert(2, .cw, .convDeadlk), result: .granted, grants: [1],
            verify: { r, o in
                #expect(o.preReplyEffects.count == 1)
                let l = r.lock(2)!
                #expect(l.grantedMode == .cw && l.statusFlags == .demoted && l.status == .granted)
            }),
        GrantCase(
            name: "NODLCKWT queues instead of -EDEADLK",
            setup: [.request(1, .pr), .request(2, .pr), .convert(1, .ex)],
            step: .convert(2, .ex, .noDlckWt), result: .queued,
            verify: { r, _ in #expect(r.ids(.convert) == [1, 2]) }),
    ]

    @Test("conversion deadlock", arguments: deadlockCases)
    func deadlocks(_ c: GrantCase) { Self.check(c) }

    @Test func convDeadlkDemotedThenGrantedInPlace() {
        // 3 holds PR and wants CR (a down-conversion, always granted); 2 (PR→EX) is queued behind
        // 1's CR. A PR→EX with CONVDEADLK on 4 is demoted, which frees nothing for 2 (1's CR blocks).
        var r = Resource.testResource()
        r.run([.request(1, .cr), .request(2, .pr), .request(4, .pr), .convert(2, .ex)])
        let o = r.run(.convert(4, .ex, .convDeadlk))
        #expect(o.result == .queued)
        #expect(o.grants == [])
        #expect(r.lock(4)?.grantedMode == .nl)
        #expect(r.ids(.convert) == [2, 4])
        #expect(r.invariantViolations() == [])
    }

    @Test func noDlckWtGetsSelfBastInGrantPass() {
        var r = Resource.testResource()
        r.run([.request(9, .nl), .request(1, .pr), .request(2, .pr, bast: false), .convert(1, .ex)])
        #expect(r.run(.convert(2, .ex, .noDlckWt)).result == .queued)
        let o = r.run(.unlock(9))
        // Lock 2 asked for no BASTs but still gets its own rqmode (kernel: queue_bast unconditionally).
        #expect(o.basts == ["2:EX"])
        #expect(r.lock(2)?.highBast == .ex)
        // A second pass does not repeat it.
        r.run(.request(8, .nl))
        #expect(r.run(.unlock(8)).basts == [])
    }

    @Test("deadlock detection table", arguments: [
        // (queue: [(gr, rq)], candidate index or nil for "not queued", candidate (gr, rq), expected)
        ([(LockMode.nl, LockMode.ex)], Int?.none, (LockMode.pr, LockMode.ex), true),
        ([(.nl, .ex)], nil, (.nl, .ex), false),
        ([(.cr, .pw)], nil, (.cr, .pw), false),
        // candidate first on the queue, a lock behind it: only mutual blocking counts
        ([(.pr, .ex), (.nl, .ex)], 0, (.pr, .ex), false),
        ([(.pr, .ex), (.pr, .ex)], 0, (.pr, .ex), true),
        // candidate second: the lock ahead is blocked by the candidate's mode
        ([(.nl, .ex), (.cr, .cw)], 1, (.cr, .cw), true),
    ] as [([(LockMode, LockMode)], Int?, (LockMode, LockMode), Bool)])
    func deadlockDetection(queue: [(LockMode, LockMode)], position: Int?, candidate: (LockMode, LockMode), expected: Bool) {
        var r = Resource.testResource()
        for (i, (gr, rq)) in queue.enumerated() {
            var l = LockEntry(id: UInt32(i + 1), mode: rq)
            l.grantedMode = gr
            r.insert(l, status: .convert)
        }
        var c = LockEntry(id: position.map { UInt32($0 + 1) } ?? 99, mode: candidate.1)
        c.grantedMode = candidate.0
        #expect(r.conversionDeadlock(c) == expected)
    }

    // MARK: - Cancel and unlock

    @Test func cancelConvertingLockRevertsAndGrantsOthers() {
        var r = Resource.testResource()
        r.run([.request(1, .pr), .request(2, .pr), .convert(1, .ex), .request(3, .cw)])
        // 3 waits behind 1's conversion (1 still holds PR, which blocks CW anyway).
        let o = r.run(.cancel(1))
        #expect(o.result == .cancelled)
        #expect(o.lock?.status == .granted && o.lock?.grantedMode == .pr && o.lock?.requestedMode == .iv)
        #expect(r.invariantViolations(.init(checkFixpoint: true)) == [])
    }

    @Test func cancelWaitingLockRemovesItAndGrantsBehind() {
        var r = Resource.testResource()
        r.run([.request(1, .pr), .request(2, .ex), .request(3, .pr)])
        let o = r.run(.cancel(2))
        #expect(o.result == .cancelled && o.lock?.status == nil && o.lock?.grantedMode == .iv)
        #expect(o.grants == [3])
        #expect(r.lock(2) == nil)
    }

    @Test func cancelGrantedLockIsMoot() {
        var r = Resource.testResource()
        r.run([.request(1, .pr), .request(2, .ex)])
        let o = r.run(.cancel(1))
        #expect(o.result == .granted && o.effects.isEmpty)
        #expect(r.run(.cancel(7)).result == .notFound)
        #expect(r.run(.unlock(7)).result == .notFound)
    }

    @Test func grantQueueOrderFollowsKernelQuirk() {
        var r = Resource.testResource()
        r.run([.request(1, .nl), .request(2, .cr), .request(3, .pr)])
        // lkb_add_ordered compares rqmode (IV on granted locks): every new grant goes to the head.
        #expect(r.ids(.granted) == [3, 2, 1])
        // A conversion refused with -EAGAIN keeps rqmode EX and is then skipped by the insertion.
        r.run(.convert(3, .ex, .noQueue))
        r.run(.request(4, .cr))
        #expect(r.ids(.granted) == [3, 4, 2, 1])
    }
}
