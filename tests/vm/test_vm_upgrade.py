"""The package upgraded, downgraded, removed and purged in place on the test
VM, with 10 sessions of op1 (`@netops mgmt`) placed and ssh logins of op1
arriving all the time (every 0.5 s while fewer than 3 are under way: the TCG
VM serves no more, see vm_upgrade.LoginStream), plus a ping of root.sock
every 0.1 s as a login asks it. NEXT is the image's own `make deb` with a bumped version
(tests/vm/vm_upgrade.py). In order:

1. upgrade (apt-get install ./NEXT.deb): no login fails or goes unplaced
   and no ping goes unanswered (the helper's restart is waited for: the
   socket units are not restarted, root.sock's listening socket is the same
   before and after); NEXT's helper runs and remembers every session; every
   session keeps binding (new sockets bound to mgmt, the sock_create, egress
   and setsockopt programs on its cgroup); mgmt deleted and created again
   afterwards re-links all of them.
2. downgrade (apt-get install --allow-downgrades the original .deb over
   NEXT): the same; the older helper loads the state file NEXT wrote.
3. apt-get remove, a gap of a few seconds, apt-get install again: during the
   gap the package's units are stopped and pam_vrf.so is out of the stacks,
   so logins succeed unplaced; placed sessions keep their programs (the
   kernel holds them) and stay bound; the state file stays; after the
   install logins are placed again (the admin's pam-auth-update choice comes
   back) and a re-created VRF re-links the sessions from before the remove.
4. apt-get purge, then install: the sessions stay bound (programs attached),
   but the state file is gone with /run/pam-vrf-helper, and so is the
   package's vrf.conf and the profile; the reinstalled helper remembers
   nothing, so a re-created VRF does not re-link them (their new sockets stay
   bound to the deleted device: nothing leaves) until they log in again.

Afterwards the original package, vrf.conf and the profile are back (also when a test fails).
"""

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
import vm_upgrade as up  # noqa: E402
from vmlib import SOCKETS, VRF, ifindex, run, wait_until  # noqa: E402
from test_vm_recreate import create_mgmt, lab_restored, peers  # noqa: E402,F401 (fixtures)

# One release, as test_vm_deb: the same .deb installs on both, and the cycle
# (four apt runs under a login stream) costs many minutes under TCG.
pytestmark = [vmlib.vm_only,
              vmlib.only_on("trixie", "the package's upgrade/downgrade/remove/purge cycle runs once, on 13, "
                                      "to keep make test within its hour; 12 installs the same .deb")]

SESSIONS = 10
USER = "op1"


class Packages:
    def __init__(self, orig, next_deb, next_version, next_py):
        self.orig, self.next = orig, next_deb
        self.orig_version, self.next_version, self.next_py = up.deb_version(orig), next_version, next_py


@pytest.fixture(scope="module")
def pkgs():
    """The original .deb and NEXT; on the way out the original package,
    vrf.conf and the pam-auth-update profile as they were."""
    orig = up.original_deb()
    if orig is None or up.installed_version() is None:
        pytest.skip(f"pam-vrf is not installed from a .deb in {up.CACHE} (a Vagrant box runs make install): "
                    "the CI image (vagrant/ci/test-vm) is the one that installs the package")
    assert up.installed_version() == up.deb_version(orig), (up.installed_version(), orig)
    vmlib.cgroup_mount()        # pam_vrf.cgroup imported now: the package is removed later
    with open(vmlib.VRF_CONF) as f:
        conf = f.read()
    profile = up.profile_enabled()
    with up.scratch() as d:
        try:
            yield Packages(orig, *up.build_next(orig, d))
        finally:
            run("dpkg", "--configure", "-a", check=False, timeout=1200)    # an apt-get cut short
            if up.installed_version() != up.deb_version(orig):
                up.apt("install", "--allow-downgrades", orig)
            if not os.path.exists(vmlib.VRF_CONF) or open(vmlib.VRF_CONF).read() != conf:
                with open(vmlib.VRF_CONF, "w") as f:
                    f.write(conf)
            if profile and not up.profile_enabled():
                run("pam-auth-update", "--enable", "pam-vrf")
            vmlib.helper_up()


@pytest.fixture(scope="module")
def sessions(pkgs):
    """SESSIONS placed ssh sessions of USER, open for the whole module."""
    opened = []
    try:
        for _ in range(SESSIONS):
            s = vmlib.Session(USER)
            opened.append(s)
            assert s.first["cgroup"].endswith(f"/vrf/{VRF}"), s.first
        yield opened
    finally:
        for s in opened:
            s.close()


def install(deb, *options):
    if up.installed_version() != up.deb_version(deb):
        up.apt("install", *options, deb)


def session_problems(sessions, index, guards=True, gone=False):
    """What is wrong with the sessions: a new socket not bound to VRF at
    `index` (gone: to that ifindex, whose device was deleted: no name, the
    kernel answers ENODEV for it), or (guards) a program missing from the
    session's cgroup."""
    expected = {"dev": "errno:19" if gone else VRF, "ifindex": index}
    problems = []
    for n, s in enumerate(sessions):
        got = s.again()["sockets"]
        wrong = {k: got[k] for k in SOCKETS if got[k] != expected}
        if wrong:
            problems.append(f"session {n} ({s.first['cgroup']}): new sockets {wrong}, not bound to {VRF} "
                            f"(ifindex {index})")
        if guards:
            missing = up.missing_guards(vmlib.cgroup_mount() + s.first["cgroup"])
            if missing:
                problems.append(f"session {n} ({s.first['cgroup']}): no {missing} program on its cgroup")
    return problems


def recreate_relinks(sessions):
    """mgmt deleted and created again: every session's new sockets bind to the new device."""
    old = ifindex(VRF)
    mark = vmlib.journal_mark()
    run("ip", "link", "del", VRF)
    create_mgmt()
    new = ifindex(VRF)
    assert new != old
    vmlib.wait_journal(mark, [f"device {VRF} is back as ifindex {new}", "re-attached"], timeout=30,
                       SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)
    last = []

    def relinked():
        last[:] = session_problems(sessions, new)
        return not last
    try:
        wait_until(f"every session to bind to the new {VRF}", relinked, timeout=30, interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}: {last}") from None
    vmlib.wait_lab_ok()


def upgrade_like(deb, options, name, sessions, pkgs_version, py_version):
    """Install `deb` over what is installed while logins arrive; everything
    must stay placed. Returns the helper's start line."""
    assert not session_problems(sessions, ifindex(VRF))
    pid, inode, mark = vmlib.helper_pid(), up.listener_inode(), vmlib.journal_mark()
    with up.traffic(USER) as t:
        time.sleep(3)
        t0 = t["stream"].now()
        _, seconds = up.apt("install", *options, deb)
        t1 = t["stream"].now()
        wait_until("the helper to answer", vmlib.helper_ping, timeout=60)
        answering = t["stream"].now()
        wait_until("two logins after the upgrade", lambda: len(t["stream"].done(answering)) >= 2, timeout=120)
    logins, pings = t["logins"], t["pings"]
    lines = up.summary(logins, pings)
    up.record(name, {"apt_seconds": seconds, "apt_window": [t0, t1], "logins": logins, "pings": pings,
                     "summary": lines})
    problems = [line for line in lines[1:] if line.startswith("  ")]
    assert up.installed_version() == pkgs_version
    start = up.helper_start_line(mark)
    assert start and f"pam-vrf-helper {py_version} serving" in start, start
    assert vmlib.helper_pid() not in (0, pid), "the helper was not restarted"
    assert up.listener_inode() == inode, (
        "root.sock's listening socket was made anew: logins queued in the old one were dropped, and "
        "logins in between found no helper\n" + "\n".join(lines))
    assert not problems and logins and all(up.placed(r) for r in logins), "\n".join(lines)
    assert all(p[1] == "ok" for p in pings), "\n".join(lines)
    assert len([r for r in logins if t0 <= r["start"] <= t1]) >= 2, "too few logins during apt-get"
    assert not session_problems(sessions, ifindex(VRF))
    remembered = up.state_paths() or set()
    mount = vmlib.cgroup_mount()
    assert {mount + s.first["cgroup"] for s in sessions} <= remembered, remembered
    return start


def test_upgrade_in_place_keeps_every_login_and_session_placed(pkgs, sessions, lab_restored):
    install(pkgs.orig)
    upgrade_like(pkgs.next, (), "upgrade", sessions, pkgs.next_version, pkgs.next_py)
    recreate_relinks(sessions)


def test_downgrade_older_helper_loads_the_newer_state_file(pkgs, sessions, lab_restored):
    install(pkgs.next)
    orig_py = pkgs.next_py[:-len("+upgrade1")]
    start = upgrade_like(pkgs.orig, ("--allow-downgrades",), "downgrade", sessions, pkgs.orig_version, orig_py)
    assert "ignoring unreadable state file" not in start
    recreate_relinks(sessions)


def test_remove_then_install_sessions_keep_their_programs(pkgs, sessions, lab_restored):
    install(pkgs.orig, "--allow-downgrades")
    remembered = up.state_paths()
    assert remembered
    with up.traffic(USER) as t:
        time.sleep(3)
        up.apt("remove", up.PKG)
        removed = t["stream"].now()
        gap = {
            "status": up.package_status(),
            "profile": up.profile_enabled(),
            "units": run("systemctl", "is-active", *vmlib.HELPER_UNITS, check=False).stdout.split(),
            "module": os.path.exists(vmlib.PAM_MODULE) or os.path.exists("/lib/x86_64-linux-gnu/security/pam_vrf.so"),
            "state": up.state_paths(),
            "sessions": session_problems(sessions, ifindex(VRF)),
        }
        wait_until("two logins in the gap", lambda: len(t["stream"].done(removed, t["stream"].now())) >= 2,
                   timeout=120)
        reinstall = t["stream"].now()
        up.apt("install", pkgs.orig)
        wait_until("the helper to answer", vmlib.helper_ping, timeout=60)
        answering = t["stream"].now()
        wait_until("two logins after the install", lambda: len(t["stream"].done(answering)) >= 2, timeout=120)
    logins, pings = t["logins"], t["pings"]
    lines = up.summary(logins, pings)
    up.record("remove", {"gap": {k: v for k, v in gap.items() if k != "state"}, "removed": removed,
                         "reinstall": reinstall, "answering": answering, "logins": logins, "summary": lines})
    msg = f"{gap}\n" + "\n".join(lines)
    # During the gap: nothing of the package runs or sits in the stacks, placed sessions keep everything.
    assert gap["status"] == "deinstall ok config-files", msg
    assert not gap["profile"] and not gap["module"], msg
    assert set(gap["units"]) <= {"inactive", "failed"} and "active" not in gap["units"], msg
    assert gap["sessions"] == [], msg
    assert gap["state"] is not None and remembered & gap["state"] >= {
        vmlib.cgroup_mount() + s.first["cgroup"] for s in sessions}, msg      # the state file stays
    in_gap = [r for r in logins if r["start"] >= removed and r["start"] + r["seconds"] <= reinstall]
    assert in_gap and all(up.unplaced(r) for r in in_gap), msg
    assert all(r["rc"] == 0 for r in logins), msg
    # After the install: the admin's choice is back, logins are placed again.
    assert up.profile_enabled(), "pam-auth-update profile pam-vrf not enabled again after remove + install\n" + msg
    after = [r for r in logins if r["start"] >= answering]
    assert after and all(up.placed(r) for r in after), msg
    assert not session_problems(sessions, ifindex(VRF))
    recreate_relinks(sessions)


def test_purge_leaves_sessions_bound_but_forgotten(pkgs, sessions, lab_restored):
    install(pkgs.orig, "--allow-downgrades")
    old = ifindex(VRF)
    up.apt("purge", up.PKG)
    assert up.package_status() in ("unknown", "unknown ok not-installed"), up.package_status()
    gone = [p for p in ("/run/pam-vrf-helper", "/run/pam-vrf", vmlib.VRF_CONF, "/usr/sbin/pam-vrf-helper")
            if os.path.exists(p)]
    assert gone == [], f"left after purge: {gone}"
    assert not up.profile_enabled()
    assert run("getent", "passwd", "pam-vrf", check=False).returncode == 0, "purge removed the system user"
    assert session_problems(sessions, old) == [], "a placed session lost its binding at purge"

    mark = vmlib.journal_mark()
    up.apt("install", pkgs.orig)
    with open(vmlib.VRF_CONF) as f:
        sample = f.read()
    assert "pam-vrf test box" not in sample  # the package's sample: the box's rule went with the purge
    vmlib.helper_up()
    start = up.helper_start_line(mark)
    assert start and "0 remembered attachments" in start, start

    # The reinstalled helper does not know them: a re-created mgmt leaves them bound to the old device.
    run("ip", "link", "del", VRF)
    create_mgmt()
    new = ifindex(VRF)
    vmlib.wait_lab_ok()
    time.sleep(3)               # link events reached the helper (nothing of it to re-attach)
    assert session_problems(sessions, old, gone=True) == [], "sessions placed before the purge were re-linked"
    assert new != old
