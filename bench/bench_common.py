"""What every pam-vrf benchmark needs: a unique tag, a cleanup stack that
also runs on Ctrl-C / SIGTERM, a sweep of what a killed earlier run left
behind, commands, statistics, a network namespace with a veth target, a
sandbox cgroup, throwaway users and groups, private NSS files for users
in many groups, the helper as in production (non-root, ambient caps) and
a syslog sink where the host has none.

Every name carries the run's tag: pam.d files `bench-pvt<tag>*`, netns /
users / groups `pvb<tag>*`, the cgroup `<mount>/pam-vrf-bench-<tag>` (and
the same name under a cgroup v1 `cpu` mount, for the flood), the directory
/tmp/pam-vrf-bench-<tag>. /run/pam-vrf-bench/<tag>.json
records the run (pid, whether it made /dev/log) so the next run can sweep
it if this one was killed with SIGKILL.

The machinery the tests and the demo use too (commands, users, netns,
cgroup trees, the helper's command line, PAM service files) comes from
testlab, the repository's lab kit (testlab/__init__.py).
"""

import contextlib
import glob
import json
import math
import os
import pwd
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from testlab.cgroups import cgroup_mount, members, remove_cgroup_tree  # noqa: E402,F401
from testlab.helper import HELPER_BIN, HELPER_CAPS, helper_argv, helper_dir, wait_helper  # noqa: E402
from testlab.net import add_netns, add_veth, netns_names, remove_netns  # noqa: E402
from testlab.pam import HOOK, write_pam_service  # noqa: E402
from testlab import run as lab_run  # noqa: E402
from testlab import users as lab_users  # noqa: E402
from testlab.run import PY, REPO, sh, stop_process, unlink_quietly, write_file  # noqa: E402,F401
from testlab.users import remove_user  # noqa: E402

REGISTRY = "/run/pam-vrf-bench"
PREFIX = "pvb"                  # netns, users, groups, devices start with PREFIX + tag
PAM_PREFIX = "bench-pvt"        # /etc/pam.d/bench-pvt<tag><x>
CGROUP_PREFIX = "pam-vrf-bench-"


def say(*parts):
    print(*parts, flush=True)


# -- statistics --------------------------------------------------------------------

def median(values):
    return statistics.median(values) if values else float("nan")


def interleaved(variants, rounds, run_one, warmup=1):
    """Run every variant once per round, in an order that rotates each round
    (A B C, B C A, ...): returns {name: [values]}. run_one(name) -> value."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            run_one(name)
    out = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            out[name].append(run_one(name))
    return out


def paired_ratio(samples, num, den):
    """Median of the per-round ratios num/den (each round ran both side by side)."""
    return median([a / b for a, b in zip(samples[num], samples[den]) if b])


def spread(values):
    """'min–max' for notes."""
    return f"{min(values):.3g}–{max(values):.3g}" if values else "-"


def percentile(values, p):
    """The p-th percentile (0..100), nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def shuffled_rounds(names, rounds, seed=8):
    """`rounds` orders of all `names`, each a fresh shuffle (fixed seed: the
    same schedule every run), so no variant always follows the same one."""
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        order = list(names)
        rng.shuffle(order)
        out.append(order)
    return out


def bootstrap_ci(values, stat=None, n=2000, seed=8):
    """95 % percentile-bootstrap interval of stat(values) (default: the median)."""
    stat = stat or median
    if len(values) < 3:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    k = len(values)
    draws = sorted(stat([values[rng.randrange(k)] for _ in range(k)]) for _ in range(n))
    return draws[int(0.025 * n)], draws[int(0.975 * n) - 1]


# -- cleanup --------------------------------------------------------------------

class Run:
    """The tag, a temp dir and a LIFO of cleanups, run on any exit."""

    def __init__(self):
        self.tag = uuid.uuid4().hex[:5]
        self.dir = tempfile.mkdtemp(prefix=f"pam-vrf-bench-{self.tag}-")
        os.chmod(self.dir, 0o755)
        self._stack = []
        self.record = {"pid": os.getpid(), "own_dev_log": False, "dir": self.dir}
        os.makedirs(REGISTRY, exist_ok=True)
        self._save()

    def runtime_dir(self):
        """A tmpfs like production's /run (here /run is on disk): the helper keeps its
        socket and attachments.json there, and a rename on ext4 costs a data flush."""
        path = os.path.join(self.dir, "run")
        if not os.path.ismount(path):
            os.makedirs(path, exist_ok=True)
            sh("mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", f"pvb{self.tag}", path)
            self.defer(sh, "umount", "-l", path, check=False)
        return path

    def name(self, suffix=""):
        return f"{PREFIX}{self.tag}{suffix}"

    def _save(self):
        with open(os.path.join(REGISTRY, f"{self.tag}.json"), "w") as f:
            json.dump(self.record, f)

    def note(self, **fields):
        self.record.update(fields)
        self._save()

    def defer(self, fn, *args, **kw):
        self._stack.append((fn, args, kw))

    def close(self):
        # Signals must not interrupt the cleanup itself.
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            while self._stack:
                fn, args, kw = self._stack.pop()
                try:
                    fn(*args, **kw)
                except Exception as e:           # keep cleaning
                    say(f"  cleanup: {getattr(fn, '__name__', fn)}: {type(e).__name__}: {e}")
            sweep_tag(self.tag, self.record)
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def install_signal_handlers():
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"bench" in f.read()
    except OSError:
        return False


def sweep_stale():
    """Remove what earlier runs that died without cleaning up left behind."""
    for path in glob.glob(os.path.join(REGISTRY, "*.json")):
        tag = os.path.basename(path)[:-5]
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = {}
        if record.get("pid") and _alive(record["pid"]):
            continue
        say(f"sweeping leftovers of an interrupted bench run (tag {tag})")
        sweep_tag(tag, record)


def sweep_tag(tag, record):
    """Remove every resource named after `tag` (idempotent)."""
    stem = f"{PREFIX}{tag}"
    for path in glob.glob(f"/etc/pam.d/{PAM_PREFIX}{tag}*"):
        os.unlink(path)
    for name in netns_names():
        if name.startswith(stem):
            remove_netns(name)
    for mount in (cgroup_mount(), cpu_v1_mount()):
        if mount:
            remove_cgroup_tree(os.path.join(mount, CGROUP_PREFIX + tag))
    users = [p.pw_name for p in pwd.getpwall() if p.pw_name.startswith(stem)]
    for user in users:
        remove_user(user)
    groups = [line.split(":", 1)[0] for line in open("/etc/group") if line.startswith(stem)]
    for group in groups:
        sh("groupdel", group, check=False)
    if record.get("own_dev_log"):
        with contextlib.suppress(OSError):
            import stat
            if stat.S_ISSOCK(os.lstat("/dev/log").st_mode):
                os.unlink("/dev/log")
    if record.get("dir"):
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f if record["dir"] in line.split()[1]]
        for point in sorted(points, key=len, reverse=True):
            sh("umount", "-l", point, check=False)
        shutil.rmtree(record["dir"], ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(REGISTRY, f"{tag}.json"))


# -- cgroups --------------------------------------------------------------------

def kernel_state():
    """The cgroup2 mount as /proc/self/mountinfo shows it, whether
    favordynmods is on (a super option; read only, never changed here), and
    whether it was on once since boot (see favordynmods_stuck)."""
    state = {"mount": None, "mount_options": "", "super_options": "", "favordynmods": None}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            if fields[dash + 1] == "cgroup2":
                opts = fields[dash + 3].split(",") + fields[5].split(",")
                state = {"mount": fields[4], "mount_options": fields[5], "super_options": fields[dash + 3],
                         "favordynmods": "favordynmods" in opts}
                break
    state["favordynmods_stuck"] = favordynmods_stuck()
    return state


def favordynmods_stuck():
    """Linux 6.18 keeps the per-threadgroup rwsem once favordynmods has been
    on (it says so in the kernel log when the option is turned off): cgroup
    moves then never wait for an RCU grace period until the next boot, while
    the mount options no longer show favordynmods. None: no readable log."""
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return "per threadgroup rwsem mechanism can't be disabled" in log


def cpu_v1_mount():
    """Where the cgroup v1 `cpu` controller is mounted (hybrid hosts), or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            if fields[dash + 1] == "cgroup" and "cpu" in fields[dash + 3].split(","):
                return fields[4]
    return None


def hierarchy(path):
    mount = cgroup_mount()
    assert path.startswith(mount + "/"), path
    return path[len(mount):]


def join_cgroup(path):
    """A preexec_fn that moves the child into cgroup `path`."""
    return lab_run.enter(path)


def enter(cgroup_dir=None, user=None, also=()):
    """A preexec_fn: join cgroup `cgroup_dir` (and the cgroup v1 directories
    `also`) as root, then become `user` (a pwd entry)."""
    return lab_run.enter(cgroup_dir, user=user, also=also)


# -- the lab: netns + veth target + sandbox cgroup + helper ------------------------

class Lab:
    def __init__(self, run):
        self.run = run
        self.ns = run.name("n")
        self.target = run.name("v")          # 'pvb' + 5 + 1 = 9 chars < IFNAMSIZ
        self.peer = run.name("q")
        add_netns(self.ns)
        run.defer(remove_netns, self.ns)
        self.add_target()
        self.sandbox = os.path.join(cgroup_mount(), CGROUP_PREFIX + run.tag)
        os.mkdir(self.sandbox)
        run.defer(remove_cgroup_tree, self.sandbox)

    def add_target(self):
        add_veth(self.ns, self.target, self.peer)
        return self.ifindex()

    def ifindex(self):
        out = sh("ip", "-n", self.ns, "-j", "link", "show", "dev", self.target).stdout
        return json.loads(out)[0]["ifindex"]

    def cgroup(self, *parts):
        path = os.path.join(self.sandbox, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def nsenter(self, argv):
        return lab_run.nsenter(self.ns, argv)

    def write(self, name, text, mode=0o644):
        return write_file(os.path.join(self.run.dir, name), text, mode)

    def pam_service(self, suffix, session_line=None):
        """/etc/pam.d/bench-pvt<tag><suffix>: pam_permit everywhere, plus
        `session_line` (none: a pam_permit.so-only stack)."""
        name = f"{PAM_PREFIX}{self.run.tag}{suffix}"
        self.run.defer(_unlink, write_pam_service(name, session_line))
        return name


_unlink = unlink_quietly


def add_user(run, suffix, groups=()):
    user = lab_users.add_user(run.name(suffix), groups)
    run.defer(remove_user, user.pw_name)
    return user


class PrivateNss:
    """A user in many groups without touching the host's account files.

    Processes started through wrap() run in a private mount namespace where
    /etc is an overlay: the host's /etc below, and above it only `passwd`
    and `group`: the host's files as they were at the last write(), plus the
    bench's entries. NSS reads them with glibc's files backend, as on a real
    host; the host (and other test runs on it) never sees the entries, and
    no groupadd x1200 is needed. (A bind mount of the two files would not
    do: useradd/groupadd elsewhere on the host replace /etc/passwd by
    rename(), and the kernel then drops such mounts in other namespaces.)
    """

    FIRST_ID = 3_900_000            # far above anything useradd hands out

    def __init__(self, run):
        self.run = run
        self.upper = os.path.join(run.dir, "nss-etc")
        self.work = os.path.join(run.dir, "nss-work")
        os.makedirs(self.upper, mode=0o755, exist_ok=True)
        os.makedirs(self.work, mode=0o755, exist_ok=True)
        self.passwd = os.path.join(self.upper, "passwd")
        self.group = os.path.join(self.upper, "group")
        self._users, self._groups = [], []
        self._next = self.FIRST_ID

    def add_group(self, name):
        self._groups.append([name, self._next, []])
        self._next += 1
        return self._groups[-1]

    def add_user(self, name, member_of=()):
        primary = self.add_group(name)
        self._users.append((name, self._next, primary[1]))
        self._next += 1
        wanted = set(member_of)
        for g in self._groups:
            if g[0] in wanted:
                g[2].append(name)
        return name

    def write(self):
        """The files: the host's as they are now, plus the bench's entries
        (rewritten in place: running processes see the new content)."""
        for path, original, lines in (
                (self.passwd, "/etc/passwd", [f"{n}:x:{uid}:{gid}:bench:/nonexistent:/usr/sbin/nologin"
                                              for n, uid, gid in self._users]),
                (self.group, "/etc/group", [f"{n}:x:{gid}:{','.join(m)}" for n, gid, m in self._groups])):
            with open(original) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
            os.chmod(path, 0o644)

    def lines(self):
        with open(self.group) as f:
            return sum(1 for _ in f)

    def wrap(self, argv):
        """argv run in a mount namespace with the overlay on /etc (the files
        written afresh: users made since, e.g. a helper's, appear)."""
        self.write()
        script = ('mount -t overlay pvb-nss -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc && shift 2 '
                  '&& exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                self.upper, self.work, *argv]


class Helper:
    """pam-vrf-helper as in production: a throwaway non-root user holding
    ambient CAP_BPF,CAP_NET_ADMIN(,CAP_DAC_OVERRIDE), inside the lab's netns.
    Its output lines are kept with their arrival time (time.monotonic)."""

    CAPS = HELPER_CAPS

    def __init__(self, lab, config, suffix="h", profile=None, wrap=None):
        self.lab = lab
        self.wrap = wrap            # argv -> argv (e.g. PrivateNss.wrap)
        self.user = add_user(lab.run, suffix)
        self.workdir = helper_dir(lab.run.runtime_dir(), self.user, f"helper-{suffix}")
        self.socket = os.path.join(self.workdir, "helper.sock")
        self.root_socket = os.path.join(self.workdir, "root.sock")     # protocol.root_socket()
        self.config = config
        self.profile = profile and os.path.join(self.workdir, "helper.prof")
        self.lines = []
        self.cond = threading.Condition()
        self.proc = None
        lab.run.defer(self.stop)

    def argv(self):
        cmd = [HELPER_BIN]
        if self.profile:
            cmd = [PY, "-m", "cProfile", "-o", self.profile, HELPER_BIN]
        argv = helper_argv(self.user, self.socket, self.config, self.lab.ns, program=cmd)
        return self.wrap(argv) if self.wrap else argv

    def start(self):
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd="/")
        threading.Thread(target=self._read, daemon=True).start()
        try:
            wait_helper(self.socket, self.proc, self.output, timeout=20)
        except AssertionError as e:
            raise RuntimeError(str(e)) from None
        return self

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
                self.cond.notify_all()

    def output(self):
        with self.cond:
            return "\n".join(line for _, line in self.lines)

    def mark(self):
        with self.cond:
            return len(self.lines)

    def count(self, needle, mark=0):
        with self.cond:
            return sum(1 for _, line in self.lines[mark:] if needle in line)

    def wait_for(self, needle, mark=0, timeout=10):
        """(arrival time, line) of the first line since `mark` containing needle, or None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for when, line in self.lines[mark:]:
                    if needle in line:
                        return when, line
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def cpu_seconds(self):
        """user + system CPU time the helper process has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def schedstat(self):
        """(s on a CPU, s runnable but waiting for one) so far (/proc/PID/schedstat)."""
        with open(f"/proc/{self.proc.pid}/schedstat") as f:
            run, wait = f.read().split()[:2]
        return int(run) / 1e9, int(wait) / 1e9

    def memory(self):
        """{'VmHWM': kB, 'VmRSS': kB} of the helper process (the kernel's accounting)."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "VmSize"):
                    out[key] = int(line.split()[1])
        return out

    def stop(self):
        stop_process(self.proc, timeout=10)


# -- syslog -----------------------------------------------------------------------

class SyslogSink:
    """Drains /dev/log while the bench runs, where the host has no syslog
    daemon, so the hook's syslog write costs what it costs on a real host
    (a datagram to a listening socket) instead of a failed connect."""

    def __init__(self, run):
        self.own = not os.path.lexists("/dev/log")
        self.count = 0
        if not self.own:
            return
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("/dev/log")
        run.note(own_dev_log=True)
        os.chmod("/dev/log", 0o666)
        run.defer(self.close)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        while True:
            try:
                self.sock.recv(65536)
            except OSError:
                return
            self.count += 1

    def close(self):
        self.sock.close()
        _unlink("/dev/log")


def host_load():
    """(1-minute load average, ms for a fixed pure-Python loop of 10^6 additions
    in Debian's python3): how busy and how fast this shared host was."""
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    code = ("import time\nt=time.perf_counter()\ns=0\nfor i in range(1000000): s+=i\n"
            "print((time.perf_counter()-t)*1000)")
    runs = sorted(float(sh(PY, "-c", code, cwd="/").stdout) for _ in range(3))
    return load, runs[1]


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"kernel": os.uname().release, "cpu": cpu, "cores": os.cpu_count(),
            "python": sys.version.split()[0]}
