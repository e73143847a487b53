"""Real ssh logins on the test VM (real VRF, systemd 252, logind, sshd with
pam_vrf.so after pam_systemd through the pam-auth-update profile, the helper
under its systemd units):

- a netops member's session lands in <session-N.scope>/vrf/mgmt, stays a
  logind session (loginctl sees it and terminate-session ends all of it, the
  VRF cgroup included), `ip vrf identify $$` says mgmt, and every new TCP/UDP
  socket, IPv4 and IPv6, is bound to mgmt;
- traffic: from that session 10.99.0.2 / fd00:99::2 is the peer behind the
  VRF (mgmt-peer); from a user the policy leaves alone it is prod-peer;
- the helper decides and places (its syslog line names user, service, VRF,
  rule FILE:LINE, cgroup and the PAM caller's pid: the session leader); it
  runs as its own user with ambient capabilities only, and it is what loaded
  and attached the session's program.

Runs only on the test VM (vagrant/provision.sh); see tests/vm/test_smoke.py.
"""

import json
import os
import pwd
import re
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import SOCKETS, VRF, ifindex, peers, run, wait_until  # noqa: E402,F401 (peers: a fixture)

pytestmark = vmlib.vm_only

MEMBER, OTHER = "op1", "op2"       # provisioned: op1 in netops (`@netops mgmt`), op2 in no rule






def scope_re(user):
    uid = pwd.getpwnam(user).pw_uid
    return re.compile(rf"^/user\.slice/user-{uid}\.slice/session-(\d+)\.scope/vrf/{VRF}$")


def assert_bound_to_mgmt(sockets):
    index = ifindex(VRF)
    for kind in SOCKETS:
        assert sockets[kind] == {"dev": VRF, "ifindex": index}, (kind, sockets)


def test_netops_login_lands_in_mgmt_inside_its_logind_session():
    mark = vmlib.journal_mark()
    # The login shell also leaves a detached process behind in the VRF cgroup.
    with vmlib.Session(MEMBER, setup="setsid sleep 600 </dev/null >/dev/null 2>&1 &") as s:
        probe = s.first
        m = scope_re(MEMBER).match(probe["cgroup"])
        assert m, f"probe cgroup {probe['cgroup']!r} is not <session-N.scope>/vrf/{VRF}"
        session = m.group(1)
        assert s.identify == VRF, "ip vrf identify $$ in the login shell"
        assert vmlib.cgroup_of(s.shell) == probe["cgroup"]
        assert_bound_to_mgmt(probe["sockets"])

        # The helper moved the PAM caller (sshd's session process, logind's leader) itself.
        leader = int(run("loginctl", "show-session", session, "-p", "Leader", "--value").stdout)
        assert vmlib.cgroup_of(leader) == probe["cgroup"], "the session leader (PAM caller) is not placed"
        entry = vmlib.wait_journal(mark, [f"user {MEMBER} (service sshd) placed in VRF {VRF} (rule "
                                          f"{vmlib.VRF_CONF}:", f", cgroup {probe['cgroup']}, pid {leader}"],
                                   SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)
        assert entry["SYSLOG_FACILITY"] == "10" and entry["PRIORITY"] == "6", entry     # authpriv.info
        assert int(entry["_PID"]) == vmlib.helper_pid(), entry

        # Still a logind session, and logind still knows its scope.
        assert session in vmlib.sessions_of(MEMBER)
        assert run("loginctl", "show-session", session, "-p", "Scope", "--value").stdout.strip() \
            == f"session-{session}.scope"
        assert run("loginctl", "show-session", session, "-p", "State", "--value").stdout.strip() == "active"

        # Both tools agree on who is in the VRF.
        scope_dir = os.path.join(vmlib.cgroup_mount(), probe["cgroup"].lstrip("/")).rsplit("/vrf/", 1)[0]
        in_vrf = vmlib.procs(os.path.join(scope_dir, "vrf", VRF))
        sleepers = {p for p in in_vrf if vmlib.comm(p) == "sleep"}
        assert len(sleepers) == 1, f"the detached sleep is not in the VRF cgroup: {in_vrf}"
        assert {leader, s.shell, probe["pid"]} <= in_vrf
        listed = {int(line.split()[0]) for line in run("ip", "vrf", "pids", VRF).stdout.splitlines() if line.strip()}
        assert in_vrf <= listed, f"ip vrf pids {VRF}: {listed}, cgroup: {in_vrf}"
        listed = {int(line.split()[0]) for line in run(vmlib.PAM_VRF, "pids", VRF).stdout.splitlines() if line.strip()}
        assert in_vrf <= listed, f"pam-vrf pids {VRF}: {listed}, cgroup: {in_vrf}"
        assert run(vmlib.PAM_VRF, "identify", str(s.shell)).stdout.strip() == VRF

        # loginctl terminate-session ends every process of it, the VRF cgroup's too.
        everyone = set()
        for here, _, _ in os.walk(scope_dir):
            everyone |= vmlib.procs(here)
        assert in_vrf <= everyone
        run("loginctl", "terminate-session", session)
        s.proc.wait(timeout=60)
        wait_until(f"the processes of session {session} to end",
                   lambda: not [p for p in everyone if os.path.exists(f"/proc/{p}")], timeout=30)
        wait_until(f"logind to remove session-{session}.scope", lambda: not os.path.exists(scope_dir), timeout=30)
        wait_until(f"loginctl to forget session {session}", lambda: session not in vmlib.sessions_of(MEMBER))


def test_traffic_from_a_netops_session_goes_through_mgmt(peers):
    probe = vmlib.probe(MEMBER, "--traffic")
    assert scope_re(MEMBER).match(probe["cgroup"]), probe
    assert_bound_to_mgmt(probe["sockets"])
    # mgmt-peer is reachable only through the VRF: without it, 10.99.0.2 is prod-peer.
    assert probe["peers"] == {kind: "mgmt-peer" for kind in SOCKETS}, probe["peers"]


def test_traffic_from_a_user_without_rule_stays_in_the_default_vrf(peers):
    probe = vmlib.probe(OTHER, "--traffic")
    assert re.match(r"^/user\.slice/user-\d+\.slice/session-\d+\.scope$", probe["cgroup"]), probe
    assert probe["identify"] == ""
    for kind in SOCKETS:
        assert probe["sockets"][kind] == {"dev": "", "ifindex": 0}, probe["sockets"]
    assert probe["peers"] == {kind: "prod-peer" for kind in SOCKETS}, probe["peers"]


def status_fields(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_helper_is_unprivileged_with_ambient_capabilities_only_and_does_the_attach():
    vmlib.helper_up()
    pid = vmlib.helper_pid()
    assert pid > 0, "pam-vrf-helper.service has no main process"
    account = pwd.getpwnam("pam-vrf")
    assert account.pw_uid != 0
    st = status_fields(pid)
    assert st["Uid"].split() == [str(account.pw_uid)] * 4, st["Uid"]     # real, effective, saved, fs
    assert st["Gid"].split() == [str(account.pw_gid)] * 4, st["Gid"]
    wanted = (1 << vmlib.CAP_BPF) | (1 << vmlib.CAP_NET_ADMIN) | (1 << vmlib.CAP_DAC_OVERRIDE)
    caps = {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    for k in ("CapAmb", "CapEff", "CapPrm", "CapBnd"):
        assert caps[k] == wanted, f"{k} = {caps[k]:#018x}, expected exactly CAP_BPF|CAP_NET_ADMIN|CAP_DAC_OVERRIDE"
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2", "SystemCallFilter= is not in force"
    # No setuid anywhere in what pam-vrf installs.
    for path in (vmlib.PAM_VRF, vmlib.PAM_VRF_HELPER, vmlib.PAM_PYTHON_ENTRY,
                 vmlib.PAM_MODULE):
        assert not os.stat(path).st_mode & 0o6000, f"{path} is setuid/setgid"
    # Its sockets: root.sock (the PAM entries) for root only, helper.sock for everyone.
    for path, mode in ((vmlib.HELPER_ROOT_SOCKET, 0o600), (vmlib.HELPER_SOCKET, 0o666)):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == mode and st.st_uid == 0, \
            f"{path}: mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}"

    # It works: a login is placed through it; the program is loaded by the
    # helper's uid and attached (flags 0, as ip vrf exec does) to the session's cgroup.
    mark = vmlib.journal_mark()
    with vmlib.Session(MEMBER) as s:
        where = os.path.join(vmlib.cgroup_mount(), s.first["cgroup"].lstrip("/"))
        vmlib.wait_journal(mark, [f"user {MEMBER} (service sshd) placed in VRF {VRF}", s.first["cgroup"]],
                           _PID=pid)
        attached = vmlib.sock_create_attachments().get(where)
        assert attached and len(attached) == 1 and attached[0][1:] == ("pam_vrf", ""), (where, attached)
        prog_id = attached[0][0]
        progs = {p["id"]: p for p in json.loads(run("bpftool", "-j", "prog", "show").stdout)}
        assert progs[prog_id]["type"] == "cgroup_sock"
        assert progs[prog_id]["uid"] == account.pw_uid, "the program was not loaded by the helper's user"
    assert vmlib.helper_pid() == pid, "the helper restarted during the login"
