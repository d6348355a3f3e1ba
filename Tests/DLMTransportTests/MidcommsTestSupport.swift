// Shared helpers for the midcomms state-machine tests: message builders, a test endpoint that
// carries out a machine's actions, a packet-level link for table-driven traces and frame
// descriptions ("OPTS{FIN} seq 5", "ACK 6", ...).

import DLMTransport
import NIOCore
import Testing

enum MC {
    static let lockspace: UInt32 = 0x521B_2683

    static func header(_ cmd: HeaderCommand, from node: UInt32, version: ProtocolVersion = .v3_2) -> DLMHeader {
        DLMHeader(version: version, word: lockspace, nodeID: node, length: 0, command: cmd)
    }

    /// A REQUEST whose `m_lkid` numbers it, with a name of `nameLength` bytes.
    static func request(_ n: UInt32, from node: UInt32, nameLength: Int = 9, version: ProtocolVersion = .v3_2) -> MidcommsPayload {
        var name = ByteBuffer()
        name.writeRepeatingByte(UInt8(truncatingIfNeeded: n) | 0x40, count: nameLength)
        return .message(DLMMessage(header: header(.message, from: node, version: version), type: MessageType.request.rawValue,
                                   lkid: n, hash: n &* 2_654_435_761, rqmode: LockMode.ex.rawValue, extra: name))
    }

    /// A sequenced RCOM_LOOKUP whose `rc_id` numbers it.
    static func lookup(_ n: UInt32, from node: UInt32, nameLength: Int = 9) -> MidcommsPayload {
        var name = ByteBuffer()
        name.writeRepeatingByte(UInt8(truncatingIfNeeded: n) | 0x40, count: nameLength)
        return .rcom(DLMRcom(header: header(.rcom, from: node), type: RcomType.lookup.rawValue, id: UInt64(n), seq: 1,
                             payload: .lookup(name: name)))
    }

    static func rcom(_ type: RcomType, from node: UInt32, result: Int32 = 0, version: ProtocolVersion = .v3_2) -> MidcommsPayload {
        let payload: RcomPayload
        switch type {
        case .status: payload = .status(RcomStatus(flags: 0))
        case .statusReply:
            let lvblen = result == WireErrno.esrch ? RcomConfig.notReadyLvblen : 32
            payload = .statusReply(RcomConfig(lvblen: lvblen, lsflags: 0), slots: [])
        case .names: payload = .names(lastName: ByteBuffer())
        case .namesReply: payload = .namesReply(RcomNameList(names: [ByteBuffer(string: "res-1")], end: .endOfList))
        case .lookup: payload = .lookup(name: ByteBuffer(string: "foo"))
        case .lookupReply: payload = .lookupReply
        case .lock, .lockReply:
            payload = .lookup(name: ByteBuffer(string: "unused"))
        }
        return .rcom(DLMRcom(header: header(.rcom, from: node, version: version), type: type.rawValue, result: result,
                             id: 7, seq: 1, payload: payload))
    }

    static func now(_ seconds: Double = 0) -> NIODeadline {
        .uptimeNanoseconds(UInt64(seconds * 1e9))
    }

    /// Short text for one frame as it travels: `OPTS{MSG REQUEST #3} seq 5`, `ACK 6`, `RCOM STATUS`.
    static func describe(_ bytes: ByteBuffer) -> String {
        guard let packet = try? DLMPacket.decode(bytes) else { return "UNDECODABLE(\(bytes.readableBytes))" }
        return describe(packet)
    }

    static func describe(_ packet: DLMPacket) -> String {
        let v = packet.header.version == .v3_1 ? " v3.1" : ""
        switch packet {
        case .message(let m): return "MSG \(MessageType.name(m.type))\(v)"
        case .rcom(let r): return "RCOM \(RcomType.name(r.type))\(r.result == WireErrno.esrch ? "(-ESRCH)" : "")\(v)"
        case .ack(let h): return "ACK \(h.seq)"
        case .fin: return "FIN bare"
        case .opts(let o):
            let inner: String
            switch o.inner {
            case .message(let m): inner = "MSG \(MessageType.name(m.type))"
            case .rcom(let r): inner = "RCOM \(RcomType.name(r.type))\(r.result == WireErrno.esrch ? "(-ESRCH)" : "")"
            case .fin: inner = "FIN"
            }
            return "OPTS{\(inner)} seq \(o.header.seq)"
        }
    }
}

/// One machine plus everything its actions produced, for assertions.
struct Endpoint {
    var name: String
    var peer: MidcommsPeer
    /// Frames written, not yet taken by a link.
    var outbox: [OutboundFrame] = []
    var delivered: [Delivery] = []
    var versions: [ProtocolVersion] = []
    var resets: [ResetReason] = []
    var states: [FinState] = []
    var drops: [DropReason] = []
    var logs: [String] = []
    var connectRequests = 0
    var closes: [Bool] = []
    var timer: NIODeadline?
    var keepLogs = true

    init(_ name: String, _ config: MidcommsConfig) {
        self.name = name
        self.peer = MidcommsPeer(config: config)
    }

    @discardableResult
    mutating func handle(_ event: MidcommsEvent, now: NIODeadline = MC.now()) -> [MidcommsAction] {
        let actions = peer.handle(event, now: now)
        apply(actions)
        return actions
    }

    mutating func apply(_ actions: [MidcommsAction]) {
        for a in actions {
            switch a {
            case .write(let frame, _): outbox.append(frame)
            case .connect: connectRequests += 1
            case .deliver(let d): delivered.append(d)
            case .versionDetected(let v): versions.append(v)
            case .finStateChanged(_, let to): states.append(to)
            case .sessionReset(let r): resets.append(r)
            case .closeConnections(let graceful): closes.append(graceful)
            case .scheduleTimer(let d): timer = d
            case .cancelTimer: timer = nil
            case .dropped(let reason, let text):
                drops.append(reason)
                if keepLogs { logs.append(text) }
            case .log(_, let text): if keepLogs { logs.append(text) }
            }
        }
    }

    /// Takes the written frames (as a link would).
    mutating func takeOutbox() -> [OutboundFrame] {
        defer { outbox = [] }
        return outbox
    }

    var outboxText: [String] { outbox.map { MC.describe($0.bytes) } }

    var deliveredText: [String] {
        delivered.map { d in
            let what: String
            switch d.payload {
            case .message(let m): what = "MSG #\(m.lkid)"
            case .rcom(let r): what = "RCOM \(RcomType.name(r.type))"
            }
            return d.seq.map { "\(what) seq \($0)" } ?? what
        }
    }
}

/// Two endpoints and a packet-level link (whole frames, in order per direction) that records
/// every frame moved, for exact traces. Each side's transmit connection can be up or down.
struct PacketLink {
    var a: Endpoint
    var b: Endpoint
    /// Frames in flight A→B and B→A.
    var ab: [ByteBuffer] = []
    var ba: [ByteBuffer] = []
    var trace: [String] = []
    var now = MC.now()
    private var nextConnection: UInt64 = 1
    var aConn: ConnectionID?
    var bConn: ConnectionID?

    init(a: MidcommsConfig, b: MidcommsConfig) {
        self.a = Endpoint("A", a)
        self.b = Endpoint("B", b)
    }

    /// Sets up both transmit connections.
    mutating func connect() {
        if aConn == nil { aConn = ConnectionID(nextConnection); nextConnection += 1; a.handle(.connectionUp(aConn!), now: now) }
        if bConn == nil { bConn = ConnectionID(nextConnection); nextConnection += 1; b.handle(.connectionUp(bConn!), now: now) }
        collect()
    }

    /// Moves written frames onto the wire (only while the writer's connection is up).
    /// Once a side has closed its connections (after its `closeRequested` finished) it reads
    /// nothing more: frames towards it are lost. Its own last frames still arrive (graceful close).
    mutating func collect() {
        for f in a.takeOutbox() where aConn != nil { ab.append(f.bytes) }
        for f in b.takeOutbox() where bConn != nil { ba.append(f.bytes) }
        if !a.closes.isEmpty { ba.removeAll() }
        if !b.closes.isEmpty { ab.removeAll() }
    }

    mutating func on(_ side: Side, _ event: MidcommsEvent) {
        switch side {
        case .a: a.handle(event, now: now)
        case .b: b.handle(event, now: now)
        }
        collect()
    }

    enum Side { case a, b }

    /// Delivers the next frame in flight from `side` to the other side, then ends the batch.
    @discardableResult
    mutating func step(_ from: Side) -> Bool {
        switch from {
        case .a:
            guard !ab.isEmpty else { return false }
            let f = ab.removeFirst()
            trace.append("A→B \(MC.describe(f))")
            b.handle(.receivedFrame(f, on: ConnectionID(999)), now: now)
            b.handle(.receiveBatchDone, now: now)
        case .b:
            guard !ba.isEmpty else { return false }
            let f = ba.removeFirst()
            trace.append("B→A \(MC.describe(f))")
            a.handle(.receivedFrame(f, on: ConnectionID(998)), now: now)
            a.handle(.receiveBatchDone, now: now)
        }
        collect()
        return true
    }

    /// Delivers everything in flight, alternating directions, until both are empty.
    mutating func drain(limit: Int = 10_000) {
        var n = 0
        while (!ab.isEmpty || !ba.isEmpty) && n < limit {
            if !ab.isEmpty { step(.a) }
            if !ba.isEmpty { step(.b) }
            n += 1
        }
    }

    /// Kills `side`'s transmit connection: frames in flight on it are lost.
    mutating func kill(_ side: Side, _ loss: ConnectionLoss = .error("ECONNRESET")) {
        switch side {
        case .a:
            guard let c = aConn else { return }
            ab.removeAll()
            aConn = nil
            trace.append("A kill")
            a.handle(.connectionLost(c, loss), now: now)
        case .b:
            guard let c = bConn else { return }
            ba.removeAll()
            bConn = nil
            trace.append("B kill")
            b.handle(.connectionLost(c, loss), now: now)
        }
        collect()
    }

    /// The usual session start: both add each other as members, A sends STATUS, B replies.
    mutating func establish() {
        connect()
        on(.a, .memberAdded)
        on(.b, .memberAdded)
        on(.a, .send(MC.rcom(.status, from: a.peer.config.localNodeID)))
        step(.a)
        on(.b, .send(MC.rcom(.statusReply, from: b.peer.config.localNodeID)))
        step(.b)
        trace.removeAll()
    }
}

extension MidcommsConfig {
    static func node(_ id: UInt32, peer: UInt32, _ generation: Generation = .newest, emulate31: Bool = false) -> MidcommsConfig {
        MidcommsConfig(localNodeID: id, peerNodeID: peer, generation: generation, emulate31: emulate31)
    }
}
