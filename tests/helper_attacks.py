"""Hostile and ordinary clients of pam-vrf-helper for tests/test_helper.py.

An Agent is a small Python process (Debian's python3, run as root or as a
throwaway user, inside a cgroup and netns of the test's choosing) that does
what the test asks, one JSON command a line on stdin, one JSON answer a line
on stdout. The helper always acts on the SENDER of a request, so requests
that could place something are never sent from the pytest process itself:
an agent in a sandbox cgroup sends them.

The scripts are passed with `python3 -c`: the checkout may sit below a
directory other users cannot enter. Agents import pam_vrf from the installed
copy (`make install`), like the product's own clients.
"""

import json
import os
import select
import signal
import subprocess
import textwrap
import time

from testlab import progs
from testlab.run import PY, spawn
from testlab.fdflood import DESCRIPTOR_FLOOD, STUCK_SOCKET  # noqa: F401  (the tests take them from here)

SO_BINDTOIFINDEX = 62

AGENT = progs.source("agent")


class Agent:
    """A running AGENT: agent("state"), agent("exchange", socket=..., msg=...)."""

    def __init__(self, user=None, netns=None, cgroup_dir=None, pass_fds=(), prefix=()):
        self.user = user
        self.proc = spawn([*prefix, PY, "-c", AGENT], netns, cgroup_dir, user, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", pass_fds=pass_fds)
        self._buffer = b""
        self.pid = self.receive()["ready"]

    def send(self, op, **fields):
        self.proc.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self, timeout=90):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"agent {self.pid} did not answer")
            chunk = os.read(fd, 65536)
            if not chunk:
                self.proc.kill()
                raise AssertionError(f"agent exited: {self.proc.stderr.read().decode(errors='replace')}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer = json.loads(line)
        if "exception" in answer:
            raise AssertionError(f"agent {self.pid}: {answer['exception']}")
        return answer

    def __call__(self, op, **fields):
        self.send(op, **fields)
        return self.receive()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


# Run as the flooding user, 32 at once: connect/close churn, held-open
# connections, garbage and `place` requests, round robin, until stdin
# closes; then prints what it got (outcome -> count).
FLOOD = progs.source("helper_flood")


# Run as a user inside a user + pid namespace of its own (`unshare --user
# --map-root-user --pid --fork --mount-proc`): there it holds CAP_SYS_ADMIN
# over its pid namespace, so the kernel lets it claim any pid OF THAT
# NAMESPACE in SCM_CREDENTIALS. argv: socket, VRF, an inherited pidfd of a
# victim outside, the victim's pid (outside). Prints the outcome of each attempt.
USERNS_CLAIM = progs.source("userns_claim")


NSS_FAIL_C = textwrap.dedent(r'''
    /* An NSS group source that is down: every look-up fails with EIO. */
    #include <errno.h>
    #include <grp.h>
    #include <nss.h>
    #include <stddef.h>

    enum nss_status _nss_@NAME@_getgrnam_r(const char *name, struct group *grp, char *buf,
                                           size_t len, int *errnop)
    {
        (void)name; (void)grp; (void)buf; (void)len;
        *errnop = EIO;
        return NSS_STATUS_UNAVAIL;
    }

    enum nss_status _nss_@NAME@_getgrgid_r(gid_t gid, struct group *grp, char *buf,
                                           size_t len, int *errnop)
    {
        (void)gid; (void)grp; (void)buf; (void)len;
        *errnop = EIO;
        return NSS_STATUS_UNAVAIL;
    }
''')


def kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
