import DLMTransport
import Testing

@testable import DLMNode

/// Scripted multi-node flows for the waiters, the lookup list and overlapping unlock/cancel
/// (locking.md §3.8, §5.9, §5.10, §6.1, §6.2), with messages delivered one at a time.
@Suite("LockManager overlaps and lookup serialisation")
struct LockManagerOverlapTests {
    /// Two (or more) managers and per-pair FIFO queues.
    struct Net {
        var nodes: [UInt32: LockManager] = [:]
        var queues: [[UInt32]: [DLMMessage]] = [:]
        var completions: [UInt32: [LockManager.Completion]] = [:]
        var basts: [UInt32: [LockMode]] = [:]
        var sent: [String] = []
        let now = Duration.seconds(1)

        init(_ count: UInt32) {
            let members = (1...count).map { LockManager.Member(nodeID: $0) }
            for id in 1...count {
                nodes[id] = LockManager(.init(lockspaceID: 7, ourNodeID: id, lvbLength: 8), members: members)
            }
        }

        mutating func apply(_ actions: [LockManager.Action], from node: UInt32) {
            for action in actions {
                switch action {
                case .send(let m, let to):
                    queues[[node, to], default: []].append(m)
                    sent.append("\(node)>\(to) \(MessageType.name(m.type))")
                case .completion(let c): completions[node, default: []].append(c)
                case .blocking(_, _, let mode): basts[node, default: []].append(mode)
                case .log: break
                }
            }
        }

        mutating func lock(_ node: UInt32, _ name: String, _ mode: LockMode, flags: LockFlags = []) -> UInt32 {
            var n = nodes[node]!
            let r = n.lock(name: Array(name.utf8), mode: mode, flags: flags, now: now)
            nodes[node] = n
            #expect(r.error == nil)
            apply(r.actions, from: node)
            return r.lkid
        }

        mutating func convert(_ node: UInt32, _ lkid: UInt32, _ mode: LockMode) {
            var n = nodes[node]!
            let r = n.convert(lkid: lkid, mode: mode, now: now)
            nodes[node] = n
            #expect(r.error == nil)
            apply(r.actions, from: node)
        }

        mutating func unlock(_ node: UInt32, _ lkid: UInt32, _ flags: LockFlags = []) -> LockResult? {
            var n = nodes[node]!
            let r = n.unlock(lkid: lkid, flags: flags, now: now)
            nodes[node] = n
            apply(r.actions, from: node)
            return r.error
        }

        /// Deliver the oldest message from `from` to `to`; returns its type.
        @discardableResult
        mutating func deliver(_ from: UInt32, _ to: UInt32) -> MessageType? {
            guard var q = queues[[from, to]], !q.isEmpty else { return nil }
            let m = q.removeFirst()
            queues[[from, to]] = q
            var n = nodes[to]!
            let actions = n.receive(m, from: from, now: now)
            nodes[to] = n
            apply(actions, from: to)
            return m.messageType
        }

        mutating func deliverAll() {
            var progress = true
            while progress {
                progress = false
                for key in queues.keys.sorted(by: { ($0[0], $0[1]) < ($1[0], $1[1]) }) where !(queues[key]!.isEmpty) {
                    deliver(key[0], key[1])
                    progress = true
                }
            }
        }

        func statuses(_ node: UInt32) -> [LockResult] { completions[node, default: []].map(\.status) }

        func clean() -> Bool {
            nodes.values.allSatisfy { $0.invariantViolations().isEmpty && !$0.hasOutstandingOperations }
        }
    }

    // Two nodes: "res-ex-1" has dir node 1, "res-cvt-0" dir node 2 (capture E's table).

    @Test("cancel during the LOOKUP: completed with -DLM_ECANCEL, no REQUEST sent")
    func cancelDuringLookup() {
        var net = Net(2)
        let id = net.lock(2, "res-ex-1", .ex)
        #expect(net.sent == ["2>1 LOOKUP"])
        #expect(net.unlock(2, id, .cancel) == nil)
        #expect(net.sent.count == 1)  // recorded, nothing sent
        net.deliverAll()
        #expect(net.sent == ["2>1 LOOKUP", "1>2 LOOKUP_REPLY"])
        #expect(net.statuses(2) == [.cancelled])
        #expect(net.completions[2]?.first?.endOfLife == true)
        #expect(net.clean())
    }

    @Test("cancel during a LOOKUP answered with REQUEST_REPLY -EINPROGRESS: CANCEL follows")
    func cancelDuringLookupAsRequest() {
        var net = Net(2)
        _ = net.lock(1, "res-ex-1", .ex)  // node 1 is dir and master, holds EX
        let id = net.lock(2, "res-ex-1", .pr)
        #expect(net.unlock(2, id, .cancel) == nil)
        net.deliverAll()
        #expect(net.sent == ["2>1 LOOKUP", "1>2 REQUEST_REPLY", "2>1 CANCEL", "1>2 CANCEL_REPLY"])
        #expect(net.statuses(2) == [.cancelled])
        #expect(net.basts[1] == [.pr])
        #expect(net.clean())
    }

    @Test("force-unlock during a REQUEST that is granted: cb(0) then UNLOCK → cb(-DLM_EUNLOCK)")
    func forceUnlockDuringRequest() {
        var net = Net(2)
        let id = net.lock(2, "res-ex-1", .ex)
        net.deliver(2, 1)  // LOOKUP → LOOKUP_REPLY(2): node 2 becomes master, grants locally
        net.deliver(1, 2)
        #expect(net.statuses(2) == [.granted])
        #expect(net.unlock(2, id) == nil)
        #expect(net.statuses(2) == [.granted, .unlocked])
        // Node 1 is the dir node with a record naming 2: it sends REQUEST to 2 directly (§5.3).
        let other = net.lock(1, "res-ex-1", .ex)
        #expect(net.sent.last == "1>2 REQUEST")
        #expect(net.unlock(1, other, .forceUnlock) == nil)  // recorded against the REQUEST
        net.deliverAll()
        #expect(Array(net.sent.suffix(4)) == ["1>2 REQUEST", "2>1 REQUEST_REPLY", "1>2 UNLOCK", "2>1 UNLOCK_REPLY"])
        #expect(net.statuses(1) == [.granted, .unlocked])
        #expect(net.clean())
    }

    @Test("second request while the first's LOOKUP is out is parked, then sent after confirm_master")
    func lookupListParking() {
        var net = Net(2)
        _ = net.lock(1, "res-ex-1", .pr)  // node 1 masters it (dir node, first user)
        let a = net.lock(2, "res-ex-1", .pr)
        let b = net.lock(2, "res-ex-1", .cr)
        #expect(net.sent == ["2>1 LOOKUP"])  // b parked
        #expect(net.nodes[2]!.lockView(b)?.parked == true)
        net.deliver(2, 1)  // LOOKUP handled as request → REQUEST_REPLY 0
        net.deliver(1, 2)  // master confirmed → b's REQUEST goes out
        #expect(net.sent == ["2>1 LOOKUP", "1>2 REQUEST_REPLY", "2>1 REQUEST"])
        net.deliverAll()
        #expect(net.statuses(2) == [.granted, .granted])
        #expect(net.nodes[2]!.lockView(a)?.lock.grantedMode == .pr)
        #expect(net.nodes[2]!.lockView(b)?.lock.grantedMode == .cr)
        #expect(net.clean())
    }

    @Test("cancel of a conversion in flight: overlap, wait_count 2, -EINPROGRESS then -DLM_ECANCEL")
    func cancelConversionInFlight() {
        var net = Net(2)
        _ = net.lock(1, "res-ex-1", .pr)
        let id = net.lock(2, "res-ex-1", .pr)
        net.deliverAll()
        #expect(net.statuses(2) == [.granted])
        net.convert(2, id, .ex)
        #expect(net.unlock(2, id, .cancel) == nil)
        #expect(net.nodes[2]!.lockView(id)?.waitCount == 2)
        #expect(Array(net.sent.suffix(2)) == ["2>1 CONVERT", "2>1 CANCEL"])
        net.deliverAll()
        #expect(Array(net.sent.suffix(2)) == ["1>2 CONVERT_REPLY", "1>2 CANCEL_REPLY"])
        #expect(net.statuses(2) == [.granted, .cancelled])
        #expect(net.completions[2]?.last?.mode == .pr)
        #expect(net.nodes[2]!.lockView(id)?.lock.status == .granted)
        #expect(net.clean())
    }

    @Test("cancel of a conversion granted at once: the CANCEL_REPLY 0 is ignored")
    func cancelMoot() {
        var net = Net(2)
        _ = net.lock(1, "res-ex-1", .nl)  // node 1 masters it
        let id = net.lock(2, "res-ex-1", .nl)
        net.deliverAll()
        net.convert(2, id, .ex)  // nobody blocks: granted by the master
        #expect(net.unlock(2, id, .cancel) == nil)  // CANCEL sent as an overlap
        net.deliverAll()
        #expect(Array(net.sent.suffix(4)) == ["2>1 CONVERT", "2>1 CANCEL", "1>2 CONVERT_REPLY", "1>2 CANCEL_REPLY"])
        #expect(net.nodes[2]!.lockView(id)?.lock.grantedMode == .ex)
        #expect(net.statuses(2).filter { $0 == .granted }.count == 2)
        #expect(!net.statuses(2).contains(.cancelled))
        #expect(net.clean())
    }

    @Test("normal unlock while an operation is outstanding is -EBUSY; NOQUEUE conversion -EAGAIN keeps the lock")
    func busyAndAgain() {
        var net = Net(2)
        _ = net.lock(1, "res-ex-1", .pr)
        let id = net.lock(2, "res-ex-1", .pr)
        #expect(net.unlock(2, id) == .busy)
        net.deliverAll()
        var n2 = net.nodes[2]!
        let r = n2.convert(lkid: id, mode: .ex, flags: .noQueue, now: net.now)
        net.nodes[2] = n2
        net.apply(r.actions, from: 2)
        net.deliverAll()
        #expect(net.statuses(2) == [.granted, .wouldBlock])
        #expect(net.nodes[2]!.lockView(id)?.lock.grantedMode == .pr)
        #expect(net.unlock(2, id) == nil)
        net.deliverAll()
        #expect(net.statuses(2).last == .unlocked)
        #expect(net.clean())
    }
}
