import DLMTransport
import NIOCore

/// Building the fourteen `DLM_MSG` types the way the kernel fills them (locking.md §4.0.3, `send_args`,
/// `create_message`): every field from the sending lkb/rsb, everything not mentioned zero.
///
/// Decisions (design.md): `m_flags` carries only the distributed low 16 bits of the lock's flags (USER,
/// ORPHAN), never the node-private high bits 6.1 leaks. The LVB `m_extra` follows 6.1's *length* rule:
/// present (exactly lvblen bytes) iff the sending lock has an LVB buffer; the bytes are the lock's LVB
/// when it has VALBLK, zeros otherwise (what 6.1 puts there). Every kernel version accepts this; a
/// receiver only uses the bytes with VALBLK.
public enum LockMessages {
    /// The `dlm_header` of a DLM_MSG from `sender` in lockspace `lockspace`; `h_length` is set to the
    /// encoded length when the message is built.
    public static func header(lockspace: UInt32, sender: UInt32, version: ProtocolVersion) -> DLMHeader {
        DLMHeader(version: version, word: lockspace, nodeID: sender, length: UInt16(WireLimits.messageFixedSize), command: .message)
    }

    /// `send_args`: a message about `lock` (a process copy on an owner, a master copy on a master).
    /// `name` is the resource name (REQUEST, LOOKUP); the LVB extra is added for the types that carry
    /// one. `bastMode` only for BAST; `result` for replies and GRANT.
    public static func lockMessage(
        _ type: MessageType, lock: LockEntry, hash: UInt32, name: [UInt8], lvbLength: Int, header: DLMHeader,
        result: Int32 = 0, bastMode: LockMode? = nil
    ) -> DLMMessage {
        var message = DLMMessage(
            header: header, type: type.rawValue, nodeID: lock.nodeID, pid: lock.pid, lkid: lock.id, remid: lock.remoteID,
            exflags: lock.flags.rawValue, sbflags: lock.statusFlags.rawValue,
            flags: lock.wireFlags & LockBlockFlags.distributedMask, lvbseq: lock.lvbSeq, hash: hash,
            status: lock.status?.rawValue ?? 0, grmode: lock.grantedMode.rawValue, rqmode: lock.requestedMode.rawValue,
            bastmode: bastMode?.rawValue ?? 0, asts: lock.callbackBits, result: result)
        switch type.extraKind {
        case .resourceName:
            message.extra = ByteBuffer(bytes: name)
        case .lvb:
            if let lvb = lock.lvb, lvbLength > 0 {
                if lock.flags.contains(.valBlk) {
                    var bytes = Array(lvb.prefix(lvbLength))
                    if bytes.count < lvbLength { bytes += [UInt8](repeating: 0, count: lvbLength - bytes.count) }
                    message.extra = ByteBuffer(bytes: bytes)
                } else {
                    message.extra = ByteBuffer(repeating: 0, count: lvbLength)
                }
            }
        case .none:
            break
        }
        message.header.length = UInt16(truncatingIfNeeded: message.encodedLength)
        return message
    }

    /// A "stub" reply (locking.md §4.0.8): the reply type for a request that could not be matched,
    /// built from a blank lkb: `m_nodeid` = requester, `m_remid` = the request's `m_lkid`, result, the
    /// rest zero, no extra.
    public static func stubReply(_ type: MessageType, to requester: UInt32, requestLkid: UInt32, result: Int32, header: DLMHeader)
        -> DLMMessage
    {
        DLMMessage(header: header, type: type.rawValue, nodeID: Int32(bitPattern: requester), remid: requestLkid, result: result)
    }

    /// LOOKUP_REPLY (§4.11): `m_lkid` echoed, `m_nodeid` = the master (−1 with −EINVAL when we are not
    /// the dir node), the rest zero.
    public static func lookupReply(lkid: UInt32, master: Int32, result: Int32, header: DLMHeader) -> DLMMessage {
        DLMMessage(header: header, type: MessageType.lookupReply.rawValue, nodeID: master, lkid: lkid, result: result)
    }

    /// REMOVE (§4.12): `m_hash` and the name; everything else zero.
    public static func remove(name: [UInt8], hash: UInt32, header: DLMHeader) -> DLMMessage {
        var message = DLMMessage(header: header, type: MessageType.remove.rawValue, hash: hash, extra: ByteBuffer(bytes: name))
        message.header.length = UInt16(truncatingIfNeeded: message.encodedLength)
        return message
    }

    /// PURGE (`send_purge`): release node `nodeID`'s orphans of process `pid` (0: all); no extra.
    public static func purge(nodeID: UInt32, pid: UInt32, header: DLMHeader) -> DLMMessage {
        var message = DLMMessage(header: header, type: MessageType.purge.rawValue, nodeID: Int32(bitPattern: nodeID), pid: pid)
        message.header.length = UInt16(truncatingIfNeeded: message.encodedLength)
        return message
    }

    /// The bytes of `m_extra`.
    public static func extraBytes(_ message: DLMMessage) -> [UInt8] {
        Array(message.extra.readableBytesView)
    }
}
