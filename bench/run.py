#!/usr/bin/python3
"""pam-vrf benchmarks (`make bench`): prints a table of goals and measured
figures and writes the same to bench/results.md, with the date and the
machine. Run as root with Debian's /usr/bin/python3.

    bench/run.py [--quick] [--only P1,P3,P4,P5] [--no-install] [--syslog-sink]

Comparisons are ratios measured side by side in one run, interleaved
(A B, B A, ...), reported as the median of the per-round ratios.
Everything the bench creates is named after a random tag and removed at
the end, also on failure, Ctrl-C or SIGTERM; leftovers of a run killed
with SIGKILL are swept by the next run.
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
from bench_common import median, say, sh  # noqa: E402

GOALS = {
    "P1": 1.10,          # login with the hook / trivial pam_python module
    "P1work": 2.0,       # ms of the hook's own work
    "P3": 1.05,          # socket() in a placed process / unplaced
    "P4": 2.0,           # ms per decision
    "P5relink": 1.0,     # s until 1 000 cgroups carry the new ifindex
    "P5mem": 60.0,       # MB resident
}


class Table:
    def __init__(self):
        self.rows = []
        self.missed = []

    def add(self, gid, what, goal, value, unit="", fmt="{:.3g}", lower_is_better=True, note=""):
        """A row; goal None = reported without a goal."""
        shown = "-" if value is None else fmt.format(value) + unit
        if goal is None:
            verdict = "info"
        elif value is None:
            verdict = "**not measured**"
            self.missed.append(f"{gid} {what}: not measured")
        elif (value <= goal) == lower_is_better:
            verdict = "met"
        else:
            if unit == "x":
                by = f"{(value - 1) * 100:.0f}% overhead, {(goal - 1) * 100:.0f}% allowed"
            else:
                by = (f"{value / goal:.1f}x the goal" if value >= 2 * goal
                      else f"{(value / goal - 1) * 100:.0f}% over the goal")
            verdict = f"**missed** ({by})"
            self.missed.append(f"{gid} {what}: {shown} vs goal {fmt.format(goal)}{unit}")
        goal_text = "-" if goal is None else f"<= {fmt.format(goal)}{unit}"
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
    return f"median {median(values):.2f} ms (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def p1_rows(t, r, details):
    a, b = median(r["pamtester"]["A"]), median(r["pamtester"]["B"])
    t.add("P1", "login: pamtester open+close, pam-vrf hook / trivial pam_python module",
          GOALS["P1"], r["ratio"], "x",
          note=f"median of {len(r['pamtester']['A'])} paired ratios; medians A {a:.1f} ms, B {b:.1f} ms "
               f"(+{b - a:.1f} ms); ratio of medians {r['ratio_of_medians']:.3f}")
    t.add("P1", "login: pamtester, hook leaving the user alone (`-`) / trivial module", None, r["ratio_alone"], "x",
          note=f"median L {median(r['pamtester']['L']):.1f} ms: import + policy, no helper, no move")
    tm, d = r["timed"], r["direct"]
    t.add("P1", "hook's own work: open_session inside pam_python (decide+helper+move)",
          GOALS["P1work"], median(tm["open_ms"]), " ms",
          note=f"{tm['placed']}/{tm['runs']} sessions placed")
    t.add("P1", "hook's own work: session.open_session from python3, placing a child",
          GOALS["P1work"], median(d["open_ms"]), " ms",
          note=f"{d['placed']}/{d['runs']} children placed")
    t.add("P1", "import pam_vrf.session inside pam_python (per login)", None, median(tm["import_ms"]), " ms")
    mv = r["moves"]
    t.add("P1", "kernel: one cgroup move (write cgroup.procs) after 50 ms without moves", None,
          median(mv[0.05]), " ms",
          note=f"back to back: {median(mv[0.0]):.2f} ms; "
               + ("the kernel waits for an RCU grace period on a move after a quiet spell (no favordynmods)"
                  if median(mv[0.05]) > 1 else "no grace-period wait on this host (cgroup.procs writes take the "
                  "per-threadgroup rwsem: favordynmods is or was enabled since boot)"))
    im = r["imports"]
    t.add("P1", "`python3 -X importtime -c 'import pam_vrf.session'` total", None, im["total_us"] / 1000, " ms",
          note=f"pam_vrf modules {im['own_us'] / 1000:.2f} ms, stdlib {im['stdlib_us'] / 1000:.2f} ms (self times)")

    details.append("## P1 login\n")
    details.append(f"- pamtester A (trivial module): {fmt_ms(r['pamtester']['A'])}")
    details.append(f"- pamtester B (pam-vrf hook):   {fmt_ms(r['pamtester']['B'])}")
    details.append(f"- pamtester L (hook, user left alone): {fmt_ms(r['pamtester']['L'])}")
    details.append("- cgroup moves (ms), back to back: " + " ".join(f"{x:.2f}" for x in r["moves"][0.0])
                   + "; after 50 ms idle: " + " ".join(f"{x:.2f}" for x in r["moves"][0.05]))
    details.append(f"- helper attach lines during the B runs: {r['attached_lines']} for {r['hook_runs']} hook runs "
                   "(each hook run asked the helper to attach)")
    details.append(f"- inside pam_python: import {fmt_ms(tm['import_ms'])}; open_session {fmt_ms(tm['open_ms'])}")
    details.append(f"- B - A = {b - a:.2f} ms; import + open_session measured inside = "
                   f"{median(tm['import_ms']) + median(tm['open_ms']):.2f} ms")
    details.append(f"- direct open_session: {fmt_ms(d['open_ms'])}; helper ping round trip {d['ping_ms']:.3f} ms")
    details.append("- phases (median ms): " + ", ".join(f"{k} {v:.3f}" for k, v in d["phases_ms"].items()))
    details.append(f"\ncProfile of {d['profiled']} open_session calls (sorted by own time):\n")
    details.append("```\n" + _trim_profile(d["profile"]) + "\n```")
    details.append("\nimport-time profile (`-X importtime`, run with the median total of "
                   f"{len(im['runs_us'])}: {', '.join(f'{x / 1000:.1f}' for x in im['runs_us'])} ms)\n")
    details.append("top self times: " + ", ".join(f"{n} {s / 1000:.2f} ms" for s, c, d_, n in im["top_self"]))
    details.append("\nheaviest subtrees (cumulative): " + ", ".join(
        f"{n} {c / 1000:.2f} ms" for s, c, d_, n in im["heavy_cumulative"]))
    details.append("\nstdlib imported directly by each pam_vrf module (cumulative ms): " + "; ".join(
        f"{mod} -> " + ", ".join(f"{n} {c / 1000:.2f}" for n, c in kids) for mod, kids in im["pulls"].items()))
    details.append("\nmodules the hook's import pulls in beyond what the interpreter already has: "
                   + " ".join(im["modules"]))
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
        base = f"{kind}: none {ns['none']:.0f} ns, plain {ns['plain']:.0f} ns, deny5 {ns['deny5']:.0f} ns per create+close"
        t.add("P3", f"socket()+close(), {kind} loop: plain bind program / unplaced", GOALS["P3"],
              k["ratio_plain"], "x", fmt="{:.3f}", note=f"{k['rounds']} rounds x {k['iters']}; {base}")
        t.add("P3", f"socket()+close(), {kind} loop: program with 5 deny items / unplaced", GOALS["P3"],
              k["ratio_deny5"], "x", fmt="{:.3f}")
        details.append(f"- {base}; checks {k['checks']}")
        for name, vals in k["samples"].items():
            details.append(f"  - {name}: " + " ".join(f"{v:.0f}" for v in vals))
    details.append("")


def p4_rows(t, r, details):
    for variant, label in (("known", "10 000 rules, user in 1 000 groups, match on the last line"),
                           ("unknown", "same, 3 333 lines name 1 000 groups NSS does not know")):
        v = r[variant]
        goal = GOALS["P4"]
        t.add("P4", f"decide(), Account looked up — {label}", goal, median(v["decide_ms"]), " ms",
              note=f"first call {v['decide_first_ms']:.2f} ms")
        t.add("P4", f"decide() incl. NSS lookup policy.account() — {label}", goal,
              median(v["decide_with_nss_ms"]), " ms")
        t.add("P4", f"parse (load) of the {v['rules']}-rule file ({variant} groups)", None, median(v["parse_ms"]), " ms")
    t.add("P4", "policy.account() alone (user in 1 000 groups)", None, median(r["account_ms"]), " ms")
    ins = r["in_situ"]
    t.add("P4", "session.open_session with the 10 000-rule policy (parse + decide + helper + move)", None,
          median(ins["open_ms"]), " ms",
          note=f"{ins['placed']}/{len(ins['open_ms'])} placed; phases " + ", ".join(
              f"{k} {v:.2f}" for k, v in ins["phases_ms"].items()) + " ms")
    s = r["setup_s"]
    details.append("## P4 policy\n")
    details.append(f"- NSS: {r['groups']} gids for the user; /etc/group had {r['etc_group_lines']} lines")
    details.append(f"- setup: groupadd x1200 {s['groupadd']:.1f} s, useradd -G x1000 {s['useradd']:.1f} s, "
                   f"cleanup (userdel + groupdel x1201) {s.get('cleanup', float('nan')):.1f} s")
    for variant in ("known", "unknown"):
        v = r[variant]
        details.append(f"- {variant}: decide {fmt_ms(v['decide_ms'])}; with NSS {fmt_ms(v['decide_with_nss_ms'])}; "
                       f"parse {fmt_ms(v['parse_ms'])}")
    details.append(f"- account(): {fmt_ms(r['account_ms'])}")
    for variant in ("known", "unknown"):
        details.append(f"\ncProfile of one decide() by user name ({variant} groups):\n")
        details.append("```\n" + _trim_profile(r[variant + "_profile"]) + "\n```")
    details.append("")


def p5_rows(t, r, prof, details):
    relinks = r["relinks"]
    times = [x["s"] for x in relinks if x["s"] is not None]
    value = median(times) if len(times) == len(relinks) else None
    note = "; ".join(
        (f"{x['s']:.3f} s" if x["s"] is not None else f"timeout, {x['left']} left")
        + (f" (log line at {x['log_s']:.3f} s)" if x["log_s"] is not None else "") for x in relinks)
    t.add("P5", f"re-link: VRF deleted + re-created, until all {r['sessions']} cgroups carry the new ifindex",
          GOALS["P5relink"], value, " s", note=f"{len(relinks)} re-creations: {note}")
    m = r["mem"]
    t.add("P5", f"helper VmHWM with {r['sessions']} sessions", GOALS["P5mem"], m["VmHWM"] / 1024, " MB",
          note=f"VmRSS {m['VmRSS'] / 1024:.1f} MB; idle before attaching: VmHWM {r['mem_idle']['VmHWM'] / 1024:.1f} MB")
    t.add("P5", f"helper VmRSS with {r['sessions']} sessions", GOALS["P5mem"], m["VmRSS"] / 1024, " MB")
    t.add("P5", f"helper VmHWM at the end (after re-links, throughput runs)", GOALS["P5mem"],
          r["mem_end"]["VmHWM"] / 1024, " MB")
    lat = r["attach_lat_ms"]
    t.add("P5", "attach round trip, one client, sequential", None, median(lat), " ms",
          note=f"first {median(lat[:50]):.2f} ms, last {median(lat[-50:]):.2f} ms (median of 50); "
               f"all {r['sessions']}: {r['attach_all_s']:.1f} s")
    for x in r["rates"]:
        t.add("P5", f"{x['op']} requests/s, {x['clients']} client process(es) in parallel", None, x["per_s"], "/s",
              fmt="{:.0f}", note=f"{x['ok']} ok, {x['errors']} errors in {x['s']:.1f} s")
    details.append("## P5 helper\n")
    details.append(f"- memory idle {r['mem_idle']}, with sessions {r['mem']}, after re-links {r['mem_after_relink']}, "
                   f"end {r['mem_end']} (kB)")
    for x in relinks:
        details.append(f"- re-link ifindex {x['old']} -> {x['new']}: `ip link add` {x['ip_link_add_s']:.3f} s, "
                       f"all done {x['s']}, after add {x['s_after_add']}, helper line: {x['log']!r} at {x['log_s']}")
    details.append(f"- attach latency percentiles: p50 {median(lat):.2f} ms, p90 {sorted(lat)[int(len(lat) * .9)]:.2f} ms, "
                   f"max {max(lat):.2f} ms")
    if prof:
        rl = prof["relink"]
        details.append(f"\n### helper profile (cProfile, {prof['sessions']} attaches in {prof['attach_s']:.2f} s, "
                       f"one re-link {rl['s']} s)\n")
        details.append("```\n" + _trim_profile(prof["tottime"]) + "\n```\n")
        details.append("```\n" + _trim_profile(prof["cumulative"]) + "\n```")
        if "small" in prof:
            details.append(f"\n### helper profile, one cgroup attached {prof['small']['repeats']} times "
                           "(the state a P1 login meets; cumulative, includes cProfile overhead)\n")
            details.append("```\n" + _trim_profile(prof["small"]["cumulative"]) + "\n```")
    details.append("")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run, figures are noisy)")
    ap.add_argument("--only", default="P1,P3,P4,P5")
    ap.add_argument("--no-install", action="store_true", help="do not run `make install` first")
    ap.add_argument("--syslog-sink", action="store_true",
                    help="where there is no /dev/log, listen there during the run so the hook's syslog "
                         "datagrams are delivered (off by default: a test session on the same host may be "
                         "deciding whether it owns /dev/log)")
    args = ap.parse_args()
    only = set(args.only.upper().split(","))
    if os.geteuid() != 0:
        sys.exit("bench: run as root (sudo make bench)")
    if sys.executable != common.PY:
        say(f"bench: note: running on {sys.executable}, the product runs on {common.PY}")

    started = time.monotonic()
    common.install_signal_handlers()
    common.sweep_stale()
    run = common.Run()
    table, details = Table(), []
    dev_log = "?"
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
        dev_log = "present" if os.path.lexists("/dev/log") else "absent"
        if args.syslog_sink:
            common.SyslogSink(run)
            dev_log += ", bench sink listening" if dev_log == "absent" else ""
        lab = common.Lab(run)
        q = args.quick

        def stage(name, fn):
            if name not in only:
                return
            try:
                fn()
            except KeyboardInterrupt:
                raise
            except Exception as e:
                failures.append(f"{name}: {type(e).__name__}: {e}")
                say(f"bench: {name} failed:\n{traceback.format_exc()}")
                table.fail(name, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")

        def p1():
            import bench_login
            r = bench_login.bench(lab, rounds=10 if q else 60, timed_runs=10 if q else 40,
                                  direct_runs=10 if q else 40)
            p1_rows(table, r, details)

        def p3():
            import bench_socket
            r = bench_socket.bench(lab, py_iters=20_000 if q else 200_000, c_iters=20_000 if q else 200_000,
                                   rounds=3 if q else 5)
            p3_rows(table, r, details)

        def p5():
            import bench_helper
            config = lab.write("p5-vrf.conf", "# bench P5\n*  -\n")
            r = bench_helper.bench(lab, config, sessions=200 if q else 1000, recreations=1 if q else 3)
            prof = None
            try:
                say("P5: cProfile of the helper: one cgroup attached over and over, then 300 sessions + a re-link")
                prof = bench_helper.profile(lab, config, sessions=100 if q else 300)
                prof["small"] = bench_helper.profile_small(lab, config, repeats=50 if q else 200)
            except Exception as e:
                say(f"bench: helper profile failed: {type(e).__name__}: {e}")
            p5_rows(table, r, prof, details)

        def p4():
            import bench_policy
            r = bench_policy.bench(lab, repeats=10 if q else 30)
            p4_rows(table, r, details)

        stage("P1", p1)
        table.rows.append(("P2", "login vs `ip vrf exec` in a pam_exec shell script (needs a real VRF)",
                           "-", "-", "measured in the VM suite (make test-vm)", ""))
        stage("P3", p3)
        stage("P5", p5)
        stage("P4", p4)
    except KeyboardInterrupt as e:
        say(f"\nbench: interrupted ({e or 'Ctrl-C'}); cleaning up")
        interrupted = True
    finally:
        run.close()
    if interrupted:
        return 130

    m = common.machine()
    took = time.monotonic() - started
    header = (f"# pam-vrf benchmarks\n\n{time.strftime('%Y-%m-%d %H:%M:%S %Z')} — kernel {m['kernel']}, "
              f"CPU {m['cpu']}, {m['cores']} cores, Python {m['python']}; /dev/log {dev_log}; "
              f"`make bench` took {took:.0f} s"
              + (" (--quick: smoke run, figures noisy)" if args.quick else "") + "\n")
    md = table.markdown()
    say("\n" + header)
    say(md)
    if table.missed:
        say("\nmissed: " + "; ".join(table.missed))
    out = os.path.join(HERE, "results.md")
    with open(out, "w") as f:
        f.write(header + "\n" + md + "\n")
        if table.missed:
            f.write("\nGoals missed:\n\n" + "\n".join(f"- {x}" for x in table.missed) + "\n")
        f.write("\n# Details\n\n" + "\n".join(details) + "\n")
    say(f"\n(details: {out})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
