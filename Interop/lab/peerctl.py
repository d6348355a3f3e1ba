"""A running dlm-peer's control socket, from the lab: one request line in, one JSON line out.

The socket is a Unix socket (`$XDG_RUNTIME_DIR` or /tmp, `dlm-peer.<node>.sock`), so the
harness reaches a dlm-peer inside the lab's network namespace without entering it. Requests
(see Sources/DLMNode/Node/ControlRequest.swift): `status`, `lock LS RES MODE [flags=..]
[lvb=HEX] [nowait]`, `convert LS LKID MODE ...`, `unlock LS LKID ...`, `cancel LS LKID`,
`locks LS`, and the cluster manager's `ls-stop LS` / `ls-start LS ID[:WEIGHT]...`.
"""
from __future__ import annotations

import json
import os
import socket

from . import dumps


class PeerCtlError(RuntimeError):
    pass


def socket_path(nid: int) -> str:
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR") or "/tmp", "dlm-peer.%d.sock" % nid)


def request(nid: int, line: str, timeout: float = 60.0) -> dict:
    """Sends one request line; returns the JSON answer (a dict)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(socket_path(nid))
        s.sendall(line.encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        raise PeerCtlError("dlm-peer node %d, `%s`: %s" % (nid, line, e)) from e
    finally:
        s.close()
    text = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
    try:
        return json.loads(text)
    except ValueError as e:
        raise PeerCtlError("dlm-peer node %d, `%s`: not JSON: %r" % (nid, line, text[:500])) from e


def _encode(name: str) -> str:
    out = []
    for b in name.encode():
        c = chr(b)
        out.append(c if (c.isalnum() or c in "-_.:/") else "%%%02X" % b)
    return "".join(out)


def lock(nid, ls, res, mode, flags=(), lvb_hex=None, wait=True, timeout=60.0):
    words = ["lock", _encode(ls), _encode(res), mode]
    if flags:
        words.append("flags=" + ",".join(flags))
    if lvb_hex:
        words.append("lvb=" + lvb_hex)
    if not wait:
        words.append("nowait")
    return request(nid, " ".join(words), timeout)


def convert(nid, ls, lkid, mode, flags=(), lvb_hex=None, wait=True, timeout=60.0):
    words = ["convert", _encode(ls), "%x" % lkid, mode]
    if flags:
        words.append("flags=" + ",".join(flags))
    if lvb_hex:
        words.append("lvb=" + lvb_hex)
    if not wait:
        words.append("nowait")
    return request(nid, " ".join(words), timeout)


def unlock(nid, ls, lkid, flags=(), lvb_hex=None, timeout=60.0):
    words = ["unlock", _encode(ls), "%x" % lkid]
    if flags:
        words.append("flags=" + ",".join(flags))
    if lvb_hex:
        words.append("lvb=" + lvb_hex)
    return request(nid, " ".join(words), timeout)


def cancel(nid, ls, lkid, timeout=60.0):
    return request(nid, "cancel %s %x" % (_encode(ls), lkid), timeout)


def ls_stop(nid, ls, timeout=60.0):
    return request(nid, "ls-stop %s" % _encode(ls), timeout)


def ls_start(nid, ls, members, timeout=60.0):
    """members: [(id, weight)]"""
    return request(nid, "ls-start %s %s" % (_encode(ls), " ".join("%d:%d" % m for m in members)), timeout)


def locks_json(nid, ls, timeout=60.0) -> dict:
    return request(nid, "locks %s" % _encode(ls), timeout)


def _get(d, *keys, default=None):
    for k in keys:
        if k in d:
            return d[k]
    return default


def as_dump(doc: dict) -> dict:
    """dlm-peer's `locks` JSON -> {name: dumps.Resource}, as a kernel dump would read, so that
    the cluster-wide checks treat both kinds of node alike."""
    out = {}
    for r in _get(doc, "resources", default=[]):
        res_nodeid = _get(r, "res_nodeid", "resNodeid", default=None)
        master = _get(r, "master", default=None)
        if res_nodeid is None:
            res_nodeid = 0 if master is None else master
        res = dumps.Resource(name=r["name"], master=0 if res_nodeid == 0 else int(res_nodeid))
        lvb = _get(r, "lvb")
        if lvb:
            res.lvb = bytes.fromhex(lvb)
        res.lvb_invalid = bool(_get(r, "value_not_valid", "valueNotValid", default=False))
        for qkey, queue in (("granted", "granted"), ("converting", "convert"), ("waiting", "waiting")):
            for l in _get(r, qkey, default=[]):
                nodeid = int(_get(l, "nodeid", default=0) or 0)
                remid = _get(l, "remid", default=None)
                grmode = _get(l, "grmode", default="--")
                rqmode = _get(l, "rqmode", default=None) if queue != "granted" else None
                if rqmode in ("--", "IV"):
                    rqmode = None if queue == "granted" else rqmode
                lk = dumps.Lock(lkid=int(l["lkid"]), grmode="--" if grmode in ("IV", "--") else grmode,
                                rqmode=rqmode, queue=queue)
                if nodeid:
                    if res.master == 0:
                        lk.nodeid, lk.remid = nodeid, remid
                    else:
                        lk.process_copy, lk.remid = True, remid
                res.locks.append(lk)
        out[res.name] = res
    return out


def many(nid: int, ls: str, prefix: str, mode: str, count: int, inflight: int = 64, timeout: float = 60.0) -> float:
    """`count` locks (names prefix0 .. prefix<count-1>, as the kernel lock client's `many`)
    taken by dlm-peer `nid`: `inflight` workers, each sending one `lock` request per connection
    at a time; returns the seconds it took. The first lock not granted ends them all
    (PeerCtlError naming it)."""
    import asyncio
    import time

    names = iter(range(count))

    async def worker():
        for i in names:
            line = "lock %s %s %s\n" % (_encode(ls), _encode("%s%d" % (prefix, i)), mode)
            r, w = await asyncio.wait_for(asyncio.open_unix_connection(socket_path(nid)), timeout)
            try:
                w.write(line.encode())
                text = (await asyncio.wait_for(r.readline(), timeout)).decode(errors="replace")
            finally:
                w.close()
            try:
                ans = json.loads(text)
            except ValueError:
                ans = {"answer": text[:300]}
            if ans.get("status") != "granted":
                raise PeerCtlError("dlm-peer node %d, `%s`: %s" % (nid, line.strip(), ans))

    async def all_locks():
        async with asyncio.TaskGroup() as g:      # a failure cancels the other workers
            for _ in range(min(inflight, count)):
                g.create_task(worker())

    t0 = time.time()
    try:
        asyncio.run(all_locks())
    except ExceptionGroup as eg:
        raise eg.exceptions[0] from None
    return time.time() - t0
