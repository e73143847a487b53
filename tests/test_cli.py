"""`pam-vrf` as a shell script sees it: output and exit codes."""

import json
import os
import subprocess
import textwrap

import pytest

from testlab.run import PY, REPO, pam_vrf_cli, sh, spawn
from pam_vrf import cgroup, programs
from pam_vrf.bpf import cgroup_link, sockprog, syscall


def test_check_accepts_a_good_file_and_names_file_and_line_of_a_bad_one(vrf_conf):
    good = vrf_conf("root -\n@netops lo plain services=sshd\n* default\n")
    proc = pam_vrf_cli("check", "--config", good)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{good}: OK, 3 rules"

    bad = vrf_conf("root -\n\n@netops lo plain colour=blue\n")
    proc = pam_vrf_cli("check", "--config", bad)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"{bad}:3: unknown option 'colour=blue' (known: services, deny, mark, priority, exec, strict, plain)"

    missing = good + ".missing"
    proc = pam_vrf_cli("check", "--config", missing)
    assert proc.returncode == 1 and proc.stderr.startswith(f"{missing}:0: cannot read")


def test_check_enforces_the_helpers_limits(vrf_conf):
    """A rule the helper could never load must fail `check`, not the login."""
    items = ",".join(f"inet:stream:{n}" for n in range(65))
    bad = vrf_conf(f"* -\nalice mgmt deny={items} strict\n")
    proc = pam_vrf_cli("check", "--config", bad)
    assert proc.returncode == 1 and f"{bad}:2: bad deny= list: 65 items, at most 64" in proc.stderr, proc.stderr
    ok = vrf_conf(f"alice mgmt deny={items.rsplit(',', 1)[0]} strict\n")
    assert pam_vrf_cli("check", "--config", ok).returncode == 0
    long = "u" * 257
    for text, message in ((f"{long} mgmt\n", "user or group name longer than 256"),
                          (f"* mgmt services=sshd,{long}\n", "service name longer than 256")):
        proc = pam_vrf_cli("check", "--config", vrf_conf(text))
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def test_check_reports_pam_python_reachable_from_su(vrf_conf, tmp_path):
    """The audit of the PAM stacks (details in test_pamstack.py)."""
    (tmp_path / "common-session").write_text(
        "session required pam_unix.so\n"
        "session [success=ok session_err=bad default=ignore] pam_python.so /usr/lib/pam-vrf/pam_vrf.py\n")
    (tmp_path / "su").write_text("session required pam_env.so\n@include common-session\n")
    proc = pam_vrf_cli("check", "--config", vrf_conf("* -\n"), "--pam-dir", str(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{tmp_path}/common-session:2: error: pam_python loads pam-vrf" in proc.stderr, proc.stderr
    (tmp_path / "common-session").write_text(
        "session required pam_unix.so\nsession [success=ok session_err=bad default=ignore] pam_vrf.so\n")
    proc = pam_vrf_cli("check", "--config", vrf_conf("* -\n"), "--pam-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr


def test_check_warns_about_targets_it_cannot_see_but_passes(vrf_conf):
    conf = vrf_conf("alice nosuchdev0\nbob lo\n")
    proc = pam_vrf_cli("check", "--config", conf)
    assert proc.returncode == 0
    assert f"{conf}:1: warning: no network device 'nosuchdev0'" in proc.stderr
    assert f"{conf}:2: warning: 'lo' is not a VRF device (add 'plain'" in proc.stderr


@pytest.mark.root
def test_which_prints_the_decision_target_first(vrf_conf, throwaway_user):
    user = throwaway_user()
    conf = vrf_conf(f"root -\n{user.pw_name} lo plain services=sshd deny=inet6\n* default\n")
    proc = pam_vrf_cli("which", user.pw_name, "--service", "sshd", "--config", conf)
    assert proc.returncode == 0
    assert proc.stdout.split("\t") == ["lo", f"{conf}:2", f"{user.pw_name} lo services=sshd deny=inet6 plain\n"]
    assert pam_vrf_cli("which", user.pw_name, "--service", "login", "--config", conf).stdout.split("\t")[0] == "default"
    assert pam_vrf_cli("which", "root", "--config", conf).stdout.split("\t")[:2] == ["-", f"{conf}:1"]
    none = vrf_conf("root -\n")
    assert pam_vrf_cli("which", user.pw_name, "--config", none).stdout == "-\t(no matching rule)\n"
    proc = pam_vrf_cli("which", "nosuchuser-pvt", "--config", conf)
    assert proc.returncode == 0 and "warning: no user 'nosuchuser-pvt'" in proc.stderr
    assert pam_vrf_cli("which", "x", "--config", conf + ".missing").returncode == 1


@pytest.mark.root
def test_identify_and_pids_agree_with_iproute2(sandbox_cgroup):
    placed = f"{sandbox_cgroup}/vrf/pvtcli0"
    os.makedirs(placed)
    sleeper = spawn(["sleep", "60"], cgroup_dir=placed)
    outside = spawn(["sleep", "60"], cgroup_dir=sandbox_cgroup)
    try:
        proc = pam_vrf_cli("identify", str(sleeper.pid))
        assert (proc.returncode, proc.stdout) == (0, "pvtcli0\n")
        assert proc.stdout == sh("ip", "vrf", "identify", sleeper.pid).stdout
        proc = pam_vrf_cli("identify", str(outside.pid))
        assert (proc.returncode, proc.stdout) == (0, "")
        assert pam_vrf_cli("identify", "999999999").returncode == 1

        listed = pam_vrf_cli("pids", "pvtcli0").stdout.splitlines()
        assert [line.split() for line in listed] == [[str(sleeper.pid), "sleep"]]
        proc = pam_vrf_cli("pids", "../etc")
        assert proc.returncode == 1 and "invalid VRF name" in proc.stderr
    finally:
        for p in (sleeper, outside):
            p.kill()
            p.wait()


@pytest.mark.root
def test_status_shows_cgroups_programs_rules_and_members(sandbox_cgroup):
    ours, theirs = f"{sandbox_cgroup}/vrf/lo", f"{sandbox_cgroup}/other/vrf/lo"
    os.makedirs(ours)
    os.makedirs(theirs)
    prog = programs.attach(ours, sockprog.Settings(ifindex=1, deny=((10, None, None), (None, 3, None),
                                                                    (2, 2, 17)), mark=0x2A))
    fd = syscall.prog_load(sockprog.iproute2_program(1))
    try:
        cgroup_link.attach(theirs, fd)
        their_prog = syscall.prog_info(fd).id
    finally:
        os.close(fd)
    member = spawn(["sleep", "60"], cgroup_dir=ours)
    try:
        out = pam_vrf_cli("status", check=True).stdout
    finally:
        member.kill()
        member.wait()
    block = out[out.index(f"{ours}  vrf=lo  pids=1"):]
    assert f"  prog {prog} (pam-vrf): bind lo (ifindex 1), deny inet6, deny raw, deny inet:dgram:udp, mark 0x2a" in block
    assert f"{member.pid:>7}  sleep" in block
    assert f"  prog {their_prog} (unnamed, e.g. ip vrf exec): bind lo (ifindex 1)" in out
    assert f"{sandbox_cgroup}/vrf  vrf=default  pids=0" in out


PROBE = "import json, socket; s = socket.socket(); print(json.dumps([open('/proc/self/cgroup').read().strip(), s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(bytes(1)).decode()]))"


@pytest.mark.root
def test_exec_as_root_places_the_command_through_the_helper(sandbox_cgroup, netns, helper_factory, vrf_conf):
    ns = netns()
    env = dict(os.environ, PYTHONPATH=REPO)
    # Without a helper: a clear error, nothing run.
    proc = spawn([PY, "-m", "pam_vrf", "exec", "--socket", "/nonexistent/helper.sock", "--plain", "lo", "--",
                  "true"], netns=ns, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "helper not running" in err and "ip vrf exec" in err, err

    helper = helper_factory(vrf_conf("* -\n"), netns=ns)
    proc = spawn([PY, "-m", "pam_vrf", "exec", "--socket", helper.socket, "--plain", "lo", "--", PY, "-c", PROBE],
                 netns=ns, cgroup_dir=sandbox_cgroup, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True, env=env)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    cgroup_line, device = json.loads(out)
    assert cgroup_line.splitlines()[-1] == f"0::{sandbox_cgroup[len(cgroup.mount_point()):]}/{ns}-ns/vrf/lo"
    assert device == "lo"

    proc = spawn([PY, "-m", "pam_vrf", "exec", "--socket", helper.socket, "lo", "--", "true"], netns=ns,
                 cgroup_dir=sandbox_cgroup,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "'lo' is a plain device, not a VRF" in err
    proc = pam_vrf_cli("exec", "lo")
    assert proc.returncode == 2 and "no command given" in proc.stderr
