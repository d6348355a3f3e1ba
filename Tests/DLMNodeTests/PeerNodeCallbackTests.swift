// Lock calls made from inside completion callbacks: `PeerNode.lock`/`unlock` called on the event
// loop run at once (no task hop), with a bound on how deep callbacks may nest.

@testable import DLMNode
import DLMTransport
import NIOConcurrencyHelpers
import NIOCore
import Testing

@Suite("PeerNode lock calls from completion callbacks")
struct PeerNodeCallbackTests {
    /// Chains `cycles` lock + unlock pairs on `name` from node `from`, each call made inside the
    /// previous call's completion callback; returns the pairs done and the deepest callback
    /// nesting seen.
    final class Chain: @unchecked Sendable {  // confined to the node's event loop
        let node: PeerNode
        let name: String
        let cycles: Int
        let done: EventLoopPromise<Void>
        var pairs = 0
        var deepest = 0

        init(node: PeerNode, name: String, cycles: Int) {
            self.node = node
            self.name = name
            self.cycles = cycles
            done = node.eventLoop.makePromise()
        }

        func start() -> EventLoopFuture<Void> {
            node.eventLoop.execute { self.next() }
            return done.futureResult
        }

        private func next() {
            node.lock(lockspace: "alpha", name: name, mode: .ex, onCompletion: { c in self.completed(c) })
                .whenFailure { self.done.fail($0) }
        }

        private func completed(_ c: LockManager.Completion) {
            deepest = max(deepest, node.callbackDepth)
            guard c.endOfLife else {
                guard c.status == .granted else {
                    done.fail(PeerNodeError("lock \(name): \(c.status)"))
                    return
                }
                node.unlock(lockspace: "alpha", lkid: c.lkid).whenFailure { self.done.fail($0) }
                return
            }
            pairs += 1
            if pairs == cycles { done.succeed(()) } else { next() }
        }
    }

    @Test("a local master grants at once: 20,000 pairs chained from callbacks nest at most a few levels")
    func localChain() async throws {
        try await withCluster(nodes: 1) { c in
            let chain = Chain(node: c[1], name: "chain-local", cycles: 20_000)
            try await withTimeout(seconds: 60) { try await chain.start().get() }
            let (pairs, deepest) = try await c[1].eventLoop.submit { (chain.pairs, chain.deepest) }.get()
            #expect(pairs == 20_000)
            #expect(deepest >= 1 && deepest <= PeerNode.inlineCallbackDepth)
            #expect(try await resource(c, 1, "chain-local") == nil)
        }
    }

    @Test("a remote master: 2,000 pairs chained from callbacks, both nodes' dumps empty after")
    func remoteChain() async throws {
        try await withCluster(nodes: 2) { c in
            // Node 2 takes the name first (and holds NL), so it masters it; node 1's calls go remote.
            let first = try await c.ls(2).lock("chain-remote", mode: .nl)
            let chain = Chain(node: c[1], name: "chain-remote", cycles: 2_000)
            try await withTimeout(seconds: 60) { try await chain.start().get() }
            #expect(try await c[1].eventLoop.submit { chain.pairs }.get() == 2_000)
            let master = try #require(try await resource(c, 2, "chain-remote"))
            #expect(master.master == 2 && master.granted.map(\.lkid) == [first.lkid])
            _ = try await c.ls(2).unlock(first)
            #expect(try await resource(c, 1, "chain-remote") == nil)
        }
    }
}
