"""pam-vrf and iproute2's `ip vrf` on one machine, from inside a placed
session (the test VM: real VRFs, logind, sshd with pam_vrf.so from the
pam-auth-update profile, the helper deciding and placing).

Root logs in over ssh under a temporary rule `root mgmt services=sshd`, so
its shell is placed like anyone's and may run `ip vrf exec`:

- `ip vrf exec default CMD` runs CMD unbound in <session>/vrf (prod-peer
  answers), `ip vrf exec other CMD` runs it in <session>/vrf/other bound to
  a second VRF `other` (made for the test), and the shell stays in mgmt;
- `ip vrf pids mgmt` and `pam-vrf pids mgmt` list the session's processes;
- `ip vrf exec mgmt CMD` inside the session works (no EPERM against our
  attachment) and binds to mgmt, with still one program on the cgroup;
- `pam-vrf exec default` (which always goes through the helper, root's
  too) does what `ip vrf exec default` does.

vrf.conf is restored and `other` deleted afterwards, also on failure.
"""

import json
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PAM_VRF, PROBE, PY, SOCKETS, VRF, ifindex, peers, run  # noqa: E402,F401 (peers: a fixture)

pytestmark = vmlib.vm_only

OTHER, OTHER_TABLE = "other", 11




@pytest.fixture
def other_vrf():
    assert run("ip", "link", "show", OTHER, check=False).returncode != 0, f"{OTHER} exists already"
    run("ip", "link", "add", OTHER, "type", "vrf", "table", OTHER_TABLE)
    try:
        run("ip", "link", "set", OTHER, "up")
        yield OTHER
    finally:
        run("ip", "link", "del", OTHER, check=False)




def bound(probe, dev):
    index = ifindex(dev) if dev else 0
    return all(probe["sockets"][k] == {"dev": dev, "ifindex": index} for k in SOCKETS)


SCRIPT = f"""
echo "shell=$$ identify=$(ip vrf identify $$)"
echo "== placed"; {PY} {PROBE} --traffic
echo "== ip vrf exec default"; ip vrf exec default {PY} {PROBE} --traffic
echo "== ip vrf exec other"; ip vrf exec {OTHER} {PY} {PROBE}
echo "== shell again"; {PY} {PROBE} --traffic
echo "== ip vrf pids"; ip vrf pids {VRF}
echo "== pam-vrf pids"; {PAM_VRF} pids {VRF}
echo "== ip vrf exec mgmt"; ip vrf exec {VRF} {PY} {PROBE} --traffic
echo "== pam-vrf exec default"; {PAM_VRF} exec default -- {PY} {PROBE} --traffic
echo "== hold"; read line
"""


def test_ip_vrf_exec_pids_and_identify_inside_a_placed_session(peers, other_vrf):
    with vmlib.vrf_conf(f"root {VRF} services=sshd"), vmlib.Login("root", SCRIPT) as login:
        shell, identify = vmlib._shell_info(login.readline())
        out = login.sections(until="hold")
        probes = {name: json.loads(lines[-1]) for name, lines in out.items() if "pids" not in name}

        placed = probes["placed"]
        m = re.match(rf"^(/user\.slice/user-0\.slice/session-\d+\.scope)/vrf/{VRF}$", placed["cgroup"])
        assert m, placed
        session = m.group(1)
        assert identify == VRF
        assert bound(placed, VRF) and set(placed["peers"].values()) == {"mgmt-peer"}, placed

        default = probes["ip vrf exec default"]
        assert default["cgroup"] == f"{session}/vrf", default
        assert bound(default, ""), default
        assert set(default["peers"].values()) == {"prod-peer"}, default

        other = probes["ip vrf exec other"]
        assert other["cgroup"] == f"{session}/vrf/{OTHER}", other
        assert bound(other, OTHER), other

        again = probes["shell again"]
        assert again["cgroup"] == placed["cgroup"]
        assert bound(again, VRF) and set(again["peers"].values()) == {"mgmt-peer"}, again

        for tool in ("ip vrf pids", "pam-vrf pids"):
            pids = {int(line.split()[0]) for line in out[tool] if line.strip()}
            assert shell in pids, f"{tool} {VRF} does not list the session's shell {shell}: {out[tool]}"

        inside = probes["ip vrf exec mgmt"]
        assert inside["cgroup"] == placed["cgroup"], inside
        assert bound(inside, VRF) and set(inside["peers"].values()) == {"mgmt-peer"}, inside

        via_us = probes["pam-vrf exec default"]
        assert via_us["cgroup"] == f"{session}/vrf", via_us
        assert bound(via_us, "") and set(via_us["peers"].values()) == {"prod-peer"}, via_us

        # While the session is open: one program per cgroup (replaced, never stacked).
        mount = vmlib.cgroup_mount()
        attached = vmlib.sock_create_attachments()
        for name in (VRF, OTHER):
            progs = attached.get(f"{mount}{session}/vrf/{name}")
            assert progs and len(progs) == 1, f"{session}/vrf/{name}: {progs}"
        assert f"{mount}{session}/vrf" not in attached, "the default-VRF cgroup carries a program"
        status = run(PAM_VRF, "status").stdout
        assert f"{mount}{session}/vrf/{OTHER}  vrf={OTHER}" in status, status
