// The DLM_FIN 4-way close: exact packet traces for the canonical cases (table-driven) and an
// exhaustive walk over every order in which packets, closes, member removals and connection
// bounces can happen.

import DLMTransport
import NIOCore
import Testing

/// One scripted step of a FIN scenario.
enum FinStep: Sendable, CustomStringConvertible {
    case a(MidcommsEvent)
    case b(MidcommsEvent)
    /// Deliver the next frame A→B / B→A.
    case toB, toA
    /// Kill A's / B's transmit connection (frames in flight on it are lost).
    case killA, killB
    /// Bring up whichever transmit connections are down.
    case connect
    /// Advance the clock.
    case advance(Double)

    var description: String {
        switch self {
        case .a(let e): return "A \(e)"
        case .b(let e): return "B \(e)"
        case .toB: return "→B"
        case .toA: return "→A"
        case .killA: return "killA"
        case .killB: return "killB"
        case .connect: return "connect"
        case .advance(let s): return "+\(s)s"
        }
    }
}

struct FinCase: Sendable, CustomStringConvertible {
    var name: String
    var a: MidcommsConfig = .node(1, peer: 2)
    var b: MidcommsConfig = .node(2, peer: 1)
    var steps: [FinStep]
    var trace: [String]
    var aStates: [FinState]
    var bStates: [FinState]
    var aResets: [ResetReason]
    var bResets: [ResetReason]
    var aCloses: [Bool]
    var description: String { name }
}

extension PacketLink {
    mutating func run(_ finStep: FinStep) {
        switch finStep {
        case .a(let e): on(.a, e)
        case .b(let e): on(.b, e)
        case .toB: self.step(Side.a)
        case .toA: self.step(Side.b)
        case .killA: kill(.a)
        case .killB: kill(.b)
        case .connect: connect()
        case .advance(let s):
            now = now + .nanoseconds(Int64(s * 1e9))
        }
    }

    /// Clears the per-endpoint records after the session start, so cases see only their own.
    mutating func clearRecords() {
        trace.removeAll()
        for side in [Side.a, .b] {
            switch side {
            case .a: a.states.removeAll(); a.resets.removeAll(); a.closes.removeAll(); a.drops.removeAll()
            case .b: b.states.removeAll(); b.resets.removeAll(); b.closes.removeAll(); b.drops.removeAll()
            }
        }
    }
}

@Suite("Midcomms: DLM_FIN handshake")
struct MidcommsFinTests {
    static let cases: [FinCase] = [
        FinCase(
            name: "active close, peer has no common lockspace: ACK and FIN answer at once",
            steps: [.a(.memberRemoved), .b(.memberRemoved), .a(.closeRequested), .toB, .toA, .toA, .toB],
            trace: ["A→B OPTS{FIN} seq 0", "B→A ACK 1", "B→A OPTS{FIN} seq 0", "A→B ACK 1"],
            aStates: [.finWait1, .finWait2, .closed], bStates: [.lastAck, .closed],
            aResets: [.finHandshakeComplete], bResets: [.finHandshakeComplete], aCloses: [true]),
        FinCase(
            name: "active close, peer still a member: CLOSE_WAIT until its last member removal",
            steps: [.a(.memberRemoved), .a(.closeRequested), .toB, .toA, .b(.memberRemoved), .toA, .toB],
            trace: ["A→B OPTS{FIN} seq 0", "B→A ACK 1", "B→A OPTS{FIN} seq 0", "A→B ACK 1"],
            aStates: [.finWait1, .finWait2, .closed], bStates: [.closeWait, .lastAck, .closed],
            aResets: [.finHandshakeComplete], bResets: [.finHandshakeComplete], aCloses: [true]),
        FinCase(
            name: "simultaneous close, FINs cross: both CLOSING",
            steps: [.a(.memberRemoved), .b(.memberRemoved), .a(.closeRequested), .b(.closeRequested), .toB, .toA, .toA, .toB],
            trace: ["A→B OPTS{FIN} seq 0", "B→A OPTS{FIN} seq 0", "B→A ACK 1", "A→B ACK 1"],
            aStates: [.finWait1, .closing, .closed], bStates: [.finWait1, .closing, .closed],
            aResets: [.finHandshakeComplete], bResets: [.finHandshakeComplete], aCloses: [true]),
        FinCase(
            name: "simultaneous close, B's ACK first: A via FIN_WAIT2, B via CLOSING",
            steps: [.a(.memberRemoved), .b(.memberRemoved), .a(.closeRequested), .toB, .b(.closeRequested), .toA, .toA, .toB],
            trace: ["A→B OPTS{FIN} seq 0", "B→A ACK 1", "B→A OPTS{FIN} seq 0", "A→B ACK 1"],
            aStates: [.finWait1, .finWait2, .closed], bStates: [.lastAck, .closed],
            aResets: [.finHandshakeComplete], bResets: [.finHandshakeComplete], aCloses: [true]),
        FinCase(
            name: "FIN after sequenced traffic: it takes the next seq, one cumulative ACK covers all",
            steps: [.a(.send(MC.request(0, from: 1))), .a(.send(MC.request(1, from: 1))), .b(.send(MC.lookup(0, from: 2))),
                    .a(.memberRemoved), .b(.memberRemoved), .a(.closeRequested),
                    .toB, .toB, .toB, .toA, .toA, .toA, .toA, .toB],
            trace: ["A→B OPTS{MSG REQUEST} seq 0", "A→B OPTS{MSG REQUEST} seq 1", "A→B OPTS{FIN} seq 2",
                    "B→A OPTS{RCOM LOOKUP} seq 0", "B→A ACK 3", "B→A OPTS{FIN} seq 1", "A→B ACK 2"],
            aStates: [.finWait1, .finWait2, .closed], bStates: [.lastAck, .closed],
            aResets: [.finHandshakeComplete], bResets: [.finHandshakeComplete], aCloses: [true]),
        FinCase(
            name: "close during a reconnect: FIN queued while down, resent in order after the message lost in flight",
            steps: [.a(.send(MC.request(0, from: 1))), .killA, .a(.memberRemoved), .b(.memberRemoved), .a(.closeRequested),
                    .connect, .toB, .toB, .toA, .toA, .toB],
            trace: ["A kill", "A→B OPTS{MSG REQUEST} seq 0", "A→B OPTS{FIN} seq 1", "B→A ACK 2", "B→A OPTS{FIN} seq 0", "A→B ACK 1"],
            aStates: [.finWait1, .finWait2, .closed], bStates: [.lastAck, .closed],
            aResets: [.finHandshakeComplete], bResets: [.finHandshakeComplete], aCloses: [true]),
        FinCase(
            name: "FIN lost with the connection: resent after reconnect, the peer completes",
            steps: [.a(.memberRemoved), .b(.memberRemoved), .a(.closeRequested), .killA, .connect, .toB, .toA, .toA, .toB],
            trace: ["A kill", "A→B OPTS{FIN} seq 0", "B→A ACK 1", "B→A OPTS{FIN} seq 0", "A→B ACK 1"],
            aStates: [.finWait1, .finWait2, .closed], bStates: [.lastAck, .closed],
            aResets: [.finHandshakeComplete], bResets: [.finHandshakeComplete], aCloses: [true]),
        FinCase(
            name: "duplicate FIN after reconnect is dropped and re-ACKed",
            steps: [.a(.memberRemoved), .a(.closeRequested), .toB, .killA, .connect, .toB, .toA, .toA],
            trace: ["A→B OPTS{FIN} seq 0", "A kill", "A→B OPTS{FIN} seq 0", "B→A ACK 1", "B→A ACK 1"],
            aStates: [.finWait1, .finWait2], bStates: [.closeWait],
            aResets: [], bResets: [], aCloses: []),
        FinCase(
            name: "shutdown timeout (newest, 5 s): peer never answers",
            steps: [.a(.memberRemoved), .a(.closeRequested), .killA, .advance(4.9), .a(.timerFired), .advance(0.2), .a(.timerFired)],
            trace: ["A kill"],
            aStates: [.finWait1, .closed], bStates: [],
            aResets: [.shutdownTimeout], bResets: [], aCloses: [false]),
        FinCase(
            name: "shutdown timeout (6.1, 180 s)",
            a: MidcommsConfig.node(1, peer: 2, .kernel61), b: MidcommsConfig.node(2, peer: 1, .kernel61),
            steps: [.a(.memberRemoved), .a(.closeRequested), .killA, .advance(5.1), .a(.timerFired), .advance(175), .a(.timerFired)],
            trace: ["A kill"],
            aStates: [.finWait1, .closed], bStates: [],
            aResets: [.shutdownTimeout], bResets: [], aCloses: [false]),
        FinCase(
            name: "close towards a 3.1 node: no FIN, connections closed at once",
            b: MidcommsConfig.node(2, peer: 1, emulate31: true),
            steps: [.a(.memberRemoved), .a(.closeRequested)],
            trace: [], aStates: [.closed], bStates: [],
            aResets: [.shutdown], bResets: [], aCloses: [true]),
    ]

    @Test("exact traces", arguments: cases)
    func table(_ c: FinCase) {
        var link = PacketLink(a: c.a, b: c.b)
        link.establish()
        link.clearRecords()
        for step in c.steps { link.run(step) }
        #expect(link.trace == c.trace)
        #expect(link.a.states == c.aStates)
        #expect(link.b.states == c.bStates)
        #expect(link.a.resets == c.aResets)
        #expect(link.b.resets == c.bResets)
        #expect(link.a.closes == c.aCloses)
        #expect(link.ab.isEmpty && link.ba.isEmpty, "left in flight: \(link.ab.map(MC.describe)) \(link.ba.map(MC.describe))")
        if c.aResets == [.finHandshakeComplete] {
            // After the handshake both sides start again at seq 0/0, version unknown, nothing queued.
            for p in [link.a.peer, link.b.peer] {
                #expect(p.finState == .closed)
                #expect(p.version == nil)
                #expect(p.nextSendSequence == 0 && p.nextExpectedSequence == 0)
                #expect(p.unackedCount == 0)
            }
        }
    }

    @Test("every FIN arriving in order is ACKed at once, even in states the kernel leaves silent")
    func finInUnexpectedState() {
        var link = PacketLink(a: .node(1, peer: 2), b: .node(2, peer: 1))
        link.establish()
        // B in CLOSE_WAIT (A's FIN received, B still a member), then A's FIN comes again as a new seq
        // would only from a broken peer: craft it by hand.
        link.on(.a, .memberRemoved)
        link.on(.a, .closeRequested)
        link.step(.a)
        #expect(link.b.peer.finState == .closeWait)
        let fin = DLMPacket.opts(DLMOpts(header: DLMHeader(version: .v3_2, word: 1, nodeID: 1, length: 0, command: .opts),
                                         inner: .fin(DLMHeader(version: .v3_2, word: 0, nodeID: 1, length: 16, command: .fin))))
        link.b.outbox.removeAll()
        link.b.handle(.received(fin, on: ConnectionID(5)))
        #expect(link.b.outboxText == ["ACK 2"])
        #expect(link.b.drops.last == .unexpectedFin)
        #expect(link.b.peer.finState == .closeWait)
    }

    @Test("a stuck termination is reset by the next session's STATUS (6.1) or member add (both)")
    func stuckReset() {
        for generation in [MidcommsConfig.Generation.kernel61, .newest] {
            var link = PacketLink(a: .node(1, peer: 2, generation), b: .node(2, peer: 1, generation))
            link.establish()
            link.on(.a, .memberRemoved)
            link.on(.b, .memberRemoved)
            link.on(.a, .closeRequested)
            link.step(.a)                      // B: ACK + FIN, LAST_ACK
            link.step(.b)
            link.step(.b)                      // A: ACK 1 written, A CLOSED
            link.kill(.a)                      // ... and lost: B stays in LAST_ACK
            #expect(link.a.peer.finState == .closed)
            #expect(link.b.peer.finState == .lastAck)
            // A new session: A joins again and sends STATUS.
            link.connect()
            link.on(.a, .memberAdded)
            link.on(.a, .send(MC.rcom(.status, from: 1)))
            link.step(.a)
            switch generation {
            case .kernel61:
                #expect(link.b.resets.last == .stuckTermination)
                #expect(link.b.peer.finState == .established)
                #expect(link.b.peer.version == .v3_2)
            case .newest:
                #expect(link.b.peer.finState == .lastAck)
                link.on(.b, .memberAdded)
                #expect(link.b.resets.last == .stuckTermination)
                #expect(link.b.peer.finState == .established)
            }
            #expect(link.b.peer.nextSendSequence == 0 && link.b.peer.nextExpectedSequence == 0)
        }
    }

    // MARK: - Exhaustive interleavings

    /// A one-shot event that may happen at any point of the walk.
    struct AnyTimeEvent: Sendable {
        var name: String
        var enabled: @Sendable (PacketLink) -> Bool
        var fire: @Sendable (inout PacketLink) -> Void
    }

    struct Outcome: Hashable {
        var a: FinState
        var b: FinState
    }

    /// Walks every order of: delivering the next frame in either direction, and firing each
    /// optional event once. Calls `leaf` for every complete run. Iterative (an explicit stack):
    /// the Swift Testing threads have small stacks.
    static func explore(_ start: PacketLink, _ events: [AnyTimeEvent], _ leaf: (PacketLink, [String]) -> Void) {
        var stack: [(PacketLink, [AnyTimeEvent], [String])] = [(start, events, [])]
        var visited = 0
        while let (link, events, path) = stack.popLast() {
            visited += 1
            if visited > 3_000_000 {
                Issue.record("interleaving walk too large")
                return
            }
            var moved = false
            if !link.ab.isEmpty {
                var l = link
                l.step(.a)
                moved = true
                stack.append((l, events, path + ["→B"]))
            }
            if !link.ba.isEmpty {
                var l = link
                l.step(.b)
                moved = true
                stack.append((l, events, path + ["→A"]))
            }
            for (i, e) in events.enumerated() where e.enabled(link) {
                var l = link
                e.fire(&l)
                var rest = events
                rest.remove(at: i)
                moved = true
                stack.append((l, rest, path + [e.name]))
            }
            if !moved { leaf(link, path) }
        }
    }

    static let bRemoved = AnyTimeEvent(name: "B removes A", enabled: { _ in true }, fire: { $0.on(.b, .memberRemoved) })
    static let bCloses = AnyTimeEvent(name: "B closes", enabled: { _ in true }, fire: { $0.on(.b, .closeRequested) })
    static let bounceA = AnyTimeEvent(name: "bounce A", enabled: { _ in true }, fire: { $0.kill(.a); $0.connect() })
    static let bounceB = AnyTimeEvent(name: "bounce B", enabled: { _ in true }, fire: { $0.kill(.b); $0.connect() })

    func walk(_ events: [AnyTimeEvent], check: (PacketLink, [String]) -> Void) -> Int {
        var link = PacketLink(a: .node(1, peer: 2), b: .node(2, peer: 1))
        link.establish()
        link.on(.a, .send(MC.request(0, from: 1)))
        link.on(.b, .send(MC.lookup(0, from: 2)))
        link.on(.a, .memberRemoved)
        link.on(.a, .closeRequested)
        var leaves = 0
        Self.explore(link, events) { l, path in
            leaves += 1
            check(l, path)
        }
        return leaves
    }

    @Test("every interleaving: one side closes, the other removes its member at any point")
    func exhaustiveOneSide() {
        var outcomes: Set<Outcome> = []
        let leaves = walk([Self.bRemoved]) { l, path in
            outcomes.insert(Outcome(a: l.a.peer.finState, b: l.b.peer.finState))
            #expect(l.a.peer.finState == .closed, "\(path)")
            #expect(l.b.peer.finState == .closed, "\(path)")
            #expect(l.a.closes == [true], "\(path)")
            #expect(l.a.resets == [.finHandshakeComplete] && l.b.resets == [.finHandshakeComplete], "\(path)")
            // Both messages sent before the close were delivered exactly once.
            #expect(l.b.deliveredText.filter { $0.hasPrefix("MSG") } == ["MSG #0 seq 0"], "\(path)")
            #expect(l.a.deliveredText.filter { $0.hasPrefix("RCOM LOOKUP") } == ["RCOM LOOKUP seq 0"], "\(path)")
            // Exactly two FINs and no frame other than the two messages, FINs and ACKs.
            #expect(l.trace.filter { $0.contains("FIN") }.count == 2, "\(path) \(l.trace)")
        }
        #expect(leaves > 10)
        #expect(outcomes == [Outcome(a: .closed, b: .closed)])
    }

    @Test("every interleaving: both sides close (simultaneous close)")
    func exhaustiveBoth() {
        var sawClosing = false
        var sawFinWait2 = false
        let leaves = walk([Self.bRemoved, Self.bCloses]) { l, path in
            #expect(l.a.peer.finState == .closed, "\(path)")
            #expect(l.b.peer.finState == .closed, "\(path)")
            #expect(l.a.closes == [true], "\(path)")
            #expect(l.b.peer.unackedCount == 0 && l.a.peer.unackedCount == 0, "\(path)")
            #expect(l.trace.filter { $0.contains("FIN") }.count == 2, "\(path) \(l.trace)")
            if l.a.states.contains(.closing) { sawClosing = true }
            if l.a.states.contains(.finWait2) { sawFinWait2 = true }
        }
        #expect(leaves > 100)
        #expect(sawClosing && sawFinWait2)
    }

    @Test("every interleaving with a connection bounce on either side at any point (close during reconnect)")
    func exhaustiveWithBounces() {
        var outcomes: [Outcome: Int] = [:]
        let leaves = walk([Self.bRemoved, Self.bounceA, Self.bounceB]) { l, path in
            var l = l
            let outcome = Outcome(a: l.a.peer.finState, b: l.b.peer.finState)
            outcomes[outcome, default: 0] += 1
            // The closing side always ends CLOSED through the handshake: its FIN is resent until ACKed.
            #expect(l.a.peer.finState == .closed, "\(path)")
            #expect(l.a.resets == [.finHandshakeComplete], "\(path)")
            // Nothing delivered twice, whatever was resent.
            #expect(l.b.deliveredText.filter { $0.hasPrefix("MSG") } == ["MSG #0 seq 0"], "\(path)")
            #expect(l.a.deliveredText.filter { $0.hasPrefix("RCOM LOOKUP") } == ["RCOM LOOKUP seq 0"], "\(path)")
            switch l.b.peer.finState {
            case .closed:
                #expect(l.b.resets == [.finHandshakeComplete], "\(path)")
            case .lastAck:
                // A's last ACK was lost with its connection after A had finished (as with the kernel).
                // The next session start resets B.
                l.on(.b, .memberAdded)
                #expect(l.b.resets.last == .stuckTermination, "\(path)")
                #expect(l.b.peer.finState == .established)
            case .established, .finWait1, .finWait2, .closeWait, .closing:
                Issue.record("B ended in \(l.b.peer.finState): \(path)")
            }
        }
        #expect(leaves > 1000)
        #expect(outcomes[Outcome(a: .closed, b: .closed), default: 0] > 0)
        #expect(outcomes[Outcome(a: .closed, b: .lastAck), default: 0] > 0)
        print("FIN walk with bounces: \(leaves) interleavings, outcomes \(outcomes)")
    }
}
