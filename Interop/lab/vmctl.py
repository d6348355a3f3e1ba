"""The control channel of a lab VM: ttyS1 wired to a unix socket by QEMU.

The VM's init (Interop/vm/init.sh) reads "<id> <command>" lines, runs each with
`sh -c`, and answers with its output followed by "\\n@@END <id> <rc>". Ids make a
late answer to a timed-out command impossible to mistake for the next one's.
"""
from __future__ import annotations

import re
import socket
import time


class ControlError(Exception):
    pass


class Control:
    def __init__(self, path, name, console_tail=None):
        self.path, self.name = path, name
        self.sock = None
        self.buf = b""
        self.seq = 0
        self.console_tail = console_tail or (lambda: "")

    def connect(self, deadline):
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.path)
                self.sock = s
                return
            except OSError:
                s.close()
                if time.time() > deadline:
                    raise ControlError("%s: control socket %s never appeared" % (self.name, self.path))
                time.sleep(0.05)

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def _read_until(self, pat, deadline):
        while True:
            m = pat.search(self.buf)
            if m:
                out = self.buf[: m.start()]
                self.buf = self.buf[m.end():]
                return out, m
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("%s: no answer; partial output %r" % (self.name, self.buf[-300:]))
            self.sock.settimeout(min(left, 1.0))
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not d:
                raise ControlError("%s: control channel closed (VM died?)\n%s" % (self.name, self.console_tail()))
            self.buf += d

    def wait_ready(self, timeout=120):
        """Until the VM's control loop answers."""
        deadline = time.time() + timeout
        if not self.sock:
            self.connect(deadline)
        while True:
            try:
                out, rc = self.run("echo @@PONG", timeout=min(1.0, max(0.1, deadline - time.time())))
                if "@@PONG" in out:
                    return
            except TimeoutError:
                pass
            if time.time() > deadline:
                raise ControlError("%s: control shell not ready after %ds\n%s" % (self.name, timeout, self.console_tail()))

    def run(self, cmd, timeout=60):
        """Run a shell command in the VM; returns (output, rc)."""
        if "\n" in cmd:
            raise ValueError("one line per command")
        if not self.sock:
            self.connect(time.time() + timeout)
        self.seq += 1
        sid = self.seq
        self.sock.sendall(("%d %s\n" % (sid, cmd)).encode())
        pat = re.compile(rb"\n@@END %d (-?\d+)\r?\n" % sid)
        out, m = self._read_until(pat, time.time() + timeout)
        # drop answers to earlier (timed-out) commands
        text = out.decode(errors="replace")
        text = re.sub(r"(?s)^.*\n@@END \d+ -?\d+\r?\n", "", text)
        return text, int(m.group(1))
