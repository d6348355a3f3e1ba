"""Cluster configuration: the TOML file that dlm-peer reads, as the lab uses it.

Schema (see Config/*.toml and Interop/README.md):

    [cluster]   name, transport ("tcp"|"sctp"), port
    [[node]]    id, addresses, kind ("kernel"|"peer"), kernel, weight, protocol
    [[lockspace]] name, members, lvb_length, nodir

load(path) parses and validates; errors are collected and raised together as
ConfigError, each naming the file and the offending key.
"""
from __future__ import annotations

import ipaddress
import tomllib
import zlib
from dataclasses import dataclass, field

KERNELS = ("6.1", "6.12", "5.10")
TRANSPORTS = ("tcp", "sctp")
KINDS = ("kernel", "peer")
PROTOCOLS = ("3.1", "3.2")
DEFAULT_PORT = 21064
DEFAULT_KERNEL = "6.1"
USER_LVB_LEN = 32            # DLM_USER_LVB_LEN: lockspaces made through /dev/dlm-control
LS_NAME_MAX = 64             # DLM_LOCKSPACE_LEN
CLUSTER_NAME_MAX = 32        # configfs cluster_name
LAB_NET = ipaddress.ip_network("10.77.0.0/24")   # the only network the lab creates

_CLUSTER_KEYS = {"name", "transport", "port"}
# read by `dlm-peer agent` only: passed through to the VMs' config unchanged
_AGENT_KEYS = ("agent_port", "fence_command", "heartbeat_interval", "heartbeat_timeout")
_NODE_KEYS = {"id", "addresses", "kind", "kernel", "weight", "protocol"}
_LS_KEYS = {"name", "members", "lvb_length", "nodir"}


class ConfigError(Exception):
    def __init__(self, path, problems):
        self.path, self.problems = path, list(problems)
        super().__init__("%s: invalid cluster config:\n%s" % (
            path, "\n".join("  - " + p for p in self.problems)))


def global_id(lsname: str) -> int:
    """The lockspace global id that dlm_controld uses (cpgname_to_crc):
    zlib CRC-32 of "dlm:ls:<name>" including the trailing NUL byte."""
    return zlib.crc32(b"dlm:ls:" + lsname.encode() + b"\0") & 0xFFFFFFFF


@dataclass
class Node:
    id: int
    addresses: list
    kind: str = "kernel"
    kernel: str = DEFAULT_KERNEL
    weight: int = 1
    protocol: str | None = None

    @property
    def address(self) -> str:
        return self.addresses[0]


@dataclass
class Lockspace:
    name: str
    members: list
    lvb_length: int = USER_LVB_LEN
    nodir: bool = False

    @property
    def global_id(self) -> int:
        return global_id(self.name)


@dataclass
class Config:
    path: str
    name: str
    transport: str
    port: int
    nodes: list = field(default_factory=list)
    lockspaces: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    agent: dict = field(default_factory=dict)     # the [cluster] keys of the agents (_AGENT_KEYS)

    def node(self, nid: int) -> Node:
        for n in self.nodes:
            if n.id == nid:
                return n
        raise KeyError(nid)

    def lockspace(self, name: str) -> Lockspace:
        for ls in self.lockspaces:
            if ls.name == name:
                return ls
        raise KeyError(name)

    @property
    def kernel_nodes(self):
        return [n for n in self.nodes if n.kind == "kernel"]

    @property
    def peer_nodes(self):
        return [n for n in self.nodes if n.kind == "peer"]

    def with_overrides(self, kernel=None, transport=None):
        """A copy with every kernel node on `kernel` and/or the cluster on `transport`."""
        import copy
        c = copy.deepcopy(self)
        if transport:
            c.transport = transport
        if kernel:
            for n in c.nodes:
                if n.kind == "kernel":
                    n.kernel = kernel
        problems = lab_problems(c)
        if problems:
            raise ConfigError(c.path, problems)
        return c


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def parse(text: str, path: str = "<string>") -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, ["TOML syntax: %s" % e]) from None
    return from_dict(doc, path)


def load(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise ConfigError(path, ["cannot read: %s" % e.strerror]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, ["not UTF-8 text"]) from None
    return parse(text, path)


def from_dict(doc: dict, path: str = "<dict>") -> Config:
    errs, warns = [], []
    top_known = {"cluster", "node", "lockspace"}
    for k in doc:
        if k not in top_known:
            warns.append("unknown top-level key %r (ignored by the lab)" % k)

    # ---- [cluster]
    cl = doc.get("cluster")
    if cl is None:
        errs.append("missing [cluster] table")
        cl = {}
    elif not isinstance(cl, dict):
        errs.append("[cluster] must be a table")
        cl = {}
    for k in cl:
        if k not in _CLUSTER_KEYS and k not in _AGENT_KEYS:
            warns.append("[cluster]: unknown key %r (ignored by the lab)" % k)
    name = cl.get("name", "")
    if "name" not in cl:
        errs.append("[cluster].name is missing")
    elif not isinstance(name, str) or not name:
        errs.append("[cluster].name must be a non-empty string")
    elif len(name.encode()) >= CLUSTER_NAME_MAX or any(c.isspace() for c in name):
        errs.append("[cluster].name %r must be under %d bytes without spaces" % (name, CLUSTER_NAME_MAX))
    transport = cl.get("transport", "tcp")
    if transport not in TRANSPORTS:
        errs.append("[cluster].transport is %r; must be one of %s" % (transport, ", ".join(TRANSPORTS)))
    port = cl.get("port", DEFAULT_PORT)
    if not _is_int(port) or not 1 <= port <= 65535:
        errs.append("[cluster].port is %r; must be an integer 1..65535" % (port,))

    # ---- [[node]]
    nodes = []
    raw_nodes = doc.get("node", [])
    if not isinstance(raw_nodes, list):
        errs.append("'node' must be an array of tables ([[node]])")
        raw_nodes = []
    if not raw_nodes:
        errs.append("no [[node]] entries")
    seen_ids, seen_addrs = {}, {}
    for i, rn in enumerate(raw_nodes):
        where = "[[node]] #%d" % (i + 1)
        if not isinstance(rn, dict):
            errs.append("%s must be a table" % where)
            continue
        nid = rn.get("id")
        if nid is None:
            errs.append("%s: 'id' is missing" % where)
            continue
        if not _is_int(nid) or not 1 <= nid <= 0x7FFFFFFF:
            errs.append("%s: id %r must be a positive integer" % (where, nid))
            continue
        where = "[[node]] id=%d" % nid
        for k in rn:
            if k not in _NODE_KEYS:
                warns.append("%s: unknown key %r (ignored by the lab)" % (where, k))
        if nid in seen_ids:
            errs.append("%s: duplicate node id (also [[node]] #%d)" % (where, seen_ids[nid]))
        seen_ids[nid] = i + 1
        kind = rn.get("kind", "kernel")
        if kind not in KINDS:
            errs.append("%s: kind %r must be one of %s" % (where, kind, ", ".join(KINDS)))
        addrs = rn.get("addresses")
        if addrs is None:
            errs.append("%s: 'addresses' is missing" % where)
            addrs = []
        elif not isinstance(addrs, list) or not addrs:
            errs.append("%s: addresses must be a non-empty array of IP address strings" % where)
            addrs = []
        good_addrs = []
        for a in addrs:
            try:
                ip = ipaddress.ip_address(a)
            except (ValueError, TypeError):
                errs.append("%s: %r is not an IP address" % (where, a))
                continue
            if str(ip) in seen_addrs:
                errs.append("%s: address %s is also used by node %d" % (where, ip, seen_addrs[str(ip)]))
            seen_addrs[str(ip)] = nid
            good_addrs.append(str(ip))
        kernel = rn.get("kernel", DEFAULT_KERNEL)
        if "kernel" in rn and kind == "peer":
            warns.append("%s: 'kernel' is meaningless for a peer node (ignored)" % where)
        if kernel not in KERNELS:
            errs.append("%s: kernel %r must be one of %s" % (where, kernel, ", ".join(KERNELS)))
        weight = rn.get("weight", 1)
        if not _is_int(weight) or weight < 0:
            errs.append("%s: weight %r must be an integer >= 0" % (where, weight))
        proto = rn.get("protocol")
        if proto is not None:
            if kind != "peer":
                errs.append("%s: 'protocol' is for peer nodes only (a kernel speaks what it speaks)" % where)
            elif proto not in PROTOCOLS:
                errs.append("%s: protocol %r must be one of %s" % (where, proto, ", ".join(PROTOCOLS)))
        nodes.append(Node(id=nid, addresses=good_addrs, kind=kind, kernel=kernel,
                          weight=weight, protocol=proto))

    # ---- [[lockspace]]
    lss = []
    raw_ls = doc.get("lockspace", [])
    if not isinstance(raw_ls, list):
        errs.append("'lockspace' must be an array of tables ([[lockspace]])")
        raw_ls = []
    seen_ls = set()
    for i, rl in enumerate(raw_ls):
        where = "[[lockspace]] #%d" % (i + 1)
        if not isinstance(rl, dict):
            errs.append("%s must be a table" % where)
            continue
        lname = rl.get("name")
        if not isinstance(lname, str) or not lname:
            errs.append("%s: 'name' must be a non-empty string" % where)
            continue
        where = "[[lockspace]] %r" % lname
        for k in rl:
            if k not in _LS_KEYS:
                warns.append("%s: unknown key %r (ignored by the lab)" % (where, k))
        if len(lname.encode()) > LS_NAME_MAX or "/" in lname or any(c.isspace() for c in lname):
            errs.append("%s: name must be at most %d bytes, without '/' or spaces" % (where, LS_NAME_MAX))
        if lname in seen_ls:
            errs.append("%s: duplicate lockspace name" % where)
        seen_ls.add(lname)
        members = rl.get("members")
        if not isinstance(members, list) or not members or not all(_is_int(m) for m in members):
            errs.append("%s: members must be a non-empty array of node ids" % where)
            members = []
        for m in members:
            if m not in seen_ids:
                errs.append("%s: member %d is not a [[node]] id" % (where, m))
        if len(set(members)) != len(members):
            errs.append("%s: members %r has duplicates" % (where, members))
        lvb = rl.get("lvb_length", USER_LVB_LEN)
        if not _is_int(lvb) or lvb <= 0 or lvb % 8:
            errs.append("%s: lvb_length %r must be a positive multiple of 8" % (where, lvb))
        else:
            kmembers = [n.id for n in nodes if n.id in members and n.kind == "kernel"]
            if kmembers and lvb != USER_LVB_LEN:
                errs.append("%s: lvb_length is %d but kernel node(s) %s are members: a lockspace made "
                            "through the kernel's device interface always has lvb_length %d"
                            % (where, lvb, kmembers, USER_LVB_LEN))
        nodir = rl.get("nodir", False)
        if not isinstance(nodir, bool):
            errs.append("%s: nodir %r must be true or false" % (where, nodir))
            nodir = False
        lss.append(Lockspace(name=lname, members=list(members), lvb_length=lvb, nodir=nodir))
    if errs:
        raise ConfigError(path, errs)
    return Config(path=path, name=name, transport=transport, port=port, nodes=nodes,
                  lockspaces=lss, warnings=warns, agent={k: cl[k] for k in _AGENT_KEYS if k in cl})


def lab_problems(cfg: Config) -> list:
    """What keeps a valid config from running in the lab (network rule, QEMU limits)."""
    p = []
    for n in cfg.nodes:
        for a in n.addresses:
            ip = ipaddress.ip_address(a)
            if ip not in LAB_NET or ip == LAB_NET.network_address or ip == LAB_NET.broadcast_address:
                p.append("node %d: address %s is outside the lab network %s (the lab only creates "
                         "addresses there, inside its own network namespace)" % (n.id, a, LAB_NET))
        if n.kind == "kernel" and len(n.addresses) != 1:
            p.append("node %d: a lab VM has one NIC; give exactly one address" % n.id)
        if n.kind == "kernel" and n.id > 255:
            p.append("node %d: lab kernel nodes need ids 1..255 (the id is part of the VM's MAC)" % n.id)
    if cfg.port != DEFAULT_PORT:
        # configfs tcp_port exists, but every node must agree; keep the lab simple and honest.
        pass
    if not cfg.kernel_nodes:
        p.append("no kernel nodes: the lab needs at least one VM")
    return p


def load_for_lab(path: str, kernel=None, transport=None) -> Config:
    cfg = load(path)
    problems = lab_problems(cfg)
    if problems:
        raise ConfigError(path, problems)
    if kernel or transport:
        cfg = cfg.with_overrides(kernel=kernel, transport=transport)
    return cfg


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(cfg: Config) -> str:
    """The effective config (after --kernel/--transport overrides) as TOML, the file
    a dlm-peer node of the run is given."""
    out = ["# generated by Interop/run from %s" % cfg.path, "[cluster]",
           "name = %s" % _toml_value(cfg.name), "transport = %s" % _toml_value(cfg.transport),
           "port = %d" % cfg.port]
    out += ["%s = %s" % (k, _toml_value(v)) for k, v in cfg.agent.items()]
    for n in cfg.nodes:
        out += ["", "[[node]]", "id = %d" % n.id, "addresses = %s" % _toml_value(n.addresses),
                "kind = %s" % _toml_value(n.kind)]
        if n.kind == "kernel":
            out.append("kernel = %s" % _toml_value(n.kernel))
        out.append("weight = %d" % n.weight)
        if n.protocol:
            out.append("protocol = %s" % _toml_value(n.protocol))
    for ls in cfg.lockspaces:
        out += ["", "[[lockspace]]", "name = %s" % _toml_value(ls.name),
                "members = %s" % _toml_value(ls.members), "lvb_length = %d" % ls.lvb_length]
        if ls.nodir:
            out.append("nodir = true")
    return "\n".join(out) + "\n"
