"""Logins for real: sshd with its own PAM service and the installed pam_python
hook, pamtester, pamela and python-pam through pam_exec, the helper running
as a non-root user with ambient capabilities only.

Lab: a network namespace with a veth target (`plain`: this kernel has no
VRF driver). sshd listens on 127.0.0.1 inside it, started under the name
sshd-pvt<tag> so it reads /etc/pam.d/sshd-pvt<tag>, never the host's stack.
"""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time

import pytest

from testlab import progs
from testlab.cgroups import remove_cgroup_tree
from testlab.net import add_veth
from testlab.pam import HOOK, write_pam_service
from testlab.run import PY, REPO, public_dir, sh, spawn, uid_tag, write_file
from testlab.sshd import Sshd
from testlab.users import add_group, remove_group
from pam_vrf import cgroup, programs
from pam_vrf.bpf import cgroup_link

pytestmark = pytest.mark.root


PAM_VRF = "/usr/local/bin/pam-vrf"
PORT = 2222

PROBE = progs.source("login_probe")


class Lab:
    """netns + veth target + helper + sshd with the pam-vrf hook."""

    def __init__(self, netns, sandbox, syslog, vrf_conf, throwaway_user):
        self.tag = uid_tag()
        self.sshd, self.pam_files, self.groups = None, [], []
        self.service = f"sshd-pvt{self.tag}"
        self.dir = public_dir("pam-vrf-lab-")
        self.ns = netns("s")
        self.target = f"vt{self.tag}"
        add_veth(self.ns, self.target, f"vp{self.tag}")
        self.syslog, self.sandbox, self.make_user, self.vrf_conf = syslog, sandbox, throwaway_user, vrf_conf
        self.group = f"pvg{self.tag}"
        self.strict_group = f"pvs{self.tag}"
        self.exec_group = f"pve{self.tag}"
        for g in (self.group, self.strict_group, self.exec_group):
            self.groups.append(add_group(g))
        self.config = vrf_conf(self.policy())

    def start(self, helper_factory):
        self.helper = helper_factory(self.config, netns=self.ns, syslog=self.syslog)
        write_file(os.path.join(self.dir, "probe.py"), PROBE)
        self.pam_service(self.service, self.hook_line())
        self.sshd = Sshd(self.dir, self.service, PORT, netns=self.ns)
        self.sshd.start(cgroup_dir=self.sandbox, wrap=self.syslog.wrap)

    def policy(self, extra=""):
        return textwrap.dedent(f"""\
            # test policy
            {extra}
            @{self.group}         {self.target}  plain services={self.service},pvt-exec{self.tag},pvt-pp{self.tag}
            @{self.strict_group}  {self.target}  plain deny=inet6 strict exec={self.target}
            @{self.exec_group}    default        exec={self.target} plain
            *                     -
        """)

    def set_policy(self, text):
        self.vrf_conf(text, path=self.config)

    def pam_service(self, name, session_line):
        self.pam_files.append(write_pam_service(name, session_line))

    def hook_line(self, extra=""):
        return (f"session [success=ok session_err=bad default=ignore] pam_python.so {HOOK} "
                f"config={self.config} socket={self.helper.socket} debug {extra}")

    def user(self, *groups):
        user = self.make_user(groups)
        self.sshd.authorize(user.pw_name)
        return user

    def sshd_output(self):
        return self.sshd.output()

    def ssh_argv(self, user, command):
        return self.sshd.ssh_argv(user.pw_name, command)

    def ssh(self, user, command, check=True):
        proc = subprocess.run(self.ssh_argv(user, command), capture_output=True, text=True, timeout=60)
        if check:
            assert proc.returncode == 0, f"ssh failed {proc.returncode}: {proc.stderr}\n{self.sshd_output()[-3000:]}"
        return proc

    def probe(self, user, check=True):
        """Log in over ssh; the shell reports `ip vrf identify $$`, then the probe runs."""
        proc = self.ssh(user, f'echo "identify=$(ip vrf identify $$)"; {PY} {self.dir}/probe.py', check)
        if proc.returncode != 0:
            return proc
        first, second = proc.stdout.strip().splitlines()[-2:]
        result = json.loads(second)
        result["identify"] = first.split("=", 1)[1]
        return result

    def vrf_dir(self):
        return f"{self.sandbox}/{self.ns}-ns/vrf/{self.target}"

    def close(self):
        if self.sshd:
            self.sshd.stop()
        for path in self.pam_files:
            os.unlink(path)
        # pamtester runs in the test's own cgroup: its placements land in
        # <that cgroup>/<netns>-ns/vrf/..., outside the sandbox.
        remove_cgroup_tree(os.path.join(cgroup.fs_path(cgroup.base_of(cgroup.cgroup_of())), f"{self.ns}-ns"))
        for g in self.groups:
            remove_group(g)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def lab(netns, sandbox_cgroup, helper_factory, syslog, vrf_conf, throwaway_user):
    lab = Lab(netns, sandbox_cgroup, syslog, vrf_conf, throwaway_user)
    try:
        lab.start(helper_factory)
        yield lab
    finally:
        lab.close()


def assert_placed(result, lab, inet6="target"):
    assert result["cgroup"].endswith(f"/{lab.ns}-ns/vrf/{lab.target}"), result
    assert result["identify"] == lab.target, result
    assert result["tcp4"] == result["udp4"] == lab.target, result
    if inet6 == "target":
        assert result["tcp6"] == result["udp6"] == lab.target, result
    else:
        assert result["tcp6"] == result["udp6"] == inet6, result


def assert_unplaced(result, lab):
    assert "/vrf/" not in result["cgroup"], result
    assert result["identify"] == "", result
    assert result["tcp4"] == result["udp4"] == result["tcp6"] == result["udp6"] == "", result


def test_ssh_login_of_a_group_member_lands_in_the_vrf(lab):
    member = lab.user(lab.group)
    mark = lab.syslog.mark()
    result = lab.probe(member)
    assert_placed(result, lab)
    line = lab.syslog.wait_for([f"user {member.pw_name} (service {lab.service}) placed in VRF {lab.target}"], mark)
    assert line.startswith(f"<{10 * 8 + 6}>"), line        # authpriv.info
    # The cgroup carries exactly our program, bound to the target.
    attached = cgroup_link.query(lab.vrf_dir())
    assert len(attached) == 1
    assert programs.read_back(attached[0].prog_id)[1].ifindex == json.loads(
        sh("ip", "-n", lab.ns, "-j", "link", "show", "dev", lab.target).stdout)[0]["ifindex"]


def test_unmapped_user_is_untouched(lab):
    stranger = lab.user()
    mark = lab.syslog.mark()
    assert_unplaced(lab.probe(stranger), lab)
    lab.syslog.wait_for([f"user {stranger.pw_name}", "left alone"], mark)


def test_deny_inet6_rule_refuses_ipv6_sockets(lab):
    restricted = lab.user(lab.strict_group)
    assert_placed(lab.probe(restricted), lab, inet6="errno:1")      # EPERM


def test_services_rule_applies_to_sshd_only(lab):
    member = lab.user(lab.group)
    other = f"pvt-other{lab.tag}"
    lab.pam_service(other, lab.hook_line())
    mark = lab.syslog.mark()
    proc = sh(*lab.syslog.wrap(["pamtester", "-v", other, member.pw_name, "open_session", "close_session"]))
    assert "successfully opened a session" in proc.stderr + proc.stdout
    lab.syslog.wait_for([f"user {member.pw_name} (service {other}) left alone"], mark)
    # ... while the same user through the sshd service is placed (pamtester drives the pam_python stack).
    mark = lab.syslog.mark()
    sh("nsenter", f"--net=/run/netns/{lab.ns}",
       *lab.syslog.wrap(["pamtester", lab.service, member.pw_name, "open_session"]))
    lab.syslog.wait_for([f"user {member.pw_name} (service {lab.service}) placed in VRF {lab.target}"], mark)


PAM_DRIVER = progs.source("pam_driver")


@pytest.mark.parametrize("library", ["pamela", "python-pam"])
def test_c_module_driven_from_python(lab, library):
    """pam_vrf.so holds no interpreter, so Python programs can drive its stack
    (a Python process that loads pam_python.so crashes)."""
    member = lab.user(lab.group)
    service = f"pvt-{'exec' if library == 'pamela' else 'pp'}{lab.tag}"
    lab.pam_service(service, f"session [success=ok session_err=bad default=ignore] pam_vrf.so "
                             f"config={lab.config} socket={lab.helper.socket} debug")
    mark = lab.syslog.mark()
    argv = lab.syslog.wrap([PY, "-c", PAM_DRIVER, library, member.pw_name, service])
    got = json.loads(sh("nsenter", f"--net=/run/netns/{lab.ns}", *argv, cwd="/").stdout)
    assert got["code"] == 0
    assert got["cgroup"].endswith(f"/{lab.ns}-ns/vrf/{lab.target}"), got
    assert got["dev"] == lab.target
    lab.syslog.wait_for([f"(service {service}) placed in VRF {lab.target}"], mark)


def test_helper_stopped_non_strict_proceeds_unplaced_strict_refuses(lab):
    member, restricted = lab.user(lab.group), lab.user(lab.strict_group)
    lab.helper.stop()
    mark = lab.syslog.mark()
    assert_unplaced(lab.probe(member), lab)
    lab.syslog.wait_for([f"user {member.pw_name}", "left unplaced", "helper not running"], mark)

    proc = lab.probe(restricted, check=False)
    assert isinstance(proc, subprocess.CompletedProcess) and proc.returncode != 0
    lab.syslog.wait_for([f"refusing session of user {restricted.pw_name}", "helper not running", "strict"], mark)

    lab.helper.start()
    assert_placed(lab.probe(restricted), lab, inet6="errno:1")


def test_broken_config_keeps_the_last_good_policy(lab):
    """A broken edit while the helper runs: the policy read before stays in force."""
    member = lab.user(lab.group)
    assert_placed(lab.probe(member), lab)
    lab.set_policy(lab.policy() + "@oops\n")
    lines = open(lab.config).read().count("\n")
    mark = lab.syslog.mark()
    assert_placed(lab.probe(member), lab)
    lab.syslog.wait_for([f"{lab.config}:{lines}:", "has no target", "keeping the policy read before"], mark)


def test_broken_config_at_helper_start_logs_file_and_line_and_lets_the_login_through(lab):
    member = lab.user(lab.group)
    lab.helper.stop()
    lab.set_policy(lab.policy() + "@oops\n")
    lines = open(lab.config).read().count("\n")
    lab.helper.start()
    mark = lab.syslog.mark()
    assert_unplaced(lab.probe(member), lab)
    lab.syslog.wait_for([f"{lab.config}:{lines}:", "has no target", "left unplaced"], mark)


def test_a_stopped_helper_is_waited_for(lab):
    """SIGSTOP for a few seconds: the login waits and is placed (load alone
    never leaves a session unplaced)."""
    member = lab.user(lab.group)
    os.kill(lab.helper.proc.pid, signal.SIGSTOP)
    try:
        session = subprocess.Popen(lab.ssh_argv(member, f"{PY} {lab.dir}/probe.py"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert session.poll() is None          # still waiting for the helper
    finally:
        os.kill(lab.helper.proc.pid, signal.SIGCONT)
    out, err = session.communicate(timeout=60)
    assert session.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["cgroup"].endswith(f"/vrf/{lab.target}") and result["tcp4"] == lab.target, result


def test_twenty_logins_are_all_placed_while_a_user_floods_the_helper(lab):
    """32 processes of one unprivileged user: connect/close churn, held-open
    connections, garbage and policy-heavy exec requests against a 10 000-line
    vrf.conf. Every ssh login is still placed."""
    flooder = lab.user(lab.exec_group)
    decoys = "".join(f"pvtdecoy{i} {lab.target} plain\n" for i in range(10000))
    lab.set_policy(decoys + lab.policy())
    members = [lab.user(lab.group) for _ in range(20)]
    script = write_file(os.path.join(lab.dir, "flood.py"), progs.source("flooder"))
    kinds = ["churn", "hold", "garbage", "place"] * 8
    floods = [spawn([PY, script, lab.helper.socket, kind, lab.target, "90"], netns=lab.ns, user=flooder,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for kind in kinds]
    try:
        time.sleep(1)
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lab.probe, members))
        for result in results:
            assert_placed(result, lab)
        assert all(f.poll() is None for f in floods)        # the flood went on all along
    finally:
        for f in floods:
            f.kill()
            f.wait()
    assert lab.helper.alive()


def test_placed_session_keeps_binding_across_helper_restart_and_vrf_recreation(lab):
    member = lab.user(lab.group)
    session = subprocess.Popen(lab.ssh_argv(member, f"{PY} {lab.dir}/probe.py --wait"),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(session.stdout.readline())["tcp4"] == lab.target
        lab.helper.stop()
        lab.helper.start()
        session.stdin.write("again\n")
        session.stdin.flush()
        assert json.loads(session.stdout.readline())["tcp4"] == lab.target

        # Re-create the target: new ifindex; the helper re-attaches the session's cgroup.
        mark = lab.syslog.mark()
        sh("ip", "-n", lab.ns, "link", "del", lab.target)
        sh("ip", "-n", lab.ns, "link", "add", lab.target, "type", "veth", "peer", "name", f"vq{lab.tag}")
        lab.syslog.wait_for(["re-attached"], mark)
        session.stdin.write("again\n")
        session.stdin.flush()
        assert json.loads(session.stdout.readline())["tcp4"] == lab.target
    finally:
        session.stdin.close()
        session.wait(timeout=30)


def test_twenty_concurrent_logins_are_all_placed_with_one_program(lab):
    members = [lab.user(lab.group) for _ in range(20)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lab.probe, members))
    for result in results:
        assert_placed(result, lab)
    assert len(cgroup_link.query(lab.vrf_dir())) == 1


def test_pam_vrf_exec_for_permitted_user_and_refused_for_others(lab):
    permitted, other = lab.user(lab.exec_group), lab.user()
    command = f"{PAM_VRF} exec --socket {lab.helper.socket} {lab.target} -- {PY} {lab.dir}/probe.py"
    result = json.loads(lab.ssh(permitted, command).stdout.strip().splitlines()[-1])
    assert result["tcp4"] == result["udp6"] == lab.target
    assert result["cgroup"].endswith(f"/vrf/{lab.target}")

    proc = lab.ssh(other, command, check=False)
    assert proc.returncode == 1
    assert f"cannot enter VRF {lab.target}" in proc.stderr and "may not enter" in proc.stderr, proc.stderr


def test_pam_vrf_exec_cannot_weaken_a_login_rule(lab):
    restricted, permitted = lab.user(lab.strict_group), lab.user(lab.exec_group)
    exec_probe = f"{PAM_VRF} exec --socket {lab.helper.socket} {lab.target} -- {PY} {lab.dir}/probe.py"
    # Entering the VRF one is already in changes nothing: deny=inet6 stays.
    result = json.loads(lab.ssh(restricted, exec_probe).stdout.strip().splitlines()[-1])
    assert result["tcp4"] == lab.target and result["tcp6"] == "errno:1", result

    # Without logind, sessions of one VRF share a cgroup: while the restricted
    # session is in it, an exec= rule without deny may not replace its program.
    session = subprocess.Popen(lab.ssh_argv(restricted, f"{PY} {lab.dir}/probe.py --wait"),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(session.stdout.readline())["tcp6"] == "errno:1"
        mark = lab.syslog.mark()
        proc = lab.ssh(permitted, exec_probe, check=False)
        assert proc.returncode == 1 and "placed under another rule" in proc.stderr, proc.stderr
        lab.syslog.wait_for(["refused place", "placed under another rule"], mark)
        session.stdin.write("again\n")
        session.stdin.flush()
        assert json.loads(session.stdout.readline())["tcp6"] == "errno:1"
    finally:
        session.stdin.close()
        session.wait(timeout=30)


def test_unknown_module_arguments_are_logged_and_ignored(lab):
    member = lab.user(lab.group)
    service = f"pvt-args{lab.tag}"
    lab.pam_service(service, lab.hook_line(extra="colour=blue"))
    mark = lab.syslog.mark()
    proc = sh(*lab.syslog.wrap(["pamtester", service, member.pw_name, "open_session"]))
    assert "successfully opened a session" in proc.stderr + proc.stdout
    line = lab.syslog.wait_for(["ignoring unknown module argument 'colour=blue'"], mark)
    assert line.startswith(f"<{10 * 8 + 4}>"), line        # authpriv.warning


@pytest.mark.parametrize("answer", [b"not json", b'{"v":2,"ok":false,"error":"nope"}',
                                    b'{"v":2,"ok":true,"verdict":"maybe"}', b'{"v":1,"ok":true}', b""])
def test_hook_takes_the_slow_path_on_a_bad_answer(lab, answer):
    """Whatever answers on root.sock, a protocol failure never lets a strict
    rule's session through, and never fails a non-strict one."""
    import socket as socketlib
    import threading
    member, restricted = lab.user(lab.group), lab.user(lab.strict_group)
    where = tempfile.mkdtemp(prefix="pam-vrf-bad-")
    os.chmod(where, 0o755)
    server = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_SEQPACKET)
    server.bind(os.path.join(where, "root.sock"))
    server.listen(8)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.send(answer)
    threading.Thread(target=serve, daemon=True).start()
    service = f"pvt-bad{lab.tag}"
    lab.pam_service(service, f"session [success=ok session_err=bad default=ignore] pam_python.so {HOOK} "
                             f"config={lab.config} socket={where}/helper.sock")
    policy_for_service = lab.policy().replace(f"services={lab.service},", f"services={service},{lab.service},")
    lab.set_policy(policy_for_service)
    try:
        mark = lab.syslog.mark()
        ok = sh(*lab.syslog.wrap(["pamtester", service, member.pw_name, "open_session"]), check=False)
        assert ok.returncode == 0, ok.stderr
        lab.syslog.wait_for([f"user {member.pw_name}", "left unplaced"], mark)
        refused = sh(*lab.syslog.wrap(["pamtester", service, restricted.pw_name, "open_session"]), check=False)
        assert refused.returncode != 0, refused.stdout
        lab.syslog.wait_for([f"refusing session of user {restricted.pw_name}", "strict rule"], mark)
    finally:
        server.close()
        shutil.rmtree(where, ignore_errors=True)


def test_logins_under_different_rules_for_one_vrf_each_keep_their_rule(lab):
    """Without logind, sessions of one VRF share <sshd cgroup>/vrf/NAME. A login
    under another rule (here deny=inet6) gets a cgroup level of its own: it is
    neither left unplaced nor does it change the rule of the session already there."""
    member, restricted = lab.user(lab.group), lab.user(lab.strict_group)
    session = subprocess.Popen(lab.ssh_argv(member, f"{PY} {lab.dir}/probe.py --wait"),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(session.stdout.readline())
        assert first["tcp6"] == lab.target and first["cgroup"].endswith(f"/{lab.ns}-ns/vrf/{lab.target}")
        second = lab.probe(restricted)
        assert second["identify"] == second["tcp4"] == lab.target and second["tcp6"] == "errno:1", second
        assert "/pam-vrf-rule-" in second["cgroup"] and second["cgroup"].endswith(
            f"/{lab.ns}-ns/vrf/{lab.target}"), second
        # `pids` walks the tree as `ip vrf pids` does (which refuses a plain device).
        pids = sh("nsenter", f"--net=/run/netns/{lab.ns}", PAM_VRF, "pids", lab.target).stdout
        assert "python3" in pids, pids
        session.stdin.write("again\n")
        session.stdin.flush()
        again = json.loads(session.stdout.readline())
        assert again["tcp6"] == lab.target, again           # the first session's rule is untouched
    finally:
        session.stdin.close()
        session.wait(timeout=30)


def test_the_session_knows_its_vrf(lab):
    """PAM_VRF in the session's environment, and the optional profile.d
    snippet turning it into a prompt prefix."""
    member, stranger = lab.user(lab.group), lab.user()
    snippet = os.path.join(REPO, "profile.d", "pam-vrf.sh")
    shutil.copy(snippet, f"{lab.dir}/prompt.sh")
    os.chmod(f"{lab.dir}/prompt.sh", 0o644)
    command = f'echo "vrf=$PAM_VRF"; PS1="\\$ "; . {lab.dir}/prompt.sh; echo "prompt=$PS1"'
    out = lab.ssh(member, command).stdout.splitlines()
    assert f"vrf={lab.target}" in out and f"prompt=(vrf:{lab.target})$ " in out, out
    out = lab.ssh(stranger, command).stdout.splitlines()
    assert "vrf=" in out and "prompt=$ " in out, out
