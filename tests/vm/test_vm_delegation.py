"""A session for another account is never placed in a cgroup tree its
invoker can write (issue 14, item 4), with systemd's own delegation.

systemd delegates user@UID.service to the user (Delegate=yes: the directory,
cgroup.procs, cgroup.threads and cgroup.subtree_control are the user's), and
cgroup v2 lets whoever can write a cgroup's cgroup.procs and a cgroup below
it move any process between them. `su other` run from there (a desktop
terminal runs below user@UID.service; logind 252 makes no session for it:
"Already running in a session or user slice"; logind 257 makes one,
session-cN.scope in the target's slice) was placed at <invoker's
cgroup>/vrf/NAME, and the invoker moved the other account's session out with
one write to cgroup.procs: its next socket was unbound.

An unplaced user (no rule: its manager is not bound) starts, through its own
systemd manager (systemd-run --user), the real su to a netops member on a
pseudo-terminal (vm_su.py); the su'd command reports its cgroup and a new
socket's device, waits, and reports again after the invoker tried to move
it into a cgroup of its own below its app.slice.
"""

import json
import os
import pwd
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PY, VRF, q, run  # noqa: E402

pytestmark = vmlib.vm_only

SU = os.path.join(vmlib.HERE, "vm_su.py")
HOLD = os.path.join(vmlib.HERE, "vm_early_socket.py")


def su_placed_at(invoker_uid, target_uid):
    """The cgroup (regex) the helper must place an su started below the
    invoker's user@UID.service at: outside the invoker's tree, root's. logind
    < 256 (Debian 12) makes no session there ("Already running in a session or
    user slice"): the invoker's user slice. logind 257 (Debian 13) gives su a
    session of the target's own (journal: "New session c1 of user TARGET"):
    that session's scope."""
    if vmlib.systemd_version() < 256:
        return rf"/user\.slice/user-{invoker_uid}\.slice/vrf/{VRF}"
    return rf"/user\.slice/user-{target_uid}\.slice/session-c\d+\.scope/vrf/{VRF}"


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def test_su_from_the_invokers_delegated_tree_cannot_be_moved_out():
    out = f"/tmp/pvdeleg-{vmlib.tag()}.json"
    with vmlib.user() as invoker, vmlib.user("netops") as target, vmlib.password(target) as secret:
        uid, target_uid = pwd.getpwnam(invoker).pw_uid, pwd.getpwnam(target).pw_uid
        su = f"{PY} {HOLD} {out} --then {out}.go"
        script = (f"systemd-run --user --quiet --collect /bin/sh -c "
                  f"{q(f'PVSU_PASSWORD={q(secret)} {PY} {SU} {target} {q(su)} > {out}.su')}; echo up; cat")
        try:
            with vmlib.Login(invoker, script) as login:
                assert login.readline() == "up"
                first = vmlib.wait_until(f"{out} (the su'd session's report)", lambda: read_json(out), timeout=90)
                manager = f"{vmlib.cgroup_mount()}/user.slice/user-{uid}.slice/user@{uid}.service"
                mine = f"{manager}/app.slice/pvmove-{vmlib.tag()}"      # a cgroup of the invoker's own
                moved = run("setpriv", "--reuid", str(uid), "--regid", str(uid), "--init-groups", "sh", "-c",
                            f"mkdir {mine} && echo {first['pid']} > {mine}/cgroup.procs", check=False)
                where = vmlib.cgroup_of(first["pid"])
                open(f"{out}.go", "w").close()
                second = vmlib.wait_until(f"{out}.2", lambda: read_json(f"{out}.2"), timeout=60)
        finally:
            for path in (out, f"{out}.go", f"{out}.2", f"{out}.su"):
                if os.path.exists(path):
                    os.unlink(path)
    assert first["udp4"] == {"dev": VRF}, first
    assert moved.returncode != 0 and "mkdir" not in moved.stderr, (
        f"{invoker} moved {target}'s su session (placed at {first['cgroup']}) into a cgroup of its own: "
        f"{moved}; now at {where}, its next socket {second['udp4']}")
    assert second["udp4"] == {"dev": VRF} and where == first["cgroup"], (where, second)
    assert re.fullmatch(su_placed_at(uid, target_uid), first["cgroup"]), first
