import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks, each next to a baseline measured in the same run.",
        discussion: """
            Build with -c release for meaningful figures (scripts/bench does). Allocation counts \
            need libMallocInterposerSwift.so beside the binary (scripts/bench builds it); the \
            command then re-runs itself with it preloaded.
            """,
        subcommands: [CodecBench.self, TransportBench.self, LockBench.self, RecoveryBench.self])
}

struct BenchOptions: ParsableArguments {
    @Flag(help: "Machine-readable output.")
    var json = false

    @Option(help: "Seconds to run each measurement.")
    var seconds: Double = 1.0
}

/// The second process of a two-process benchmark: this same binary with `arguments` (a hidden
/// `--serve` mode), its stdout piped back; `stop()` ends it by its PID.
final class BenchChild {
    let process = Process()
    let output = Pipe()
    private let input = Pipe()

    init(arguments: [String]) throws {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        process.executableURL = URL(fileURLWithPath: exe)
        process.arguments = arguments
        process.standardOutput = output
        process.standardInput = input
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    func stop() {
        kill(pid, SIGTERM)
        process.waitUntilExit()
    }
}
