"""Shared fixtures: network namespaces, a sandbox cgroup, throwaway users,
and a way to run a small Python program inside a cgroup / netns / user.
They are thin pytest wrappers around testlab (the repository's lab kit,
shared with the benchmarks, the demo and the VM tests). At the end of the
session the host is compared with its state at the start: anything the run
left behind fails it (pytest_sessionfinish below).

Everything a test creates carries a unique name and is removed in the
fixture's teardown, also when the test fails. Nothing touches the host's
own interfaces, users or PAM/sshd configuration.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from pam_vrf import cgroup

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import testlab  # noqa: E402  (the repository's lab kit: see testlab/__init__.py)
from testlab import PY, REPO, remove_cgroup_tree, sh, uid_tag  # noqa: E402,F401  (the tests import them from here)


def spawn(argv, netns=None, cgroup_dir=None, user=None, **kw):
    return subprocess.Popen(argv, preexec_fn=testlab.enter(cgroup_dir, netns, user), **kw)


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
        made.append(name)
        return testlab.add_netns(name)

    yield make
    for name in made:
        testlab.remove_netns(name)


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
    made = []

    def make(groups=()):
        name = f"pvt{uid_tag()}"
        made.append(name)
        return testlab.add_user(name, groups)

    yield make
    for name in made:
        testlab.remove_user(name)


@pytest.fixture(scope="session")
def public_repo():
    """A copy of the package that other users can import (the checkout may sit
    below a directory only root can enter)."""
    where = testlab.public_dir("pam-vrf-pkg-")
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


@pytest.fixture(scope="session")
def syslog():
    sink = testlab.SyslogSink()
    yield sink
    sink.close()


class Helper:
    """pam-vrf-helper as in production: a non-root user with ambient caps only,
    its output in WORKDIR/helper.log, its syslog to `syslog` (a SyslogSink)."""

    CAPS = testlab.HELPER_CAPS

    def __init__(self, user, workdir, config, netns=None, syslog=None):
        self.user, self.workdir, self.config, self.netns, self.syslog = user, workdir, config, netns, syslog
        self.socket = os.path.join(workdir, "helper.sock")
        self.root_socket = os.path.join(workdir, "root.sock")
        self.proc = None

    def argv(self):
        argv = testlab.helper_argv(self.user, self.socket, self.config, self.netns, debug=True)
        return self.syslog.wrap(argv) if self.syslog else argv

    def start(self):
        self.log = open(os.path.join(self.workdir, "helper.log"), "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=subprocess.STDOUT)
        testlab.wait_helper(self.socket, self.proc, self.output)
        return self

    def stop(self):
        testlab.stop_process(self.proc)
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
        workdir = testlab.helper_dir(None, user)
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
    where = testlab.public_dir("pam-vrf-conf-")

    def write(text, path=None):
        return testlab.write_file(path or os.path.join(where, f"vrf{len(os.listdir(where))}.conf"), text)

    yield write
    shutil.rmtree(where, ignore_errors=True)


# -- a run leaves nothing behind ------------------------------------------------

def pytest_sessionstart(session):
    """Host runs only: not in the test VM (systemd makes and removes cgroups
    and users' units there as it likes), not for --collect-only, not with
    PAM_VRF_LEFTOVERS_CHECK=0."""
    if (os.path.exists("/etc/pam-vrf-test-vm") or session.config.option.collectonly
            or os.environ.get("PAM_VRF_LEFTOVERS_CHECK") == "0"):
        return
    # The first `ip netns add` on a host mounts /run/netns (once, for good):
    # made here, before the snapshot, so the check compares like with like.
    probe = f"pvt-{uid_tag()}probe"
    testlab.add_netns(probe)
    testlab.remove_netns(probe)
    session.config._pam_vrf_host_before = testlab.HostState()


@pytest.hookimpl(trylast=True)      # after the session fixtures' teardown
def pytest_sessionfinish(session, exitstatus):
    """Compare the host with what it was before the run: whatever the run
    added (users, groups, pam.d files, vrf.conf, netns, links, cgroups, mounts,
    /run/pam-vrf*, /etc/ssh, /tmp/pam-vrf-*, processes of removed users)
    is printed, and the run fails."""
    before = getattr(session.config, "_pam_vrf_host_before", None)
    if before is None:
        return
    after = testlab.HostState()
    left, gone = after.leftovers(before), after.gone(before)
    report = session.config.pluginmanager.get_plugin("terminalreporter")
    write = report.write_line if report else print
    if report:
        report.ensure_newline()
        report.section("host state after the run")
    for key, items in left.items():
        write(f"LEFT BEHIND {key}: {len(items)}")
        for item in items[:50]:
            write(f"    {item}")
    for key, items in gone.items():
        write(f"(gone since the start, not counted: {key}: {', '.join(items[:10])}"
              f"{' ...' if len(items) > 10 else ''})")
    if not left:
        write("leftovers check: nothing left behind")
    elif session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
