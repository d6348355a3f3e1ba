import ArgumentParser
import DLMNode
import Dispatch
import Foundation
import Logging
import NIOCore

/// Logs to standard error at `level` (trace ... critical; info when unknown), for the
/// long-running commands (`run`, `agent`).
func bootstrapLogging(level: String) {
    let level = Logger.Level(rawValue: level) ?? .info
    LoggingSystem.bootstrap { label in
        var h = StreamLogHandler.standardError(label: label)
        h.logLevel = level
        return h
    }
}

/// The cluster config at `path` and this node's entry in it. Every problem of the file is
/// printed as `FILE:LINE:COL: error: ...` and the command exits with status 2; a node id that
/// is not in the file is a usage error.
func loadClusterConfig(path: String, node: UInt32) throws -> (ClusterConfig, ClusterConfig.Node) {
    let cluster: ClusterConfig
    do {
        cluster = try ClusterConfig.load(path: path)
    } catch {
        for d in error.diagnostics { FileHandle.standardError.write(Data("\(d)\n".utf8)) }
        if error.diagnostics.isEmpty { FileHandle.standardError.write(Data("\(error)\n".utf8)) }
        throw ExitCode(2)
    }
    guard let me = cluster.node(node) else {
        throw ValidationError("node \(node) is not in \(path)")
    }
    return (cluster, me)
}

/// The admin socket of an agent (`dlm-peer reload`, `node-down`, `agent-status`) and SIGHUP as a
/// reload: what `dlm-peer agent` and `dlm-peer run --agent` both offer.
struct AgentControls: @unchecked Sendable {  // immutable; DispatchSource and the server are thread-safe
    let adminServer: AgentAdminServer?
    let adminPath: String
    private let hup: DispatchSourceSignal

    init(runtime: AgentRuntime, node: UInt32, adminPath: String?, configPath: String, logger: Logger) {
        let path = adminPath ?? AgentAdminServer.defaultPath(node: node)
        self.adminPath = path
        adminServer = try? AgentAdminServer.start(path: path, runtime: runtime).wait()
        if adminServer == nil { logger.warning("admin socket \(path) unavailable: reload/node-down will not work") }
        signal(SIGHUP, SIG_IGN)
        hup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        hup.setEventHandler {
            logger.info("SIGHUP: reloading \(configPath)")
            _ = runtime.reload()
        }
        hup.resume()
    }

    func close() {
        hup.cancel()
        try? adminServer?.close().wait()
    }
}
