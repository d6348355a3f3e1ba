// The real `dlm-peer` binary: two `dlm-peer run` nodes on 127.0.0.1/.2 and the lock commands
// (`lock`, `locks --json`, `hold`, `unlock`, `cancel`, `status`) against their control sockets.
// Enabled when the binary is built (`swift build`; `swift test` builds it too).

import DLMNode
import Foundation
import NIOConcurrencyHelpers
import Testing

enum CLI {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let binary = root.appendingPathComponent(".build/debug/dlm-peer").path
    static var available: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    /// A started process whose output is collected as it arrives.
    final class Child: @unchecked Sendable {
        let process: Process
        private let out = NIOLockedValueBox("")
        private let err = NIOLockedValueBox("")

        private let input: Pipe?

        /// `stdin`: give the process a pipe for `send` (else /dev/null).
        init(_ arguments: [String], stdin: Bool = false) throws {
            process = Process()
            input = stdin ? Pipe() : nil
            process.executableURL = URL(fileURLWithPath: CLI.binary)
            process.arguments = arguments
            let o = Pipe()
            let e = Pipe()
            process.standardOutput = o
            process.standardError = e
            process.standardInput = input ?? FileHandle.nullDevice
            let out = self.out
            let err = self.err
            o.fileHandleForReading.readabilityHandler = { h in
                let d = h.availableData
                out.withLockedValue { $0 += String(decoding: d, as: UTF8.self) }
            }
            e.fileHandleForReading.readabilityHandler = { h in
                let d = h.availableData
                err.withLockedValue { $0 += String(decoding: d, as: UTF8.self) }
            }
            try process.run()
        }

        /// A line on the process's standard input.
        func send(_ line: String) {
            input?.fileHandleForWriting.write(Data((line + "\n").utf8))
        }

        var stdout: String { out.withLockedValue { $0 } }
        var stderr: String { err.withLockedValue { $0 } }

        func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

        /// Waits for the exit (polling; `waitUntilExit` would block the cooperative pool).
        func exitStatus(seconds: Double = 10) async throws -> Int32 {
            guard try await eventually(seconds: seconds, { [process] in !process.isRunning }) else {
                signal(SIGKILL)
                throw TimeoutError(seconds: seconds)
            }
            try await Task.sleep(nanoseconds: 50_000_000)  // let the pipes drain
            return process.terminationStatus
        }
    }

    /// Runs a command to its end: (status, stdout, stderr).
    static func run(_ arguments: [String]) async throws -> (Int32, String, String) {
        let c = try Child(arguments)
        let status = try await c.exitStatus(seconds: 20)
        return (status, c.stdout, c.stderr)
    }
}

@Suite("dlm-peer lock commands (real binary)", .serialized, .timeLimit(.minutes(2)), .enabled(if: CLI.available, "dlm-peer is not built"))
struct LockCLITests {
    @Test("run x2, then lock / locks --json / hold / unlock / cancel / status")
    func endToEnd() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dlm-peer-cli-\(getpid())-\(APITest.port())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = dir.appendingPathComponent("cluster.toml").path
        try APITest.configText(nodes: 2, port: APITest.port()).write(toFile: config, atomically: true, encoding: .utf8)
        let sockets = [1, 2].map { dir.appendingPathComponent("n\($0).sock").path }
        let nodes = try [1, 2].map { n in
            try CLI.Child(["run", "--config", config, "--node", "\(n)", "--control", sockets[n - 1]])
        }
        defer { for n in nodes where n.process.isRunning { n.signal(SIGKILL) } }
        @Sendable func cli(_ args: [String], node: Int) async throws -> (Int32, String, String) {
            try await CLI.run(args + ["--control", sockets[node - 1]])
        }
        // Joined: `status --json` shows the lockspace running on both.
        for n in [1, 2] {
            let up = try await eventually(seconds: 20) {
                guard FileManager.default.fileExists(atPath: sockets[n - 1]) else { return false }
                let (rc, out, _) = try await cli(["status", "--json"], node: n)
                return rc == 0 && out.contains("\"phase\":\"running\"")
            }
            #expect(up, "node \(n) did not join: \(nodes[n - 1].stderr.suffix(2000))")
            guard up else { return }
        }

        // lock: granted, prints the lock id and the value block.
        let (rc1, out1, _) = try await cli(["lock", "alpha", "cli-bin", "EX", "--lvb", "hello"], node: 1)
        #expect(rc1 == 0)
        #expect(out1.hasPrefix("lkid 00000001 granted EX lvb 68656c6c6f00"), "\(out1)")
        #expect(out1.contains("\"hello\""))

        // NOQUEUE from node 2: EAGAIN, exit 1; --no-wait: queued.
        let (rc2, _, err2) = try await cli(["lock", "alpha", "cli-bin", "PR", "--flags", "NOQUEUE"], node: 2)
        #expect(rc2 == 1 && err2.contains("EAGAIN"), "\(err2)")
        let (rc3, out3, _) = try await cli(["lock", "alpha", "cli-bin", "PR", "--no-wait", "--json"], node: 2)
        #expect(rc3 == 0)
        let queued = try LockDump.decoder().decode(LockReply.self, from: Data(out3.utf8))
        #expect(queued.status == "queued" && queued.requested == "PR")

        // locks --json on the master: EX granted (ours), PR waiting from node 2; text has the layout.
        let (rc4, out4, _) = try await cli(["locks", "alpha", "--json"], node: 1)
        #expect(rc4 == 0)
        let dump = try LockDump.decoder().decode(LockDump.self, from: Data(out4.utf8))
        let r = try #require(dump.resources.first { $0.name == "cli-bin" })
        #expect(r.resNodeid == 0 && r.granted.map(\.grmode) == ["EX"] && r.granted.first?.owner == "cli")
        #expect(r.waiting.map(\.nodeid) == [2] && r.waiting.first?.rqmode == "PR")
        let (_, text, _) = try await cli(["locks", "alpha"], node: 1)
        #expect(text.contains("Name (len=7) \"cli-bin\"\nMaster Copy\nGranted Queue\n00000001 EX\n"), "\(text)")
        #expect(text.contains("Waiting Queue\n00000002 -- (PR) Remote:   2 00000001\n"), "\(text)")

        // hold on another resource; node 2 asks for it; the hold prints the BAST; SIGINT unlocks.
        let hold = try CLI.Child(["hold", "alpha", "cli-hold", "EX", "--control", sockets[0]])
        #expect(try await eventually { hold.stdout.contains("granted EX") }, "\(hold.stdout) \(hold.stderr)")
        let (rc5, out5, _) = try await cli(["lock", "alpha", "cli-hold", "CR", "--no-wait"], node: 2)
        #expect(rc5 == 0 && out5.contains("queued (CR)"), "\(out5)")
        #expect(try await eventually { hold.stdout.contains("BAST: a CR request is waiting") }, "\(hold.stdout)")
        hold.signal(SIGINT)
        #expect(try await hold.exitStatus() == 0)
        #expect(hold.stdout.contains("unlocked"), "\(hold.stdout)")

        // unlock the EX: node 2's PR is granted and reads the value written at the unlock.
        let (rc6, out6, _) = try await cli(["unlock", "alpha", "1"], node: 1)
        #expect(rc6 == 0 && out6.hasPrefix("lkid 00000001 unlocked"), "\(out6)")
        #expect(try await eventually {
            let (_, o, _) = try await cli(["locks", "alpha", "--json"], node: 2)
            let d = try LockDump.decoder().decode(LockDump.self, from: Data(o.utf8))
            return d.resources.first { $0.name == "cli-bin" }?.granted.first?.grmode == "PR"
                && d.resources.first { $0.name == "cli-hold" }?.granted.first?.grmode == "CR"
        })

        // convert, cancel, errors.
        let (rc7, out7, _) = try await cli(["convert", "alpha", "0x1", "NL"], node: 2)
        #expect(rc7 == 0 && out7.contains("granted NL"), "\(out7)")
        let (rc8, out8, _) = try await cli(["cancel", "alpha", "1"], node: 2)
        #expect(rc8 == 0 && out8.contains("not cancelled"), "\(out8)")
        let (rc9, _, err9) = try await cli(["unlock", "alpha", "99"], node: 2)
        #expect(rc9 == 1 && err9.contains("ENOENT"), "\(err9)")
        let (rc10, _, err10) = try await cli(["lock", "alpha", "x", "EX", "--flags", "NOQUEUE,BOGUS"], node: 2)
        #expect(rc10 != 0 && err10.contains("unknown flag BOGUS"), "\(err10)")
        let (rc11, _, err11) = try await cli(["lock", "nope", "x", "EX"], node: 2)
        #expect(rc11 == 1 && err11.contains("not a member of lockspace nope"), "\(err11)")
        let (rc12, out12, _) = try await cli(["status"], node: 2)
        #expect(rc12 == 0 && out12.contains("node 2 of cluster apitest"), "\(out12)")

        // hold with commands on standard input: convert, a bad line, unlock (which ends it).
        let typed = try CLI.Child(["hold", "alpha", "cli-typed", "NL", "--control", sockets[0]], stdin: true)
        #expect(try await eventually { typed.stdout.contains("granted NL") }, "\(typed.stdout) \(typed.stderr)")
        typed.send("convert PW")
        #expect(try await eventually { typed.stdout.contains("converted to PW") }, "\(typed.stdout) \(typed.stderr)")
        typed.send("frob")
        #expect(try await eventually { typed.stderr.contains("a hold connection accepts") }, "\(typed.stderr)")
        // Every lockspace at once: an array with --json, the text dump otherwise.
        let (rc13, out13, _) = try await cli(["locks", "--json"], node: 1)
        let dumps = try LockDump.decoder().decode([LockDump].self, from: Data(out13.utf8))
        #expect(rc13 == 0 && dumps.map(\.lockspace) == ["alpha"])
        #expect(dumps.first?.resources.first { $0.name == "cli-typed" }?.granted.first?.grmode == "PW")
        let (rc14, out14, _) = try await cli(["locks", "--all"], node: 1)
        #expect(rc14 == 0 && out14.contains("lockspace alpha") && out14.contains("\"cli-typed\""), "\(out14)")
        typed.send("unlock")
        #expect(try await typed.exitStatus() == 0)
        #expect(typed.stdout.contains("unlocked"), "\(typed.stdout)")
        let (rc15, out15, _) = try await cli(["purge", "alpha"], node: 1)
        #expect(rc15 == 0 && out15.contains("purged: 0 orphan"), "\(out15)")

        // Leave cleanly.
        for n in nodes { n.signal(SIGTERM) }
        for n in nodes { #expect(try await n.exitStatus(seconds: 15) == 0) }
    }
}
