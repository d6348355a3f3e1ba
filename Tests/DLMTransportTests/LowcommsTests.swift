// Lowcomms over real loopback sockets: node 1 on 127.0.0.1, node 2 on 127.0.0.2 (and a raw
// "node 3" on 127.0.0.3), each test on its own port in 30000–40000.

import DLMTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

@Suite("Lowcomms over loopback", .serialized)
struct LowcommsTests {
    static func pair(port: Int, emulate31For2: Bool = false) throws -> (TestNode, TestNode) {
        let n1 = try TestNode(1, "127.0.0.1", port: port, peers: [(2, "127.0.0.2")])
        let n2 = try TestNode(2, "127.0.0.2", port: port, peers: [(1, "127.0.0.1")], emulate31: emulate31For2)
        return (n1, n2)
    }

    @Test("basic exchange both ways, session start with RCOM_STATUS, versions detected, FIN on shutdown")
    func basicExchange() async throws {
        let port = LC.port()
        let (n1, n2) = try Self.pair(port: port)
        try await n1.start()
        try await n2.start()

        // Session start: node 1 sends RCOM_STATUS, node 2 answers STATUS_REPLY.
        n1.lowcomms.send(.rcom(LC.status(from: 1)), to: 2)
        // Stateful messages sent before the version is known are held by midcomms until it is.
        n1.lowcomms.send((1...20).map { LC.request($0, from: 1) }, to: 2)
        try await LC.waitUntil(5, "node 2 gets 20 messages") { n2.messages(from: 1).count == 20 }
        n2.lowcomms.send((1...20).map { LC.request($0, from: 2) }, to: 1)
        try await LC.waitUntil(5, "node 1 gets 20 messages") { n1.messages(from: 2).count == 20 }

        #expect(n2.messages(from: 1) == Array(1...20))
        #expect(n1.messages(from: 2) == Array(1...20))
        #expect(n2.rcoms(from: 1).first?.rcomType == .status)
        #expect(n1.rcoms(from: 2).first?.rcomType == .statusReply)
        // Sequenced (3.2): DLM_MSGs carry a midcomms seq.
        #expect(n2.deliveries.compactMap { $0.1.seq }.count == 20)

        let c1 = try await n1.counters(2)
        let c2 = try await n2.counters(1)
        #expect(c1.midcomms.version == .v3_2)
        #expect(c2.midcomms.version == .v3_2)
        #expect(c1.midcomms.finState == .established)
        #expect(c1.transmitConnection != nil && c2.transmitConnection != nil)
        #expect(c1.bytesOut > 0 && c2.bytesIn == c1.bytesOut)
        #expect(n1.events.contains(.versionDetected(node: 2, .v3_2)))
        #expect(n2.events.contains(.versionDetected(node: 1, .v3_2)))

        // Clean shutdown of node 1: DLM_FIN handshake, then TCP close.
        try await n1.lowcomms.shutdown().get()
        #expect(n1.events.contains(.closed(node: 2, graceful: true)))
        try await LC.waitUntil(5, "node 2 back to CLOSED") {
            try await n2.counters(1).midcomms.finState == .closed
        }
        let after = try await n2.counters(1)
        #expect(after.midcomms.resets == 1)
        #expect(n1.log.contains("lowcomms stopped"))
        await n2.stop()
    }

    @Test("a node emulating 3.1 talks bare messages with h_version 0x00030001")
    func emulated31() async throws {
        let (n1, n2) = try Self.pair(port: LC.port(), emulate31For2: true)
        try await n1.start()
        try await n2.start()
        n2.lowcomms.send(.rcom(LC.status(from: 2)), to: 1)
        n2.lowcomms.send((1...5).map { LC.request($0, from: 2) }, to: 1)
        try await LC.waitUntil(5, "node 1 gets 5 messages") { n1.messages(from: 2).count == 5 }
        n1.lowcomms.send((1...5).map { LC.request($0, from: 1) }, to: 2)
        try await LC.waitUntil(5, "node 2 gets 5 messages") { n2.messages(from: 1).count == 5 }
        #expect(try await n1.counters(2).midcomms.version == .v3_1)
        #expect(n1.deliveries.allSatisfy { $0.1.seq == nil })
        #expect(n2.deliveries.allSatisfy { $0.1.seq == nil })
        await n1.stop()
        await n2.stop()
    }

    @Test("kill: connections aborted with RST, reconnect, unacknowledged messages resent, nothing lost")
    func killOnce() async throws {
        let (n1, n2) = try Self.pair(port: LC.port())
        try await n1.start()
        try await n2.start()
        n1.lowcomms.send(.rcom(LC.status(from: 1)), to: 2)
        // Withhold node 2's ACKs so that node 1 still holds everything when the connection dies.
        n2.lowcomms.setFaults(FaultInjection(withholdAcks: true), for: 1)
        n1.lowcomms.send((1...100).map { LC.request($0, from: 1) }, to: 2)
        try await LC.waitUntil(5, "100 delivered") { n2.messages(from: 1).count == 100 }
        #expect(try await n1.counters(2).midcomms.unackedCount == 100)

        n1.lowcomms.killConnections(to: 2)
        n2.lowcomms.setFaults(.none, for: 1)
        n1.lowcomms.send((101...110).map { LC.request($0, from: 1) }, to: 2)
        try await LC.waitUntil(5, "110 delivered") { n2.messages(from: 1).count == 110 }
        n2.lowcomms.flushAck(1)
        try await LC.waitUntil(5, "queue drained") { try await n1.counters(2).midcomms.unackedCount == 0 }

        let c1 = try await n1.counters(2)
        let c2 = try await n2.counters(1)
        #expect(n2.messages(from: 1) == Array(1...110))
        #expect(c1.kills == 1 && c1.connectionsKilled >= 1)
        #expect(c1.midcomms.retransmits >= 100)
        #expect(c2.midcomms.drops(.duplicate) >= 100)
        // The peer saw a socket error (RST), not a clean EOF.
        #expect(c2.connectionsLostError >= 1)
        #expect(c1.reconnects >= 1)
        await n1.stop()
        await n2.stop()
    }

    @Test("both sides connect at once: each transmits on one connection, reads from all")
    func simultaneousConnect() async throws {
        let (n1, n2) = try Self.pair(port: LC.port())
        try await n1.start()
        try await n2.start()
        // Member add on both sides at the same moment: both connect.
        n1.lowcomms.memberAdded(2)
        n2.lowcomms.memberAdded(1)
        n1.lowcomms.send(.rcom(LC.status(from: 1)), to: 2)
        n2.lowcomms.send(.rcom(LC.status(from: 2)), to: 1)
        n1.lowcomms.send((1...50).map { LC.request($0, from: 1) }, to: 2)
        n2.lowcomms.send((1...50).map { LC.request($0, from: 2) }, to: 1)
        try await LC.waitUntil(5, "both get 50") {
            n1.messages(from: 2).count == 50 && n2.messages(from: 1).count == 50
        }
        #expect(n1.messages(from: 2) == Array(1...50))
        #expect(n2.messages(from: 1) == Array(1...50))
        let c1 = try await n1.counters(2)
        let c2 = try await n2.counters(1)
        // Either two one-way connections (both connected before accepting) or one carrying both ways.
        #expect(c1.transmitConnection != nil && c2.transmitConnection != nil)
        #expect(c1.connectionsOpen >= 1 && c1.connectionsOpen <= 2)
        let transmits = n1.events.filter { if case .transmitConnection = $0 { return true } else { return false } }
        #expect(transmits.count == 1, "exactly one transmit connection on node 1: \(transmits)")
        print("simultaneous connect: node1 open \(c1.connectionsOpen) (transmit ours: \(c1.transmitIsOutgoing)), node2 open \(c2.connectionsOpen) (transmit ours: \(c2.transmitIsOutgoing))")
        await n1.stop()
        await n2.stop()
    }

    @Test("peer not listening yet: connection refused, retried with backoff, then delivered")
    func refusedThenListening() async throws {
        let (n1, n2) = try Self.pair(port: LC.port())
        try await n1.start()
        n1.lowcomms.send(.rcom(LC.status(from: 1)), to: 2)
        n1.lowcomms.send((1...3).map { LC.request($0, from: 1) }, to: 2)
        try await LC.waitUntil(5, "a refusal") { try await n1.counters(2).connectsRefused >= 2 }
        try await Task.sleep(nanoseconds: 200_000_000)
        try await n2.start()
        try await LC.waitUntil(5, "delivered after the peer listens") { n2.messages(from: 1).count == 3 }
        let c1 = try await n1.counters(2)
        #expect(n2.messages(from: 1) == [1, 2, 3])
        #expect(c1.connectsSucceeded == 1)
        #expect(c1.connectsRefused >= 2)
        // Backoff: 50, 100, 200… ms, so a handful of attempts, not hundreds.
        #expect(c1.connectAttempts < 12)
        await n1.stop()
        await n2.stop()
    }

    @Test("stress: messages both ways while the connections are killed every 50 ms")
    func killEvery50ms() async throws {
        let n = Int(ProcessInfo.processInfo.environment["LOWCOMMS_STRESS_MESSAGES"] ?? "") ?? 50_000
        let report = try await LowcommsStress.run(
            .init(messages: n, bothWays: true, killEvery: .milliseconds(50), port: LC.port(), window: 512),
            group: LC.group)
        print("lowcomms kill stress:\n\(report.summary)")
        #expect(report.completed)
        #expect(report.atNode1.delivered == n && report.atNode2.delivered == n)
        #expect(report.lost == 0)
        #expect(report.duplicatesDelivered == 0)
        #expect(report.atNode1.gaps == 0 && report.atNode2.gaps == 0)
        #expect(report.node1.midcomms.unackedCount == 0 && report.node2.midcomms.unackedCount == 0)
        #expect(report.kills > 0)
    }
}

