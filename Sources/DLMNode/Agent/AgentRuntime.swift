import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The agent's IO shell around `AgentCore`: the control connections to the other agents
/// (TCP, one JSON object per line, on each node's first address and `agent_port`), the local
/// lockspace control (kernel or dlm-peer), heartbeats, fencing, and the admin socket.
///
/// Everything mutable is confined to `loop`: every event goes through `submit`, which runs
/// the core there, in submission order, and executes its actions: messages at once, local
/// lockspace operations one after another per lockspace (a `control`=0 blocks).
public final class AgentRuntime: @unchecked Sendable {
    public let me: AgentNodeID
    public let loop: EventLoop
    public private(set) var config: ClusterConfig
    public let configPath: String?
    private var core: AgentCore
    private let control: any LocalLockspaceControl
    private let logger: Logger
    private var server: Channel?
    private var outgoing: [AgentNodeID: Channel] = [:]
    private var connecting: Set<AgentNodeID> = []
    private var connectFailures: [AgentNodeID: Int] = [:]
    private var chains: [String: Task<Void, Never>] = [:]
    private var lastHeard: [AgentNodeID: NIODeadline] = [:]
    private var silentReported: Set<AgentNodeID> = []
    private var stopped = false
    private let started = NIODeadline.now()
    /// Every action the core produced (for tests and `status`), newest last; bounded.
    public private(set) var history: [String] = []

    public init(config: ClusterConfig, configPath: String?, me: AgentNodeID, control: any LocalLockspaceControl,
                loop: EventLoop, logger: Logger, incarnation: UInt64 = UInt64.random(in: 1...UInt64.max)) {
        self.config = config
        self.configPath = configPath
        self.me = me
        self.loop = loop
        self.control = control
        self.logger = logger
        self.core = AgentCore(me: me, incarnation: incarnation, canFence: config.fenceCommand != nil)
    }

    /// The core's view (call on `loop`).
    public var state: AgentCore { core }

    // MARK: Lifecycle

    /// Listens, feeds the config, connects to the other agents.
    public func start() -> EventLoopFuture<Void> {
        loop.flatSubmit {
            guard let node = self.config.node(self.me), let address = node.addresses.first else {
                return self.loop.makeFailedFuture(LocalControlError("node \(self.me) is not in the config"))
            }
            return ServerBootstrap(group: self.loop)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(AgentLineHandler(runtime: self, outgoingTo: nil))
                    }
                }
                .bind(host: address.description, port: self.config.agentPort)
                .flatMapError { error in
                    self.loop.makeFailedFuture(LocalControlError("agent port \(address):\(self.config.agentPort): \(error)"))
                }
                .map { channel in
                    self.server = channel
                    self.log(.info, "agent of node \(self.me) listening on \(address):\(self.config.agentPort)")
                    self.process(.configLoaded(lockspaces: Self.configured(self.config), nodes: self.config.nodes.map(\.id)))
                    for n in self.config.nodes where n.id != self.me { self.connect(n.id) }
                    if let hb = self.config.heartbeat { self.scheduleHeartbeat(hb) }
                }
        }
    }

    public func shutdown() -> EventLoopFuture<Void> {
        loop.flatSubmit {
            self.stopped = true
            let channels = Array(self.outgoing.values) + (self.server.map { [$0] } ?? [])
            self.outgoing = [:]
            return EventLoopFuture.andAllComplete(channels.map { $0.close() }, on: self.loop)
        }
    }

    static func configured(_ config: ClusterConfig) -> [ConfiguredLockspace] {
        config.lockspaces.map { ls in
            ConfiguredLockspace(name: ls.name, globalID: ls.globalID,
                                members: config.weightedMembers(of: ls).map { AgentMember(id: $0.nodeID, weight: $0.weight) },
                                nodir: ls.nodir)
        }
    }

    /// Feeds an event (from any thread).
    public func submit(_ event: AgentEvent) {
        loop.execute { self.process(event) }
    }

    /// Re-reads the config file (SIGHUP, `dlm-peer reload`); the error text on failure.
    public func reload() -> EventLoopFuture<String?> {
        loop.submit {
            guard let path = self.configPath else { return "no config file to reload" }
            let new: ClusterConfig
            do {
                new = try ClusterConfig.load(path: path)
            } catch let error as ConfigError {
                let text = error.diagnostics.isEmpty ? "\(error)" : error.diagnostics.map { "\($0)" }.joined(separator: "\n")
                self.log(.error, "reload refused:\n\(text)")
                return text
            } catch {
                let text = "\(error)"
                self.log(.error, "reload refused:\n\(text)")
                return text
            }
            return self.apply(new)
        }
    }

    /// Takes a new config (call on `loop`); the refusal reason, or nil.
    public func apply(_ new: ClusterConfig) -> String? {
        guard let mine = new.node(me), mine.addresses == config.node(me)?.addresses,
              new.agentPort == config.agentPort, new.port == config.port, new.transport == config.transport,
              new.name == config.name else {
            let why = "reload refused: the new config changes this node's addresses, the cluster name, transport or ports (restart for that)"
            log(.error, why)
            return why
        }
        config = new
        core.canFence = new.fenceCommand != nil
        log(.info, "config reloaded")
        process(.configLoaded(lockspaces: Self.configured(new), nodes: new.nodes.map(\.id)))
        for n in new.nodes where n.id != me && outgoing[n.id] == nil { connect(n.id) }
        return nil
    }

    // MARK: The core

    func process(_ event: AgentEvent) {
        loop.preconditionInEventLoop()
        if stopped { return }
        if case .received(_, let from) = event {
            lastHeard[from] = .now()
            silentReported.remove(from)
        }
        for action in core.handle(event) { execute(action) }
    }

    private func record(_ text: String) {
        history.append(text)
        if history.count > 2000 { history.removeFirst(history.count - 2000) }
    }

    private func execute(_ action: AgentAction) {
        switch action {
        case .log(let level, let text):
            log(level, text)
        case .send(let message, let to):
            send(message, to: to)
        case .stop(let ls):
            record("stop \(ls)")
            logger.debug("\(ls): control=0")
            local(ls, "stop") { try await $0.stop(ls) } done: { .stopDone(lockspace: ls) }
        case .start(let plan):
            record("start \(plan.lockspace) \(plan.change) members \(plan.members.map(\.description).joined(separator: ","))"
                + (plan.renew.isEmpty ? "" : " renew \(plan.renew.map(String.init).joined(separator: ","))")
                + (plan.joining ? " joining" : ""))
            log(.info, "\(plan.lockspace): START \(plan.change) members \(plan.members.map(\.description).joined(separator: ","))"
                + (plan.renew.isEmpty ? "" : " renew \(plan.renew.map(String.init).joined(separator: ","))")
                + (plan.joining ? " (join)" : ""))
            local(plan.lockspace, "start") { try await $0.start(plan) } done: { nil }
        case .finishLeave(let ls):
            record("leave \(ls)")
            log(.info, "\(ls): LEAVE (configfs members removed, event_done 0)")
            local(ls, "leave") { try await $0.finishLeave(ls) } done: { nil }
        case .refuseJoin(let ls, let errno, let reason):
            record("refuse \(ls)")
            log(.error, "\(ls): join refused: \(reason)")
            local(ls, "refuse") { try await $0.refuseJoin(ls, errno: errno) } done: { nil }
        case .removeComm(let node):
            record("rmcomm \(node)")
            local("comms", "rmdir comms/\(node)") { try await $0.removeComm(node) } done: { nil }
        case .addComm(let node):
            record("addcomm \(node)")
            guard let n = config.node(node) else { return }
            local("comms", "mkdir comms/\(node)") { try await $0.addComm(n, local: false) } done: { nil }
        case .fence(let node):
            record("fence \(node)")
            fence(node)
        }
    }

    /// Runs a local operation after the previous one of the same lockspace.
    private func local(_ key: String, _ what: String, _ body: @escaping @Sendable (any LocalLockspaceControl) async throws -> Void,
                       done: @escaping @Sendable () -> AgentEvent?) {
        let previous = chains[key]
        let control = self.control
        chains[key] = Task {
            await previous?.value
            do {
                try await body(control)
                if let event = done() { self.submit(event) }
            } catch {
                self.submit(.localFailed(lockspace: key, error: "\(what): \(error)"))
            }
        }
    }

    /// Waits until every local operation issued so far is done (tests).
    public func settle() async {
        let tasks = try? await loop.submit { Array(self.chains.values) }.get()
        for t in tasks ?? [] { await t.value }
    }

    private func log(_ level: AgentLogLevel, _ text: String) {
        switch level {
        case .info: logger.info("\(text)")
        case .warning: logger.warning("\(text)")
        case .error: logger.error("\(text)")
        }
    }

    // MARK: Connections

    private func connect(_ node: AgentNodeID) {
        guard !stopped, outgoing[node] == nil, !connecting.contains(node),
              let target = config.node(node)?.addresses.first,
              let mine = config.node(me)?.addresses.first else { return }
        let source: SocketAddress
        do {
            source = try SocketAddress(ipAddress: mine.description, port: 0)
        } catch {
            log(.error, "cannot connect from \(mine): \(error)")
            return
        }
        connecting.insert(node)
        ClientBootstrap(group: loop)
            .connectTimeout(.seconds(2))
            .bind(to: source)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AgentLineHandler(runtime: self, outgoingTo: node))
                }
            }
            .connect(host: target.description, port: config.agentPort)
            .hop(to: loop)
            .whenComplete { result in
                self.connecting.remove(node)
                switch result {
                case .success(let channel):
                    if self.stopped {
                        channel.close(promise: nil)
                        return
                    }
                    self.connectFailures[node] = nil
                    self.outgoing[node] = channel
                    self.log(.info, "connected to the agent of node \(node) (\(target):\(self.config.agentPort))")
                    self.process(.connected(node: node))
                case .failure(let error):
                    let n = self.connectFailures[node, default: 0] + 1
                    self.connectFailures[node] = n
                    if n == 1 || n % 60 == 0 {
                        self.logger.debug("agent of node \(node) not reachable (\(error)); retrying every second")
                    }
                    self.loop.scheduleTask(in: .seconds(1)) { self.connect(node) }
                }
            }
    }

    func outgoingClosed(_ node: AgentNodeID, _ channel: Channel) {
        loop.preconditionInEventLoop()
        guard outgoing[node] === channel else { return }
        outgoing[node] = nil
        process(.disconnected(node: node))
        loop.scheduleTask(in: .seconds(1)) { self.connect(node) }
    }

    private func send(_ message: AgentMessage, to node: AgentNodeID) {
        guard let channel = outgoing[node] else {
            logger.debug("not connected to node \(node): dropping \(message) (it syncs on hello)")
            return
        }
        guard let line = try? AgentWire.encode(message) else { return }
        var buffer = channel.allocator.buffer(capacity: line.count + 1)
        buffer.writeBytes(line)
        buffer.writeInteger(UInt8(ascii: "\n"))
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// A message arrived on an incoming connection whose hello said it is `from`.
    func received(_ message: AgentMessage, from: AgentNodeID) {
        process(.received(message, from: from))
    }

    /// Whether an incoming connection from `address` may speak for `node`.
    func accepts(node: AgentNodeID, from address: SocketAddress?) -> Bool {
        guard node != me, let n = config.node(node) else { return false }
        guard let ip = address?.ipAddress else { return false }
        return n.addresses.contains { $0.description == ip }
    }

    // MARK: Heartbeats and fencing

    private func scheduleHeartbeat(_ hb: ClusterConfig.Heartbeat) {
        let interval = TimeAmount.nanoseconds(Int64(hb.interval.components.seconds) * 1_000_000_000
                                              + hb.interval.components.attoseconds / 1_000_000_000)
        let timeout = TimeAmount.nanoseconds(Int64(hb.timeout.components.seconds) * 1_000_000_000
                                             + hb.timeout.components.attoseconds / 1_000_000_000)
        loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { task in
            if self.stopped { task.cancel(); return }
            for node in self.outgoing.keys.sorted() { self.send(.heartbeat(node: self.me), to: node) }
            let now = NIODeadline.now()
            for n in self.config.nodes where n.id != self.me && !self.core.down.contains(n.id) {
                let last = self.lastHeard[n.id] ?? self.started
                if now - last > timeout, !self.silentReported.contains(n.id) {
                    self.silentReported.insert(n.id)
                    self.process(.heartbeatTimeout(node: n.id))
                }
            }
        }
    }

    private func fence(_ node: AgentNodeID) {
        guard let command = config.fenceCommand else {
            process(.fenceDone(node: node, success: false))
            return
        }
        let address = config.node(node)?.addresses.first?.description ?? ""
        log(.warning, "fencing node \(node): \(command)")
        let loop = self.loop
        Thread {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", command]
            var env = ProcessInfo.processInfo.environment
            env["DLM_FENCE_NODE"] = "\(node)"
            env["DLM_FENCE_ADDRESS"] = address
            p.environment = env
            let ok: Bool
            do {
                try p.run()
                p.waitUntilExit()
                ok = p.terminationReason == .exit && p.terminationStatus == 0
            } catch {
                ok = false
            }
            loop.execute {
                self.process(.fenceDone(node: node, success: ok))
                if !ok {
                    // still silent in 5 s: the next heartbeat check fences again
                    self.loop.scheduleTask(in: .seconds(5)) { self.silentReported.remove(node) }
                }
            }
        }.start()
    }

    // MARK: Status

    public func status() -> EventLoopFuture<AgentStatus> {
        loop.submit { AgentStatus(self.core, connected: Set(self.outgoing.keys)) }
    }
}

/// The agents' wire format: one JSON object per line.
public enum AgentWire {
    public static func encode(_ message: AgentMessage) throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return Array(try e.encode(message))
    }

    public static func decode(_ line: some Collection<UInt8>) throws -> AgentMessage {
        try JSONDecoder().decode(AgentMessage.self, from: Data(line))
    }

    /// The longest line accepted.
    public static let maxLine = 1 << 20
}

/// One control connection: splits lines; on an incoming connection the first message must be
/// a hello from a configured node's address, later ones are fed to the runtime as from it.
final class AgentLineHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    let runtime: AgentRuntime
    let outgoingTo: AgentNodeID?
    private var buffer = ByteBuffer()
    private var from: AgentNodeID?

    init(runtime: AgentRuntime, outgoingTo: AgentNodeID?) {
        self.runtime = runtime
        self.outgoingTo = outgoingTo
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let node = outgoingTo {
            let channel = context.channel
            runtime.loop.execute { self.runtime.outgoingClosed(node, channel) }
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        guard outgoingTo == nil else { return }   // we only write on our own connections
        buffer.writeBuffer(&bytes)
        while let nl = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = nl - buffer.readerIndex
            let line = buffer.readBytes(length: length)!
            buffer.moveReaderIndex(forwardBy: 1)
            guard let message = try? AgentWire.decode(line) else {
                context.close(promise: nil)
                return
            }
            if from == nil {
                guard case .hello(let node, _, _) = message,
                      runtime.accepts(node: node, from: context.channel.remoteAddress) else {
                    context.close(promise: nil)
                    return
                }
                from = node
            }
            let node = from!
            runtime.loop.execute { self.runtime.received(message, from: node) }
        }
        buffer.discardReadBytes()
        if buffer.readableBytes > AgentWire.maxLine { context.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// `dlm-peer agent` status (the admin socket's `status`).
public struct AgentStatus: Codable, Sendable {
    public struct Lockspace: Codable, Sendable {
        public var name: String
        public var local: String
        public var target: MembershipChange
        public var started: MembershipChange?
        public var stoppedFrom: [AgentNodeID]
        public var evicted: Bool
    }

    public var node: AgentNodeID
    public var incarnation: UInt64
    public var connected: [AgentNodeID]
    public var synced: [AgentNodeID]
    public var down: [AgentNodeID]
    public var lockspaces: [Lockspace]

    init(_ core: AgentCore, connected: Set<AgentNodeID>) {
        node = core.me
        incarnation = core.incarnation
        self.connected = connected.sorted()
        synced = core.synced.sorted()
        down = core.down.sorted()
        lockspaces = core.lockspaces.keys.sorted().map { name in
            let s = core.lockspaces[name]!
            return Lockspace(name: name, local: s.local.rawValue, target: s.target, started: s.started,
                             stoppedFrom: (s.stoppedFrom[s.target.id] ?? []).sorted(), evicted: s.evicted)
        }
    }

    public var text: String {
        var out = "agent node \(node): connected to \(connected.map(String.init).joined(separator: ",")), down: \(down.isEmpty ? "none" : down.map(String.init).joined(separator: ","))\n"
        for ls in lockspaces {
            out += "  \(ls.name): \(ls.local); target \(ls.target); started \(ls.started.map(\.description) ?? "-")"
            out += "; stopped for target: \(ls.stoppedFrom.map(String.init).joined(separator: ","))\(ls.evicted ? "; EVICTED" : "")\n"
        }
        return out
    }
}
