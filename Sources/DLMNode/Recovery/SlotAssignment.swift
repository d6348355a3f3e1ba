import DLMTransport

/// A member as recovery tracks it (`struct dlm_member`).
public struct RecoveryMemberState: Hashable, Sendable {
    public var nodeID: UInt32
    public var weight: Int
    /// -1 = unknown / no slots support, 0 = none yet, else the slot.
    public var slot: Int
    /// The slot seen in earlier recoveries (sanity check: it must never change).
    public var slotPrev: Int
    public var generation: UInt32

    public init(nodeID: UInt32, weight: Int) {
        self.nodeID = nodeID
        self.weight = weight
        slot = -1
        slotPrev = 0
        generation = 0
    }
}

/// Slot assignment and adoption (recovery.md §3.6; kernel `dlm_slots_assign` / `dlm_slots_copy_in`).
public enum SlotAssignment {
    /// Most slots one STATUS_REPLY can carry: (4072 − 48 − 32) / 16.
    public static let maxSlots = (WireLimits.maxAppMessageSize - WireLimits.rcomFixedSize
        - WireLimits.rcomConfigSize) / WireLimits.rcomSlotSize

    public struct Assigned: Hashable, Sendable {
        /// Occupied slots in ascending slot order.
        public var slots: [RcomSlot]
        public var generation: UInt32
        public var ourSlot: UInt16

        public init(slots: [RcomSlot], generation: UInt32, ourSlot: UInt16) {
            self.slots = slots
            self.generation = generation
            self.ourSlot = ourSlot
        }
    }

    public enum Refusal: Error, Hashable, Sendable, CustomStringConvertible {
        case noSlotsSupport(UInt32)
        case slotChanged(UInt32, from: Int, to: Int)
        case invalidSlot(UInt32, Int)
        case tooMany(Int)

        public var description: String {
            switch self {
            case .noSlotsSupport(let n): return "nodeid \(n) does not support slots"
            case .slotChanged(let n, let a, let b): return "nodeid \(n) slot changed \(a) \(b)"
            case .invalidSlot(let n, let s): return "invalid slot number \(s) of nodeid \(n)"
            case .tooMany(let n): return "num_slots \(n) exceeds max_slots \(maxSlots)"
            }
        }
    }

    /// The low node, after every member reported NODES: keep assigned slots, give the lowest free
    /// ones to members without, generation = max + 1. `members` carry what their replies said
    /// (our own entry is overwritten with `ourSlot`/`ourGeneration`); updated in place.
    public static func assign(members: inout [RecoveryMemberState], ourNodeID: UInt32, ourSlot: UInt16,
                              ourGeneration: UInt32) -> Result<Assigned, Refusal> {
        if let i = members.firstIndex(where: { $0.nodeID == ourNodeID }) {
            members[i].slot = Int(ourSlot)
            members[i].generation = ourGeneration
        }
        var gen: UInt32 = 0
        var need = 0
        var maxSlot = 0
        for i in members.indices {
            let m = members[i]
            gen = max(gen, m.generation)
            if m.slot == -1 { return .failure(.noSlotsSupport(m.nodeID)) }
            if m.slot == 0 { need += 1 }
            maxSlot = max(maxSlot, m.slot)
            if m.slotPrev != 0 && m.slot != 0 && m.slotPrev != m.slot {
                return .failure(.slotChanged(m.nodeID, from: m.slotPrev, to: m.slot))
            }
            members[i].slotPrev = m.slot
        }
        let size = maxSlot + need
        var table = [UInt32](repeating: 0, count: size)
        var count = 0
        for m in members where m.slot != 0 {
            guard m.slot <= size else { return .failure(.invalidSlot(m.nodeID, m.slot)) }
            table[m.slot - 1] = m.nodeID
            count += 1
        }
        var mySlot = ourSlot
        for i in members.indices where members[i].slot == 0 {
            guard let free = table.firstIndex(of: 0) else { return .failure(.invalidSlot(members[i].nodeID, 0)) }
            members[i].slot = free + 1
            members[i].slotPrev = free + 1
            table[free] = members[i].nodeID
            count += 1
            if mySlot == 0 && members[i].nodeID == ourNodeID { mySlot = UInt16(free + 1) }
        }
        gen &+= 1
        guard count <= maxSlots else { return .failure(.tooMany(count)) }
        let slots = table.enumerated().compactMap { i, node in
            node == 0 ? nil : RcomSlot(nodeID: node, slot: UInt16(i + 1))
        }
        return .success(Assigned(slots: slots, generation: gen, ourSlot: mySlot))
    }

    /// A non-low node, from the low node's STATUS_REPLY with NODES_ALL: each member's slot from the
    /// list. Returns our slot or why the slots are unusable (the kernel ignores that error too).
    public static func adopt(slots: [RcomSlot], members: inout [RecoveryMemberState], ourNodeID: UInt32,
                             ourSlot: UInt16) -> Result<UInt16, Refusal> {
        var mySlot = ourSlot
        for i in members.indices {
            if let s = slots.first(where: { $0.nodeID == members[i].nodeID }) {
                members[i].slot = Int(s.slot)
                members[i].slotPrev = Int(s.slot)
            }
            if members[i].nodeID == ourNodeID {
                if mySlot != 0 && Int(mySlot) != members[i].slot {
                    return .failure(.slotChanged(ourNodeID, from: Int(mySlot), to: members[i].slot))
                }
                if mySlot == 0 && members[i].slot > 0 { mySlot = UInt16(members[i].slot) }
            }
            if members[i].slot <= 0 { return .failure(.invalidSlot(members[i].nodeID, members[i].slot)) }
        }
        return .success(mySlot)
    }
}
