import ArgumentParser
import DLMTransport
import Foundation
import Logging
import NIOCore
import NIOPosix

/// `dlm-peer bench transport`: lowcomms + midcomms between two processes on loopback (this
/// process is node 1 on 127.0.0.1, a child `dlm-peer bench transport --serve` is node 2 on
/// 127.0.0.2), next to a raw TCP stream and a raw TCP ping-pong of the same message size, all
/// measured in the same run. `--kill-every MS` runs the kill stress instead (both nodes in this
/// process).
struct TransportBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "transport",
        abstract: "Lowcomms+midcomms throughput and latency between two processes, against raw TCP.",
        discussion: """
            Throughput: node 1 streams DLM_MSGs to node 2 for --seconds (at most --window \
            unacknowledged). Latency: one message in flight, node 2 answers each; one-way latency is \
            measured by node 2 from the sender's CLOCK_MONOTONIC stamp. The raw TCP baselines send \
            the same number of bytes per message over one NIO connection, framed the same way.
            With --kill-every MS: the reliability stress instead: --messages DLM_MSGs (each way \
            unless --one-way) between two nodes in this process while node 1 aborts its \
            connections every MS milliseconds; fails unless every message arrives once, in order.
            """)

    @OptionGroup var options: BenchOptions

    @Option(help: "DLM_MSG size in bytes (88...4072); the raw baselines send the same size.")
    var size: Int = 128

    @Option(help: "Base port (lowcomms on it, raw TCP on port+1); random 30000-40000 by default.")
    var port: Int?

    /// The kernel never bounds what it has unacknowledged (newer kernels ACK only every 256
    /// messages or so), so neither does a real sender; the throughput run keeps a large bound to
    /// stay finite in memory (64 Ki × 152 bytes ≈ 10 MB). The kill stress uses 1024, so that a
    /// kill does not resend tens of thousands of messages.
    @Option(help: "Most unacknowledged messages in flight (default 65536; 1024 with --kill-every).")
    var window: Int?

    @Option(help: "Kill stress: abort node 1's connections every this many milliseconds.")
    var killEvery: Int?

    @Option(help: "Kill stress: messages per direction.")
    var messages: Int = 1_000_000

    @Flag(help: "Kill stress: node 1 → node 2 only.")
    var oneWay = false

    @Flag(help: .hidden)
    var serve = false

    func validate() throws {
        guard (DLMMessage.fixedSize...4072).contains(size) else {
            throw ValidationError("--size must be 88...4072")
        }
    }

    func run() throws {
        let port = self.port ?? Int.random(in: 30000..<39990)
        if serve {
            try TransportBenchServer.run(port: port)
            return
        }
        if let killEvery {
            try runStress(port: port, killEvery: killEvery)
            return
        }
        try TransportBenchClient(options: options, size: size, port: port, window: window ?? 65536).run()
    }

    func runStress(port: Int, killEvery: Int) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        var logger = Logger(label: "dlm.bench.transport")
        logger.logLevel = .warning
        let opts = LowcommsStress.Options(messages: messages, bothWays: !oneWay,
                                          killEvery: killEvery > 0 ? .milliseconds(Int64(killEvery)) : nil,
                                          port: port, messageSize: size, window: window ?? 1024)
        let box = ResultBox<LowcommsStress.Report>()
        let sem = DispatchSemaphore(value: 0)
        Task {
            do { box.set(.success(try await LowcommsStress.run(opts, group: group, logger: logger))) } catch { box.set(.failure(error)) }
            sem.signal()
        }
        sem.wait()
        let report = try box.get()
        if options.json {
            let j: [String: Any] = [
                "benchmark": "transport-kill-stress", "messages_per_direction": messages, "both_ways": !oneWay,
                "total_messages": report.totalMessages, "size": size, "kill_every_ms": killEvery,
                "seconds": report.seconds, "kills": report.kills, "connections_killed": report.connectionsKilled,
                "retransmits": report.retransmits, "duplicate_drops": report.duplicateDrops, "lost": report.lost,
                "delivered_twice": report.duplicatesDelivered, "reconnects": [report.node1.reconnects, report.node2.reconnects],
                "ok": report.ok,
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: j, options: [.sortedKeys, .prettyPrinted]), as: UTF8.self))
        } else {
            print(report.summary)
        }
        if !report.ok { throw ExitCode.failure }
    }
}

final class ResultBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Result<T, Error>?
    func set(_ v: Result<T, Error>) { lock.lock(); value = v; lock.unlock() }
    func get() throws -> T {
        lock.lock()
        defer { lock.unlock() }
        return try value!.get()
    }
}

// MARK: - Wire conventions of the bench

/// Messages of the lowcomms runs are DLM_MSGs; `m_type` says what they are.
enum BenchMsg {
    static let stream = MessageType.request.rawValue
    static let ping = MessageType.lookup.rawValue
    static let pong = MessageType.lookupReply.rawValue
    static let report = MessageType.remove.rawValue
    static let reportReply = MessageType.grant.rawValue
    static let lockspace: UInt32 = 0x521B_2683

    static func message(type: UInt32, from node: UInt32, size: Int, n: UInt32 = 0, stamp: UInt64 = 0, result: Int32 = 0) -> MidcommsPayload {
        var extra = ByteBuffer()
        extra.writeRepeatingByte(0x61, count: size - DLMMessage.fixedSize)
        return .message(DLMMessage(
            header: DLMHeader(version: .v3_2, word: lockspace, nodeID: node, length: 0, command: .message),
            type: type, lkid: n, remid: UInt32(truncatingIfNeeded: stamp >> 32), parentLkid: UInt32(truncatingIfNeeded: stamp),
            result: result, extra: extra))
    }

    static func stamp(_ m: DLMMessage) -> UInt64 { UInt64(m.remid) << 32 | UInt64(m.parentLkid) }

    static func status(from node: UInt32) -> MidcommsPayload {
        .rcom(DLMRcom(header: DLMHeader(version: .v3_2, word: lockspace, nodeID: node, length: 0, command: .rcom),
                      type: RcomType.status.rawValue, id: 1, seq: 1, payload: .status(RcomStatus(flags: 0))))
    }

    static func statusReply(from node: UInt32) -> MidcommsPayload {
        .rcom(DLMRcom(header: DLMHeader(version: .v3_2, word: lockspace, nodeID: node, length: 0, command: .rcom),
                      type: RcomType.statusReply.rawValue, id: 1, seq: 1,
                      payload: .statusReply(RcomConfig(lvblen: 32, lsflags: 0), slots: [])))
    }
}

/// Raw TCP messages: a 16-byte DLM-like header (framed by `h_length` as well) and padding.
/// `h_cmd` 1 stream, 2 ping (echoed with the one-way delay in the word), 3 report request (answered
/// with the count in the word). Bytes 16..<24 carry the sender's monotonic stamp.
enum RawMsg {
    static func make(cmd: UInt8, size: Int, word: UInt32 = 0, stamp: UInt64 = 0) -> ByteBuffer {
        var b = ByteBuffer()
        b.reserveCapacity(size)
        DLMHeader(version: .v3_2, word: word, nodeID: 1, length: UInt16(size), command: cmd).write(into: &b, length: size)
        b.writeInteger(stamp, endianness: .little)
        b.writeRepeatingByte(0x61, count: size - 24)
        return b
    }
}

func monotonicNanos() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

// MARK: - Node 2 (child process)

enum TransportBenchServer {
    /// Counts on the loop; answers pings, reports, STATUS.
    final class State: @unchecked Sendable {
        var lowcomms: Lowcomms!
        var streamed: UInt32 = 0
    }

    final class RawHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var count: UInt32 = 0
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            guard let h = try? DLMHeader.peek(frame) else { return }
            switch h.command {
            case 1:
                count &+= 1
            case 2:
                let stamp = frame.getInteger(at: frame.readerIndex + 16, endianness: .little, as: UInt64.self) ?? 0
                let oneWay = UInt32(clamping: monotonicNanos() &- stamp)
                context.write(wrapOutboundOut(RawMsg.make(cmd: 2, size: frame.readableBytes, word: oneWay, stamp: stamp)), promise: nil)
            case 3:
                context.write(wrapOutboundOut(RawMsg.make(cmd: 3, size: 24, word: count)), promise: nil)
                count = 0
            default:
                break
            }
        }
        func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
        typealias OutboundOut = ByteBuffer
    }

    static func run(port: Int) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        var logger = Logger(label: "dlm.bench.serve")
        logger.logLevel = .warning
        let state = State()
        let config = LowcommsConfig(nodeID: 2, addresses: ["127.0.0.2"], port: port,
                                    peers: [.init(nodeID: 1, addresses: ["127.0.0.1"])])
        let lowcomms = try Lowcomms(config: config, eventLoop: loop, logger: logger) { from, d in
            switch d.payload {
            case .rcom(let r) where r.rcomType == .status:
                state.lowcomms.send(BenchMsg.statusReply(from: 2), to: from)
            case .message(let m):
                switch m.type {
                case BenchMsg.stream:
                    state.streamed &+= 1
                case BenchMsg.ping:
                    let stamp = BenchMsg.stamp(m)
                    let oneWay = Int32(clamping: Int64(monotonicNanos() &- stamp))
                    state.lowcomms.send(BenchMsg.message(type: BenchMsg.pong, from: 2, size: m.encodedLength, n: m.lkid,
                                                         stamp: stamp, result: oneWay), to: from)
                case BenchMsg.report:
                    state.lowcomms.send(BenchMsg.message(type: BenchMsg.reportReply, from: 2, size: DLMMessage.fixedSize,
                                                         n: state.streamed), to: from)
                    state.streamed = 0
                default:
                    break
                }
            default:
                break
            }
        }
        state.lowcomms = lowcomms
        try lowcomms.start().wait()
        _ = try ServerBootstrap(group: loop)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandlers([ByteToMessageHandler(DLMFrameDecoder()), RawHandler()])
                }
            }
            .bind(to: try SocketAddress(ipAddress: "127.0.0.2", port: port + 1)).wait()
        FileHandle.standardOutput.write(Data("ready\n".utf8))
        // Runs until the parent stops us (SIGTERM by PID) or our stdin closes.
        while let _ = readLine() {}
        exit(0)
    }
}

// MARK: - Node 1 (this process)

struct TransportBenchClient {
    let options: BenchOptions
    let size: Int
    let port: Int
    let window: Int

    struct Latency: Sendable {
        var rtt: [UInt64] = []
        var oneWay: [UInt64] = []
    }

    func run() throws {
        let child = try BenchChild(arguments: ["bench", "transport", "--serve", "--port", "\(port)", "--size", "\(size)"])
        let pid = child.pid
        defer { child.stop() }
        let ready = child.output.fileHandleForReading.availableData
        guard String(decoding: ready, as: UTF8.self).contains("ready") else {
            throw ValidationError("the --serve child (pid \(pid)) did not start")
        }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        let seconds = options.seconds

        // Raw TCP baselines.
        let raw = try RawClient.connect(loop: loop, port: port + 1)
        let rawRate = try raw.stream(size: size, seconds: seconds)
        let rawLatency = try raw.pingPong(size: size, seconds: seconds)
        try? raw.channel.close().wait()

        // Lowcomms + midcomms.
        let node = try LowcommsClient(loop: loop, port: port, size: size, window: window)
        try node.sessionStart()
        let lcRate = try node.stream(seconds: seconds)
        let lcLatency = try node.pingPong(seconds: seconds)
        let counters = try node.lowcomms.counters(for: 2).wait()
        try? node.lowcomms.shutdown().wait()

        func pct(_ v: [UInt64], _ p: Double) -> Double {
            guard !v.isEmpty else { return 0 }
            let s = v.sorted()
            return Double(s[min(s.count - 1, Int(Double(s.count) * p))]) / 1000
        }
        let rawRTT50 = pct(rawLatency.rtt, 0.5), rawRTT99 = pct(rawLatency.rtt, 0.99)
        let lcRTT50 = pct(lcLatency.rtt, 0.5), lcRTT99 = pct(lcLatency.rtt, 0.99)
        let rawOW50 = pct(rawLatency.oneWay, 0.5), rawOW99 = pct(rawLatency.oneWay, 0.99)
        let lcOW50 = pct(lcLatency.oneWay, 0.5), lcOW99 = pct(lcLatency.oneWay, 0.99)
        let throughputRatio = rawRate > 0 ? lcRate / rawRate : 0
        let latencyRatio = rawRTT50 > 0 ? lcRTT50 / rawRTT50 : 0
        let wire = size + DLMOpts.headerSize
        if options.json {
            let j: [String: Any] = [
                "benchmark": "transport", "size": size, "wire_bytes_lowcomms": wire, "seconds": seconds, "window": window,
                "raw_tcp": ["msgs_per_sec": rawRate, "rtt_p50_us": rawRTT50, "rtt_p99_us": rawRTT99,
                            "one_way_p50_us": rawOW50, "one_way_p99_us": rawOW99, "pings": rawLatency.rtt.count],
                "lowcomms": ["msgs_per_sec": lcRate, "rtt_p50_us": lcRTT50, "rtt_p99_us": lcRTT99,
                             "one_way_p50_us": lcOW50, "one_way_p99_us": lcOW99, "pings": lcLatency.rtt.count,
                             "retransmits": counters?.midcomms.retransmits ?? 0, "acks_received": counters?.midcomms.acksReceived ?? 0],
                "throughput_ratio": throughputRatio, "latency_ratio_p50": latencyRatio,
                "aim_met": throughputRatio >= 0.5 && latencyRatio <= 1.5,
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: j, options: [.sortedKeys, .prettyPrinted]), as: UTF8.self))
        } else {
            func f(_ v: Double) -> String { String(format: "%.1f", v) }
            print("transport bench: \(size)-byte DLM_MSG (\(wire) bytes wrapped), \(seconds) s per run, two processes on loopback")
            print("                      msgs/s     RTT p50/p99 µs    one-way p50/p99 µs")
            print("raw TCP (NIO)   \(String(format: "%11.0f", rawRate))   \(f(rawRTT50))/\(f(rawRTT99))        \(f(rawOW50))/\(f(rawOW99))")
            print("lowcomms+midc.  \(String(format: "%11.0f", lcRate))   \(f(lcRTT50))/\(f(lcRTT99))        \(f(lcOW50))/\(f(lcOW99))")
            print("throughput ratio \(String(format: "%.2f", throughputRatio)) (aim ≥ 0.5), ping-pong latency ratio \(String(format: "%.2f", latencyRatio)) (aim ≤ 1.5)")
            if let c = counters {
                print("lowcomms counters: sent \(c.midcomms.sent), acks received \(c.midcomms.acksReceived), retransmits \(c.midcomms.retransmits), bytes out \(c.bytesOut)")
            }
        }
    }
}

/// The raw TCP side of node 1.
final class RawClient: @unchecked Sendable {
    let channel: Channel
    let handler: Handler

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        var onFrame: ((ByteBuffer) -> Void)?
        var onWritable: (() -> Void)?
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { onFrame?(unwrapInboundIn(data)) }
        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if context.channel.isWritable { onWritable?() }
        }
    }

    init(channel: Channel, handler: Handler) {
        self.channel = channel
        self.handler = handler
    }

    static func connect(loop: EventLoop, port: Int) throws -> RawClient {
        let handler = Handler()
        let ch = try ClientBootstrap(group: loop)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .bind(to: try SocketAddress(ipAddress: "127.0.0.1", port: 0))
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandlers([ByteToMessageHandler(DLMFrameDecoder()), handler])
                }
            }
            .connect(to: try SocketAddress(ipAddress: "127.0.0.2", port: port)).wait()
        return RawClient(channel: ch, handler: handler)
    }

    /// Streams for `seconds`, then asks for the count; messages per second delivered.
    func stream(size: Int, seconds: Double) throws -> Double {
        let loop = channel.eventLoop
        let template = RawMsg.make(cmd: 1, size: size)
        let promise = loop.makePromise(of: Double.self)
        try loop.submit { [self] in
            let start = monotonicNanos()
            let end = start + UInt64(seconds * 1e9)
            var stopped = false
            func pump() {
                guard !stopped else { return }
                while channel.isWritable {
                    for _ in 0..<64 { channel.write(template, promise: nil) }
                    channel.flush()
                    if monotonicNanos() >= end {
                        stopped = true
                        channel.writeAndFlush(RawMsg.make(cmd: 3, size: 24), promise: nil)
                        return
                    }
                }
            }
            handler.onWritable = { pump() }
            handler.onFrame = { frame in
                guard let h = try? DLMHeader.peek(frame), h.command == 3 else { return }
                let elapsed = Double(monotonicNanos() - start) / 1e9
                promise.succeed(Double(h.word) / elapsed)
            }
            pump()
        }.wait()
        return try promise.futureResult.wait()
    }

    func pingPong(size: Int, seconds: Double) throws -> TransportBenchClient.Latency {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: TransportBenchClient.Latency.self)
        try loop.submit { [self] in
            var lat = TransportBenchClient.Latency()
            let end = monotonicNanos() + UInt64(seconds * 1e9)
            var warmup = 100
            func ping() { channel.writeAndFlush(RawMsg.make(cmd: 2, size: size, stamp: monotonicNanos()), promise: nil) }
            handler.onWritable = nil
            handler.onFrame = { frame in
                guard let h = try? DLMHeader.peek(frame), h.command == 2 else { return }
                let now = monotonicNanos()
                let stamp = frame.getInteger(at: frame.readerIndex + 16, endianness: .little, as: UInt64.self) ?? now
                if warmup > 0 {
                    warmup -= 1
                } else {
                    lat.rtt.append(now - stamp)
                    lat.oneWay.append(UInt64(h.word))
                }
                if now >= end {
                    promise.succeed(lat)
                } else {
                    ping()
                }
            }
            ping()
        }.wait()
        return try promise.futureResult.wait()
    }
}

/// Node 1's lowcomms with a driver confined to its loop.
final class LowcommsClient: @unchecked Sendable {
    let loop: EventLoop
    let size: Int
    let window: Int
    var lowcomms: Lowcomms!
    var onMessage: ((DLMMessage) -> Void)?
    var onAck: (() -> Void)?
    var versionKnown: EventLoopPromise<Void>

    init(loop: EventLoop, port: Int, size: Int, window: Int) throws {
        self.loop = loop
        self.size = size
        self.window = window
        versionKnown = loop.makePromise()
        var logger = Logger(label: "dlm.bench.transport")
        logger.logLevel = .warning
        let config = LowcommsConfig(nodeID: 1, addresses: ["127.0.0.1"], port: port,
                                    peers: [.init(nodeID: 2, addresses: ["127.0.0.2"])])
        lowcomms = try Lowcomms(config: config, eventLoop: loop, logger: logger, onEvent: { [unowned self] e in
            switch e {
            case .acknowledged: onAck?()
            case .versionDetected: versionKnown.succeed(())
            default: break
            }
        }, onDelivery: { [unowned self] _, d in
            if case .message(let m) = d.payload { onMessage?(m) }
        })
        try lowcomms.start().wait()
    }

    func sessionStart() throws {
        lowcomms.send(BenchMsg.status(from: 1), to: 2)
        try versionKnown.futureResult.wait()
    }

    func stream(seconds: Double) throws -> Double {
        let promise = loop.makePromise(of: Double.self)
        try loop.submit { [self] in
            let start = monotonicNanos()
            let end = start + UInt64(seconds * 1e9)
            var stopped = false
            let template = BenchMsg.message(type: BenchMsg.stream, from: 1, size: size)
            var ticker: RepeatedTask?
            func pump() {
                guard !stopped else { return }
                var depth = lowcomms.sendQueueDepth(to: 2)
                while depth < window {
                    lowcomms.send(template, to: 2)
                    depth += 1
                }
                if monotonicNanos() >= end {
                    stopped = true
                    ticker?.cancel()
                    lowcomms.send(BenchMsg.message(type: BenchMsg.report, from: 1, size: DLMMessage.fixedSize), to: 2)
                }
            }
            onAck = { pump() }
            onMessage = { m in
                guard m.type == BenchMsg.reportReply else { return }
                let elapsed = Double(monotonicNanos() - start) / 1e9
                promise.succeed(Double(m.lkid) / elapsed)
            }
            ticker = loop.scheduleRepeatedTask(initialDelay: .milliseconds(1), delay: .milliseconds(1)) { _ in pump() }
            pump()
        }.wait()
        return try promise.futureResult.wait()
    }

    func pingPong(seconds: Double) throws -> TransportBenchClient.Latency {
        let promise = loop.makePromise(of: TransportBenchClient.Latency.self)
        try loop.submit { [self] in
            onAck = nil
            var lat = TransportBenchClient.Latency()
            let end = monotonicNanos() + UInt64(seconds * 1e9)
            var warmup = 100
            func ping() {
                lowcomms.send(BenchMsg.message(type: BenchMsg.ping, from: 1, size: size, stamp: monotonicNanos()), to: 2)
            }
            onMessage = { m in
                guard m.type == BenchMsg.pong else { return }
                let now = monotonicNanos()
                if warmup > 0 {
                    warmup -= 1
                } else {
                    lat.rtt.append(now - BenchMsg.stamp(m))
                    lat.oneWay.append(UInt64(max(0, m.result)))
                }
                if now >= end {
                    promise.succeed(lat)
                } else {
                    ping()
                }
            }
            ping()
        }.wait()
        return try promise.futureResult.wait()
    }
}
