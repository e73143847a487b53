"""The VRF device deleted and created again (new ifindex) under a live session,
on the test VM:

- while it is gone, new sockets of the session do not fall back to the
  default VRF (prod-peer never answers them);
- once `mgmt` is back (table 10, veth-mgmt enslaved again), the helper
  re-attaches the session's cgroup: new sockets in the EXISTING session bind
  to the new device and reach mgmt-peer;
- a new login lands in the new device.

The lab is put back afterwards (mgmt a VRF in table 10 with veth-mgmt in it,
traffic through it reaching mgmt-peer), also when the test fails.
"""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import HELPER_SERVICE, SOCKETS, VRF, VRF_TABLE, ifindex, peers, run  # noqa: E402,F401 (peers: a fixture)

pytestmark = vmlib.vm_only







def create_mgmt():
    """What an operator (or ifupdown/networkd) does: the VRF, up, its port enslaved."""
    if run("ip", "link", "show", VRF, check=False).returncode != 0:
        run("ip", "link", "add", VRF, "type", "vrf", "table", VRF_TABLE)
    run("ip", "link", "set", VRF, "up")
    run("ip", "link", "set", "veth-mgmt", "master", VRF)


@pytest.fixture
def lab_restored(peers):
    vmlib.wait_lab_ok()
    try:
        yield
    finally:
        create_mgmt()
        try:
            vmlib.wait_lab_ok(timeout=20)
        except AssertionError:
            # Let systemd-networkd configure the links from its files again.
            run("networkctl", "reload", check=False)
            run("networkctl", "reconfigure", "veth-mgmt", VRF, check=False)
            vmlib.wait_lab_ok(timeout=60)


def test_vrf_recreated_existing_session_rebinds_and_new_login_lands_in_it(lab_restored):
    old = ifindex(VRF)
    with vmlib.Session("op1", "--traffic") as s:
        assert s.first["cgroup"].endswith(f"/vrf/{VRF}")
        assert s.first["sockets"]["tcp4"] == {"dev": VRF, "ifindex": old}
        assert set(s.first["peers"].values()) == {"mgmt-peer"}, s.first

        mark = vmlib.journal_mark()
        run("ip", "link", "del", VRF)
        gone = s.again()
        # Bound to an index no device has: nothing gets out, above all not into the default VRF.
        assert gone["sockets"]["tcp4"]["ifindex"] == old, gone
        assert "prod-peer" not in gone["peers"].values() and "mgmt-peer" not in gone["peers"].values(), gone

        create_mgmt()
        new = ifindex(VRF)
        assert new != old
        vmlib.wait_journal(mark, [f"device {VRF} is back as ifindex {new}", "re-attached"],
                           timeout=20, _SYSTEMD_UNIT=HELPER_SERVICE)
        vmlib.wait_lab_ok()
        back = s.again()
        for kind in SOCKETS:
            assert back["sockets"][kind] == {"dev": VRF, "ifindex": new}, (kind, back)
        assert back["peers"] == {kind: "mgmt-peer" for kind in SOCKETS}, back

        fresh = vmlib.probe("op1", "--traffic")
        assert fresh["cgroup"].endswith(f"/vrf/{VRF}") and fresh["identify"] == VRF, fresh
        for kind in SOCKETS:
            assert fresh["sockets"][kind] == {"dev": VRF, "ifindex": new}, (kind, fresh)
        assert fresh["peers"] == {kind: "mgmt-peer" for kind in SOCKETS}, fresh


def test_sessions_placed_before_a_helper_stop_and_start_still_rebind(lab_restored):
    """`systemctl stop` then `start` of the helper (an admin, a package upgrade
    that stops and starts) must not make it forget the sessions it placed: the
    kernel keeps their programs attached, and when the VRF is re-created their
    cgroups must be re-attached like those of sessions placed after the start."""
    with vmlib.Session("op1") as s:
        old = ifindex(VRF)
        assert s.first["sockets"]["tcp4"] == {"dev": VRF, "ifindex": old}, s.first
        with vmlib.helper_stopped():
            pass                        # stopped, then started again (and answering)
        assert s.again()["sockets"]["tcp4"] == {"dev": VRF, "ifindex": old}

        run("ip", "link", "del", VRF)
        create_mgmt()
        new = ifindex(VRF)
        seen = []

        def rebound():
            seen[:] = [s.again()["sockets"]["tcp4"]]
            return seen[0] == {"dev": VRF, "ifindex": new}
        try:
            vmlib.wait_until("the session's cgroup to be re-attached", rebound, timeout=20, interval=1)
        except AssertionError:
            raise AssertionError(
                f"after a helper stop/start and the re-creation of {VRF} (ifindex {old} -> {new}), new sockets "
                f"of a session placed before the stop are bound to {seen}: the helper forgot the session "
                f"(state file {vmlib.HELPER_STATE} after the start: {state_file()})") from None


def state_file():
    try:
        with open(vmlib.HELPER_STATE) as f:
            return f"{len(json.load(f))} entries"
    except FileNotFoundError:
        return "missing"
