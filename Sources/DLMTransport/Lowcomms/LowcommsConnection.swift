import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One TCP connection of a peer. Confined to the lowcomms event loop (hence `@unchecked Sendable`:
/// it is only captured by closures that run on that loop).
final class LowcommsConnection: @unchecked Sendable {
    enum Direction: Sendable {
        /// We connected (bound to our configured address).
        case outgoing
        /// The peer connected to our listener.
        case accepted
    }

    /// Why we closed it ourselves.
    enum LocalClose: Sendable {
        /// Fault injection: aborted with SO_LINGER 0 (RST), like `tcpkill` / `ss -K`.
        case killed
        /// Bad `h_length` or overfull receive buffer: the stream cannot be framed any more.
        case malformed
        /// Our shutdown / the peer's close finished (TCP FIN after the DLM FIN handshake).
        case shutdown
        /// A newer accepted connection from the same node replaced this receive-only one.
        case replaced
        /// The peer was removed from the configuration.
        case removed
    }

    let id: ConnectionID
    let nodeID: UInt32
    let direction: Direction
    /// Remote address as text, for logs.
    let remote: String
    var channel: Channel?
    /// The peer, while the connection is up (saves a table lookup per frame).
    @exclusivity(unchecked) var peer: LowcommsPeerState?
    /// TCP established (channelActive seen).
    var active = false
    /// channelInactive processed: gone for good.
    @exclusivity(unchecked) var closed = false
    var localClose: LocalClose?
    /// First socket error seen (ECONNRESET…).
    var error: String?
    @exclusivity(unchecked) var needsFlush = false
    /// Frames written since the last flush, sent down the pipeline as one buffer.
    @exclusivity(unchecked) var pending = ByteBuffer()
    static let maxPendingBytes = 256 * 1024
    /// A batch buffer's first size, and the largest one kept for the next batch.
    static let batchBufferBytes = 16 * 1024
    /// A graceful close (half-close, wait for EOF) is under way.
    var halfClosed = false
    /// The peer closed its side cleanly (TCP FIN read). Without it, a connection that goes away
    /// without an error we saw ourselves died of a socket error (NIO closes on write errors
    /// without firing `errorCaught`).
    var sawEOF = false

    init(id: ConnectionID, nodeID: UInt32, direction: Direction, remote: String) {
        self.id = id
        self.nodeID = nodeID
        self.direction = direction
        self.remote = remote
    }

    /// Up, and not being closed by us.
    var usable: Bool { active && !closed && localClose == nil }

    /// Aborts the connection: SO_LINGER {1, 0} then close, so the kernel sends a RST and the peer
    /// sees ECONNRESET (what `tcpkill`/`ss -K` do to the kernel's DLM sockets).
    func abort() {
        guard let channel, !closed else { return }
        if let provider = channel as? SocketOptionProvider {
            provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in
                channel.close(promise: nil)
            }
        } else {
            channel.close(promise: nil)
        }
    }
}

/// The only handler of a connection's pipeline: cuts the stream into frames (`DLMFramer`, the
/// same decoder the tests and the pcap reader use) and hands frames, batch ends, errors and
/// closure to the owning `Lowcomms`, on its event loop. Framing here rather than in a
/// `ByteToMessageHandler` keeps the per-frame path free of pipeline hops and generic lookups.
final class LowcommsChannelHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    /// More than `receiveBufferLimit` bytes held without completing a frame.
    struct ReceiveBufferOverflow: Error {}

    let owner: Lowcomms
    let connection: LowcommsConnection
    private var framer: DLMFramer
    private var failed = false

    init(owner: Lowcomms, connection: LowcommsConnection, receiveBufferLimit: Int) {
        self.owner = owner
        self.connection = connection
        self.framer = DLMFramer(maximumBufferSize: receiveBufferLimit)
    }

    func channelActive(context: ChannelHandlerContext) {
        owner.connectionActive(connection)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        let owner = self.owner
        let connection = self.connection
        let now = NIODeadline.now()
        do {
            try framer.append(unwrapInboundIn(data)) { frame in
                owner.frameReceived(connection, frame, now: now)
            }
        } catch let error as FramingError {
            failed = true
            owner.connectionError(connection, error)
        } catch {
            failed = true
            owner.connectionError(connection, ReceiveBufferOverflow())
        }
    }
    func channelReadComplete(context: ChannelHandlerContext) {
        owner.readBatchComplete(connection)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        owner.connectionError(connection, error)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            owner.connectionEOF(connection)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        owner.connectionInactive(connection)
        context.fireChannelInactive()
    }
}
