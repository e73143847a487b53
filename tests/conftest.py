"""Shared fixtures: network namespaces, a sandbox cgroup, throwaway users, the
installed product, a syslog sink, helpers started as in production. They are
thin pytest wrappers around testlab (the repository's lab kit, shared with the
benchmarks, the demo and the VM tests): tests import what they call from
testlab, never from this file. At the end of the session the host is compared
with its state at the start: anything the run left behind fails it
(pytest_sessionfinish below).

Markers (setup.cfg): `root` marks a test that needs root and this host's
kernel, `slow` one that takes minutes, `vm` the tests/vm ones (given here, by
path). `make check` runs the rest without root under any python3 with pytest;
a run that selects a root test must be root under Debian's interpreter.

Everything a test creates carries a unique name and is removed in the
fixture's teardown, also when the test fails. Nothing touches the host's
own interfaces, users or PAM/sshd configuration.
"""

import os
import pwd
import re
import shutil
import sys

import pytest

from testlab.cgroups import remove_cgroup_tree
from testlab.helper import Helper, helper_dir
from testlab.hoststate import HostState
from testlab.net import add_netns, remove_netns
from testlab.run import PY, REPO, public_dir, sh, uid_tag, write_file
from testlab.syslogsink import SyslogSink
from testlab.users import add_user, remove_user
from pam_vrf import cgroup

VM_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vm")


@pytest.fixture
def netns():
    """A factory of fresh named network namespaces (lo up), deleted afterwards."""
    made = []

    def make(tag=""):
        name = f"pvt-{uid_tag()}{tag}"
        made.append(name)
        return add_netns(name)

    yield make
    for name in made:
        remove_netns(name)


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
        return add_user(name, groups)

    yield make
    for name in made:
        remove_user(name)


@pytest.fixture(scope="session")
def public_repo():
    """A copy of the package and of testlab that other users can import (the
    checkout may sit below a directory only root can enter)."""
    where = public_dir("pam-vrf-pkg-")
    for package in ("pam_vrf", "testlab"):
        shutil.copytree(os.path.join(REPO, package), os.path.join(where, package),
                        ignore=shutil.ignore_patterns("__pycache__"))
    for d, dirs, files in os.walk(where):
        for name in dirs:
            os.chmod(os.path.join(d, name), 0o755)
        for name in files:
            os.chmod(os.path.join(d, name), 0o644)
    yield where
    shutil.rmtree(where, ignore_errors=True)


# -- installed product, syslog, helper daemon ---------------------------------

@pytest.fixture(scope="session")
def installed():
    """`make install` on this host (pam_python imports only what is installed);
    `make uninstall` afterwards unless it was installed before the tests."""
    before = os.path.exists("/usr/lib/pam-vrf/pam_vrf.py")
    user_before = _user_exists("pam-vrf")
    sh("make", "-C", REPO, "install")
    yield
    if not before:
        sh("make", "-C", REPO, "uninstall", check=False)
    if not user_before:
        # `make uninstall` keeps the helper's system user (files may carry its
        # uid, as Debian keeps system users); a run that made it removes it.
        remove_user("pam-vrf")


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def syslog():
    sink = SyslogSink()
    yield sink
    sink.close()


@pytest.fixture
def helper_factory(installed, throwaway_user):
    """Start helpers: helper_factory(config_path, netns=None) -> Helper."""
    started = []

    def make(config, netns=None, syslog=None):
        user = throwaway_user()
        workdir = helper_dir(None, user)
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
    where = public_dir("pam-vrf-conf-")

    def write(text, path=None):
        return write_file(path or os.path.join(where, f"vrf{len(os.listdir(where))}.conf"), text)

    yield write
    shutil.rmtree(where, ignore_errors=True)


# -- a run leaves nothing behind ------------------------------------------------

MODULE_MARK = re.compile(r"^pytestmark = \[?(pytest\.mark\.\w+(?:, pytest\.mark\.\w+)*)\]?$", re.M)


def pytest_ignore_collect(collection_path, config):
    """A module marked as a whole (pytestmark) that the -m expression leaves out
    is not even imported: its imports may need what only its suite has (pyroute2,
    bcc), and `make check` must run where they are missing."""
    if collection_path.suffix != ".py" or not config.option.markexpr:
        return None
    try:
        found = MODULE_MARK.search(collection_path.read_text())
    except OSError:
        return None
    if not found:
        return None
    marks = {m.rsplit(".", 1)[1] for m in found.group(1).split(", ")}
    from _pytest.mark.expression import Expression      # what -m itself evaluates
    return True if not Expression.compile(config.option.markexpr).evaluate(
        lambda name, **kwargs: name in marks) else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(VM_TESTS + os.sep):
            item.add_marker(pytest.mark.vm)


def pytest_collection_finish(session):
    """A run that selects a root test needs root and Debian's interpreter (the
    product runs there: pam_python embeds it), and gets the leftovers check."""
    root_tests = [item for item in session.items if item.get_closest_marker("root")]
    if not root_tests or session.config.option.collectonly:
        return
    if os.geteuid() != 0:
        raise pytest.UsageError(f"{len(root_tests)} selected tests need root (marked root, e.g. "
                                f"{root_tests[0].nodeid}): run them as root, or `make check` for the rest")
    if sys.executable != PY and not os.environ.get("PAM_VRF_ANY_PYTHON"):
        raise pytest.UsageError(f"run the root tests with {PY} -m pytest (this is {sys.executable})")
    _snapshot_host(session)


def _snapshot_host(session):
    """Host runs only: not in the test VM (systemd makes and removes cgroups
    and users' units there as it likes), not with PAM_VRF_LEFTOVERS_CHECK=0.
    Taken after collection, before the first test."""
    if os.path.exists("/etc/pam-vrf-test-vm") or os.environ.get("PAM_VRF_LEFTOVERS_CHECK") == "0":
        return
    # The first `ip netns add` on a host mounts /run/netns (once, for good):
    # made here, before the snapshot, so the check compares like with like.
    probe = f"pvt-{uid_tag()}probe"
    add_netns(probe)
    remove_netns(probe)
    session.config._pam_vrf_host_before = HostState()


@pytest.hookimpl(trylast=True)      # after the session fixtures' teardown
def pytest_sessionfinish(session, exitstatus):
    """Compare the host with what it was before the run: whatever the run
    added (users, groups, pam.d files, vrf.conf, netns, links, cgroups, mounts,
    /run/pam-vrf*, /etc/ssh, /tmp/pam-vrf-*, processes of removed users)
    is printed, and the run fails."""
    before = getattr(session.config, "_pam_vrf_host_before", None)
    if before is None:
        return
    after = HostState()
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
