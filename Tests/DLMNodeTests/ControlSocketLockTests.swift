// Lock requests over the real control socket (ControlServer + LockControlSession) of PeerNodes
// on loopback, in process; and the real `dlm-peer` binary when it is built.

@testable import DLMNode
import DLMTransport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

/// A control connection: sends lines, collects the answer lines.
final class ControlConnection: Sendable {
    let channel: Channel
    private let lines: NIOLockedValueBox<[String]>

    private init(channel: Channel, lines: NIOLockedValueBox<[String]>) {
        self.channel = channel
        self.lines = lines
    }

    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var buffer = ByteBuffer()
        let lines: NIOLockedValueBox<[String]>
        init(_ lines: NIOLockedValueBox<[String]>) { self.lines = lines }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var b = unwrapInboundIn(data)
            buffer.writeBuffer(&b)
            while let nl = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer.readableBytesView[..<nl], as: UTF8.self)
                buffer.moveReaderIndex(to: nl + 1)
                lines.withLockedValue { $0.append(line) }
            }
        }
    }

    static func open(_ path: String) async throws -> ControlConnection {
        let lines = NIOLockedValueBox<[String]>([])
        let channel = try await ClientBootstrap(group: APITest.group)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(Handler(lines)) }
            }
            .connect(unixDomainSocketPath: path).get()
        return ControlConnection(channel: channel, lines: lines)
    }

    func send(_ line: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: line + "\n")).get()
    }

    var received: [String] { lines.withLockedValue { $0 } }

    /// Waits for answer line number `n` (0-based).
    func line(_ n: Int, seconds: Double = 5) async throws -> String {
        let ok = try await eventually(seconds: seconds) { [self] in received.count > n }
        guard ok else { throw TimeoutError(seconds: seconds) }
        return received[n]
    }

    func reply(_ n: Int) async throws -> LockReply {
        try LockDump.decoder().decode(LockReply.self, from: Data(try await line(n).utf8))
    }

    var isClosed: Bool { !channel.isActive }

    func close() async { try? await channel.close().get() }

    /// One request, the whole answer (the server closes).
    static func request(_ path: String, _ line: String) async throws -> String {
        let c = try await open(path)
        try await c.send(line)
        try await withTimeout(seconds: 10) { try await c.channel.closeFuture.get() }
        return c.received.joined(separator: "\n")
    }

    static func lockReply(_ path: String, _ line: String) async throws -> LockReply {
        try LockDump.decoder().decode(LockReply.self, from: Data(try await request(path, line).utf8))
    }

    static func dump(_ path: String, _ ls: String = "alpha") async throws -> LockDump {
        try LockDump.decoder().decode(LockDump.self, from: Data(try await request(path, "locks \(ls)").utf8))
    }
}

func withControlCluster(nodes: Int, _ body: (TestCluster, [String]) async throws -> Void) async throws {
    try await withCluster(nodes: nodes) { c in
        let dir = FileManager.default.temporaryDirectory.path
        var servers: [ControlServer] = []
        var paths: [String] = []
        for (i, n) in c.nodes.enumerated() {
            let path = "\(dir)/dlm-peer-test.\(getpid()).\(APITest.port()).\(i + 1).sock"
            servers.append(try await ControlServer.start(path: path, node: n, logger: APITest.logger).get())
            paths.append(path)
        }
        do {
            try await body(c, paths)
        } catch {
            for s in servers { try? await s.close().get() }
            throw error
        }
        for s in servers { try? await s.close().get() }
    }
}

@Suite("Lock requests over the control socket", .serialized, .timeLimit(.minutes(1)))
struct ControlSocketLockTests {
    @Test("status still answers; lock, locks, nowait, cancel, unlock, errors")
    func oneShot() async throws {
        try await withControlCluster(nodes: 2) { c, paths in
            let status = try await ControlConnection.request(paths[0], "status")
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            let s = try decoder.decode(NodeStatus.self, from: Data(status.utf8))
            #expect(s.node == 1 && s.lockspaces.map(\.name) == ["alpha"])

            // lock: granted, owned by the node after the connection closed.
            let held = try await ControlConnection.lockReply(paths[0], "lock alpha cli-r EX flags=VALBLK lvb=6869")
            #expect(held.ok && held.status == "granted" && held.mode == "EX" && held.result == 0)
            let lkid = try #require(held.lkid)
            #expect(held.lvb?.hasPrefix("6869") == true && held.lvb?.count == 64)
            var d = try await ControlConnection.dump(paths[0])
            let r = try #require(d.resources.first { $0.name == "cli-r" })
            #expect(r.granted.map(\.lkid) == [lkid] && r.granted.first?.owner == "cli" && r.resNodeid == 0)
            #expect(r.granted.first?.exflags == ["VALBLK"])

            // NOQUEUE from node 2: EAGAIN, exit-worthy failure.
            let refused = try await ControlConnection.lockReply(paths[1], "lock alpha cli-r PR flags=NOQUEUE")
            #expect(!refused.ok && refused.status == "EAGAIN" && refused.result == -11)

            // nowait: "queued" once it sits on the master's wait queue.
            let queued = try await ControlConnection.lockReply(paths[1], "lock alpha cli-r PR nowait")
            #expect(queued.ok && queued.status == "queued" && queued.requested == "PR" && queued.mode == "--")
            let qid = try #require(queued.lkid)
            d = try await ControlConnection.dump(paths[0])
            #expect(d.resources.first { $0.name == "cli-r" }?.waiting.map(\.nodeid) == [2])
            // Node 2's view: a process copy waiting on master 1, no reply outstanding.
            let d2 = try await ControlConnection.dump(paths[1])
            let r2 = try #require(d2.resources.first { $0.name == "cli-r" })
            #expect(r2.resNodeid == 1 && r2.waiting.map(\.lkid) == [qid] && d2.waiters.isEmpty)

            // Cancel it; a second cancel finds no lock.
            let cancelled = try await ControlConnection.lockReply(paths[1], "cancel alpha \(String(qid, radix: 16))")
            #expect(cancelled.ok && cancelled.status == "cancelled")
            let again = try await ControlConnection.lockReply(paths[1], "cancel alpha \(String(qid, radix: 16))")
            #expect(!again.ok && again.status == "ENOENT")

            // A waiting lock answers when granted: convert down on node 1, node 2 gets its PR.
            let waiter = try await ControlConnection.open(paths[1])
            try await waiter.send("lock alpha cli-r PR flags=VALBLK")
            #expect(try await eventually {
                (try await ControlConnection.dump(paths[0])).resources.first { $0.name == "cli-r" }?.waiting.count == 1
            })
            let down = try await ControlConnection.lockReply(paths[0], "convert alpha \(String(lkid, radix: 16)) NL flags=VALBLK lvb=7632")
            #expect(down.ok && down.status == "granted" && down.mode == "NL")
            let granted = try await waiter.reply(0)
            #expect(granted.ok && granted.status == "granted" && granted.mode == "PR")
            #expect(granted.lvb?.hasPrefix("7632000000") == true)  // written by the down-conversion
            let wid = try #require(granted.lkid)

            // Errors: unknown lockspace, lock id, a master copy, a bad line.
            let noLS = try await ControlConnection.lockReply(paths[0], "lock nope r EX")
            #expect(!noLS.ok && noLS.status == "EINVAL" && noLS.error?.contains("not a member of lockspace nope") == true)
            let noLock = try await ControlConnection.lockReply(paths[0], "unlock alpha 7777")
            #expect(!noLock.ok && noLock.status == "ENOENT")
            let copy = try #require(try await ControlConnection.dump(paths[0]).resources.first { $0.name == "cli-r" }?
                .granted.first { $0.nodeid == 2 })
            let foreign = try await ControlConnection.lockReply(paths[0], "unlock alpha \(copy.lkidHex)")
            #expect(!foreign.ok && foreign.status == "EINVAL" && foreign.error?.contains("master copy") == true)
            let bad = try await ControlConnection.lockReply(paths[0], "lock alpha r ZZ")
            #expect(!bad.ok && bad.status == "EINVAL" && bad.error?.contains("bad mode ZZ") == true)
            let unknown = try await ControlConnection.request(paths[0], "frobnicate")
            #expect(unknown.contains("unknown request"))

            // Unlock both; the unlock from PW/EX… here NL/PR: the lock's buffer comes back.
            let u2 = try await ControlConnection.lockReply(paths[1], "unlock alpha \(String(wid, radix: 16))")
            #expect(u2.ok && u2.status == "unlocked" && u2.result == -65538)
            let u1 = try await ControlConnection.lockReply(paths[0], "unlock alpha \(String(lkid, radix: 16))")
            #expect(u1.ok && u1.status == "unlocked")
            d = try await ControlConnection.dump(paths[0])
            #expect(d.resources.isEmpty)
            // The node is fine.
            #expect(try await ControlConnection.request(paths[0], "status").contains("\"node\":1"))
        }
    }

    @Test("hold: granted, BAST events, `unlock` releases with an LVB; a dropped connection releases too")
    func hold() async throws {
        try await withControlCluster(nodes: 3) { c, paths in
            let keeper = try await ControlConnection.lockReply(paths[2], "lock alpha hold-r NL")
            #expect(keeper.ok)
            let h = try await ControlConnection.open(paths[0])
            try await h.send("hold alpha hold-r EX flags=VALBLK")
            let g = try await h.reply(0)
            #expect(g.event == "granted" && g.mode == "EX")
            // Node 2 waits for PR: node 1's hold reports the BAST.
            let w = try await ControlConnection.open(paths[1])
            try await w.send("lock alpha hold-r PR flags=VALBLK")
            let b = try await h.reply(1)
            #expect(b.event == "bast" && b.bastMode == "PR" && b.lkid == g.lkid)
            // Release with a value: the waiter is granted and reads it.
            try await h.send("unlock lvb=6c617374")
            let u = try await h.reply(2)
            #expect(u.event == "unlocked" && u.status == "unlocked" && u.lvb?.hasPrefix("6c617374") == true)
            #expect(try await eventually { h.isClosed })
            let granted = try await w.reply(0)
            #expect(granted.status == "granted" && granted.lvb?.hasPrefix("6c61737400") == true)

            // A hold that waits, then its client vanishes: the request is cancelled.
            let h2 = try await ControlConnection.open(paths[0])
            try await h2.send("hold alpha hold-r EX")
            let q = try await h2.reply(0)
            #expect(q.event == "queued" && q.requested == "EX")
            await h2.close()
            #expect(try await eventually {
                let r = try await ControlConnection.dump(paths[2]).resources.first { $0.name == "hold-r" }
                return r?.waiting.isEmpty == true && r?.granted.count == 2
            })
            // A granted hold whose client vanishes is unlocked.
            _ = try await ControlConnection.lockReply(paths[1], "unlock alpha \(try #require(granted.lkidHex))")
            let h3 = try await ControlConnection.open(paths[0])
            try await h3.send("hold alpha hold-r PW")
            #expect(try await h3.reply(0).event == "granted")
            #expect(try await ControlConnection.dump(paths[0]).resources.isEmpty == false)
            await h3.close()
            #expect(try await eventually {
                try await ControlConnection.dump(paths[2]).resources.first { $0.name == "hold-r" }?.granted.count == 1
            })
            // `unlock` right behind the request (one write). On a resource node 1 masters the
            // grant is immediate: granted, then unlocked.
            let own = try await ControlConnection.lockReply(paths[0], "lock alpha hold-early NL")
            let h5 = try await ControlConnection.open(paths[0])
            try await h5.send("hold alpha hold-early NL\nunlock")
            #expect(try await h5.reply(0).event == "granted")
            #expect(try await h5.reply(1).event == "unlocked")
            #expect(try await eventually { h5.isClosed })
            _ = try await ControlConnection.lockReply(paths[0], "unlock alpha \(try #require(own.lkidHex))")
            // Mastered by node 3 (the request is in flight): cancelled, or granted then unlocked.
            let h6 = try await ControlConnection.open(paths[0])
            try await h6.send("hold alpha hold-r NL\nunlock")
            let first = try await h6.reply(0)
            if first.event == "granted" {
                #expect(try await h6.reply(1).event == "unlocked")
            } else {
                #expect(first.event == "failed" && first.status == "DLM_ECANCEL", "\(first)")
            }
            #expect(try await eventually { h6.isClosed })
            #expect(try await eventually {
                try await ControlConnection.dump(paths[2]).resources.first { $0.name == "hold-r" }?.granted.count == 1
            })
            // A refused hold reports "failed".
            let h4 = try await ControlConnection.open(paths[1])
            try await h4.send("hold alpha hold-r EX flags=NOQUEUE,CONVDEADLK")
            let f = try await h4.reply(0)
            #expect(f.event == "failed" && f.status == "EINVAL")
            _ = try await ControlConnection.lockReply(paths[2], "unlock alpha \(try #require(keeper.lkidHex))")
        }
    }

    @Test("a waiting `lock` whose client goes away is cancelled")
    func vanishingWaiter() async throws {
        try await withControlCluster(nodes: 2) { c, paths in
            let held = try await ControlConnection.lockReply(paths[0], "lock alpha vanish EX")
            let w = try await ControlConnection.open(paths[1])
            try await w.send("lock alpha vanish EX")
            #expect(try await eventually {
                try await ControlConnection.dump(paths[0]).resources.first { $0.name == "vanish" }?.waiting.count == 1
            })
            await w.close()
            #expect(try await eventually {
                try await ControlConnection.dump(paths[0]).resources.first { $0.name == "vanish" }?.waiting.isEmpty == true
            })
            #expect(try await ControlConnection.dump(paths[1]).resources.isEmpty)
            _ = try await ControlConnection.lockReply(paths[0], "unlock alpha \(try #require(held.lkidHex))")
        }
    }
}
