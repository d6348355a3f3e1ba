import DLMTransport
import Testing

@testable import DLMNode

@Suite("Locking LVB and blocking callbacks")
struct LockingLVBAndBastTests {
    static let v1: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
    static let v2: [UInt8] = [9, 9, 9, 9, 9, 9, 9, 9]

    /// Grant of a lock held in `from` (VALBLK, LVB v2) converting to `to`, on a resource whose LVB
    /// is v1 (seq 1): the table decides R, W or nothing, with the exact seq and flags.
    @Test("LVB transfer on conversion", arguments: LockingGrantTests.modes, LockingGrantTests.modes)
    func conversionTransfer(from: LockMode, to: LockMode) {
        var r = Resource.testResource()
        r.lvb = Self.v1
        r.lvbSeq = 1
        r.run(.request(1, from, .valBlk), lvb: [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(r.lock(1)?.lvb == Self.v1 && r.lock(1)?.lvbSeq == 1, "new request reads")
        let o = r.run(.convert(1, to, .valBlk), lvb: Self.v2)
        #expect(o.result == .granted)
        switch LockMode.lvbOperation(granted: from, requested: to) {
        case .read:
            #expect(o.lock?.lvb == Self.v1 && r.lvb == Self.v1 && r.lvbSeq == 1)
        case .write:
            #expect(r.lvb == Self.v2 && r.lvbSeq == 2 && o.lock?.lvbSeq == 2)
        case .none:
            #expect(o.lock?.lvb == Self.v2 && r.lvb == Self.v1 && r.lvbSeq == 1)
        }
    }

    @Test func writeThenReadAndSequence() {
        var r = Resource.testResource()
        r.run(.request(1, .ex, .valBlk), lvb: nil)
        #expect(r.lock(1)?.lvb == [UInt8](repeating: 0, count: 8), "zeroed buffer allocated for VALBLK")
        #expect(r.lvb == nil, "a new request never writes; nothing to read yet")
        r.run(.convert(1, .nl, .valBlk), lvb: Self.v1)
        #expect(r.lvb == Self.v1 && r.lvbSeq == 1)
        let reader = r.run(.request(2, .pr, .valBlk))
        #expect(reader.lock?.lvb == Self.v1 && reader.lock?.lvbSeq == 1)
        let noValBlk = r.run(.request(3, .pr), lvb: [7, 7, 7, 7, 7, 7, 7, 7])
        #expect(noValBlk.lock?.lvb == [7, 7, 7, 7, 7, 7, 7, 7], "no VALBLK: untouched")
        // Without VALBLK a W transition writes nothing and does not bump the sequence.
        r.run(.unlock(2))
        r.run(.unlock(3))
        r.run(.convert(1, .ex, []))
        r.run(.convert(1, .cr, []), lvb: Self.v2)
        #expect(r.lvb == Self.v1 && r.lvbSeq == 1)
    }

    @Test func shortLVBIsCopiedPartially() {
        var r = Resource.testResource()
        r.run(.request(1, .ex, .valBlk), lvb: Self.v2)
        r.run(.convert(1, .ex, .valBlk), lvb: [1, 2])
        #expect(r.lock(1)?.lvb == [1, 2, 9, 9, 9, 9, 9, 9])
    }

    @Test func ivvalblkInvalidatesAndReadersSeeValNotValid() {
        var r = Resource.testResource()
        r.run(.request(1, .pw, .valBlk))
        r.run(.convert(1, .nl, .valBlk), lvb: Self.v1)
        r.run(.convert(1, .pw, .valBlk))
        r.run(.convert(1, .cr, [.valBlk, .ivValBlk]), lvb: Self.v2)
        #expect(r.valueNotValid && r.lvb == Self.v1 && r.lvbSeq == 1, "invalidated, no write, no seq")
        #expect(r.lock(1)?.statusFlags == [], "W with IVVALBLK stops before the sbflag")
        let reader = r.run(.request(2, .cr, .valBlk))
        #expect(reader.lock?.statusFlags == .valueNotValid && reader.lock?.lvb == Self.v1)
        let plain = r.run(.request(3, .cr))
        #expect(plain.lock?.statusFlags == [], "R without VALBLK stops before the sbflag")
        let none = r.run(.convert(2, .nl, []))
        #expect(none.lock?.statusFlags == .valueNotValid, "'-' reaches the final check even without VALBLK")
        // The next real write clears it.
        r.run(.unlock(3))
        #expect(r.run(.convert(1, .ex, .valBlk)).result == .granted)
        r.run(.convert(1, .nl, .valBlk), lvb: Self.v2)
        #expect(!r.valueNotValid && r.lvbSeq == 2 && r.lvb == Self.v2)
    }

    @Test func invalidResourceWithoutBufferReturnsNothing() {
        var r = Resource.testResource()
        r.valueNotValid = true
        let o = r.run(.request(1, .pr, .valBlk))
        #expect(o.lock?.statusFlags == [] && o.lock?.lvbSeq == 0)
    }

    @Test("unlock write-back", arguments: LockingGrantTests.modes)
    func unlockWriteBack(mode: LockMode) {
        var r = Resource.testResource()
        r.run(.request(1, mode, .valBlk), lvb: Self.v1)
        // KQ: the unlock's flags accumulate onto the lock call's VALBLK.
        r.run(.unlock(1), lvb: Self.v1)
        let writes = mode == .pw || mode == .ex
        #expect(r.lvb == (writes ? Self.v1 : nil))
        #expect(r.lvbSeq == (writes ? 1 : 0))
    }

    @Test func unlockWithIvvalblkAndReplaceSemantics() {
        var r = Resource.testResource()
        r.run(.request(1, .ex, .valBlk))
        _ = r.unlock(1, flags: .ivValBlk)
        #expect(r.valueNotValid && r.lvbSeq == 0)
        r.run(.request(2, .ex, .valBlk))
        // A master replaces exflags with m_exflags: without VALBLK there is no write-back.
        _ = r.unlock(2, flags: [], flagUpdate: .replace, lvb: Self.v2)
        #expect(r.lvb == nil && r.lvbSeq == 0)
    }

    @Test func zeroLengthLVB() {
        var r = Resource.testResource(lvbLength: 0)
        r.run(.request(1, .ex, .valBlk))
        r.run(.convert(1, .nl, .valBlk))
        #expect(r.lvb == [] && r.lvbSeq == 1)
    }

    @Test func discardValueBlockKeepsSequence() {
        var r = Resource.testResource()
        r.run(.request(1, .ex, .valBlk))
        r.run(.unlock(1), lvb: Self.v1)
        r.discardValueBlock()
        #expect(r.lvb == nil && r.lvbSeq == 1)
        let o = r.run(.request(2, .pr, .valBlk))
        #expect(o.lock?.lvb == [0, 0, 0, 0, 0, 0, 0, 0] && o.lock?.lvbSeq == 0)
    }

    @Test func processCopyGrantReadsFromMessage() {
        var r = Resource.testResource()
        var pc = LockEntry(id: 5, nodeID: 3, mode: .pr, flags: .valBlk, lvb: [UInt8](repeating: 0, count: 8))
        pc.grantedMode = .nl
        r.insert(pc, status: .convert)
        let granted = r.grantProcessCopy(5, extra: Self.v1 + [0xFF], lvbSeq: 42)
        #expect(granted?.lvb == Self.v1 && granted?.lvbSeq == 42 && granted?.status == .granted)
        // A W-direction grant on a pc does not copy.
        r.update(5) { $0.requestedMode = .nl }
        r.update(5) { $0.grantedMode = .ex }
        let down = r.grantProcessCopy(5, extra: Self.v2, lvbSeq: 43)
        #expect(down?.lvb == Self.v1 && down?.lvbSeq == 42 && down?.grantedMode == .nl)
    }

    // MARK: - Blocking ASTs (§2.9, §5.7)

    static let bastCases: [GrantCase] = [
        GrantCase(
            name: "rule A: PR holder gets BAST(EX) for a queued EX", setup: [.request(1, .pr)],
            step: .request(2, .ex), result: .queued, basts: ["1:EX"]),
        GrantCase(
            name: "rule A: a second EX request sends nothing (highbast)", setup: [.request(1, .pr), .request(2, .ex)],
            step: .request(3, .ex), result: .queued, basts: []),
        GrantCase(
            name: "rule A: compatible holders get nothing", setup: [.request(1, .cr), .request(2, .ex)],
            step: .request(3, .pw), result: .queued, basts: []),
        GrantCase(
            name: "rule A: only locks that asked for BASTs", setup: [.request(1, .pr, bast: false), .request(2, .pr)],
            step: .request(3, .ex), result: .queued, basts: ["2:EX"]),
        GrantCase(
            name: "rule A: PR holder and a CW request", setup: [.request(1, .pr)], step: .request(2, .cw),
            result: .queued, basts: ["1:CW"]),
        GrantCase(
            name: "rule A: CW/PR case repeats until highbast reaches EX",
            setup: [.request(1, .pr), .request(2, .cw)], step: .request(3, .cw), result: .queued,
            basts: ["1:CW"]),
        GrantCase(
            name: "rule A: converting locks get nothing without NOQUEUEBAST",
            setup: [.request(1, .pr), .request(2, .pr), .request(9, .cr), .convert(2, .ex)],
            step: .request(3, .ex), result: .queued, basts: []),
        GrantCase(
            name: "rule A: a queued conversion BASTs the grant queue",
            setup: [.request(1, .pr), .request(2, .pr)], step: .convert(2, .ex), result: .queued,
            basts: ["1:EX"]),
        GrantCase(
            name: "NOQUEUE: no BASTs", setup: [.request(1, .pr)], step: .request(2, .ex, .noQueue),
            result: .wouldBlock, basts: []),
        GrantCase(
            name: "NOQUEUEBAST: grant and convert queues",
            setup: [.request(1, .pr), .request(2, .cr), .request(3, .cr), .convert(3, .ex)],
            step: .request(4, .ex, [.noQueue, .noQueueBast]), result: .wouldBlock,
            basts: ["3:EX"]),  // 1 and 2 already had BAST(EX) when 3's conversion queued
        GrantCase(
            name: "NOQUEUEBAST reaches the grant queue", setup: [.request(1, .pr), .request(2, .cr)],
            step: .request(4, .pw, [.noQueue, .noQueueBast]), result: .wouldBlock, basts: ["1:PW"]),
        GrantCase(
            name: "NOQUEUEBAST conversion skips itself",
            setup: [.request(1, .pr), .request(2, .pr)], step: .convert(2, .ex, [.noQueue, .noQueueBast]),
            result: .wouldBlock, basts: ["1:EX"]),
        GrantCase(
            name: "down-conversion grants the waiter; no BAST when nothing stays blocked",
            setup: [.request(1, .pr), .request(2, .ex)], step: .convert(1, .nl), result: .granted, grants: [2],
            basts: [],
            verify: { r, o in
                #expect(o.suppressReply)
                #expect(r.lock(1)?.highBast == .nl, "highbast reset by 1's own grant")
            }),
        GrantCase(
            name: "rule B: a lock granted in the pass gets the highest blocked mode",
            setup: [.request(1, .ex), .request(2, .pr), .request(3, .ex)],
            step: .unlock(1), result: .unlocked, grants: [2], basts: ["2:EX"]),
        GrantCase(
            name: "rule B: PR holder gets CW when PR and CW are blocked",
            setup: [.request(1, .pr), .request(8, .nl), .request(2, .cw), .request(3, .pr)],
            step: .unlock(8), result: .unlocked, basts: ["1:CW"],
            verify: { r, _ in #expect(r.lock(1)?.highBast == .pr) }),
    ]

    @Test("blocking ASTs", arguments: bastCases)
    func basts(_ c: GrantCase) { LockingGrantTests.check(c) }

    // MARK: - Owner-side callback coalescing

    @Test func callbackCoalescing() {
        var q = CallbackQueue()
        let script: [(CallbackQueue.Callback, Bool, String)] = [
            (.blocking(.ex), true, "no completion yet: nothing to compare with"),
            (.blocking(.ex), false, "same mode as the previous BAST"),
            (.blocking(.pw), false, "lower than a previous BAST above PR"),
            (.completion(.granted, mode: .pr, flags: []), true, "completion"),
            (.blocking(.cr), false, "compatible with the last completion's mode"),
            (.blocking(.cw), true, "CW against PR"),
            (.blocking(.pr), false, "compatible with PR"),
            (.completion(.granted, mode: .ex, flags: []), true, "completion"),
            (.blocking(.pr), true, "PR against EX"),
            (.blocking(.cw), true, "PR/CW inversion keeps both"),
            (.completion(.unlocked, mode: .iv, flags: []), true, "unlock completion"),
            (.blocking(.ex), false, "after unlock (mode IV) every BAST is dropped"),
        ]
        for (callback, queued, why) in script {
            let got = q.enqueue(callback)
            #expect(got == queued, "\(why)")
        }
        var delivered: [CallbackQueue.Callback] = []
        while let c = q.dequeue() { delivered.append(c) }
        #expect(delivered.count == script.filter { $0.1 }.count && q.isEmpty)
        #expect(delivered.first == .blocking(.ex))
    }

    // MARK: - Argument validation (owner side)

    @Test func lockArgumentValidation() {
        typealias V = LockValidation
        #expect(V.checkLockArguments(mode: .ex, flags: [], hasLVB: false) == nil)
        #expect(V.checkLockArguments(mode: .iv, flags: [], hasLVB: false) == .invalid)
        #expect(V.checkLockArguments(mode: .ex, flags: [], hasLVB: false, nameLength: 65) == .invalid)
        #expect(V.checkLockArguments(mode: .ex, flags: .convert, hasLVB: false, nameLength: 65) == nil)
        for bad: LockFlags in [
            .cancel, .queCvt, .convDeadlk, [.convert, .convDeadlk, .noQueue], [.expedite, .convert],
            [.expedite, .noQueue], .valBlk,
        ] {
            #expect(V.checkLockArguments(mode: .nl, flags: bad, hasLVB: false) == .invalid, "\(bad.rawValue)")
        }
        #expect(V.checkLockArguments(mode: .pr, flags: .expedite, hasLVB: false) == .invalid)
        #expect(V.checkLockArguments(mode: .nl, flags: .expedite, hasLVB: false) == nil)
        var l = LockEntry(id: 1, mode: .pr)
        l.grantedMode = .pw
        #expect(LockValidation.checkConversion(of: l, to: .ex, flags: .queCvt) == .busy, "not queued → not granted")
        l.status = .granted
        #expect(LockValidation.checkConversion(of: l, to: .ex, flags: .queCvt) == nil)
        #expect(LockValidation.checkConversion(of: l, to: .pr, flags: .queCvt) == .invalid)
        #expect(V.checkUnlockArguments(flags: [.valBlk, .ivValBlk, .forceUnlock]) == nil)
        #expect(V.checkUnlockArguments(flags: [.cancel, .forceUnlock]) == .invalid)
        #expect(V.checkUnlockArguments(flags: .noQueue) == .invalid)
    }
}
