"""Sessions and cgroups that a user can write (issue 14, items 3 and 4).

cgroup v2 delegation: whoever can write a cgroup's cgroup.procs and a cgroup
below it moves any process between them, whoever's it is. systemd delegates
user@UID.service to the user; this host has no systemd, so the delegation is
made by hand (a cgroup chowned to a throwaway user, as systemd does it: the
directory, cgroup.procs, cgroup.threads, cgroup.subtree_control).

- item 4: su/sudo to another account run from a cgroup the invoker can write
  (a desktop terminal below user@UID.service) was placed at <invoker's
  cgroup>/<netns>-ns/vrf/NAME; the invoker moved the other account's process
  out with one write to cgroup.procs and its next socket was unbound. The
  session is driven like su (real uid the invoker's, effective uid 0) through
  a pam_vrf.so stack against the real helper, then becomes the target account.
- item 3: the PAM session that starts `systemd --user` (service systemd-user)
  binds user@UID.service itself, before the manager runs, with the first
  rule of the user that places (also one limited by services=).
"""

import errno
import json
import os
import subprocess

import pytest

from testlab import progs
from testlab.net import add_veth
from testlab.pam import write_pam_service
from testlab.run import PY, REPO, enter, sh, spawn, stop_process, uid_tag, unlink_quietly
from testlab.users import add_group, remove_group
from helper_attacks import Agent
from pam_vrf import cgroup, programs, protocol
from pam_vrf.bpf import cgroup_link

pytestmark = pytest.mark.root


MODULE = os.path.join(REPO, "pam_module", "pam_vrf.so")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PAM_LINE = "session [success=ok session_err=bad default=ignore]"

# su, in short: real ids the invoker's and effective ids 0 while PAM runs
# (argv: invoker uid gid, PAM service, target user, target uid gid); then the
# target account's ids, as su's child. Reports where it is and the bound
# device of a new socket after the session opened and for every stdin line.
SU = progs.source("delegation_su")

# As the invoker: move a process into a cgroup (argv: pid, directory).
MOVE = ("import json, sys\n"
        "try:\n"
        "    with open(sys.argv[2] + '/cgroup.procs', 'w') as f: f.write(sys.argv[1])\n"
        "    print(json.dumps('moved'))\n"
        "except OSError as e:\n"
        "    print(json.dumps(e.errno))\n")


def hierarchy(path):
    mount = cgroup.mount_point()
    assert path.startswith(mount + "/")
    return path[len(mount):]


def delegate(path, user=None, group=None):
    """What systemd's Delegate=yes does to a cgroup for `user` (or, with
    `group`, the same made group-writable)."""
    for name in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        target = os.path.join(path, name) if name else path
        if user is not None:
            os.chown(target, user.pw_uid, user.pw_gid)
        if group is not None:
            os.chown(target, 0, group)
            os.chmod(target, os.stat(target).st_mode | 0o020)


def as_user(user, code, *args):
    proc = subprocess.run([PY, "-c", code, *map(str, args)], preexec_fn=enter(user=user),
                          capture_output=True, text=True, timeout=30, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


class Su:
    """The SU driver, running in `cgroup_dir` and the lab's netns."""

    def __init__(self, lab, invoker, target, cgroup_dir, cgroupns=False):
        argv = lab.syslog.wrap([PY, "-c", SU, invoker.pw_uid, invoker.pw_gid, lab.service, target.pw_name,
                                target.pw_uid, target.pw_gid, *(["--cgroupns"] if cgroupns else [])])
        self.proc = spawn([str(a) for a in argv], netns=lab.ns, cgroup_dir=cgroup_dir,
                          env={"PATH": SYSTEM_PATH}, cwd="/", stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.first = self.report()

    def report(self):
        line = self.proc.stdout.readline()
        assert line, f"the su driver ended: {self.proc.stderr.read()}"
        return json.loads(line)

    def again(self):
        self.proc.stdin.write("again\n")
        self.proc.stdin.flush()
        return self.report()

    def close(self):
        stop_process(self.proc)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


class Lab:
    def __init__(self, netns, sandbox, syslog, vrf_conf, throwaway_user, helper_factory):
        self.ns, self.sandbox, self.syslog = netns("d"), sandbox, syslog
        self.dev = f"vd{uid_tag()}"
        add_veth(self.ns, self.dev, self.dev + "p")
        self.invoker, self.target = throwaway_user(), throwaway_user()
        self.config = vrf_conf(f"{self.target.pw_name}  {self.dev}  plain\n"
                               f"{self.invoker.pw_name}  {self.dev}  plain\n")
        self.helper = helper_factory(self.config, netns=self.ns, syslog=syslog)
        self.service = f"pvt-dl{uid_tag()}"
        self.pam_file = write_pam_service(
            self.service, f"{PAM_LINE} {MODULE} config={self.config} socket={self.helper.socket} debug")
        self.drivers, self.groups = [], []

    def su(self, invoker, target, cgroup_dir, cgroupns=False):
        driver = Su(self, invoker, target, cgroup_dir, cgroupns)
        self.drivers.append(driver)
        return driver

    def close(self):
        for driver in self.drivers:
            driver.close()
        unlink_quietly(self.pam_file)
        for g in self.groups:
            remove_group(g)


@pytest.fixture
def lab(installed, netns, sandbox_cgroup, syslog, vrf_conf, throwaway_user, helper_factory):
    lab = Lab(netns, sandbox_cgroup, syslog, vrf_conf, throwaway_user, helper_factory)
    try:
        yield lab
    finally:
        lab.close()


def invokers_tree(lab, how):
    """(the cgroup su runs in, a cgroup of the invoker's to move it to), below a
    tree the invoker can write (`how`): its own delegated cgroup with a
    terminal it made; a root-owned cgroup inside it (the invoker owns the
    parent, not the cgroup); a delegation to a group the invoker is in."""
    tree = os.path.join(lab.sandbox, "user@.service")
    os.mkdir(tree)
    if how == "group":
        group = f"pvd{uid_tag()}"
        lab.groups.append(add_group(group))
        sh("usermod", "-a", "-G", group, lab.invoker.pw_name)
        gid = int(sh("getent", "group", group).stdout.split(":")[2])
        delegate(tree, group=gid)
    else:
        delegate(tree, lab.invoker)
    user = lab.invoker
    if how == "group":          # the invoker with its new group
        import pwd
        user = pwd.getpwnam(lab.invoker.pw_name)
    if how == "root-owned":
        terminal = os.path.join(tree, "terminal.scope")
        os.mkdir(terminal)
    else:
        terminal = os.path.join(tree, "terminal.scope")
        as_user_groups(user, how, f"import os, json; os.mkdir({terminal!r}); print(json.dumps(0))")
    other = os.path.join(tree, "elsewhere")
    as_user_groups(user, how, f"import os, json; os.mkdir({other!r}); print(json.dumps(0))")
    return terminal, other, user


def as_user_groups(user, how, code, *args):
    """as_user, with the supplementary groups of the account (the group case)."""
    if how != "group":
        return as_user(user, code, *args)
    argv = ["setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--init-groups",
            PY, "-c", code, *map(str, args)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("how", ["own", "root-owned", "group"])
def test_su_from_a_tree_the_invoker_can_write_cannot_be_moved_out(lab, how):
    """`su target` from a cgroup the invoker can write: the target's session is
    placed where the invoker cannot move it, and stays bound."""
    terminal, elsewhere, invoker = invokers_tree(lab, how)
    su = lab.su(lab.invoker, lab.target, terminal)
    assert su.first["rc"] == 0 and su.first["dev"] == lab.dev, su.first
    placed = cgroup.cgroup_of(su.first["pid"])
    assert placed.endswith(f"/{lab.ns}-ns/vrf/{lab.dev}"), placed

    moved = as_user_groups(invoker, how, MOVE, su.first["pid"], elsewhere)
    after = su.again()
    assert moved in (errno.EACCES, errno.EPERM), (
        f"{lab.invoker.pw_name} moved {lab.target.pw_name}'s session, placed at {placed}, to {elsewhere} "
        f"({moved}): its next socket is bound to {after['dev']!r}")
    assert cgroup.cgroup_of(su.first["pid"]) == placed
    assert after["dev"] == lab.dev, f"the session's next socket is bound to {after['dev']!r}"
    # The VRF level is below the deepest cgroup only root can write (here: the sandbox).
    assert placed == f"{hierarchy(lab.sandbox)}/{lab.ns}-ns/vrf/{lab.dev}", placed


def test_vrf_levels_someone_else_can_write_are_never_used(lab):
    """The VRF levels below a root-owned cgroup exist already and are the
    invoker's (made in advance, or left from a delegation): the session is not
    placed there (it would be moved out to vrf/, the default VRF); a non-strict
    rule leaves it unplaced, and the log says why."""
    terminal = os.path.join(lab.sandbox, "terminal.scope")
    levels = [terminal, f"{terminal}/{lab.ns}-ns", f"{terminal}/{lab.ns}-ns/vrf", f"{terminal}/{lab.ns}-ns/vrf/{lab.dev}"]
    for level in levels:
        os.makedirs(level, exist_ok=True)
    for level in levels[1:]:
        delegate(level, lab.invoker)
    mark = lab.syslog.mark()
    su = lab.su(lab.invoker, lab.target, terminal)
    where = cgroup.cgroup_of(su.first["pid"])
    moved = as_user(lab.invoker, MOVE, su.first["pid"], levels[2])
    after = su.again()
    assert su.first["rc"] == 0 and where == hierarchy(terminal) and moved in (errno.EACCES, errno.EPERM), (
        f"{lab.target.pw_name}'s session was placed at {where}, {lab.invoker.pw_name} moved it to "
        f"{levels[2]} ({moved}): its next socket is bound to {after['dev']!r}")
    lab.syslog.wait_for(["pam-vrf-helper[", f"user {lab.target.pw_name}", "left unplaced",
                         f"uid {lab.invoker.pw_uid} can write"], mark)


def test_su_to_oneself_inside_ones_own_delegated_tree_stays_there(lab):
    """The invoker's own session below its own delegated tree keeps iproute2's
    layout (<its cgroup>/<netns>-ns/vrf/NAME): nobody else can write there."""
    terminal, _, _ = invokers_tree(lab, "own")
    su = lab.su(lab.invoker, lab.invoker, terminal)
    assert su.first["rc"] == 0 and su.first["dev"] == lab.dev, su.first
    assert cgroup.cgroup_of(su.first["pid"]) == f"{hierarchy(terminal)}/{lab.ns}-ns/vrf/{lab.dev}"


def test_placement_seen_from_a_cgroup_namespace(lab):
    """su that entered a cgroup namespace of its own first (its /proc/self/cgroup
    then reads '/'): the helper reads the path in its own namespace, so the
    placement is the same as without it, outside the invoker's tree."""
    terminal, elsewhere, invoker = invokers_tree(lab, "own")
    su = lab.su(lab.invoker, lab.target, terminal, cgroupns=True)
    assert su.first["rc"] == 0 and su.first["dev"] == lab.dev, su.first
    placed = cgroup.cgroup_of(su.first["pid"])
    moved = as_user(invoker, MOVE, su.first["pid"], elsewhere)
    after = su.again()
    assert moved in (errno.EACCES, errno.EPERM) and after["dev"] == lab.dev, (placed, moved, after)
    assert placed == f"{hierarchy(lab.sandbox)}/{lab.ns}-ns/vrf/{lab.dev}", placed


def test_roots_pam_vrf_exec_from_a_users_tree_cannot_be_moved_out(lab):
    """`sudo pam-vrf exec VRF` from a desktop terminal: root's process, in a
    tree the invoker can write, is placed outside it too."""
    terminal, elsewhere, invoker = invokers_tree(lab, "own")
    agent = Agent(None, lab.ns, terminal)
    try:
        reply = agent("exchange", socket=lab.helper.socket, msg={"op": "place", "vrf": lab.dev, "plain": True})
        assert reply["reply"]["ok"] is True, reply
        placed = agent("state")["cgroup"]
        moved = as_user(invoker, MOVE, agent.pid, elsewhere)
        now = agent("state")["cgroup"]
    finally:
        agent.close()
    assert moved in (errno.EACCES, errno.EPERM) and now == placed, (
        f"{lab.invoker.pw_name} moved root's `pam-vrf exec` process from {placed} to {now} ({moved})")
    assert placed == f"{hierarchy(lab.sandbox)}/{lab.ns}-ns/vrf/{lab.dev}", placed


# -- item 3: the user's systemd manager ------------------------------------------------

def manager_rules(user, dev):
    """vrf.conf texts and whether the manager is bound under each."""
    name = user.pw_name
    return [
        (f"{name}  {dev}  plain services=sshd deny=inet6\n", True),
        (f"{name}  -  services=cron\n{name}  {dev}  plain services=sshd\n", True),
        (f"{name}  default\n{name}  {dev}  plain services=sshd\n", False),
        (f"{name}  -\n", False),
    ]


def test_the_manager_session_binds_user_at_uid_service_before_the_manager_runs(
        installed, netns, sandbox_cgroup, syslog, vrf_conf, throwaway_user, helper_factory):
    """logind's layout rebuilt: user-UID.slice/user@UID.service with the PAM
    caller of the systemd-user session in it, no login yet. The helper binds
    user@UID.service (not moving the caller) with the user's first placing
    rule, also one services= limits to another service; none when no rule
    could place a session of the user."""
    ns = netns("m")
    dev = f"vm{uid_tag()}"
    add_veth(ns, dev, dev + "p")
    user = throwaway_user()
    for n, (text, bound) in enumerate(manager_rules(user, dev)):
        config = vrf_conf(text)
        helper = helper_factory(config, netns=ns, syslog=syslog)
        slice_dir = os.path.join(sandbox_cgroup, f"s{n}", f"user-{user.pw_uid}.slice")
        manager = os.path.join(slice_dir, f"user@{user.pw_uid}.service")
        os.makedirs(manager)
        starter = Agent(None, ns, manager)
        try:
            mark = syslog.mark()
            reply = starter("exchange", socket=protocol.root_socket(helper.socket),
                            msg={"op": "open", "user": user.pw_name, "service": "systemd-user"})["reply"]
            assert starter("state")["cgroup"] == hierarchy(manager)        # not moved
            attached = cgroup_link.query(manager)
            if not bound:
                assert reply["ok"] is True and reply["verdict"] == "alone" and attached == [], (text, reply)
                continue
            assert reply["verdict"] == "placed" and reply["cgroup"] == hierarchy(manager), (text, reply)
            assert len(attached) == 1, (text, attached)
            settings = programs.read_back(attached[0].prog_id)[1]
            assert settings.ifindex == int(sh("ip", "-n", ns, "-j", "link", "show", dev).stdout
                                           .split('"ifindex":')[1].split(",")[0])
            assert bool(settings.deny) == ("deny=inet6" in text), settings
            syslog.wait_for(["pam-vrf-helper[", f"user {user.pw_name} (service systemd-user)",
                             f"user@{user.pw_uid}.service", "before it starts"], mark)
        finally:
            starter.close()
            helper.stop()


def test_a_manager_session_from_elsewhere_binds_nothing(installed, netns, sandbox_cgroup, syslog, vrf_conf,
                                                        throwaway_user, helper_factory):
    """service systemd-user from a process that is not in the user's
    user@UID.service tree (a session scope): nothing is bound; under a strict
    rule the session is refused (what it starts would not be bound). From
    anywhere below user@UID.service (init.scope on systemd >= 254, or where
    the user moved the manager-to-be: the tree is theirs) the service itself
    is bound."""
    ns = netns("e")
    dev = f"ve{uid_tag()}"
    add_veth(ns, dev, dev + "p")
    user, strict = throwaway_user(), throwaway_user()
    config = vrf_conf(f"{user.pw_name}  {dev}  plain\n{strict.pw_name}  {dev}  plain strict\n")
    helper = helper_factory(config, netns=ns, syslog=syslog)
    for account, verdict in ((user, "unplaced"), (strict, "refused")):
        slice_dir = os.path.join(sandbox_cgroup, account.pw_name, f"user-{account.pw_uid}.slice")
        manager = os.path.join(slice_dir, f"user@{account.pw_uid}.service")
        below = os.path.join(manager, "init.scope")
        scope = os.path.join(slice_dir, "session-1.scope")
        for where, expect in ((scope, verdict), (below, "placed")):
            os.makedirs(where, exist_ok=True)
            starter = Agent(None, ns, where)
            try:
                reply = starter("exchange", socket=protocol.root_socket(helper.socket),
                                msg={"op": "open", "user": account.pw_name, "service": "systemd-user"})["reply"]
                assert reply["verdict"] == expect, (where, reply)
                assert starter("state")["cgroup"] == hierarchy(where)
            finally:
                starter.close()
        assert len(cgroup_link.query(manager)) == 1
        assert all(cgroup_link.query(d) == [] for d in (below, scope, slice_dir))
