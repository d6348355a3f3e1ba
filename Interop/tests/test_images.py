import os
import shutil
import subprocess

import pytest

from lab import images


def test_cpio_newc_roundtrip(tmp_path):
    out = str(tmp_path / "i.cpio")
    images.write_cpio([("bin", "dir", None), ("bin/x", "exe", b"hello\n"), ("bin/y", "symlink", "x"),
                       ("etc", "dir", None), ("etc/f", "file", b"abc")], out)
    data = open(out, "rb").read()
    assert data.startswith(b"070701")
    assert b"TRAILER!!!" in data
    if shutil.which("cpio"):
        r = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True)
        assert r.stdout.decode().split() == ["bin", "bin/x", "bin/y", "etc", "etc/f"]
        d = tmp_path / "x"
        d.mkdir()
        subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=d, check=True)
        assert (d / "bin" / "x").read_bytes() == b"hello\n"
        assert os.readlink(d / "bin" / "y") == "x"
        assert os.access(d / "bin" / "x", os.X_OK)


@pytest.mark.skipif(not shutil.which("gcc"), reason="gcc not installed")
def test_lock_client_gid_matches_python(tmp_path, monkeypatch):
    monkeypatch.setenv("DLM_LAB_CACHE", str(tmp_path))
    exe = images.build_client()
    from lab.config import global_id
    for name in ("test", "alpha", "a-much-longer-lockspace-name"):
        out = subprocess.run([exe, "gid", name], capture_output=True, text=True, check=True).stdout.strip()
        assert int(out, 16) == global_id(name)
    # cached by content: a second call does not rebuild
    assert images.build_client() == exe
