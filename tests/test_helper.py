"""pam-vrf-helper under attack: the installed daemon running as a throwaway
non-root user with ambient CAP_BPF/CAP_NET_ADMIN/CAP_DAC_OVERRIDE only
(conftest.Helper), spoken to over its real sockets with protocol v2.

The helper moves the SENDER of a request, pinned by the pidfd it sends
(SCM_RIGHTS) and the pid the kernel vouches for (SCM_CREDENTIALS). Requests
that could move something are therefore sent by agents (helper_attacks.Agent:
small processes of root or of throwaway users, in sandbox cgroups), never by
the pytest process.

    hostile clients   malformed, oversized, empty, unauthorised requests and
                      every wrong pidfd get ok=false with a reason, the reason
                      lands in syslog, the helper keeps serving
    pinning           pid reuse (in a pid namespace of our own), pid 1, kernel
                      threads, another user's process or connection, a user
                      namespace's root claiming pids: refused (or acting on
                      the sender's own processes only)
    load              floods, held-open connections, rate and cgroup limits,
                      a stopped helper: logins (root.sock) still get placed
    policy            vrf.conf re-read on change, last good policy kept, NSS
                      failures (a failing NSS module of our own), su to oneself
    kernel state      one program per rule, device checks, the user's systemd
                      manager bound at login, re-attach after a device is
                      re-created, also across a helper restart

Targets are veth devices (`plain`: no VRF driver here) inside a netns the
test creates; the helper runs in that netns. No test asserts on timing.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from testlab.helper import Helper
from testlab.run import PY, REPO, sh, no_user_namespaces_here, spawn, uid_tag
from helper_attacks import FLOOD, NSS_FAIL_C, STUCK_SOCKET, USERNS_CLAIM, Agent
from nsslab import nss_module
from pam_vrf import cgroup, client, programs, protocol
from pam_vrf.bpf import cgroup_link
from pam_vrf.helper import placement, server
from pam_vrf.log import escape

pytestmark = pytest.mark.root

PIDREUSE = os.path.join(REPO, "testlab", "pidreuse.py")      # the pid-reuse attack, shared with tests/vm

MAX = protocol.MAX_MESSAGE
BUSY = "helper busy"
LATE = "request not received in time"
NOT_SENDERS = "the pidfd sent is not the sender's"
ONE_PIDFD = "send exactly one pidfd of the sending process"


# -- helpers -------------------------------------------------------------------

def message(**fields):
    """A v2 request as bytes (fields may override v)."""
    return json.dumps({"v": protocol.VERSION, **fields}, separators=(",", ":")).encode()


def raw(data):
    """Bytes as an agent carries them (latin-1 text)."""
    return data.decode("latin-1")


def root_sock(helper):
    return protocol.root_socket(helper.socket)


def hierarchy(path):
    """A cgroup directory as a hierarchy path (what /proc/PID/cgroup shows)."""
    mount = cgroup.mount_point()
    assert path.startswith(mount + "/")
    return path[len(mount):]


def subcg(parent, name):
    path = os.path.join(parent, name)
    os.makedirs(path, exist_ok=True)
    return path


def subdirs(path):
    return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))


def proc_cgroup(pid):
    return cgroup.cgroup_of(pid)


def assert_serving(helper):
    """The helper is alive and answers a ping (no time limit but the login's)."""
    assert helper.alive(), f"helper died:\n{helper.output()}"
    answer = client.call({"op": "ping"}, helper.socket, timeout=protocol.LOGIN_TIMEOUT)
    assert answer == {"v": protocol.VERSION, "ok": True, "version": protocol.VERSION}


def refused(result, expect):
    """A problem description unless `result` (an agent's exchange/client result)
    is a refusal whose error says `expect`."""
    reply = result.get("reply")
    if not isinstance(reply, dict) or reply.get("ok") is not False:
        return f"not refused: {result}"
    if expect not in str(reply.get("error")):
        return f"error {reply.get('error')!r} does not say {expect!r}"
    return None


def logged(syslog, mark, *needles, timeout=10):
    return syslog.wait_for(["pam-vrf-helper[", *needles], mark, timeout=timeout)


def veth(ns, name):
    """Create veth `name` (peer `name`p) in netns `ns`; returns its ifindex."""
    sh("ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", name + "p")
    return ifindex_in(ns, name)


def ifindex_in(ns, name):
    return json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", name).stdout)[0]["ifindex"]


def recreate(ns, dev):
    """Delete veth `dev` and create it again under the same name; the new ifindex."""
    old = ifindex_in(ns, dev)
    sh("ip", "-n", ns, "link", "del", dev)
    new = veth(ns, dev)
    assert new != old
    return new


def attached_ifindex(path):
    """(program id, ifindex it binds to) of the one program on `path`."""
    attached = cgroup_link.query(path)
    assert len(attached) == 1, attached
    return attached[0].prog_id, programs.read_back(attached[0].prog_id)[1].ifindex


def wait_for(condition, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_for_ifindex(path, ifindex):
    wait_for(lambda: attached_ifindex(path)[1] == ifindex, f"{path} to bind to ifindex {ifindex}")


def placed_in(reply, vrf, where):
    """A problem description unless `reply` is open's `placed` into `vrf` at cgroup `where`."""
    if not (reply.get("ok") is True and reply.get("verdict") == "placed" and reply.get("vrf") == vrf
            and reply.get("cgroup") == where):
        return f"expected placed in {vrf} at {where}, got {reply}"
    return None


# -- fixtures ------------------------------------------------------------------

@pytest.fixture
def agents():
    """agents(user=None, netns=None, cgroup_dir=None, pass_fds=(), prefix=()) -> Agent."""
    made = []

    def make(user=None, netns=None, cgroup_dir=None, pass_fds=(), prefix=()):
        agent = Agent(user, netns, cgroup_dir, pass_fds, prefix)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


@pytest.fixture
def target(netns):
    """(netns, veth name, ifindex): a `plain` target the helper can bind to."""
    ns = netns()
    dev = f"pvt{uid_tag()}"
    return ns, dev, veth(ns, dev)


@pytest.fixture
def conf(vrf_conf):
    return vrf_conf("# nobody may enter a VRF by pam-vrf exec\n")


# -- hostile clients: malformed messages ---------------------------------------

def test_malformed_messages_are_refused(helper_factory, conf, syslog, sandbox_cgroup, agents):
    helper = helper_factory(conf, syslog=syslog)
    agent = agents(cgroup_dir=sandbox_cgroup)        # root: every request would be allowed
    pub, root = helper.socket, root_sock(helper)

    def open_(**fields):
        return message(op="open", **fields)

    def place(**fields):
        return message(op="place", **fields)

    cases = [
        # (label, socket, bytes, expected error, decoded: the peer is known)
        ("not JSON", pub, b"hello helper", "not JSON", False),
        ("not JSON on root.sock", root, b"hello helper", "not JSON", False),
        ("truncated JSON", pub, b'{"v":2,"op":"pi', "not JSON", False),
        ("invalid UTF-8", pub, b"\xff\xfe\xfd{}", "not JSON", False),
        ("invalid UTF-8 inside a string", pub, b'{"v":2,"op":"ping\xc3\x28"}', "not JSON", False),
        ("JSON array", root, b'[2,"open"]', "not a JSON object", False),
        ("JSON string", pub, b'"ping"', "not a JSON object", False),
        ("JSON null", pub, b"null", "not a JSON object", False),
        ("deeply nested array", pub, b"[" * 4000, "malformed request", False),
        ("deeply nested object value", root,
         b'{"v":2,"op":"open","x":' + b"[" * 2000 + b"]" * 2000 + b"}", "malformed request", False),
        ("missing v", pub, b'{"op":"ping"}', "unsupported protocol version", False),
        ("v 1 (the old protocol)", pub, message(v=1, op="place", vrf="lo", pid=1),
         "unsupported protocol version 1", False),
        ("v 3", root, message(v=3, op="open", user="root"), "unsupported protocol version", False),
        ("v as string", pub, b'{"v":"2","op":"ping"}', "unsupported protocol version", False),
        ("v true", pub, b'{"v":true,"op":"ping"}', "unsupported protocol version", False),
        ("v 2.0", pub, b'{"v":2.0,"op":"ping"}', "unsupported protocol version", False),
        ("v null", pub, b'{"v":null,"op":"ping"}', "unsupported protocol version", False),
        ("missing op", pub, message(), "unknown op None", True),
        ("unknown op", pub, message(op="reboot"), "unknown op 'reboot'", True),
        ("op as list", root, message(op=["open"]), "unknown op", True),
        ("v1's attach", root, message(op="attach", vrf="lo", cgroup="/vrf/lo", rule={}),
         "unknown op 'attach'", True),
        ("v1's attach-manager", root, message(op="attach-manager", vrf="lo", uid=0, cgroup="/x", rule={}),
         "unknown op 'attach-manager'", True),
        ("open without user", root, open_(service="sshd"), "user must be a non-empty string", True),
        ("open with an empty user", root, open_(user=""), "user must be a non-empty string", True),
        ("open with user 0", root, open_(user=0), "user must be a non-empty string", True),
        ("open with user as list", root, open_(user=["root"]), "user must be a non-empty string", True),
        ("open with a 257-character user", root, open_(user="a" * 257), "user must be a non-empty string", True),
        ("open with NUL in user", root, open_(user="ro\0ot"), "user must be a non-empty string", True),
        ("open with service 5", root, open_(user="root", service=5), "service must be a non-empty string", True),
        ("open with NUL in service", root, open_(user="root", service="ss\0hd"), "service must be", True),
        ("open with tty as list", root, open_(user="root", tty=["x"]), "tty must be a non-empty string", True),
        ("open with a 300-character rhost", root, open_(user="root", rhost="h" * 300), "rhost must be", True),
        ("place without vrf", pub, place(), "vrf must be a string", True),
        ("place vrf 5", pub, place(vrf=5), "vrf must be a string", True),
        ("place vrf ../x", pub, place(vrf="../x"), "bad VRF name", True),
        ("place vrf ..", root, place(vrf=".."), "bad VRF name", True),
        ("place vrf x/y", pub, place(vrf="x/y"), "bad VRF name", True),
        ("place empty vrf", pub, place(vrf=""), "bad VRF name", True),
        ("place 16-character vrf", pub, place(vrf="b" * 16), "bad VRF name", True),
        ("place vrf with NUL", pub, place(vrf="x\0y"), "bad VRF name", True),
        ("place vrf with space", pub, place(vrf="x y"), "bad VRF name", True),
        ("place vrf with newline", pub, place(vrf="x\ny"), "bad VRF name", True),
        ("place plain 'yes'", pub, place(vrf="lo", plain="yes"), "plain is root's", True),
        ("place plain 1", pub, place(vrf="lo", plain=1), "plain is root's", True),
        ("oversized 64 KiB", pub, b"x" * 65536, f"larger than {MAX} bytes", False),
        ("oversized valid JSON", root, message(op="ping", pad="x" * 5000), f"larger than {MAX} bytes", False),
        ("one byte over", pub, message(op="ping", pad="x" * (MAX + 1 - len(message(op="ping", pad="")))),
         f"larger than {MAX} bytes", False),
        ("empty message", pub, b"", "malformed request", False),
        ("empty message on root.sock", root, b"", "malformed request", False),
    ]
    problems = []
    for label, path, data, expect, decoded in cases:
        mark = syslog.mark()
        result = agent("exchange", socket=path, raw=raw(data))
        problem = refused(result, expect)
        if problem:
            problems.append(f"{label}: {problem}")
            continue
        reason = result["reply"]["error"].removeprefix("malformed request: ")
        needles = ["refused", escape(reason), f"pid {agent.pid} uid 0" if decoded else "uid 0"]
        try:
            logged(syslog, mark, *needles, timeout=3)
        except AssertionError as e:
            problems.append(f"{label}: reason not logged: {e}")
        if not helper.alive():
            problems.append(f"{label}: the helper died")
            break
    assert not problems, "\n".join(problems) + f"\n--- helper output:\n{helper.output()}"
    # Nothing was moved or created by any of it.
    assert agent("state")["cgroup"] == hierarchy(sandbox_cgroup)
    assert subdirs(sandbox_cgroup) == []
    assert_serving(helper)


def test_exactly_max_message_is_read(helper_factory, conf):
    """The limit is the limit: a request of exactly MAX_MESSAGE bytes is served."""
    helper = helper_factory(conf)
    data = message(op="ping", pad="")
    data = message(op="ping", pad="x" * (MAX - len(data)))
    assert len(data) == MAX
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(protocol.LOGIN_TIMEOUT)
        s.connect(helper.socket)
        s.send(data)
        answer = json.loads(s.recv(1 << 17))
    assert answer == {"v": 2, "ok": True, "version": protocol.VERSION}
    assert_serving(helper)


def test_silent_client_is_dropped(helper_factory, conf):
    helper = helper_factory(conf)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(protocol.LOGIN_TIMEOUT)
        s.connect(helper.socket)
        answer = json.loads(s.recv(65536))
        assert s.recv(65536) == b""           # and the connection is closed
    assert answer == {"v": 2, "ok": False, "error": LATE}
    assert_serving(helper)


# -- hostile clients: who asks -------------------------------------------------

def test_placement_needs_the_senders_own_pidfd(helper_factory, vrf_conf, syslog, target, sandbox_cgroup,
                                              agents, throwaway_user):
    """Root's requests too: no pidfd, two, something that is not a pidfd, or a
    pidfd of another process -- refused, nobody moved. Own pidfd: placed."""
    ns, dev, index = target
    login = throwaway_user()
    conf = vrf_conf(f"{login.pw_name}  {dev}  plain\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    before = {pid: proc_cgroup(pid) for pid in (1, os.getpid())}
    agent = agents(netns=ns, cgroup_dir=subcg(sandbox_cgroup, "agent"))
    bystander = agents(cgroup_dir=subcg(sandbox_cgroup, "bystander"))
    requests = [("open", root_sock(helper), {"op": "open", "user": login.pw_name, "service": "sshd"}),
                ("place", helper.socket, {"op": "place", "vrf": dev})]
    wrong = [("no pidfd", "none", ONE_PIDFD),
             ("two pidfds", ["self", "self"], ONE_PIDFD),
             ("/dev/null", "devnull", "the descriptor sent is not a pidfd"),
             ("own pidfd and /dev/null", ["self", "devnull"], ONE_PIDFD),
             ("a bystander's pidfd", bystander.pid, f"{NOT_SENDERS} (pid {agent.pid})"),
             ("the parent's pidfd", os.getpid(), NOT_SENDERS),
             ("pid 1's pidfd", 1, NOT_SENDERS)]
    problems = []
    for op, path, request in requests:
        for label, pidfd, expect in wrong:
            mark = syslog.mark()
            result = agent("exchange", socket=path, msg=request, pidfd=pidfd)
            problem = refused(result, expect)
            if problem:
                problems.append(f"{op} with {label}: {problem}")
                continue
            try:
                logged(syslog, mark, f"refused {op} from pid ? uid 0", "cannot tell which process asks",
                       escape(expect), timeout=3)
            except AssertionError as e:
                problems.append(f"{op} with {label}: {e}")
    assert not problems, "\n".join(problems) + f"\n--- helper output:\n{helper.output()}"
    assert agent("state")["cgroup"] == hierarchy(f"{sandbox_cgroup}/agent")
    assert bystander("state")["cgroup"] == hierarchy(f"{sandbox_cgroup}/bystander")
    assert {pid: proc_cgroup(pid) for pid in before} == before
    assert subdirs(sandbox_cgroup) == ["agent", "bystander"]
    assert_serving(helper)

    # Positive control: the same requests with the agent's own pidfd. A v1-style
    # "pid" naming another process changes nothing: the sender is placed.
    where = f"{hierarchy(sandbox_cgroup)}/agent/{ns}-ns/vrf/{dev}"
    reply = agent("exchange", socket=root_sock(helper), msg={**requests[0][2], "pid": bystander.pid})["reply"]
    assert placed_in(reply, dev, where) is None, (reply, helper.output())
    reply = agent("exchange", socket=helper.socket, msg={**requests[1][2], "pid": bystander.pid})["reply"]
    assert reply == {"v": 2, "ok": True, "cgroup": where}
    state = agent("state")
    assert state["cgroup"] == where and state["bound"] == dev and state["ifindex"] == index
    assert bystander("state")["cgroup"] == hierarchy(f"{sandbox_cgroup}/bystander")


def test_open_is_root_only(helper_factory, vrf_conf, syslog, target, sandbox_cgroup, agents,
                           throwaway_user):
    """open on the public socket is refused, for root too; non-root cannot
    connect to root.sock (mode 0600), and one that can (CAP_DAC_OVERRIDE) is
    turned away by its uid."""
    ns, dev, _ = target
    user = throwaway_user()
    conf = vrf_conf(f"*  {dev}  plain\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    assert os.stat(root_sock(helper)).st_mode & 0o777 == 0o600
    root_agent = agents(netns=ns, cgroup_dir=subcg(sandbox_cgroup, "root"))
    user_agent = agents(user, netns=ns, cgroup_dir=subcg(sandbox_cgroup, "user"))
    capable = agents(netns=ns, cgroup_dir=subcg(sandbox_cgroup, "capable"), prefix=[
        "setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--clear-groups",
        "--inh-caps", "+dac_override", "--ambient-caps", "+dac_override"])
    request = {"op": "open", "user": user.pw_name, "service": "sshd"}

    for agent, uid in ((root_agent, 0), (user_agent, user.pw_uid), (capable, user.pw_uid)):
        mark = syslog.mark()
        result = agent("exchange", socket=helper.socket, msg=request)
        assert refused(result, "open is for the PAM entries, on root.sock, as root") is None, result
        logged(syslog, mark, f"refused open from pid {agent.pid} uid {uid}", "open is for the PAM entries")

    assert user_agent("exchange", socket=root_sock(helper), msg=request) == {"connect_error": "EACCES"}

    mark = syslog.mark()
    result = capable("exchange", socket=root_sock(helper), msg=request)
    assert refused(result, "root.sock is for root only") is None, result
    logged(syslog, mark, "root.sock is for root only", f"uid {user.pw_uid}")

    for agent, name in ((root_agent, "root"), (user_agent, "user"), (capable, "capable")):
        state = agent("state")
        assert state["cgroup"] == hierarchy(f"{sandbox_cgroup}/{name}") and state["bound"] == ""
    assert subdirs(sandbox_cgroup) == ["capable", "root", "user"]
    assert_serving(helper)


@pytest.mark.parametrize("kind", ["sock-create", "egress", "setsockopt"])
def test_a_program_detached_behind_the_helpers_back_is_attached_again_at_the_next_login(
        helper_factory, vrf_conf, syslog, target, sandbox_cgroup, agents, throwaway_user, kind):
    """Someone with CAP_NET_ADMIN detaches one of a placed cgroup's three
    programs while a session is in it: the next login into that cgroup (the
    helper remembers it, its inode unchanged) asks the kernel and attaches
    it again, whichever of the three it was."""
    from pam_vrf.bpf import syscall
    attach_type = {"sock-create": syscall.CGROUP_INET_SOCK_CREATE, "egress": syscall.CGROUP_INET_EGRESS,
                   "setsockopt": syscall.CGROUP_SETSOCKOPT}[kind]
    ns, dev, _ = target
    user = throwaway_user()
    helper = helper_factory(vrf_conf(f"*  {dev}  plain\n"), netns=ns, syslog=syslog)
    where = f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}"
    request = {"op": "open", "user": user.pw_name, "service": "sshd"}
    first = agents(netns=ns, cgroup_dir=sandbox_cgroup)
    assert placed_in(first("client", socket=root_sock(helper), msg=request)["reply"], dev, where) is None
    path = cgroup.fs_path(where)
    before = {t: cgroup_link.query(path, t) for t in (syscall.CGROUP_INET_SOCK_CREATE, syscall.CGROUP_INET_EGRESS,
                                                     syscall.CGROUP_SETSOCKOPT)}
    assert all(len(ids) == 1 for ids in before.values()), before
    assert cgroup_link.detach(path, attach_type)
    second = agents(netns=ns, cgroup_dir=sandbox_cgroup)
    assert placed_in(second("client", socket=root_sock(helper), msg=request)["reply"], dev, where) is None
    assert {t: cgroup_link.query(path, t) for t in before} == before
    assert_serving(helper)


def test_exec_permissions_of_non_root_users(helper_factory, vrf_conf, syslog, target, sandbox_cgroup,
                                            agents, throwaway_user):
    ns, dev, index = target
    allowed, stranger = throwaway_user(), throwaway_user()
    conf = vrf_conf(f"{allowed.pw_name}  {dev}  plain exec={dev}\n"
                    f"*  -\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    base = hierarchy(sandbox_cgroup)
    refusals = [
        ({"op": "place", "vrf": "other0"}, "self", "may not enter VRF other0: no exec=other0"),
        ({"op": "place", "vrf": "default"}, "self", "may not enter VRF default"),
        ({"op": "place", "vrf": dev, "plain": True}, "self", "plain is root's"),
        ({"op": "place", "vrf": dev}, "none", ONE_PIDFD),
        ({"op": "place", "vrf": dev}, os.getpid(), NOT_SENDERS),
        ({"op": "place", "vrf": dev}, 1, NOT_SENDERS),
    ]
    problems = []
    agent_of = {}
    for user in (allowed, stranger):
        agent = agent_of[user.pw_name] = agents(user, netns=ns, cgroup_dir=sandbox_cgroup)
        cases = refusals + ([({"op": "place", "vrf": dev}, "self",
                              f"{stranger.pw_name} may not enter VRF {dev}")] if user is stranger else [])
        for request, pidfd, expect in cases:
            label = f"{user.pw_name} {request} pidfd={pidfd}"
            mark = syslog.mark()
            result = agent("exchange", socket=helper.socket, msg=request, pidfd=pidfd)
            problem = refused(result, expect)
            if problem:
                problems.append(f"{label}: {problem}")
                continue
            peer = f"pid {agent.pid} uid {user.pw_uid}" if pidfd == "self" else f"pid ? uid {user.pw_uid}"
            try:
                logged(syslog, mark, "refused place", peer, escape(result["reply"]["error"]), timeout=3)
            except AssertionError as e:
                problems.append(f"{label}: {e}")
            state = agent("state")
            if state["cgroup"] != base or state["bound"] != "":
                problems.append(f"{label}: moved or bound anyway: {state}")
    assert not problems, "\n".join(problems) + f"\n--- helper output:\n{helper.output()}"
    assert subdirs(sandbox_cgroup) == []       # no cgroup made for a refused request
    assert_serving(helper)

    # Positive control: the rule has exec=TARGET, so the user is placed (as `pam-vrf exec` does it).
    agent = agent_of[allowed.pw_name]
    mark = syslog.mark()
    result = agent("client", socket=helper.socket, msg={"op": "place", "vrf": dev})
    where = f"{base}/{ns}-ns/vrf/{dev}"
    assert result["reply"] == {"v": 2, "ok": True, "cgroup": where}, (result, helper.output())
    state = agent("state")
    assert state["cgroup"] == where and state["bound"] == dev and state["ifindex"] == index
    logged(syslog, mark, f"placed pid {agent.pid} in VRF {dev}", f"uid {allowed.pw_uid}")
    assert attached_ifindex(cgroup.fs_path(where))[1] == index
    # Asking again where one already is changes nothing.
    assert agent("client", socket=helper.socket, msg={"op": "place", "vrf": dev})["reply"]["cgroup"] == where
    assert_serving(helper)


def test_another_users_process_cannot_use_a_connection(helper_factory, vrf_conf, syslog, target,
                                                      sandbox_cgroup, agents, throwaway_user):
    """The connecting uid (SO_PEERCRED) and the pinned sender must be the same
    user: a connection of A handed to a process of B (SCM_RIGHTS), or a process
    whose real and effective uids differ, is refused."""
    ns, dev, _ = target
    owner, other = throwaway_user(), throwaway_user()
    conf = vrf_conf(f"{owner.pw_name}  {dev}  plain exec={dev}\n"
                    f"*  -\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    base = hierarchy(sandbox_cgroup)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = left.fileno(), right.fileno()          # the same numbers in the agents
    try:
        a = agents(owner, netns=ns, cgroup_dir=sandbox_cgroup, pass_fds=[fds[0]])
        b = agents(other, netns=ns, cgroup_dir=sandbox_cgroup, pass_fds=[fds[1]])
    finally:
        left.close()
        right.close()
    conn = a("connect", socket=helper.socket)["conn"]
    a("pass", conn=conn, fd=fds[0])
    handed = b("receive", fd=fds[1])["conn"]

    mark = syslog.mark()
    result = b("exchange", conn=handed, msg={"op": "place", "vrf": dev})
    expect = f"pid {b.pid} (uid {other.pw_uid}/{other.pw_uid}) is not a process of uid {owner.pw_uid}"
    assert refused(result, expect) is None, (result, helper.output())
    logged(syslog, mark, f"refused place from pid {b.pid} uid {owner.pw_uid}", expect)
    assert b("state")["cgroup"] == base

    # Real and effective uid of different users (a setuid-like process).
    mixed = []
    for ruid, euid in ((other.pw_uid, owner.pw_uid), (owner.pw_uid, other.pw_uid)):
        agent = agents(netns=ns, cgroup_dir=sandbox_cgroup)
        assert agent("setresuid", ids=[ruid, euid, 0])["uids"] == [ruid, euid, 0]
        mark = syslog.mark()
        result = agent("exchange", socket=helper.socket, msg={"op": "place", "vrf": dev})
        expect = f"pid {agent.pid} (uid {ruid}/{euid}) is not a process of uid {euid}"
        assert refused(result, expect) is None, (result, helper.output())
        logged(syslog, mark, f"refused place from pid {agent.pid} uid {euid}", expect)
        mixed.append(agent)
    for agent in (b, *mixed):
        state = agent("state")
        assert state["cgroup"] == base and state["bound"] == "", state
    assert subdirs(sandbox_cgroup) == []

    # The owner itself, on a connection of its own: placed.
    result = a("exchange", socket=helper.socket, msg={"op": "place", "vrf": dev})
    assert result["reply"] == {"v": 2, "ok": True, "cgroup": f"{base}/{ns}-ns/vrf/{dev}"}, result
    assert b("state")["cgroup"] == base
    assert_serving(helper)


def test_pid_reuse_cannot_redirect_a_placement(installed, vrf_conf, syslog, target, sandbox_cgroup,
                                              throwaway_user):
    """What SO_PEERCRED's pid would allow without SO_PEERPIDFD (Debian 12's 6.1):
    a user with an exec= grant connects, forks, exits; its pid goes to another
    user's process (forced with ns_last_pid in a pid namespace of our own, where
    the helper runs too); the child then asks on the parent's connections."""
    ns, dev, index = target
    attacker, victim, helper_user = throwaway_user(), throwaway_user(), throwaway_user()
    conf = vrf_conf(f"{attacker.pw_name}  {dev}  plain exec={dev}\n"
                    f"*  -\n")
    workdir = tempfile.mkdtemp(prefix="pam-vrf-helper-")
    try:
        os.chown(workdir, helper_user.pw_uid, helper_user.pw_gid)
        os.chmod(workdir, 0o755)
        helper = Helper(helper_user, workdir, conf)          # argv only: the driver starts it
        victim_cg = subcg(sandbox_cgroup, "victim")
        params = {"helper_argv": helper.argv(), "helper_log": os.path.join(workdir, "helper.log"),
                  "socket": helper.socket, "vrf": dev, "victim_name": victim.pw_name,
                  "attacker_ids": [attacker.pw_uid, attacker.pw_gid],
                  "victim_ids": [victim.pw_uid, victim.pw_gid], "victim_cgroup": victim_cg}
        argv = syslog.wrap(["nsenter", f"--net=/run/netns/{ns}",
                            "unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                            PY, PIDREUSE, "driver", json.dumps(params)])
        mark = syslog.mark()
        proc = spawn(argv, cgroup_dir=sandbox_cgroup, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True, cwd="/")
        try:
            out, err = proc.communicate(timeout=90)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 0, f"driver failed:\n{out}\n{err}\n{helper.output()}"
        got = json.loads(out.strip().splitlines()[-1])
        output = helper.output()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    seen = got["attacker"]
    child = seen["child"]
    assert got["victim"] == got["freed"] == seen["parent"], got       # the pid was reused...
    assert seen["pid_owner"] == victim.pw_uid, got                  # ...by the victim
    replies = seen["replies"]
    problems = [p for p in (
        refused({"reply": replies["victim pidfd"]}, f"{NOT_SENDERS} (pid {child})"),
        refused({"reply": replies["no pidfd"]}, ONE_PIDFD),
    ) if p]
    # Only root may claim another pid in SCM_CREDENTIALS: the kernel refuses the send.
    for case in ("victim pidfd, forged credentials", "forged credentials, no pidfd"):
        if replies[case] != {"send_error": "EPERM"}:
            problems.append(f"{case}: {replies[case]}")
    # Its own pidfd: the helper acts on the sender, which exec= allows.
    where = f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}"
    if replies["own pidfd"] != {"v": 2, "ok": True, "cgroup": where} or seen["cgroup"] != where:
        problems.append(f"own pidfd: {replies['own pidfd']}, now in {seen['cgroup']}")
    assert not problems, "\n".join(problems) + f"\n{got}\n--- helper output:\n{output}"
    # The victim is untouched; pid 1 (root, the namespace's init) is never placed.
    assert got["victim_before"] == hierarchy(victim_cg) and got["victim_uid"] == victim.pw_uid, got
    assert got["victim_after"] == got["victim_before"]
    for op, r in got["pid1"].items():
        assert r["ok"] is False and "pid 1 is never placed" in r["error"], (op, r)
    assert got["ping_after"] is True
    uid = attacker.pw_uid
    logged(syslog, mark, f"refused place from pid ? uid {uid}", f"{NOT_SENDERS} (pid {child})")
    logged(syslog, mark, f"refused place from pid ? uid {uid}", ONE_PIDFD)
    logged(syslog, mark, f"placed pid {child} in VRF {dev}", f"uid {uid}")
    assert not [line for line in syslog.since(mark) if f"pid {got['victim']} " in line], syslog.since(mark)


def test_pid_1_and_kernel_threads_are_never_placed(helper_factory, vrf_conf, syslog, sandbox_cgroup,
                                                  agents, throwaway_user):
    """A pidfd of pid 1 or of kthreadd (pid 2): refused for root and for users.
    Root may even claim their pids in SCM_CREDENTIALS; the pin still refuses.
    (The rule's device does not exist: were a guard to fail, nothing is moved.)"""
    missing = f"pvn{uid_tag()}"
    user = throwaway_user()
    conf = vrf_conf(f"*  {missing}  plain exec={missing}\n")
    helper = helper_factory(conf, syslog=syslog)
    before = {pid: proc_cgroup(pid) for pid in (1, 2)}
    root_agent = agents(cgroup_dir=subcg(sandbox_cgroup, "root"))
    user_agent = agents(user, cgroup_dir=subcg(sandbox_cgroup, "user"))
    opening = (root_sock(helper), {"op": "open", "user": "root", "service": "sshd"})
    placing = (helper.socket, {"op": "place", "vrf": missing})
    cases = [
        # (agent, (socket, request), pidfd, SCM_CREDENTIALS claimed, expected error)
        (root_agent, opening, 1, None, NOT_SENDERS),
        (root_agent, opening, 2, None, NOT_SENDERS),
        (root_agent, opening, 1, [1, 0, 0], "pid 1 is never placed"),
        (root_agent, opening, 2, [2, 0, 0], "pid 2 is a kernel thread"),
        (root_agent, opening, "self", [1, 0, 0], "pid 1 is never placed"),
        (root_agent, placing, 1, None, NOT_SENDERS),
        (root_agent, placing, 2, None, NOT_SENDERS),
        (root_agent, placing, 1, [1, 0, 0], "pid 1 is never placed"),
        (root_agent, placing, 2, [2, 0, 0], "pid 2 is a kernel thread"),
        (user_agent, placing, 1, None, NOT_SENDERS),
        (user_agent, placing, 2, None, NOT_SENDERS),
    ]
    problems = []
    for agent, (path, request), pidfd, creds, expect in cases:
        label = f"uid {agent.user.pw_uid if agent.user else 0} {request['op']} pidfd={pidfd} creds={creds}"
        mark = syslog.mark()
        result = agent("exchange", socket=path, msg=request, pidfd=pidfd, creds=creds)
        problem = refused(result, expect)
        if problem:
            problems.append(f"{label}: {problem}")
            continue
        try:
            logged(syslog, mark, f"refused {request['op']} from pid ?", "cannot tell which process asks",
                   expect, timeout=3)
        except AssertionError as e:
            problems.append(f"{label}: {e}")
    # A user cannot even claim those pids: the kernel refuses the send (the
    # helper may have answered the connection itself, e.g. "helper busy").
    for pid in (1, 2):
        result = user_agent("exchange", socket=helper.socket, msg=placing[1], pidfd=pid,
                            creds=[pid, user.pw_uid, user.pw_gid])
        if result.get("send_error") != "EPERM":
            problems.append(f"user claiming pid {pid}: {result}")
    assert not problems, "\n".join(problems) + f"\n--- helper output:\n{helper.output()}"
    assert {pid: proc_cgroup(pid) for pid in (1, 2)} == before
    assert subdirs(sandbox_cgroup) == ["root", "user"]
    assert_serving(helper)

    # Control: with its own pidfd the same requests get as far as the device.
    reply = root_agent("exchange", socket=opening[0], msg=opening[1])["reply"]
    assert reply.get("verdict") == "unplaced" and f"no network device '{missing}'" in reply["error"], reply
    result = user_agent("exchange", socket=placing[0], msg=placing[1])
    assert refused(result, f"no network device '{missing}'") is None, result


def test_user_namespace_root_reaches_only_its_own_processes(helper_factory, vrf_conf, syslog, target,
                                                            sandbox_cgroup, agents, throwaway_user):
    """A user in a user + pid namespace of its own may claim any pid of that
    namespace in SCM_CREDENTIALS (CAP_SYS_ADMIN over it): the only processes it
    can name are its own. Another user's process, whose pidfd it holds, stays
    out of reach; a pid outside its namespace cannot be claimed at all."""
    if (why := no_user_namespaces_here()):
        pytest.skip(why)
    ns, dev, _ = target
    user, other = throwaway_user(), throwaway_user()
    conf = vrf_conf(f"{user.pw_name}  {dev}  plain exec={dev}\n"
                    f"{other.pw_name}  {dev}  plain exec={dev}\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    victim = agents(other, cgroup_dir=subcg(sandbox_cgroup, "victim"))
    victim_fd = os.pidfd_open(victim.pid)
    try:
        mark = syslog.mark()
        proc = spawn(["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount-proc",
                      PY, "-c", USERNS_CLAIM, helper.socket, dev, str(victim_fd), str(victim.pid)],
                     user=user, cgroup_dir=subcg(sandbox_cgroup, "userns"), pass_fds=[victim_fd],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    finally:
        os.close(victim_fd)
    assert proc.returncode == 0, err
    got = json.loads(out)
    assert got["me"] == 1 and got["uid"] == 0 and got["victim visible"] is False, got
    replies = got["replies"]
    problems = [f"{case}: {p}" for case, p in (
        ("victim pidfd", refused({"reply": replies["victim pidfd"]}, NOT_SENDERS)),
        ("victim pidfd, child claimed", refused({"reply": replies["victim pidfd, child claimed"]}, NOT_SENDERS)),
    ) if p]
    if replies["unknown pid claimed"] != {"send_error": "ESRCH"}:
        problems.append(f"unknown pid claimed: {replies['unknown pid claimed']}")
    # Its own child, claimed with the child's pidfd: a process of the same user.
    # (The helper places it -- not the sender, but nothing the user could not
    # ask for anyway; a helper that refused would be fine too.)
    own = replies["child pidfd, child claimed"]
    where = f"{hierarchy(sandbox_cgroup)}/userns/{ns}-ns/vrf/{dev}"
    if own.get("ok") is True and (own.get("cgroup") != where or got["child cgroup"] != where):
        problems.append(f"child claimed: {own}, child now in {got['child cgroup']}")
    assert not problems, "\n".join(problems) + f"\n{got}\n--- helper output:\n{helper.output()}"
    logged(syslog, mark, f"refused place from pid ? uid {user.pw_uid}", NOT_SENDERS)
    state = victim("state")
    assert state["cgroup"] == hierarchy(f"{sandbox_cgroup}/victim") and state["bound"] == "", state
    assert subdirs(f"{sandbox_cgroup}/victim") == []
    assert_serving(helper)


# -- load: floods, limits, a stopped helper --------------------------------------

def test_flood_does_not_delay_logins(helper_factory, vrf_conf, syslog, target, sandbox_cgroup, agents,
                                     throwaway_user, record_property):
    """32 processes of one user churn connections, hold them open, send garbage
    and `place` requests against a 10 000-line vrf.conf (their exec= rule last);
    meanwhile 20 concurrent logins on root.sock are all placed."""
    ns, dev, index = target
    flooder, login = throwaway_user(), throwaway_user()
    tag = uid_tag()
    lines = [f"pvx{tag}{i:05d}  {dev}  plain" for i in range(7998)]
    lines += [f"@pvg{tag}{i:04d}  {dev}  plain services=sshd" for i in range(1000)]
    lines += [f"pvy{tag}{i:05d}  {dev}  plain exec={dev}" for i in range(1000)]
    lines += [f"{login.pw_name}  {dev}  plain", f"{flooder.pw_name}  {dev}  plain exec={dev}"]
    assert len(lines) == 10000
    conf = vrf_conf("\n".join(lines) + "\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    logins_cg = subcg(sandbox_cgroup, "logins")
    logins = [agents(netns=ns, cgroup_dir=logins_cg) for _ in range(20)]

    mark = syslog.mark()
    flood_cg = subcg(sandbox_cgroup, "flood")
    flood = [spawn([PY, "-c", FLOOD, helper.socket, dev], user=flooder, cgroup_dir=flood_cg,
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
             for _ in range(32)]
    try:
        for proc in flood:
            assert proc.stdout.readline().strip() == "flooding"
        logged(syslog, mark, f"refusing a connection of uid {flooder.pw_uid}")     # it does hit the limits
        request = {"op": "open", "user": login.pw_name, "service": "sshd"}
        for agent in logins:
            agent.send("client", socket=root_sock(helper), msg=request, timeout=protocol.LOGIN_TIMEOUT)
        results = [agent.receive() for agent in logins]
        assert all(proc.poll() is None for proc in flood), "the flood ended too early"
    finally:
        counts = {}
        for proc in flood:
            try:
                out, _ = proc.communicate(timeout=30)      # closes stdin: the flood stops
                for key, n in json.loads(out).items():
                    counts[key] = counts.get(key, 0) + n
            except (subprocess.TimeoutExpired, ValueError, OSError):
                proc.kill()
                proc.wait()
    latencies = sorted(round(r["took"], 3) for r in results)
    record_property("open_latencies", latencies)
    record_property("flood_outcomes", counts)
    print(f"20 opens under flood: latencies {latencies}; flood outcomes {counts}")

    where = f"{hierarchy(logins_cg)}/{ns}-ns/vrf/{dev}"
    problems = [p for p in (placed_in(r["reply"], dev, where) for r in results) if p]
    assert not problems, "\n".join(problems) + f"\n--- helper output:\n{helper.output()}"
    assert all(r["reply"]["rule"] == f"{conf}:9999" for r in results), results
    assert sorted(cgroup.members(cgroup.fs_path(where))) == sorted(a.pid for a in logins)
    for agent in logins[:3]:
        state = agent("state")
        assert state["bound"] == dev and state["ifindex"] == index, state
    assert counts.get(f"place: {BUSY}", 0) + counts.get(f"garbage: {BUSY}", 0) > 0, counts
    assert_serving(helper)


def test_held_connections_are_limited_per_uid(helper_factory, conf, syslog, sandbox_cgroup, agents,
                                              throwaway_user):
    """A user holding silent connections gets at most MAX_PER_UID of them; the
    rest are told 'helper busy' at once; others are still served."""
    helper = helper_factory(conf, syslog=syslog)
    holder, other = throwaway_user(), throwaway_user()
    agent = agents(holder, cgroup_dir=sandbox_cgroup)
    mark = syslog.mark()
    tries = server.MAX_PER_UID + 24
    opened = agent("hold", socket=helper.socket, n=tries)
    assert len(opened["held"]) == tries, opened
    # Another user, and root, are not held up by it.
    assert agents(other, cgroup_dir=sandbox_cgroup)("client", socket=helper.socket,
                                                    msg={"op": "ping"})["reply"]["ok"] is True
    assert_serving(helper)
    counts = agent("answers")["counts"]
    assert counts == {LATE: server.MAX_PER_UID, BUSY: 24, "unanswered": 0}, counts
    logged(syslog, mark, f"more than {server.MAX_PER_UID} connections of uid {holder.pw_uid}",
           f"refusing a connection of uid {holder.pw_uid}")
    assert_serving(helper)


def test_requests_are_rate_limited_per_uid(helper_factory, conf, syslog, sandbox_cgroup, agents,
                                           throwaway_user):
    helper = helper_factory(conf, syslog=syslog)
    spammer, other = throwaway_user(), throwaway_user()
    mark = syslog.mark()
    result = agents(spammer, cgroup_dir=sandbox_cgroup)("until_busy", socket=helper.socket, limit=5000)
    outcomes = result["outcomes"]
    assert outcomes.get(BUSY) == 1 and outcomes.get("ok", 0) >= server.BURST_PER_UID, result
    assert set(outcomes) == {"ok", BUSY}, result
    logged(syslog, mark, f"uid {spammer.pw_uid} over {server.RATE_PER_UID:g} requests a second",
           f"refusing a connection of uid {spammer.pw_uid}")
    # Another user has a budget of its own.
    assert agents(other, cgroup_dir=sandbox_cgroup)("client", socket=helper.socket,
                                                    msg={"op": "ping"})["reply"]["ok"] is True
    assert_serving(helper)


def test_cgroups_made_for_one_user_are_capped(helper_factory, vrf_conf, syslog, target, sandbox_cgroup,
                                              agents, throwaway_user):
    """A user in many base cgroups (delegated to it) asks `place` in each: the
    helper makes at most MAX_CGROUPS_PER_UID cgroups for it."""
    ns, dev, _ = target
    user = throwaway_user()
    conf = vrf_conf(f"{user.pw_name}  {dev}  plain exec={dev}\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    cap = placement.MAX_CGROUPS_PER_UID
    bases = [subcg(sandbox_cgroup, f"b{i}") for i in range(cap + 1)]
    for path in (sandbox_cgroup, *bases):          # the user may move itself between them
        os.chown(os.path.join(path, "cgroup.procs"), user.pw_uid, user.pw_gid)
    agent = agents(user, netns=ns, cgroup_dir=sandbox_cgroup)
    made = []
    for i, base in enumerate(bases):
        agent("move", path=base)
        mark = syslog.mark()
        reply = agent("exchange", socket=helper.socket, msg={"op": "place", "vrf": dev})["reply"]
        where = f"{hierarchy(base)}/{ns}-ns/vrf/{dev}"
        if i < cap:
            assert reply == {"v": 2, "ok": True, "cgroup": where}, (i, reply, helper.output())
            made.append(where)
        else:
            expect = f"uid {user.pw_uid} already has {cap} cgroups made by the helper (at most {cap})"
            assert refused({"reply": reply}, expect) is None, reply
            logged(syslog, mark, f"refused place from pid {agent.pid} uid {user.pw_uid}", expect)
            assert not os.path.exists(cgroup.fs_path(where))
            assert agent("state")["cgroup"] == hierarchy(base)
    assert all(os.path.isdir(cgroup.fs_path(w)) for w in made)
    assert_serving(helper)


def test_stopped_helper_answers_a_login_after_sigcont(helper_factory, vrf_conf, target, sandbox_cgroup,
                                                      agents, throwaway_user):
    ns, dev, _ = target
    login = throwaway_user()
    conf = vrf_conf(f"{login.pw_name}  {dev}  plain\n")
    helper = helper_factory(conf, netns=ns)
    agent = agents(netns=ns, cgroup_dir=sandbox_cgroup)
    os.kill(helper.proc.pid, signal.SIGSTOP)
    try:
        agent.send("client", socket=root_sock(helper), msg={"op": "open", "user": login.pw_name},
                   timeout=protocol.LOGIN_TIMEOUT)
        time.sleep(3)                   # the scenario: stopped for 3 s
        with pytest.raises(AssertionError, match="did not answer"):
            agent.receive(timeout=0)    # nobody can have answered
    finally:
        os.kill(helper.proc.pid, signal.SIGCONT)
    result = agent.receive()
    where = f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}"
    assert placed_in(result["reply"], dev, where) is None, (result, helper.output())
    assert agent("state")["cgroup"] == where
    assert_serving(helper)


# -- policy --------------------------------------------------------------------

def test_policy_is_reread_and_a_broken_file_keeps_the_last_good_one(
        helper_factory, vrf_conf, syslog, netns, sandbox_cgroup, agents, throwaway_user):
    ns = netns()
    first, second = f"pva{uid_tag()}", f"pvb{uid_tag()}"
    veth(ns, first)
    veth(ns, second)
    login = throwaway_user()
    name = login.pw_name
    conf = vrf_conf(f"{name}  {first}  plain\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    agent = agents(netns=ns, cgroup_dir=sandbox_cgroup)
    base = f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf"

    def open_():
        return agent("exchange", socket=root_sock(helper), msg={"op": "open", "user": name})["reply"]

    reply = open_()
    assert placed_in(reply, first, f"{base}/{first}") is None and reply["rule"] == f"{conf}:1", reply

    # Changed in place: the next open uses the new rule.
    mark = syslog.mark()
    vrf_conf(f"# moved\n{name}  {second}  plain\n", path=conf)
    reply = open_()
    assert placed_in(reply, second, f"{base}/{second}") is None and reply["rule"] == f"{conf}:2", reply
    logged(syslog, mark, f"{conf}: re-read, 1 rules")

    # Replaced (rename, like an editor) by a broken file: the last good policy stays.
    mark = syslog.mark()
    broken = vrf_conf(f"# broken\n{name}  {first}  plain\n{name}  {first}  plain bogus=1\n")
    os.replace(broken, conf)
    for _ in range(2):
        reply = open_()
        assert placed_in(reply, second, f"{base}/{second}") is None and reply["rule"] == f"{conf}:2", reply
    logged(syslog, mark, f"{conf}:3:", "keeping the policy read before (1 rules)")
    assert_serving(helper)
    assert len([line for line in syslog.since(mark) if f"{conf}:3:" in line]) == 1, syslog.since(mark)

    # Fixed again: read again.
    vrf_conf(f"{name}  {first}  plain\n", path=conf)
    reply = open_()
    assert placed_in(reply, first, f"{base}/{first}") is None and reply["rule"] == f"{conf}:1", reply


def test_helper_started_with_a_broken_file_leaves_logins_unplaced(helper_factory, vrf_conf, syslog,
                                                                  sandbox_cgroup, agents, throwaway_user):
    login = throwaway_user()
    conf = vrf_conf(f"# broken from the start\n{login.pw_name}  lo  plain nonsense\n")
    mark = syslog.mark()
    helper = helper_factory(conf, syslog=syslog)
    logged(syslog, mark, f"{conf}:2:", "no valid policy")
    agent = agents(cgroup_dir=sandbox_cgroup)
    mark = syslog.mark()
    reply = agent("exchange", socket=root_sock(helper), msg={"op": "open", "user": login.pw_name})["reply"]
    assert reply["ok"] is True and reply["verdict"] == "unplaced" and f"{conf}:2:" in reply["error"], reply
    logged(syslog, mark, f"user {login.pw_name}", "left unplaced", f"{conf}:2:")
    assert agent("state")["cgroup"] == hierarchy(sandbox_cgroup)
    assert subdirs(sandbox_cgroup) == []
    assert_serving(helper)


class NsswitchHelper(Helper):
    """The helper in a mount namespace of its own where /etc/nsswitch.conf is another file."""

    def __init__(self, *args, nsswitch, **kw):
        super().__init__(*args, **kw)
        self.nsswitch = nsswitch

    def argv(self):
        script = 'mount --bind "$0" /etc/nsswitch.conf && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, self.nsswitch,
                *super().argv()]


@pytest.fixture
def failing_group_source():
    """(nsswitch.conf path, module name): `group: files pvtfail<tag>`, where
    pvtfail<tag> is an NSS module built here whose every group look-up fails
    with EIO (UNAVAIL), like LDAP or SSSD being down. Removed afterwards."""
    name = f"pvtfail{uid_tag()}"
    with nss_module(NSS_FAIL_C.replace("@NAME@", name), name, "group") as nsswitch:
        yield nsswitch, name


def test_nss_failure_refuses_strict_and_unplaces_non_strict_rules(vrf_conf, syslog, target, sandbox_cgroup, agents,
                                                 throwaway_user, installed, failing_group_source):
    ns, dev, _ = target
    nsswitch, _ = failing_group_source
    login, helper_user = throwaway_user(), throwaway_user()
    group = f"nosuchgroup{uid_tag()}"      # not in /etc/group: `files` passes it on to the failing source
    conf = vrf_conf(f"@{group}  {dev}  plain strict\n"
                    f"{login.pw_name}  {dev}  plain\n")
    workdir = tempfile.mkdtemp(prefix="pam-vrf-helper-")
    os.chown(workdir, helper_user.pw_uid, helper_user.pw_gid)
    os.chmod(workdir, 0o755)
    helper = NsswitchHelper(helper_user, workdir, conf, ns, syslog, nsswitch=nsswitch)
    try:
        helper.start()
        agent = agents(netns=ns, cgroup_dir=sandbox_cgroup)

        def open_():
            return agent("exchange", socket=root_sock(helper), msg={"op": "open", "user": login.pw_name,
                                                                     "service": "sshd"})["reply"]

        mark = syslog.mark()
        reply = open_()
        assert reply["ok"] is True and reply["verdict"] == "refused", (reply, helper.output())
        assert f"cannot decide rule {conf}:1" in reply["error"] and "cannot look up group" in reply["error"], reply
        logged(syslog, mark, f"refusing session of user {login.pw_name}", f"cannot look up group '{group}'",
               "Input/output error")
        assert agent("state")["cgroup"] == hierarchy(sandbox_cgroup)

        vrf_conf(f"@{group}  {dev}  plain\n"
                 f"{login.pw_name}  {dev}  plain\n"
                 f"# not strict\n", path=conf)
        mark = syslog.mark()
        reply = open_()
        assert reply["ok"] is True and reply["verdict"] == "unplaced", (reply, helper.output())
        assert "cannot look up group" in reply["error"], reply
        logged(syslog, mark, f"user {login.pw_name}", "left unplaced", f"cannot look up group '{group}'")
        assert agent("state")["cgroup"] == hierarchy(sandbox_cgroup)
        assert subdirs(sandbox_cgroup) == []

        # Control: without a group rule the same helper places the login.
        vrf_conf(f"{login.pw_name}  {dev}  plain\n", path=conf)
        reply = open_()
        assert placed_in(reply, dev, f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}") is None, reply
        assert_serving(helper)
    finally:
        helper.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_control_characters_in_names_are_escaped_in_syslog(helper_factory, vrf_conf, syslog, target,
                                                           sandbox_cgroup, agents):
    ns, dev, _ = target
    conf = vrf_conf(f"*  {dev}  plain\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    agent = agents(netns=ns, cgroup_dir=sandbox_cgroup)
    mark = syslog.mark()
    user, service = "evil\nFake: line", "ss\rhd\x1b[2J"
    reply = agent("exchange", socket=root_sock(helper),
                  msg={"op": "open", "user": user, "service": service, "tty": "tty\n1"})["reply"]
    assert placed_in(reply, dev, f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}") is None, reply
    line = logged(syslog, mark, "user evil\\x0aFake: line (service ss\\x0dhd\\x1b[2J", "placed in VRF")
    result = agent("exchange", socket=helper.socket, msg={"op": "place", "vrf": "x\nFake: vrf"})
    assert refused(result, "bad VRF name") is None, result
    logged(syslog, mark, "refused place", "Fake: vrf")
    result = agent("exchange", socket=helper.socket, msg={"op": "ev\nil"})
    assert refused(result, "unknown op") is None, result
    logged(syslog, mark, "refused ev")
    lines = syslog.since(mark)
    assert lines and not [l for l in lines if any(c in l for c in "\n\r\x1b")], lines
    assert "\\x0a" in line
    assert_serving(helper)


def test_su_to_oneself_keeps_a_confined_session(helper_factory, vrf_conf, syslog, target, sandbox_cgroup,
                                                agents, throwaway_user):
    """A process with real uid U (su run by U, effective uid 0) opening a session
    for U keeps its confinement even where U's rule for that service would place
    it in the default VRF; for another account that account's rule applies, and
    a root daemon (real uid 0) gets the account's rule."""
    ns, dev, index = target
    me, other = throwaway_user(), throwaway_user()
    conf = vrf_conf(f"{me.pw_name}  {dev}  plain deny=inet6 services=first\n"
                    f"{me.pw_name}  default  services=su\n"
                    f"{other.pw_name}  default\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    root = root_sock(helper)
    confined = dict(bound=dev, ifindex=index, inet6="EPERM")
    free = dict(bound="", ifindex=0, inet6="ok")

    def open_(agent, user, service):
        return agent("exchange", socket=root, msg={"op": "open", "user": user, "service": service})["reply"]

    def check(agent, where, expect):
        state = agent("state")
        assert state["cgroup"] == where and {k: state[k] for k in expect} == expect, state

    def logged_in(name):
        """A root process placed by U's 'first' rule: in the VRF, inet6 denied."""
        agent = agents(netns=ns, cgroup_dir=subcg(sandbox_cgroup, name))
        base = f"{hierarchy(sandbox_cgroup)}/{name}/{ns}-ns/vrf"
        assert placed_in(open_(agent, me.pw_name, "first"), dev, f"{base}/{dev}") is None
        check(agent, f"{base}/{dev}", confined)
        return agent, base

    # su to oneself: real uid U, effective uid 0.
    su, base = logged_in("su")
    assert su("setresuid", ids=[me.pw_uid, 0, 0])["uids"] == [me.pw_uid, 0, 0]
    mark = syslog.mark()
    reply = open_(su, me.pw_name, "su")
    assert reply == {"v": 2, "ok": True, "verdict": "kept", "vrf": dev, "rule": f"{conf}:2",
                     "cgroup": f"{base}/{dev}"}, (reply, helper.output())
    check(su, f"{base}/{dev}", confined)
    logged(syslog, mark, f"user {me.pw_name} (service su", f"pid {su.pid}", f"uid {me.pw_uid}",
           "keeps its placement", f"{conf}:2 not applied")
    # su to another account: that account's rule.
    reply = open_(su, other.pw_name, "su")
    assert placed_in(reply, "default", f"{base}/") is None and reply["rule"] == f"{conf}:3", reply
    check(su, f"{base}", free)

    # A root daemon (real uid 0) gets the account's rule.
    daemon, base = logged_in("daemon")
    reply = open_(daemon, me.pw_name, "su")
    assert placed_in(reply, "default", f"{base}/") is None and reply["rule"] == f"{conf}:2", reply
    check(daemon, base, free)

    # U's own process that is not confined: nothing to keep, the rule applies.
    loose = agents(netns=ns, cgroup_dir=subcg(sandbox_cgroup, "loose"))
    loose("setresuid", ids=[me.pw_uid, 0, 0])
    base = f"{hierarchy(sandbox_cgroup)}/loose/{ns}-ns/vrf"
    reply = open_(loose, me.pw_name, "su")
    assert placed_in(reply, "default", f"{base}/") is None, reply
    assert_serving(helper)


# -- kernel state: programs, devices, restarts ---------------------------------

def test_one_program_per_rule_and_device_checks(helper_factory, vrf_conf, syslog, target, sandbox_cgroup,
                                                agents, throwaway_user):
    ns, dev, index = target
    same, marked, no_plain, strict, ghostly = (throwaway_user() for _ in range(5))
    ghost = f"pvg{uid_tag()}"
    conf = vrf_conf(f"{same.pw_name}  {dev}  plain\n"
                    f"{marked.pw_name}  {dev}  plain mark=7 deny=inet6\n"
                    f"{no_plain.pw_name}  {dev}\n"
                    f"{strict.pw_name}  {dev}  strict\n"
                    f"{ghostly.pw_name}  {ghost}  plain\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    base = hierarchy(sandbox_cgroup)

    def open_(agent, user):
        return agent("exchange", socket=root_sock(helper), msg={"op": "open", "user": user.pw_name})["reply"]

    # Two sessions of one rule in two cgroups: one program, attached without flags (iproute2's way).
    mark = syslog.mark()
    ids = []
    for name in ("a", "b"):
        agent = agents(netns=ns, cgroup_dir=subcg(sandbox_cgroup, name))
        where = f"{base}/{name}/{ns}-ns/vrf/{dev}"
        for _ in range(2):              # twice: still one program
            assert placed_in(open_(agent, same), dev, where) is None
        attached = cgroup_link.query(cgroup.fs_path(where))
        assert len(attached) == 1 and attached[0].flags == 0, attached
        ids.append(attached[0].prog_id)
    assert ids[0] == ids[1]
    assert programs.read_back(ids[0])[1].ifindex == index
    logged(syslog, mark, f"user {same.pw_name}", f"placed in VRF {dev} (rule {conf}:1)")

    # Another rule: another program.
    agent = agents(netns=ns, cgroup_dir=subcg(sandbox_cgroup, "c"))
    where = f"{base}/c/{ns}-ns/vrf/{dev}"
    assert placed_in(open_(agent, marked), dev, where) is None
    prog_id, bound = attached_ifindex(cgroup.fs_path(where))
    settings = programs.read_back(prog_id)[1]
    assert prog_id != ids[0] and bound == index and settings.mark == 7 and len(settings.deny) == 1
    assert agent("state")["inet6"] == "EPERM"

    # A veth is not a VRF: without `plain` the rule cannot be honoured; a missing device neither.
    agent = agents(netns=ns, cgroup_dir=subcg(sandbox_cgroup, "d"))
    for user, verdict, expect in ((no_plain, "unplaced", f"'{dev}' is a veth device, not a VRF"),
                                  (strict, "refused", f"'{dev}' is a veth device, not a VRF"),
                                  (ghostly, "unplaced", f"no network device '{ghost}'")):
        mark = syslog.mark()
        reply = open_(agent, user)
        assert reply["ok"] is True and reply["verdict"] == verdict and expect in reply["error"], reply
        logged(syslog, mark, f"user {user.pw_name}", expect)
    assert agent("state")["cgroup"] == f"{base}/d"
    assert subdirs(f"{sandbox_cgroup}/d") == []           # no cgroup left behind by a refusal

    # Root's `place` (pam-vrf exec as root): any device, but a veth only with plain.
    agent = agents(netns=ns, cgroup_dir=subcg(sandbox_cgroup, "e"))
    mark = syslog.mark()
    result = agent("exchange", socket=helper.socket, msg={"op": "place", "vrf": dev})
    assert refused(result, f"'{dev}' is a veth device, not a VRF") is None, result
    logged(syslog, mark, f"refused place from pid {agent.pid} uid 0", "not a VRF")
    assert subdirs(f"{sandbox_cgroup}/e") == []
    where = f"{base}/e/{ns}-ns/vrf/{dev}"
    result = agent("exchange", socket=helper.socket, msg={"op": "place", "vrf": dev, "plain": True})
    assert result["reply"] == {"v": 2, "ok": True, "cgroup": where}, result
    prog_id, bound = attached_ifindex(cgroup.fs_path(where))
    settings = programs.read_back(prog_id)[1]
    assert bound == index and settings.deny == () and settings.mark is None
    assert prog_id == ids[0]                # the same settings as the first rule's: the same program
    assert_serving(helper)


def test_login_binds_the_users_systemd_manager(helper_factory, vrf_conf, syslog, target, sandbox_cgroup,
                                               agents, throwaway_user):
    """What logind makes, rebuilt in the sandbox: user-UID.slice/user@UID.service
    beside session-N.scope. A placed login binds the user's own manager (what
    `systemd-run --user` starts) with the session's program; never another
    user's manager; the manager's own PAM session (systemd-user) is not moved."""
    ns, dev, index = target
    user, other = throwaway_user(), throwaway_user()
    conf = vrf_conf(f"{user.pw_name}  {dev}  plain deny=inet6\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)

    def logind(uid, session):
        slice_dir = subcg(sandbox_cgroup, f"user-{uid}.slice")
        manager = subcg(slice_dir, f"user@{uid}.service")
        subcg(manager, "app.slice")
        return subcg(slice_dir, session), manager

    scope, manager = logind(user.pw_uid, "session-7.scope")
    other_scope, other_manager = logind(other.pw_uid, "session-8.scope")
    request = {"op": "open", "user": user.pw_name, "service": "sshd"}

    agent = agents(netns=ns, cgroup_dir=scope)
    mark = syslog.mark()
    reply = agent("exchange", socket=root_sock(helper), msg=request)["reply"]
    where = f"{hierarchy(scope)}/{ns}-ns/vrf/{dev}"
    assert placed_in(reply, dev, where) is None, (reply, helper.output())
    prog_id = attached_ifindex(cgroup.fs_path(where))[0]
    assert [a.prog_id for a in cgroup_link.query(manager)] == [prog_id]
    assert cgroup_link.effective(f"{manager}/app.slice") == [prog_id]
    logged(syslog, mark, f"user {user.pw_name}", "systemd user manager", hierarchy(manager))

    # The user's session from inside another user's slice: that manager stays unbound.
    intruder = agents(netns=ns, cgroup_dir=other_scope)
    reply = intruder("exchange", socket=root_sock(helper), msg=request)["reply"]
    assert placed_in(reply, dev, f"{hierarchy(other_scope)}/{ns}-ns/vrf/{dev}") is None, reply
    assert cgroup_link.query(other_manager) == []
    assert [a.prog_id for a in cgroup_link.query(manager)] == [prog_id]

    # The manager's own PAM session binds its cgroup (tests/test_delegation.py) but is not moved.
    starter = agents(netns=ns, cgroup_dir=manager)
    reply = starter("exchange", socket=root_sock(helper), msg={**request, "service": "systemd-user"})["reply"]
    assert reply["ok"] is True and reply["verdict"] == "placed", reply
    assert starter("state")["cgroup"] == hierarchy(manager)
    assert subdirs(manager) == ["app.slice"]
    assert_serving(helper)


def test_refused_place_leaves_no_cgroup_behind(helper_factory, vrf_conf, syslog, netns, sandbox_cgroup,
                                               agents, throwaway_user):
    """exec= names a VRF whose device does not exist (yet): `place` is refused
    and leaves no VRF cgroup behind (repeated attempts must not litter)."""
    ns = netns()
    ghost = f"pvg{uid_tag()}"
    user = throwaway_user()
    conf = vrf_conf(f"{user.pw_name}  {ghost}  plain exec={ghost}\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    agent = agents(user, netns=ns, cgroup_dir=sandbox_cgroup)
    for _ in range(3):
        mark = syslog.mark()
        result = agent("exchange", socket=helper.socket, msg={"op": "place", "vrf": ghost})
        assert refused(result, f"no network device '{ghost}'") is None, result
        logged(syslog, mark, f"refused place from pid {agent.pid} uid {user.pw_uid}",
               f"no network device '{ghost}'")
    assert agent("state")["cgroup"] == hierarchy(sandbox_cgroup)
    assert subdirs(sandbox_cgroup) == []
    assert_serving(helper)


def test_exec_cannot_weaken_a_populated_cgroups_rule(helper_factory, vrf_conf, syslog, target,
                                                     sandbox_cgroup, agents, throwaway_user):
    """A login rule denies inet6 in VRF X; a user whose own rule grants exec=X
    (bind only) may not swap the program of the login's populated cgroup."""
    ns, dev, index = target
    login, user = throwaway_user(), throwaway_user()
    conf = vrf_conf(f"{login.pw_name}  {dev}  plain deny=inet6\n"
                    f"{user.pw_name}  {dev}  plain exec={dev}\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    base = hierarchy(sandbox_cgroup)
    where = f"{base}/{ns}-ns/vrf/{dev}"
    session = agents(netns=ns, cgroup_dir=sandbox_cgroup)
    reply = session("exchange", socket=root_sock(helper), msg={"op": "open", "user": login.pw_name})["reply"]
    assert placed_in(reply, dev, where) is None, reply
    prog_id = attached_ifindex(cgroup.fs_path(where))[0]
    assert session("state")["inet6"] == "EPERM"

    intruder = agents(user, netns=ns, cgroup_dir=sandbox_cgroup)
    mark = syslog.mark()
    result = intruder("exchange", socket=helper.socket, msg={"op": "place", "vrf": dev})
    assert refused(result, "holds processes placed under another rule") is None, result
    logged(syslog, mark, f"refused place from pid {intruder.pid} uid {user.pw_uid}",
           "holds processes placed under another rule")
    assert intruder("state")["cgroup"] == base
    assert attached_ifindex(cgroup.fs_path(where))[0] == prog_id
    state = session("state")
    assert state["cgroup"] == where and state["bound"] == dev and state["inet6"] == "EPERM"

    # In a cgroup of its own the user's exec= applies (bind only).
    elsewhere = agents(user, netns=ns, cgroup_dir=subcg(sandbox_cgroup, "own"))
    result = elsewhere("exchange", socket=helper.socket, msg={"op": "place", "vrf": dev})
    own = f"{base}/own/{ns}-ns/vrf/{dev}"
    assert result["reply"] == {"v": 2, "ok": True, "cgroup": own}, result
    state = elsewhere("state")
    assert state["bound"] == dev and state["ifindex"] == index and state["inet6"] == "ok"
    assert_serving(helper)


def test_recreated_device_is_reattached(helper_factory, vrf_conf, syslog, target, sandbox_cgroup, agents,
                                        throwaway_user):
    ns, dev, index = target
    login = throwaway_user()
    conf = vrf_conf(f"{login.pw_name}  {dev}  plain\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)
    session = agents(netns=ns, cgroup_dir=sandbox_cgroup)
    where = f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}"
    reply = session("exchange", socket=root_sock(helper), msg={"op": "open", "user": login.pw_name})["reply"]
    assert placed_in(reply, dev, where) is None, reply
    path = cgroup.fs_path(where)
    assert [session("state")[k] for k in ("bound", "ifindex")] == [dev, index]

    mark = syslog.mark()
    sh("ip", "-n", ns, "link", "del", dev)
    state = session("state")                            # the old, now dangling, ifindex
    assert state["ifindex"] == index and state["bound"] == "ENODEV", state
    new = veth(ns, dev)
    assert new != index
    wait_for_ifindex(path, new)
    logged(syslog, mark, f"device {dev} is back as ifindex {new}", "re-attached 1 cgroup")
    assert [session("state")[k] for k in ("bound", "ifindex")] == [dev, new]
    assert len(cgroup_link.query(path)) == 1

    # Link up/down changes re-attach nothing; the next re-creation (whose event
    # comes after theirs) is the only one logged.
    mark = syslog.mark()
    sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", ns, "link", "set", dev, "down")
    newer = recreate(ns, dev)
    wait_for_ifindex(path, newer)
    logged(syslog, mark, f"device {dev} is back as ifindex {newer}", "re-attached 1 cgroup")
    assert len([line for line in syslog.since(mark) if "re-attached" in line]) == 1, syslog.since(mark)
    assert [session("state")[k] for k in ("bound", "ifindex")] == [dev, newer]
    assert_serving(helper)


def test_restarted_helper_still_reattaches(helper_factory, vrf_conf, syslog, target, sandbox_cgroup,
                                           agents, throwaway_user):
    ns, dev, index = target
    user = throwaway_user()
    conf = vrf_conf(f"{user.pw_name}  {dev}  plain exec={dev}\n")
    helper = helper_factory(conf, netns=ns, syslog=syslog)

    # The process asks the helper to place it (pam-vrf exec), then stays.
    probe = agents(user, netns=ns, cgroup_dir=sandbox_cgroup)
    where = f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}"
    result = probe("client", socket=helper.socket, msg={"op": "place", "vrf": dev})
    assert result["reply"] == {"v": 2, "ok": True, "cgroup": where}, (result, helper.output())
    path = cgroup.fs_path(where)
    assert probe.pid in cgroup.members(path)
    assert [probe("state")[k] for k in ("bound", "ifindex")] == [dev, index]
    # The state file is written within Attachments.FLUSH_DELAY of a change.
    state = os.path.join(helper.workdir, "attachments.json")

    def remembered():
        try:
            with open(state) as f:
                return list(json.load(f)) == [path]
        except (OSError, ValueError):
            return False
    wait_for(remembered, f"{state} to name {path}")

    helper.stop()
    assert not helper.alive()
    # The kernel keeps the program without the helper.
    assert [probe("state")[k] for k in ("bound", "ifindex")] == [dev, index]
    assert attached_ifindex(path)[1] == index

    mark = syslog.mark()
    helper.start()
    logged(syslog, mark, "serving", "1 remembered attachments")
    new = recreate(ns, dev)
    wait_for_ifindex(path, new)
    logged(syslog, mark, f"device {dev} is back as ifindex {new}", "re-attached 1 cgroup")
    assert [probe("state")[k] for k in ("bound", "ifindex")] == [dev, new]
    assert_serving(helper)


# Run as an unprivileged user: a TCP socket whose close() blocks (SO_LINGER
# with data the peer never reads), passed to the helper with a request, alone
# and among more descriptors than a message can carry to a small buffer.
LINGERING_FD = r'''
import os, socket, sys, time
path, copies = sys.argv[1], int(sys.argv[2])
LINGER = 600
''' + STUCK_SOCKET + r'''

for extra in ([], [0, 1, 2]):
    stuck = stuck_socket()
    fds = extra + [stuck.fileno()] * (copies if extra else 1)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(path)
    s.sendmsg([b'{"v":2,"op":"ping"}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          b"".join(fd.to_bytes(4, "little") for fd in fds))])
    # Our reference goes now (the message in flight holds one, so this does not
    # block): the helper's becomes the last, and releasing it blocks.
    stuck.close()
    try:
        s.recv(4096)
    except socket.timeout:
        pass            # a stalled helper: the login below will tell
    s.close()
print("passed", flush=True)
time.sleep(300)
'''


def test_descriptors_whose_release_blocks_never_stall_logins(helper_factory, vrf_conf, target, sandbox_cgroup,
                                                              agents, throwaway_user):
    """Closing a passed TCP socket with SO_LINGER and unacknowledged data blocks
    for the linger time (600 s here): the helper releases what non-root clients
    pass in closer threads, so a login sent right after is placed at once."""
    ns, dev, _ = target
    login, attacker = throwaway_user(), throwaway_user()
    helper = helper_factory(vrf_conf(f"{login.pw_name}  {dev}  plain\n"), netns=ns)
    evil = spawn([PY, "-c", LINGERING_FD, helper.socket, "200"], netns=ns, user=attacker, cwd="/",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert evil.stdout.readline().strip() == "passed", evil.stderr.read()
        agent = agents(netns=ns, cgroup_dir=sandbox_cgroup)
        # A stalled main loop would answer only after the 600 s the release blocks.
        agent.send("client", socket=root_sock(helper), msg={"op": "open", "user": login.pw_name},
                   timeout=protocol.LOGIN_TIMEOUT)
        result = agent.receive(timeout=2 * protocol.LOGIN_TIMEOUT)
        where = f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}"
        assert placed_in(result["reply"], dev, where) is None, (result, helper.output())
        assert_serving(helper)
    finally:
        evil.kill()
        evil.wait()
