import ArgumentParser
import DLMNode
import Foundation
import NIOCore
import NIOPosix

/// `dlm-peer status`: asks a running node over its control socket.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a running node's lockspaces (members, generation, slot, recovery) and peers (version, FIN state, seqs, retransmits).")

    @Option(help: "The node's id (finds its default control socket).")
    var node: UInt32?

    @Option(help: "The node's control socket.")
    var control: String?

    @Flag(help: "Machine-readable output (the node's JSON).")
    var json = false

    func run() throws {
        guard let path = control ?? node.map({ ControlServer.defaultPath(node: $0) }) else {
            throw ValidationError("give --node ID or --control PATH")
        }
        let reply = try ControlClient.request("status", path: path)
        if json {
            print(reply, terminator: reply.hasSuffix("\n") ? "" : "\n")
            return
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        guard let status = try? decoder.decode(NodeStatus.self, from: Data(reply.utf8)) else {
            throw ValidationError("unexpected answer from \(path): \(reply.prefix(200))")
        }
        print(status.text, terminator: "")
    }
}

/// One request line to a node's control socket; returns everything it answers.
enum ControlClient {
    static func request(_ line: String, path: String) throws -> String {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ValidationError("no control socket at \(path): is `dlm-peer run` running for that node?")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let collector = Collector()
        let channel = try ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
            }
            .connect(unixDomainSocketPath: path).wait()
        try channel.writeAndFlush(ByteBuffer(string: line + "\n")).wait()
        try channel.closeFuture.wait()
        return collector.text
    }

    final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var buffer = ByteBuffer()
        var text: String { String(buffer: buffer) }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var b = unwrapInboundIn(data)
            buffer.writeBuffer(&b)
        }
    }
}
