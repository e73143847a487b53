"""Issue 14 item 5: `sudo -u $USER` from a confined session keeps its placement.

The issue read "sudo calls setuid(0) before pam_open_session" from sudo's
source; measured, sudo 1.9.13p3 (Debian 12) and 1.9.16p2 (Debian 13) and
util-linux su open the session with the invoker's real uid (effective 0), so
the helper's "session for oneself" test (real uid == the account's) holds
for them: the first test keeps that so, with real sudo (its own PAM service
through `Defaults pam_service=`, a throwaway sudoers.d file), pam_vrf.so, the
real helper and a veth `plain` target. For a client that does set its real
uid to 0 first, PAM_RUSER (set by su and sudo to the invoking user) names the
invoker: pam_vrf.so sends it, and the helper uses it when the real uid is 0
(the second test: it failed before, the sudo stack's `default` rule applied).

A root daemon (sshd, cron) sets no PAM_RUSER: its sessions get the account's
rule even from inside a VRF, and so does one whose audit loginuid names the
account (pam_loginuid sets it in the daemon's own stack before pam_vrf runs;
an unset loginuid can be set by the process itself, as here).
`sudo -u root` (`sudo -s`) opens root's session: root's rule applies.
"""

import json
import os
import subprocess
import textwrap

import pytest

from testlab.run import PY, sh, spawn, uid_tag
from test_pam_module import OPEN_SESSION, SYSTEM_PATH, module, pam_service  # noqa: F401 (fixtures)

pytestmark = pytest.mark.root


REPORT = textwrap.dedent("""
    import json, socket
    s = socket.socket()
    dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\\0").decode()
    try:
        socket.socket(socket.AF_INET6).close()
        inet6 = "ok"
    except PermissionError:
        inet6 = "EPERM"
    print(json.dumps({"dev": dev, "inet6": inet6, "cgroup": open("/proc/self/cgroup").read().strip()}))
""")

# Opens a PAM session (the login: placed), then runs each command from inside it.
DRIVER = OPEN_SESSION + textwrap.dedent("""
    import os, subprocess
    uid, gid, commands = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    assert rc == 0
    results = {"login": open("/proc/self/cgroup").read().strip()}
    for name, argv, as_user, loginuid in json.loads(commands):
        def prepare():
            if loginuid is not None:
                with open("/proc/self/loginuid", "w") as f:
                    f.write(str(loginuid))
            if as_user:
                os.setgroups([gid]); os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid)
        p = subprocess.run(argv, preexec_fn=prepare, capture_output=True, text=True, cwd="/",
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=120)
        results[name] = {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
    results["after"] = open("/proc/self/cgroup").read().strip()
    print(json.dumps(results))
""")


@pytest.fixture
def sudo_lab(netns, sandbox_cgroup, syslog, vrf_conf, throwaway_user, helper_factory, pam_service):
    if not os.path.exists("/usr/bin/sudo"):
        pytest.fail("sudo is not installed: run `sh tools/install-deps test`")
    tag = uid_tag()
    ns = netns("s")
    target = f"vs{tag}"
    sh("ip", "-n", ns, "link", "add", target, "type", "veth", "peer", "name", f"vp{tag}")
    sh("ip", "-n", ns, "link", "set", target, "up")
    me, other = throwaway_user(), throwaway_user()
    # pam_service makes each stack; the helper's socket is known only once it runs.
    config = vrf_conf("")
    helper = helper_factory(config, netns=ns, syslog=syslog)
    login = pam_service(f"config={config} socket={helper.socket} debug")
    sudo = pam_service(f"config={config} socket={helper.socket} debug")
    vrf_conf(f"{me.pw_name}   {target}  plain deny=inet6 services={login}\n"
             f"{me.pw_name}   default   services={sudo}\n"
             f"{other.pw_name}  default\n"
             f"root  default   services={sudo}\n", path=config)
    sudoers = f"/etc/sudoers.d/pvt{tag}"
    with open(sudoers, "w") as f:
        f.write(f"Defaults:{me.pw_name} pam_service={sudo}, !lecture\n"
                f"{me.pw_name} ALL=({me.pw_name},root) NOPASSWD: ALL\n")
    os.chmod(sudoers, 0o440)
    try:
        yield dict(ns=ns, target=target, me=me, other=other, login=login, sudo=sudo, sandbox=sandbox_cgroup,
                   config=config, helper=helper)
    finally:
        os.unlink(sudoers)


def drive(lab, syslog, commands):
    me = lab["me"]
    argv = syslog.wrap([PY, "-c", DRIVER, lab["login"], me.pw_name, str(me.pw_uid), str(me.pw_gid),
                        json.dumps(commands)])
    proc = spawn(argv, netns=lab["ns"], cgroup_dir=lab["sandbox"], env={"PATH": SYSTEM_PATH}, cwd="/",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out)


def report(result):
    assert result["rc"] == 0, result
    return json.loads(result["out"].strip().splitlines()[-1])


def test_sudo_to_oneself_from_a_confined_session_keeps_its_placement(sudo_lab, syslog):
    lab, me = sudo_lab, sudo_lab["me"]
    mark = syslog.mark()
    got = drive(lab, syslog, [
        ("self", ["sudo", "-n", "-u", me.pw_name, PY, "-c", REPORT], True, None),
        ("root", ["sudo", "-n", "-u", "root", PY, "-c", REPORT], True, None),
    ])
    assert got["login"].endswith(f"/vrf/{lab['target']}"), got
    confined = report(got["self"])
    # Before: sudo's rule (`default`) applied, the command ran unbound with IPv6 allowed.
    assert confined["dev"] == lab["target"] and confined["inet6"] == "EPERM", (confined, got["self"])
    assert confined["cgroup"] == got["login"], confined
    syslog.wait_for([f"pam_vrf({lab['sudo']}:session): user {me.pw_name} (service {lab['sudo']}) kept in VRF "
                     f"{lab['target']}"], mark)
    # Debian 12's sudo (1.9.13p3) opens the session with the invoker's real uid (measured: Uid 991 0 0 0):
    # the real uid tells; where a sudo has set it to 0 first, PAM_RUSER does (next test).
    syslog.wait_for(["pam-vrf-helper[", f"user {me.pw_name} (service {lab['sudo']})",
                     "for its own account, keeps its placement"], mark)
    # sudo -u root (sudo -s): root's session, root's rule (`default` here; `root -` would leave it in place).
    as_root = report(got["root"])
    assert as_root["dev"] == "" and as_root["inet6"] == "ok", as_root
    syslog.wait_for([f"pam_vrf({lab['sudo']}:session): user root (service {lab['sudo']}) placed in VRF default"],
                    mark)
    assert got["after"] == got["login"], got


def test_only_the_invokers_real_uid_makes_a_session_ones_own(sudo_lab, syslog):
    """pamtester as root from inside the confined session, on the sudo stack:
    a caller whose real uid is 0 never opens a session for oneself, whatever
    PAM_RUSER says (a root daemon may take it from the network: rshd and
    rlogind set the name the remote client claims) and whatever the
    loginuid; it gets the rule. (Real su and sudo keep the invoker's real
    uid: test_sudo_to_oneself_keeps_the_placement.)"""
    lab, me, other = sudo_lab, sudo_lab["me"], sudo_lab["other"]

    def pamtester(*items):
        return ["pamtester", "-v", *[a for i in items for a in ("-I", i)], lab["sudo"], me.pw_name,
                "open_session", "close_session"]

    mark = syslog.mark()
    got = drive(lab, syslog, [
        ("ruser", pamtester(f"ruser={me.pw_name}"), False, None),
        ("daemon", pamtester(), False, None),
        ("loginuid", pamtester(), False, me.pw_uid),
        ("other", pamtester(f"ruser={other.pw_name}"), False, None),
        ("root", pamtester("ruser=root"), False, None),
    ])
    for name in ("ruser", "daemon", "loginuid", "other", "root"):
        assert got[name]["rc"] == 0 and "successfully opened a session" in got[name]["out"], (name, got[name])
    lines = [line for line in syslog.since(mark) if f"pam_vrf({lab['sudo']}:session): user {me.pw_name}" in line]
    verdicts = [("kept" if " kept in VRF " in line else "placed default" if " placed in VRF default" in line
                 else line) for line in lines]
    assert verdicts == ["placed default"] * 5, lines
