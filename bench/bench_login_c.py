"""P1-C — the C entry's login against the kernel's own work, side by side.

pamtester open_session+close_session through five PAM services, in shuffled
interleaved rounds (each round runs each once, in a fresh random order;
figures are medians of the per-round ratios), every login after `gap`
seconds of quiet, from bench_login's launcher (in the lab's netns, in a
sandbox cgroup: every placing login is one move):

  C  pam_vrf.so placing through the helper (a veth `plain` target)
  K  a C module that moves its own process into a fixed cgroup
     (bench/pam_mover.c): the kernel's work of a placement, nothing else
  P  a pam_permit.so-only stack
  E  pam_vrf.so against a server that answers at once (testlab/progs/answer_at_once.py):
     what any helper process costs (connection, pidfd, two wake-ups); E - P
     is that floor, (C - K) - (E - P) the helper's own work
  H  the pam_python entry placing through the same helper (beside them)

Goal (issue 16 item 6): C/K <= 1.20, judged back to back (the default,
--gap 0: the issue's own figures; no move waits for an RCU grace period).
With --gap 0.05 and favordynmods off every move waits for one, and where
it lands on the grace-period grid decides the ratio (README, P1-C;
bench/rcu_waits.py shows the waits). Also: the helper's CPU per placing
open (schedstat). The policy names the login's user above two @group
rules: the helper decides without asking NSS for the user's groups.

    python3 bench/bench_login_c.py [--rounds N] [--gap S]     (root)
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_common as common  # noqa: E402
from bench_common import HOOK, Helper, add_user, bootstrap_ci, median, say, sh, shuffled_rounds  # noqa: E402
from bench_login import Launcher  # noqa: E402
from testlab import progs  # noqa: E402,I100  (bench_common puts the repository on sys.path)

VARIANTS = {
    "C": "pam_vrf.so, placing",
    "K": "C module moving itself into a fixed cgroup",
    "P": "pam_permit.so-only stack",
    "E": "pam_vrf.so, a server answering at once",
    "H": "pam_python entry, placing",
}


def start_answerer(run, tag=""):
    """testlab/progs/answer_at_once.py in a directory of its own; its socket= path."""
    where = os.path.join(run.dir, "answerer" + tag)
    os.mkdir(where)
    proc = subprocess.Popen([sys.executable, "-c", progs.source("answer_at_once"), where],
                            stdout=subprocess.PIPE, text=True)
    run.defer(lambda: (proc.kill(), proc.wait()))
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("testlab/progs/answer_at_once.py did not start")
    return os.path.join(where, "helper.sock")


def build_mover(run, tag=""):
    out = os.path.join(run.dir, f"pam_mover{tag}.so")
    sh("gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o", out,
       os.path.join(HERE, "pam_mover.c"))
    return out


def bench(lab, rounds=60, gap=0.0, profile=False, tag=""):
    """`tag` tells apart the names of two runs in one lab (bench/run.py runs both regimes)."""
    run = lab.run
    user = add_user(run, "c" + tag)
    tgt = lab.target
    # The user's name rule comes before @group rules: the helper never asks for its groups.
    config = lab.write(f"p1c{tag}-vrf.conf", "".join(f"{line}\n" for line in (
        "# bench P1-C", "root  -", f"{user.pw_name}  {tgt}  plain", "@sudo  default", "@adm  -", "*  -")))
    helper = Helper(lab, config, suffix="hc" + tag, profile=profile).start()
    placing = "session [success=ok session_err=bad default=ignore] {} " + f"config={config} socket={helper.socket}"
    services = {name: lab.pam_service(f"c{tag}{name.lower()}", session) for name, session in (
        ("C", placing.format("pam_vrf.so")),
        ("K", f"session required {build_mover(run, tag)} {lab.cgroup('p1cfixed' + tag)}"),
        ("P", None),
        ("E", "session required pam_vrf.so socket=" + start_answerer(run, tag)),
        ("H", placing.format(f"pam_python.so {HOOK}")))}
    launcher = Launcher(lab, lab.cgroup("p1c" + tag))
    say(f"P1-C: pamtester, {rounds} shuffled rounds of {' '.join(VARIANTS)} ({gap * 1000:.0f} ms before each)")
    mark = helper.mark()
    for name in list(VARIANTS) * 2:                 # warm-up
        launcher.login(services[name], user.pw_name, gap)
    samples = {name: [] for name in VARIANTS}
    cpu0 = helper.schedstat()[0]
    for order in shuffled_rounds(VARIANTS, rounds):
        for name in order:
            samples[name].append(launcher.login(services[name], user.pw_name, gap))
    placing = 2 * rounds + 4
    placed = helper.count(f"placed in VRF {tgt}", mark)
    helper_ms = (helper.schedstat()[0] - cpu0) * 1e3 / (2 * rounds)
    helper.stop()
    if profile:
        import pstats
        pstats.Stats(helper.profile).sort_stats(os.environ.get("SORT", "cumtime")).print_stats(45)

    def ratio(num, den):
        per_round = [a / b for a, b in zip(samples[num], samples[den])]
        return {"median": median(per_round), "ci": bootstrap_ci(per_round),
                "diff_ms": median([a - b for a, b in zip(samples[num], samples[den])])}

    return {"rounds": rounds, "gap": gap, "ms": {k: median(v) for k, v in samples.items()},
            "C/K": ratio("C", "K"), "C/P": ratio("C", "P"), "K/P": ratio("K", "P"), "E/P": ratio("E", "P"),
            "H/K": ratio("H", "K"),
            "helper_work_ms": median([(c - k) - (e - p) for c, k, e, p in
                                      zip(samples["C"], samples["K"], samples["E"], samples["P"])]),
            "placed_lines": placed, "placing_runs": placing, "helper_cpu_ms_per_open": helper_ms}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--gap", type=float, default=0.0, help="seconds of quiet before each login")
    ap.add_argument("--profile", action="store_true", help="run the helper under cProfile; print its profile")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    ks = common.kernel_state()
    common.install_signal_handlers()
    run = common.Run()
    try:
        lab = common.Lab(run)
        r = bench(lab, args.rounds, args.gap, args.profile)
    finally:
        run.close()
    say(f"kernel state: {ks}")
    for key in ("C/K", "C/P", "K/P", "E/P", "H/K"):
        v = r[key]
        say(f"{key}: {v['median']:.3f}x (95% CI {v['ci'][0]:.3f}-{v['ci'][1]:.3f}), {v['diff_ms']:+.2f} ms")
    say("medians: " + ", ".join(f"{k} {v:.2f} ms" for k, v in r["ms"].items()))
    say(f"the helper's own work, (C - K) - (E - P) per round: {r['helper_work_ms']:.2f} ms")
    say(f"helper CPU per placing open: {r['helper_cpu_ms_per_open']:.3f} ms; "
        f"placed lines {r['placed_lines']} of {r['placing_runs']} placing logins")


if __name__ == "__main__":
    main()
