"""The delegated-cgroup guard with systemd's own delegation, attacked
(tests/test_delegation_attacks.py on the host has the rest).

The owner of a cgroup may chmod it whatever its mode. The invoker's
systemd-run --user unit takes the write bits off its own cgroup and every
one above it up to user@UID.service (all the invoker's: Delegate=yes), then
runs the real su to a netops member: the helper sees nothing anyone but root
could write, and the session must still be placed outside the tree
(/user.slice/user-UID.slice/vrf/NAME), where the invoker, write bits back,
cannot move it.
"""

import json
import os
import pwd
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PY, VRF, q, run  # noqa: E402

pytestmark = vmlib.vm_only

SU = os.path.join(vmlib.HERE, "vm_su.py")
HOLD = os.path.join(vmlib.HERE, "vm_early_socket.py")


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def test_su_from_a_tree_its_owner_made_read_only_cannot_be_moved_out():
    out = f"/tmp/pvdelro-{vmlib.tag()}.json"
    with vmlib.user() as invoker, vmlib.user("netops") as target, vmlib.password(target) as secret:
        uid = pwd.getpwnam(invoker).pw_uid
        mount = vmlib.cgroup_mount()
        user_slice = f"{mount}/user.slice/user-{uid}.slice"
        manager = f"{user_slice}/user@{uid}.service"
        # As the invoker, in its unit: a-w on its cgroup and each above it, up to user@UID.service.
        read_only = (f'd={mount}$(sed -n "s/^0:://p" /proc/self/cgroup); '
                     f'while [ "$d" != {user_slice} ]; do '
                     f'chmod a-w "$d" "$d/cgroup.procs" "$d/cgroup.threads" || exit 1; d=$(dirname "$d"); done')
        su = f"{PY} {HOLD} {out} --then {out}.go"
        script = (f"systemd-run --user --quiet --collect /bin/sh -c "
                  f"{q(f'{read_only}; PVSU_PASSWORD={q(secret)} {PY} {SU} {target} {q(su)} > {out}.su')}; "
                  f"echo up; cat")
        try:
            with vmlib.Login(invoker, script) as login:
                assert login.readline() == "up"
                first = vmlib.wait_until(f"{out} (the su'd session's report)", lambda: read_json(out), timeout=90)
                modes = run("stat", "-c", "%A %n", manager, f"{manager}/cgroup.procs", check=False).stdout
                mine = f"{manager}/app.slice/pvmove-{vmlib.tag()}"      # a cgroup of the invoker's own
                moved = run("setpriv", "--reuid", str(uid), "--regid", str(uid), "--init-groups", "sh", "-c",
                            f"chmod u+w {manager}/app.slice {manager}/app.slice/cgroup.procs && mkdir {mine} "
                            f"&& echo {first['pid']} > {mine}/cgroup.procs", check=False)
                where = vmlib.cgroup_of(first["pid"])
                open(f"{out}.go", "w").close()
                second = vmlib.wait_until(f"{out}.2", lambda: read_json(f"{out}.2"), timeout=60)
        finally:
            run("sh", "-c", f"find {manager} -maxdepth 8 \\( -type d -o -name cgroup.procs -o -name "
                f"cgroup.threads \\) -exec chmod u+w {{}} +", check=False)
            for path in (out, f"{out}.go", f"{out}.2", f"{out}.su"):
                if os.path.exists(path):
                    os.unlink(path)
    assert "r-x" in modes.split()[0][1:4], f"the tree was not read-only while su ran: {modes}"
    assert first["udp4"] == {"dev": VRF}, first
    assert moved.returncode != 0 and "mkdir" not in moved.stderr, (
        f"{invoker} made its tree read-only, {target}'s su session was placed at {first['cgroup']}; "
        f"{invoker} chmod'ed it back and moved the session into a cgroup of its own: {moved}; now at "
        f"{where}, its next socket {second['udp4']}")
    assert second["udp4"] == {"dev": VRF} and where == first["cgroup"], (where, second)
    assert first["cgroup"] == f"/user.slice/user-{uid}.slice/vrf/{VRF}", first
