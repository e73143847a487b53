"""Flood — root `open` requests while an unprivileged user floods the helper.

One helper (non-root, ambient caps, lab netns) with a policy-heavy vrf.conf:
10 000 decoy lines naming other users, then the login user's rule and the
flooding user's `exec=` grant (so the flood's `place` requests are decided
against all 10 000 lines and then carried out).

Root side: 20 client processes (root, Debian's python3, each in its own
base cgroup), driven in bursts: all 20 move back to their base cgroup,
then send `open` on root.sock at the same instant; each records its round
trip (perf_counter around client.request). A burst every ~0.1 s.

Flood: 32 processes of one unprivileged user on the public socket, 8 of
each kind, looping as fast as the helper lets them:
    churn     connect + close
    hold      connect and keep up to 64 connections open (never send)
    garbage   connect + 512 random bytes + read the answer
    place     a valid `place` request for the user's exec= VRF (with pidfd)

Three conditions, in rounds of shuffled order: quiet; flood; and the same
flood with the flooding user's processes in a CPU cgroup of their own
(cgroup v1 `cpu` here, default shares: together they weigh as much as one
process), which is what systemd's user-UID.slice does on a cgroup-v2 host.
On this host nothing separates users' CPU time otherwise: 32 busy
processes get 32 shares of 2 cores and the helper one. The flood is
started fresh for each flood phase, given 1 s to ramp up, and killed after;
the next phase starts 1.2 s after, when the helper has dropped every held
connection. Reported: p50/p99/max of the root round trips per condition,
the helper's CPU use (utime+stime / wall) during each, and what the flood
got (answers, "busy" refusals, errors).
"""

import json
import os
import signal
import subprocess
import time

from bench_common import (CGROUP_PREFIX, PY, Helper, add_user, cpu_v1_mount, enter, median, percentile, say,
                          shuffled_rounds)
from testlab import progs  # noqa: E402,I100  (bench_common puts the repository on sys.path)

CLIENTS = 20
FLOODERS = {"churn": 8, "hold": 8, "garbage": 8, "place": 8}

# Root driver: argv ROOT_SOCK USER SERVICE BASE_DIR N. Forks N clients; each
# stdin line "burst K" runs K bursts and prints a JSON list of [ms, verdict].
DRIVER = progs.source("bench_flood_driver")

class RootDriver:
    """DRIVER started for `helper` (a bench_common.Helper): `clients` root
    processes with base cgroups below `base`, opening for `user`; burst(k)
    runs k bursts and returns [[ms, verdict], ...]. Also bench_freeze's."""

    def __init__(self, lab, helper, user, base, clients, driver_cgroup):
        self.proc = subprocess.Popen([PY, "-c", DRIVER, helper.root_socket, user, "sshd", base, str(clients)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
                                     preexec_fn=enter(driver_cgroup))

    def burst(self, k):
        self.proc.stdin.write(f"burst {k}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("root driver died")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# Unprivileged flooder: argv SOCKET KIND VRF. Stops on SIGTERM and prints its
# counts (testlab's, shared with tests/test_login.py).
FLOODER = progs.source("flooder")


class Flood:
    def __init__(self, lab, helper, user, script, cgroup_dir, cpu_dir=None):
        self.procs = []
        for kind, count in FLOODERS.items():
            for _ in range(count):
                p = subprocess.Popen([PY, script, helper.socket, kind, lab.target], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, cwd="/",
                                     preexec_fn=enter(cgroup_dir, user, also=[cpu_dir] if cpu_dir else []))
                self.procs.append((kind, p))
        for kind, p in self.procs:
            if p.stdout.readline().strip() != "flooding":
                raise RuntimeError(f"flooder {kind} did not start")

    def stop(self):
        """Counts per kind; every flooder gone afterwards."""
        counts = {}
        for _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for kind, p in self.procs:
            try:
                out, _ = p.communicate(timeout=5)
                c = json.loads(out.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                p.kill()
                p.wait()
                c = {"unfinished": 1}
            total = counts.setdefault(kind, {})
            for k, v in c.items():
                total[k] = total.get(k, 0) + v
        self.procs = []
        return counts


def _cpu_group(run):
    """A cgroup v1 `cpu` directory for the flooding user's processes, or None."""
    mount = cpu_v1_mount()
    if not mount:
        return None
    top = os.path.join(mount, CGROUP_PREFIX + run.tag)
    os.makedirs(os.path.join(top, "flood"), exist_ok=True)
    from bench_common import remove_cgroup_tree
    run.defer(remove_cgroup_tree, top)
    return os.path.join(top, "flood")


CONDITIONS = ("quiet", "flood", "confined")


def bench(lab, phases=3, bursts=5):
    run = lab.run
    login = add_user(run, "c")
    flooder = add_user(run, "f")
    decoys = "".join(f"{run.name('d')}{i} {lab.target} plain\n" for i in range(10_000))
    config = lab.write("flood-vrf.conf", "# bench flood: 10 000 decoys, then the real rules\n" + decoys
                       + f"{login.pw_name}  {lab.target}  plain\n"
                       + f"{flooder.pw_name}  -  exec={lab.target} plain\n")
    helper = Helper(lab, config, suffix="F").start()
    base = lab.cgroup("flood", "root")
    for i in range(CLIENTS):
        lab.cgroup("flood", "root", f"c{i}")
    script = lab.write("flooder.py", FLOODER)
    flood_cgroup = lab.cgroup("flood", "user")
    cpu_dir = _cpu_group(run)
    conditions = CONDITIONS if cpu_dir else CONDITIONS[:2]
    driver = RootDriver(lab, helper, login.pw_name, base, CLIENTS, lab.cgroup("flood", "driver"))
    burst = driver.burst
    active = []

    def close():
        for f in active:
            f.stop()
        active.clear()
        driver.close()
    run.defer(close)

    burst(2)                                        # warm-up: cgroups made, programs attached
    samples = {c: [] for c in conditions}
    cpu = {c: [] for c in conditions}
    counts = {c: [] for c in conditions}
    mem = []
    for ph, order in enumerate(shuffled_rounds(conditions, phases, seed=3)):
        for cond in order:
            say(f"P-flood: round {ph + 1}/{phases}, {cond}: {bursts} bursts of {CLIENTS} root opens")
            flood = None
            if cond != "quiet":
                flood = Flood(lab, helper, flooder, script, flood_cgroup, cpu_dir if cond == "confined" else None)
                active.append(flood)
                time.sleep(1.0)
            (r0, w0), t0 = helper.schedstat(), time.monotonic()
            samples[cond] += burst(bursts)
            (r1, w1), wall = helper.schedstat(), time.monotonic() - t0
            cpu[cond].append(((r1 - r0) / wall, (w1 - w0) / wall))
            if flood:
                mem.append(helper.memory())
                counts[cond].append(flood.stop())
                active.remove(flood)
                time.sleep(1.2)                     # held connections expire (1 s) before the next phase
    close()
    if not helper.proc or helper.proc.poll() is not None:
        raise RuntimeError("the helper died under the flood:\n" + helper.output()[-2000:])
    busy_lines = helper.count("refusing a connection")
    helper.stop()

    out = {"clients": CLIENTS, "phases": phases, "bursts": bursts, "flooders": FLOODERS,
           "busy_log_lines": busy_lines, "mem": mem, "conditions": conditions}
    for cond, vals in samples.items():
        ms = [v[0] for v in vals]
        total = {}
        for c in counts[cond]:
            for kind, d in c.items():
                t = total.setdefault(kind, {})
                for k, v in d.items():
                    t[k] = t.get(k, 0) + v
        out[cond] = {"n": len(ms), "p50": median(ms), "p99": percentile(ms, 99), "max": max(ms),
                     "not_placed": [v for v in vals if v[1] != "placed"][:5],
                     "placed": sum(1 for v in vals if v[1] == "placed"),
                     "helper_cpu": median([c[0] for c in cpu[cond]]),
                     "helper_wait": median([c[1] for c in cpu[cond]]), "flood_counts": total}
    return out
