import DLMTransport
import NIOCore
import Testing

@testable import DLMNode

/// Focused tests of the lock manager's recovery hooks: the RCOM_LOCK argument mapping both ways
/// (`pack_rcom_lock` / `receive_rcom_lock_args`, `dlm_recover_master_copy`), the LVB recovery rule
/// (recovery.md §7.2 S5a, S5b, S6) and operations in flight to a dying master (S7).
@Suite("LockManager recovery hooks")
struct LockManagerRecoveryTests {
    static let valblk = LockFlags.valBlk.rawValue

    static func context(us: UInt32, members: [UInt32], departed: Set<UInt32>, seq: UInt64 = 7) -> RecoveryContext {
        RecoveryContext(ourNodeID: us, seq: seq, members: members, departed: departed,
                        placement: DirectoryPlacement(members: members.map { ($0, 1) }, ourNodeID: us), nodir: false)
    }

    /// A name whose directory node among `members` is `dir`.
    static func name(_ prefix: String, dirNode dir: UInt32, members: [UInt32]) -> String {
        let p = DirectoryPlacement(members: members.map { ($0, 1) }, ourNodeID: dir)
        for i in 0..<1000 where p.directoryNode(of: Array("\(prefix)\(i)".utf8)) == dir { return "\(prefix)\(i)" }
        return prefix
    }

    static func cluster(_ ids: [UInt32] = [1, 2, 3]) -> LockRecoverySim {
        let sim = LockRecoverySim(seed: 42, names: 1)
        sim.dropProbability = 0
        sim.change(to: ids, joinDelayMs: 0)
        _ = sim.runUntilQuiescent()
        return sim
    }

    // MARK: - RCOM_LOCK, master side (receive_rcom_lock_args, dlm_recover_master_copy)

    struct MasterCase: CustomStringConvertible, Sendable {
        var label: String
        var lock: RcomLock
        var lvb: [UInt8]
        var result: Int32
        /// Expected queue, granted and requested mode of the master copy (result 0 / -EEXIST).
        var queue: LockStatus?
        var grmode: LockMode = .iv
        var rqmode: LockMode = .iv
        var description: String { label }
    }

    static func rl(_ name: String, lkid: UInt32, gr: LockMode, rq: LockMode, status: Int8, exflags: UInt32 = 0,
                   waitType: UInt16 = 0, asts: Int8 = 3, lvbseq: UInt32 = 0, parent: UInt32 = 0) -> RcomLock {
        RcomLock(ownpid: 4242, lkid: lkid, parentLkid: parent, exflags: exflags, flags: 0x1, lvbseq: lvbseq,
                 rqmode: Int8(gr == .iv && rq == .iv ? -1 : rq.rawValue), grmode: Int8(gr.rawValue), status: status,
                 asts: asts, waitType: waitType, name: ByteBuffer(string: name))
    }

    static let masterCases: [MasterCase] = [
        MasterCase(label: "granted PR with VALBLK and a short LVB", lock: rl("m", lkid: 0x10, gr: .pr, rq: .iv, status: 2,
                   exflags: valblk, lvbseq: 9), lvb: [1, 2, 3, 4, 5], result: 0, queue: .granted, grmode: .pr),
        MasterCase(label: "the same lock again (aborted earlier recovery)", lock: rl("m", lkid: 0x10, gr: .pr, rq: .iv,
                   status: 2, exflags: valblk, lvbseq: 9), lvb: [1, 2, 3, 4, 5], result: WireErrno.eexist,
                   queue: .granted, grmode: .pr),
        MasterCase(label: "converting PR to EX", lock: rl("m", lkid: 0x11, gr: .cr, rq: .ex, status: 3), lvb: [],
                   result: 0, queue: .convert, grmode: .cr, rqmode: .ex),
        MasterCase(label: "waiting EX", lock: rl("m", lkid: 0x12, gr: .iv, rq: .ex, status: 1), lvb: [], result: 0,
                   queue: .waiting, grmode: .iv, rqmode: .ex),
        MasterCase(label: "6.1 middle conversion PR->CW in flight (wait type CONVERT)", lock: rl("m", lkid: 0x13, gr: .pr,
                   rq: .cw, status: 2, waitType: 2), lvb: [], result: 0, queue: .convert, grmode: .iv, rqmode: .cw),
        MasterCase(label: "in-flight up-conversion stays granted with its rqmode", lock: rl("m", lkid: 0x14, gr: .nl,
                   rq: .pr, status: 2, waitType: 2), lvb: [], result: 0, queue: .granted, grmode: .nl, rqmode: .pr),
        MasterCase(label: "unknown resource: -EBADR (the sender resends)", lock: rl("nope", lkid: 0x20, gr: .pr,
                   rq: .iv, status: 2), lvb: [], result: WireErrno.ebadr),
        MasterCase(label: "parent lock: -EOPNOTSUPP", lock: rl("m", lkid: 0x21, gr: .pr, rq: .iv, status: 2,
                   parent: 5), lvb: [], result: WireErrno.eopnotsupp),
        MasterCase(label: "LVB longer than lvblen: -EINVAL", lock: rl("m", lkid: 0x22, gr: .pr, rq: .iv, status: 2,
                   exflags: valblk), lvb: [UInt8](repeating: 7, count: 33), result: WireErrno.einval),
        MasterCase(label: "bad rl_status: -EINVAL", lock: rl("m", lkid: 0x23, gr: .pr, rq: .iv, status: 7), lvb: [],
                   result: WireErrno.einval),
    ]

    @Test("RCOM_LOCK received by the new master", arguments: 0..<masterCases.count)
    func masterSide(_ index: Int) {
        // Node 1 alone masters "m" (one local NL lock), then receives node 2's locks.
        var lm = LockManager(.init(lockspaceID: 1, ourNodeID: 1, lvbLength: 32), members: [.init(nodeID: 1)])
        _ = lm.lock(name: Array("m".utf8), mode: .nl, now: .seconds(1))
        let ctx = Self.context(us: 1, members: [1, 2], departed: [3])
        lm.recoveryBegin(ctx)
        // Run the cases before this one first (EEXIST needs the first).
        var ids: [UInt32] = []
        for c in Self.masterCases[...index] {
            let (result, id) = lm.recoverMasterCopy(from: 2, lock: c.lock, lvb: c.lvb, ctx)
            ids.append(id)
            if c.label == Self.masterCases[index].label {
                #expect(result == c.result, "\(c)")
                guard let queue = c.queue else {
                    #expect(id == 0)
                    continue
                }
                if result == WireErrno.eexist { #expect(id == ids[0], "-EEXIST returns the existing copy's id") }
                let view = lm.lockView(id)
                #expect(view?.isMasterCopy == true)
                #expect(view?.lock.status == queue)
                #expect(view?.lock.grantedMode == c.grmode)
                #expect(view?.lock.requestedMode == c.rqmode)
                #expect(view?.lock.nodeID == 2)
                #expect(view?.lock.remoteID == c.lock.lkid)
                #expect(view?.lock.pid == 4242)
                #expect(view?.lock.wireFlags == 0x1)
                #expect(view?.lock.wantsBlocking == true && view?.lock.wantsCompletion == true)
                if c.lock.exflags & Self.valblk != 0 {
                    #expect(view?.lock.lvb == [1, 2, 3, 4, 5] + [UInt8](repeating: 0, count: 27))
                    #expect(view?.lock.lvbSeq == 9)
                } else {
                    #expect(view?.lock.lvb == nil)
                }
                let r = lm.resourceView(Array("m".utf8))!.resource
                #expect(r.recoverGrant == (!r.convertQueue.isEmpty || !r.waitQueue.isEmpty))
            }
        }
    }

    @Test("6.1 middle conversion rebuilt with IV takes the granted middle mode in R7.5; grant pass grants it")
    func middleConversionMasterSide() {
        var lm = LockManager(.init(lockspaceID: 1, ourNodeID: 1, lvbLength: 32), members: [.init(nodeID: 1)])
        _ = lm.lock(name: Array("m".utf8), mode: .nl, now: .seconds(1))
        let ctx = Self.context(us: 1, members: [1, 2, 4], departed: [3])
        lm.recoveryBegin(ctx)
        let pr = lm.recoverMasterCopy(from: 4, lock: Self.rl("m", lkid: 1, gr: .pr, rq: .iv, status: 2), lvb: [], ctx)
        let mid = lm.recoverMasterCopy(from: 2, lock: Self.rl("m", lkid: 2, gr: .pr, rq: .cw, status: 2, waitType: 2),
                                       lvb: [], ctx)
        #expect(pr.result == 0 && mid.result == 0)
        #expect(lm.lockView(mid.lockID)?.lock.grantedMode == .iv)
        lm.finishMasterRecovery(ctx)
        #expect(lm.lockView(mid.lockID)?.lock.grantedMode == .pr, "G = the first PR/CW on the grant queue")
        lm.recoveryEnd(ctx)
        // The grant pass: CW is incompatible with the other node's PR: stays converting, BAST to node 4.
        let actions = lm.recoverGrant(now: .seconds(2))
        #expect(lm.lockView(mid.lockID)?.lock.status == .convert)
        #expect(actions.contains { if case .send(let m, 4) = $0 { return m.messageType == .bast } else { return false } })
    }

    // MARK: - RCOM_LOCK, sender side (pack_rcom_lock)

    @Test("RCOM_LOCKs built from our process copies when the master departed")
    func senderSide() throws {
        let sim = Self.cluster()
        let n = Self.name("n", dirNode: 1, members: [1, 2])
        let m = Self.name("mid", dirNode: 1, members: [1, 2])
        // Node 3 masters both (it locks first).
        sim.lock(3, n, .pr)
        sim.lock(3, m, .nl)
        _ = sim.runUntilQuiescent()
        let lvb = [UInt8](repeating: 0xAB, count: 16)
        let prTag = try #require(sim.lock(2, n, .pr, .valBlk, lvb: lvb))
        let cvtTag = try #require(sim.lock(2, n, .cr))
        let upTag = try #require(sim.lock(2, n, .nl))
        let midTag = try #require(sim.lock(2, m, .pr))
        _ = sim.runUntilQuiescent()
        #expect(sim.convert(cvtTag, .ex) == nil)          // queued behind the PRs: convert queue
        let waitTag = try #require(sim.lock(2, n, .ex))   // waiting
        _ = sim.runUntilQuiescent()
        // In flight when node 3 dies: an up-conversion and a middle conversion.
        #expect(sim.convert(upTag, .cr) == nil)
        #expect(sim.convert(midTag, .cw) == nil)

        var lm = sim.nodes[2]!.locks
        let ctx = Self.context(us: 2, members: [1, 2], departed: [3])
        lm.recoveryBegin(ctx)
        lm.recoverWaitersPre(ctx)
        #expect(lm.recoveryResendCount == 2)
        let lookups = lm.recoverMasters(ctx)
        #expect(Set(lookups.map { String(decoding: $0, as: UTF8.self) }) == [n, m])
        for name in lookups { lm.setNewMaster(name: name, master: 1, ctx) }
        let groups = lm.locksToRecover(ctx)
        let byName = Dictionary(uniqueKeysWithValues: groups.map { (String(decoding: $0.name, as: UTF8.self), $0) })
        let gn = try #require(byName[n])
        #expect(gn.master == 1)
        let id = { (tag: UInt64) in sim.clients[tag]!.lkid }
        // Grant queue, then convert, then wait (grant queue in lkb_add_ordered order).
        #expect(gn.locks.map { $0.lock.status } == [2, 2, 3, 1])
        let pr = try #require(gn.locks.first { $0.lock.lkid == id(prTag) })
        #expect(pr.lock.grmode == 3 && pr.lock.rqmode == -1 && pr.lock.exflags == Self.valblk)
        #expect(pr.lock.ownpid == 102 && pr.lock.asts == 3 && pr.lock.waitType == 0 && pr.lock.remid == 0)
        #expect(pr.lock.name == ByteBuffer(string: n) && pr.lock.namelen == UInt16(n.utf8.count))
        // The buffer as it is now (the grant read the resource's value into it).
        #expect(pr.lvb == sim.nodes[2]!.locks.lockView(id(prTag))?.lock.lvb && pr.lvb?.count == 16)
        let up = try #require(gn.locks.first { $0.lock.lkid == id(upTag) })
        #expect(up.lock.status == 2 && up.lock.grmode == 0 && up.lock.rqmode == 1 && up.lock.waitType == 2,
                "an in-flight up-conversion goes granted, with its rqmode and wait type CONVERT")
        #expect(up.lvb == nil)
        let cvt = try #require(gn.locks.first { $0.lock.lkid == id(cvtTag) })
        #expect(cvt.lock.status == 3 && cvt.lock.grmode == 1 && cvt.lock.rqmode == 5 && cvt.lock.waitType == 0)
        let wait = try #require(gn.locks.first { $0.lock.lkid == id(waitTag) })
        #expect(wait.lock.status == 1 && wait.lock.grmode == -1 && wait.lock.rqmode == 5)
        let mid = try #require(byName[m]?.locks.first)
        #expect(mid.lock.status == 2 && mid.lock.grmode == 3 && mid.lock.rqmode == 2 && mid.lock.waitType == 0,
                "middle conversion: resent after recovery, rebuilt granted (KQ)")
        // LOCK_REPLYs store the master's ids.
        for (i, copy) in gn.locks.enumerated() {
            lm.lockRecovered(name: Array(n.utf8), lockID: copy.lock.lkid, remoteID: UInt32(100 + i), result: i == 0 ? WireErrno.eexist : 0)
            #expect(lm.lockView(copy.lock.lkid)?.lock.remoteID == UInt32(100 + i))
            #expect(lm.lockView(copy.lock.lkid)?.lock.nodeID == 1)
        }
    }

    // MARK: - LVB (S5a, S5b, S6)

    /// Runs the CM change that removes node 3 and waits for the cluster to settle.
    static func removeNode3(_ sim: LockRecoverySim) {
        sim.crash(3)
        sim.change(to: [1, 2])
        #expect(sim.runUntilQuiescent())
        sim.checkQuiescent()
    }

    @Test("S5a: the master dies; the new master takes the LVB of the surviving PW holder, valid")
    func lvbPreserved() throws {
        let sim = Self.cluster()
        let v1 = [UInt8](repeating: 1, count: 16), v2 = [UInt8](repeating: 2, count: 16)
        sim.lock(3, "r4", .nl)                                        // node 3 masters r4
        _ = sim.runUntilQuiescent()
        let pw = try #require(sim.lock(1, "r4", .ex, .valBlk, lvb: v1))
        let nl = try #require(sim.lock(2, "r4", .nl, .valBlk, lvb: [UInt8](repeating: 0, count: 16)))
        _ = sim.runUntilQuiescent()
        #expect(sim.convert(pw, .pw, .valBlk, lvb: v2) == nil)          // EX→PW writes v2
        _ = sim.runUntilQuiescent()
        Self.removeNode3(sim)
        #expect(sim.problems.isEmpty, "\(sim.problems)")
        let (_, view) = try #require(sim.masterView("r4"))
        #expect(view.resource.lvb == v2)
        #expect(!view.resource.valueNotValid)
        #expect(sim.convert(nl, .cr, .valBlk) == nil)             // CR: compatible with the PW
        _ = sim.runUntilQuiescent()
        let c = try #require(sim.completions(nl).last)
        #expect(c.status == .granted && c.mode == .cr)
        #expect(c.lvb == v2)
        #expect(!c.statusFlags.contains(.valueNotValid))
    }

    @Test("S5b: only a CR writer with VALBLK survives: its value, flagged VALNOTVALID")
    func lvbOnlyLowHolders() throws {
        let sim = Self.cluster()
        let v3 = [UInt8](repeating: 3, count: 16)
        sim.lock(3, "r5", .nl)
        _ = sim.runUntilQuiescent()
        let writer = try #require(sim.lock(2, "r5", .pw, .valBlk, lvb: [UInt8](repeating: 9, count: 16)))
        let reader = try #require(sim.lock(1, "r5", .nl))
        _ = sim.runUntilQuiescent()
        #expect(sim.convert(writer, .cr, .valBlk, lvb: v3) == nil)      // PW→CR writes v3
        _ = sim.runUntilQuiescent()
        Self.removeNode3(sim)
        #expect(sim.problems.isEmpty, "\(sim.problems)")
        let (_, view) = try #require(sim.masterView("r5"))
        #expect(view.resource.lvb == v3)
        #expect(view.resource.valueNotValid)
        #expect(sim.convert(reader, .pr, .valBlk, lvb: [UInt8](repeating: 0, count: 16)) == nil)
        _ = sim.runUntilQuiescent()
        let c = try #require(sim.completions(reader).last)
        #expect(c.status == .granted && c.lvb == v3)
        #expect(c.statusFlags.contains(.valueNotValid))
    }

    @Test("S6: the surviving master loses an EX holder with VALBLK: VALNOTVALID until a PW/EX writes")
    func lvbInvalidatedOnSurvivingMaster() throws {
        let sim = Self.cluster()
        let master = try #require(sim.lock(1, "r3", .nl))                // node 1 masters r3
        _ = sim.runUntilQuiescent()
        // A value exists (the kernel has no resource LVB buffer, and so no VALNOTVALID, before a write).
        let v7 = [UInt8](repeating: 7, count: 16)
        let reader = try #require(sim.lock(2, "r3", .ex, .valBlk, lvb: v7))
        _ = sim.runUntilQuiescent()
        #expect(sim.convert(reader, .nl, .valBlk, lvb: v7) == nil)
        _ = sim.runUntilQuiescent()
        sim.lock(3, "r3", .ex, .valBlk, lvb: [UInt8](repeating: 5, count: 16))
        _ = sim.runUntilQuiescent()
        Self.removeNode3(sim)
        #expect(sim.problems.isEmpty, "\(sim.problems)")
        let (node, view) = try #require(sim.masterView("r3"))
        #expect(node == 1 && view.resource.valueNotValid)
        #expect(sim.convert(reader, .pr, .valBlk, lvb: [UInt8](repeating: 0, count: 16)) == nil)
        _ = sim.runUntilQuiescent()
        #expect(sim.completions(reader).last?.status == .granted)
        #expect(sim.completions(reader).last?.lvb == v7)
        #expect(sim.completions(reader).last?.statusFlags.contains(.valueNotValid) == true)
        // A writer fixes it.
        let v9 = [UInt8](repeating: 9, count: 16)
        #expect(sim.convert(reader, .ex, .valBlk, lvb: v9) == nil)
        _ = sim.runUntilQuiescent()
        #expect(sim.convert(reader, .nl, .valBlk, lvb: v9) == nil)
        #expect(sim.convert(master, .pr, .valBlk, lvb: [UInt8](repeating: 0, count: 16)) == nil)
        _ = sim.runUntilQuiescent()
        let c = try #require(sim.completions(master).last)
        #expect(c.status == .granted && c.lvb == v9 && !c.statusFlags.contains(.valueNotValid))
    }

    // MARK: - S7: operations in flight to a dying master

    @Test("S7: REQUEST and up-CONVERT in flight are resent and complete; UNLOCK completes -DLM_EUNLOCK, CANCEL -DLM_ECANCEL")
    func inFlightToDyingMaster() throws {
        let sim = Self.cluster()
        for name in ["s7-req", "s7-cvt", "s7-unl", "s7-can"] { sim.lock(3, name, name == "s7-can" ? .ex : .pr) }
        _ = sim.runUntilQuiescent()
        let cvt = try #require(sim.lock(2, "s7-cvt", .nl))
        let unl = try #require(sim.lock(2, "s7-unl", .pr))
        let can = try #require(sim.lock(2, "s7-can", .ex))                // queued behind node 3's EX
        _ = sim.runUntilQuiescent()
        #expect(sim.completions(can).isEmpty)
        // Now, with nothing delivered before node 3 dies:
        let req = try #require(sim.lock(2, "s7-req", .ex))
        #expect(sim.convert(cvt, .ex) == nil)
        #expect(sim.unlock(unl) == nil)
        #expect(sim.cancel(can) == nil)
        Self.removeNode3(sim)
        #expect(sim.problems.isEmpty, "\(sim.problems)")
        #expect(sim.completions(req).map(\.status) == [.granted], "request resent to the new master, granted once")
        #expect(sim.completions(req).last?.mode == .ex)
        #expect(sim.completions(cvt).map(\.status) == [.granted, .granted], "NL grant, then the resent conversion")
        #expect(sim.completions(cvt).last?.mode == .ex)
        #expect(sim.completions(unl).map(\.status) == [.granted, .unlocked])
        #expect(sim.completions(unl).last?.endOfLife == true)
        #expect(sim.completions(can).map(\.status) == [.cancelled])
        #expect(sim.completions(can).last?.endOfLife == true)
        // Nothing of node 2 is left waiting, and node 1 sees node 2's EX locks.
        #expect(sim.nodes[2]!.locks.hasOutstandingOperations == false)
        #expect(sim.masterView("s7-req")?.view.resource.grantQueue.map(\.grantedMode) == [.ex])
    }

    @Test("S7 with overlaps: a cancel and a force-unlock in flight to the dying master each complete once")
    func overlapsToDyingMaster() throws {
        let sim = Self.cluster()
        sim.lock(3, "o-queued", .ex)
        sim.lock(3, "o-flight", .ex)
        _ = sim.runUntilQuiescent()
        // (a) the conversion is queued on the master (reply -EINPROGRESS came), then cancel + force-unlock.
        let queued = try #require(sim.lock(2, "o-queued", .nl))
        // (b) the conversion itself is still in flight too.
        let flight = try #require(sim.lock(2, "o-flight", .nl))
        _ = sim.runUntilQuiescent()
        #expect(sim.convert(queued, .ex) == nil)
        _ = sim.runUntilQuiescent()
        #expect(sim.nodes[2]!.locks.lockView(sim.clients[queued]!.lkid)?.lock.status == .convert)
        #expect(sim.cancel(queued) == nil)
        #expect(sim.unlock(queued, .forceUnlock) == nil)
        #expect(sim.convert(flight, .ex) == nil)
        #expect(sim.cancel(flight) == nil)
        #expect(sim.unlock(flight, .forceUnlock) == nil)
        Self.removeNode3(sim)
        #expect(sim.problems.isEmpty, "\(sim.problems)")
        for tag in [queued, flight] {
            #expect(sim.completions(tag).map(\.status) == [.granted, .cancelled, .unlocked], "tag \(tag)")
            #expect(sim.completions(tag).last?.endOfLife == true)
        }
        #expect(sim.nodes[2]!.locks.lockViews.isEmpty)
    }
}
