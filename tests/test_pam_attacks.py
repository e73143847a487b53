"""Adversarial review of the issue 14 items 5-8 changes (pam_vrf.so's decider
contract and invoker, the helper's "session for oneself", NSS spellings, log
escaping), as an unprivileged local user or a remote peer of a root daemon.

Each test asserts the secure behaviour. Those marked LANDS failed on the
code they were written against (commit 56653e5); HOLDS are attacks that
were tried and stopped, kept because they show what stops them.
"""

import os
import shutil
import subprocess

import pytest


from testlab.helper import helper_dir
from testlab.run import PY, spawn, uid_tag
from helper_attacks import Agent
from nsslab import decide_in, in_namespace, nss_module
from test_pam_module import (SYSTEM_PATH, helper_lab, module, pam_service,  # noqa: F401 (fixtures)
                             pamtester, recording_module, scratch, set_mode)
from test_nss_spelling import NSS_CI_C, case_insensitive_nss  # noqa: F401 (fixture)
from test_sudo_self import drive, sudo_lab  # noqa: F401 (fixture)
from test_helper import NsswitchHelper, veth
from pam_vrf import protocol
from pam_vrf.bpf import cgroup_link

pytestmark = pytest.mark.root


# -- PAM_RUSER from a root daemon -------------------------------------------------

def test_a_root_daemons_pam_ruser_does_not_make_a_session_ones_own(sudo_lab, syslog, vrf_conf, pam_service):
    """LANDS. The helper takes PAM_RUSER as the invoker whenever the PAM
    caller's real uid is 0. Root daemons set it from the network: in.rlogind
    and in.rshd (pam_rhosts) set it to the user name the remote client claims.
    Such a daemon started in a VRF (`ip vrf exec mgmt ...`, the usual way to
    run management daemons) then gets every login whose claimed ruser is the
    account itself "kept" in the daemon's VRF: the account's own rule (here
    strict, another VRF, deny=inet6 lifted with it) is never applied.

    The daemon is the lab's placed login process (root, in vrf/<target>);
    pamtester runs from it on a service of its own, as the daemon's child."""
    lab, me = sudo_lab, sudo_lab["me"]
    rlogin = pam_service(f"config={lab['config']} socket={lab['helper'].socket} debug")
    with open(lab["config"]) as f:
        policy = f.read()
    vrf_conf(f"{me.pw_name}  vtnone{uid_tag()}  plain strict services={rlogin}\n" + policy, path=lab["config"])

    def pamtester_argv(*items):
        return ["pamtester", "-v", *[a for i in items for a in ("-I", i)], rlogin, me.pw_name,
                "open_session", "close_session"]

    mark = syslog.mark()
    got = drive(lab, syslog, [
        ("no ruser", pamtester_argv(), False, None),
        ("claimed ruser", pamtester_argv(f"ruser={me.pw_name}"), False, None),
    ])
    assert got["login"].endswith(f"/vrf/{lab['target']}"), got
    # Control: no PAM_RUSER, the strict rule applies (its VRF does not exist: refused).
    assert "successfully opened" not in got["no ruser"]["out"], got["no ruser"]
    # The attack: the same daemon, the same account, a PAM_RUSER the remote side chose.
    kept = [line for line in syslog.since(mark) if f"pam_vrf({rlogin}:session)" in line and " kept in VRF " in line]
    assert not kept and "successfully opened" not in got["claimed ruser"]["out"], (got["claimed ruser"], kept)


# -- NSS spellings ---------------------------------------------------------------

# A second name source that answers other spellings of LOCAL (any letter case)
# with a different account whose NSS name is LOCAL in lower case: what SSSD
# (case_sensitive = false: names are reported lower-cased) does for an AD user
# "ADMIN" when /etc/passwd has a local "admin" first in nsswitch.conf.
_CI_MATCH = '    if (strncasecmp(name, canon, n) || (name[n] && strcasecmp(name + n, "@pvt.example")))\n'
assert _CI_MATCH in NSS_CI_C
NSS_SHADOW_C = NSS_CI_C.replace(_CI_MATCH, "    if (strcasecmp(name, canon) || !strcmp(name, canon))\n")

# A name service that is down for every spelling but the exact one files has.
NSS_DOWN_C = r"""
#include <errno.h>
#include <nss.h>
#include <pwd.h>

enum nss_status _nss_@MOD@_getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t len, int *errnop)
{
    (void)name; (void)pw; (void)buf; (void)len;
    *errnop = EHOSTDOWN;
    return NSS_STATUS_UNAVAIL;
}
"""

@pytest.fixture
def shadowing_nss(throwaway_user):
    """(local account, the other account, nsswitch.conf): `LOCAL` in capitals is the other account,
    which NSS reports as `local` (another uid)."""
    local, other = throwaway_user(), throwaway_user()
    name = f"pvtsh{uid_tag()}"
    source = (NSS_SHADOW_C.replace("@MOD@", name).replace("@CANON@", local.pw_name)
              .replace("@UID@", str(other.pw_uid)).replace("@GID@", str(other.pw_gid)))
    with nss_module(source, name, "passwd") as nsswitch:
        yield local, other, nsswitch


def test_another_account_reported_under_a_local_name_does_not_get_its_rule(shadowing_nss, installed, pam_service,
                                                                          syslog, scratch, vrf_conf):
    """LANDS. Rules compare the NSS name (pw_name): a directory account that
    NSS reports under the name of a local account (SSSD lower-cases names;
    files answers the exact spelling first) meets the LOCAL account's rule,
    an earlier, looser line (a break-glass `admin default`) than its own
    (`* ... strict`). The name is the same, the account (uid) is not."""
    local, other, nsswitch = shadowing_nss
    text = f"{local.pw_name}  default\n*  vtnone  plain strict\n"
    upper = local.pw_name.upper()
    got = decide_in(nsswitch, text, [local.pw_name, upper])
    assert got[local.pw_name] == "vrf.conf:1", got
    assert got[upper] == "vrf.conf:2", got            # uid differs: not the local account's line

    # Through PAM, the helper down: the offline decider let the other account in unplaced.
    config = vrf_conf(text)
    service = pam_service(f"config={config} socket={scratch}/nowhere/helper.sock")
    mark = syslog.mark()
    argv = syslog.wrap(in_namespace(nsswitch, ["pamtester", "-v", service, upper, "open_session"]))
    proc = subprocess.run(argv, env={"PATH": SYSTEM_PATH}, cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "successfully opened" not in proc.stdout + proc.stderr, proc
    syslog.wait_for(["pam_vrf[", f"refusing session of user {upper} ", f"strict rule {config}:2"], mark)


# The directory knows a uid under a local account's name (SSSD reports AD's
# ADMIN as `admin`; a local `admin` exists): getpwuid answers with the name,
# getpwnam of that name is files' local account.
_BY_NAME = "_getpwnam_r(const char *name,"
assert _BY_NAME in NSS_CI_C
NSS_UID_SHADOW_C = NSS_CI_C.replace(_BY_NAME, "_getpwuid_r(uid_t uid,").replace(_CI_MATCH, "    if (uid != @UID@)\n")


def test_another_account_reported_under_a_local_name_does_not_get_its_exec_permission(
        throwaway_user, vrf_conf, syslog, netns, sandbox_cgroup, installed):
    """LANDED (found beside the one above, on 7c04dac). `pam-vrf exec` took the
    requester's rule by name: the helper names the uid with getpwuid and
    decided for that name, which getpwnam gives to the local account. A
    directory account that NSS reports under a local account's name got the
    local account's exec= list (placed in its VRF). Now a name that leads to
    another uid matches no name rule (and leaves group rules undecidable)."""
    local, other, helper_user = throwaway_user(), throwaway_user(), throwaway_user()
    ns = netns()
    dev = f"pvt{uid_tag()}"
    veth(ns, dev)
    name = f"pvtus{uid_tag()}"
    source = (NSS_UID_SHADOW_C.replace("@MOD@", name).replace("@CANON@", local.pw_name)
              .replace("@UID@", str(other.pw_uid)).replace("@GID@", str(other.pw_gid)))
    config = vrf_conf(f"{local.pw_name}  -  plain exec={dev}\n*  -\n")
    with nss_module(source, name, "passwd") as nsswitch:
        with open(nsswitch) as f:         # the directory first for this uid (files also has it here)
            text = f.read().replace(f"passwd: files {name}", f"passwd: {name} files")
        with open(nsswitch, "w") as f:
            f.write(text)
        workdir = helper_dir(None, helper_user)
        helper = NsswitchHelper(helper_user, workdir, config, ns, syslog, nsswitch=nsswitch)
        agents = []
        try:
            helper.start()
            for who in (local, other):
                agents.append(Agent(who, ns, sandbox_cgroup, (), ()))
            own = agents[0]("client", socket=helper.socket, msg={"op": "place", "vrf": dev})
            assert own["reply"].get("ok"), (own, helper.output())           # control: the local account may
            got = agents[1]("client", socket=helper.socket, msg={"op": "place", "vrf": dev})
            assert not got["reply"].get("ok") and "may not enter" in got["reply"].get("error", ""), \
                (got, helper.output())
        finally:
            for agent in agents:
                agent.close()
            helper.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def test_a_directory_accounts_manager_session_is_decided_for_its_uid(
        throwaway_user, vrf_conf, syslog, netns, sandbox_cgroup, installed):
    """systemd names user@UID.service's account by getpwuid: a directory
    account that NSS reports under a local account's name opens its
    systemd-user session with the local name. The helper decides for the uid
    of the user@UID.service it runs in: not the local account's rule (here:
    `* -`, so nothing is bound), where it used to look for the local
    account's manager and report it missing."""
    local, other, helper_user = throwaway_user(), throwaway_user(), throwaway_user()
    ns = netns()
    dev = f"pvt{uid_tag()}"
    veth(ns, dev)
    name = f"pvtum{uid_tag()}"
    source = (NSS_UID_SHADOW_C.replace("@MOD@", name).replace("@CANON@", local.pw_name)
              .replace("@UID@", str(other.pw_uid)).replace("@GID@", str(other.pw_gid)))
    config = vrf_conf(f"{local.pw_name}  {dev}  plain strict\n*  -\n")
    manager = os.path.join(sandbox_cgroup, f"user-{other.pw_uid}.slice", f"user@{other.pw_uid}.service")
    os.makedirs(manager)
    with nss_module(source, name, "passwd") as nsswitch:
        with open(nsswitch) as f:
            text = f.read().replace(f"passwd: files {name}", f"passwd: {name} files")
        with open(nsswitch, "w") as f:
            f.write(text)
        workdir = helper_dir(None, helper_user)
        helper = NsswitchHelper(helper_user, workdir, config, ns, syslog, nsswitch=nsswitch)
        starter = None
        try:
            helper.start()
            starter = Agent(None, ns, manager, (), ())
            reply = starter("exchange", socket=protocol.root_socket(helper.socket),
                            msg={"op": "open", "user": local.pw_name, "service": "systemd-user"})["reply"]
            assert reply.get("verdict") == "alone", (reply, helper.output())
            assert cgroup_link.query(manager) == []
        finally:
            if starter is not None:
                starter.close()
            helper.stop()
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def failing_nss(throwaway_user):
    account = throwaway_user()
    name = f"pvtdn{uid_tag()}"
    with nss_module(NSS_DOWN_C.replace("@MOD@", name), name, "passwd") as nsswitch:
        yield account, nsswitch


def test_a_spelling_the_name_service_cannot_resolve_does_not_pass_a_strict_name_rule(failing_nss, installed):
    """LANDS. When NSS fails, names compare as given and only `@group` rules
    are Undecidable: `ALICE` with the directory down skips alice's strict
    rule and takes `* -` (left alone), though it is alice's spelling as
    soon as the directory answers. A name rule that a failing look-up could
    have matched must count like a group rule (Undecidable, strict)."""
    account, nsswitch = failing_nss
    name = account.pw_name
    text = f"{name}  vtnone  plain strict\n*  -\n"
    got = decide_in(nsswitch, text, [name, name.upper()])
    assert got[name] == "vrf.conf:1", got
    assert got[name.upper()] == "undecidable-strict", got


def test_a_numeric_or_padded_spelling_reaches_no_earlier_rule(case_insensitive_nss, installed):
    """HOLDS. A rule naming the account's uid is not the account (names only),
    and a padded spelling that NSS does not resolve matches only `*`: no
    spelling reaches an earlier, looser line than the account's own."""
    account, nsswitch = case_insensitive_nss
    name = account.pw_name
    text = f"{account.pw_uid}  default\n{name}  vtnone  plain strict\n*  vtnone  plain strict\n"
    got = decide_in(nsswitch, text, [name, name.upper(), f"{name}@pvt.example", f"{name} ", f" {name}"])
    assert got == {name: "vrf.conf:2", name.upper(): "vrf.conf:2", f"{name}@pvt.example": "vrf.conf:2",
                   f"{name} ": "vrf.conf:3", f" {name}": "vrf.conf:3"}, got


# -- the invoker's file table ------------------------------------------------------

# su/sudo as a hostile invoker starts them: real ids the user's, effective 0,
# and a soft file limit of 5 (the hard one untouched, or 5 too: argv[3]).
# pam_start needs two descriptors at once and gets them; in the session
# stage pam_unix has opened syslog's socket (fd 3, kept, as in every
# common-session), so pam_vrf.so's socket() gets fd 4, the last.
TIGHT_SU = ("import os, resource, sys; uid, gid = int(sys.argv[1]), int(sys.argv[2]); "
            "hard = int(sys.argv[3]) or resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (5, hard)); os.setgroups([gid]); "
            "os.setresgid(gid, 0, 0); os.setresuid(uid, 0, 0); os.execv(sys.argv[4], sys.argv[5:])")


def root_may_raise_hard_limits():
    """CAP_SYS_RESOURCE in the bounding set: what su's root may do (this sandbox lacks it)."""
    with open("/proc/self/status") as f:
        bounding = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    return bool(bounding & (1 << 24))


@pytest.fixture
def su_like_stack(helper_lab, module):
    """A stack shaped like su's common-session: pam_unix's session line (it logs) before pam_vrf.so."""
    lab = helper_lab
    name = f"pvt-fl{uid_tag()}"
    path = f"/etc/pam.d/{name}"
    with open(path, "w") as f:
        f.write("auth required pam_permit.so\naccount required pam_permit.so\nsession required pam_unix.so\n"
                f"session [success=ok session_err=bad default=ignore] {module} "
                f"config={lab.config} socket={lab.helper.socket} debug\n")
    try:
        yield name
    finally:
        os.unlink(path)


def tight_su(lab, service, invoker, user, hard=0, prefix=()):
    argv = lab.syslog.wrap([*prefix, PY, "-I", "-c", TIGHT_SU, str(invoker.pw_uid), str(invoker.pw_gid), str(hard),
                            shutil.which("pamtester"), "pamtester", "-v", service, user, "open_session"])
    proc = spawn(argv, netns=lab.ns, cgroup_dir=lab.sandbox, env={"PATH": SYSTEM_PATH}, cwd="/",
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


@pytest.mark.parametrize("limit", ["soft", "soft and hard"])
@pytest.mark.parametrize("policy", ["no strict anywhere", "a strict line"])
def test_an_invokers_file_limit_does_not_unplace_a_su_session(helper_lab, su_like_stack, vrf_conf, throwaway_user,
                                                              policy, limit):
    """LANDED where the policy has no strict line. The helper is up and would
    place the account (a non-strict rule). The invoker of su lowers
    RLIMIT_NOFILE so that pam_vrf.so's socket() still works but its
    pidfd_open() fails (EMFILE): the request went without a pidfd, the
    helper refused it, the slow path could not make the decider's pipe
    either ("could not decide"), and may_be_strict() (which can still open
    the file) found no `strict`: the session opened unplaced, in the
    invoker's cgroup, though nothing was wrong but the invoker's own limit.
    With a strict line anywhere the same session was refused (HELD).
    Now the module raises its soft limit to the hard one for its own work
    (placed), and where the invoker lowered the hard limit too and root may
    not raise it (no CAP_SYS_RESOURCE, as in this sandbox) it sends no request
    without a pidfd and refuses: the helper runs, the invoker is not root.
    (The module now opens its pidfd before its socket, so with this limit it
    is socket() that fails; the refusal is the same.)"""
    lab = helper_lab
    text = f"{lab.member}  {lab.target}  plain\n{lab.loner}  -\n"
    if policy == "a strict line":
        text += f"{lab.strict}  vmnone  plain strict\n"
    vrf_conf(text, path=lab.config)
    invoker = throwaway_user()
    mark = lab.syslog.mark()
    code, out = tight_su(lab, su_like_stack, invoker, lab.member, hard=5 if limit == "soft and hard" else 0)
    lines = [line for line in lab.syslog.since(mark) if f"pam_vrf({su_like_stack}:session)" in line]
    assert "Initialization failure" not in out, out
    opened = code == 0 and "successfully opened" in out
    if limit == "soft" or root_may_raise_hard_limits():
        assert opened, (out, lines)
        assert any(f"placed in VRF {lab.target}" in line for line in lines), lines
    else:
        assert not opened, (out, lines)
        lab.syslog.wait_for([f"pam_vrf({su_like_stack}:session): user {lab.member} ", "refusing session",
                             # pidfd_open() or socket(), whichever comes second in ask_helper()
                             "Too many open files", "with the helper running",
                             f"invoked by uid {invoker.pw_uid} through su/sudo"], mark)
    assert not any("unplaced" in line for line in lines), lines


@pytest.mark.parametrize("caller", ["su", "root daemon"])
def test_su_stopped_between_connect_and_send_does_not_open_unplaced(helper_lab, su_like_stack, vrf_conf,
                                                                    throwaway_user, caller):
    """LANDED. The invoker stops su (SIGSTOP: su's real uid is the invoker's)
    after pam_vrf.so connected and before it sent the request; the helper
    gives up on the connection after a second ("request not received in
    time") and, resumed, the module took that for a helper failure: the slow
    path let the non-strict session open unplaced. Here strace holds the
    module's sendmsg() for 2 s (a stopped process, to the helper). Now su is
    refused; a root daemon's login (no invoker) still takes the slow path."""
    lab = helper_lab
    vrf_conf(f"{lab.member}  {lab.target}  plain\n", path=lab.config)
    invoker = throwaway_user()
    hold = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=sendmsg", "-e", "inject=sendmsg:delay_enter=2000000"]
    mark = lab.syslog.mark()
    if caller == "su":
        code, out = tight_su(lab, su_like_stack, invoker, lab.member, prefix=hold)
    else:
        argv = lab.syslog.wrap([*hold, "pamtester", "-v", su_like_stack, lab.member, "open_session"])
        proc = spawn(argv, netns=lab.ns, cgroup_dir=lab.sandbox, env={"PATH": SYSTEM_PATH}, cwd="/",
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate(timeout=120)
        code = proc.returncode
    opened = code == 0 and "successfully opened" in out
    if caller == "su":
        assert not opened, out
        lab.syslog.wait_for([f"pam_vrf({su_like_stack}:session): user {lab.member} ", "refusing session",
                             "request not received in time", f"invoked by uid {invoker.pw_uid} through su/sudo"],
                            mark)
    else:
        assert opened, out
        lab.syslog.wait_for(["pam_vrf[", f"user {lab.member} ", "left unplaced", "request not received in time"],
                            mark)


# -- "could not decide" and may_be_strict() --------------------------------------------

@pytest.mark.parametrize("where", ["across a read boundary", "beyond 1 MiB", "in a comment only"])
def test_a_strict_word_may_be_strict_cannot_see_still_refuses_su(recording_module, pam_service, syslog,
                                                                   throwaway_user, vrf_conf, where):
    """HOLDS. The decider crashed (could not decide), su-like invoker: the
    session is refused when the policy mentions `strict`, wherever: cut by
    the 4096-byte reads, past the 1 MiB that is scanned (a file not read
    whole counts as strict), or in a comment (more refusals, never fewer)."""
    path, scratch_dir = recording_module
    set_mode(scratch_dir, "1")
    text = {"across a read boundary": "#" * 4093 + " strict\n* vtnone plain\n",
            "beyond 1 MiB": ("#" * 1023 + "\n") * 1025 + "* vtnone plain strict\n",
            "in a comment only": "# no strict rules here\n* vtnone plain\n"}[where]
    assert text.index("strict") + 6 > 4096 or where == "in a comment only"
    config = vrf_conf(text)
    service = pam_service(f"config={config} socket={scratch_dir}/nowhere/helper.sock", path=path)
    invoker = throwaway_user()
    mark = syslog.mark()
    result = pamtester(syslog, service, "alice", like_su=invoker)
    assert not result.opened, result
    syslog.wait_for([f"pam_vrf({service}:session): user alice", "refusing session",
                     f"invoked by uid {invoker.pw_uid} through su/sudo"], mark)


# -- log escaping -------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "ali\u061cce",              # ARABIC LETTER MARK: a bidi mark like U+200E/U+200F
    "ali\u180ece",              # MONGOLIAN VOWEL SEPARATOR: invisible format character
    "alice\u2000(service x)",   # EN QUAD: a space that is not ' '
    "ali\ufff9ce",              # INTERLINEAR ANNOTATION ANCHOR
    "alice\U000e0041",          # a tag character (invisible)
])
def test_the_module_escapes_what_the_helper_escapes(installed, module, pam_service, syslog, scratch, vrf_conf,
                                                    name):
    """LANDS. log.escape() escapes every character str.isprintable() rejects;
    pam_vrf.so's unsafe_cp() has a list of its own that misses other bidi
    and format characters (U+061C, U+180E, U+FFF9-FFFB, tags) and the
    non-ASCII spaces: the same name is logged raw by the module."""
    from pam_vrf.log import escape
    assert name not in escape(name)                         # the helper/decider side: escaped
    config = vrf_conf("*  vtnone  plain\n")
    service = pam_service(f"config={config} socket={scratch}/nowhere/helper.sock debug")
    mark = syslog.mark()
    assert pamtester(syslog, service, name).opened
    lines = [line for line in syslog.since(mark) if f"pam_vrf({service}:session): user " in line]
    assert lines, syslog.since(mark)
    odd = [c for c in name if not c.isprintable()]
    for line in lines:
        assert not any(c in line for c in odd), repr(line)
