"""The lab's scenarios. Each is a function of (cluster, check) that drives real kernels
and asserts what must happen; the runner boots the cluster from the scenario's config
file first and tears it down afterwards. See Interop/README.md for the list.

To add one: write a function, then a Scenario(...) line in SCENARIOS. A dlm-peer node
joins a scenario by being in its config file ([[node]] kind = "peer"); the cluster
starts it and the dlm_controld-like steps (join/leave/add) treat it as a member.
"""
from __future__ import annotations

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
        diffs = capture.compare(tcounts, res.get("counts_by_direction", {}), exact=transport != "sctp")
        ck.expect(not diffs, "dlm-peer decode %s disagrees with tshark: %s" % (name, "; ".join(diffs[:8])))
        ck.metric("decoded_%s" % name, res.get("messages"), "msgs")


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
    return [int(m) for m in re.findall(r"dlm_recover \d+ generation \d+ done: (\d+) ms", c.dmesg(nid))][after:]


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


def sc_recovery_bench(c, ck, locks=0):
    """Benchmark, recovery after a node failure: the lockspace forms (join time per node), the
    first member takes `locks` PR locks (one resource each: it masters them all) and the second
    takes PR on the same names (its process copies, mastered by the first); the first member
    then fails. Measured: each survivor's recovery time (the directory rebuild, new masters by
    RCOM_LOOKUP, the second member's locks rebuilt on the new masters by RCOM_LOCK, purge). The
    invariants are then checked on the survivors' dumps, and the second member's locks must
    all still be granted."""
    kernels = sorted(k.id for k in c.kernel_nodes)
    first, second = kernels[0], kernels[1]
    t = c.join(LS)
    ck.metric("form", round(max(t.values()), 3))
    if locks:
        for i in (first, second):
            c.agent_start(i, LS)
            ev = c.agent(i, LS, "many m%d rb- PR %d" % (i, locks), wait="MANYDONE m%d " % i, timeout=60 + locks / 50)
            ck.require(ev.get("ok") == str(locks), "node%d many: %s" % (i, ev["line"]))
            ck.metric("node%d_took_%d_locks" % (i, locks), float(ev["secs"]))
    rec, wall = fail_node(c, ck, first)
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
    ck.note("%d locks: form %.3f s; recovery %s ms" % (locks, max(t.values()), rec))


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
    import random
    seed = seed if seed is not None else int(time.time())
    rnd = random.Random(seed)
    ck.note("seed %d" % seed)
    kernels = sorted(k.id for k in c.kernel_nodes)
    pid = sorted(p.id for p in c.peers)[0]
    everyone = sorted(kernels + [pid])
    members = [(i, c.cfg.node(i).weight) for i in everyone]
    # resources: for each node as directory node, two names (their masters: whoever locks first)
    names = []
    for d in everyone:
        names += [n for n in ("rw-%d" % i for i in range(400)) if directory_node(n.encode(), members) == d][:2]
    c.join(LS)
    ck.require(wait_file(c.nodes[pid].log, "joined %s" % LS, 30), "dlm-peer did not join")
    for k in kernels:
        c.agent_start(k, LS)
    modes = ["NL", "CR", "CW", "PR", "PW", "EX"]
    peer_lkid = {}          # name -> lkid of dlm-peer's lock on it
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

        def state(node, lkid):
            for r in dumps_now.get(node, {}).values():
                for l in r.locks:
                    if l.lkid == lkid and l.nodeid is None:
                        return l.queue
            return None
        for node in everyone:
            for name in names:
                if rnd.random() < 0.5:
                    continue
                if node == pid:
                    lkid = peer_lkid.get(name)
                    st = state(pid, lkid) if lkid is not None else None
                    if st is None:
                        peer_lkid.pop(name, None)
                        flags = ("NOQUEUE",) if rnd.random() < 0.3 else ()
                        ans = peer_lock(c, ck, pid, name, rnd.choice(modes), flags=flags, wait=False)
                        if ans.get("lkid") is not None and ans.get("status") in ("granted", "queued"):
                            peer_lkid[name] = int(ans["lkid"])
                    elif st == "granted":
                        x = rnd.random()
                        if x < 0.4:
                            peer_answer(c, pid, "unlock", peerctl.unlock(pid, LS, lkid))
                            peer_lkid.pop(name, None)
                        elif x < 0.8:
                            flags = ("NOQUEUE",) if rnd.random() < 0.3 else ()
                            peerctl.convert(pid, LS, lkid, rnd.choice(modes), flags=flags, wait=False)
                    else:
                        if rnd.random() < 0.5:
                            peerctl.cancel(pid, LS, lkid)
                else:
                    tag = "t%s" % name.replace("-", "")
                    lkid = kernel_lkid.get((node, name))
                    st = state(node, lkid) if lkid is not None else None
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
        d = all_dumps(c, [pid], "release")
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
    peer_leaves(c, ck, pid)
    leave_all(c, ck, list(reversed(kernels)))


def peer_lock_state(c, pid, lkid):
    """(queue, grmode) of dlm-peer's own lock `lkid`, from its `locks` dump; None if gone."""
    for r in peerctl.as_dump(peerctl.locks_json(pid, LS)).values():
        for l in r.locks:
            if l.lkid == lkid and l.nodeid is None:
                return l.queue, l.grmode
    return None


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
        end = time.time() + 10
        st = None
        while time.time() < end:
            st = peer_lock_state(c, pid, lk)
            if st == ("granted", "EX"):
                break
            time.sleep(0.1)
        ck.expect(st == ("granted", "EX"), "%s: dlm-peer's PR->EX after the kernel's unlock: %s" % (res, st))
        d = all_dumps(c, [k1, pid], res)
        ck.expect(not dumpmod.check(d, [k1, pid]), "%s: invariants: %s" % (res, dumpmod.check(d, [k1, pid])))
        peerctl.unlock(pid, LS, lk)
    c.agent(k1, LS, "unlock keep", wait="CAST keep ")
    c.agent_quit(k1, LS)
    peer_leaves(c, ck, pid)
    leave_all(c, ck, list(reversed(kernels)))


BENCH_PEER_RES = "bench-p2"


PEER_RES = "res-peer"


def peer_leaves(c, ck, pid, timeout=20):
    """SIGTERM to the dlm-peer (it leaves with the FIN handshake) while the remaining members
    are stopped, given the new member list and started (dlm_controld's barrier)."""
    import signal as _signal
    p = c.nodes[pid]
    remaining = sorted(c.members[LS] - {pid})
    c.step("dlm-peer node%d leaves %s; remaining %s: stop all, then members+start all" % (pid, LS, remaining))
    done_before = {i: recoveries_done(c, i) for i in remaining}
    t0 = time.time()
    p.proc.send_signal(_signal.SIGTERM)
    for i in remaining:
        c.kernel(i).sh("dlmlc stop %s" % LS)
    for i in remaining:
        c.kernel(i).bg("dlmlc members %s --no-stop %s" % (LS, c._member_args(remaining)), "/tmp/members-%s.log" % LS)
    for i in remaining:
        line = c.kernel(i).waitlog("/tmp/members-%s.log" % LS, "RECONFIGURED|ERROR", 1, timeout)
        ck.require("RECONFIGURED" in line, "node%d: reconfiguring %s failed: %s" % (i, LS, line))
    # let the remaining kernels finish that recovery before anything else (a 5.10 kernel that
    # releases a lockspace mid-recovery waits a second for it)
    for i in remaining:
        end = time.time() + timeout
        while recoveries_done(c, i) <= done_before[i] and time.time() < end:
            time.sleep(0.05)
        ck.expect(recoveries_done(c, i) > done_before[i], "node%d: no recovery finished after node%d left" % (i, pid))
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
    text = k.sh("cat /sys/kernel/debug/dlm/%s" % lsname)
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

    @property
    def config_path(self):
        return os.path.join(paths.CONFIG_DIR, self.config)


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
    Scenario("peer-contend", "lab-peer.toml", sc_peer_contend,
             "a kernel and dlm-peer: LVB written and read both ways, cancel, conversions up and down, on resources each masters", default=True),
    Scenario("decode", "lab-2node.toml", sc_decode,
             "exact message counts of a known workload; every capture of the run through dlm-peer decode",
             default=True, order=1),
]


def by_name(name):
    for s in SCENARIOS:
        if s.name == name:
            return s
    return None
