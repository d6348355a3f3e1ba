import ArgumentParser
import DLMNode
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

/// A cluster of `nodes` dlm-peer nodes on 127.0.0.1 ... 127.0.0.N, all on `port`, with one
/// lockspace of which every node is a member (LVB length 32): the two-process and in-process
/// benchmarks' cluster.
func loopbackClusterConfig(nodes: Int, port: Int, lockspace: String) throws -> ClusterConfig {
    var toml = "[cluster]\nname = \"bench\"\nport = \(port)\n"
    for i in 1...nodes {
        toml += "\n[[node]]\nid = \(i)\naddresses = [\"127.0.0.\(i)\"]\nkind = \"peer\"\n"
    }
    toml += "\n[[lockspace]]\nname = \"\(lockspace)\"\nmembers = [\((1...nodes).map(String.init).joined(separator: ", "))]\nlvb_length = 32\n"
    do {
        return try ClusterConfig.parse(toml, file: "<bench cluster>")
    } catch {
        throw ValidationError("bench config: \(error)")
    }
}
