"""testlab: the lab kit that the host tests (tests/conftest.py,
tests/test_login.py), the benchmarks (bench/bench_common.py), the demo
(tools/demo.py) and the VM tests (tests/vm/vmlib.py) share: running commands
and waiting, throwaway users and groups (removed with their processes),
network namespaces with veth targets, cgroup trees (removed with their
members), a PAM service file, the helper started as in production (a non-root
user with ambient capabilities, in a netns), an sshd of its own (config, host
and user keys, a PAM service named after it, a port in a netns), a syslog sink
bind-mounted over /dev/log, the flood client, and a snapshot of what a run may
leave behind on the host (HostState). Plain standard library: no pytest, no
pam_vrf import at module level (the VM tests and the demo use the installed
package; the helper's ping imports pam_vrf.client when called). Importers put
the repository root on sys.path (see each of them); it is not installed.
"""

import contextlib
import ctypes
import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
import uuid

PY = "/usr/bin/python3"         # Debian's interpreter: other users cannot execute pyenv's (under /root)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER_BIN = "/usr/local/sbin/pam-vrf-helper"
HELPER_CAPS = "+bpf,+net_admin,+dac_override"
HOOK = "/usr/lib/pam-vrf/pam_vrf.py"
CLONE_NEWNET = 0x40000000


# -- commands, waiting ---------------------------------------------------------------

class CommandFailed(AssertionError, RuntimeError):
    """A command exited non-zero (an AssertionError for the tests, a
    RuntimeError for the benchmarks' callers)."""


def sh(*argv, check=True, timeout=None, **kw):
    """Run a command, capture its output as text; on failure (check) raise
    CommandFailed showing what it printed."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise CommandFailed(f"{' '.join(map(str, argv))} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def wait_until(what, predicate, timeout=30, interval=0.05):
    """Poll `predicate` until it returns something true; returns that, or
    raises AssertionError naming `what`. A predicate may raise to give up early."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def uid_tag(n=6):
    """A short unique tag: names must fit in 15 characters (IFNAMSIZ)."""
    return uuid.uuid4().hex[:n]


def write_file(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def public_dir(prefix):
    """A fresh temporary directory others may enter (0755)."""
    where = tempfile.mkdtemp(prefix=prefix)
    os.chmod(where, 0o755)
    return where


def stop_process(proc, timeout=5):
    """SIGTERM, then SIGKILL after `timeout` s; waits for it either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_quietly(pid, sig=signal.SIGKILL):
    with contextlib.suppress(ProcessLookupError, ValueError):
        os.kill(int(pid), sig)


# -- processes: a preexec_fn that enters a cgroup, a netns, a user ----------------------

def enter(cgroup_dir=None, netns=None, user=None, also=()):
    """A preexec_fn: join the cgroup `cgroup_dir` (and the cgroup v1
    directories `also`) as root, then the named netns, then become `user`
    (a pwd entry)."""
    def run():
        for d in ([cgroup_dir] if cgroup_dir else []) + list(also):
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        if netns:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            os.close(fd)
        if user:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
    return run


def nsenter(netns, argv):
    """argv run in the named netns (nsenter, not `ip netns exec`: that also
    remounts /sys and so hides the cgroup2 mount)."""
    return ["nsenter", f"--net=/run/netns/{netns}", *argv] if netns else list(argv)


# -- users and groups ----------------------------------------------------------------

def add_group(name):
    sh("groupadd", "--system", name)
    return name


def remove_group(name):
    sh("groupdel", name, check=False)


def add_user(name, groups=(), shell="/bin/sh"):
    """A system user with a group of its own, no home; returns its pwd entry."""
    argv = ["useradd", "--system", "--user-group", "--no-create-home", "--shell", shell]
    if groups:
        argv += ["--groups", ",".join(groups)]
    sh(*argv, name)
    return pwd.getpwnam(name)


def kill_user_processes(uid, timeout=30):
    """SIGKILL every process of `uid` and wait until none is left."""
    def gone():
        left = [pid for pid in pids_of_uid(uid)]
        for pid in left:
            kill_quietly(pid)
        return not left
    wait_until(f"the processes of uid {uid} to end", gone, timeout=timeout)


def pids_of_uid(uid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:   # the real uid, as pkill -u
                                out.append(int(entry))
                            break
            except OSError:
                pass
    return out


def remove_user(name, remove_home=False):
    """End the user's processes, delete it and its own group (idempotent)."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = None
    if uid is not None:
        kill_user_processes(uid)
    sh("userdel", "--force", *(["--remove"] if remove_home else []), name, check=False)
    sh("groupdel", name, check=False)


# -- network namespaces ----------------------------------------------------------------

def add_netns(name):
    """A named network namespace with lo up."""
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


def remove_netns(name):
    """Kill what runs in it, then delete it (idempotent)."""
    for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
        kill_quietly(pid)
    sh("ip", "netns", "del", name, check=False)


def netns_names():
    return [line.split()[0] for line in sh("ip", "netns", "list", check=False).stdout.splitlines() if line.split()]


def add_veth(netns, name, peer, up=True, peer_netns=None):
    """A veth pair `name` (in `netns`, up) / `peer` (there too, or in `peer_netns`)."""
    argv = ["ip", "-n", netns, "link", "add", name, "type", "veth", "peer", "name", peer]
    sh(*argv, *(["netns", peer_netns] if peer_netns else []))
    if up:
        sh("ip", "-n", netns, "link", "set", name, "up")


# -- cgroups ------------------------------------------------------------------------------

def cgroup_mount():
    """Where the cgroup2 file system is mounted, or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


def members(path):
    """The pids in one cgroup directory (not its children)."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def remove_cgroup_tree(path):
    """Kill what is left inside, then remove the directories, children first."""
    if not os.path.isdir(path):
        return
    for _ in range(50):
        pids = [p for d, _, _ in os.walk(path) for p in members(d)]
        if not pids:
            break
        for pid in pids:
            kill_quietly(pid)
        time.sleep(0.05)
    for here, _, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        for _ in range(40):
            try:
                os.rmdir(here)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)     # a killed process is leaving the cgroup


# -- PAM --------------------------------------------------------------------------------

def write_pam_service(name, session_line=None, comment=None):
    """/etc/pam.d/NAME: pam_permit everywhere, then `session_line` (if any).
    Refuses to overwrite a file that exists. Returns the path."""
    path = f"/etc/pam.d/{name}"
    assert not os.path.exists(path), f"{path} exists already"
    return write_file(path, (f"# {comment}\n" if comment else "")
                      + "auth     required  pam_permit.so\n"
                        "account  required  pam_permit.so\n"
                        "session  required  pam_permit.so\n"
                      + (f"{session_line}\n" if session_line else ""))


def unlink_quietly(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# -- the helper ---------------------------------------------------------------------------

def helper_argv(user, socket_path, config, netns=None, debug=False, program=(HELPER_BIN,)):
    """pam-vrf-helper as in production: `user` (a pwd entry) holding the
    ambient capabilities only, optionally inside the named netns."""
    argv = ["setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--init-groups",
            "--inh-caps", HELPER_CAPS, "--ambient-caps", HELPER_CAPS,
            *program, "--socket", socket_path, "--config", config, *(["--debug"] if debug else [])]
    return nsenter(netns, argv)


def helper_dir(parent_or_none, user, name=None):
    """A directory for the helper's sockets, owned by its user, 0755."""
    path = os.path.join(parent_or_none, name) if name else tempfile.mkdtemp(prefix="pam-vrf-helper-")
    if name:
        os.mkdir(path)
    os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, 0o755)
    return path


def wait_helper(socket_path, proc, output=lambda: "", timeout=15):
    """Until the helper answers a ping on `socket_path`; fails if `proc` exits first."""
    from pam_vrf import client

    def up():
        try:
            client.call({"op": "ping"}, socket_path)
            return True
        except client.HelperError:
            if proc.poll() is not None:
                raise AssertionError(f"helper did not start (exit {proc.returncode}):\n{output()}")
            return False
    try:
        wait_until("the helper to answer", up, timeout=timeout)
    except AssertionError as e:
        if "helper did not start" in str(e):
            raise
        raise AssertionError(f"helper did not start:\n{output()}") from None


# -- sshd of its own ----------------------------------------------------------------------

class Sshd:
    """sshd under the program (and so PAM) name `service` (a symlink to
    /usr/sbin/sshd in `dir`), listening on 127.0.0.1:`port` inside `netns`,
    with a host key of its own and one user key: user(name) authorises it
    for that user. Its PAM stack, /etc/pam.d/SERVICE, is the caller's."""

    def __init__(self, dir, service, port, netns=None, extra_config=""):
        self.dir, self.service, self.port, self.netns = dir, service, port, netns
        self.proc = None
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)      # sshd's privilege separation dir
        for key in ("hostkey", "userkey"):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{dir}/{key}")
        os.makedirs(f"{dir}/keys")
        os.chmod(f"{dir}/keys", 0o755)
        write_file(f"{dir}/sshd_config", textwrap.dedent(f"""\
            ListenAddress 127.0.0.1:{port}
            HostKey {dir}/hostkey
            PidFile none
            UsePAM yes
            AuthorizedKeysFile {dir}/keys/%u
            StrictModes no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PubkeyAuthentication yes
            PermitRootLogin no
            MaxStartups 100
            LogLevel VERBOSE
        """) + extra_config)
        os.symlink("/usr/sbin/sshd", f"{dir}/{service}")
        self.log_path = f"{dir}/sshd.log"

    def authorize(self, name):
        shutil.copy(f"{self.dir}/userkey.pub", f"{self.dir}/keys/{name}")
        os.chmod(f"{self.dir}/keys/{name}", 0o644)

    def start(self, cgroup_dir=None, wrap=lambda argv: argv, timeout=10):
        argv = wrap(nsenter(self.netns, [f"{self.dir}/{self.service}", "-D", "-e", "-f", f"{self.dir}/sshd_config"]))
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, preexec_fn=enter(cgroup_dir), stdout=self.log, stderr=subprocess.STDOUT)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited with {self.proc.returncode}:\n{self.output()}")
            return "Server listening" in self.output()
        try:
            wait_until("sshd to listen", listening, timeout=timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.output()}") from None
        return self

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def ssh_argv(self, name, command):
        return nsenter(self.netns, [
            "ssh", "-F", "/dev/null", "-i", f"{self.dir}/userkey", "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{name}@127.0.0.1", command])

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None
            self.log.close()


# -- syslog -------------------------------------------------------------------------------

class SyslogSink:
    """A syslog receiver for the processes under test.

    It listens in a directory of its own; wrap() runs a command in a private
    mount namespace where that socket is bind-mounted over /dev/log, so the
    host's syslog is left alone and several test runs can share a machine.
    A bind mount needs something at /dev/log: where there is nothing (CI has
    no syslog daemon), an empty regular file is left there for good (removing
    it would detach other runs' mounts).
    """

    def __init__(self):
        if not os.path.lexists("/dev/log"):
            try:
                os.close(os.open("/dev/log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                pass
        self.dir = public_dir("pam-vrf-syslog-")
        self.path = os.path.join(self.dir, "log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            with self.cond:
                self.lines.append(data.decode(errors="replace"))
                self.cond.notify_all()

    def wrap(self, argv):
        # (Re)create the mount point: another run on this machine may have removed it.
        script = '[ -e /dev/log ] || : >> /dev/log; mount --bind "$0" /dev/log && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, self.path, *argv]

    def mark(self):
        with self.cond:
            return len(self.lines)

    def since(self, mark):
        with self.cond:
            return self.lines[mark:]

    def wait_for(self, needle, mark=0, timeout=10):
        """The first line since `mark` containing every given string."""
        needles = [needle] if isinstance(needle, str) else list(needle)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[mark:]:
                    if all(n in line for n in needles):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no syslog line with {needles}; got:\n" + "\n".join(self.lines[mark:]))
                self.cond.wait(left)

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the flood client (tests/test_login.py, bench/bench_flood.py) ---------------------------

# argv: SOCKET KIND VRF [SECONDS]. Prints "flooding", then loops until SIGTERM
# (or SECONDS have passed) and prints its counts as JSON. Kinds:
#   churn    connect + close
#   hold     connect and keep up to 64 connections open (never send)
#   garbage  connect + 512 random bytes + read the answer
#   place    a valid `place` request for VRF (with a pidfd of itself)
FLOODER = textwrap.dedent("""\
    import json, os, signal, socket, sys, time
    path, kind, vrf = sys.argv[1], sys.argv[2], sys.argv[3]
    until = time.monotonic() + float(sys.argv[4]) if len(sys.argv) > 4 else float("inf")
    stop = False
    def on_term(signum, frame):
        global stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    counts = {"connects": 0, "answers": 0, "busy": 0, "errors": 0}
    held = []
    request = b'{"v":2,"op":"place","vrf":"%s"}' % vrf.encode()
    print("flooding", flush=True)
    while not stop and time.monotonic() < until:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(1)
            s.connect(path)
            counts["connects"] += 1
            if kind == "hold":
                held.append(s)
                if len(held) > 64:
                    held.pop(0).close()
                continue
            if kind == "garbage":
                s.send(os.urandom(512))
            elif kind == "place":
                fd = os.pidfd_open(os.getpid())
                s.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])
                os.close(fd)
            if kind != "churn":
                answer = s.recv(4096)
                counts["busy" if b"busy" in answer else "answers"] += 1
            s.close()
        except OSError:
            counts["errors"] += 1
    print(json.dumps(counts), flush=True)
""")


# -- what a run leaves behind ----------------------------------------------------------------

def _digest(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError as e:
        return f"unreadable: {e.strerror}"


def _tree(top, content=True):
    """{path: digest or 'dir'} of everything below `top` (symlinks by target)."""
    out = {}
    for here, dirs, files in os.walk(top):
        for d in dirs:
            out[os.path.join(here, d)] = "dir"
        for name in files:
            path = os.path.join(here, name)
            out[path] = ("-> " + os.readlink(path) if os.path.islink(path)
                         else _digest(path) if content else "file")
    return out


def _names(path):
    with open(path) as f:
        return {line.split(":", 1)[0] for line in f if ":" in line}


def _processes():
    """{pid: (real uid, comm)} of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            out[int(entry)] = (int(fields["Uid"].split()[0]), fields["Name"].strip())
        except (OSError, KeyError, ValueError):
            pass
    return out


class HostState:
    """What a run could leave behind on this host, read at one moment:
    users and groups, /etc/pam.d, /etc/security/vrf.conf, /etc/ssh, network
    namespaces, links of this network namespace, cgroup2 directories, mounts,
    files below /run/pam-vrf*, our temporary directories in /tmp, and
    processes whose uid has no user. leftovers(earlier) lists, per item,
    what is here now and was not then (or changed)."""

    TMP_PREFIXES = ("pam-vrf-", "pvt")

    def __init__(self):
        self.items = {
            "users": _names("/etc/passwd"),
            "groups": _names("/etc/group"),
            "/etc/pam.d": set(f"{p} {d}" for p, d in _tree("/etc/pam.d").items()),
            "/etc/security/vrf.conf": {_digest("/etc/security/vrf.conf")},
            "/etc/ssh": set(f"{p} {d}" for p, d in _tree("/etc/ssh").items()),
            "network namespaces": set(netns_names()) | set(os.listdir("/run/netns") if os.path.isdir("/run/netns")
                                                           else ()),
            "links": {line.split(":")[1].strip().split("@")[0]
                      for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines()},
            "cgroups": self._cgroups(),
            "mounts": self._mounts(),
            "/run/pam-vrf*": set(p for top in glob.glob("/run/pam-vrf*")
                                 for p in [top, *_tree(top, content=False)]),
            "/tmp": {os.path.join("/tmp", n) for n in os.listdir("/tmp") if n.startswith(self.TMP_PREFIXES)},
        }
        uids = {p.pw_uid for p in pwd.getpwall()}
        self.items["processes without a user"] = {
            f"{pid} uid={uid} {name}" for pid, (uid, name) in _processes().items() if uid not in uids}

    @staticmethod
    def _cgroups():
        mount = cgroup_mount()
        if not mount:
            return set()
        return {here[len(mount):] or "/" for here, _, _ in os.walk(mount)}

    @staticmethod
    def _mounts():
        out = set()
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                dash = fields.index("-")
                out.add(f"{fields[4]} {fields[dash + 1]} {fields[dash + 2]}")
        return out

    def leftovers(self, earlier):
        """{item: sorted list of what is new or changed since `earlier`}."""
        out = {}
        for key, now in self.items.items():
            new = sorted(now - earlier.items.get(key, set()))
            if key == "/etc/security/vrf.conf" and new:
                new = [f"content changed ({sorted(earlier.items[key])[0]} -> {new[0]})"]
            if new:
                out[key] = new
        return out

    def gone(self, earlier):
        """{item: what was there before and is not now} (a run should not remove
        the host's things either)."""
        out = {}
        for key, then in earlier.items.items():
            if key in ("processes without a user", "/tmp", "/etc/security/vrf.conf"):
                continue
            missing = sorted(then - self.items.get(key, set()))
            if missing:
                out[key] = missing
        return out
