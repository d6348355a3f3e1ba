"""Debian kernels for the lab VMs: find, verify, download and unpack (never install).

Chain of trust: the suite's InRelease is checked with gpgv against the Debian archive
keyring; it gives the SHA256 of main/binary-amd64/Packages.xz; that index gives the
SHA256 of the kernel .deb. The mirror's base URL is read from the machine's own apt
sources at run time (or $DLM_LAB_MIRROR); no registry host name is written anywhere.

Cache layout (under lab.paths.cache_dir()):
    index/<suite>/InRelease, Packages.xz, fetched      (refreshed after INDEX_TTL)
    kernels/<package>_<version>/pkg.deb, x/ (dpkg-deb -x tree), meta.json
"""
from __future__ import annotations

import glob
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import time
import urllib.request

from . import paths
from .util import LabError, log

SUITES = {"6.1": "bookworm", "6.12": "trixie", "5.10": "bullseye"}
PROTOCOL = {"6.1": "3.2", "6.12": "3.2", "5.10": "3.1"}
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
INDEX_TTL = 7 * 24 * 3600
ARCH = "amd64"


# ------------------------------------------------------------------ apt sources
def parse_sources_list(text):
    """One-line format: returns [(uri, [suites], [components])]."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        parts = line.split()[1:]
        if parts and parts[0].startswith("["):          # [options]
            while parts and not parts[0].endswith("]"):
                parts.pop(0)
            parts.pop(0)
        if len(parts) >= 2:
            out.append((parts[0], [parts[1]], parts[2:]))
    return out


def parse_deb822_sources(text):
    """deb822 .sources: returns [(uri, [suites], [components])] for Types: deb."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
                continue
            m = re.match(r"([A-Za-z0-9-]+):\s*(.*)", line)
            if m:
                key = m.group(1).lower()
                fields[key] = m.group(2).strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append((uri, fields.get("suites", "").split(), fields.get("components", "").split()))
    return out


def pick_mirror(entries):
    """The base URL of the main Debian archive among apt source entries: one that
    carries a plain release suite (not -security/-updates/-backports) with main."""
    for uri, suites, comps in entries:
        if "main" not in comps:
            continue
        if any(re.fullmatch(r"[a-z]+", s) for s in suites) and "security" not in uri:
            return uri.rstrip("/")
    return None


def mirror_url():
    env = os.environ.get("DLM_LAB_MIRROR")
    if env:
        return env.rstrip("/")
    entries = []
    for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        entries += parse_deb822_sources(open(f).read())
    for f in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        if os.path.exists(f):
            entries += parse_sources_list(open(f).read())
    m = pick_mirror(entries)
    if not m:
        raise LabError("no Debian archive found in the apt sources (/etc/apt/sources.list*); "
                       "set DLM_LAB_MIRROR to the archive's base URL")
    return m


# ------------------------------------------------------------------ Debian versions
def _order(c):
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _cmp_part(a, b):
    while a or b:
        na = re.match(r"[^0-9]*", a).group(0)
        nb = re.match(r"[^0-9]*", b).group(0)
        a, b = a[len(na):], b[len(nb):]
        for i in range(max(len(na), len(nb))):
            ca = _order(na[i]) if i < len(na) else 0
            cb = _order(nb[i]) if i < len(nb) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        da = re.match(r"[0-9]*", a).group(0)
        db = re.match(r"[0-9]*", b).group(0)
        a, b = a[len(da):], b[len(db):]
        ia, ib = int(da or 0), int(db or 0)
        if ia != ib:
            return -1 if ia < ib else 1
    return 0


def compare_versions(a, b):
    """dpkg --compare-versions: negative, zero or positive."""
    def split(v):
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        up, _, rev = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), up, rev
    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _cmp_part(ua, ub) or _cmp_part(ra, rb)


# ------------------------------------------------------------------ indices
def parse_packages(text):
    """Packages index -> list of dicts (field names as written)."""
    out = []
    for stanza in text.split("\n\n"):
        d, key = {}, None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                d[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, v = line.partition(":")
                d[key] = v.strip()
        if "Package" in d:
            out.append(d)
    return out


def kernel_candidates(packages, series, arch=ARCH):
    """Generic-flavour kernel image packages of a series ("6.1"): signed
    linux-image-<abi>-amd64 or, where there is no signed one, ...-amd64-unsigned.
    Not cloud (no CONFIG_DLM), rt or dbg."""
    pat = re.compile(r"linux-image-%s[.-][0-9][^ ]*?-%s(-unsigned)?" % (re.escape(series), arch))
    out = []
    for p in packages:
        name = p["Package"]
        if not pat.fullmatch(name):
            continue
        if re.search(r"-(cloud|rt)-", name) or name.endswith("-dbg"):
            continue
        if not p.get("Filename") or not p.get("SHA256"):
            continue
        out.append(p)
    return out


def pick_kernel(packages, series, arch=ARCH):
    """The newest candidate; signed beats -unsigned at the same version."""
    cands = kernel_candidates(packages, series, arch)
    if not cands:
        return None
    best = None
    for p in cands:
        if best is None:
            best = p
            continue
        c = compare_versions(p["Version"], best["Version"])
        if c > 0 or (c == 0 and best["Package"].endswith("-unsigned")
                     and not p["Package"].endswith("-unsigned")):
            best = p
    return best


def release_sha256(inrelease_text, relpath):
    """SHA256 and size of `relpath` from an (In)Release file."""
    sect = False
    for line in inrelease_text.splitlines():
        if re.match(r"^[A-Za-z0-9-]+:", line):
            sect = line.startswith("SHA256:")
            continue
        if sect:
            parts = line.split()
            if len(parts) == 3 and parts[2] == relpath:
                return parts[0], int(parts[1])
    return None, None


# ------------------------------------------------------------------ download
def _fetch(url, dest, sha256=None, size=None, what=None):
    tmp = dest + ".part"
    log("  fetching %s" % (what or os.path.basename(dest)))
    h = hashlib.sha256()
    n = 0
    t0 = time.time()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while True:
                b = r.read(1 << 20)
                if not b:
                    break
                f.write(b)
                h.update(b)
                n += len(b)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise LabError("download of %s failed: %s" % (url, e)) from None
    if size is not None and n != size:
        os.unlink(tmp)
        raise LabError("%s: size %d, expected %d" % (url, n, size))
    if sha256 and h.hexdigest() != sha256:
        os.unlink(tmp)
        raise LabError("%s: SHA256 mismatch (got %s, expected %s)" % (url, h.hexdigest(), sha256))
    os.replace(tmp, dest)
    log("  fetched %s: %.1f MB in %.1f s" % (what or os.path.basename(dest), n / 1e6, time.time() - t0))


def suite_index(suite, refresh=False):
    """Verified Packages index of a suite (cached); returns (packages, mirror)."""
    d = os.path.join(paths.cache_dir(), "index", suite)
    os.makedirs(d, exist_ok=True)
    stamp = os.path.join(d, "fetched")
    pkgs = os.path.join(d, "Packages.xz")
    fresh = os.path.exists(stamp) and time.time() - os.path.getmtime(stamp) < INDEX_TTL
    mirror = None
    if refresh or not fresh:
        try:
            mirror = mirror_url()
            _refresh_index(mirror, suite, d)
        except LabError as e:
            if os.path.exists(pkgs) and os.path.exists(stamp):
                log("  warning: could not refresh the %s index (%s); using the cached one" % (suite, e))
            else:
                raise
    text = lzma.decompress(open(pkgs, "rb").read()).decode("utf-8", "replace")
    return parse_packages(text)


def _refresh_index(mirror, suite, d):
    if not os.path.exists(KEYRING) or not shutil.which("gpgv"):
        raise LabError("cannot verify the %s index: need gpgv and %s (apt-get install gpgv "
                       "debian-archive-keyring)" % (suite, KEYRING))
    ir = os.path.join(d, "InRelease")
    _fetch("%s/dists/%s/InRelease" % (mirror, suite), ir, what="%s InRelease" % suite)
    r = subprocess.run(["gpgv", "--keyring", KEYRING, ir], capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError("%s InRelease: bad signature:\n%s" % (suite, r.stderr))
    rel = "main/binary-%s/Packages.xz" % ARCH
    sha, size = release_sha256(open(ir, encoding="utf-8", errors="replace").read(), rel)
    if not sha:
        raise LabError("%s InRelease lists no %s" % (suite, rel))
    pk = os.path.join(d, "Packages.xz")
    if not (os.path.exists(pk) and _sha256_file(pk) == sha):
        _fetch("%s/dists/%s/%s" % (mirror, suite, rel), pk, sha, size, what="%s %s" % (suite, rel))
    with open(os.path.join(d, "fetched"), "w") as f:
        f.write("%s\n" % time.time())


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _cached_pick(suite, series, refresh):
    """The choice made from the current index, while that index is fresh (parsing a
    Packages index takes seconds)."""
    d = os.path.join(paths.cache_dir(), "index", suite)
    pf, stamp = os.path.join(d, "pick-%s.json" % series), os.path.join(d, "fetched")
    if refresh or not (os.path.exists(pf) and os.path.exists(stamp)):
        return None
    if time.time() - os.path.getmtime(stamp) >= INDEX_TTL or os.path.getmtime(pf) < os.path.getmtime(stamp):
        return None
    try:
        return json.load(open(pf))
    except ValueError:
        return None


class Kernel:
    """An unpacked kernel package: root (the dpkg-deb -x tree), release, vmlinuz, modules dir."""

    def __init__(self, series, meta, root):
        self.series, self.meta, self.root = series, meta, root
        self.package, self.version = meta["package"], meta["version"]
        mods = sorted(glob.glob(os.path.join(root, "lib/modules/*")) +
                      glob.glob(os.path.join(root, "usr/lib/modules/*")))
        if not mods:
            raise LabError("%s: no lib/modules in the package" % self.package)
        self.moddir = mods[0]
        self.release = os.path.basename(self.moddir)
        vz = glob.glob(os.path.join(root, "boot/vmlinuz-*"))
        if not vz:
            raise LabError("%s: no /boot/vmlinuz in the package" % self.package)
        self.vmlinuz = vz[0]

    def __repr__(self):
        return "Kernel(%s %s %s)" % (self.series, self.package, self.version)


def get_kernel(series, refresh=False):
    """Find, verify, download and unpack the newest kernel of `series` (cached)."""
    if series not in SUITES:
        raise LabError("unknown kernel %r (known: %s)" % (series, ", ".join(SUITES)))
    suite = SUITES[series]
    base = os.path.join(paths.cache_dir(), "kernels")
    p = _cached_pick(suite, series, refresh)
    if p is None:
        pkgs = suite_index(suite, refresh)
        p = pick_kernel(pkgs, series)
        if not p:
            raise LabError("no linux-image-%s*-%s package in %s" % (series, ARCH, suite))
        pf = os.path.join(paths.cache_dir(), "index", suite, "pick-%s.json" % series)
        with open(pf + ".tmp", "w") as f:
            json.dump({k: p[k] for k in ("Package", "Version", "Filename", "SHA256", "Size")}, f)
        os.replace(pf + ".tmp", pf)
    key = "%s_%s" % (p["Package"], p["Version"])
    d = os.path.join(base, key)
    meta_f = os.path.join(d, "meta.json")
    if os.path.exists(meta_f):
        return Kernel(series, json.load(open(meta_f)), os.path.join(d, "x"))
    log("kernel %s (%s): %s %s" % (series, suite, p["Package"], p["Version"]))
    os.makedirs(d, exist_ok=True)
    deb = os.path.join(d, "pkg.deb")
    if not (os.path.exists(deb) and _sha256_file(deb) == p["SHA256"]):
        _fetch("%s/%s" % (mirror_url(), p["Filename"]), deb, p["SHA256"], int(p["Size"]),
               what=os.path.basename(p["Filename"]))
    x = os.path.join(d, "x")
    if os.path.exists(x):
        shutil.rmtree(x)
    tmp = x + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    r = subprocess.run(["dpkg-deb", "-x", deb, tmp], capture_output=True, text=True)
    if r.returncode:
        raise LabError("dpkg-deb -x %s failed: %s" % (deb, r.stderr))
    os.replace(tmp, x)
    os.unlink(deb)          # the unpacked tree is what we use; keep the cache lean
    meta = dict(series=series, suite=suite, package=p["Package"], version=p["Version"],
                sha256=p["SHA256"], filename=p["Filename"], fetched=time.time())
    with open(meta_f + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(meta_f + ".tmp", meta_f)
    return Kernel(series, meta, x)
