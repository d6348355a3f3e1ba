import NIOCore

extension DLMHeader {
    /// The header fields, `h_lockspace` or `h_seq` by command.
    public var fields: FieldList {
        var f = FieldList()
        f.append("h_version", .symbol(version.description))
        switch knownCommand {
        case .opts, .ack: f.append("h_seq", .uint(UInt64(word)))
        case .message, .rcom: f.append("h_lockspace", .hex32(word))
        case .fin, nil: if word != 0 { f.append("h_lockspace", .hex32(word)) }
        }
        f.append("h_nodeid", .uint(UInt64(nodeID)))
        f.append("h_length", .uint(UInt64(length)))
        f.append("h_cmd", .symbol(HeaderCommand.name(command)))
        return f
    }
}

extension ByteBuffer {
    var bytes: [UInt8] { getBytes(at: readerIndex, length: readableBytes) ?? [] }
}

private func mode(_ m: Int32) -> FieldList.Value { .symbol(LockMode.name(m)) }
private func resultValue(_ r: Int32) -> FieldList.Value {
    if let name = WireErrno.names[r], r != 0 { return .symbol("\(r)(\(name))") }
    return .int(Int64(r))
}

extension DLMMessage {
    public var fields: FieldList {
        var f = header.fields
        f.append("m_type", .symbol(MessageType.name(type)))
        f.append("m_nodeid", .int(Int64(nodeID)))
        f.append("m_pid", .uint(UInt64(pid)))
        f.append("m_lkid", .hex32(lkid))
        f.append("m_remid", .hex32(remid))
        if parentLkid != 0 || parentRemid != 0 {
            f.append("m_parent_lkid", .hex32(parentLkid))
            f.append("m_parent_remid", .hex32(parentRemid))
        }
        f.append("m_exflags", .symbol(flagNames(exflags, LockFlags.names)))
        f.append("m_sbflags", .symbol(flagNames(sbflags, StatusBlockFlags.names)))
        f.append("m_flags", .symbol(flagNames(flags, LockBlockFlags.names)))
        f.append("m_lvbseq", .uint(UInt64(lvbseq)))
        f.append("m_hash", .hex32(hash))
        f.append("m_status", .int(Int64(status)))
        f.append("m_grmode", mode(grmode))
        f.append("m_rqmode", mode(rqmode))
        f.append("m_bastmode", mode(bastmode))
        f.append("m_asts", .uint(UInt64(asts)))
        f.append("m_result", resultValue(self.result))
        if extra.readableBytes > 0 {
            if messageType?.extraKind == .resourceName {
                f.append("res_name", .bytes(extra.bytes))
            } else {
                f.append("m_extra", .bytes(extra.bytes))
            }
        }
        return f
    }
}

extension DLMRcom {
    public var fields: FieldList {
        var f = header.fields
        f.append("rc_type", .symbol(RcomType.name(type)))
        if rcomType == .statusReply, result >= 0 {
            f.append("rc_result", .symbol(result == 0 ? "0" : "\(result)(\(flagNames(UInt32(result), RecoveryStatusBits.names)))"))
        } else {
            f.append("rc_result", resultValue(self.result))
        }
        f.append("rc_id", .hex64(id))
        f.append("rc_seq", .uint(seq))
        f.append("rc_seq_reply", .uint(seqReply))
        switch payload {
        case .status(let s):
            f.append("rs_flags", .symbol(flagNames(s.flags, StatusRequestFlags.names)))
        case .statusReply(let c, let slots):
            f.append("rf_lvblen", c.lvblen == RcomConfig.notReadyLvblen ? .hex32(c.lvblen) : .uint(UInt64(c.lvblen)))
            f.append("rf_lsflags", .hex32(c.lsflags))
            f.append("rf_our_slot", .uint(UInt64(c.ourSlot)))
            f.append("rf_num_slots", .uint(UInt64(c.numSlots)))
            f.append("rf_generation", .uint(UInt64(c.generation)))
            if !slots.isEmpty {
                f.append("slots", .list(slots.map { .symbol("\($0.nodeID):\($0.slot)") }))
            }
        case .names(let last):
            f.append("last_name", .bytes(last.bytes))
        case .namesReply(let list):
            f.append("names", .list(list.names.map { .bytes($0.bytes) }))
            f.append("end", .symbol(list.end == .endOfList ? "END_OF_LIST" : "END_OF_BLOCK"))
            f.append("rc_buf_len", .uint(UInt64(list.bufferSize)))
        case .lookup(let name):
            f.append("res_name", .bytes(name.bytes))
        case .lookupReply:
            break
        case .lock(let l, let lvb), .lockReply(let l, let lvb):
            f.append("rl_ownpid", .uint(UInt64(l.ownpid)))
            f.append("rl_lkid", .hex32(l.lkid))
            f.append("rl_remid", .hex32(l.remid))
            f.append("rl_exflags", .symbol(flagNames(l.exflags, LockFlags.names)))
            f.append("rl_flags", .symbol(flagNames(l.flags, LockBlockFlags.names)))
            f.append("rl_lvbseq", .uint(UInt64(l.lvbseq)))
            f.append("rl_result", resultValue(l.result))
            f.append("rl_rqmode", mode(Int32(l.rqmode)))
            f.append("rl_grmode", mode(Int32(l.grmode)))
            f.append("rl_status", .int(Int64(l.status)))
            f.append("rl_asts", .uint(UInt64(UInt8(bitPattern: l.asts))))
            f.append("rl_wait_type", .symbol(l.waitType == 0 ? "0" : MessageType.name(UInt32(l.waitType))))
            f.append("rl_namelen", .uint(UInt64(l.namelen)))
            f.append("rl_name", .bytes(l.name.bytes))
            if lvb.readableBytes > 0 { f.append("rl_lvb", .bytes(lvb.bytes)) }
        case .unknown(let raw):
            f.append("rc_buf", .bytes(raw.bytes))
        }
        return f
    }
}

extension DLMInner {
    public var fields: FieldList {
        switch self {
        case .message(let m): return m.fields
        case .rcom(let r): return r.fields
        case .fin(let h): return h.fields
        }
    }
}

extension DLMPacket {
    /// Every field, inner message nested under `inner` for DLM_OPTS.
    public var fields: FieldList {
        switch self {
        case .message(let m): return m.fields
        case .rcom(let r): return r.fields
        case .ack(let h), .fin(let h): return h.fields
        case .opts(let o):
            var f = o.header.fields
            f.append("o_nextcmd", .symbol(HeaderCommand.name(o.nextCommand)))
            f.append("o_optlen", .uint(UInt64(o.options.readableBytes)))
            if o.options.readableBytes > 0 { f.append("o_opts", .bytes(o.options.bytes)) }
            f.append("inner", .fields(o.inner.fields))
            return f
        }
    }

    /// One line: the outer fields, then ` | ` and the inner message for DLM_OPTS.
    public var line: String {
        switch self {
        case .opts(let o):
            var outer = o.header.fields
            outer.append("o_nextcmd", .symbol(HeaderCommand.name(o.nextCommand)))
            outer.append("o_optlen", .uint(UInt64(o.options.readableBytes)))
            return outer.text + " | " + o.inner.fields.text
        case .message, .rcom, .ack, .fin:
            return fields.text
        }
    }

    /// The short kind used in per-direction counts, e.g. `v3.2 OPTS>MSG REQUEST`, `v3.1 RCOM STATUS`
    /// (the same shape as the captures' summary.json).
    public var kind: String {
        let v = "v" + header.version.description
        switch self {
        case .message(let m): return "\(v) MSG \(MessageType.name(m.type))"
        case .rcom(let r): return "\(v) RCOM \(RcomType.name(r.type))"
        case .ack: return "\(v) ACK"
        case .fin: return "\(v) FIN"
        case .opts(let o):
            switch o.inner {
            case .message(let m): return "\(v) OPTS>MSG \(MessageType.name(m.type))"
            case .rcom(let r): return "\(v) OPTS>RCOM \(RcomType.name(r.type))"
            case .fin: return "\(v) OPTS>FIN"
            }
        }
    }
}
