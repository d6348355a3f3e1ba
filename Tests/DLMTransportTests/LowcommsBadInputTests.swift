// Bad input on a live socket. Node 1 (127.0.0.1) serves node 2 (127.0.0.2, a real lowcomms
// node) and node 3 (127.0.0.3, a raw socket that writes what the test wants). After each bad
// input, node 1 must still exchange messages with node 2.

import DLMTransport
import Foundation
import NIOCore
import NIOPosix
import Testing

@Suite("Lowcomms bad input on a live socket", .serialized)
struct LowcommsBadInputTests {
    struct Cluster {
        let port: Int
        let n1: TestNode
        let n2: TestNode
    }

    static func cluster(configure: (inout LowcommsConfig) -> Void = { _ in }) async throws -> Cluster {
        let port = LC.port()
        let n1 = try TestNode(1, "127.0.0.1", port: port, peers: [(2, "127.0.0.2"), (3, "127.0.0.3")], configure: configure)
        let n2 = try TestNode(2, "127.0.0.2", port: port, peers: [(1, "127.0.0.1")])
        try await n1.start()
        try await n2.start()
        n2.lowcomms.send(.rcom(LC.status(from: 2)), to: 1)
        try await LC.waitUntil(5, "session 1<->2") { n2.rcoms(from: 1).count == 1 }
        return Cluster(port: port, n1: n1, n2: n2)
    }

    /// Node 1 and node 2 still exchange messages (numbered from `first`).
    static func stillServes(_ c: Cluster, first: UInt32) async throws {
        let before1 = c.n1.messages(from: 2).count
        let before2 = c.n2.messages(from: 1).count
        c.n2.lowcomms.send((first..<first + 10).map { LC.request($0, from: 2) }, to: 1)
        c.n1.lowcomms.send((first..<first + 10).map { LC.request($0, from: 1) }, to: 2)
        try await LC.waitUntil(5, "node 1 <-> node 2 still working") {
            c.n1.messages(from: 2).count == before1 + 10 && c.n2.messages(from: 1).count == before2 + 10
        }
        #expect(Array(c.n1.messages(from: 2).suffix(10)) == Array(first..<first + 10))
        #expect(Array(c.n2.messages(from: 1).suffix(10)) == Array(first..<first + 10))
    }

    static func stop(_ c: Cluster) async {
        await c.n1.stop()
        await c.n2.stop()
    }

    @Test("garbage bytes: h_length below 16 → that connection is closed, logged, node 2 unaffected")
    func garbage() async throws {
        let c = try await Self.cluster()
        let raw = try await RawPeer(from: "127.0.0.3", to: "127.0.0.1", port: c.port)
        var junk = ByteBuffer()
        junk.writeBytes([0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x01, 0x00, 0x99, 0x98])
        try await raw.write(junk)
        #expect(await raw.closedByPeer(within: 5))
        try await LC.waitUntil(5, "framing error counted") { try await c.n1.counters(3).framingErrors == 1 }
        #expect(c.n1.log.contains("received invalid length header: 5 from node 3"))
        #expect(try await c.n1.counters(3).connectionsOpen == 0)
        try await Self.stillServes(c, first: 1)
        await raw.close()
        await Self.stop(c)
    }

    @Test("oversized h_length (5000 > 4096) → that connection is closed, logged, node 2 unaffected")
    func oversizedLength() async throws {
        let c = try await Self.cluster()
        let raw = try await RawPeer(from: "127.0.0.3", to: "127.0.0.1", port: c.port)
        // A valid RCOM_STATUS first (accepted), then a header claiming 5000 bytes.
        try await raw.write(.rcom(LC.status(from: 3)))
        try await LC.waitUntil(5, "status from node 3 delivered") { c.n1.rcoms(from: 3).count == 1 }
        var bad = ByteBuffer()
        DLMHeader(version: .v3_2, word: LC.lockspace, nodeID: 3, length: 5000, command: .message)
            .write(into: &bad, length: 5000)
        bad.writeRepeatingByte(0, count: 100)
        try await raw.write(bad)
        #expect(await raw.closedByPeer(within: 5))
        try await LC.waitUntil(5, "framing error counted") { try await c.n1.counters(3).framingErrors == 1 }
        #expect(c.n1.log.contains("received invalid length header: 5000 from node 3"))
        try await Self.stillServes(c, first: 1)
        await raw.close()
        await Self.stop(c)
    }

    @Test("a receive buffer over its bound closes that connection only")
    func receiveBufferBound() async throws {
        let c = try await Self.cluster { $0.receiveBufferLimit = 1024 }
        let raw = try await RawPeer(from: "127.0.0.3", to: "127.0.0.1", port: c.port)
        // A legal 3000-byte message of which only 2000 bytes arrive: more than 1024 held back.
        var partial = ByteBuffer()
        DLMHeader(version: .v3_2, word: LC.lockspace, nodeID: 3, length: 3000, command: .message)
            .write(into: &partial, length: 3000)
        partial.writeRepeatingByte(0, count: 1984)
        try await raw.write(partial)
        #expect(await raw.closedByPeer(within: 5))
        try await LC.waitUntil(5, "overflow counted") { try await c.n1.counters(3).receiveBufferOverflows == 1 }
        #expect(c.n1.log.contains("receive buffer of"))
        try await Self.stillServes(c, first: 1)
        await raw.close()
        await Self.stop(c)
    }

    @Test("unknown sender address (127.0.0.9) → closed with 'connect from non cluster node'")
    func unknownAddress() async throws {
        let c = try await Self.cluster()
        let raw = try await RawPeer(from: "127.0.0.9", to: "127.0.0.1", port: c.port)
        try? await raw.write(.rcom(LC.status(from: 9)))
        #expect(await raw.closedByPeer(within: 5))
        try await LC.waitUntil(5, "rejection counted") { try await c.n1.lowcomms.counters().get().rejectedUnknownAddress == 1 }
        #expect(c.n1.log.contains("connect from non cluster node 127.0.0.9"))
        #expect(c.n1.deliveries.allSatisfy { $0.0 != 9 })
        try await Self.stillServes(c, first: 1)
        await raw.close()
        await Self.stop(c)
    }

    @Test("wrong h_nodeid → message dropped and logged, connection kept; undecodable message dropped, connection kept")
    func wrongNodeID() async throws {
        let c = try await Self.cluster()
        let raw = try await RawPeer(from: "127.0.0.3", to: "127.0.0.1", port: c.port)
        // From 127.0.0.3 (node 3) but claiming to be node 7.
        try await raw.write(.rcom(LC.status(from: 7)))
        try await LC.waitUntil(5, "wrong nodeid drop") { try await c.n1.counters(3).midcomms.drops(.wrongNodeID) == 1 }
        #expect(c.n1.log.contains("invalid h_nodeid 7"))
        // A message that frames but does not decode (h_cmd 9): dropped, connection kept.
        var odd = ByteBuffer()
        DLMHeader(version: .v3_2, word: LC.lockspace, nodeID: 3, length: 48, command: 9).write(into: &odd, length: 48)
        odd.writeRepeatingByte(0, count: 32)
        try await raw.write(odd)
        try await LC.waitUntil(5, "malformed drop") { try await c.n1.counters(3).midcomms.totalDrops == 2 }
        // Still open, and a correct message on the same connection is delivered.
        try await Task.sleep(nanoseconds: 100_000_000)
        #expect(raw.channel.isActive)
        try await raw.write(.rcom(LC.status(from: 3)))
        try await LC.waitUntil(5, "status from node 3 delivered") { c.n1.rcoms(from: 3).count == 1 }
        #expect(c.n1.deliveries.allSatisfy { $0.0 != 7 })
        #expect(try await c.n1.counters(3).connectionsOpen == 1)
        // Node 1 answered node 3's STATUS with a STATUS_REPLY on that connection (the only one).
        try await LC.waitUntil(5, "reply to node 3") { raw.bytesReceived > 0 }
        try await Self.stillServes(c, first: 1)
        await raw.close()
        await Self.stop(c)
    }
}
