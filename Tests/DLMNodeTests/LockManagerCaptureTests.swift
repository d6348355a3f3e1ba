import DLMTransport
import NIOCore
import Testing

@testable import DLMNode

/// Message-level tests against the flows of capture E-612-tcp (two 6.12 kernels, lockspace `alpha`
/// = 0x521b2683, lvblen 32). Each expected message is written field by field from `decoded.txt`
/// (the `#n` numbers); where the kernel's master-side lkid depended on other locks it held at the
/// time, the id our allocator gives is used instead and noted.
@Suite("LockManager capture flows")
struct LockManagerCaptureTests {
    static let ls: UInt32 = 0x521b_2683
    static let user = LockBlockFlags.user
    static let t = Duration.seconds(1)

    static func manager(_ node: UInt32) -> LockManager {
        LockManager(
            .init(lockspaceID: ls, ourNodeID: node, lvbLength: 32),
            members: [.init(nodeID: 1), .init(nodeID: 2)])
    }

    /// A DLM_MSG as `decoded.txt` prints it (fields in the same order), from node `from`.
    static func msg(
        _ type: MessageType, from: UInt32, nodeid: Int32, pid: UInt32 = 0, lkid: UInt32 = 0, remid: UInt32 = 0,
        exflags: LockFlags = [], sbflags: UInt32 = 0, flags: UInt32 = 0, lvbseq: UInt32 = 0, hash: UInt32 = 0,
        status: LockStatus? = nil, grmode: LockMode = .nl, rqmode: LockMode = .nl, bastmode: LockMode = .nl,
        asts: UInt32 = 0, result: Int32 = 0, extra: [UInt8] = []
    ) -> DLMMessage {
        var m = DLMMessage(
            header: LockMessages.header(lockspace: ls, sender: from, version: .v3_2), type: type.rawValue, nodeID: nodeid,
            pid: pid, lkid: lkid, remid: remid, exflags: exflags.rawValue, sbflags: sbflags, flags: flags, lvbseq: lvbseq,
            hash: hash, status: status?.rawValue ?? 0, grmode: grmode.rawValue, rqmode: rqmode.rawValue,
            bastmode: bastmode.rawValue, asts: asts, result: result, extra: ByteBuffer(bytes: extra))
        m.header.length = UInt16(m.encodedLength)
        return m
    }

    static func sends(_ actions: [LockManager.Action]) -> [LockManager.Action] {
        actions.filter { if case .log = $0 { return false } else { return true } }
    }

    static func lvb(_ text: String) -> [UInt8] {
        Array(text.utf8) + [UInt8](repeating: 0, count: 32 - text.utf8.count)
    }

    static func completion(_ r: LockManager.CallResult) -> LockManager.Completion? {
        for case .completion(let c) in r.actions { return c }
        return nil
    }

    @Test("hashes and directory placement match the capture's resource table")
    func placement() {
        let m = Self.manager(1)
        let table: [(String, UInt32, UInt32)] = [
            ("res-ex-1", 0xd4e6_3041, 1), ("res-cvt-0", 0x55b7_32eb, 2), ("res-lvb-1", 0xbb5c_1c24, 1),
            ("res-blk-0", 0x1e7c_ffa5, 1), ("res-new-1", 0xf3eb_e58b, 2), ("res-ex-b-2", 0x9535_f16f, 2),
        ]
        for (name, hash, dir) in table {
            #expect(JHash.hash(Array(name.utf8)) == hash)
            #expect(m.directoryNode(hash: hash) == dir, "\(name)")
        }
    }

    /// #77–#82: node 1 looks up res-new-1 at dir node 2, is told it is master, grants locally; then
    /// serves node 2's REQUEST and UNLOCK as master.
    @Test("lookup answered 'you are master', local grant, then remote REQUEST/UNLOCK served")
    func lookupBecomesMaster() {
        var n1 = Self.manager(1)
        let name = Array("res-new-1".utf8)
        let hash: UInt32 = 0xf3eb_e58b
        let r = n1.lock(name: name, mode: .ex, pid: 188, tag: 7, user: true, now: Self.t)
        #expect(r.error == nil && r.lkid == 1)
        // #77
        #expect(
            Self.sends(r.actions) == [
                .send(
                    Self.msg(
                        .lookup, from: 1, nodeid: -1, pid: 188, lkid: 1, flags: Self.user, hash: hash, grmode: .iv,
                        rqmode: .ex, asts: 3, extra: name), to: 2)
            ])
        // #78
        let a = n1.receive(Self.msg(.lookupReply, from: 2, nodeid: 1, lkid: 1), from: 2, now: Self.t)
        #expect(
            Self.sends(a) == [
                .completion(
                    .init(tag: 7, lkid: 1, status: .granted, mode: .ex, statusFlags: [], lvb: nil, endOfLife: false))
            ])
        #expect(n1.resourceView(name)?.master == 1)
        // Our lock goes down to NL locally (no message), so node 2's NL request is granted.
        let c = n1.convert(lkid: 1, mode: .nl, now: Self.t)
        #expect(Self.sends(c.actions).count == 1 && Self.completion(c)?.mode == .nl)
        // #79 → #80 (the kernel's master id there was 2 as well).
        let req = Self.msg(
            .request, from: 2, nodeid: 1, pid: 186, lkid: 5, flags: Self.user, hash: hash, grmode: .iv, rqmode: .nl,
            asts: 3, extra: name)
        #expect(
            Self.sends(n1.receive(req, from: 2, now: Self.t)) == [
                .send(
                    Self.msg(
                        .requestReply, from: 1, nodeid: 2, pid: 186, lkid: 2, remid: 5, flags: Self.user, hash: hash,
                        status: .granted, grmode: .nl, rqmode: .iv, asts: 3), to: 2)
            ])
        // #81 → #82
        let unlock = Self.msg(
            .unlock, from: 2, nodeid: 1, pid: 186, lkid: 5, remid: 2, flags: Self.user, hash: hash, status: .granted,
            grmode: .nl, rqmode: .iv, asts: 3)
        #expect(
            Self.sends(n1.receive(unlock, from: 2, now: Self.t)) == [
                .send(
                    Self.msg(
                        .unlockReply, from: 1, nodeid: 2, pid: 186, lkid: 2, remid: 5, flags: Self.user, hash: hash,
                        grmode: .iv, rqmode: .iv, asts: 3, result: WireErrno.dlmEUnlock), to: 2)
            ])
        #expect(n1.invariantViolations().isEmpty)
    }

    /// #45–#51 from node 2's side: a LOOKUP to the dir node that is also master is answered with
    /// REQUEST_REPLY; conversion up (reply), down (no reply), unlock. Kernel master id 3; ours 2 (our own NL lock holds id 1).
    @Test("LOOKUP to dir-and-master answered with REQUEST_REPLY; up/down conversion; unlock")
    func lookupAsRequest() {
        var n2 = Self.manager(2)
        let name = Array("res-cvt-0".utf8)
        let hash: UInt32 = 0x55b7_32eb
        func common(_ type: MessageType, from: UInt32, nodeid: Int32, lkid: UInt32, remid: UInt32, exflags: LockFlags = [],
                    status: LockStatus?, gr: LockMode, rq: LockMode, result: Int32 = 0, extra: [UInt8] = []) -> DLMMessage {
            Self.msg(
                type, from: from, nodeid: nodeid, pid: 188, lkid: lkid, remid: remid, exflags: exflags, flags: Self.user,
                hash: hash, status: status, grmode: gr, rqmode: rq, asts: 3, result: result, extra: extra)
        }
        // In the capture node 2 already used res-cvt-0 (it is dir node, so it mastered it at once).
        let own = n2.lock(name: name, mode: .nl, pid: 186, now: Self.t)
        #expect(own.lkid == 1 && Self.sends(own.actions).count == 1)  // local grant, no message
        // #45 → #46
        let lookup = common(.lookup, from: 1, nodeid: -1, lkid: 1, remid: 0, status: nil, gr: .iv, rq: .nl, extra: name)
        #expect(
            Self.sends(n2.receive(lookup, from: 1, now: Self.t)) == [
                .send(common(.requestReply, from: 2, nodeid: 1, lkid: 2, remid: 1, status: .granted, gr: .nl, rq: .iv), to: 1)
            ])
        #expect(n2.directory[name] == 2)
        // #47 → #48
        let up = common(.convert, from: 1, nodeid: 2, lkid: 1, remid: 2, exflags: .convert, status: .granted, gr: .nl, rq: .ex)
        #expect(
            Self.sends(n2.receive(up, from: 1, now: Self.t)) == [
                .send(
                    common(
                        .convertReply, from: 2, nodeid: 1, lkid: 2, remid: 1, exflags: .convert, status: .granted, gr: .ex,
                        rq: .iv), to: 1)
            ])
        // #49: down-conversion, no reply
        let down = common(.convert, from: 1, nodeid: 2, lkid: 1, remid: 2, exflags: .convert, status: .granted, gr: .ex, rq: .pr)
        #expect(Self.sends(n2.receive(down, from: 1, now: Self.t)).isEmpty)
        #expect(n2.lockView(2)?.lock.grantedMode == .pr)
        // #50 → #51
        let unlock = common(.unlock, from: 1, nodeid: 2, lkid: 1, remid: 2, exflags: .convert, status: .granted, gr: .pr, rq: .iv)
        #expect(
            Self.sends(n2.receive(unlock, from: 1, now: Self.t)) == [
                .send(
                    common(
                        .unlockReply, from: 2, nodeid: 1, lkid: 2, remid: 1, exflags: .convert, status: nil, gr: .iv, rq: .iv,
                        result: WireErrno.dlmEUnlock), to: 1)
            ])
        #expect(n2.resourceView(name)?.active == true)
        #expect(n2.invariantViolations().isEmpty)
    }

    /// #65–#76 from node 2's side (master of res-blk-0): PR granted; EX queued with -EINPROGRESS and a
    /// BAST to the PR holder right after the reply; NOQUEUE PR fails with -EAGAIN; unlocking the PR
    /// holder answers UNLOCK_REPLY, then GRANTs the EX. Kernel master ids 5, 6, 7; ours 1, 2, 3.
    @Test("BAST after -EINPROGRESS, NOQUEUE -EAGAIN, GRANT after unlock")
    func blockingFlow() {
        var n2 = Self.manager(2)
        let name = Array("res-blk-0".utf8)
        let hash: UInt32 = 0x1e7c_ffa5
        // res-blk-0's dir node is 1: the REQUEST comes from the dir node, which makes us master.
        func m(_ type: MessageType, from: UInt32, nodeid: Int32, lkid: UInt32, remid: UInt32, exflags: LockFlags = [],
               status: LockStatus?, gr: LockMode, rq: LockMode, bast: LockMode = .nl, result: Int32 = 0, extra: [UInt8] = [])
            -> DLMMessage
        {
            Self.msg(
                type, from: from, nodeid: nodeid, pid: 188, lkid: lkid, remid: remid, exflags: exflags, flags: Self.user,
                hash: hash, status: status, grmode: gr, rqmode: rq, bastmode: bast, asts: 3, result: result, extra: extra)
        }
        // #65 → #66
        #expect(
            Self.sends(n2.receive(m(.request, from: 1, nodeid: 2, lkid: 1, remid: 0, status: nil, gr: .iv, rq: .pr, extra: name), from: 1, now: Self.t))
                == [.send(m(.requestReply, from: 2, nodeid: 1, lkid: 1, remid: 1, status: .granted, gr: .pr, rq: .iv), to: 1)])
        // #67 → #68, #69
        #expect(
            Self.sends(n2.receive(m(.request, from: 1, nodeid: 2, lkid: 2, remid: 0, status: nil, gr: .iv, rq: .ex, extra: name), from: 1, now: Self.t))
                == [
                    .send(
                        m(.requestReply, from: 2, nodeid: 1, lkid: 2, remid: 2, status: .waiting, gr: .iv, rq: .ex,
                          result: WireErrno.einprogress), to: 1),
                    .send(m(.bast, from: 2, nodeid: 1, lkid: 1, remid: 1, status: .granted, gr: .pr, rq: .iv, bast: .ex), to: 1),
                ])
        // #70 → #71
        #expect(
            Self.sends(n2.receive(m(.request, from: 1, nodeid: 2, lkid: 3, remid: 0, exflags: .noQueue, status: nil, gr: .iv, rq: .pr, extra: name), from: 1, now: Self.t))
                == [
                    .send(
                        m(.requestReply, from: 2, nodeid: 1, lkid: 3, remid: 3, exflags: .noQueue, status: nil, gr: .iv, rq: .pr,
                          result: WireErrno.eagain), to: 1)
                ])
        // #72 → #73, #74
        #expect(
            Self.sends(n2.receive(m(.unlock, from: 1, nodeid: 2, lkid: 1, remid: 1, status: .granted, gr: .pr, rq: .iv), from: 1, now: Self.t))
                == [
                    .send(
                        m(.unlockReply, from: 2, nodeid: 1, lkid: 1, remid: 1, status: nil, gr: .iv, rq: .iv,
                          result: WireErrno.dlmEUnlock), to: 1),
                    .send(m(.grant, from: 2, nodeid: 1, lkid: 2, remid: 2, status: .granted, gr: .ex, rq: .iv), to: 1),
                ])
        #expect(n2.invariantViolations().isEmpty)
    }

    /// #52–#62 from node 1's side: dir node for res-lvb-1 answers node 2's LOOKUP; then, as requester
    /// with the dir record naming 2, sends REQUEST straight to 2 (no LOOKUP); EX→NL VALBLK
    /// down-conversion carries the LVB and completes locally; a second PR|VALBLK lock reads it back;
    /// both unlocks carry the LVB. Ids are exactly the capture's.
    @Test("dir record, direct REQUEST, LVB write by down-conversion and read back")
    func lvbRequester() {
        var n1 = Self.manager(1)
        let name = Array("res-lvb-1".utf8)
        let hash: UInt32 = 0xbb5c_1c24
        let zeros = [UInt8](repeating: 0, count: 32)
        let written = Self.lvb("LVB-written-by-node1")
        // #52 → #53
        let lookup = Self.msg(
            .lookup, from: 2, nodeid: -1, pid: 186, lkid: 3, flags: Self.user, hash: hash, grmode: .iv, rqmode: .nl, asts: 3,
            extra: name)
        #expect(
            Self.sends(n1.receive(lookup, from: 2, now: Self.t)) == [
                .send(Self.msg(.lookupReply, from: 1, nodeid: 2, lkid: 3), to: 2)
            ])
        // #54
        let a = n1.lock(name: name, mode: .ex, flags: .valBlk, lvb: zeros, pid: 188, tag: 1, user: true, now: Self.t)
        #expect(a.lkid == 1)
        #expect(
            Self.sends(a.actions) == [
                .send(
                    Self.msg(
                        .request, from: 1, nodeid: 2, pid: 188, lkid: 1, exflags: .valBlk, flags: Self.user, hash: hash,
                        grmode: .iv, rqmode: .ex, asts: 3, extra: name), to: 2)
            ])
        // #55
        let reply = Self.msg(
            .requestReply, from: 2, nodeid: 1, pid: 188, lkid: 4, remid: 1, exflags: .valBlk, flags: Self.user, hash: hash,
            status: .granted, grmode: .ex, rqmode: .iv, asts: 3, extra: zeros)
        #expect(
            Self.sends(n1.receive(reply, from: 2, now: Self.t)) == [
                .completion(.init(tag: 1, lkid: 1, status: .granted, mode: .ex, statusFlags: [], lvb: zeros, endOfLife: false))
            ])
        // #56: the down-conversion is sent and completed at once.
        let down = n1.convert(lkid: 1, mode: .nl, flags: .valBlk, lvb: written, now: Self.t)
        #expect(
            Self.sends(down.actions) == [
                .send(
                    Self.msg(
                        .convert, from: 1, nodeid: 2, pid: 188, lkid: 1, remid: 4, exflags: [.convert, .valBlk],
                        flags: Self.user, hash: hash, status: .granted, grmode: .ex, rqmode: .nl, asts: 3, extra: written),
                    to: 2),
                .completion(.init(tag: 1, lkid: 1, status: .granted, mode: .nl, statusFlags: [], lvb: written, endOfLife: false)),
            ])
        // #57 (master known, rsb active: no lookup)
        let b = n1.lock(name: name, mode: .pr, flags: .valBlk, lvb: zeros, pid: 188, tag: 2, user: true, now: Self.t)
        #expect(b.lkid == 2)
        #expect(
            Self.sends(b.actions) == [
                .send(
                    Self.msg(
                        .request, from: 1, nodeid: 2, pid: 188, lkid: 2, exflags: .valBlk, flags: Self.user, hash: hash,
                        grmode: .iv, rqmode: .pr, asts: 3, extra: name), to: 2)
            ])
        // #58
        let reply2 = Self.msg(
            .requestReply, from: 2, nodeid: 1, pid: 188, lkid: 5, remid: 2, exflags: .valBlk, flags: Self.user, lvbseq: 1,
            hash: hash, status: .granted, grmode: .pr, rqmode: .iv, asts: 3, extra: written)
        #expect(
            Self.sends(n1.receive(reply2, from: 2, now: Self.t)) == [
                .completion(.init(tag: 2, lkid: 2, status: .granted, mode: .pr, statusFlags: [], lvb: written, endOfLife: false))
            ])
        // #59 (exflags VALBLK accumulated from the lock call)
        #expect(
            Self.sends(n1.unlock(lkid: 2, now: Self.t).actions) == [
                .send(
                    Self.msg(
                        .unlock, from: 1, nodeid: 2, pid: 188, lkid: 2, remid: 5, exflags: .valBlk, flags: Self.user,
                        lvbseq: 1, hash: hash, status: .granted, grmode: .pr, rqmode: .iv, asts: 3, extra: written), to: 2)
            ])
        // #60
        let ur = Self.msg(
            .unlockReply, from: 2, nodeid: 1, pid: 188, lkid: 5, remid: 2, exflags: .valBlk, flags: Self.user, lvbseq: 1,
            hash: hash, grmode: .iv, rqmode: .iv, asts: 3, result: WireErrno.dlmEUnlock)
        let done = Self.sends(n1.receive(ur, from: 2, now: Self.t))
        #expect(done.count == 1)
        if case .completion(let c)? = done.first { #expect(c.status == .unlocked && c.endOfLife) } else { Issue.record("no completion") }
        // #61
        #expect(
            Self.sends(n1.unlock(lkid: 1, now: Self.t).actions) == [
                .send(
                    Self.msg(
                        .unlock, from: 1, nodeid: 2, pid: 188, lkid: 1, remid: 4, exflags: [.convert, .valBlk],
                        flags: Self.user, hash: hash, status: .granted, grmode: .nl, rqmode: .iv, asts: 3, extra: written),
                    to: 2)
            ])
        #expect(n1.invariantViolations().isEmpty)
    }

    /// The master side of the same LVB flow (#54–#62 from node 2's side): the master copy's LVB
    /// buffer (VALBLK) goes out with REQUEST_REPLY; the down-conversion writes the resource LVB
    /// (seq 1); the PR reader gets it; UNLOCK_REPLYs carry no extra.
    @Test("master LVB: zeroed buffer, write on down-conversion, read by PR, seq 1")
    func lvbMaster() {
        var n2 = Self.manager(2)
        let name = Array("res-lvb-1".utf8)
        let hash: UInt32 = 0xbb5c_1c24
        let zeros = [UInt8](repeating: 0, count: 32)
        let written = Self.lvb("LVB-written-by-node1")
        func m(_ type: MessageType, from: UInt32, nodeid: Int32, lkid: UInt32, remid: UInt32, exflags: LockFlags,
               lvbseq: UInt32 = 0, status: LockStatus?, gr: LockMode, rq: LockMode, result: Int32 = 0, extra: [UInt8] = [])
            -> DLMMessage
        {
            Self.msg(
                type, from: from, nodeid: nodeid, pid: 188, lkid: lkid, remid: remid, exflags: exflags, flags: Self.user,
                lvbseq: lvbseq, hash: hash, status: status, grmode: gr, rqmode: rq, asts: 3, result: result, extra: extra)
        }
        #expect(
            Self.sends(n2.receive(m(.request, from: 1, nodeid: 2, lkid: 1, remid: 0, exflags: .valBlk, status: nil, gr: .iv, rq: .ex, extra: name), from: 1, now: Self.t))
                == [.send(m(.requestReply, from: 2, nodeid: 1, lkid: 1, remid: 1, exflags: .valBlk, status: .granted, gr: .ex, rq: .iv, extra: zeros), to: 1)])
        #expect(
            Self.sends(n2.receive(m(.convert, from: 1, nodeid: 2, lkid: 1, remid: 1, exflags: [.convert, .valBlk], status: .granted, gr: .ex, rq: .nl, extra: written), from: 1, now: Self.t)).isEmpty)
        #expect(
            Self.sends(n2.receive(m(.request, from: 1, nodeid: 2, lkid: 2, remid: 0, exflags: .valBlk, status: nil, gr: .iv, rq: .pr, extra: name), from: 1, now: Self.t))
                == [.send(m(.requestReply, from: 2, nodeid: 1, lkid: 2, remid: 2, exflags: .valBlk, lvbseq: 1, status: .granted, gr: .pr, rq: .iv, extra: written), to: 1)])
        #expect(
            Self.sends(n2.receive(m(.unlock, from: 1, nodeid: 2, lkid: 2, remid: 2, exflags: .valBlk, lvbseq: 1, status: .granted, gr: .pr, rq: .iv, extra: written), from: 1, now: Self.t))
                == [.send(m(.unlockReply, from: 2, nodeid: 1, lkid: 2, remid: 2, exflags: .valBlk, lvbseq: 1, status: nil, gr: .iv, rq: .iv, result: WireErrno.dlmEUnlock), to: 1)])
        #expect(
            Self.sends(n2.receive(m(.unlock, from: 1, nodeid: 2, lkid: 1, remid: 1, exflags: [.convert, .valBlk], status: .granted, gr: .nl, rq: .iv, extra: written), from: 1, now: Self.t))
                == [.send(m(.unlockReply, from: 2, nodeid: 1, lkid: 1, remid: 1, exflags: [.convert, .valBlk], lvbseq: 1, status: nil, gr: .iv, rq: .iv, result: WireErrno.dlmEUnlock), to: 1)])
    }

    /// Stub replies, REMOVE timing, and -EBADR → redo lookup.
    @Test("stub replies and REMOVE after toss_secs; -EBADR redoes the lookup")
    func stubsAndRemove() {
        var n2 = Self.manager(2)
        // CONVERT for an unknown lock → stub CONVERT_REPLY -ENOENT: m_nodeid requester, m_remid its lkid.
        let cvt = Self.msg(.convert, from: 1, nodeid: 2, lkid: 9, remid: 42, exflags: .convert, status: .granted, grmode: .nl, rqmode: .ex, asts: 3)
        #expect(
            Self.sends(n2.receive(cvt, from: 1, now: Self.t)) == [
                .send(Self.msg(.convertReply, from: 2, nodeid: 1, remid: 9, grmode: .nl, rqmode: .nl, result: WireErrno.enoent), to: 1)
            ])
        // REQUEST for res-ex-1 (dir 1) from node 1 = the dir node → accepted, we become master.
        let name = Array("res-ex-1".utf8)
        let hash: UInt32 = 0xd4e6_3041
        let req = Self.msg(.request, from: 1, nodeid: 2, pid: 1, lkid: 1, hash: hash, grmode: .iv, rqmode: .ex, asts: 1, extra: name)
        _ = n2.receive(req, from: 1, now: .seconds(100))
        let unl = Self.msg(.unlock, from: 1, nodeid: 2, pid: 1, lkid: 1, remid: 1, hash: hash, status: .granted, grmode: .ex, rqmode: .iv, asts: 1)
        _ = n2.receive(unl, from: 1, now: .seconds(100))
        #expect(n2.resourceView(name)?.active == false)
        // Scans at 103 (first scan), 108 (too early), 113 → REMOVE to dir node 1.
        #expect(Self.sends(n2.tick(now: .seconds(103))).isEmpty)
        #expect(Self.sends(n2.tick(now: .seconds(108))).isEmpty)
        #expect(
            Self.sends(n2.tick(now: .seconds(113))) == [
                .send(
                    { () -> DLMMessage in
                        var m = DLMMessage(
                            header: LockMessages.header(lockspace: Self.ls, sender: 2, version: .v3_2),
                            type: MessageType.remove.rawValue, hash: hash, extra: ByteBuffer(bytes: name))
                        m.header.length = UInt16(m.encodedLength)
                        return m
                    }(), to: 1)
            ])
        #expect(n2.resourceView(name) == nil)
        // Now a REQUEST from node 1 again is from the dir node: recreated. From a non-dir node (3 in a
        // three-node lockspace) with no rsb → -EBADR stub.
        var n3 = LockManager(
            .init(lockspaceID: Self.ls, ourNodeID: 3, lvbLength: 32),
            members: [.init(nodeID: 1), .init(nodeID: 2), .init(nodeID: 3)])
        let other = Array("zz-not-here".utf8)
        let dir = n3.directoryNode(hash: JHash.hash(other))
        let from: UInt32 = dir == 1 ? 2 : 1
        if dir != 3 {
            let r3 = Self.msg(.request, from: from, nodeid: 3, lkid: 4, hash: JHash.hash(other), grmode: .iv, rqmode: .pr, asts: 1, extra: other)
            #expect(
                Self.sends(n3.receive(r3, from: from, now: Self.t)) == [
                    .send(Self.msg(.requestReply, from: 3, nodeid: Int32(from), remid: 4, grmode: .nl, rqmode: .nl, result: WireErrno.ebadr), to: from)
                ])
        }
    }

    @Test("REQUEST_REPLY -EBADR from a stale cached master redoes the lookup at the dir node")
    func staleMaster() {
        // Node 2 as requester of res-ex-1 (dir 1): learns master 1, unlocks, then (rsb cached inactive)
        // locks again: the REQUEST goes to the cached master, which answers -EBADR → LOOKUP.
        var n2 = Self.manager(2)
        let name = Array("res-ex-1".utf8)
        let hash: UInt32 = 0xd4e6_3041
        let a = n2.lock(name: name, mode: .ex, pid: 5, tag: 1, now: Self.t)
        #expect(Self.sends(a.actions).count == 1)  // LOOKUP to 1
        _ = n2.receive(Self.msg(.lookupReply, from: 1, nodeid: 1, lkid: 1), from: 1, now: Self.t)  // → REQUEST to 1
        _ = n2.receive(
            Self.msg(.requestReply, from: 1, nodeid: 2, pid: 5, lkid: 7, remid: 1, hash: hash, status: .granted, grmode: .ex, rqmode: .iv, asts: 3),
            from: 1, now: Self.t)
        _ = n2.unlock(lkid: 1, now: Self.t)
        _ = n2.receive(
            Self.msg(.unlockReply, from: 1, nodeid: 2, pid: 5, lkid: 7, remid: 1, hash: hash, grmode: .iv, rqmode: .iv, asts: 3, result: WireErrno.dlmEUnlock),
            from: 1, now: Self.t)
        #expect(n2.resourceView(name)?.active == false && n2.resourceView(name)?.master == 1)
        let b = n2.lock(name: name, mode: .pr, pid: 5, tag: 2, now: Self.t)
        guard case .send(let request, let to)? = Self.sends(b.actions).first else { return #expect(Bool(false)) }
        #expect(request.messageType == .request && to == 1)
        let badr = Self.msg(.requestReply, from: 1, nodeid: 2, remid: b.lkid, result: WireErrno.ebadr)
        let redo = Self.sends(n2.receive(badr, from: 1, now: Self.t))
        guard case .send(let lookup, let dirNode)? = redo.first else { return #expect(Bool(false)) }
        #expect(lookup.messageType == .lookup && dirNode == 1 && lookup.nodeID == -1 && lookup.lkid == b.lkid)
        #expect(n2.invariantViolations().isEmpty)
    }
}
