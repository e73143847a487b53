"""pam_vrf.pamstack: PAM stack parsing and the pam-vrf audit, on copies of the
/etc/pam.d (and /usr/lib/pam.d) files Debian 12 and Debian 13 ship, kept in
tests/fixtures/pam.d/RELEASE (where each came from: tests/fixtures/pam.d/SOURCES).
Never the host's own files: their stacks differ from host to host."""

import os
import shutil

import pytest

from pam_vrf import pamstack
from pam_vrf.pamstack import Finding

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pam.d")
RELEASES = ("bookworm", "trixie")
PROFILE_LINE = ("session\t[success=ok session_err=bad default=ignore]\t"
                "pam_python.so /usr/lib/pam-vrf/pam_vrf.py")
VRF_SO = "session [success=ok session_err=bad default=ignore] pam_vrf.so"
PYTHON_ENTRY = ("session [success=ok session_err=bad default=ignore] "
                "pam_python.so /usr/lib/pam-vrf/pam_vrf.py")
WHY_PYTHON = ("pam_python takes its standard library from the client's PATH, so the invoking "
              "user's Python code would run as root")
FIX_PYTHON = (f"use `{pamstack.SAFE_LINE}` here; pam_python belongs in sshd's own stack only")
WHY_ORDER = "pam_systemd ({}) moves the process into session-N.scope and undoes the VRF placement"
FIX_ORDER = "move this line after pam_systemd (after @include common-session)"


@pytest.fixture(params=RELEASES)
def pam(request, tmp_path):
    """A private copy of one release's PAM files, one flat directory."""
    for name in os.listdir(os.path.join(FIXTURES, request.param)):
        shutil.copy(os.path.join(FIXTURES, request.param, name), tmp_path / name)
    return tmp_path


def insert(pam, name, text, after=None, before=None):
    """Insert text after/before the first line containing a marker (default: at the end);
    returns the number of its first line."""
    path = pam / name
    lines = path.read_text().splitlines()
    if after is None and before is None:
        at = len(lines)
    else:
        at = next(i for i, l in enumerate(lines) if (after or before) in l) + (1 if after else 0)
    lines[at:at] = text.splitlines()
    path.write_text("\n".join(lines) + "\n")
    return at + 1


def line_of(pam, name, marker):
    return next(i for i, l in enumerate((pam / name).read_text().splitlines(), 1) if marker in l)


def order_finding(pam, name, line, entry, services, systemd_at):
    return Finding(str(pam / name), line, "error",
                   f"{entry} runs before pam_systemd.so in the session stack of {services}",
                   WHY_ORDER.format(systemd_at), FIX_ORDER)


def test_unmodified_debian_stacks_have_no_findings(pam):
    assert pamstack.audit(str(pam)) == []


def test_profile_line_with_pam_python_in_common_session_is_an_error(pam):
    line = insert(pam, "common-session", PROFILE_LINE, after="pam_systemd.so")
    assert pamstack.audit(str(pam)) == [Finding(
        str(pam / "common-session"), line, "error",
        "pam_python loads pam-vrf in a stack run by setuid-root clients, reached from "
        "other, su, sudo-i via common-session; su-l via su, common-session",
        WHY_PYTHON, FIX_PYTHON)]


def test_pam_python_in_noninteractive_common_file_reached_by_sudo_doas_polkit(pam):
    line = insert(pam, "common-session-noninteractive", PROFILE_LINE)
    [finding] = pamstack.audit(str(pam))
    assert finding.line == line and finding.level == "error"
    assert finding.what.endswith("reached from doas, polkit-1, sudo via common-session-noninteractive")


def test_pam_python_auth_line_reaches_every_setuid_client(pam):
    line = insert(pam, "common-auth", "auth optional pam_python.so /usr/lib/pam-vrf/pam_vrf.py")
    [finding] = pamstack.audit(str(pam))
    assert (finding.path, finding.line) == (str(pam / "common-auth"), line)
    assert finding.what.endswith(
        "reached from chfn, chsh, doas, other, polkit-1, su, sudo, sudo-i via common-auth; "
        "su-l via su, common-auth")


def test_pam_python_in_common_file_no_setuid_stack_includes_is_still_an_error(pam):
    for name in ("sudo", "doas", "polkit-1"):
        (pam / name).unlink()
    line = insert(pam, "common-session-noninteractive", PROFILE_LINE)
    assert pamstack.audit(str(pam)) == [Finding(
        str(pam / "common-session-noninteractive"), line, "error",
        "pam_python loads pam-vrf in common-session-noninteractive",
        WHY_PYTHON + " once su or sudo include this file (Debian's do)", FIX_PYTHON)]


def test_pam_vrf_so_after_pam_systemd_in_common_session_is_fine(pam):
    insert(pam, "common-session", VRF_SO, after="pam_systemd.so")
    assert pamstack.audit(str(pam)) == []


def test_pam_vrf_so_before_pam_systemd_in_sshd(pam):
    line = insert(pam, "sshd", VRF_SO + " debug", before="@include common-session")
    systemd = line_of(pam, "common-session", "pam_systemd.so")
    assert pamstack.audit(str(pam)) == [
        order_finding(pam, "sshd", line, "pam_vrf.so", "sshd", f"common-session:{systemd}")]


def test_line_before_pam_systemd_in_common_session_is_reported_once_for_all_services(pam):
    line = insert(pam, "common-session", VRF_SO, before="pam_systemd.so")
    systemd = line + 1
    assert pamstack.audit(str(pam)) == [order_finding(
        pam, "common-session", line, "pam_vrf.so",
        "chfn, chsh, common-session, login, other, sshd, su, su-l, sudo-i",
        f"common-session:{systemd}")]


def test_pam_python_in_sshd_only_is_fine(pam):
    insert(pam, "sshd", PYTHON_ENTRY, after="pam_selinux.so open")
    assert pamstack.audit(str(pam)) == []
    [use] = [e for e in pamstack.entries(str(pam)) if e.service == "sshd"]
    assert (use.entry, use.position) == ("pam_python", "after pam_systemd")


def test_include_cycle_is_a_warning_not_a_crash(pam):
    a = insert(pam, "common-session", "@include common-session-noninteractive")
    b = insert(pam, "common-session-noninteractive", "session include common-session")
    found = pamstack.audit(str(pam))
    assert [(f.path, f.line, f.level, f.what) for f in found] == [
        (str(pam / "common-session"), a, "warning",
         "include of common-session-noninteractive closes a cycle"),
        (str(pam / "common-session-noninteractive"), b, "warning",
         "include of common-session closes a cycle")]
    modules = [e.module for e in pamstack.flatten(str(pam), "su")]
    assert modules.count("pam_systemd.so") == 1


def test_self_include(pam):
    line = insert(pam, "other", "@include other")
    assert [(f.line, f.what) for f in pamstack.audit(str(pam))] == [
        (line, "include of other closes a cycle")]


def test_missing_include_is_a_warning(pam):
    line = insert(pam, "sshd", "@include common-vrf", before="@include common-session")
    sub = insert(pam, "su-l", "session include su-extra")
    assert pamstack.audit(str(pam)) == [
        Finding(str(pam / "sshd"), line, "warning", "includes missing file common-vrf",
                "libpam cannot read it and the stack is incomplete",
                "create common-vrf or remove this include"),
        Finding(str(pam / "su-l"), sub, "warning", "includes missing file su-extra",
                "libpam cannot read it and the stack is incomplete",
                "create su-extra or remove this include")]


def test_continuation_lines(pam):
    line = insert(pam, "sshd", "session [success=ok session_err=bad default=ignore] \\\n"
                               "# a comment line inside a continuation is skipped\n"
                               "        pam_vrf.so \\  \n"
                               "        debug socket=/run/x", before="@include common-session")
    insert(pam, "sshd", "session optional pam_permit.so # comment \\\n"
                        "session optional pam_echo.so hello", before="@include common-session")
    stack = pamstack.flatten(str(pam), "sshd")
    [vrf] = [e for e in stack if e.module == "pam_vrf.so"]
    assert (vrf.line, vrf.args) == (line, ("debug", "socket=/run/x"))
    assert [e.module for e in stack if e.line in (line + 4, line + 5)] == \
        ["pam_permit.so", "pam_echo.so"]     # a '#' ends the line: no continuation
    assert [(f.line, f.what.split()[0]) for f in pamstack.audit(str(pam))] == [(line, "pam_vrf.so")]


def test_bracket_control_with_spaces_and_bracketed_argument(pam):
    line = insert(pam, "login", "session [success=ok   session_err=bad\tdefault=ignore] "
                                "pam_vrf.so [config=/etc/security/my vrf.conf] debug",
                  before="@include common-session")
    [vrf] = [e for e in pamstack.flatten(str(pam), "login") if e.module == "pam_vrf.so"]
    assert vrf.control == "[success=ok session_err=bad default=ignore]"
    assert vrf.args == ("config=/etc/security/my vrf.conf", "debug")
    assert [f.line for f in pamstack.audit(str(pam))] == [line]


def test_dash_session_pam_systemd_counts(pam):
    line = insert(pam, "runuser-l", VRF_SO, before="-session")
    systemd = line + 1
    stack = pamstack.flatten(str(pam), "runuser-l")
    assert [e.module for e in stack][:4] == \
        ["pam_keyinit.so", "pam_vrf.so", "pam_systemd.so", "pam_keyinit.so"]
    assert pamstack.audit(str(pam)) == [order_finding(
        pam, "runuser-l", line, "pam_vrf.so", "runuser-l", f"runuser-l:{systemd}")]


def test_dash_line_of_pam_vrf_itself(pam):
    line = insert(pam, "sshd", "-session optional pam_vrf.so", before="@include common-session")
    assert [(f.line, f.level) for f in pamstack.audit(str(pam))] == [(line, "error")]


def test_substack_brings_only_its_type(pam):
    (pam / "vrf-session").write_text("auth required pam_permit.so\n" + VRF_SO + "\n")
    insert(pam, "sshd", "session substack vrf-session", before="@include common-session")
    stack = pamstack.flatten(str(pam), "sshd")
    [vrf] = [e for e in stack if e.file == str(pam / "vrf-session")]
    assert (vrf.module, vrf.line, vrf.chain) == ("pam_vrf.so", 2, ("sshd", "vrf-session"))
    systemd = line_of(pam, "common-session", "pam_systemd.so")
    assert pamstack.audit(str(pam)) == [order_finding(
        pam, "vrf-session", 2, "pam_vrf.so", "sshd", f"common-session:{systemd}")]


def test_path_qualified_modules(pam):
    so = insert(pam, "login", "session optional /usr/lib/x86_64-linux-gnu/security/pam_vrf.so",
                before="@include common-session")
    py = insert(pam, "su", "session optional /usr/lib/x86_64-linux-gnu/security/pam_python.so "
                           "/usr/lib/pam-vrf/pam_vrf.py debug")
    systemd = line_of(pam, "common-session", "pam_systemd.so")
    assert pamstack.audit(str(pam)) == [
        order_finding(pam, "login", so, "pam_vrf.so", "login", f"common-session:{systemd}"),
        Finding(str(pam / "su"), py, "error",
                "pam_python loads pam-vrf in a stack run by setuid-root clients, "
                "reached from su; su-l via su", WHY_PYTHON, FIX_PYTHON)]


def test_flatten_follows_debian_includes_in_order(pam, request):
    stack = pamstack.flatten(str(pam), "su-l")
    umask = {"bookworm": [], "trixie": ["pam_umask.so"]}[request.node.callspec.params["pam"]]
    assert [e.module for e in stack] == [
        "pam_keyinit.so", "pam_env.so", "pam_env.so", "pam_mail.so", "pam_limits.so",
        "pam_permit.so", "pam_deny.so", "pam_permit.so", *umask, "pam_unix.so", "pam_systemd.so"]
    assert stack[-1].chain == ("su-l", "su", "common-session")
    assert stack[-1].file == str(pam / "common-session")
    assert {e.type for e in pamstack.flatten(str(pam), "su-l", kind=None)} == \
        {"auth", "account", "session"}   # su-l's `password include su` brings nothing


def test_entries(pam):
    insert(pam, "sshd", VRF_SO, before="@include common-session")
    insert(pam, "common-session", VRF_SO, after="pam_systemd.so")
    insert(pam, "runuser", "session optional pam_exec.so quiet /usr/local/bin/pam-vrf pam-exec")
    uses = {e.service: e for e in pamstack.entries(str(pam))}
    sshd = [e for e in pamstack.entries(str(pam)) if e.service == "sshd"]
    assert [(e.entry, e.position) for e in sshd] == [
        ("pam_vrf.so", "before pam_systemd"), ("pam_vrf.so", "after pam_systemd")]
    assert (uses["su"].entry, uses["su"].position) == ("pam_vrf.so", "after pam_systemd")
    assert (uses["sudo"].entry, uses["sudo"].file) == ("none", None)
    assert (uses["runuser"].entry, uses["runuser"].position) == ("pam_exec", "no pam_systemd")
    assert uses["runuser-l"].position == "after pam_systemd"


def test_unparsable_line_is_a_warning(pam):
    line = insert(pam, "sshd", "sesion required pam_permit.so")
    [f] = pamstack.audit(str(pam))
    assert (f.line, f.level, f.what) == (line, "warning", "cannot parse `sesion required pam_permit.so`")


def test_finding_text():
    f = Finding("/etc/pam.d/sshd", 7, "error", "what", "why", "fix")
    assert str(f) == "/etc/pam.d/sshd:7: error: what (why; fix)"


def test_real_host_pam_d():
    """The host's own stacks carry no pam-vrf line; other suites may add throwaway
    services (/etc/pam.d/pvt-*) while this runs, so only Debian's files are checked."""
    found = pamstack.audit()
    assert isinstance(found, list)
    assert all(isinstance(f, Finding) for f in found)
    names = os.listdir(os.path.join(FIXTURES, "bookworm"))
    debian = {f"{d}/{n}" for n in names for d in ("/etc/pam.d", "/usr/lib/pam.d")}
    assert not [f for f in found if f.path in debian
                and ("pam-vrf" in f.what or "runs before pam_systemd" in f.what)]
    assert {e.entry for e in pamstack.entries() if f"/etc/pam.d/{e.service}" in debian} == {"none"}


def test_shipped_profile_in_both_common_files_is_fine_systemd_user_included(pam):
    """pam-auth-update puts the profile's line at the end of common-session and
    common-session-noninteractive. systemd-user (the user's manager) includes the
    latter before its pam_systemd: the helper leaves that session alone, so no finding."""
    profile = open(os.path.join(os.path.dirname(__file__), "..", "pam.d", "pam-auth-update.pam-vrf")).read()
    line = profile.split("Session:", 1)[1].strip().replace("\t", " ")
    assert f"session {line}" == VRF_SO
    insert(pam, "common-session", f"session {line}")
    insert(pam, "common-session-noninteractive", f"session {line}")
    assert pamstack.audit(str(pam)) == []


def test_where_the_shipped_profile_runs_in_each_debian_service(pam):
    """With the profile's line in both common files (what pam-auth-update writes),
    on each release: ssh, login and su run it after pam_systemd; cron, atd and
    sudo (no pam_systemd) run it too; systemd-user includes it before its own
    pam_systemd (the helper leaves that session alone, so audit() says nothing);
    runuser (no common-session include) does not run it."""
    for name in ("common-session", "common-session-noninteractive"):
        insert(pam, name, VRF_SO)
    where = {e.service: (e.entry, e.position) for e in pamstack.entries(str(pam))}
    for service in ("sshd", "login", "su", "su-l", "sudo-i"):
        assert where[service] == ("pam_vrf.so", "after pam_systemd"), service
    for service in ("cron", "atd", "sudo", "doas"):
        assert where[service] == ("pam_vrf.so", "no pam_systemd"), service
    assert where["systemd-user"] == ("pam_vrf.so", "before pam_systemd")
    assert where["runuser"] == ("none", None)
    assert pamstack.audit(str(pam)) == []
