import ArgumentParser
import DLMNode
import DLMTransport
import Dispatch
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

// `dlm-peer lock|convert|unlock|cancel|hold|locks`: lock commands for a running `dlm-peer run`,
// over its control socket (ControlRequest lines, LockReply/LockDump JSON answers). The locks
// belong to the node: `lock` returns while the lock stays held; `unlock LS LKID` releases it.

/// `--node ID | --control PATH` and `--json`, shared by the lock commands.
struct NodeConnection: ParsableArguments {
    @Option(help: "The node's id (finds its default control socket).")
    var node: UInt32?

    @Option(help: "The node's control socket.")
    var control: String?

    @Flag(help: "Print the node's JSON answer.")
    var json = false

    func path() throws -> String {
        guard let path = control ?? node.map({ ControlServer.defaultPath(node: $0) }) else {
            throw ValidationError("give --node ID or --control PATH")
        }
        return path
    }
}

/// `--flags` and `--lvb`.
struct LockOptions: ParsableArguments {
    @Option(help: ArgumentHelp("DLM_LKF_* flags without the prefix, comma-separated (NOQUEUE,VALBLK,CONVDEADLK,...).",
                               valueName: "FLAGS"))
    var flags: String = ""

    @Option(help: ArgumentHelp("A value block: 0x-prefixed hex, else the text's bytes; implies VALBLK.", valueName: "HEX|TEXT"))
    var lvb: String?

    func parsed() throws -> (flags: LockFlags, lvb: [UInt8]?) {
        var parsedFlags: LockFlags
        do {
            parsedFlags = try ControlRequest.parseFlags(flags)
        } catch {
            throw ValidationError("--flags: \(error.description)")
        }
        var bytes: [UInt8]?
        if let lvb {
            bytes = try Self.parseLVB(lvb)
            parsedFlags.insert(.valBlk)
        }
        return (parsedFlags, bytes)
    }

    static func parseLVB(_ text: String) throws -> [UInt8] {
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            do {
                return try ControlRequest.parseHex(text)
            } catch {
                throw ValidationError("--lvb: \(error.description)")
            }
        }
        return Array(text.utf8)
    }
}

func parseMode(_ text: String) throws -> LockMode {
    do {
        return try ControlRequest.parseMode(text)
    } catch {
        throw ValidationError(error.description)
    }
}

func parseLkid(_ text: String) throws -> UInt32 {
    do {
        return try ControlRequest.parseLkid(text)
    } catch {
        throw ValidationError(error.description)
    }
}

/// Sends `request`, prints the LockReply (text or JSON), exits 1 when it reports a failure.
func runLockRequest(_ request: ControlRequest, _ connection: NodeConnection) throws {
    let reply = try ControlClient.request(request.line, path: try connection.path())
    let line = reply.trimmingCharacters(in: .whitespacesAndNewlines)
    guard let answer = try? LockDump.decoder().decode(LockReply.self, from: Data(line.utf8)) else {
        throw ValidationError("unexpected answer from the node: \(line.prefix(200))")
    }
    if connection.json {
        print(line)
    } else if answer.ok {
        print(answer.text)
    } else {
        FileHandle.standardError.write(Data((answer.text + "\n").utf8))
    }
    if !answer.ok { throw ExitCode(1) }
}

struct LockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lock",
        abstract: "Take a lock held by a running node; prints its lock id, status and value block.",
        discussion: """
            The lock belongs to the node and stays held after the command returns, until \
            `dlm-peer unlock LS LKID`. The command waits until the lock is granted (or fails: \
            exit status 1, e.g. EAGAIN with NOQUEUE); with --no-wait it prints "queued" at once \
            when the request has to wait. Interrupting a waiting `lock` cancels the request.
            """)

    @Argument(help: "The lockspace.") var lockspace: String
    @Argument(help: "The resource name.") var resource: String
    @Argument(help: "NL, CR, CW, PR, PW or EX.") var mode: String
    @OptionGroup var options: LockOptions
    @Flag(help: "Return at once with \"queued\" when the request has to wait.") var noWait = false
    @OptionGroup var connection: NodeConnection

    func run() throws {
        let (flags, lvb) = try options.parsed()
        let a = ControlRequest.LockArguments(lockspace: lockspace, resource: Array(resource.utf8), mode: try parseMode(mode),
                                             flags: flags, lvb: lvb, wait: !noWait)
        try runLockRequest(.lock(a), connection)
    }
}

struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert a lock the node holds (taken with `dlm-peer lock`) to another mode.",
        discussion: "Down-conversions from PW/EX with VALBLK (or --lvb) write the value block.")

    @Argument(help: "The lockspace.") var lockspace: String
    @Argument(help: "The lock id (hex, as `lock` and `locks` print it).") var lkid: String
    @Argument(help: "NL, CR, CW, PR, PW or EX.") var mode: String
    @OptionGroup var options: LockOptions
    @Flag(help: "Return at once with \"queued\" when the conversion has to wait.") var noWait = false
    @OptionGroup var connection: NodeConnection

    func run() throws {
        let (flags, lvb) = try options.parsed()
        try runLockRequest(.convert(lockspace: lockspace, lkid: try parseLkid(lkid), mode: try parseMode(mode),
                                    flags: flags, lvb: lvb, wait: !noWait), connection)
    }
}

struct UnlockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unlock",
        abstract: "Release a lock the node holds; prints the lock's final value block.",
        discussion: "--lvb (or --flags VALBLK) from PW/EX writes the value block; --flags IVVALBLK invalidates it.")

    @Argument(help: "The lockspace.") var lockspace: String
    @Argument(help: "The lock id (hex).") var lkid: String
    @OptionGroup var options: LockOptions
    @OptionGroup var connection: NodeConnection

    func run() throws {
        let (flags, lvb) = try options.parsed()
        try runLockRequest(.unlock(lockspace: lockspace, lkid: try parseLkid(lkid), flags: flags, lvb: lvb), connection)
    }
}

struct CancelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel",
        abstract: "Cancel a waiting request or conversion of a lock the node holds.",
        discussion: "Prints \"cancelled\", or \"not cancelled\" when it had been granted already.")

    @Argument(help: "The lockspace.") var lockspace: String
    @Argument(help: "The lock id (hex).") var lkid: String
    @OptionGroup var connection: NodeConnection

    func run() throws {
        try runLockRequest(.cancel(lockspace: lockspace, lkid: try parseLkid(lkid)), connection)
    }
}

struct LocksCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "locks",
        abstract: "Dump a lockspace's resources, queues, directory records and waiters (the kernel's debugfs layout).",
        discussion: """
            Without a lockspace (or with --all) every lockspace of the node is dumped, in name \
            order; --json then prints a JSON array of the dumps. Orphan locks (PERSISTENT locks \
            whose owner went away) show owner "orphan" in the JSON.
            """)

    @Argument(help: "The lockspace (default: every lockspace).") var lockspace: String?
    @Flag(help: "Dump every lockspace.") var all = false
    @OptionGroup var connection: NodeConnection

    func validate() throws {
        if all && lockspace != nil { throw ValidationError("give a lockspace or --all, not both") }
    }

    func run() throws {
        let reply = try ControlClient.request(ControlRequest.locks(lockspace: lockspace).line, path: try connection.path())
        let line = reply.trimmingCharacters(in: .whitespacesAndNewlines)
        if lockspace == nil, let dumps = try? LockDump.decoder().decode([LockDump].self, from: Data(line.utf8)) {
            if connection.json { print(line) } else { print(dumps.map(\.text).joined(separator: "\n"), terminator: "") }
            return
        }
        if let dump = try? LockDump.decoder().decode(LockDump.self, from: Data(line.utf8)) {
            if connection.json { print(line) } else { print(dump.text, terminator: "") }
            return
        }
        if let answer = try? LockDump.decoder().decode(LockReply.self, from: Data(line.utf8)) {
            if connection.json { print(line) } else { FileHandle.standardError.write(Data((answer.text + "\n").utf8)) }
            throw ExitCode(1)
        }
        throw ValidationError("unexpected answer from the node: \(line.prefix(200))")
    }
}

struct PurgeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "purge",
        abstract: "Release orphan locks (libdlm's dlm_ls_purge).",
        discussion: """
            An orphan is a lock taken with PERSISTENT (e.g. `dlm-peer hold LS RES MODE --flags \
            PERSISTENT`) whose owner went away (the hold's connection closed); it stays granted \
            until a request with ORPHAN in the same mode adopts it (`dlm-peer lock LS RES MODE \
            --flags ORPHAN` or `hold ... --flags ORPHAN`) or a purge releases it (force-unlock with \
            IVVALBLK). --pid limits the purge to the orphans of that process (0: all); \
            --target-node sends a PURGE message to another member instead (a kernel node purges \
            the orphans of its /dev/dlm processes).
            """)

    @Argument(help: "The lockspace.") var lockspace: String
    @Option(help: "Purge the orphans of this process id only (0: all).") var pid: UInt32 = 0
    @Option(help: "Purge on this member (0: the node itself).") var targetNode: UInt32 = 0
    @OptionGroup var connection: NodeConnection

    func run() throws {
        try runLockRequest(.purge(lockspace: lockspace, nodeID: targetNode, pid: pid), connection)
    }
}

struct HoldCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hold",
        abstract: "Take a lock and keep it until interrupted (Ctrl-C/SIGTERM unlocks); prints blocking callbacks as they arrive.",
        discussion: """
            Prints one line per event: queued, granted, each BAST ("a PR request is waiting"), \
            unlocked. While it holds the lock, lines typed on standard input act on it:
              convert MODE [flags=F1,F2] [lvb=HEX]   convert: queued, then converted or
                                                     conversion failed (the mode stays)
              cancel                                 cancel the waiting conversion
              unlock [flags=...] [lvb=HEX]           release the lock and exit
            The end of standard input changes nothing: the hold goes on until interrupted. The \
            lock belongs to this command's control connection: if the command dies, the node \
            force-unlocks it (with IVVALBLK), except a lock requested with --flags PERSISTENT, \
            which stays granted as an orphan (see `dlm-peer purge`). --flags ORPHAN adopts such \
            an orphan (same resource and mode) instead of requesting a new lock. Exit status 1 \
            when the request fails or is cancelled before it was granted.
            """)

    @Argument(help: "The lockspace.") var lockspace: String
    @Argument(help: "The resource name.") var resource: String
    @Argument(help: "NL, CR, CW, PR, PW or EX.") var mode: String
    @OptionGroup var options: LockOptions
    @Option(help: ArgumentHelp("The value block to write at the unlock (0x hex or text; implies VALBLK).", valueName: "HEX|TEXT"))
    var unlockLvb: String?
    @OptionGroup var connection: NodeConnection

    func run() throws {
        let (flags, lvb) = try options.parsed()
        let a = ControlRequest.LockArguments(lockspace: lockspace, resource: Array(resource.utf8), mode: try parseMode(mode),
                                             flags: flags, lvb: lvb)
        let finalLVB = try unlockLvb.map(LockOptions.parseLVB)
        let path = try connection.path()
        guard FileManager.default.fileExists(atPath: path) else {
            throw ValidationError("no control socket at \(path): is `dlm-peer run` running for that node?")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let printer = HoldPrinter(json: connection.json)
        let channel = try ClientBootstrap(group: group)
            .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(printer) } }
            .connect(unixDomainSocketPath: path).wait()
        let unlockLine = HoldRequest.unlock(flags: finalLVB == nil ? [] : .valBlk, lvb: finalLVB).line + "\n"
        let signalled = NIOLockedValueBox(false)
        let sources = [SIGINT, SIGTERM].map { sig -> DispatchSourceSignal in
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler {
                let again = signalled.withLockedValue { v -> Bool in defer { v = true }; return v }
                if again { Foundation.exit(1) }
                channel.writeAndFlush(ByteBuffer(string: unlockLine), promise: nil)
            }
            s.resume()
            return s
        }
        try channel.writeAndFlush(ByteBuffer(string: ControlRequest.hold(a).line + "\n")).wait()
        Self.forwardStandardInput(to: channel)
        try channel.closeFuture.wait()
        for s in sources { s.cancel() }
        if printer.failed.withLockedValue({ $0 }) { throw ExitCode(1) }
    }

    /// Sends each line of standard input that parses as a `HoldRequest` (on a background thread);
    /// others get an error on standard error.
    static func forwardStandardInput(to channel: Channel) {
        Thread.detachNewThread {
            while let line = readLine() {
                let text = line.trimmingCharacters(in: .whitespaces)
                if text.isEmpty { continue }
                do {
                    let request = try HoldRequest.parse(text)
                    channel.writeAndFlush(ByteBuffer(string: request.line + "\n"), promise: nil)
                } catch {
                    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
                }
            }
        }
    }
}

/// Prints each JSON line of a hold connection as it arrives.
final class HoldPrinter: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let json: Bool
    var buffer = ByteBuffer()
    let failed = NIOLockedValueBox(true)

    init(json: Bool) { self.json = json }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = unwrapInboundIn(data)
        buffer.writeBuffer(&b)
        while let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let line = String(decoding: buffer.readableBytesView[..<newline], as: UTF8.self)
            buffer.moveReaderIndex(to: newline + 1)
            let reply = try? LockDump.decoder().decode(LockReply.self, from: Data(line.utf8))
            // The hold ends well only with "unlocked".
            if let reply, reply.event == "unlocked" { failed.withLockedValue { $0 = false } }
            let out = json ? line : (reply?.text ?? line)
            if reply?.ok == false && !json {
                FileHandle.standardError.write(Data((out + "\n").utf8))
            } else {
                FileHandle.standardOutput.write(Data((out + "\n").utf8))
            }
        }
    }
}
