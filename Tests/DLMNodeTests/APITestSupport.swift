// Helpers for the lock API tests: N real PeerNodes on loopback (127.0.0.1, .2, .3), each on its
// own event loop, on a port no other test of this run uses.

import DLMNode
import DLMTransport
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

enum APITest {
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 3)
    /// 22000–29999: below Linux's ephemeral range (32768–60999), where outgoing connections of
    /// other tests could hold the port; the lowcomms tests use 30000–40000.
    private static let nextPort = NIOLockedValueBox(22000 + Int(getpid() % 390) * 20)

    static func port() -> Int {
        nextPort.withLockedValue { p in
            p += 1
            if p >= 30000 { p = 22000 }
            return p
        }
    }

    static func configText(nodes: Int, port: Int, lockspace: String = "alpha", lvbLength: Int = 32) -> String {
        var text = """
            [cluster]
            name = "apitest"
            port = \(port)

            """
        for n in 1...nodes {
            text += """
                [[node]]
                id = \(n)
                addresses = ["127.0.0.\(n)"]
                kind = "peer"

                """
        }
        text += """
            [[lockspace]]
            name = "\(lockspace)"
            members = [\((1...nodes).map(String.init).joined(separator: ", "))]
            lvb_length = \(lvbLength)

            """
        return text
    }

    static var logger: Logger {
        var l = Logger(label: "dlm.apitest")
        l.logLevel = ProcessInfo.processInfo.environment["DLM_TEST_LOG"] == nil ? .critical : .debug
        return l
    }
}

/// N joined nodes; `stop()` leaves with all of them.
struct TestCluster {
    let nodes: [PeerNode]
    let config: ClusterConfig

    static func start(nodes count: Int, lvbLength: Int = 32) async throws -> TestCluster {
        let config = try ClusterConfig.parse(APITest.configText(nodes: count, port: APITest.port(), lvbLength: lvbLength))
        var nodes: [PeerNode] = []
        for n in 1...count {
            let loop = APITest.group.next()
            let node = try await loop.submit {
                try PeerNode(config: config, nodeID: UInt32(n), eventLoop: loop, logger: APITest.logger)
            }.get()
            nodes.append(node)
        }
        let joins = nodes.map { node in node.eventLoop.flatSubmit { node.start() } }
        let cluster = TestCluster(nodes: nodes, config: config)
        do {
            for j in joins {
                _ = try await withTimeout(seconds: 20) { try await j.get() }
            }
        } catch {
            await cluster.stop()
            throw error
        }
        return cluster
    }

    subscript(_ id: Int) -> PeerNode { nodes[id - 1] }

    func ls(_ id: Int, _ name: String = "alpha") -> DLMLockspace { nodes[id - 1].lockspace(name) }

    /// All nodes leave at once (one at a time, each FIN handshake would wait for its peer's leave).
    func stop() async {
        let leaves = nodes.map { $0.leave() }
        for l in leaves {
            _ = try? await withTimeout(seconds: 10) { try await l.get() }
        }
    }
}

struct TimeoutError: Error, CustomStringConvertible {
    var seconds: Double
    var description: String { "timed out after \(seconds) s" }
}

/// Runs `body`, failing with `TimeoutError` after `seconds` (then `body`'s task is cancelled and
/// left behind: an await on an EventLoopFuture does not end on cancellation).
func withTimeout<T: Sendable>(seconds: Double, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let done = NIOLockedValueBox(false)
    let work = NIOLockedValueBox<Task<Void, Never>?>(nil)
    return try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, Error>) in
        func finish(_ result: Result<T, Error>) {
            let first = done.withLockedValue { d -> Bool in defer { d = true }; return !d }
            if first { cont.resume(with: result) }
        }
        work.withLockedValue { $0 = Task {
            do { finish(.success(try await body())) } catch { finish(.failure(error)) }
        } }
        Task {
            try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
            if !done.withLockedValue({ $0 }) {
                work.withLockedValue { $0?.cancel() }
                finish(.failure(TimeoutError(seconds: seconds)))
            }
        }
    }
}

/// Polls `condition` every 10 ms until it holds (or `seconds` pass).
func eventually(seconds: Double = 5, _ condition: @escaping @Sendable () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(nanoseconds: 10_000_000)
    }
    return try await condition()
}

/// Expects `body` to throw a `DLMError` with `code`.
func expectDLMError<T>(_ code: DLMError.Code, sourceLocation: SourceLocation = #_sourceLocation,
                       _ body: () async throws -> T) async {
    do {
        _ = try await body()
        Issue.record("expected \(code), nothing thrown", sourceLocation: sourceLocation)
    } catch let e as DLMError {
        #expect(e.code == code, "\(e)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

func bytes(_ s: String, padTo n: Int = 32) -> [UInt8] {
    let b = Array(s.utf8)
    return b + [UInt8](repeating: 0, count: max(0, n - b.count))
}
