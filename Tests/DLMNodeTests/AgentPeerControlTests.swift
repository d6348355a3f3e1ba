// PeerLockspaceControl: the control-socket lines the agent sends to a `dlm-peer run` node
// (`ls-stop LS`, `ls-start LS ID:W...`), against a Unix socket server standing in for the node.

import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import DLMNode

final class LineServerHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let lines: NIOLockedValueBox<[String]>
    let reply: @Sendable (String) -> String
    var buffer = ByteBuffer()

    init(lines: NIOLockedValueBox<[String]>, reply: @escaping @Sendable (String) -> String) {
        self.lines = lines
        self.reply = reply
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = unwrapInboundIn(data)
        buffer.writeBuffer(&b)
        guard let nl = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else { return }
        let line = String(decoding: buffer.readableBytesView[..<nl], as: UTF8.self)
        lines.withLockedValue { $0.append(line) }
        let channel = context.channel
        context.writeAndFlush(NIOAny(ByteBuffer(string: reply(line) + "\n"))).whenComplete { _ in channel.close(promise: nil) }
    }
}

@Suite("Peer lockspace control (dlm-peer run's control socket)")
struct AgentPeerControlTests {
    @Test("stop and start send ls-stop / ls-start lines; an error answer fails the operation; G0 is the node's own join")
    func lines() async throws {
        let path = NSTemporaryDirectory() + "agent-peer-\(UInt32.random(in: 0...UInt32.max)).sock"
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let lines = NIOLockedValueBox<[String]>([])
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(LineServerHandler(lines: lines) { line in
                        line.hasPrefix("ls-start beta") ? #"{"error":"no lockspace beta"}"# : #"{"ok":true}"#
                    })
                }
            }
            .bind(unixDomainSocketPath: path).get()
        let peer = PeerLockspaceControl(socketPath: path)
        try await peer.stop("alpha")
        try await peer.start(StartPlan(lockspace: "alpha", globalID: 1, change: ChangeID(seq: 3, origin: 1),
                                       members: [AgentMember(id: 1), AgentMember(id: 3, weight: 2)], renew: [3], joining: false))
        // formation: `dlm-peer run` joined with the config's list by itself
        try await peer.start(StartPlan(lockspace: "alpha", globalID: 1, change: .formation,
                                       members: [AgentMember(id: 1)], renew: [], joining: true))
        await #expect(throws: LocalControlError.self) {
            try await peer.start(StartPlan(lockspace: "beta", globalID: 2, change: ChangeID(seq: 1, origin: 1),
                                           members: [AgentMember(id: 1)], renew: [], joining: false))
        }
        #expect(lines.withLockedValue { $0 } == ["ls-stop alpha", "ls-start alpha 1:1 3:2 renew=3", "ls-start beta 1:1"])
        try await server.close()
        try? await group.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: path)
        let missing = PeerLockspaceControl(socketPath: path)
        await #expect(throws: LocalControlError.self) { try await missing.stop("alpha") }
    }
}
