// Independent cross-check with Debian's tshark (Wireshark "dlm3" dissector, port 21064):
// a pcap written with PcapWriter that holds every h_cmd, all 14 m_types and all 8 rc_types,
// bare (3.1 and 3.2) and OPTS-wrapped, is dissected by tshark, and every header, DLM_MSG
// and DLM_RCOM field tshark decodes correctly is compared with our decoding.
//
// Where tshark 4.0 (Debian 12: 4.0.17) decodes protocol 3.2 wrongly or not at all, the test
// does not compare; each such case is listed in `TsharkKnownGaps.skipped`, and, where the
// wrong output is predictable, the test pins it down (so a change in tshark is noticed).

import DLMCapture
import DLMTransport
import Foundation
import NIOCore
import Testing

/// What tshark (packet-dlm3.c, Wireshark 4.0) gets wrong for DLM 3.1/3.2, found by this test.
enum TsharkKnownGaps {
    static let skipped: [String] = [
        // 1. Bare 3.2 DLM_MSG/DLM_RCOM (e.g. every RCOM_STATUS/STATUS_REPLY/NAMES/NAMES_REPLY a 6.1
        //    kernel sends): dissect_dlm3_2() shows h_lockspace as "dlm3.h.seq", then calls
        //    dissect_dlm3_1() at offset 16, which parses bytes 16..31 as a second dlm_header and the
        //    body from offset 32: every m_*/rc_*/payload field is shifted by 16 bytes. Compared: the
        //    outer h_version/h_nodeid/h_length/h_cmd/h_pad, and h_lockspace via dlm3.h.seq.
        "bare 3.2 MSG/RCOM: body fields (shifted by 16 bytes)",
        // 2. Inside DLM_OPTS the inner dlm3.h.version is the OUTER h_version value, not the inner
        //    bytes (dissect_dlm3_1 is passed the outer version). Compared only when both are equal.
        "OPTS inner h_version when it differs from the outer one",
        // 3. DLM_OPTS with o_optlen > 0: the TLV loop reads t_length from the t_type offset and
        //    never advances, then gives up (return 0): the inner message is not dissected.
        "OPTS with TLV options: dlm3.t.* and the inner message",
        // 4. OPTS>FIN: o_nextcmd 5 falls into `default: return 0`; the inner FIN header is not shown.
        "OPTS>FIN inner header",
        // 5. rcom_config (STATUS_REPLY): only rf_lvblen and rf_lsflags; the next 8 bytes
        //    (rf_flags, rf_our_slot, rf_num_slots) are shown as one "unused" u64
        //    (dlm3.rf.lsflags.unused); rf_generation and the rcom_slot array are not decoded.
        "STATUS_REPLY rf_our_slot, rf_num_slots, rf_generation, slots",
        // 6. NAMES/NAMES_REPLY/LOOKUP: rc_buf is shown only as bytes; NAMES_REPLY's be16-length
        //    records and its 0x0000/0xFFFF end marker are not decoded.
        "NAMES_REPLY records and end marker; NAMES/LOOKUP names (raw rc_buf only)",
        // 7. RCOM_LOCK_REPLY: rcom_lock is only dissected for rc_type LOCK (4), not LOCK_REPLY (8).
        "LOCK_REPLY rcom_lock fields",
        // 8. rl_lvb is only shown when rl_exflags has DLM_LKF_VALBLK; otherwise the LVB bytes are
        //    silently ignored (the kernel sends the LVB whenever the lkb has an LVB buffer).
        "rl_lvb without VALBLK in rl_exflags",
        // 9. Not wrong but different: m_nodeid is an unsigned field (LOOKUP's -1 shows as
        //    4294967295); compared as the 32-bit pattern. ACK/FIN with h_version 3.1 are not
        //    dissected at all (only 3.2 knows them); the pcap has none.
        "m_nodeid signedness (compared as bit pattern)",
    ]
}

/// The tshark fields this test reads.
private let tsharkFields: [String] = [
    "h.version", "h.lockspac", "h.seq", "h.nodeid", "h.length", "h.cmd", "h.pad",
    "o.nextcmd", "o.pad", "o.optlen", "o.pad2", "o.opts",
    "m.type", "m.nodeid", "m.pid", "m.lkid", "m.remid", "m.parent_lkid", "m.parent_remid", "m.exflags",
    "m.sbflags", "m.flags", "m.lvbseq", "m.hash", "m.status", "m.grmode", "m.rqmode", "m.bastmode", "m.asts",
    "m.result", "m.extra",
    "rc.type", "rc.result", "rc.id", "rc.seq", "rc.seq_reply", "rc.buf",
    "rs.flags", "rs.unused1", "rs.unused2",
    "rf.lvblen", "rf.lsflags", "rf.lsflags.unused",
    "rl.ownpid", "rl.lkid", "rl.remid", "rl.parent_lkid", "rl.parent_remid", "rl.exflags", "rl.flags",
    "rl.lvbseq", "rl.result", "rl.rqmode", "rl.grmode", "rl.status", "rl.asts", "rl.wait_type", "rl.namelen",
    "rl.name", "rl.lvb",
]

/// Expected tshark output for one frame: field -> all occurrences, or only the first.
private struct Expectation {
    /// Every occurrence, compared in sorted order: tshark lists occurrences in tree order, and
    /// an inner header sits in the subtree of the outer h_cmd, between outer h_cmd and h_pad.
    var all: [String: [String]] = [:]
    /// Only the last occurrence (bare 3.2, gap 1: the bogus header is nested in the h_version
    /// subtree, so the real outer value comes last).
    var last: [String: String] = [:]
    /// Fields that must not appear at all (a part tshark does not dissect).
    var absent: Set<String> = []

    mutating func header(_ h: DLMHeader, wordField: String) {
        add("h.version", h.version.rawValue)
        add(wordField, h.word)
        add("h.nodeid", h.nodeID)
        add("h.length", h.length)
        add("h.cmd", h.command)
        add("h.pad", h.pad)
    }

    mutating func add<T: BinaryInteger>(_ field: String, _ value: T) { all[field, default: []].append(String(value)) }
    mutating func bytes(_ field: String, _ b: ByteBuffer) { all[field, default: []].append(hexString(b.array)) }

    mutating func message(_ m: DLMMessage) {
        add("m.type", m.type)
        add("m.nodeid", UInt32(bitPattern: m.nodeID))
        add("m.pid", m.pid)
        add("m.lkid", m.lkid)
        add("m.remid", m.remid)
        add("m.parent_lkid", m.parentLkid)
        add("m.parent_remid", m.parentRemid)
        add("m.exflags", m.exflags)
        add("m.sbflags", m.sbflags)
        add("m.flags", m.flags)
        add("m.lvbseq", m.lvbseq)
        add("m.hash", m.hash)
        add("m.status", m.status)
        add("m.grmode", m.grmode)
        add("m.rqmode", m.rqmode)
        add("m.bastmode", m.bastmode)
        add("m.asts", m.asts)
        add("m.result", m.result)
        if m.extra.readableBytes > 0 { bytes("m.extra", m.extra) } else { absent.insert("m.extra") }
    }

    mutating func rcom(_ r: DLMRcom) {
        add("rc.type", r.type)
        add("rc.result", r.result)
        add("rc.id", r.id)
        add("rc.seq", r.seq)
        add("rc.seq_reply", r.seqReply)
        var payload = DLMPacket.rcom(r).encoded()
        payload.moveReaderIndex(forwardBy: DLMRcom.fixedSize)
        if payload.readableBytes > 0 { bytes("rc.buf", payload) } else { absent.insert("rc.buf") }
        switch r.payload {
        case .status(let s):
            add("rs.flags", s.flags)
            add("rs.unused1", s.unused1)
            add("rs.unused2", s.unused2)
        case .statusReply(let c, _):
            add("rf.lvblen", c.lvblen)
            add("rf.lsflags", c.lsflags)
            // Gap 5: tshark's "unused" u64 is rf_flags | rf_our_slot << 32 | rf_num_slots << 48.
            add("rf.lsflags.unused", UInt64(c.flags) | UInt64(c.ourSlot) << 32 | UInt64(c.numSlots) << 48)
        case .lock(let l, let lvb):
            add("rl.ownpid", l.ownpid)
            add("rl.lkid", l.lkid)
            add("rl.remid", l.remid)
            add("rl.parent_lkid", l.parentLkid)
            add("rl.parent_remid", l.parentRemid)
            add("rl.exflags", l.exflags)
            add("rl.flags", l.flags)
            add("rl.lvbseq", l.lvbseq)
            add("rl.result", l.result)
            add("rl.rqmode", l.rqmode)
            add("rl.grmode", l.grmode)
            add("rl.status", l.status)
            add("rl.asts", UInt8(bitPattern: l.asts))
            add("rl.wait_type", l.waitType)
            add("rl.namelen", l.namelen)
            if l.namelen <= 64 { bytes("rl.name", l.nameField) }
            if lvb.readableBytes > 0 && l.exflags & LockFlags.valBlk.rawValue != 0 {
                bytes("rl.lvb", lvb)
            } else {
                absent.insert("rl.lvb")  // gap 8 when an LVB is present without VALBLK
            }
        case .lockReply:
            absent.insert("rl.ownpid")  // gap 7
        case .names, .namesReply, .lookup, .lookupReply, .unknown:
            break  // gap 6: rc.buf only
        }
    }
}

/// What tshark should print for `p`, given the gaps above.
private func expectation(for p: DLMPacket) -> Expectation {
    var e = Expectation()
    switch p {
    case .message(let m) where m.header.version == .v3_1:
        e.header(m.header, wordField: "h.lockspac")
        e.message(m)
    case .rcom(let r) where r.header.version == .v3_1:
        e.header(r.header, wordField: "h.lockspac")
        e.rcom(r)
    case .message, .rcom:
        // Gap 1: bare 3.2. The header is right (h_lockspace shown as h.seq); a second, bogus
        // header is parsed from bytes 16..31 (nested in the h_version subtree, so listed first):
        // only the last occurrences are compared.
        let h = p.header
        e.last = ["h.version": String(h.version.rawValue), "h.nodeid": String(h.nodeID), "h.length": String(h.length),
                   "h.cmd": String(h.command), "h.pad": String(h.pad)]
        e.all["h.seq"] = [String(h.word)]
        // The bogus header's "lockspace" is the u32 at offset 20 (m_nodeid / rc_result).
        let bytes = p.encoded().array
        e.all["h.lockspac"] = [String(bytes[20...23].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) })]
    case .ack(let h), .fin(let h):
        e.header(h, wordField: "h.seq")
    case .opts(let o):
        e.add("h.version", o.header.version.rawValue)
        e.add("h.seq", o.header.seq)
        e.add("h.nodeid", o.header.nodeID)
        e.add("h.length", o.header.length)
        e.add("h.cmd", o.header.command)
        e.add("h.pad", o.header.pad)
        e.add("o.nextcmd", o.nextCommand)
        e.add("o.pad", o.pad)
        e.add("o.optlen", o.options.readableBytes)
        e.add("o.pad2", o.pad2)
        if o.options.readableBytes > 0 {
            // Gap 3: options bytes are right, the inner message is not dissected.
            e.bytes("o.opts", o.options)
            e.absent.formUnion(["h.lockspac", "m.type", "rc.type"])
            break
        }
        switch o.inner {
        case .fin:
            e.absent.insert("h.lockspac")  // gap 4: h.version etc. appear once only
        case .message(let m):
            // Gap 2: tshark repeats the outer version for the inner header.
            e.add("h.version", o.header.version.rawValue)
            e.add("h.lockspac", m.header.lockspace)
            e.add("h.nodeid", m.header.nodeID)
            e.add("h.length", m.header.length)
            e.add("h.cmd", m.header.command)
            e.add("h.pad", m.header.pad)
            e.message(m)
        case .rcom(let r):
            e.add("h.version", o.header.version.rawValue)
            e.add("h.lockspac", r.header.lockspace)
            e.add("h.nodeid", r.header.nodeID)
            e.add("h.length", r.header.length)
            e.add("h.cmd", r.header.command)
            e.add("h.pad", r.header.pad)
            e.rcom(r)
        }
    }
    return e
}

/// tshark's value in a canonical form: hex numbers ("0x…") as decimal; everything else as printed.
private func canonical(_ s: String) -> String {
    if s.hasPrefix("0x"), let v = UInt64(s.dropFirst(2), radix: 16) { return String(v) }
    return s
}

@Suite("tshark cross-check")
struct TsharkCrossCheckTests {
    /// Every h_cmd, all 14 m_types and 8 rc_types, bare 3.1, bare 3.2 and wrapped, with random values.
    static func corpus() -> [DLMPacket] {
        var gen = MessageGenerator(seed: 0x75_4A_52_4B)
        var out: [DLMPacket] = []
        for round in 0..<3 {
            for type in MessageType.allCases {
                for v in [ProtocolVersion.v3_1, .v3_2] {
                    var m = gen.message(type)
                    m.header.version = v
                    out.append(.message(m))
                }
                var inner = gen.message(type)
                inner.header.version = .v3_2
                if round == 1 { inner.nodeID = -1 }
                if case .opts(var o)? = gen.opts(.message(inner)) {
                    o.header.version = .v3_2
                    o.options = ByteBuffer()
                    o.header.length = UInt16(o.encodedLength)
                    out.append(.opts(o))
                }
            }
            for type in RcomType.allCases {
                for v in [ProtocolVersion.v3_1, .v3_2] {
                    var r = gen.rcom(type, maxSlots: 20)
                    r.header.version = v
                    if case .lock(var l, let lvb) = r.payload {
                        // Exact rcom_lock (a name in rl_name), LVB with VALBLK in round 0, without in round 1.
                        l = gen.rcomLock(exact: true)
                        l.exflags = round == 0 ? l.exflags | LockFlags.valBlk.rawValue : l.exflags & ~LockFlags.valBlk.rawValue
                        r.payload = .lock(l, lvb: lvb.readableBytes > 0 ? lvb : ByteBuffer(repeating: 0x4C, count: 32))
                    }
                    if case .namesReply(let list) = r.payload, v == .v3_2 { r.payload = .namesReply(RcomNameList(names: list.names, end: list.end, bufferSize: 4024)) }
                    r.header.length = UInt16(r.encodedLength)
                    out.append(.rcom(r))
                }
                var inner = gen.rcom(type, maxSlots: 20)
                inner.header.version = .v3_2
                if case .namesReply(let list) = inner.payload { inner.payload = .namesReply(RcomNameList(names: list.names, end: list.end, bufferSize: 4024)) }
                if case .lock(var l, let lvb) = inner.payload {
                    l.exflags |= LockFlags.valBlk.rawValue
                    inner.payload = .lock(l, lvb: lvb)
                }
                inner.header.length = UInt16(inner.encodedLength)
                var o = DLMOpts(header: DLMHeader(version: .v3_2, word: gen.rng.u32(), nodeID: gen.rng.u32(), length: 0,
                                                  command: .opts), inner: .rcom(inner))
                o.header.length = UInt16(o.encodedLength)
                out.append(.opts(o))
            }
            var ack = gen.ack()
            if case .ack(var h) = ack { h.version = .v3_2; ack = .ack(h) }
            out.append(ack)
            var fin = gen.finHeader()
            fin.version = .v3_2
            out.append(.fin(fin))
            fin.version = .v3_2
            var wrappedFin = DLMOpts(header: DLMHeader(version: .v3_2, word: 7, nodeID: 1, length: 0, command: .opts),
                                     inner: .fin(fin))
            wrappedFin.header.length = UInt16(wrappedFin.encodedLength)
            out.append(.opts(wrappedFin))
            // OPTS with a TLV option, and a 3.2 envelope around a 3.1 inner message.
            var m = gen.message(.grant)
            m.header.version = .v3_2
            var withOption = DLMOpts(header: DLMHeader(version: .v3_2, word: 11, nodeID: 2, length: 0, command: .opts),
                                     inner: .message(m),
                                     options: ByteBuffer(bytes: le16(1) + le16(4) + le32(0) + [1, 2, 3, 4]))
            withOption.header.length = UInt16(withOption.encodedLength)
            out.append(.opts(withOption))
            m.header.version = .v3_1
            var mixed = DLMOpts(header: DLMHeader(version: .v3_2, word: 12, nodeID: 2, length: 0, command: .opts),
                                inner: .message(m))
            mixed.header.length = UInt16(mixed.encodedLength)
            out.append(.opts(mixed))
        }
        return out
    }

    @Test("tshark's dlm3 dissector agrees with our decoding wherever it decodes 3.1/3.2 correctly")
    func crossCheck() throws {
        guard findOnPath("tshark") != nil else {
            Issue.record("tshark not installed: run scripts/test (it installs it)")
            return
        }
        let corpus = Self.corpus()
        // Coverage: every h_cmd, m_type and rc_type is in the pcap, bare and wrapped.
        let kinds = Set(corpus.map { $0.kind.split(separator: " ").dropFirst().joined(separator: " ") })
        for t in MessageType.allCases { #expect(kinds.isSuperset(of: ["MSG \(t)", "OPTS>MSG \(t)"])) }
        for t in RcomType.allCases { #expect(kinds.isSuperset(of: ["RCOM \(t)", "OPTS>RCOM \(t)"])) }
        #expect(kinds.isSuperset(of: ["ACK", "FIN", "OPTS>FIN"]))

        // One message per TCP segment, so frame N is message N.
        var writer = PcapWriter()
        for (i, p) in corpus.enumerated() {
            // Our own decoder reads back exactly what we wrote.
            #expect(decodeResult(p.encoded().array) == .success(p))
            writer.appendTCP(time: 1_700_000_000 + Double(i) * 0.001, src: [10, 0, 0, 1], srcPort: 40000,
                             dst: [10, 0, 0, 2], dstPort: 21064, payload: p.encoded())
        }
        let dir = try makeTempDirectory("tshark")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("all-types.pcap")
        try Data(writer.buffer.array).write(to: file)
        #expect(try DLMCaptureDecoder.decode(writer.buffer).messages.compactMap { try? $0.packet.get() } == corpus)

        var args = ["-n", "-r", file.path, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a",
                    "-E", "aggregator=,", "-e", "frame.number"]
        for f in tsharkFields { args += ["-e", "dlm3." + f] }
        let run = try runProgram("tshark", args)
        try #require(run.status == 0, "tshark failed: \(String(decoding: run.err, as: UTF8.self))")
        let lines = String(decoding: run.out, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true)
        try #require(lines.count == corpus.count, "tshark printed \(lines.count) frames for \(corpus.count) messages")

        var compared = 0
        for (i, line) in lines.enumerated() {
            let columns = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard columns.count == tsharkFields.count + 1, Int(columns[0]) == i + 1 else {
                Issue.record("frame \(i + 1): unexpected tshark line \(line.prefix(200))")
                continue
            }
            var got: [String: [String]] = [:]
            for (f, v) in zip(tsharkFields, columns.dropFirst()) where !v.isEmpty {
                got[f] = v.split(separator: ",").map { canonical(String($0)) }
            }
            let p = corpus[i]
            let e = expectation(for: p)
            let label = "frame \(i + 1) \(p.kind)"
            for (f, want) in e.all {
                if got[f]?.sorted() != want.sorted() {
                    Issue.record("\(label): dlm3.\(f) tshark \(got[f] ?? []) ours \(want)")
                }
                compared += want.count
            }
            for (f, want) in e.last {
                if got[f]?.last != want { Issue.record("\(label): last dlm3.\(f) tshark \(got[f] ?? []) ours \(want)") }
                compared += 1
            }
            for f in e.absent where got[f] != nil {
                Issue.record("\(label): tshark now shows dlm3.\(f) = \(got[f]!) (a listed gap changed?)")
            }
            // Gap 2, pinned: a 3.1 message inside a 3.2 envelope shows the outer version twice.
            if case .opts(let o) = p, o.options.readableBytes == 0, o.inner.header.version != o.header.version {
                #expect(got["h.version"] == [String(o.header.version.rawValue), String(o.header.version.rawValue)])
            }
            // Gap 4, pinned: OPTS>FIN shows one header only.
            if case .opts(let o) = p, case .fin = o.inner { #expect(got["h.nodeid"]?.count == 1) }
        }
        // Thousands of field values compared in all.
        #expect(compared > 3000, "only \(compared) values compared")
    }

    @Test("tshark agrees with us on every message of the real 3.1 capture (C-510-tcp), field by field")
    func realCapture31() throws {
        guard findOnPath("tshark") != nil else {
            Issue.record("tshark not installed: run scripts/test (it installs it)")
            return
        }
        guard let (file, summary) = SharedCaptures.load("C-510-tcp") else { return }
        let ours = try DLMCaptureDecoder.decode(file).messages.compactMap { try? $0.packet.get() }
        #expect(ours.count == summary.dlm_messages)
        let path = RepoPaths.captures.appendingPathComponent("C-510-tcp/capture.pcap").path
        // tshark emits one line per frame with every PDU's fields aggregated; messages may share
        // or span segments. 3.1 has only bare MSG/RCOM, each adding one h_* occurrence, so the
        // flattened per-field sequences over the whole capture line up with ours, frame order
        // being the order in which both decoders complete messages.
        let fields = ["h.version", "h.lockspac", "h.nodeid", "h.length", "h.cmd", "m.type", "m.lkid", "m.remid",
                      "m.exflags", "m.flags", "m.hash", "m.grmode", "m.rqmode", "m.result", "rc.type", "rc.result",
                      "rc.id", "rc.seq", "rc.seq_reply"]
        var args = ["-n", "-r", path, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
        for f in fields { args += ["-e", "dlm3." + f] }
        let run = try runProgram("tshark", args)
        try #require(run.status == 0)
        var got: [String: [String]] = [:]
        for line in String(decoding: run.out, as: UTF8.self).split(separator: "\n") {
            for (f, v) in zip(fields, line.split(separator: "\t", omittingEmptySubsequences: false)) where !v.isEmpty {
                got[f, default: []] += v.split(separator: ",").map { canonical(String($0)) }
            }
        }
        var want: [String: [String]] = [:]
        for p in ours {
            var e = Expectation()
            switch p {
            case .message(let m): e.header(m.header, wordField: "h.lockspac"); e.message(m)
            case .rcom(let r): e.header(r.header, wordField: "h.lockspac"); e.rcom(r)
            default: Issue.record("unexpected \(p.kind) in a 3.1 capture")
            }
            for f in fields { want[f, default: []] += e.all[f] ?? [] }
        }
        for f in fields {
            #expect(got[f] ?? [] == want[f] ?? [], "dlm3.\(f) differs over the capture")
        }
        #expect(want["h.cmd"]?.count == summary.dlm_messages)
    }
}
