"""`pam-vrf trace` on the test VM (bcc, the kernel's headers, a real VRF):

- a placed session's curl and python3 sockets appear bound to mgmt, with
  their pid, user, command and VRF;
- under a rule with deny=inet6, an AF_INET6 socket appears refused with the
  deny item and the rule's FILE:LINE (from the helper's state file);
- SIGTERM stops it with exit 0;
- what it costs: a socket() loop with and without the tracer running (the
  figure goes to the results as trace-overhead.txt; README quotes it).

bcc compiles the probe when trace starts: under TCG that takes a while, so
one tracer serves the whole module. Runs only on the test VM.
"""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from test_vm_iproute2 import other_vrf  # noqa: E402,F401 (a fixture: a second VRF device)
from vmlib import PY, VRF, run  # noqa: E402

pytestmark = vmlib.vm_only

MEMBER = "op1"              # provisioned: placed in mgmt by `@netops mgmt`
READY_WITHIN = 600          # bcc's clang under TCG
RESULTS = "/run/pam-vrf-vm-results"     # vagrant/ci/vm-run-tests: copied to the host
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} pid=(?P<pid>\d+) user=(?P<user>\S+) comm=(?P<comm>\S+) "
                  r"vrf=(?P<vrf>\S+) (?P<socket>\S+) (?P<verdict>.*)$")


class Trace:
    """`pam-vrf trace ARGS...` in the background; its lines as they come."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([vmlib.PAM_VRF, "trace", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd="/")
        self.lines, self.errors = [], []
        self._new = queue.Queue()
        self._readers = [threading.Thread(target=self._read, args=(f, into), daemon=True)
                         for f, into in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors))]
        for t in self._readers:
            t.start()

    def _read(self, f, into):
        for line in f:
            into.append(line.rstrip("\n"))
            self._new.put(None)

    def wait(self, what, predicate, timeout):
        deadline = time.monotonic() + timeout
        while True:
            found = predicate()
            if found:
                return found
            if self.proc.poll() is not None and not [t for t in self._readers if t.is_alive()]:
                raise AssertionError(f"pam-vrf trace exited ({self.proc.returncode}) before {what}: "
                                     f"{self.errors}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} from pam-vrf trace within {timeout} s; "
                                     f"stderr {self.errors}; last lines {self.lines[-20:]}")
            try:
                self._new.get(timeout=min(left, 1))
            except queue.Empty:
                pass

    def wait_ready(self):
        self.wait("ready line", lambda: any("ready" in e for e in self.errors), READY_WITHIN)

    def lines_of(self, pid):
        return [m.groupdict() for m in map(LINE.match, self.lines) if m and int(m["pid"]) == pid]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._readers:
            t.join(timeout=10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def trace():
    # The cost test's baseline first: no tracer attached yet.
    baseline = {where: socket_loop_us(*prefix) for where, prefix in LOOP_PLACES.items()}
    t = Trace()
    t.baseline = baseline
    try:
        t.wait_ready()
        yield t
    finally:
        t.stop()
        print("pam-vrf trace stderr:", *t.errors, "stdout:", *t.lines[:200], sep="\n")
        if os.path.isdir(RESULTS):
            with open(os.path.join(RESULTS, "trace-lines.txt"), "w") as f:
                f.write("\n".join(t.errors + [line for line in t.lines if "comm=python3 " in line
                                               or "comm=curl " in line][:40]) + "\n")


def login_running(command):
    """ssh in as MEMBER running `command` (exec'd by the login shell: its pid is
    the shell's); returns (pid, output lines after the pid)."""
    out = vmlib.ssh(MEMBER, f"echo pid=$$; exec {command}", check=False).stdout.splitlines()
    assert out and out[0].startswith("pid="), out
    return int(out[0][4:]), out[1:]


LOOP_N = 3000
SOCKET_LOOP = ("import socket, sys, time\n"
               "n = int(sys.argv[1]); t = time.perf_counter()\n"
               "for _ in range(n):\n"
               "    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()\n"
               "print((time.perf_counter() - t) / n * 1e6)\n")
LOOP_PLACES = {"outside pam-vrf cgroups (filtered in the kernel)": (),
               f"in a VRF cgroup (ip vrf exec {VRF}: a line per socket)": ("ip", "vrf", "exec", VRF)}


def socket_loop_us(*prefix):
    """Microseconds per socket()+close(): the best of three runs."""
    return min(float(run(*prefix, PY, "-c", SOCKET_LOOP, LOOP_N, cwd="/", timeout=600).stdout)
               for _ in range(3))


PY_SOCKETS = (f"{PY} -c " + vmlib.q(
    "import socket, time\n"
    "for family in (socket.AF_INET, socket.AF_INET6):\n"
    "    try:\n"
    "        socket.socket(family, socket.SOCK_DGRAM).close(); print(family, 'ok')\n"
    "    except OSError as e:\n"
    "        print(family, 'errno', e.errno)\n"
    "time.sleep(3)\n"))      # the session lives on while the helper writes its state file


def test_placed_sessions_curl_and_python3_sockets_appear_bound_to_mgmt(trace):
    pid, _ = login_running("curl -s -o /dev/null --max-time 5 http://10.99.0.2:7000/")
    lines = trace.wait(f"line for curl (pid {pid})",
                       lambda: [x for x in trace.lines_of(pid) if x["socket"] == "inet/stream/tcp"], 60)
    assert lines[0] == {"pid": str(pid), "user": MEMBER, "comm": "curl", "vrf": VRF,
                        "socket": "inet/stream/tcp", "verdict": f"bound {VRF}"}, trace.lines_of(pid)

    pid, out = login_running(PY_SOCKETS)
    assert out == ["2 ok", "10 ok"], out
    lines = trace.wait(f"2 lines for python3 (pid {pid})", lambda: len(trace.lines_of(pid)) >= 2 and
                       trace.lines_of(pid), 60)
    assert {(x["comm"], x["vrf"], x["socket"], x["verdict"]) for x in lines} == {
        ("python3", VRF, "inet/dgram/udp", f"bound {VRF}"),
        ("python3", VRF, "inet6/dgram/udp", f"bound {VRF}")}, lines


def test_denied_inet6_socket_appears_refused_with_the_rules_file_and_line(trace):
    rule = f"{MEMBER} {VRF} deny=inet6"
    with vmlib.vrf_conf(rule) as where:
        pid, out = login_running(PY_SOCKETS)
    assert out == ["2 ok", "10 errno 1"], out       # EPERM: the rule applied
    lines = trace.wait(f"2 lines for python3 (pid {pid})", lambda: len(trace.lines_of(pid)) >= 2 and
                       trace.lines_of(pid), 60)
    assert {(x["socket"], x["verdict"]) for x in lines} == {
        ("inet/dgram/udp", f"bound {VRF}"),
        ("inet6/dgram/udp", f"refused deny=inet6 rule={where[rule]}")}, lines
    assert all(x["user"] == MEMBER and x["comm"] == "python3" and x["vrf"] == VRF for x in lines)


MAKE_SOCKET = "import os, socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(); print(os.getpid())"


def test_user_and_vrf_filters_and_json(trace, other_vrf):  # noqa: F811 (the fixture)
    """--user root --vrf mgmt --json beside the unfiltered tracer: root's socket
    in mgmt appears in both; root's in another VRF and op1's in mgmt only in
    the unfiltered one."""
    filtered = Trace("--user", "root", "--vrf", VRF, "--json")
    try:
        filtered.wait_ready()
        pids = {where: int(run("ip", "vrf", "exec", vrf, PY, "-c", MAKE_SOCKET, cwd="/").stdout)
                for where, vrf in (("root in mgmt", VRF), ("root in another VRF", other_vrf))}
        pids["op1 in mgmt"], _ = login_running(f"{PY} -c " + vmlib.q(MAKE_SOCKET + "; import time; time.sleep(2)"))
        for where, pid in pids.items():
            trace.wait(f"the unfiltered line of {where}", lambda: trace.lines_of(pid), 60)
        found = filtered.wait("root's socket in mgmt, as JSON", lambda: [
            json.loads(line) for line in filtered.lines if json.loads(line)["pid"] == pids["root in mgmt"]], 60)
        assert len(found) == 1 and {k: found[0][k] for k in ("user", "uid", "comm", "vrf", "socket", "verdict",
                                                             "device")} == {
            "user": "root", "uid": 0, "comm": "python3", "vrf": VRF, "socket": "inet/stream/tcp",
            "verdict": "bound", "device": VRF}, found
        time.sleep(2)       # the filtered tracer had as long as the unfiltered one, and more
        seen = {json.loads(line)["pid"] for line in filtered.lines}
        assert pids["root in another VRF"] not in seen and pids["op1 in mgmt"] not in seen, (pids, filtered.lines)
        assert {json.loads(line)["user"] for line in filtered.lines} == {"root"}
        assert {json.loads(line)["vrf"] for line in filtered.lines} == {VRF}
    finally:
        rc = filtered.stop()
    assert rc == 0, filtered.errors


def test_cost_and_sigterm(trace):
    """Last (it stops the module's tracer): a socket() loop with it running,
    outside pam-vrf's cgroups (filtered in the kernel) and in a VRF cgroup
    (a line per socket), against the same loops before it started and after
    it stopped; SIGTERM ends it with exit 0."""
    running = {}
    for where, prefix in LOOP_PLACES.items():
        running[where] = socket_loop_us(*prefix)
        # Let the tracer print what it has before the next measurement.
        seen = []
        trace.wait("the tracer to catch up", lambda: seen.append(len(trace.lines)) or
                   (len(seen) > 3 and seen[-1] == seen[-4] and seen[-1]), 300)
    assert trace.stop() == 0, trace.errors
    assert any(line.endswith(f"vrf={VRF} inet/dgram/udp bound {VRF}") and "user=root comm=python3" in line
               for line in trace.lines), "the loop in the VRF cgroup has no lines"
    after = {where: socket_loop_us(*prefix) for where, prefix in LOOP_PLACES.items()}
    report = [f"pam-vrf trace cost (qemu TCG, 2 vCPUs; socket(AF_INET, SOCK_DGRAM)+close() x {LOOP_N}, "
              "best of 3; without = the better of before start and after stop):"]
    for where in LOOP_PLACES:
        without = min(trace.baseline[where], after[where])
        report.append(f"  {where}: {without:.1f} us without, {running[where]:.1f} us with trace "
                      f"(+{running[where] - without:.1f} us; before {trace.baseline[where]:.1f}, "
                      f"after {after[where]:.1f})")
    report = "\n".join(report) + "\n"
    print(report)
    if os.path.isdir(RESULTS):
        with open(os.path.join(RESULTS, "trace-overhead.txt"), "w") as f:
            f.write(report)
