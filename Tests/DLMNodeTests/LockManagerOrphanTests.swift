import DLMTransport
import Testing

@testable import DLMNode

/// PERSISTENT locks, orphans, adoption and purge (the kernel's `orphan_proc_lock`,
/// `dlm_user_adopt_orphan`, `do_purge`, PURGE), on two lock managers with scripted delivery.
@Suite("LockManager orphans")
struct LockManagerOrphanTests {
    typealias Net = LockManagerOverlapTests.Net

    // "res-ex-1" has dir node 1, "res-cvt-0" dir node 2.

    @Test("adoption: the oldest orphan on the name granted in the mode; EAGAIN for other modes only, ENOENT for none",
          arguments: [
              (orphanModes: [LockMode.pr], name: "res-ex-1", mode: LockMode.pr, result: LockResult?.none, adopted: 0),
              ([.pr, .pr], "res-ex-1", .pr, nil, 0),
              ([.nl, .pr], "res-ex-1", .pr, nil, 1),
              ([.pr], "res-ex-1", .ex, .wouldBlock, -1),
              ([.pr], "res-cvt-0", .pr, .notFound, -1),
              ([], "res-ex-1", .pr, .notFound, -1),
          ])
    func adopt(orphanModes: [LockMode], name: String, mode: LockMode, result: LockResult?, adopted: Int) {
        var net = Net(2)
        var ids: [UInt32] = []
        for m in orphanModes {
            let id = net.lock(1, "res-ex-1", m, flags: .persistent)
            ids.append(id)
            net.orphan(1, id)
        }
        #expect(net.nodes[1]!.orphans == ids)
        let r = net.adopt(1, name, mode, tag: 99)
        #expect(r.error == result)
        if adopted >= 0 {
            #expect(r.lkid == ids[adopted])
            #expect(net.nodes[1]!.orphans == ids.filter { $0 != ids[adopted] })
            let v = net.nodes[1]!.lockView(r.lkid)!
            #expect(v.tag == 99 && v.lock.wireFlags & LockBlockFlags.orphan == 0 && v.lock.grantedMode == mode)
            #expect(v.lock.flags == .orphan)  // exflags ← the adopting request's flags
        } else {
            #expect(net.nodes[1]!.orphans == ids)
        }
        #expect(r.actions.allSatisfy { if case .log = $0 { return true } else { return false } })
        #expect(net.clean())
    }

    @Test("a granted orphan on our own master: stays granted, no callbacks until adopted; its owner hears BASTs again")
    func localOrphan() {
        var net = Net(2)
        let id = net.lock(1, "res-ex-1", .ex, flags: .persistent)
        #expect(net.statuses(1) == [.granted])
        net.orphan(1, id)
        #expect(net.nodes[1]!.lockView(id)!.lock.status == .granted)
        #expect(net.nodes[1]!.lockView(id)!.lock.wireFlags & LockBlockFlags.orphan != 0)
        // Node 2 waits for PR: the orphan's BAST is dropped.
        let waiter = net.lock(2, "res-ex-1", .pr)
        net.deliverAll()
        #expect(net.basts[1, default: []].isEmpty)
        #expect(net.nodes[1]!.resourceView(Array("res-ex-1".utf8))!.resource.waitQueue.map(\.remoteID) == [waiter])
        // Adopted: the next BAST (a waiter for a mode above the last BAST's) reaches the new owner.
        #expect(net.adopt(1, "res-ex-1", .ex, tag: 5).lkid == id)
        _ = net.lock(2, "res-ex-1", .pw)
        net.deliverAll()
        #expect(net.basts[1] == [.pw])
        #expect(net.sent.allSatisfy { !$0.hasSuffix("CANCEL") })
        #expect(net.clean())
    }

    @Test("orphaning a lock mastered elsewhere sends CANCEL with ORPHAN in m_flags; the master copy keeps it",
          arguments: [(waiting: false, survives: true), (waiting: true, survives: false)])
    func remoteOrphan(waiting: Bool, survives: Bool) {
        var net = Net(2)
        let holder = net.lock(1, "res-ex-1", waiting ? .ex : .nl)
        let id = net.lock(2, "res-ex-1", .pr, flags: .persistent)
        net.deliverAll()
        #expect(net.statuses(2) == (waiting ? [] : [.granted]))
        let before = net.completions[2, default: []].count
        net.orphan(2, id)
        let cancel = net.queues[[2, 1]]?.last
        #expect(cancel?.messageType == .cancel)
        #expect(cancel?.flags == LockBlockFlags.orphan)
        #expect(cancel.map { LockFlags(rawValue: $0.exflags).contains(.persistent) } == true)
        net.deliverAll()
        #expect(net.completions[2, default: []].count == before)  // no callbacks for an orphan
        let master = net.nodes[1]!.resourceView(Array("res-ex-1".utf8))!.resource
        if survives {
            let copy = master.grantQueue.first { $0.nodeID == 2 }
            #expect(copy?.wireFlags == LockBlockFlags.orphan && copy?.flags.contains(.persistent) == true)
            #expect(net.nodes[2]!.orphans == [id])
        } else {
            #expect(master.waitQueue.isEmpty)
            #expect(net.nodes[2]!.orphans.isEmpty && net.nodes[2]!.lockView(id) == nil)
        }
        #expect(net.unlock(1, holder) == nil)
        net.deliverAll()
        #expect(net.clean())
    }

    @Test("an orphaned conversion on our own master is cancelled back to its granted mode")
    func orphanedConversion() {
        var net = Net(2)
        let other = net.lock(1, "res-ex-1", .pr)
        let id = net.lock(1, "res-ex-1", .pr, flags: .persistent)
        net.convert(1, id, .ex)
        #expect(net.nodes[1]!.lockView(id)!.lock.status == .convert)
        net.orphan(1, id)
        let v = net.nodes[1]!.lockView(id)!
        #expect(v.lock.status == .granted && v.lock.grantedMode == .pr)
        // PERSISTENT was replaced by the conversion's flags, as the kernel's lkb_exflags.
        #expect(net.nodes[1]!.isPersistent(id) == false)
        #expect(net.statuses(1) == [.granted, .granted])
        #expect(net.unlock(1, other) == nil)
        #expect(net.clean())
    }

    @Test("purge: pid 0 or the owner's pid releases (FORCEUNLOCK|IVVALBLK), another pid keeps; PURGE reaches another node",
          arguments: [(pid: UInt32(0), purged: true), (pid: 4242, purged: true), (pid: 7, purged: false)])
    func purge(pid: UInt32, purged: Bool) {
        var net = Net(2)
        // Node 1's orphan on its own master (PW with VALBLK: the purge invalidates the value).
        var n1 = net.nodes[1]!
        let local = n1.lock(name: Array("res-ex-1".utf8), mode: .pw, flags: [.persistent, .valBlk], lvb: [1], pid: 4242,
                            now: net.now)
        net.nodes[1] = n1
        net.apply(local.actions, from: 1)
        net.orphan(1, local.lkid)
        // Node 2's orphan on node 2's resource.
        var n2 = net.nodes[2]!
        let remote = n2.lock(name: Array("res-cvt-0".utf8), mode: .ex, flags: .persistent, pid: 4242, now: net.now)
        net.nodes[2] = n2
        net.apply(remote.actions, from: 2)
        net.orphan(2, remote.lkid)

        net.purge(1, nodeID: 0, pid: pid)
        net.purge(1, nodeID: 2, pid: pid)
        #expect(net.sent.last == "1>2 PURGE")
        let message = net.queues[[1, 2]]!.last!
        #expect(message.nodeID == 2 && message.pid == pid)
        net.deliverAll()
        #expect(net.nodes[1]!.orphans == (purged ? [] : [local.lkid]))
        #expect(net.nodes[2]!.orphans == (purged ? [] : [remote.lkid]))
        #expect((net.nodes[1]!.lockView(local.lkid) == nil) == purged)
        let res = net.nodes[1]!.resourceView(Array("res-ex-1".utf8))!
        #expect(res.resource.valueNotValid == purged)
        #expect(net.completions[1, default: []].map(\.status) == [.granted])  // nothing for the orphan
        #expect(net.clean())
    }

    @Test("errors: orphaning a master copy or an orphan is EINVAL, an unknown lock ENOENT; purging a non-member EINVAL")
    func errors() {
        var net = Net(2)
        let id = net.lock(1, "res-ex-1", .ex, flags: .persistent)
        _ = net.lock(2, "res-ex-1", .nl)
        net.deliverAll()
        let copy = net.nodes[1]!.resourceView(Array("res-ex-1".utf8))!.resource.grantQueue.first { $0.nodeID == 2 }!.id
        var n = net.nodes[1]!
        #expect(n.orphan(lkid: copy, now: net.now).error == .invalid)
        #expect(n.orphan(lkid: 77, now: net.now).error == .notFound)
        #expect(n.orphan(lkid: id, now: net.now).error == nil)
        #expect(n.orphan(lkid: id, now: net.now).error == .invalid)
        #expect(n.purge(nodeID: 9, pid: 0, now: net.now).error == .invalid)
        #expect(n.orphans == [id])
    }
}

extension LockManagerOverlapTests.Net {
    mutating func orphan(_ node: UInt32, _ lkid: UInt32) {
        var n = nodes[node]!
        let r = n.orphan(lkid: lkid, now: now)
        nodes[node] = n
        #expect(r.error == nil)
        apply(r.actions, from: node)
    }

    mutating func adopt(_ node: UInt32, _ name: String, _ mode: LockMode, tag: UInt64) -> LockManager.CallResult {
        var n = nodes[node]!
        let r = n.adoptOrphan(name: Array(name.utf8), mode: mode, flags: .orphan, tag: tag, now: now)
        nodes[node] = n
        apply(r.actions, from: node)
        return r
    }

    mutating func purge(_ node: UInt32, nodeID: UInt32, pid: UInt32) {
        var n = nodes[node]!
        let r = n.purge(nodeID: nodeID, pid: pid, now: now)
        nodes[node] = n
        #expect(r.error == nil)
        apply(r.actions, from: node)
    }
}
