import DLMNode
import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOPosix

/// The agent of `dlm-peer run --agent`: the same `AgentRuntime` as `dlm-peer agent`, in the
/// node's own process, driving its `PeerNode` directly (`InProcessLockspaceControl`).
final class EmbeddedAgent: Sendable {
    let runtime: AgentRuntime
    let controls: AgentControls
    let lockspaces: [String]
    private let group: MultiThreadedEventLoopGroup
    private let left = NIOLockedValueBox<Set<String>>([])
    private let allLeft = DispatchSemaphore(value: 0)
    private let logger: Logger

    init(cluster: ClusterConfig, configPath: String, node: UInt32, peer: PeerNode, adminPath: String?) throws {
        var logger = Logger(label: "dlm-agent")
        logger[metadataKey: "node"] = "\(node)"
        self.logger = logger
        lockspaces = cluster.lockspaces(of: node).map(\.name)
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let left = self.left
        let allLeft = self.allLeft
        let all = Set(lockspaces)
        let control = InProcessLockspaceControl(node: peer) { ls in
            let done = left.withLockedValue { l -> Bool in
                l.insert(ls)
                return l == all
            }
            if done { allLeft.signal() }
        }
        runtime = AgentRuntime(config: cluster, configPath: configPath, me: node, control: control,
                               loop: group.next(), logger: logger)
        do {
            try runtime.start().wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        controls = AgentControls(runtime: runtime, node: node, adminPath: adminPath, configPath: configPath, logger: logger)
        logger.info("agent running in the node's process (admin socket \(controls.adminPath))")
    }

    /// The node has created its lockspaces (stopped): the agent joins them, as on an `online` uevent.
    func lockspacesCreated() {
        for ls in lockspaces { runtime.submit(.online(lockspace: ls)) }
    }

    /// A coordinated leave of every lockspace: the agents stop the other members and start them
    /// without this node. Returns whether all of them finished within `timeout` seconds: the
    /// node's lockspaces are gone and its agent has announced stopped for a change without it
    /// (the other agents wait for that before they start; on a 3.1 link, with no FIN handshake to
    /// wait for, the process would otherwise exit before the change reaches it).
    func leaveAll(timeout: Double) -> Bool {
        let deadline = DispatchTime.now() + timeout
        for ls in lockspaces {
            logger.info("\(ls): leaving through the agents")
            runtime.submit(.offline(lockspace: ls))
        }
        if lockspaces.isEmpty { return true }
        guard allLeft.wait(timeout: deadline) == .success else { return false }
        let runtime = self.runtime
        let lockspaces = self.lockspaces
        while DispatchTime.now() < deadline {
            let announced = try? runtime.loop.submit { lockspaces.allSatisfy { runtime.state.hasLeft($0) } }.wait()
            if announced == true { return true }
            usleep(20_000)
        }
        return false
    }

    func shutdown() {
        controls.close()
        try? runtime.shutdown().wait()
        try? group.syncShutdownGracefully()
    }
}
