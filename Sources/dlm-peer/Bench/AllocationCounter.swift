import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Counts heap allocations through ordo-one's malloc-interposer when it is preloaded.
///
/// The interposer is never linked into dlm-peer: `bench` re-executes itself with
/// `LD_PRELOAD` pointing at `libMallocInterposerSwift.so` (built beside the binary by
/// scripts/bench) and finds the counter functions with `dlsym`.
struct AllocationCounter {
    private typealias Void0 = @convention(c) () -> Void
    private typealias Stats = @convention(c) (
        UnsafeMutablePointer<Int64>?, UnsafeMutablePointer<Int64>?, UnsafeMutablePointer<Int64>?,
        UnsafeMutablePointer<Int64>?, UnsafeMutablePointer<Int64>?, UnsafeMutablePointer<Int64>?
    ) -> Void

    private let enable: Void0
    private let disable: Void0
    private let reset: Void0
    private let stats: Stats

    static let library = "libMallocInterposerSwift.so"
    static let marker = "DLM_PEER_BENCH_PRELOADED"

    /// The counter, if the interposer is loaded in this process.
    static func loaded() -> AllocationCounter? {
        func sym<T>(_ name: String, _: T.Type) -> T? {
            guard let p = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
            return unsafeBitCast(p, to: T.self)
        }
        guard let e = sym("malloc_interposer_enable", Void0.self),
              let d = sym("malloc_interposer_disable", Void0.self),
              let r = sym("malloc_interposer_reset", Void0.self),
              let s = sym("malloc_interposer_get_stats", Stats.self)
        else { return nil }
        return AllocationCounter(enable: e, disable: d, reset: r, stats: s)
    }

    /// Re-executes this process with the interposer preloaded when it sits beside the
    /// executable and is not loaded yet. Returns (without exec) when that is not possible.
    static func reexecWithInterposerIfAvailable() {
        guard ProcessInfo.processInfo.environment[marker] == nil,
              let exe = Bundle.main.executableURL?.resolvingSymlinksInPath() else { return }
        let lib = exe.deletingLastPathComponent().appendingPathComponent(library).path
        guard FileManager.default.fileExists(atPath: lib) else { return }
        setenv(marker, "1", 1)
        setenv("LD_PRELOAD", lib, 1)
        var args = CommandLine.arguments.map { strdup($0) }
        args.append(nil)
        execv(exe.path, &args)
    }

    /// Allocations made while running `body` on this thread.
    func count(_ body: () -> Void) -> Int64 {
        reset()
        enable()
        body()
        disable()
        var mallocs: Int64 = 0, bytes: Int64 = 0, small: Int64 = 0, large: Int64 = 0, frees: Int64 = 0, freed: Int64 = 0
        stats(&mallocs, &bytes, &small, &large, &frees, &freed)
        return mallocs
    }
}
