"""vrf.conf options that change what a login may do, on the test VM:

- `deny=inet6,raw` refuses exactly those sockets (EPERM) and binds the rest
  to the VRF: for a user of the rule's group, and for root (whom only the
  program, not missing privilege, can stop from opening raw sockets);
- `strict`: with the helper stopped a strict rule's ssh login is refused and
  the journal (syslog authpriv, ident pam_vrf) says why, while a non-strict
  rule's login goes through unplaced, also with the reason logged.

Groups, users and rules are made for each test and removed afterwards; the
helper's units are started again even if a test fails.
"""

import errno
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PROBE, PY, VRF, ifindex, run  # noqa: E402

pytestmark = vmlib.vm_only

EPERM = {"errno": errno.EPERM}




def test_deny_inet6_raw_refuses_ipv6_for_a_group_member():
    with vmlib.group("pvd") as g, vmlib.user(g) as u, vmlib.vrf_conf(f"@{g} {VRF} deny=inet6,raw"):
        probe = vmlib.probe(u)
        assert probe["cgroup"].endswith(f"/vrf/{VRF}") and probe["identify"] == VRF, probe
        mgmt = {"dev": VRF, "ifindex": ifindex(VRF)}
        assert probe["sockets"] == {"tcp4": mgmt, "udp4": mgmt, "tcp6": EPERM, "udp6": EPERM}, probe["sockets"]


def test_deny_raw_refuses_raw_sockets_even_to_root():
    # Root may open raw sockets anywhere else (checked first, outside any rule) ...
    local = json.loads(run(PY, PROBE, "--raw", cwd="/").stdout)["sockets"]
    assert "dev" in local["raw4"] and "dev" in local["raw6"], local
    # ... but not in a session placed by a rule that denies them.
    with vmlib.vrf_conf(f"root {VRF} services=sshd deny=inet6,raw"):
        probe = vmlib.probe("root", "--raw")
    assert probe["cgroup"].endswith(f"/vrf/{VRF}"), probe
    mgmt = {"dev": VRF, "ifindex": ifindex(VRF)}
    assert probe["sockets"] == {"tcp4": mgmt, "udp4": mgmt, "tcp6": EPERM, "udp6": EPERM,
                                "raw4": EPERM, "raw6": EPERM}, probe["sockets"]


def test_strict_refuses_and_non_strict_proceeds_unplaced_while_the_helper_is_stopped():
    with vmlib.group("pvs") as g, vmlib.user(g) as strict_user, \
            vmlib.vrf_conf(f"@{g} {VRF} strict"):
        with vmlib.helper_stopped():
            mark = vmlib.journal_mark()
            refused = vmlib.probe(strict_user, check=False)
            assert not isinstance(refused, dict) and refused.returncode != 0, \
                f"the strict rule's login went through with the helper stopped: {refused}"
            entry = vmlib.wait_journal(mark, [f"refusing session of user {strict_user} (service sshd)",
                                              "helper not running", "strict rule"], SYSLOG_IDENTIFIER="pam_vrf")
            assert entry["SYSLOG_FACILITY"] == "10" and entry["PRIORITY"] == "3", entry    # authpriv.err
            vmlib.wait_until("the refused login's logind session to go",
                             lambda: not vmlib.sessions_of(strict_user))

            # A non-strict rule (op1: @netops mgmt) lets the login through, unplaced.
            probe = vmlib.probe("op1")
            assert "/vrf" not in probe["cgroup"] and probe["identify"] == "", probe
            assert all(s == {"dev": "", "ifindex": 0} for s in probe["sockets"].values()), probe["sockets"]
            vmlib.wait_journal(mark, ["user op1 (service sshd) left unplaced", "helper not running"],
                               SYSLOG_IDENTIFIER="pam_vrf", SYSLOG_FACILITY=10)

        # Helper back: the same strict login is placed.
        probe = vmlib.probe(strict_user)
        assert probe["cgroup"].endswith(f"/vrf/{VRF}") and probe["identify"] == VRF, probe
