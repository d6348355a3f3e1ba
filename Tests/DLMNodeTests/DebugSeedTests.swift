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
}
