import DLMTransport
import NIOCore

/// The sans-IO recovery machine of one lockspace, as the kernel's `dlm_recoverd` runs it
/// (recovery.md §3–§4, kernel `recoverd.c`, `recover.c`, `rcom.c`, `member.c`, `dir.c`).
///
/// A value type with no IO and no clock: feed it `RecoveryEvent`s with the current time and the
/// lock layer's state (`RecoveryLockState`, passed `inout`), and carry out the returned
/// `RecoveryAction`s in order. The requester side (the recovery thread: STATUS pings and barrier
/// polls, NAMES paging, RCOM_LOOKUP, RCOM_LOCK) and the replier side (answering STATUS, NAMES,
/// LOOKUP, LOCK in every state) live in the same value, as in the kernel they share the lockspace.
///
/// Where we differ from 6.1 (a kernel peer cannot tell, or it is strictly safer):
/// * A start while a recovery is still running (no stop in between; a CM mistake) aborts the
///   running pass, resets the status bits and starts over at once. The kernel lets the old pass
///   run on (its replies are then filtered by seq) and picks the new start up afterwards.
/// * A member list without our own nodeid fails the recovery (-EINVAL); the kernel does not check.
/// * A negative `rc_result` in RCOM_LOOKUP_REPLY fails the recovery (the directory node refused
///   the name: member lists differ); 6.1 stores it as a nodeid (open question 4 of the spec).
/// * As NAMES responder, a one-byte last name resumes after that name; 6.1 restarts the listing
///   for any request of ≤ 1 byte (a page ending on a 1-byte name loops forever there).
/// * The NAMES responder pages a snapshot taken when NODES is set (like the newest kernels),
///   not the live root list (6.1); the two hold the same names during a pass.
public struct LockspaceRecovery: Sendable {
    public let config: RecoveryConfig

    public private(set) var phase: RecoveryPhase = .new
    /// `LSFL_RUNNING`: normal locking enabled.
    public private(set) var isRunning = false
    /// `LSFL_RECOVER_STOP`: only RCOM_STATUS is processed.
    public private(set) var isStopped = true
    /// `ls_recover_seq`: +1 on every stop and every start.
    public private(set) var recoverSeq: UInt64
    /// `ls_recover_status`.
    public private(set) var status: RecoveryStatus = []
    /// `ls_rcom_seq`: `rc_id` of the latest synchronous request.
    public private(set) var rcomID: UInt64
    /// `ls_nodes`, ascending nodeid.
    public private(set) var members: [RecoveryMemberState] = []
    /// `ls_nodes_gone`: removed by this (or an aborted earlier) recovery, until a DONE barrier passes.
    public private(set) var nodesGone: [UInt32] = []
    /// `ls_slot` (never reset).
    public private(set) var ourSlot: UInt16 = 0
    /// `ls_generation`.
    public private(set) var generation: UInt32 = 0
    /// `ls_slots`: the slot table, on the low node after it assigned slots (cleared by stop).
    public private(set) var slots: [RcomSlot] = []
    public private(set) var placement: DirectoryPlacement
    public private(set) var counters = RecoveryCounters()
    /// Completed recoveries (the first one completes the join).
    public private(set) var completedRecoveries = 0
    /// DLM_MSGs held while locking is stopped, in arrival order.
    public private(set) var requestQueue: [(message: DLMMessage, from: UInt32)] = []

    var pass: Pass?
    var scheduled: NIODeadline?

    public init(config: RecoveryConfig) {
        self.config = config
        recoverSeq = config.initialRecoverSeq
        rcomID = config.initialRcomID
        placement = DirectoryPlacement(members: [], ourNodeID: config.ourNodeID)
    }

    // MARK: - Public view

    public var ourNodeID: UInt32 { config.ourNodeID }
    /// `ls_low_nodeid`: the coordinator of the barriers.
    public var lowNodeID: UInt32? { members.first?.nodeID }
    public var isLowNode: Bool { lowNodeID == config.ourNodeID }
    public var memberIDs: [UInt32] { members.map(\.nodeID) }
    /// The recovery in progress (`rv->seq`), if any.
    public var recoveringSeq: UInt64? { pass?.seq }
    /// The node the recovery waits for a STATUS/NAMES reply from (sysfs `recover_nodeid`).
    public var waitingFor: UInt32? { pass?.sync?.to }
    /// How far the recovery in progress has come (cheap: no per-lock work).
    public var progress: RecoveryProgress {
        RecoveryProgress(phase: phase, directoryNames: pass?.dirNames ?? 0, lookupsOutstanding: pass?.lookups.count ?? 0,
                         locksOutstanding: pass?.pendingLocks.count ?? 0, locksIn: pass?.locksIn ?? 0)
    }

    /// The "not ready" STATUS_REPLY (`dlm_send_ls_not_ready`) for an RCOM_STATUS naming a lockspace we
    /// do not have (yet): `rc_result` -ESRCH, `rf_lvblen` 0xFFFFFFFF. 6.1 sends it sequenced.
    public static func notReadyReply(to request: DLMRcom, ourNodeID: UInt32,
                                     version: ProtocolVersion = .v3_2) -> DLMRcom {
        var rc = DLMRcom(
            header: DLMHeader(version: version, word: request.header.lockspace, nodeID: ourNodeID, length: 0,
                              command: .rcom),
            type: RcomType.statusReply.rawValue, result: errnoESRCH, id: request.id, seq: 0,
            seqReply: request.seq,
            payload: .statusReply(RcomConfig(lvblen: RcomConfig.notReadyLvblen, lsflags: 0), slots: []))
        rc.header.length = UInt16(rc.encodedLength)
        return rc
    }

    // MARK: - Entry points

    public mutating func handle<L: RecoveryLockState>(_ event: RecoveryEvent, now: NIODeadline,
                                                      locks: inout L) -> [RecoveryAction] {
        var out: [RecoveryAction] = []
        handle(event, now: now, locks: &locks, into: &out)
        return out
    }

    public mutating func handle<L: RecoveryLockState>(_ event: RecoveryEvent, now: NIODeadline, locks: inout L,
                                                      into out: inout [RecoveryAction]) {
        switch event {
        case .stop:
            stop(now, &locks, &out)
        case .start(let list):
            start(list, now, &locks, &out)
        case .received(let rc, let from):
            receive(rc, from: from, now, &locks, &out)
        case .lockMessage(let message, let from):
            lockMessage(message, from: from, &out)
        case .timerFired:
            timerFired(now, &out)
        }
        run(now, &locks, &out)
        updateTimer(&out)
    }

    // MARK: - Stop and start (§3.2, §3.3)

    mutating func stop<L: RecoveryLockState>(_ now: NIODeadline, _ locks: inout L, _ out: inout [RecoveryAction]) {
        let wasRunning = isRunning
        isStopped = true
        isRunning = false
        recoverSeq &+= 1
        abortPass(now, &locks, &out)
        slots = []
        setStatus([], &out, replace: true)
        phase = .stopped
        out.append(.log(.info, "dlm_ls_stop seq \(recoverSeq)\(wasRunning ? "" : " (was not running)")"))
    }

    mutating func start<L: RecoveryLockState>(_ list: [RecoveryMember], _ now: NIODeadline, _ locks: inout L,
                                              _ out: inout [RecoveryAction]) {
        if isRunning {
            out.append(.log(.warning, "start ignored: lockspace running"))
            return
        }
        if list.isEmpty {
            out.append(.log(.warning, "start ignored: zero members_count"))
            return
        }
        recoverSeq &+= 1
        if pass != nil {
            // Start without stop during a recovery: treat it as stop + start (see the type comment).
            abortPass(now, &locks, &out)
            setStatus([], &out, replace: true)
        }
        isStopped = false
        beginPass(list, now, &locks, &out)
    }

    mutating func abortPass<L: RecoveryLockState>(_ now: NIODeadline, _ locks: inout L, _ out: inout [RecoveryAction]) {
        guard let p = pass else { return }
        locks.recoveryEnd(context(seq: p.seq))
        endPass()
        counters.interrupted += 1
        out.append(.log(.info, "dlm_recover \(p.seq) error -4: interrupted and should be queued to run again"))
        out.append(.recoveryInterrupted(seq: p.seq))
    }

    /// R0–R2: members, placement, root list.
    mutating func beginPass<L: RecoveryLockState>(_ list: [RecoveryMember], _ now: NIODeadline, _ locks: inout L,
                                                  _ out: inout [RecoveryAction]) {
        let seq = recoverSeq
        out.append(.log(.info, "dlm_recover \(seq)"))
        var neg = nodesGone.count
        var byID: [UInt32: RecoveryMember] = [:]
        for m in list { byID[m.nodeID] = m }
        var removed: [UInt32] = []
        for m in members {
            guard let entry = byID[m.nodeID] else {
                out.append(.log(.info, "remove member \(m.nodeID)"))
                removed.append(m.nodeID)
                continue
            }
            if entry.renewed {
                out.append(.log(.info, "remove member \(m.nodeID) (renewed)"))
                removed.append(m.nodeID)
            }
        }
        members.removeAll { removed.contains($0.nodeID) }
        nodesGone.append(contentsOf: removed)
        neg += removed.count
        var added: [UInt32] = []
        let present = Set(members.map(\.nodeID))
        for m in byID.values.sorted(by: { $0.nodeID < $1.nodeID }) where !present.contains(m.nodeID) {
            out.append(.log(.info, "add member \(m.nodeID)"))
            members.append(RecoveryMemberState(nodeID: m.nodeID, weight: m.weight))
            added.append(m.nodeID)
        }
        members.sort { $0.nodeID < $1.nodeID }
        placement = DirectoryPlacement(members: members.map { ($0.nodeID, $0.weight) }, ourNodeID: config.ourNodeID)
        if !added.isEmpty || !removed.isEmpty {
            out.append(.membersChanged(added: added, removed: removed))
        }
        pass = Pass(seq: seq, startedAt: now, neg: neg)
        phase = .members
        guard present.contains(config.ourNodeID) || added.contains(config.ourNodeID) else {
            fail(.notAMember, &out)
            return
        }
        locks.recoveryBegin(context(seq: seq))
    }

    // MARK: - The recovery thread

    /// Runs the recovery as far as it can go without waiting for a message or the clock.
    mutating func run<L: RecoveryLockState>(_ now: NIODeadline, _ locks: inout L, _ out: inout [RecoveryAction]) {
        // The pass is read field by field, never copied whole: see `lookupReply`.
        while pass != nil {
            if pass!.sync != nil { return }
            if let until = pass!.sleepUntil {
                if now < until { return }
                pass!.sleepUntil = nil
            }
            switch pass!.step {
            case .ping(let i):
                guard i < members.count else {
                    out.append(.log(.info, "dlm_recover_members \(members.count) nodes"))
                    // R3: NODES, with the responder's NAMES snapshot taken before it is visible.
                    buildNamesSnapshot(locks)
                    for j in members.indices {
                        members[j].slot = -1
                        members[j].generation = 0
                    }
                    setStatus(.nodes, &out)
                    enterBarrier(.nodes)
                    continue
                }
                let node = members[i].nodeID
                if node == config.ourNodeID {
                    pass!.step = .ping(i + 1)
                    continue
                }
                sendSync(.status(flags: 0), to: node, now, &out)
                return

            case .barrier(let bit, let i):
                if isLowNode {
                    guard i < members.count else {
                        if bit == .nodes {
                            assignSlots(&out)
                        } else {
                            setStatus(bit.all, &out)
                        }
                        afterBarrier(bit, now, &locks, &out)
                        continue
                    }
                    let node = members[i].nodeID
                    if node == config.ourNodeID {
                        // dlm_rcom_status to ourselves: answered locally, our bit is set.
                        pass!.step = .barrier(bit, i + 1)
                        pass!.delayMs = 0
                        continue
                    }
                    sendSync(.status(flags: 0), to: node, now, &out)
                } else {
                    let flags = bit == .nodes ? StatusRequestFlags.needSlots : 0
                    sendSync(.status(flags: flags), to: lowNodeID ?? config.ourNodeID, now, &out)
                }
                return

            case .directory(let i, let last):
                guard !config.nodir, i < members.count else {
                    setStatus(.dir, &out)
                    out.append(.log(.info, "dlm_recover_directory \(pass!.dirNames) in \(pass!.dirAdded) new"))
                    enterBarrier(.dir)
                    continue
                }
                let node = members[i].nodeID
                if node == config.ourNodeID {
                    pass!.step = .directory(i + 1, last: [])
                    continue
                }
                sendSync(.names(last: last), to: node, now, &out)
                return

            case .masters, .locks:
                return
            }
        }
    }

    mutating func enterBarrier(_ bit: RecoveryStatus) {
        pass!.step = .barrier(bit, 0)
        pass!.delayMs = 0
        switch bit {
        case .nodes: phase = .nodesBarrier
        case .dir: phase = .dirBarrier
        case .locks: phase = .locksBarrier
        default: phase = .doneBarrier
        }
    }

    /// What follows barrier `bit` (the X_ALL bit has been set or seen).
    mutating func afterBarrier<L: RecoveryLockState>(_ bit: RecoveryStatus, _ now: NIODeadline, _ locks: inout L,
                                                     _ out: inout [RecoveryAction]) {
        guard let seq = pass?.seq, let neg = pass?.neg else { return }
        let ctx = context(seq: seq)
        switch bit {
        case .nodes:
            pass!.step = .directory(0, last: [])
            phase = .directory
        case .dir:
            // R6, then R7.
            locks.recoverWaitersPre(ctx)
            if neg > 0 || config.nodir {
                let purged = locks.purgeDepartedLocks(ctx)
                out.append(.log(.info, "dlm_recover_purge \(purged) locks for \(nodesGone.count) nodes"))
                let names = locks.recoverMasters(ctx)
                phase = .masters
                pass!.step = .masters
                var sent = 0
                for name in names {
                    let dir = placement.directoryNode(of: name)
                    if dir == config.ourNodeID {
                        let master = locks.directoryRecoverMaster(name: name, requester: config.ourNodeID, ctx)
                        locks.setNewMaster(name: name, master: UInt32(bitPattern: master), ctx)
                        continue
                    }
                    let id = pass!.nextLookupID
                    pass!.nextLookupID += 1
                    pass!.lookups[id] = name
                    send(makeRcom(.lookup, id: id, payload: .lookup(name: ByteBuffer(bytes: name))), to: dir, &out)
                    sent += 1
                }
                out.append(.log(.info, "dlm_recover_masters \(sent) lookups"))
                if pass!.lookups.isEmpty {
                    sendLocks(&locks, &out)
                }
            } else {
                setStatus(.locks, &out)
                enterBarrier(.locks)
            }
        case .locks:
            if neg > 0 || config.nodir {
                out.append(.log(.info, "dlm_recover_locks \(pass!.locksIn) in"))
                locks.finishMasterRecovery(ctx)
            }
            locks.recoveryEnd(ctx)
            purgeRequestQueue(&out)
            setStatus(.done, &out)
            enterBarrier(.done)
        default:
            finish(now, &out)
        }
    }

    /// R7.3: send our locks on resources with a new master.
    mutating func sendLocks<L: RecoveryLockState>(_ locks: inout L, _ out: inout [RecoveryAction]) {
        guard let seq = pass?.seq else { return }
        let groups = locks.locksToRecover(context(seq: seq))
        phase = .locks
        pass!.step = .locks
        var count = 0
        for g in groups {
            pass!.nextLockToken += 1
            let token = pass!.nextLockToken
            for copy in g.locks {
                var lock = copy.lock
                lock.remid = 0
                lock.result = 0
                let lvb = copy.lvb.map { ByteBuffer(bytes: $0) } ?? ByteBuffer()
                let rc = makeRcom(.lock, id: token, payload: .lock(lock, lvb: lvb))
                pass!.pendingLocks[lock.lkid] = PendingLock(name: g.name, to: g.master, message: rc)
                send(rc, to: g.master, &out)
                count += 1
            }
        }
        out.append(.log(.info, "dlm_recover_locks \(count) out"))
        if pass!.pendingLocks.isEmpty {
            setStatus(.locks, &out)
            enterBarrier(.locks)
        }
    }

    /// R8: drop held messages from departed nodes and directory traffic (everything in nodir mode).
    mutating func purgeRequestQueue(_ out: inout [RecoveryAction]) {
        let gone = Set(nodesGone)
        let before = requestQueue.count
        requestQueue.removeAll { entry in
            if config.nodir || gone.contains(entry.from) { return true }
            switch MessageType(rawValue: entry.message.type) {
            case .remove, .lookup, .lookupReply: return true
            default: return false
            }
        }
        let purged = before - requestQueue.count
        if purged > 0 {
            counters.lockMessagesPurged += purged
            out.append(.log(.info, "dlm_purge_requestqueue \(purged) of \(before)"))
        }
    }

    /// R10–R14.
    mutating func finish(_ now: NIODeadline, _ out: inout [RecoveryAction]) {
        guard let p = pass else { return }
        let departed = nodesGone
        nodesGone = []
        endPass()
        isRunning = true
        phase = .running
        completedRecoveries += 1
        counters.completed += 1
        out.append(.lockingEnabled)
        let queued = requestQueue
        requestQueue = []
        let ids = Set(memberIDs)
        for (message, from) in queued {
            if ids.contains(from) {
                out.append(.deliverLockMessage(message, from: from))
            } else {
                counters.lockMessagesDropped += 1
                out.append(.log(.debug, "receive \(MessageType.name(message.type)) from non-member \(from)"))
            }
        }
        out.append(.resendInFlightOperations)
        out.append(.grantPass)
        let elapsed = now - p.startedAt
        out.append(.log(.info, "dlm_recover \(p.seq) generation \(generation) done: "
            + "\(elapsed.nanoseconds / 1_000_000) ms"))
        out.append(.recoveryDone(RecoveryReport(
            seq: p.seq, generation: generation, ourSlot: ourSlot, members: memberIDs,
            slots: members.filter { $0.slot > 0 }.map { RcomSlot(nodeID: $0.nodeID, slot: UInt16($0.slot)) },
            departed: departed, elapsed: elapsed, joined: completedRecoveries == 1)))
    }

    mutating func fail(_ failure: RecoveryFailure, _ out: inout [RecoveryAction]) {
        endPass()
        phase = .failed(failure)
        counters.failed += 1
        out.append(.log(.warning, "\(failure)"))
        out.append(.recoveryFailed(failure))
    }

    // MARK: - Slots (§3.6)

    mutating func assignSlots(_ out: inout [RecoveryAction]) {
        switch SlotAssignment.assign(members: &members, ourNodeID: config.ourNodeID, ourSlot: ourSlot,
                                     ourGeneration: generation) {
        case .success(let a):
            slots = a.slots
            generation = a.generation
            ourSlot = a.ourSlot
            out.append(.log(.info, "generation \(a.generation) slots \(a.slots.count) "
                + a.slots.map { "\($0.slot):\($0.nodeID)" }.joined(separator: " ")))
        case .failure(let why):
            out.append(.log(.warning, "dlm_slots_assign: \(why); no slots"))
        }
        setStatus(.nodesAll, &out)
    }

    mutating func adoptSlots(from reply: DLMRcom, _ out: inout [RecoveryAction]) {
        guard case .statusReply(let cfg, let list) = reply.payload else { return }
        if cfg.generation <= generation {
            out.append(.log(.warning, "dlm_slots_copy_in gen \(cfg.generation) old \(generation)"))
        }
        generation = cfg.generation
        guard !list.isEmpty else { return }
        switch SlotAssignment.adopt(slots: list, members: &members, ourNodeID: config.ourNodeID, ourSlot: ourSlot) {
        case .success(let mine):
            ourSlot = mine
            out.append(.log(.info, "generation \(generation) slots \(list.count) "
                + list.map { "\($0.slot):\($0.nodeID)" }.joined(separator: " ")))
        case .failure(let why):
            if let me = members.first(where: { $0.nodeID == config.ourNodeID }), ourSlot == 0, me.slot > 0 {
                ourSlot = UInt16(me.slot)
            }
            out.append(.log(.warning, "dlm_slots_copy_in: \(why)"))
        }
    }

    // MARK: - Synchronous requests (§4.3)

    mutating func sendSync(_ kind: SyncKind, to node: UInt32, _ now: NIODeadline, _ out: inout [RecoveryAction]) {
        rcomID &+= 1
        let rc: DLMRcom
        switch kind {
        case .status(let flags):
            rc = makeRcom(.status, id: rcomID, payload: .status(RcomStatus(flags: flags)))
        case .names(let last):
            rc = makeRcom(.names, id: rcomID, payload: .names(lastName: ByteBuffer(bytes: last)))
        }
        pass!.sync = SyncRequest(to: node, id: rcomID, deadline: now + config.recoverTimer, kind: kind)
        send(rc, to: node, &out)
    }

    mutating func timerFired(_ now: NIODeadline, _ out: inout [RecoveryAction]) {
        guard let s = pass?.sync, now >= s.deadline else { return }
        counters.timeouts += 1
        out.append(.log(.info, "dlm_wait_function timed out waiting for nodeid \(s.to); resending"))
        sendSync(s.kind, to: s.to, now, &out)
    }

    /// Between two polls of a barrier: 20 ms, +20 ms per poll, at most 1 s.
    mutating func sleep(_ now: NIODeadline) {
        if pass!.delayMs < 1000 { pass!.delayMs += 20 }
        pass!.sleepUntil = now + .milliseconds(pass!.delayMs)
    }

    /// A STATUS_REPLY or NAMES_REPLY that matched the outstanding request.
    mutating func syncReply<L: RecoveryLockState>(_ rc: DLMRcom, from node: UInt32, request: SyncRequest,
                                                  _ now: NIODeadline, _ locks: inout L, _ out: inout [RecoveryAction]) {
        guard let step = pass?.step, let seq = pass?.seq else { return }
        switch request.kind {
        case .status:
            guard case .statusReply(let cfg, _) = rc.payload else { return }
            var remote: RecoveryStatus
            if rc.result == errnoESRCH {
                out.append(.log(.debug, "remote node \(node) not ready"))
                remote = []
            } else {
                if rc.header.version.major != 3 {
                    fail(.versionMismatch(node: node, version: rc.header.version.rawValue), &out)
                    return
                }
                if cfg.lvblen != config.lvbLength || cfg.lsflags != config.lockspaceFlags {
                    fail(.configMismatch(node: node, ourLVBLength: config.lvbLength, ourFlags: config.lockspaceFlags,
                                         theirLVBLength: cfg.lvblen, theirFlags: cfg.lsflags), &out)
                    return
                }
                remote = RecoveryStatus(rawValue: UInt32(bitPattern: rc.result))
            }
            switch step {
            case .ping(let i):
                pass!.step = .ping(i + 1)
            case .barrier(let bit, let i):
                if isLowNode {
                    if bit == .nodes, let m = members.firstIndex(where: { $0.nodeID == node }),
                       rc.header.version.minor >= 1 {
                        members[m].slot = Int(cfg.ourSlot)
                        members[m].generation = cfg.generation
                    }
                    if remote.contains(bit) {
                        pass!.step = .barrier(bit, i + 1)
                        pass!.delayMs = 0
                    } else {
                        sleep(now)
                    }
                } else if remote.contains(bit.all) {
                    if bit == .nodes { adoptSlots(from: rc, &out) }
                    afterBarrier(bit, now, &locks, &out)
                } else {
                    sleep(now)
                }
            case .directory, .masters, .locks:
                break
            }
        case .names(let last):
            guard case .namesReply(let list) = rc.payload, case .directory(let i, _) = step else { return }
            let ctx = context(seq: seq)
            var newLast = last
            for nameBuffer in list.names {
                let name = Array(nameBuffer.readableBytesView)
                let dir = placement.directoryNode(of: name)
                guard dir == config.ourNodeID else {
                    fail(.directoryMismatch(node: node, name: name, directoryNode: dir), &out)
                    return
                }
                switch locks.directoryAdd(name: name, master: node, ctx) {
                case .added: pass!.dirAdded += 1
                case .matched: break
                case .changedMaster(let old):
                    out.append(.log(.info, "recover_dir \(printableName(name)) master \(old) -> \(node)"))
                case .conflictKeptOurs:
                    out.append(.log(.warning, "recover_dir lookup \(printableName(name)) nodeid \(node) "
                        + "claims a resource we master"))
                }
                pass!.dirNames += 1
                newLast = name
            }
            switch list.end {
            case .endOfList: pass!.step = .directory(i + 1, last: [])
            case .endOfBlock: pass!.step = .directory(i, last: newLast)
            }
        }
    }

    // MARK: - Receiving RCOMs (§4.2)

    mutating func receive<L: RecoveryLockState>(_ rc: DLMRcom, from node: UInt32, _ now: NIODeadline,
                                                _ locks: inout L, _ out: inout [RecoveryAction]) {
        counters.received += 1
        guard let type = rc.rcomType else {
            out.append(.log(.warning, "receive_rcom bad type \(rc.type) from \(node)"))
            return
        }
        if isStopped && type != .status {
            ignore("ignoring recovery message \(type) from \(node): stopped", &out)
            return
        }
        switch type {
        case .statusReply, .namesReply, .lookupReply, .lockReply:
            if rc.seqReply != recoverSeq {
                ignore("ignoring old reply \(type) from \(node) seq_reply \(rc.seqReply) expect \(recoverSeq)", &out)
                return
            }
        case .status, .names, .lookup, .lock:
            break
        }
        switch type {
        case .names, .namesReply, .lookup, .lookupReply, .lock, .lockReply:
            guard status.contains(.nodes) else {
                ignore("ignoring \(type) from \(node): status \(status) lacks NODES", &out)
                return
            }
        case .status, .statusReply:
            break
        }
        switch type {
        case .lookup, .lookupReply, .lock, .lockReply:
            guard status.contains(.dir) else {
                ignore("ignoring \(type) from \(node): status \(status) lacks DIR", &out)
                return
            }
        case .status, .statusReply, .names, .namesReply:
            break
        }
        switch type {
        case .status:
            answerStatus(rc, from: node, &out)
        case .names:
            answerNames(rc, from: node, &out)
        case .lookup:
            answerLookup(rc, from: node, &locks, &out)
        case .lock:
            answerLock(rc, from: node, &locks, &out)
        case .statusReply, .namesReply:
            guard let s = pass?.sync, rc.id == s.id, rc.id == rcomID, node == s.to,
                  s.kind.replyType == type else {
                counters.rejectedReplies += 1
                out.append(.log(.debug, "reject reply \(type) from \(node) seq \(hex(rc.id)) expect \(hex(rcomID))"))
                return
            }
            pass!.sync = nil
            syncReply(rc, from: node, request: s, now, &locks, &out)
        case .lookupReply:
            lookupReply(rc, from: node, now, &locks, &out)
        case .lockReply:
            lockReply(rc, from: node, now, &locks, &out)
        }
    }

    mutating func ignore(_ why: String, _ out: inout [RecoveryAction]) {
        counters.ignored += 1
        out.append(.log(.debug, why))
    }

    mutating func answerStatus(_ rc: DLMRcom, from node: UInt32, _ out: inout [RecoveryAction]) {
        guard case .status(let request) = rc.payload else { return }
        let wantSlots = request.flags & StatusRequestFlags.needSlots != 0 && rc.header.version.minor >= 1
        let list = wantSlots ? slots : []
        let cfg = RcomConfig(lvblen: config.lvbLength, lsflags: config.lockspaceFlags, ourSlot: ourSlot,
                             numSlots: UInt16(list.count), generation: generation)
        var reply = makeRcom(.statusReply, id: rc.id, payload: .statusReply(cfg, slots: list))
        reply.result = Int32(bitPattern: status.rawValue)
        reply.seqReply = rc.seq
        send(reply, to: node, &out)
    }

    mutating func answerNames(_ rc: DLMRcom, from node: UInt32, _ out: inout [RecoveryAction]) {
        guard case .names(let lastBuffer) = rc.payload else { return }
        let last = Array(lastBuffer.readableBytesView)
        let index = pass?.names[node] ?? NamesIndex()
        var names: [ByteBuffer] = []
        var end = RcomNameList.End.endOfList
        var start = 0
        if !last.isEmpty {
            if let i = index.position[last] {
                start = i + 1
            } else {
                out.append(.log(.warning, "copy_master_names from \(node) start \(printableName(last)) not found"))
                start = index.names.count
                end = .endOfBlock
            }
        }
        if end == .endOfList {
            var offset = 0
            for name in index.names[start...] {
                if offset + 4 + name.count > config.namesBufferSize {
                    end = .endOfBlock
                    break
                }
                names.append(ByteBuffer(bytes: name))
                offset += 2 + name.count
            }
        }
        var reply = makeRcom(.namesReply, id: rc.id,
                             payload: .namesReply(RcomNameList(names: names, end: end,
                                                               bufferSize: config.namesBufferSize)))
        reply.seqReply = rc.seq
        send(reply, to: node, &out)
    }

    mutating func answerLookup<L: RecoveryLockState>(_ rc: DLMRcom, from node: UInt32, _ locks: inout L,
                                                     _ out: inout [RecoveryAction]) {
        guard case .lookup(let nameBuffer) = rc.payload else { return }
        if rc.id == 0xFFFF_FFFF {
            out.append(.log(.debug, "rcom lookup dump request from \(node) ignored"))
            return
        }
        let name = Array(nameBuffer.readableBytesView)
        let dir = placement.directoryNode(of: name)
        let result: Int32
        if dir != config.ourNodeID {
            out.append(.log(.warning, "dlm_master_lookup from \(node) \(printableName(name)) dir \(dir) "
                + "our \(config.ourNodeID)"))
            result = -22
        } else {
            result = locks.directoryRecoverMaster(name: name, requester: node, context(seq: pass?.seq ?? recoverSeq))
        }
        var reply = makeRcom(.lookupReply, id: rc.id, payload: .lookupReply)
        reply.result = result
        reply.seqReply = rc.seq
        send(reply, to: node, &out)
    }

    mutating func answerLock<L: RecoveryLockState>(_ rc: DLMRcom, from node: UInt32, _ locks: inout L,
                                                   _ out: inout [RecoveryAction]) {
        guard case .lock(var lock, let lvb) = rc.payload else { return }
        let (result, lockID) = locks.recoverMasterCopy(from: node, lock: lock, lvb: Array(lvb.readableBytesView),
                                                       context(seq: pass?.seq ?? recoverSeq))
        if result == 0 { pass?.locksIn += 1 }
        lock.remid = lockID
        lock.result = result
        var reply = makeRcom(.lockReply, id: rc.id, payload: .lockReply(lock, lvb: ByteBuffer()))
        reply.seqReply = rc.seq
        send(reply, to: node, &out)
    }

    mutating func lookupReply<L: RecoveryLockState>(_ rc: DLMRcom, from node: UInt32, _ now: NIODeadline,
                                                    _ locks: inout L, _ out: inout [RecoveryAction]) {
        // No copy of `pass` is held while its tables change (a held copy makes every change copy
        // the whole table: one reply per lock would cost O(locks) each).
        guard let seq = pass?.seq, let name = pass!.lookups.removeValue(forKey: rc.id) else {
            out.append(.log(.warning, "dlm_recover_master_reply no id \(hex(rc.id)) from \(node)"))
            return
        }
        guard rc.result > 0 else {
            fail(.lookupFailed(node: node, name: name, errno: rc.result), &out)
            return
        }
        locks.setNewMaster(name: name, master: UInt32(rc.result), context(seq: seq))
        if pass!.lookups.isEmpty, case .masters = pass!.step {
            sendLocks(&locks, &out)
        }
    }

    mutating func lockReply<L: RecoveryLockState>(_ rc: DLMRcom, from node: UInt32, _ now: NIODeadline,
                                                  _ locks: inout L, _ out: inout [RecoveryAction]) {
        guard case .lockReply(let lock, _) = rc.payload, let pending = pass?.pendingLocks[lock.lkid] else {
            out.append(.log(.warning, "dlm_recover_process_copy no lkid from \(node)"))
            return
        }
        if lock.result == -53 {   // -EBADR: the master does not have the resource yet; resend at once
            counters.lockResends += 1
            send(pending.message, to: pending.to, &out)
            return
        }
        if lock.result != 0 && lock.result != -17 {
            out.append(.log(.warning, "dlm_recover_process_copy \(printableName(pending.name)) lkid \(lock.lkid) "
                + "from \(node) result \(lock.result)"))
        }
        locks.lockRecovered(name: pending.name, lockID: lock.lkid, remoteID: lock.remid, result: lock.result)
        pass!.pendingLocks[lock.lkid] = nil
        if pass!.pendingLocks.isEmpty, case .locks = pass!.step {
            setStatus(.locks, &out)
            enterBarrier(.locks)
        }
    }

    // MARK: - Lock messages and the requestqueue (§4.5)

    /// Whether a lock message from `node` goes straight to the lock manager now: the lockspace
    /// runs, no recovery pass is under way and `node` is a member (what `.lockMessage` would
    /// answer with `.deliverLockMessage`, with nothing else to do).
    public func deliversLockMessage(from node: UInt32) -> Bool {
        isRunning && pass == nil && members.contains { $0.nodeID == node }
    }

    mutating func lockMessage(_ message: DLMMessage, from node: UInt32, _ out: inout [RecoveryAction]) {
        if isRunning {
            if members.contains(where: { $0.nodeID == node }) {
                out.append(.deliverLockMessage(message, from: node))
            } else {
                counters.lockMessagesDropped += 1
                out.append(.log(.debug, "receive \(MessageType.name(message.type)) from non-member \(node)"))
            }
        } else if generation == 0 {
            counters.lockMessagesDropped += 1
            out.append(.log(.debug, "ignore old gen: \(MessageType.name(message.type)) from \(node)"))
        } else {
            counters.lockMessagesHeld += 1
            requestQueue.append((message, node))
        }
    }

    // MARK: - Helpers

    /// The pass is over (done, failed or interrupted): its table copies go to the counters.
    mutating func endPass() {
        guard let p = pass else { return }
        counters.passTableCopies += p.lookups.copies + p.pendingLocks.copies
        pass = nil
    }

    func context(seq: UInt64) -> RecoveryContext {
        RecoveryContext(ourNodeID: config.ourNodeID, seq: seq, members: memberIDs, departed: Set(nodesGone),
                        placement: placement, nodir: config.nodir)
    }

    mutating func buildNamesSnapshot<L: RecoveryLockState>(_ locks: L) {
        var byDir: [UInt32: NamesIndex] = [:]
        for name in locks.masteredResourceNames() {
            let dir = placement.directoryNode(of: name)
            if dir == config.ourNodeID { continue }
            byDir[dir, default: NamesIndex()].append(name)
        }
        pass!.names = byDir
    }

    mutating func setStatus(_ bits: RecoveryStatus, _ out: inout [RecoveryAction], replace: Bool = false) {
        let new = replace ? bits : status.union(bits)
        guard new != status else { return }
        status = new
        out.append(.statusChanged(new))
    }

    func makeRcom(_ type: RcomType, id: UInt64, payload: RcomPayload) -> DLMRcom {
        DLMRcom(header: DLMHeader(version: config.protocolVersion, word: config.globalID, nodeID: config.ourNodeID,
                                  length: 0, command: .rcom),
                type: type.rawValue, id: id, seq: recoverSeq, payload: payload)
    }

    mutating func send(_ rc: DLMRcom, to node: UInt32, _ out: inout [RecoveryAction]) {
        var rc = rc
        rc.header.length = UInt16(truncatingIfNeeded: rc.encodedLength)
        counters.sent += 1
        out.append(.send(rc, to: node))
    }

    mutating func updateTimer(_ out: inout [RecoveryAction]) {
        let wanted = pass?.sync?.deadline ?? pass?.sleepUntil
        guard wanted != scheduled else { return }
        scheduled = wanted
        if let wanted {
            out.append(.scheduleTimer(wanted))
        } else {
            out.append(.cancelTimer)
        }
    }
}

let errnoESRCH: Int32 = -3

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

// MARK: - Pass state

extension LockspaceRecovery {
    enum SyncKind: Hashable, Sendable {
        case status(flags: UInt32)
        case names(last: [UInt8])

        var replyType: RcomType {
            switch self {
            case .status: return .statusReply
            case .names: return .namesReply
            }
        }
    }

    struct SyncRequest: Hashable, Sendable {
        var to: UInt32
        var id: UInt64
        var deadline: NIODeadline
        var kind: SyncKind
    }

    enum Step: Hashable, Sendable {
        /// R1: ping members[i].
        case ping(Int)
        /// A barrier; the low node polls members[i], the others poll the low node.
        case barrier(RecoveryStatus, Int)
        /// R4: NAMES from members[i], continuing after `last`.
        case directory(Int, last: [UInt8])
        /// R7.2: waiting for LOOKUP_REPLYs.
        case masters
        /// R7.3: waiting for LOCK_REPLYs.
        case locks
    }

    struct PendingLock: Sendable {
        var name: [UInt8]
        var to: UInt32
        var message: DLMRcom
    }

    struct NamesIndex: Sendable {
        var names: [[UInt8]] = []
        var position: [[UInt8]: Int] = [:]

        mutating func append(_ name: [UInt8]) {
            position[name] = names.count
            names.append(name)
        }
    }

    struct Pass: Sendable {
        var seq: UInt64
        var startedAt: NIODeadline
        var neg: Int
        var step: Step = .ping(0)
        var sync: SyncRequest?
        var sleepUntil: NIODeadline?
        var delayMs: Int64 = 0
        /// The NAMES responder's snapshot, per asking node.
        var names: [UInt32: NamesIndex] = [:]
        /// Outstanding RCOM_LOOKUPs by rc_id (one per resource whose master departed).
        var lookups = CopyCountedDictionary<UInt64, [UInt8]>()
        var nextLookupID: UInt64 = 1
        var nextLockToken: UInt64 = 0
        /// Outstanding RCOM_LOCKs by our lock id (one per lock on a resource with a new master).
        var pendingLocks = CopyCountedDictionary<UInt32, PendingLock>()
        var dirNames = 0
        var dirAdded = 0
        var locksIn = 0

        init(seq: UInt64, startedAt: NIODeadline, neg: Int) {
            self.seq = seq
            self.startedAt = startedAt
            self.neg = neg
        }
    }
}

/// Counters of one lockspace's recovery machine (for `dlm-peer status`).
public struct RecoveryCounters: Hashable, Sendable {
    public var sent = 0
    public var received = 0
    /// RCOMs ignored by the acceptance filter (stopped, stale seq, missing NODES/DIR).
    public var ignored = 0
    /// STATUS/NAMES replies whose rc_id did not match the outstanding request.
    public var rejectedReplies = 0
    /// STATUS/NAMES resent after `recover_timer`.
    public var timeouts = 0
    /// RCOM_LOCKs resent after -EBADR.
    public var lockResends = 0
    public var completed = 0
    public var interrupted = 0
    public var failed = 0
    public var lockMessagesHeld = 0
    public var lockMessagesDropped = 0
    public var lockMessagesPurged = 0
    /// Copy-on-write copies of a pass's per-lock tables (outstanding LOOKUPs and LOCKs), summed
    /// over the finished passes. Each costs O(outstanding); anything but a few means quadratic work.
    public var passTableCopies = 0
}
