"""Independent reading of a lab capture with tshark's dlm3 dissector (port 21064).

Each DLM PDU becomes one record; counts use the key shape of `dlm-peer decode
--summary --json` and of shared/captures/*/summary.json:
    "v3.2 OPTS>MSG REQUEST", "v3.2 ACK", "v3.2 OPTS>FIN", "v3.1 RCOM STATUS", ...
Known dissector limits (Wireshark 4.0): a bare (not OPTS-wrapped) PDU with a 3.2 header
is mis-decoded: the RCOMs a 3.2 kernel sends bare (STATUS, STATUS_REPLY, NAMES,
NAMES_REPLY), and every MSG a 6.x kernel sends to a 3.1 node. Their type is reported as
"?", and comparisons with another decoder fold those keys into "v3.2 RCOM *" and
"v3.2 MSG *". Over SCTP the dissector decodes only the first DLM PDU of each DATA chunk,
and the kernel bundles (an ACK after a message, several messages) in one chunk: tshark's
SCTP counts are lower bounds, compared with compare(..., exact=False).
"""
from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict

CMDS = {1: "MSG", 2: "RCOM", 3: "OPTS", 4: "ACK", 5: "FIN"}
MSG_TYPES = {1: "REQUEST", 2: "CONVERT", 3: "UNLOCK", 4: "CANCEL", 5: "REQUEST_REPLY",
             6: "CONVERT_REPLY", 7: "UNLOCK_REPLY", 8: "CANCEL_REPLY", 9: "GRANT", 10: "BAST",
             11: "LOOKUP", 12: "REMOVE", 13: "LOOKUP_REPLY", 14: "PURGE"}
RCOM_TYPES = {1: "STATUS", 2: "NAMES", 3: "LOOKUP", 4: "LOCK", 5: "STATUS_REPLY", 6: "NAMES_REPLY",
              7: "LOOKUP_REPLY", 8: "LOCK_REPLY"}


class CaptureError(Exception):
    pass


def _int(s):
    try:
        return int(s, 0)
    except (TypeError, ValueError):
        return None


def read(pcap, ip2node, port=21064):
    """[dict(frame, t, src, dst, dir, version, cmd, inner, type, seq, key)] from tshark."""
    if not shutil.which("tshark"):
        raise CaptureError("tshark not installed (apt-get install tshark)")
    p = subprocess.Popen(["tshark", "-r", pcap, "-o", "dlm3.tcp.port:%d" % port, "-Y", "dlm3", "-T", "pdml"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = []
    try:
        for _ev, el in ET.iterparse(p.stdout, events=("end",)):
            if el.tag != "packet":
                continue
            fields = {}
            pdus = []
            for proto in el.findall("proto"):
                name = proto.get("name")
                if name in ("frame", "ip"):
                    for f in proto.iter("field"):
                        fields.setdefault(f.get("name"), f.get("show"))
                elif name == "dlm3":
                    pdus.append(proto)
            src = ip2node.get(fields.get("ip.src"), fields.get("ip.src"))
            dst = ip2node.get(fields.get("ip.dst"), fields.get("ip.dst"))
            for pdu in pdus:
                first = {}
                for f in pdu.iter("field"):
                    first.setdefault(f.get("name"), f.get("show"))
                rec = dict(frame=_int(fields.get("frame.number")), t=float(fields.get("frame.time_relative", 0)),
                           src=src, dst=dst, dir="%s->%s" % (src, dst))
                ver = _int(first.get("dlm3.h.version"))
                rec["version"] = "v%d.%d" % (ver >> 16, ver & 0xFFFF) if ver is not None else "v?"
                cmd = _int(first.get("dlm3.h.cmd"))
                rec["cmd"] = CMDS.get(cmd, "CMD%s" % cmd)
                rec["inner"] = None
                rec["type"] = None
                rec["seq"] = None
                if rec["cmd"] in ("OPTS", "ACK"):
                    rec["seq"] = _int(first.get("dlm3.h.seq"))
                kind = rec["cmd"]
                if kind == "OPTS":
                    kind = CMDS.get(_int(first.get("dlm3.o.nextcmd")), "?")
                    rec["inner"] = kind
                bare32 = rec["cmd"] in ("MSG", "RCOM") and rec["version"] == "v3.2"
                if bare32:
                    rec["type"] = "?"               # dissector bug, see above
                elif kind == "MSG":
                    rec["type"] = MSG_TYPES.get(_int(first.get("dlm3.m.type")), "?")
                elif kind == "RCOM":
                    rec["type"] = RCOM_TYPES.get(_int(first.get("dlm3.rc.type")), "?")
                k = rec["version"] + " " + rec["cmd"]
                if rec["inner"]:
                    k += ">" + rec["inner"]
                if rec["type"]:
                    k += " " + rec["type"]
                rec["key"] = k
                out.append(rec)
            el.clear()
    except ET.ParseError as e:
        raise CaptureError("tshark output unreadable: %s (%s)" % (e, p.stderr.read().decode()[-500:]))
    p.wait()
    if p.returncode:
        raise CaptureError("tshark failed on %s: %s" % (pcap, p.stderr.read().decode()[-500:]))
    return out


def counts_by_direction(recs):
    d = defaultdict(Counter)
    for r in recs:
        d[r["dir"]][r["key"]] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(d.items())}


def fold_bare(counts):
    """Fold the keys of bare 3.2 PDUs into "v3.2 RCOM *" / "v3.2 MSG *" (for comparing
    with tshark, which cannot type them)."""
    out = {}
    for dirn, c in counts.items():
        n = Counter()
        for k, v in c.items():
            for pre in ("v3.2 RCOM ", "v3.2 MSG "):
                if k.startswith(pre):
                    k = pre + "*"
            n[k] += v
        out[dirn] = dict(n)
    return out


def compare(ours, theirs, exact=True):
    """Differences between two counts_by_direction (after folding): list of strings.
    exact=False (SCTP): ours (tshark) may only be lower."""
    a, b = fold_bare(ours), fold_bare(theirs)
    diffs = []
    for dirn in sorted(set(a) | set(b)):
        ca, cb = a.get(dirn, {}), b.get(dirn, {})
        for k in sorted(set(ca) | set(cb)):
            if ca.get(k, 0) != cb.get(k, 0) and (exact or ca.get(k, 0) > cb.get(k, 0)):
                diffs.append("%s %s: tshark %d, dlm-peer %d" % (dirn, k, ca.get(k, 0), cb.get(k, 0)))
    return diffs


def seqs(recs, direction, cmd="OPTS"):
    """Sequence numbers of `cmd` PDUs in one direction, in capture order."""
    return [r["seq"] for r in recs if r["dir"] == direction and r["cmd"] == cmd]


def duplicates(values):
    c = Counter(values)
    return sorted(v for v, n in c.items() if n > 1)


def spurious_data_bytes(pcap, ip2node, port=21064):
    """Per direction, the payload bytes of the TCP segments tshark calls spurious
    retransmissions: data it saw only after an ACK that covered it (the bridge can hand tcpdump
    the receiver's ACK before the data it acknowledges). tshark does not dissect such a
    segment; `dlm-peer decode` reassembles by TCP sequence number and counts its messages once."""
    r = subprocess.run(["tshark", "-r", pcap, "-Y",
                        "tcp.analysis.spurious_retransmission && tcp.len > 0 && tcp.port == %d" % port,
                        "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.len"],
                       capture_output=True, text=True)
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in ip2node or parts[1] not in ip2node:
            continue
        d = "%s->%s" % (ip2node[parts[0]], ip2node[parts[1]])
        out[d] = out.get(d, 0) + int(parts[2] or 0)
    return out


def excess_within(ours, theirs, allowance_bytes, min_message=16):
    """Whether every difference has dlm-peer's count higher (never lower) and, per direction,
    the extra messages fit in `allowance_bytes` (at least `min_message` bytes each)."""
    a, b = fold_bare(ours), fold_bare(theirs)
    for dirn in set(a) | set(b):
        ca, cb = a.get(dirn, {}), b.get(dirn, {})
        extra = 0
        for k in set(ca) | set(cb):
            if cb.get(k, 0) < ca.get(k, 0):
                return False
            extra += cb.get(k, 0) - ca.get(k, 0)
        if extra * min_message > allowance_bytes.get(dirn, 0):
            return False
    return True
