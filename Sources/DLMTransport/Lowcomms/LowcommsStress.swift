import Logging
import NIOCore
import NIOPosix

/// A self-test of lowcomms + midcomms over real loopback sockets: two nodes (nodeids 1 and 2 on
/// two 127.0.0.x addresses) stream numbered DLM_MSG REQUESTs to each other while node 1 aborts
/// every connection to node 2 at a fixed interval (the kernel test suites' `tcpkill`). Every
/// message must arrive exactly once and in order. Used by the tests (small counts) and by
/// `dlm-peer bench transport --kill-every … --messages …` (a million).
public enum LowcommsStress {
    public struct Options: Sendable {
        /// Messages each sending direction carries.
        public var messages: Int
        /// Both nodes send (`true`) or only node 1 → node 2.
        public var bothWays: Bool
        /// Abort node 1's connections to node 2 this often (nil: no kills).
        public var killEvery: TimeAmount?
        public var port: Int
        public var addresses: (String, String)
        /// Size of each DLM_MSG (88…4072 bytes; the wire adds the 24-byte OPTS header).
        public var messageSize: Int
        /// Most sequenced messages a sender keeps unacknowledged before it waits.
        public var window: Int
        /// Give up after this long.
        public var timeout: TimeAmount
        public var generation: MidcommsConfig.Generation

        public init(messages: Int, bothWays: Bool = true, killEvery: TimeAmount? = .milliseconds(50), port: Int,
                    addresses: (String, String) = ("127.0.0.1", "127.0.0.2"), messageSize: Int = 128,
                    window: Int = 4096, timeout: TimeAmount = .seconds(600), generation: MidcommsConfig.Generation = .newest) {
            self.messages = messages
            self.bothWays = bothWays
            self.killEvery = killEvery
            self.port = port
            self.addresses = addresses
            self.messageSize = messageSize
            self.window = window
            self.timeout = timeout
            self.generation = generation
        }
    }

    /// What one receiving node saw.
    public struct Received: Sendable, Hashable {
        public var delivered = 0
        /// Deliveries whose number was below the next expected (a message delivered twice).
        public var duplicates = 0
        /// Deliveries whose number skipped ahead (messages lost before it).
        public var gaps = 0
        public var lost = 0
        public var outOfOrder: Int { duplicates + gaps }
    }

    public struct Report: Sendable {
        public var options: Options
        public var seconds: Double
        /// Node 1 received from 2, node 2 received from 1.
        public var atNode1: Received
        public var atNode2: Received
        public var node1: LowcommsPeerCounters
        public var node2: LowcommsPeerCounters
        public var completed: Bool

        public var totalMessages: Int { atNode1.delivered + atNode2.delivered }
        public var kills: Int { node1.kills }
        public var connectionsKilled: Int { node1.connectionsKilled }
        public var retransmits: Int { node1.midcomms.retransmits + node2.midcomms.retransmits }
        /// Copies the receivers dropped as already delivered (resends after the kills).
        public var duplicateDrops: Int { node1.midcomms.drops(.duplicate) + node2.midcomms.drops(.duplicate) }
        public var lost: Int { atNode1.lost + atNode2.lost }
        public var duplicatesDelivered: Int { atNode1.duplicates + atNode2.duplicates }
        public var ok: Bool {
            completed && lost == 0 && duplicatesDelivered == 0 && atNode1.gaps == 0 && atNode2.gaps == 0
                && node1.midcomms.unackedCount == 0 && node2.midcomms.unackedCount == 0
        }

        public var summary: String {
            let rate = seconds > 0 ? Double(totalMessages) / seconds : 0
            return """
                messages: \(totalMessages) (\(options.bothWays ? "\(options.messages) each way" : "\(options.messages) one way, 1→2")), \
                \(options.messageSize)-byte DLM_MSG
                duration: \(Double(Int(seconds * 100)) / 100) s (\(Int(rate)) msg/s)
                kills: \(kills) (every \(options.killEvery.map { "\($0.nanoseconds / 1_000_000) ms" } ?? "never"), \(connectionsKilled) connections aborted), \
                reconnects: \(node1.reconnects)/\(node2.reconnects)
                retransmits: \(retransmits) (node1 \(node1.midcomms.retransmits), node2 \(node2.midcomms.retransmits)), \
                duplicates dropped by receivers: \(duplicateDrops)
                lost: \(lost), delivered twice: \(duplicatesDelivered), gaps: \(atNode1.gaps + atNode2.gaps), \
                queues empty: \(node1.midcomms.unackedCount == 0 && node2.midcomms.unackedCount == 0)
                result: \(ok ? "OK" : "FAILED")
                """
        }
    }

    /// One node's driver; confined to that node's event loop.
    final class Side: @unchecked Sendable {
        let me: UInt32
        let peer: UInt32
        let toSend: Int
        let expect: Int
        let window: Int
        let size: Int
        var lowcomms: Lowcomms!
        var sent = 0
        var received = Received()
        var next: UInt32 = 1
        var started = false
        var done: EventLoopPromise<Void>?
        var pumpTask: RepeatedTask?

        init(me: UInt32, peer: UInt32, toSend: Int, expect: Int, window: Int, size: Int) {
            self.me = me
            self.peer = peer
            self.toSend = toSend
            self.expect = expect
            self.window = window
            self.size = size
        }

        func message(_ n: UInt32) -> MidcommsPayload {
            var extra = ByteBuffer()
            extra.writeRepeatingByte(UInt8(truncatingIfNeeded: n) | 0x40, count: max(0, size - DLMMessage.fixedSize))
            let header = DLMHeader(version: .v3_2, word: 0x521B_2683, nodeID: me, length: 0, command: .message)
            return .message(DLMMessage(header: header, type: MessageType.request.rawValue, lkid: n,
                                       hash: n &* 2_654_435_761, rqmode: LockMode.ex.rawValue, extra: extra))
        }

        func pump() {
            guard started, sent < toSend else { return }
            var depth = lowcomms.sendQueueDepth(to: peer)
            while sent < toSend, depth < window {
                sent += 1
                lowcomms.send(message(UInt32(truncatingIfNeeded: sent)), to: peer)
                depth += 1
            }
        }

        func deliver(_ d: Delivery) {
            guard case .message(let m) = d.payload else { return }
            received.delivered += 1
            if m.lkid == next {
                next &+= 1
            } else if m.lkid < next {
                received.duplicates += 1
            } else {
                received.gaps += 1
                received.lost += Int(m.lkid - next)
                next = m.lkid &+ 1
            }
            if received.delivered >= expect, let p = done {
                done = nil
                p.succeed(())
            }
        }
    }

    public static func run(_ options: Options, group: EventLoopGroup, logger: Logger = Logger(label: "dlm.lowcomms.stress")) async throws -> Report {
        let loops = (group.next(), group.next())
        let n = options.messages
        let s1 = Side(me: 1, peer: 2, toSend: n, expect: options.bothWays ? n : 0, window: options.window, size: options.messageSize)
        let s2 = Side(me: 2, peer: 1, toSend: options.bothWays ? n : 0, expect: n, window: options.window, size: options.messageSize)
        func config(_ me: UInt32, _ mine: String, _ peer: UInt32, _ theirs: String) -> LowcommsConfig {
            LowcommsConfig(nodeID: me, addresses: [mine], port: options.port,
                           peers: [.init(nodeID: peer, addresses: [theirs])], generation: options.generation)
        }
        func make(_ side: Side, _ loop: EventLoop, _ cfg: LowcommsConfig) throws -> Lowcomms {
            let l = try Lowcomms(config: cfg, eventLoop: loop, logger: logger, onEvent: { event in
                switch event {
                case .acknowledged, .versionDetected, .transmitConnection: side.pump()
                default: break
                }
            }, onDelivery: { _, d in side.deliver(d) })
            side.lowcomms = l
            return l
        }
        let l1 = try make(s1, loops.0, config(1, options.addresses.0, 2, options.addresses.1))
        let l2 = try make(s2, loops.1, config(2, options.addresses.1, 1, options.addresses.0))
        try await l1.start().get()
        do {
            try await l2.start().get()
        } catch {
            _ = try? await l1.close().get()
            throw error
        }
        let start = NIODeadline.now()
        func arm(_ side: Side, _ loop: EventLoop) -> EventLoopFuture<Void> {
            loop.flatSubmit {
                let p = loop.makePromise(of: Void.self)
                if side.expect == 0 { p.succeed(()) } else { side.done = p }
                side.started = true
                // Session start: a bare RCOM_STATUS fixes our version at the peer.
                let status = DLMRcom(header: DLMHeader(version: .v3_2, word: 0x521B_2683, nodeID: side.me, length: 0, command: .rcom),
                                     type: RcomType.status.rawValue, id: 1, seq: 1, payload: .status(RcomStatus(flags: 0)))
                side.lowcomms.send(.rcom(status), to: side.peer)
                side.pump()
                // Fallback pump (the ACK events drive it normally).
                side.pumpTask = loop.scheduleRepeatedTask(initialDelay: .milliseconds(2), delay: .milliseconds(2)) { _ in side.pump() }
                return p.futureResult
            }
        }
        let d1 = arm(s1, loops.0)
        let d2 = arm(s2, loops.1)
        if let every = options.killEvery { l1.killConnections(to: 2, every: every) }
        var completed = true
        do {
            try await withTimeout(EventLoopFuture.andAllSucceed([d1, d2], on: loops.0), after: options.timeout, on: loops.0)
        } catch {
            completed = false
        }
        let end = NIODeadline.now()
        l1.stopKilling(2)
        _ = try? await loops.0.submit { s1.pumpTask?.cancel() }.get()
        _ = try? await loops.1.submit { s2.pumpTask?.cancel() }.get()
        // Drain: ACK everything (the threshold policy leaves up to 256 unacknowledged).
        for _ in 0..<500 {
            l1.flushAck(2)
            l2.flushAck(1)
            let a = try await l1.counters(for: 2).get()?.midcomms.unackedCount ?? 0
            let b = try await l2.counters(for: 1).get()?.midcomms.unackedCount ?? 0
            if a == 0 && b == 0 { break }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        let c1 = try await l1.counters(for: 2).get()!
        let c2 = try await l2.counters(for: 1).get()!
        let r1 = try await loops.0.submit { s1.received }.get()
        let r2 = try await loops.1.submit { s2.received }.get()
        var report = Report(options: options, seconds: Double((end - start).nanoseconds) / 1e9, atNode1: r1, atNode2: r2,
                            node1: c1, node2: c2, completed: completed)
        if !completed {
            report.atNode1.lost += max(0, s1.expect - r1.delivered)
            report.atNode2.lost += max(0, s2.expect - r2.delivered)
        }
        // Clean close: FIN handshake both ways, at once.
        let f1 = l1.shutdown()
        let f2 = l2.shutdown()
        _ = try? await withTimeout(f1.and(f2), after: .seconds(15), on: loops.0)
        _ = try? await l1.close().get()
        _ = try? await l2.close().get()
        return report
    }

    struct TimedOut: Error {}

    /// Waits for `future`, failing after `after`.
    static func withTimeout<T: Sendable>(_ future: EventLoopFuture<T>, after: TimeAmount, on loop: EventLoop) async throws -> T {
        let promise = loop.makePromise(of: T.self)
        let task = loop.scheduleTask(in: after) { promise.fail(TimedOut()) }
        future.whenComplete { result in
            task.cancel()
            promise.completeWith(result)
        }
        return try await promise.futureResult.get()
    }
}
