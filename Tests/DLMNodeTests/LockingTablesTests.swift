import DLMTransport
import Testing

@testable import DLMNode

/// The fixed tables of locking.md §2.2–§2.4, typed in from the spec (one case per cell).
@Suite("Locking tables")
struct LockingTablesTests {
    static let modes = LockMode.tableOrder  // IV NL CR CW PR PW EX

    /// locking.md §2.2, rows held IV…EX, columns wanted IV…EX.
    static let specCompat = [
        "1111111",
        "1111111",
        "1111110",
        "1111000",
        "1110100",
        "1110000",
        "1100000",
    ]

    @Test("compatibility matrix", arguments: modes, modes)
    func compatibility(held: LockMode, wanted: LockMode) {
        let row = Array(Self.specCompat[held.tableIndex])
        #expect(held.isCompatible(with: wanted) == (row[wanted.tableIndex] == "1"))
        #expect(held.isCompatible(with: wanted) == wanted.isCompatible(with: held), "symmetric")
    }

    /// locking.md §2.3, rows granted IV…EX, columns requested IV…EX ("-" for the IV column).
    static let specLVB = [
        "-RRRRRR",
        "-RRRRRR",
        "--RRRRR",
        "---RRRR",
        "----RRR",
        "-WWWWWR",
        "-WWWWWW",
    ]

    @Test("LVB operation table", arguments: modes, modes)
    func lvbTable(granted: LockMode, requested: LockMode) {
        let cell = Array(Self.specLVB[granted.tableIndex])[requested.tableIndex]
        let expected: LVBOperation = cell == "R" ? .read : cell == "W" ? .write : .none
        #expect(LockMode.lvbOperation(granted: granted, requested: requested) == expected)
    }

    /// locking.md §2.4 QUECVT table: allowed targets per granted mode.
    static let specQuecvt: [LockMode: Set<LockMode>] = [
        .nl: [.cr, .cw, .pr, .pw, .ex], .cr: [.cw, .pr, .pw, .ex], .cw: [.pr, .pw, .ex],
        .pr: [.cw, .pw, .ex], .pw: [.ex], .ex: [], .iv: [],
    ]

    @Test("QUECVT table", arguments: modes, modes)
    func quecvt(granted: LockMode, requested: LockMode) {
        let allowed = Self.specQuecvt[granted]!.contains(requested)
        #expect(LockMode.queuedConversionAllowed(granted: granted, requested: requested) == allowed)
    }

    @Test("down, middle and up conversions", arguments: Array(modes.dropFirst()), Array(modes.dropFirst()))
    func conversionKinds(granted: LockMode, requested: LockMode) {
        let middle = (granted == .pr && requested == .cw) || (granted == .cw && requested == .pr)
        #expect(LockMode.isMiddleConversion(granted: granted, requested: requested) == middle)
        #expect(LockMode.isDownConversion(granted: granted, requested: requested) == (!middle && requested.rawValue < granted.rawValue))
    }

    @Test func statusFlagValues() {
        #expect(LockStatusFlags.demoted.rawValue == 0x01)
        #expect(LockStatusFlags.valueNotValid.rawValue == 0x02)
        #expect(LockStatusFlags.alternateMode.rawValue == 0x04)
        #expect("\([LockStatusFlags.demoted, .alternateMode] as LockStatusFlags)" == "DEMOTED|ALTMODE")
    }

    @Test func resultWireValues() {
        let expected: [(LockResult, Int32)] = [
            (.granted, 0), (.queued, -115), (.wouldBlock, -11), (.deadlock, -35), (.busy, -16),
            (.notFound, -2), (.invalid, -22), (.cancelled, -0x10001), (.unlocked, -0x10002),
        ]
        for (result, value) in expected { #expect(result.wireValue == value) }
    }
}
