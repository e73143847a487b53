"""Logins that come and go leave nothing behind (test VM, real logind).

20 ssh logins and logouts in a row of a user whose rule is theirs alone
(`@group mgmt mark=0x7e57`: a program of its own, told apart from every
other rule's). What is asserted, precisely:

1. every login is placed (…/session-N.scope/vrf/mgmt, sockets bound to mgmt);
2. the helper loads one program for the rule and shares it: across the 20
   logins at most one BPF_PROG_TYPE_CGROUP_SOCK program is loaded that was
   not loaded before (the one the first session's cgroup carries);
3. once logind has removed the 20 session scopes and stopped the user's
   systemd manager (which carried the rule's program as well), no …/vrf/…
   cgroup is left under user.slice, and the programs attached at
   BPF_CGROUP_INET_SOCK_CREATE anywhere (bpftool cgroup tree) are exactly
   those attached before;
4. once no cgroup uses the rule's program any more, the helper lets it go:
   with one more login (of another rule) open, within 15 s the rule's
   program is no longer loaded, and the helper's state file names no cgroup
   that no longer exists.
"""

import json
import os
import pwd
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import HELPER_STATE, VRF, ifindex, run, wait_until  # noqa: E402

pytestmark = vmlib.vm_only

LOGINS = 20
MARK = 0x7E57




def state_entries():
    try:
        with open(HELPER_STATE) as f:
            return list(json.load(f))
    except FileNotFoundError:
        return []


def test_twenty_logins_and_logouts_leave_no_vrf_cgroup_and_no_program_behind():
    mount = vmlib.cgroup_mount()
    with vmlib.group("pvc") as g, vmlib.user(g) as u, vmlib.vrf_conf(f"@{g} {VRF} mark={MARK:#x}"):
        wait_until("earlier sessions' VRF cgroups to go", lambda: not vmlib.vrf_cgroups(), timeout=30)
        loaded_before = set(vmlib.sock_programs())
        attached_before = vmlib.sock_create_attachments()
        mgmt = {"dev": VRF, "ifindex": ifindex(VRF)}

        # The rule's program: the one the first session's cgroup carries.
        with vmlib.Session(u) as s:
            where = mount + s.first["cgroup"]
            progs = vmlib.sock_create_attachments().get(where)
            assert progs and len(progs) == 1 and progs[0][1] == "pam_vrf", (where, progs)
            rule_prog = progs[0][0]
            status = run(vmlib.PAM_VRF, "status").stdout
            assert f"mark {MARK:#x}" in status, status
        assert rule_prog not in loaded_before

        cgroups = {s.first["cgroup"]}
        for i in range(LOGINS - 1):
            if i < LOGINS - 2:      # cheap logins: where does the login shell land?
                cg = vmlib.ssh(u, "sed -n 's/^0:://p' /proc/$$/cgroup").stdout.strip()
            else:                   # the last one probes its sockets too
                probe = vmlib.probe(u)
                assert probe["sockets"]["tcp4"] == mgmt and probe["sockets"]["udp6"] == mgmt, probe
                cg = probe["cgroup"]
            assert re.match(rf"^/user\.slice/user-\d+\.slice/session-\d+\.scope/vrf/{VRF}$", cg), (i, cg)
            cgroups.add(cg)
            extra = set(vmlib.sock_programs()) - loaded_before
            assert extra <= {rule_prog}, f"login {i + 2}: more programs loaded for one rule: {extra}"
        assert len(cgroups) == LOGINS, "two logins shared a session cgroup"

        wait_until(f"logind to end the sessions of {u}", lambda: not vmlib.sessions_of(u), timeout=60)
        wait_until("the session scopes (and their VRF cgroups) to go",
                   lambda: not any(os.path.exists(mount + c) for c in cgroups), timeout=60)
        # The user's systemd manager carried the rule's program too (systemd-run
        # --user must not escape); logind stops it UserStopDelaySec (10 s) later.
        manager = re.sub(r"/session-\d+\.scope/vrf/.*$", "", s.first["cgroup"])
        manager = f"{mount}{manager}/user@{pwd.getpwnam(u).pw_uid}.service"
        wait_until(f"{u}'s systemd manager to stop", lambda: not os.path.exists(manager), timeout=60)
        assert vmlib.vrf_cgroups() == [], "VRF cgroups left under user.slice"
        assert vmlib.sock_create_attachments() == attached_before

        # One more login (another rule), kept open: by then the helper has had an
        # event to notice that the rule's sessions are gone.
        with vmlib.Session("op1") as s:
            assert s.first["cgroup"].endswith(f"/vrf/{VRF}"), s.first
            try:
                wait_until(f"the rule's program {rule_prog} to be released",
                           lambda: rule_prog not in vmlib.sock_programs(), timeout=15, interval=0.5)
            except AssertionError:
                stale = [p for p in state_entries() if not os.path.isdir(p)]
                raise AssertionError(
                    f"program {rule_prog} of the rule is still loaded after every session using it ended; "
                    f"the helper's state file {HELPER_STATE} still lists {len(stale)} cgroup(s) that no "
                    f"longer exist, e.g. {stale[:2]}") from None
            stale = [p for p in state_entries() if not os.path.isdir(p)]
            assert not stale, f"{HELPER_STATE} lists {len(stale)} cgroups that no longer exist: {stale[:2]}"
