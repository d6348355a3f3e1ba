"""Small shared helpers."""
import sys
import time

_T0 = time.time()


class LabError(Exception):
    """A failure to run the lab at all (setup, environment), as opposed to a scenario failing."""


class Skip(Exception):
    """A check that cannot be made here (reported as SKIP, never as a pass)."""


def log(msg, end="\n"):
    sys.stderr.write("[%7.2f] %s%s" % (time.time() - _T0, msg, end))
    sys.stderr.flush()


def jhash(data, initval=0):
    """The kernel's jhash (lookup3 hashlittle) over bytes: the resource hash (m_hash) that
    places a resource's directory node (wire.md §11.2)."""
    M = 0xFFFFFFFF

    def rol(x, k):
        return ((x << k) | (x >> (32 - k))) & M

    a = b = c = (0xDEADBEEF + len(data) + initval) & M
    i, n = 0, len(data)
    while n > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & M
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & M
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & M
        a = (a - c) & M; a ^= rol(c, 4); c = (c + b) & M
        b = (b - a) & M; b ^= rol(a, 6); a = (a + c) & M
        c = (c - b) & M; c ^= rol(b, 8); b = (b + a) & M
        a = (a - c) & M; a ^= rol(c, 16); c = (c + b) & M
        b = (b - a) & M; b ^= rol(a, 19); a = (a + c) & M
        c = (c - b) & M; c ^= rol(b, 4); b = (b + a) & M
        i += 12
        n -= 12
    if n == 0:
        return c
    tail = data[i:] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & M
    b = (b + int.from_bytes(tail[4:8], "little")) & M
    c = (c + int.from_bytes(tail[8:12], "little")) & M
    c ^= b; c = (c - rol(b, 14)) & M
    a ^= c; a = (a - rol(c, 11)) & M
    b ^= a; b = (b - rol(a, 25)) & M
    c ^= b; c = (c - rol(b, 16)) & M
    a ^= c; a = (a - rol(c, 4)) & M
    b ^= a; b = (b - rol(a, 14)) & M
    c ^= b; c = (c - rol(b, 24)) & M
    return c


def directory_node(name, members):
    """wire.md §11.3: members (nodeid, weight) sorted by id, repeated by weight."""
    arr = []
    ms = sorted(members)
    if all(w == 0 for _, w in ms):
        arr = [i for i, _ in ms]
    else:
        for i, w in ms:
            arr += [i] * w
    return arr[(jhash(name) >> 16) % len(arr)]
