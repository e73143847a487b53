"""Adversarial review of the helper's freeze defences (issue 14, item 2):
one unprivileged user does anything to helper.sock; root's logins on
root.sock must stay placed and fast and the helper must live.

    socket activation  a connection queued on helper.sock before the helper
                       set SO_PASSCRED on it (the shipped unit is socket
                       activated: systemd's listener has no PassCredentials=,
                       and this kernel copies the flag at connect(), not at
                       accept()) carries no SCM_CREDENTIALS: an empty message
                       then peeks as (b"", []), which _close_if_inert takes
                       for the end of the queue, and the main thread's close()
                       releases the next message's lingering TCP socket
    same, one fd       without SO_PASSCRED a peek with room for one
                       descriptor installs it: every peeked message leaks one
                       descriptor into the helper's table, outside every budget

"Normal" here is NORMAL (3 s, from test_helper_freeze): a root login takes
milliseconds; the frozen helper never answers (the client gives up after
CLIENT_WAIT).
"""

import os
import socket
import subprocess
import textwrap
import time

import pytest

from testlab.fdflood import STUCK_SOCKET
from testlab.run import PY, spawn
from test_helper import agents, hierarchy, placed_in, root_sock, target, veth  # noqa: F401  (fixtures)
from test_helper_freeze import NORMAL, LimitedHelper, helper_pid, limited_helper, open_fds  # noqa: F401

pytestmark = pytest.mark.root


CLIENT_WAIT = 10.0      # a root client's patience here (the module's is protocol.LOGIN_TIMEOUT)


class ActivatedHelper(LimitedHelper):
    """The helper as the shipped units start it: systemd made both listeners
    (helper.sock 0666, root.sock 0600, no PassCredentials=) and connections
    may be queued on them before the helper runs. The test plays systemd:
    listen() here, pass them as fds 3 and 4 with LISTEN_FDS/LISTEN_PID.
    Without listen(), the helper binds its own sockets, as pam-vrf-helper(8)
    shows it started by hand."""

    listeners = ()

    def listen(self):
        self.listeners = []
        for path, mode in ((self.socket, 0o666), (self.root_socket, 0o600)):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.bind(path)
            os.chmod(path, mode)
            s.listen(128)
            self.listeners.append(s)

    def start(self):
        """Start on the listeners made by listen(); returns once it says it serves
        (not by a ping: a ping would queue behind the attacker's connection)."""
        fds = [s.fileno() for s in self.listeners]

        def as_systemd():
            for want, fd in zip((3, 4), fds):
                os.dup2(fd, want)       # inheritable

        argv = ["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=2 exec "$@"', "sh", *self.argv()] if fds else self.argv()
        self.log = open(os.path.join(self.workdir, "helper.log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     pass_fds=(3, 4) if fds else (), preexec_fn=as_systemd)
        deadline = time.monotonic() + 15
        while " serving " not in self.output():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.05)
        for s in self.listeners:
            s.close()           # systemd keeps its copy; ours are no longer needed
        return self


# Run as the attacker: argv SOCKET KIND. Connects to SOCKET (the helper is not
# running yet: only systemd's listener), queues messages, prints "queued",
# keeps its connection. KIND "empty": two empty messages, then a ping carrying
# 253 descriptors, the first a loopback TCP socket with unsent data and
# SO_LINGER {1, 1000000}; "race": the same on 16 connections made the moment
# SOCKET appears (prints "waiting" first); "onefd": CONNECTIONS connections of 10 messages each
# carrying one descriptor (/dev/null).
EARLY = textwrap.dedent(r'''
    import os, socket, sys
    path, kind = sys.argv[1], sys.argv[2]
    LINGER = 1000000
''') + STUCK_SOCKET + textwrap.dedent(r'''
    def rights(fds):
        return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"".join(fd.to_bytes(4, "little") for fd in fds))]


    held = []
    if kind in ("empty", "race"):
        # Made first: the three messages then go out back to back, before the
        # helper reads the first and looks at what follows it.
        stuck = [stuck_socket() for _ in range(16 if kind == "race" else 1)]
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if kind == "race":          # the helper is starting: connect as soon as its socket exists
            print("waiting", flush=True)
            while True:
                try:
                    c.connect(path)
                    break
                except (FileNotFoundError, ConnectionRefusedError, PermissionError):
                    pass
        else:
            c.connect(path)
        held.append(c)
        for _ in range(15 if kind == "race" else 0):   # more in the window: one is enough
            c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            c.connect(path)
            held.append(c)
        for c, s in zip(held, stuck):
            try:
                c.sendmsg([b""])
                c.sendmsg([b""])
                c.sendmsg([b'{"v":2,"op":"ping"}'], rights([s.fileno()] * 253))
            except OSError:
                continue            # the helper was quicker on this one: s stays open (our own
                                    # close would be its last, and wait out the linger)
            s.close()               # a queued message holds the last reference
    else:
        null = os.open("/dev/null", os.O_RDONLY)
        for _ in range(int(sys.argv[3])):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            c.connect(path)
            for _ in range(10):
                c.sendmsg([b"x"], rights([null]))
            held.append(c)
    print("queued", flush=True)
    sys.stdin.read()
''')


def early_attacker(helper, ns, user, kind, *args, then=None):
    """The EARLY script as `user`; `then()` runs once it waits (kind "race")."""
    evil = spawn([PY, "-c", EARLY, helper.socket, kind, *map(str, args)], netns=ns, user=user, cwd="/",
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if then:
            assert evil.stdout.readline().strip() == "waiting", evil.stderr.read()
            then()
        line = evil.stdout.readline().strip()
        assert line == "queued", (line, evil.stderr.read() if evil.poll() is not None else "")
    except BaseException:
        evil.kill()
        evil.wait()
        raise
    return evil


def activated(limited_helper, config, ns, syslog, systemd=True):
    """An ActivatedHelper (not started) in `ns`, listeners made (systemd) or not."""
    helper = limited_helper(config, "20000:20000", netns=ns, syslog=syslog)     # started: stop, reuse its user
    helper.stop()
    for path in (helper.socket, helper.root_socket):
        os.unlink(path)
    helper.__class__ = ActivatedHelper
    if systemd:
        helper.listen()
    return helper


def main_thread_stack(helper):
    """Where the helper's main thread is in the kernel (root may read it)."""
    pid = helper_pid(helper)
    try:
        with open(f"/proc/{pid}/task/{pid}/stack") as f:
            return f.read()
    except OSError as e:
        return str(e)


def root_logins(agents, ns, sandbox_cgroup, helper, user, dev, count=3):
    """`count` root logins on root.sock: the problems (slow or not placed)."""
    where = f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}"
    problems = []
    for _ in range(count):
        agent = agents(netns=ns, cgroup_dir=sandbox_cgroup)
        result = agent("client", socket=root_sock(helper), msg={"op": "open", "user": user.pw_name},
                       timeout=CLIENT_WAIT)
        agent.close()
        reply, took = result["reply"], result["took"]
        if placed_in(reply, dev, where) or took > NORMAL:
            problems.append(f"{took:.1f} s: {reply}")
    if problems:
        problems.append(f"helper's main thread in the kernel:\n{main_thread_stack(helper)}")
    return problems


def logins_while(evil, agents, ns, sandbox_cgroup, helper, user, dev):
    """Root's logins with the attacker `evil` still there: fast, placed, the helper alive."""
    try:
        time.sleep(0.5)         # the helper reaches the attacker's connections first
        problems = root_logins(agents, ns, sandbox_cgroup, helper, user, dev)
        assert not problems, (problems, helper.output()[-2000:])
        assert helper.alive(), helper.output()[-2000:]
    finally:
        evil.kill()
        evil.wait()


def test_early_connection_empty_message_cannot_freeze_root(limited_helper, vrf_conf, syslog, target,
                                                           sandbox_cgroup, agents, throwaway_user):
    """Queued before the helper runs (socket activation): [empty, empty, 253
    descriptors with a lingering TCP socket]. Before: the first empty message
    is answered, _close_if_inert peeks the second as (b"", []) (no
    SCM_CREDENTIALS: the connection has no SO_PASSCRED), takes it for the end,
    and the main thread's close() waits out the linger: every root login
    after it timed out (measured: 10.0 s, client gave up), for as long as the
    attacker likes (SO_LINGER up to ~24 days)."""
    ns, dev, _ = target
    user, bad = throwaway_user(), throwaway_user()
    helper = activated(limited_helper, vrf_conf(f"{user.pw_name}  {dev}  plain strict\n"), ns, syslog)
    evil = early_attacker(helper, ns, bad, "empty")
    try:
        helper.start()
    except BaseException:
        evil.kill()
        evil.wait()
        raise
    logins_while(evil, agents, ns, sandbox_cgroup, helper, user, dev)


def test_early_connections_cannot_leak_descriptors(limited_helper, vrf_conf, syslog, target, sandbox_cgroup,
                                                   agents, throwaway_user):
    """Queued before the helper runs: 100 connections x 10 messages, each with
    one descriptor. Before: each peek in _close_if_inert installed the
    descriptor (a peek without SO_PASSCRED has room for one) and nothing ever
    closed it: ~1000 descriptors leaked per round, outside every budget (the
    attacker can repeat at each restart; systemd's Backlog= is 4096
    connections). After the attacker is gone the helper must hold about what
    it held before."""
    ns, dev, _ = target
    user, bad = throwaway_user(), throwaway_user()
    helper = activated(limited_helper, vrf_conf(f"{user.pw_name}  {dev}  plain\n"), ns, syslog)
    evil = early_attacker(helper, ns, bad, "onefd", 100)
    try:
        helper.start()
        time.sleep(3)
    finally:
        evil.kill()
        evil.wait()
    time.sleep(2)               # closers finish; the attacker's connections are gone
    held = open_fds(helper_pid(helper))
    assert held < 100, f"the helper holds {held} descriptors after the attacker left"
    assert not root_logins(agents, ns, sandbox_cgroup, helper, user, dev, count=1)


def test_login_that_starts_the_helper_is_placed(limited_helper, vrf_conf, syslog, target, sandbox_cgroup, agents,
                                                throwaway_user):
    """Not an attack, the same cause: under socket activation the first login
    after boot (or during a restart) connects before the helper runs, so its
    connection has no SO_PASSCRED and its request no SCM_CREDENTIALS. It must
    be placed like any other (before: refused as 'send exactly one pidfd')."""
    ns, dev, _ = target
    user = throwaway_user()
    helper = activated(limited_helper, vrf_conf(f"{user.pw_name}  {dev}  plain strict\n"), ns, syslog)
    agent = agents(netns=ns, cgroup_dir=sandbox_cgroup)
    agent.send("client", socket=root_sock(helper), msg={"op": "open", "user": user.pw_name}, timeout=CLIENT_WAIT)
    time.sleep(0.3)             # queued on systemd's listener
    helper.start()
    result = agent.receive(timeout=CLIENT_WAIT + 5)
    where = f"{hierarchy(sandbox_cgroup)}/{ns}-ns/vrf/{dev}"
    assert placed_in(result["reply"], dev, where) is None, (result, helper.output()[-2000:])


def test_connection_during_startup_cannot_freeze_root(limited_helper, vrf_conf, syslog, target, sandbox_cgroup,
                                                      agents, throwaway_user):
    """Without socket activation too: the helper listens (listening_sockets)
    well before serve_forever() sets SO_PASSCRED on the listener (links,
    the state file, the policy in between), and a user who connects the moment
    helper.sock appears (at any restart) gets the connection of the first
    test: before, every root login after it timed out (8 of 9 restarts here;
    three restarts are tried)."""
    ns, dev, _ = target
    user, bad = throwaway_user(), throwaway_user()
    helper = activated(limited_helper, vrf_conf(f"{user.pw_name}  {dev}  plain strict\n"), ns, syslog,
                       systemd=False)
    for _ in range(3):          # a race: the attacker wins most restarts, not all
        evil = early_attacker(helper, ns, bad, "race", then=helper.start)
        logins_while(evil, agents, ns, sandbox_cgroup, helper, user, dev)
        helper.stop()
        for path in (helper.socket, helper.root_socket):
            os.unlink(path)


def test_same_messages_on_a_later_connection_hold(limited_helper, vrf_conf, syslog, target, sandbox_cgroup, agents,
                                                  throwaway_user):
    """Holds (kept as the control of the tests above): the same [empty, empty,
    253 descriptors with a lingering TCP socket] on a connection made once the
    helper serves. Its connections inherit SO_PASSCRED, every message carries
    SCM_CREDENTIALS, the empty ones are taken, the last peeks MSG_CTRUNC and
    the connection goes to the uid's closer thread: root's logins stay fast."""
    ns, dev, _ = target
    user, bad = throwaway_user(), throwaway_user()
    helper = limited_helper(vrf_conf(f"{user.pw_name}  {dev}  plain strict\n"), "20000:20000", netns=ns,
                            syslog=syslog)
    evil = early_attacker(helper, ns, bad, "empty")
    logins_while(evil, agents, ns, sandbox_cgroup, helper, user, dev)
