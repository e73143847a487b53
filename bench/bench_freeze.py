#!/usr/bin/python3
"""FREEZE — root's login time while one user floods the helper with
descriptors whose release blocks (issue 14, item 2).

One helper (non-root, ambient caps, lab netns) started as systemd starts a
unit without LimitNOFILE (soft 1024, hard 20000 here; the helper raises its
soft limit itself). Root side: bench_flood's RootDriver, CLIENTS root processes
that each move back to a base cgroup of their own and send `open` on
root.sock at the same instant, a burst every ~0.1 s; each records its round
trip and verdict.

Two conditions in interleaved rounds of shuffled order:
    quiet    nothing else
    attack   testlab.fdflood.DESCRIPTOR_FLOOD as an unprivileged user: 16
             connections each carrying 253 descriptors (a loopback TCP socket
             with unsent data and SO_LINGER {1, 1000000} first), then one more
             such connection every 20 ms for the whole phase
Reported per condition: p50/p99/max of root's round trips, how many were
placed, and during the attack the most descriptors and threads the helper
held (sampled after each burst) and its CPU use (all threads, exited ones
too: utime+stime of /proc/PID/stat over the phase).

    bench/bench_freeze.py [--rounds N] [--bursts N] [--nofile SOFT:HARD] [--no-install]
                          [--helper-pythonpath DIR]
"""

import argparse
import os
import subprocess
import sys
import time

from bench_common import PY, Helper, add_user, median, percentile, say, shuffled_rounds
from bench_flood import RootDriver
from testlab.fdflood import DESCRIPTOR_FLOOD  # noqa: E402,I100  (bench_common puts the repository on sys.path)
from testlab.run import enter, stop_process  # noqa: E402

CLIENTS = 4
CONDITIONS = ("quiet", "attack")


def _count(path):
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


def bench(lab, rounds=3, bursts=25, nofile="1024:20000", pythonpath=None):
    run = lab.run
    login = add_user(run, "z")
    attacker = add_user(run, "x")
    config = lab.write("freeze-vrf.conf", f"{login.pw_name}  {lab.target}  plain\n")
    helper = Helper(lab, config, suffix="Z",
                    wrap=lambda argv: [*(["env", f"PYTHONPATH={pythonpath}"] if pythonpath else []),
                                       "prlimit", f"--nofile={nofile}", "--", *argv]).start()
    base = lab.cgroup("freeze", "root")
    for i in range(CLIENTS):
        lab.cgroup("freeze", "root", f"c{i}")
    driver = RootDriver(lab, helper, login.pw_name, base, CLIENTS, lab.cgroup("freeze", "driver"))
    burst = driver.burst
    evil = []

    def close():
        for p in evil:
            stop_process(p, timeout=1)
        evil.clear()
        driver.close()
    run.defer(close)

    burst(2)                                        # warm-up: cgroups made, program attached
    pid = helper.proc.pid                           # prlimit and setpriv exec it in turn
    samples = {c: [] for c in CONDITIONS}
    fds = {c: [] for c in CONDITIONS}
    threads = {c: [] for c in CONDITIONS}
    cpu = {c: [] for c in CONDITIONS}
    for r, order in enumerate(shuffled_rounds(CONDITIONS, rounds, seed=5)):
        for cond in order:
            say(f"FREEZE: round {r + 1}/{rounds}, {cond}: {bursts} bursts of {CLIENTS} root opens")
            if cond == "attack":
                p = subprocess.Popen([PY, "-c", DESCRIPTOR_FLOOD, helper.socket, "16", "253", "3600"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd="/",
                                     preexec_fn=enter(None, lab.ns, attacker))
                evil.append(p)
                if p.stdout.readline().strip() != "passed":
                    raise RuntimeError("the attacker did not start")
                time.sleep(0.5)
            c0, t0 = helper.cpu_seconds(), time.monotonic()
            for _ in range(bursts):
                samples[cond] += burst(1)
                fds[cond].append(_count(f"/proc/{pid}/fd"))
                threads[cond].append(_count(f"/proc/{pid}/task"))
            cpu[cond].append((helper.cpu_seconds() - c0) / (time.monotonic() - t0))
            if cond == "attack":
                stop_process(evil.pop(), timeout=1)
                time.sleep(1.0)                     # the helper lets go of what the attacker left
    close()
    if helper.proc.poll() is not None:
        raise RuntimeError("the helper died under the attack:\n" + helper.output()[-2000:])
    with open(f"/proc/{pid}/limits") as f:
        limit = next(line.split()[3] for line in f if line.startswith("Max open files"))
    refusals = helper.count("descriptors")
    helper.stop()
    out = {"clients": CLIENTS, "rounds": rounds, "bursts": bursts, "nofile": nofile, "helper_soft_limit": limit,
           "budget_log_lines": refusals}
    for cond in CONDITIONS:
        ms = [v[0] for v in samples[cond]]
        out[cond] = {"n": len(ms), "p50": median(ms), "p99": percentile(ms, 99), "max": max(ms),
                     "placed": sum(1 for v in samples[cond] if v[1] == "placed"),
                     "not_placed": [v for v in samples[cond] if v[1] != "placed"][:5],
                     "max_fds": max(fds[cond]), "max_threads": max(threads[cond]), "helper_cpu": median(cpu[cond])}
    return out


def table(r):
    lines = [f"root `open` on root.sock, {r['clients']} concurrent clients a burst, helper started with nofile "
             f"{r['nofile']} (raised itself to {r['helper_soft_limit']}), {r['rounds']} interleaved rounds",
             "",
             "| condition | n | placed | p50 ms | p99 ms | max ms | helper CPU | helper fds (max) | helper threads (max) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for cond in CONDITIONS:
        c = r[cond]
        lines.append(f"| {cond} | {c['n']} | {c['placed']} | {c['p50']:.2f} | {c['p99']:.2f} | {c['max']:.2f} | "
                     f"{c['helper_cpu'] * 100:.0f}% | {c['max_fds']} | {c['max_threads']} |")
    lines.append(f"\nbudget lines in the helper's log: {r['budget_log_lines']}")
    return "\n".join(lines)


def main():
    import bench_common as common
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bursts", type=int, default=25)
    ap.add_argument("--nofile", default="1024:20000", help="the helper's RLIMIT_NOFILE at start (SOFT:HARD)")
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--helper-pythonpath", metavar="DIR",
                    help="run the helper's pam_vrf from DIR (a world-readable export of another commit: before/after)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_freeze: run as root")
    common.install_signal_handlers()
    common.sweep_stale()
    run = common.Run()
    try:
        if not args.no_install:
            common.sh("make", "-C", common.REPO, "install")
        r = bench(common.Lab(run), args.rounds, args.bursts, args.nofile, args.helper_pythonpath)
    finally:
        run.close()
    say(table(r))
    for cond in CONDITIONS:
        if r[cond]["not_placed"]:
            say(f"{cond}: not placed, e.g. {r[cond]['not_placed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
