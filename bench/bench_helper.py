"""P5 — the helper with 10 000 placed sessions.

How the sessions are made: bench/spawn_sessions.c (gcc -O2), started as
root, makes them one after the other. Session N is a process born
(clone3 CLONE_INTO_CGROUP) in its own sandbox cgroup `<sandbox>/p5/s-N`,
as a login is born in its own session-N.scope; it sends `open` for the
bench's login user on root.sock with a pidfd of itself (what pam_vrf.so
sends), and the helper decides (vrf.conf: `USER TARGET plain`) and moves
it into `<sandbox>/p5/s-N/<netns>-ns/vrf/TARGET`, attaching the program
there. The process then sleeps (blocked on a pipe, a forked copy of the
small C program: cheaper than /bin/sleep) until the bench ends. So every
session is a real process in its own VRF cgroup with its own attachment:
10 000 sessions = 10 000 processes, 40 000 cgroup directories.

Measured:
  * `open` latency (the child's clock, connect to reply) for every session,
    reported as medians around 1, 1 000, 5 000 and 10 000 sessions;
  * helper memory (VmHWM, VmRSS from /proc/PID/status) at those points;
  * re-link: the veth target is deleted and created again (new ifindex);
    the clock starts before `ip link add` and stops when BPF_PROG_QUERY on
    every session cgroup shows a program whose read-back ifindex is the
    new one (polled from here); the helper's "re-attached N" line and its
    arrival time are recorded too;
  * a cProfile of a second helper serving 300 such opens and one re-link.
"""

import io
import os
import pstats
import subprocess
import time

from bench_common import REPO, Helper, add_user, median, percentile, say, sh

MILESTONES = (1, 1000, 5000, 10000)


class Spawner:
    def __init__(self, lab, helper, user, top):
        run = lab.run
        self.binary = os.path.join(run.dir, "spawn_sessions")
        if not os.path.exists(self.binary):
            src = os.path.join(REPO, "bench", "spawn_sessions.c")
            # static: each session execs it again to sleep, the smaller the better
            if sh("gcc", "-O2", "-Wall", "-static", "-o", self.binary, src, check=False).returncode:
                sh("gcc", "-O2", "-Wall", "-o", self.binary, src)
        self.dir = lab.cgroup(top)
        self.lab = lab
        self.count = 0
        # Not in the sandbox: the sandbox's removal kills its members, and the
        # spawner must outlive its children to reap them.
        self.proc = subprocess.Popen([self.binary, helper.root_socket, user, "sshd", self.dir],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        run.defer(self.close)

    def spawn(self, k):
        """[(n, open ms, verdict, ms from mkdir to reply, mkdir ms, clone3 ms)] for k more sessions."""
        self.proc.stdin.write(f"spawn {k}\n")
        self.proc.stdin.flush()
        out = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("spawn_sessions died")
            line = line.strip()
            if line == "ok":
                break
            if line.startswith("error"):
                raise RuntimeError(f"spawn_sessions: {line}")
            n, ns, total, mk, cl, verdict = line.split(" ", 5)
            out.append((int(n), int(ns) / 1e6, verdict, int(total) / 1e6, int(mk) / 1e6, int(cl) / 1e6))
        self.count += k
        return out

    def paths(self):
        return [os.path.join(self.dir, f"s-{i}", f"{self.lab.ns}-ns", "vrf", self.lab.target)
                for i in range(self.count)]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Poller:
    """Which of the cgroups carry a program bound to `ifindex` (read back from the kernel)."""

    def __init__(self):
        from pam_vrf import programs
        from pam_vrf.bpf import cgroup_link
        self.programs, self.cgroup_link = programs, cgroup_link
        self.ifindex_of = {}            # prog id -> ifindex (programs are shared)

    def ifindex(self, path):
        attached = self.cgroup_link.query(path)
        if len(attached) != 1:
            return None
        pid = attached[0].prog_id
        if pid not in self.ifindex_of:
            settings = self.programs.read_back(pid)[1]
            self.ifindex_of[pid] = settings.ifindex if settings else None
        return self.ifindex_of[pid]

    def wait_all(self, paths, ifindex, timeout):
        """(monotonic time when every path carries `ifindex`, 0) or (None, how many not)."""
        left = list(paths)
        t0 = time.monotonic()
        while left:
            left = [p for p in left if self.ifindex(p) != ifindex]
            if not left:
                break
            if time.monotonic() - t0 > timeout:
                return None, len(left)
            time.sleep(0.002)
        return time.monotonic(), 0


def _recreate(lab, helper, paths, poller, timeout):
    old = lab.ifindex()
    sh("ip", "-n", lab.ns, "link", "del", lab.target)
    time.sleep(0.2)                     # the helper has seen the deletion
    mark = helper.mark()
    t0 = time.monotonic()
    new = lab.add_target()
    t_added = time.monotonic()
    done, left = poller.wait_all(paths, new, timeout)
    line = helper.wait_for("re-attached", mark, timeout=10 if done else 0.1)
    return {"old": old, "new": new,
            "s": (done - t0) if done else None,
            "s_after_add": (done - t_added) if done else None,
            "ip_link_add_s": t_added - t0,
            "left": left,
            "log_s": (line[0] - t0) if line else None,
            "log": line[1] if line else None}


def _members_check(paths):
    """How many session cgroups hold exactly one process (the placed session)."""
    ok = 0
    for p in paths:
        try:
            with open(os.path.join(p, "cgroup.procs")) as f:
                ok += len(f.read().split()) == 1
        except OSError:
            pass
    return ok


def _window(lat, at, width=100):
    """Latencies of the sessions around number `at` (1-based): the `width`
    sessions ending there (the first `width` for at=1)."""
    if at <= 1:
        return lat[:min(width, len(lat))]
    return lat[max(0, at - width):at]


def _flush_cost(helper, repeats=5):
    """What one Attachments.flush() costs with the helper's current state:
    the same class, loaded from a copy of the helper's state file, timed
    here (root, same syscalls): the stat() sweep over every remembered
    cgroup and the state-file write, which the helper's single loop does
    every 0.5 s while logins come in (no request is served meanwhile)."""
    import shutil
    from pam_vrf.helper.attachments import Attachments
    src = os.path.join(helper.workdir, "attachments.json")
    if not os.path.exists(src):
        return None
    dst = os.path.join(helper.workdir, "bench-flush-copy.json")
    shutil.copy(src, dst)
    a = Attachments(dst)
    flush, sweep, write = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        [os.path.isdir(p) for p in a.entries]
        t1 = time.perf_counter()
        a._write_state()
        t2 = time.perf_counter()
        a.dirty = True
        a.flush()
        t3 = time.perf_counter()
        sweep.append((t1 - t0) * 1e3)
        write.append((t2 - t1) * 1e3)
        flush.append((t3 - t2) * 1e3)
    for path in (dst, dst + ".tmp"):
        if os.path.exists(path):
            os.unlink(path)
    return {"entries": len(a.entries), "flush_ms": median(flush), "sweep_ms": median(sweep),
            "write_ms": median(write), "bytes": os.path.getsize(src)}


def bench(lab, sessions=10000, recreations=3, relink_timeout=60.0, budget_s=110.0):
    run = lab.run
    user = add_user(run, "l")
    config = lab.write("p5-vrf.conf", f"# bench P5\nroot  -\n{user.pw_name}  {lab.target}  plain\n*  -\n")
    helper = Helper(lab, config, suffix="p").start()
    mem = {0: helper.memory()}
    spawner = Spawner(lab, helper, user.pw_name, "p5")
    results = []
    milestones = [m for m in MILESTONES if m < sessions] + [sessions]
    windows = []            # (first, last, wall s, helper CPU s, mean open ms, mean clone3 ms)
    t0 = time.monotonic()
    step = max(1, sessions // 10)
    stopped = None
    for upto in sorted(set(milestones) | set(range(step, sessions + 1, step))):
        if time.monotonic() - t0 > budget_s:
            stopped = spawner.count
            say(f"P5: stopping at {stopped} sessions: placing them took longer than {budget_s:.0f} s")
            break
        say(f"P5: placing sessions {spawner.count + 1}..{upto} through `open`")
        w0, c0 = time.monotonic(), helper.cpu_seconds()
        first = spawner.count + 1
        results += spawner.spawn(upto - spawner.count)
        part = results[first - 1:]
        windows.append((first, upto, time.monotonic() - w0, helper.cpu_seconds() - c0,
                        sum(x[1] for x in part) / len(part), sum(x[5] for x in part) / len(part)))
        if upto in milestones:
            mem[upto] = helper.memory()
    spawn_s = time.monotonic() - t0
    if stopped:
        mem[stopped] = helper.memory()
        milestones = [m for m in milestones if m < stopped] + [stopped]
    bad = [r for r in results if r[2] != "placed"]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(results)} sessions not placed, e.g. {bad[:3]}")
    lat = [r[1] for r in results]
    paths = spawner.paths()
    say(f"P5: checking {len(paths)} session cgroups")
    members_ok = _members_check(paths)
    poller = Poller()
    ifindex = lab.ifindex()
    if poller.wait_all(paths, ifindex, 10)[0] is None:
        raise RuntimeError("not every session cgroup carries the program after placing")
    say("P5: what one state flush costs the helper with these sessions")
    flush = _flush_cost(helper)

    relinks = []
    for i in range(recreations):
        say(f"P5: delete and re-create {lab.target} ({i + 1}/{recreations}), wait for {len(paths)} re-attachments")
        r = _recreate(lab, helper, paths, poller, relink_timeout)
        relinks.append(r)
        if r["s"] is None or r["s"] > 10:
            break                   # slow: one sample says enough, and the 5-minute budget counts
    mem["end"] = helper.memory()
    helper.stop()
    spawner.close()
    return {"sessions": len(results), "wanted": sessions, "stopped": stopped, "budget_s": budget_s,
            "flush": flush, "lat_ms": lat, "spawn_s": spawn_s, "mem": mem,
            "milestones": milestones, "members_ok": members_ok, "windows": windows,
            "at": {m: {"median": median(_window(lat, m)), "p99": percentile(_window(lat, m), 99),
                       "max": max(_window(lat, m)), "n": len(_window(lat, m))} for m in milestones},
            "relinks": relinks}


def profile(lab, sessions=300):
    """A helper under cProfile: `sessions` opens (one new session each) and one re-link."""
    run = lab.run
    user = add_user(run, "r")
    config = lab.write("p5prof-vrf.conf", f"# bench P5 profile\nroot  -\n{user.pw_name}  {lab.target}  plain\n")
    helper = Helper(lab, config, suffix="q", profile=True).start()
    spawner = Spawner(lab, helper, user.pw_name, "p5prof")
    t0 = time.monotonic()
    res = spawner.spawn(sessions)
    spawn_s = time.monotonic() - t0
    r = _recreate(lab, helper, spawner.paths(), Poller(), 60)
    helper.stop()
    spawner.close()
    tot = io.StringIO()
    pstats.Stats(helper.profile, stream=tot).sort_stats("tottime").print_stats(18)
    cum = io.StringIO()
    pstats.Stats(helper.profile, stream=cum).sort_stats("cumulative").print_stats(
        r"pam_vrf/(helper|cgroup|process|policy|nss|log|programs|bpf|jsonlite|protocol)", 30)
    return {"sessions": sessions, "spawn_s": spawn_s, "open_ms": median([x[1] for x in res]), "relink": r,
            "tottime": tot.getvalue(), "cumulative": cum.getvalue()}
