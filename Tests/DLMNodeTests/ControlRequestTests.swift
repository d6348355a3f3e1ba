// The control socket's lock request lines (ControlRequest), its answers (LockReply) and the
// lock dump's text layout.

@testable import DLMNode
import DLMTransport
import Foundation
import Testing

@Suite("Control request lines")
struct ControlRequestTests {
    typealias A = ControlRequest.LockArguments

    static let roundTrips: [(ControlRequest, String)] = [
        (.status, "status"),
        (.lock(A(lockspace: "alpha", resource: Array("res-1".utf8), mode: .ex)), "lock alpha res-1 EX"),
        (.lock(A(lockspace: "alpha", resource: Array("res 1".utf8), mode: .pr, flags: [.noQueue, .valBlk],
                 lvb: [0x68, 0x69], wait: false)),
         "lock alpha res%201 PR flags=NOQUEUE,VALBLK lvb=6869 nowait"),
        (.lock(A(lockspace: "a%b", resource: [0x00, 0xff, 0x25, 0x3d], mode: .nl)), "lock a%25b %00%FF%25%3D NL"),
        (.hold(A(lockspace: "alpha", resource: Array("r".utf8), mode: .cw, flags: .valBlk, lvb: [])),
         "hold alpha r CW flags=VALBLK lvb="),
        (.convert(lockspace: "alpha", lkid: 0x1a, mode: .nl, flags: [.valBlk, .convDeadlk], lvb: [1], wait: true),
         "convert alpha 1a NL flags=VALBLK,CONVDEADLK lvb=01"),
        (.convert(lockspace: "alpha", lkid: 1, mode: .ex, flags: .queCvt, lvb: nil, wait: false),
         "convert alpha 1 EX flags=QUECVT nowait"),
        (.unlock(lockspace: "alpha", lkid: 0xffff_ffff, flags: [.valBlk], lvb: Array("v2".utf8)),
         "unlock alpha ffffffff flags=VALBLK lvb=7632"),
        (.unlock(lockspace: "alpha", lkid: 2, flags: .ivValBlk, lvb: nil), "unlock alpha 2 flags=IVVALBLK"),
        (.cancel(lockspace: "alpha", lkid: 3), "cancel alpha 3"),
        (.locks(lockspace: "gfs2:fs"), "locks gfs2:fs"),
        (.locks(lockspace: nil), "locks"),
        (.purge(lockspace: "alpha", nodeID: 0, pid: 0), "purge alpha node=0 pid=0"),
        (.purge(lockspace: "alpha", nodeID: 3, pid: 4242), "purge alpha node=3 pid=4242"),
    ]

    @Test("encode → line → parse is the identity", arguments: roundTrips)
    func roundTrip(_ request: ControlRequest, _ line: String) throws {
        #expect(request.line == line)
        #expect(try ControlRequest.parse(line) == request)
    }

    static let variants: [(String, ControlRequest)] = [
        // Case, prefixes, extra spaces, lock id spellings.
        ("lock  alpha r ex flags=noqueue,dlm_lkf_valblk", .lock(A(lockspace: "alpha", resource: [0x72], mode: .ex, flags: [.noQueue, .valBlk]))),
        ("unlock alpha 0x0000001A", .unlock(lockspace: "alpha", lkid: 0x1a, flags: [], lvb: nil)),
        ("unlock alpha 0000001a lvb=0XABcd", .unlock(lockspace: "alpha", lkid: 0x1a, flags: [], lvb: [0xab, 0xcd])),
        ("lock alpha r PR flags=", .lock(A(lockspace: "alpha", resource: [0x72], mode: .pr))),
        ("cancel alpha 10", .cancel(lockspace: "alpha", lkid: 16)),
        ("purge alpha", .purge(lockspace: "alpha", nodeID: 0, pid: 0)),
        ("purge alpha pid=7", .purge(lockspace: "alpha", nodeID: 0, pid: 7)),
    ]

    @Test("accepted spellings", arguments: variants)
    func spellings(_ line: String, _ request: ControlRequest) throws {
        #expect(try ControlRequest.parse(line) == request)
    }

    static let badLines: [(String, String)] = [
        ("", "empty request"),
        ("frobnicate alpha", "unknown request: frobnicate"),
        ("status now", "status takes no arguments"),
        ("lock alpha r", "usage: lock LOCKSPACE RESOURCE MODE"),
        ("lock alpha r XX", "bad mode XX"),
        ("lock alpha r IV", "bad mode IV"),
        ("lock alpha r EX flags=NOQUEUE,BOGUS", "unknown flag BOGUS"),
        ("lock alpha r EX lvb=abc", "odd number of digits"),
        ("lock alpha r EX lvb=zz", "bad hex zz"),
        ("lock alpha r EX maybe", "unexpected word maybe"),
        ("hold alpha r EX nowait", "unexpected word nowait"),
        ("unlock alpha 1 nowait", "unexpected word nowait"),
        ("lock alpha \(String(repeating: "x", count: 65)) EX", "1...64 bytes, not 65"),
        ("lock alpha %G1 EX", "bad %-escape"),
        ("lock alpha %+1 EX", "bad %-escape"),
        ("lock alpha r EX lvb=+f", "bad hex +f"),
        ("unlock alpha +1a", "bad lock id +1a"),
        ("unlock alpha 0x", "bad lock id 0x"),
        ("lock alpha % EX", "bad %-escape"),
        ("lock \(String(repeating: "l", count: 65)) r EX", "bad lockspace name"),
        ("lock %FF r EX", "bad lockspace name"),
        ("unlock alpha zz", "bad lock id zz"),
        ("unlock alpha 0", "bad lock id 0"),
        ("unlock alpha 123456789", "bad lock id 123456789"),
        ("unlock alpha", "usage: unlock"),
        ("cancel alpha 1 2", "usage: cancel"),
        ("convert alpha 1", "usage: convert"),
        ("locks a b", "usage: locks"),
        ("purge", "usage: purge"),
        ("purge alpha pid=x", "bad number in pid=x"),
        ("purge alpha node=-1", "bad number in node=-1"),
        ("purge alpha now", "unexpected word now"),
    ]

    static let holdLines: [(String, HoldRequest?)] = [
        ("convert PR", .convert(mode: .pr, flags: [], lvb: nil)),
        ("convert ex flags=NOQUEUE,VALBLK lvb=6869", .convert(mode: .ex, flags: [.noQueue, .valBlk], lvb: [0x68, 0x69])),
        ("cancel", .cancel),
        ("unlock", .unlock(flags: [], lvb: nil)),
        ("unlock lvb=01", .unlock(flags: .valBlk, lvb: [1])),
        ("unlock flags=IVVALBLK", .unlock(flags: .ivValBlk, lvb: nil)),
        ("convert", nil),
        ("convert XX", nil),
        ("convert PR nowait", nil),
        ("cancel now", nil),
        ("lock alpha r EX", nil),
    ]

    @Test("hold connection lines: parse, and encode back", arguments: holdLines)
    func holdLine(_ line: String, _ expected: HoldRequest?) throws {
        guard let expected else {
            #expect(throws: ControlRequest.ParseError.self) { try HoldRequest.parse(line) }
            return
        }
        let parsed = try HoldRequest.parse(line)
        #expect(parsed == expected)
        #expect(try HoldRequest.parse(parsed.line) == parsed)
    }

    @Test("bad lines are refused with a clear message", arguments: badLines)
    func refused(_ line: String, _ message: String) {
        do {
            let r = try ControlRequest.parse(line)
            Issue.record("accepted: \(r)")
        } catch {
            #expect(error.description.contains(message), "\(error.description)")
        }
    }

    @Test("lock verbs go to the lock session, status and others do not")
    func dispatch() {
        for verb in ["lock", "hold", "convert", "unlock", "cancel", "locks", "purge"] {
            #expect(LockControlSession.handles("\(verb) x"))
        }
        #expect(!LockControlSession.handles("status"))
        #expect(!LockControlSession.handles("locksmith a"))
        #expect(!LockControlSession.handles(""))
    }

    @Test("DLMError: codes, names and errno values")
    func errorCodes() {
        #expect(DLMError(.eagain).errno == -11 && DLMError(.ecancel).errno == -65537 && DLMError(.eunlock).errno == -65538)
        #expect(DLMError(LockResult.wouldBlock)?.code == .eagain)
        #expect(DLMError(LockResult.deadlock)?.code == .edeadlk)
        #expect(DLMError(LockResult.granted) == nil && DLMError(LockResult.queued) == nil)
        #expect(DLMError(status: -16).code == .ebusy)
        let odd = DLMError(status: -53)
        #expect(odd.code == .eproto && odd.errno == -53 && odd.description.contains("-EBADR"))
        #expect(DLMError.Code(name: "-DLM_ECANCEL") == .ecancel && DLMError.Code(name: "eagain") == .eagain)
        #expect(DLMError.Code(name: "EFOO") == nil)
        #expect(DLMError(.ebusy, "lock 1 busy").description == "EBUSY: lock 1 busy")
    }

    @Test("LockReply: JSON keys and the one-line text")
    func replies() throws {
        var r = LockReply(ok: true, status: "granted")
        r.lkid = 26
        r.lkidHex = "0000001a"
        r.mode = "EX"
        r.sbFlags = ["VALNOTVALID"]
        r.lvb = "6869000000"
        #expect(r.text == "lkid 0000001a granted EX sb_flags VALNOTVALID lvb 6869000000 \"hi\"")
        let json = r.json
        #expect(json.contains("\"lkid_hex\":\"0000001a\"") && json.contains("\"sb_flags\":[\"VALNOTVALID\"]"))
        #expect(try LockDump.decoder().decode(LockReply.self, from: Data(json.utf8)) == r)
        var q = LockReply(ok: true, status: "queued")
        q.lkidHex = "00000002"
        q.mode = "--"
        q.requested = "PR"
        #expect(q.text == "lkid 00000002 queued (PR)")
        let f = LockReply.failure(DLMError(.eagain, "r could not be granted"), lockspace: "alpha", lkid: 3)
        #expect(!f.ok && f.status == "EAGAIN" && f.result == -11 && f.lkidHex == "00000003")
        #expect(f.text == "error: EAGAIN: r could not be granted")
        var b = LockReply(ok: true, status: "bast")
        b.event = "bast"
        b.lkidHex = "00000001"
        b.bastMode = "PR"
        #expect(b.text == "lkid 00000001 BAST: a PR request is waiting")
    }

    @Test("the dump's text is the kernel's debugfs <ls> layout")
    func dumpText() {
        func lock(_ id: UInt32, _ gr: String, _ rq: String, queue: String, node: Int32 = 0, remid: UInt32 = 0,
                  wait: UInt32 = 0) -> LockDump.Lock {
            LockDump.Lock(lkid: id, lkidHex: String(format: "%08x", id), queue: queue, grmode: gr, rqmode: rq, nodeid: node,
                          remid: remid, pid: 1, exflags: [], sbflags: [], waitType: wait, lvbSeq: 0, lvb: nil,
                          masterCopy: node != 0, owner: nil)
        }
        let lvb = (0..<32).map { String(format: "%02x", $0) }.joined()
        let master = LockDump.Resource(
            name: "res.1", nameHex: "7265730031", length: 5, hash: "0e136180", master: 1, resNodeid: 0, directoryNode: 2,
            firstLkid: 0, active: true, lvb: lvb, lvbSeq: 3, valueNotValid: true,
            granted: [lock(1, "EX", "EX", queue: "granted"), lock(2, "NL", "NL", queue: "granted", node: 3, remid: 0x10)],
            converting: [lock(4, "NL", "PR", queue: "convert", node: 2, remid: 7)],
            waiting: [lock(5, "--", "CW", queue: "waiting")], lookup: [])
        #expect(LockDump.format1(master, lvbLength: 32) == """

            Resource 000000000e136180 Name (len=5) "res.1"
            Master Copy
            LVB: 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 
                 10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f  (INVALID)
            Granted Queue
            00000001 EX
            00000002 NL Remote:   3 00000010
            Conversion Queue
            00000004 NL (PR) Remote:   2 00000007
            Waiting Queue
            00000005 -- (CW)

            """)
        let copy = LockDump.Resource(
            name: "r", nameHex: "72", length: 1, hash: "00000001", master: 2, resNodeid: 2, directoryNode: 1,
            firstLkid: 0, active: true, lvb: nil, lvbSeq: 0, valueNotValid: false,
            granted: [lock(3, "PR", "PR", queue: "granted", node: 2, remid: 9)], converting: [], waiting: [],
            lookup: [lock(6, "--", "EX", queue: "lookup", node: -1)])
        #expect(LockDump.format1(copy, lvbLength: 32) == """

            Resource 0000000000000001 Name (len=1) "r"
            Local Copy, Master is node 2
            Granted Queue
            00000003 PR Master:     00000009
            Conversion Queue
            Waiting Queue
            Lookup Queue
            00000006 EX

            """)
        var looking = copy
        looking.resNodeid = -1
        looking.master = nil
        looking.firstLkid = 0x2a
        looking.granted = []
        looking.lookup = []
        #expect(LockDump.format1(looking, lvbLength: 32).contains("\"r\"\nLooking up master (lkid 2a)\nGranted Queue\n"))
        #expect(LockDump.printable([0x61, 0x00, 0x7f, 0x62]) == "a..b")
    }
}
