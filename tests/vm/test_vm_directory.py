"""Directory accounts, for real (issue 15 item 3): a slapd on 127.0.0.1
(tests/vm/vm_directory.py) with an LDAP user `ldop<T>` in the LDAP group
`dnetops<T>` (RFC 2307 memberUid), which also lists the local account
`lcop<T>` (in /etc/passwd, in no local group). (The VM's own local group
`netops` holds op1, so the LDAP group has a name of its own.) Each test runs
through SSSD (nss_sss, its cache) and through nslcd (libnss-ldapd, no
cache), with the rule alone in vrf.conf ("short": one look-up per @group
name) and after 40 more distinct @group names ("long": above
policy.GroupNames.ENUMERATE_ABOVE, the account's gids are turned into names by
enumerating the group database).

What the operator gets (each is a test below, checking the syslog lines):
- directory up: the LDAP user and the local account in the LDAP group land in
  mgmt by `@dnetops<T> mgmt` (SSSD: the local account only if SSSD reports
  the membership, see test_directory_members_land_in_mgmt);
- slapd stopped, nslcd: the LDAP user is unknown (sshd: "Invalid user");
  the local account meets a strict rule that may apply: refused, and the
  helper's line names the failed look-up; not strict: it proceeds unplaced,
  and the line says so. `pam-vrf which` names the failure, not "no user";
- slapd stopped, SSSD: the cached membership decides (warm cache: placed as
  if the directory were up; a cache emptied while slapd is down: the LDAP
  user is unknown to sshd).
"""

import contextlib
import os
import pwd
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vm_directory  # noqa: E402
import vmlib  # noqa: E402
from vmlib import VRF, run  # noqa: E402

pytestmark = vmlib.vm_only

T = vmlib.tag()
LDAP_USER, LDAP_UID, LDAP_GID = f"ldop{T}", 70001, 70000
GROUP, GROUP_GID = f"dnetops{T}", 70100
OTHER_GROUPS = [f"pvnog{i:02d}{T}" for i in range(40)]     # in no database: the worst case to look up
HOME = f"/home/{LDAP_USER}"
TACACS_GROUP = "tacacs"
REMOTE_USER = f"tacremote{T}"      # a TACACS+ user, mapped onto tacacs15

BACKENDS = ["sssd", "nslcd"]
SHAPES = ["short", "long"]


@pytest.fixture(scope="module")
def local_account():
    with vmlib.user(prefix="lcop") as name:
        yield name


def _authorize(home, uid, gid):
    """The test key in HOME/.ssh/authorized_keys, owned by uid:gid."""
    os.makedirs(f"{home}/.ssh", mode=0o700, exist_ok=True)
    shutil.copy(f"{vmlib.KEY}.pub", f"{home}/.ssh/authorized_keys")
    for root, dirs, files in os.walk(home):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.chown(name, uid, gid)


@pytest.fixture(scope="module")
def tacacs_accounts():
    """libnss-tacplus's set-up: local template accounts tacacs0 … tacacs15 (one
    per TACACS+ privilege level), primary group `tacacs`. Yields tacacs15's pwd entry."""
    made = []
    run("groupadd", TACACS_GROUP)
    try:
        for level in range(16):
            run("useradd", "--create-home", "--shell", "/bin/bash", "--gid", TACACS_GROUP, f"tacacs{level}")
            made.append(f"tacacs{level}")
        top = pwd.getpwnam("tacacs15")
        _authorize(top.pw_dir, top.pw_uid, top.pw_gid)
        yield top
    finally:
        for name in made:
            vmlib._end_user(name)
            vmlib.remove_user(name, remove_home=True)
        vmlib.remove_group(TACACS_GROUP)


@pytest.fixture(scope="module")
def directory(local_account, tacacs_accounts):
    """slapd up with the users and groups above; the LDAP user's home holds the
    test key. Also the remote TACACS+ user as libnss-tacplus reports it: its own
    name, tacacs15's uid, gid and home."""
    try:
        _authorize(HOME, LDAP_UID, LDAP_GID)
        top = tacacs_accounts
        users = [(LDAP_USER, LDAP_UID, LDAP_GID, HOME), (REMOTE_USER, top.pw_uid, top.pw_gid, top.pw_dir)]
        groups = [(f"ldusers{T}", LDAP_GID, []), (GROUP, GROUP_GID, [LDAP_USER, local_account])]
        with vm_directory.slapd(users, groups) as server:
            yield server
    finally:
        vmlib.run("loginctl", "terminate-user", str(LDAP_UID), check=False)
        vmlib.run("systemctl", "stop", f"user@{LDAP_UID}.service", check=False)
        vmlib.kill_user_processes(LDAP_UID)
        shutil.rmtree(HOME, ignore_errors=True)


@pytest.fixture
def slapd_up(directory):
    """The directory answering at the start of a test (an earlier one stopped it)."""
    if not directory.pid():
        directory.start()
    try:
        yield directory
    finally:
        vmlib.run("loginctl", "terminate-user", str(LDAP_UID), check=False)


@pytest.fixture(params=BACKENDS)
def backend(request, slapd_up):
    """SSSD or nslcd answering for the directory."""
    with vm_directory.backend(request.param, LDAP_USER) as handle:
        yield handle


@contextlib.contextmanager
def rules(shape, rule):
    """vrf.conf with `rule` (short) or 40 other @group rules and then `rule` (long),
    and `* default` last; yields the FILE:LINE of `rule`."""
    lines = ([f"@{g} -" for g in OTHER_GROUPS] if shape == "long" else []) + [rule, "* default"]
    with vmlib.vrf_conf(*lines) as where:
        yield where[rule]


def placed_in_mgmt(probe):
    return isinstance(probe, dict) and probe["cgroup"].endswith(f"/vrf/{VRF}") and probe["identify"] == VRF


def unplaced(probe):
    """Left where sshd put it: no VRF cgroup, no VRF."""
    return isinstance(probe, dict) and "/vrf/" not in probe["cgroup"] and probe["identify"] == ""


def in_default_vrf(probe):
    """Placed by `* default` (or unplaced): not in mgmt."""
    return isinstance(probe, dict) and probe["identify"] == "" and not probe["cgroup"].endswith(f"/vrf/{VRF}")


def helper_line(mark, *words):
    return vmlib.wait_journal(mark, list(words), SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)


def sssd_reports_local_member(local_account):
    """Does SSSD put the local account into the LDAP group (`id -G`)? It answers
    initgroups only for its own domain's users: see the test's docstring."""
    return GROUP_GID in vm_directory.ids(local_account)


# --- directory up ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_directory_members_land_in_mgmt(backend, shape, local_account):
    """The LDAP user lands in mgmt by `@dnetops<T> mgmt`; so does the local
    account listed in the LDAP group, wherever `id` shows the membership
    (nslcd: always; SSSD answers initgroups only for users of its own domain,
    so `id` does not show a local account in an LDAP group, and neither
    placement nor the group's file permissions apply to it)."""
    assert GROUP_GID in vm_directory.ids(LDAP_USER), run("id", LDAP_USER, check=False)
    with rules(shape, f"@{GROUP} {VRF}") as where:
        mark = vmlib.journal_mark()
        probe = vmlib.probe(LDAP_USER)
        assert placed_in_mgmt(probe), probe
        helper_line(mark, f"user {LDAP_USER} (service sshd) placed in VRF {VRF} (rule {where})")

        member = backend.name == "nslcd" or sssd_reports_local_member(local_account)
        if backend.name == "nslcd":
            assert GROUP_GID in vm_directory.ids(local_account), run("id", local_account, check=False)
        probe = vmlib.probe(local_account)
        if member:
            assert placed_in_mgmt(probe), probe
            helper_line(mark, f"user {local_account} (service sshd) placed in VRF {VRF} (rule {where})")
        else:
            # `* default`: the rule after ours; the local account is not in the group for SSSD.
            assert in_default_vrf(probe), probe
            helper_line(mark, f"user {local_account} (service sshd) placed in VRF default (rule {next_line(where)})")


def next_line(where):
    """FILE:LINE of the `* default` line that follows the rule at `where`."""
    path, line = where.rsplit(":", 1)
    return f"{path}:{int(line) + 1}"


# --- directory down -------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_directory_down_strict_rule_refuses(backend, slapd_up, shape, local_account):
    """slapd stopped, `@dnetops<T> mgmt strict`: nslcd: the local account's login
    is refused (the helper cannot tell whether the strict rule applies) and the
    LDAP user is unknown; SSSD: the cached membership decides (warm cache)."""
    with rules(shape, f"@{GROUP} {VRF} strict") as where:
        if backend.name == "sssd":
            vmlib.probe(LDAP_USER)          # the cache warm: the membership as the directory had it
            local_member = sssd_reports_local_member(local_account)
        slapd_up.stop()
        mark = vmlib.journal_mark()
        if backend.name == "nslcd":
            refused = vmlib.probe(local_account, check=False)
            assert not isinstance(refused, dict) and refused.returncode != 0, \
                f"the local account's login went through under a strict rule with the directory down: {refused}"
            helper_line(mark, f"refusing session of user {local_account} (service sshd)", "cannot decide rule",
                        "(a strict rule may apply)")
            vmlib.wait_until("the refused login's session to go", lambda: not vmlib.sessions_of(local_account))
            unknown = vmlib.probe(LDAP_USER, check=False)
            assert not isinstance(unknown, dict) and unknown.returncode != 0, unknown
            vm_directory.sshd_says(mark, "Invalid user", LDAP_USER)
            # pam-vrf which: the failure, not "no such user".
            which = run(vmlib.PAM_VRF, "which", LDAP_USER, "--service", "sshd", check=False)
            assert which.returncode == 1 and "no user" not in which.stderr, which
            assert f"cannot look up user '{LDAP_USER}'" in which.stderr and \
                "a strict rule may apply: the login would be refused" in which.stderr, which
            which = run(vmlib.PAM_VRF, "which", local_account, "--service", "sshd", check=False)
            assert which.returncode == 1 and "cannot decide rule" in which.stderr, which
        else:
            probe = vmlib.probe(LDAP_USER)
            assert placed_in_mgmt(probe), probe
            helper_line(mark, f"user {LDAP_USER} (service sshd) placed in VRF {VRF} (rule {where})")
            probe = vmlib.probe(local_account)
            if local_member:
                assert placed_in_mgmt(probe), probe
            else:
                assert in_default_vrf(probe), probe
                helper_line(mark, f"user {local_account} (service sshd) placed in VRF default "
                                  f"(rule {next_line(where)})")


@pytest.mark.parametrize("shape", SHAPES)
def test_directory_down_non_strict_rule_proceeds_unplaced(backend, slapd_up, shape, local_account):
    """slapd stopped, `@dnetops<T> mgmt` (not strict): nslcd: the local account's
    login proceeds unplaced (not by `* default`), with the helper's line naming
    the failure; SSSD: the cached membership decides."""
    with rules(shape, f"@{GROUP} {VRF}") as where:
        if backend.name == "sssd":
            vmlib.probe(LDAP_USER)
        slapd_up.stop()
        mark = vmlib.journal_mark()
        probe = vmlib.probe(local_account)
        if backend.name == "nslcd":
            assert unplaced(probe), probe
            entry = helper_line(mark, f"user {local_account} (service sshd) left unplaced", "cannot decide rule")
            assert entry["PRIORITY"] == "3", entry
            assert not any(
                "placed in VRF default" in str(e.get("MESSAGE")) and local_account in str(e.get("MESSAGE"))
                for e in vmlib.journal(mark, SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)), \
                "the local account met `* default` with the directory down"
        else:
            probe = vmlib.probe(LDAP_USER)
            assert placed_in_mgmt(probe), probe
            helper_line(mark, f"user {LDAP_USER} (service sshd) placed in VRF {VRF} (rule {where})")


def test_sssd_cold_cache_with_the_directory_down(slapd_up, local_account):
    """SSSD whose cache was emptied while slapd is down: the LDAP user is unknown
    (sshd: "Invalid user"), so no rule is met; a local account is decided by
    the local files (SSSD reports no LDAP group for it either way)."""
    with vm_directory.backend("sssd", LDAP_USER) as sssd, rules("short", f"@{GROUP} {VRF} strict") as where:
        slapd_up.stop()
        sssd.restart(cold=True)
        mark = vmlib.journal_mark()
        unknown = vmlib.probe(LDAP_USER, check=False)
        assert not isinstance(unknown, dict) and unknown.returncode != 0, unknown
        vm_directory.sshd_says(mark, "Invalid user", LDAP_USER)
        # SSSD offline reports what it has not cached as "no such entry", not
        # as a failure: nothing tells pam-vrf the directory is down; the local
        # account meets `* default` (SSSD never reports it in an LDAP group).
        probe = vmlib.probe(local_account, check=False)
        assert in_default_vrf(probe), f"the local account's login: {probe}"
        helper_line(mark, f"user {local_account} (service sshd) placed in VRF default "
                          f"(rule {next_line(where)})")


# --- TACACS+ style: remote users on local template accounts --------------------------

def test_tacacs_style_remote_user_lands_by_the_template_group(backend, tacacs_accounts):
    """The vrf.conf.sample/README example `@tacacs mgmt strict`: a remote user
    that the name service maps onto tacacs15 (its own name, tacacs15's uid and
    primary group `tacacs`: what libnss-tacplus answers; here the directory
    answers so) lands in mgmt, and so does a template account itself; the
    user manager (named by uid: tacacs15) carries the same rule."""
    with rules("short", f"@{TACACS_GROUP} {VRF} strict") as where:
        mark = vmlib.journal_mark()
        probe = vmlib.probe(REMOTE_USER)
        assert placed_in_mgmt(probe), probe
        helper_line(mark, f"user {REMOTE_USER} (service sshd) placed in VRF {VRF} (rule {where})")
        probe = vmlib.probe("tacacs15")
        assert placed_in_mgmt(probe), probe
        helper_line(mark, f"user tacacs15 (service sshd) placed in VRF {VRF} (rule {where})")
    vmlib._end_user("tacacs15")
