"""A lab cluster: QEMU VMs running Debian kernels with the kernel DLM, and (later)
dlm-peer processes, on a bridge inside a network namespace that the harness creates
and deletes. Traffic never leaves that namespace: 10.77.0.0/24 exists only there.

    netns dlmlab-<pid>:  br0 (no address unless a peer node needs one)
                         tap<id> per kernel node  <->  QEMU virtio-net (vnet_hdr=off)
                         peer nodes: their addresses on br0, `dlm-peer run` inside the netns
                         tcpdump -i br0 (promiscuous: sees every frame the bridge forwards)

Every process started here is recorded (pid + expected command line) in a state file
under <cache>/run/, so a harness that was killed outright gets its leftovers cleaned
by the next run (see reap_stale()).
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import signal
import subprocess
import time

from . import config as cfgmod
from . import paths
from .images import build_image
from .util import LabError, Skip, log
from .vmctl import Control

QEMU = "qemu-system-x86_64"
VM_MEM_MB = 128
AGENT_VM_MEM_MB = 512          # the image carries the dlm-peer binary (static Swift runtime)
AGENT_CONFIG = "/etc/dlm-peer.toml"
AGENT_LOG = "/tmp/agent.log"
TB_MB = 32


# ------------------------------------------------------------------ process bookkeeping
def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_checked(pid, marker, sig=signal.SIGTERM, wait=5.0):
    """Kill `pid` only if its command line still contains `marker`."""
    cl = _cmdline(pid)
    if cl is None or marker not in cl:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    end = time.time() + wait
    while time.time() < end:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            if not _alive(pid):
                return True
        time.sleep(0.02)
    cl = _cmdline(pid)
    if cl is not None and marker in cl:
        os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return True


class State:
    """What this harness run owns: netns names and (pid, marker) of every process."""

    def __init__(self):
        d = os.path.join(paths.cache_dir(), "run")
        os.makedirs(d, exist_ok=True)
        self.path = os.path.join(d, "%d.json" % os.getpid())
        self.netns, self.procs = [], []

    def save(self):
        with open(self.path + ".tmp", "w") as f:
            json.dump(dict(owner=os.getpid(), netns=self.netns, procs=self.procs), f)
        os.replace(self.path + ".tmp", self.path)

    def add_proc(self, pid, marker):
        self.procs.append([pid, marker])
        self.save()

    def drop_proc(self, pid):
        self.procs = [p for p in self.procs if p[0] != pid]
        self.save()

    def add_netns(self, name):
        self.netns.append(name)
        self.save()

    def drop_netns(self, name):
        self.netns = [n for n in self.netns if n != name]
        self.save()

    def remove(self):
        if not self.procs and not self.netns and os.path.exists(self.path):
            os.unlink(self.path)


def reap_stale():
    """Clean up after earlier harness runs that died without tearing down."""
    d = os.path.join(paths.cache_dir(), "run")
    if not os.path.isdir(d):
        return
    for f in os.listdir(d):
        if not f.endswith(".json"):
            continue
        p = os.path.join(d, f)
        try:
            st = json.load(open(p))
        except (OSError, ValueError):
            os.unlink(p)
            continue
        owner = st.get("owner")
        if owner == os.getpid() or (owner and _alive(owner) and "Interop" in (_cmdline(owner) or "")):
            continue
        for pid, marker in st.get("procs", []):
            if kill_checked(pid, marker, wait=2):
                log("reaped a leftover process %d (%s) of dead harness %s" % (pid, marker, owner))
        for ns in st.get("netns", []):
            if subprocess.run(["ip", "netns", "del", ns], capture_output=True).returncode == 0:
                log("deleted leftover network namespace %s of dead harness %s" % (ns, owner))
        os.unlink(p)


# ------------------------------------------------------------------ preflight
def preflight(need_capture=True):
    """Why the lab cannot run here, or None."""
    import shutil
    if os.geteuid() != 0:
        return "the interop lab needs root (network namespaces, bridge, tap devices)"
    for prog, pkg in [(QEMU, "qemu-system-x86"), ("ip", "iproute2"), ("gcc", "gcc")]:
        if not shutil.which(prog):
            return "%s not found (apt package %s): run Interop/run --setup" % (prog, pkg)
    if need_capture and not shutil.which("tcpdump"):
        return "tcpdump not found: run Interop/run --setup"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: no tap devices possible"
    name = "dlmlab-probe-%d" % os.getpid()
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode:
        return "cannot create a network namespace (ip netns add: %s)" % r.stderr.strip()
    r2 = subprocess.run(["ip", "netns", "exec", name, "ip", "link", "add", "br0", "type", "bridge"],
                        capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    if r2.returncode:
        return "cannot create a bridge inside a network namespace: %s" % r2.stderr.strip()
    return None


# ------------------------------------------------------------------ nodes
class KernelNode:
    def __init__(self, cluster, node, image):
        self.c, self.node, self.image = cluster, node, image
        self.id = node.id
        self.name = "node%d" % node.id
        self.ip = node.address
        d = cluster.rundir
        self.console = os.path.join(d, "%s.console" % self.name)
        self.ctl_path = os.path.join(d, "%s.ctl" % self.name)
        self.qemu_log = os.path.join(d, "%s.qemu.log" % self.name)
        self.marker = "-name %s-%s" % (cluster.tag, self.name)
        self.proc = None
        self.ctl = Control(self.ctl_path, self.name, self.console_tail)
        self.t_start = None
        self.boot_s = None

    @property
    def kernel(self):
        return self.node.kernel

    def console_text(self):
        try:
            return open(self.console, "rb").read().decode(errors="replace")
        except OSError:
            return ""

    def console_tail(self, n=25):
        return "--- %s console (last lines) ---\n%s" % (
            self.name, "\n".join(self.console_text().splitlines()[-n:]))

    def start(self):
        tap = "tap%d" % self.id
        mac = "52:54:00:77:00:%02x" % self.id
        append = "console=ttyS0 quiet panic=-1 lab_node=%d lab_ip=%s/%d" % (
            self.id, self.ip, cfgmod.LAB_NET.prefixlen)
        cmd = ["ip", "netns", "exec", self.c.netns, QEMU,
               "-name", "%s-%s" % (self.c.tag, self.name),
               "-accel", "tcg,tb-size=%d" % TB_MB,
               "-m", str(self.c.vm_mem_mb or (AGENT_VM_MEM_MB if self.image.meta.get("agent") else VM_MEM_MB)), "-smp", "1",
               "-display", "none", "-no-reboot", "-nodefaults", "-no-user-config",
               "-kernel", self.image.vmlinux, "-initrd", self.image.initramfs, "-append", append,
               "-serial", "file:%s" % self.console,
               "-serial", "unix:%s,server=on,wait=off" % self.ctl_path,
               "-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no,vnet_hdr=off" % tap,
               "-device", "virtio-net-pci,netdev=n0,mac=%s" % mac]
        self.t_start = time.time()
        # `ip netns exec` execs QEMU: the pid we get is QEMU's.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.qemu_log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.c.state.add_proc(self.proc.pid, self.marker)

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while not os.path.exists(self.ctl_path):
            if self.proc.poll() is not None:
                raise LabError("%s: QEMU exited with %s:\n%s" % (
                    self.name, self.proc.returncode, open(self.qemu_log).read()[-2000:]))
            if time.time() > deadline:
                raise LabError("%s: QEMU did not create its control socket" % self.name)
            time.sleep(0.02)
        while "@@MARK ctl-ready" not in self.console_text():
            if self.proc.poll() is not None:
                raise LabError("%s: QEMU exited with %s\n%s" % (self.name, self.proc.returncode, self.console_tail()))
            if "Kernel panic" in self.console_text():
                raise LabError("%s: kernel panic during boot\n%s" % (self.name, self.console_tail()))
            if time.time() > deadline:
                raise LabError("%s: not booted after %d s\n%s" % (self.name, timeout, self.console_tail()))
            time.sleep(0.02)
        self.ctl.wait_ready(max(5, deadline - time.time()))
        self.boot_s = time.time() - self.t_start
        errs = [l for l in self.console_text().splitlines() if "@@ERROR" in l]
        if errs:
            raise LabError("%s: boot problems: %s" % (self.name, "; ".join(errs)))

    def sh(self, cmd, timeout=60, check=True, quiet=False):
        """Run a shell command in the VM; returns its output (raises on rc != 0 if check).
        quiet: the trace gets the output's size, not the output."""
        out, rc = self.ctl.run(cmd, timeout=timeout)
        shown = (" (%d bytes of output)" % len(out)) if quiet else (
            ("\n    " + out.rstrip().replace("\n", "\n    ")) if out.strip() else "")
        self.c.trace("%s$ %s -> %d%s" % (self.name, cmd, rc, shown))
        if check and rc != 0:
            raise StepError("%s: `%s` failed (rc %d):\n%s" % (self.name, cmd, rc, out.rstrip()))
        return out

    def bg(self, cmd, logfile):
        """Start a command in the background in the VM, output to logfile (in the VM)."""
        self.sh("rm -f %s; ( %s ) > %s 2>&1 &" % (logfile, cmd, logfile))

    def waitlog(self, logfile, regex, count=1, timeout=30):
        """The count-th line of a VM file matching regex (POSIX ERE); StepError on timeout."""
        out, rc = self.ctl.run("dlmlc waitlog %s %s %d %d" % (logfile, shlex.quote(regex), count, int(timeout * 1000)),
                               timeout=timeout + 15)
        if rc != 0:
            tail, _ = self.ctl.run("tail -n 15 %s" % logfile, timeout=15)
            raise StepError("%s: %s\n--- %s (tail) ---\n%s" % (self.name, out.strip(), logfile, tail.rstrip()))
        self.c.trace("%s: %s" % (self.name, out.strip()))
        return out.strip()

    def stop(self):
        if self.proc is None:
            return
        self.ctl.close()
        kill_checked(self.proc.pid, self.marker)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.c.state.drop_proc(self.proc.pid)
        self.proc = None


class PeerNode:
    """A dlm-peer process on the lab network: `dlm-peer run --config F --node ID`,
    run inside the netns with the node's addresses on br0. (The hook for the issues
    that add dlm-peer to scenarios: a [[node]] with kind = "peer" is all it takes.)"""

    def __init__(self, cluster, node):
        self.c, self.node, self.id = cluster, node, node.id
        self.name = "peer%d" % node.id
        self.ip = node.address
        self.log = os.path.join(cluster.rundir, "%s.log" % self.name)
        self.proc = None
        self.marker = None
        self.addressed = False
        self.agent_proc = None          # agent mode: `dlm-peer agent` for this node, next to it
        self.agent_marker = None
        self.agent_log = os.path.join(cluster.rundir, "%s.agent.log" % self.name)
        self.admin = os.path.join(cluster.rundir, "%s-agent.sock" % self.name)

    @property
    def inproc_agent(self):
        """`dlm-peer run --agent`: the node's agent runs in its own process (no separate agent)."""
        return "--agent" in self.c.peer_args.get(self.id, [])

    def run_command(self, binary):
        """The `dlm-peer run` command line (inside the netns); with an in-process agent its
        admin socket is the node's (`self.admin`)."""
        extra = list(self.c.peer_args.get(self.id, []))
        if self.inproc_agent and "--admin" not in extra:
            extra += ["--admin", self.admin]
        return ["ip", "netns", "exec", self.c.netns, binary, "run", "--config", self.c.config_file,
                "--node", str(self.id)] + extra

    def start(self):
        binary = find_dlm_peer()
        if not binary:
            raise Skip("dlm-peer binary not built (node %d is a peer)" % self.id)
        if not self.addressed:      # a dlm-peer started again (a new incarnation) keeps its addresses
            for a in self.node.addresses:
                self.c.ns_ip("addr", "add", "%s/%d" % (a, cfgmod.LAB_NET.prefixlen), "dev", "br0")
            self.addressed = True
        self.marker = "--config %s --node %d" % (self.c.config_file, self.id)
        self.proc = subprocess.Popen(self.run_command(binary), stdin=subprocess.DEVNULL, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.c.state.add_proc(self.proc.pid, self.marker)
        if self.c.agent_mode and not self.inproc_agent:
            # its cluster manager: the same agent as on the kernel nodes, driving the node
            # through its control socket (ls-stop / ls-start)
            time.sleep(0.5)
            cmd = ["ip", "netns", "exec", self.c.netns, binary, "agent", "--config", self.c.config_file,
                   "--node", str(self.id), "--admin", self.admin]
            self.agent_marker = "agent --config %s --node %d" % (self.c.config_file, self.id)
            self.agent_proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.agent_log, "w"),
                                               stderr=subprocess.STDOUT, start_new_session=True)
            self.c.state.add_proc(self.agent_proc.pid, self.agent_marker)

    def wait_ready(self, timeout=30):
        time.sleep(0.2)
        if self.proc.poll() is not None:
            raise StepError("%s: dlm-peer exited with %s:\n%s" % (self.name, self.proc.returncode,
                                                                 open(self.log).read()[-2000:]))
        if self.inproc_agent:
            path, proc, ready = self.log, self.proc, "agent running in the node's process"
        elif self.agent_proc is not None:
            path, proc, ready = self.agent_log, self.agent_proc, "running (admin socket"
        else:
            return
        end = time.time() + timeout
        while ready not in open(path).read():
            if proc.poll() is not None or time.time() > end:
                raise StepError("%s: its agent did not start:\n%s" % (self.name, open(path).read()[-2000:]))
            time.sleep(0.1)

    def stop(self):
        if self.agent_proc is not None:
            kill_checked(self.agent_proc.pid, self.agent_marker, sig=signal.SIGTERM)
            self.c.state.drop_proc(self.agent_proc.pid)
            self.agent_proc = None
        if self.proc is None:
            return
        kill_checked(self.proc.pid, self.marker, sig=signal.SIGINT)
        self.c.state.drop_proc(self.proc.pid)
        self.proc = None


def find_dlm_peer():
    """$DLM_PEER, else the repo's .build/{debug,release}/dlm-peer."""
    env = os.environ.get("DLM_PEER")
    if env:
        return env if os.access(env, os.X_OK) else None
    for b in ("debug", "release"):
        p = os.path.join(paths.REPO, ".build", b, "dlm-peer")
        if os.access(p, os.X_OK):
            return p
    return None


class StepError(Exception):
    """A scenario step failed (the scenario fails; the lab itself is fine)."""


# ------------------------------------------------------------------ cluster
class Cluster:
    def __init__(self, cfg, rundir, capture=True, trace=None):
        self.cfg, self.rundir, self.capture = cfg, rundir, capture
        os.makedirs(rundir, exist_ok=True)
        self.tag = "dlmlab-%d" % os.getpid()
        self.netns = "%s-%d" % (self.tag, int(time.time() * 1000) % 100000)
        self.state = STATE
        self.nodes = {}
        self.kernel_nodes, self.peers = [], []
        self.members = {}           # ls -> current member ids
        self.agents = set()         # (node id, ls) with a running dlmlc agent
        self.tcpdump = None
        self.capture_dropped = None
        self.pcap = os.path.join(rundir, "capture.pcap")
        self.config_file = os.path.join(rundir, "cluster.toml")
        self._trace = open(os.path.join(rundir, "steps.log"), "a")
        self._t0 = time.time()
        self.netns_up = False
        self.peer_args = {}         # node id -> extra `dlm-peer run` arguments (from the scenario)
        self.late_peers = False     # the scenario starts its dlm-peers itself (PeerNode.start)
        self.agent_mode = False     # kernel nodes run `dlm-peer agent` (their CM) instead of the harness
        self.vm_mem_mb = None       # the scenario's VM memory (MB), instead of the default

    def trace(self, msg):
        self._trace.write("%9.3f %s\n" % (time.time() - self._t0, msg))
        self._trace.flush()

    def step(self, msg):
        """A scenario step: in the run's log and on the console."""
        self.trace("== " + msg)
        log("    " + msg)

    # ---- network namespace
    def ns_ip(self, *args):
        r = subprocess.run(["ip", "netns", "exec", self.netns, "ip"] + list(args), capture_output=True, text=True)
        if r.returncode:
            raise LabError("ip %s (netns %s): %s" % (" ".join(args), self.netns, r.stderr.strip()))

    def _netns_up(self):
        r = subprocess.run(["ip", "netns", "add", self.netns], capture_output=True, text=True)
        if r.returncode:
            raise LabError("ip netns add %s: %s" % (self.netns, r.stderr.strip()))
        self.state.add_netns(self.netns)
        self.netns_up = True
        self.ns_ip("link", "set", "lo", "up")
        self.ns_ip("link", "add", "br0", "type", "bridge", "forward_delay", "0")
        self.ns_ip("link", "set", "br0", "up")
        for n in self.cfg.kernel_nodes:
            tap = "tap%d" % n.id
            self.ns_ip("tuntap", "add", tap, "mode", "tap")
            self.ns_ip("link", "set", tap, "master", "br0")
            self.ns_ip("link", "set", tap, "up")

    def _capture_start(self):
        port = self.cfg.port
        filt = "tcp port %d or sctp port %d" % (port, port)
        self.tcpdump_err = os.path.join(self.rundir, "tcpdump.log")
        # --immediate-mode: frames reach the file at once (otherwise the last, unretired ring
        # block is lost when tcpdump stops); a 32 MB buffer: on a loaded 2-core machine the
        # default one drops frames in bursts
        cmd = ["ip", "netns", "exec", self.netns, "tcpdump", "-i", "br0", "--immediate-mode", "-B", "32768", "-U", "-s", "0", "-Z", "root",
               "-w", self.pcap, filt]
        self.tcpdump = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=open(self.tcpdump_err, "w"), start_new_session=True)
        self.tcpdump_marker = "-w %s" % self.pcap
        self.state.add_proc(self.tcpdump.pid, self.tcpdump_marker)
        end = time.time() + 10
        while "listening on" not in open(self.tcpdump_err).read():
            if self.tcpdump.poll() is not None or time.time() > end:
                raise LabError("tcpdump did not start: %s" % open(self.tcpdump_err).read())
            time.sleep(0.02)

    def finish_capture(self):
        """Stop the capture (tcpdump writes out everything it has) before reading it."""
        self._capture_stop()

    def _capture_stop(self):
        if not self.tcpdump:
            return
        time.sleep(0.3)
        kill_checked(self.tcpdump.pid, self.tcpdump_marker, sig=signal.SIGINT, wait=5)
        self.state.drop_proc(self.tcpdump.pid)
        self.tcpdump = None
        m = re.search(r"(\d+) packets? dropped by kernel", open(self.tcpdump_err).read())
        self.capture_dropped = int(m.group(1)) if m else None

    # ---- lifecycle
    def start(self):
        cfg = self.cfg
        with open(self.config_file, "w") as f:
            f.write(cfgmod.to_toml(cfg))
        images = {}
        agent = None
        if self.agent_mode:
            from .images import agent_binary, AGENT_HINT
            agent = agent_binary()
            if not agent:
                raise Skip("dlm-peer agent binary not built (.build/static/dlm-peer or $DLM_PEER_AGENT): " + AGENT_HINT)
        for n in cfg.kernel_nodes:
            if n.kernel not in images:
                images[n.kernel] = build_image(n.kernel, agent=agent)
        self._netns_up()
        if self.capture:
            self._capture_start()
        for n in cfg.nodes:
            node = KernelNode(self, n, images[n.kernel]) if n.kind == "kernel" else PeerNode(self, n)
            self.nodes[n.id] = node
            (self.kernel_nodes if n.kind == "kernel" else self.peers).append(node)
        t0 = time.time()
        log("  booting %s (%s, %s) in netns %s" % (
            ", ".join("node%d/%s" % (k.id, k.kernel) for k in self.kernel_nodes),
            cfg.transport, "TCG", self.netns))
        for k in self.kernel_nodes:
            k.start()
        for k in self.kernel_nodes:
            k.wait_ready()
            log("  node%d up: %s, booted in %.1f s" % (k.id, k.image.release, k.boot_s))
        self.trace("all kernel nodes up in %.2f s" % (time.time() - t0))
        for k in self.kernel_nodes:
            if self.agent_mode:
                self.agent_up(k)
            else:
                self.configure_comms(k)
        if not self.late_peers:
            for p in self.peers:
                p.start()
            for p in self.peers:
                p.wait_ready()

    def configure_comms(self, k):
        """The cluster part of dlm_controld's startup, from the config file."""
        C = "/sys/kernel/config/dlm/cluster"
        cmds = ["mkdir %s" % C]
        if self.cfg.transport == "sctp":
            cmds.append("echo 1 > %s/protocol" % C)
        if self.cfg.port != cfgmod.DEFAULT_PORT:
            cmds.append("echo %d > %s/tcp_port" % (self.cfg.port, C))
        cmds.append("echo %s > %s/cluster_name" % (shlex.quote(self.cfg.name), C))
        for n in self.cfg.nodes:
            d = "%s/comms/%d" % (C, n.id)
            cmds += ["mkdir %s" % d, "echo %d > %s/nodeid" % (n.id, d)]   # nodeid before addr
            if n.id == k.id:
                cmds.append("echo 1 > %s/local" % d)
            for a in n.addresses:
                cmds.append("dlmlc sockaddr %s/addr %s" % (d, a))
        k.sh(" && ".join(cmds))
        out = k.sh("cat %s/comms/*/addr_list" % C)
        for n in self.cfg.nodes:
            if n.address not in out:
                raise LabError("node%d: configfs comms lack %s (addr_list: %r)" % (k.id, n.address, out))

    # ---- dlm-peer agent (agent mode: the kernel nodes' cluster manager)
    def push_config(self, k, text):
        """Write the cluster config into the VM (where its agent reads it)."""
        import base64
        b64 = base64.b64encode(text.encode()).decode()
        if len(b64) > 7000:
            raise LabError("config too long for the VM control line (%d bytes)" % len(text))
        k.sh("echo %s | base64 -d > %s.tmp && mv %s.tmp %s" % (b64, AGENT_CONFIG, AGENT_CONFIG, AGENT_CONFIG))

    def agent_up(self, k):
        """Start `dlm-peer agent` in the VM; it sets up configfs itself (checked as in
        configure_comms) and answers the lockspace uevents from now on."""
        with open(self.config_file) as f:
            self.push_config(k, f.read())
        k.bg("dlm-peer agent --config %s --node %d" % (AGENT_CONFIG, k.id), AGENT_LOG)
        k.waitlog(AGENT_LOG, "agent of node %d running|error|Error" % k.id, 1, 60)
        out = k.sh("cat %s" % AGENT_LOG)
        if "running" not in out:
            raise LabError("node%d: dlm-peer agent did not start:\n%s" % (k.id, out))
        C = "/sys/kernel/config/dlm/cluster"
        out = k.sh("cat %s/comms/*/addr_list" % C)
        for n in self.cfg.nodes:
            if n.address not in out:
                raise LabError("node%d: the agent's configfs comms lack %s (addr_list: %r)" % (k.id, n.address, out))

    def agent_cli(self, nid, args, check=True):
        """`dlm-peer <args>` in the VM of node `nid` (reload, node-down, agent-status)."""
        return self.kernel(nid).sh("dlm-peer %s" % args, check=check)

    def agent_log_text(self, nid):
        return self.kernel(nid).sh("cat %s" % AGENT_LOG)

    def collect(self):
        """dmesg of every VM into the run dir (best effort)."""
        for k in self.kernel_nodes:
            if k.proc is None:
                continue
            try:
                out, _ = k.ctl.run("dmesg", timeout=20)
                with open(os.path.join(self.rundir, "%s.dmesg" % k.name), "w") as f:
                    f.write(out)
                if self.agent_mode:
                    out, _ = k.ctl.run("cat %s" % AGENT_LOG, timeout=20)
                    with open(os.path.join(self.rundir, "%s.agent.log" % k.name), "w") as f:
                        f.write(out)
            except Exception as e:   # noqa: BLE001 - a dead VM must not stop the teardown
                with open(os.path.join(self.rundir, "%s.dmesg" % k.name), "w") as f:
                    f.write("(dmesg unavailable: %s)\n--- console ---\n%s" % (e, k.console_text()))

    def dmesg(self, node_id):
        return self.nodes[node_id].sh("dmesg")

    def stop(self):
        try:
            self.collect()
        finally:
            for p in self.peers:
                p.stop()
            for k in self.kernel_nodes:
                k.stop()
            self._capture_stop()
            if self.netns_up:
                subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
                self.state.drop_netns(self.netns)
                self.netns_up = False
            self._trace.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # ---- lockspaces (dlm_controld's part, per node kind)
    def kernel(self, nid):
        n = self.nodes[nid]
        if not isinstance(n, KernelNode):
            raise StepError("node %d is not a kernel node" % nid)
        return n

    def _member_args(self, ids):
        return " ".join("%d:%d" % (i, self.cfg.node(i).weight) for i in sorted(ids))

    def join(self, lsname, nodes=None, members=None, timeout=60):
        """Nodes join a new lockspace concurrently (the first to join waits for all)."""
        ls = self.cfg.lockspace(lsname)
        members = sorted(members or ls.members)
        nodes = sorted(nodes or [m for m in members if m in self.nodes and isinstance(self.nodes[m], KernelNode)])
        self.step("join %s (global id 0x%08x) on nodes %s, members %s" % (lsname, ls.global_id, nodes, members))
        t0 = time.time()
        for i in nodes:
            self.kernel(i).bg("dlmlc join %s --id 0x%08x --timeout %d%s %s" % (
                lsname, ls.global_id, timeout, " --nodir" if ls.nodir else "", self._member_args(members)),
                "/tmp/join-%s.log" % lsname)
        res = {}
        for i in nodes:
            line = self.kernel(i).waitlog("/tmp/join-%s.log" % lsname, "JOINED|JOINFAILED|ERROR", 1, timeout + 5)
            if "JOINED" not in line:
                raise StepError("node%d: join of %s failed: %s\n%s" % (i, lsname, line, self.kernel(i).sh("cat /tmp/join-%s.log" % lsname)))
            res[i] = float(re.search(r"in ([0-9.]+) s", line).group(1))
        self.members[lsname] = set(members)
        self.step("joined %s in %.2f s (per node: %s)" % (lsname, time.time() - t0,
                  ", ".join("node%d %.3f s" % kv for kv in res.items())))
        return res

    def leave(self, lsname, node, timeout=60):
        """`node` leaves; the others are reconfigured the way dlm_controld does it:
        stop the lockspace on every remaining member, then set members and start
        everywhere. Returns (seconds for the whole leave, seconds of the remove write
        on the leaving node: on its last lockspace that includes the FIN handshake)."""
        cur = self.members[lsname]
        remaining = sorted(cur - {node})
        if (node, lsname) in self.agents:
            # an open /dev/dlm_<ls> holds the lockspace: the kernel's remove would wait forever
            self.agent_quit(node, lsname)
        self.step("node%d leaves %s; remaining %s: stop all, then members+start all" % (node, lsname, remaining))
        t0 = time.time()
        self.kernel(node).bg("dlmlc leave %s --timeout %d" % (lsname, timeout), "/tmp/leave-%s.log" % lsname)
        for i in remaining:
            self.kernel(i).sh("dlmlc stop %s" % lsname)
        for i in remaining:
            self.kernel(i).bg("dlmlc members %s --no-stop %s" % (lsname, self._member_args(remaining)),
                              "/tmp/members-%s.log" % lsname)
        for i in remaining:
            line = self.kernel(i).waitlog("/tmp/members-%s.log" % lsname, "RECONFIGURED|ERROR", 1, timeout)
            if "RECONFIGURED" not in line:
                raise StepError("node%d: reconfiguring %s failed: %s" % (i, lsname, line))
        line = self.kernel(node).waitlog("/tmp/leave-%s.log" % lsname, "LEFT|LEAVEFAILED|ERROR", 1, timeout)
        if "LEFT" not in line:
            raise StepError("node%d: leaving %s failed: %s" % (node, lsname, line))
        rem = self.kernel(node).sh("grep REMOVE /tmp/leave-%s.log" % lsname)
        m = re.search(r"write took ([0-9.]+) s", rem)
        remove_s = float(m.group(1)) if m else None
        self.members[lsname] = set(remaining)
        total = time.time() - t0
        self.step("node%d left %s in %.3f s (remove write %.3f s)" % (node, lsname, total, remove_s or -1))
        return total, remove_s

    def add(self, lsname, node, timeout=60):
        """`node` joins an existing lockspace: stop it on every member, the new node
        joins with the new member list, the others set members and start."""
        cur = sorted(self.members[lsname])
        new = sorted(set(cur) | {node})
        ls = self.cfg.lockspace(lsname)
        self.step("node%d joins existing %s; members %s -> %s" % (node, lsname, cur, new))
        t0 = time.time()
        for i in cur:
            self.kernel(i).sh("dlmlc stop %s" % lsname)
        self.kernel(node).bg("dlmlc join %s --id 0x%08x --timeout %d %s" % (
            lsname, ls.global_id, timeout, self._member_args(new)), "/tmp/join-%s.log" % lsname)
        for i in cur:
            self.kernel(i).bg("dlmlc members %s --no-stop %s" % (lsname, self._member_args(new)),
                              "/tmp/members-%s.log" % lsname)
        line = self.kernel(node).waitlog("/tmp/join-%s.log" % lsname, "JOINED|JOINFAILED|ERROR", 1, timeout + 5)
        if "JOINED" not in line:
            raise StepError("node%d: join of %s failed: %s" % (node, lsname, line))
        for i in cur:
            line = self.kernel(i).waitlog("/tmp/members-%s.log" % lsname, "RECONFIGURED|ERROR", 1, timeout)
            if "RECONFIGURED" not in line:
                raise StepError("node%d: reconfiguring %s failed: %s" % (i, lsname, line))
        self.members[lsname] = set(new)
        self.step("node%d added to %s in %.3f s" % (node, lsname, time.time() - t0))

    # ---- lock agents (one dlmlc agent per node and lockspace)
    def agent_start(self, nid, lsname):
        if (nid, lsname) in self.agents:
            return
        k = self.kernel(nid)
        k.sh("rm -f /tmp/a-%s.log; dlmlc agent %s /tmp/a-%s.fifo /tmp/a-%s.log > /tmp/a-%s.out 2>&1 &"
             % (lsname, lsname, lsname, lsname, lsname))
        k.waitlog("/tmp/a-%s.log" % lsname, "AGENT pid=[0-9]+ ls=%s ready" % re.escape(lsname), 1, 10)
        self.agents.add((nid, lsname))

    def agent_quit(self, nid, lsname):
        self.agent(nid, lsname, "quit", wait="AGENT exit")
        self.agents.discard((nid, lsname))

    def agent(self, nid, lsname, cmd, wait=None, timeout=30):
        """Send a command to the node's agent; with `wait` (POSIX ERE), wait for the next
        new log line matching it and return that line parsed (see parse_event)."""
        k = self.kernel(nid)
        logf = "/tmp/a-%s.log" % lsname
        self.step("node%d %s: %s" % (nid, lsname, cmd))
        send = "echo %s > /tmp/a-%s.fifo" % (shlex.quote(cmd), lsname)
        if not wait:
            k.sh(send)
            return None
        q = shlex.quote(wait)
        script = "n=$(grep -cE %s %s); %s; dlmlc waitlog %s %s $((n+1)) %d" % (
            q, logf, send, logf, q, int(timeout * 1000))
        out, rc = k.ctl.run(script, timeout=timeout + 15)
        k.c.trace("node%d agent> %s" % (nid, out.strip()))
        if rc != 0:
            tail, _ = k.ctl.run("tail -n 20 %s" % logf, timeout=15)
            raise StepError("node%d: after `%s`: %s\n--- agent log (tail) ---\n%s" % (nid, cmd, out.strip(), tail.rstrip()))
        ev = parse_event(out.strip().splitlines()[-1])
        self.trace("node%d event %s" % (nid, ev))
        return ev

    def agent_wait(self, nid, lsname, wait, count=1, timeout=30):
        """The count-th log line matching `wait` (counting from the agent's start)."""
        return parse_event(self.kernel(nid).waitlog("/tmp/a-%s.log" % lsname, wait, count, timeout))

    def agent_log(self, nid, lsname):
        return self.kernel(nid).sh("cat /tmp/a-%s.log" % lsname)


def parse_event(line):
    """'12.345 CAST tag lkid=0x1 res=r status=OK lvb="x" hex=..' -> dict(t=, ev=, tag=, ...)"""
    parts = line.split(None, 3)
    d = dict(line=line)
    if len(parts) >= 2:
        try:
            d["t"] = float(parts[0])
        except ValueError:
            pass
        d["ev"] = parts[1]
    if len(parts) >= 3:
        d["tag"] = parts[2]
    for m in re.finditer(r'(\w+)=("(?:[^"]*)"|\S+)', line):
        v = m.group(2)
        d[m.group(1)] = v[1:-1] if v.startswith('"') else v
    return d


STATE = None


def init_state():
    global STATE
    if STATE is None:
        STATE = State()
    return STATE


def private_runtime_dir():
    """$XDG_RUNTIME_DIR of this harness run, inherited by every dlm-peer it starts (`run`, `agent`,
    `status`, through `ip netns exec`) and read by peerctl: the control and admin sockets
    (`dlm-peer.<node>.sock`, `dlm-peer-agent.<node>.sock`) are then this run's own. In a shared
    /tmp a concurrent lab run's dlm-peer node 3 takes over /tmp/dlm-peer.3.sock, and this run's
    requests reach the other cluster's node."""
    import shutil
    d = "/tmp/dlmlab-%d" % os.getpid()
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = d
    atexit.register(shutil.rmtree, d, True)
    return d


def teardown_all():
    """Last-resort cleanup of everything this process started (atexit, signals)."""
    st = STATE
    if st is None:
        return
    for pid, marker in list(st.procs):
        kill_checked(pid, marker, wait=2)
        st.drop_proc(pid)
    for ns in list(st.netns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        st.drop_netns(ns)
    st.remove()
