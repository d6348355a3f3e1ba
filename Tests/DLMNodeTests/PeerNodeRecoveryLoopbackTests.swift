import DLMNode
import DLMTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

/// Three real `PeerNode`s on 127.0.0.1, .2 and .3 (TCP, midcomms, recovery, lock managers): locks
/// are held across the cluster, node 3 leaves while it masters resources and holds an EX that
/// node 2 waits for; nodes 1 and 2 are stopped and started with the new member list (node 2 over its
/// control requests, node 1 through the Swift API), recover, and the locks come out right.
@Suite("PeerNode recovery on loopback", .serialized)
struct PeerNodeRecoveryLoopbackTests {
    final class Events: @unchecked Sendable {
        private let lock = NSLock()
        private var items: [(node: UInt32, name: String, completion: LockManager.Completion)] = []

        func add(_ node: UInt32, _ name: String, _ c: LockManager.Completion) {
            lock.lock()
            items.append((node, name, c))
            lock.unlock()
        }

        func completions(_ node: UInt32, _ name: String) -> [LockManager.Completion] {
            lock.lock()
            defer { lock.unlock() }
            return items.filter { $0.node == node && $0.name == name }.map(\.completion)
        }
    }

    static func config(port: Int) throws -> ClusterConfig {
        try ClusterConfig.parse("""
            [cluster]
            name = "loop"
            transport = "tcp"
            port = \(port)

            [[node]]
            id = 1
            addresses = ["127.0.0.1"]
            kind = "peer"

            [[node]]
            id = 2
            addresses = ["127.0.0.2"]
            kind = "peer"

            [[node]]
            id = 3
            addresses = ["127.0.0.3"]
            kind = "peer"

            [[lockspace]]
            name = "alpha"
            members = [1, 2, 3]
            lvb_length = 32
            """)
    }

    /// Polls `condition` for up to `seconds`.
    static func eventually(_ seconds: Double = 20, _ condition: () async throws -> Bool) async rethrows -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if try await condition() { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return try await condition()
    }

    @Test("node 3 leaves holding and mastering locks; 1 and 2 stop, start, recover; locks survive, the waiter is granted")
    func threeNodesOneLeaves() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 3)
        var failure: Error?
        do { try await scenario(group) } catch { failure = error }
        try? await group.shutdownGracefully()
        if let failure { throw failure }
    }

    func scenario(_ group: MultiThreadedEventLoopGroup) async throws {
        let port = Int.random(in: 30000...60000)
        let cfg = try Self.config(port: port)
        var peers: [UInt32: PeerNode] = [:]
        for id: UInt32 in [1, 2, 3] {
            let loop = group.next()
            peers[id] = try await loop.submit { try PeerNode(config: cfg, nodeID: id, eventLoop: loop) }.get()
        }
        let p1 = peers[1]!, p2 = peers[2]!, p3 = peers[3]!
        // Join: all three start at once (initial formation).
        let joins = [p1.start(), p2.start(), p3.start()]
        for j in joins { _ = try await j.get() }

        let events = Events()
        func lock(_ p: PeerNode, _ name: String, _ mode: LockMode, _ flags: LockFlags = []) async throws -> UInt32 {
            try await p.lock(lockspace: "alpha", name: name, mode: mode, flags: flags,
                             onCompletion: { c in events.add(p.nodeID, name, c) }).get()
        }
        func granted(_ node: UInt32, _ name: String) -> Bool {
            events.completions(node, name).contains { $0.status == .granted }
        }

        // Node 3 masters "dead-ex" (first to lock it) and holds EX; node 2 waits for PR on it.
        _ = try await lock(p3, "dead-ex", .ex)
        #expect(await Self.eventually { granted(3, "dead-ex") })
        _ = try await lock(p2, "dead-ex", .pr)
        // Node 3 masters "shared"; node 1 and node 2 hold PR there too.
        _ = try await lock(p3, "shared", .pr)
        #expect(await Self.eventually { granted(3, "shared") })
        _ = try await lock(p1, "shared", .pr)
        _ = try await lock(p2, "shared", .pr)
        // Node 1 masters "mine" and holds EX.
        _ = try await lock(p1, "mine", .ex)
        #expect(await Self.eventually { granted(1, "shared") && granted(2, "shared") && granted(1, "mine") })
        // The waiter really waits.
        try await Task.sleep(for: .milliseconds(300))
        #expect(!granted(2, "dead-ex"))

        // Node 3 goes away (its lockspace is released; survivors learn it from their agent).
        try await p3.leave().get()

        // The agent's protocol: stop every remaining member, then start each with the new list.
        let stop2 = try await LockspaceControlRequests.answer("ls-stop alpha", node: p2)!.get()
        #expect(stop2.contains("\"ok\":true"), "\(stop2)")
        try await p1.stop(lockspace: "alpha")
        var status1 = try await p1.status().get()
        #expect(status1.lockspaces.first?.phase == "stopped")
        // A lock call while stopped waits for the recovery.
        let blocked = p1.lock(lockspace: "alpha", name: "late", mode: .cr, onCompletion: { c in events.add(1, "late", c) })

        let start2 = try await LockspaceControlRequests.answer("ls-start alpha 1:1 2:1", node: p2)!.get()
        #expect(start2.contains("started"), "\(start2)")
        let outcome = try await p1.start(lockspace: "alpha", members: [(1, 1), (2, 1)])
        if case .started = outcome {} else { Issue.record("start: \(outcome)") }
        let r1 = try await p1.waitForRecovery(lockspace: "alpha")
        let r2 = try await p2.waitForRecovery(lockspace: "alpha")
        #expect(r1.members == [1, 2] && r2.members == [1, 2])
        #expect(r1.departed == [3] && r2.departed == [3])
        #expect(r1.generation == r2.generation && r1.generation >= 2)

        // Node 3's EX is purged: node 2's waiting PR is granted (node 2 is the new master).
        #expect(await Self.eventually { granted(2, "dead-ex") })
        _ = try await blocked.get()
        #expect(await Self.eventually { granted(1, "late") })

        // The PR locks on "shared" survived the loss of their master: an EX must not be granted.
        _ = try await lock(p2, "shared", .ex, .noQueue)
        #expect(await Self.eventually { events.completions(2, "shared").contains { $0.status == .wouldBlock } })
        _ = try await lock(p1, "mine", .ex, .noQueue)
        // (node 1's own second EX on "mine" conflicts with its first)
        #expect(await Self.eventually { events.completions(1, "mine").contains { $0.status == .wouldBlock } })
        // And a compatible request is granted by the rebuilt master.
        _ = try await lock(p2, "shared", .cr)
        #expect(await Self.eventually { events.completions(2, "shared").filter { $0.status == .granted }.count == 2 })

        status1 = try await p1.status().get()
        let ls1 = try #require(status1.lockspaces.first)
        #expect(ls1.members == [1, 2])
        #expect(ls1.phase == "running")
        #expect(ls1.completedRecoveries == 2)
        let status2 = try await p2.status().get()
        #expect(status2.lockspaces.first?.members == [1, 2])

        try await p1.leave().get()
        try await p2.leave().get()
    }

    @Test("node 3 crashes (its event loop dies, no FIN) holding an EX node 1 waits for; 1 and 2 recover")
    func threeNodesOneCrashes() async throws {
        let survivors = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let doomed = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var failure: Error?
        do { try await crashScenario(survivors, doomed) } catch { failure = error }
        try? await doomed.shutdownGracefully()
        try? await survivors.shutdownGracefully()
        if let failure { throw failure }
    }

    func crashScenario(_ survivors: MultiThreadedEventLoopGroup, _ doomed: MultiThreadedEventLoopGroup) async throws {
        let cfg = try Self.config(port: Int.random(in: 30000...60000))
        let l1 = survivors.next(), l2 = survivors.next(), l3 = doomed.next()
        let p1 = try await l1.submit { try PeerNode(config: cfg, nodeID: 1, eventLoop: l1) }.get()
        let p2 = try await l2.submit { try PeerNode(config: cfg, nodeID: 2, eventLoop: l2) }.get()
        let p3 = try await l3.submit { try PeerNode(config: cfg, nodeID: 3, eventLoop: l3) }.get()
        for j in [p1.start(), p2.start(), p3.start()] { _ = try await j.get() }
        let events = Events()
        func lock(_ p: PeerNode, _ name: String, _ mode: LockMode, _ flags: LockFlags = []) async throws {
            _ = try await p.lock(lockspace: "alpha", name: name, mode: mode, flags: flags,
                                 onCompletion: { c in events.add(p.nodeID, name, c) }).get()
        }
        func statuses(_ node: UInt32, _ name: String) -> [LockResult] { events.completions(node, name).map(\.status) }

        try await lock(p3, "held", .ex)
        #expect(await Self.eventually { statuses(3, "held") == [.granted] })
        try await lock(p1, "held", .ex)          // waits for node 3
        try await lock(p3, "kept", .cr)          // node 3 masters "kept"
        #expect(await Self.eventually { statuses(3, "kept") == [.granted] })
        try await lock(p2, "kept", .pw)
        #expect(await Self.eventually { statuses(2, "kept") == [.granted] })
        try await Task.sleep(for: .milliseconds(200))
        #expect(statuses(1, "held").isEmpty)

        // Crash: node 3's event loop stops; its sockets close without the DLM FIN handshake.
        try await doomed.shutdownGracefully()
        for p in [p1, p2] { try await p.stop(lockspace: "alpha") }
        for p in [p1, p2] { try await p.start(lockspace: "alpha", members: [(1, 1), (2, 1)]) }
        let r1 = try await p1.waitForRecovery(lockspace: "alpha")
        let r2 = try await p2.waitForRecovery(lockspace: "alpha")
        #expect(r1.departed == [3] && r2.departed == [3] && r1.members == [1, 2])

        #expect(await Self.eventually { statuses(1, "held") == [.granted] }, "node 3's EX purged, the waiter granted")
        // Node 2's PW on "kept" survived its master's death: a PR must wait, NOQUEUE is refused.
        try await lock(p1, "kept", .pr, .noQueue)
        #expect(await Self.eventually { statuses(1, "kept") == [.wouldBlock] })
        try await lock(p1, "kept", .cr)
        #expect(await Self.eventually { statuses(1, "kept") == [.wouldBlock, .granted] })
        try await p1.leave().get()
        try await p2.leave().get()
    }
}
