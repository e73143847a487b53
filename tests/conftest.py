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
