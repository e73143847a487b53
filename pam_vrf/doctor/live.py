"""The live checks: what the kernel really does with a VRF's program.

Per usable VRF of vrf.conf, in one throwaway cgroup under the cgroup2 root
(pam-vrf-doctor-PID-RANDOM, removed afterwards, also on failure or SIGTERM):

  selftest-N  the VRF's program with a deny item (AF_INET6, any type) and
              the egress program for the VRF's device: a forked child moved
              there must get AF_INET sockets bound to the VRF
              (SO_BINDTODEVICE reads back its name), EPERM for AF_INET6, and
              EPERM for a datagram whose IP_PKTINFO names another link (lo:
              the datagram could only ever reach this host);
  dns-N       the VRF's program, binding only: a forked child sends a DNS
              query to every nameserver of resolv.conf.

The children are forked (no exec), wait until the parent has moved them,
report as JSON through a pipe and exit; all VRFs run at once, and the parent
meanwhile asks the same nameservers itself, unplaced, for comparison.
"""

import ctypes
import errno
import json
import os
import secrets
import select
import signal
import socket
import time

from pam_vrf import cgroup, programs
from pam_vrf.bpf.sockprog import Settings
from pam_vrf.bpf.syscall import BpfError
from pam_vrf.doctor import Finding, resolver

AF_INET6 = 10
IP_PKTINFO = 8
LOOPBACK_IFINDEX = 1        # lo, in every network namespace
DEADLINE = 6.0              # seconds for every child to report
PR_SET_PDEATHSIG = 1


def _errno_name(e):
    return "errno:" + errno.errorcode.get(e.errno, str(e.errno))


def socket_probe():
    """In the child: what the kernel does to this process's sockets."""
    out = {"cgroup": cgroup.cgroup_of()}
    for kind, name in ((socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")):
        try:
            with socket.socket(socket.AF_INET, kind) as s:
                raw = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
                out[name] = raw.split(b"\0", 1)[0].decode(errors="replace")
        except OSError as e:
            out[name] = _errno_name(e)
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
        out["inet6"] = "created"
    except OSError as e:
        out["inet6"] = _errno_name(e)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            info = (socket.IPPROTO_IP, IP_PKTINFO, LOOPBACK_IFINDEX.to_bytes(4, "little") + bytes(8))
            s.sendmsg([b"pam-vrf doctor"], [info], 0, ("127.0.0.1", 9))
        out["pktinfo"] = "sent"
    except OSError as e:
        out["pktinfo"] = _errno_name(e)
    return out


class Child:
    """A forked process that runs `work` once the parent says go."""

    def __init__(self, work):
        go_r, self.go_w = os.pipe2(os.O_CLOEXEC)
        self.res_r, res_w = os.pipe2(os.O_CLOEXEC)
        self.pid = os.fork()
        if self.pid == 0:
            _child(go_r, res_w, work)           # never returns
        os.close(go_r)
        os.close(res_w)
        self.data, self.done = b"", False

    def go(self, ok=True):
        os.write(self.go_w, b"g" if ok else b"x")
        os.close(self.go_w)
        self.go_w = None

    def read(self):
        chunk = os.read(self.res_r, 65536)
        if chunk:
            self.data += chunk
        else:
            self.done = True

    def result(self):
        try:
            return json.loads(self.data.decode())
        except ValueError:
            return None

    def finish(self):
        if self.go_w is not None:
            os.close(self.go_w)
            self.go_w = None
        try:
            if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        if self.res_r is not None:
            os.close(self.res_r)
            self.res_r = None


def _child(go_r, res_w, work):
    """The forked side: no return, no exception, no cleanup of the parent's."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        low = 3
        for fd in sorted((go_r, res_w)):         # other children's pipes: not ours to hold
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 1 << 16)
        if select.select([go_r], [], [], DEADLINE)[0] and os.read(go_r, 1) == b"g":
            try:
                out = work()
            except Exception as e:
                out = {"error": f"{type(e).__name__}: {e}"}
            data = json.dumps(out).encode()
            while data:
                data = data[os.write(res_w, data):]
    finally:
        os._exit(0)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _rmdir(path):
    for _ in range(100):
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY:
                return False
            time.sleep(0.01)            # a reaped child is still leaving the cgroup
    return False


def run(mount, vrfs, servers):
    """({vrf: socket probe or error text}, {vrf: DNS answers or error text},
    baseline DNS answers, paths that could not be removed)."""
    top = os.path.join(mount, f"pam-vrf-doctor-{os.getpid()}-{secrets.token_hex(3)}")
    made, children = [], []
    probes, dns = {}, {}
    baseline = {}
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        os.mkdir(top)
        made.append(top)
        for n, vrf in enumerate(vrfs):
            jobs = [("selftest", Settings(ifindex=vrf.ifindex, deny=((AF_INET6, None, None),)),
                     socket_probe, probes)]
            if servers:
                jobs.append(("dns", Settings(ifindex=vrf.ifindex), lambda: resolver.probe(servers), dns))
            for kind, settings, work, into in jobs:
                path = os.path.join(top, f"{kind}-{n}")
                try:
                    os.mkdir(path)
                    made.append(path)
                    programs.attach(path, settings)
                    if kind == "selftest":
                        programs.attach_egress(path, {vrf.ifindex}, "pam_vrf_doctor")
                except (OSError, BpfError) as e:
                    into[vrf.name] = f"cannot set up {path}: {e.strerror or e}"
                    continue
                child = Child(work)
                children.append((vrf, child, into))
                try:
                    cgroup.move(child.pid, path)
                except cgroup.CgroupError as e:
                    child.go(False)
                    into[vrf.name] = str(e)
                    children.pop()
                    child.finish()
                    continue
                child.go()
        if servers:
            baseline = resolver.probe(servers)
        deadline = time.monotonic() + DEADLINE
        waiting = {child.res_r: (vrf, child, into) for vrf, child, into in children}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd in select.select(list(waiting), [], [], left)[0]:
                vrf, child, into = waiting[fd]
                child.read()
                if child.done:
                    del waiting[fd]
                    into[vrf.name] = child.result() or "the test process died without reporting"
        for vrf, child, into in waiting.values():
            into[vrf.name] = f"the test process did not report within {DEADLINE:g}s"
    finally:
        for _, child, _ in children:
            child.finish()
        left_behind = [path for path in reversed(made) if not _rmdir(path)]
        signal.signal(signal.SIGTERM, previous)
    return probes, dns, baseline, left_behind


def judge(vrf, probe):
    """The self-test finding for one VRF."""
    if isinstance(probe, str):
        return Finding("self-test", "error", f"VRF {vrf.name}: {probe}",
                       "placement into this VRF cannot work on this host as it is",
                       "see the error; the helper does the same steps", vrf.where.rsplit(":", 1)[0],
                       int(vrf.where.rsplit(":", 1)[1]))
    if "error" in probe:
        return Finding("self-test", "error", f"VRF {vrf.name}: the test process failed: {probe['error']}")
    problems, level = [], "error"
    for name in ("tcp", "udp"):
        got = probe.get(name, "")
        if got == vrf.name:
            continue
        if not got:
            problems.append(f"its AF_INET {name} socket was not bound at all (the kernel did not run "
                            "the program: is cgroup2 socket matching off?)")
        elif got.startswith("errno:"):
            problems.append(f"socket(AF_INET, {name}) failed with {got[6:]}")
        else:
            problems.append(f"its AF_INET {name} socket was bound to {got}, not {vrf.name} (a program on "
                            "an ancestor cgroup overrides the binding)")
    inet6 = probe.get("inet6")
    if inet6 == "created":
        problems.append("socket(AF_INET6) succeeded although the program denies it")
    elif inet6 == "errno:EAFNOSUPPORT" and not problems:
        problems.append("IPv6 is disabled in this kernel, so deny= could not be verified")
        level = "warning"
    elif inet6 != "errno:EPERM":
        problems.append(f"socket(AF_INET6) failed with {inet6 and inet6[6:]}, not EPERM")
    pktinfo = probe.get("pktinfo")
    if pktinfo == "sent":
        problems.append("a datagram whose IP_PKTINFO named another link (lo) was sent: the egress "
                        "program did not drop it (a kernel without cgroup_skb egress filtering?)")
        level = "error"
    elif pktinfo != "errno:EPERM":
        problems.append(f"a datagram whose IP_PKTINFO named another link failed with "
                        f"{pktinfo and pktinfo[6:]}, not EPERM from the egress program")
    if problems:
        return Finding("self-test", level, f"VRF {vrf.name}: a process in a cgroup carrying its program: "
                       + "; ".join(problems),
                       "sessions placed in this VRF would not be confined to it",
                       "see the kernel and ancestors findings")
    return Finding("self-test", "ok", f"VRF {vrf.name}: a process moved into a cgroup with its programs gets "
                   f"AF_INET sockets bound to {vrf.name} (ifindex {vrf.ifindex}), EPERM for AF_INET6 (deny) "
                   "and EPERM for a datagram naming another link (egress)")


def check(findings, mount, vrfs, servers, resolv_conf):
    """Checks 3 and 7 (live)."""
    if not vrfs:
        findings.append(Finding("self-test", "info", "no usable VRF named in vrf.conf: nothing to test live"))
        return
    probes, dns, baseline, left_behind = run(mount, vrfs, servers)
    for vrf in vrfs:
        findings.append(judge(vrf, probes.get(vrf.name, "not run")))
    if servers:
        resolver.live_findings(findings, resolv_conf, vrfs, dns, baseline)
    for path in left_behind:
        findings.append(Finding("self-test", "warning", f"could not remove the test cgroup {path}",
                                "it is empty and harmless", f"rmdir {path}", path))
