import Foundation
import NIOCore

/// The control-socket requests of the local agent (recovery.md §5.4), one line each:
///
///     ls-stop LS                              -> {"ok":true,"lockspace":"LS","result":"stopped"}
///     ls-start LS ID[:WEIGHT]... [renew=ID,...] -> {"ok":true,"lockspace":"LS","result":"started (recovery seq N)"}
///
/// `ls-stop` answers when the lockspace is stopped; `ls-start` once the recovery is under way
/// (`status` shows its phase). Errors answer `{"error":"..."}`.
public enum LockspaceControlRequests {
    /// A parsed request.
    public enum Request: Equatable, Sendable {
        case stop(lockspace: String)
        case start(lockspace: String, members: [Member], renewed: Set<UInt32>)
    }

    public struct Member: Equatable, Sendable {
        public var id: UInt32
        public var weight: Int
        public init(id: UInt32, weight: Int) {
            self.id = id
            self.weight = weight
        }
    }

    /// nil: not one of these requests; `.failure`: one of them, malformed.
    public static func parse(_ line: String) -> Result<Request, LockspaceControlError>? {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let verb = words.first, verb == "ls-stop" || verb == "ls-start" else { return nil }
        guard words.count >= 2 else { return .failure(LockspaceControlError("\(verb): missing lockspace name")) }
        let name = words[1]
        if verb == "ls-stop" {
            guard words.count == 2 else { return .failure(LockspaceControlError("ls-stop takes one lockspace name")) }
            return .success(.stop(lockspace: name))
        }
        var members: [Member] = []
        var renewed = Set<UInt32>()
        for word in words.dropFirst(2) {
            if word.hasPrefix("renew=") {
                for part in word.dropFirst(6).split(separator: ",") {
                    guard let id = UInt32(part) else { return .failure(LockspaceControlError("bad node id in \(word)")) }
                    renewed.insert(id)
                }
                continue
            }
            let parts = word.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2, let id = UInt32(parts[0]), id != 0 else {
                return .failure(LockspaceControlError("bad member \(word): expected ID or ID:WEIGHT"))
            }
            var weight = 1
            if parts.count == 2 {
                guard let w = Int(parts[1]), w >= 0 else {
                    return .failure(LockspaceControlError("bad weight in \(word): expected an integer >= 0"))
                }
                weight = w
            }
            members.append(Member(id: id, weight: weight))
        }
        guard !members.isEmpty else { return .failure(LockspaceControlError("ls-start \(name): no members")) }
        return .success(.start(lockspace: name, members: members, renewed: renewed))
    }

    /// The JSON answer line (without newline) for `line`, or nil if `line` is not ours.
    public static func answer(_ line: String, node: PeerNode) -> EventLoopFuture<String>? {
        guard let parsed = parse(line) else { return nil }
        let loop = node.eventLoop
        switch parsed {
        case .failure(let error):
            return loop.makeSucceededFuture(json(["error": error.description]))
        case .success(let request):
            return loop.makeFutureWithTask {
                do {
                    switch request {
                    case .stop(let name):
                        try await node.stop(lockspace: name)
                        return json(["ok": true, "lockspace": name, "result": "stopped"])
                    case .start(let name, let members, let renewed):
                        let outcome = try await node.start(lockspace: name, members: members.map { ($0.id, $0.weight) },
                                                           renewed: renewed)
                        switch outcome {
                        case .started:
                            return json(["ok": true, "lockspace": name, "result": outcome.description])
                        case .ignoredRunning:
                            return json(["error": "\(name): \(outcome.description)"])
                        }
                    }
                } catch {
                    return json(["error": "\(error)"])
                }
            }
        }
    }

    static func json(_ object: [String: Any]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else {
            return "{\"error\":\"encoding\"}"
        }
        return String(decoding: data, as: UTF8.self)
    }
}

public struct LockspaceControlError: Error, Equatable, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
