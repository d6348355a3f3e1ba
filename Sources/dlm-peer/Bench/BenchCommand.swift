import ArgumentParser

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks, each next to a baseline measured in the same run.",
        discussion: """
            Build with -c release for meaningful figures (scripts/bench does). Allocation counts \
            need libMallocInterposerSwift.so beside the binary (scripts/bench builds it); the \
            command then re-runs itself with it preloaded.
            """,
        subcommands: [CodecBench.self, TransportBench.self, LockBench.self])
}

struct BenchOptions: ParsableArguments {
    @Flag(help: "Machine-readable output.")
    var json = false

    @Option(help: "Seconds to run each measurement.")
    var seconds: Double = 1.0
}
