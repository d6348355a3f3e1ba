// `dlm-peer run --agent`: three real PeerNodes on 127.0.0.1/.2/.3, each with its agent in the
// same process (AgentRuntime + InProcessLockspaceControl), over real lowcomms and real agent
// control connections. A coordinated leave and a rejoin go through stop-everywhere / start.

import DLMTransport
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import DLMNode

@Suite("Agents inside dlm-peer nodes (run --agent)", .serialized, .timeLimit(.minutes(2)))
struct InProcessAgentTests {
    static func config(port: Int, agentPort: Int, members: [Int] = [1, 2, 3]) throws -> ClusterConfig {
        var text = "[cluster]\nname = \"inproc\"\nport = \(port)\nagent_port = \(agentPort)\n"
        for n in 1...3 {
            text += "\n[[node]]\nid = \(n)\naddresses = [\"127.0.0.\(n)\"]\nkind = \"peer\"\n"
        }
        text += "\n[[lockspace]]\nname = \"alpha\"\nmembers = \(members)\nlvb_length = 32\n"
        return try ClusterConfig.parse(text)
    }

    /// A PeerNode and its agent in one "process": the node's lockspaces are created stopped and
    /// its agent starts them. `left` records the agent's finished leaves.
    struct Member {
        let node: PeerNode
        let agent: AgentRuntime
        let joined: EventLoopFuture<[String: RecoveryReport]>

        init(_ n: UInt32, config: ClusterConfig, agentConfig: ClusterConfig? = nil, group: EventLoopGroup,
             left: NIOLockedValueBox<[UInt32: [String]]>) async throws {
            let loop = group.next()
            let node = try await loop.submit { try PeerNode(config: config, nodeID: n, eventLoop: loop, logger: APITest.logger) }.get()
            let control = InProcessLockspaceControl(node: node) { ls in left.withLockedValue { $0[n, default: []].append(ls) } }
            let agent = AgentRuntime(config: agentConfig ?? config, configPath: nil, me: n, control: control,
                                     loop: group.next(), logger: APITest.logger)
            try await agent.start().get()
            self.node = node
            self.agent = agent
            joined = try await loop.submit {
                node.start(.byClusterManager(created: { agent.submit(.online(lockspace: "alpha")) }))
            }.get()
        }
    }

    /// The members and completed recoveries of `alpha` on `node`.
    static func alpha(_ node: PeerNode) async throws -> (members: [UInt32], recoveries: Int, phase: String) {
        let s = try await node.status().get()
        let ls = try #require(s.lockspaces.first { $0.name == "alpha" })
        return (ls.members.sorted(), ls.completedRecoveries, ls.phase)
    }

    @Test("formation with the agents; node 3 leaves through them (1 and 2 stop and restart without it); locking goes on")
    func leaveThroughAgents() async throws {
        let config = try Self.config(port: APITest.port(), agentPort: APITest.port())
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let left = NIOLockedValueBox<[UInt32: [String]]>([:])
        var members: [Member] = []
        for n: UInt32 in 1...3 { members.append(try await Member(n, config: config, group: group, left: left)) }
        let nodes = members.map(\.node)
        let agents = members.map(\.agent)
        for m in members { _ = try await withTimeout(seconds: 20) { try await m.joined.get() } }
        for node in nodes {
            let a = try await Self.alpha(node)
            #expect(a.members == [1, 2, 3] && a.recoveries == 1)
        }

        // Node 2 holds EX; node 3 leaves through the agents.
        let held = try await nodes[1].lockspace("alpha").lock("inproc-r1", mode: .ex)
        agents[2].submit(.offline(lockspace: "alpha"))
        #expect(try await eventually(seconds: 20) {
            left.withLockedValue { $0[3] == ["alpha"] }
        }, "node 3's agent finishes its leave")
        for node in nodes.prefix(2) {
            #expect(try await eventually(seconds: 20) {
                let a = try await Self.alpha(node)
                return a.members == [1, 2] && a.recoveries == 2
            }, "node \(node.nodeID) restarted with [1, 2]")
        }
        // Locking works in the new membership: node 1 waits for node 2's EX and gets it after.
        let ls1 = nodes[0].lockspace("alpha")
        let waiting = try await ls1.request("inproc-r1", mode: .ex)
        try await Task.sleep(nanoseconds: 100_000_000)
        #expect(waiting.status.lastResult == nil, "node 1's EX waits behind node 2's")
        _ = try await nodes[1].lockspace("alpha").unlock(held)
        try await withTimeout(seconds: 10) { try await waiting.wait() }
        #expect(waiting.mode == .ex)
        _ = try await ls1.unlock(waiting)

        let leaves = nodes.map { $0.leave() }
        for l in leaves { _ = try? await withTimeout(seconds: 10) { try await l.get() } }
        for a in agents { try? await a.shutdown().get() }
        try? await group.shutdownGracefully()
    }

    @Test("a node joins after the formation: a reload allows it, its agent joins, 1 and 2 stop and all start [1, 2, 3]; its lock waits for an older holder")
    func joinAfterFormation() async throws {
        let port = APITest.port(), agentPort = APITest.port()
        let config12 = try Self.config(port: port, agentPort: agentPort, members: [1, 2])
        let config123 = try Self.config(port: port, agentPort: agentPort)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let left = NIOLockedValueBox<[UInt32: [String]]>([:])
        // Nodes 1 and 2 form alpha; their transport knows node 3 (config123), their agents allow [1, 2].
        var members: [Member] = []
        for n: UInt32 in 1...2 {
            members.append(try await Member(n, config: config123, agentConfig: config12, group: group, left: left))
        }
        for m in members { _ = try await withTimeout(seconds: 20) { try await m.joined.get() } }
        for m in members { #expect(try await Self.alpha(m.node).members == [1, 2]) }
        let held = try await members[0].node.lockspace("alpha").lock("inproc-late", mode: .ex)

        // The reload allows node 3; then it starts and its agent joins alpha.
        for m in members {
            let refused = try await m.agent.loop.submit { m.agent.apply(config123) }.get()
            #expect(refused == nil)
        }
        let third = try await Member(3, config: config123, group: group, left: left)
        members.append(third)
        _ = try await withTimeout(seconds: 20) { try await third.joined.get() }
        for m in members {
            #expect(try await eventually(seconds: 20) {
                let a = try await Self.alpha(m.node)
                return a.members == [1, 2, 3] && a.phase == "\(RecoveryPhase.running)"
            }, "node \(m.node.nodeID) runs with [1, 2, 3]")
        }
        // Node 3's EX waits behind node 1's, which survived the membership change.
        let late = try await members[2].node.lockspace("alpha").request("inproc-late", mode: .ex)
        try await Task.sleep(nanoseconds: 100_000_000)
        #expect(late.status.lastResult == nil)
        _ = try await members[0].node.lockspace("alpha").unlock(held)
        try await withTimeout(seconds: 10) { try await late.wait() }
        #expect(late.mode == .ex)
        _ = try await members[2].node.lockspace("alpha").unlock(late)

        let leaves = members.map { $0.node.leave() }
        for l in leaves { _ = try? await withTimeout(seconds: 10) { try await l.get() } }
        for m in members { try? await m.agent.shutdown().get() }
        try? await group.shutdownGracefully()
    }
}
