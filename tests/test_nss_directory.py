"""A directory group source that is down (issue 15 item 3's enumeration bug).

A local account whose membership is a directory group (LDAP through nslcd or
SSSD): `@dirgroup ... strict` must apply while the directory answers, and
must make the decision Undecidable (a strict rule refuses) when it is down,
whichever way policy.GroupNames answers: one look-up per name (up to
ENUMERATE_ABOVE distinct @group names) or the enumeration above that.
glibc's getgrouplist and getgrent skip a source that fails without saying
so; so does getgrnam_r when a later source answers "not found".

The directory is an NSS module of the test's own (tests/nsslab.py) that
knows one group, with the local account as its member, and answers every
call with UNAVAIL (EHOSTDOWN) while a file exists: nslcd with slapd stopped.
"""

import grp
import json
import os
import random
import subprocess
import time

import pytest

from testlab.pam import write_pam_service
from testlab import run as testlab
from nsslab import decide_in, in_namespace, nss_module
from pam_vrf import policy

pytestmark = pytest.mark.root

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

DIRECTORY_C = r"""
#include <errno.h>
#include <grp.h>
#include <nss.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char gname[] = "@GROUP@", member[] = "@MEMBER@";
static int pos;

static int down(int *errnop)
{
    if (access("@DOWN@", F_OK) != 0)
        return 0;
    if (errnop)
        *errnop = EHOSTDOWN;
    return 1;
}

static enum nss_status fill(struct group *gr, char *buf, size_t len, int *errnop)
{
    size_t pad = (sizeof(char *) - (uintptr_t)buf % sizeof(char *)) % sizeof(char *);
    char **mem;
    char *p;

    if (len < pad + 2 * sizeof(char *) + sizeof(gname) + sizeof(member) + 2) {
        *errnop = ERANGE;
        return NSS_STATUS_TRYAGAIN;
    }
    mem = (char **)(buf + pad);
    p = (char *)(mem + 2);
    memcpy(p, gname, sizeof(gname));
    gr->gr_name = p;
    p += sizeof(gname);
    memcpy(p, member, sizeof(member));
    mem[0] = p;
    mem[1] = NULL;
    p += sizeof(member);
    p[0] = 'x';
    p[1] = '\0';
    gr->gr_passwd = p;
    gr->gr_gid = @GID@;
    gr->gr_mem = mem;
    return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_@MOD@_getgrnam_r(const char *name, struct group *gr, char *buf, size_t len, int *errnop)
{
    if (down(errnop))
        return NSS_STATUS_UNAVAIL;
    if (strcmp(name, gname))
        return NSS_STATUS_NOTFOUND;
    return fill(gr, buf, len, errnop);
}

enum nss_status _nss_@MOD@_getgrgid_r(gid_t gid, struct group *gr, char *buf, size_t len, int *errnop)
{
    if (down(errnop))
        return NSS_STATUS_UNAVAIL;
    if (gid != @GID@)
        return NSS_STATUS_NOTFOUND;
    return fill(gr, buf, len, errnop);
}

enum nss_status _nss_@MOD@_setgrent(int stayopen)
{
    (void)stayopen;
    if (down(NULL))
        return NSS_STATUS_UNAVAIL;
    pos = 0;
    return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_@MOD@_endgrent(void)
{
    return NSS_STATUS_SUCCESS;
}

enum nss_status _nss_@MOD@_getgrent_r(struct group *gr, char *buf, size_t len, int *errnop)
{
    enum nss_status status;

    if (down(errnop))
        return NSS_STATUS_UNAVAIL;
    if (pos) {
        *errnop = ENOENT;
        return NSS_STATUS_NOTFOUND;
    }
    status = fill(gr, buf, len, errnop);
    pos = status == NSS_STATUS_SUCCESS;
    return status;
}

enum nss_status _nss_@MOD@_initgroups_dyn(const char *user, gid_t group, long int *start, long int *size,
                                          gid_t **groupsp, long int limit, int *errnop)
{
    (void)limit;
    if (down(errnop))
        return NSS_STATUS_UNAVAIL;
    if (strcmp(user, member) || group == @GID@)
        return NSS_STATUS_NOTFOUND;
    if (*start == *size) {
        gid_t *more = realloc(*groupsp, 2 * *size * sizeof(gid_t));
        if (!more) {
            *errnop = ENOMEM;
            return NSS_STATUS_TRYAGAIN;
        }
        *groupsp = more;
        *size *= 2;
    }
    (*groupsp)[(*start)++] = @GID@;
    return NSS_STATUS_SUCCESS;
}
"""

def _free_gid():
    while True:
        gid = random.randrange(200_000, 2_000_000_000)
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid


@pytest.fixture
def directory(throwaway_user):
    """A local account and a directory group it is a member of (only there):
    yields dict(user, group, gid, down=path of the switch, nsswitch=paths by chain)."""
    user = throwaway_user()
    mod, group, gid = f"pvtdir{testlab.uid_tag()}", f"pvtdg{testlab.uid_tag()}", _free_gid()
    where = testlab.public_dir("pam-vrf-dir-")
    down = os.path.join(where, "down")
    source = (DIRECTORY_C.replace("@MOD@", mod).replace("@GROUP@", group).replace("@MEMBER@", user.pw_name)
              .replace("@GID@", str(gid)).replace("@DOWN@", down))
    try:
        with nss_module(source, mod, "group") as nsswitch:
            # The same with a source after the directory that answers "not found"
            # (`group: files ldap systemd`): glibc reports the last source's status.
            with open(nsswitch) as f:
                text = f.read()
            later = os.path.join(where, "nsswitch-later.conf")
            testlab.write_file(later, text.replace(f"group: files {mod}\n", f"group: files {mod} files\n"))
            yield {"user": user.pw_name, "group": group, "gid": gid, "down": down, "mod": mod,
                   "nsswitch": {"last": nsswitch, "not-last": later}}
    finally:
        testlab.sh("rm", "-rf", where)


def _policy(group, decoys, strict=True):
    """`decoys` other @group lines first (names NSS does not know), then the directory group's rule."""
    tag = testlab.uid_tag()
    lines = [f"@pvtdecoy{tag}{i}  vtdecoy\n" for i in range(decoys)]
    lines.append(f"@{group}  vtnone  plain{' strict' if strict else ''}\n*  default\n")
    return "".join(lines), decoys + 1


@pytest.mark.parametrize("chain", ["last", "not-last"])
@pytest.mark.parametrize("decoys", [0, policy.GroupNames.ENUMERATE_ABOVE + 8])     # per name; enumeration
def test_a_directory_group_that_is_down_is_undecidable(directory, installed, decoys, chain):
    """LANDS with more than 32 @group names (chain 'last') and in both paths with
    a source after the directory ('not-last'): the account got `* default`."""
    nsswitch = directory["nsswitch"][chain]
    text, line = _policy(directory["group"], decoys)
    user = directory["user"]
    # Up: the directory's membership decides.
    assert decide_in(nsswitch, text, [user]) == {user: f"vrf.conf:{line}"}
    # Down: the strict rule may apply: undecidable, never `* default`.
    testlab.write_file(directory["down"], "")
    got = decide_in(nsswitch, text, [user], why=True)[user]
    assert got.startswith("undecidable-strict: ") and "Host is down" in got, got
    text, line = _policy(directory["group"], decoys, strict=False)
    got = decide_in(nsswitch, text, [user], why=True)[user]
    assert got.startswith("undecidable: ") and "Host is down" in got, got
    # Control: root is in no directory group, but the source is down: its groups are unknown too.
    assert decide_in(nsswitch, text, ["root"], why=True)["root"].startswith("undecidable")


@pytest.fixture
def offline_service(installed):
    """offline_service(config) -> a PAM service of the test's own running the
    built pam_vrf.so with a socket nobody listens on (the offline decider)."""
    testlab.sh("make", "--no-print-directory", "all", cwd=testlab.REPO)
    made = []

    def make(config):
        name = f"pvt-dir{testlab.uid_tag()}"
        made.append(write_pam_service(name, "session  [success=ok session_err=bad default=ignore]  "
                                      f"{testlab.REPO}/pam_module/pam_vrf.so config={config} "
                                      f"socket=/nonexistent/pam-vrf-{name}.sock"))
        return name

    yield make
    for path in made:
        testlab.unlink_quietly(path)


def test_the_offline_decider_refuses_the_login_when_the_directory_is_down(directory, offline_service, syslog,
                                                                           vrf_conf):
    """LANDS. The issue's login: pamtester on a pam_vrf.so stack, the helper absent,
    40 @group lines: before, `* default` and the session opened under a strict rule."""
    text, line = _policy(directory["group"], 40)
    config = vrf_conf(text)
    service = offline_service(config)
    nsswitch = directory["nsswitch"]["last"]

    def login():
        mark = syslog.mark()
        argv = syslog.wrap(in_namespace(nsswitch, ["pamtester", "-v", service, directory["user"], "open_session"]))
        proc = subprocess.run(argv, env={"PATH": SYSTEM_PATH}, cwd="/", capture_output=True, text=True, timeout=60)
        return proc, mark

    proc, mark = login()            # up: the strict rule applies (its VRF cannot be entered offline)
    assert proc.returncode == 1, proc
    syslog.wait_for(["pam_vrf[", f"refusing session of user {directory['user']} ", f"strict rule {config}:{line}"],
                    mark)
    testlab.write_file(directory["down"], "")
    proc, mark = login()
    assert proc.returncode == 1 and "successfully opened" not in proc.stdout + proc.stderr, proc
    syslog.wait_for(["pam_vrf[", f"refusing session of user {directory['user']} ", "a strict rule may apply",
                     "Host is down"], mark)


# -- the group-name cache (nss.groups_by_gid: the files source's enumeration) ------

@pytest.fixture
def local_group():
    from testlab.users import add_group, remove_group
    name = add_group(f"pvtcg{testlab.uid_tag()}")
    yield name
    remove_group(name)


def _settle(path="/etc/group"):
    """Wait until `path` is older than nss._RACY: only then is the cache kept."""
    from pam_vrf import nss
    st = os.stat(path)
    time.sleep(max(0.0, nss._RACY + 0.1 - (time.time() - max(st.st_mtime, st.st_ctime))))


def test_the_group_name_cache_never_hides_a_membership_change(throwaway_user, local_group, monkeypatch):
    """More than 32 @group names: the account's gids are named from the files
    source's enumeration, kept while /etc/group is unchanged. It is used (no
    second enumeration), and a membership added or removed (gpasswd: a new
    file) is seen by the very next decision."""
    from pam_vrf import nss
    user = throwaway_user().pw_name
    text, line = _policy(local_group, decoys=policy.GroupNames.ENUMERATE_ABOVE + 8)
    rules = policy.parse(text, "vrf.conf")
    read = []
    real = nss._by_gid
    monkeypatch.setattr(nss, "_by_gid", lambda service: read.append(service) or real(service))

    def where():
        rule = policy.decide(rules, user, "sshd")
        return rule.where if rule else None

    for _ in range(20):             # other tests on this host add users and groups too
        _settle()
        before, changed = nss._signature("/etc/group")
        assert where() == f"vrf.conf:{line + 1}"         # `* default`: not a member
        read.clear()
        assert where() == f"vrf.conf:{line + 1}"
        if nss._signature("/etc/group")[0] == before and time.time() - changed > nss._RACY:
            break
    assert "files" not in read, read                      # the second decision used the cache
    for action, want in (("-a", line), ("-d", line + 1)):
        testlab.sh("gpasswd", action, user, local_group)
        assert where() == f"vrf.conf:{want}", action        # at once, no settling
        _settle()
        assert where() == f"vrf.conf:{want}", action


CACHED_DECIDE = """
import json, os, sys
from pam_vrf import policy
down, user = sys.argv[1], sys.argv[2]
rules = policy.parse(sys.stdin.read(), "vrf.conf")
got = []
for _ in range(2):
    try:
        rule = policy.decide(rules, user, "sshd")
        got.append(rule.where if rule else None)
    except policy.Undecidable as e:
        got.append(("undecidable-strict: " if e.strict else "undecidable: ") + e.reason)
    open(down, "w").close()         # the directory goes down between the two decisions
print(json.dumps(got))
"""


def test_the_group_name_cache_never_hides_a_name_service_failure(directory):
    """One process decides twice, with the cache warm (the first decision
    enumerated the group database, the directory's group included); the
    directory goes down in between: the second decision is Undecidable."""
    _settle()
    text, line = _policy(directory["group"], decoys=policy.GroupNames.ENUMERATE_ABOVE + 8)
    argv = in_namespace(directory["nsswitch"]["last"],
                        [testlab.PY, "-I", "-c", CACHED_DECIDE, directory["down"], directory["user"]])
    proc = subprocess.run(argv, input=text, text=True, capture_output=True, env={"PATH": SYSTEM_PATH}, cwd="/",
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    first, second = json.loads(proc.stdout)
    assert first == f"vrf.conf:{line}", first
    assert second.startswith("undecidable-strict: ") and "Host is down" in second, second
