"""Interop/run: list, set up, run and report the lab's scenarios."""
from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import subprocess
import sys
import time
import traceback

from . import capture, cluster, config as cfgmod, images, kernels, paths, scenarios
from .util import LabError, Skip, log

APT_PACKAGES = ["qemu-system-x86", "busybox-static", "kmod", "gcc", "libc6-dev", "linux-libc-dev",
                "tshark", "tcpdump", "iproute2", "xz-utils", "zstd", "gpgv", "debian-archive-keyring"]
CANNOT_RUN = 2          # exit status when the lab cannot run at all
SCENARIO_TIMEOUT = 300


class Interrupted(BaseException):
    pass


def _on_signal(signum, _frame):
    raise Interrupted("signal %d" % signum)


class _Timeout(BaseException):
    pass


def _on_alarm(_s, _f):
    raise _Timeout()


# ------------------------------------------------------------------ setup
def missing_packages():
    out = []
    for p in APT_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", p], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            out.append(p)
    return out


def setup(kernel_list):
    if os.geteuid() != 0:
        raise LabError("--setup needs root (apt-get install)")
    miss = missing_packages()
    if miss:
        log("installing: %s" % " ".join(miss))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends"] + miss):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode:
                raise LabError("%s failed:\n%s" % (" ".join(cmd[:2]), (r.stdout + r.stderr)[-3000:]))
    else:
        log("apt packages: all installed")
    for k in kernel_list:
        images.build_image(k)
    log("setup done: kernels and images cached under %s" % paths.cache_dir())


# ------------------------------------------------------------------ one scenario
def run_one(sc, args, resdir, all_captures):
    rundir = os.path.join(resdir, sc.name)
    os.makedirs(rundir, exist_ok=True)
    res = dict(name=sc.name, status="FAIL", seconds=0.0, detail="", metrics={}, rundir=rundir)
    t0 = time.time()
    c = None
    try:
        kernel = args.kernel if (args.kernel and sc.overridable) else sc.kernel
        transport = args.transport if (args.transport and sc.overridable) else sc.transport
        cfg = cfgmod.load_for_lab(sc.config_path, kernel=kernel, transport=transport)
        for w in cfg.warnings:
            log("  config warning: %s: %s" % (cfg.path, w))
        res["kernels"] = sorted({n.kernel for n in cfg.kernel_nodes})
        res["transport"] = cfg.transport
        res["nodes"] = len(cfg.nodes)
        log("scenario %s: %s [%s, %s]" % (sc.name, sc.about, "+".join(res["kernels"]), cfg.transport))
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(args.timeout)
        c = cluster.Cluster(cfg, rundir)
        c.peer_args = sc.peer_args
        c.late_peers = sc.late_peers
        c.agent_mode = sc.agents
        c.vm_mem_mb = sc.vm_mem_mb
        ck = scenarios.Check(c, rundir)
        ck.all_captures = list(all_captures)
        try:
            c.start()
            res["boot_s"] = round(max(k.boot_s for k in c.kernel_nodes), 2)
            sc.fn(c, ck, **sc.kwargs)
            res["status"] = "PASS" if not ck.failures else "FAIL"
        except scenarios.CheckFailed:
            res["status"] = "FAIL"
        except cluster.StepError as e:
            ck.failures.append(str(e))
        except Skip as e:
            res["status"] = "SKIP" if not ck.failures else "FAIL"
            res["skip"] = str(e)
        except capture.CaptureError as e:
            ck.failures.append("capture: %s" % e)
        finally:
            signal.alarm(0)
            c.stop()
        res["metrics"] = ck.metrics
        res["notes"] = ck.notes
        res["failures"] = ck.failures
        if ck.failures:
            res["status"] = "FAIL"
            res["detail"] = ck.failures[0].splitlines()[0]
        elif res["status"] == "SKIP":
            res["detail"] = "SKIP: " + res["skip"]
        counts = getattr(ck, "counts", None)
        if counts is not None:
            with open(os.path.join(rundir, "counts.json"), "w") as f:
                json.dump(counts, f, indent=1, sort_keys=True)
            if os.path.exists(c.pcap):
                all_captures.append((c.pcap, cfg.transport, counts))
    except _Timeout:
        res["detail"] = "timed out after %d s" % args.timeout
        res["failures"] = [res["detail"]]
        if c:
            c.stop()
    except cfgmod.ConfigError as e:
        res["detail"] = str(e).splitlines()[0]
        res["failures"] = [str(e)]
    except LabError as e:
        res["detail"] = "lab error: %s" % str(e).splitlines()[0]
        res["failures"] = [str(e)]
    except Exception as e:  # noqa: BLE001 - a harness bug fails the scenario, with its traceback kept
        res["detail"] = "harness error: %r" % e
        res["failures"] = [traceback.format_exc()]
    res["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(rundir, "result.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    if res["status"] == "FAIL":
        with open(os.path.join(rundir, "FAILED.txt"), "w") as f:
            f.write("\n\n".join(res.get("failures", [])) + "\n")
    log("scenario %s: %s in %.1f s%s" % (sc.name, res["status"], res["seconds"],
                                         (" - " + res["detail"]) if res["detail"] else ""))
    return res


# ------------------------------------------------------------------ report
def table(results):
    rows = [("scenario", "kernels", "transport", "result", "time", "boot", "what failed / notes")]
    for r in results:
        m = r.get("metrics", {})
        note = r["detail"]
        if not note:
            bits = []
            for k in ("join", "fin_handshake_2_1", "remove_write_node2", "grant_after_unlock"):
                if k in m:
                    bits.append("%s %.3fs" % (k, m[k]))
            if "retransmits_logged_node1" in m:
                bits.append("retransmits n1/n2 %s/%s" % (m["retransmits_logged_node1"], m.get("retransmits_logged_node2")))
            note = ", ".join(bits)
        rows.append((r["name"], "+".join(r.get("kernels", [])) or "-", r.get("transport", "-"), r["status"],
                     "%.1fs" % r["seconds"], ("%.1fs" % r["boot_s"]) if "boot_s" in r else "-", note))
    w = [max(len(str(row[i])) for row in rows) for i in range(6)]
    out = []
    for i, row in enumerate(rows):
        out.append("  ".join(str(row[j]).ljust(w[j]) for j in range(6)) + "  " + row[6])
        if i == 0:
            out.append("  ".join("-" * w[j] for j in range(6)) + "  " + "-" * 20)
    return "\n".join(out)


def list_scenarios():
    print("scenarios (* = default set; --all runs every one):")
    for s in sorted(scenarios.SCENARIOS, key=lambda s: s.order):
        cfg = s.config + (" kernel=%s" % s.kernel if s.kernel else "") + (" transport=%s" % s.transport if s.transport else "")
        print("  %s %-11s %-40s %s" % ("*" if s.default else " ", s.name, cfg, s.about))


# ------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(prog="Interop/run", description=(
        "Run kernel-DLM interop scenarios in QEMU VMs (see Interop/README.md). "
        "Without scenario names, runs the default (fast) set."))
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO")
    ap.add_argument("--kernel", choices=cfgmod.KERNELS, help="boot every kernel node of the selected scenarios on this kernel")
    ap.add_argument("--transport", choices=cfgmod.TRANSPORTS, help="DLM transport for the selected scenarios")
    ap.add_argument("--all", action="store_true", help="run every scenario")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--keep", action="store_true", help="keep the captures of passing scenarios too (failed ones are always kept)")
    ap.add_argument("--setup", action="store_true", help="install apt packages, fetch kernels, build images, then exit")
    ap.add_argument("--timeout", type=int, default=SCENARIO_TIMEOUT, help="per-scenario time limit in seconds (default %(default)s)")
    args = ap.parse_args(argv)

    if args.list:
        list_scenarios()
        return 0
    if args.setup:
        try:
            setup(list(kernels.SUITES))
        except LabError as e:
            print("Interop/run --setup: %s" % e, file=sys.stderr)
            return CANNOT_RUN
        return 0

    if args.all:
        chosen = list(scenarios.SCENARIOS)
    elif args.scenarios:
        chosen = []
        for n in args.scenarios:
            s = scenarios.by_name(n)
            if not s:
                print("unknown scenario %r; Interop/run --list shows them" % n, file=sys.stderr)
                return CANNOT_RUN
            chosen.append(s)
    else:
        chosen = [s for s in scenarios.SCENARIOS if s.default]
    chosen.sort(key=lambda s: s.order)

    why = cluster.preflight()
    if why:
        print("Interop/run: cannot run the interop lab: %s" % why, file=sys.stderr)
        print("interop: 0 passed, %d failed" % len(chosen))
        return CANNOT_RUN

    cluster.init_state()
    atexit.register(cluster.teardown_all)
    cluster.private_runtime_dir()
    # explicit handlers: a harness started in the background (SIGINT ignored) or by a CI
    # runner (SIGTERM) must still tear everything down
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    cluster.reap_stale()

    t0 = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    resdir = os.path.join(paths.results_dir(), stamp)
    os.makedirs(resdir, exist_ok=True)
    log("interop lab: %d scenario(s): %s; results in %s" % (len(chosen), " ".join(s.name for s in chosen), resdir))
    results, all_captures = [], []
    try:
        # fetch kernels and build images up front, so the first scenario's time is its own
        need = set()
        for s in chosen:
            try:
                k = args.kernel if (args.kernel and s.overridable) else s.kernel
                cfg = cfgmod.load_for_lab(s.config_path, kernel=k)
                need |= {n.kernel for n in cfg.kernel_nodes}
            except cfgmod.ConfigError:
                pass      # reported by the scenario itself
        for k in sorted(need):
            try:
                images.build_image(k)
            except LabError as e:
                print("Interop/run: cannot prepare the %s kernel image: %s" % (k, e), file=sys.stderr)
                print("interop: 0 passed, %d failed" % len(chosen))
                return CANNOT_RUN
        for s in chosen:
            results.append(run_one(s, args, resdir, all_captures))
    except (KeyboardInterrupt, Interrupted) as e:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)      # a second Ctrl-C must not cut the teardown short
        log("interrupted (%s): tearing down" % (e or "Ctrl-C"))
        cluster.teardown_all()
        print("interrupted; partial results in %s" % resdir, file=sys.stderr)
        return 130
    finally:
        cluster.teardown_all()

    # captures of passing scenarios go, unless --keep, or anything failed (decode reads
    # the other scenarios' captures, so a decode failure may be about any of them)
    if not args.keep and not any(r["status"] == "FAIL" for r in results):
        for r in results:
            if r["status"] != "FAIL":
                p = os.path.join(r["rundir"], "capture.pcap")
                if os.path.exists(p):
                    os.unlink(p)
    total = time.time() - t0
    summary = dict(results=results, total_seconds=round(total, 1), results_dir=resdir)
    with open(os.path.join(resdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    npass = sum(r["status"] == "PASS" for r in results)
    nfail = sum(r["status"] == "FAIL" for r in results)
    nskip = sum(r["status"] == "SKIP" for r in results)
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        print()
        print(table(results))
        print()
        print("total %.1f s; logs, dmesg and failed captures in %s" % (total, resdir))
    # with --json, stdout is the JSON document only (`dlm-peer bench recovery --lab` parses it)
    print("interop: %d passed, %d failed, %d skipped" % (npass, nfail, nskip), file=sys.stderr if args.json else sys.stdout)
    return 1 if nfail else 0
