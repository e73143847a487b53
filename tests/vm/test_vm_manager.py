"""The user's systemd manager is bound before it starts (issue 14, item 3).

logind answers a login's CreateSession only after user@UID.service has
started, and systemd 252's user manager reports ready once basic.target
(sockets.target included) is reached; default.target's units start around
the same time and race with the login. Whatever the manager starts that
early (a user socket unit, a oneshot that keeps sockets) makes its sockets
before the login's own PAM session reaches the helper. A binding made at that
login comes too late for them: they stay unbound for ever, and the user can
pass them to confined processes. The helper therefore binds user@UID.service
at the manager's own PAM session (service systemd-user: its caller is the
process that becomes `systemd --user`, already in that cgroup), with the
first rule of the user that places (any service: the manager serves every
later session of the user).

A fresh netops member (its manager not running yet) with, in
~/.config/systemd/user, a socket unit (UDP, sockets.target) and a oneshot
with RemainAfterExit=yes in basic.target whose process opens UDP sockets and
keeps them (tests/vm/vm_early_socket.py); the rule is `@netops mgmt
services=sshd deny=inet6`. At its first ssh login both must be bound to mgmt
and IPv6 refused.
"""

import errno
import json
import os
import pwd
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PY, VRF, run  # noqa: E402

pytestmark = vmlib.vm_only

EARLY = os.path.join(vmlib.HERE, "vm_early_socket.py")
RULE = f"@netops {VRF} services=sshd deny=inet6"


def user_units(name, port):
    """The socket unit and the socket-keeping oneshot, enabled as `systemctl
    --user enable` would (the manager is not running to ask)."""
    entry = pwd.getpwnam(name)
    units = os.path.join(entry.pw_dir, ".config/systemd/user")
    files = {
        "pvearly.socket": f"[Socket]\nListenDatagram=0.0.0.0:{port}\n[Install]\nWantedBy=sockets.target\n",
        "pvearly.service": "[Service]\nExecStart=/bin/true\n",
        # In basic.target: done before the manager reports ready (deterministic;
        # one in default.target races with the login's own binding).
        "pvkeep.service": ("[Unit]\nDefaultDependencies=no\nBefore=basic.target\n"
                           "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                           f"ExecStart={PY} {EARLY} %h/early.json\n"
                           "[Install]\nWantedBy=basic.target\n"),
    }
    for wants in ("sockets.target.wants", "basic.target.wants"):
        os.makedirs(os.path.join(units, wants), exist_ok=True)
    for unit, text in files.items():
        with open(os.path.join(units, unit), "w") as f:
            f.write(text)
    os.symlink("../pvearly.socket", os.path.join(units, "sockets.target.wants/pvearly.socket"))
    os.symlink("../pvkeep.service", os.path.join(units, "basic.target.wants/pvkeep.service"))
    run("chown", "-R", f"{name}:", os.path.join(entry.pw_dir, ".config"))
    return os.path.join(entry.pw_dir, "early.json")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def early_sockets(name, report, port):
    """(the oneshot's report, the socket unit's `ss` line), once both are there."""
    early = json.loads(vmlib.wait_until(f"{report} (the oneshot's report)", lambda: read(report), timeout=90))
    listening = vmlib.wait_until(f"{name}'s socket unit on udp port {port}",
                                 lambda: run("ss", "-Hlnu", f"sport = :{port}").stdout.strip())
    return early, listening


def assert_bound(name, uid, early, listening, mark, where, when):
    assert f"/user@{uid}.service/" in early["cgroup"], early
    assert early["udp4"] == {"dev": VRF} and early["udp6"] == {"errno": errno.EPERM}, (
        f"a oneshot that {name}'s systemd manager started with it, {when}, keeps sockets "
        f"{early}: not bound to {VRF} (rule {where[RULE]})")
    assert f"%{VRF}:" in listening, (
        f"the socket unit {name}'s systemd manager listens on is not bound to {VRF}: {listening!r}")
    messages = [str(e.get("MESSAGE")) for e in vmlib.journal(mark, SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)]
    assert any("(service systemd-user)" in m and f"user@{uid}.service" in m
               and where[RULE] in m for m in messages), messages


def test_what_the_manager_starts_with_it_is_bound_at_the_first_login():
    port = random.randrange(40000, 50000)
    with vmlib.user("netops") as name, vmlib.vrf_conf(RULE) as where:
        uid = pwd.getpwnam(name).pw_uid
        report = user_units(name, port)
        state = run("systemctl", "is-active", f"user@{uid}.service", check=False).stdout.strip()
        assert state != "active", f"{name}'s manager runs before its first login"
        mark = vmlib.journal_mark()
        with vmlib.Login(name, "echo up; cat") as login:
            assert login.readline() == "up"
            early, listening = early_sockets(name, report, port)
        assert_bound(name, uid, early, listening, mark, where, "before the first login returned")


def test_a_lingering_users_manager_is_bound_without_any_login():
    """`loginctl enable-linger`: the manager (and what it starts) runs with no
    login at all, at boot or now; no login's binding ever comes."""
    port = random.randrange(40000, 50000)
    with vmlib.user("netops") as name, vmlib.vrf_conf(RULE) as where:
        uid = pwd.getpwnam(name).pw_uid
        report = user_units(name, port)
        vmlib.logind_forgot(uid)
        mark = vmlib.journal_mark()
        run("loginctl", "enable-linger", name)
        try:
            early, listening = early_sockets(name, report, port)
        finally:
            run("loginctl", "disable-linger", name, check=False)
        assert vmlib.sessions_of(name) == []
        assert_bound(name, uid, early, listening, mark, where, "lingering, without a login")
