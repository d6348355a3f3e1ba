"""VM images: per kernel an uncompressed ELF vmlinux (QEMU boots it directly through PVH,
which skips the in-guest decompressor: ~2 s faster per boot under TCG) and an initramfs
with busybox, the lock client, the VM init and the decompressed modules.

Built once and cached under <cache>/images/<series>-<hash>/, where the hash covers every
input (kernel package, busybox, dlmlc.c, init.sh, module list, this builder's format),
so a change to any of them rebuilds.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time

from . import kernels, paths
from .util import LabError, log

FORMAT = 3     # bump when the image layout changes
# Modules the VMs load (their dependencies are added from `modinfo -F depends`):
# networking (virtio), the DLM, SCTP, and sock_diag for the socket killer.
WANT_MODULES = ["virtio_pci", "virtio_net", "crc32c_generic", "configfs", "dlm",
                "libcrc32c", "sctp", "inet_diag", "tcp_diag"]
BUSYBOX = "/bin/busybox"
CC_FLAGS = ["-O2", "-static", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def _sha(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def _file_sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _need(prog, pkg):
    if not shutil.which(prog):
        raise LabError("%s not found: run Interop/run --setup (or apt-get install %s)" % (prog, pkg))


# ------------------------------------------------------------------ lock client
def build_client():
    """Static dlmlc, cached by the hash of its source and the compiler."""
    _need("gcc", "gcc libc6-dev linux-libc-dev")
    src = os.path.join(paths.VM_DIR, "dlmlc.c")
    cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    key = _sha(_file_sha(src), cc, CC_FLAGS)[:16]
    d = os.path.join(paths.cache_dir(), "tools")
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, "dlmlc-%s" % key)
    if os.path.exists(out):
        return out
    log("building the lock client (dlmlc, static)")
    r = subprocess.run(["gcc"] + CC_FLAGS + ["-o", out + ".tmp", src], capture_output=True, text=True)
    if r.returncode:
        raise LabError("gcc dlmlc.c failed:\n%s" % r.stderr)
    os.replace(out + ".tmp", out)
    _prune(d, "dlmlc-", keep=os.path.basename(out))
    return out


def _prune(d, prefix, keep, same=lambda f: True):
    """Drop superseded cache entries (a running VM has its files loaded already)."""
    for f in os.listdir(d):
        if f.startswith(prefix) and f != keep and not f.endswith(".tmp") and same(f):
            p = os.path.join(d, f)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)


# ------------------------------------------------------------------ dlm-peer agent
AGENT_HINT = "build it with scripts/build-static (swift build -c release --static-swift-stdlib)"


def agent_binary():
    """The dlm-peer binary the agent images carry: $DLM_PEER_AGENT, else .build/static/dlm-peer
    (scripts/build-static). None when there is none; LabError when it cannot run in a VM."""
    p = os.environ.get("DLM_PEER_AGENT") or os.path.join(paths.REPO, ".build", "static", "dlm-peer")
    if not os.path.exists(p):
        return None
    if open(p, "rb").read(4) != b"\x7fELF":
        raise LabError("%s is not an ELF executable" % p)
    r = subprocess.run(["ldd", p], capture_output=True, text=True)
    if "libswiftCore" in r.stdout or "libFoundation" in r.stdout:
        raise LabError("%s links the Swift runtime dynamically; the VMs have none: %s" % (p, AGENT_HINT))
    return p


def agent_files(binary):
    """[(path in the image, bytes)]: the binary and the shared libraries `ldd` says it needs
    (glibc and friends; none for a fully static one), each at the path the loader looks for."""
    data = open(binary, "rb").read()
    if shutil.which("strip"):
        with tempfile.TemporaryDirectory() as td:
            out = os.path.join(td, "dlm-peer")
            if subprocess.run(["strip", "-o", out, binary], capture_output=True).returncode == 0:
                data = open(out, "rb").read()
    files = [("bin/dlm-peer", data)]
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if "not a dynamic executable" in (r.stdout + r.stderr) or "statically linked" in r.stdout:
        return files
    for line in r.stdout.splitlines():
        line = line.strip()
        m = re.match(r"\S+ => (/\S+) \(", line) or re.match(r"(/\S+) \(", line)
        if not m:
            if "not found" in line:
                raise LabError("%s: a library is missing: %s" % (binary, line))
            continue   # linux-vdso
        lib = m.group(1)
        files.append((lib.lstrip("/"), open(os.path.realpath(lib), "rb").read()))
    return files


# ------------------------------------------------------------------ kernel
def extract_vmlinux(vmlinuz, out):
    """The ELF kernel inside a bzImage (XZ- or ZSTD-compressed payload)."""
    data = open(vmlinuz, "rb").read()
    elf = None
    pos = data.find(b"\xfd7zXZ\x00")
    while pos >= 0 and elf is None:
        try:
            cand = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[pos:])
            if cand[:4] == b"\x7fELF":
                elf = cand
        except lzma.LZMAError:
            pass
        pos = data.find(b"\xfd7zXZ\x00", pos + 1)
    pos = data.find(b"\x28\xb5\x2f\xfd")
    while elf is None and pos >= 0:
        _need("zstd", "zstd")
        r = subprocess.run(["zstd", "-dc", "--no-progress"], input=data[pos:], capture_output=True)
        if r.stdout[:4] == b"\x7fELF" and len(r.stdout) > 1 << 20:
            elf = r.stdout
        pos = data.find(b"\x28\xb5\x2f\xfd", pos + 1)
    if elf is None:
        raise LabError("%s: no XZ or ZSTD compressed ELF kernel inside" % vmlinuz)
    with open(out + ".tmp", "wb") as f:
        f.write(elf)
    os.replace(out + ".tmp", out)


# ------------------------------------------------------------------ modules
def module_index(moddir):
    """module name (with '_') -> path of its .ko / .ko.xz / .ko.zst / .ko.gz"""
    idx = {}
    for dp, _dn, fn in os.walk(os.path.join(moddir, "kernel")):
        for f in fn:
            for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
                if f.endswith(ext):
                    idx[f[: -len(ext)].replace("-", "_")] = os.path.join(dp, f)
    return idx


def builtin_modules(moddir):
    out = set()
    p = os.path.join(moddir, "modules.builtin")
    if os.path.exists(p):
        for line in open(p):
            out.add(os.path.basename(line.strip()).split(".ko")[0].replace("-", "_"))
    return out


def read_module(path):
    data = open(path, "rb").read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        import gzip
        return gzip.decompress(data)
    if path.endswith(".zst"):
        _need("zstd", "zstd")
        r = subprocess.run(["zstd", "-dc", "--no-progress"], input=data, capture_output=True)
        if r.returncode:
            raise LabError("zstd -d %s failed" % path)
        return r.stdout
    return data


def module_depends(ko_bytes, tmpdir):
    """`modinfo -F depends` of a (decompressed) module."""
    _need("modinfo", "kmod")
    p = os.path.join(tmpdir, "m.ko")
    with open(p, "wb") as f:
        f.write(ko_bytes)
    r = subprocess.run(["modinfo", "-F", "depends", p], capture_output=True, text=True)
    if r.returncode:
        raise LabError("modinfo failed: %s" % r.stderr.strip())
    return [d.replace("-", "_") for d in r.stdout.strip().split(",") if d]


def module_closure(moddir, want, tmpdir):
    """[(name, decompressed bytes)] in load order (dependencies first)."""
    idx, builtin = module_index(moddir), builtin_modules(moddir)
    order, seen, missing = [], set(), []

    def visit(m, chain):
        m = m.replace("-", "_")
        if m in seen:
            return
        seen.add(m)
        if m not in idx:
            if m not in builtin:
                missing.append("%s (needed by %s)" % (m, " <- ".join(chain) or "the lab"))
            return
        data = read_module(idx[m])
        for d in module_depends(data, tmpdir):
            visit(d, [m] + chain)
        order.append((m, data))

    for m in want:
        visit(m, [])
    if missing:
        raise LabError("modules missing from the kernel package %s: %s" % (moddir, ", ".join(missing)))
    return order


# ------------------------------------------------------------------ cpio (newc)
def _cpio_entry(name, mode, data=b"", ino=[1000]):
    ino[0] += 1
    name_b = name.encode() + b"\0"
    hdr = "070701" + "".join("%08X" % v for v in (
        ino[0], mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0))
    out = hdr.encode() + name_b
    out += b"\0" * ((4 - len(out) % 4) % 4)
    out += data
    out += b"\0" * ((4 - len(data) % 4) % 4)
    return out


def write_cpio(entries, out):
    """entries: [(path, kind, payload)] kind in dir|file|exe|symlink; newc, uncompressed
    (the kernel unpacks it as is: no decompressor to run under TCG)."""
    with open(out + ".tmp", "wb") as f:
        for path, kind, payload in entries:
            if kind == "dir":
                f.write(_cpio_entry(path, stat.S_IFDIR | 0o755))
            elif kind == "file":
                f.write(_cpio_entry(path, stat.S_IFREG | 0o644, payload))
            elif kind == "exe":
                f.write(_cpio_entry(path, stat.S_IFREG | 0o755, payload))
            elif kind == "symlink":
                f.write(_cpio_entry(path, stat.S_IFLNK | 0o777, payload.encode()))
        f.write(_cpio_entry("TRAILER!!!", 0))
    os.replace(out + ".tmp", out)


# ------------------------------------------------------------------ image
class Image:
    def __init__(self, d, meta):
        self.dir, self.meta = d, meta
        self.vmlinux = os.path.join(d, "vmlinux")
        self.initramfs = os.path.join(d, "initramfs.cpio")
        self.series = meta["series"]
        self.release = meta["release"]


def _busybox():
    if not os.path.exists(BUSYBOX):
        raise LabError("%s missing: run Interop/run --setup (apt-get install busybox-static)" % BUSYBOX)
    head = open(BUSYBOX, "rb").read(64)
    r = subprocess.run(["ldd", BUSYBOX], capture_output=True, text=True)
    if head[:4] != b"\x7fELF" or "not a dynamic executable" not in (r.stdout + r.stderr):
        raise LabError("%s is not statically linked: install busybox-static" % BUSYBOX)
    return BUSYBOX


def build_image(series, refresh=False, agent=None):
    """The cached image for a kernel series, built if any input changed. `agent`: the path
    of a dlm-peer binary to include (with its shared libraries) for the agent scenarios."""
    k = kernels.get_kernel(series, refresh)
    client = build_client()
    bb = _busybox()
    init = os.path.join(paths.VM_DIR, "init.sh")
    key = _sha(FORMAT, k.package, k.version, k.meta.get("sha256"), _file_sha(bb), _file_sha(client),
               _file_sha(init), WANT_MODULES, _file_sha(agent) if agent else "")[:16]
    flavour = "%s-agent" % series if agent else series
    d = os.path.join(paths.cache_dir(), "images", "%s-%s" % (flavour, key))
    meta_f = os.path.join(d, "meta.json")
    if os.path.exists(meta_f):
        return Image(d, json.load(open(meta_f)))
    t0 = time.time()
    log("building the %s image (%s %s)" % (series, k.package, k.version))
    if os.path.exists(d):
        shutil.rmtree(d)
    tmp = d + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    extract_vmlinux(k.vmlinuz, os.path.join(tmp, "vmlinux"))
    with tempfile.TemporaryDirectory() as td:
        mods = module_closure(k.moddir, WANT_MODULES, td)
    rel = k.release
    entries = [(p, "dir", None) for p in (
        "bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root", "lib", "lib/modules",
        "lib/modules/" + rel)]
    entries += [("bin/busybox", "exe", open(bb, "rb").read()), ("bin/sh", "symlink", "busybox"),
                ("bin/dlmlc", "exe", open(client, "rb").read()), ("init", "exe", open(init, "rb").read())]
    if agent:
        dirs = set()
        for path, data in agent_files(agent):
            parent = os.path.dirname(path)
            while parent and parent not in dirs and parent not in ("bin", "lib"):
                dirs.add(parent)
                parent = os.path.dirname(parent)
            entries.append((path, "exe", data))
        # parents first
        at = next(i for i, e in enumerate(entries) if e[0] == "bin/busybox")
        entries[at:at] = [(p, "dir", None) for p in sorted(dirs, key=lambda x: x.count("/"))]
    order = []
    for name, data in mods:
        p = "lib/modules/%s/%s.ko" % (rel, name)
        entries.append((p, "file", data))
        order.append("/" + p)
    entries.append(("etc/modules.order", "file", ("\n".join(order) + "\n").encode()))
    write_cpio(entries, os.path.join(tmp, "initramfs.cpio"))
    meta = dict(series=series, release=rel, package=k.package, version=k.version,
                modules=[m for m, _ in mods], key=key, built=time.time(),
                protocol=kernels.PROTOCOL[series], agent=bool(agent))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, d)
    _prune(os.path.dirname(d), "%s-" % flavour, keep=os.path.basename(d), same=lambda f: f.count("-") == flavour.count("-") + 1)
    log("  image %s: %s; modules %s (%.1f s)" % (series, d, " ".join(meta["modules"]), time.time() - t0))
    return Image(d, meta)
