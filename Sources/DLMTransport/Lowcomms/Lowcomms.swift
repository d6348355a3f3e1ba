import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The state of one configured peer. Confined to the lowcomms event loop.
final class LowcommsPeerState: @unchecked Sendable {
    let nodeID: UInt32
    let peer: LowcommsConfig.Peer
    let connectAddresses: [SocketAddress]
    var addressIndex = 0
    // The hot per-message state is exempt from dynamic exclusivity checks (a runtime call per
    // access): it is touched only on the event loop, and no access to it spans a callback
    // (`Lowcomms.run` ends its access to `midcomms` before it carries out the actions).
    @exclusivity(unchecked) var midcomms: MidcommsPeer
    /// Established connections (outgoing and accepted), oldest first.
    var connections: [LowcommsConnection] = []
    /// Our own connection: connecting or established.
    var outgoing: LowcommsConnection?
    var connecting = false
    /// The one connection midcomms transmits on.
    var transmit: LowcommsConnection?
    /// Midcomms (or the upper layer) wants a transmit connection.
    var wantTransmit = false
    /// Delay before the next connect attempt; nil: the next attempt is immediate.
    var backoff: TimeAmount?
    var retryTask: Scheduled<Void>?
    var timerTask: Scheduled<Void>?
    var killTask: RepeatedTask?
    @exclusivity(unchecked) var stats: LowcommsPeerCounters
    var hadTransmit = false
    /// Our close of this peer finished (shutdown) or it was removed: no more connects.
    var closed = false
    @exclusivity(unchecked) var inBatch = false
    @exclusivity(unchecked) var unackedAtBatchStart = 0

    init(peer: LowcommsConfig.Peer, midcomms: MidcommsConfig, addresses: [SocketAddress]) {
        nodeID = peer.nodeID
        self.peer = peer
        connectAddresses = addresses
        self.midcomms = MidcommsPeer(config: midcomms)
        stats = LowcommsPeerCounters(nodeID: peer.nodeID, midcomms: self.midcomms.counters)
    }

    var hasConnections: Bool { !connections.isEmpty || outgoing != nil }
}

/// TCP lowcomms on SwiftNIO (wire.md §7): listens on our address and port, connects to peers on
/// demand (bound to our address so the kernel maps us by source IP), maps accepted connections
/// to peers by source IP alone, transmits on exactly one connection per peer and reads from all
/// of them, reconnects with backoff, and drives one `MidcommsPeer` per peer.
///
/// All state lives on one `EventLoop` (`eventLoop`); every public method may be called from any
/// thread and hops onto that loop (callbacks are invoked on it). There are no locks.
///
/// Upper layer: `onDelivery(nodeID, delivery)` receives every message in order, exactly once
/// per session; `onEvent` reports versions, FIN states, connections and ACK progress.
public final class Lowcomms: @unchecked Sendable {
    public let eventLoop: EventLoop
    public let config: LowcommsConfig
    let logger: Logger
    let onDelivery: @Sendable (UInt32, Delivery) -> Void
    let onEvent: (@Sendable (LowcommsEvent) -> Void)?

    enum State {
        case idle, running, shuttingDown, stopping, stopped
    }

    // MARK: Loop-confined state
    var state = State.idle
    var peers: [UInt32: LowcommsPeerState] = [:]
    /// Configured peer IP (text form) → nodeid.
    var addressMap: [String: UInt32] = [:]
    var listener: Channel?
    let listenAddress: SocketAddress
    let bindAddress: SocketAddress
    var nextConnectionID: UInt64 = 1
    @exclusivity(unchecked) var dirty: [LowcommsConnection] = []
    @exclusivity(unchecked) var flushScheduled = false
    @exclusivity(unchecked) var scratch: [MidcommsAction] = []
    /// The time of this event-loop tick for sends (one clock read per tick, not per message);
    /// while set, the scheduled flush that clears it is pending.
    @exclusivity(unchecked) var tickNow: NIODeadline?
    /// The peer of the last `send` (saves a dictionary lookup per message).
    @exclusivity(unchecked) var lastSendPeer: LowcommsPeerState?
    var rejectedUnknownAddress = 0
    var acceptedTotal = 0
    var pendingClose: Set<UInt32> = []
    var shutdownPromise: EventLoopPromise<Void>?

    /// - Parameters:
    ///   - eventLoop: the loop that owns this node's state and all its channels.
    ///   - onDelivery: called on `eventLoop` for every message delivered by a peer's midcomms.
    ///   - onEvent: called on `eventLoop` for peer events.
    public init(config: LowcommsConfig, eventLoop: EventLoop, logger: Logger = Logger(label: "dlm.lowcomms"),
                onEvent: (@Sendable (LowcommsEvent) -> Void)? = nil,
                onDelivery: @escaping @Sendable (UInt32, Delivery) -> Void) throws {
        self.config = config
        self.eventLoop = eventLoop
        var logger = logger
        logger[metadataKey: "node"] = "\(config.nodeID)"
        self.logger = logger
        self.onDelivery = onDelivery
        self.onEvent = onEvent
        guard let ours = config.addresses.first else {
            throw LowcommsError(.invalidAddress, "node \(config.nodeID) has no address")
        }
        do {
            listenAddress = try SocketAddress(ipAddress: ours, port: config.port)
            bindAddress = try SocketAddress(ipAddress: ours, port: 0)
        } catch {
            throw LowcommsError(.invalidAddress, "our address \(ours): \(error)")
        }
        for peer in config.peers {
            let state = try Self.makePeerState(peer, config: config)
            peers[peer.nodeID] = state
            for a in state.connectAddresses { if let ip = a.ipAddress { addressMap[ip] = peer.nodeID } }
        }
    }

    static func makePeerState(_ peer: LowcommsConfig.Peer, config: LowcommsConfig) throws -> LowcommsPeerState {
        guard !peer.addresses.isEmpty else {
            throw LowcommsError(.invalidAddress, "node \(peer.nodeID) has no address")
        }
        let addresses = try peer.addresses.map { a -> SocketAddress in
            do { return try SocketAddress(ipAddress: a, port: config.port) } catch {
                throw LowcommsError(.invalidAddress, "node \(peer.nodeID) address \(a): \(error)")
            }
        }
        return LowcommsPeerState(peer: peer, midcomms: config.midcommsConfig(for: peer), addresses: addresses)
    }

    // MARK: - Public API (any thread)

    /// Binds the listener (SO_REUSEADDR, TCP_NODELAY, backlog). Connections go out on demand.
    public func start() -> EventLoopFuture<Void> {
        eventLoop.flatSubmit { [self] in
            guard state == .idle else {
                return eventLoop.makeFailedFuture(LowcommsError(.alreadyStarted, "start called twice"))
            }
            state = .running
            let limit = config.receiveBufferLimit
            return ServerBootstrap(group: eventLoop)
                .serverChannelOption(ChannelOptions.backlog, value: Int32(config.backlog))
                .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 16)
                .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
                .childChannelInitializer { [self] channel in
                    acceptInitializer(channel, limit: limit)
                }
                .bind(to: listenAddress)
                .map { [self] channel in
                    listener = channel
                    logger.info("listening on \(listenAddress)")
                }
                .flatMapErrorThrowing { [self] error in
                    state = .stopped
                    throw error
                }
        }
    }

    /// The address the listener is bound to (after `start`).
    public var localAddress: SocketAddress? {
        try? eventLoop.submit { [self] in listener?.localAddress }.wait()
    }

    /// Sends one message to `node` (midcomms wraps, sequences and keeps it as the peer needs).
    public func send(_ payload: MidcommsPayload, to node: UInt32) {
        if eventLoop.inEventLoop {
            // Hot path for senders on the loop (replies from `onDelivery`, drivers): no closure.
            let p: LowcommsPeerState
            if let last = lastSendPeer, last.nodeID == node, !last.closed {
                p = last
            } else {
                guard let found = livePeer(node, "send") else { return }
                lastSendPeer = found
                p = found
            }
            run(p, .send(payload), now: tickTime())
            scheduleFlush()
            return
        }
        eventLoop.execute { [self] in
            guard let p = livePeer(node, "send") else { return }
            run(p, .send(payload))
            flushDirty()
        }
    }

    /// Sends several messages to `node`, in order, in one hop (one flush).
    public func send(_ payloads: [MidcommsPayload], to node: UInt32) {
        onLoop { [self] in
            guard let p = livePeer(node, "send") else { return }
            for payload in payloads { run(p, .send(payload)) }
        }
    }

    /// The peer joined one of our lockspaces: midcomms `memberAdded`, and connect as the kernel
    /// does on member add (`dlm_lowcomms_connect_node`).
    public func memberAdded(_ node: UInt32) {
        onLoop { [self] in
            guard let p = livePeer(node, "memberAdded") else { return }
            run(p, .memberAdded)
            p.wantTransmit = true
            ensureTransmit(p)
        }
    }

    public func memberRemoved(_ node: UInt32) {
        onLoop { [self] in
            guard let p = livePeer(node, "memberRemoved") else { return }
            run(p, .memberRemoved)
        }
    }

    /// Opens a transmit connection to `node` now if there is none (without membership changes).
    public func connect(to node: UInt32) {
        onLoop { [self] in
            guard let p = livePeer(node, "connect") else { return }
            p.wantTransmit = true
            ensureTransmit(p)
        }
    }

    /// Sends a DLM_ACK now if something delivered is unacknowledged (midcomms `flushAck`).
    public func flushAck(_ node: UInt32) {
        onLoop { [self] in
            guard let p = livePeer(node, "flushAck") else { return }
            run(p, .flushAck)
        }
    }

    /// Adds a peer at run time (configfs `comms/<nodeid>` created).
    public func addPeer(_ peer: LowcommsConfig.Peer) -> EventLoopFuture<Void> {
        eventLoop.submit { [self] in
            if let old = peers[peer.nodeID], !old.closed {
                throw LowcommsError(.unknownPeer, "node \(peer.nodeID) already configured")
            }
            let state = try Self.makePeerState(peer, config: config)
            peers[peer.nodeID] = state
            for a in state.connectAddresses { if let ip = a.ipAddress { addressMap[ip] = peer.nodeID } }
        }
    }

    /// Removes a peer (`dlm_midcomms_close` / `dlm_lowcomms_close`): connections aborted, state
    /// dropped, its addresses forgotten (its new connections are rejected).
    public func removePeer(_ node: UInt32) {
        onLoop { [self] in
            guard let p = peers[node] else { return }
            run(p, .peerRemoved)
            dropPeer(p)
            flushDirty()
        }
    }

    // MARK: Fault injection

    /// Replaces the midcomms fault settings for `node` (withhold ACKs, drop or duplicate the next N).
    public func setFaults(_ faults: FaultInjection, for node: UInt32) {
        onLoop { [self] in
            guard let p = livePeer(node, "setFaults") else { return }
            logger.info("fault injection for node \(node): \(faults)", metadata: ["peer": "\(node)"])
            run(p, .setFaults(faults))
        }
    }

    /// Aborts every connection to `node` now (RST, like `tcpkill -9` / `ss -K`).
    public func killConnections(to node: UInt32) {
        onLoop { [self] in
            guard let p = livePeer(node, "kill") else { return }
            kill(p)
        }
    }

    /// Aborts every connection to `node` now and then every `interval` until `stopKilling`.
    public func killConnections(to node: UInt32, every interval: TimeAmount) {
        onLoop { [self] in
            guard let p = livePeer(node, "kill") else { return }
            p.killTask?.cancel()
            logger.info("fault injection: killing connections to node \(node) every \(interval)", metadata: ["peer": "\(node)"])
            p.killTask = eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: interval) { [self] _ in
                kill(p)
            }
        }
    }

    public func stopKilling(_ node: UInt32) {
        onLoop { [self] in
            guard let p = peers[node], let task = p.killTask else { return }
            task.cancel()
            p.killTask = nil
            logger.info("fault injection: stopped killing connections to node \(node)", metadata: ["peer": "\(node)"])
        }
    }

    // MARK: Counters

    public func counters() -> EventLoopFuture<LowcommsCounters> {
        eventLoop.submit { [self] in countersOnLoop() }
    }

    public func counters(for node: UInt32) -> EventLoopFuture<LowcommsPeerCounters?> {
        eventLoop.submit { [self] in peers[node].map(peerCounters) }
    }

    /// Counters, on the event loop only (for drivers running there).
    public func countersOnLoop() -> LowcommsCounters {
        eventLoop.preconditionInEventLoop()
        var c = LowcommsCounters()
        c.rejectedUnknownAddress = rejectedUnknownAddress
        c.accepted = acceptedTotal
        for (id, p) in peers { c.peers[id] = peerCounters(p) }
        return c
    }

    func peerCounters(_ p: LowcommsPeerState) -> LowcommsPeerCounters {
        var s = p.stats
        s.midcomms = p.midcomms.counters
        s.connectionsOpen = p.connections.count
        s.transmitConnection = p.transmit?.id
        s.transmitIsOutgoing = p.transmit?.direction == .outgoing
        return s
    }

    /// Sequenced messages to `node` not yet acknowledged, plus those waiting for its version.
    /// On the event loop only: lets a sender running there keep a bounded window.
    public func sendQueueDepth(to node: UInt32) -> Int {
        eventLoop.preconditionInEventLoop()
        guard let p = peers[node] else { return 0 }
        return p.midcomms.unackedCount + p.midcomms.counters.waitingForVersion
    }

    // MARK: Shutdown

    /// Clean shutdown: the DLM_FIN handshake with every 3.2 peer (midcomms `closeRequested`),
    /// waiting for each to finish or time out, then TCP half-close of every connection, waiting up
    /// to `eofTimeout` for the peers' EOF, then close. The listener stays up until the handshakes
    /// are done (a peer may have to reconnect to send its FIN).
    public func shutdown() -> EventLoopFuture<Void> {
        eventLoop.flatSubmit { [self] in
            switch state {
            case .idle, .stopped:
                state = .stopped
                return eventLoop.makeSucceededVoidFuture()
            case .shuttingDown, .stopping:
                return shutdownPromise!.futureResult
            case .running:
                break
            }
            state = .shuttingDown
            let promise = eventLoop.makePromise(of: Void.self)
            shutdownPromise = promise
            logger.info("shutting down: FIN handshake with \(peers.count) peer(s)")
            for p in peers.values {
                p.killTask?.cancel()
                p.killTask = nil
                pendingClose.insert(p.nodeID)
            }
            for p in peers.values.sorted(by: { $0.nodeID < $1.nodeID }) where !p.closed {
                run(p, .closeRequested)
            }
            for p in peers.values where p.closed { pendingClose.remove(p.nodeID) }
            flushDirty()
            checkShutdown()
            return promise.futureResult
        }
    }

    /// Abrupt stop (tests, fatal errors): no FIN, every connection aborted, listener closed.
    public func close() -> EventLoopFuture<Void> {
        eventLoop.flatSubmit { [self] in
            if state == .stopped { return eventLoop.makeSucceededVoidFuture() }
            state = .stopping
            var futures: [EventLoopFuture<Void>] = []
            if let l = listener { futures.append(l.close()) }
            listener = nil
            for p in peers.values {
                cancelTasks(p)
                p.closed = true
                for c in allConnections(p) {
                    if let ch = c.channel { futures.append(ch.closeFuture) }
                    c.localClose = c.localClose ?? .shutdown
                    c.abort()
                }
            }
            return EventLoopFuture.andAllComplete(futures, on: eventLoop).map { [self] in
                guard state != .stopped else { return }
                state = .stopped
                shutdownPromise?.succeed(())
            }
        }
    }

    // MARK: - Loop internals

    @inline(__always)
    func onLoop(_ body: @escaping @Sendable () -> Void) {
        if eventLoop.inEventLoop {
            body()
            scheduleFlush()
        } else {
            eventLoop.execute {
                body()
                self.flushDirty()
            }
        }
    }

    func livePeer(_ node: UInt32, _ what: String) -> LowcommsPeerState? {
        guard let p = peers[node], !p.closed else {
            logger.warning("\(what): node \(node) is not a configured peer (or is closed)", metadata: ["peer": "\(node)"])
            return nil
        }
        return p
    }

    func newConnectionID() -> ConnectionID {
        defer { nextConnectionID += 1 }
        return ConnectionID(nextConnectionID)
    }

    func allConnections(_ p: LowcommsPeerState) -> [LowcommsConnection] {
        var list = p.connections
        if let o = p.outgoing, !list.contains(where: { $0 === o }) { list.append(o) }
        return list
    }

    func cancelTasks(_ p: LowcommsPeerState) {
        p.retryTask?.cancel()
        p.retryTask = nil
        p.timerTask?.cancel()
        p.timerTask = nil
        p.killTask?.cancel()
        p.killTask = nil
    }

    /// This tick's time: read once, kept until the flush scheduled at the end of the tick.
    @inline(__always)
    func tickTime() -> NIODeadline {
        if let t = tickNow { return t }
        let t = NIODeadline.now()
        tickNow = t
        if !flushScheduled {
            flushScheduled = true
            eventLoop.execute { [self] in
                flushScheduled = false
                tickNow = nil
                flushDirty()
            }
        }
        return t
    }

    /// Feeds one event to the peer's midcomms and carries out the actions.
    @inline(__always)
    func run(_ p: LowcommsPeerState, _ event: MidcommsEvent, now: NIODeadline = .now()) {
        var actions = scratch
        scratch = []
        p.midcomms.handle(event, now: now, into: &actions)
        if !actions.isEmpty {
            perform(actions, p)
            if actions.count == 1 {
                actions.removeLast()  // the common case, far cheaper than removeAll
            } else {
                actions.removeAll(keepingCapacity: true)
            }
        }
        if actions.capacity > scratch.capacity { scratch = actions }
    }

    func perform(_ actions: [MidcommsAction], _ p: LowcommsPeerState) {
        var wantConnect = false
        for action in actions {
            switch action {
            case .write(let frame, let id):
                write(frame, on: id, p)
            case .connect:
                wantConnect = true
            case .deliver(let d):
                onDelivery(p.nodeID, d)
            case .versionDetected(let v):
                onEvent?(.versionDetected(node: p.nodeID, v))
            case .finStateChanged(let from, let to):
                logger.debug("node \(p.nodeID): FIN state \(from) -> \(to)", metadata: ["peer": "\(p.nodeID)"])
                onEvent?(.finStateChanged(node: p.nodeID, from: from, to: to))
            case .sessionReset(let reason):
                onEvent?(.sessionReset(node: p.nodeID, reason))
            case .closeConnections(let graceful):
                closePeer(p, graceful: graceful)
            case .scheduleTimer(let deadline):
                p.timerTask?.cancel()
                p.timerTask = eventLoop.scheduleTask(deadline: deadline) { [self] in
                    p.timerTask = nil
                    run(p, .timerFired)
                    flushDirty()
                }
            case .cancelTimer:
                p.timerTask?.cancel()
                p.timerTask = nil
            case .dropped(let reason, let text):
                switch reason {
                case .duplicate, .futureSequence:
                    // Normal after every reconnect (the peer resends what we had not acknowledged).
                    logger.trace("\(text)", metadata: ["peer": "\(p.nodeID)"])
                default:
                    logger.warning("\(text)", metadata: ["peer": "\(p.nodeID)", "drop": "\(reason)"])
                }
            case .log(let level, let text):
                let l: Logger.Level
                switch level {
                case .debug: l = .debug
                case .info: l = .info
                case .warning: l = .warning
                }
                logger.log(level: l, "\(text)", metadata: ["peer": "\(p.nodeID)"])
            }
        }
        if wantConnect {
            p.wantTransmit = true
            ensureTransmit(p)
        }
    }

    @inline(__always)
    func write(_ frame: OutboundFrame, on id: ConnectionID, _ p: LowcommsPeerState) {
        let c: LowcommsConnection
        if let t = p.transmit, t.id == id {
            c = t
        } else if let found = p.connections.first(where: { $0.id == id }) {
            c = found
        } else {
            return
        }
        guard !c.closed, let channel = c.channel else { return }
        p.stats.framesOut &+= 1
        p.stats.bytesOut &+= frame.bytes.readableBytes
        // Frames of one batch are copied into one buffer and go down the pipeline as a single
        // write: far cheaper than a pipeline write per message. A connection lost with bytes
        // unsent loses them all; midcomms resends what was not acknowledged.
        if c.pending.readableBytes + frame.bytes.readableBytes > LowcommsConnection.maxPendingBytes {
            channel.write(c.pending, promise: nil)
            c.pending = channel.allocator.buffer(capacity: LowcommsConnection.maxPendingBytes)
        } else if c.pending.capacity == 0 {
            c.pending = channel.allocator.buffer(capacity: LowcommsConnection.batchBufferBytes)
        }
        c.pending.writeImmutableBuffer(frame.bytes)
        if !c.needsFlush {
            c.needsFlush = true
            dirty.append(c)
            scheduleFlush()
        }
    }

    @inline(__always)
    func scheduleFlush() {
        guard !dirty.isEmpty, !flushScheduled else { return }
        flushScheduled = true
        eventLoop.execute { [self] in
            flushScheduled = false
            tickNow = nil
            flushDirty()
        }
    }

    func flushDirty() {
        guard !dirty.isEmpty else { return }
        let list = dirty
        dirty.removeAll(keepingCapacity: true)
        for c in list {
            c.needsFlush = false
            guard !c.closed, let channel = c.channel else { continue }
            guard c.pending.readableBytes > 0 else {
                channel.flush()
                continue
            }
            channel.write(c.pending, promise: nil)
            channel.flush()
            // Written out at once (the usual case), the channel no longer holds the buffer and
            // `clear` keeps its storage for the next batch (else it gets new storage of the same
            // size: only worth it for the small ones).
            if c.pending.capacity <= LowcommsConnection.batchBufferBytes {
                c.pending.clear()
            } else {
                c.pending = ByteBuffer()
            }
        }
    }

    // MARK: Transmit connection

    /// Gives midcomms a transmit connection: our own established one, else an accepted one,
    /// else waits for a connect in progress or the backoff, else connects.
    func ensureTransmit(_ p: LowcommsPeerState) {
        guard p.transmit == nil, !p.closed, state == .running || state == .shuttingDown else { return }
        if let o = p.outgoing, o.usable {
            makeTransmit(p, o)
            return
        }
        if let a = p.connections.last(where: { $0.direction == .accepted && $0.usable }) {
            makeTransmit(p, a)
            return
        }
        if p.connecting || p.retryTask != nil { return }
        startConnect(p)
    }

    func makeTransmit(_ p: LowcommsPeerState, _ c: LowcommsConnection) {
        p.transmit = c
        p.wantTransmit = false
        p.retryTask?.cancel()
        p.retryTask = nil
        if p.hadTransmit { p.stats.reconnects &+= 1 }
        p.hadTransmit = true
        logger.debug("node \(p.nodeID): transmitting on \(c.id) (\(c.direction == .outgoing ? "ours" : "accepted"))",
                     metadata: ["peer": "\(p.nodeID)", "conn": "\(c.id)"])
        onEvent?(.transmitConnection(node: p.nodeID, c.id))
        run(p, .connectionUp(c.id))
    }

    func startConnect(_ p: LowcommsPeerState) {
        let target = p.connectAddresses[p.addressIndex % p.connectAddresses.count]
        let c = LowcommsConnection(id: newConnectionID(), nodeID: p.nodeID, direction: .outgoing, remote: "\(target)")
        p.outgoing = c
        p.connecting = true
        p.stats.connectAttempts &+= 1
        let limit = config.receiveBufferLimit
        ClientBootstrap(group: eventLoop)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(ChannelOptions.maxMessagesPerRead, value: 16)
            .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .connectTimeout(config.connectTimeout)
            .bind(to: bindAddress)
            .channelInitializer { [self] channel in
                c.channel = channel
                do {
                    try channel.pipeline.syncOperations.addHandler(LowcommsChannelHandler(owner: self, connection: c, receiveBufferLimit: limit))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(to: target)
            .whenFailure { [self] error in
                connectFailed(p, c, error)
            }
    }

    func connectFailed(_ p: LowcommsPeerState, _ c: LowcommsConnection, _ error: Error) {
        guard p.outgoing === c else { return }
        p.outgoing = nil
        p.connecting = false
        c.closed = true
        p.stats.connectsFailed &+= 1
        let refused = Self.isRefused(error)
        if refused { p.stats.connectsRefused &+= 1 }
        if p.connectAddresses.count > 1 { p.addressIndex &+= 1 }
        guard !p.closed, state == .running || state == .shuttingDown else {
            checkStopped()
            return
        }
        // Refusal is normal: the kernel listens only while it has a lockspace (wire.md §7.2).
        let why = refused ? "connection refused" : "\(error)"
        if p.transmit == nil, p.wantTransmit,
           let a = p.connections.last(where: { $0.direction == .accepted && $0.usable }) {
            logger.debug("connect to node \(p.nodeID) \(c.remote) failed (\(why)); using its connection \(a.id)",
                         metadata: ["peer": "\(p.nodeID)"])
            makeTransmit(p, a)
            flushDirty()
            return
        }
        guard p.wantTransmit, p.transmit == nil else { return }
        let delay = p.backoff ?? config.reconnectInitialDelay
        p.backoff = min(delay * 2, config.reconnectMaxDelay)
        logger.log(level: refused ? .debug : .info,
                   "connect to node \(p.nodeID) \(c.remote) failed (\(why)); retry in \(delay)",
                   metadata: ["peer": "\(p.nodeID)"])
        p.retryTask = eventLoop.scheduleTask(in: delay) { [self] in
            p.retryTask = nil
            ensureTransmit(p)
            flushDirty()
        }
    }

    static func isRefused(_ error: Error) -> Bool {
        if let e = error as? NIOConnectionError {
            return e.connectionErrors.contains { ($0.error as? IOError)?.errnoCode == ECONNREFUSED }
        }
        if let e = error as? IOError { return e.errnoCode == ECONNREFUSED }
        return false
    }

    // MARK: Accepting

    /// Maps an accepted connection to a peer by source IP alone (port ignored, wire.md §7.3).
    func acceptInitializer(_ channel: Channel, limit: Int) -> EventLoopFuture<Void> {
        guard let ip = channel.remoteAddress?.ipAddress else {
            // Reset before we got to it (getpeername fails): nothing to map, nothing to serve.
            logger.debug("accepted connection already closed by its peer")
            return channel.eventLoop.makeFailedFuture(LowcommsError(.unknownPeer, "connection gone before accept"))
        }
        guard state == .running || state == .shuttingDown, let node = addressMap[ip], let p = peers[node], !p.closed else {
            rejectedUnknownAddress &+= 1
            logger.warning("connect from non cluster node \(ip), closing", metadata: ["remote": "\(channel.remoteAddress.map { "\($0)" } ?? "?")"])
            return channel.eventLoop.makeFailedFuture(LowcommsError(.unknownPeer, "connect from non cluster node \(ip)"))
        }
        let c = LowcommsConnection(id: newConnectionID(), nodeID: node, direction: .accepted,
                                   remote: channel.remoteAddress.map { "\($0)" } ?? ip)
        c.channel = channel
        do {
            try channel.pipeline.syncOperations.addHandler(LowcommsChannelHandler(owner: self, connection: c, receiveBufferLimit: limit))
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        return channel.eventLoop.makeSucceededVoidFuture()
    }

    // MARK: Channel callbacks (on the loop)

    func connectionActive(_ c: LowcommsConnection) {
        c.active = true
        guard let p = peers[c.nodeID], !p.closed, p.outgoing === c || c.direction == .accepted,
              state == .running || state == .shuttingDown
        else {
            c.localClose = .removed
            c.channel?.close(promise: nil)
            return
        }
        p.connections.append(c)
        c.peer = p
        let meta: Logger.Metadata = ["peer": "\(p.nodeID)", "conn": "\(c.id)"]
        switch c.direction {
        case .outgoing:
            p.connecting = false
            p.backoff = nil
            p.stats.connectsSucceeded &+= 1
            logger.debug("connected to node \(p.nodeID) at \(c.remote) (\(c.id))", metadata: meta)
            onEvent?(.connectionUp(node: p.nodeID, c.id, outgoing: true))
            if p.transmit == nil { makeTransmit(p, c) }
        case .accepted:
            acceptedTotal &+= 1
            p.stats.connectionsAccepted &+= 1
            logger.debug("accepted connection from node \(p.nodeID) at \(c.remote) (\(c.id))", metadata: meta)
            onEvent?(.connectionUp(node: p.nodeID, c.id, outgoing: false))
            // The kernel keeps one receive-only "othercon" per peer and replaces it with a newer one.
            for old in p.connections where old !== c && old.direction == .accepted && old !== p.transmit && old.usable {
                old.localClose = .replaced
                p.stats.connectionsReplaced &+= 1
                logger.debug("node \(p.nodeID): \(old.id) replaced by \(c.id)", metadata: meta)
                old.channel?.close(promise: nil)
            }
            // No socket of our own (none, or its connect failed / waits for backoff): as in the
            // kernel, the accepted connection becomes the one we send on.
            if p.transmit == nil, p.wantTransmit, !p.connecting {
                makeTransmit(p, c)
            }
        }
        flushDirty()
    }

    /// One frame read from `c`; `now` is the time of the read that brought it (one clock read per read).
    func frameReceived(_ c: LowcommsConnection, _ frame: ByteBuffer, now: NIODeadline) {
        guard let p = c.peer, !c.closed else { return }
        p.stats.framesIn &+= 1
        p.stats.bytesIn &+= frame.readableBytes
        if !p.inBatch {
            p.inBatch = true
            p.unackedAtBatchStart = p.midcomms.unackedCount
        }
        run(p, .receivedFrame(frame, on: c.id), now: now)
    }

    func readBatchComplete(_ c: LowcommsConnection) {
        guard let p = c.peer, p.inBatch else {
            flushDirty()
            return
        }
        p.inBatch = false
        run(p, .receiveBatchDone)
        if config.flushAckEveryBatch { run(p, .flushAck) }
        let unacked = p.midcomms.unackedCount
        if unacked < p.unackedAtBatchStart { onEvent?(.acknowledged(node: p.nodeID, unacked: unacked)) }
        flushDirty()
    }

    func connectionError(_ c: LowcommsConnection, _ error: Error) {
        let meta: Logger.Metadata = ["peer": "\(c.nodeID)", "conn": "\(c.id)"]
        let p = peers[c.nodeID]
        if let framing = error as? FramingError {
            p?.stats.framingErrors &+= 1
            logger.warning("received invalid length header: \(framing.length) from node \(c.nodeID) on \(c.id) (h_nodeid \(framing.nodeID.map(String.init) ?? "?")); the stream cannot be framed, closing this connection",
                           metadata: meta)
            if c.localClose == nil { c.localClose = .malformed }
            c.abort()
            return
        }
        if error is LowcommsChannelHandler.ReceiveBufferOverflow {
            p?.stats.receiveBufferOverflows &+= 1
            logger.warning("receive buffer of \(c.id) from node \(c.nodeID) over \(config.receiveBufferLimit) bytes, closing this connection",
                           metadata: meta)
            if c.localClose == nil { c.localClose = .malformed }
            c.abort()
            return
        }
        if c.error == nil { c.error = "\(error)" }
        c.channel?.close(promise: nil)
    }

    /// The peer half-closed (TCP FIN): we close our side too (wire.md §7.7: "a peer should answer a
    /// received EOF by closing its end"); midcomms learns of it as `.endOfFile`.
    func connectionEOF(_ c: LowcommsConnection) {
        c.sawEOF = true
        flushDirty()
        c.channel?.close(promise: nil)
    }

    func connectionInactive(_ c: LowcommsConnection) {
        guard !c.closed else { return }
        c.closed = true
        if c.needsFlush { c.needsFlush = false; dirty.removeAll { $0 === c } }
        c.peer = nil
        guard let p = peers[c.nodeID] else {
            checkStopped()
            return
        }
        p.connections.removeAll { $0 === c }
        if p.outgoing === c {
            p.outgoing = nil
            p.connecting = false
        }
        let loss: ConnectionLoss
        switch c.localClose {
        case .killed?:
            loss = .error("connection aborted by fault injection")
        case .malformed?, .shutdown?, .replaced?, .removed?:
            loss = .closedLocally
        case nil:
            if let e = c.error {
                loss = .error(e)
            } else if c.sawEOF {
                loss = .endOfFile
            } else {
                // NIO closes on a write error (EPIPE/ECONNRESET) without firing errorCaught.
                loss = .error("connection reset")
            }
        }
        switch loss {
        case .error: p.stats.connectionsLostError &+= 1
        case .endOfFile: p.stats.connectionsLostEOF &+= 1
        case .closedLocally: p.stats.connectionsClosedLocally &+= 1
        }
        let wasTransmit = p.transmit === c
        if wasTransmit { p.transmit = nil }
        logger.log(level: c.localClose == nil && c.error != nil ? .info : .debug,
                   "connection \(c.id) \(c.direction == .outgoing ? "to" : "from") node \(p.nodeID) closed: \(loss)\(wasTransmit ? " (transmit)" : "")",
                   metadata: ["peer": "\(p.nodeID)", "conn": "\(c.id)"])
        onEvent?(.connectionDown(node: p.nodeID, c.id))
        if c.active { run(p, .connectionLost(c.id, loss)) }
        if p.transmit == nil, p.wantTransmit { ensureTransmit(p) }
        flushDirty()
        checkStopped()
    }

    // MARK: Kill / close

    func kill(_ p: LowcommsPeerState) {
        p.stats.kills &+= 1
        // Mark them all first: aborting one runs its close callbacks at once, and the next
        // transmit connection must not be one that is about to be killed too.
        let victims = p.connections.filter { !$0.closed && $0.localClose == nil }
        for c in victims { c.localClose = .killed }
        for c in victims { c.abort() }
        let n = victims.count
        p.stats.connectionsKilled &+= n
        logger.debug("fault injection: aborted \(n) connection(s) to node \(p.nodeID)", metadata: ["peer": "\(p.nodeID)"])
    }

    /// Midcomms `closeConnections`: our close of the peer is done (or the peer was removed).
    func closePeer(_ p: LowcommsPeerState, graceful: Bool) {
        let closing = state == .shuttingDown || state == .stopping
        logger.debug("closing connections to node \(p.nodeID) (\(graceful ? "graceful" : "abort"))", metadata: ["peer": "\(p.nodeID)"])
        if closing {
            p.closed = true
            p.wantTransmit = false
            p.retryTask?.cancel()
            p.retryTask = nil
        }
        flushDirty()
        for c in allConnections(p) where !c.closed {
            c.localClose = c.localClose ?? .shutdown
            guard let channel = c.channel else { continue }
            if graceful && c.active {
                // TCP FIN, then wait for the peer's EOF (NIO closes on it) or force after eofTimeout.
                c.halfClosed = true
                channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
                eventLoop.scheduleTask(in: config.eofTimeout) {
                    if !c.closed { c.abort() }
                }
            } else {
                c.abort()
            }
        }
        if pendingClose.remove(p.nodeID) != nil {
            onEvent?(.closed(node: p.nodeID, graceful: graceful))
        }
        checkShutdown()
    }

    func dropPeer(_ p: LowcommsPeerState) {
        cancelTasks(p)
        p.closed = true
        for c in allConnections(p) where !c.closed {
            c.localClose = c.localClose ?? .removed
            c.abort()
        }
        peers[p.nodeID] = nil
        for (ip, node) in addressMap where node == p.nodeID { addressMap[ip] = nil }
        pendingClose.remove(p.nodeID)
        checkShutdown()
    }

    func checkShutdown() {
        guard state == .shuttingDown, pendingClose.isEmpty else { return }
        state = .stopping
        logger.info("FIN handshakes done; closing listener and connections")
        listener?.close(promise: nil)
        listener = nil
        for p in peers.values {
            cancelTasks(p)
            p.closed = true
            if let o = p.outgoing, !o.active, !o.closed { o.channel?.close(promise: nil) }
        }
        checkStopped()
    }

    func checkStopped() {
        guard state == .stopping, shutdownPromise != nil else { return }
        let open = peers.values.contains { p in allConnections(p).contains { !$0.closed } }
        guard !open else { return }
        state = .stopped
        logger.info("lowcomms stopped")
        shutdownPromise?.succeed(())
    }
}
