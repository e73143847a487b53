"""P1 — login cost.

A  pamtester open_session+close_session through a PAM service whose last
   session line is a trivial pam_python module (returns PAM_SUCCESS);
B  the same through a service with the installed pam-vrf hook, which
   places the session (helper up as a non-root user with ambient caps,
   veth `plain` target in a netns).
Runs alternate A B, B A, ...; the figure is the median of the per-pair
ratios B/A. pamtester runs inside the netns (nsenter --net, so /sys and
the cgroup2 mount stay visible) and starts in a sandbox cgroup.

The hook's own work is measured twice, from inside the process:
  * a pam_python module that imports pam_vrf.session and times
    session.open_session with perf_counter_ns (one pamtester per sample);
  * session.open_session called directly from Debian's python3, placing
    a sleeping child each time, with a phase breakdown and a cProfile.
Plus `python3 -X importtime -c 'import pam_vrf.session'`, summarised.
"""

import json
import os
import re
import subprocess
import textwrap
import time

from bench_common import PY, HOOK, Helper, add_user, join_cgroup, median, paired_ratio, say, sh

TRIVIAL = textwrap.dedent("""\
    # bench: a pam_python module that does nothing
    def pam_sm_open_session(pamh, flags, argv):
        return pamh.PAM_SUCCESS

    def pam_sm_close_session(pamh, flags, argv):
        return pamh.PAM_SUCCESS
""")

# argv: [file, OUT, hook args...]; appends "import_ns open_ns verdict cgroup" per session.
TIMED = textwrap.dedent("""\
    # bench: the pam-vrf hook, timed from inside the PAM process
    import os
    import time

    def pam_sm_open_session(pamh, flags, argv):
        t0 = time.perf_counter_ns()
        from pam_vrf import session
        t1 = time.perf_counter_ns()
        options = session.parse_options(argv[2:])
        verdict = session.open_session(pamh.user, pamh.service, os.getpid(), options)
        t2 = time.perf_counter_ns()
        with open("/proc/self/cgroup") as f:
            where = f.read().strip().split("::")[-1]
        with open(argv[1], "a") as f:
            f.write(f"{t1 - t0} {t2 - t1} {int(verdict == session.PROCEED)} {where}\\n")
        return pamh.PAM_SUCCESS if verdict == session.PROCEED else pamh.PAM_SESSION_ERR

    def pam_sm_close_session(pamh, flags, argv):
        return pamh.PAM_SUCCESS
""")

# Run by Debian's python3 inside the netns and a sandbox cgroup, as root.
DIRECT = textwrap.dedent("""\
    import cProfile, io, json, os, pstats, subprocess, sys, time
    from pam_vrf import session, policy, cgroup, client, protocol
    from pam_vrf.log import Logger
    user, service, config, sock, target, n, gap = sys.argv[1:8]
    n, gap = int(n), float(gap)     # gap: logins do not come back to back
    options = session.parse_options([f"config={config}", f"socket={sock}"])

    def child():
        return subprocess.Popen(["sleep", "60"])

    def done(p):
        p.kill(); p.wait()

    total, placed = [], 0
    for i in range(n):
        p = child()
        time.sleep(gap)
        t0 = time.perf_counter_ns()
        verdict = session.open_session(user, service, p.pid, options)
        t1 = time.perf_counter_ns()
        total.append(t1 - t0)
        placed += cgroup.identify(p.pid) == target
        done(p)

    # The same steps one by one (public functions of the library).
    phases = {k: [] for k in ("load", "decide", "cgroup path+mkdir", "helper attach", "move", "syslog")}
    ping = []
    for i in range(n):
        p = child()
        time.sleep(gap)
        ns = time.perf_counter_ns
        t = [ns()]
        rules = policy.load(config); t.append(ns())
        rule = policy.decide(rules, user, service); t.append(ns())
        where = cgroup.vrf_cgroup(rule.target, p.pid)
        path = cgroup.fs_path(where, cgroup.mount_point(create=True))
        cgroup.ensure(path); t.append(ns())
        client.call({"op": "attach", "cgroup": where, "vrf": rule.target,
                     "rule": protocol.rule_fields(rule)}, sock); t.append(ns())
        cgroup.move(p.pid, path); t.append(ns())
        Logger("pam_vrf").info(f"bench: user {user} placed in VRF {rule.target}"); t.append(ns())
        for k, a, b in zip(phases, t, t[1:]):
            phases[k].append(b - a)
        done(p)
        t0 = ns(); client.call({"op": "ping"}, sock); ping.append(ns() - t0)

    prof = cProfile.Profile()
    kids = [child() for _ in range(n)]
    prof.enable()
    for p in kids:
        session.open_session(user, service, p.pid, options)
    prof.disable()
    for p in kids:
        done(p)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    print(json.dumps({"total": total, "placed": placed, "phases": phases, "ping": ping,
                      "profile": out.getvalue(), "profiled": n}))
""")


# A long-lived launcher, started once with nsenter --net into the lab's netns
# and once moved into the base cgroup: pamtester runs it starts inherit both,
# so no run pays a cgroup migration or an extra exec that is not the login's.
# Reads "SERVICE USER" lines, answers the wall time of one pamtester run in ns.
LAUNCHER = textwrap.dedent("""\
    import os, subprocess, sys, time
    for line in sys.stdin:
        service, user = line.split()
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
        self.proc = subprocess.Popen(lab.nsenter([PY, "-c", LAUNCHER]), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd="/",
                                     preexec_fn=join_cgroup(cgroup_dir))
        lab.run.defer(self.close)

    def login(self, service, user):
        """Seconds one pamtester open_session+close_session took."""
        self.proc.stdin.write(f"{service} {user}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"pamtester {service} {user}: {answer or 'launcher died'}")
        return int(answer) / 1e9

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# How long writing cgroup.procs takes after the hierarchy was quiet for a while:
# without the cgroup2 `favordynmods` option the kernel waits for an RCU grace period
# (percpu_down_write on cgroup_threadgroup_rwsem) unless another move just happened.
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


def cgroup_favordynmods():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            if fields[dash + 1] == "cgroup2":
                return "favordynmods" in fields[dash + 3].split(",")
    return None


def move_cost(lab, gaps=(0.0, 0.05), n=12):
    a, b = lab.cgroup("p1move", "a"), lab.cgroup("p1move", "b")
    out = {}
    for gap in gaps:
        res = json.loads(sh(PY, "-c", MOVE_PROBE, a, b, gap, n, cwd="/").stdout)
        out[gap] = res[1:]
    return out


def importtime(runs=7):
    """Summarise `python3 -X importtime -c 'import pam_vrf.session'` (the run
    with the median total)."""
    results = []
    for _ in range(runs):
        err = sh(PY, "-X", "importtime", "-c", "import pam_vrf.session", cwd="/").stderr
        rows = []
        for line in err.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if m:
                rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
        top = [r for r in rows if r[3] == "pam_vrf.session"]
        if top:
            results.append((top[-1][1], rows))
    results.sort(key=lambda r: r[0])
    total, rows = results[len(results) // 2]
    # Rows come out children first; the session import is the last depth-0 row,
    # everything it pulled in is listed after site's rows.
    start = max(i for i, r in enumerate(rows) if r[3] == "site" and r[2] == 0) + 1
    mine = rows[start:]
    own = [r for r in mine if r[3].startswith("pam_vrf")]
    stdlib = [r for r in mine if not r[3].startswith("pam_vrf")]
    # Who pulls in what: each row's parent is the next row one level up.
    pulls = {}
    for i, (self_us, cum_us, depth, name) in enumerate(mine):
        parent = next((r[3] for r in mine[i + 1:] if r[2] == depth - 1), None)
        if parent and parent.startswith("pam_vrf") and not name.startswith("pam_vrf"):
            pulls.setdefault(parent, []).append((name, cum_us))
    return {
        "pulls": pulls,
        "total_us": total,
        "runs_us": [r[0] for r in results],
        "own_us": sum(r[0] for r in own),
        "stdlib_us": sum(r[0] for r in stdlib),
        "top_self": sorted(mine, key=lambda r: -r[0])[:10],
        "heavy_cumulative": [r for r in sorted(mine, key=lambda r: -r[1]) if r[1] >= 300][:12],
        "modules": [r[3] for r in mine],
    }


def bench(lab, rounds=60, timed_runs=40, direct_runs=40):
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
    trivial = lab.write("p1_trivial.py", TRIVIAL)
    timed = lab.write("p1_timed.py", TIMED)
    out_file = os.path.join(run.dir, "p1-timed.txt")
    hook_args = f"config={config} socket={helper.socket}"
    svc_a = lab.pam_service("a", f"session [success=ok session_err=bad default=ignore] pam_python.so {trivial}")
    svc_b = lab.pam_service("b", f"session [success=ok session_err=bad default=ignore] pam_python.so {HOOK} {hook_args}")
    svc_t = lab.pam_service("t", f"session [success=ok session_err=bad default=ignore] pam_python.so {timed} "
                                 f"{out_file} {hook_args}")
    alone = lab.write("p1-alone.conf", "# bench P1: everyone left alone\nroot  -\n*  -\n")
    svc_l = lab.pam_service("l", f"session [success=ok session_err=bad default=ignore] pam_python.so {HOOK} "
                                 f"config={alone} socket={helper.socket}")
    launcher = Launcher(lab, lab.cgroup("p1"))
    services = {"A": svc_a, "B": svc_b, "L": svc_l}

    say(f"P1: pamtester, {rounds} interleaved rounds: A trivial pam_python module, "
        "B pam-vrf hook placing the session, L pam-vrf hook leaving the user alone")
    mark = helper.mark()
    for name in ("A", "B", "L", "A", "B", "L"):                     # warm-up
        launcher.login(services[name], user.pw_name)
    samples = {"A": [], "B": [], "L": []}
    orders = [("A", "B", "L"), ("B", "L", "A"), ("L", "A", "B"), ("A", "L", "B"), ("B", "A", "L"), ("L", "B", "A")]
    for r in range(rounds):
        for name in orders[r % len(orders)]:
            samples[name].append(launcher.login(services[name], user.pw_name))
    attached = helper.count("attached program", mark)
    ratio = paired_ratio(samples, "B", "A")

    say(f"P1: hook timed from inside pam_python, {timed_runs} logins")
    for _ in range(timed_runs + 2):
        launcher.login(svc_t, user.pw_name)
        time.sleep(0.03)            # logins do not come back to back
    rows = [line.split() for line in open(out_file)][2:]
    timed_import = [int(r[0]) / 1e6 for r in rows]
    timed_open = [int(r[1]) / 1e6 for r in rows]
    timed_placed = sum(1 for r in rows if r[3].endswith(f"/vrf/{tgt}"))

    say(f"P1: session.open_session called directly, {direct_runs} placements of a sleeping child")
    direct_dir = lab.cgroup("p1d")
    proc = subprocess.run(lab.nsenter([PY, "-c", DIRECT, user.pw_name, "sshd", config, helper.socket,
                                       tgt, str(direct_runs), "0.03"]),
                          capture_output=True, text=True, cwd="/", preexec_fn=join_cgroup(direct_dir),
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"direct P1 run failed:\n{proc.stderr}")
    direct = json.loads(proc.stdout)

    helper.stop()           # its link watch must not add work to P5's re-link
    say("P1: cgroup move cost (back to back, and after 50 ms idle)")
    moves = move_cost(lab)
    say("P1: import-time profile of pam_vrf.session")
    imports = importtime()

    return {
        "pamtester": {k: [v * 1e3 for v in vals] for k, vals in samples.items()},
        "ratio": ratio,
        "ratio_of_medians": median(samples["B"]) / median(samples["A"]),
        "ratio_alone": paired_ratio(samples, "L", "A"),
        "moves": moves, "favordynmods": cgroup_favordynmods(),
        "hook_runs": 2 + rounds, "attached_lines": attached,
        "timed": {"import_ms": timed_import, "open_ms": timed_open, "placed": timed_placed,
                  "runs": len(rows)},
        "direct": {"open_ms": [v / 1e6 for v in direct["total"]], "placed": direct["placed"],
                   "runs": len(direct["total"]),
                   "phases_ms": {k: median(v) / 1e6 for k, v in direct["phases"].items()},
                   "ping_ms": median(direct["ping"]) / 1e6,
                   "profile": direct["profile"], "profiled": direct["profiled"]},
        "imports": imports,
    }
