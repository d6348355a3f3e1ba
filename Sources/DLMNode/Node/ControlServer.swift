import Foundation
import Logging
import NIOCore
import NIOPosix

/// The node's local control socket (a Unix domain socket): one request line in, one JSON
/// document out, then the server closes. Requests: `status`, `ls-stop`, `ls-start`
/// (LockspaceControlRequests), and the lock requests of `ControlRequest` (`hold` keeps the
/// connection open; see LockControlSession).
public final class ControlServer: Sendable {
    public let path: String
    private let channel: Channel

    /// The default socket of node `id`.
    public static func defaultPath(node id: UInt32) -> String {
        let dir = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"] ?? "/tmp"
        return "\(dir)/dlm-peer.\(id).sock"
    }

    public static func start(path: String, node: PeerNode, logger: Logger) -> EventLoopFuture<ControlServer> {
        // A stale socket of an earlier run would make bind fail.
        try? FileManager.default.removeItem(atPath: path)
        return ServerBootstrap(group: node.eventLoop)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ControlHandler(node: node, logger: logger))
                }
            }
            .bind(unixDomainSocketPath: path)
            .map { ControlServer(path: path, channel: $0) }
    }

    private init(path: String, channel: Channel) {
        self.path = path
        self.channel = channel
    }

    public func close() -> EventLoopFuture<Void> {
        channel.close().always { [path] _ in try? FileManager.default.removeItem(atPath: path) }
    }
}

/// Reads one line, answers it, closes.
final class ControlHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let node: PeerNode
    let logger: Logger
    private var request = ByteBuffer()
    private var answered = false
    /// A lock request's connection (LockControlSession.swift); `hold` keeps it open.
    private var session: LockControlSession?

    init(node: PeerNode, logger: Logger) {
        self.node = node
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if let session {
            session.received(&bytes)
            return
        }
        request.writeBuffer(&bytes)
        guard !answered, let newline = request.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if request.readableBytes > 4096 { context.close(promise: nil) }
            return
        }
        answered = true
        let line = String(decoding: request.readableBytesView[..<newline], as: UTF8.self)
            .trimmingCharacters(in: .whitespaces)
        let ctx = NIOLoopBound(context, eventLoop: context.eventLoop)
        switch line {
        case "status":
            node.status().whenComplete { result in
                let context = ctx.value
                var out = context.channel.allocator.buffer(capacity: 4096)
                switch result {
                case .success(let status):
                    let encoder = JSONEncoder()
                    encoder.keyEncodingStrategy = .convertToSnakeCase
                    encoder.outputFormatting = [.sortedKeys]
                    out.writeBytes((try? encoder.encode(status)) ?? Data("{}".utf8))
                case .failure(let error):
                    out.writeString("{\"error\":\"\(error)\"}")
                }
                out.writeString("\n")
                context.writeAndFlush(NIOAny(out)).whenComplete { _ in ctx.value.close(promise: nil) }
            }
        case _ where LockControlSession.handles(line):
            let session = LockControlSession(node: node, channel: context.channel, logger: logger)
            self.session = session
            session.start(line)
            var rest = request.getSlice(at: newline + 1, length: request.writerIndex - newline - 1) ?? ByteBuffer()
            if rest.readableBytes > 0 { session.received(&rest) }
        default:
            // ls-stop / ls-start (LockspaceControlRequests.swift).
            if let answer = LockspaceControlRequests.answer(line, node: node) {
                answer.whenSuccess { text in
                    ctx.value.writeAndFlush(NIOAny(ByteBuffer(string: text + "\n"))).whenComplete { _ in
                        ctx.value.close(promise: nil)
                    }
                }
                return
            }
            var out = context.channel.allocator.buffer(capacity: 64)
            out.writeString("{\"error\":\"unknown request: \(line.prefix(40))\"}\n")
            context.writeAndFlush(NIOAny(out)).whenComplete { _ in ctx.value.close(promise: nil) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        session?.inactive()
        context.fireChannelInactive()
    }
}
