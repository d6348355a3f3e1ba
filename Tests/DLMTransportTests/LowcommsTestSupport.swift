// Helpers for the lowcomms tests: nodes on loopback (127.0.0.x, non-default ports), a captured
// log, a recorder of deliveries and events, and raw sockets that play a misbehaving peer.

import DLMTransport
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

/// Every log line of one node, for assertions ("connect from non cluster node …").
final class LogStore: Sendable {
    private let box = NIOLockedValueBox<[String]>([])

    func append(_ line: String) { box.withLockedValue { $0.append(line) } }
    var lines: [String] { box.withLockedValue { $0 } }
    func contains(_ text: String) -> Bool { lines.contains { $0.contains(text) } }
}

struct CapturingLogHandler: LogHandler {
    let store: LogStore
    var logLevel: Logger.Level = .debug
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata extra: Logger.Metadata?, source: String,
             file: String, function: String, line: UInt) {
        let all = metadata.merging(extra ?? [:]) { $1 }
        let meta = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        store.append("\(level) \(message) [\(meta)]")
        if ProcessInfo.processInfo.environment["LOWCOMMS_TEST_LOG"] != nil {
            print("\(level) \(message) [\(meta)]")
        }
    }
}

enum LC {
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    private static let nextPort = NIOLockedValueBox(30000 + Int(getpid() % 500) * 20)

    /// A port no other lowcomms test of this run uses (30000–40000).
    static func port() -> Int {
        nextPort.withLockedValue { p in
            p += 1
            if p >= 40000 { p = 30000 }
            return p
        }
    }

    static let lockspace: UInt32 = 0x521B_2683

    static func request(_ n: UInt32, from node: UInt32, size: Int = 128) -> MidcommsPayload {
        var extra = ByteBuffer()
        extra.writeRepeatingByte(UInt8(truncatingIfNeeded: n) | 0x40, count: max(0, size - DLMMessage.fixedSize))
        return .message(DLMMessage(header: DLMHeader(version: .v3_2, word: lockspace, nodeID: node, length: 0, command: .message),
                                   type: MessageType.request.rawValue, lkid: n, rqmode: LockMode.ex.rawValue, extra: extra))
    }

    static func status(from node: UInt32, version: ProtocolVersion = .v3_2) -> DLMRcom {
        DLMRcom(header: DLMHeader(version: version, word: lockspace, nodeID: node, length: 0, command: .rcom),
                type: RcomType.status.rawValue, id: 1, seq: 1, payload: .status(RcomStatus(flags: 0)))
    }

    static func statusReply(from node: UInt32) -> DLMRcom {
        DLMRcom(header: DLMHeader(version: .v3_2, word: lockspace, nodeID: node, length: 0, command: .rcom),
                type: RcomType.statusReply.rawValue, id: 1, seq: 1,
                payload: .statusReply(RcomConfig(lvblen: 32, lsflags: 0), slots: []))
    }

    /// Polls `condition` every 10 ms until it holds or `seconds` pass.
    static func waitUntil(_ seconds: Double = 10, _ what: String = "condition",
                          _ condition: () async throws -> Bool) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try await condition() { return }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        Issue.record("timed out waiting for \(what)")
        throw CancellationError()
    }
}

/// A lowcomms node for tests: records deliveries and events, and answers RCOM_STATUS with
/// STATUS_REPLY as recovery would (so that both sides learn each other's version).
final class TestNode: @unchecked Sendable {
    let nodeID: UInt32
    let address: String
    let log = LogStore()
    let recorded = NIOLockedValueBox<(deliveries: [(UInt32, Delivery)], events: [LowcommsEvent])>(([], []))
    var lowcomms: Lowcomms!
    var answerStatus = true

    init(_ nodeID: UInt32, _ address: String, port: Int, peers: [(UInt32, String)],
         emulate31: Bool = false, configure: (inout LowcommsConfig) -> Void = { _ in }) throws {
        self.nodeID = nodeID
        self.address = address
        var config = LowcommsConfig(nodeID: nodeID, addresses: [address], port: port,
                                    peers: peers.map { .init(nodeID: $0.0, addresses: [$0.1]) }, emulate31: emulate31)
        configure(&config)
        let store = log
        let logger = Logger(label: "lowcomms.test.\(nodeID)") { _ in CapturingLogHandler(store: store) }
        lowcomms = try Lowcomms(config: config, eventLoop: LC.group.next(), logger: logger, onEvent: { [unowned self] e in
            recorded.withLockedValue { $0.events.append(e) }
        }, onDelivery: { [unowned self] from, d in
            recorded.withLockedValue { $0.deliveries.append((from, d)) }
            if answerStatus, case .rcom(let r) = d.payload, r.rcomType == .status {
                lowcomms.send(.rcom(LC.statusReply(from: nodeID)), to: from)
            }
        })
    }

    func start() async throws { try await lowcomms.start().get() }

    var deliveries: [(UInt32, Delivery)] { recorded.withLockedValue { $0.deliveries } }
    var events: [LowcommsEvent] { recorded.withLockedValue { $0.events } }

    /// `m_lkid` of the DLM_MSGs delivered from `node`, in order.
    func messages(from node: UInt32) -> [UInt32] {
        deliveries.compactMap { from, d in
            guard from == node, case .message(let m) = d.payload else { return nil }
            return m.lkid
        }
    }

    func rcoms(from node: UInt32) -> [DLMRcom] {
        deliveries.compactMap { from, d in
            guard from == node, case .rcom(let r) = d.payload else { return nil }
            return r
        }
    }

    func counters(_ peer: UInt32) async throws -> LowcommsPeerCounters {
        try await lowcomms.counters(for: peer).get()!
    }

    func stop() async {
        _ = try? await lowcomms.close().get()
    }
}

/// A plain TCP client bound to a chosen 127.0.0.x that writes whatever bytes a test gives it:
/// a peer that misbehaves on the wire.
final class RawPeer: @unchecked Sendable {
    let channel: Channel
    private let received = NIOLockedValueBox<ByteBuffer>(ByteBuffer())

    private final class Sink: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let box: NIOLockedValueBox<ByteBuffer>
        init(_ box: NIOLockedValueBox<ByteBuffer>) { self.box = box }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var b = unwrapInboundIn(data)
            box.withLockedValue { $0.writeBuffer(&b) }
        }
        func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
    }

    init(from source: String, to target: String, port: Int) async throws {
        let box = received
        channel = try await ClientBootstrap(group: LC.group)
            .bind(to: try SocketAddress(ipAddress: source, port: 0))
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(Sink(box)) }
            }
            .connect(to: try SocketAddress(ipAddress: target, port: port)).get()
    }

    func write(_ bytes: ByteBuffer) async throws {
        try await channel.writeAndFlush(bytes).get()
    }

    func write(_ packet: DLMPacket) async throws {
        try await write(packet.encoded())
    }

    var bytesReceived: Int { received.withLockedValue { $0.readableBytes } }

    /// True once the other side closed the connection (within `seconds`).
    func closedByPeer(within seconds: Double) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if !channel.isActive { return true }
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        return !channel.isActive
    }

    func close() async { _ = try? await channel.close().get() }
}
