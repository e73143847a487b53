"""Adversarial review of the login fast path (commits 06e3515, 212cbd3): an
unprivileged local user against the real helper.

    fdinfo of anything  every request carries "a pidfd"; the helper reads
                        /proc/self/fdinfo/FD of what it was sent to find the
                        pid. An epoll descriptor with a million watches (one
                        user may hold ~5 million: fs.epoll.max_user_watches)
                        has a 76 MB fdinfo, which the kernel formats in the
                        helper's main thread (one seq_file record: all of it,
                        its buffer grown by doubling). Older than the change
                        (its line-by-line reader: 1.9-2.3 s a request here);
                        the change's read_proc() also held all of it at once
                        (+230 MB: chunks, joined bytes, text, lines; 2.3-2.7 s).
                        On helper.sock, from any user, 40 in a burst; root's
                        logins waited behind each. Fixed: /proc/self/fd first.
    '\\r' in a cgroup    landed before the change, not since (pinned here):
                        a v1 cgroup named 'x\\r0::' forged the v2 path.
    silent root client  the change serves root's request at accept(): a
                        client that has not sent yet is not waited for (pinned).
"""

import os
import socket
import subprocess
import textwrap
import threading
import time

import pytest

from pam_vrf import protocol
from testlab.run import PY, spawn, uid_tag
from test_helper import agents, hierarchy, placed_in, root_sock, target, veth  # noqa: F401  (fixtures)
from test_helper_freeze import limited_helper  # noqa: F401  (fixture)
from test_freeze_attacks import logins_while

pytestmark = pytest.mark.root


# Run as the attacker: argv SOCKET WATCHES ROUNDS. Makes an epoll descriptor
# with WATCHES watches (1000 eventfds, each registered under many descriptor
# numbers: a watch is keyed by (file, number) and outlives the number), prints
# "ready", then sends ROUNDS pings with it as the pidfd, one after the other,
# printing each one's round trip in seconds.
EPOLL_PIDFD = textwrap.dedent(r'''
    import os, resource, select, socket, sys, time
    path, watches, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ep = select.epoll()
    files = [os.eventfd(0) for _ in range(1000)]
    slot, n = max(files) + 1, 0
    while n < watches:
        for f in files[:watches - n]:
            os.dup2(f, slot)
            ep.register(slot, select.EPOLLIN)
            os.close(slot)
            n += 1
        slot += 1
    print("ready", flush=True)
    for _ in range(rounds):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as c:
            c.settimeout(60)
            c.connect(path)
            start = time.monotonic()
            c.sendmsg([b'{"v":2,"op":"ping"}'],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, ep.fileno().to_bytes(4, "little"))])
            reply = c.recv(65536)
            print(f"{time.monotonic() - start:.3f} {reply.decode(errors='replace')}", flush=True)
''')


def test_a_huge_fdinfo_sent_as_pidfd_does_not_hold_the_helper(limited_helper, vrf_conf, syslog, target,
                                                               sandbox_cgroup, agents, throwaway_user):
    """A user sends, as the pidfd of its pings, an epoll descriptor with a
    million watches. Before: each ping held the helper's loop 2.3-2.7 s here
    (the kernel formatting a 76 MB fdinfo, read_proc keeping all of it; 1.9 s
    with the reader from before 06e3515), and root's logins waited behind it. Now the helper looks at what the
    descriptor is (/proc/self/fd) before it reads any fdinfo: the ping is
    refused at once, root's logins are fast and placed."""
    ns, dev, _ = target
    user, bad = throwaway_user(), throwaway_user()
    helper = limited_helper(vrf_conf(f"{user.pw_name}  {dev}  plain\n"), "20000:20000", netns=ns, syslog=syslog)
    evil = spawn([PY, "-c", EPOLL_PIDFD, helper.socket, "1000000", "12"], netns=ns, user=bad, cwd="/",
                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = evil.stdout.readline().strip()
    if line != "ready":
        evil.kill()
        raise AssertionError(f"the attacker did not start: {line!r} {evil.communicate()[1]}")
    time.sleep(0.5)             # its pings are under way
    logins_while(evil, agents, ns, sandbox_cgroup, helper, user, dev)     # kills evil
    answers = [a.split(" ", 1) for a in evil.stdout.read().splitlines()]
    assert answers, evil.stderr.read()
    for took, reply in answers:
        assert '"ok":true' in reply, reply      # ping: answered whoever sent it
    slowest = max(float(took) for took, _ in answers)
    # protocol.TIMEOUT: what a user's request may take, the product's own clients' patience.
    assert slowest < protocol.TIMEOUT, f"a ping with an epoll 'pidfd' took {slowest:.1f} s of the helper's loop"



@pytest.fixture
def named_v1_hierarchy():
    """A cgroup v1 hierarchy of no controller (name=pvtTAG), mounted here:
    what systemd's name=systemd is on a hybrid host (its user@UID.service
    subtree delegated to the user, who mkdirs there) and what a user
    namespace may mount. Unmounted (and so destroyed) afterwards."""
    mount = f"/run/pvt-v1-{uid_tag()}"
    os.mkdir(mount)
    subprocess.run(["mount", "-t", "cgroup", "-o", f"none,name=pvt{uid_tag()}", "cgroup", mount], check=True)
    yield mount
    for top, _, _ in sorted(os.walk(mount), key=lambda w: -w[0].count("/")):
        if top != mount:
            with open(os.path.join(top, "cgroup.procs")) as f:
                left = f.read().split()
            for pid in left:            # still running: out of the way (its root)
                with open(os.path.join(mount, "cgroup.procs"), "w") as f:
                    f.write(pid)
            os.rmdir(top)
    subprocess.run(["umount", mount], check=True)
    os.rmdir(mount)


def test_a_cr_in_a_cgroup_name_forges_no_cgroup(named_v1_hierarchy, limited_helper, vrf_conf, syslog, target,
                                                sandbox_cgroup, agents, throwaway_user):
    """cgroup names are the choice of whoever may mkdir there; the kernel
    refuses only '\\n' in them, and /proc/PID/cgroup lists v1 hierarchies
    before the '0::' line. A process in the v1 cgroup 'x\\r0::/<victim's v2
    path>' has the line '10:name=...:/x\\r0::/<victim path>'. cgroup_of()
    read a text-mode file, which splits on '\\r' too: it took the forged
    line for the v2 path, so the login was placed below the victim's cgroup
    (and one whose forged path looked placed would have been 'kept', a
    strict rule not applied). Since 06e3515 it splits on '\\n' alone: placed
    below the cgroup it is in. (Played as root here: an unprivileged user
    namespace may not mount a v1 hierarchy in this sandbox.)"""
    ns, dev, _ = target
    user = throwaway_user()
    helper = limited_helper(vrf_conf(f"{user.pw_name}  {dev}  plain\n"), "20000:20000", netns=ns, syslog=syslog)
    victim = os.path.join(sandbox_cgroup, "victim")
    os.mkdir(victim)
    forged = os.path.join(named_v1_hierarchy, "x\r0::", *hierarchy(victim).strip("/").split("/"))
    os.makedirs(forged)
    os.mkdir(os.path.join(sandbox_cgroup, "agent"))
    agent = agents(netns=ns, cgroup_dir=os.path.join(sandbox_cgroup, "agent"))
    with open(os.path.join(forged, "cgroup.procs"), "w") as f:
        f.write(str(agent.pid))
    result = agent("client", socket=root_sock(helper), msg={"op": "open", "user": user.pw_name},
                   timeout=protocol.LOGIN_TIMEOUT)
    where = f"{hierarchy(sandbox_cgroup)}/agent/{ns}-ns/vrf/{dev}"
    assert not placed_in(result["reply"], dev, where), (result, helper.output()[-2000:])
    assert f"{ns}-ns" not in os.listdir(victim)


def _ping(path, pidfd, after=0.0):
    """A ping on root.sock sent `after` seconds after connect(): (seconds from connect, reply)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(10)
        s.connect(path)
        start = time.monotonic()
        time.sleep(after)
        s.sendmsg([protocol.encode({"v": protocol.VERSION, "op": "ping"})],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, pidfd.to_bytes(4, "little"))])
        return time.monotonic() - start, protocol.decode(s.recv(protocol.MAX_MESSAGE + 1))


def test_a_silent_root_connection_is_not_served_at_accept_by_waiting(limited_helper, vrf_conf, syslog, netns):
    """Root's request is served at accept() when it is already there (the
    change): a root client that connects and sends later (su stopped by its
    invoker between connect and send, or just slow) must not hold the loop
    there, and its request, sent 0.8 s later (the client deadline is 1 s), is
    still served. A second root
    connection made meanwhile is answered at once."""
    helper = limited_helper(vrf_conf("# nothing\n"), "20000:20000", netns=netns(), syslog=syslog)
    path = root_sock(helper)
    pidfd = os.pidfd_open(os.getpid())
    try:
        silent = []
        late = threading.Thread(target=lambda: silent.append(_ping(path, pidfd, 0.8)))
        late.start()
        time.sleep(0.1)                         # the silent one is accepted first
        took, reply = _ping(path, pidfd)
        late.join(15)
    finally:
        os.close(pidfd)
    assert reply.get("ok") is True and took < 0.5, (took, reply)     # not behind the silent one's 0.7 s
    assert silent and silent[0][1].get("ok") is True, (silent, helper.output()[-2000:])
    assert helper.alive(), helper.output()[-2000:]
