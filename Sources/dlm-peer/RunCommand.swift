import ArgumentParser
import DLMNode
import DLMTransport
import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

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

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "dlm-peer")
        let cluster: ClusterConfig
        do {
            cluster = try ClusterConfig.load(path: config)
        } catch {
            for d in error.diagnostics { FileHandle.standardError.write(Data("\(d)\n".utf8)) }
            if error.diagnostics.isEmpty { FileHandle.standardError.write(Data("\(error)\n".utf8)) }
            throw ExitCode(2)
        }
        guard let me = cluster.node(node) else {
            throw ValidationError("node \(node) is not in \(config)")
        }
        if me.kind != .peer {
            logger.warning("node \(node) is a \(me.kind) node in \(config); running it as a dlm-peer anyway")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let peer = try loop.submit { try PeerNode(config: cluster, nodeID: node, eventLoop: loop, logger: logger) }.wait()

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
                peer.leave().whenComplete { result in
                    if case .failure(let e) = result { logger.error("leave: \(e)") }
                    logger.info("left")
                    done.signal()
                }
            }
            source.resume()
        }
        peer.eventLoop.execute {
            peer.start().whenComplete { result in
                switch result {
                case .success(let joined):
                    logger.info("joined \(joined.keys.sorted().joined(separator: ", ")); running (SIGTERM to leave)")
                case .failure(let e):
                    logger.error("join failed: \(e)")
                }
            }
        }
        done.wait()
        try? group.syncShutdownGracefully()
    }
}
