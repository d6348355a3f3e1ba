import ArgumentParser
import DLMNode
import Dispatch
import Foundation
import Logging
import NIOCore
import NIOPosix

/// `dlm-peer agent --config FILE --node ID`: the cluster manager of one node (what
/// dlm_controld does on a kernel node), coordinating membership changes with the other agents.
struct AgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run the cluster manager of a node: configfs/sysfs and uevents on a kernel node, membership barriers with the other agents.",
        discussion: """
            On a kernel node: sets up configfs (cluster name, protocol, port, a comms entry per \
            configured node), answers the kernel's online/offline uevents (id, members, control, \
            event_done) and coordinates every later membership change with the agents of the \
            other nodes over TCP (agent_port, default 21065): all members stop before any starts. \
            SIGHUP or `dlm-peer reload` re-reads the config; `dlm-peer node-down ID` declares a \
            node failed. Refuses to start while the kernel already has lockspaces.
            """)

    @Option(help: "The cluster config file (TOML).")
    var config: String

    @Option(help: "This node's id in the config.")
    var node: UInt32

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    @Option(help: "The admin socket for reload/node-down/agent-status (default: $XDG_RUNTIME_DIR or /tmp, dlm-peer-agent.<node>.sock).")
    var admin: String?

    @Option(help: "For a peer node: the dlm-peer control socket taking ls-stop/ls-start (default: its default socket).")
    var control: String?

    func run() throws {
        bootstrapLogging(level: logLevel)
        let logger = Logger(label: "dlm-agent")
        let (cluster, me) = try loadClusterConfig(path: config, node: node)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let localControl: any LocalLockspaceControl
        var kernel: KernelLockspaceControl?
        switch me.kind {
        case .kernel:
            let k = KernelLockspaceControl()
            let existing = k.existingLockspaces()
            guard existing.isEmpty else {
                // dlm_controld's rule: lockspaces nobody controls (an agent died) need a reboot
                logger.error("the kernel already has lockspaces (\(existing.joined(separator: ", "))): an agent cannot take over uncontrolled lockspaces; reboot the node")
                throw ExitCode(1)
            }
            do {
                try k.setUpCluster(cluster, me: node)
            } catch {
                logger.error("configfs setup failed: \(error) (is the dlm module loaded and configfs mounted at /sys/kernel/config?)")
                throw ExitCode(1)
            }
            logger.info("configfs: cluster \(cluster.name), \(cluster.transport), port \(cluster.port), comms for nodes \(cluster.nodes.map { String($0.id) }.joined(separator: ","))")
            localControl = k
            kernel = k
        case .peer:
            localControl = PeerLockspaceControl(socketPath: control ?? ControlServer.defaultPath(node: node))
        }
        let runtime = AgentRuntime(config: cluster, configPath: config, me: node, control: localControl,
                                   loop: loop, logger: logger)
        #if os(Linux)
        var listener: UeventListener?
        if kernel != nil {
            do {
                listener = try UeventListener { event in
                    switch event {
                    case .online(let ls):
                        logger.info("uevent online \(ls)")
                        runtime.submit(.online(lockspace: ls))
                    case .offline(let ls):
                        logger.info("uevent offline \(ls)")
                        runtime.submit(.offline(lockspace: ls))
                    }
                }
            } catch {
                logger.error("\(error)")
                throw ExitCode(1)
            }
        }
        #endif
        do {
            try runtime.start().wait()
        } catch {
            logger.error("\(error)")
            throw ExitCode(1)
        }
        #if os(Linux)
        listener?.start()
        #endif
        if me.kind == .peer {
            // the dlm-peer node creates its lockspaces when it starts
            for ls in cluster.lockspaces(of: node) { runtime.submit(.online(lockspace: ls.name)) }
        }
        let controls = AgentControls(runtime: runtime, node: node, adminPath: admin, configPath: config, logger: logger)
        logger.info("agent of node \(node) running (admin socket \(controls.adminPath))")

        let done = DispatchSemaphore(value: 0)
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler {
                logger.info("signal: agent exiting (the kernel's lockspaces stay as they are)")
                done.signal()
            }
            s.resume()
            sources.append(s)
        }
        done.wait()
        controls.close()
        try? runtime.shutdown().wait()
        try? group.syncShutdownGracefully()
        _ = sources
    }
}

/// `dlm-peer agent-status --node ID`: what a running agent knows.
struct AgentStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent-status",
        abstract: "Show a running agent's lockspaces (local state, target change, last start, stopped members).")

    @Option(help: "The agent's node id (finds its default admin socket).")
    var node: UInt32?

    @Option(help: "The agent's admin socket.")
    var admin: String?

    @Flag(help: "The agent's JSON.")
    var json = false

    func run() throws {
        let path = try agentSocket(node: node, admin: admin)
        let reply = try ControlClient.request("status", path: path)
        if json {
            print(reply, terminator: reply.hasSuffix("\n") ? "" : "\n")
            return
        }
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        guard let status = try? d.decode(AgentStatus.self, from: Data(reply.utf8)) else {
            throw ValidationError("unexpected answer from \(path): \(reply.prefix(300))")
        }
        print(status.text, terminator: "")
    }
}

/// The admin socket of the agent: --admin, else the default one of --node, else the only one.
func agentSocket(node: UInt32?, admin: String?) throws -> String {
    if let admin { return admin }
    if let node { return AgentAdminServer.defaultPath(node: node) }
    let dir = URL(fileURLWithPath: AgentAdminServer.defaultPath(node: 0)).deletingLastPathComponent().path
    let found = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])
        .filter { $0.hasPrefix("dlm-peer-agent.") && $0.hasSuffix(".sock") }
    guard found.count == 1 else {
        throw ValidationError(found.isEmpty ? "no agent admin socket in \(dir): is `dlm-peer agent` running? (or give --admin PATH)"
                                            : "several agents in \(dir) (\(found.joined(separator: ", "))): give --node ID")
    }
    return "\(dir)/\(found[0])"
}

/// A reply line of the admin socket: `{"ok":true}` or `{"error":"..."}`.
func adminReply(_ reply: String) throws {
    let obj = (try? JSONSerialization.jsonObject(with: Data(reply.utf8))) as? [String: Any]
    if obj?["ok"] as? Bool == true { return }
    let message = obj?["error"] as? String ?? "unexpected answer: \(reply.prefix(300))"
    FileHandle.standardError.write(Data("\(message)\n".utf8))
    throw ExitCode(1)
}
