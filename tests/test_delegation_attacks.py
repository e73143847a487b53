"""Adversarial review of the delegated-cgroup and user-manager changes
(issue 14 items 3 and 4: cgroup.foreign_writer/trusted_base/check_trusted,
placement._manager_session/_manager_rule), as an unprivileged local user.

Landed (these tests fail on the reviewed code):
- the owner of a cgroup may chmod it whatever its mode: a delegated tree
  with its write bits taken away reads as "no one else can write it", the
  other account's session is placed inside it, the owner gives itself the
  bits back and moves the session out;
- the user moves the manager-to-be (root's process, in the delegated
  user@UID.service) one level down before its systemd-user PAM session:
  the helper then binds nothing and the manager's early sockets (or, with
  lingering, everything it ever starts) stay unbound;
- the manager carries one rule: a strict login rule that differs from the
  user's first placing rule is left through `systemd-run --user`;
- a process the user parks in user@UID.service itself makes every later
  rebinding of the manager a Conflict: a policy change (another VRF, deny=)
  never reaches what the manager starts.

Held (kept as passing tests): the invoker moving su's process around its own
tree while the helper places it; a threaded terminal, cgroup.max.depth and
cgroup.max.descendants set by the invoker on its tree.
"""

import errno
import os
import subprocess

import pytest

from testlab import progs
from testlab.net import add_veth
from testlab.run import PY, enter, uid_tag
from helper_attacks import Agent
from pam_vrf import cgroup, protocol
from pam_vrf.bpf import cgroup_link
from test_delegation import MOVE, as_user, delegate, hierarchy, invokers_tree, lab  # noqa: F401  (fixture)

pytestmark = pytest.mark.root


# As the owner of a cgroup: set the mode of it, its cgroup.procs and
# cgroup.threads (argv: mode, directories...).
CHMOD = ("import json, os, sys\n"
         "mode = int(sys.argv[1], 8)\n"
         "for d in sys.argv[2:]:\n"
         "    for p in (d, d + '/cgroup.procs', d + '/cgroup.threads'):\n"
         "        os.chmod(p, mode | (0o111 if p == d else 0))\n"
         "print(json.dumps('ok'))\n")


def test_a_tree_whose_owner_took_the_write_bits_away_is_still_the_owners(lab):
    """Write bits are the owner's to give back (chmod needs ownership, not a
    write bit): the invoker makes its delegated tree read-only, su target
    from it, then chmods u+w and moves the target's session out."""
    terminal, elsewhere, invoker = invokers_tree(lab, "own")
    tree = os.path.dirname(terminal)
    assert as_user(invoker, CHMOD, "0444", tree, terminal) == "ok"
    su = lab.su(lab.invoker, lab.target, terminal)
    assert su.first["rc"] == 0 and su.first["dev"] == lab.dev, su.first
    placed = cgroup.cgroup_of(su.first["pid"])

    assert as_user(invoker, CHMOD, "0644", tree) == "ok"
    moved = as_user(invoker, MOVE, su.first["pid"], elsewhere)
    after = su.again()
    assert moved in (errno.EACCES, errno.EPERM) and after["dev"] == lab.dev, (
        f"{lab.target.pw_name}'s session was placed at {placed}, in a tree {lab.invoker.pw_name} owns "
        f"(mode 0444 while the helper looked); it chmod'ed it back and moved the session to {elsewhere} "
        f"({moved}): its next socket is bound to {after['dev']!r}")
    assert placed == f"{hierarchy(lab.sandbox)}/{lab.ns}-ns/vrf/{lab.dev}", placed


def test_vrf_levels_the_invoker_owns_read_only_are_never_used(lab):
    """The same with the VRF levels made in advance below a root-owned
    cgroup (test_delegation's case), owned by the invoker but read-only:
    check_trusted must not take them either."""
    terminal = os.path.join(lab.sandbox, "terminal.scope")
    levels = [terminal, f"{terminal}/{lab.ns}-ns", f"{terminal}/{lab.ns}-ns/vrf",
              f"{terminal}/{lab.ns}-ns/vrf/{lab.dev}"]
    for level in levels:
        os.makedirs(level, exist_ok=True)
    for level in levels[1:]:
        delegate(level, lab.invoker)
    assert as_user(lab.invoker, CHMOD, "0444", *levels[1:]) == "ok"
    su = lab.su(lab.invoker, lab.target, terminal)
    where = cgroup.cgroup_of(su.first["pid"])
    assert as_user(lab.invoker, CHMOD, "0644", *levels[1:]) == "ok"
    moved = as_user(lab.invoker, MOVE, su.first["pid"], levels[2])
    after = su.again()
    assert moved in (errno.EACCES, errno.EPERM) and after["dev"] in (lab.dev, ""), (
        f"{lab.target.pw_name}'s session was placed at {where} (levels {lab.invoker.pw_name} owns, "
        f"read-only while the helper looked); moved to {levels[2]} ({moved})")
    assert where == hierarchy(terminal), f"placed in levels the invoker owns: {where}"


# -- the user's systemd manager ------------------------------------------------------

class Logind:
    """logind's layout for `user` in the sandbox: user-UID.slice (root's),
    user@UID.service delegated to the user, session-1.scope (root's)."""

    def __init__(self, sandbox, user):
        self.slice = os.path.join(sandbox, f"user-{user.pw_uid}.slice")
        self.manager = os.path.join(self.slice, f"user@{user.pw_uid}.service")
        self.scope = os.path.join(self.slice, "session-1.scope")
        os.makedirs(self.manager)
        os.makedirs(self.scope)
        delegate(self.manager, user)
        self.agents = []

    def agent(self, where):
        agent = Agent(None, self.ns, where)
        self.agents.append(agent)
        return agent

    def close(self):
        for agent in self.agents:
            agent.close()


def open_session(agent, helper, user, service):
    return agent("exchange", socket=protocol.root_socket(helper.socket),
                 msg={"op": "open", "user": user.pw_name, "service": service})["reply"]


@pytest.fixture
def manager_lab(installed, netns, sandbox_cgroup, syslog, vrf_conf, throwaway_user, helper_factory):
    ns = netns("m")
    devs = [f"vm{uid_tag()}", f"vn{uid_tag()}"]
    for dev in devs:
        add_veth(ns, dev, dev + "p")
    user = throwaway_user()
    layout = Logind(sandbox_cgroup, user)
    layout.ns, layout.devs, layout.user = ns, devs, user

    def start(text):
        layout.config = vrf_conf(text)
        return helper_factory(layout.config, netns=ns, syslog=syslog)

    layout.start, layout.rewrite = start, lambda text: vrf_conf(text, path=layout.config)
    try:
        yield layout
    finally:
        layout.close()


def test_the_user_cannot_move_its_manager_to_be_out_of_the_binding(manager_lab):
    """user@UID.service is the user's (Delegate=yes) as soon as systemd starts
    it; the manager-to-be is root's, but cgroup v2 asks only for write access
    to the cgroups: the user moves it into a cgroup of its own below
    user@UID.service before its systemd-user PAM session (any name: not
    only init.scope, where systemd >= 254 starts it). The helper must
    still bind user@UID.service (the whole delegated tree), or the manager
    starts unbound (with lingering: for ever, no login rebinds it)."""
    lab, user, dev = manager_lab, manager_lab.user, manager_lab.devs[0]
    helper = lab.start(f"{user.pw_name}  {dev}  plain\n")
    starter = lab.agent(lab.manager)
    below = os.path.join(lab.manager, "mine.scope")       # any name the user likes
    as_user(user, f"import os, json; os.mkdir({below!r}); print(json.dumps(0))")
    assert as_user(user, MOVE, starter.pid, below) == "moved"

    reply = open_session(starter, helper, user, "systemd-user")
    state = starter("state")
    assert cgroup_link.query(lab.manager) and state["bound"] == dev, (
        f"{user.pw_name} moved its manager-to-be to {state['cgroup']} before its PAM session: "
        f"verdict {reply}, nothing bound on user@UID.service, the manager's next socket bound to "
        f"{state['bound']!r}")


def test_a_strict_login_rule_is_not_left_through_the_manager(manager_lab):
    """The manager carries the user's first placing rule; a later strict rule
    for sshd puts ssh logins into another VRF. From the ssh session,
    `systemd-run --user` starts a process in user@UID.service: it must not
    get sockets outside the strict rule's VRF (a strict login whose rule the
    manager cannot carry is refused, or the manager is bound so that it
    makes no such socket)."""
    lab, user = manager_lab, manager_lab.user
    console, mgmt = lab.devs
    helper = lab.start(f"{user.pw_name}  {console}  plain services=login\n"
                       f"{user.pw_name}  {mgmt}  plain strict\n")
    manager = lab.agent(lab.manager)
    assert open_session(manager, helper, user, "systemd-user")["verdict"] == "placed"
    ssh = lab.agent(lab.scope)
    login = open_session(ssh, helper, user, "sshd")
    if login["verdict"] == "refused":
        return
    assert login["verdict"] == "placed" and ssh("state")["bound"] == mgmt, login
    # What `systemd-run --user` from the ssh session starts: a process of
    # the manager's, in a unit cgroup below user@UID.service.
    unit = os.path.join(lab.manager, "app.slice")
    as_user(user, f"import os, json; os.mkdir({unit!r}); print(json.dumps(0))")
    run = lab.agent(unit)
    try:
        bound = run("state")["bound"]
    except AssertionError as e:         # the manager's sockets refused
        assert "PermissionError" in str(e), e
        return
    assert bound == mgmt, (
        f"{user.pw_name}'s ssh login is in {mgmt} by a strict rule, but what it starts with "
        f"systemd-run --user is bound to {bound!r} (the manager's rule: services=login)")


def test_a_process_parked_in_user_at_uid_service_keeps_the_managers_old_rule(manager_lab):
    """The user moves one of its manager's processes (a systemd-run --user
    unit) up into user@UID.service itself: it is the user's delegated cgroup.
    The policy then moves the user to another VRF, with deny=; the next login binds the manager
    again, but the helper sees processes in user@UID.service placed under
    another rule (Conflict) and keeps the old program: what the manager starts
    stays in the old VRF for as long as the manager runs (lingering: for ever).
    Under systemd the user first turns the controllers off below
    user@UID.service (it owns every cgroup.subtree_control there): a cgroup
    with controllers enabled for its children takes no processes itself."""
    lab, user = manager_lab, manager_lab.user
    old, new = lab.devs
    helper = lab.start(f"{user.pw_name}  {old}  plain\n")
    manager = lab.agent(lab.manager)
    assert open_session(manager, helper, user, "systemd-user")["verdict"] == "placed"
    unit = os.path.join(lab.manager, "app.slice")
    as_user(user, f"import os, json; os.mkdir({unit!r}); print(json.dumps(0))")
    parked = Agent(user, lab.ns, unit)
    lab.agents.append(parked)
    assert as_user(user, MOVE, parked.pid, lab.manager) == "moved"

    lab.rewrite(f"{user.pw_name}  {new}  plain deny=inet6\n")
    login = open_session(lab.agent(lab.scope), helper, user, "sshd")
    assert login["verdict"] == "placed", login
    state = lab.agent(unit)("state")
    assert (state["bound"], state["inet6"]) == (new, "EPERM"), (
        f"vrf.conf moved {user.pw_name} from {old} to {new} with deny=inet6; its login is there, but what "
        f"its manager starts gets {state} (a process it parked in user@UID.service kept the old rule: {login})")


# -- held ------------------------------------------------------------------------------

# As the invoker: move every process found in one of two cgroups into the
# other, as fast as it can, until stdin closes (argv: the two directories).
SHUFFLE = progs.source("shuffle_terminal")


def test_the_invoker_moving_su_around_its_tree_while_it_is_placed(lab):
    """The helper reads where su is, then moves it: the invoker moves su
    between two cgroups of its own all the while. Every cgroup of the tree
    has the same trusted base, so the session still lands outside it."""
    terminal, elsewhere, invoker = invokers_tree(lab, "own")
    shuffler = subprocess.Popen([PY, "-c", SHUFFLE, terminal, elsewhere], preexec_fn=enter(user=invoker),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        su = lab.su(lab.invoker, lab.target, terminal)
    finally:
        out, _ = shuffler.communicate("", timeout=30)
    assert int(out) > 0
    assert su.first["rc"] == 0 and su.first["dev"] == lab.dev, su.first
    placed = cgroup.cgroup_of(su.first["pid"])
    assert placed == f"{hierarchy(lab.sandbox)}/{lab.ns}-ns/vrf/{lab.dev}", placed
    assert as_user(invoker, MOVE, su.first["pid"], elsewhere) in (errno.EACCES, errno.EPERM)
    assert su.again()["dev"] == lab.dev


TRICKS = {
    # su's cgroup made threaded (the tree becomes a threaded domain).
    "threaded": lambda t, term: [(f"{term}/cgroup.type", "threaded")],
    # No cgroup may be made below the terminal, or below the tree at all.
    "max.depth": lambda t, term: [(f"{term}/cgroup.max.depth", "0")],
    "max.descendants": lambda t, term: [(f"{term}/cgroup.max.descendants", "0")],
}

WRITE = ("import json, sys\n"
         "for path, value in zip(sys.argv[1::2], sys.argv[2::2]):\n"
         "    with open(path, 'w') as f: f.write(value)\n"
         "print(json.dumps('ok'))\n")


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_what_the_invoker_sets_on_its_tree_does_not_leave_su_unplaced(lab, trick):
    """Settings of the invoker's own cgroups that make a mkdir or a move below
    them fail: the session is placed above them (the deepest cgroup no one
    else can write), so none applies; the session is placed and stays."""
    terminal, elsewhere, invoker = invokers_tree(lab, "own")
    writes = TRICKS[trick](os.path.dirname(terminal), terminal)
    assert as_user(invoker, WRITE, *[x for pair in writes for x in pair]) == "ok"
    su = lab.su(lab.invoker, lab.target, terminal)
    assert su.first["rc"] == 0 and su.first["dev"] == lab.dev, (trick, su.first)
    placed = cgroup.cgroup_of(su.first["pid"])
    assert placed == f"{hierarchy(lab.sandbox)}/{lab.ns}-ns/vrf/{lab.dev}", (trick, placed)
    assert as_user(invoker, MOVE, su.first["pid"], elsewhere) in (errno.EACCES, errno.EPERM), trick
    assert su.again()["dev"] == lab.dev, trick
