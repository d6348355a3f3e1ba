// Several agents (AgentRuntime) on 127.0.0.1/.2/.3 talking over their real TCP control
// connections, each driving a fake kernel side that records every operation and checks the
// kernel's assumptions (stop-before-start, one member list per change) across all nodes.

import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import DLMNode

/// The kernels of all test nodes, behind one lock: a real test double of the sysfs/configfs
/// side (it records writes and checks them), not a stub.
final class FakeKernels: Sendable {
    enum LS: Equatable, Sendable {
        case absent, stopped, running(ChangeID)
    }

    struct World: Sendable {
        var ls: [AgentNodeID: LS] = [:]
        var members: [AgentNodeID: [AgentNodeID]] = [:]
        var comms: [AgentNodeID: Set<AgentNodeID>] = [:]
        var log: [String] = []
        var violations: [String] = []
        var startedLists: [ChangeID: [AgentNodeID]] = [:]
    }

    let world = NIOLockedValueBox(World())

    func control(_ node: AgentNodeID) -> Control { Control(node: node, kernels: self) }

    /// The application creates the lockspace (stopped from birth).
    func create(_ node: AgentNodeID) {
        world.withLockedValue { $0.ls[node] = .stopped }
    }

    func state(_ node: AgentNodeID) -> LS { world.withLockedValue { $0.ls[node] ?? .absent } }
    func members(_ node: AgentNodeID) -> [AgentNodeID] { world.withLockedValue { $0.members[node] ?? [] } }

    struct Control: LocalLockspaceControl {
        let node: AgentNodeID
        let kernels: FakeKernels

        func stop(_ lockspace: String) async throws {
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...20)))   // a stop takes a while
            kernels.world.withLockedValue { w in
                w.log.append("\(node) stop")
                if w.ls[node] != nil, w.ls[node] != .absent { w.ls[node] = .stopped }
            }
        }

        func start(_ plan: StartPlan) async throws {
            kernels.world.withLockedValue { w in
                w.log.append("\(node) start \(plan.change) \(plan.members.map(\.id))")
                for m in plan.members {
                    switch w.ls[m.id] ?? .absent {
                    case .stopped: break
                    case .running(let c) where c == plan.change: break
                    case let other: w.violations.append("node \(node) starts \(plan.change) while node \(m.id) is \(other)")
                    }
                }
                let ids = plan.members.map(\.id)
                if let seen = w.startedLists[plan.change], seen != ids {
                    w.violations.append("\(plan.change): lists \(seen) and \(ids)")
                }
                w.startedLists[plan.change] = ids
                w.members[node] = ids
                w.ls[node] = .running(plan.change)
            }
        }

        func finishLeave(_ lockspace: String) async throws {
            kernels.world.withLockedValue { w in
                w.log.append("\(node) leave")
                w.ls[node] = .absent
                w.members[node] = []
            }
        }

        func refuseJoin(_ lockspace: String, errno: Int32) async throws {
            kernels.world.withLockedValue { w in
                w.log.append("\(node) refuse \(errno)")
                w.ls[node] = .absent
            }
        }

        func addComm(_ n: ClusterConfig.Node, local: Bool) async throws {
            kernels.world.withLockedValue { $0.comms[node, default: []].insert(n.id) }
        }

        func removeComm(_ n: AgentNodeID) async throws {
            kernels.world.withLockedValue { $0.comms[node, default: [1, 2, 3]].remove(n) }
        }
    }
}

@Suite("Agent control connections on loopback", .serialized)
struct AgentLoopbackTests {
    static func config(port: Int, members: [Int]) throws -> ClusterConfig {
        try ClusterConfig.parse("""
            [cluster]
            name = "loop"
            port = \(port - 1)
            agent_port = \(port)
            [[node]]
            id = 1
            addresses = ["127.0.0.1"]
            kind = "kernel"
            [[node]]
            id = 2
            addresses = ["127.0.0.2"]
            kind = "kernel"
            [[node]]
            id = 3
            addresses = ["127.0.0.3"]
            kind = "kernel"
            [[lockspace]]
            name = "alpha"
            members = [\(members.map(String.init).joined(separator: ", "))]
            """)
    }

    /// Polls `cond` every 20 ms for up to `seconds`.
    static func eventually(_ seconds: Double = 10, _ cond: () async -> Bool) async -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if await cond() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return await cond()
    }

    @Test("three agents: formation, a join by reload + online, a leave, node-down of a dead node")
    func lifecycle() async throws {
        let port = Int.random(in: 30000...60000)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let kernels = FakeKernels()
        var logger = Logger(label: "agent-test")
        logger.logLevel = .warning
        let config = try Self.config(port: port, members: [1, 2])
        var agents: [AgentNodeID: AgentRuntime] = [:]
        for id: AgentNodeID in [1, 2, 3] {
            let r = AgentRuntime(config: config, configPath: nil, me: id, control: kernels.control(id),
                                 loop: group.next(), logger: logger)
            try await r.start().get()
            agents[id] = r
        }
        // every agent has said hello to every other one
        #expect(await Self.eventually {
            for (id, r) in agents {
                let s = try? await r.status().get()
                if Set(s?.synced ?? []) != Set([1, 2, 3]).subtracting([id]) { return false }
            }
            return true
        })

        // formation: both create, both start G0 with [1, 2], no barrier
        for id: AgentNodeID in [1, 2] {
            kernels.create(id)
            agents[id]!.submit(.online(lockspace: "alpha"))
        }
        #expect(await Self.eventually { kernels.state(1) == .running(.formation) && kernels.state(2) == .running(.formation) })

        // node 3 is allowed by a reload, then its application creates alpha
        let config3 = try Self.config(port: port, members: [1, 2, 3])
        for r in agents.values {
            let refused = try await r.loop.submit { r.apply(config3) }.get()
            #expect(refused == nil)
        }
        kernels.create(3)
        agents[3]!.submit(.online(lockspace: "alpha"))
        #expect(await Self.eventually {
            [1, 2, 3].allSatisfy { kernels.members(AgentNodeID($0)) == [1, 2, 3] }
                && [1, 2, 3].allSatisfy { if case .running = kernels.state(AgentNodeID($0)) { return true }; return false }
        })
        let afterJoin = kernels.world.withLockedValue { $0 }
        #expect(afterJoin.violations.isEmpty, "\(afterJoin.violations)")
        #expect(afterJoin.log.filter { $0.hasSuffix("stop") }.count == 2, "\(afterJoin.log)")

        // node 3 leaves: its agent answers offline; 1 and 2 restart without it
        agents[3]!.submit(.offline(lockspace: "alpha"))
        #expect(await Self.eventually { kernels.members(1) == [1, 2] && kernels.members(2) == [1, 2] && kernels.state(3) == .absent })

        // node 2 dies (its agent is gone too); node-down 2 on node 1
        try await agents[2]!.shutdown().get()
        kernels.world.withLockedValue { $0.ls[2] = .absent }
        agents[1]!.submit(.nodeDownRequested(node: 2))
        #expect(await Self.eventually { kernels.members(1) == [1] })
        let end = kernels.world.withLockedValue { $0 }
        #expect(end.violations.isEmpty, "\(end.violations)")
        #expect(end.comms[1]?.contains(2) == false, "comms/2 removed on node 1")
        let status = try await agents[1]!.status().get()
        #expect(status.down == [2])
        for r in agents.values { try? await r.shutdown().get() }
        try? await group.shutdownGracefully()
    }

    @Test("an incoming connection that claims another node's id is dropped")
    func impostor() async throws {
        let port = Int.random(in: 30000...60000)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let kernels = FakeKernels()
        var logger = Logger(label: "agent-test")
        logger.logLevel = .critical
        let r = AgentRuntime(config: try Self.config(port: port, members: [1, 2]), configPath: nil, me: 1,
                             control: kernels.control(1), loop: group.next(), logger: logger)
        try await r.start().get()
        // from 127.0.0.3, claiming to be node 2
        let channel = try await ClientBootstrap(group: group)
            .bind(to: try SocketAddress(ipAddress: "127.0.0.3", port: 0))
            .connect(host: "127.0.0.1", port: port).get()
        var line = try AgentWire.encode(.hello(node: 2, incarnation: 5, lockspaces: []))
        line.append(UInt8(ascii: "\n"))
        try await channel.writeAndFlush(ByteBuffer(bytes: line)).get()
        try await channel.closeFuture.get()   // the agent closed it
        let status = try await r.status().get()
        #expect(!status.synced.contains(2))
        try await r.shutdown().get()
        try? await group.shutdownGracefully()
    }
}
