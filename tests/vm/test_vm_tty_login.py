"""login(1) on a terminal, on the test VM: what getty runs after the password
(here `login -f USER` as root on a pseudo-terminal: no password, the same
session stack, /etc/pam.d/login with common-session: pam_systemd, then
pam_vrf.so). ssh, su, cron and at have their own modules.

- a netops member's login shell lands in <session-N.scope>/vrf/mgmt, `ip vrf
  identify $$` says mgmt, its sockets are bound to mgmt and 10.99.0.2 answers
  from mgmt-peer; the helper's line names the service `login`;
- a user with no rule stays in the default VRF (prod-peer answers).
"""

import json
import os
import pty
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PROBE, PY, SOCKETS, VRF, peers  # noqa: E402,F401 (peers: a fixture)

pytestmark = vmlib.vm_only

from test_vm_login import MEMBER, OTHER, assert_bound_to_mgmt, scope_re  # noqa: E402

DONE = "PVTTY-DONE"


def tty_login(user, command, timeout=120):
    """Run `login -f user` on a new pseudo-terminal, type `command` at the
    shell's prompt, then exit; what the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execve("/bin/login", ["login", "-f", user], {"TERM": "dumb", "PATH": vmlib.SYSTEM_PATH})
        finally:
            os._exit(127)
    out, typed, ended, deadline = b"", False, False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:             # EIO: no one has the terminal open
                chunk = b""
            if not chunk:
                # login closes the terminal and vhangup()s it before it opens it
                # again: the end only once login itself has exited.
                ended = os.waitpid(pid, os.WNOHANG)[0] == pid
                if ended:
                    break
                time.sleep(0.1)
                continue
            out += chunk
            # Typed once the shell prompts (login may flush the terminal's input before).
            if not typed and out.rstrip().endswith(b"$"):
                os.write(fd, f"{command}; echo {DONE}; exit\n".encode())
                typed = True
        else:
            raise AssertionError(f"login -f {user}: no end within {timeout} s: {out[-2000:]!r}")
    finally:
        if not ended:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace").replace("\r\n", "\n")
    assert typed and f"\n{DONE}" in text, f"login -f {user}: {text[-2000:]}"
    return text


def login_probe(user):
    """vm_probe.py --traffic and `ip vrf identify $$` in user's login shell."""
    text = tty_login(user, f'echo "identify=$(ip vrf identify $$)"; {PY} {PROBE} --traffic')
    lines = text.splitlines()
    probe = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    probe["identify"] = next(line for line in lines if line.startswith("identify=")).split("=", 1)[1].strip()
    return probe


def test_a_netops_members_terminal_login_lands_in_mgmt(peers):
    mark = vmlib.journal_mark()
    probe = login_probe(MEMBER)
    assert scope_re(MEMBER).match(probe["cgroup"]), probe
    assert probe["identify"] == VRF, probe
    assert_bound_to_mgmt(probe["sockets"])
    assert probe["peers"] == {kind: "mgmt-peer" for kind in SOCKETS}, probe["peers"]
    vmlib.wait_journal(mark, [f"user {MEMBER} (service login) placed in VRF {VRF} (rule {vmlib.VRF_CONF}:",
                              f", cgroup {probe['cgroup']}, pid "], SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)


def test_a_terminal_login_without_a_rule_stays_in_the_default_vrf(peers):
    probe = login_probe(OTHER)
    assert probe["cgroup"].rsplit("/", 1)[-1].startswith("session-") and "/vrf/" not in probe["cgroup"], probe
    assert probe["identify"] == "", probe
    for kind in SOCKETS:
        assert probe["sockets"][kind] == {"dev": "", "ifindex": 0}, probe["sockets"]
    assert probe["peers"] == {kind: "prod-peer" for kind in SOCKETS}, probe["peers"]
