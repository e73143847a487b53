"""A placed, unprivileged user cannot get a socket outside its VRF (test VM:
logind, and the per-user systemd manager pam_systemd starts at login).

- the kernel's own guards: a socket the program bound cannot be unbound or
  rebound without CAP_NET_RAW, and the user cannot move itself out of the
  VRF cgroup, neither into its session scope nor into the cgroup tree that
  systemd delegates to the user (user@UID.service);
- the user's systemd manager: on a logind system every login also has a
  `systemd --user` instance (user@UID.service), started outside the login's
  session scope. Whatever it starts for the user (`systemd-run --user`,
  `systemctl --user start`, D-Bus activation) must not be a way around the
  placement: the helper binds the manager at login with the login's rule, so
  its sockets are bound to the user's VRF and its deny items hold too
  (`@netops mgmt services=sshd deny=inet6`: IPv6 refused). su, at and cron
  from a confined session: test_vm_sessions.py.
"""

import errno
import json
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PROBE, PY, VRF, ifindex, peers  # noqa: E402,F401 (peers: a fixture)

pytestmark = vmlib.vm_only

MEMBER = "op1"






def test_placed_user_cannot_unbind_rebind_or_move_out_of_the_vrf():
    probe = vmlib.probe(MEMBER, "--escape")
    assert probe["cgroup"].endswith(f"/vrf/{VRF}"), probe
    refused = {f"errno:{errno.EPERM}", f"errno:{errno.EACCES}"}
    for attempt, result in probe["escape"].items():
        assert result in refused, f"{MEMBER} could {attempt}: {probe['escape']}"
    # and nothing changed for its sockets
    assert probe["sockets"]["tcp4"] == {"dev": VRF, "ifindex": ifindex(VRF)}


def test_processes_started_by_the_users_systemd_manager_are_bound_to_the_vrf_too(peers):
    """The helper binds user@UID.service at login with the login's rule: what
    the manager starts gets the VRF and the rule's deny items (inet6 here)."""
    # Fire-and-forget systemd-run talks to the manager's private socket: no
    # user D-Bus needed (--wait/--pipe would want dbus-user-session).
    command = f"""
        {PY} {PROBE}
        out=/tmp/pvescape-$$.json
        systemd-run --user --quiet --collect /bin/sh -c "{PY} {PROBE} --traffic > $out.tmp; mv $out.tmp $out"
        for i in $(seq 150); do [ -s $out ] && break; sleep 0.2; done
        cat $out; rm -f $out
    """
    with vmlib.vrf_conf(f"@netops {VRF} services=sshd deny=inet6") as where:
        mark = vmlib.journal_mark()
        lines = vmlib.ssh(MEMBER, command).stdout.strip().splitlines()
        manager = vmlib.wait_journal(mark, [f"user {MEMBER} (service sshd) placed in VRF {VRF} "
                                            f"(rule {where[f'@netops {VRF} services=sshd deny=inet6']})"],
                                     SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)
    assert len(lines) >= 2, f"systemd-run --user gave nothing: {lines}"
    shell, started = json.loads(lines[-2]), json.loads(lines[-1])
    mgmt, eperm = {"dev": VRF, "ifindex": ifindex(VRF)}, {"errno": errno.EPERM}
    expected = {"tcp4": mgmt, "udp4": mgmt, "tcp6": eperm, "udp6": eperm}
    assert shell["cgroup"].endswith(f"/vrf/{VRF}") and shell["sockets"] == expected, shell
    assert f"user@{shell['uid']}.service" in manager["MESSAGE"] and "bound too" in manager["MESSAGE"], \
        manager["MESSAGE"]
    assert f"/user@{shell['uid']}.service/" in started["cgroup"], started
    assert started["sockets"] == expected and \
        {k: started["peers"][k] for k in ("tcp4", "udp4")} == {"tcp4": "mgmt-peer", "udp4": "mgmt-peer"} and \
        all(started["peers"][k] == f"errno:{errno.EPERM}" for k in ("tcp6", "udp6")), (
        f"a process {MEMBER} started through its own systemd manager (systemd-run --user) runs in "
        f"{started['cgroup']} with sockets {started['sockets']} and reaches {started['peers']}: "
        f"the VRF placement (mgmt, deny=inet6) is escaped")
