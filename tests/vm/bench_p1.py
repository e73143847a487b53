#!/usr/bin/python3
"""P1-VM benchmark (not a test; pytest does not collect it): what pam-vrf adds
to a real ssh login on the test VM, and what its cgroup move costs.
vagrant/ci/vm-run-tests runs it after the VM suite (before bench_p2.py) and
puts p1.json and p1.txt into the results; vagrant/ci/test-vm prints p1.txt.

    python3 tests/vm/bench_p1.py [--rounds 8] [--out DIR]     (as root, on the VM)

1. `ssh op1@127.0.0.1 true`, end to end (key auth, sshd, PAM, pam_systemd's
   logind session, the command, logout), against three sshd instances that
   differ only in their PAM stack (each a symlink to /usr/sbin/sshd whose
   name is its PAM service, on its own port):

     p1-none   /etc/pam.d/sshd with common-session written out, no pam-vrf
     p1-so     the same with pam_vrf.so where the profile puts it (what the box runs)
     p1-py     the same with the pam_python entry at the end instead

   op1 matches `@netops mgmt`: p1-so and p1-py place every login (checked in
   the warm-up round: where the login shell lands). Rounds are interleaved
   (the order rotates); medians compared, and per-round paired differences.

2. The cgroup move: a login is moved twice, into session-N.scope by
   systemd (pam_systemd), then into …/vrf/NAME by the helper. Without the
   cgroup2 mount option favordynmods, a migration after an idle period waits
   for an RCU grace period (percpu rwsem); a second one soon after does not.
   Measured here:
     a. a process moved between two cgroups: after 100 ms idle, and a
        second move D ms after a first (D = 0, 2, 5, 10, 20, 50);
     b. the helper's `place` request (mkdir, attach, the cgroup.procs write)
        for this process, with the system idle vs with a background process
        migrating every ~2 ms (then no migration waits for a grace period):
        the difference is the grace period the helper's move waits for;
     c. in the placed logins of 1.: the time from systemd's start of
        session-N.scope (pam_systemd's move) to the helper's verdict line
        (after its move), from the journal: whether the helper's move could
        fall into the short window after the first in which it is cheap.
   The state of the mount is reported, never changed.

Everything it creates (PAM services, symlinks, sshd processes, cgroups) is removed.
"""

import argparse
import contextlib
import os
import platform
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402

USER = "op1"
VRF = "mgmt"
PYTHON_LINE = f"{vmlib.PAM_LINE} pam_python.so {vmlib.PAM_PYTHON_ENTRY}"
GAPS_MS = (0, 2, 5, 10, 20, 50)
IDLE = 0.1


def favordynmods():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                options = set(left.split()[5].split(",")) | set(right.split()[2].split(","))
                return "on" if "favordynmods" in options else "off"
    return "no cgroup2 mount"


def _fmt(value):
    return "n/a" if value is None else f"{value:.2f}"


def med(samples):
    return round(statistics.median(samples), 2) if samples else None


def summary(ms):
    ms = sorted(ms)
    q = statistics.quantiles(ms, n=10) if len(ms) >= 2 else [ms[0], ms[0]]
    return {"n": len(ms), "median_ms": med(ms), "p10_ms": round(q[0], 2), "p90_ms": round(q[-1], 2),
            "min_ms": round(ms[0], 2), "max_ms": round(ms[-1], 2)}


# --- 1. ssh end to end --------------------------------------------------------------------

def ssh_rounds(rounds, warmup):
    """{variant: [ms per login]}, {variant: login shell's cgroup}, [ms gaps]:
    the warm-up rounds record where the login shell lands (the check)."""
    with open("/etc/pam.d/sshd") as f:
        as_is = f.read()
    stacks = {"none": vmlib.pam_stack_without_pam_vrf(),
              "so": as_is,
              "py": vmlib.pam_stack_without_pam_vrf([PYTHON_LINE])}
    ports = {"none": 2211, "so": 2212, "py": 2213}
    samples = {v: [] for v in stacks}
    placed = {}
    with contextlib.ExitStack() as stack:
        for v in stacks:
            stack.enter_context(vmlib.sshd_service(f"sshd-p1{v}", stacks[v], ports[v]))
        order = list(stacks)
        mark = vmlib.journal_mark()
        for r in range(warmup + rounds):
            for v in order:
                command = "sed -n 's/^0:://p' /proc/$$/cgroup" if r < warmup else "true"
                t0 = time.perf_counter()
                out = vmlib.ssh(USER, command, port=ports[v]).stdout.strip()
                elapsed = (time.perf_counter() - t0) * 1000
                if r < warmup:
                    placed[v] = out
                else:
                    samples[v].append(elapsed)
            order = order[1:] + order[:1]
    return samples, placed, move_gaps(mark)


def move_gaps(mark):
    """For each login placed in these rounds: ms from systemd's "Started
    session-N.scope" (the scope's creation: pam_systemd's move) to the helper's
    verdict line for session-N (logged right after its own move). Journal
    receive times: an upper bound of the gap between the two moves."""
    started, placed = {}, {}
    for e in vmlib.journal(mark):
        msg, when = str(e.get("MESSAGE")), int(e["__REALTIME_TIMESTAMP"])
        m = re.match(r"Started session-(\d+)\.scope", msg)
        if m and e.get("_PID") == "1":
            started[m.group(1)] = when
        m = re.search(r"placed in VRF \S+ .*/session-(\d+)\.scope/vrf/", msg)
        if m and e.get("SYSLOG_IDENTIFIER") == vmlib.HELPER_IDENT:
            placed[m.group(1)] = when
    return [(placed[n] - started[n]) / 1000 for n in placed if n in started]


# --- 2a. raw migrations -------------------------------------------------------------------

def migrations(reps):
    base = os.path.join(vmlib.cgroup_mount(), vmlib.cgroup_of(os.getpid()).lstrip("/"), f"p1-mig-{os.getpid()}")
    a, b = os.path.join(base, "a"), os.path.join(base, "b")
    for d in (base, a, b):
        os.mkdir(d)
    child = subprocess.Popen(["sleep", "600"])

    def move(where):
        t0 = time.perf_counter()
        with open(os.path.join(where, "cgroup.procs"), "w") as f:
            f.write(str(child.pid))
        return (time.perf_counter() - t0) * 1000
    out = {"after_idle": [], "second": {g: [] for g in GAPS_MS}}
    try:
        here = a
        move(here)
        for _ in range(reps):
            for gap in GAPS_MS:
                time.sleep(IDLE)
                here = b if here == a else a
                out["after_idle"].append(move(here))
                if gap:
                    time.sleep(gap / 1000)
                here = b if here == a else a
                out["second"][gap].append(move(here))
    finally:
        child.kill()
        child.wait()
        for d in (a, b, base):
            vmlib.wait_until(f"rmdir {d}", lambda: _rmdir(d), timeout=10, interval=0.1)
    return out


def _rmdir(d):
    try:
        os.rmdir(d)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


# --- 2b. the helper's own cgroup.procs write, in a login ----------------------------------------

MOVER = """
import sys, time
a, b, pid = sys.argv[1], sys.argv[2], sys.argv[3]
while True:
    for where in (a, b):
        with open(where + "/cgroup.procs", "w") as f:
            f.write(pid)
        time.sleep(0.005)
"""

# A second helper, the installed code with its cgroup.move() timed (bench
# instrumentation, not a product change): each write to cgroup.procs it makes
# is appended to LOG in ms.
TIMED_HELPER = """
import sys, time
from pam_vrf import cgroup
LOG = sys.argv.pop(1)
_move = cgroup.move


def move(pid, path):
    t0 = time.perf_counter()
    try:
        return _move(pid, path)
    finally:
        with open(LOG, "a") as f:
            f.write(f"{(time.perf_counter() - t0) * 1000:.3f}\\n")


cgroup.move = move
from pam_vrf.helper.main import main
sys.exit(main())
"""
CAPS = "+bpf,+net_admin,+dac_override"


def helper_writes(reps):
    """pamtester logins (pam_vrf.so socket= a second, timed helper), each started
    in a fresh cgroup (a move ~100 ms before the helper's, as pam_systemd's is
    in an ssh login: see the journal gaps): how long the helper's cgroup.procs
    write takes, with the system otherwise idle, and "hot": a background process
    migrating a sleeper every ~5 ms, which keeps the cgroup rwsem's RCU sync
    from going idle (then no migration waits for a grace period)."""
    from pam_vrf import client
    account = pwd.getpwnam("pam-vrf")
    work = f"/run/pvb-{vmlib.tag()}"
    os.makedirs(work)
    os.chown(work, account.pw_uid, account.pw_gid)
    wrapper, log, sock = f"{work}/timed_helper.py", f"{work}/moves.log", f"{work}/helper.sock"
    with open(wrapper, "w") as f:
        f.write(TIMED_HELPER)
    os.chmod(wrapper, 0o644)
    service = f"p1-timed-{os.getpid()}"
    with open(f"/etc/pam.d/{service}", "w") as f:
        f.write("auth required pam_permit.so\naccount required pam_permit.so\nsession required pam_permit.so\n"
                f"{vmlib.PAM_LINE} pam_vrf.so socket={sock}\n")
    home = os.path.join(vmlib.cgroup_mount(), vmlib.cgroup_of(os.getpid()).lstrip("/"))
    base = os.path.join(home, f"p1-writes-{os.getpid()}")
    a, b = os.path.join(base, "mover-a"), os.path.join(base, "mover-b")
    for d in (base, a, b):
        os.mkdir(d)
    helper = subprocess.Popen(["setpriv", "--reuid", "pam-vrf", "--regid", "pam-vrf", "--init-groups",
                               "--inh-caps", CAPS, "--ambient-caps", CAPS, sys.executable, wrapper, log,
                               "--socket", sock, "--state", f"{work}/attachments.json"],
                              env={"PATH": vmlib.SYSTEM_PATH}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sleeper = subprocess.Popen(["sleep", "600"])
    out = {"idle": [], "hot": []}
    try:
        vmlib.wait_until("the timed helper", lambda: _ping(client, sock), timeout=60, interval=0.2)
        n = 0
        for i in range(reps):
            for kind in ("idle", "hot"):
                mover = None
                if kind == "hot":
                    mover = subprocess.Popen([sys.executable, "-c", MOVER, a, b, str(sleeper.pid)])
                    time.sleep(0.05)
                n += 1
                fresh = os.path.join(base, f"run{n}")
                os.mkdir(fresh)
                before = _lines(log)
                time.sleep(IDLE)
                try:
                    subprocess.run(["pamtester", service, USER, "open_session", "close_session"], check=True,
                                   capture_output=True, cwd="/", preexec_fn=lambda: _enter(fresh))
                finally:
                    if mover:
                        mover.kill()
                        mover.wait()
                new = _lines(log)[len(before):]
                if len(new) == 1:           # one move per login: the helper placed pamtester
                    out[kind].append(float(new[0]))
    finally:
        sleeper.kill()
        sleeper.wait()
        helper.terminate()
        helper.wait(30)
        os.unlink(f"/etc/pam.d/{service}")
        for here, _, _ in sorted(os.walk(base), key=lambda t: -t[0].count("/")):
            vmlib.wait_until(f"rmdir {here}", lambda: _rmdir(here), timeout=10, interval=0.1)
        shutil.rmtree(work, ignore_errors=True)
    return out


def _ping(client, sock):
    try:
        return client.request({"op": "ping"}, sock, timeout=5).get("ok")
    except client.HelperError:
        return False


def _lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def _enter(path):
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    t_start = time.monotonic()
    state = favordynmods()

    samples, placed, gaps = ssh_rounds(args.rounds, args.warmup)
    ssh = {v: summary(s) for v, s in samples.items()}
    m = {v: ssh[v]["median_ms"] for v in ssh}
    mig = migrations(args.reps)
    writes = helper_writes(args.reps)

    result = {
        "id": "P1-VM", "kernel": platform.release(), "cgroup2_favordynmods": state,
        "machine": "test VM (qemu TCG, 2 vCPU): absolute times are emulated",
        "ssh": ssh, "placed_cgroup": placed, "rounds": args.rounds, "warmup_rounds": args.warmup,
        "ratio_so": round(m["so"] / m["none"], 3), "ratio_py": round(m["py"] / m["none"], 3),
        "paired_added_ms": {v: med([x - y for x, y in zip(samples[v], samples["none"])]) for v in ("so", "py")},
        "added_ms": {"so": round(m["so"] - m["none"], 1), "py": round(m["py"] - m["none"], 1)},
        "migration_ms": {"after_idle": summary(mig["after_idle"]),
                         "second_after_gap": {str(g): summary(s) for g, s in mig["second"].items()}},
        "helper_write_ms": {k: summary(v) if v else None for k, v in writes.items()},
        "scope_to_verdict_ms": summary(gaps) if gaps else None,
        "seconds": round(time.monotonic() - t_start, 1),
    }
    ok_where = {v: placed[v].endswith(f"/vrf/{VRF}") == (v != "none") for v in placed}
    text = [
        f"P1-VM `ssh {USER}@127.0.0.1 true` end to end (sshd + pam_systemd + ...), {args.rounds} interleaved "
        f"rounds after {args.warmup} warm-up; kernel {platform.release()}, cgroup2 favordynmods {state}; "
        f"qemu TCG (emulated CPU)",
        f"  {'stack':<34} {'median':>9} {'p10':>9} {'p90':>9} {'added':>9} {'ratio':>7} {'paired':>9}",
    ]
    for v, label in (("none", "without pam-vrf"), ("so", "pam_vrf.so (the profile)"),
                     ("py", "pam_python entry")):
        st = ssh[v]
        added = f"{m[v] - m['none']:7.1f}ms" if v != "none" else ""
        ratio = f"{m[v] / m['none']:6.3f}x" if v != "none" else ""
        paired = f"{result['paired_added_ms'][v]:7.1f}ms" if v != "none" else ""
        text.append(f"  {label:<34} {st['median_ms']:7.1f}ms {st['p10_ms']:7.1f}ms {st['p90_ms']:7.1f}ms "
                    f"{added:>9} {ratio:>7} {paired:>9}")
    text.append(f"  (added: median - median without; paired: median of per-round differences, same round); "
                f"placed: {'as expected (none: no /vrf; so, py: …/vrf/mgmt)' if all(ok_where.values()) else placed}")
    second = mig["second"]
    text += [
        f"  cgroup move (cgroup.procs write), n={args.reps} each: after {IDLE * 1000:.0f} ms idle "
        f"{med(mig['after_idle']):.2f} ms; a second move D ms after a first: "
        + ", ".join(f"D={g}: {med(second[g]):.2f}" for g in GAPS_MS) + " ms",
        f"  the helper's own cgroup.procs write in a pamtester login (caller moved ~{IDLE * 1000:.0f} ms before), "
        f"n={len(writes['idle'])}/{len(writes['hot'])}: idle system {_fmt(med(writes['idle']))} ms, with "
        f"migrations every ~5 ms in the background (no grace-period wait) {_fmt(med(writes['hot']))} ms",
        f"  in the placed logins above: systemd's session-N.scope start (pam_systemd's move) to the helper's "
        f"verdict (after its move): median {med(gaps) if gaps else float('nan'):.1f} ms, min "
        f"{min(gaps) if gaps else float('nan'):.1f} ms (n={len(gaps)})",
    ]
    vmlib.write_results(args.out, "p1", result, text)
    return 0 if all(ok_where.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
