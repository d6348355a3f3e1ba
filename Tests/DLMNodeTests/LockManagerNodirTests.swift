import DLMTransport
import Testing

@testable import DLMNode

/// nodir lockspaces (locking.md §3.10; the kernel's `find_rsb_nodir`, `validate_master_nodeid`,
/// the inactive-rsb scan): the node a name hashes to masters it, requests go there directly.
@Suite("LockManager in a nodir lockspace")
struct LockManagerNodirTests {
    typealias Net = LockManagerOverlapTests.Net

    static func net() -> Net {
        var net = Net(2)
        let members = [LockManager.Member(nodeID: 1), LockManager.Member(nodeID: 2)]
        for id: UInt32 in [1, 2] {
            net.nodes[id] = LockManager(.init(lockspaceID: 7, ourNodeID: id, lvbLength: 8, nodir: true), members: members)
        }
        return net
    }

    // "res-ex-1" hashes to node 1, "res-cvt-0" to node 2.
    @Test("a request goes straight to the node the name hashes to; no LOOKUP, no REMOVE after the unlock",
          arguments: [
              (node: UInt32(1), name: "res-ex-1", sent: [String]()),
              (2, "res-ex-1", ["2>1 REQUEST", "1>2 REQUEST_REPLY", "2>1 UNLOCK", "1>2 UNLOCK_REPLY"]),
              (1, "res-cvt-0", ["1>2 REQUEST", "2>1 REQUEST_REPLY", "1>2 UNLOCK", "2>1 UNLOCK_REPLY"]),
              (2, "res-cvt-0", []),
          ])
    func directRequests(node: UInt32, name: String, sent: [String]) {
        var net = Self.net()
        let id = net.lock(node, name, .ex)
        net.deliverAll()
        #expect(net.statuses(node) == [.granted])
        let master = net.nodes[1]!.directoryNode(hash: JHash.hash(Array(name.utf8)))
        for n: UInt32 in [1, 2] {
            if let r = net.nodes[n]!.resourceView(Array(name.utf8)) { #expect(r.master == master) }
        }
        #expect(net.unlock(node, id) == nil)
        net.deliverAll()
        // Past toss_secs the scans free the inactive rsbs without a REMOVE.
        for t in [20, 40] {
            for n: UInt32 in [1, 2] {
                var m = net.nodes[n]!
                net.apply(m.tick(now: .seconds(t)), from: n)
                net.nodes[n] = m
            }
        }
        net.deliverAll()
        #expect(net.sent == sent)
        #expect(net.nodes.values.allSatisfy { $0.resourceViews.isEmpty })
        #expect(net.clean())
    }

    @Test("a REQUEST to a node the name does not hash to is refused with -ENOTBLK (it never takes mastery)",
          arguments: [false, true])
    func notMaster(afterUse: Bool) {
        var net = Self.net()
        let name = Array("res-cvt-0".utf8)  // mastered by node 2
        if afterUse {
            // Node 1 knows the rsb (inactive, master 2) from an earlier lock of its own.
            let id = net.lock(1, "res-cvt-0", .nl)
            net.deliverAll()
            #expect(net.unlock(1, id) == nil)
            net.deliverAll()
        }
        let request = LockMessages.lockMessage(
            .request, lock: LockEntry(id: 9, mode: .ex), hash: JHash.hash(name), name: name, lvbLength: 8,
            header: LockMessages.header(lockspace: 7, sender: 2, version: .v3_2))
        var n1 = net.nodes[1]!
        let actions = n1.receive(request, from: 2, now: net.now)
        net.nodes[1] = n1
        let replies = actions.compactMap { a -> DLMMessage? in if case .send(let m, 2) = a { return m } else { return nil } }
        #expect(replies.map(\.messageType) == [.requestReply])
        #expect(replies.first?.result == WireErrno.enotblk && replies.first?.remid == 9)
        #expect(n1.resourceView(name).map { $0.master == 2 && !$0.resource.allLocks.contains { $0.isMasterCopy } } ?? true)
    }
}
