"""Lock dumps of every node of a lockspace, and the cluster-wide invariants checked on them.

A kernel's dump is its debugfs file /sys/kernel/debug/dlm/<ls> (the human-readable resource
dump: one block per resource with its master, LVB and the granted, conversion and waiting
queues). `dlm-peer locks LS` prints the same layout, so one parser reads both.

The checks are those of locking.md §9 / recovery.md §7.1 that can be seen from dumps taken
while no operation is in flight:
  * one master per resource: every node that has a resource with locks agrees on its master,
    and that node has the master copy;
  * every process copy (a lock on a resource mastered elsewhere) has its master copy on the
    master, with the same lock ids crossed (our id = its remote id) and the same modes and
    queue, and every master copy of a remote lock has its process copy on the holder;
  * no lock has two master copies (a rebuild that created one twice);
  * the granted modes of a resource are pairwise compatible;
  * no lock belongs to a node that is not a member.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

MODES = ("NL", "CR", "CW", "PR", "PW", "EX")

# locking.md §2.2: compatible pairs (symmetric), besides anything with NL
_COMPAT = {
    ("CR", "CR"), ("CR", "CW"), ("CR", "PR"), ("CR", "PW"),
    ("CW", "CW"),
    ("PR", "PR"),
}


def compatible(a: str, b: str) -> bool:
    if a == "NL" or b == "NL":
        return True
    return (a, b) in _COMPAT or (b, a) in _COMPAT


@dataclass
class Lock:
    lkid: int
    grmode: str                 # "--" for none (IV)
    rqmode: str | None          # on the conversion and waiting queues
    queue: str                  # granted | convert | waiting
    nodeid: int | None = None   # Remote: the holder (a master copy of a remote lock)
    remid: int | None = None    # the other copy's lock id
    process_copy: bool = False  # "Master: remid": our lock on a resource mastered elsewhere
    wait_type: int | None = None


@dataclass
class Resource:
    name: str
    master: int | None          # 0 = this node has the master copy; -1 = looking up
    lvb: bytes | None = None
    lvb_invalid: bool = False
    locks: list = field(default_factory=list)


class DumpError(ValueError):
    pass


_RES = re.compile(r'^Resource \S+ Name \(len=(\d+)\) "(.*)"\s*$')
_LOCK = re.compile(r'^([0-9a-f]{8}) (--|NL|CR|CW|PR|PW|EX|\?\?)(?: \((--|NL|CR|CW|PR|PW|EX|\?\?)\))?'
                   r'(?: Remote: +(\d+) ([0-9a-f]{8})| Master: +([0-9a-f]{8}))?(?: wait_type: (\d+))?')
_QUEUES = {"Granted Queue": "granted", "Conversion Queue": "convert", "Waiting Queue": "waiting",
           "Lookup Queue": "lookup"}


def parse(text: str) -> dict:
    """The `<ls>` dump -> {name: Resource}. Raises DumpError naming the line it cannot read."""
    out = {}
    cur, queue, lvb_lines = None, None, None
    for no, line in enumerate(text.splitlines(), 1):
        raw = line
        line = line.rstrip()
        if line.startswith("--- ") and line.endswith(" ---"):
            break                                   # what save_kernel_dumps appends
        if not line:
            continue
        m = _RES.match(line)
        if m:
            cur = Resource(name=m.group(2), master=None)
            if cur.name in out:
                raise DumpError("line %d: resource %r twice" % (no, cur.name))
            out[cur.name] = cur
            queue, lvb_lines = None, None
            continue
        if cur is None:
            raise DumpError("line %d: %r outside a resource" % (no, raw))
        if line == "Master Copy":
            cur.master = 0
        elif line.startswith("Local Copy, Master is node "):
            cur.master = int(line.rsplit(" ", 1)[1])
        elif line.startswith("Looking up master"):
            cur.master = -1
        elif line.startswith("Invalid master"):
            raise DumpError("line %d: %s (resource %r)" % (no, line, cur.name))
        elif line.startswith("LVB: "):
            lvb_lines = [line[5:]]
        elif lvb_lines is not None and queue is None and raw.startswith("     "):
            lvb_lines.append(line.strip())
            body = " ".join(lvb_lines)
            cur.lvb_invalid = "(INVALID)" in body
            cur.lvb = bytes(int(x, 16) for x in body.replace("(INVALID)", "").split())
        elif line.startswith("Recovery: "):
            pass
        elif line in _QUEUES:
            queue = _QUEUES[line]
        else:
            lm = _LOCK.match(line)
            if not lm or queue is None:
                raise DumpError("line %d: cannot read %r (resource %r)" % (no, raw, cur.name))
            if queue == "lookup":
                continue
            cur.locks.append(Lock(
                lkid=int(lm.group(1), 16), grmode=lm.group(2), rqmode=lm.group(3), queue=queue,
                nodeid=int(lm.group(4)) if lm.group(4) else None,
                remid=int(lm.group(5) or lm.group(6), 16) if (lm.group(5) or lm.group(6)) else None,
                process_copy=lm.group(6) is not None,
                wait_type=int(lm.group(7)) if lm.group(7) else None))
    return out


def check(dumps: dict, members) -> list:
    """Cluster-wide invariants over {nodeid: {name: Resource}} taken while nothing is in
    flight. Returns the violations as sentences (empty: all hold)."""
    bad = []
    members = set(members)
    names = sorted({n for d in dumps.values() for n in d})
    for name in names:
        holders = {nid: d[name] for nid, d in dumps.items() if name in d and d[name].locks}
        if not holders:
            continue
        # the master each node names (0 in a dump means "this node")
        named = {nid: (nid if r.master == 0 else r.master) for nid, r in holders.items()}
        masters = set(named.values())
        if len(masters) != 1:
            bad.append("%r: nodes disagree on the master: %s" % (name, named))
            continue
        master = masters.pop()
        if master == -1 or master is None:
            bad.append("%r: master still being looked up on %s" % (name, sorted(holders)))
            continue
        if master not in dumps:
            bad.append("%r: master %d has no dump (not a member?)" % (name, master))
            continue
        mres = dumps[master].get(name)
        if mres is None or mres.master != 0:
            bad.append("%r: node %d is named master but has no master copy" % (name, master))
            continue
        granted = [(l.grmode, master if l.nodeid is None else l.nodeid, l.lkid) for l in mres.locks
                   if l.queue in ("granted", "convert") and l.grmode != "--"]
        for i in range(len(granted)):
            for j in range(i + 1, len(granted)):
                if not compatible(granted[i][0], granted[j][0]):
                    bad.append("%r: incompatible granted modes %s (node %d lkid %x) and %s (node %d lkid %x)"
                               % (name, granted[i][0], granted[i][1], granted[i][2],
                                  granted[j][0], granted[j][1], granted[j][2]))
        by_holder = {}
        for l in mres.locks:
            if l.nodeid is not None:
                if l.nodeid not in members:
                    bad.append("%r: master copy %x belongs to node %d, not a member" % (name, l.lkid, l.nodeid))
                if (l.nodeid, l.remid) in by_holder:
                    bad.append("%r: two master copies (%x, %x) of node %d's lock %x"
                               % (name, by_holder[(l.nodeid, l.remid)].lkid, l.lkid, l.nodeid, l.remid))
                by_holder[(l.nodeid, l.remid)] = l
        for nid, r in holders.items():
            if nid == master:
                continue
            for l in r.locks:
                mc = by_holder.pop((nid, l.lkid), None)
                if mc is None:
                    bad.append("%r: node %d's lock %x has no master copy on node %d" % (name, nid, l.lkid, master))
                    continue
                if l.remid is not None and l.remid != mc.lkid:
                    bad.append("%r: node %d's lock %x names master copy %x, the master has %x"
                               % (name, nid, l.lkid, l.remid, mc.lkid))
                if (l.grmode, l.rqmode, l.queue) != (mc.grmode, mc.rqmode, mc.queue):
                    bad.append("%r: node %d's lock %x is %s/%s on %s, its master copy %s/%s on %s"
                               % (name, nid, l.lkid, l.grmode, l.rqmode, l.queue, mc.grmode, mc.rqmode, mc.queue))
        for (nid, remid), mc in sorted(by_holder.items()):
            if nid in dumps:
                bad.append("%r: master copy %x of node %d's lock %x has no process copy there" % (name, mc.lkid, nid, remid))
    return bad
