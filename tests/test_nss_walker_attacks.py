"""Adversarial review of pam_vrf/nss.py's walk of nsswitch.conf (d7205e8,
issue 15 item 3): where the walker and glibc 2.36 (Debian 12; 2.41 in 13 reads
nsswitch.conf the same way) disagree about a login's groups, and where the
walker fails otherwise than with NssError.

pam_vrf.nss parses /etc/nsswitch.conf itself and calls each NSS module's
functions, so that a directory that is down makes a `@group` decision
Undecidable. Where its reading of the file differs from glibc's, it asks
other sources than the system does: a directory group the system (id,
getgrouplist) gives the account is then missed, and the directory being down
goes unnoticed, so a strict `@dirgroup` rule is silently not applied. Each
test compares with what glibc itself answers in the same mount namespace
(os.getgrouplist, grp.getgrnam), or decides a policy there (as
nsslab.decide_in), or opens a session through pam_vrf.so (pamtester).

The directory is tests/test_nss_directory.py's NSS module (one group with a
local throwaway account as its member; UNAVAIL/EHOSTDOWN while a file exists).
Tests marked LANDS failed on d7205e8 and on the working tree of 06:40 UTC
(the files-group cache in progress). Checked and in agreement with glibc, so
not here: [!STATUS=...] and [STATUS=merge|continue] in group and initgroups
lines, an `initgroups:` line (also empty), blanks and tabs around ':' and
'=', duplicate lines (the last wins in both), no `group:` line (Debian's
glibc: `files`), a module that is not installed.
"""

import json
import os
import subprocess

import pytest

from nsslab import _DECIDE, nss_module
from test_nss_directory import DIRECTORY_C, _free_gid, offline_service  # noqa: F401 (a fixture)
from testlab import run as testlab
from pam_vrf import policy

pytestmark = pytest.mark.root

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _in_namespace(files, argv):
    """argv in a private mount namespace where each {target: source} of
    `files` is bound over target (nsswitch.conf, /etc/group)."""
    binds = " && ".join(f'mount --bind "{source}" "{target}"' for target, source in files.items())
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", binds + ' && exec "$@"', "sh", *argv]


def _run(files, argv, stdin=""):
    proc = subprocess.run(_in_namespace(files, argv), input=stdin, text=True, capture_output=True,
                          env={"PATH": SYSTEM_PATH}, cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# What glibc and the walker each say of one account and one group name.
_COMPARE = """
import grp, json, os, pwd, sys
from pam_vrf import nss
user, group = sys.argv[1:3]
entry = pwd.getpwnam(user)
got = {"glibc": [sorted(os.getgrouplist(user, entry.pw_gid))], "walker": []}
try:
    got["glibc"].append(grp.getgrnam(group).gr_gid)
except KeyError:
    got["glibc"].append(None)
try:
    got["walker"].append(sorted(nss.gids(nss.user(user))))
    found = nss.group(group)
    got["walker"].append(found.gid if found else None)
except nss.NssError as e:
    got["walker"] = "NssError: " + str(e)
print(json.dumps(got))
"""


def compare(files, user, group):
    """{'glibc': [gids, gid of group], 'walker': the same or 'NssError: ...'}."""
    return _run(files, ["/usr/bin/python3", "-I", "-c",
                        f"import sys; sys.path.insert(0, {testlab.REPO!r})\n" + _COMPARE, user, group])


def decide(files, text, user):
    """policy.decide of `user` (service sshd) under `files`, as nsslab.decide_in."""
    return _run(files, ["/usr/bin/python3", "-I", "-c",
                        f"import sys; sys.path.insert(0, {testlab.REPO!r})\n" + _DECIDE, "why", user],
                stdin=text)[user]


def _built(template, user, down):
    """(module name, group name, gid, C source) of a directory module from `template`."""
    names = {"@MOD@": f"pvtwk{testlab.uid_tag()}", "@GROUP@": f"pvtwg{testlab.uid_tag()}",
             "@GID@": str(_free_gid()), "@MEMBER@": user, "@DOWN@": down}
    for key, value in names.items():
        template = template.replace(key, value)
    return names["@MOD@"], names["@GROUP@"], int(names["@GID@"]), template


@pytest.fixture
def directory(throwaway_user):
    """A directory module (test_nss_directory's) knowing one group whose member is a
    local account: dict(user, group, gid, mod, down=the switch file, where=a public dir)."""
    user = throwaway_user()
    where = testlab.public_dir("pam-vrf-walk-")
    down = os.path.join(where, "down")
    mod, group, gid, source = _built(DIRECTORY_C, user.pw_name, down)
    try:
        with nss_module(source, mod, "group"):
            yield {"user": user.pw_name, "gid": gid, "group": group, "mod": mod, "down": down, "where": where,
                   "primary": user.pw_gid}
    finally:
        testlab.sh("rm", "-rf", where)


def _file(where, name, data):
    path = os.path.join(where, name)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, 0o644)
    return path


# nsswitch.conf lines glibc 2.36 reads as `group: files DIRECTORY` (the
# directory is asked), each spelled so that the walker reads them otherwise.
# MOD is the directory module's name.
GLIBC_ASKS_THE_DIRECTORY = {
    # A byte that is not UTF-8 anywhere in the file (a Latin-1 comment, as
    # an editor in a Latin-1 locale writes it): glibc reads bytes; the walker
    # decodes the file, gets UnicodeDecodeError and uses NO configuration:
    # `files` for every database, the directory never asked, for passwd too.
    "latin1-comment": "# r\xe9seau: directory groups for the switches\npasswd: files\ngroup: files MOD\n",
    # glibc >= 2.33 (nss_database.c process_line) has no comments after the
    # database name: '#' is a source name like any other (libnss_#.so.2 is
    # not found and skipped); a source after it is asked. The walker cuts
    # the line at '#'. (glibc <= 2.32 cut it too: nsswitch.c, strchrnul '#'.)
    "hash-inside-a-line": "passwd: files\ngroup: files # MOD\n",
    "hash-glued-to-a-source": "passwd: files\ngroup: files #old MOD\n",
    # glibc takes any run of blanks and ':' after the database name as the
    # separator: a line without ':' is a group line. The walker skips it.
    "no-colon": "passwd: files\ngroup files MOD\n",
}


def _nsswitch(directory, text):
    data = text.replace("MOD", directory["mod"])
    return _file(directory["where"], "nsswitch.conf", data.encode("latin-1"))


@pytest.mark.parametrize("spelling", sorted(GLIBC_ASKS_THE_DIRECTORY))
def test_the_walker_reads_nsswitch_conf_as_glibc_does(directory, spelling):
    """LANDS (all four). The directory up: glibc gives the account the directory
    group (getgrouplist and getgrnam); the walker saw neither."""
    files = {"/etc/nsswitch.conf": _nsswitch(directory, GLIBC_ASKS_THE_DIRECTORY[spelling])}
    got = compare(files, directory["user"], directory["group"])
    assert got["glibc"] == [sorted({directory["primary"], directory["gid"]}), directory["gid"]], got   # the premise
    assert got["walker"] == got["glibc"], got


@pytest.mark.parametrize("decoys", [0, policy.GroupNames.ENUMERATE_ABOVE + 8])     # per name; enumeration
@pytest.mark.parametrize("spelling", sorted(GLIBC_ASKS_THE_DIRECTORY))
def test_a_strict_directory_rule_is_not_skipped_when_the_walker_misreads_nsswitch_conf(directory, spelling,
                                                                                      decoys):
    """LANDS (all eight). Up: the account's directory group decides its rule (before:
    `* default`). Down: the decision is undecidable-strict (before: `* default`,
    the login proceeds under a strict rule, issue 15 item 3's escape again)."""
    files = {"/etc/nsswitch.conf": _nsswitch(directory, GLIBC_ASKS_THE_DIRECTORY[spelling])}
    tag = testlab.uid_tag()
    text = "".join(f"@pvtdecoy{tag}{i}  vtdecoy\n" for i in range(decoys))
    text += f"@{directory['group']}  vtnone  plain strict\n*  default\n"
    assert decide(files, text, directory["user"]) == f"vrf.conf:{decoys + 1}"
    testlab.write_file(directory["down"], "")
    got = decide(files, text, directory["user"])
    assert got.startswith("undecidable-strict: ") and "Host is down" in got, got


# /etc/group under `group: compat`: '+' brings in every group of the
# `group_compat` sources (nss_compat, the historical default of Debian's
# nsswitch.conf, still documented for `+@netgroup` setups). glibc's
# nss_compat hides a group_compat source that fails: its initgroups_dyn
# returns SUCCESS whatever the source said (compat-initgroups.c), its
# getgrent skips it. The walker calls only compat's own functions, so it
# cannot see the directory go down: with more than ENUMERATE_ABOVE names the
# account's groups come from those two, and `* default` wins under a strict
# rule. (Per name, compat's getgrnam_r passes the source's UNAVAIL on and the
# walker refuses; but here glibc's nss_compat answers differently from one
# Python process to the next, its own os.getgrouplist too, while getent is
# steady: the per-name case is left out, the enumeration case fails always.)
@pytest.mark.parametrize("plus", ["+:::", "+:*::"])
def test_a_directory_behind_nss_compat_that_is_down_is_undecidable(directory, plus):
    """LANDS (both). The directory down: `* default` under a strict `@dirgroup`
    rule (41 @group names: the enumeration path)."""
    nsswitch = _nsswitch(directory, "passwd: files\ngroup: compat\ngroup_compat: MOD\n")
    with open("/etc/group", "rb") as f:
        group_file = _file(directory["where"], "group", f.read() + plus.encode() + b"\n")
    files = {"/etc/nsswitch.conf": nsswitch, "/etc/group": group_file}
    got = compare(files, directory["user"], directory["group"])
    assert got["walker"] == got["glibc"], got               # up: the two agree (see above)
    tag = testlab.uid_tag()
    decoys = policy.GroupNames.ENUMERATE_ABOVE + 8
    text = "".join(f"@pvtdecoy{tag}{i}  vtdecoy\n" for i in range(decoys))
    text += f"@{directory['group']}  vtnone  plain strict\n*  default\n"
    testlab.write_file(directory["down"], "")
    got = decide(files, text, directory["user"])
    assert got.startswith("undecidable-strict: "), got


# nsswitch.conf actions glibc applies and the walker does not: it then finds
# a membership the system does not have, and places the login by a group
# rule that `id` does not show (LOW: more restrictive, never an escape).
GLIBC_STOPS_BEFORE_THE_DIRECTORY = {
    # A module that cannot be loaded counts as UNAVAIL for the actions
    # (nsswitch.c __nss_lookup / __nss_next2): glibc returns there. The
    # walker skips the source without looking at its actions.
    "missing-module-unavail-return": "passwd: files\ngroup: files pvtnosuchmodule [UNAVAIL=return] MOD\n",
}


@pytest.mark.parametrize("spelling", sorted(GLIBC_STOPS_BEFORE_THE_DIRECTORY))
def test_the_walker_stops_where_glibc_stops(directory, spelling):
    """LANDS. glibc: getgrouplist without the directory group, getgrnam none;
    the walker: both found, so `@group` places the account where id says it is not."""
    files = {"/etc/nsswitch.conf": _nsswitch(directory, GLIBC_STOPS_BEFORE_THE_DIRECTORY[spelling])}
    got = compare(files, directory["user"], directory["group"])
    assert got["glibc"] == [[directory["primary"]], None], got       # the premise
    assert got["walker"] == got["glibc"], got


# A directory group with more members than fit in the walker's largest buffer
# (_MAX_BUFFER, 1 MiB): 90 000 members of 12 characters (~1.9 MiB with
# gr_mem). glibc's callers grow the buffer until it fits (Python's grp does);
# the walker gives up with ERANGE, as if the directory were down.
# The directory module of test_nss_directory with this fill(): the group has
# COUNT generated members, then the account (a down file that never exists).
BIG_FILL = r"""
#define COUNT 90000

static enum nss_status fill(struct group *gr, char *buf, size_t len, int *errnop)
{
    size_t pad = (sizeof(char *) - (uintptr_t)buf % sizeof(char *)) % sizeof(char *);
    size_t need = pad + (COUNT + 2) * sizeof(char *) + sizeof(gname) + sizeof(member) + COUNT * 13 + 2;
    char **mem;
    char *p;
    int i;

    if (len < need) {
        *errnop = ERANGE;
        return NSS_STATUS_TRYAGAIN;
    }
    mem = (char **)(buf + pad);
    p = (char *)(mem + COUNT + 2);
    memcpy(p, gname, sizeof(gname));
    gr->gr_name = p;
    p += sizeof(gname);
    for (i = 0; i <= COUNT; i++) {          /* the generated names, then the account */
        mem[i] = p;
        if (i < COUNT)
            p += snprintf(p, 13, "pvtbm%07d", i) + 1;
        else
            p = (char *)memcpy(p, member, sizeof(member)) + sizeof(member);
    }
    mem[COUNT + 1] = NULL;
    gr->gr_passwd = strcpy(p, "x");
    gr->gr_gid = @GID@;
    gr->gr_mem = mem;
    return NSS_STATUS_SUCCESS;
}

"""
_start = DIRECTORY_C.index("static enum nss_status fill(")
_end = DIRECTORY_C.index("enum nss_status _nss_@MOD@_getgrnam_r")
BIG_C = "#include <stdio.h>\n" + DIRECTORY_C[:_start] + BIG_FILL.lstrip("\n") + DIRECTORY_C[_end:]


@pytest.fixture
def big_group(throwaway_user):
    """A directory (up) with one group of 90 001 members, a local account the last."""
    user = throwaway_user()
    mod, group, gid, source = _built(BIG_C, user.pw_name, "/nonexistent/pam-vrf-never-down")
    with nss_module(source, mod, "group") as nsswitch:
        yield {"user": user.pw_name, "group": group, "gid": gid, "primary": user.pw_gid,
               "files": {"/etc/nsswitch.conf": nsswitch}}


def test_glibc_answers_for_a_group_larger_than_the_walkers_buffer(big_group):
    """LANDS. glibc: the member's groups and the group (getgrnam grows its buffer);
    the walker: NssError 'Numerical result out of range' for getgrnam."""
    got = compare(big_group["files"], big_group["user"], big_group["group"])
    assert got["glibc"] == [sorted({big_group["primary"], big_group["gid"]}), big_group["gid"]], got
    assert got["walker"] == got["glibc"], got


@pytest.mark.parametrize("decoys", [0, policy.GroupNames.ENUMERATE_ABOVE + 8])
@pytest.mark.parametrize("who", ["member", "root"])
def test_a_big_directory_group_does_not_refuse_logins(big_group, who, decoys):
    """LANDS (3 of 4: all but root in the enumeration path). A strict `@biggroup`
    rule with the directory up: its member is placed by it, anyone else gets
    `* default`. Before: undecidable-strict (ERANGE) -- every login that
    reaches the rule refused although every name service answers."""
    tag = testlab.uid_tag()
    text = "".join(f"@pvtdecoy{tag}{i}  vtdecoy\n" for i in range(decoys))
    text += f"@{big_group['group']}  vtnone  plain strict\n*  default\n"
    user = big_group["user"] if who == "member" else "root"
    expected = decoys + (1 if who == "member" else 2)
    assert decide(big_group["files"], text, user) == f"vrf.conf:{expected}"



# The walker's reading of nsswitch.conf and its dlopen of each module are
# remembered for the life of the process (the helper's: weeks). Both fail
# under a transient shortage of file descriptors (EMFILE): the walker then
# remembers "no configuration" (every database `files`) and "module not
# installed" (the source skipped) until nsswitch.conf changes, or for ever.
# glibc does not cache a failed read (nss_database.c: an error other than
# ENOENT/EACCES/... fails the look-up) and fails the look-up instead.
_SHORT_OF_FDS = """
import json, os, resource, sys
from pam_vrf import policy
user, text = sys.argv[1:3]
rules = policy.parse(text, "vrf.conf")

def verdict():
    try:
        rule = policy.decide(rules, user, "sshd")
        return rule.where if rule else None
    except policy.Undecidable as e:
        return "undecidable-strict" if e.strict else "undecidable"

resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
during = verdict()          # the helper's first login after it started, or after nsswitch.conf changed
for fd in held:
    os.close(fd)
print(json.dumps([during, verdict()]))
"""


def test_a_moment_without_file_descriptors_is_not_remembered(directory):
    """LANDS. While no descriptor is free: `* default` (the directory, and
    /etc/passwd, unread: the account is unknown) instead of undecidable-strict;
    after they are free again, still `* default`: the walker keeps `files`
    alone and 'files' as not installed."""
    files = {"/etc/nsswitch.conf": _nsswitch(directory, "passwd: files\ngroup: files MOD\n")}
    text = f"@{directory['group']}  vtnone  plain strict\n*  default\n"
    assert decide(files, text, directory["user"]) == "vrf.conf:1"          # the premise
    during, after = _run(files, ["/usr/bin/python3", "-I", "-c",
                                 f"import sys; sys.path.insert(0, {testlab.REPO!r})\n" + _SHORT_OF_FDS,
                                 directory["user"], text])
    assert (during, after) == ("undecidable-strict", "vrf.conf:1")


def test_a_nul_byte_in_nsswitch_conf_ends_the_line_as_for_glibc(directory):
    """LANDS. glibc reads a line up to a NUL byte (getline, then C strings: a
    file truncated or zero-filled by a crash). The walker passed 'MOD\\0' to
    ctypes.CDLL: ValueError, not NssError. In the offline decider that is an
    "internal error ... left unplaced": PROCEED under any strict rule."""
    files = {"/etc/nsswitch.conf": _nsswitch(directory, "passwd: files\ngroup: files MOD\0\n")}
    got = compare(files, directory["user"], directory["group"])     # raised ValueError: _run failed
    assert got["walker"] == got["glibc"] == [sorted({directory["primary"], directory["gid"]}), directory["gid"]]


def test_a_user_name_that_is_not_utf8_gets_the_strict_rule(offline_service, vrf_conf):
    """LANDS (older than d7205e8: nss.user's name.encode()). pam_vrf.so sends a
    name that is not UTF-8 to the offline decider whether the helper runs or
    not ("cannot encode the request"); the decider's nss.user raised
    UnicodeEncodeError, "internal error ... left unplaced": the session opened
    under `* ... strict`. su and sshd open sessions only for accounts glibc
    knows: such a name is a local account made with useradd --badname, or a
    NIS/LDAP name in Latin-1 (glibc's getpwnam takes bytes)."""
    config = vrf_conf("*  vtnone  plain strict\n")
    service = offline_service(config)
    results = {}
    for name in (f"pvtascii{testlab.uid_tag()}".encode(), f"pvtlatin{testlab.uid_tag()}".encode() + b"\xe9"):
        proc = subprocess.run([b"pamtester", b"-v", service.encode(), name, b"open_session"],
                              env={"PATH": SYSTEM_PATH}, cwd="/", capture_output=True, timeout=60)
        results[name] = (proc.returncode, b"successfully opened" in proc.stdout + proc.stderr)
    assert list(results.values()) == [(1, False), (1, False)], results


# Found while fixing the above (not in the review's tests).

def test_a_line_glibc_cannot_parse_fails_every_lookup(directory):
    """LANDS. A bad action ([NOTFOUND=bogus], a '[' never closed): glibc >= 2.33
    rejects the whole file and every look-up fails (getent group root: exit 2).
    The walker dropped the action and asked `files MOD`: a directory down behind
    such a line went unnoticed while the system itself could answer nothing."""
    files = {"/etc/nsswitch.conf": _nsswitch(directory, "passwd: files\ngroup: files [NOTFOUND=bogus] MOD\n")}
    script = ("import grp, json, sys\n"
              f"sys.path.insert(0, {testlab.REPO!r})\n"
              "from pam_vrf import nss\n"
              "got = {}\n"
              "try:\n    got['glibc'] = grp.getgrnam('root').gr_gid\nexcept KeyError:\n    got['glibc'] = None\n"
              "try:\n    got['walker'] = nss.group('root').gid\n"
              "except nss.NssError as e:\n    got['walker'] = 'NssError: ' + str(e)\n"
              "print(json.dumps(got))\n")
    got = _run(files, ["/usr/bin/python3", "-I", "-c", script])
    assert got["glibc"] is None and got["walker"].startswith("NssError: "), got
    text = f"@{directory['group']}  vtnone  plain strict\n*  default\n"
    assert decide(files, text, directory["user"]).startswith("undecidable-strict: ")


def test_esrch_is_not_found_for_nss_systemd_only(directory, throwaway_user):
    """LANDS. UNAVAIL with ESRCH is nss-systemd's "no such record"; from any other
    module (an LDAP client's errno) the walker took it for "not found" too: a
    strict @dirgroup rule skipped while that directory is down."""
    user = throwaway_user()
    where = testlab.public_dir("pam-vrf-walk-")
    down = os.path.join(where, "down")
    mod, group, _, source = _built(DIRECTORY_C.replace("EHOSTDOWN", "ESRCH"), user.pw_name, down)
    try:
        with nss_module(source, mod, "group") as nsswitch:
            text = f"@{group}  vtnone  plain strict\n*  default\n"
            files = {"/etc/nsswitch.conf": nsswitch}
            assert decide(files, text, user.pw_name) == "vrf.conf:1"      # the premise: up
            testlab.write_file(down, "")
            assert decide(files, text, user.pw_name).startswith("undecidable-strict: ")
    finally:
        testlab.sh("rm", "-rf", where)


class _Log:
    def __init__(self):
        self.lines = []

    def err(self, line):
        self.lines.append(line)

    debug = err


@pytest.mark.parametrize("strict", [True, False])
def test_an_internal_error_of_the_offline_decider_refuses_under_a_strict_rule(monkeypatch, vrf_conf, strict):
    """LANDS (strict). A bug in deciding (any exception but the expected ones: the
    two above were ValueError and UnicodeEncodeError) let the session proceed
    unplaced under a strict rule. Now it refuses when a strict rule could apply to
    the service, and proceeds otherwise. The bug is simulated: the real ones are fixed."""
    from pam_vrf import offline, protocol

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(policy, "decide", broken)
    config = vrf_conf("*  vtnone  plain" + (" strict" if strict else "") + "\n"
                      "*  vtother  strict  services=pvtnosuchservice\n")
    log = _Log()
    verdict = offline.decide("root", "sshd", config, "helper not reachable", log)
    assert verdict == (protocol.REFUSE if strict else protocol.PROCEED), log.lines
    assert any("internal error" in line for line in log.lines), log.lines
