// Owner sessions, PERSISTENT/orphan locks and purge through the Swift API and the control socket,
// and the `hold` connection's conversions, with real PeerNodes on loopback.

@testable import DLMNode
import DLMTransport
import Foundation
import Testing

@Suite("Orphan locks and hold conversions", .serialized, .timeLimit(.minutes(1)))
struct OrphanAPITests {
    @Test("closeSession: PERSISTENT locks become orphans, others are force-unlocked; ORPHAN adopts, purge releases")
    func apiSession() async throws {
        try await withCluster(nodes: 2) { c in
            let session = c.ls(2).openSession()
            // "orph-a" is mastered by node 1 (it locks first), so node 2's locks are process copies.
            let keeper = try await c.ls(1).lock("orph-a", mode: .nl)
            let kept = try await session.lock("orph-a", mode: .pw, flags: [.persistent, .valBlk], lvb: Array("v1".utf8))
            let dropped = try await session.lock("orph-b", mode: .ex, flags: .valBlk, lvb: Array("v2".utf8))
            let lvbBefore = kept.lvb
            let closed = try await session.closeSession()
            #expect(closed == DLMSessionClosed(orphaned: [kept.lkid], unlocked: [dropped.lkid]))
            #expect(kept.isReleased && dropped.isReleased)  // the handles end either way
            #expect(try await c.ls(2).orphans() == [kept.lkid])
            // The orphan keeps PW on the master, which learnt ORPHAN from the CANCEL.
            #expect(try await eventually {
                let copy = try await resource(c, 1, "orph-a")?.granted.first { $0.nodeid == 2 }
                return copy?.grmode == "PW" && copy?.exflags.contains("PERSISTENT") == true
            })
            #expect(try await resource(c, 2, "orph-a")?.granted.first?.owner == "orphan")
            // Adopting in another mode: EAGAIN; on another resource: ENOENT.
            await expectDLMError(.eagain) { try await c.ls(2).lock("orph-a", mode: .ex, flags: .orphan) }
            await expectDLMError(.enoent) { try await c.ls(2).lock("orph-b", mode: .pw, flags: .orphan) }
            // Adopted in PW: the same lock id, granted at once, its value block kept.
            let adopted = try await c.ls(2).lock("orph-a", mode: .pw, flags: [.orphan, .persistent])
            #expect(adopted.lkid == kept.lkid && adopted.mode == .pw && adopted.lvb == lvbBefore)
            #expect(try await c.ls(2).orphans().isEmpty)
            // Orphan it again (a session of its own), then purge it from node 1 with a PURGE message.
            let s2 = c.ls(2).openSession()
            let second = try await s2.lock("orph-c", mode: .cr, flags: .persistent)
            try await s2.closeSession()
            #expect(try await c.ls(2).orphans() == [second.lkid])
            #expect(try await c.ls(1).purgeOrphans(nodeID: 2, pid: 0) == 0)
            #expect(try await eventually { try await c.ls(2).orphans().isEmpty })
            // The adopted lock is an ordinary lock of node 2; purging locally finds no orphans.
            #expect(try await c.ls(2).purgeOrphans() == 0)
            try await c.ls(2).unlock(adopted, flags: .valBlk)
            try await c.ls(1).unlock(keeper)
            await expectDLMError(.einval) { try await c.ls(1).purgeOrphans(nodeID: 9) }
            await expectDLMError(.einval) { try await c.ls(1).closeSession() }
        }
    }

    @Test("hold: convert up (queued, then converted), NOQUEUE refusal, cancel, bad lines; the hold goes on")
    func holdConversions() async throws {
        try await withControlCluster(nodes: 2) { c, paths in
            let h = try await ControlConnection.open(paths[0])
            try await h.send("hold alpha hold-cvt NL")
            let g = try await h.reply(0)
            #expect(g.event == "granted" && g.mode == "NL")
            // Down-up on our own lock with nobody else: converted at once.
            try await h.send("convert PR")
            let up = try await h.reply(1)
            #expect(up.event == "converted" && up.mode == "PR" && up.lkid == g.lkid)
            // Node 2 holds PR: EX must wait; NOQUEUE fails and the lock stays PR.
            let other = try await ControlConnection.lockReply(paths[1], "lock alpha hold-cvt PR")
            #expect(other.status == "granted")
            try await h.send("convert EX flags=NOQUEUE")
            let refused = try await h.reply(2)
            #expect(refused.event == "convert_failed" && refused.status == "EAGAIN" && refused.mode == "PR")
            try await h.send("convert EX")
            let queued = try await h.reply(3)
            #expect(queued.event == "queued" && queued.requested == "EX")
            try await h.send("cancel")
            let answers = [try await h.reply(4), try await h.reply(5)]
            #expect(answers.contains { $0.event == "cancel" && $0.status == "cancelled" })
            #expect(answers.contains { $0.event == "convert_failed" && $0.status == "DLM_ECANCEL" && $0.mode == "PR" })
            // A line the hold does not know, and a convert while another is outstanding.
            try await h.send("frobnicate")
            #expect(try await h.reply(6).event == "error")
            try await h.send("convert EX")
            #expect(try await h.reply(7).event == "queued")
            try await h.send("convert CR")
            let busy = try await h.reply(8)
            #expect(busy.event == "error" && busy.status == "EBUSY")
            // Node 2 lets go: the conversion is granted; then `unlock` ends the hold.
            _ = try await ControlConnection.lockReply(paths[1], "unlock alpha \(try #require(other.lkidHex))")
            let done = try await h.reply(9)
            #expect(done.event == "converted" && done.mode == "EX")
            try await h.send("unlock")
            #expect(try await h.reply(10).event == "unlocked")
            #expect(try await eventually { h.isClosed })
            #expect(try await ControlConnection.dump(paths[0]).resources.isEmpty)
        }
    }

    @Test("a PERSISTENT hold whose connection closes leaves an orphan; `lock ... flags=ORPHAN` adopts, `purge` releases; `locks` dumps all")
    func controlOrphans() async throws {
        try await withControlCluster(nodes: 2) { c, paths in
            let h = try await ControlConnection.open(paths[0])
            try await h.send("hold alpha ctl-orph EX flags=PERSISTENT,VALBLK lvb=6f6c64")
            let g = try await h.reply(0)
            #expect(g.event == "granted")
            await h.close()
            #expect(try await eventually {
                try await ControlConnection.dump(paths[0]).resources.first?.granted.first?.owner == "orphan"
            })
            // A plain hold closing is force-unlocked with IVVALBLK; a persistent one is not.
            let wrong = try await ControlConnection.lockReply(paths[0], "lock alpha ctl-orph PR flags=ORPHAN")
            #expect(!wrong.ok && wrong.status == "EAGAIN")
            let adopted = try await ControlConnection.lockReply(paths[0], "lock alpha ctl-orph EX flags=ORPHAN")
            #expect(adopted.ok && adopted.status == "granted" && adopted.lkid == g.lkid && adopted.lvb?.hasPrefix("6f6c64") == true)
            #expect(try await ControlConnection.dump(paths[0]).resources.first?.granted.first?.owner == "cli")
            // Orphan it again through a hold that adopts it and closes.
            let h2 = try await ControlConnection.open(paths[0])
            _ = try await ControlConnection.lockReply(paths[0], "unlock alpha \(try #require(adopted.lkidHex))")
            try await h2.send("hold alpha ctl-orph PW flags=PERSISTENT")
            #expect(try await h2.reply(0).event == "granted")
            await h2.close()
            #expect(try await eventually {
                try await ControlConnection.dump(paths[0]).resources.first?.granted.first?.owner == "orphan"
            })
            // `locks` without a lockspace: an array of every lockspace's dump.
            let all = try await ControlConnection.request(paths[0], "locks")
            let dumps = try LockDump.decoder().decode([LockDump].self, from: Data(all.utf8))
            #expect(dumps.map(\.lockspace) == ["alpha"] && dumps.first?.resources.first?.name == "ctl-orph")
            // Purge: another pid keeps it, pid 0 releases it.
            let none = try await ControlConnection.lockReply(paths[0], "purge alpha pid=1")
            #expect(none.ok && none.purged == 0)
            let purged = try await ControlConnection.lockReply(paths[0], "purge alpha")
            #expect(purged.ok && purged.status == "purged" && purged.purged == 1)
            #expect(try await eventually { try await ControlConnection.dump(paths[0]).resources.isEmpty })
            let bad = try await ControlConnection.lockReply(paths[0], "purge alpha node=9")
            #expect(!bad.ok && bad.status == "EINVAL")
        }
    }
}
