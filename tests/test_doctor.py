"""`pam-vrf doctor`: a healthy lab passes (exit 0), and each breakage gives
its own finding and a non-zero exit.

Lab (all inside namespaces the test creates):

    [lab ns] vt<tag> 10.214.0.1/24 --- vp<tag> 10.214.0.2/24 [peer ns]
             helper (non-root, ambient caps)        DNS responder on :53
             pam-vrf doctor (nsenter --net)

vt<tag> is the `plain` target (this kernel has no VRF driver); resolv.conf
names the responder, reachable only through vt<tag>.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time

import pytest

from testlab import progs
from testlab.helper import Helper
from testlab.run import PY, REPO, sh, spawn, uid_tag
from pam_vrf import cgroup, programs
from pam_vrf.bpf import cgroup_link, egressprog, joinprog, sockprog, syscall
from pam_vrf.doctor import Finding, config, daemon, kernel, resolver, routes

RESPONDER = textwrap.dedent("""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 53))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(512)
        if len(data) >= 12:
            s.sendto(data[:2] + b"\\x81\\x80" + data[4:], peer)    # QR, RD, RA: an answer
""")

HEALTHY_SESSION = textwrap.dedent("""\
    session required pam_unix.so
    session optional pam_systemd.so
    session [success=ok session_err=bad default=ignore] pam_vrf.so
""")


class Lab:
    def __init__(self, netns, vrf_conf):
        self.tag = uid_tag()
        self.ns, self.peer = netns("d"), netns("p")
        self.target, self.peer_dev = f"vt{self.tag}", f"vp{self.tag}"
        sh("ip", "-n", self.ns, "link", "add", self.target, "type", "veth", "peer", "name", self.peer_dev,
           "netns", self.peer)
        sh("ip", "-n", self.ns, "addr", "add", "10.214.0.1/24", "dev", self.target)
        sh("ip", "-n", self.ns, "link", "set", self.target, "up")
        sh("ip", "-n", self.peer, "addr", "add", "10.214.0.2/24", "dev", self.peer_dev)
        sh("ip", "-n", self.peer, "link", "set", self.peer_dev, "up")
        self.responder = spawn([PY, "-c", RESPONDER], netns=self.peer, stdout=subprocess.PIPE, text=True)
        assert self.responder.stdout.readline().strip() == "ready"
        self.vrf_conf = vrf_conf
        self.config = vrf_conf(f"root -\n*  {self.target}  plain\n")
        # World-readable: one test runs the doctor as another user.
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="pam-vrf-doctor-test-"))
        self.dir.chmod(0o755)
        self.pam_dir = self.dir / "pam.d"
        self.pam_dir.mkdir(mode=0o755)
        (self.pam_dir / "common-session").write_text(HEALTHY_SESSION)
        for service in ("sshd", "login", "su"):
            (self.pam_dir / service).write_text("auth required pam_unix.so\n@include common-session\n")
        self.resolv = self.dir / "resolv.conf"
        self.resolv.write_text("# test\nnameserver 10.214.0.2\n")
        self.helper = None

    def start_helper(self, helper_factory):
        self.helper = helper_factory(self.config, netns=self.ns)
        return self

    def argv(self, *extra, config=None, socket=None, json_out=False):
        argv = ["nsenter", f"--net=/run/netns/{self.ns}", PY, "-m", "pam_vrf", "doctor",
                "--config", config or self.config,
                "--socket", socket or (self.helper.socket if self.helper else "/nonexistent/helper.sock"),
                "--pam-dir", str(self.pam_dir), "--resolv-conf", str(self.resolv), *extra]
        return argv + (["--json"] if json_out else [])

    def doctor(self, *extra, **kw):
        started = time.monotonic()
        proc = sh(*self.argv(*extra, **kw), check=False, env=dict(os.environ, PYTHONPATH=REPO), cwd="/")
        proc.seconds = time.monotonic() - started
        return proc

    def close(self):
        self.responder.kill()
        self.responder.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def lab(netns, vrf_conf):
    lab = Lab(netns, vrf_conf)
    yield lab
    lab.close()


def leftovers():
    mount = cgroup.mount_point()
    return sorted(n for n in os.listdir(mount) if n.startswith("pam-vrf-doctor-"))


def lines(proc, level=None):
    out = proc.stdout.splitlines()[:-1]            # the last line is the summary
    return [line for line in out if level is None or line.startswith(level + " ")]


def assert_finding(proc, level, *needles):
    hits = [line for line in lines(proc, level) if all(n in line for n in needles)]
    assert hits, f"no {level} line with {needles} in:\n{proc.stdout}{proc.stderr}"
    return hits[0]


@pytest.mark.root
def test_a_healthy_lab_passes_and_json_carries_the_same_findings(lab, helper_factory):
    lab.start_helper(helper_factory)
    before = leftovers()
    proc = lab.doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not lines(proc, "error"), proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("0 errors, ")
    assert proc.seconds < 8, f"doctor took {proc.seconds:.1f}s"
    assert_finding(proc, "ok", "kernel: cgroup2 is mounted at")
    assert_finding(proc, "ok", "kernel: CGROUP_BPF works")
    assert_finding(proc, "info", "kernel: this kernel has no VRF driver; no rule needs one")
    assert_finding(proc, "ok", "helper: answers on", lab.helper.socket)
    assert_finding(proc, "ok", "helper: answers on", lab.helper.root_socket)
    assert_finding(proc, "ok", f"helper: the helper (pid {lab.helper.proc.pid}, uid {lab.helper.user.pw_uid}) "
                   "holds exactly CAP_DAC_OVERRIDE, CAP_NET_ADMIN, CAP_BPF")
    assert_finding(proc, "ok", f"config: {lab.config}:2: target '{lab.target}' is a veth device (the rule says plain)")
    assert_finding(proc, "ok", "pam: sshd: pam_vrf.so at common-session:3, after pam_systemd")
    assert_finding(proc, "ok", "ancestors: no foreign sock_create program")
    assert_finding(proc, "ok", f"self-test: VRF {lab.target}: a process moved into a cgroup with its programs gets "
                   f"AF_INET sockets bound to {lab.target}", "EPERM for AF_INET6", "EPERM for a datagram naming another link")
    assert_finding(proc, "ok", f"resolver: {lab.resolv}: nameserver 10.214.0.2 answers through VRF {lab.target}")
    assert leftovers() == before

    as_json = lab.doctor(json_out=True)
    assert as_json.returncode == 0, as_json.stderr
    findings = [Finding(**item) for item in json.loads(as_json.stdout)]
    assert [str(f) for f in findings] == lines(proc)
    assert {f.level for f in findings} <= {"ok", "info", "warning"}


@pytest.mark.root
def test_a_stopped_helper_is_an_error(lab, helper_factory):
    lab.start_helper(helper_factory)
    lab.helper.stop()
    proc = lab.doctor()
    assert proc.returncode == 1
    assert_finding(proc, "error", "helper: not reachable:", lab.helper.socket)
    assert_finding(proc, "error", "helper: not reachable on the PAM entries' socket:", lab.helper.root_socket)
    assert not [line for line in lines(proc, "error") if not line.startswith("error   helper:")], proc.stdout
    # Without a helper the live checks still run (the doctor places its own test process).
    assert_finding(proc, "ok", f"self-test: VRF {lab.target}")


@pytest.mark.root
def test_a_missing_target_and_a_device_that_is_not_a_vrf(lab, helper_factory):
    lab.start_helper(helper_factory)
    missing = f"nx{lab.tag}"
    conf = lab.vrf_conf(f"root -\n@nogroup-{lab.tag} {missing} plain strict\n"
                        f"@other-{lab.tag} {lab.target}\n* {lab.target} plain\n")
    proc = lab.doctor(config=conf)
    assert proc.returncode == 1
    assert_finding(proc, "error", f"config: {conf}:2: target '{missing}': no network device '{missing}' in this "
                   "network namespace", "strict rules refuse those logins")
    assert_finding(proc, "error", f"config: {conf}:3: target '{lab.target}' is a veth device, not a VRF",
                   "add `plain`")
    assert_finding(proc, "error", f"kernel: {conf}: this kernel has no VRF driver", "rules on line 3 name VRFs")
    assert_finding(proc, "ok", f"self-test: VRF {lab.target}")      # the usable one is still tested
    assert not [line for line in lines(proc) if f"VRF {missing}" in line]


@pytest.mark.root
def test_a_pam_vrf_line_before_pam_systemd(lab, helper_factory):
    lab.start_helper(helper_factory)
    (lab.pam_dir / "sshd").write_text(
        "auth required pam_unix.so\n"
        "session [success=ok session_err=bad default=ignore] pam_vrf.so\n"
        "session optional pam_systemd.so\n")
    proc = lab.doctor()
    assert proc.returncode == 1
    assert_finding(proc, "error", f"pam: {lab.pam_dir}/sshd:2: pam_vrf.so runs before pam_systemd.so in the "
                   "session stack of sshd", "move this line after pam_systemd")
    assert_finding(proc, "info", "pam: sshd: pam_vrf.so at sshd:2, before pam_systemd")


@pytest.mark.root
def test_pam_python_in_the_su_stack(lab, helper_factory):
    lab.start_helper(helper_factory)
    (lab.pam_dir / "su").write_text(
        "auth required pam_unix.so\n@include common-session\n"
        "session [success=ok session_err=bad default=ignore] pam_python.so /usr/lib/pam-vrf/pam_vrf.py\n")
    proc = lab.doctor()
    assert proc.returncode == 1
    assert_finding(proc, "error", f"pam: {lab.pam_dir}/su:3: pam_python loads pam-vrf in a stack run by "
                   "setuid-root clients", "invoking user's Python code would run as root")
    assert_finding(proc, "warning", "pam: ", "su: 2 pam-vrf lines in one session stack")
    assert_finding(proc, "info", "pam: su: pam_python at su:3", "unsafe in a setuid client's stack")


@pytest.mark.root
def test_no_pam_vrf_line_anywhere_means_nothing_is_placed(lab, helper_factory):
    lab.start_helper(helper_factory)
    (lab.pam_dir / "common-session").write_text("session required pam_unix.so\n")
    proc = lab.doctor()
    assert_finding(proc, "warning", "pam: ", "none of the login services (sshd, login, su) has a pam-vrf line: "
                   "nothing will be placed")
    assert_finding(proc, "info", "pam: sshd: no pam-vrf line in its session stack")


@pytest.mark.root
def test_a_foreign_program_on_an_ancestor_of_a_vrf_cgroup(lab, helper_factory, sandbox_cgroup):
    lab.start_helper(helper_factory)
    parent = f"{sandbox_cgroup}/{lab.ns}-ns"
    session = f"{parent}/vrf/{lab.target}"
    os.makedirs(session)
    fd = syscall.prog_load(sockprog.iproute2_program(1))       # binds to lo: not ours
    try:
        cgroup_link.attach(parent, fd)
        prog_id = syscall.prog_info(fd).id
    finally:
        os.close(fd)
    try:
        proc = lab.doctor()
        as_json = json.loads(lab.doctor(json_out=True).stdout)
    finally:
        cgroup_link.detach(parent)
    assert proc.returncode == 1
    line = assert_finding(proc, "error", f"ancestors: {parent}: foreign sock_create program {prog_id} (unnamed) "
                          f"attached here, above 2 session cgroups (e.g. {session}): it binds sockets to lo "
                          "(ifindex 1)", "the last binding wins", "cannot attach below it at all",
                          f"bpftool cgroup detach {parent} sock_create id {prog_id}")
    assert line in [str(Finding(**item)) for item in as_json]
    # Only the ancestor is wrong: the doctor's own test cgroup is elsewhere.
    assert_finding(proc, "ok", f"self-test: VRF {lab.target}")
    assert len(lines(proc, "error")) == 1, proc.stdout


@pytest.mark.root
def test_a_placed_cgroup_without_the_egress_program(lab, helper_factory, sandbox_cgroup):
    """A session placed by a helper without the egress program (before 0.3.0),
    or whose program root detached: its datagrams can still leave by another link."""
    lab.start_helper(helper_factory)
    placed = os.path.join(sandbox_cgroup, lab.ns + "-ns", "vrf", lab.target)
    os.makedirs(placed)
    index = json.loads(sh("ip", "-n", lab.ns, "-j", "link", "show", "dev", lab.target).stdout)[0]["ifindex"]
    programs.attach(placed, sockprog.Settings(ifindex=index))
    proc = lab.doctor()
    assert proc.returncode == 1, proc.stdout
    assert_finding(proc, "error", "sessions: 1 of 1 placed cgroup(s) carry no egress program", placed,
                   "restart pam-vrf-helper")
    counter = egressprog.new_counter()
    prog = egressprog.load({index}, counter)
    try:
        cgroup_link.attach(placed, prog, syscall.CGROUP_INET_EGRESS)
    finally:
        os.close(prog)
        os.close(counter)
    assert_finding(lab.doctor(), "error", "sessions: 1 of 1 placed cgroup(s)", "no multicast-join program")
    prog = joinprog.load({index})
    try:
        cgroup_link.attach(placed, prog, syscall.CGROUP_SETSOCKOPT)
    finally:
        os.close(prog)
    assert_finding(lab.doctor(), "ok", "sessions: all 1 placed cgroup(s) carry the egress and multicast-join programs")


@pytest.mark.root
def test_a_resolver_the_vrf_cannot_reach(lab, helper_factory):
    lab.start_helper(helper_factory)
    lab.resolv.write_text("nameserver 127.0.0.53\nnameserver 10.214.0.2\n")
    proc = lab.doctor()
    assert proc.returncode == 1
    assert_finding(proc, "warning", f"resolver: {lab.resolv}: nameserver 127.0.0.53: systemd-resolved's stub on "
                   f"the default VRF's loopback is not reachable from a socket bound to VRF {lab.target}",
                   "resolvectl dns <link> <server>")
    assert_finding(proc, "error", f"resolver: {lab.resolv}: nameserver 127.0.0.53 is not reachable through VRF "
                   f"{lab.target}")
    assert_finding(proc, "ok", f"resolver: {lab.resolv}: nameserver 10.214.0.2 answers through VRF {lab.target}")
    assert proc.seconds < 8, f"doctor took {proc.seconds:.1f}s"


@pytest.mark.root
def test_a_resolver_reachable_only_outside_the_vrf(lab, helper_factory, netns):
    """A server the lab namespace reaches through another interface: the VRF has no route to it."""
    lab.start_helper(helper_factory)
    other, tag = netns("o"), uid_tag()
    sh("ip", "-n", lab.ns, "link", "add", f"vo{tag}", "type", "veth", "peer", "name", f"po{tag}", "netns", other)
    sh("ip", "-n", lab.ns, "addr", "add", "10.215.0.1/24", "dev", f"vo{tag}")
    sh("ip", "-n", lab.ns, "link", "set", f"vo{tag}", "up")
    sh("ip", "-n", other, "addr", "add", "10.215.0.2/24", "dev", f"po{tag}")
    sh("ip", "-n", other, "link", "set", f"po{tag}", "up")
    responder = spawn([PY, "-c", RESPONDER], netns=other, stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout.readline().strip() == "ready"
        lab.resolv.write_text("nameserver 10.215.0.2\n")
        proc = lab.doctor()
    finally:
        responder.kill()
        responder.wait()
    assert proc.returncode == 1
    assert_finding(proc, "error", f"nameserver 10.215.0.2 is not reachable through VRF {lab.target}",
                   "it answers this command outside the VRF", f"the VRF {lab.target} has no route to it")


@pytest.mark.root
def test_sigterm_during_the_live_checks_leaves_nothing_behind(lab, helper_factory):
    lab.start_helper(helper_factory)
    lab.resolv.write_text("nameserver 127.0.0.53\n")       # the live DNS check then waits 2 s
    before = leftovers()
    proc = subprocess.Popen(lab.argv(), env=dict(os.environ, PYTHONPATH=REPO), cwd="/",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while leftovers() == before and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert leftovers() != before, "the doctor never made its test cgroup"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert leftovers() == before


# Like systemd's socket units: this process makes the listening sockets and keeps
# them; a forked child becomes the helper and takes them over (LISTEN_FDS).
ACTIVATOR = progs.source("socket_activator")


@pytest.mark.root
def test_socket_activation_the_helper_is_found_among_the_sockets_holders(lab, installed, throwaway_user):
    """SO_PEERCRED names the process that called listen(): under systemd that is PID 1."""
    user = throwaway_user()
    where = tempfile.mkdtemp(prefix="pam-vrf-helper-")
    os.chown(where, user.pw_uid, user.pw_gid)
    os.chmod(where, 0o755)
    socket_path = os.path.join(where, "helper.sock")
    helper_argv = ["setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--init-groups",
                   "--inh-caps", Helper.CAPS, "--ambient-caps", Helper.CAPS,
                   "/usr/local/sbin/pam-vrf-helper", "--socket", socket_path, "--config", lab.config]
    activator = spawn([PY, "-c", ACTIVATOR, where, *helper_argv], netns=lab.ns, stdout=subprocess.PIPE,
                      stderr=subprocess.DEVNULL, text=True)
    try:
        child = int(activator.stdout.readline())
        deadline = time.monotonic() + 15
        while True:
            try:
                daemon.ping(socket_path)
                break
            except daemon.Unreachable:
                assert time.monotonic() < deadline and activator.poll() is None, "helper did not start"
                time.sleep(0.05)
        proc = lab.doctor(socket=socket_path)
    finally:
        for pid in (locals().get("child"), activator.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        activator.wait(10)
        shutil.rmtree(where, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout
    assert_finding(proc, "ok", f"helper: the helper (pid {child}, uid {user.pw_uid}) holds exactly CAP_DAC_OVERRIDE, "
                   f"CAP_NET_ADMIN, CAP_BPF (socket made by pid {activator.pid}, e.g. socket activation)")


@pytest.mark.root
def test_not_root_says_so_and_runs_what_it_can(lab, helper_factory, throwaway_user, public_repo):
    lab.start_helper(helper_factory)
    user = throwaway_user()
    proc = spawn(lab.argv()[2:], netns=lab.ns, user=user, env=dict(PATH="/usr/bin:/bin", PYTHONPATH=public_repo),
                 cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, out + err
    assert f"error   root: not running as root (euid {user.pw_uid})" in out, out + err
    assert f"ok      helper: answers on {lab.helper.socket}" in out
    assert f"info    helper: {lab.helper.root_socket} not tried (root only)" in out
    assert "holds exactly CAP_DAC_OVERRIDE, CAP_NET_ADMIN, CAP_BPF" in out
    assert "self-test:" not in out and "ancestors:" not in out
    assert [line for line in out.splitlines() if line.startswith("error")] == \
        [line for line in out.splitlines() if line.startswith("error   root:")], out


# -- pieces, without a lab -----------------------------------------------------

def _status(uids, eff, prm=None):
    return {"Uid": uids, "CapEff": eff, "CapPrm": eff if prm is None else prm}


def test_helper_capabilities_exactly_three():
    exact = (1 << 1) | (1 << 12) | (1 << 39)
    assert [f.level for f in daemon.judge_process(7, _status([999] * 4, exact))] == ["ok"]
    extra = daemon.judge_process(7, _status([999] * 4, exact | 1 << 21))
    assert [(f.level, "CAP_SYS_ADMIN" in f.what) for f in extra] == [("warning", True), ("warning", True)]
    missing = daemon.judge_process(7, _status([999] * 4, 1 << 12 | 1 << 39, exact))
    assert [(f.level, f.what) for f in missing] == [("error", "the helper (pid 7) lacks CAP_DAC_OVERRIDE in CapEff")]
    as_root = daemon.judge_process(7, _status([0, 0, 0, 0], (1 << 41) - 1))
    assert [f.level for f in as_root] == ["error"] and "runs as root" in as_root[0].what


def test_socket_matching_from_mountinfo_kernel_version_and_log(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
        "42 31 0:39 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio\n"
        "43 31 0:40 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n")
    assert kernel.v1_net_mounts(str(mountinfo)) == [("/sys/fs/cgroup/net_cls,net_prio", "net_cls,net_prio")]
    quiet = tmp_path / "kmsg"
    quiet.write_text("6,1,2,-;eth0: link up\n")
    loud = tmp_path / "kmsg-loud"
    loud.write_text("6,1,2,-;cgroup: " + kernel.DISABLED_MESSAGE + "\n")

    def levels(kmsg, release):
        findings = []
        kernel._socket_matching(findings, str(mountinfo), True, str(kmsg), release)
        return [(f.level, f.what) for f in findings]

    assert levels(quiet, "5.10.0-8-amd64")[0][0] == "warning"
    assert levels(quiet, "6.1.0-13-amd64")[0][0] == "info"
    assert levels(loud, "6.1.0-13-amd64")[0][0] == "error"
    assert levels(tmp_path / "none", "6.1.0")[0][0] == "info"


def test_resolv_conf_parsing_and_dns_packets(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("# c\nsearch example\nnameserver 192.0.2.1 # x\nnameserver fe80::1%eth0\noptions ndots:2\n")
    assert resolver.nameservers(str(path)) == (["192.0.2.1", "fe80::1%eth0"], None)
    path.write_text("search example\n")
    servers, problem = resolver.nameservers(str(path))
    assert servers == ["127.0.0.1"] and "no nameserver line" in problem
    assert resolver.is_loopback("127.0.0.53") and resolver.is_loopback("::1") and not resolver.is_loopback("fe80::1%x")
    query = resolver.query_packet(0x1234)
    assert query[:2] == b"\x12\x34" and len(query) == 17
    assert resolver.is_answer(query[:2] + b"\x81\x80" + query[4:], 0x1234)
    assert not resolver.is_answer(query, 0x1234) and not resolver.is_answer(b"\x12\x34\x81", 0x1234)


def test_nsswitch_hosts_line_and_what_systemd_resolved_changes(tmp_path):
    """The resolver findings per set-up (the VM proves the behaviour behind them:
    tests/vm/test_vm_names.py)."""
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("passwd: files\nhosts:  files resolve [!UNAVAIL=return] dns myhostname  # x\n")
    assert resolver.hosts_sources(str(nsswitch)) == ["files", "resolve", "dns", "myhostname"]
    assert resolver.nss_resolve_first(resolver.hosts_sources(str(nsswitch)))
    assert not resolver.nss_resolve_first(["files", "dns", "resolve"]) and not resolver.nss_resolve_first(["files"])
    assert resolver.hosts_sources(str(tmp_path / "none")) == ["dns", "files"]     # glibc's default
    assert [resolver._server_address(s) for s in ("10.0.0.1", "10.0.0.1:53#dns.example", "[fe80::1%2]:53",
                                                  "fd00::1")] == ["10.0.0.1", "10.0.0.1", "fe80::1%2", "fd00::1"]
    assert not resolver.resolved_running(str(tmp_path / "no-socket"))

    # A /sys/class/net-like tree: eth1 and eth2 enslaved to mgmt, eth0 to nothing.
    sys_net = tmp_path / "net"
    for link, master in (("mgmt", None), ("eth0", None), ("eth1", "mgmt"), ("eth2", "mgmt")):
        (sys_net / link).mkdir(parents=True)
        if master:
            (sys_net / link / "master").symlink_to(f"../{master}")
    assert resolver.vrf_links("mgmt", str(sys_net)) == ["eth1", "eth2"]
    vrf = config.Vrf("mgmt", False, 7, "/etc/security/vrf.conf:3")

    on_vrf = resolver.Resolved(True, True, {"eth1": (["10.9.0.2:53#ns.example"], ["~mgmt.example"]),
                                            "eth0": (["192.0.2.1"], [])})
    assert on_vrf.in_use
    assert resolver.vrf_servers(on_vrf, "mgmt", str(sys_net)) == [("eth1", "10.9.0.2", ["~mgmt.example"])]
    findings = []
    resolver._resolved_findings(findings, on_vrf, vrf, "/etc/nsswitch.conf", str(sys_net))
    assert [(f.level, f.what) for f in findings] == [(
        "ok", "systemd-resolved (nss-resolve in /etc/nsswitch.conf): getaddrinfo() in sessions placed in mgmt asks "
        "resolved over AF_UNIX, and resolved asks 10.9.0.2 on eth1 (domains: ~mgmt.example): link(s) of mgmt, so "
        "through mgmt")]

    off_vrf = resolver.Resolved(True, True, {"eth0": (["192.0.2.1"], [])})
    findings = []
    resolver._resolved_findings(findings, off_vrf, vrf, "/etc/nsswitch.conf", str(sys_net))
    (f,) = findings
    assert f.level == "warning" and f.what == ("systemd-resolved (nss-resolve in /etc/nsswitch.conf) has no DNS "
                                               "server on a link of VRF mgmt (eth1, eth2)")
    assert "resolved asks the default VRF's servers" in f.why and f.fix.startswith("resolvectl dns eth1 <server>;")

    stub_with_resolve = resolver._loopback_finding("127.0.0.53", vrf, on_vrf, "/etc/resolv.conf", "/etc/nsswitch.conf")
    assert stub_with_resolve.level == "warning" and "getaddrinfo() goes to systemd-resolved" in stub_with_resolve.why
    assert "(dig, host, nslookup) fail" in stub_with_resolve.why
    stub_alone = resolver._loopback_finding("127.0.0.53", vrf, resolver.Resolved(False, True, {}),
                                            "/etc/resolv.conf", "/etc/nsswitch.conf")
    assert "name look-ups in sessions placed in mgmt fail (nss-resolve is not used)" in stub_alone.why
    assert stub_alone.fix.startswith("put `resolve [!UNAVAIL=return]` before `dns` on the hosts line")
    resolve_stopped = resolver._loopback_finding("127.0.0.53", vrf, resolver.Resolved(True, False, {}),
                                                 "/etc/resolv.conf", "/etc/nsswitch.conf")
    assert "systemd-resolved is not running" in resolve_stopped.why


def test_routes_check_skips_plain_targets_and_says_when_it_cannot_read():
    """The VM proves what a VRF table without a default route does (tests/vm/test_vm_names.py);
    here: a `plain` target has no table of its own, and a failed read is said, not taken for ok."""
    findings = []
    routes.check(findings, [config.Vrf("eth0", True, 2, "/etc/security/vrf.conf:1")])
    assert findings == []
    routes.check(findings, [config.Vrf("pvnovrf0", False, 99, "/etc/security/vrf.conf:1")])
    assert [(f.check, f.level) for f in findings] == [("routes", "warning")] * 2, findings
    assert findings[0].what.startswith("VRF pvnovrf0: IPv4 routes not read: ")
