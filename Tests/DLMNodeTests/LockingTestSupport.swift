import DLMTransport
import Testing

@testable import DLMNode

/// One step of a scripted scenario on a single resource.
enum LockStep: Sendable, CustomStringConvertible {
    case request(UInt32, LockMode, LockFlags = [], bast: Bool = true)
    case convert(UInt32, LockMode, LockFlags = [])
    case unlock(UInt32, LockFlags = [])
    case cancel(UInt32)

    var description: String {
        switch self {
        case .request(let id, let mode, let flags, _): return "req \(id) \(mode) \(flags.rawValue)"
        case .convert(let id, let mode, let flags): return "cvt \(id) \(mode) \(flags.rawValue)"
        case .unlock(let id, _): return "unlock \(id)"
        case .cancel(let id): return "cancel \(id)"
        }
    }
}

extension Resource {
    static func testResource(lvbLength: Int = 8) -> Resource {
        Resource(name: Array("res".utf8), lvbLength: lvbLength)
    }

    @discardableResult
    mutating func run(_ step: LockStep, lvb: [UInt8]? = nil) -> LockOutcome {
        switch step {
        case .request(let id, let mode, let flags, let bast):
            return request(LockEntry(id: id, mode: mode, flags: flags, lvb: lvb, wantsBlocking: bast))
        case .convert(let id, let mode, let flags):
            return convert(id, to: mode, flags: flags, lvb: lvb)
        case .unlock(let id, let flags):
            return unlock(id, flags: flags, lvb: lvb)
        case .cancel(let id):
            return cancel(id)
        }
    }

    mutating func run(_ steps: [LockStep]) {
        for step in steps { run(step) }
    }

    func ids(_ status: LockStatus) -> [UInt32] { queue(status).map(\.id) }
}

extension LockOutcome {
    var grants: [UInt32] {
        allEffects.compactMap { if case .grant(let lock) = $0 { return lock.id } else { return nil } }
    }
    var basts: [String] {
        allEffects.compactMap {
            if case .blockingAST(let lock, let mode) = $0 { return "\(lock.id):\(mode)" } else { return nil }
        }
    }
}
