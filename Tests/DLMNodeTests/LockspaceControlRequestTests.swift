import DLMNode
import Testing

/// The agent's control-socket lines `ls-stop` / `ls-start` (LockspaceControlRequests).
@Suite("ls-stop / ls-start request lines")
struct LockspaceControlRequestTests {
    typealias M = LockspaceControlRequests.Member

    @Test("well-formed lines")
    func parses() throws {
        #expect(try LockspaceControlRequests.parse("ls-stop alpha")?.get() == .stop(lockspace: "alpha"))
        #expect(try LockspaceControlRequests.parse("ls-start alpha 1 2:0 3:2")?.get()
            == .start(lockspace: "alpha", members: [M(id: 1, weight: 1), M(id: 2, weight: 0), M(id: 3, weight: 2)],
                      renewed: []))
        #expect(try LockspaceControlRequests.parse("ls-start  beta\t1:1 4 renew=4,1")?.get()
            == .start(lockspace: "beta", members: [M(id: 1, weight: 1), M(id: 4, weight: 1)], renewed: [1, 4]))
    }

    @Test("other requests are not ours", arguments: ["status", "lock alpha r EX", "", "ls-stopper alpha"])
    func notOurs(_ line: String) {
        #expect(LockspaceControlRequests.parse(line) == nil)
    }

    @Test("malformed lines are refused with a reason", arguments: [
        ("ls-stop", "missing lockspace"), ("ls-stop a b", "one lockspace"), ("ls-start alpha", "no members"),
        ("ls-start alpha x", "bad member"), ("ls-start alpha 0", "bad member"), ("ls-start alpha 1:-1", "bad weight"),
        ("ls-start alpha 1:2:3", "bad member"), ("ls-start alpha 1 renew=z", "bad node id"),
    ])
    func refuses(_ line: String, _ reason: String) {
        guard case .failure(let e)? = LockspaceControlRequests.parse(line) else {
            Issue.record("\(line) accepted")
            return
        }
        #expect(e.description.contains(reason), "\(e)")
    }
}
