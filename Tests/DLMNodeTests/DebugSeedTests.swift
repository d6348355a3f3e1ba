import Foundation
import Testing
@testable import DLMNode

@Suite("debug seed") struct DebugSeedTests {
    @Test func one() {
        guard let s = ProcessInfo.processInfo.environment["DEBUG_SEED"], let seed = UInt64(s) else { return }
        let sim = LockRecoverySimulationTests.runScenarioTraced(seed: seed)
        print(sim.problems)
        let filter = ProcessInfo.processInfo.environment["DEBUG_GREP"] ?? ""
        for l in sim.trace where filter.isEmpty || l.contains(filter) { print(l) }
    }
    @Test(arguments: 0..<4) func sweep(_ part: Int) {
        guard let s = ProcessInfo.processInfo.environment["DEBUG_SWEEP"], let n = Int(s) else { return }
        var bad = 0
        for i in 0..<n {
            let seed = UInt64(1_000_000 + part * n + i) &* 0x2545F4914F6CDD1D
            let sim = LockRecoverySimulationTests.runScenario(seed: seed, changes: 10)
            if !sim.problems.isEmpty { bad += 1; print("SWEEPFAIL \(seed) \(sim.problems.prefix(2))") }
        }
        print("SWEEP part \(part): \(n) seeds, \(bad) failing")
    }
}
