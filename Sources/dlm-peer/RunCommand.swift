import ArgumentParser
import DLMNode
import DLMTransport
import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Takes `spec`'s lock through the Swift lock API, logs its callbacks (`LOCK`, `BAST`, `UNLOCK`
/// lines a test can wait for), and releases it after `spec.seconds` (never when 0).
func takeLock(_ spec: RunCommand.LockSpec, on peer: PeerNode, logger: Logger) {
    let what = "\(spec.lockspace) \(spec.resource) \(spec.mode)"
    Task {
        let ls = peer.lockspace(spec.lockspace)
        let lock: DLMLock
        do {
            lock = try await ls.request(spec.resource, mode: spec.mode, onBlocking: { mode in
                logger.info("BAST \(what): a \(mode) request is waiting")
            })
            logger.info("requested \(what) (lkid \(String(lock.lkid, radix: 16)))")
            try await lock.wait()
            logger.info("LOCK \(what) granted")
        } catch {
            logger.error("LOCK \(what) failed: \(error)")
            return
        }
        guard spec.seconds > 0 else { return }
        try? await Task.sleep(nanoseconds: UInt64(spec.seconds * 1e9))
        logger.info("releasing \(what)")
        do {
            try await ls.unlock(lock)
            logger.info("UNLOCK \(what) done (\(LockResult.unlocked))")
        } catch {
            logger.error("UNLOCK \(what) failed: \(error)")
        }
    }
}

/// `dlm-peer run --config FILE --node ID`: the userspace node.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a dlm-peer node: join its lockspaces with the kernel and dlm-peer nodes of the config.",
        discussion: """
            Listens on the node's address and port, joins every lockspace the config lists the node \
            in (with the config's member list), takes part in recovery, and on SIGTERM or SIGINT \
            leaves with the DLM FIN handshake so that no kernel waits for it. A second signal exits \
            at once.
            """)

    @Option(help: "The cluster config file (TOML).")
    var config: String

    @Option(help: "This node's id in the config.")
    var node: UInt32

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    @Option(help: "The control socket for `dlm-peer status` (default: $XDG_RUNTIME_DIR or /tmp, dlm-peer.<node>.sock).")
    var control: String?

    @Option(name: .customLong("lock"),
            help: ArgumentHelp("After joining, take a lock and release it after SECONDS (0: keep it). Repeatable.",
                               valueName: "LOCKSPACE:RESOURCE:MODE:SECONDS"))
    var locks: [String] = []

    @Option(help: ArgumentHelp("Report a lockspace whose join has not finished after SECONDS (0: never), naming the recovery phase and the node it waits for.",
                               valueName: "SECONDS"))
    var joinTimeout: Double = 60

    @Flag(help: ArgumentHelp("Run this node's agent in the process, instead of a separate `dlm-peer agent`.",
                             discussion: "Membership changes are then coordinated with the other nodes' agents (a config reload by SIGHUP or `dlm-peer reload`, `dlm-peer node-down`, heartbeat timeouts), and SIGTERM first leaves every lockspace through the agents (the other members stop and restart without this node), then closes the connections."))
    var agent = false

    @Option(help: "With --agent: the agent's admin socket for reload/node-down/agent-status (default: $XDG_RUNTIME_DIR or /tmp, dlm-peer-agent.<node>.sock).")
    var admin: String?

    @Option(help: ArgumentHelp("With --agent: how long SIGTERM waits for the coordinated leave before closing anyway.",
                               valueName: "SECONDS"))
    var leaveTimeout: Double = 20

    struct LockSpec {
        var lockspace: String
        var resource: String
        var mode: LockMode
        var seconds: Double
    }

    func parsedLocks() throws -> [LockSpec] {
        try locks.map { text in
            let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 4, !parts[0].isEmpty, !parts[1].isEmpty,
                  let mode = LockMode.allCases.first(where: { $0.description == parts[2].uppercased() && $0 != .iv }),
                  let seconds = Double(parts[3]), seconds >= 0 else {
                throw ValidationError("--lock \(text): expected LOCKSPACE:RESOURCE:MODE:SECONDS, MODE one of NL CR CW PR PW EX")
            }
            return LockSpec(lockspace: parts[0], resource: parts[1], mode: mode, seconds: seconds)
        }
    }

    func run() throws {
        bootstrapLogging(level: logLevel)
        let logger = Logger(label: "dlm-peer")
        let (cluster, me) = try loadClusterConfig(path: config, node: node)
        if me.kind != .peer {
            logger.warning("node \(node) is a \(me.kind) node in \(config); running it as a dlm-peer anyway")
        }
        let lockSpecs = try parsedLocks()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let peer = try loop.submit { try PeerNode(config: cluster, nodeID: node, eventLoop: loop, logger: logger) }.wait()

        let controlPath = control ?? ControlServer.defaultPath(node: node)
        let controlServer = try? ControlServer.start(path: controlPath, node: peer, logger: logger).wait()
        if controlServer == nil { logger.warning("control socket \(controlPath) unavailable: `dlm-peer status` will not work") }

        let embedded: EmbeddedAgent?
        do {
            embedded = agent ? try EmbeddedAgent(cluster: cluster, configPath: config, node: node, peer: peer, adminPath: admin) : nil
        } catch {
            logger.error("agent: \(error)")
            try? controlServer?.close().wait()
            throw ExitCode(1)
        }

        let done = DispatchSemaphore(value: 0)
        let signals = [SIGTERM, SIGINT].map { sig -> DispatchSourceSignal in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            return source
        }
        let leaving = NIOLockedValueBox(false)
        for source in signals {
            source.setEventHandler {
                let again = leaving.withLockedValue { v -> Bool in defer { v = true }; return v }
                if again {
                    logger.warning("second signal: exiting without a clean leave")
                    Foundation.exit(1)
                }
                logger.info("signal: leaving the cluster")
                if let embedded, !embedded.leaveAll(timeout: leaveTimeout) {
                    logger.warning("the agents did not finish the leave within \(leaveTimeout) s; closing anyway")
                }
                peer.leave().whenComplete { result in
                    if case .failure(let e) = result { logger.error("leave: \(e)") }
                    logger.info("left")
                    done.signal()
                }
            }
            source.resume()
        }
        peer.eventLoop.execute {
            let joining = peer.start(embedded.map { agent in .byClusterManager(created: { agent.lockspacesCreated() }) } ?? .immediately)
            if joinTimeout > 0 {
                let timeout = joinTimeout
                let check = peer.eventLoop.scheduleTask(in: .milliseconds(Int64(timeout * 1000))) {
                    reportSlowJoin(peer: peer, after: timeout, logger: logger)
                }
                joining.whenComplete { _ in check.cancel() }
            }
            joining.whenComplete { result in
                switch result {
                case .success(let joined):
                    logger.info("joined \(joined.keys.sorted().joined(separator: ", ")); running (SIGTERM to leave)")
                    for spec in lockSpecs { takeLock(spec, on: peer, logger: logger) }
                case .failure(let e):
                    logger.error("join failed: \(e)")
                }
            }
        }
        done.wait()
        embedded?.shutdown()
        try? controlServer?.close().wait()
        try? group.syncShutdownGracefully()
    }
}

/// The join has not finished after `seconds`: say where each unfinished lockspace is stuck. The
/// usual causes are a member that never creates the lockspace, or creates it under another name
/// or global id (it answers "not ready" for ours forever, as a kernel does), and a member that is
/// not running at all. The kernel itself waits forever; this is the cluster manager's timeout.
func reportSlowJoin(peer: PeerNode, after seconds: Double, logger: Logger) {
    peer.status().whenSuccess { status in
        for ls in status.lockspaces where ls.completedRecoveries == 0 {
            var what = "\(ls.name) (\(ls.id)): not joined after \(Int(seconds)) s: recovery phase \(ls.phase)"
            // A node that is not the lowest member waits for the lowest (the coordinator);
            // the coordinator waits for everyone.
            let low = ls.members.min()
            if let n = ls.waitingFor ?? (low == status.node ? nil : low) {
                what += ", waiting for node \(n): it has no lockspace \(ls.name) with id \(ls.id) yet (not running, not joined, or another name or id there)"
            } else {
                what += ", waiting for members \(ls.members.filter { $0 != status.node }.map(String.init).joined(separator: ", ")) (not running, not joined, or another lockspace name or id there)"
            }
            logger.error("\(what)")
        }
    }
}
