"""The delegated-cgroup guard with systemd's own delegation, attacked
(tests/test_delegation_attacks.py on the host has the rest).

The owner of a cgroup may chmod it whatever its mode. The invoker's
systemd-run --user unit takes the write bits off its own cgroup and every
one above it up to user@UID.service (all the invoker's: Delegate=yes), then
runs the real su to a netops member: the helper sees nothing anyone but root
could write, and the session must still be placed outside the tree
(/user.slice/user-UID.slice/vrf/NAME; on logind 257 the su session's own
scope in the target's slice), where the invoker, write bits back, cannot
move it.

The manager-to-be (root's process in user@UID.service, before its
systemd-user PAM session) is the user's to move as soon as systemd starts the
unit: a process of the user's that watches moves it one level down, the
helper binds nothing, and what the manager starts in basic.target keeps
unbound sockets (won on the first attempt here, systemd 252 under TCG).
"""

import json
import os
import pwd
import random
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PY, VRF, q, run  # noqa: E402

pytestmark = vmlib.vm_only

from test_vm_manager import read, user_units  # noqa: E402
from test_vm_delegation import HOLD, SU, read_json, su_placed_at  # noqa: E402,F401


def test_su_from_a_tree_its_owner_made_read_only_cannot_be_moved_out():
    out = f"/tmp/pvdelro-{vmlib.tag()}.json"
    with vmlib.user() as invoker, vmlib.user("netops") as target, vmlib.password(target) as secret:
        uid, target_uid = pwd.getpwnam(invoker).pw_uid, pwd.getpwnam(target).pw_uid
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
    assert re.fullmatch(su_placed_at(uid, target_uid), first["cgroup"]), first


# -- the manager-to-be, moved down before its PAM session ------------------------------

# As the user (any process of its own that runs while the manager does not:
# a cron job, another session): as soon as user@UID.service exists (it is the
# user's from then on, Delegate=yes), move whatever is in it into a cgroup of
# its own below it; the first process there is the manager-to-be, root's,
# before its systemd-user PAM session. argv: the directory, a log file.
WATCH = r"""
import os, sys, time
d, log = sys.argv[1], sys.argv[2]
seen = set()
while True:
    pids = []
    for where in (d, d + "/init.scope"):        # systemd >= 256 (DelegateSubgroup): init.scope
        try:
            with open(where + "/cgroup.procs") as f:
                pids += f.read().split()
        except OSError:
            pass
    if not pids:
        os.sched_yield()
        continue
    for pid in pids:
        if pid in seen:
            continue
        try:
            os.makedirs(d + "/x", exist_ok=True)
            with open(d + "/x/cgroup.procs", "w") as f:
                f.write(pid)
        except OSError:
            continue
        seen.add(pid)
        with open(log, "a") as f:
            f.write(f"{pid} {time.monotonic()}\n")
"""


def test_the_manager_to_be_moved_below_user_at_uid_service_is_still_bound():
    """A netops member's manager is started (root: systemctl start
    user@UID.service, what a login or lingering does) while a process of the
    user's watches: it moves the manager-to-be below user@UID.service. The
    oneshot the manager starts in basic.target (it keeps its sockets) must be
    bound in every attempt; the user wins the race in some.

    The uid must be one logind has forgotten: logind 257 (Debian 13) gives
    the manager a session of its own (class manager), and with a record of a
    deleted user left for a reused uid it files that session under the old
    name, removes it at once and tries to stop the user's units (journal:
    "New session 30 of user <old name>", "Transaction for
    user-runtime-dir@UID.service/stop is destructive", "Removed session 30"):
    the start job never finished."""
    port = random.randrange(40000, 50000)
    rule = f"@netops {VRF} services=sshd deny=inet6"
    with vmlib.user("netops") as name, vmlib.vrf_conf(rule):
        entry = pwd.getpwnam(name)
        report = user_units(name, port)
        manager = f"{vmlib.cgroup_mount()}/user.slice/user-{entry.pw_uid}.slice/user@{entry.pw_uid}.service"
        log = f"/tmp/pvwatch-{vmlib.tag()}"
        watcher = subprocess.Popen(["setpriv", "--reuid", str(entry.pw_uid), "--regid", str(entry.pw_gid),
                                    "--init-groups", PY, "-c", WATCH, manager, log])
        outcomes = []
        vmlib.logind_forgot(entry.pw_uid)
        try:
            for attempt in range(6):
                mark = vmlib.journal_mark()
                run("systemctl", "start", f"user@{entry.pw_uid}.service")
                early = json.loads(vmlib.wait_until(f"{report} (the oneshot's report)", lambda: read(report),
                                                    timeout=90))
                verdicts = [str(e.get("MESSAGE")) for e in vmlib.journal(mark, SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)
                            if "(service systemd-user)" in str(e.get("MESSAGE"))]
                outcomes.append((early["cgroup"], early["udp4"], verdicts))
                run("systemctl", "stop", f"user@{entry.pw_uid}.service", check=False)
                os.unlink(report)
                if early["udp4"] != {"dev": VRF}:
                    break
        finally:
            watcher.kill()
            watcher.wait()
            moved = read(log) or ""
            if os.path.exists(log):
                os.unlink(log)
    assert all(udp4 == {"dev": VRF} for _, udp4, _ in outcomes), (
        f"{name} moved its manager-to-be below user@UID.service ({len(moved.split())//2} moves); "
        f"the oneshot its manager started: {outcomes}")
