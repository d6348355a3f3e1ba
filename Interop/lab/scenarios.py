"""The lab's scenarios. Each is a function of (cluster, check) that drives real kernels
and asserts what must happen; the runner boots the cluster from the scenario's config
file first and tears it down afterwards. See Interop/README.md for the list.

To add one: write a function, then a Scenario(...) line in SCENARIOS. A dlm-peer node
joins a scenario by being in its config file ([[node]] kind = "peer"); the cluster
starts it and the dlm_controld-like steps (join/leave/add) treat it as a member.
"""
from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field

from . import capture, config as cfgmod, dumps as dumpmod, paths, peerctl
from .cluster import StepError, find_dlm_peer
from .util import Skip, directory_node

LS = "alpha"


class CheckFailed(Exception):
    pass


class Check:
    """Assertions and measurements of one scenario run."""

    def __init__(self, cluster, rundir):
        self.c, self.rundir = cluster, rundir
        self.failures, self.metrics, self.notes = [], {}, []
        self.expect_messages = {}      # key -> (direction, op, n) checked against the capture

    def require(self, cond, what):
        if not cond:
            self.failures.append(what)
            raise CheckFailed(what)

    def expect(self, cond, what):
        if not cond:
            self.failures.append(what)
            self.c.trace("CHECK FAILED: " + what)
        return cond

    def metric(self, name, value, unit="s"):
        self.metrics[name] = value
        self.c.trace("METRIC %s = %s %s" % (name, value, unit))

    def note(self, text):
        self.notes.append(text)
        self.c.trace("NOTE " + text)


def protocol_of(cluster, nid):
    return cfgmod_protocol(cluster.cfg.node(nid))


def cfgmod_protocol(node):
    from .kernels import PROTOCOL
    return PROTOCOL[node.kernel] if node.kind == "kernel" else (node.protocol or "3.2")


def link_protocol(cluster, a, b):
    """3.2 only if both ends speak it (a 3.2 kernel falls back to 3.1 towards a 3.1 node)."""
    return "3.2" if protocol_of(cluster, a) == "3.2" and protocol_of(cluster, b) == "3.2" else "3.1"


def read_capture(c):
    """The run's capture, complete: the scenario's traffic is over when this is called."""
    c.finish_capture()
    if c.capture_dropped:
        raise capture.CaptureError("the capture is incomplete: tcpdump reports %d packets dropped by the "
                                   "kernel (machine overloaded?); its message counts cannot be checked"
                                   % c.capture_dropped)
    ip2node = {n.address: str(n.id) for n in c.cfg.nodes}
    return capture.read(c.pcap, ip2node, c.cfg.port)


def fin_handshake(recs, a, b):
    """Seconds from the first OPTS>FIN between a and b to the ACK that answers the
    second FIN (the end of the 3.2 midcomms close), or None."""
    d1, d2 = "%d->%d" % (a, b), "%d->%d" % (b, a)
    fins = [r for r in recs if r["key"].endswith("OPTS>FIN") and r["dir"] in (d1, d2)]
    if len(fins) < 2:
        return None
    first, second = fins[0], fins[1]
    acks = [r for r in recs if r["cmd"] == "ACK" and r["dir"] == first["dir"] and r["t"] >= second["t"]]
    end = acks[0]["t"] if acks else second["t"]
    return end - first["t"]


# ------------------------------------------------------------------ shared steps
def check_gid(c, ck, nid):
    out = c.kernel(nid).sh("dlmlc gid %s" % LS).strip()
    py = "0x%08x" % cfgmod.global_id(LS)
    ck.require(out == py, "global id of %s: C client says %s, Python %s" % (LS, out, py))


def blocking_and_lvb(c, ck, holder, waiter, res="res-basic", p=""):
    """EX on `holder` blocks `waiter`; BAST to holder; NOQUEUE -> EAGAIN; LVB written under
    EX by holder is read by waiter; conversions; all unlocked at the end. `p` prefixes the
    lock tags, so several rounds can share one agent."""
    c.agent_start(holder, LS)
    c.agent_start(waiter, LS)
    h, w, nq, r = p + "h", p + "w", p + "nq", p + "r"
    lvb = "lvb-from-node%d" % holder
    ev = c.agent(holder, LS, f"lock {h} {res} EX VALBLK", wait=f"CAST {h} ")
    ck.require(ev.get("status") == "OK", "node%d: EX on %s not granted: %s" % (holder, res, ev["line"]))
    ev = c.agent(waiter, LS, f"lock {w} {res} EX VALBLK", wait=f"REQ {w} ")
    ck.require(int(ev.get("rv", -1)) > 0, "node%d: EX request failed: %s" % (waiter, ev["line"]))
    t_req = time.time()
    bast = c.agent_wait(holder, LS, f"BAST {h} ", timeout=10)
    ck.expect(bast.get("mode") == "EX", "blocking callback on node%d should name EX: %s" % (holder, bast["line"]))
    ck.metric(p + "bast_after_request", round(time.time() - t_req, 3))
    # the waiter must still be waiting
    out = c.kernel(waiter).sh(f"grep -c 'CAST {w} ' /tmp/a-{LS}.log || true").strip()
    ck.require(out == "0", "node%d was granted EX while node%d held it" % (waiter, holder))
    ev = c.agent(waiter, LS, f"lock {nq} {res} PR NOQUEUE", wait=f"CAST {nq} ")
    ck.expect(ev.get("status") == "EAGAIN", "NOQUEUE PR on node%d should fail with EAGAIN: %s" % (waiter, ev["line"]))
    # unlock with VALBLK writes the LVB; the waiter's queued EX is granted with it
    t_unlock = time.time()
    ev = c.agent(holder, LS, f"unlock {h} VALBLK lvb={lvb}", wait=f"CAST {h} ")
    ck.expect(ev.get("status") == "EUNLOCK", "node%d unlock: %s" % (holder, ev["line"]))
    ev = c.agent_wait(waiter, LS, f"CAST {w} ", timeout=10)
    ck.metric(p + "grant_after_unlock", round(time.time() - t_unlock, 3))
    ck.require(ev.get("status") == "OK", "node%d: queued EX not granted after the unlock: %s" % (waiter, ev["line"]))
    ck.expect(ev.get("lvb") == lvb, "node%d should read the LVB %r written under EX by node%d, got %r"
              % (waiter, lvb, holder, ev.get("lvb")))
    # down-conversion EX -> PR keeps the LVB; a PR|VALBLK request on the holder reads it too
    ev = c.agent(waiter, LS, f"convert {w} PR VALBLK", wait=f"CAST {w} ")
    ck.expect(ev.get("status") == "OK", "node%d EX->PR conversion: %s" % (waiter, ev["line"]))
    ev = c.agent(holder, LS, f"lock {r} {res} PR VALBLK", wait=f"CAST {r} ")
    ck.expect(ev.get("status") == "OK" and ev.get("lvb") == lvb,
              "node%d PR|VALBLK should be granted with LVB %r: %s" % (holder, lvb, ev["line"]))
    # up-conversion PR -> EX on the waiter blocks on the holder's PR, then is granted
    c.agent(waiter, LS, f"convert {w} EX", wait=f"CONV {w} ")
    c.agent_wait(holder, LS, f"BAST {r} ", timeout=10)
    c.agent(holder, LS, f"unlock {r}", wait=f"CAST {r} ")
    ev = c.agent_wait(waiter, LS, f"CAST {w} ", count=3, timeout=10)
    ck.expect(ev.get("status") == "OK", "node%d PR->EX conversion: %s" % (waiter, ev["line"]))
    ev = c.agent(waiter, LS, f"unlock {w}", wait=f"CAST {w} ")
    ck.expect(ev.get("status") == "EUNLOCK", "node%d unlock: %s" % (waiter, ev["line"]))


def leave_all(c, ck, order, fin_limit=1.0):
    """Leave in `order`; every 3.2 link must finish the FIN handshake well under a second."""
    for nid in order:
        if (nid, LS) in c.agents:
            c.agent_quit(nid, LS)
    for i, nid in enumerate(order):
        others = sorted(c.members[LS] - {nid})
        total, remove_s = c.leave(LS, nid)
        ck.metric("leave_node%d" % nid, round(total, 3))
        if remove_s is not None:
            ck.metric("remove_write_node%d" % nid, remove_s)
            # the remove write of a node's last lockspace waits for the FIN handshakes
            ck.expect(remove_s < fin_limit, "node%d: removing its last lockspace took %.3f s (FIN wait?)"
                      % (nid, remove_s))


def check_fins(c, ck, recs, leaver, others, fin_limit=1.0):
    for o in others:
        if link_protocol(c, leaver, o) != "3.2":
            n = sum(1 for r in recs if r["key"].endswith("FIN") and r["dir"] in ("%d->%d" % (leaver, o), "%d->%d" % (o, leaver)))
            ck.expect(n == 0, "3.1 link %d<->%d should carry no DLM FIN, saw %d" % (leaver, o, n))
            continue
        fh = fin_handshake(recs, leaver, o)
        ck.expect(fh is not None, "no FIN handshake between node%d and node%d in the capture" % (leaver, o))
        if fh is not None:
            ck.metric("fin_handshake_%d_%d" % (leaver, o), round(fh, 4))
            ck.expect(fh < fin_limit, "FIN handshake %d<->%d took %.3f s" % (leaver, o, fh))


def expect_at_least(ck, counts, direction, key, n):
    have = counts.get(direction, {}).get(key, 0)
    ck.expect(have >= n, "capture: %s %s: expected at least %d, saw %d" % (direction, key, n, have))


def check_versions(c, ck, recs):
    """Every PDU carries the version its sender speaks (a 6.x kernel puts 3.2 in the header
    even on a 3.1 link); a 3.1 link has no OPTS/ACK/FIN."""
    for r in recs:
        try:
            a, b = int(r["src"]), int(r["dst"])
        except ValueError:
            ck.expect(False, "capture: DLM traffic from/to an unknown address: %s" % r["dir"])
            return
        want = "v" + protocol_of(c, a)
        if r["version"] != want:
            ck.expect(False, "capture frame %s: %s sent %s, expected %s" % (r["frame"], r["dir"], r["version"], want))
            return
        if link_protocol(c, a, b) == "3.1" and r["cmd"] in ("OPTS", "ACK", "FIN"):
            ck.expect(False, "capture frame %s: %s on the 3.1 link %s" % (r["frame"], r["cmd"], r["dir"]))
            return


# ------------------------------------------------------------------ scenarios
def sc_basic(c, ck):
    n1, n2 = sorted(k.id for k in c.kernel_nodes)[:2]
    check_gid(c, ck, n1)
    t = c.join(LS)
    ck.metric("join", round(max(t.values()), 3))
    blocking_and_lvb(c, ck, n1, n2)
    leave_all(c, ck, [n2, n1])
    recs = read_capture(c)
    counts = capture.counts_by_direction(recs)
    ck.counts = counts
    check_versions(c, ck, recs)
    p = link_protocol(c, n1, n2)
    pre = "v%s OPTS>MSG " % p if p == "3.2" else "v%s MSG " % protocol_of(c, n2)
    pre1 = "v%s OPTS>MSG " % p if p == "3.2" else "v%s MSG " % protocol_of(c, n1)
    d21, d12 = "%d->%d" % (n2, n1), "%d->%d" % (n1, n2)
    # node n1 asked first, so it masters res-basic: n2's requests and conversions go to it
    expect_at_least(ck, counts, d21, pre + "REQUEST", 2)         # EX (queued), NOQUEUE PR
    expect_at_least(ck, counts, d12, pre1 + "REQUEST_REPLY", 2)  # -EINPROGRESS, -EAGAIN
    expect_at_least(ck, counts, d12, pre1 + "GRANT", 2)          # queued EX, PR->EX
    expect_at_least(ck, counts, d21, pre + "CONVERT", 2)         # EX->PR, PR->EX
    expect_at_least(ck, counts, d21, pre + "UNLOCK", 1)
    expect_at_least(ck, counts, d12, pre1 + "UNLOCK_REPLY", 1)
    check_fins(c, ck, recs, n2, [n1])


def sc_three(c, ck):
    ids = sorted(k.id for k in c.kernel_nodes)
    a, b, x = ids[0], ids[1], ids[2]
    t = c.join(LS)
    ck.metric("join", round(max(t.values()), 3))
    for i in ids:
        c.agent_start(i, LS)
    # x masters res-x3 (it asks first); a holds EX; b queues behind it
    c.agent(x, LS, "lock m res-x3 NL", wait="CAST m ")
    ev = c.agent(a, LS, "lock h res-x3 EX", wait="CAST h ")
    ck.require(ev.get("status") == "OK", "node%d EX: %s" % (a, ev["line"]))
    c.agent(b, LS, "lock w res-x3 EX", wait="REQ w ")
    c.agent_wait(a, LS, "BAST h ")
    ev = c.agent(x, LS, "lock nq res-x3 PR NOQUEUE", wait="CAST nq ")
    ck.expect(ev.get("status") == "EAGAIN", "NOQUEUE on node%d: %s" % (x, ev["line"]))
    c.agent(a, LS, "unlock h", wait="CAST h ")
    ev = c.agent_wait(b, LS, "CAST w ")
    ck.expect(ev.get("status") == "OK", "queued EX on node%d: %s" % (b, ev["line"]))
    # node x leaves while b holds EX on a resource x mastered: recovery remasters it
    c.agent_quit(x, LS)
    total, remove_s = c.leave(LS, x)
    ck.metric("leave_node%d" % x, round(total, 3))
    ck.expect(remove_s is not None and remove_s < 1.0, "node%d remove took %s s" % (x, remove_s))
    for i in (a, b):
        d = c.kernel(i).sh("dmesg | grep 'dlm: %s:' | tail -30" % LS)
        ck.expect("remove member %d" % x in d, "node%d dmesg lacks 'remove member %d'" % (i, x))
        ck.expect(re.search(r"dlm_recover \d+ generation \d+ done", d) is not None,
                  "node%d: no finished recovery after node%d left" % (i, x))
    # the survivors still lock against each other, on the remastered resource too
    ev = c.agent(a, LS, "lock a2 res-x3 PR NOQUEUE", wait="CAST a2 ")
    ck.expect(ev.get("status") == "EAGAIN", "node%d PR vs node%d's EX after recovery: %s" % (a, b, ev["line"]))
    c.agent(b, LS, "unlock w", wait="CAST w ")
    ev = c.agent(a, LS, "lock a3 res-x3 EX", wait="CAST a3 ")
    ck.expect(ev.get("status") == "OK", "node%d EX after recovery: %s" % (a, ev["line"]))
    c.agent(a, LS, "unlock a3", wait="CAST a3 ")
    # x comes back: the members stop, x joins, everyone starts with three members
    c.add(LS, x)
    c.agent_start(x, LS)
    c.agent(a, LS, "lock k res-back EX", wait="CAST k ")
    c.agent(x, LS, "lock k res-back EX", wait="REQ k ")
    c.agent_wait(a, LS, "BAST k ")
    c.agent(a, LS, "unlock k", wait="CAST k ")
    ev = c.agent_wait(x, LS, "CAST k ")
    ck.expect(ev.get("status") == "OK", "node%d (rejoined) EX: %s" % (x, ev["line"]))
    c.agent(x, LS, "unlock k", wait="CAST k ")
    leave_all(c, ck, [x, b, a])
    recs = read_capture(c)
    ck.counts = capture.counts_by_direction(recs)
    check_versions(c, ck, recs)
    # the last leave of x: its FINs with a and b
    fins = [r for r in recs if r["key"].endswith("OPTS>FIN")]
    ck.expect(len(fins) >= 6, "capture: expected FINs for x's two leaves and the final ones, saw %d" % len(fins))


def sc_mixed(c, ck):
    old = [k.id for k in c.kernel_nodes if k.kernel == "5.10"]
    new = [k.id for k in c.kernel_nodes if k.kernel != "5.10"]
    ck.require(old and new, "the mixed scenario needs a 5.10 node and a newer one")
    o, n = old[0], new[0]
    t = c.join(LS)
    ck.metric("join", round(max(t.values()), 3))
    d = c.kernel(n).sh("dmesg | grep 'dlm: version' || true")
    ck.expect("version 0x00030001 for node %d detected" % o in d,
              "node%d (%s) should detect protocol 3.1 for node%d; dmesg: %s" % (n, c.kernel(n).kernel, o, d.strip()))
    blocking_and_lvb(c, ck, o, n)
    blocking_and_lvb(c, ck, n, o, res="res-mixed2", p="b")
    leave_all(c, ck, [n, o])
    recs = read_capture(c)
    ck.counts = capture.counts_by_direction(recs)
    check_versions(c, ck, recs)
    check_fins(c, ck, recs, n, [o])
    ck.note("5.10 (3.1) and %s interoperate: the newer kernel detects 3.1, sends bare MSG/RCOM with "
            "a 3.2 header version, and no OPTS/ACK/FIN on that link" % c.kernel(n).kernel)


def sc_reconnect(c, ck, count=300, max_rounds=4):
    """Each round: node n1 streams `count` EX lock+unlock on a resource n2 masters; once
    the stream is going, one node destroys all its DLM TCP sockets (sock_diag SOCK_DESTROY,
    as `ss -K` does). Rounds alternate the killing node until both kernels have logged a
    retransmission (at least two rounds)."""
    n1, n2 = sorted(k.id for k in c.kernel_nodes)[:2]
    ck.require(link_protocol(c, n1, n2) == "3.2", "reconnect needs two 3.2 kernels")
    c.join(LS)
    c.agent_start(n2, LS)
    c.agent(n2, LS, "lock m res-stream NL", wait="CAST m ")     # n2 masters res-stream
    retrans = {n1: 0, n2: 0}
    r = 0
    while r < max_rounds and (r < 2 or not all(retrans.values())):
        killer = (n1, n2)[r % 2]
        r += 1
        c.step("round %d: node%d streams %d x EX lock+unlock; node%d destroys its DLM sockets mid-stream"
               % (r, n1, count, killer))
        logf = "/tmp/bench%d.log" % r
        c.kernel(n1).bg("DLMLC_PROGRESS=25 dlmlc bench %s res-stream %d EX" % (LS, count), logf)
        c.kernel(n1).waitlog(logf, "PROGRESS bench done=50 ", 1, 60)        # the stream is going
        out = c.kernel(killer).sh("dlmlc sockkill %d" % c.cfg.port, check=False)
        ck.expect("SOCK_DESTROY" in out and "killed=0" not in out,
                  "round %d: node%d destroyed no socket: %s" % (r, killer, out.strip()))
        line = c.kernel(n1).waitlog(logf, "LOOPDONE|LOOPERR|ERROR", 1, 120)
        ok = re.search(r"ok=(\d+) failed=(\d+)", line)
        ck.expect(ok and int(ok.group(1)) == count and int(ok.group(2)) == 0,
                  "round %d: not every lock operation completed: %s" % (r, line))
        if "LOOPDONE" in line:
            ck.metric("round%d_total" % r, float(re.search(r"total=([0-9.]+)", line).group(1)))
        m = re.search(r"killed=(\d+)", out)
        ck.metric("round%d_sockets_destroyed_by_node%d" % (r, killer), int(m.group(1)) if m else 0, "")
        for i in (n1, n2):
            retrans[i] = int(c.kernel(i).sh("dmesg | grep -c 'retransmit dlm msg' || true").strip() or 0)
    ck.metric("rounds", r, "")
    logs = {}
    for i in (n1, n2):
        logs[i] = c.kernel(i).sh("dmesg | grep -E 'retransmit dlm msg|seq mismatch|socket error' || true")
        ck.metric("retransmits_logged_node%d" % i, retrans[i], "")
        ck.expect(retrans[i] > 0, "node%d never logged 'retransmit dlm msg' in %d rounds" % (i, r))
    c.agent_quit(n2, LS)
    leave_all(c, ck, [n2, n1])
    recs = read_capture(c)
    ck.counts = capture.counts_by_direction(recs)
    dups = {}
    for dirn in ("%d->%d" % (n1, n2), "%d->%d" % (n2, n1)):
        dups[dirn] = capture.duplicates(capture.seqs(recs, dirn))
    ck.metric("duplicate_seqs", {k: v[:10] for k, v in dups.items()}, "")
    for i, other in ((n1, n2), (n2, n1)):
        if "retransmit dlm msg" in logs[i]:
            resent = [int(x) for x in re.findall(r"retransmit dlm msg, seq (\d+)", logs[i])]
            d = "%d->%d" % (i, other)
            ck.expect(set(resent) <= set(dups[d]), "node%d retransmitted seqs %s, but the capture shows "
                      "duplicates %s in %s" % (i, resent, dups[d], d))


def sc_decode(c, ck, n_ops=25):
    """An exactly known workload, then every capture of this run through `dlm-peer decode`."""
    n1, n2 = sorted(k.id for k in c.kernel_nodes)[:2]
    c.join(LS)
    c.agent_start(n2, LS)
    c.agent(n2, LS, "lock m res-dec NL", wait="CAST m ")             # n2 masters res-dec
    out = c.kernel(n1).sh("dlmlc bench %s res-dec %d EX" % (LS, n_ops), timeout=120)
    ck.require("LOOPDONE" in out and "failed=0" in out, "bench failed: %s" % out.strip())
    c.agent(n2, LS, "unlock m", wait="CAST m ")
    c.agent_quit(n2, LS)
    leave_all(c, ck, [n2, n1])
    recs = read_capture(c)
    counts = capture.counts_by_direction(recs)
    ck.counts = counts
    d12, d21 = "%d->%d" % (n1, n2), "%d->%d" % (n2, n1)
    m = "v3.2 OPTS>MSG "
    g = lambda d, k: counts.get(d, {}).get(k, 0)   # noqa: E731
    # every request of n1 reaches n2 as a REQUEST, or (the very first one, when n2 is also
    # the directory node) as a LOOKUP answered by a REQUEST_REPLY
    ck.expect(g(d12, m + "REQUEST") + g(d12, m + "LOOKUP") == n_ops,
              "%s REQUEST+LOOKUP = %d, expected %d" % (d12, g(d12, m + "REQUEST") + g(d12, m + "LOOKUP"), n_ops))
    ck.expect(g(d21, m + "REQUEST_REPLY") == n_ops, "%s REQUEST_REPLY = %d, expected %d" % (d21, g(d21, m + "REQUEST_REPLY"), n_ops))
    ck.expect(g(d12, m + "UNLOCK") == n_ops, "%s UNLOCK = %d, expected %d" % (d12, g(d12, m + "UNLOCK"), n_ops))
    ck.expect(g(d21, m + "UNLOCK_REPLY") == n_ops, "%s UNLOCK_REPLY = %d, expected %d" % (d21, g(d21, m + "UNLOCK_REPLY"), n_ops))
    ck.expect(g(d21, m + "LOOKUP") == g(d12, m + "LOOKUP_REPLY") <= 1,
              "n2's one NL request: LOOKUP %d / LOOKUP_REPLY %d" % (g(d21, m + "LOOKUP"), g(d12, m + "LOOKUP_REPLY")))
    for k in ("GRANT", "BAST", "CONVERT", "CANCEL"):
        ck.expect(g(d12, m + k) + g(d21, m + k) == 0, "unexpected %s messages" % k)
    for d in (d12, d21):
        ck.expect(g(d, "v3.2 OPTS>FIN") == 1, "%s: %d FIN, expected 1" % (d, g(d, "v3.2 OPTS>FIN")))
        s = capture.seqs(recs, d)
        ck.expect(s == list(range(len(s))), "%s: OPTS seqs are not 0..%d without gaps/duplicates" % (d, len(s) - 1))
    # --- dlm-peer decode over every capture of this run (runner fills ck.all_captures)
    binary = find_dlm_peer()
    if not binary:
        raise Skip("dlm-peer binary not built (the tshark counts above were checked)")
    for pcap, transport, tcounts in getattr(ck, "all_captures", []) + [(c.pcap, c.cfg.transport, counts)]:
        res = run_decode(binary, pcap)
        name = os.path.basename(os.path.dirname(pcap))
        if not ck.expect(res["rc"] == 0 and res.get("errors", 1) == 0,
                         "dlm-peer decode %s: rc %s, errors %s %s" % (name, res["rc"], res.get("errors"), res.get("stderr", "")[-300:])):
            continue
        ours = res.get("counts_by_direction", {})
        diffs = capture.compare(tcounts, ours, exact=transport != "sctp")
        if diffs and transport != "sctp":
            # tshark skips the data of "spurious retransmissions" (segments captured after the
            # ACK that covers them); dlm-peer decode counts those messages: excuse exactly that.
            allowance = capture.spurious_data_bytes(pcap, capture_nodes(c, pcap), c.cfg.port)
            if capture.excess_within(tcounts, ours, allowance):
                ck.note("decode %s: dlm-peer counts %s more than tshark, all within segments tshark calls "
                        "spurious retransmissions (%s bytes)" % (name, "; ".join(diffs[:4]), allowance))
                diffs = []
        ck.expect(not diffs, "dlm-peer decode %s disagrees with tshark: %s" % (name, "; ".join(diffs[:8])))
        ck.metric("decoded_%s" % name, res.get("messages"), "msgs")


def capture_nodes(c, pcap):
    """Address -> node id of the run that made `pcap` (its cluster.toml sits next to it)."""
    cfg = c.cfg
    toml = os.path.join(os.path.dirname(pcap), "cluster.toml")
    if os.path.exists(toml):
        try:
            cfg = cfgmod.load(toml)
        except (cfgmod.ConfigError, OSError):
            pass
    return {n.address: str(n.id) for n in cfg.nodes}


def run_decode(binary, pcap):
    try:
        r = subprocess.run([binary, "decode", "--summary", "--json", pcap], capture_output=True, text=True,
                           timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return dict(rc=-1, stderr=str(e))
    res = dict(rc=r.returncode, stderr=r.stderr)
    try:
        res.update(json.loads(r.stdout))
    except ValueError:
        res["stderr"] += " (stdout is not one JSON object)"
        res["errors"] = res.get("errors", 1)
    return res


def sc_peer_join(c, ck):
    """Two kernels and a dlm-peer form a lockspace (recovery with slots and generation across
    both kinds of node); the kernels lock among themselves on a resource whose directory node
    is a kernel; the dlm-peer leaves on SIGTERM while the kernels are reconfigured (the FIN
    handshake must finish well under a second); then the kernels leave."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    peers = sorted(p.id for p in c.peers)
    n1, n2 = kernels[:2]
    members = [(i, c.cfg.node(i).weight) for i in sorted(c.cfg.lockspace(LS).members)]
    res = next(n for n in ("res-k%d" % i for i in range(100))
               if directory_node(n.encode(), members) in kernels)
    t = c.join(LS)
    ck.metric("join", round(max(t.values()), 3))
    for p in c.peers:
        ck.require(wait_file(p.log, "joined %s" % LS, 30),
                   "%s: no 'joined %s' in its log:\n%s" % (p.name, LS, tail(p.log)))
    for k in kernels:
        for pid in peers:
            if protocol_of(c, k) == "3.1":
                # a 3.1 kernel has no midcomms (and no debugfs comms): dlm-peer falls back
                ck.expect(wait_file(c.nodes[pid].log, "version 0x00030001 for node %d detected" % k, 5),
                          "dlm-peer node%d did not detect node%d as 3.1" % (pid, k))
                continue
            want = "0x0003000%s" % protocol_of(c, pid)[-1]
            v = c.kernel(k).sh("cat /sys/kernel/debug/dlm/comms/%d/version 2>/dev/null || true" % pid).strip()
            ck.expect(v == want, "node%d: debugfs comms/%d/version is %r, expected %s" % (k, pid, v, want))
        dm = c.dmesg(k)
        ck.expect("recover" in dm and "done" in dm, "node%d: no finished recovery in dmesg" % k)
    for pid in peers:
        st = peer_status(pid)
        ls = next((l for l in st.get("lockspaces", []) if l.get("name") == LS), None)
        ck.expect(ls is not None and ls["members"] == sorted(c.cfg.lockspace(LS).members) and ls["generation"] >= 1
                  and ls["phase"] == "running", "dlm-peer status of node%d: %s" % (pid, st))
        for p in st.get("peers", []):
            want = protocol_of(c, p["node"])   # the version in the peer's headers (a 6.x kernel says 3.2 even to a 3.1 node)
            ck.expect(p["version"] == want, "dlm-peer status: node %s speaks %s, expected %s" % (p["node"], p["version"], want))
    ck.note("kernels lock %s (directory node %d)" % (res, directory_node(res.encode(), members)))
    blocking_and_lvb(c, ck, n1, n2, res=res)
    for pid in peers:
        peer_leaves(c, ck, pid)
    leave_all(c, ck, [n2, n1])
    recs = read_capture(c)
    ck.counts = capture.counts_by_direction(recs)
    check_versions(c, ck, recs)
    for pid in peers:
        check_fins(c, ck, recs, pid, kernels)


def leave_and_decode(c, ck, pid, kernels):
    """The end of a dlm-peer + two kernels scenario: the lock clients quit, dlm-peer leaves with
    FIN, then the kernels (the second first); versions and FIN handshakes are checked on the
    capture, and the message counts per direction from `dlm-peer decode` are returned (tshark
    cannot type bare MSGs with a 3.2 header, which is what a 3.2 node sends to a 3.1 one)."""
    n1, n2 = kernels[:2]
    c.agent_quit(n1, LS)
    c.agent_quit(n2, LS)
    peer_leaves(c, ck, pid)
    leave_all(c, ck, [n2, n1])
    recs = read_capture(c)
    ck.counts = capture.counts_by_direction(recs)
    check_versions(c, ck, recs)
    check_fins(c, ck, recs, pid, kernels)
    dec = run_decode(find_dlm_peer(), c.pcap)
    ck.require(dec.get("rc") == 0 and dec.get("errors") == 0, "dlm-peer decode of the capture: %s" % dec)
    return dec.get("counts_by_direction", {})


def sc_peer_locks(c, ck):
    """dlm-peer serves lock traffic from kernels: it masters a resource it locked first (a kernel's
    PR waits for its EX, dlm-peer gets the blocking callback, the kernel is granted after
    dlm-peer's unlock), and it is the directory node of another (a kernel's LOOKUP is answered
    by dlm-peer and the kernel masters it)."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    peer = c.nodes[pid]
    n1, n2 = kernels[:2]
    members = [(i, c.cfg.node(i).weight) for i in sorted(c.cfg.lockspace(LS).members)]
    dir_res = next(n for n in ("res-d%d" % i for i in range(100)) if directory_node(n.encode(), members) == pid)
    t = c.join(LS)
    ck.metric("join", round(max(t.values()), 3))
    ck.require(wait_file(peer.log, "LOCK %s %s EX granted" % (LS, PEER_RES), 30),
               "dlm-peer did not get its EX on %s:\n%s" % (PEER_RES, tail(peer.log)))
    c.agent_start(n1, LS)
    c.agent_start(n2, LS)
    # dlm-peer masters PEER_RES and holds EX: the kernel's PR must wait for dlm-peer's unlock
    t0 = time.time()
    ev = c.agent(n1, LS, "lock kp %s PR" % PEER_RES, wait="REQ kp ")
    ck.require(int(ev.get("rv", -1)) > 0, "node%d: PR request failed: %s" % (n1, ev["line"]))
    ck.expect(wait_file(peer.log, "BAST %s %s EX" % (LS, PEER_RES), 10), "dlm-peer got no blocking callback")
    ev = c.agent_wait(n1, LS, "CAST kp ", timeout=20)
    waited = time.time() - t0
    ck.expect(ev.get("status") == "OK", "node%d: PR on %s: %s" % (n1, PEER_RES, ev["line"]))
    ck.metric("kernel_pr_waited", round(waited, 3))
    ck.expect(wait_file(peer.log, "UNLOCK %s %s EX done" % (LS, PEER_RES), 5), "dlm-peer never released its EX")
    ck.expect(waited > 0.5, "node%d's PR was granted after %.2f s: it did not wait for dlm-peer's EX" % (n1, waited))
    ev = c.agent(n1, LS, "unlock kp", wait="CAST kp ")
    ck.expect(ev.get("status") == "EUNLOCK", "node%d unlock: %s" % (n1, ev["line"]))
    # dlm-peer is the directory node of dir_res: kernels look it up there
    ck.note("dlm-peer masters %s; directory node of %s is dlm-peer" % (PEER_RES, dir_res))
    ev = c.agent(n2, LS, "lock kd %s EX" % dir_res, wait="CAST kd ")
    ck.expect(ev.get("status") == "OK", "node%d: EX on %s: %s" % (n2, dir_res, ev["line"]))
    for k in (n1, n2):
        save_kernel_dumps(c, k, LS, "kd-held")
    ev = c.agent(n1, LS, "lock kd1 %s PR NOQUEUE" % dir_res, wait="CAST kd1 ")
    ck.expect(ev.get("status") == "EAGAIN", "node%d: NOQUEUE PR on %s held EX elsewhere: %s" % (n1, dir_res, ev["line"]))
    ev = c.agent(n2, LS, "unlock kd", wait="CAST kd ")
    ck.expect(ev.get("status") == "EUNLOCK", "node%d unlock: %s" % (n2, ev["line"]))
    counts = leave_and_decode(c, ck, pid, kernels)

    def msg(a, b, t):   # the key of a DLM_MSG from a to b
        pre = "v3.2 OPTS>MSG " if link_protocol(c, a, b) == "3.2" else "v%s MSG " % protocol_of(c, a)
        return "%d->%d" % (a, b), pre + t
    # PR to dlm-peer, the master: a REQUEST, or a LOOKUP when dlm-peer is also the directory
    # node (the directory node that is the master serves the lookup as the request)
    d, key = msg(n1, pid, "REQUEST")
    requests = counts.get(d, {}).get(key, 0) + counts.get(d, {}).get(key.replace("REQUEST", "LOOKUP"), 0)
    ck.expect(requests >= 1, "capture: %s REQUEST or LOOKUP: expected at least 1, saw %d" % (d, requests))
    expect_at_least(ck, counts, *msg(pid, n1, "REQUEST_REPLY"), 1)    # -EINPROGRESS
    expect_at_least(ck, counts, *msg(pid, n1, "GRANT"), 1)            # after dlm-peer's unlock
    expect_at_least(ck, counts, *msg(n2, pid, "LOOKUP"), 1)           # dlm-peer as directory
    expect_at_least(ck, counts, *msg(pid, n2, "LOOKUP_REPLY"), 1)


def sc_peer_nodir(c, ck):
    """A nodir lockspace (locking.md §3.10; kernels get sysfs nodir=1 before their first start,
    dlm-peer `nodir = true`): the node a name hashes to masters it and requests go straight
    there. dlm-peer takes EX on a name that hashes to a kernel, whose NOQUEUE PR from the other
    kernel then fails; a kernel takes EX on a name that hashes to dlm-peer, and dlm-peer's own PR
    waits for the kernel's unlock. Neither side sends a LOOKUP, LOOKUP_REPLY, REMOVE or
    RCOM_LOOKUP (also not in the recoveries of the leaves)."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    n1, n2 = kernels[:2]
    ck.require(c.cfg.lockspace(LS).nodir, "lockspace %s of %s is not nodir" % (LS, c.cfg.path))
    members = [(i, c.cfg.node(i).weight) for i in sorted(c.cfg.lockspace(LS).members)]
    kres = next(n for n in ("nodir-k%d" % i for i in range(200)) if directory_node(n.encode(), members) == n1)
    pres = next(n for n in ("nodir-p%d" % i for i in range(200)) if directory_node(n.encode(), members) == pid)
    c.join(LS)
    c.agent_start(n1, LS)
    c.agent_start(n2, LS)

    def peer_resource(name):
        doc = peerctl.locks_json(pid, LS)
        return next((r for r in doc.get("resources", []) if r.get("name") == name), None)

    # dlm-peer -> the kernel a name hashes to
    ans = peerctl.lock(pid, LS, kres, "EX")
    ck.require(ans.get("status") == "granted", "dlm-peer EX on %s (hashes to node%d): %s" % (kres, n1, ans))
    r = peer_resource(kres)
    ck.expect(r is not None and r.get("master") == n1, "dlm-peer: %s should be mastered by node%d: %s" % (kres, n1, r))
    ev = c.agent(n2, LS, "lock k2 %s PR NOQUEUE" % kres, wait="CAST k2 ")
    ck.expect(ev.get("status") == "EAGAIN", "node%d: NOQUEUE PR on %s held EX by dlm-peer: %s" % (n2, kres, ev["line"]))
    ans = peerctl.unlock(pid, LS, int(ans["lkid"]))
    ck.expect(ans.get("status") == "unlocked", "dlm-peer unlock of %s: %s" % (kres, ans))
    # a kernel -> dlm-peer, which masters the name that hashes to it
    ev = c.agent(n1, LS, "lock k1 %s EX" % pres, wait="CAST k1 ")
    ck.expect(ev.get("status") == "OK", "node%d: EX on %s (hashes to dlm-peer): %s" % (n1, pres, ev["line"]))
    r = peer_resource(pres)
    ck.expect(r is not None and r.get("master") == pid and [l.get("nodeid") for l in r.get("granted", [])] == [n1],
              "dlm-peer should master %s with node%d's EX: %s" % (pres, n1, r))
    w = peerctl.lock(pid, LS, pres, "PR", wait=False)
    ck.expect(w.get("status") == "queued", "dlm-peer PR on %s under node%d's EX: %s" % (pres, n1, w))
    c.agent(n1, LS, "unlock k1", wait="CAST k1 ")
    deadline = time.time() + 10
    while time.time() < deadline:
        r = peer_resource(pres)
        if r and [(l.get("nodeid"), l.get("grmode")) for l in r.get("granted", [])] == [(0, "PR")]:
            break
        time.sleep(0.2)
    ck.expect(r and [(l.get("nodeid"), l.get("grmode")) for l in r.get("granted", [])] == [(0, "PR")],
              "dlm-peer's PR on %s was not granted after node%d's unlock: %s" % (pres, n1, r))
    if w.get("lkid"):
        peerctl.unlock(pid, LS, int(w["lkid"]))
    counts = leave_and_decode(c, ck, pid, kernels)
    directory = {"%s %s" % (d, k): v for d, m in counts.items() for k, v in m.items()
                 if k.endswith(("LOOKUP", "LOOKUP_REPLY", "REMOVE"))}
    ck.expect(not directory, "capture: directory traffic in a nodir lockspace: %s" % directory)
    requests = {d: sum(v for k, v in m.items() if k.endswith(" REQUEST")) for d, m in counts.items()}
    for a, b in ((pid, n1), (n1, pid)):
        d = "%d->%d" % (a, b)
        ck.expect(requests.get(d, 0) >= 1, "capture: no REQUEST %s (straight to the master)" % d)


def sc_peer_bench(c, ck, count=300, rounds=3):
    """The lab half of `bench locks`: one kernel's lock + unlock round trips (EX, its own lock
    client through /dev/dlm) to a resource mastered by another kernel, next to the same on a
    resource mastered by dlm-peer, interleaved in the same run. Both resources are placed so
    that their master is also their directory node, so after the first lookup every round trip
    is REQUEST/REQUEST_REPLY + UNLOCK/UNLOCK_REPLY to the master. The kernels run under QEMU
    (TCG) and dlm-peer natively, so the figures compare the setups of this lab, not CPUs."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    peer = c.nodes[pid]
    n1, n2 = kernels[:2]
    members = [(i, c.cfg.node(i).weight) for i in sorted(c.cfg.lockspace(LS).members)]
    kres = next(n for n in ("bench-k%d" % i for i in range(200)) if directory_node(n.encode(), members) == n2)
    ck.require(directory_node(BENCH_PEER_RES.encode(), members) == pid,
               "%s must hash to dlm-peer (node %d) as its directory node" % (BENCH_PEER_RES, pid))
    t = c.join(LS)
    ck.metric("join", round(max(t.values()), 3))
    ck.require(wait_file(peer.log, "LOCK %s %s NL granted" % (LS, BENCH_PEER_RES), 30),
               "dlm-peer did not get its NL on %s:\n%s" % (BENCH_PEER_RES, tail(peer.log)))
    c.agent_start(n2, LS)
    ev = c.agent(n2, LS, "lock hold %s NL" % kres, wait="CAST hold ")
    ck.require(ev.get("status") == "OK", "node%d: NL on %s: %s" % (n2, kres, ev["line"]))
    c.agent_start(n1, LS)
    results = {"kernel": [], "peer": []}
    for r in range(rounds):
        for kind, res in (("kernel", kres), ("peer", BENCH_PEER_RES)):
            tag = "b%s%d" % (kind[0], r)
            ev = c.agent(n1, LS, "loop %s %s EX %d" % (tag, res, count), wait="LOOPDONE %s " % tag,
                         timeout=max(60, count * 0.2))
            ck.require(ev.get("ok") == str(count) and ev.get("failed") == "0",
                       "node%d loop on %s: %s" % (n1, res, ev["line"]))
            results[kind].append(float(ev["avg_ms"]))
            ck.note("round %d, master %s (%s): %d lock+unlock, avg %.3f ms, min %s ms, max %s ms"
                    % (r, kind, res, count, float(ev["avg_ms"]), ev.get("min_ms"), ev.get("max_ms")))
    # dlm-peer as the requester: the same round trips from dlm-peer to the kernel master, each
    # lock and unlock a control-socket request (whose own cost, about 0.1 ms, is included)
    results["peer_to_kernel"] = []
    for r in range(rounds):
        t0 = time.time()
        for i in range(count):
            ans = peerctl.lock(pid, LS, kres, "EX")
            ck.require(ans.get("status") == "granted", "dlm-peer EX on %s: %s" % (kres, ans))
            ans = peerctl.unlock(pid, LS, int(ans["lkid"]))
            ck.require(ans.get("status") == "unlocked", "dlm-peer unlock on %s: %s" % (kres, ans))
        results["peer_to_kernel"].append((time.time() - t0) * 1000.0 / count)
        ck.note("round %d, dlm-peer -> kernel master (%s): %d lock+unlock, avg %.3f ms" % (r, kres, count, results["peer_to_kernel"][-1]))
    ck.metric("peer_requester_avg_ms", round(min(results["peer_to_kernel"]), 3), "ms")
    # the first round warms up (lookups, connections); the figures are from the best round
    k_ms, p_ms = min(results["kernel"]), min(results["peer"])
    ck.metric("kernel_master_avg_ms", round(k_ms, 3), "ms")
    ck.metric("peer_master_avg_ms", round(p_ms, 3), "ms")
    ck.metric("kernel_master_pairs_per_s", round(1000.0 / k_ms, 1), "1/s")
    ck.metric("peer_master_pairs_per_s", round(1000.0 / p_ms, 1), "1/s")
    ck.metric("peer_vs_kernel_latency_ratio", round(p_ms / k_ms, 3), "x")
    c.agent(n2, LS, "unlock hold", wait="CAST hold ")
    c.agent_quit(n1, LS)
    c.agent_quit(n2, LS)
    peer_leaves(c, ck, pid)
    leave_all(c, ck, [n2, n1])
    recs = read_capture(c)
    ck.counts = capture.counts_by_direction(recs)
    dec = run_decode(find_dlm_peer(), c.pcap)
    ck.require(dec.get("rc") == 0 and dec.get("errors") == 0, "dlm-peer decode of the capture: %s" % dec)
    counts = dec.get("counts_by_direction", {})
    pre = "v3.2 OPTS>MSG " if link_protocol(c, n1, pid) == "3.2" else "v%s MSG " % protocol_of(c, n1)
    # every loop iteration on the dlm-peer resource is one request and one UNLOCK to dlm-peer; the
    # first request is a LOOKUP (dlm-peer is the directory node), which dlm-peer, being also the
    # master, serves as the request itself (as a kernel directory node does)
    d = "%d->%d" % (n1, pid)
    requests = counts.get(d, {}).get(pre + "REQUEST", 0) + counts.get(d, {}).get(pre + "LOOKUP", 0)
    ck.expect(requests >= count * rounds, "capture: %s REQUEST+LOOKUP: expected at least %d, saw %d"
              % (d, count * rounds, requests))
    expect_at_least(ck, counts, d, pre + "UNLOCK", count * rounds)


def start_joins(c, lsname, timeout):
    """Every kernel member starts joining `lsname` (dlmlc join in the background); returns the
    kernels. For scenarios where the join is expected to fail or hang."""
    ls = c.cfg.lockspace(lsname)
    kernels = sorted(k.id for k in c.kernel_nodes)
    members = sorted(ls.members)
    c.step("join %s (global id 0x%08x) on nodes %s, members %s; expected to fail" % (lsname, ls.global_id, kernels, members))
    for i in kernels:
        c.kernel(i).bg("dlmlc join %s --id 0x%08x --timeout %d %s" % (lsname, ls.global_id, timeout, c._member_args(members)),
                       "/tmp/join-%s.log" % lsname)
    return kernels


def sc_peer_lvb_mismatch(c, ck):
    """S11: dlm-peer's lockspace has LVB length 64, the kernels' 32 (the /dev/dlm default). Each
    side checks the other's RCOM_STATUS(_REPLY): the kernels log "config mismatch" and their
    create returns -EPROTO; dlm-peer logs the mismatch and refuses the join. Nothing hangs."""
    pid = sorted(p.id for p in c.peers)[0]
    peer = c.nodes[pid]
    t0 = time.time()
    kernels = start_joins(c, LS, 30)
    for i in kernels:
        line = c.kernel(i).waitlog("/tmp/join-%s.log" % LS, "JOINED|JOINFAILED|ERROR", 1, 45)
        ck.expect("JOINFAILED" in line, "node%d: the join should fail with -EPROTO: %s" % (i, line))
        out = c.kernel(i).sh("cat /tmp/join-%s.log" % LS)
        ck.expect("rv=-71" in out, "node%d: the create should return -EPROTO (-71):\n%s" % (i, out))
    ck.metric("kernels_refused_after", round(time.time() - t0, 3))
    mism = [i for i in kernels if "config mismatch" in c.dmesg(i)]
    ck.expect(mism, "no kernel logged 'config mismatch' (dmesg of %s)" % kernels)
    ck.note("kernels logging 'config mismatch': %s" % mism)
    ck.expect(wait_file(peer.log, "config mismatch", 10), "dlm-peer did not log the config mismatch:\n%s" % tail(peer.log))
    ck.expect(wait_file(peer.log, "join failed", 10), "dlm-peer did not refuse the join:\n%s" % tail(peer.log))
    st = peer_status(pid)
    ls = next((l for l in st.get("lockspaces", []) if l.get("name") == LS), None)
    ck.expect(ls is None or ls.get("completed_recoveries", 0) == 0,
              "dlm-peer status shows %s as joined: %s" % (LS, st))


def sc_peer_wrong_id(c, ck):
    """S12: dlm-peer names the lockspace with another global id. The kernels' RCOM_STATUS for
    theirs is answered "not ready" (dlm-peer has no such lockspace) and dlm-peer's is answered
    "not ready" by them: the kernels' recovery waits (the kernel never gives up), and the
    cluster manager's timeouts report it: dlmlc's join timeout on the kernels, dlm-peer's
    --join-timeout naming the node it waits for."""
    pid = sorted(p.id for p in c.peers)[0]
    peer = c.nodes[pid]
    kernels = start_joins(c, LS, 15)
    for i in kernels:
        line = c.kernel(i).waitlog("/tmp/join-%s.log" % LS, "JOINED|JOINFAILED|ERROR", 1, 40)
        ck.expect("ERROR" in line and "not joined after" in line,
                  "node%d: the join should still wait after 15 s: %s" % (i, line))
        ck.expect("join complete" not in c.dmesg(i), "node%d: a join completed" % i)
    ck.expect(wait_file(peer.log, "not joined after", 30),
              "dlm-peer did not report its stuck join:\n%s" % tail(peer.log))
    log = open(peer.log).read()
    ck.expect(re.search(r"waiting for node [0-9]+", log) is not None,
              "dlm-peer's report does not name the node it waits for:\n%s" % tail(peer.log))
    st = peer_status(pid)
    ls = next((l for l in st.get("lockspaces", []) if l.get("name") == LS), None)
    ck.expect(ls is not None and ls.get("completed_recoveries") == 0 and ls.get("id") == "0x12345678",
              "dlm-peer status: %s" % st)
    # the kernels are stuck in the create write (uninterruptible); the VMs are torn down as they are


def sc_peer_weight0(c, ck, names=24):
    """S17: dlm-peer with weight 0 is never a directory node: kernels lock many names and none
    of their LOOKUPs (nor any RCOM_LOOKUP) goes to dlm-peer; dlm-peer still masters the resource
    it locks first (its own lookup goes to a kernel directory node) and kernels then send their
    requests for it to dlm-peer."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    peer = c.nodes[pid]
    n1, n2 = kernels[:2]
    members = [(i, c.cfg.node(i).weight) for i in sorted(c.cfg.lockspace(LS).members)]
    for i in range(names):
        ck.require(directory_node(("w0-%d" % i).encode(), members) != pid, "directory placement gives node %d weight 0" % pid)
    c.join(LS)
    ck.require(wait_file(peer.log, "LOCK %s %s EX granted" % (LS, PEER_RES), 30),
               "dlm-peer did not get its EX on %s:\n%s" % (PEER_RES, tail(peer.log)))
    c.agent_start(n1, LS)
    for i in range(names):
        ev = c.agent(n1, LS, "lock w%d w0-%d EX" % (i, i), wait="CAST w%d " % i)
        ck.expect(ev.get("status") == "OK", "node%d: EX on w0-%d: %s" % (n1, i, ev["line"]))
    ev = c.agent(n1, LS, "lock kp %s PR NOQUEUE" % PEER_RES, wait="CAST kp ")
    ck.expect(ev.get("status") == "EAGAIN", "node%d: NOQUEUE PR on dlm-peer's EX: %s" % (n1, ev["line"]))
    for i in range(names):
        c.agent(n1, LS, "unlock w%d" % i, wait="CAST w%d " % i)
    c.agent_quit(n1, LS)
    peer_leaves(c, ck, pid)
    leave_all(c, ck, [n2, n1])
    dec = run_decode(find_dlm_peer(), c.pcap)
    ck.require(dec.get("rc") == 0 and dec.get("errors") == 0, "dlm-peer decode of the capture: %s" % dec)
    counts = dec.get("counts_by_direction", {})
    to_peer = {k: v for d, kv in counts.items() if d.endswith("->%d" % pid) for k, v in kv.items()}
    lookups = sum(v for k, v in to_peer.items() if k.endswith("LOOKUP"))
    ck.expect(lookups == 0, "dlm-peer (weight 0) received %d LOOKUP/RCOM LOOKUP messages: %s" % (lookups, to_peer))
    ck.expect(any(k.endswith("MSG REQUEST") for k in to_peer), "no REQUEST to dlm-peer, the master of %s: %s" % (PEER_RES, to_peer))
    from_peer = {k: v for d, kv in counts.items() if d.startswith("%d->" % pid) for k, v in kv.items()}
    ck.expect(any(k.endswith("MSG LOOKUP") for k in from_peer), "dlm-peer sent no LOOKUP to a kernel directory node: %s" % from_peer)


def kernel_recovery_ms(c, nid, after=0):
    """Durations (ms) of the recoveries the kernel of `nid` finished, from dmesg
    ("dlm_recover N generation G done: T ms"), skipping the first `after`."""
    # only those lines: the whole dmesg takes seconds over the serial control channel
    lines = c.kernel(nid).sh("dmesg | grep 'dlm_recover.*done' || true")
    return [int(m) for m in re.findall(r"dlm_recover \d+ generation \d+ done: (\d+) ms", lines)][after:]


def fail_node(c, ck, dead, timeout=120):
    """Node `dead` fails: its VM is powered off (or its dlm-peer process killed with SIGKILL);
    the cluster manager then stops the lockspace on every survivor and starts them with the
    new member list (recovery.md §5.4). Returns {survivor: recovery ms} (kernels from dmesg,
    dlm-peers from their status) and the wall time from the stop to the last recovery done."""
    import signal as _signal
    survivors = sorted(c.members[LS] - {dead})
    node = c.nodes[dead]
    is_peer = isinstance(node, cfgmod_peer_class())
    c.step("node%d fails (%s); survivors %s: stop all, then members+start all" % (
        dead, "dlm-peer killed" if is_peer else "VM powered off", survivors))
    if is_peer:
        node.proc.send_signal(_signal.SIGKILL)
        node.proc.wait(timeout=10)
        c.state.drop_proc(node.proc.pid)
        node.proc = None
    else:
        if getattr(node, "frozen", False):
            os.kill(node.proc.pid, _signal.SIGKILL)     # SIGTERM would wait for a SIGCONT
        node.stop()
    t0 = time.time()
    out = restart_members(c, ck, survivors, timeout, "after node%d failed" % dead)
    wall = time.time() - t0
    c.members[LS] = set(survivors)
    # As dlm_controld does for a node that failed: drop its comms entry on the kernels, which
    # resets the kernel's midcomms state for it (dlm_midcomms_close); otherwise the kernel's
    # last lockspace release would wait for a FIN handshake with the dead node. A node that
    # comes back gets a new entry (renew).
    for i in kernels_among(c, survivors):
        c.kernel(i).sh("rmdir /sys/kernel/config/dlm/cluster/comms/%d" % dead)
    return out, wall


def cfgmod_peer_class():
    from .cluster import PeerNode as _P
    return _P


def node_stop(c, nid):
    """The cluster manager's stop of the lockspace on one member (synchronous)."""
    if isinstance(c.nodes[nid], cfgmod_peer_class()):
        peer_answer(c, nid, "ls-stop", peerctl.ls_stop(nid, LS))
    else:
        c.kernel(nid).sh("dlmlc stop %s" % LS)


def node_start(c, nid, members):
    """The cluster manager's start with a member list (asynchronous: recovery runs)."""
    if isinstance(c.nodes[nid], cfgmod_peer_class()):
        peer_answer(c, nid, "ls-start", peerctl.ls_start(nid, LS, [(i, c.cfg.node(i).weight) for i in sorted(members)]))
    else:
        c.kernel(nid).bg("dlmlc members %s --no-stop %s" % (LS, c._member_args(members)), "/tmp/members-%s.log" % LS)


def kernels_among(c, ids):
    return [i for i in ids if not isinstance(c.nodes[i], cfgmod_peer_class())]


def recovery_counts(c, ids):
    """{kernel: recoveries finished so far} for the kernels among `ids` (for wait_started)."""
    return {i: recoveries_done(c, i) for i in kernels_among(c, ids)}


def wait_started(c, ck, members, before, timeout, why):
    """After node_start on `members`: each kernel's reconfiguration succeeded and it finished a
    recovery beyond its count in `before`; each dlm-peer runs with `members`. Returns
    {node: that recovery's ms}."""
    out = {}
    for i in members:
        if i not in before:
            out[i] = peer_wait_recovered(c, ck, i, members, timeout)
            continue
        line = c.kernel(i).waitlog("/tmp/members-%s.log" % LS, "RECONFIGURED|ERROR", 1, timeout)
        ck.require("RECONFIGURED" in line, "node%d: reconfiguring %s failed: %s" % (i, LS, line))
        end = time.time() + timeout
        while recoveries_done(c, i) <= before[i] and time.time() < end:
            time.sleep(0.1)
        done = kernel_recovery_ms(c, i, before[i])
        ck.require(done, "node%d: no recovery finished %s" % (i, why))
        out[i] = done[-1]
    return out


def restart_members(c, ck, members, timeout, why):
    """The cluster manager's barrier: stop the lockspace on every member, then start all of
    them with `members`, and wait until each has recovered (wait_started)."""
    before = recovery_counts(c, members)
    for i in members:
        node_stop(c, i)
    for i in members:
        node_start(c, i, members)
    return wait_started(c, ck, members, before, timeout, why)


def peer_answer(c, nid, what, ans):
    """A control-socket answer of dlm-peer `nid`: traced; an error answer fails the step."""
    c.trace("dlm-peer node%d %s -> %s" % (nid, what, json.dumps(ans)[:400]))
    if ans.get("ok") is False or ans.get("error"):
        raise StepError("dlm-peer node%d: %s failed: %s" % (nid, what, ans))
    return ans


def peer_wait_recovered(c, ck, nid, members, timeout):
    """Waits until dlm-peer `nid` runs with `members` after a recovery; its duration in ms."""
    end = time.time() + timeout
    st = {}
    while time.time() < end:
        st = peer_status(nid)
        ls = next((l for l in st.get("lockspaces", []) if l.get("name") == LS), None)
        if ls and ls.get("phase") == "running" and ls.get("members") == sorted(members):
            return ls.get("last_recovery_milliseconds")
        time.sleep(0.1)
    ck.require(False, "dlm-peer node%d did not recover with members %s: %s" % (nid, members, st))


def sc_recovery_bench(c, ck, locks=0, peer_holds=False):
    """Benchmark, recovery after a node failure: the lockspace forms (join time per kernel), the
    first member (node 1, a kernel) takes `locks` PR locks (one resource each: it masters them
    all) and a second member takes PR on the same names (its process copies, mastered by the
    first): the second kernel, or with `peer_holds` the lowest dlm-peer (through its control
    socket). The first member then fails (VM powered off). Measured: each survivor's recovery
    time (the directory rebuild, new masters by RCOM_LOOKUP, the second member's locks rebuilt
    on the new masters by RCOM_LOCK, purge). The invariants are then checked on the survivors'
    dumps, and the second member's locks must all still be granted."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    first = kernels[0]
    second = sorted(p.id for p in c.peers)[0] if peer_holds else kernels[1]
    t = c.join(LS)
    ck.metric("form", round(max(t.values()), 3))
    if locks:
        for i in (first, second):
            if isinstance(c.nodes[i], cfgmod_peer_class()):
                c.step("dlm-peer node%d takes %d PR locks through its control socket" % (i, locks))
                secs = peerctl.many(i, LS, "rb-", "PR", locks)
            else:
                c.agent_start(i, LS)
                ev = c.agent(i, LS, "many m%d rb- PR %d" % (i, locks), wait="MANYDONE m%d " % i, timeout=60 + locks / 50)
                ck.require(ev.get("ok") == str(locks), "node%d many: %s" % (i, ev["line"]))
                secs = float(ev["secs"])
            ck.metric("node%d_took_%d_locks" % (i, locks), round(secs, 3))
    rec, wall = fail_node(c, ck, first, timeout=120 + locks / 200)
    for i, ms in sorted(rec.items()):
        ck.metric("recovery_ms_node%d" % i, ms, "ms")
    ck.metric("recovery_wall", round(wall, 3))
    ck.metric("recovery_ms_max", max(v for v in rec.values() if v is not None), "ms")
    survivors = sorted(rec)
    dumps_by_node = all_dumps(c, survivors, "after-recovery")
    problems = dumpmod.check(dumps_by_node, survivors)
    ck.expect(not problems, "invariants after recovery: %s" % problems[:10])
    held = sum(1 for r in dumps_by_node.get(second, {}).values() for l in r.locks
               if l.queue == "granted" and l.grmode == "PR" and l.nodeid is None)
    ck.expect(held == locks, "node%d holds %d of its %d PR locks after recovery" % (second, held, locks))
    ck.note("%d locks held by node%d and node%d: form %.3f s; recovery %s ms" % (locks, first, second, max(t.values()), rec))


def sc_s4_master_dies(c, ck):
    """S4: dlm-peer masters "r2" (it locks it first) and both kernels hold PR on it; dlm-peer is
    killed (SIGKILL: no FIN, no leave) and the cluster manager removes it. A survivor becomes
    the master (the first to look it up), both PR locks are rebuilt (RCOM_LOCK from the other),
    nothing is granted twice (invariants on both dumps), and the locks still work: a NOQUEUE EX
    fails, a conversion PR->EX waits for the other's PR and is granted after its unlock."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    peer = c.nodes[pid]
    k1, k2 = kernels[:2]
    c.join(LS)
    ck.require(wait_file(peer.log, "LOCK %s r2 NL granted" % LS, 30), "dlm-peer did not get its NL on r2:\n%s" % tail(peer.log))
    for k in (k1, k2):
        c.agent_start(k, LS)
        ev = c.agent(k, LS, "lock p r2 PR", wait="CAST p ")
        ck.require(ev.get("status") == "OK", "node%d PR on r2: %s" % (k, ev["line"]))
    before = {k: dumpmod.parse(save_kernel_dumps(c, k, LS, "before")) for k in (k1, k2)}
    for k in (k1, k2):
        r = before[k].get("r2")
        ck.expect(r is not None and r.master == pid, "node%d: r2 should be mastered by dlm-peer (node %d): %s" % (k, pid, r))
    rec, wall = fail_node(c, ck, pid)
    ck.metric("recovery_ms_max", max(rec.values()), "ms")
    after = {k: dumpmod.parse(save_kernel_dumps(c, k, LS, "after")) for k in (k1, k2)}
    problems = dumpmod.check(after, [k1, k2])
    ck.expect(not problems, "invariants after dlm-peer's death: %s" % problems)
    masters = {k for k in (k1, k2) if after[k].get("r2") is not None and after[k]["r2"].master == 0}
    ck.expect(len(masters) == 1, "r2 should have exactly one new master among %s: %s" % ((k1, k2), masters))
    ck.note("new master of r2: node %s" % sorted(masters))
    for k in (k1, k2):
        d = c.dmesg(k)
        ck.expect("remove member %d" % pid in d, "node%d dmesg lacks 'remove member %d'" % (k, pid))
    ev = c.agent(k1, LS, "lock x r2 EX NOQUEUE", wait="CAST x ")
    ck.expect(ev.get("status") == "EAGAIN", "node%d NOQUEUE EX after recovery: %s" % (k1, ev["line"]))
    c.agent(k1, LS, "convert p EX", wait="CONV p ")
    time.sleep(0.5)
    ck.expect("CAST p " not in c.agent_log(k1, LS).split("CONV p", 1)[-1],
              "node%d's PR->EX was granted while node%d holds PR" % (k1, k2))
    c.agent(k2, LS, "unlock p", wait="CAST p ")
    ev = c.agent_wait(k1, LS, "CAST p ", count=2)
    ck.expect(ev.get("status") == "OK", "node%d PR->EX after node%d's unlock: %s" % (k1, k2, ev["line"]))
    c.agent(k1, LS, "unlock p", wait="CAST p ")
    c.agent_quit(k1, LS)
    c.agent_quit(k2, LS)
    leave_all(c, ck, [k2, k1])


def peer_lock(c, ck, pid, res, mode, flags=(), wait=True, lvb_hex=None):
    """A lock taken by dlm-peer `pid` through its control socket; returns the answer."""
    ans = peerctl.lock(pid, LS, res, mode, flags=flags, wait=wait, lvb_hex=lvb_hex)
    c.trace("dlm-peer node%d lock %s %s %s -> %s" % (pid, res, mode, ",".join(flags), json.dumps(ans)[:300]))
    return ans


def all_dumps(c, nodes, label):
    """{node: {name: Resource}} from the kernels' debugfs and the dlm-peers' `locks`."""
    out = {}
    for i in nodes:
        if isinstance(c.nodes[i], cfgmod_peer_class()):
            doc = peerctl.locks_json(i, LS)
            with open(os.path.join(c.rundir, "node%d-%s.json" % (i, label)), "w") as f:
                json.dump(doc, f, indent=1)
            out[i] = peerctl.as_dump(doc)
        else:
            out[i] = dumpmod.parse(save_kernel_dumps(c, i, LS, label))
    return out


def member_leaves(c, ck, leaver, timeout=60):
    """A kernel member leaves (planned: dlmlc leave, the kernel's FIN handshakes) while the
    others, kernels and dlm-peers, are stopped, given the new members and started."""
    remaining = sorted(c.members[LS] - {leaver})
    if (leaver, LS) in c.agents:
        c.agent_quit(leaver, LS)
    c.step("node%d leaves %s; remaining %s: stop all, then members+start all" % (leaver, LS, remaining))
    t0 = time.time()
    c.kernel(leaver).bg("dlmlc leave %s --timeout %d" % (LS, timeout), "/tmp/leave-%s.log" % LS)
    restart_members(c, ck, remaining, timeout, "after node%d left" % leaver)
    line = c.kernel(leaver).waitlog("/tmp/leave-%s.log" % LS, "LEFT|LEAVEFAILED|ERROR", 1, timeout)
    ck.require("LEFT" in line, "node%d: leaving failed: %s" % (leaver, line))
    rem = c.kernel(leaver).sh("grep REMOVE /tmp/leave-%s.log" % LS)
    m = re.search(r"write took ([0-9.]+) s", rem)
    c.members[LS] = set(remaining)
    return time.time() - t0, (float(m.group(1)) if m else None)


def sc_s3_holder_dies(c, ck, master="holder"):
    """S3: a kernel holding EX on r1 dies while the other kernel waits EX and dlm-peer waits PR.
    master="holder": the dying kernel masters r1 (it locked first); master="waiter": the
    surviving kernel masters it (it holds NL on it first). After the cluster manager removes the
    dead node, exactly one waiter is granted, the grants are compatible (both survivors' dumps),
    and the dead node's lock is purged."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    dead, k2 = kernels[:2]
    c.join(LS)
    ck.require(wait_file(c.nodes[pid].log, "joined %s" % LS, 30), "dlm-peer did not join")
    for k in (dead, k2):
        c.agent_start(k, LS)
    if master == "waiter":
        ev = c.agent(k2, LS, "lock n r1 NL", wait="CAST n ")
        ck.require(ev.get("status") == "OK", "node%d NL: %s" % (k2, ev["line"]))
    ev = c.agent(dead, LS, "lock h r1 EX", wait="CAST h ")
    ck.require(ev.get("status") == "OK", "node%d EX: %s" % (dead, ev["line"]))
    c.agent(k2, LS, "lock w r1 EX", wait="REQ w ")
    ans = peer_lock(c, ck, pid, "r1", "PR", wait=False)
    ck.require(ans.get("status") == "queued", "dlm-peer's PR on r1 should queue: %s" % ans)
    time.sleep(0.5)
    before = all_dumps(c, [dead, k2, pid], "before")
    ck.expect(not dumpmod.check(before, [dead, k2, pid]), "invariants before: %s" % dumpmod.check(before, [dead, k2, pid]))
    rec, wall = fail_node(c, ck, dead)
    ck.metric("recovery_ms_max", max(v for v in rec.values() if v is not None), "ms")
    time.sleep(1.0)
    after = all_dumps(c, [k2, pid], "after")
    problems = dumpmod.check(after, [k2, pid])
    ck.expect(not problems, "invariants after: %s" % problems)
    mnode = next((i for i, d in after.items() if "r1" in d and d["r1"].master == 0), None)
    ck.require(mnode is not None, "no survivor masters r1: %s" % {i: d.get("r1") for i, d in after.items()})
    granted = [l for l in after[mnode]["r1"].locks if l.queue == "granted" and l.grmode in ("EX", "PR")]
    waiting = [l for l in after[mnode]["r1"].locks if l.queue == "waiting"]
    ck.expect(len(granted) == 1 and len(waiting) == 1,
              "exactly one waiter should be granted (master node %d): granted %s, waiting %s" % (mnode, granted, waiting))
    ck.note("master of r1 after recovery: node %d; granted %s" % (mnode, [(l.grmode, l.nodeid) for l in granted]))
    if master == "waiter":
        # the surviving master held the dead node's EX as a master copy: recovery purges it
        # (when the dead node was the master itself, its lock is simply not rebuilt)
        ck.expect("dlm_recover_purge 1 locks for 1 nodes" in c.dmesg(k2), "node%d: no purge of node%d's lock in dmesg" % (k2, dead))


def sc_s9_planned_leave(c, ck):
    """S9: a kernel leaves (planned): the other kernel and dlm-peer are stopped and started
    without it and recover; its FIN handshakes finish at once (its last lockspace's remove
    write < 1 s); dlm-peer's status shows the new members, and locking between the remaining
    kernel and dlm-peer still works both ways."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    k1, leaver = kernels[:2]
    c.join(LS)
    ck.require(wait_file(c.nodes[pid].log, "joined %s" % LS, 30), "dlm-peer did not join")
    total, remove_s = member_leaves(c, ck, leaver)
    ck.metric("leave_node%d" % leaver, round(total, 3))
    ck.expect(remove_s is not None and remove_s < 1.0, "node%d's remove write took %s s (FIN wait?)" % (leaver, remove_s))
    st = peer_status(pid)
    ls = next((l for l in st.get("lockspaces", []) if l.get("name") == LS), {})
    ck.expect(ls.get("members") == sorted([k1, pid]) and ls.get("phase") == "running", "dlm-peer status: %s" % ls)
    ans = peer_lock(c, ck, pid, "r9", "EX")
    ck.require(ans.get("status") == "granted", "dlm-peer EX on r9: %s" % ans)
    c.agent_start(k1, LS)
    ev = c.agent(k1, LS, "lock q r9 PR NOQUEUE", wait="CAST q ")
    ck.expect(ev.get("status") == "EAGAIN", "node%d NOQUEUE PR vs dlm-peer's EX: %s" % (k1, ev["line"]))
    ev = c.agent(k1, LS, "lock k r9k EX", wait="CAST k ")
    ck.expect(ev.get("status") == "OK", "node%d EX on r9k: %s" % (k1, ev["line"]))
    ans = peer_lock(c, ck, pid, "r9k", "PR", flags=("NOQUEUE",))
    ck.expect(ans.get("status") == "EAGAIN", "dlm-peer NOQUEUE PR vs node%d's EX: %s" % (k1, ans))
    c.agent(k1, LS, "unlock k", wait="CAST k ")
    d = all_dumps(c, [k1, pid], "end")
    ck.expect(not dumpmod.check(d, [k1, pid]), "invariants: %s" % dumpmod.check(d, [k1, pid]))
    c.agent_quit(k1, LS)
    peer_leaves(c, ck, pid)
    leave_all(c, ck, [k1])


def sc_s13_directory_paging(c, ck, count=1500):
    """S13: a kernel masters 1,500 resources with 60-byte names (about a third have dlm-peer as
    their directory node); a recovery (stop everywhere, start with the same members) rebuilds
    every directory: dlm-peer pages through the kernel's names with RCOM_NAMES (several replies,
    each at most 4024 bytes of names); afterwards the other kernel's lookups of those names are
    answered by dlm-peer with the right master, and its requests go to that master."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    k1, k2 = kernels[:2]
    members = [(i, c.cfg.node(i).weight) for i in sorted(c.cfg.lockspace(LS).members)]
    prefix = "s13-" + "x" * 52                       # + up to 4 digits: 57..60 bytes
    c.join(LS)
    ck.require(wait_file(c.nodes[pid].log, "joined %s" % LS, 30), "dlm-peer did not join")
    c.agent_start(k1, LS)
    ev = c.agent(k1, LS, "many m %s NL %d" % (prefix, count), wait="MANYDONE m ", timeout=120)
    ck.require(ev.get("ok") == str(count), "node%d many: %s" % (k1, ev["line"]))
    ours = [n for n in ("%s%d" % (prefix, i) for i in range(count)) if directory_node(n.encode(), members) == pid]
    ck.note("%d of %d names have dlm-peer as directory node" % (len(ours), count))
    everyone = sorted(c.members[LS])
    c.step("recovery with the same members: stop all, then start all")
    restart_members(c, ck, everyone, 60, "after the restart with the same members")
    c.agent_start(k2, LS)
    for n in ours[:20]:
        ev = c.agent(k2, LS, "lock t %s EX" % n, wait="CAST t ")
        ck.expect(ev.get("status") == "OK", "node%d EX on %s: %s" % (k2, n, ev["line"]))
        c.agent(k2, LS, "unlock t", wait="CAST t ")
    recs = read_capture(c)
    dec = run_decode(find_dlm_peer(), c.pcap)
    ck.require(dec.get("rc") == 0 and dec.get("errors") == 0, "dlm-peer decode: %s" % dec)
    counts = dec.get("counts_by_direction", {})

    def n(d, suffix):
        return sum(v for k, v in counts.get(d, {}).items() if k.endswith(suffix))
    replies = n("%d->%d" % (k1, pid), "RCOM NAMES_REPLY")
    ck.metric("names_replies_k1_to_peer", replies, "")
    ck.expect(replies >= 3, "dlm-peer should page through node%d's names (several NAMES_REPLY), saw %d" % (k1, replies))
    ck.expect(n("%d->%d" % (k2, pid), "MSG LOOKUP") >= 20, "node%d's lookups should go to dlm-peer: %s" % (k2, counts.get("%d->%d" % (k2, pid))))
    ck.expect(n("%d->%d" % (pid, k2), "MSG LOOKUP_REPLY") >= 20, "dlm-peer's lookup replies: %s" % counts.get("%d->%d" % (pid, k2)))
    ck.expect(n("%d->%d" % (k2, k1), "MSG REQUEST") >= 20, "node%d's requests should go to the master node%d: %s" % (k2, k1, counts.get("%d->%d" % (k2, k1))))


def sc_s2_peer_joins(c, ck):
    """S2: dlm-peer joins a running lockspace while one kernel holds EX on r1 and the other
    waits PR: the kernels are stopped, dlm-peer starts (joining with the three members), the
    kernels are given the new member list and started. The join completes; the EX and the
    waiting PR are unaffected; dlm-peer's PR on r1 queues; a name whose directory node is now
    dlm-peer is looked up there."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    k1, k2 = kernels[:2]
    c.join(LS, members=kernels)
    for k in (k1, k2):
        c.agent_start(k, LS)
    ev = c.agent(k1, LS, "lock h r1 EX", wait="CAST h ")
    ck.require(ev.get("status") == "OK", "node%d EX: %s" % (k1, ev["line"]))
    c.agent(k2, LS, "lock w r1 PR", wait="REQ w ")
    everyone = sorted(kernels + [pid])
    c.step("dlm-peer node%d joins: kernels stop, dlm-peer starts, kernels get members %s and start" % (pid, everyone))
    before = recovery_counts(c, kernels)
    for k in kernels:
        node_stop(c, k)
    c.nodes[pid].start()
    c.nodes[pid].wait_ready()
    for k in kernels:
        node_start(c, k, everyone)
    ck.require(wait_file(c.nodes[pid].log, "joined %s" % LS, 60), "dlm-peer did not join:\n%s" % tail(c.nodes[pid].log))
    wait_started(c, ck, kernels, before, 30, "after dlm-peer joined")
    c.members[LS] = set(everyone)
    ans = peer_lock(c, ck, pid, "r1", "PR", wait=False)
    ck.expect(ans.get("status") == "queued", "dlm-peer's PR on r1 should queue behind the EX: %s" % ans)
    time.sleep(0.5)
    log = c.agent_log(k2, LS)
    ck.expect("CAST w " not in log, "node%d's PR was granted while node%d holds EX" % (k2, k1))
    d = all_dumps(c, everyone, "after-join")
    ck.expect(not dumpmod.check(d, everyone), "invariants: %s" % dumpmod.check(d, everyone))
    members = [(i, c.cfg.node(i).weight) for i in everyone]
    name = next(n for n in ("s2-%d" % i for i in range(200)) if directory_node(n.encode(), members) == pid)
    ev = c.agent(k2, LS, "lock d %s EX" % name, wait="CAST d ")
    ck.expect(ev.get("status") == "OK", "node%d EX on %s (directory node dlm-peer): %s" % (k2, name, ev["line"]))
    c.agent(k1, LS, "unlock h", wait="CAST h ")
    ev = c.agent_wait(k2, LS, "CAST w ")
    ck.expect(ev.get("status") == "OK", "node%d's PR after the EX unlock: %s" % (k2, ev["line"]))
    dec = run_decode(find_dlm_peer(), c.pcap)
    counts = dec.get("counts_by_direction", {})
    ck.expect(any(k.endswith("MSG LOOKUP") for k in counts.get("%d->%d" % (k2, pid), {})),
              "node%d sent no LOOKUP to dlm-peer for %s: %s" % (k2, name, counts.get("%d->%d" % (k2, pid))))


def sc_random_workload(c, ck, rounds=25, seed=None):
    """Issue 6's long random workload: both kernels (their lock clients) and dlm-peer take,
    convert, cancel and release locks at random on resources mastered by each side and whose
    directory node is each side, with NOQUEUE now and then. After every round, once the
    messages have settled, the locks of every node are dumped (the kernels' debugfs, dlm-peer's
    `locks`) and the invariants are checked across the three: one master per resource, every
    process copy matched by its master copy (ids crossed, same modes and queue), compatible
    grants, no lock of a non-member. At the end everyone releases everything and no lock is
    left anywhere."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    peers = sorted(p.id for p in c.peers)
    c.join(LS)
    for pid in peers:
        ck.require(wait_file(c.nodes[pid].log, "joined %s" % LS, 30), "dlm-peer node%d did not join" % pid)
    for k in kernels:
        c.agent_start(k, LS)
    random_rounds(c, ck, rounds, seed)
    for pid in peers:
        peer_leaves(c, ck, pid)
    leave_all(c, ck, list(reversed(kernels)))


def random_rounds(c, ck, rounds, seed=None, prefix="rw-"):
    """The random workload of sc_random_workload on every current member (kernels with running
    lock clients, dlm-peers), invariants after every round; at the end everything is released
    (the kernels' lock clients exit) and no lock may be left anywhere."""
    import random
    seed = seed if seed is not None else int(time.time())
    rnd = random.Random(seed)
    ck.note("seed %d" % seed)
    everyone = sorted(c.members[LS])
    kernels = kernels_among(c, everyone)
    peers = [i for i in everyone if i not in kernels]
    members = [(i, c.cfg.node(i).weight) for i in everyone]
    # resources: for each node as directory node, two names (their masters: whoever locks first)
    names = []
    for d in everyone:
        names += [n for n in ("%s%d" % (prefix, i) for i in range(400)) if directory_node(n.encode(), members) == d][:2]
    modes = ["NL", "CR", "CW", "PR", "PW", "EX"]
    peer_lkid = {}          # (node, name) -> lkid of a dlm-peer's lock on it
    kernel_lkid = {}        # (node, name) -> lkid
    ops = 0
    checked = {"locks": 0, "remote": 0, "waiting": 0}
    for rnd_no in range(rounds):
        dumps_now = all_dumps(c, everyone, "round%02d" % rnd_no) if rnd_no else {i: {} for i in everyone}
        problems = dumpmod.check(dumps_now, everyone)
        ck.expect(not problems, "round %d: invariants: %s" % (rnd_no, problems[:5]))
        for d in dumps_now.values():
            for r in d.values():
                checked["locks"] += len(r.locks)
                checked["remote"] += sum(1 for l in r.locks if l.nodeid is not None)
                checked["waiting"] += sum(1 for l in r.locks if l.queue != "granted")
        if problems:
            break

        def state(node, name, lkid):
            """The queue of the node's own lock `lkid` on `name` (lock ids are reused)."""
            r = dumps_now.get(node, {}).get(name)
            for l in (r.locks if r else []):
                if l.lkid == lkid and l.nodeid is None:
                    return l.queue
            return None
        for node in everyone:
            for name in names:
                if rnd.random() < 0.5:
                    continue
                if node in peers:
                    lkid = peer_lkid.get((node, name))
                    st = state(node, name, lkid) if lkid is not None else None
                    if st is None:
                        peer_lkid.pop((node, name), None)
                        flags = ("NOQUEUE",) if rnd.random() < 0.3 else ()
                        ans = peer_lock(c, ck, node, name, rnd.choice(modes), flags=flags, wait=False)
                        if ans.get("lkid") is not None and ans.get("status") in ("granted", "queued"):
                            peer_lkid[(node, name)] = int(ans["lkid"])
                    elif st == "granted":
                        x = rnd.random()
                        if x < 0.4:
                            peer_answer(c, node, "unlock", peerctl.unlock(node, LS, lkid))
                            peer_lkid.pop((node, name), None)
                        elif x < 0.8:
                            flags = ("NOQUEUE",) if rnd.random() < 0.3 else ()
                            peerctl.convert(node, LS, lkid, rnd.choice(modes), flags=flags, wait=False)
                    else:
                        if rnd.random() < 0.5:
                            peerctl.cancel(node, LS, lkid)
                else:
                    tag = "t%s" % name.replace("-", "")
                    lkid = kernel_lkid.get((node, name))
                    st = state(node, name, lkid) if lkid is not None else None
                    if st is None:
                        kernel_lkid.pop((node, name), None)           # a new lock reuses the tag
                        flags = " NOQUEUE" if rnd.random() < 0.3 else ""
                        ev = c.agent(node, LS, "lock %s %s %s%s" % (tag, name, rnd.choice(modes), flags), wait="REQ %s " % tag)
                        if ev.get("lkid") and int(ev.get("rv", "-1")) >= 0:
                            kernel_lkid[(node, name)] = int(ev["lkid"], 16)
                    elif st == "granted":
                        x = rnd.random()
                        if x < 0.4:
                            c.agent(node, LS, "unlock %s" % tag)
                            kernel_lkid.pop((node, name), None)
                        elif x < 0.8:
                            flags = " NOQUEUE" if rnd.random() < 0.3 else ""
                            c.agent(node, LS, "convert %s %s%s" % (tag, rnd.choice(modes), flags))
                    else:
                        if rnd.random() < 0.5:
                            c.agent(node, LS, "cancel %s" % tag)
                ops += 1
        time.sleep(1.5)        # let the messages settle (TCG kernels) before the next dumps
    ck.metric("operations", ops, "")
    ck.metric("lock_copies_checked", checked["locks"], "")
    ck.metric("master_copies_of_remote_locks_checked", checked["remote"], "")
    ck.metric("queued_locks_checked", checked["waiting"], "")
    # release everything: dlm-peer cancels what waits and unlocks what is granted; the kernels'
    # lock clients exit (closing /dev/dlm_<ls> releases all their locks, as for any process)
    for _ in range(3):
        d = all_dumps(c, peers, "release")
        for pid in peers:
            for r in d[pid].values():
                for l in r.locks:
                    if l.nodeid is None:
                        if l.queue == "granted":
                            peerctl.unlock(pid, LS, l.lkid)
                        else:
                            peerctl.cancel(pid, LS, l.lkid)
        time.sleep(0.5)
    for k in kernels:
        c.agent_quit(k, LS)
    time.sleep(1.5)
    final = all_dumps(c, everyone, "final")
    left = {i: sum(len(r.locks) for r in d.values()) for i, d in final.items()}
    ck.expect(not dumpmod.check(final, everyone), "final invariants: %s" % dumpmod.check(final, everyone))
    ck.expect(all(v == 0 for v in left.values()), "locks left after releasing everything: %s" % left)


def peer_lock_state(c, pid, lkid):
    """(queue, grmode) of dlm-peer's own lock `lkid`, from its `locks` dump; None if gone."""
    for r in peerctl.as_dump(peerctl.locks_json(pid, LS)).values():
        for l in r.locks:
            if l.lkid == lkid and l.nodeid is None:
                return l.queue, l.grmode
    return None


def wait_peer_lock(c, pid, lkid, want, timeout=10):
    """Polls dlm-peer's lock `lkid` until its (queue, grmode) is `want`; returns the last seen."""
    end = time.time() + timeout
    st = peer_lock_state(c, pid, lkid)
    while st != want and time.time() < end:
        time.sleep(0.1)
        st = peer_lock_state(c, pid, lkid)
    return st


def sc_peer_contend(c, ck):
    """Issue 6's interop list, between a kernel's lock client and dlm-peer, on a resource
    mastered by dlm-peer and on one mastered by the kernel: LVB written by each side (dlm-peer
    by an EX->NL down-conversion with VALBLK, the kernel by an unlock with VALBLK) and read by
    the other with a PR|VALBLK request; a cancel of a queued request; an up-conversion PR->EX
    that waits for the other side's PR and is granted after its unlock (the kernel gets the
    blocking callback); a down-conversion EX->PR after which the other side's PR is granted."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    k1 = kernels[0]
    c.join(LS)
    ck.require(wait_file(c.nodes[pid].log, "joined %s" % LS, 30), "dlm-peer did not join")
    c.agent_start(k1, LS)
    for res, first in (("pc-p", "peer"), ("pc-k", "kernel")):
        tag = "t" + res.replace("-", "")
        # the first locker masters res and writes the LVB; the other side reads it
        if first == "peer":
            lvb = "70656572" + "00" * 28          # "peer"
            a = peer_lock(c, ck, pid, res, "EX", flags=("VALBLK",))
            ck.require(a.get("status") == "granted", "%s: dlm-peer EX: %s" % (res, a))
            lk = int(a["lkid"])
            a = peerctl.convert(pid, LS, lk, "NL", flags=("VALBLK",), lvb_hex=lvb)
            ck.expect(a.get("status") == "granted", "%s: dlm-peer EX->NL writing the LVB: %s" % (res, a))
            ev = c.agent(k1, LS, "lock %s %s PR VALBLK" % (tag, res), wait="CAST %s " % tag)
            ck.expect(ev.get("status") == "OK" and ev.get("hex", "").startswith("70656572"),
                      "%s: node%d's PR|VALBLK should read dlm-peer's LVB 'peer': %s" % (res, k1, ev["line"]))
            c.agent(k1, LS, "unlock %s" % tag, wait="CAST %s " % tag)
            peerctl.unlock(pid, LS, lk)
        else:
            # the kernel keeps an NL lock: a master frees the value block of a resource that
            # has no locks left (toss_rsb), so the LVB only lives while someone holds a lock
            ev = c.agent(k1, LS, "lock keep %s NL" % res, wait="CAST keep ")
            ck.require(ev.get("status") == "OK", "%s: node%d NL: %s" % (res, k1, ev["line"]))
            ev = c.agent(k1, LS, "lock %s %s EX VALBLK" % (tag, res), wait="CAST %s " % tag)
            ck.require(ev.get("status") == "OK", "%s: node%d EX: %s" % (res, k1, ev["line"]))
            ev = c.agent(k1, LS, "unlock %s VALBLK lvb=kernel" % tag, wait="CAST %s " % tag)
            ck.expect(ev.get("status") == "EUNLOCK", "%s: node%d unlock: %s" % (res, k1, ev["line"]))
            a = peer_lock(c, ck, pid, res, "PR", flags=("VALBLK",))
            ck.expect(a.get("status") == "granted" and (a.get("lvb") or "").startswith("6b65726e656c"),
                      "%s: dlm-peer's PR|VALBLK should read the kernel's LVB 'kernel': %s" % (res, a))
            if a.get("lkid") is not None:
                peerctl.unlock(pid, LS, int(a["lkid"]))
        # cancel: the kernel holds EX, dlm-peer's PR queues and is cancelled
        ev = c.agent(k1, LS, "lock %s %s EX" % (tag, res), wait="CAST %s " % tag)
        ck.require(ev.get("status") == "OK", "%s: node%d EX: %s" % (res, k1, ev["line"]))
        a = peer_lock(c, ck, pid, res, "PR", wait=False)
        ck.expect(a.get("status") == "queued", "%s: dlm-peer's PR behind the kernel's EX should queue: %s" % (res, a))
        c.agent_wait(k1, LS, "BAST %s " % tag, timeout=10)
        a = peerctl.cancel(pid, LS, int(a["lkid"]))
        ck.expect(a.get("status") == "cancelled", "%s: cancel of dlm-peer's queued PR: %s" % (res, a))
        ck.expect(peer_lock_state(c, pid, int(a.get("lkid", 0) or 0)) is None, "%s: the cancelled lock is still there" % res)
        # down-conversion EX->PR on the kernel: dlm-peer's PR is then granted at once
        c.agent(k1, LS, "convert %s PR" % tag, wait="CAST %s " % tag)
        a = peer_lock(c, ck, pid, res, "PR", flags=("NOQUEUE",))
        ck.expect(a.get("status") == "granted", "%s: dlm-peer PR after the kernel's EX->PR: %s" % (res, a))
        lk = int(a.get("lkid", 0) or 0)
        # up-conversion PR->EX on dlm-peer waits for the kernel's PR (BAST to the kernel), then granted
        a = peerctl.convert(pid, LS, lk, "EX", wait=False)
        ck.expect(a.get("status") == "queued", "%s: dlm-peer PR->EX next to the kernel's PR should wait: %s" % (res, a))
        c.agent_wait(k1, LS, "BAST %s " % tag, count=2, timeout=10)
        c.agent(k1, LS, "unlock %s" % tag, wait="CAST %s " % tag)
        st = wait_peer_lock(c, pid, lk, ("granted", "EX"))
        ck.expect(st == ("granted", "EX"), "%s: dlm-peer's PR->EX after the kernel's unlock: %s" % (res, st))
        d = all_dumps(c, [k1, pid], res)
        ck.expect(not dumpmod.check(d, [k1, pid]), "%s: invariants: %s" % (res, dumpmod.check(d, [k1, pid])))
        peerctl.unlock(pid, LS, lk)
    c.agent(k1, LS, "unlock keep", wait="CAST keep ")
    c.agent_quit(k1, LS)
    peer_leaves(c, ck, pid)
    leave_all(c, ck, list(reversed(kernels)))


# ------------------------------------------------------------------ S5, S6: LVB through recovery
VALNOTVALID = 0x02          # DLM_SBF_VALNOTVALID in a completion's sb_flags


def lvb_hex(text):
    """A 32-byte LVB holding `text` (NUL-padded), as hex."""
    return (text.encode() + bytes(32 - len(text))).hex()


def recovery_setup(c, ck):
    """The lockspace formed with every node, dlm-peer joined, a lock client on every kernel.
    Returns (kernels, the dlm-peer's id)."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    c.join(LS)
    ck.require(wait_file(c.nodes[pid].log, "joined %s" % LS, 30), "dlm-peer did not join:\n%s" % tail(c.nodes[pid].log))
    for k in kernels:
        c.agent_start(k, LS)
    return kernels, pid


def name_with_dir(c, prefix, among, want):
    """The first name prefix0, prefix1, ... whose directory node among the nodes `among` is `want`
    (so that, after the others left, `want` is the directory node: the first survivor to look the
    name up in recovery, and so its likely new master)."""
    members = [(i, c.cfg.node(i).weight) for i in sorted(among)]
    return next(n for n in ("%s%d" % (prefix, i) for i in range(500)) if directory_node(n.encode(), members) == want)


def master_of(dumps_by_node, name):
    """(node, Resource) of the node holding the master copy of `name`, or (None, None)."""
    for i, d in dumps_by_node.items():
        if name in d and d[name].master == 0:
            return i, d[name]
    return None, None


def kernel_cast(c, ck, k, cmd, tag, what):
    """A lock client command on kernel `k` whose completion is awaited; the CAST event."""
    ev = c.agent(k, LS, cmd, wait="CAST %s " % tag)
    ck.require(ev.get("ev") == "CAST", "node%d %s: %s" % (k, what, ev["line"]))
    return ev


def sbflags(ev):
    return int(ev.get("sbflags", "0"), 16)


def peer_flags(ans):
    return set(ans.get("sb_flags") or [])


def expect_read(ck, who, what, status_ok, lvb, want_lvb, invalid, want_invalid):
    """A VALBLK read was granted with the LVB `want_lvb` and with VALNOTVALID or not."""
    ck.expect(status_ok, "%s %s: not granted" % (who, what))
    ck.expect(lvb == want_lvb, "%s %s: LVB %s, expected %s" % (who, what, lvb, want_lvb))
    ck.expect(invalid == want_invalid, "%s %s: VALNOTVALID %s, expected %s" % (who, what, invalid, want_invalid))


def check_master_lvb(ck, after, name, want_hex, want_invalid, label):
    """The new master copy of `name` carries the LVB `want_hex` and the VALNOTVALID flag or not."""
    m, r = master_of(after, name)
    ck.require(r is not None, "%s: no survivor masters %s: %s" % (label, name, {i: d.get(name) for i, d in after.items()}))
    have = r.lvb.hex() if r.lvb is not None else None
    ck.expect(have == want_hex, "%s: %s's master (node %d) has LVB %s, expected %s" % (label, name, m, have, want_hex))
    ck.expect(r.lvb_invalid == want_invalid, "%s: %s's master (node %d): VALNOTVALID %s, expected %s"
              % (label, name, m, r.lvb_invalid, want_invalid))
    return m


def sc_s5a_lvb_preserved(c, ck):
    """S5a: K1 masters r4 (it locks it first, NL); K2 holds NL|VALBLK (it read the empty LVB);
    dlm-peer holds PW|VALBLK after writing v2 (EX->PW with VALBLK). K1's VM is powered off: the
    new master takes the LVB from the PW holder (v2), valid, and K2's NL->CR|VALBLK returns v2
    without VALNOTVALID. Done on two names: one whose directory node among the survivors is
    dlm-peer (dlm-peer becomes the new master: its recover_lvb) and one whose is K2 (the
    kernel's recover_lvb from dlm-peer's RCOM_LOCK)."""
    kernels, pid = recovery_setup(c, ck)
    k1, k2 = kernels[:2]
    v2 = lvb_hex("s5a-v2")
    names = {want: name_with_dir(c, "r4-", [k2, pid], want) for want in (pid, k2)}
    plk = {}
    for want, res in names.items():
        t = "t%d" % want
        kernel_cast(c, ck, k1, "lock m%s %s NL" % (t, res), "m" + t, "NL on " + res)
        ev = kernel_cast(c, ck, k2, "lock n%s %s NL VALBLK" % (t, res), "n" + t, "NL|VALBLK on " + res)
        ck.require(ev.get("status") == "OK", "node%d NL|VALBLK on %s: %s" % (k2, res, ev["line"]))
        a = peer_lock(c, ck, pid, res, "EX", flags=("VALBLK",))
        ck.require(a.get("status") == "granted", "dlm-peer EX|VALBLK on %s: %s" % (res, a))
        plk[res] = int(a["lkid"])
        a = peerctl.convert(pid, LS, plk[res], "PW", flags=("VALBLK",), lvb_hex=v2)
        ck.require(a.get("status") == "granted", "dlm-peer EX->PW writing v2 on %s: %s" % (res, a))
    before = all_dumps(c, [k1, k2, pid], "before")
    ck.expect(not dumpmod.check(before, [k1, k2, pid]), "invariants before: %s" % dumpmod.check(before, [k1, k2, pid]))
    for res in names.values():
        ck.require(master_of(before, res)[0] == k1, "node%d should master %s before: %s" % (k1, res, master_of(before, res)))
        check_master_lvb(ck, before, res, v2, False, "before")
    rec, _ = fail_node(c, ck, k1)
    ck.metric("recovery_ms_max", max(v for v in rec.values() if v is not None), "ms")
    after = all_dumps(c, [k2, pid], "after")
    ck.expect(not dumpmod.check(after, [k2, pid]), "invariants after: %s" % dumpmod.check(after, [k2, pid]))
    for want, res in names.items():
        m = check_master_lvb(ck, after, res, v2, False, "after")
        ck.note("%s: directory node %d, new master %d, LVB v2 valid" % (res, want, m))
        t = "t%d" % want
        ev = kernel_cast(c, ck, k2, "convert n%s CR VALBLK" % t, "n" + t, "NL->CR|VALBLK on " + res)
        expect_read(ck, "node%d" % k2, "NL->CR|VALBLK on %s (new master %d)" % (res, m), ev.get("status") == "OK",
                    ev.get("hex"), v2, bool(sbflags(ev) & VALNOTVALID), False)
        st = peer_lock_state(c, pid, plk[res])
        ck.expect(st == ("granted", "PW"), "dlm-peer's PW on %s after recovery: %s" % (res, st))
    ck.metric("new_masters", {res: master_of(after, res)[0] for res in names.values()}, "")


def sc_s5b_lvb_writers_lost(c, ck):
    """S5b: K1 masters r5 (NL); the only VALBLK holder left wrote v3 by PW->CR with VALBLK, the
    other survivor holds NL without VALBLK. K1's VM is powered off: the new master takes v3 from
    the CR holder (the highest lvbseq: the only candidate) and flags it VALNOTVALID (only NL/CR
    VALBLK holders are left: recover_lvb in fs/dlm/recover.c); the writer's next VALBLK grant
    (CR->PR) returns v3 with DLM_SBF_VALNOTVALID. Four names: the writer is K2 or dlm-peer, and
    the directory node among the survivors (the likely new master) is K2 or dlm-peer."""
    kernels, pid = recovery_setup(c, ck)
    k1, k2 = kernels[:2]
    v3 = lvb_hex("s5b-v3")
    cases = []
    for writer in (k2, pid):
        for want in (pid, k2):
            cases.append((writer, want, name_with_dir(c, "r5-%d-" % writer, [k2, pid], want)))
    plk = {}
    for writer, want, res in cases:
        t = "t%s" % res.replace("-", "")
        kernel_cast(c, ck, k1, "lock m%s %s NL" % (t, res), "m" + t, "NL on " + res)
        if writer == k2:
            kernel_cast(c, ck, k2, "lock w%s %s PW VALBLK" % (t, res), "w" + t, "PW|VALBLK on " + res)
            ev = kernel_cast(c, ck, k2, "convert w%s CR VALBLK lvb=s5b-v3" % t, "w" + t, "PW->CR writing v3 on " + res)
            ck.require(ev.get("status") == "OK", "node%d PW->CR on %s: %s" % (k2, res, ev["line"]))
            a = peer_lock(c, ck, pid, res, "NL")
            ck.require(a.get("status") == "granted", "dlm-peer NL on %s: %s" % (res, a))
        else:
            a = peer_lock(c, ck, pid, res, "PW", flags=("VALBLK",))
            ck.require(a.get("status") == "granted", "dlm-peer PW|VALBLK on %s: %s" % (res, a))
            plk[res] = int(a["lkid"])
            a = peerctl.convert(pid, LS, plk[res], "CR", flags=("VALBLK",), lvb_hex=v3)
            ck.require(a.get("status") == "granted", "dlm-peer PW->CR writing v3 on %s: %s" % (res, a))
            kernel_cast(c, ck, k2, "lock w%s %s NL" % (t, res), "w" + t, "NL on " + res)
    before = all_dumps(c, [k1, k2, pid], "before")
    ck.expect(not dumpmod.check(before, [k1, k2, pid]), "invariants before: %s" % dumpmod.check(before, [k1, k2, pid]))
    for _, _, res in cases:
        check_master_lvb(ck, before, res, v3, False, "before")
    rec, _ = fail_node(c, ck, k1)
    ck.metric("recovery_ms_max", max(v for v in rec.values() if v is not None), "ms")
    after = all_dumps(c, [k2, pid], "after")
    ck.expect(not dumpmod.check(after, [k2, pid]), "invariants after: %s" % dumpmod.check(after, [k2, pid]))
    masters = {}
    for writer, want, res in cases:
        m = check_master_lvb(ck, after, res, v3, True, "after")
        masters[res] = m
        ck.note("%s: writer %d, directory node %d, new master %d: LVB v3, VALNOTVALID" % (res, writer, want, m))
        t = "t%s" % res.replace("-", "")
        if writer == k2:
            ev = kernel_cast(c, ck, k2, "convert w%s PR VALBLK" % t, "w" + t, "CR->PR|VALBLK on " + res)
            expect_read(ck, "node%d" % k2, "CR->PR|VALBLK on %s (new master %d)" % (res, m), ev.get("status") == "OK",
                        ev.get("hex"), v3, bool(sbflags(ev) & VALNOTVALID), True)
        else:
            a = peerctl.convert(pid, LS, plk[res], "PR", flags=("VALBLK",))
            expect_read(ck, "dlm-peer", "CR->PR|VALBLK on %s (new master %d): %s" % (res, m, a),
                        a.get("status") == "granted", a.get("lvb"), v3, "VALNOTVALID" in peer_flags(a), True)
    ck.metric("new_masters", masters, "")


def sc_s6_lvb_invalidated(c, ck):
    """S6: the master survives, a PW/EX VALBLK holder dies. On r3p dlm-peer is the master, on r3k
    K2 (each locks NL first); K1 takes EX|VALBLK on both and writes v1 (EX->PW->EX with VALBLK).
    K1's VM is powered off: the master purges K1's lock and flags the LVB VALNOTVALID (content
    v1 kept). The next VALBLK grant (K2's PR on r3p, dlm-peer's PR on r3k) returns v1 with
    DLM_SBF_VALNOTVALID; after a PW/EX holder writes v2 (PR->EX, EX->NL with VALBLK) the next
    VALBLK grant returns v2 without the flag."""
    kernels, pid = recovery_setup(c, ck)
    k1, k2 = kernels[:2]
    v1, v2 = lvb_hex("s6-v1"), lvb_hex("s6-v2")
    a = peer_lock(c, ck, pid, "r3p", "NL", flags=("VALBLK",))     # a lock has an LVB buffer only if made with VALBLK
    ck.require(a.get("status") == "granted", "dlm-peer NL|VALBLK on r3p: %s" % a)
    p_nl = int(a["lkid"])
    kernel_cast(c, ck, k2, "lock m r3k NL", "m", "NL on r3k")
    for res in ("r3p", "r3k"):
        t = "x" + res
        ev = kernel_cast(c, ck, k1, "lock %s %s EX VALBLK" % (t, res), t, "EX|VALBLK on " + res)
        ck.require(ev.get("status") == "OK", "node%d EX|VALBLK on %s: %s" % (k1, res, ev["line"]))
        kernel_cast(c, ck, k1, "convert %s PW VALBLK lvb=s6-v1" % t, t, "EX->PW writing v1 on " + res)
        ev = kernel_cast(c, ck, k1, "convert %s EX VALBLK" % t, t, "PW->EX on " + res)
        ck.require(ev.get("status") == "OK", "node%d PW->EX on %s: %s" % (k1, res, ev["line"]))
    before = all_dumps(c, [k1, k2, pid], "before")
    ck.expect(not dumpmod.check(before, [k1, k2, pid]), "invariants before: %s" % dumpmod.check(before, [k1, k2, pid]))
    ck.require(master_of(before, "r3p")[0] == pid and master_of(before, "r3k")[0] == k2,
               "masters before: r3p %s, r3k %s" % (master_of(before, "r3p")[0], master_of(before, "r3k")[0]))
    rec, _ = fail_node(c, ck, k1)
    ck.metric("recovery_ms_max", max(v for v in rec.values() if v is not None), "ms")
    after = all_dumps(c, [k2, pid], "after")
    ck.expect(not dumpmod.check(after, [k2, pid]), "invariants after: %s" % dumpmod.check(after, [k2, pid]))
    ck.expect(master_of(after, "r3p")[0] == pid and master_of(after, "r3k")[0] == k2,
              "the masters should not change: r3p %s, r3k %s" % (master_of(after, "r3p")[0], master_of(after, "r3k")[0]))
    for res in ("r3p", "r3k"):
        check_master_lvb(ck, after, res, v1, True, "after")
        m, r = master_of(after, res)
        ck.expect(r is not None and not any(l.nodeid == k1 for l in r.locks), "%s: node%d's lock not purged" % (res, k1))
    ck.expect("dlm_recover_purge 1 locks for 1 nodes" in c.dmesg(k2), "node%d: no purge of node%d's lock on r3k in dmesg" % (k2, k1))
    # r3p (dlm-peer masters): the kernel reads, then writes, then dlm-peer reads
    ev = kernel_cast(c, ck, k2, "lock r r3p PR VALBLK", "r", "PR|VALBLK on r3p")
    expect_read(ck, "node%d" % k2, "PR|VALBLK on r3p (dlm-peer master)", ev.get("status") == "OK", ev.get("hex"), v1,
                bool(sbflags(ev) & VALNOTVALID), True)
    ev = kernel_cast(c, ck, k2, "convert r EX VALBLK", "r", "PR->EX|VALBLK on r3p")
    ck.expect(ev.get("status") == "OK" and sbflags(ev) & VALNOTVALID, "node%d PR->EX|VALBLK on r3p: still VALNOTVALID "
              "before anyone wrote: %s" % (k2, ev["line"]))
    kernel_cast(c, ck, k2, "convert r NL VALBLK lvb=s6-v2", "r", "EX->NL writing v2 on r3p")
    a = peerctl.convert(pid, LS, p_nl, "PR", flags=("VALBLK",))
    expect_read(ck, "dlm-peer", "NL->PR|VALBLK on r3p after node%d wrote v2: %s" % (k2, a), a.get("status") == "granted",
                a.get("lvb"), v2, "VALNOTVALID" in peer_flags(a), False)
    # r3k (the kernel masters): dlm-peer reads, then writes, then the kernel reads
    a = peer_lock(c, ck, pid, "r3k", "PR", flags=("VALBLK",))
    expect_read(ck, "dlm-peer", "PR|VALBLK on r3k (node%d master): %s" % (k2, a), a.get("status") == "granted",
                a.get("lvb"), v1, "VALNOTVALID" in peer_flags(a), True)
    lk = int(a.get("lkid") or 0)
    a = peerctl.convert(pid, LS, lk, "EX", flags=("VALBLK",))
    ck.expect(a.get("status") == "granted" and "VALNOTVALID" in peer_flags(a),
              "dlm-peer PR->EX|VALBLK on r3k: still VALNOTVALID before anyone wrote: %s" % a)
    a = peerctl.convert(pid, LS, lk, "NL", flags=("VALBLK",), lvb_hex=v2)
    ck.expect(a.get("status") == "granted", "dlm-peer EX->NL writing v2 on r3k: %s" % a)
    ev = kernel_cast(c, ck, k2, "convert m PR VALBLK", "m", "NL->PR|VALBLK on r3k")
    expect_read(ck, "node%d" % k2, "NL->PR|VALBLK on r3k after dlm-peer wrote v2", ev.get("status") == "OK", ev.get("hex"),
                v2, bool(sbflags(ev) & VALNOTVALID), False)
    end = all_dumps(c, [k2, pid], "end")
    ck.expect(not dumpmod.check(end, [k2, pid]), "invariants at the end: %s" % dumpmod.check(end, [k2, pid]))
    for res in ("r3p", "r3k"):
        check_master_lvb(ck, end, res, v2, False, "end")


# ------------------------------------------------------------------ S7: operations in flight to a dying master
WAIT_TYPES = {1: "REQUEST", 2: "CONVERT", 3: "UNLOCK", 4: "CANCEL"}   # DLM_MSG_* as lkb_wait_type


def freeze_node(c, nid):
    """SIGSTOP the node's process (its QEMU, or dlm-peer): it keeps its connections and answers
    nothing, so every operation sent to it stays in flight until it is killed (fail_node)."""
    import signal as _signal
    node = c.nodes[nid]
    c.step("node%d frozen (SIGSTOP of pid %d)" % (nid, node.proc.pid))
    os.kill(node.proc.pid, _signal.SIGSTOP)
    node.frozen = True


def in_background(fn, *args):
    """Runs fn(*args) in a thread; returns a dict that gets "result" (or "error") when it ends."""
    import threading
    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        except Exception as e:   # noqa: BLE001 - reported by the scenario's checks
            box["error"] = repr(e)
    box["thread"] = threading.Thread(target=run, daemon=True)
    box["thread"].start()
    return box


def kernel_waiters(c, k):
    """The kernel's operations waiting for a reply (debugfs <ls>_waiters): [(lkid, type, node, res)]."""
    out = []
    for line in c.kernel(k).sh("cat /sys/kernel/debug/dlm/%s_waiters" % LS).splitlines():
        w = line.split()
        if len(w) >= 4 and re.fullmatch(r"[0-9a-f]+", w[0]):
            out.append((int(w[0], 16), int(w[1]), int(w[2]), w[3]))
    return out


def sc_s7_kernel_master_dies(c, ck):
    """S7, dlm-peer as the requester: K1 masters s7-req/-cvt/-unl/-can (it locks each NL first);
    dlm-peer holds NL on s7-req and s7-cvt, PR on s7-unl; K2 holds EX on s7-can and dlm-peer's PR
    waits behind it. K1's VM is frozen (SIGSTOP of its QEMU); dlm-peer then requests EX on s7-req,
    converts NL->EX on s7-cvt, unlocks s7-unl and cancels its waiting PR on s7-can: all four wait
    for K1 (dlm-peer's waiters list: REQUEST, CONVERT, UNLOCK, CANCEL to K1). K1 is killed and the
    survivors recover without it: the request and the conversion are resent to the new master and
    granted, the unlock completes (-DLM_EUNLOCK: "unlocked"), the cancel with -DLM_ECANCEL
    ("cancelled"); the new masters hold exactly the surviving locks (dumps, invariants)."""
    kernels, pid = recovery_setup(c, ck)
    k1, k2 = kernels[:2]
    names = ("s7-req", "s7-cvt", "s7-unl", "s7-can")
    for n in names:
        kernel_cast(c, ck, k1, "lock m%s %s NL" % (n[3:], n), "m" + n[3:], "NL on " + n)
    held = {}
    for n, mode in (("s7-req", "NL"), ("s7-cvt", "NL"), ("s7-unl", "PR")):
        a = peer_lock(c, ck, pid, n, mode)
        ck.require(a.get("status") == "granted", "dlm-peer %s on %s: %s" % (mode, n, a))
        held[n] = int(a["lkid"])
    ev = kernel_cast(c, ck, k2, "lock h s7-can EX", "h", "EX on s7-can")
    ck.require(ev.get("status") == "OK", "node%d EX on s7-can: %s" % (k2, ev["line"]))
    a = peer_lock(c, ck, pid, "s7-can", "PR", wait=False)
    ck.require(a.get("status") == "queued", "dlm-peer's PR on s7-can should wait for node%d's EX: %s" % (k2, a))
    can_lk = int(a["lkid"])
    before = all_dumps(c, [k1, k2, pid], "before")
    ck.expect(not dumpmod.check(before, [k1, k2, pid]), "invariants before: %s" % dumpmod.check(before, [k1, k2, pid]))
    for n in names:
        ck.require(master_of(before, n)[0] == k1, "node%d should master %s: %s" % (k1, n, master_of(before, n)[0]))
    freeze_node(c, k1)
    ops = {
        "REQUEST": in_background(peerctl.lock, pid, LS, "s7-req", "EX", (), None, True, 120.0),
        "CONVERT": in_background(peerctl.convert, pid, LS, held["s7-cvt"], "EX", (), None, True, 120.0),
        "UNLOCK": in_background(peerctl.unlock, pid, LS, held["s7-unl"], (), None, 120.0),
        "CANCEL": in_background(peerctl.cancel, pid, LS, can_lk, 120.0),
    }
    end = time.time() + 10
    waiting = {}
    while time.time() < end:
        doc = peerctl.locks_json(pid, LS)
        waiting = {w.get("wait_type_name"): (w.get("nodeid"), w.get("resource")) for w in doc.get("waiters", [])}
        if len(waiting) >= 4:
            break
        time.sleep(0.2)
    c.trace("dlm-peer waiters with node%d frozen: %s" % (k1, waiting))
    for op, n in (("REQUEST", "s7-req"), ("CONVERT", "s7-cvt"), ("UNLOCK", "s7-unl"), ("CANCEL", "s7-can")):
        ck.expect(waiting.get(op) == (k1, n), "dlm-peer should wait for node%d's reply to its %s on %s: waiters %s"
                  % (k1, op, n, waiting))
    time.sleep(1.0)
    ck.expect(not any("result" in b or "error" in b for b in ops.values()),
              "an operation completed while its master was frozen: %s" % {k: b.get("result") for k, b in ops.items()})
    ck.metric("peer_waiters_in_flight", len(waiting), "")
    rec, _ = fail_node(c, ck, k1)
    ck.metric("recovery_ms_max", max(v for v in rec.values() if v is not None), "ms")
    for b in ops.values():
        b["thread"].join(30)
    res = {k: b.get("result") or {"error": b.get("error", "still waiting")} for k, b in ops.items()}
    c.trace("results: %s" % json.dumps(res)[:1500])
    ck.expect(res["REQUEST"].get("status") == "granted" and res["REQUEST"].get("mode") == "EX",
              "the in-flight REQUEST should be resent to the new master and granted: %s" % res["REQUEST"])
    ck.expect(res["CONVERT"].get("status") == "granted" and res["CONVERT"].get("mode") == "EX",
              "the in-flight NL->EX CONVERT should be resent and granted: %s" % res["CONVERT"])
    ck.expect(res["UNLOCK"].get("status") == "unlocked", "the in-flight UNLOCK should complete (-DLM_EUNLOCK): %s" % res["UNLOCK"])
    ck.expect(res["CANCEL"].get("status") == "cancelled", "the in-flight CANCEL should complete (-DLM_ECANCEL): %s" % res["CANCEL"])
    ck.note("results after node%d died: %s" % (k1, {k: (v.get("status"), v.get("mode"), v.get("result")) for k, v in res.items()}))
    time.sleep(0.5)
    after = all_dumps(c, [k2, pid], "after")
    ck.expect(not dumpmod.check(after, [k2, pid]), "invariants after: %s" % dumpmod.check(after, [k2, pid]))

    def peer_locks_on(n):
        return sorted((l.grmode, l.queue) for l in after[pid].get(n, dumpmod.Resource(n, None)).locks if l.nodeid is None)
    ck.expect(peer_locks_on("s7-req") == [("EX", "granted"), ("NL", "granted")], "dlm-peer's locks on s7-req: %s" % peer_locks_on("s7-req"))
    ck.expect(peer_locks_on("s7-cvt") == [("EX", "granted")], "dlm-peer's locks on s7-cvt: %s" % peer_locks_on("s7-cvt"))
    ck.expect(peer_locks_on("s7-unl") == [], "dlm-peer's locks on s7-unl after the unlock: %s" % peer_locks_on("s7-unl"))
    ck.expect(peer_locks_on("s7-can") == [], "dlm-peer's locks on s7-can after the cancel: %s" % peer_locks_on("s7-can"))
    m, r = master_of(after, "s7-can")
    ck.expect(r is not None and [(l.grmode, l.queue) for l in r.locks] == [("EX", "granted")],
              "s7-can's new master (node %s) should hold only node%d's EX: %s" % (m, k2, r))
    doc = peerctl.locks_json(pid, LS)
    ck.expect(not doc.get("waiters"), "dlm-peer still waits for replies: %s" % doc.get("waiters"))
    ck.metric("new_masters", {n: master_of(after, n)[0] for n in names}, "")


def sc_s7_peer_master_dies(c, ck):
    """S7, a kernel as the requester: dlm-peer masters s7-req/-cvt/-unl/-can (it locks each NL
    first); K1 holds NL on s7-req and s7-cvt, PR on s7-unl; K2 holds EX on s7-can and K1's PR waits
    behind it. dlm-peer is frozen (SIGSTOP); K1 then requests EX on s7-req, converts NL->EX on
    s7-cvt, unlocks s7-unl and cancels its waiting PR: all four wait for dlm-peer (K1's debugfs
    waiters: types 1-4 to dlm-peer). dlm-peer is killed (SIGKILL) and the kernels recover without
    it: K1's request and conversion are resent to the new master and granted, the unlock
    completes with -DLM_EUNLOCK, the cancel with -DLM_ECANCEL."""
    kernels, pid = recovery_setup(c, ck)
    k1, k2 = kernels[:2]
    names = ("s7-req", "s7-cvt", "s7-unl", "s7-can")
    for n in names:
        a = peer_lock(c, ck, pid, n, "NL")
        ck.require(a.get("status") == "granted", "dlm-peer NL on %s: %s" % (n, a))
    kernel_cast(c, ck, k1, "lock a s7-req NL", "a", "NL on s7-req")
    kernel_cast(c, ck, k1, "lock c s7-cvt NL", "c", "NL on s7-cvt")
    kernel_cast(c, ck, k1, "lock u s7-unl PR", "u", "PR on s7-unl")
    kernel_cast(c, ck, k2, "lock h s7-can EX", "h", "EX on s7-can")
    c.agent(k1, LS, "lock q s7-can PR", wait="REQ q ")
    c.agent_wait(k2, LS, "BAST h ", timeout=10)
    before = all_dumps(c, [k1, k2, pid], "before")
    ck.expect(not dumpmod.check(before, [k1, k2, pid]), "invariants before: %s" % dumpmod.check(before, [k1, k2, pid]))
    for n in names:
        ck.require(master_of(before, n)[0] == pid, "dlm-peer should master %s: %s" % (n, master_of(before, n)[0]))
    freeze_node(c, pid)
    c.agent(k1, LS, "lock b s7-req EX", wait="REQ b ")
    c.agent(k1, LS, "convert c EX", wait="CONV c ")
    c.agent(k1, LS, "unlock u", wait="UNLK u ")
    c.agent(k1, LS, "cancel q", wait="CANC q ")
    time.sleep(1.0)
    w = kernel_waiters(c, k1)
    ck.note("node%d waiters with dlm-peer frozen: %s" % (k1, [(hex(l), WAIT_TYPES.get(t, t), n, r) for l, t, n, r in w]))
    have = {(WAIT_TYPES.get(t), r) for _, t, n, r in w if n == pid}
    for op, n in (("REQUEST", "s7-req"), ("CONVERT", "s7-cvt"), ("UNLOCK", "s7-unl"), ("CANCEL", "s7-can")):
        ck.expect((op, n) in have, "node%d should wait for dlm-peer's reply to its %s on %s: waiters %s" % (k1, op, n, w))
    log = c.agent_log(k1, LS)
    for t in ("b", "c", "u", "q"):
        ck.expect(len(re.findall(r"CAST %s " % t, log)) == (1 if t in ("c", "u") else 0),
                  "node%d: lock %s completed while its master was frozen:\n%s" % (k1, t, log[-800:]))
    rec, _ = fail_node(c, ck, pid)
    ck.metric("recovery_ms_max", max(v for v in rec.values() if v is not None), "ms")
    ev = c.agent_wait(k1, LS, "CAST b ", timeout=20)
    ck.expect(ev.get("status") == "OK", "node%d's in-flight REQUEST should be resent and granted: %s" % (k1, ev["line"]))
    ev = c.agent_wait(k1, LS, "CAST c ", count=2, timeout=20)
    ck.expect(ev.get("status") == "OK", "node%d's in-flight NL->EX should be resent and granted: %s" % (k1, ev["line"]))
    ev = c.agent_wait(k1, LS, "CAST u ", count=2, timeout=20)
    ck.expect(ev.get("status") == "EUNLOCK", "node%d's in-flight UNLOCK should complete -DLM_EUNLOCK: %s" % (k1, ev["line"]))
    ev = c.agent_wait(k1, LS, "CAST q ", timeout=20)
    ck.expect(ev.get("status") == "ECANCEL", "node%d's in-flight CANCEL should complete -DLM_ECANCEL: %s" % (k1, ev["line"]))
    ck.expect(kernel_waiters(c, k1) == [], "node%d still waits for replies: %s" % (k1, kernel_waiters(c, k1)))
    after = all_dumps(c, [k1, k2], "after")
    ck.expect(not dumpmod.check(after, [k1, k2]), "invariants after: %s" % dumpmod.check(after, [k1, k2]))

    def modes(n):
        m, r = master_of(after, n)
        return sorted((l.grmode, l.queue, l.nodeid or m) for l in r.locks) if r else None
    ck.expect(modes("s7-req") == sorted([("EX", "granted", k1), ("NL", "granted", k1)]), "s7-req on its new master: %s" % modes("s7-req"))
    ck.expect(modes("s7-cvt") == [("EX", "granted", k1)], "s7-cvt on its new master: %s" % modes("s7-cvt"))
    ck.expect(not modes("s7-unl"), "s7-unl should have no lock left: %s" % modes("s7-unl"))
    ck.expect(modes("s7-can") == [("EX", "granted", k2)], "s7-can on its new master: %s" % modes("s7-can"))
    ck.metric("new_masters", {n: master_of(after, n)[0] for n in names}, "")


# ------------------------------------------------------------------ S8, S10, S14, S16: membership and control
def node_running(c, nid, members):
    """True once node `nid` runs `members` after its last recovery: a kernel whose last
    `dlm_recover` line in dmesg is a finished one, a dlm-peer whose status says running."""
    if isinstance(c.nodes[nid], cfgmod_peer_class()):
        ls = next((l for l in peer_status(nid).get("lockspaces", []) if l.get("name") == LS), {})
        return ls.get("phase") == "running" and ls.get("members") == sorted(members)
    lines = [l for l in c.dmesg(nid).splitlines() if re.search(r"dlm: %s: dlm_recover \d+" % LS, l)]
    return bool(lines) and re.search(r"generation \d+ done", lines[-1]) is not None


def wait_running(c, nodes, members, timeout):
    """The nodes among `nodes` that do not run `members` after `timeout` seconds."""
    end = time.time() + timeout
    pending = list(nodes)
    while pending and time.time() < end:
        pending = [i for i in pending if not node_running(c, i, members)]
        if pending:
            time.sleep(0.3)
    return pending


def peer_generation(pid):
    ls = next((l for l in peer_status(pid).get("lockspaces", []) if l.get("name") == LS), {})
    return ls.get("generation"), ls.get("completed_recoveries")


def cross_lock(c, ck, holder, other, res, label):
    """The lockspace works between `holder` and `other` (each a kernel or dlm-peer): holder takes
    EX on res, the other's NOQUEUE PR fails with EAGAIN, holder releases."""
    def lock(n, tag, mode, flags=()):
        if isinstance(c.nodes[n], cfgmod_peer_class()):
            a = peer_lock(c, ck, n, res, mode, flags=flags)
            return ("granted" if a.get("status") == "granted" else a.get("status")), a.get("lkid")
        ev = kernel_cast(c, ck, n, "lock %s %s %s %s" % (tag, res, mode, " ".join(flags)), tag, "%s on %s" % (mode, res))
        return ("granted" if ev.get("status") == "OK" else ev.get("status")), tag
    st, h = lock(holder, "xh", "EX")
    ck.expect(st == "granted", "%s: node%d EX on %s: %s" % (label, holder, res, st))
    st, _ = lock(other, "xo", "PR", ("NOQUEUE",))
    ck.expect(st == "EAGAIN", "%s: node%d NOQUEUE PR on %s next to node%d's EX: %s" % (label, other, res, holder, st))
    if isinstance(c.nodes[holder], cfgmod_peer_class()):
        peerctl.unlock(holder, LS, int(h))
    else:
        c.agent(holder, LS, "unlock xh", wait="CAST xh ")


def sc_s8_change_during_recovery(c, ck):
    """S8: K1's VM is powered off while K2 holds EX on r8 (mastered by K1) and dlm-peer waits PR on
    it. The cluster manager first restarts the survivors with the old member list (K1 still in it):
    their recovery cannot finish (K1 never answers RCOM_STATUS). It then stops them again (the
    recovery is interrupted: kernel dmesg `dlm_recover N error -4` / `interrupted`, dlm-peer's log
    likewise), changes the list to the survivors and starts them: that recovery completes, K2's EX
    and dlm-peer's waiting PR are rebuilt on one new master (invariants: no duplicated master
    copies), and dlm-peer's PR is granted after K2's unlock."""
    kernels, pid = recovery_setup(c, ck)
    k1, k2 = kernels[:2]
    kernel_cast(c, ck, k1, "lock m r8 NL", "m", "NL on r8")
    ev = kernel_cast(c, ck, k2, "lock h r8 EX", "h", "EX on r8")
    ck.require(ev.get("status") == "OK", "node%d EX on r8: %s" % (k2, ev["line"]))
    a = peer_lock(c, ck, pid, "r8", "PR", wait=False)
    ck.require(a.get("status") == "queued", "dlm-peer's PR on r8 should wait: %s" % a)
    plk = int(a["lkid"])
    everyone, survivors = sorted([k1, k2, pid]), sorted([k2, pid])
    c.step("node%d powered off; the survivors are restarted with the OLD member list %s" % (k1, everyone))
    c.kernel(k1).stop()
    before = recovery_counts(c, survivors)
    gen0 = peer_generation(pid)
    for i in survivors:
        node_stop(c, i)
    for i in survivors:
        node_start(c, i, everyone)
    time.sleep(6)       # longer than recover_timer (5 s): the RCOM_STATUS to K1 was resent at least once
    ck.expect(recoveries_done(c, k2) == before[k2], "node%d finished a recovery with dead node%d in the list" % (k2, k1))
    ck.expect(peer_generation(pid) == gen0, "dlm-peer finished a recovery with dead node%d in the list: %s" % (k1, peer_generation(pid)))
    ck.expect(re.search(r"dlm: %s: dlm_recover \d+\s*$" % LS, c.dmesg(k2), re.M) is not None, "node%d: no recovery started" % k2)
    c.step("stop the survivors during that recovery, change the list to %s, start" % survivors)
    t0 = time.time()
    for i in survivors:
        node_stop(c, i)
    ck.metric("stop_during_recovery", round(time.time() - t0, 3))
    d = c.dmesg(k2)
    ck.expect(re.search(r"dlm_recover \d+ error -4|interrupted", d) is not None,
              "node%d: the first recovery should end interrupted (-EINTR):\n%s" % (k2, "\n".join(d.splitlines()[-12:])))
    ck.expect(wait_file(c.nodes[pid].log, "interrupted", 5), "dlm-peer: the first recovery should end interrupted:\n%s" % tail(c.nodes[pid].log))
    for i in survivors:
        node_start(c, i, survivors)
    rec = wait_started(c, ck, survivors, before, 60, "after the second start")
    ck.metric("recovery_ms_max", max(v for v in rec.values() if v is not None), "ms")
    c.members[LS] = set(survivors)
    c.kernel(k2).sh("rmdir /sys/kernel/config/dlm/cluster/comms/%d" % k1)
    after = all_dumps(c, survivors, "after")
    ck.expect(not dumpmod.check(after, survivors), "invariants after: %s" % dumpmod.check(after, survivors))
    m, r = master_of(after, "r8")
    ck.require(r is not None, "no master of r8 after recovery")
    ck.expect(sorted((l.grmode, l.queue) for l in r.locks) == [("--", "waiting"), ("EX", "granted")],
              "r8 on its new master node%d: %s" % (m, r.locks))
    ck.note("r8 remastered on node %d: %s" % (m, [(l.grmode, l.rqmode, l.queue, l.nodeid) for l in r.locks]))
    c.agent(k2, LS, "unlock h", wait="CAST h ")
    st = wait_peer_lock(c, pid, plk, ("granted", "PR"))
    ck.expect(st == ("granted", "PR"), "dlm-peer's PR on r8 after node%d's unlock: %s" % (k2, st))


def sc_s16_control_noops(c, ck):
    """S16 on a kernel (sysfs control) and on dlm-peer (ls-stop/ls-start control lines): a start
    while running is refused (kernel: dmesg `start ignored: lockspace running`, no recovery;
    dlm-peer: an error answer, same generation); stopping a stopped lockspace and starting twice
    are harmless: after stop, stop, start, start on every member all run the same members, K2's EX
    and dlm-peer's waiting PR are intact (invariants), and locking still works."""
    kernels, pid = recovery_setup(c, ck)
    k1, k2 = kernels[:2]
    everyone = sorted([k1, k2, pid])
    ev = kernel_cast(c, ck, k2, "lock h r16 EX", "h", "EX on r16")
    ck.require(ev.get("status") == "OK", "node%d EX on r16: %s" % (k2, ev["line"]))
    a = peer_lock(c, ck, pid, "r16", "PR", wait=False)
    ck.require(a.get("status") == "queued", "dlm-peer's PR on r16 should wait: %s" % a)
    plk = int(a["lkid"])
    # start while running
    n0, gen0 = recoveries_done(c, k1), peer_generation(pid)
    c.kernel(k1).sh("echo 1 > /sys/kernel/dlm/%s/control" % LS, check=False)
    ans = peerctl.ls_start(pid, LS, [(i, c.cfg.node(i).weight) for i in everyone])
    c.trace("dlm-peer ls-start while running -> %s" % ans)
    time.sleep(1.0)
    ck.expect("start ignored: lockspace running" in c.dmesg(k1), "node%d: no 'start ignored: lockspace running'" % k1)
    ck.expect(recoveries_done(c, k1) == n0 and sysfs(c, k1, "recover_status") == ("ff" if k1 == min(everyone) else "55"),
              "node%d ran a recovery after a start while running (recover_status %s)" % (k1, sysfs(c, k1, "recover_status")))
    ck.expect("start ignored: lockspace running" in str(ans.get("error", "")), "dlm-peer ls-start while running: %s" % ans)
    ck.expect(peer_generation(pid) == gen0, "dlm-peer's generation changed: %s -> %s" % (gen0, peer_generation(pid)))
    cross_lock(c, ck, k1, pid, "r16a", "after a start while running")
    # stop, stop again, start, start again
    before = recovery_counts(c, everyone)
    for i in everyone:
        node_stop(c, i)
    for i in everyone:
        node_stop(c, i)
    ck.expect(sysfs(c, k1, "recover_status") == "0", "node%d after two stops: recover_status %s" % (k1, sysfs(c, k1, "recover_status")))
    ls = next((l for l in peer_status(pid).get("lockspaces", []) if l.get("name") == LS), {})
    ck.expect(ls.get("phase") != "running", "dlm-peer after two ls-stop: %s" % ls)
    for i in everyone:
        node_start(c, i, everyone)
    for k in (k1, k2):
        c.kernel(k).waitlog("/tmp/members-%s.log" % LS, "RECONFIGURED|ERROR", 1, 30)
    seconds = {}
    for i in everyone:
        if i == pid:
            ans = peerctl.ls_start(pid, LS, [(n, c.cfg.node(n).weight) for n in everyone])
            seconds[i] = ans
        else:
            c.kernel(i).sh("echo 1 > /sys/kernel/dlm/%s/control" % LS, check=False)
    c.trace("dlm-peer's second ls-start -> %s" % seconds.get(pid))
    stuck = wait_running(c, everyone, everyone, 20)
    if stuck and all(c.cfg.node(k).kernel == "6.1" for k in kernels):
        ck.require(False, "nodes %s not running with %s after stop, stop, start, start" % (stuck, everyone))
    elif stuck:
        # Newer kernels (6.6+) send a recovery's RCOM requests with that recovery's seq and drop
        # replies whose seq is not the current ls_recover_seq: a second start during a recovery
        # bumps it, so the running recovery never gets a reply again until the next stop. The
        # cluster manager's stop + start recovers; 6.1 (current seq at send time) does not wedge.
        ck.note("after the double start nodes %s did not finish (%s: stale-seq replies dropped); stop + start"
                % (stuck, "+".join(sorted({c.cfg.node(k).kernel for k in kernels}))))
        restart_members(c, ck, everyone, 60, "after the stop + start that follows the double start")
    stuck = wait_running(c, everyone, everyone, 30)
    ck.require(not stuck, "nodes %s not running with %s after stop, stop, start, start" % (stuck, everyone))
    for k in (k1, k2):
        d = "\n".join(l for l in c.dmesg(k).splitlines() if "dlm: %s:" % LS in l)
        ck.note("node%d after the second start: %s" % (k, "; ".join(
            x for x in ("start ignored" if d.count("start ignored") > (1 if k == k1 else 0) else "",
                        "unused recovery" if "unused recovery" in d else "",
                        "interrupted" if re.search(r"error -4|interrupted", d) else "") if x) or "accepted, one recovery"))
    ck.note("dlm-peer's second ls-start: %s" % (seconds.get(pid, {}).get("result") or seconds.get(pid, {}).get("error")))
    after = all_dumps(c, everyone, "after")
    ck.expect(not dumpmod.check(after, everyone), "invariants after: %s" % dumpmod.check(after, everyone))
    m, r = master_of(after, "r16")
    ck.expect(r is not None and sorted((l.grmode, l.queue) for l in r.locks) == [("--", "waiting"), ("EX", "granted")],
              "r16 on its master: %s" % (r.locks if r else None))
    ck.expect(peer_lock_state(c, pid, plk) == ("waiting", "--"), "dlm-peer's PR on r16 should still wait: %s"
              % (peer_lock_state(c, pid, plk),))
    cross_lock(c, ck, pid, k1, "r16b", "after stop, stop, start, start")
    c.agent(k2, LS, "unlock h", wait="CAST h ")
    st = wait_peer_lock(c, pid, plk, ("granted", "PR"))
    ck.expect(st == ("granted", "PR"), "dlm-peer's PR on r16 after node%d's unlock: %s" % (k2, st))


def add_comms(c, k, nid):
    """The cluster manager gives kernel `k` a comms entry for node `nid` again (after it was
    removed for a failure): a new midcomms node state (renew)."""
    n = c.cfg.node(nid)
    d = "/sys/kernel/config/dlm/cluster/comms/%d" % nid
    c.kernel(k).sh("mkdir %s && echo %d > %s/nodeid && dlmlc sockaddr %s/addr %s" % (d, nid, d, d, n.address))


def sc_s10_peer_rejoins(c, ck):
    """S10: dlm-peer holds EX on r10k (mastered by K1) and masters r10p where K2 holds PR; it is
    killed (SIGKILL). The kernels recover without it (K1 purges its EX: dmesg) and the cluster
    manager drops its comms entry. A new dlm-peer process then rejoins: the kernels get a comms
    entry again (a fresh midcomms state), are stopped, the new incarnation starts and joins, the
    kernels are given the three members (configfs node 3 is new: renew) and started. The join
    completes with no `seq mismatch` anywhere (kernel dmesg, dlm-peer's drop counters), nothing of
    the old incarnation is left (dumps), and the new one locks: its EX on r10k is granted, its
    NOQUEUE EX on r10p (K2 holds PR) fails with EAGAIN."""
    kernels, pid = recovery_setup(c, ck)
    k1, k2 = kernels[:2]
    peer = c.nodes[pid]
    kernel_cast(c, ck, k1, "lock m r10k NL", "m", "NL on r10k")
    a = peer_lock(c, ck, pid, "r10k", "EX")
    ck.require(a.get("status") == "granted", "dlm-peer EX on r10k: %s" % a)
    a = peer_lock(c, ck, pid, "r10p", "NL")
    ck.require(a.get("status") == "granted", "dlm-peer NL on r10p: %s" % a)
    ev = kernel_cast(c, ck, k2, "lock p r10p PR", "p", "PR on r10p")
    ck.require(ev.get("status") == "OK", "node%d PR on r10p: %s" % (k2, ev["line"]))
    rec, _ = fail_node(c, ck, pid)
    ck.metric("recovery_ms_max", max(v for v in rec.values() if v is not None), "ms")
    ck.expect("dlm_recover_purge 1 locks for 1 nodes" in c.dmesg(k1), "node%d: no purge of dlm-peer's EX in dmesg" % k1)
    gone = all_dumps(c, kernels, "after-crash")
    ck.expect(not dumpmod.check(gone, kernels), "invariants after the crash: %s" % dumpmod.check(gone, kernels))
    left = [(n, l.lkid) for d in gone.values() for n, r in d.items() for l in r.locks if l.nodeid == pid]
    ck.expect(not left, "locks of the old dlm-peer left: %s" % left)
    os.replace(peer.log, peer.log + ".1")
    everyone = sorted(kernels + [pid])
    c.step("dlm-peer node%d rejoins: comms again, kernels stop, a new dlm-peer starts, kernels get %s and start" % (pid, everyone))
    for k in kernels:
        add_comms(c, k, pid)
    before = recovery_counts(c, kernels)
    for k in kernels:
        node_stop(c, k)
    peer.start()
    peer.wait_ready()
    for k in kernels:
        node_start(c, k, everyone)
    ck.require(wait_file(peer.log, "joined %s" % LS, 60), "the new dlm-peer did not join:\n%s" % tail(peer.log))
    wait_started(c, ck, kernels, before, 30, "after dlm-peer rejoined")
    c.members[LS] = set(everyone)
    for k in kernels:
        d = c.dmesg(k)
        ck.expect("seq mismatch" not in d, "node%d dmesg: seq mismatch after the rejoin:\n%s" % (k, "\n".join(
            l for l in d.splitlines() if "seq mismatch" in l)[:1000]))
        ck.expect(d.count("add member %d" % pid) >= 2, "node%d dmesg: no second 'add member %d'" % (k, pid))
        v = c.kernel(k).sh("cat /sys/kernel/debug/dlm/comms/%d/version 2>/dev/null || true" % pid).strip()
        ck.expect(v == "0x00030002", "node%d: comms/%d/version %r after the rejoin" % (k, pid, v))
    st = peer_status(pid)
    drops = {p["node"]: p.get("drops") for p in st.get("peers", [])}
    ck.note("new dlm-peer's drop counters: %s" % drops)
    ck.expect(not any("seq" in k for d in drops.values() for k in (d or {})), "the new dlm-peer dropped messages: %s" % drops)
    ck.expect("seq mismatch" not in open(peer.log).read(), "the new dlm-peer logged a seq mismatch:\n%s" % tail(peer.log))
    a = peer_lock(c, ck, pid, "r10k", "EX", flags=("NOQUEUE",))
    ck.expect(a.get("status") == "granted", "the new dlm-peer's EX on r10k (the old one's was purged): %s" % a)
    a2 = peer_lock(c, ck, pid, "r10p", "EX", flags=("NOQUEUE",))
    ck.expect(a2.get("status") == "EAGAIN", "the new dlm-peer's NOQUEUE EX on r10p next to node%d's PR: %s" % (k2, a2))
    ev = kernel_cast(c, ck, k2, "lock q r10k PR NOQUEUE", "q", "NOQUEUE PR on r10k")
    ck.expect(ev.get("status") == "EAGAIN", "node%d NOQUEUE PR next to the new dlm-peer's EX: %s" % (k2, ev["line"]))
    end = all_dumps(c, everyone, "end")
    ck.expect(not dumpmod.check(end, everyone), "invariants at the end: %s" % dumpmod.check(end, everyone))


def sc_s14_requestqueue(c, ck):
    """S14: dlm-peer masters r14 and r14b (it locks NL on each first); K1 holds PR on r14 and NL on
    r14b. dlm-peer is stopped (the first half of the barrier); K1, still running, then sends a
    CONVERT PR->EX on r14 and a newer REQUEST EX on r14b to it: dlm-peer queues both (its
    requestqueue) and answers nothing while stopped. After every member is stopped and started
    with the same members, dlm-peer processes the saved messages in order: the conversion is
    granted before the request (K1's completions, in order), both after the recovery."""
    kernels, pid = recovery_setup(c, ck)
    k1, k2 = kernels[:2]
    everyone = sorted(kernels + [pid])
    for n in ("r14", "r14b"):
        a = peer_lock(c, ck, pid, n, "NL")
        ck.require(a.get("status") == "granted", "dlm-peer NL on %s: %s" % (n, a))
    kernel_cast(c, ck, k1, "lock c r14 PR", "c", "PR on r14")
    kernel_cast(c, ck, k1, "lock a r14b NL", "a", "NL on r14b")
    before = recovery_counts(c, everyone)
    c.step("dlm-peer is stopped; node%d (running) sends it a CONVERT and a REQUEST" % k1)
    node_stop(c, pid)
    c.agent(k1, LS, "convert c EX", wait="CONV c ")
    c.agent(k1, LS, "lock x r14b EX", wait="REQ x ")
    time.sleep(1.5)
    log = c.agent_log(k1, LS)
    ck.expect(log.count("CAST c ") == 1 and "CAST x " not in log,
              "node%d got an answer from the stopped dlm-peer:\n%s" % (k1, log[-600:]))
    w = kernel_waiters(c, k1)
    ck.expect({(WAIT_TYPES.get(t), r) for _, t, n, r in w if n == pid} == {("CONVERT", "r14"), ("REQUEST", "r14b")},
              "node%d should wait for dlm-peer's replies to its CONVERT and REQUEST: %s" % (k1, w))
    for k in kernels:
        node_stop(c, k)
    for i in everyone:
        node_start(c, i, everyone)
    wait_started(c, ck, everyone, before, 60, "after the restart with the same members")
    cv = c.agent_wait(k1, LS, "CAST c ", count=2, timeout=20)
    rq = c.agent_wait(k1, LS, "CAST x ", timeout=20)
    ck.expect(cv.get("status") == "OK" and rq.get("status") == "OK",
              "node%d's queued CONVERT and REQUEST should be granted after recovery: %s / %s" % (k1, cv["line"], rq["line"]))
    ck.expect(cv.get("t", 0) <= rq.get("t", -1), "the CONVERT (sent first) should complete before the REQUEST: %s / %s"
              % (cv["line"], rq["line"]))
    ck.metric("convert_before_request_s", round(rq.get("t", 0) - cv.get("t", 0), 4))
    recs = read_capture(c)
    d1, dp = "%d->%d" % (k1, pid), "%d->%d" % (pid, k1)
    sent = [r for r in recs if r["dir"] == d1 and r["type"] in ("CONVERT", "REQUEST")]
    replies = [r for r in recs if r["dir"] == dp and r["type"] in ("CONVERT_REPLY", "REQUEST_REPLY", "GRANT")]
    c.trace("capture %s: %s; %s: %s" % (d1, [(r["t"], r["type"]) for r in sent][-4:], dp, [(r["t"], r["type"]) for r in replies][-4:]))
    ck.note("last messages %s: %s; replies: %s" % (d1, [r["type"] for r in sent][-2:], [r["type"] for r in replies][-2:]))
    ck.expect([r["type"] for r in replies][-2:] == ["CONVERT_REPLY", "REQUEST_REPLY"],
              "dlm-peer's replies after recovery should be CONVERT_REPLY then REQUEST_REPLY: %s" % [r["type"] for r in replies][-4:])
    end = all_dumps(c, everyone, "end")
    ck.expect(not dumpmod.check(end, everyone), "invariants at the end: %s" % dumpmod.check(end, everyone))


# ------------------------------------------------------------------ two kernels and two dlm-peers
class Locker:
    """One node's locks by tag, the same calls for a kernel (its lock client) and a dlm-peer
    (its control socket)."""

    def __init__(self, c, ck, nid):
        self.c, self.ck, self.id = c, ck, nid
        self.peer = isinstance(c.nodes[nid], cfgmod_peer_class())
        self.lkids = {}         # tag -> dlm-peer lkid
        self.casts = {}         # tag -> completions seen (kernel)

    def lock(self, tag, res, mode, flags=(), block=True):
        """'granted', 'queued' or the failure status (EAGAIN, ...)."""
        if self.peer:
            a = peer_lock(self.c, self.ck, self.id, res, mode, flags=flags, wait=block)
            if a.get("lkid") is not None:
                self.lkids[tag] = int(a["lkid"])
            return a.get("status")
        cmd = "lock %s %s %s %s" % (tag, res, mode, " ".join(flags))
        if not block:
            self.c.agent(self.id, LS, cmd, wait="REQ %s " % tag)
            time.sleep(0.3)
            return "granted" if self.completed(tag) else "queued"
        ev = self.c.agent(self.id, LS, cmd, wait="CAST %s " % tag)
        if ev.get("status") != "OK":
            return ev.get("status")
        self.casts[tag] = self.casts.get(tag, 0) + 1
        return "granted"

    def completed(self, tag):
        """True once a queued lock is granted (then counted as such)."""
        if self.peer:
            return (peer_lock_state(self.c, self.id, self.lkids[tag]) or ("",))[0] == "granted"
        n = len(re.findall(r" CAST %s .*status=OK" % re.escape(tag), self.c.agent_log(self.id, LS)))
        if n > self.casts.get(tag, 0):
            self.casts[tag] = n
            return True
        return False

    def unlock(self, tag):
        if self.peer:
            return peerctl.unlock(self.id, LS, self.lkids.pop(tag)).get("status")
        ev = self.c.agent(self.id, LS, "unlock %s" % tag, wait="CAST %s " % tag)
        self.casts.pop(tag, None)
        return "unlocked" if ev.get("status") == "EUNLOCK" else ev.get("status")


def ex_blocks(ck, la, lb, res, ta, tb, label, take=True):
    """Locker `la` holds EX on `res` (taken here if `take`): lb's NOQUEUE PR fails with EAGAIN,
    lb's PR queues, la's unlock grants it, lb unlocks. Returns whether the PR was granted."""
    a, b = la.id, lb.id
    if take:
        ck.expect(la.lock(ta, res, "EX") == "granted", "%s: node%d EX on %s" % (label, a, res))
    st = lb.lock(tb + "n", res, "PR", ("NOQUEUE",))
    ck.expect(st == "EAGAIN", "%s: node%d NOQUEUE PR on %s (node%d holds EX): %s" % (label, b, res, a, st))
    st = lb.lock(tb, res, "PR", block=False)
    ck.expect(st == "queued", "%s: node%d PR on %s should wait for node%d's EX: %s" % (label, b, res, a, st))
    la.unlock(ta)
    end = time.time() + 10
    granted = False
    while not granted and time.time() < end:
        granted = lb.completed(tb)
        time.sleep(0 if granted else 0.2)
    ck.expect(granted, "%s: node%d's PR on %s not granted after node%d's unlock" % (label, b, res, a))
    lb.unlock(tb)
    return granted


def pairwise_locking(c, ck, nodes, label):
    """For every ordered pair (a, b) of `nodes`: a locks EX first on its own name (a masters it);
    b's NOQUEUE PR fails with EAGAIN, b's PR queues, a's unlock grants it. Returns the pairs done."""
    lk = {n: Locker(c, ck, n) for n in nodes}
    done = 0
    for a in nodes:
        for b in nodes:
            if a != b:
                # the tags carry the label: a kernel's lock client log outlives the Lockers
                ex_blocks(ck, lk[a], lk[b], "%s-%d-%d" % (label, a, b), "%sa%d%d" % (label, a, b), "%sb%d%d" % (label, a, b), label)
                done += 1
    return done


def sc_two_kernels_two_peers(c, ck, rounds=10):
    """Two kernels and two dlm-peers form `alpha` (slots and generation agreed by all four);
    every node locks against every other on a name each one masters (12 ordered pairs: EX
    blocks, NOQUEUE fails, the queued PR is granted after the unlock); the random workload
    runs on all four with the invariants checked from every node's dumps after each round; then
    a kernel holding locks is powered off and the three survivors recover (invariants, its locks
    purged, the dlm-peers lock against each other and the kernel)."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    peers = sorted(p.id for p in c.peers)
    ck.require(len(kernels) == 2 and len(peers) == 2, "needs two kernels and two dlm-peers")
    everyone = sorted(kernels + peers)
    t = c.join(LS)
    ck.metric("join", round(max(t.values()), 3))
    for pid in peers:
        ck.require(wait_file(c.nodes[pid].log, "joined %s" % LS, 30), "dlm-peer node%d did not join:\n%s" % (pid, tail(c.nodes[pid].log)))
    gens = set()
    for pid in peers:
        ls = next((l for l in peer_status(pid).get("lockspaces", []) if l.get("name") == LS), {})
        ck.expect(ls.get("members") == everyone and ls.get("phase") == "running", "dlm-peer node%d status: %s" % (pid, ls))
        gens.add(ls.get("generation"))
    for k in kernels:
        m = re.findall(r"dlm: %s: generation (\d+) slots (\d+)" % LS, c.dmesg(k))
        ck.expect(m and m[-1][1] == "4", "node%d: no 4-slot generation in dmesg: %s" % (k, m))
        if m:
            gens.add(int(m[-1][0]))
    ck.expect(len(gens) == 1, "the four nodes disagree on the generation: %s" % gens)
    for k in kernels:
        c.agent_start(k, LS)
    ck.metric("pairs_locked", pairwise_locking(c, ck, everyone, "x"), "")
    random_rounds(c, ck, rounds)
    # a kernel fails while holding an EX (mastered by a dlm-peer) and mastering a resource a dlm-peer holds
    dead, k2 = kernels
    p3, p4 = peers
    c.agent_start(dead, LS)
    c.agent_start(k2, LS)
    ck.require(Locker(c, ck, p3).lock("m", "f-1", "NL") == "granted", "dlm-peer node%d NL on f-1" % p3)
    ck.require(Locker(c, ck, dead).lock("h", "f-1", "EX") == "granted", "node%d EX on f-1" % dead)
    ck.require(Locker(c, ck, dead).lock("k", "f-2", "NL") == "granted", "node%d NL on f-2" % dead)
    ck.require(Locker(c, ck, p4).lock("p", "f-2", "PR") == "granted", "dlm-peer node%d PR on f-2" % p4)
    rec, _ = fail_node(c, ck, dead)
    ck.metric("recovery_ms", rec, "ms")
    survivors = sorted(c.members[LS])
    after = all_dumps(c, survivors, "after-failure")
    ck.expect(not dumpmod.check(after, survivors), "invariants after node%d failed: %s" % (dead, dumpmod.check(after, survivors)))
    m1, r1 = master_of(after, "f-1")
    ck.expect(m1 == p3 and [(l.grmode, l.nodeid) for l in r1.locks] == [("NL", None)],
              "f-1 on dlm-peer node%d after node%d's EX was purged: %s" % (p3, dead, r1.locks if r1 else None))
    m2, r2 = master_of(after, "f-2")
    ck.expect(r2 is not None and [l.grmode for l in r2.locks] == ["PR"], "f-2 remastered with node%d's PR: %s"
              % (p4, (m2, r2.locks if r2 else None)))
    ck.note("after node%d failed: f-2 remastered on node %s" % (dead, m2))
    ck.metric("pairs_locked_after_failure", pairwise_locking(c, ck, survivors, "y"), "")


def sc_s16_double_start_kernels(c, ck):
    """S16's double start among kernels only (three kernels): stop all, start all, start all again
    at once. On 6.1 the second start interrupts the first recovery and the next one completes; on
    newer kernels (rcom requests carry the recovery's own seq) the running recovery may wedge on
    replies dropped as old until the cluster manager's next stop + start (noted)."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    c.join(LS)
    before = recovery_counts(c, kernels)
    for k in kernels:
        node_stop(c, k)
    for k in kernels:
        node_start(c, k, kernels)
    for k in kernels:
        c.kernel(k).waitlog("/tmp/members-%s.log" % LS, "RECONFIGURED|ERROR", 1, 30)
    for k in kernels:
        c.kernel(k).sh("echo 1 > /sys/kernel/dlm/%s/control" % LS, check=False)
    stuck = wait_running(c, kernels, kernels, 20)
    ck.metric("stuck_after_double_start", stuck, "")
    for k in kernels:
        d = "\n".join(l for l in c.dmesg(k).splitlines() if "dlm: %s:" % LS in l)
        ck.note("node%d: %d recoveries done since the stop; %s" % (k, recoveries_done(c, k) - before[k],
                "interrupted" if re.search(r"error -4|interrupted", d) else "not interrupted"))
    if all(c.cfg.node(k).kernel == "6.1" for k in kernels):
        ck.expect(not stuck, "6.1 nodes %s did not finish after the double start" % stuck)
    elif stuck:
        ck.note("%s: nodes %s wedged after the double start; stop + start" % (c.cfg.node(kernels[0]).kernel, stuck))
        restart_members(c, ck, kernels, 60, "after the stop + start that follows the double start")
    ck.require(not wait_running(c, kernels, kernels, 30), "kernels not running at the end")
    blocking_and_lvb(c, ck, kernels[0], kernels[1], res="res-s16")


def decode_messages(c):
    """Every DLM message of the run's capture as dlm-peer decode --json reads it."""
    c.finish_capture()
    r = subprocess.run([find_dlm_peer(), "decode", "--json", c.pcap], capture_output=True, text=True, timeout=300)
    out = []
    for line in r.stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def sc_s8_rebuild_interrupted(c, ck, count=1500):
    """S8's -EEXIST path: K1 masters `count` names on which K2 and dlm-peer hold NL. K1's VM is
    powered off and the survivors start without it: K2 (the low survivor) becomes the new master
    and dlm-peer sends it its locks (RCOM_LOCK). As soon as dlm-peer has sent them all, both are
    stopped, dlm-peer first (K2 has rebuilt only part of them: the kernel works through them at
    TCG speed; its replies reach a stopped dlm-peer, which ignores them) and
    started again with the same members: dlm-peer re-sends the locks still unacknowledged and
    K2 answers those it already has with -EEXIST (the capture's RCOM_LOCK_REPLY results). In the
    end every dlm-peer lock has exactly one master copy on K2 (no duplicates: dumps)."""
    kernels, pid = recovery_setup(c, ck)
    k1, k2 = kernels[:2]
    ck.require(k2 < pid, "this scenario wants the kernel as the low survivor (lab-peer.toml)")
    prefix = "s8e-"
    ev = c.agent(k1, LS, "many m %s NL %d" % (prefix, count), wait="MANYDONE m ", timeout=120)
    ck.require(ev.get("ok") == str(count), "node%d many: %s" % (k1, ev["line"]))
    t0 = time.time()
    for i in range(count):
        a = peerctl.lock(pid, LS, "%s%d" % (prefix, i), "NL")
        ck.require(a.get("status") == "granted", "dlm-peer NL on %s%d: %s" % (prefix, i, a))
    ck.metric("peer_locks_taken", round(time.time() - t0, 3))
    ev = c.agent(k2, LS, "many k %s NL %d" % (prefix, count), wait="MANYDONE k ", timeout=120)
    ck.require(ev.get("ok") == str(count), "node%d many: %s" % (k2, ev["line"]))
    survivors = sorted([k2, pid])
    c.step("node%d powered off; survivors start without it; stopped again once dlm-peer sent its locks" % k1)
    c.kernel(k1).stop()
    before = recovery_counts(c, survivors)
    logpos = len(open(c.nodes[pid].log).read())
    for i in survivors:
        node_stop(c, i)
    for i in survivors:
        node_start(c, i, survivors)
    peer = c.nodes[pid]
    end = time.time() + 60
    sent = None
    while sent is None and time.time() < end:
        sent = re.findall(r"dlm_recover_locks (\d+) out", open(peer.log).read()[logpos:])
        sent = int(sent[0]) if sent else None
        time.sleep(0 if sent else 0.02)
    ck.require(sent, "dlm-peer did not send its locks:\n%s" % tail(peer.log))
    # dlm-peer first: the LOCK_REPLYs the kernel still sends are then ignored (a stopped node
    # takes only RCOM_STATUS), so the locks stay unacknowledged and are sent again
    for i in (pid, k2):
        node_stop(c, i)
    ck.metric("peer_rcom_locks_sent", sent, "")
    d = c.dmesg(k2)
    interrupted = re.search(r"dlm_recover \d+ error -4|interrupted", d) is not None
    ck.expect(interrupted, "node%d: the first recovery should be interrupted:\n%s" % (k2, "\n".join(d.splitlines()[-10:])))
    m = re.findall(r"dlm_recover_locks (\d+) in", d)
    ck.note("node%d before the stop: %s" % (k2, "dlm_recover_locks %s in" % m[-1] if m else "no lock rebuild finished"))
    for i in survivors:
        node_start(c, i, survivors)
    wait_started(c, ck, survivors, before, 120, "after the second start")
    c.members[LS] = set(survivors)
    c.kernel(k2).sh("rmdir /sys/kernel/config/dlm/cluster/comms/%d" % k1)
    after = all_dumps(c, survivors, "after")
    problems = dumpmod.check(after, survivors)
    ck.expect(not problems, "invariants after: %s" % problems[:5])
    copies = sum(1 for n, r in after[k2].items() if n.startswith(prefix) and r.master == 0
                 for l in r.locks if l.nodeid == pid)
    masters = {i: sum(1 for n, r in after[i].items() if n.startswith(prefix) and r.master == 0) for i in survivors}
    ck.metric("master_copies_of_peer_locks_on_node%d" % k2, copies, "")
    ck.metric("new_masters", masters, "")
    ck.expect(copies == masters[k2], "node%d masters %d names but holds %d master copies of dlm-peer's locks"
              % (k2, masters[k2], copies))
    results = {}
    for m in decode_messages(c):
        body = m.get("message", {})
        body = body.get("inner", body)
        if body.get("rc_type") == "LOCK_REPLY" and body.get("h_nodeid") == k2:
            res = int(re.match(r"-?\d+", str(body.get("rl_result", 0))).group())     # "-17(-EEXIST)"
            results[res] = results.get(res, 0) + 1
    ck.metric("rcom_lock_reply_results", results, "")
    ck.expect(results.get(-17, 0) > 0, "no RCOM_LOCK_REPLY with -EEXIST from node%d (results %s): the rebuild was not "
              "interrupted midway" % (k2, results))


BENCH_PEER_RES = "bench-p2"


PEER_RES = "res-peer"


def peer_leaves(c, ck, pid, timeout=20):
    """SIGTERM to the dlm-peer (it leaves with the FIN handshake) while the remaining members
    are stopped, given the new member list and started (dlm_controld's barrier)."""
    import signal as _signal
    p = c.nodes[pid]
    remaining = sorted(c.members[LS] - {pid})
    c.step("dlm-peer node%d leaves %s; remaining %s: stop all, then members+start all" % (pid, LS, remaining))
    t0 = time.time()
    p.proc.send_signal(_signal.SIGTERM)
    # the remaining members (kernels and other dlm-peers) finish that recovery before anything
    # else (a 5.10 kernel that releases a lockspace mid-recovery waits a second for it)
    restart_members(c, ck, remaining, timeout, "after node%d left" % pid)
    try:
        rc = p.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = None
    left = time.time() - t0
    c.state.drop_proc(p.proc.pid)
    p.proc = None
    c.members[LS] = set(remaining)
    ck.metric("peer%d_leave" % pid, round(left, 3))
    ck.require(rc == 0, "dlm-peer node%d did not exit cleanly after SIGTERM (rc %s):\n%s" % (pid, rc, tail(p.log)))
    log = open(p.log).read()
    for k in remaining:
        if link_protocol(c, pid, k) == "3.2":
            ck.expect("reset node %d: FIN handshake complete" % k in log,
                      "dlm-peer node%d: no completed FIN handshake with node%d" % (pid, k))
    ck.expect(left < 5.0, "dlm-peer node%d took %.2f s to leave" % (pid, left))


def save_kernel_dumps(c, nid, lsname, label):
    """The kernel's debugfs dumps of a lockspace (`<ls>`: resources and queues, `<ls>_waiters`)
    saved as node<N>-<label>.dump in the run dir; returns the `<ls>` text."""
    k = c.kernel(nid)
    # compressed: the serial control channel of a TCG VM carries tens of KB/s, and a dump of
    # 10,000 resources is 1 MB of text (gzip makes it about 30 times smaller)
    packed = k.sh("gzip -1 -c /sys/kernel/debug/dlm/%s | base64" % lsname, timeout=600, quiet=True)
    text = gzip.decompress(base64.b64decode(packed)).decode(errors="replace")
    waiters = k.sh("cat /sys/kernel/debug/dlm/%s_waiters 2>/dev/null || true" % lsname)
    with open(os.path.join(c.rundir, "node%d-%s.dump" % (nid, label)), "w") as f:
        f.write(text)
        f.write("\n--- %s_waiters ---\n%s" % (lsname, waiters))
    return text


def recoveries_done(c, nid):
    """How many recoveries the kernel of `nid` has finished ("dlm_recover N ... done" in dmesg)."""
    return len(kernel_recovery_ms(c, nid))


def peer_status(pid):
    """`dlm-peer status --node ID --json` (its control socket is a Unix socket: no netns needed)."""
    try:
        r = subprocess.run([find_dlm_peer(), "status", "--node", str(pid), "--json"], capture_output=True,
                           text=True, timeout=20)
        return json.loads(r.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}


def wait_file(path, text, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if text in open(path).read():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def tail(path, n=3000):
    try:
        return open(path).read()[-n:]
    except OSError as e:
        return "(%s)" % e


# ------------------------------------------------------------------ agent scenarios
# The kernel nodes run `dlm-peer agent` (cluster.agent_up): the harness only plays the
# application (dlmlc create/remove, the lock client) and the operator (config files, reload,
# node-down); every configfs/sysfs write and every barrier is the agents'.
def app_create(c, nid, ls=LS):
    """The application's create in the background (the agent answers the online uevent)."""
    c.kernel(nid).bg("dlmlc create %s" % ls, "/tmp/create-%s.log" % ls)


def app_created(c, ck, nid, ls=LS, timeout=90):
    line = c.kernel(nid).waitlog("/tmp/create-%s.log" % ls, "CREATE ls=", 1, timeout)
    ck.require(re.search(r"rv=[0-9]+ ", line) is not None, "node%d: create of %s failed: %s" % (nid, ls, line))
    return float(re.search(r"in ([0-9.]+) s", line).group(1))


def app_remove(c, ck, nid, ls=LS, timeout=60):
    """The application's remove (FORCEFREE); returns how long the write took."""
    if (nid, ls) in c.agents:
        c.agent_quit(nid, ls)
    c.kernel(nid).bg("dlmlc remove %s" % ls, "/tmp/remove-%s.log" % ls)
    line = c.kernel(nid).waitlog("/tmp/remove-%s.log" % ls, "REMOVE ls=", 1, timeout)
    ck.require("rv=0" in line, "node%d: remove of %s failed: %s" % (nid, ls, line))
    return float(re.search(r"write took ([0-9.]+) s", line).group(1))


def sysfs(c, nid, what, ls=LS):
    return c.kernel(nid).sh("cat /sys/kernel/dlm/%s/%s" % (ls, what)).strip()


def configfs_members(c, nid, ls=LS):
    out = c.kernel(nid).sh("ls /sys/kernel/config/dlm/cluster/spaces/%s/nodes 2>/dev/null || true" % ls)
    return sorted(int(x) for x in out.split())


def comms(c, nid):
    return sorted(int(x) for x in c.kernel(nid).sh("ls /sys/kernel/config/dlm/cluster/comms").split())


def check_running(c, ck, nid, members, ls=LS):
    """sysfs id, configfs members and a finished recovery (recover_status ff on the low node,
    55 elsewhere) on node `nid`."""
    gid = cfgmod.global_id(ls)
    ck.expect(sysfs(c, nid, "id") == str(gid), "node%d: sysfs id is %s, expected %d" % (nid, sysfs(c, nid, "id"), gid))
    ck.expect(configfs_members(c, nid) == sorted(members), "node%d: configfs members %s, expected %s"
              % (nid, configfs_members(c, nid), sorted(members)))
    want = "ff" if nid == min(members) else "55"
    end = time.time() + 30
    st = sysfs(c, nid, "recover_status")
    while st != want and time.time() < end:
        time.sleep(0.3)
        st = sysfs(c, nid, "recover_status")
    ck.expect(st == want, "node%d: recover_status %s, expected %s (recovery with %s not finished)" % (nid, st, want, members))


def agent_wait(c, nid, regex, count=1, timeout=60):
    from .cluster import AGENT_LOG
    return c.kernel(nid).waitlog(AGENT_LOG, regex, count, timeout)


def agent_count(c, nid, regex):
    from .cluster import AGENT_LOG
    return int(c.kernel(nid).sh("grep -cE %s %s || true" % (shlex_quote(regex), AGENT_LOG)).strip() or 0)


def shlex_quote(s):
    import shlex
    return shlex.quote(s)


def sc_agent_basic(c, ck):
    """Two kernels form alpha through their agents (G0, no barrier), lock, leave."""
    n1, n2 = sorted(k.id for k in c.kernel_nodes)[:2]
    for n in (n1, n2):
        ck.expect(comms(c, n) == sorted(x.id for x in c.cfg.nodes), "node%d: comms %s" % (n, comms(c, n)))
    for n in (n1, n2):
        app_create(c, n)
    for n in (n1, n2):
        ck.metric("create_node%d" % n, app_created(c, ck, n))
        agent_wait(c, n, "alpha: START G0 members 1,2 \\(join\\)")
    for n in (n1, n2):
        check_running(c, ck, n, [n1, n2])
    c.members[LS] = {n1, n2}
    blocking_and_lvb(c, ck, n1, n2)
    # node 2 leaves: its agent answers offline and says so; node 1's agent (the coordinator)
    # proposes [1], stops, writes members [1] and starts (which lets node 2's FIN handshake finish)
    t = app_remove(c, ck, n2)
    ck.metric("remove_write_node%d" % n2, t)
    ck.expect(t < 5.0, "node%d: removing alpha took %.3f s (FIN wait: the other agent did not restart without it?)" % (n2, t))
    agent_wait(c, n1, "alpha: START G1\\.%d members %d([^,0-9]|$)" % (n1, n1))
    check_running(c, ck, n1, [n1])
    d = c.kernel(n1).sh("dmesg | grep 'dlm: %s:'" % LS)
    ck.expect("remove member %d" % n2 in d, "node%d dmesg lacks 'remove member %d'" % (n1, n2))
    ck.expect(configfs_members(c, n2) == [], "node%d: configfs spaces/alpha still has members after the leave" % n2)
    ck.metric("remove_write_node%d" % n1, app_remove(c, ck, n1))
    ck.expect(c.kernel(n1).sh("ls /sys/kernel/dlm").strip() == "", "node%d: lockspaces left" % n1)
    recs = read_capture(c)
    ck.counts = capture.counts_by_direction(recs)
    check_versions(c, ck, recs)
    check_fins(c, ck, recs, n2, [n1], fin_limit=5.0)


def check_removed(c, ck, a, b, x, when):
    """Agents: node `x` was removed: `a` (the coordinator) and `b` start a change with members
    [a, b], run it, dropped `comms/x`, and their dmesg shows `remove member x`."""
    for n in (a, b):
        agent_wait(c, n, "alpha: START G[0-9]+\\.%d members %d,%d([^,0-9]|$)" % (a, a, b))
        check_running(c, ck, n, [a, b])
        ck.expect(x not in comms(c, n), "node%d: comms/%d not removed%s" % (n, x, when))
        d = c.kernel(n).sh("dmesg | grep 'dlm: %s:' | tail -20" % LS)
        ck.expect("remove member %d" % x in d, "node%d dmesg lacks 'remove member %d'%s" % (n, x, when))


def sc_agent_change(c, ck):
    """Three kernels; alpha = [1, 2]; a reload allows node 3, whose join is a barrier (checked
    with node 2's agent frozen in the middle); node 3 leaves; it joins again and its VM is
    powered off: `dlm-peer node-down 3` removes it."""
    a, b, x = sorted(k.id for k in c.kernel_nodes)
    for n in (a, b):
        app_create(c, n)
    for n in (a, b):
        app_created(c, ck, n)
    for n in (a, b):
        check_running(c, ck, n, [a, b])
    # a holds EX on res-c (mastered by a: it asks first)
    c.agent_start(a, LS)
    ev = c.agent(a, LS, "lock h res-c EX", wait="CAST h ")
    ck.require(ev.get("status") == "OK", "node%d EX: %s" % (a, ev["line"]))
    base = {n: recoveries_done(c, n) for n in (a, b)}

    # --- the config now lets node 3 into alpha: reload everywhere; nobody stops yet
    import copy
    cfg2 = copy.deepcopy(c.cfg)
    cfg2.lockspace(LS).members = [a, b, x]
    text = cfgmod.to_toml(cfg2)
    for k in c.kernel_nodes:
        c.push_config(k, text)
    for k in c.kernel_nodes:
        if k.id == x:   # SIGHUP does the same as `dlm-peer reload`
            c.kernel(x).sh("kill -HUP $(pidof dlm-peer)")
            agent_wait(c, x, "config reloaded", 1, 20)
        else:
            c.agent_cli(k.id, "reload --node %d" % k.id)
    time.sleep(1)
    for n in (a, b):
        ck.expect(agent_count(c, n, "alpha: (stopped|START) G[1-9]") == 0, "node%d: the reload alone changed alpha" % n)

    # --- barrier under observation: node b's agent is frozen, node x creates alpha
    pid_b = c.kernel(b).sh("pidof dlm-peer").split()[0]
    c.kernel(b).sh("kill -STOP %s" % pid_b)
    app_create(c, x)
    agent_wait(c, a, "alpha: stopped for G")          # a stopped (control=0 returned) ...
    time.sleep(2)
    ck.expect(sysfs(c, a, "recover_status") == "0", "node%d should be stopped (recover_status 0)" % a)
    ck.expect(sysfs(c, b, "recover_status") in ("ff", "55"), "node%d (agent frozen) should still run" % b)
    ck.expect(recoveries_done(c, a) == base[a], "node%d started a recovery before node%d stopped" % (a, b))
    ck.expect(agent_count(c, a, "alpha: START G[1-9]") == 0, "node%d started before every member stopped" % a)
    ck.expect(agent_count(c, x, "alpha: START") == 0, "node%d started before every member stopped" % x)
    create_x = c.kernel(x).sh("cat /tmp/create-%s.log" % LS)
    ck.expect("CREATE" not in create_x, "node%d's create returned while the barrier was open" % x)
    ck.note("barrier held for 2 s with node%d's agent frozen: node%d stopped, node%d running, nobody started" % (b, a, b))
    t0 = time.time()
    c.kernel(b).sh("kill -CONT %s" % pid_b)
    ck.metric("create_node%d" % x, app_created(c, ck, x))
    ck.metric("join_after_thaw", round(time.time() - t0, 3))
    for n in (a, b, x):
        check_running(c, ck, n, [a, b, x])
        agent_wait(c, n, "alpha: START G[0-9]+\\.[0-9]+ members %d,%d,%d" % (a, b, x))
    for n in (a, b):
        d = c.kernel(n).sh("dmesg | grep 'dlm: %s:' | tail -20" % LS)
        ck.expect("add member %d" % x in d, "node%d dmesg lacks 'add member %d'" % (n, x))
    # the lock a held survived; x waits for it and gets it after a's unlock
    c.agent_start(x, LS)
    c.agent(x, LS, "lock w res-c EX", wait="REQ w ")
    c.agent_wait(a, LS, "BAST h ")
    c.agent(a, LS, "unlock h", wait="CAST h ")
    ev = c.agent_wait(x, LS, "CAST w ")
    ck.expect(ev.get("status") == "OK", "node%d EX after node%d's unlock: %s" % (x, a, ev["line"]))
    c.agent(x, LS, "unlock w", wait="CAST w ")

    # --- x leaves (its agent answers offline; the coordinator, node 1, proposes alpha without it)
    t = app_remove(c, ck, x)
    ck.metric("remove_write_node%d" % x, t)
    ck.expect(t < 5.0, "node%d: removing alpha took %.3f s" % (x, t))
    for n in (a, b):
        agent_wait(c, n, "alpha: START G[0-9]+\\.%d members %d,%d([^,0-9]|$)" % (a, a, b))
        check_running(c, ck, n, [a, b])
        d = c.kernel(n).sh("dmesg | grep 'dlm: %s:' | tail -20" % LS)
        ck.expect("remove member %d" % x in d, "node%d dmesg lacks 'remove member %d'" % (n, x))

    # --- x joins again, then its VM is powered off; node-down removes it
    app_create(c, x)
    app_created(c, ck, x)
    for n in (a, b, x):
        check_running(c, ck, n, [a, b, x])
    c.kernel(x).stop()
    c.step("node%d powered off; `dlm-peer node-down %d` on node%d" % (x, x, a))
    c.agent_cli(a, "node-down %d --node %d" % (x, a))
    check_removed(c, ck, a, b, x, " after node-down")
    # the survivors still lock against each other
    c.agent_start(b, LS)
    c.agent(a, LS, "lock k res-after EX", wait="CAST k ")
    ev = c.agent(b, LS, "lock nq res-after PR NOQUEUE", wait="CAST nq ")
    ck.expect(ev.get("status") == "EAGAIN", "node%d NOQUEUE PR vs node%d's EX after node-down: %s" % (b, a, ev["line"]))
    c.agent(a, LS, "unlock k", wait="CAST k ")
    st = c.agent_cli(a, "agent-status --node %d" % a)
    c.trace("agent-status node%d:\n%s" % (a, st))
    ck.expect("down: %d" % x in st, "agent-status on node%d should list node %d down: %s" % (a, x, st))
    for n in (b, a):
        app_remove(c, ck, n)


def sc_agent_fence(c, ck):
    """Heartbeats: node 3's VM is powered off; the lowest live agent runs the fence command;
    while it fails nobody is removed; once it succeeds node 3 is removed everywhere."""
    a, b, x = sorted(k.id for k in c.kernel_nodes)
    for n in (a, b, x):
        app_create(c, n)
    for n in (a, b, x):
        app_created(c, ck, n)
    for n in (a, b, x):
        check_running(c, ck, n, [a, b, x])
    for n in (a, b):
        c.kernel(n).sh("rm -f /tmp/fence.log /tmp/fence-ok")
    base = recoveries_done(c, a)
    c.kernel(x).stop()
    t0 = time.time()
    c.step("node%d powered off; waiting for the heartbeat timeout and a (failing) fence" % x)
    agent_wait(c, a, "fencing node %d failed" % x, 1, 60)
    ck.metric("silent_to_fence", round(time.time() - t0, 3))
    log = c.kernel(a).sh("cat /tmp/fence.log").strip()
    ck.expect(log.startswith("fence %d 10.77.0.%d" % (x, x)), "node%d: fence command log: %r" % (a, log))
    ck.expect(c.kernel(b).sh("cat /tmp/fence.log 2>/dev/null || true").strip() == "",
              "node%d ran the fence command too (only the lowest live node should)" % b)
    time.sleep(2)
    ck.expect(recoveries_done(c, a) == base and sysfs(c, a, "recover_status") == "ff",
              "node%d was reconfigured although the fence failed" % a)
    ck.expect(configfs_members(c, a) == [a, b, x], "node%d: members changed without a fence" % a)
    c.kernel(a).sh("touch /tmp/fence-ok")
    t1 = time.time()
    agent_wait(c, a, "node %d fenced: removing it" % x, 1, 60)
    ck.metric("fence_retry", round(time.time() - t1, 3))
    check_removed(c, ck, a, b, x, " after the fence")
    c.agent_start(a, LS)
    c.agent_start(b, LS)
    c.agent(a, LS, "lock k res-f EX", wait="CAST k ")
    ev = c.agent(b, LS, "lock nq res-f PR NOQUEUE", wait="CAST nq ")
    ck.expect(ev.get("status") == "EAGAIN", "node%d NOQUEUE PR vs node%d's EX after the fence: %s" % (b, a, ev["line"]))
    c.agent(a, LS, "unlock k", wait="CAST k ")
    for n in (b, a):
        app_remove(c, ck, n)


def sc_agent_peer(c, ck):
    """Two kernels and a dlm-peer node, each with `dlm-peer agent`: the peer's agent drives
    `dlm-peer run` through its control socket (ls-stop / ls-start). Node 2 leaves, then node 1:
    each time the coordinator's change stops and restarts the peer with the new members."""
    r = subprocess.run([find_dlm_peer(), "--help"], capture_output=True, text=True)
    if "ls-stop" not in r.stdout:
        raise Skip("this dlm-peer has no ls-stop/ls-start control lines yet (the PeerNode stop/start "
                   "branch): nothing to drive the peer with")
    k1, k2 = sorted(k.id for k in c.kernel_nodes)[:2]
    p = c.peers[0]
    for n in (k1, k2):
        app_create(c, n)
    for n in (k1, k2):
        ck.metric("create_node%d" % n, app_created(c, ck, n))
    for n in (k1, k2):
        check_running(c, ck, n, [k1, k2, p.id])
    ck.require(wait_file(p.agent_log, "alpha: START G0 members", 20), "peer agent: no formation start:\n" + tail(p.agent_log))
    # node 2 leaves: node 1 (coordinator) and the peer stop, then start with [1, 3]
    t = app_remove(c, ck, k2)
    ck.metric("remove_write_node%d" % k2, t)
    ck.expect(t < 5.0, "node%d: removing alpha took %.3f s (FIN wait?)" % (k2, t))
    agent_wait(c, k1, "alpha: START G1\\.%d members %d,%d([^,0-9]|$)" % (k1, k1, p.id))
    ck.require(wait_file(p.agent_log, "alpha: START G1.%d members %d,%d" % (k1, k1, p.id), 30),
               "peer agent did not start G1 with [%d, %d]:\n%s" % (k1, p.id, tail(p.agent_log)))
    check_running(c, ck, k1, [k1, p.id])
    d = c.kernel(k1).sh("dmesg | grep 'dlm: %s:' | tail -20" % LS)
    ck.expect("remove member %d" % k2 in d, "node%d dmesg lacks 'remove member %d'" % (k1, k2))
    end = time.time() + 30
    st = peer_status(p.id)
    while time.time() < end:
        ls = [l for l in st.get("lockspaces", []) if l.get("name") == LS]
        if ls and ls[0].get("members") == [k1, p.id] and ls[0].get("phase") in ("running", "done", "normal"):
            break
        time.sleep(0.5)
        st = peer_status(p.id)
    ls = [l for l in st.get("lockspaces", []) if l.get("name") == LS]
    ck.expect(bool(ls) and ls[0].get("members") == [k1, p.id], "dlm-peer status: members %s" % (ls[0].get("members") if ls else st))
    if ls:
        ck.note("dlm-peer after node%d left: members %s phase %s" % (k2, ls[0].get("members"), ls[0].get("phase")))
    # the lockspace works between node 1 and the peer
    c.agent_start(k1, LS)
    for i in range(4):
        ev = c.agent(k1, LS, "lock l%d res-peer-%d EX" % (i, i), wait="CAST l%d " % i)
        ck.expect(ev.get("status") == "OK", "node%d EX after the change: %s" % (k1, ev["line"]))
        c.agent(k1, LS, "unlock l%d" % i, wait="CAST l%d " % i)
    # node 1 leaves too: the peer restarts alone (and answers node 1's FIN)
    t = app_remove(c, ck, k1)
    ck.metric("remove_write_node%d" % k1, t)
    ck.expect(t < 5.0, "node%d: removing alpha took %.3f s (FIN wait?)" % (k1, t))
    ck.expect(wait_file(p.agent_log, "alpha: START G2.%d members %d" % (k1, p.id), 30),
              "peer agent did not start G2 alone:\n%s" % tail(p.agent_log))


def peer_agent_leaves(c, ck, pid, label):
    """SIGTERM to a `dlm-peer run --agent`: it leaves every lockspace through the agents (the
    kernels' agents stop and restart without it), then closes with the FIN handshakes and exits.
    Returns the seconds from the signal to its exit."""
    import signal as _signal
    p = c.nodes[pid]
    c.step("SIGTERM to dlm-peer node%d (%s): it leaves through the agents, then closes with FIN" % (pid, label))
    t0 = time.time()
    p.proc.send_signal(_signal.SIGTERM)
    try:
        rc = p.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        rc = None
    left = time.time() - t0
    c.state.drop_proc(p.proc.pid)
    p.proc = None
    c.members[LS] -= {pid}
    ck.metric("peer_leave_%s" % label, round(left, 3))
    ck.require(rc == 0, "dlm-peer node%d did not exit cleanly after SIGTERM (rc %s):\n%s" % (pid, rc, tail(p.log)))
    ck.expect(left < 5.0, "dlm-peer node%d took %.2f s to leave (%s)" % (pid, left, label))
    log = open(p.log).read()
    ck.expect("%s: leaving through the agents" % LS in log, "dlm-peer node%d: no leave through the agents:\n%s" % (pid, tail(p.log)))
    for k in sorted(c.members[LS]):
        if link_protocol(c, pid, k) == "3.2":
            ck.expect("reset node %d: FIN handshake complete" % k in log,
                      "dlm-peer node%d: no completed FIN handshake with node%d (%s)" % (pid, k, label))
    return left


def kernels_restarted(c, ck, kernels, members, count=1):
    """Every kernel's agent started a change with `members` for the count-th time (G0 excepted)
    and the kernel runs it. Returns {kernel: the agent's START line}."""
    want = ",".join(str(m) for m in members)
    out = {}
    for k in kernels:
        out[k] = agent_wait(c, k, "%s: START G[1-9][0-9]*\\.[0-9]+ members %s([^,0-9]|$)" % (LS, want), count, timeout=60)
        check_running(c, ck, k, members)
    return out


def sc_agent_peer_inproc(c, ck):
    """Two kernels with `dlm-peer agent` and the dlm-peer node 3 as `dlm-peer run --agent` (its
    agent in its process). (a) The kernels' applications create alpha: all three start G0 with
    [1, 2, 3] and lock against each other. (b) SIGTERM: dlm-peer leaves through the agents (the
    kernels stop and restart with [1, 2]), then its FIN handshakes; it exits at once. (c) The same
    command again: the new dlm-peer joins the running lockspace through the agents (the kernels
    restart with [1, 2, 3], node 3's configfs entry created anew) while node 2 holds EX on a name whose
    directory node becomes dlm-peer: dlm-peer's requests on it wait for that EX."""
    k1, k2 = sorted(k.id for k in c.kernel_nodes)[:2]
    p = c.peers[0]
    pid = p.id
    everyone = sorted([k1, k2, pid])
    # (a) formation
    for n in (k1, k2):
        app_create(c, n)
    for n in (k1, k2):
        ck.metric("create_node%d" % n, app_created(c, ck, n))
    for n in (k1, k2):
        check_running(c, ck, n, everyone)
    ck.require(wait_file(p.log, "joined %s" % LS, 30), "dlm-peer did not join:\n%s" % tail(p.log))
    ck.expect("%s: START G0 members %s" % (LS, ",".join(map(str, everyone))) in open(p.log).read(),
              "dlm-peer's agent did not start the formation G0:\n%s" % tail(p.log))
    peer_wait_recovered(c, ck, pid, everyone, 30)
    c.members[LS] = set(everyone)
    for k in (k1, k2):
        c.agent_start(k, LS)
    ck.metric("pairs_locked", pairwise_locking(c, ck, [k1, pid], "ipa"), "")
    # (b) the dlm-peer leaves on SIGTERM
    peer_agent_leaves(c, ck, pid, "first")
    kernels_restarted(c, ck, [k1, k2], [k1, k2])
    for k in (k1, k2):
        ck.expect("remove member %d" % pid in c.dmesg(k), "node%d dmesg lacks 'remove member %d'" % (k, pid))
    # (c) it comes back past the formation; node 2's EX is held across the join
    lk2, lkp = Locker(c, ck, k2), Locker(c, ck, pid)
    res = name_with_dir(c, "ipj", everyone, pid)
    ck.require(lk2.lock("hj", res, "EX") == "granted", "node%d EX on %s before the join" % (k2, res))
    os.replace(p.log, p.log + ".1")
    c.step("dlm-peer node%d starts again (same command): it joins the running %s through the agents" % (pid, LS))
    t0 = time.time()
    p.start()
    p.wait_ready()
    ck.require(wait_file(p.log, "joined %s" % LS, 60), "the new dlm-peer did not join:\n%s" % tail(p.log))
    ck.metric("peer_rejoin", round(time.time() - t0, 3))
    # each kernel started [1, 2] in between: node 3's configfs entry went then and is created
    # anew now (a renew, rmdir + mkdir, is only for a member that left and came back between
    # two starts of the same node)
    starts = kernels_restarted(c, ck, [k1, k2], everyone)
    for k, line in starts.items():
        ck.expect("renew" not in line, "node%d's agent renewed a member it had dropped at its last start: %s" % (k, line))
    for k in (k1, k2):
        d = c.dmesg(k)
        ck.expect(d.count("add member %d" % pid) >= 2, "node%d dmesg: no second 'add member %d'" % (k, pid))
        ck.expect("seq mismatch" not in d, "node%d dmesg: seq mismatch after the rejoin" % k)
    ck.metric("peer_join_recovery_ms", peer_wait_recovered(c, ck, pid, everyone, 30), "ms")
    ls = next((l for l in peer_status(pid).get("lockspaces", []) if l.get("name") == LS), {})
    ck.expect(ls.get("members") == everyone and ls.get("completed_recoveries", 0) >= 1,
              "dlm-peer status after the rejoin: %s" % ls)
    c.members[LS] = set(everyone)
    ex_blocks(ck, lk2, lkp, res, "hj", "pj", "held across the join", take=False)
    d = all_dumps(c, everyone, "after-join")
    ck.expect(not dumpmod.check(d, everyone), "invariants after the join: %s" % dumpmod.check(d, everyone))
    ck.metric("pairs_locked_after_join", pairwise_locking(c, ck, [pid, k1], "ipc"), "")
    peer_agent_leaves(c, ck, pid, "second")
    kernels_restarted(c, ck, [k1, k2], [k1, k2], count=2)
    recs = read_capture(c)
    check_fins(c, ck, recs, pid, [k1, k2])


# ------------------------------------------------------------------ table
@dataclass
class Scenario:
    name: str
    config: str
    fn: object
    about: str
    kernel: str | None = None
    transport: str | None = None
    default: bool = False
    overridable: bool = True       # --kernel/--transport apply
    order: int = 0                 # decode runs last: it reads the others' captures
    kwargs: dict = field(default_factory=dict)
    peer_args: dict = field(default_factory=dict)   # node id -> extra `dlm-peer run` arguments
    late_peers: bool = False       # the scenario starts the dlm-peers itself
    agents: bool = False           # the kernel nodes run `dlm-peer agent` as their cluster manager
    vm_mem_mb: int | None = None   # each VM's memory, when the default (128 MB) is too small

    @property
    def config_path(self):
        return os.path.join(paths.CONFIG_DIR, self.config)


def with_low(name, fn, sid, about, **kw):
    """A scenario on lab-peer.toml and its `-low` twin on lab-peer-low.toml, where dlm-peer is
    node 1, the lowest id (the recovery coordinator). Only the first can be in the default set."""
    return [Scenario(name, "lab-peer.toml", fn, about, **kw),
            Scenario(name + "-low", "lab-peer-low.toml", fn, "%s with dlm-peer as the lowest node" % sid,
                     **{k: v for k, v in kw.items() if k != "default"})]


# The lab part of `dlm-peer bench recovery --lab` (issue 5): the cluster of each size, kernels
# only and mixed (half kernels, half dlm-peers; node 1, a kernel, fails in all of them).
RECOVERY_BENCH_CONFIGS = {
    (2, "kernels"): "lab-2node.toml", (2, "mixed"): "lab-1k1p.toml",
    (4, "kernels"): "lab-4node.toml", (4, "mixed"): "lab-2k2p.toml",
    (8, "kernels"): "lab-8node.toml", (8, "mixed"): "lab-4k4p.toml",
}
RECOVERY_BENCH_LOCKS = (0, 10000, 100000)


def recovery_bench_name(nodes, kind, locks):
    return "recovery-bench-%dn-%s%s" % (nodes, kind, "-%dk" % (locks // 1000) if locks else "")


def recovery_bench_matrix():
    """recovery-bench-<N>n-<kernels|mixed>[-<L>k]: sc_recovery_bench on each config of
    RECOVERY_BENCH_CONFIGS with each lock count. Kernels only: node 1 and node 2 hold the
    locks; mixed: node 1 and the lowest dlm-peer (a survivor) do."""
    out = []
    for (nodes, kind), cfg in RECOVERY_BENCH_CONFIGS.items():
        for locks in RECOVERY_BENCH_LOCKS:
            holder = "node 2" if kind == "kernels" else "the lowest dlm-peer"
            out.append(Scenario(recovery_bench_name(nodes, kind, locks), cfg, sc_recovery_bench,
                                "benchmark: %d nodes (%s), node 1 and %s hold %d PR locks, node 1 (a kernel) fails" % (
                                    nodes, "kernels only" if kind == "kernels" else "half dlm-peers", holder, locks),
                                kwargs={"locks": locks, "peer_holds": kind == "mixed"},
                                # 100,000 locks: about 70 MB of kernel rsbs and lkbs plus the lock client's
                                # 20 MB do not fit in 128 MB
                                vm_mem_mb=512 if locks >= 100000 else None))
    return out


SCENARIOS = [
    Scenario("basic", "lab-2node.toml", sc_basic, "2 nodes: EX blocks, BAST, NOQUEUE -EAGAIN, LVB, conversions, clean leave (FIN < 1 s)",
             default=True),
    Scenario("basic-612", "lab-2node.toml", sc_basic, "basic on two 6.12 kernels", kernel="6.12"),
    Scenario("basic-510", "lab-2node.toml", sc_basic, "basic on two 5.10 kernels (protocol 3.1: no FIN)", kernel="5.10",
             default=True),
    Scenario("basic-sctp", "lab-2node.toml", sc_basic, "basic over SCTP", transport="sctp"),
    Scenario("three-node", "lab-3node.toml", sc_three,
             "3 nodes: one leaves (stop everywhere, then start), locks survive recovery, it rejoins"),
    Scenario("mixed", "lab-mixed.toml", sc_mixed, "5.10 + 6.1: the 6.1 kernel falls back to 3.1", overridable=False),
    Scenario("reconnect", "lab-2node.toml", sc_reconnect,
             "sockets destroyed (like ss -K) mid-stream: retransmission, duplicate seqs, nothing lost", default=True),
    Scenario("peer-join", "lab-peer.toml", sc_peer_join,
             "2 kernels + dlm-peer: joint recovery, kernels lock, dlm-peer leaves with FIN (< 1 s)",
             default=True),
    Scenario("peer-join-31", "lab-peer-31.toml", sc_peer_join,
             "the same with dlm-peer emulating an old 3.1 node (no OPTS/ACK/FIN to it)"),
    Scenario("peer-locks", "lab-peer.toml", sc_peer_locks,
             "dlm-peer masters a resource kernels wait on (BAST, GRANT after its unlock) and is a directory node",
             default=True, peer_args={3: ["--lock", "alpha:res-peer:EX:3"]}),
    Scenario("peer-nodir", "lab-peer-nodir.toml", sc_peer_nodir,
             "a nodir lockspace: kernels and dlm-peer master the names that hash to them, no directory traffic"),
    Scenario("peer-bench", "lab-peer.toml", sc_peer_bench,
             "benchmark: a kernel's lock+unlock round trips to a kernel master next to a dlm-peer master",
             peer_args={3: ["--lock", "alpha:bench-p2:NL:0"]}),
    Scenario("peer-join-low", "lab-peer-low.toml", sc_peer_join,
             "peer-join with dlm-peer as the lowest node (the recovery coordinator)"),
    Scenario("peer-locks-low", "lab-peer-low.toml", sc_peer_locks,
             "peer-locks with dlm-peer as the lowest node", peer_args={1: ["--lock", "alpha:res-peer:EX:3"]}, default=True),
    Scenario("peer-lvb-mismatch", "lab-peer.toml", sc_peer_lvb_mismatch,
             "S11: dlm-peer's LVB length 64 against 32: both sides refuse (config mismatch, -EPROTO)",
             peer_args={3: ["--config", os.path.join(paths.CONFIG_DIR, "lab-peer-lvb64.toml")]}, default=True),
    Scenario("peer-wrong-id", "lab-peer.toml", sc_peer_wrong_id,
             "S12: dlm-peer uses another global id: recovery waits on 'not ready', the join timeouts report it",
             peer_args={3: ["--config", os.path.join(paths.CONFIG_DIR, "lab-peer-badid.toml"), "--join-timeout", "8"]}, default=True),
    Scenario("peer-weight0", "lab-peer-w0.toml", sc_peer_weight0,
             "S17: dlm-peer with weight 0 is never a directory node but masters what it locks first",
             peer_args={3: ["--lock", "alpha:res-peer:EX:0"]}, default=True),
    Scenario("recovery-bench", "lab-3node.toml", sc_recovery_bench,
             "benchmark: 3 kernels, one fails: recovery time with 0 locks"),
    Scenario("recovery-bench-1k", "lab-3node.toml", sc_recovery_bench,
             "benchmark: the same with 1,000 locks held by each of two kernels", kwargs={"locks": 1000}),
    Scenario("recovery-bench-10k", "lab-3node.toml", sc_recovery_bench,
             "benchmark: the same with 10,000 locks", kwargs={"locks": 10000}),
    Scenario("s4-master-dies", "lab-peer.toml", sc_s4_master_dies,
             "S4: dlm-peer masters r2, both kernels hold PR, dlm-peer is killed: a kernel becomes master, locks rebuilt",
             peer_args={3: ["--lock", "alpha:r2:NL:0"]}, default=True),
    Scenario("s4-master-dies-low", "lab-peer-low.toml", sc_s4_master_dies,
             "S4 with dlm-peer as the lowest node (the coordinator dies)", peer_args={1: ["--lock", "alpha:r2:NL:0"]}),
    Scenario("s2-peer-joins", "lab-peer.toml", sc_s2_peer_joins,
             "S2: dlm-peer joins while a kernel holds EX and the other waits PR", late_peers=True, default=True),
    Scenario("s3-holder-dies", "lab-peer.toml", sc_s3_holder_dies,
             "S3: the kernel holding EX (and mastering r1) dies; the other kernel waits EX, dlm-peer waits PR", default=True),
    Scenario("s3-holder-dies-b", "lab-peer.toml", sc_s3_holder_dies,
             "S3 with the surviving kernel as master of r1", kwargs={"master": "waiter"}, default=True),
    Scenario("s3-holder-dies-low", "lab-peer-low.toml", sc_s3_holder_dies,
             "S3 with dlm-peer as the lowest node"),
    Scenario("s9-planned-leave", "lab-peer.toml", sc_s9_planned_leave,
             "S9: a kernel leaves; the other kernel and dlm-peer recover without it; FIN < 1 s", default=True),
    Scenario("s9-planned-leave-low", "lab-peer-low.toml", sc_s9_planned_leave,
             "S9 with dlm-peer as the lowest node"),
    Scenario("s13-directory-paging", "lab-peer.toml", sc_s13_directory_paging,
             "S13: dlm-peer rebuilds its directory from 1,500 60-byte names in several RCOM_NAMES pages", default=True),
    Scenario("recovery-bench-peer", "lab-peer.toml", sc_recovery_bench,
             "benchmark: 2 kernels + dlm-peer, a kernel fails (0 locks): dlm-peer recovers with the kernel"),
    Scenario("recovery-bench-peer-1k", "lab-peer.toml", sc_recovery_bench,
             "benchmark: the same with 1,000 locks held by each kernel", kwargs={"locks": 1000}),
    Scenario("recovery-bench-peer-10k", "lab-peer.toml", sc_recovery_bench,
             "benchmark: the same with 10,000 locks", kwargs={"locks": 10000}),
    *recovery_bench_matrix(),
    Scenario("random-workload", "lab-peer.toml", sc_random_workload,
             "2 kernels + dlm-peer lock, convert, cancel and unlock at random; invariants from every node's dumps each round", default=True),
    Scenario("agent-basic", "lab-2node.toml", sc_agent_basic,
             "dlm-peer agent as the kernels' CM: configfs, uevents, formation, locks, a leave coordinated by the agents",
             agents=True, default=True),
    Scenario("agent-change", "lab-agent-3node.toml", sc_agent_change,
             "agents: a reload lets node 3 join (barrier checked with an agent frozen), it leaves, rejoins, "
             "is powered off and removed with node-down", agents=True, default=True),
    Scenario("agent-fence", "lab-agent-fence.toml", sc_agent_fence,
             "agents with heartbeats: a powered-off node is fenced by the lowest live agent; a failing fence "
             "removes nobody, a successful one removes it everywhere", agents=True),
    Scenario("agent-peer", "lab-peer.toml", sc_agent_peer,
             "two kernels and dlm-peer, each with its agent: leaves coordinated by the agents stop and restart the "
             "dlm-peer node through ls-stop/ls-start (needs dlm-peer run with those control lines)", agents=True, default=True),
    Scenario("agent-peer-inproc", "lab-peer.toml", sc_agent_peer_inproc,
             "two kernels with their agents and `dlm-peer run --agent`: formation, SIGTERM leaves through the agents "
             "(FIN), the same command joins the running lockspace with a kernel's EX held across it",
             agents=True, peer_args={3: ["--agent"]}, default=True),
    Scenario("peer-contend", "lab-peer.toml", sc_peer_contend,
             "a kernel and dlm-peer: LVB written and read both ways, cancel, conversions up and down, on resources each masters", default=True),
    *with_low("s5a-lvb-preserved", sc_s5a_lvb_preserved, "S5a",
              "S5a: the master of r4 dies; dlm-peer's PW|VALBLK LVB v2 becomes the new master's, valid", default=True),
    *with_low("s5b-lvb-writers-lost", sc_s5b_lvb_writers_lost, "S5b",
              "S5b: the master of r5 dies, only a CR|VALBLK writer is left: LVB v3 flagged VALNOTVALID on the next grant", default=True),
    *with_low("s6-lvb-invalidated", sc_s6_lvb_invalidated, "S6",
              "S6: an EX|VALBLK holder dies, the master (dlm-peer or a kernel) survives: VALNOTVALID until a PW/EX write", default=True),
    *with_low("s7-kernel-master-dies", sc_s7_kernel_master_dies, "S7 (kernel master)",
              "S7: dlm-peer's REQUEST, CONVERT, UNLOCK and CANCEL in flight to a frozen kernel master that dies", default=True),
    *with_low("s7-peer-master-dies", sc_s7_peer_master_dies, "S7 (dlm-peer master)",
              "S7: a kernel's REQUEST, CONVERT, UNLOCK and CANCEL in flight to a frozen dlm-peer master that is killed", default=True),
    *with_low("s8-change-during-recovery", sc_s8_change_during_recovery, "S8",
              "S8: survivors restarted with a dead node still listed, stopped mid-recovery (interrupted), restarted without it", default=True),
    Scenario("s8-rebuild-interrupted", "lab-peer.toml", sc_s8_rebuild_interrupted,
             "S8's -EEXIST path: a lock rebuild (1,500 RCOM_LOCKs) interrupted midway and redone: no duplicated master copies"),
    *with_low("s16-control-noops", sc_s16_control_noops, "S16",
              "S16: start while running refused; stop twice and start twice harmless (kernel sysfs and dlm-peer ls-stop/ls-start)", default=True),
    *with_low("s10-peer-rejoins", sc_s10_peer_rejoins, "S10",
              "S10: dlm-peer is killed and a new dlm-peer rejoins (comms reset, renew): old locks purged, no seq mismatch", default=True),
    *with_low("s14-requestqueue", sc_s14_requestqueue, "S14",
              "S14: a CONVERT and a newer REQUEST reach a stopped dlm-peer: queued, processed in order after recovery", default=True),
    Scenario("s16-double-start-kernels", "lab-3node.toml", sc_s16_double_start_kernels,
             "S16's double start among three kernels only (6.1 interrupts and recovers; newer kernels may wedge)"),
    Scenario("two-kernels-two-peers", "lab-2k2p.toml", sc_two_kernels_two_peers,
             "2 kernels + 2 dlm-peers: formation, every node locks against every other, random workload, a kernel fails"),
    Scenario("decode", "lab-2node.toml", sc_decode,
             "exact message counts of a known workload; every capture of the run through dlm-peer decode",
             default=True, order=1),
]


def by_name(name):
    for s in SCENARIOS:
        if s.name == name:
            return s
    return None
