"""Smoke test of the VM harness: the machine vagrant/provision.sh makes is
what the VM tests rely on (real VRF driver, VRF mgmt in table 10, systemd,
sshd, cron, atd, the helper's units, the pam-vrf profile in the session
stacks, `ip vrf exec` binding sockets, the lab peers).

Everything runs as root in the VM; nothing here changes the machine.

tests/vm runs where vagrant/provision.sh has provisioned the machine (it
leaves /etc/pam-vrf-test-vm): in the CI image booted by vagrant/ci/test-vm, or
in the Vagrant box (`cd /vagrant && sudo python3 -m pytest -v tests/vm`).
Anywhere else these tests are skipped. (No conftest.py in tests/vm: the host
tests do `from conftest import ...`, which a second conftest module would
shadow; and, with no __init__.py, test module names must be unique in tests/.)
"""

import os
import subprocess
import textwrap

import pytest

VM_MARKER = "/etc/pam-vrf-test-vm"
pytestmark = pytest.mark.skipif(not os.path.exists(VM_MARKER),
                                reason=f"not the pam-vrf test VM ({VM_MARKER} missing): see vagrant/README.md")

VRF = "mgmt"
VRF_TABLE = 10


def run(*argv, check=True, timeout=60):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


# What each Debian release the suite runs on brings (vagrant/ci/test-vm --suite):
# kernel major.minor, systemd, Debian's python3.
RELEASES = {
    "bookworm": {"kernel": (6, 1), "systemd": 252, "python": (3, 11)},
    "trixie": {"kernel": (6, 12), "systemd": 257, "python": (3, 13)},
}
SO_PEERPIDFD = 77           # Linux 6.5


def os_release():
    with open("/etc/os-release") as f:
        return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)


def test_the_release_is_the_one_asked_for():
    codename = os_release().get("VERSION_CODENAME", "").strip('"')
    try:
        with open("/etc/pam-vrf-ci-image") as f:         # the CI image (vagrant/ci/test-vm) names its suite
            asked = dict(line.strip().split("=", 1) for line in f if "=" in line).get("suite")
    except FileNotFoundError:                           # a Vagrant box: whatever it is
        asked = None
    if asked:
        assert codename == asked, (codename, asked)
    facts = RELEASES.get(codename)
    if facts is None:
        pytest.skip(f"Debian {codename!r}: no release facts to check (bookworm, trixie)")
    kernel = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    systemd = int(run("systemctl", "--version").stdout.split()[1])
    python = tuple(int(x) for x in run("/usr/bin/python3", "-c", "import sys; print(*sys.version_info[:2])")
                   .stdout.split())
    assert (kernel, systemd, python) == (facts["kernel"], facts["systemd"], facts["python"]), (codename, os.uname())


def test_so_peerpidfd_is_there_from_trixie_on():
    # 6.1 (bookworm) has no SO_PEERPIDFD: tests/vm/test_vm_pidreuse.py's premise. 6.12 (trixie)
    # has it; the helper does not rely on it on either (pam_vrf/process.py: the pidfd the client
    # sends, pinned to SO_PEERCRED's pid), so the pid-reuse attack runs on both.
    import errno
    import socket
    codename = os_release().get("VERSION_CODENAME", "").strip('"')
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        try:
            fd = a.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError as e:
            assert e.errno == errno.ENOPROTOOPT and codename == "bookworm", (codename, e)
        else:
            try:
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    pid = next(int(x.split()[1]) for x in f if x.startswith("Pid:"))
            finally:
                os.close(fd)
            assert pid == os.getpid() and codename != "bookworm", (codename, pid)


def test_vrf_module_loads():
    run("modprobe", "vrf")
    assert os.path.isdir("/sys/module/vrf"), "vrf module not loaded after modprobe"


def test_mgmt_is_a_vrf_with_table_10():
    out = run("ip", "-d", "link", "show", VRF).stdout
    assert f"vrf table {VRF_TABLE}" in out, out
    assert ",UP," in out or "<UP," in out or ",UP>" in out, f"{VRF} is not up:\n{out}"


def test_lab_links_are_in_place():
    mgmt = run("ip", "-d", "link", "show", "veth-mgmt").stdout
    prod = run("ip", "-d", "link", "show", "veth-prod").stdout
    assert f"master {VRF}" in mgmt, mgmt
    assert "master" not in prod, prod
    for name in ("mgmt-peer", "prod-peer"):
        assert "10.99.0.2/24" in run("ip", "-n", name, "addr", "show", "eth0").stdout


def test_systemd_is_pid1_and_system_is_up():
    with open("/proc/1/comm") as f:
        assert f.read().strip() == "systemd"
    state = run("systemctl", "is-system-running", check=False).stdout.strip()
    failed = run("systemctl", "--failed", "--no-pager", "--plain", check=False).stdout
    assert state in ("running", "degraded"), f"system state {state!r}\n{failed}"


def test_sshd_is_active():
    assert run("systemctl", "is-active", "ssh.service", check=False).stdout.strip() == "active"


def test_cron_atd_and_the_helper_units_are_active():
    units = ("cron.service", "atd.service", "pam-vrf-helper.socket", "pam-vrf-helper-root.socket",
             "pam-vrf-helper.service")
    states = run("systemctl", "is-active", *units, check=False).stdout.split()
    assert states == ["active"] * len(units), dict(zip(units, states))


def session_modules(service):
    """The module names of a PAM service's session lines, one level of @include expanded."""
    out = []
    with open(f"/etc/pam.d/{service}") as f:
        for line in f:
            words = line.split("#", 1)[0].split()
            if words[:1] == ["@include"]:
                out += session_modules(words[1])
            elif words[:1] in (["session"], ["-session"]):
                out.append(next(w for w in words if w.endswith(".so")).rsplit("/", 1)[-1])
    return out


def test_the_pam_vrf_profile_places_sshd_su_cron_and_atd_sessions():
    # pam-auth-update --enable pam-vrf: pam_vrf.so once per stack, after pam_systemd where
    # there is one (sshd, su: common-session), and in cron's and atd's (noninteractive).
    for service in ("sshd", "su", "cron", "atd"):
        modules = session_modules(service)
        assert modules.count("pam_vrf.so") == 1 and "pam_python.so" not in modules, (service, modules)
        if service in ("sshd", "su"):
            assert modules.index("pam_systemd.so") < modules.index("pam_vrf.so"), (service, modules)
    with open("/etc/pam.d/common-session") as f:
        line = [x for x in f if "pam_vrf.so" in x and not x.lstrip().startswith("#")]
    assert line and line[0].split() == ["session", "[success=ok", "session_err=bad", "default=ignore]",
                                        "pam_vrf.so"], line
    # and the product's own audit of vrf.conf and the PAM stacks agrees
    pam_vrf = "/usr/bin/pam-vrf" if os.path.exists("/usr/bin/pam-vrf") else "/usr/local/bin/pam-vrf"
    run(pam_vrf, "check")


BANNER = textwrap.dedent("""
    import socket
    s = socket.create_connection(("10.99.0.1", 22), timeout=10)
    print(s.recv(100).decode().strip())
""")


def test_sshd_answers_over_both_lans():
    # from the management LAN (through VRF mgmt: needs tcp_l3mdev_accept=1) and from prod
    for ns in ("mgmt-peer", "prod-peer"):
        banner = run("ip", "netns", "exec", ns, "/usr/bin/python3", "-c", BANNER).stdout
        assert banner.startswith("SSH-2.0-"), f"{ns}: {banner!r}"


PROBE = textwrap.dedent("""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    print(s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\\0").decode())
""")


def test_ip_vrf_exec_binds_sockets_to_mgmt():
    assert run("ip", "vrf", "exec", VRF, "/usr/bin/python3", "-c", PROBE).stdout.strip() == VRF
    # and outside the VRF a socket is unbound
    assert run("/usr/bin/python3", "-c", PROBE).stdout.strip() == ""


# Each peer answers the same address with its own name.
RESPONDER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.99.0.2", 7000)); s.listen(4)
    print("ready", flush=True)
    while True:
        c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
""")
CLIENT = textwrap.dedent("""
    import socket
    s = socket.create_connection(("10.99.0.2", 7000), timeout=10)
    print(s.recv(100).decode())
""")


def test_traffic_goes_through_the_vrf_it_is_bound_to():
    servers = []
    try:
        for ns in ("mgmt-peer", "prod-peer"):
            p = subprocess.Popen(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", RESPONDER, ns],
                                 stdout=subprocess.PIPE, text=True)
            servers.append(p)
            assert p.stdout.readline().strip() == "ready"
        assert run("ip", "vrf", "exec", VRF, "/usr/bin/python3", "-c", CLIENT).stdout.strip() == "mgmt-peer"
        assert run("/usr/bin/python3", "-c", CLIENT).stdout.strip() == "prod-peer"
    finally:
        for p in servers:
            p.kill()
            p.wait()
