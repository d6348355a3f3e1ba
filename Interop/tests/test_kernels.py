import hashlib

import pytest

from lab import kernels
from lab.kernels import compare_versions, parse_packages, pick_kernel


INDEX = """Package: linux-image-6.1.0-47-amd64-unsigned
Version: 6.1.170-1
Filename: pool/main/l/linux/linux-image-6.1.0-47-amd64-unsigned_6.1.170-1_amd64.deb
SHA256: aa
Size: 10

Package: linux-image-6.1.0-50-amd64
Source: linux-signed-amd64 (6.1.176+1)
Version: 6.1.176-1
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-50-amd64_6.1.176-1_amd64.deb
SHA256: bb
Size: 20
Description: Linux 6.1 for 64-bit PCs (signed)
 The Linux kernel 6.1 and modules for use on PCs with AMD64, Intel 64 or
 VIA Nano processors.

Package: linux-image-6.1.0-50-amd64-unsigned
Version: 6.1.176-1
Filename: pool/main/l/linux/linux-image-6.1.0-50-amd64-unsigned_6.1.176-1_amd64.deb
SHA256: cc
Size: 30

Package: linux-image-6.1.0-50-cloud-amd64
Version: 6.1.176-1
Filename: x
SHA256: dd
Size: 1

Package: linux-image-6.1.0-50-rt-amd64
Version: 6.1.176-1
Filename: x
SHA256: ee
Size: 1

Package: linux-image-6.1.0-50-amd64-dbg
Version: 6.1.176-1
Filename: x
SHA256: ff
Size: 1

Package: linux-image-6.12.107+deb13-amd64
Version: 6.12.107-1
Filename: pool/main/l/linux-signed-amd64/linux-image-6.12.107+deb13-amd64_6.12.107-1_amd64.deb
SHA256: 11
Size: 1

Package: linux-image-6.12.94+deb13-amd64
Version: 6.12.94-1
Filename: y
SHA256: 22
Size: 1

Package: linux-image-6.12.94+deb13-cloud-amd64
Version: 6.12.200-1
Filename: y
SHA256: 33
Size: 1

Package: linux-image-5.10.0-32-amd64-unsigned
Version: 5.10.223-1
Filename: z
SHA256: 44
Size: 1

Package: linux-image-amd64
Version: 6.1.176-1
Filename: meta
SHA256: 55
Size: 1
"""


def test_parse_packages():
    pk = parse_packages(INDEX)
    assert len(pk) == 11
    p = pk[1]
    assert p["Package"] == "linux-image-6.1.0-50-amd64" and p["Size"] == "20"
    assert p["Description"].startswith("Linux 6.1 for 64-bit PCs (signed)\nThe Linux kernel")


def test_pick_newest_signed_generic():
    pk = parse_packages(INDEX)
    assert pick_kernel(pk, "6.1")["Package"] == "linux-image-6.1.0-50-amd64"
    # 6.12.107 beats 6.12.94 (version order, not string order); cloud is never picked
    assert pick_kernel(pk, "6.12")["Package"] == "linux-image-6.12.107+deb13-amd64"
    # only an -unsigned one: take it
    assert pick_kernel(pk, "5.10")["Package"] == "linux-image-5.10.0-32-amd64-unsigned"
    assert pick_kernel(pk, "4.19") is None


def test_candidates_exclude_flavours():
    names = {p["Package"] for p in kernels.kernel_candidates(parse_packages(INDEX), "6.1")}
    assert names == {"linux-image-6.1.0-47-amd64-unsigned", "linux-image-6.1.0-50-amd64",
                     "linux-image-6.1.0-50-amd64-unsigned"}


@pytest.mark.parametrize("a, b, want", [
    ("6.1.176-1", "6.1.170-1", 1),
    ("6.12.107-1", "6.12.94-1", 1),
    ("1.0~rc1-1", "1.0-1", -1),
    ("1:0.9-1", "2.0-1", 1),
    ("1.0-1", "1.0-1", 0),
    ("1.0a-1", "1.0-1", 1),
    ("1.0+deb12u1", "1.0", 1),
    ("2.30-1", "2.4-1", 1),
])
def test_compare_versions(a, b, want):
    c = compare_versions(a, b)
    assert (c > 0) - (c < 0) == want
    c2 = compare_versions(b, a)
    assert (c2 > 0) - (c2 < 0) == -want


def test_release_sha256():
    h = hashlib.sha256(b"x").hexdigest()
    text = ("Origin: Debian\nMD5Sum:\n 0123 10 main/binary-amd64/Packages.xz\nSHA256:\n"
            " %s 8790396 main/binary-amd64/Packages.xz\n %s 5 main/binary-amd64/Packages\n" % (h, "0" * 64))
    assert kernels.release_sha256(text, "main/binary-amd64/Packages.xz") == (h, 8790396)
    assert kernels.release_sha256(text, "main/binary-i386/Packages.xz") == (None, None)


def test_sources_parsing_and_mirror():
    deb822 = """Types: deb
# comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""
    e = kernels.parse_deb822_sources(deb822)
    assert e[0] == ("http://mirror.example/debian", ["bookworm", "bookworm-updates"], ["main"])
    assert kernels.pick_mirror(list(reversed(e))) == "http://mirror.example/debian"
    one = "deb [arch=amd64 signed-by=/x.gpg] http://m.example/debian/ bookworm main contrib\n# deb http://no\n"
    e1 = kernels.parse_sources_list(one)
    assert e1 == [("http://m.example/debian/", ["bookworm"], ["main", "contrib"])]
    assert kernels.pick_mirror(e1) == "http://m.example/debian"
    assert kernels.pick_mirror([("http://m.example/debian-security", ["bookworm-security"], ["main"])]) is None


def test_mirror_env_override(monkeypatch):
    monkeypatch.setenv("DLM_LAB_MIRROR", "http://local.example/debian/")
    assert kernels.mirror_url() == "http://local.example/debian"
