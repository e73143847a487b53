"""The pam_python entry (/usr/lib/pam-vrf/pam_vrf.py), the alternative the
product allows for sshd's stack only, on the test VM.

The box runs pam_vrf.so from the pam-auth-update profile in common-session,
which /etc/pam.d/sshd includes: putting the pam_python line into that stack
would place every login twice. So the test runs a second sshd, started as
`sshd-pvpy` (a symlink to /usr/sbin/sshd: sshd takes its PAM service name
from argv[0]) on 127.0.0.1:2222, whose stack /etc/pam.d/sshd-pvpy is
/etc/pam.d/sshd with common-session written out minus pam_vrf.so, and the
pam_python line (with `debug`) at the end, after pam_systemd.

Asserted: that stack has pam_python's entry and no pam_vrf.so; an ssh login
through it lands in …/session-N.scope/vrf/mgmt with its sockets bound to
mgmt; the helper logs exactly one placement for service sshd-pvpy, of the
session leader (the PAM caller); the entry itself logs (ident pam_vrf,
debug) the helper's verdict, so it is the pam_python entry that asked.
Stack, symlink and sshd are removed afterwards, also on failure.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import SOCKETS, VRF, ifindex, run  # noqa: E402

pytestmark = vmlib.vm_only

SERVICE, PORT = "sshd-pvpy", 2222
PYTHON_LINE = f"{vmlib.PAM_LINE} pam_python.so {vmlib.PAM_PYTHON_ENTRY} debug"


def test_ssh_login_placed_through_the_pam_python_entry():
    stack = vmlib.pam_stack_without_pam_vrf([PYTHON_LINE])
    session_modules = [next(w for w in line.split() if w.endswith(".so")).rsplit("/", 1)[-1]
                       for line in stack.splitlines() if line.split()[:1] in (["session"], ["-session"])]
    assert "pam_vrf.so" not in session_modules, session_modules
    assert session_modules[-1] == "pam_python.so" and "pam_systemd.so" in session_modules, session_modules

    with vmlib.sshd_service(SERVICE, stack, PORT):
        mark = vmlib.journal_mark()
        with vmlib.Session("op1", port=PORT) as s:
            probe = s.first
            assert re.match(rf"^/user\.slice/user-\d+\.slice/session-\d+\.scope/vrf/{VRF}$", probe["cgroup"]), probe
            assert s.identify == VRF, probe
            for kind in SOCKETS:
                assert probe["sockets"][kind] == {"dev": VRF, "ifindex": ifindex(VRF)}, probe["sockets"]
            session = vmlib.session_of(s.shell)
            leader = int(run("loginctl", "show-session", session, "-p", "Leader", "--value").stdout)
            assert vmlib.cgroup_of(leader) == probe["cgroup"], "the PAM caller (session leader) is not placed"

        vmlib.wait_journal(mark, [f"user op1 (service {SERVICE}) placed in VRF {VRF}",
                                  f"cgroup {probe['cgroup']}, pid {leader}"], SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)
        entry = vmlib.wait_journal(mark, ["user op1: helper says placed", VRF], SYSLOG_IDENTIFIER=vmlib.PAM_IDENT)
        assert entry["PRIORITY"] == "7", entry              # debug
        verdicts = [e["MESSAGE"] for e in vmlib.journal(mark, SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)
                    if f"(service {SERVICE})" in e["MESSAGE"]]
        assert len(verdicts) == 1, f"placed more than once: {verdicts}"
