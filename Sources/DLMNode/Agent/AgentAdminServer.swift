import Foundation
import NIOCore
import NIOPosix

/// The agent's local admin socket (a Unix domain socket, like `dlm-peer run`'s control socket):
/// one request line in, one JSON line out, then the server closes.
///
///     reload          re-read the config file          {"ok":true} or {"error":"..."}
///     node-down ID    declare node ID failed           {"ok":true} or {"error":"..."}
///     status          the agent's view                 AgentStatus as JSON
public final class AgentAdminServer: Sendable {
    public let path: String
    private let channel: Channel

    public static func defaultPath(node id: UInt32) -> String {
        let dir = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"] ?? "/tmp"
        return "\(dir)/dlm-peer-agent.\(id).sock"
    }

    public static func start(path: String, runtime: AgentRuntime) -> EventLoopFuture<AgentAdminServer> {
        try? FileManager.default.removeItem(atPath: path)
        return ServerBootstrap(group: runtime.loop)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(runtime: runtime))
                }
            }
            .bind(unixDomainSocketPath: path)
            .map { AgentAdminServer(path: path, channel: $0) }
    }

    private init(path: String, channel: Channel) {
        self.path = path
        self.channel = channel
    }

    public func close() -> EventLoopFuture<Void> {
        channel.close().always { [path] _ in try? FileManager.default.removeItem(atPath: path) }
    }

    @Sendable static func json(_ object: [String: any Sendable]) -> String {
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
            .map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    /// The answer to one request line (on the runtime's loop).
    static func answer(_ line: String, runtime: AgentRuntime) -> EventLoopFuture<String> {
        let words = line.split(separator: " ").map(String.init)
        switch words.first {
        case "reload":
            return runtime.reload().map { error in error.map { Self.json(["error": $0]) } ?? Self.json(["ok": true]) }
        case "node-down":
            guard words.count == 2, let id = AgentNodeID(words[1]) else {
                return runtime.loop.makeSucceededFuture(Self.json(["error": "usage: node-down ID"]))
            }
            return runtime.loop.submit {
                guard runtime.config.node(id) != nil else { return Self.json(["error": "node \(id) is not in the config"]) }
                guard id != runtime.me else { return Self.json(["error": "node \(id) is this node: declare it down from another node"]) }
                runtime.process(.nodeDownRequested(node: id))
                return Self.json(["ok": true])
            }
        case "status":
            return runtime.status().map { status in
                let e = JSONEncoder()
                e.keyEncodingStrategy = .convertToSnakeCase
                e.outputFormatting = [.sortedKeys]
                return (try? e.encode(status)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
            }
        default:
            return runtime.loop.makeSucceededFuture(Self.json(["error": "unknown request \(line.prefix(40)): use reload, node-down ID or status"]))
        }
    }
}

final class AdminHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let runtime: AgentRuntime
    private var request = ByteBuffer()
    private var answered = false

    init(runtime: AgentRuntime) {
        self.runtime = runtime
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        request.writeBuffer(&bytes)
        guard !answered, let nl = request.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if request.readableBytes > 4096 { context.close(promise: nil) }
            return
        }
        answered = true
        let line = String(decoding: request.readableBytesView[..<nl], as: UTF8.self).trimmingCharacters(in: .whitespaces)
        let channel = context.channel
        AgentAdminServer.answer(line, runtime: runtime).whenComplete { result in
            let text: String
            switch result {
            case .success(let t): text = t
            case .failure(let e): text = "{\"error\":\"\(e)\"}"
            }
            channel.writeAndFlush(ByteBuffer(string: text + "\n")).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
