#!/usr/bin/python3
"""P2 benchmark (not a test; pytest does not collect it): login-time
placement through pam-vrf against what sites write by hand, on the test VM
(real VRF `mgmt`). vagrant/ci/vm-run-tests runs it after the VM suite and
puts p2.json and p2.txt into the results; vagrant/ci/test-vm prints p2.txt.

    python3 tests/vm/bench_p2.py [--rounds 20] [--out DIR]     (as root, on the VM)

PAM services, identical but for their last session line:

    p2-base     (none)                                        pamtester's own cost
    p2-pamvrf   session [success=ok session_err=bad default=ignore] pam_vrf.so
    p2-byhand   session optional pam_exec.so /usr/local/sbin/vrf-by-hand
    p2-pvpy     session [success=ok session_err=bad default=ignore] pam_python.so /usr/lib/pam-vrf/pam_vrf.py
                (not the contender: the pam_python entry sshd may use instead,
                shown beside it)

vrf-by-hand is the usual hand-made hook: for members of netops, `ip vrf exec
mgmt` (which makes <caller's cgroup>/vrf/mgmt and loads and attaches
iproute2's program) runs a shell that writes the PAM caller's pid ($PPID of
the script) into its own cgroup. pam_vrf.so asks the helper, which decides
from /etc/security/vrf.conf (`@netops mgmt`, provisioned), attaches and
moves the PAM caller.

Each run is `pamtester SERVICE op1 open_session close_session`, started in
a fresh cgroup of its own (as a new login's session scope is), so every
placement makes its VRF cgroup and attaches a program, as at a real login.
Rounds are interleaved (the order rotates each round), after warm-up
rounds; the medians of --rounds runs per service are compared:

    ratio      = median(byhand) / median(pamvrf)               whole pamtester run
    net ratio  = (median(byhand) - median(base)) / (median(pamvrf) - median(base))
                                                                the placement alone
Goal: pam-vrf >= 3x faster. Before timing, one checked run of each places
the PAM caller (a pam_exec line after the placement records the cgroup of
pamtester) in <its cgroup>/vrf/mgmt with one program attached there.
Everything it creates (PAM services, the script, cgroups) is removed.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402

USER = "op1"
VRF = "mgmt"
GOAL = 3.0
HOOK_LINE = "session [success=ok session_err=bad default=ignore] pam_vrf.so"
PYTHON_LINE = "session [success=ok session_err=bad default=ignore] pam_python.so /usr/lib/pam-vrf/pam_vrf.py"
BYHAND = "/usr/local/sbin/vrf-by-hand"
BYHAND_LINE = f"session optional pam_exec.so {BYHAND}"
WORK = "/run/pam-vrf-bench"                      # data only: /run is noexec
CHECKER = "/usr/local/libexec/pam-vrf-p2-where"
VARIANTS = {"base": "", "pamvrf": HOOK_LINE, "byhand": BYHAND_LINE, "pvpy": PYTHON_LINE}

BYHAND_SCRIPT = """#!/bin/sh
# The usual hand-made VRF login hook (pam_exec, session): members of netops
# go to VRF mgmt. `ip vrf exec` makes the VRF cgroup below its own and
# attaches iproute2's program; the shell it runs there moves the PAM caller
# (this script's parent) into that same cgroup.
[ "$PAM_TYPE" = open_session ] || exit 0
id -nG "$PAM_USER" | grep -qw netops || exit 0
exec ip vrf exec mgmt sh -c 'echo "$1" > "/sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup)/cgroup.procs"' vrf-by-hand "$PPID"
"""
CHECK_SCRIPT = f"""#!/bin/sh
# bench_p2 check: where is the PAM caller (our parent) now?
[ "$PAM_TYPE" = open_session ] || exit 0
sed -n 's/^0:://p' /proc/$PPID/cgroup > {WORK}/where.out
"""


def cgroup_mount():
    from pam_vrf import cgroup      # installed in the VM by provision.sh
    return cgroup.mount_point()


def favordynmods():
    """'on' or 'off': the cgroup2 mount's options (/proc/self/mountinfo); never changed here."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                options = set(left.split()[5].split(",")) | set(right.split()[2].split(","))
                return "on" if "favordynmods" in options else "off"
    return "no cgroup2 mount"


def own_cgroup():
    with open("/proc/self/cgroup") as f:
        cg = [line.strip()[3:] for line in f if line.startswith("0::")][0]
    return cg.split("/vrf", 1)[0].rstrip("/")


def write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def pam_service(name, line, check=False):
    lines = ["auth     required  pam_permit.so", "account  required  pam_permit.so",
             "session  required  pam_permit.so"]
    if line:
        lines.append(line)
    if check:
        lines.append(f"session  optional  pam_exec.so {CHECKER}")
    write(f"/etc/pam.d/{name}", "\n".join(lines) + "\n")
    return name


def rmdir_tree(path):
    for here, dirs, _ in sorted(os.walk(path), key=lambda t: -t[0].count("/")):
        try:
            os.rmdir(here)
        except OSError:
            pass


class Runner:
    def __init__(self, base):
        self.base = base
        self.n = 0

    def run(self, service):
        """One pamtester open+close in a fresh cgroup; returns (seconds, cgroup dir)."""
        self.n += 1
        cg = os.path.join(self.base, f"run{self.n}")
        os.mkdir(cg)

        def enter():
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        t0 = time.perf_counter()
        proc = subprocess.run(["pamtester", service, USER, "open_session", "close_session"],
                              preexec_fn=enter, capture_output=True, text=True, cwd="/")
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"pamtester {service} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return elapsed, cg


def attached(path):
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", path], capture_output=True, text=True).stdout
    return [(p["id"], p.get("name", "")) for p in json.loads(out or "[]")
            if p.get("attach_type") == "cgroup_inet_sock_create"]


def check(runner, variant, expect_name):
    service = pam_service(f"p2-{variant}-check", VARIANTS[variant], check=True)
    try:
        if os.path.exists(f"{WORK}/where.out"):
            os.unlink(f"{WORK}/where.out")
        _, cg = runner.run(service)
        with open(f"{WORK}/where.out") as f:
            where = f.read().strip()
        rel = cg[len(cgroup_mount()):]
        progs = attached(os.path.join(cg, "vrf", VRF))
        ok = where == f"{rel}/vrf/{VRF}" and len(progs) == 1 and progs[0][1] == expect_name
        rmdir_tree(cg)
        return {"ok": ok, "caller_cgroup": where, "expected": f"{rel}/vrf/{VRF}", "programs": progs}
    finally:
        os.unlink(f"/etc/pam.d/{service}")


def summary(samples):
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=10)
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2), "p10_ms": round(q[0], 2),
            "p90_ms": round(q[-1], 2), "min_ms": round(ms[0], 2), "max_ms": round(ms[-1], 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    for tool in ("pamtester", "ip", "bpftool"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found")

    os.makedirs(WORK, exist_ok=True)
    os.makedirs(os.path.dirname(CHECKER), exist_ok=True)
    created = [BYHAND, CHECKER]
    write(BYHAND, BYHAND_SCRIPT, 0o755)
    write(CHECKER, CHECK_SCRIPT, 0o755)
    base = os.path.join(cgroup_mount(), own_cgroup().lstrip("/"), f"p2-bench-{os.getpid()}")
    os.mkdir(base)
    services = {v: pam_service(f"p2-{v}", line) for v, line in VARIANTS.items()}
    t_start = time.monotonic()
    try:
        runner = Runner(base)
        checks = {"pamvrf": check(runner, "pamvrf", "pam_vrf"), "byhand": check(runner, "byhand", ""),
                  "pvpy": check(runner, "pvpy", "pam_vrf")}
        samples = {v: [] for v in VARIANTS}
        order = list(VARIANTS)
        for r in range(args.warmup + args.rounds):
            for v in order:
                elapsed, cg = runner.run(services[v])
                rmdir_tree(cg)
                if r >= args.warmup:
                    samples[v].append(elapsed)
            order = order[1:] + order[:1]
    finally:
        for name in services.values():
            os.unlink(f"/etc/pam.d/{name}")
        for path in created:
            os.unlink(path)
        shutil.rmtree(WORK, ignore_errors=True)
        rmdir_tree(base)

    stats = {v: summary(s) for v, s in samples.items()}
    med = {v: stats[v]["median_ms"] for v in VARIANTS}
    ratio = med["byhand"] / med["pamvrf"]
    net_pamvrf, net_byhand = med["pamvrf"] - med["base"], med["byhand"] - med["base"]
    net_ratio = net_byhand / net_pamvrf if net_pamvrf > 0 else float("inf")
    paired = statistics.median(b / p for b, p in zip(samples["byhand"], samples["pamvrf"]))
    result = {
        "id": "P2", "goal": f"pam-vrf >= {GOAL:g}x faster than the hand-made pam_exec + ip vrf exec hook",
        "rounds": args.rounds, "warmup_rounds": args.warmup, "user": USER, "vrf": VRF,
        "stats": stats, "ratio": round(ratio, 2), "net_ratio": round(net_ratio, 2),
        "paired_ratio_median": round(paired, 2),
        "net_ms": {"pamvrf": round(net_pamvrf, 2), "byhand": round(net_byhand, 2)},
        "pam_python_entry_net_ms": round(med["pvpy"] - med["base"], 2),
        "met": ratio >= GOAL, "checks": checks, "seconds": round(time.monotonic() - t_start, 1),
        "kernel": platform.release(), "cgroup2_favordynmods": favordynmods(),
        "machine": "test VM (qemu TCG, 2 vCPU): absolute times are emulated",
        "services": {v: line or "(no placement line)" for v, line in VARIANTS.items()},
    }
    verdict = "met" if result["met"] else "MISSED"
    checked = all(c["ok"] for c in checks.values())
    text = [
        f"P2 placement at login: pam_vrf.so vs pam_exec + `ip vrf exec` (goal: pam-vrf >= {GOAL:g}x faster)",
        f"  pamtester {USER} open_session close_session, each run in a fresh cgroup; "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up rounds; qemu TCG (emulated CPU); "
        f"kernel {platform.release()}, cgroup2 favordynmods {favordynmods()}",
    ]
    for v, label in (("base", "no placement (pamtester)"), ("pamvrf", "pam_vrf.so"),
                     ("byhand", "pam_exec vrf-by-hand"), ("pvpy", "pam_python entry (sshd only)")):
        st = stats[v]
        net = f"{st['median_ms'] - med['base']:7.1f} ms added" if v != "base" else " " * 16
        text.append(f"  {label:<29} median {st['median_ms']:8.1f} ms {net}  (p10 {st['p10_ms']:.1f}, "
                    f"p90 {st['p90_ms']:.1f}, n={st['n']})")
    text += [
        f"  ratio by hand / pam_vrf.so: {ratio:.2f}x whole run, {net_ratio:.2f}x placement alone, "
        f"{paired:.2f}x median of paired runs -> goal {verdict}",
        f"  checked: {'each placed the PAM caller in <cgroup>/vrf/mgmt, one program each' if checked else checks}",
        f"  | P2 | login: pamtester open+close, pam_exec `ip vrf exec` script / pam_vrf.so (VM, TCG) "
        f"| >= {GOAL:g}x | {ratio:.1f}x | {verdict} | medians {med['byhand']:.1f} / {med['pamvrf']:.1f} ms, "
        f"placement alone {net_byhand:.1f} / {net_pamvrf:.1f} ms ({net_ratio:.1f}x), n={args.rounds} |",
    ]
    vmlib.write_results(args.out, "p2", result, text)
    return 0 if checked else 1


if __name__ == "__main__":
    sys.exit(main())
