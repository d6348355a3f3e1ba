// The Swift lock API (DLMLockspace) with 2–3 real PeerNodes on loopback.

@testable import DLMNode
import DLMTransport
import Foundation
import NIOConcurrencyHelpers
import Testing

func withCluster(nodes: Int, lvbLength: Int = 32, _ body: (TestCluster) async throws -> Void) async throws {
    let c = try await TestCluster.start(nodes: nodes, lvbLength: lvbLength)
    do {
        try await body(c)
    } catch {
        await c.stop()
        throw error
    }
    await c.stop()
}

/// A resource's dump entry on `node`.
func resource(_ c: TestCluster, _ node: Int, _ name: String) async throws -> LockDump.Resource? {
    try await c.ls(node).dump().resources.first { $0.name == name }
}

@Suite("Lock API on PeerNodes over loopback", .serialized, .timeLimit(.minutes(1)))
struct LockAPITests {
    @Test("lock and unlock on a local master; the dump shows it; the handle follows")
    func localMaster() async throws {
        try await withCluster(nodes: 2) { c in
            let ls = c.ls(1)
            let lock = try await ls.lock("api-local", mode: .ex)
            #expect(lock.mode == .ex && lock.lkid != 0 && !lock.isReleased)
            #expect(lock.status.requestedMode == nil && lock.status.lastResult == .granted)
            let r = try #require(try await resource(c, 1, "api-local"))
            #expect(r.resNodeid == 0 && r.master == 1)
            #expect(r.granted.map(\.lkid) == [lock.lkid] && r.granted.first?.grmode == "EX")
            #expect(r.granted.first?.owner == "api")
            #expect(try await ls.lock(id: lock.lkid) === lock)
            let lvb = try await ls.unlock(lock)
            #expect(lvb == nil)  // no VALBLK: no buffer
            #expect(lock.isReleased && lock.mode == .iv)
            #expect(try await resource(c, 1, "api-local") == nil)
            #expect(try await ls.lock(id: lock.lkid) == nil)
            await expectDLMError(.enoent) { try await ls.unlock(lock) }
        }
    }

    @Test("a remote master: the second node's lock is a process copy, the master holds a master copy")
    func remoteMaster() async throws {
        try await withCluster(nodes: 3) { c in
            let a = try await c.ls(1).lock("api-remote", mode: .pr)
            let b = try await c.ls(2).lock("api-remote", mode: .pr)
            let c3 = try await c.ls(3).lock("api-remote", mode: .cr)
            #expect(a.mode == .pr && b.mode == .pr && c3.mode == .cr)
            let onMaster = try #require(try await resource(c, 1, "api-remote"))
            #expect(onMaster.resNodeid == 0)
            #expect(Set(onMaster.granted.map(\.nodeid)) == [0, 2, 3])
            let remote = try #require(onMaster.granted.first { $0.nodeid == 2 })
            #expect(remote.masterCopy && remote.remid == b.lkid && remote.owner == nil)
            let onTwo = try #require(try await resource(c, 2, "api-remote"))
            #expect(onTwo.resNodeid == 1 && onTwo.master == 1)
            #expect(onTwo.granted.map(\.lkid) == [b.lkid] && onTwo.granted.first?.remid == remote.lkid)
            // The text layout of the kernel's debugfs file.
            let text = try await c.ls(1).dump().text
            #expect(text.contains("Name (len=10) \"api-remote\"\nMaster Copy\nGranted Queue\n"))
            #expect(text.contains(" PR Remote:   2 " + String(format: "%08x", b.lkid)))
            let text2 = try await c.ls(2).dump().text
            #expect(text2.contains("\"api-remote\"\nLocal Copy, Master is node 1\n"))
            #expect(text2.contains(String(format: "%08x", b.lkid) + " PR Master:     " + String(format: "%08x", remote.lkid)))
            // Unlocks from the remote nodes wait for the master's reply.
            try await c.ls(2).unlock(b)
            try await c.ls(3).unlock(c3)
            try await c.ls(1).unlock(a)
            #expect(b.isReleased && c3.isReleased && a.isReleased)
            let after = try await resource(c, 1, "api-remote")
            #expect(after == nil)
        }
    }

    @Test("conversions up and down, on a remote and on a local master")
    func conversions() async throws {
        try await withCluster(nodes: 2) { c in
            let master = try await c.ls(1).lock("api-conv", mode: .nl)
            let lock = try await c.ls(2).lock("api-conv", mode: .nl)
            try await c.ls(2).convert(lock, to: .ex)
            #expect(lock.mode == .ex)
            try await c.ls(2).convert(lock, to: .pr)  // down: completes locally
            #expect(lock.mode == .pr)
            try await c.ls(1).convert(master, to: .pr)
            #expect(master.mode == .pr)
            // PR + PR: an up-conversion to EX on the remote node waits for the master's lock.
            try await c.ls(2).requestConversion(lock, to: .ex)
            #expect(lock.status.requestedMode == .ex && lock.mode == .pr)
            #expect(try await eventually { try await resource(c, 1, "api-conv")?.converting.count == 1 })
            // A second conversion while this one waits: EBUSY (an unlock would be accepted, as in the
            // kernel: it releases the converting lock).
            await expectDLMError(.ebusy) { try await c.ls(2).convert(lock, to: .cw) }
            try await c.ls(1).convert(master, to: .nl)
            try await withTimeout(seconds: 5) { try await lock.wait() }
            #expect(lock.mode == .ex && lock.status.requestedMode == nil)
            try await c.ls(2).unlock(lock)
            try await c.ls(1).unlock(master)
        }
    }

    @Test("NOQUEUE: EAGAIN on a local and on a remote master; a refused new lock is released")
    func noQueue() async throws {
        try await withCluster(nodes: 2) { c in
            let holder = try await c.ls(1).lock("api-nq", mode: .ex)
            for node in [1, 2] {
                do {
                    _ = try await c.ls(node).lock("api-nq", mode: .pr, flags: .noQueue)
                    Issue.record("node \(node): NOQUEUE granted")
                } catch let e as DLMError {
                    #expect(e.code == .eagain && e.errno == -11)
                }
            }
            // request() returns the handle; wait() reports EAGAIN, the lock is gone.
            let refused = try await c.ls(2).request("api-nq", mode: .cw, flags: .noQueue)
            await expectDLMError(.eagain) { try await refused.wait() }
            #expect(refused.isReleased && refused.status.lastResult == .wouldBlock)
            // A NOQUEUE up-conversion that cannot be granted keeps the old mode.
            let nl = try await c.ls(2).lock("api-nq", mode: .nl)
            await expectDLMError(.eagain) { try await c.ls(2).convert(nl, to: .pr, flags: .noQueue) }
            #expect(nl.mode == .nl && !nl.isReleased)
            try await c.ls(2).unlock(nl)
            try await c.ls(1).unlock(holder)
            // Free now: NOQUEUE is granted.
            let ok = try await c.ls(2).lock("api-nq", mode: .ex, flags: .noQueue)
            try await c.ls(2).unlock(ok)
        }
    }

    @Test("BAST to the holder (stream and closure), then GRANT to the waiter when it gives way")
    func bastThenGrant() async throws {
        try await withCluster(nodes: 3) { c in
            let seen = NIOLockedValueBox<[LockMode]>([])
            let streamed = NIOLockedValueBox<[LockMode]>([])
            let holder = try await c.ls(1).lock("api-bast", mode: .ex, onBlocking: { m in seen.withLockedValue { $0.append(m) } })
            let consumer = Task {
                for await m in holder.blockingCallbacks { streamed.withLockedValue { $0.append(m) } }
                return true
            }
            let waiter = try await c.ls(3).request("api-bast", mode: .pr)
            #expect(waiter.status.requestedMode == .pr && waiter.mode == .iv)
            #expect(try await eventually { seen.withLockedValue { $0 } == [.pr] && streamed.withLockedValue { $0 } == [.pr] })
            #expect(holder.status.blockedMode == .pr)
            let q = try #require(try await resource(c, 1, "api-bast"))
            #expect(q.waiting.count == 1 && q.waiting.first?.nodeid == 3 && q.waiting.first?.rqmode == "PR")
            #expect(waiter.mode == .iv)
            // The holder gives way: down-convert to NL; the waiter is granted.
            try await c.ls(1).convert(holder, to: .nl)
            try await withTimeout(seconds: 5) { try await waiter.wait() }
            #expect(waiter.mode == .pr)
            try await c.ls(3).unlock(waiter)
            try await c.ls(1).unlock(holder)
            // The stream finishes at the end of the lock's life; one BAST in all.
            #expect(try await withTimeout(seconds: 5) { await consumer.value })
            #expect(streamed.withLockedValue { $0 } == [.pr])
        }
    }

    @Test("cancel: a waiting request on a remote and on a local master ends with DLM_ECANCEL")
    func cancelWaiting() async throws {
        try await withCluster(nodes: 2) { c in
            let holder = try await c.ls(1).lock("api-cancel", mode: .ex)
            for node in [2, 1] {
                let waiting = try await c.ls(node).request("api-cancel", mode: .ex)
                #expect(waiting.status.requestedMode == .ex)
                #expect(try await eventually { try await resource(c, 1, "api-cancel")?.waiting.count == 1 })
                let cancelled = try await c.ls(node).cancel(waiting)
                #expect(cancelled)
                do {
                    try await waiting.wait()
                    Issue.record("node \(node): cancelled request granted")
                } catch let e as DLMError {
                    #expect(e.code == .ecancel && e.errno == -65537)
                }
                #expect(waiting.isReleased && waiting.status.lastResult == .cancelled)
                #expect(try await resource(c, 1, "api-cancel")?.waiting.isEmpty == true)
            }
            // Nothing to cancel on a granted lock.
            #expect(try await c.ls(1).cancel(holder) == false)
            #expect(holder.mode == .ex)
            // A waiting conversion is cancelled back to its granted mode.
            let other = try await c.ls(2).lock("api-cancel", mode: .nl)
            try await c.ls(2).requestConversion(other, to: .ex)
            #expect(try await eventually { try await resource(c, 1, "api-cancel")?.converting.count == 1 })
            #expect(try await c.ls(2).cancel(other))
            await expectDLMError(.ecancel) { try await other.wait() }
            #expect(other.mode == .nl && !other.isReleased)
            try await c.ls(2).unlock(other)
            try await c.ls(1).unlock(holder)
        }
    }

    @Test("cancelling the awaiting task cancels the request")
    func taskCancellation() async throws {
        try await withCluster(nodes: 2) { c in
            let holder = try await c.ls(1).lock("api-task", mode: .ex)
            let ls2 = c.ls(2)
            let task = Task { try await ls2.lock("api-task", mode: .ex) }
            #expect(try await eventually { try await resource(c, 1, "api-task")?.waiting.count == 1 })
            task.cancel()
            let result = await task.result
            switch result {
            case .success: Issue.record("granted despite the cancel")
            case .failure(let e): #expect((e as? DLMError)?.code == .ecancel)
            }
            #expect(try await eventually { try await resource(c, 1, "api-task")?.waiting.isEmpty == true })
            try await c.ls(1).unlock(holder)
        }
    }

    @Test("LVB: written by unlock and by a down-conversion from EX/PW, read by the next VALBLK lock elsewhere")
    func valueBlocks() async throws {
        try await withCluster(nodes: 3) { c in
            // An rsb without locks drops its value block (KQ: the kernel frees it when the rsb goes
            // inactive), so node 3 keeps an NL lock throughout, and masters the resource.
            let keeper = try await c.ls(3).lock("api-lvb", mode: .nl)
            let w = try await c.ls(1).lock("api-lvb", mode: .ex, flags: .valBlk)
            #expect(w.lvb == bytes(""))  // a zeroed buffer, nothing written yet
            let written = try await c.ls(1).unlock(w, flags: .valBlk, lvb: Array("hello".utf8))
            #expect(written == bytes("hello"))
            // Node 2 masters nothing here; its PR VALBLK grant reads the resource's value.
            let r = try await c.ls(2).lock("api-lvb", mode: .pr, flags: .valBlk)
            #expect(r.lvb == bytes("hello") && !r.valueNotValid)
            try await c.ls(2).unlock(r)
            // A down-conversion from PW writes; node 3 reads it.
            let pw = try await c.ls(2).lock("api-lvb", mode: .pw, flags: .valBlk)
            #expect(pw.lvb == bytes("hello"))
            try await c.ls(2).convert(pw, to: .nl, flags: .valBlk, lvb: Array("v2".utf8))
            #expect(pw.mode == .nl)
            // The down-conversion completed at once on node 2; the master applies it (and the
            // value) when the CONVERT arrives (locking.md §6.3), so a read races with it until then.
            #expect(try await eventually {
                try await resource(c, 3, "api-lvb")?.lvb == LockDumpHex.hex(bytes("v2"))
            })
            let reader = try await c.ls(3).lock("api-lvb", mode: .cr, flags: .valBlk)
            #expect(reader.lvb == bytes("v2"))
            // The master's dump shows the value.
            let m = try #require(try await resource(c, 3, "api-lvb"))
            #expect(m.resNodeid == 0 && m.lvb == LockDumpHex.hex(bytes("v2")) && m.lvbSeq > 0)
            let text = try await c.ls(3).dump().text
            #expect(text.contains("LVB: 76 32 00"))
            // Without VALBLK a lock sees nothing.
            let plain = try await c.ls(1).lock("api-lvb", mode: .nl)
            #expect(plain.lvb == nil)
            for (n, l) in [(1, plain), (3, reader), (2, pw), (3, keeper)] { try await c.ls(n).unlock(l) }
        }
    }

    @Test("conversion deadlock: EDEADLK keeps the old mode; CONVDEADLK demotes to NL (DEMOTED)")
    func conversionDeadlock() async throws {
        try await withCluster(nodes: 2) { c in
            let a = try await c.ls(1).lock("api-dl", mode: .pr)
            let b = try await c.ls(2).lock("api-dl", mode: .pr)
            try await c.ls(1).requestConversion(a, to: .ex)
            #expect(try await eventually { try await resource(c, 1, "api-dl")?.converting.count == 1 })
            await expectDLMError(.edeadlk) { try await c.ls(2).convert(b, to: .ex) }
            #expect(b.mode == .pr && !b.isReleased && b.status.lastResult == .deadlock)
            // Again with CONVDEADLK: b's PR is demoted to NL, which lets a's EX through.
            try await c.ls(2).requestConversion(b, to: .ex, flags: .convDeadlk)
            try await withTimeout(seconds: 5) { try await a.wait() }
            #expect(a.mode == .ex)
            #expect(try await eventually { try await resource(c, 1, "api-dl")?.converting.first?.grmode == "NL" })
            try await c.ls(1).unlock(a)
            try await withTimeout(seconds: 5) { try await b.wait() }
            #expect(b.mode == .ex && b.demoted)
            try await c.ls(2).unlock(b)
        }
    }

    @Test("bad input: unknown lockspace, IV, long LVB and names, unknown and foreign lock ids")
    func badInput() async throws {
        try await withCluster(nodes: 2) { c in
            await expectDLMError(.einval) { try await c[1].lockspace("nope").lock("r", mode: .ex) }
            await expectDLMError(.einval) { try await c.ls(1).lock("r", mode: .iv) }
            await expectDLMError(.einval) { try await c.ls(1).lock("r", mode: .ex, lvb: [UInt8](repeating: 1, count: 33)) }
            await expectDLMError(.einval) { try await c.ls(1).lock(String(repeating: "x", count: 65), mode: .ex) }
            await expectDLMError(.einval) { try await c.ls(1).lock("", mode: .ex) }
            await expectDLMError(.einval) { try await c.ls(1).lock("r", mode: .ex, flags: [.convDeadlk, .noQueue]) }
            await expectDLMError(.einval) { try await c.ls(1).lock("r", mode: .ex, flags: .cancel) }
            // A master copy of node 2's lock is not ours to unlock.
            let mine = try await c.ls(1).lock("api-bad", mode: .nl)
            let theirs = try await c.ls(2).lock("api-bad", mode: .nl)
            let copy = try #require(try await resource(c, 1, "api-bad")?.granted.first { $0.nodeid == 2 })
            await expectDLMError(.einval) { try await c[1].apiUnlock(lockspace: "alpha", lkid: copy.lkid, flags: [], lvb: nil).get() }
            await expectDLMError(.enoent) { try await c[1].apiUnlock(lockspace: "alpha", lkid: 0x7777, flags: [], lvb: nil).get() }
            try await c.ls(2).unlock(theirs)
            try await c.ls(1).unlock(mine)
            // The node still works.
            let again = try await c.ls(1).lock("api-bad", mode: .ex, flags: .noQueue)
            try await c.ls(1).unlock(again)
        }
    }

    @Test("leaving fails waiting calls with ESHUTDOWN")
    func leaveFailsWaiters() async throws {
        let c = try await TestCluster.start(nodes: 2)
        let holder = try await c.ls(1).lock("api-leave", mode: .ex)
        let waiting = try await c.ls(2).request("api-leave", mode: .ex)
        // Node 2 fails its waiting calls as it starts to leave; both leave at once (the FIN
        // handshake of one would otherwise wait for the other).
        let leaving = c[2].leave()
        await expectDLMError(.eshutdown) { try await withTimeout(seconds: 5) { try await waiting.wait() } }
        #expect(waiting.isReleased && !holder.isReleased)
        let other = c[1].leave()
        _ = try await withTimeout(seconds: 10) { try await leaving.get() }
        _ = try await withTimeout(seconds: 10) { try await other.get() }
        #expect(holder.isReleased)
        await expectDLMError(.einval) { try await c.ls(1).lock("api-leave", mode: .nl) }
    }
}

enum LockDumpHex {
    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }
}

