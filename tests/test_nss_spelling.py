"""Issue 14 item 7: a user-name rule matches the account, not a spelling.

SSSD with AD (and LDAP with a case-insensitive schema) answers `ALICE` and
`alice@domain` with alice's entry; `decide` compared the name PAM gave, so
those spellings missed alice's rule (a strict one too) and fell through to
`*`. Now the account's name as NSS spells it (getpwnam's pw_name) is compared.

An NSS module of our own answers like that: `passwd: files pvtci<tag>`, in a
private nsswitch.conf bound over /etc/nsswitch.conf in a mount namespace of
the programs under test only (the host's file is never touched).
"""

import shutil
import subprocess

import pytest

from testlab.helper import helper_dir
from testlab.run import PY, uid_tag
from nsslab import in_namespace, nss_module
from test_pam_module import AUTHPRIV, ERR, SYSTEM_PATH, module, pam_service, scratch  # noqa: F401 (fixtures)

pytestmark = pytest.mark.root

NSS_CI_C = r"""
#include <errno.h>
#include <nss.h>
#include <pwd.h>
#include <string.h>
#include <strings.h>

/* @CANON@ in any letter case, alone or with @pvt.example: @CANON@'s entry. */
enum nss_status _nss_@MOD@_getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t len, int *errnop)
{
    static const char canon[] = "@CANON@";
    size_t n = sizeof(canon) - 1;

    if (strncasecmp(name, canon, n) || (name[n] && strcasecmp(name + n, "@pvt.example")))
        return NSS_STATUS_NOTFOUND;
    if (len < n + 1) {
        *errnop = ERANGE;
        return NSS_STATUS_TRYAGAIN;
    }
    memcpy(buf, canon, n + 1);
    pw->pw_name = buf;
    pw->pw_passwd = (char *)"x";
    pw->pw_uid = @UID@;
    pw->pw_gid = @GID@;
    pw->pw_gecos = (char *)"";
    pw->pw_dir = (char *)"/";
    pw->pw_shell = (char *)"/bin/sh";
    return NSS_STATUS_SUCCESS;
}
"""


@pytest.fixture
def case_insensitive_nss(throwaway_user):
    """(account, nsswitch.conf path): NSS answers any spelling of the account's name."""
    account = throwaway_user()
    name = f"pvtci{uid_tag()}"
    source = (NSS_CI_C.replace("@MOD@", name).replace("@CANON@", account.pw_name)
              .replace("@UID@", str(account.pw_uid)).replace("@GID@", str(account.pw_gid)))
    with nss_module(source, name, "passwd") as nsswitch:
        yield account, nsswitch


def spellings(name):
    return [name.upper(), name.capitalize(), f"{name}@pvt.example", f"{name.upper()}@PVT.EXAMPLE"]


DECIDE = """
import sys
from pam_vrf import policy
rules = policy.parse(sys.stdin.read(), "vrf.conf")
for user in sys.argv[1:]:
    rule = policy.decide(rules, user, "sshd")
    print(user, rule.where if rule else None)
"""


@pytest.mark.parametrize("padding", [0, 300])      # the walk, and the index above 256 rules
def test_every_spelling_of_an_account_meets_its_rule(case_insensitive_nss, installed, padding):
    account, nsswitch = case_insensitive_nss
    name = account.pw_name
    text = "".join(f"pvtpad{i}  default\n" for i in range(padding))
    text += f"{name}  vtnone  plain strict\n*  -\n"
    names = [name, *spellings(name), f"x{name}"]
    proc = subprocess.run(in_namespace(nsswitch, [PY, "-I", "-c", DECIDE, *names]), input=text, text=True,
                          capture_output=True, env={"PATH": SYSTEM_PATH}, cwd="/", timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    rule_line = f"vrf.conf:{padding + 1}"
    assert {n: got[n] for n in names} == {**{n: rule_line for n in names[:-1]}, f"x{name}": f"vrf.conf:{padding + 2}"}


def test_a_strict_rule_is_not_escaped_by_another_spelling_through_pam(case_insensitive_nss, installed, module,
                                                                       pam_service, syslog, scratch, vrf_conf):
    """pamtester on a pam_vrf.so stack, the helper down: the offline decider
    refuses ALICE, Alice@pvt.example... as it refuses alice (before: `* -`)."""
    account, nsswitch = case_insensitive_nss
    config = vrf_conf(f"{account.pw_name}  vtnone  plain strict\n*  -\n")
    service = pam_service(f"config={config} socket={scratch}/nowhere/helper.sock")
    for user in [account.pw_name, *spellings(account.pw_name)]:
        mark = syslog.mark()
        argv = syslog.wrap(in_namespace(nsswitch, ["pamtester", "-v", service, user, "open_session"]))
        proc = subprocess.run(argv, env={"PATH": SYSTEM_PATH}, cwd="/", capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 1 and "successfully opened" not in proc.stdout + proc.stderr, (user, proc)
        line = syslog.wait_for(["pam_vrf[", f"refusing session of user {user} ", f"strict rule {config}:1"], mark)
        assert line.startswith(f"<{AUTHPRIV + ERR}>"), line
    # Another name still gets `*`.
    mark = syslog.mark()
    argv = syslog.wrap(in_namespace(nsswitch, ["pamtester", "-v", service, f"x{account.pw_name}", "open_session"]))
    proc = subprocess.run(argv, env={"PATH": SYSTEM_PATH}, cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc


def test_the_helper_applies_the_accounts_rule_to_every_spelling(case_insensitive_nss, installed, module,
                                                                  pam_service, syslog, vrf_conf, throwaway_user):
    """The real helper, in a mount namespace with the case-insensitive NSS,
    behind pamtester on a pam_vrf.so stack: ALICE meets alice's strict rule
    (its VRF does not exist here: refused) instead of `* -` (alone)."""
    from test_helper import NsswitchHelper
    account, nsswitch = case_insensitive_nss
    helper_user = throwaway_user()
    config = vrf_conf(f"{account.pw_name}  vtnone{uid_tag()}  plain strict\n*  -\n")
    workdir = helper_dir(None, helper_user)
    helper = NsswitchHelper(helper_user, workdir, config, None, syslog, nsswitch=nsswitch)
    try:
        helper.start()
        service = pam_service(f"config={config} socket={helper.socket} debug")
        for user in spellings(account.pw_name):
            mark = syslog.mark()
            proc = subprocess.run(syslog.wrap(["pamtester", "-v", service, user, "open_session"]),
                                  env={"PATH": SYSTEM_PATH}, cwd="/", capture_output=True, text=True, timeout=60)
            assert proc.returncode == 1, (user, proc, helper.output())
            syslog.wait_for(["pam-vrf-helper[", f"refusing session of user {user} ", f"strict rule {config}:1"],
                            mark)
    finally:
        helper.stop()
        shutil.rmtree(workdir, ignore_errors=True)
