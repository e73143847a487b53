"""P3 — what the programs cost every socket() and every datagram.

Four sandbox cgroups:
    none    no program in the cgroup or above (an unplaced process)
    bind    only the sock-create program of a `TARGET plain` rule (what a
            placed session had before the egress program)
    plain   what the helper attaches for a `TARGET plain` rule: the
            sock-create program and the egress program
    deny5   the same for `TARGET plain deny=<5 items>`, none matching TCP
One long-lived worker process inside the lab's netns moves itself into
each cgroup in turn (root: a write to cgroup.procs) and takes a sample
there: N x socket(AF_INET, SOCK_STREAM)+close, and (the C worker) one UDP
socket sending N 64-byte datagrams out of the target veth (to a static
neighbour: nothing answers, the peer end drops them). The same process
measures all variants, so nothing about the process (its CPU, its memory
layout) favours one; rounds run them in a shuffled order, the figures are
medians of per-round ratios against `none`. socket() is done twice: a
Python loop (socket.socket().close(): interpreter overhead dilutes the
ratio) and a small C program (gcc -O2): the purer number.
"""

import os
import subprocess

from bench_common import PY, REPO, join_cgroup, median, paired_ratio, say, sh, shuffled_rounds
from testlab import progs  # noqa: E402,I100  (bench_common puts the repository on sys.path)

# Items a TCP socket must get past: 2 fail on family, 2 on type, 1 only on protocol.
DENY5 = "inet6,raw,dgram,inet:seqpacket,inet:stream:sctp"

PY_WORKER = progs.source("bench_socket_worker")


class Worker:
    def __init__(self, argv, cgroup_dir):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=join_cgroup(cgroup_dir), cwd="/")

    def run_in(self, cgroup_dir, line):
        self.ask(f"cg {cgroup_dir}")
        return self.ask(line)

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"socket worker: {answer or 'died'}")
        return answer

    def close(self):
        self.proc.kill()
        self.proc.wait()


def _attach_rule(path, rule_text, ifindex):
    from pam_vrf import policy, programs
    rule = policy.parse(rule_text + "\n", "bench")[0]
    return programs.attach(path, programs.settings_for(rule, ifindex))


UDP_TO = "10.214.0.2"       # a static neighbour on the target veth


def bench(lab, py_iters=200_000, c_iters=200_000, udp_iters=100_000, rounds=7):
    from pam_vrf.bpf import cgroup_link, syscall
    run = lab.run
    binary = os.path.join(run.dir, "sockloop")
    sh("gcc", "-O2", "-Wall", "-o", binary, os.path.join(REPO, "bench", "sockloop.c"))
    os.chmod(binary, 0o755)
    ifindex = lab.ifindex()
    sh("ip", "-n", lab.ns, "addr", "add", "10.214.0.1/24", "dev", lab.target)
    sh("ip", "-n", lab.ns, "link", "set", lab.peer, "up")
    sh("ip", "-n", lab.ns, "neigh", "replace", UDP_TO, "lladdr", "02:00:00:00:02:14", "dev", lab.target)
    dirs = {"none": lab.cgroup("p3", "none"),
            "bind": lab.cgroup("p3", "bind", "vrf", lab.target),
            "plain": lab.cgroup("p3", "plain", "vrf", lab.target),
            "deny5": lab.cgroup("p3", "deny5", "vrf", lab.target)}
    _attach_rule(dirs["bind"], f"* {lab.target} plain", ifindex)
    _attach_rule(dirs["plain"], f"* {lab.target} plain", ifindex)
    _attach_rule(dirs["deny5"], f"* {lab.target} plain deny={DENY5}", ifindex)
    from pam_vrf import programs
    for placed in ("plain", "deny5"):
        programs.attach_egress(dirs[placed], {ifindex})
    effective = {k: (cgroup_link.effective(d), cgroup_link.effective(d, syscall.CGROUP_INET_EGRESS))
                 for k, d in dirs.items()}
    shape = {k: tuple(len(ids) for ids in v) for k, v in effective.items()}
    if shape != {"none": (0, 0), "bind": (1, 0), "plain": (1, 1), "deny5": (1, 1)}:
        raise RuntimeError(f"unexpected effective programs: {effective}")

    result = {"deny5": DENY5}
    for kind, argv, iters in (("C", [binary], c_iters), ("Python", [PY, "-c", PY_WORKER], py_iters)):
        worker = Worker(lab.nsenter(argv), dirs["none"])
        try:
            checks = {k: worker.run_in(d, "check") for k, d in dirs.items()}
            expect = {"none": "- 0", "bind": f"{lab.target} 0", "plain": f"{lab.target} 0",
                      "deny5": f"{lab.target} 1"}
            if checks != expect:
                raise RuntimeError(f"P3 {kind}: the programs are not what they should be: {checks} != {expect}")
            say(f"P3: {kind} loop, {rounds} rounds x {len(dirs)} cgroups x {iters} socket()+close(), one process")
            samples = {k: [] for k in dirs}
            for order in shuffled_rounds(dirs, rounds + 1, seed=5):
                for k in order:
                    samples[k].append(int(worker.run_in(dirs[k], str(iters))) / iters)
            samples = {k: v[1:] for k, v in samples.items()}          # the first round warms up
        finally:
            worker.close()
        result[kind] = {
            "iters": iters, "rounds": rounds, "checks": checks,
            "ns_per_op": {k: median(v) for k, v in samples.items()},
            "samples": samples,
            "ratio_bind": paired_ratio(samples, "bind", "none"),
            "ratio_plain": paired_ratio(samples, "plain", "none"),
            "ratio_deny5": paired_ratio(samples, "deny5", "none"),
        }
    result["UDP"] = _udp_loop(lab, binary, dirs, udp_iters, rounds)
    return result


def _udp_loop(lab, binary, dirs, iters, rounds):
    """N datagrams from one socket made in each cgroup: every one passes the
    egress program where there is one (plain, deny5)."""
    udp = {k: d for k, d in dirs.items() if k in ("none", "bind", "plain")}
    worker = Worker(lab.nsenter([binary]), udp["none"])
    try:
        worker.run_in(udp["none"], f"udp 100 {UDP_TO}")      # the neighbour entry and route are warm
        say(f"P3: C UDP send loop, {rounds} rounds x {len(udp)} cgroups x {iters} datagrams, one process")
        samples = {k: [] for k in udp}
        for order in shuffled_rounds(udp, rounds + 1, seed=7):
            for k in order:
                samples[k].append(int(worker.run_in(udp[k], f"udp {iters} {UDP_TO}")) / iters)
        samples = {k: v[1:] for k, v in samples.items()}
    finally:
        worker.close()
    return {"iters": iters, "rounds": rounds, "ns_per_op": {k: median(v) for k, v in samples.items()},
            "samples": samples, "ratio_bind": paired_ratio(samples, "bind", "none"),
            "ratio_plain": paired_ratio(samples, "plain", "none"),
            "ratio_egress": paired_ratio(samples, "plain", "bind")}
