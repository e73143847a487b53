"""P1 — login cost (protocol v2: the helper decides and moves the PAM caller).

pamtester open_session+close_session through five PAM services, run in
shuffled interleaved rounds (every round runs each once, in a fresh random
order; figures are medians of the per-round ratios):

  T  a trivial pam_python module (returns PAM_SUCCESS)
  M  a trivial pam_python module that moves its own process into a fixed
     cgroup (open + write cgroup.procs): the kernel work of a placement,
     done the simplest way
  H  the installed pam_python entry (/usr/lib/pam-vrf/pam_vrf.py): sends
     {user, service} with its pidfd to the helper's root.sock; the helper
     (non-root, ambient caps, in the lab netns) decides from vrf.conf and
     moves pamtester into .../vrf/TARGET (a veth `plain` target)
  C  the C module pam_vrf.so, same arguments, same helper
  P  a pam_permit.so-only stack

Goal: H/M <= 1.10. Also reported: H/T, C/P. Every login waits `gap`
seconds first (logins do not come back to back: each move meets the
kernel after a quiet spell, as in production). pamtester runs inside the
netns (nsenter --net: /sys and the cgroup2 mount stay visible), started
from a launcher in a sandbox cgroup, so every H/C/M login is one move.
The helper's "placed" lines are counted: each H and C login must have one.

Also: the hook timed from inside pam_python (import + session.hook), the
kernel's cgroup-move wait (after 100 ms idle and back to back) and
`python3 -X importtime` of what the hook imports.
"""

import json
import os
import re
import subprocess
import textwrap

from bench_common import (PY, HOOK, Helper, add_user, bootstrap_ci, join_cgroup, median, say, sh,
                          shuffled_rounds)
from testlab import progs  # noqa: E402,I100  (bench_common puts the repository on sys.path)

PAM_SO = "pam_vrf.so"

TRIVIAL = textwrap.dedent("""\
    # bench: a pam_python module that does nothing
    def pam_sm_open_session(pamh, flags, argv):
        return pamh.PAM_SUCCESS

    def pam_sm_close_session(pamh, flags, argv):
        return pamh.PAM_SUCCESS
""")

# argv[1]: the cgroup directory to move into.
MOVER = textwrap.dedent("""\
    # bench: a pam_python module that moves its own process into a fixed cgroup
    import os

    def pam_sm_open_session(pamh, flags, argv):
        with open(argv[1] + "/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        return pamh.PAM_SUCCESS

    def pam_sm_close_session(pamh, flags, argv):
        return pamh.PAM_SUCCESS
""")

# argv: [file, OUT, hook args...]; appends "import_ns hook_ns verdict cgroup" per session.
TIMED = progs.source("bench_timed_login")

# A long-lived launcher, started once with nsenter --net into the lab's netns
# and once moved into the base cgroup: pamtester runs it starts inherit both,
# so no run pays a cgroup migration or an exec that is not the login's.
# Reads "SERVICE USER GAP" lines: sleeps GAP s, then answers the wall time
# of one pamtester run in ns.
LAUNCHER = textwrap.dedent("""\
    import os, subprocess, sys, time
    for line in sys.stdin:
        service, user, gap = line.split()
        time.sleep(float(gap))
        t0 = time.perf_counter_ns()
        p = subprocess.run(["pamtester", service, user, "open_session", "close_session"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        took = time.perf_counter_ns() - t0
        if p.returncode:
            print("error", p.returncode, p.stderr.decode(errors="replace").replace("\\n", " "), flush=True)
        else:
            print(took, flush=True)
""")


class Launcher:
    def __init__(self, lab, cgroup_dir):
        # A system PATH: pam_python finds its stdlib through the caller's PATH.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(lab.nsenter([PY, "-c", LAUNCHER]), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd="/", env=env,
                                     preexec_fn=join_cgroup(cgroup_dir))
        lab.run.defer(self.close)

    def login(self, service, user, gap=0.0):
        """Milliseconds one pamtester open_session+close_session took."""
        self.proc.stdin.write(f"{service} {user} {gap}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"pamtester {service} {user}: {answer or 'launcher died'}")
        return int(answer) / 1e6

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# How long writing cgroup.procs takes after the hierarchy was quiet for a while:
# without the cgroup2 `favordynmods` option the kernel waits for an RCU grace
# period (percpu_down_write on cgroup_threadgroup_rwsem) unless another move
# happened just before.
MOVE_PROBE = textwrap.dedent("""\
    import json, os, subprocess, sys, time
    a, b, gap, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    p = subprocess.Popen(["sleep", "60"])
    out = []
    for i in range(n):
        time.sleep(gap)
        t0 = time.perf_counter_ns()
        with open(os.path.join(b if i % 2 else a, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        out.append((time.perf_counter_ns() - t0) / 1e6)
    p.kill(); p.wait()
    print(json.dumps(out))
""")

IDLE_GAP = 0.1


def move_cost(lab, gaps=(0.0, IDLE_GAP), n=16):
    """{gap: [ms per move]}: one process moved between two cgroups, `gap` s apart."""
    a, b = lab.cgroup("p1move", "a"), lab.cgroup("p1move", "b")
    out = {}
    for gap in gaps:
        res = json.loads(sh(PY, "-c", MOVE_PROBE, a, b, gap, n, cwd="/").stdout)
        out[gap] = res[1:]
    return out


def importtime(runs=7, what="pam_vrf.session, pam_vrf.client"):
    """Summarise `python3 -X importtime -c 'import WHAT'` (the run with the
    median total): what the pam_python entry imports on every login."""
    results = []
    for _ in range(runs):
        err = sh(PY, "-X", "importtime", "-c", f"import {what}", cwd="/").stderr
        rows = []
        for line in err.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if m:
                rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
        start = max(i for i, r in enumerate(rows) if r[3] == "site" and r[2] == 0) + 1
        mine = rows[start:]
        results.append((sum(r[1] for r in mine if r[2] == 0), mine))
    results.sort(key=lambda r: r[0])
    total, mine = results[len(results) // 2]
    own = [r for r in mine if r[3].startswith("pam_vrf")]
    stdlib = [r for r in mine if not r[3].startswith("pam_vrf")]
    return {
        "what": what,
        "total_us": total,
        "runs_us": [r[0] for r in results],
        "own_us": sum(r[0] for r in own),
        "stdlib_us": sum(r[0] for r in stdlib),
        "top_self": sorted(mine, key=lambda r: -r[0])[:10],
        "modules": [r[3] for r in mine],
    }


VARIANTS = {
    "T": "trivial pam_python module",
    "M": "trivial pam_python module moving itself into a fixed cgroup",
    "H": "pam-vrf pam_python entry, placing",
    "C": "pam_vrf.so, placing",
    "P": "pam_permit.so-only stack",
}


def bench(lab, rounds=60, timed_runs=30, gap=0.05):
    run = lab.run
    user = add_user(run, "u")
    tgt = lab.target
    config = lab.write("p1-vrf.conf", textwrap.dedent(f"""\
        # bench P1: the login user is placed by name; everyone else left alone
        root            -
        {user.pw_name}  {tgt}  plain
        *               -
    """))
    helper = Helper(lab, config).start()
    fixed = lab.cgroup("p1fixed")
    hook_args = f"config={config} socket={helper.socket}"
    line = "session [success=ok session_err=bad default=ignore]"
    services = {
        # required: a failing trivial module must fail the run, not be ignored
        "T": lab.pam_service("t", f"session required pam_python.so {lab.write('p1_trivial.py', TRIVIAL)}"),
        "M": lab.pam_service("m", f"session required pam_python.so {lab.write('p1_mover.py', MOVER)} {fixed}"),
        "H": lab.pam_service("h", f"{line} pam_python.so {HOOK} {hook_args}"),
        "C": lab.pam_service("c", f"{line} {PAM_SO} {hook_args}"),
        "P": lab.pam_service("p"),
    }
    out_file = os.path.join(run.dir, "p1-timed.txt")
    svc_timed = lab.pam_service("x", f"{line} pam_python.so {lab.write('p1_timed.py', TIMED)} {out_file} {hook_args}")
    launcher = Launcher(lab, lab.cgroup("p1"))

    say(f"P1: pamtester, {rounds} shuffled rounds of {' '.join(VARIANTS)} ({gap * 1000:.0f} ms before each login)")
    mark = helper.mark()
    placing = 0
    for name in list(VARIANTS) * 2:                 # warm-up (page cache, the helper's program load)
        launcher.login(services[name], user.pw_name, gap)
        placing += name in "HC"
    samples = {name: [] for name in VARIANTS}
    helper_cpu0, placing0 = helper.schedstat()[0], placing
    for order in shuffled_rounds(VARIANTS, rounds):
        for name in order:
            samples[name].append(launcher.login(services[name], user.pw_name, gap))
            placing += name in "HC"
    placed_lines = helper.count(f"placed in VRF {tgt}", mark)
    helper_ms_per_open = (helper.schedstat()[0] - helper_cpu0) * 1e3 / max(1, placing - placing0)

    def ratio(num, den):
        per_round = [a / b for a, b in zip(samples[num], samples[den])]
        return {"median": median(per_round), "ci": bootstrap_ci(per_round),
                "of_medians": median(samples[num]) / median(samples[den]),
                "diff_ms": median([a - b for a, b in zip(samples[num], samples[den])])}

    say(f"P1: the pam_python entry timed from inside, {timed_runs} logins")
    for _ in range(timed_runs + 2):
        launcher.login(svc_timed, user.pw_name, gap)
    rows = [r.split() for r in open(out_file)][2:]
    timed = {"import_ms": [int(r[0]) / 1e6 for r in rows], "hook_ms": [int(r[1]) / 1e6 for r in rows],
             "placed": sum(1 for r in rows if r[3].endswith(f"/vrf/{tgt}")), "runs": len(rows)}

    helper.stop()
    say(f"P1: cgroup move cost (back to back, and after {IDLE_GAP * 1000:.0f} ms idle)")
    moves = move_cost(lab)
    say("P1: import-time profile of the pam_python entry's imports")
    imports = importtime()
    return {
        "samples": samples, "rounds": rounds, "gap": gap,
        "H/M": ratio("H", "M"), "H/T": ratio("H", "T"), "C/P": ratio("C", "P"), "M/T": ratio("M", "T"),
        "C/M": ratio("C", "M"),
        "placing_runs": placing, "placed_lines": placed_lines, "helper_ms_per_open": helper_ms_per_open,
        "timed": timed, "moves": moves, "imports": imports,
    }
