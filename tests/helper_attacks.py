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

from testlab.run import PY, spawn
from testlab.fdflood import DESCRIPTOR_FLOOD, STUCK_SOCKET  # noqa: F401  (the tests take them from here)

SO_BINDTOIFINDEX = 62

AGENT = textwrap.dedent(r'''
    import array, errno, json, os, select, socket, struct, sys, time

    conns, counter = {}, [0]


    def keep(sock):
        counter[0] += 1
        conns[counter[0]] = sock
        return counter[0]


    def pidfds(spec):
        """Descriptors to send: 'self', 'none', 'devnull', a pid, or a list of those."""
        if spec in (None, "none"):
            return []
        if spec == "self":
            return [os.pidfd_open(os.getpid())]
        if spec == "devnull":
            return [os.open("/dev/null", os.O_RDONLY)]
        if isinstance(spec, int):
            return [os.pidfd_open(spec)]
        return [fd for item in spec for fd in pidfds(item)]


    def connect(path, blocking=True):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if blocking:
            s.settimeout(60)
            s.connect(path)
        else:
            s.setblocking(False)
            s.connect(path)
        return s


    def parse(raw):
        try:
            return json.loads(raw)
        except ValueError:
            return None


    def op_exchange(c):
        """One request on a fresh (or a kept) connection, with chosen ancillary data."""
        try:
            s = conns.pop(c["conn"]) if "conn" in c else connect(c["socket"])
        except OSError as e:
            return {"connect_error": errno.errorcode[e.errno]}
        with s:
            if "raw" in c:
                data = c["raw"].encode("latin-1")
            else:
                data = json.dumps({"v": 2, **c["msg"]}).encode()
            fds = pidfds(c.get("pidfd", "self"))
            anc = []
            if fds:
                anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
            if c.get("creds"):
                anc.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", *c["creds"])))
            try:
                s.sendmsg([data], anc)
            except OSError as e:
                # A connection the helper refuses at accept (root.sock for
                # non-root) is answered and closed at once: the answer may
                # already wait when our send meets the closed end.
                # Both are reported: the kernel's refusal of the send, and
                # the helper's answer if one was waiting.
                try:
                    raw = s.recv(1 << 17, socket.MSG_DONTWAIT)
                except OSError:
                    raw = b""
                if not raw:
                    return {"send_error": errno.errorcode[e.errno]}
                return {"send_error": errno.errorcode[e.errno], "raw": raw.decode("utf-8", "replace"),
                        "reply": parse(raw)}
            else:
                try:
                    raw = s.recv(1 << 17)
                except OSError as e:
                    return {"recv_error": errno.errorcode[e.errno]}
            finally:
                for fd in fds:
                    os.close(fd)
        text = raw.decode("utf-8", "replace")
        return {"raw": text, "reply": parse(raw) if raw else None}


    def op_client(c):
        """The product's own client (pidfd and all), timed."""
        from pam_vrf import client
        start = time.monotonic()
        try:
            reply = client.request(c["msg"], c["socket"], c.get("timeout", 10))
        except client.HelperError as e:
            reply = {"client_error": str(e)}
        return {"reply": reply, "took": time.monotonic() - start}


    def op_until_busy(c):
        """Pings on fresh connections, one after another, until 'helper busy'."""
        from pam_vrf import client
        outcomes = {}
        for i in range(c["limit"]):
            try:
                answer = client.request({"op": "ping"}, c["socket"], 10)
                outcome = "ok" if answer.get("ok") else answer.get("error")
            except client.HelperError as e:
                outcome = str(e)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "helper busy":
                break
        return {"outcomes": outcomes, "requests": i + 1}


    def op_hold(c):
        """Open `n` silent connections as fast as possible and keep them."""
        ids, errors = [], {}
        for _ in range(c["n"]):
            try:
                ids.append(keep(connect(c["socket"], blocking=False)))
            except OSError as e:
                name = errno.errorcode[e.errno]
                errors[name] = errors.get(name, 0) + 1
        return {"held": ids, "errors": errors}


    def op_answers(c):
        """Wait until every kept connection is answered or closed; count the answers."""
        left = {conns[i]: i for i in c.get("ids", list(conns))}
        counts, deadline = {}, time.monotonic() + c.get("timeout", 30)
        while left and time.monotonic() < deadline:
            for s in select.select(list(left), [], [], 0.5)[0]:
                try:
                    raw = s.recv(65536)
                    answer = parse(raw) if raw else None
                    key = answer.get("error", "ok") if isinstance(answer, dict) else repr(raw[:80])
                except OSError as e:
                    key = errno.errorcode[e.errno]
                counts[key] = counts.get(key, 0) + 1
                conns.pop(left.pop(s)).close()
        counts["unanswered"] = len(left)
        return {"counts": counts}


    def op_connect(c):
        try:
            return {"conn": keep(connect(c["socket"]))}
        except OSError as e:
            return {"connect_error": errno.errorcode[e.errno]}


    def op_pass(c):
        """Send a kept connection to another process over inherited socket `fd`."""
        via = socket.socket(fileno=os.dup(c["fd"]))
        with via, conns.pop(c["conn"]) as s:
            socket.send_fds(via, [b"conn"], [s.fileno()])
        return {}


    def op_receive(c):
        via = socket.socket(fileno=os.dup(c["fd"]))
        with via:
            _, fds, _, _ = socket.recv_fds(via, 16, 4)
        conn = socket.socket(fileno=fds[0])
        conn.settimeout(60)                 # the sender's O_NONBLOCK came with the descriptor
        return {"conn": keep(conn)}


    def op_setresuid(c):
        os.setresuid(*c["ids"])
        return {"uids": list(os.getresuid())}


    def op_move(c):
        with open(os.path.join(c["path"], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        return {}


    def op_state(c):
        """Who and where this process is, and what a new socket gets."""
        out = {"pid": os.getpid(), "uids": list(os.getresuid())}
        with open("/proc/self/cgroup") as f:
            out["cgroup"] = [l[3:].strip() for l in f if l.startswith("0::")][0]
        with socket.socket() as s:
            out["ifindex"] = s.getsockopt(socket.SOL_SOCKET, 62)
            try:
                out["bound"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode()
            except OSError as e:        # bound to an ifindex that no longer exists
                out["bound"] = errno.errorcode[e.errno]
        try:
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
            out["inet6"] = "ok"
        except OSError as e:
            out["inet6"] = errno.errorcode[e.errno]
        return out


    OPS = {name[3:]: f for name, f in globals().items() if name.startswith("op_")}
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            result = OPS[command.pop("op")](command)
        except Exception as e:
            result = {"exception": f"{type(e).__name__}: {e}"}
        print(json.dumps(result), flush=True)
''')


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
FLOOD = textwrap.dedent(r'''
    import json, os, random, select, socket, sys
    from pam_vrf import client
    path, vrf = sys.argv[1], sys.argv[2]
    counts, held = {}, []

    def note(key):
        counts[key] = counts.get(key, 0) + 1

    def outcome(raw):
        try:
            answer = json.loads(raw)
        except ValueError:
            return "bad answer"
        return "ok" if answer.get("ok") else answer.get("error", "?").split(":")[0]

    print("flooding", flush=True)
    i = 0
    while not select.select([sys.stdin], [], [], 0)[0]:
        kind, i = i % 4, i + 1
        try:
            if kind == 0:                       # connect, close
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.setblocking(False)
                try:
                    s.connect(path)
                finally:
                    s.close()
                note("churn")
            elif kind == 1:                     # keep up to 8 silent connections open
                for s in select.select(held, [], [], 0)[0] if held else []:
                    try:
                        note("held: " + outcome(s.recv(65536)))
                    except OSError as e:
                        note("held: " + type(e).__name__)
                    s.close()
                    held.remove(s)
                if len(held) < 8:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    s.setblocking(False)
                    try:
                        s.connect(path)
                        held.append(s)
                    except OSError:
                        s.close()
            elif kind == 2:                     # garbage
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                    s.settimeout(10)
                    s.connect(path)
                    s.send(os.urandom(random.choice((0, 1, 100, 4096, 5000))))
                    note("garbage: " + outcome(s.recv(65536)))
            else:                               # pam-vrf exec, as the product does it
                answer = client.request({"op": "place", "vrf": vrf}, path, 10)
                note("place: " + ("ok" if answer.get("ok") else answer.get("error", "?").split(":")[0]))
        except client.HelperError as e:
            note("place: " + str(e)[:40])
        except OSError as e:
            note(type(e).__name__)
    print(json.dumps(counts), flush=True)
''')


# Run as a user inside a user + pid namespace of its own (`unshare --user
# --map-root-user --pid --fork --mount-proc`): there it holds CAP_SYS_ADMIN
# over its pid namespace, so the kernel lets it claim any pid OF THAT
# NAMESPACE in SCM_CREDENTIALS. argv: socket, VRF, an inherited pidfd of a
# victim outside, the victim's pid (outside). Prints the outcome of each attempt.
USERNS_CLAIM = textwrap.dedent(r"""
    import array, errno, json, os, socket, struct, sys
    path, vrf, victim_fd, victim_pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(w)
        os.read(r, 1)           # a process of the same user, in the namespace
        os._exit(0)
    os.close(r)


    def send(fds, creds=None):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(20)
            s.connect(path)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            if creds:
                anc.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", *creds)))
            try:
                s.sendmsg([json.dumps({"v": 2, "op": "place", "vrf": vrf}).encode()], anc)
            except OSError as e:
                return {"send_error": errno.errorcode[e.errno]}
            raw = s.recv(65536)
        return json.loads(raw) if raw else None


    def where(pid):
        with open(f"/proc/{pid}/cgroup") as f:
            return [l[3:].strip() for l in f if l.startswith("0::")][0]


    out = {"me": os.getpid(), "child": child, "uid": os.getuid(), "replies": {}}
    try:
        os.pidfd_open(victim_pid)           # its pid means nothing in here
        out["victim visible"] = True
    except OSError:
        out["victim visible"] = False
    replies = out["replies"]
    replies["victim pidfd"] = send([victim_fd])
    replies["victim pidfd, child claimed"] = send([victim_fd], (child, 0, 0))
    replies["unknown pid claimed"] = send([os.pidfd_open(os.getpid())], (99999, 0, 0))
    replies["child pidfd, child claimed"] = send([os.pidfd_open(child)], (child, 0, 0))
    out["child cgroup"], out["my cgroup"] = where(child), where("self")
    print(json.dumps(out), flush=True)
""")


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
