"""vrf.conf options that change what a login may do, and the helper's absence
or a broken policy, on the test VM:

- `deny=inet6,raw` refuses exactly those sockets (EPERM) and binds the rest
  to the VRF: for a user of the rule's group, and for root (whom only the
  program, not missing privilege, can stop from opening raw sockets);
- the helper stopped (all three units): a `strict` rule's ssh login is
  refused, and the syslog line (ident pam_vrf: pam_vrf.so's offline decider,
  authpriv.err) says why; a non-strict rule's login goes through unplaced,
  its line naming the cause (helper not running) and the rule;
- a vrf.conf that does not parse when the helper starts: the helper logs
  FILE:LINE at start, and every login proceeds unplaced with a line that
  names FILE:LINE again; fixed, the next login is placed (re-read without a
  restart); broken again while the helper runs, the last good policy stays
  in force.

Groups, users, rules and vrf.conf are put back afterwards; the helper's
units are started again even if a test fails.
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
                                              "helper not running", "strict rule"],
                                       SYSLOG_IDENTIFIER=vmlib.PAM_IDENT)
            assert entry["SYSLOG_FACILITY"] == "10" and entry["PRIORITY"] == "3", entry    # authpriv.err
            vmlib.wait_until("the refused login's logind session to go",
                             lambda: not vmlib.sessions_of(strict_user))

            # A non-strict rule (op1: @netops mgmt) lets the login through, unplaced.
            probe = vmlib.probe("op1")
            assert unplaced(probe), probe
            vmlib.wait_journal(mark, ["user op1 (service sshd) left unplaced", "helper not running",
                                      f"(rule {vmlib.VRF_CONF}:"], SYSLOG_IDENTIFIER=vmlib.PAM_IDENT,
                               SYSLOG_FACILITY=10)

        # Helper back: the same strict login is placed.
        probe = vmlib.probe(strict_user)
        assert probe["cgroup"].endswith(f"/vrf/{VRF}") and probe["identify"] == VRF, probe


def unplaced(probe):
    return "/vrf" not in probe["cgroup"] and probe["identify"] == "" and \
        all(s == {"dev": "", "ifindex": 0} for s in probe["sockets"].values())


def test_broken_vrf_conf_at_helper_start_leaves_logins_unplaced_and_says_where():
    with open(vmlib.VRF_CONF) as f:
        good = f.read()
    # The provisioned `@netops mgmt` comes first; a bad line anywhere spoils the file.
    broken = good.rstrip("\n") + "\n@netops mgmt bogus=1\n"
    where = f"{vmlib.VRF_CONF}:{broken.count(chr(10))}:"
    helper = {"SYSLOG_IDENTIFIER": vmlib.HELPER_IDENT}
    with vmlib.helper_stopped(), vmlib.file_replaced(vmlib.VRF_CONF, broken):
        mark = vmlib.journal_mark()
        vmlib.helper_up()
        start = vmlib.wait_journal(mark, [where, "bogus", "no valid policy"], **helper)
        assert start["PRIORITY"] == "3", start

        probe = vmlib.probe("op1")
        assert unplaced(probe), probe
        vmlib.wait_journal(mark, ["user op1 (service sshd) left unplaced:", where], **helper)

    # Fixed (the helper was not restarted: it notices the change): placed again.
    mark = vmlib.journal_mark()
    probe = vmlib.probe("op1")
    assert probe["cgroup"].endswith(f"/vrf/{VRF}") and probe["identify"] == VRF, probe
    vmlib.wait_journal(mark, ["user op1 (service sshd) placed in VRF mgmt"], **helper)

    # Broken while the helper runs: the last good policy stays in force.
    with vmlib.file_replaced(vmlib.VRF_CONF, broken):
        mark = vmlib.journal_mark()
        probe = vmlib.probe("op1")
        assert probe["cgroup"].endswith(f"/vrf/{VRF}"), probe
        vmlib.wait_journal(mark, [where, "keeping the policy read before"], **helper)
