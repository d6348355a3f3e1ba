import DLMNode
import DLMTransport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// The Swift lock API (`DLMLockspace`) through a lockspace stop/start: calls made while locking is
/// stopped wait for the recovery (as `dlm_lock` blocks), API locks survive it, and leaving fails
/// whatever still waits.
@Suite("Lock API through stop/start", .serialized, .timeLimit(.minutes(1)))
struct LockAPIRecoveryTests {
    @Test("API calls made while stopped wait for the recovery; API locks survive; the waiter behind a departed EX is granted")
    func callsWaitWhileStopped() async throws {
        let c = try await TestCluster.start(nodes: 3)
        do {
            try await stoppedScenario(c)
        } catch {
            await c.stop()
            throw error
        }
    }

    func stoppedScenario(_ c: TestCluster) async throws {
        // Node 3 holds an EX that node 1 waits for; node 2 holds a PR, node 1 a PW.
        let dead = try await c.ls(3).lock("api-rec-dead", mode: .ex)
        let waiter = try await c.ls(1).request("api-rec-dead", mode: .ex)
        let kept = try await c.ls(2).lock("api-rec-kept", mode: .pr)
        let mine = try await c.ls(1).lock("api-rec-mine", mode: .pw)
        try await Task.sleep(for: .milliseconds(200))
        #expect(waiter.mode == .iv && dead.mode == .ex)

        // Node 3 leaves; its agent stops the survivors, then starts them with the new member list.
        _ = try await withTimeout(seconds: 10) { try await c[3].leave().get() }
        for n in [1, 2] { try await c[n].stop(lockspace: "alpha") }

        let done = NIOLockedValueBox(0)
        let late = Task {
            let l = try await c.ls(1).lock("api-rec-late", mode: .cr)
            done.withLockedValue { $0 += 1 }
            return l
        }
        let converted = Task {
            try await c.ls(2).convert(kept, to: .nl)
            done.withLockedValue { $0 += 1 }
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(done.withLockedValue { $0 } == 0, "API calls ran while the lockspace was stopped")
        // Reading the locks does not wait.
        let dump = try await withTimeout(seconds: 5) { try await c.ls(1).dump() }
        #expect(dump.resources.contains { $0.name == "api-rec-mine" })
        #expect(kept.mode == .pr)

        for n in [1, 2] { try await c[n].start(lockspace: "alpha", members: [(1, 1), (2, 1)]) }
        for n in [1, 2] {
            let r = try await withTimeout(seconds: 20) { try await c[n].waitForRecovery(lockspace: "alpha") }
            #expect(r.members == [1, 2] && r.departed == [3])
        }
        let lateLock = try await withTimeout(seconds: 10) { try await late.value }
        try await withTimeout(seconds: 10) { try await converted.value }
        #expect(lateLock.mode == .cr)
        #expect(kept.mode == .nl)
        // Node 3's EX was purged with node 3: the waiting request is granted.
        try await withTimeout(seconds: 10) { try await waiter.wait() }
        #expect(waiter.mode == .ex)
        #expect(mine.mode == .pw && !mine.isReleased)
        // The survivors' locks still conflict as before: node 2 cannot get an EX on node 1's PW.
        await expectDLMError(.eagain) { try await c.ls(2).lock("api-rec-mine", mode: .ex, flags: .noQueue) }

        for (n, l) in [(1, waiter), (1, lateLock), (1, mine), (2, kept)] { try await c.ls(n).unlock(l) }
        let leaves = [c[1].leave(), c[2].leave()]
        for l in leaves { _ = try await withTimeout(seconds: 10) { try await l.get() } }
    }

    @Test("leaving a stopped lockspace fails the calls waiting for it (ESHUTDOWN for the API)")
    func leaveWhileStopped() async throws {
        let c = try await TestCluster.start(nodes: 2)
        let held = try await c.ls(1).lock("api-rec-held", mode: .pr)
        try await c[1].stop(lockspace: "alpha")
        let apiCall = Task { try await c.ls(1).lock("api-rec-leave", mode: .ex) }
        let nodeCall = c[1].lock(lockspace: "alpha", name: "api-rec-leave", mode: .ex, onCompletion: { _ in })
        let recovery = Task { try await c[1].waitForRecovery(lockspace: "alpha") }
        try await Task.sleep(for: .milliseconds(200))
        await c.stop()
        await expectDLMError(.eshutdown) { try await withTimeout(seconds: 5) { try await apiCall.value } }
        do {
            _ = try await withTimeout(seconds: 5) { try await nodeCall.get() }
            Issue.record("PeerNode.lock on a lockspace left while stopped succeeded")
        } catch {
            #expect(error is PeerNodeError, "\(error)")
        }
        do {
            _ = try await withTimeout(seconds: 5) { try await recovery.value }
            Issue.record("waitForRecovery on a lockspace left while stopped succeeded")
        } catch {
            #expect(error is PeerNodeError, "\(error)")
        }
        #expect(held.isReleased)
    }
}
