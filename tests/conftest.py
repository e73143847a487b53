"""Shared fixtures: network namespaces, a sandbox cgroup, throwaway users,
and a way to run a small Python program inside a cgroup / netns / user.

Everything a test creates carries a unique name and is removed in the
fixture's teardown, also when the test fails. Nothing touches the host's
own interfaces, users or PAM/sshd configuration.
"""

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from pam_vrf import cgroup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Debian's interpreter: other users cannot execute pyenv's (under /root).
PY = "/usr/bin/python3"
CLONE_NEWNET = 0x40000000


def sh(*argv, check=True, **kw):
    """Run a command; on failure show what it printed."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def uid_tag():
    """A short unique tag: names must fit in 15 characters (IFNAMSIZ)."""
    return uuid.uuid4().hex[:6]


def _enter(netns=None, cgroup_dir=None, user=None):
    """A preexec_fn: join the cgroup (as root), then the netns, then drop to `user`."""
    def run():
        if cgroup_dir:
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
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


def spawn(argv, netns=None, cgroup_dir=None, user=None, **kw):
    return subprocess.Popen(argv, preexec_fn=_enter(netns, cgroup_dir, user), **kw)


def run_py(code, netns=None, cgroup_dir=None, user=None, args=(), env=None, timeout=30):
    """Run `code` with Debian's python3 inside cgroup/netns/user; returns its
    stdout parsed as JSON (the code prints one JSON value)."""
    proc = spawn([PY, "-c", code, *map(str, args)], netns, cgroup_dir, user,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err}"
    return json.loads(out)


@pytest.fixture
def netns():
    """A factory of fresh named network namespaces (lo up), deleted afterwards."""
    made = []

    def make(tag=""):
        name = f"pvt-{uid_tag()}{tag}"
        sh("ip", "netns", "add", name)
        made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in made:
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", name, check=False)


def _kill_members(path):
    for _ in range(50):
        pids = [pid for d, _, _ in os.walk(path) for pid in cgroup.members(d)]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def remove_cgroup_tree(path):
    """Kill what is left inside, then remove the directories, children first."""
    if not os.path.isdir(path):
        return
    _kill_members(path)
    for here, dirs, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        for _ in range(40):
            try:
                os.rmdir(here)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)     # a killed process is leaving the cgroup


@pytest.fixture
def sandbox_cgroup():
    """A fresh top-level cgroup for the test, removed with everything inside."""
    path = os.path.join(cgroup.mount_point(), f"pam-vrf-test-{uid_tag()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        remove_cgroup_tree(path)


@pytest.fixture
def throwaway_user():
    """A factory of throwaway system users (no home), deleted afterwards."""
    import pwd
    made = []

    def make(groups=()):
        name = f"pvt{uid_tag()}"
        sh("useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/sh", name)
        made.append(name)
        for group in groups:
            sh("usermod", "-aG", group, name)
        return pwd.getpwnam(name)

    yield make
    for name in made:
        sh("userdel", "-f", name, check=False)
        sh("groupdel", name, check=False)


@pytest.fixture(scope="session")
def public_repo():
    """A copy of the package that other users can import (the checkout may sit
    below a directory only root can enter)."""
    where = tempfile.mkdtemp(prefix="pam-vrf-pkg-")
    os.chmod(where, 0o755)
    shutil.copytree(os.path.join(REPO, "pam_vrf"), os.path.join(where, "pam_vrf"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for d, dirs, files in os.walk(where):
        for name in dirs:
            os.chmod(os.path.join(d, name), 0o755)
        for name in files:
            os.chmod(os.path.join(d, name), 0o644)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def pam_vrf_cli(*args, env_extra=None, check=False):
    """Run the `pam-vrf` CLI from this checkout."""
    env = dict(os.environ, PYTHONPATH=REPO, **(env_extra or {}))
    return sh(PY, "-m", "pam_vrf", *args, check=check, env=env)


if sys.executable != PY and not os.environ.get("PAM_VRF_ANY_PYTHON"):
    # The product runs on Debian's interpreter (pam_python embeds it): test there.
    raise pytest.UsageError(f"run the tests with {PY} -m pytest (this is {sys.executable})")


# -- installed product, syslog, helper daemon ---------------------------------

@pytest.fixture(scope="session")
def installed():
    """`make install` on this host (pam_python imports only what is installed);
    `make uninstall` afterwards unless it was installed before the tests."""
    before = os.path.exists("/usr/lib/pam-vrf/pam_vrf.py")
    sh("make", "-C", REPO, "install")
    yield
    if not before:
        sh("make", "-C", REPO, "uninstall", check=False)


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
        import socket
        import threading
        if not os.path.lexists("/dev/log"):
            try:
                os.close(os.open("/dev/log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                pass
        self.dir = tempfile.mkdtemp(prefix="pam-vrf-syslog-")
        os.chmod(self.dir, 0o755)
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


@pytest.fixture(scope="session")
def syslog():
    sink = SyslogSink()
    yield sink
    sink.close()


class Helper:
    """pam-vrf-helper as in production: a non-root user with ambient caps only."""

    CAPS = "+bpf,+net_admin,+dac_override"

    def __init__(self, user, workdir, config, netns=None, syslog=None):
        self.user, self.workdir, self.config, self.netns, self.syslog = user, workdir, config, netns, syslog
        self.socket = os.path.join(workdir, "helper.sock")
        self.root_socket = os.path.join(workdir, "root.sock")
        self.proc = None

    def argv(self):
        argv = ["setpriv", "--reuid", str(self.user.pw_uid), "--regid", str(self.user.pw_gid),
                "--init-groups", "--inh-caps", self.CAPS, "--ambient-caps", self.CAPS,
                "/usr/local/sbin/pam-vrf-helper", "--socket", self.socket, "--config", self.config, "--debug"]
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        return self.syslog.wrap(argv) if self.syslog else argv

    def start(self):
        from pam_vrf import client
        self.log = open(os.path.join(self.workdir, "helper.log"), "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.call({"op": "ping"}, self.socket)
                return self
            except client.HelperError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"helper did not start:\n{self.output()}")
                time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def output(self):
        with open(os.path.join(self.workdir, "helper.log"), "rb") as f:
            return f.read().decode(errors="replace")


@pytest.fixture
def helper_factory(installed, throwaway_user):
    """Start helpers: helper_factory(config_path, netns=None) -> Helper."""
    started = []

    def make(config, netns=None, syslog=None):
        user = throwaway_user()
        workdir = tempfile.mkdtemp(prefix="pam-vrf-helper-")
        os.chown(workdir, user.pw_uid, user.pw_gid)
        os.chmod(workdir, 0o755)
        helper = Helper(user, workdir, config, netns, syslog)
        started.append(helper)
        return helper.start()

    yield make
    for helper in started:
        helper.stop()
        shutil.rmtree(helper.workdir, ignore_errors=True)


@pytest.fixture
def vrf_conf():
    """vrf_conf(text) -> path of a world-readable vrf.conf; rewrite by calling again
    with path=. Removed afterwards."""
    where = tempfile.mkdtemp(prefix="pam-vrf-conf-")
    os.chmod(where, 0o755)

    def write(text, path=None):
        path = path or os.path.join(where, f"vrf{len(os.listdir(where))}.conf")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        return path

    yield write
    shutil.rmtree(where, ignore_errors=True)
