#!/usr/bin/python3
"""pam-vrf benchmarks (`make bench`): prints a table of goals and measured
figures and writes the same to bench/results.md, with the date, the
machine and the kernel's cgroup state. Run as root with Debian's
/usr/bin/python3.

    bench/run.py [--quick] [--only P1,P1C,P3,P4,FLOOD,FREEZE,P5] [--no-install] [--syslog-sink]

Comparisons are ratios measured side by side in one run, in interleaved
rounds (every round runs each variant once, in a shuffled order),
reported as the median of the per-round ratios with a bootstrap 95 %
interval. Everything the bench creates is named after a random tag and
removed at the end, also on failure, Ctrl-C or SIGTERM; leftovers of a run
killed with SIGKILL are swept by the next run.

The bench never changes the cgroup2 mount options: figures that involve
a cgroup move depend on whether `favordynmods` is on, and the header says
which state this host was in.
"""

import argparse
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True      # no __pycache__ in the checkout

import bench_common as common  # noqa: E402
from bench_common import median, percentile, say, sh  # noqa: E402

GOALS = {
    "P1": 1.10,          # login with the pam_python entry placing / trivial module moving itself
    "P1C": 1.20,         # login with pam_vrf.so placing / a C module moving itself, back to back
    "P3": 1.05,          # socket() in a placed process / unplaced
    "P4": 2.0,           # ms of helper-side decision per open
    "P5relink": 1.0,     # s until every session cgroup carries the new ifindex
    "P5mem": 60.0,       # MB resident
    "P5flat": 1.20,      # open latency at N sessions / at the first ones
}


class Table:
    def __init__(self):
        self.rows = []
        self.missed = []

    def add(self, gid, what, goal, value, unit="", fmt="{:.3g}", note="", shown=None, goal_text=None):
        """A row; goal None = reported without a goal. `shown` overrides the value's text."""
        if shown is None:
            shown = "-" if value is None else fmt.format(value) + unit
        if goal is None:
            verdict = "info"
        elif value is None:
            verdict = "**not measured**"
            self.missed.append(f"{gid} {what}: not measured")
        elif value <= goal:
            verdict = "met"
        else:
            if unit == "x":
                by = f"{(value - 1) * 100:.0f}% overhead, {(goal - 1) * 100:.0f}% allowed"
            else:
                by = (f"{value / goal:.1f}x the goal" if value >= 2 * goal
                      else f"{(value / goal - 1) * 100:.0f}% over the goal")
            verdict = f"**missed** ({by})"
            self.missed.append(f"{gid} {what}: {shown} vs goal {goal_text or fmt.format(goal) + unit}")
        if goal_text is None:
            goal_text = "-" if goal is None else f"≤ {fmt.format(goal)}{unit}"
        self.rows.append((gid, what, goal_text, shown, verdict, note))

    def fail(self, gid, message):
        self.rows.append((gid, "(benchmark failed)", "-", "-", "**failed**", message))
        self.missed.append(f"{gid}: benchmark failed: {message}")

    def markdown(self):
        head = ("id", "measure", "goal", "measured", "verdict", "notes")
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for row in self.rows:
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in row) + " |")
        return "\n".join(lines)


def fmt_ms(values):
    return (f"median {median(values):.2f} ms (p99 {percentile(values, 99):.2f}, min {min(values):.2f}, "
            f"max {max(values):.2f}, n={len(values)})")


def _ci(r):
    lo, hi = r["ci"]
    return f"95% CI {lo:.3f}–{hi:.3f}"


def p1c_rows(t, runs, details):
    """bench_login_c: back to back (the goal's regime), and after a quiet spell."""
    for r in runs:
        quiet = f"{r['gap'] * 1000:.0f} ms of quiet before each login" if r["gap"] else "back to back"
        ms = ", ".join(f"{k} {v:.2f}" for k, v in r["ms"].items())
        t.add("P1C", f"login (pamtester open+close), {quiet}: pam_vrf.so placing / a C module moving itself "
              "into a fixed cgroup (bench_login_c)", GOALS["P1C"] if not r["gap"] else None,
              r["C/K"]["median"], "x", fmt="{:.3f}",
              note=f"{_ci(r['C/K'])}; medians (ms) {ms}; the helper's own work (C-K)-(E-P) "
                   f"{r['helper_work_ms']:.2f} ms, any helper process (E-P) {r['E/P']['diff_ms']:.2f} ms; "
                   f"{r['rounds']} rounds")
    details.append("\n### P1C (bench_login_c)\n")
    for r in runs:
        details.append(f"- gap {r['gap']} s: " + ", ".join(
            f"{k} {r[k]['median']:.3f}x ({_ci(r[k])}, {r[k]['diff_ms']:+.2f} ms)"
            for k in ("C/K", "C/P", "K/P", "E/P", "H/K")) + f"; helper CPU per placing open "
            f"{r['helper_cpu_ms_per_open']:.3f} ms; placed {r['placed_lines']} of {r['placing_runs']}")


def p1_rows(t, r, details):
    s = r["samples"]
    n = len(s["H"])
    m = {k: median(v) for k, v in s.items()}
    hm, ht, cp, cm = r["H/M"], r["H/T"], r["C/P"], r["C/M"]
    t.add("P1", "login (pamtester open+close): pam_python entry placing / trivial pam_python module "
          "moving itself into a fixed cgroup", GOALS["P1"], hm["median"], "x", fmt="{:.3f}",
          note=f"median of {n} per-round ratios, {_ci(hm)}; medians {m['M']:.1f} → {m['H']:.1f} ms "
               f"(+{hm['diff_ms']:.2f} ms paired)")
    t.add("P1", "same: pam_python entry placing / trivial pam_python module (no move)", None,
          ht["median"], "x", fmt="{:.3f}",
          note=f"{_ci(ht)}; {m['T']:.1f} → {m['H']:.1f} ms (+{ht['diff_ms']:.2f} ms)")
    t.add("P1", "same: pam_vrf.so placing / pam_permit.so-only stack", None, cp["median"], "x", fmt="{:.3f}",
          note=f"{_ci(cp)}; {m['P']:.2f} → {m['C']:.2f} ms (+{cp['diff_ms']:.2f} ms)")
    t.add("P1", "same: pam_vrf.so placing / trivial pam_python module moving itself", None, cm["median"], "x",
          fmt="{:.3f}", note=f"{_ci(cm)}; {m['M']:.1f} → {m['C']:.2f} ms")
    mv = r["moves"]
    idle = max(k for k in mv)
    t.add("P1", f"kernel: one cgroup move (write cgroup.procs) after {idle * 1000:.0f} ms without moves", None,
          median(mv[idle]), " ms", note=f"max {max(mv[idle]):.2f} ms; back to back: median {median(mv[0.0]):.3f} ms")
    tm = r["timed"]
    t.add("P1", "pam_python entry's own work inside pam_python (import + session.hook: the helper's round trip, "
          "its decision and the move, with the kernel's wait)",
          None, median(tm["import_ms"]) + median(tm["hook_ms"]), " ms",
          note=f"import {median(tm['import_ms']):.2f} ms + hook {median(tm['hook_ms']):.2f} ms; "
               f"{tm['placed']}/{tm['runs']} placed; the helper's CPU per placing login "
               f"{r['helper_ms_per_open']:.2f} ms")
    im = r["imports"]
    t.add("P1", f"`python3 -X importtime -c 'import {im['what']}'`", None, im["total_us"] / 1000, " ms",
          note=f"pam_vrf modules {im['own_us'] / 1000:.2f} ms, stdlib {im['stdlib_us'] / 1000:.2f} ms (self times)")

    details.append("## P1 login\n")
    details.append(f"{r['rounds']} rounds, each of T M H C P once in a shuffled order, {r['gap'] * 1000:.0f} ms "
                   "before every login. pamtester open_session+close_session wall time:\n")
    import bench_login
    for k, label in bench_login.VARIANTS.items():
        details.append(f"- {k} ({label}): {fmt_ms(s[k])}")
    details.append(f"- M/T (what moving costs a pam_python module): {r['M/T']['median']:.3f}x, "
                   f"+{r['M/T']['diff_ms']:.2f} ms")
    details.append(f"- helper 'placed' lines during the run: {r['placed_lines']} for {r['placing_runs']} "
                   "H and C logins (each must have asked the helper and been placed)")
    details.append(f"- inside pam_python: import {fmt_ms(tm['import_ms'])}; session.hook {fmt_ms(tm['hook_ms'])}")
    details.append(f"- the helper's CPU time per placing login (H and C; /proc/PID/schedstat over the rounds): "
                   f"{r['helper_ms_per_open']:.2f} ms")
    details.append("- cgroup moves (ms), back to back: " + " ".join(f"{x:.3f}" for x in mv[0.0])
                   + f"; after {idle * 1000:.0f} ms idle: " + " ".join(f"{x:.2f}" for x in mv[idle]))
    details.append(f"\nimport-time profile (`-X importtime`, run with the median total of {len(im['runs_us'])}: "
                   f"{', '.join(f'{x / 1000:.1f}' for x in im['runs_us'])} ms); top self times: "
                   + ", ".join(f"{n_} {s_ / 1000:.2f} ms" for s_, c, d_, n_ in im["top_self"]))
    details.append("\nmodules imported beyond what the interpreter already has: " + " ".join(im["modules"]))
    details.append("")


def _trim_profile(text):
    lines = [l for l in text.splitlines() if l.strip()]
    start = next((i for i, l in enumerate(lines) if "ncalls" in l), 0)
    return "\n".join(lines[max(0, start - 2):])


def p3_rows(t, r, details):
    details.append("## P3 socket()\n")
    details.append(f"deny items of the deny5 program: `{r['deny5']}`\n")
    for kind in ("C", "Python"):
        k = r[kind]
        ns = k["ns_per_op"]
        base = (f"{kind}: none {ns['none']:.0f} ns, bind {ns['bind']:.0f} ns, plain {ns['plain']:.0f} ns, "
                f"deny5 {ns['deny5']:.0f} ns per create+close")
        t.add("P3", f"socket()+close(), {kind} loop: placed (bind + egress programs) / unplaced", GOALS["P3"],
              k["ratio_plain"], "x", fmt="{:.3f}", note=f"{k['rounds']} rounds x {k['iters']}; {base}")
        t.add("P3", f"socket()+close(), {kind} loop: placed with 5 deny items / unplaced", GOALS["P3"],
              k["ratio_deny5"], "x", fmt="{:.3f}")
        details.append(f"- {base}; checks {k['checks']}")
        for name, vals in k["samples"].items():
            details.append(f"  - {name}: " + " ".join(f"{v:.0f}" for v in vals))
    u = r["UDP"]
    ns = u["ns_per_op"]
    base = f"none {ns['none']:.0f} ns, bind only {ns['bind']:.0f} ns, bind + egress {ns['plain']:.0f} ns per datagram"
    t.add("P3", "UDP send loop, C: placed (bind + egress programs) / unplaced", GOALS["P3"],
          u["ratio_plain"], "x", fmt="{:.3f}", note=f"{u['rounds']} rounds x {u['iters']}; {base}")
    t.add("P3", "UDP send loop, C: bind + egress / bind only (the egress program alone)", GOALS["P3"],
          u["ratio_egress"], "x", fmt="{:.3f}")
    details.append(f"- UDP: {base}")
    for name, vals in u["samples"].items():
        details.append(f"  - {name}: " + " ".join(f"{v:.0f}" for v in vals))
    details.append("")


def p4_rows(t, r, details):
    for variant, label in (("known", "10 000 rules, user in 1 000 groups, match on the last line"),
                           ("unknown", "same, 3 333 lines name 1 000 groups NSS does not know")):
        v = r[variant]
        t.add("P4", f"helper-side decision per `open` (PolicyCache.rules() stat + account + decide + uid) — {label}",
              GOALS["P4"], median(v["decision_ms"]), " ms",
              note=f"wall clock; CPU time {median(v['cpu_ms']):.2f} ms; parts: stat {median(v['stat_ms']):.3f} ms, "
                   f"account {median(v['account_ms']):.2f} ms, decide {median(v['decide_ms']):.2f} ms; "
                   f"first after parse {v['first_ms']:.2f} ms")
    rt = r["round_trip"]
    big, small = median(rt["ms"]["big"]), median(rt["ms"]["small"])
    lo, hi = rt["diff_ci"]
    t.add("P4", "`open` round trip through the helper (decide + attach check + move), 10 000-rule policy", None,
          big, " ms", note=f"1-rule policy side by side: {small:.2f} ms; paired difference {rt['diff_ms']:.2f} ms "
                           f"(95% CI {lo:.2f}–{hi:.2f}), n={len(rt['ms']['big'])}")
    t.add("P4", "parse of the 10 000-rule file (once per change of vrf.conf)", None, r["known"]["parse_ms"], " ms")
    details.append("## P4 policy\n")
    details.append(f"- NSS (files backend, private copies of /etc/passwd and /etc/group): {r['groups']} gids for "
                   f"the user; the group file had {r['etc_group_lines']} lines")
    for variant in ("known", "unknown"):
        v = r[variant]
        details.append(f"- {variant}: decision {fmt_ms(v['decision_ms'])}; its CPU time {fmt_ms(v['cpu_ms'])}; "
                       f"decide alone {fmt_ms(v['decide_ms'])}; "
                       f"account {fmt_ms(v['account_ms'])}; rules() {fmt_ms(v['stat_ms'])}; parse {v['parse_ms']:.1f} ms")
    details.append(f"- open round trip: 10 000 rules {fmt_ms(rt['ms']['big'])}; 1 rule {fmt_ms(rt['ms']['small'])}")
    for variant in ("known", "unknown"):
        details.append(f"\ncProfile of one helper-side decision ({variant} groups):\n")
        details.append("```\n" + _trim_profile(r[variant]["profile"]) + "\n```")
    details.append("")


def freeze_rows(t, r, details):
    shown = lambda d: f"{d['p50']:.1f} / {d['p99']:.1f} / {d['max']:.1f} ms"  # noqa: E731
    for cond, label in (("quiet", "no attack"),
                        ("attack", "while one user floods the public socket with lingering descriptors "
                                   "(16 x 253, the first a TCP socket with SO_LINGER and unsent data)")):
        d = r[cond]
        t.add("FREEZE", f"root `open` on root.sock, {r['clients']} concurrent clients: p50 / p99 / max, {label}",
              None, d["p50"], shown=shown(d),
              note=f"n={d['n']}, {d['placed']} placed; helper fds max {d['max_fds']}, "
                   f"threads max {d['max_threads']}, CPU {d['helper_cpu'] * 100:.0f}%")
    details.append("## Freeze (descriptor flood)\n")
    import bench_freeze
    details.append(bench_freeze.table(r) + "\n")


def flood_rows(t, r, details):
    q = r["quiet"]
    shown = lambda d: f"{d['p50']:.1f} / {d['p99']:.1f} / {d['max']:.1f} ms"  # noqa: E731
    t.add("FLOOD", f"root `open` on root.sock, {r['clients']} concurrent clients: p50 / p99 / max, no flood",
          None, q["p50"], shown=shown(q),
          note=f"n={q['n']}, {q['placed']} placed; helper on a CPU {q['helper_cpu'] * 100:.0f}% of the time, "
               f"waiting for one {q['helper_wait'] * 100:.0f}%")
    labels = {"flood": "same, while 32 processes of an unprivileged user flood the public socket "
                       "(churn, held connections, garbage, `place`)",
              "confined": "same flood, the flooding user's processes in a CPU cgroup of their own "
                          "(as systemd's user-UID.slice)"}
    for cond in r["conditions"][1:]:
        f = r[cond]
        t.add("FLOOD", labels[cond], None, f["p50"], shown=shown(f),
              note=f"n={f['n']}, {f['placed']} placed; p50 {f['p50'] / q['p50']:.1f}x, p99 {f['p99'] / q['p99']:.1f}x "
                   f"the quiet figures; helper on a CPU {f['helper_cpu'] * 100:.0f}% of the time, "
                   f"waiting for one {f['helper_wait'] * 100:.0f}%")
    details.append("## Flood\n")
    details.append(f"{r['phases']} rounds of the conditions {', '.join(r['conditions'])} in shuffled order, "
                   f"{r['bursts']} bursts of {r['clients']} simultaneous root opens in each; flooders {r['flooders']}; "
                   "policy: 10 000 decoy lines, then the rules that apply")
    for cond in r["conditions"]:
        d = r[cond]
        details.append(f"- {cond}: p50 {d['p50']:.1f} ms, p99 {d['p99']:.1f} ms, max {d['max']:.1f} ms, n={d['n']}, "
                       f"{d['placed']} placed (others: {d['not_placed'] or 'none'}); helper on a CPU "
                       f"{d['helper_cpu'] * 100:.0f}% and runnable but waiting for a CPU {d['helper_wait'] * 100:.0f}% "
                       "of the time (/proc/PID/schedstat)")
        if d["flood_counts"]:
            details.append("  - what the flood got (connects = connect() calls that succeeded; errors = connect() "
                           f"refused, mostly EAGAIN with the listen backlog full): {d['flood_counts']}")
    details.append(f"- helper 'refusing a connection' log lines (at most one a second): {r['busy_log_lines']}")
    details.append(f"- helper memory after flood phases (kB): {[m['VmHWM'] for m in r['mem']]} (VmHWM)")
    details.append("")


def p5_rows(t, r, prof, details):
    n = r["sessions"]
    relinks = r["relinks"]
    times = [x["s"] for x in relinks if x["s"] is not None]
    value = median(times) if times and len(times) == len(relinks) else None
    note = "; ".join(
        (f"{x['s']:.3f} s" if x["s"] is not None else f"timeout, {x['left']} left")
        + (f" (helper's line at {x['log_s']:.3f} s)" if x["log_s"] is not None else "") for x in relinks)
    t.add("P5", f"{n} placed sessions: target device deleted + re-created → all {n} cgroups carry the new ifindex",
          GOALS["P5relink"], value, " s", note=f"median of {len(relinks)}: {note}")
    m = r["mem"][n]
    t.add("P5", f"helper VmHWM with {n} sessions", GOALS["P5mem"], m["VmHWM"] / 1024, " MB", fmt="{:.1f}",
          note=f"VmRSS {m['VmRSS'] / 1024:.1f} MB; idle {r['mem'][0]['VmHWM'] / 1024:.1f} MB; after the re-links "
               f"VmHWM {r['mem']['end']['VmHWM'] / 1024:.1f} MB")
    at = r["at"]
    first = at[r["milestones"][0]]["median"]
    last = at[r["milestones"][-1]]["median"]
    w = r["windows"]
    rate = lambda a, b, wall: (b - a + 1) / wall  # noqa: E731
    t.add("P5", "`open` latency flat from 1 to {:,} sessions (median at N / median of the first 100)".format(n)
          .replace(",", " "), GOALS["P5flat"], last / first, "x", fmt="{:.2f}",
          goal_text=f"≤ {GOALS['P5flat']:.2f}x (flat)",
          note="medians (ms) " + ", ".join(f"at {k}: {v['median']:.2f}" for k, v in at.items())
               + f"; sessions placed one after the other: {rate(*w[1][:3]):.0f}/s at first, "
                 f"{rate(*w[-1][:3]):.0f}/s for the last {w[-1][1] - w[-1][0] + 1}"
               + (f"; STOPPED at {n} of {r['wanted']} sessions (time budget)" if r["stopped"] else ""))
    t.add("P5", "`open` p99 around N sessions (the 100 ending at N; the first 100 for N=1)", None,
          at[r["milestones"][-1]]["p99"], " ms", fmt="{:.1f}",
          shown=" / ".join(f"{v['p99']:.1f}" for v in at.values()) + " ms",
          note="at N = " + " / ".join(str(k) for k in at) + f"; slowest of all {n}: {max(r['lat_ms']):.0f} ms "
               "(sessions come one at a time here, so a state flush (next row) delays only the one that "
               "arrives during it)")
    f = r["flush"]
    if f:
        t.add("P5", f"helper state flush with {f['entries']} sessions (every 0.5 s while logins arrive; "
              "no request is served meanwhile)", None, f["flush_ms"], " ms", fmt="{:.0f}",
              note=f"Attachments.flush() of the installed tree, timed here on a copy of the helper's state: "
                   f"stat() of every remembered cgroup {f['sweep_ms']:.0f} ms, state file write "
                   f"({f['bytes'] / 1e6:.1f} MB) {f['write_ms']:.0f} ms, the rest "
                   f"{max(0.0, f['flush_ms'] - f['sweep_ms'] - f['write_ms']):.0f} ms")
    details.append("## P5 helper with many sessions\n")
    details.append("How the sessions are made (bench/spawn_sessions.c): one after the other, session N is a process "
                   "born (clone3 CLONE_INTO_CGROUP) in a sandbox cgroup of its own, `<sandbox>/p5/s-N`, as a login "
                   "is born in its session-N.scope; it sends `open` for the bench's login user on root.sock with a "
                   "pidfd of itself (what pam_vrf.so sends); the helper decides (`USER TARGET plain`), moves it into "
                   "`s-N/<netns>-ns/vrf/TARGET` and attaches the program there; the process then execs a small "
                   "static sleeper and stays until the bench ends. 10 000 sessions = 10 000 processes, each in a "
                   "VRF cgroup of its own with its own attachment (40 000 cgroup directories).\n")
    if r["stopped"]:
        details.append(f"**Stopped at {r['stopped']} of {r['wanted']} sessions: placing them took longer than "
                       f"the bench's budget of {r['budget_s']:.0f} s on this host.**\n")
    details.append(f"- {n} sessions placed in {r['spawn_s']:.1f} s (one after the other); {r['members_ok']} of "
                   f"{n} session cgroups hold exactly one process")
    details.append("- `open` latency around N sessions (the 100 sessions ending at N; the first 100 for N=1): "
                   + "; ".join(f"N={k}: median {v['median']:.2f} ms, p99 {v['p99']:.2f} ms" for k, v in at.items()))
    lat = r["lat_ms"]
    details.append(f"- all {n}: {fmt_ms(lat)}")
    details.append("- by window of sessions: sessions placed per second (wall) / the helper's CPU use / mean `open` "
                   "round trip / mean clone3 in the spawner (a fork into a new cgroup: kernel time, outside the "
                   "helper): " + "; ".join(f"{a}-{b}: {(b - a + 1) / w:.0f}/s, {c / w * 100:.0f}%, {o:.1f} ms, "
                                           f"{cl:.1f} ms" for a, b, w, c, o, cl in r["windows"]))
    details.append("- helper memory (kB) at N sessions: " + "; ".join(
        f"{k}: VmHWM {v['VmHWM']}, VmRSS {v['VmRSS']}" for k, v in r["mem"].items()))
    for x in relinks:
        details.append(f"- re-link ifindex {x['old']} -> {x['new']}: `ip link add` {x['ip_link_add_s']:.3f} s, "
                       f"all done {x['s']}, after add {x['s_after_add']}, helper line: {x['log']!r} at {x['log_s']}")
    if prof:
        rl = prof["relink"]
        details.append(f"\n### helper profile (cProfile): {prof['sessions']} `open`s of new sessions "
                       f"(median {prof['open_ms']:.2f} ms under the profiler) and one re-link ({rl['s']} s)\n")
        details.append("```\n" + _trim_profile(prof["tottime"]) + "\n```\n")
        details.append("```\n" + _trim_profile(prof["cumulative"]) + "\n```")
    details.append("")


def kernel_header(ks):
    if ks["favordynmods"] is None:
        return "Kernel state: **no cgroup2 mount found**"
    state = "ON" if ks["favordynmods"] else "off"
    line = (f"Kernel state: cgroup2 at `{ks['mount']}`, **favordynmods {state}** (from /proc/self/mountinfo: "
            f"mount options `{ks['mount_options']}`, super options `{ks['super_options']}`; the bench never "
            "changes them)")
    if ks.get("favordynmods_stuck") and not ks["favordynmods"]:
        line += ("\n\n**WARNING: favordynmods WAS ON SINCE THIS HOST BOOTED** (the kernel log says its "
                 "per-threadgroup rwsem cannot be disabled): cgroup moves no longer wait for an RCU grace "
                 "period, as if it were still on, until the next boot. Figures that include a move are "
                 "lower than on a host where it never was.")
    if ks["favordynmods"]:
        line += ("\n\n**WARNING: favordynmods IS ON ON THIS HOST. Hosts normally run without it: every figure "
                 "that includes a cgroup move (P1, FLOOD, P5 latencies) is lower here than on such a host, "
                 "where a move after a quiet spell waits for an RCU grace period. It was on before the bench "
                 "started; the bench did not switch it on.**")
    return line


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, 300 sessions (a smoke run, figures are noisy)")
    ap.add_argument("--only", default="P1,P1C,P3,P4,FLOOD,FREEZE,P5")
    ap.add_argument("--no-install", action="store_true", help="do not run `make install` first")
    ap.add_argument("--syslog-sink", action="store_true",
                    help="where there is no /dev/log, listen there during the run so syslog datagrams "
                         "are delivered (off by default: a test session on the same host may be "
                         "deciding whether it owns /dev/log)")
    ap.add_argument("--out", default=os.path.join(HERE, "results.md"), help="where to write the results")
    args = ap.parse_args()
    only = set(args.only.upper().split(","))
    if os.geteuid() != 0:
        sys.exit("bench: run as root (sudo make bench)")
    if sys.executable != common.PY:
        say(f"bench: note: running on {sys.executable}, the product runs on {common.PY}")

    started = time.monotonic()
    load_before = common.host_load()
    ks = common.kernel_state()
    say(kernel_header(ks))
    common.install_signal_handlers()
    common.sweep_stale()
    run = common.Run()
    table, details = Table(), []
    dev_log = "?"
    stage_load = []         # (stage, 1-minute load average when it started)
    failures = []
    interrupted = False
    try:
        if not args.no_install:
            before = os.path.exists(common.HOOK)
            say("bench: make install")
            sh("make", "-C", common.REPO, "install")
            if not before:
                run.defer(sh, "make", "-C", common.REPO, "uninstall", check=False)
        import importlib
        importlib.invalidate_caches()
        dev_log = "socket" if os.path.exists("/dev/log") and not os.path.isfile("/dev/log") else (
            "a regular file (no syslog daemon)" if os.path.isfile("/dev/log") else "absent")
        if args.syslog_sink:
            common.SyslogSink(run)
            dev_log += ", bench sink listening" if dev_log == "absent" else ""
        lab = common.Lab(run)
        q = args.quick

        def stage(name, fn):
            if name not in only:
                return
            with open("/proc/loadavg") as f:
                stage_load.append((name, float(f.read().split()[0])))
            t0 = time.monotonic()
            try:
                fn()
            except KeyboardInterrupt:
                raise
            except Exception as e:
                failures.append(f"{name}: {type(e).__name__}: {e}")
                say(f"bench: {name} failed:\n{traceback.format_exc()}")
                table.fail(name, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
            say(f"bench: {name} took {time.monotonic() - t0:.0f} s")

        def p1():
            import bench_login
            r = bench_login.bench(lab, rounds=8 if q else 80, timed_runs=5 if q else 30)
            p1_rows(table, r, details)

        def p1c():
            import bench_login_c
            runs = [bench_login_c.bench(lab, rounds=8 if q else 60, gap=gap, tag=str(i))
                    for i, gap in enumerate((0.0, 0.05))]
            p1c_rows(table, runs, details)

        def p3():
            import bench_socket
            r = bench_socket.bench(lab, py_iters=20_000 if q else 30_000, c_iters=20_000 if q else 30_000,
                                   udp_iters=20_000 if q else 50_000, rounds=3 if q else 15)
            p3_rows(table, r, details)

        def p4():
            import bench_policy
            r = bench_policy.bench(lab, repeats=5 if q else 30, rounds=5 if q else 40)
            p4_rows(table, r, details)

        def flood():
            import bench_flood
            r = bench_flood.bench(lab, phases=2 if q else 3, bursts=2 if q else 3)
            flood_rows(table, r, details)

        def freeze():
            import bench_freeze
            r = bench_freeze.bench(lab, rounds=2 if q else 3, bursts=10 if q else 25)
            freeze_rows(table, r, details)

        def p5():
            import bench_helper
            r = bench_helper.bench(lab, sessions=300 if q else 10_000, recreations=1 if q else 3)
            prof = None
            try:
                say("P5: cProfile of a helper serving opens of new sessions, and one re-link")
                prof = bench_helper.profile(lab, sessions=50 if q else 300)
            except Exception as e:
                say(f"bench: helper profile failed: {type(e).__name__}: {e}")
            p5_rows(table, r, prof, details)

        stage("P1", p1)
        stage("P1C", p1c)
        table.rows.append(("P2", "login vs `ip vrf exec` in a pam_exec shell script (needs a real VRF)",
                           "-", "-", "measured in the VM suite (make test-vm)", ""))
        stage("P3", p3)
        stage("P4", p4)
        stage("FLOOD", flood)
        stage("FREEZE", freeze)
        stage("P5", p5)
    except KeyboardInterrupt as e:
        say(f"\nbench: interrupted ({e or 'Ctrl-C'}); cleaning up")
        interrupted = True
    finally:
        load_after = common.host_load()
        t0 = time.monotonic()
        run.close()
        say(f"bench: cleanup took {time.monotonic() - t0:.0f} s")
    if interrupted:
        return 130

    m = common.machine()
    took = time.monotonic() - started
    ks_after = common.kernel_state()
    header = (f"# pam-vrf benchmarks\n\n{time.strftime('%Y-%m-%d %H:%M:%S %Z')} — kernel {m['kernel']}, "
              f"CPU {m['cpu']}, {m['cores']} cores, Python {m['python']}; /dev/log {dev_log}; "
              f"`bench/run.py{' --quick' if args.quick else ''}` took {took:.0f} s"
              + (" (--quick: smoke run, figures noisy)" if args.quick else "") + "\n\n" + kernel_header(ks) + "\n\n"
              + "Host load (a shared machine): 1-minute load average " + ", ".join(
                  [f"{load_before[0]:.1f} at the start"] + [f"{v:.1f} before {k}" for k, v in stage_load])
              + f"; a fixed Python loop (10^6 additions) took {load_before[1]:.0f} ms at the start and "
                f"{load_after[1]:.0f} ms at the end (lower: a faster, quieter host). Ratios are measured side "
                "by side and hold up under load; absolute times do not. (The load average includes the bench's "
                "own processes: the flood's 52 and the 10 000 sessions' exit.)\n")
    if ks_after != ks:
        header += f"\n**The cgroup2 mount changed during the run** (now: {ks_after}).\n"
    md = table.markdown()
    say("\n" + header)
    say(md)
    if table.missed:
        say("\nmissed: " + "; ".join(table.missed))
    with open(args.out, "w") as f:
        f.write(header + "\n" + md + "\n")
        if table.missed:
            f.write("\nGoals missed:\n\n" + "\n".join(f"- {x}" for x in table.missed) + "\n")
        f.write("\n# Details\n\n" + "\n".join(details) + "\n")
    say(f"\n(details: {args.out})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
