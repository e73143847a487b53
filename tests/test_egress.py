"""Egress confinement: a placed session's packets leave only by its target.

The sock-create program binds every new inet socket to the target, but the
bound device is only a default for datagrams: an unprivileged sender names
another link per datagram (IP_PKTINFO, an IPv6 link-local scope id, a ping
socket's control message). The attacks are testlab/egress.py's; the lab is
test_kernel_placement's (peers A and B answer at the same address, behind
va and vb), the target is vb (`plain`: no VRF driver here), peer A must
never see a packet of the session.
"""

import json
import os
import subprocess
import threading
import time

import pytest

from testlab.cgroups import members
from testlab.run import PY, REPO, run_py, sh, spawn, uid_tag, wait_until
from test_kernel_placement import lab  # noqa: F401  (the fixture)
from pam_vrf import programs
from pam_vrf.bpf import cgroup_link, egressprog, sockprog, syscall

pytestmark = pytest.mark.root


EGRESS = os.path.join(REPO, "testlab", "egress.py")
PORT = 7001
# What kernel 6.18 lets out by another link from a socket the sock-create
# program bound (ping6 with another scope id and IP_UNICAST_IF are EINVAL,
# SO_BINDTOIFINDEX is EPERM without CAP_NET_RAW).
KERNEL_LEAKS = {"ip_pktinfo", "ipv6_scope_id", "ping4_pktinfo", "multicast6_scope_id", "broadcast4_pktinfo"}
RAW_LEAKS = {"rebind_with_cap_net_raw", "raw_icmp_pktinfo"}
# What a helper's placement refuses besides (its multicast-join program, MPTCP).
HELPER_REFUSES = {"join4_other", "join6_other", "join6_main_table", "mptcp_socket"}


def _text():
    with open(EGRESS) as f:
        return f.read()


class Sink:
    """testlab/egress.py's sink in a peer's netns; .seen() lists what arrived."""

    def __init__(self, netns, token):
        self.proc = spawn([PY, "-c", _text(), "sink", token, str(PORT)], netns=netns,
                          stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def seen(self):
        time.sleep(0.5)             # the last datagrams are in flight
        return sorted(set(self.lines))

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def egress_lab(lab):  # noqa: F811
    """lab + link-local addresses on both links, ping sockets for every
    group in the host netns (Debian's default with systemd), sinks on both peers."""
    for dev, peer, ns in ((lab["va"], lab["pa"], lab["peer_a"]), (lab["vb"], lab["pb"], lab["peer_b"])):
        sh("ip", "-n", lab["host"], "addr", "add", "fe80::1/64", "dev", dev, "nodad")
        sh("ip", "-n", ns, "addr", "add", "fe80::2/64", "dev", peer, "nodad")
    sh("nsenter", f"--net=/run/netns/{lab['host']}", "sysctl", "-q", "-w",
       "net.ipv4.ping_group_range=0 2147483647")
    va_index = json.loads(sh("ip", "-n", lab["host"], "-j", "link", "show", "dev", lab["va"]).stdout)[0]["ifindex"]
    token = f"t{uid_tag()}"
    sinks = {"A": Sink(lab["peer_a"], token), "B": Sink(lab["peer_b"], token)}
    try:
        yield dict(lab, va_index=va_index, token=token, sinks=sinks,
                   cfg={"token": token, "ip4": "10.213.0.2", "port": PORT, "other": va_index,
                        "ll6": "fe80::2", "bcast4": "10.213.0.255"})
    finally:
        for sink in sinks.values():
            sink.close()


def attack(egress_lab, placed, user, raw=False):
    """Run every attack as `user` in cgroup `placed`; (outcomes, seen by A, seen by B)."""
    cfg = dict(egress_lab["cfg"], raw=raw)
    if raw:
        # As a binary with file capability cap_net_raw (ping) would run: the user, holding CAP_NET_RAW.
        argv = ["setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--clear-groups",
                "--inh-caps", "+net_raw", "--ambient-caps", "+net_raw",
                PY, "-c", _text(), "attack", json.dumps(cfg)]
        proc = spawn(argv, netns=egress_lab["host"], cgroup_dir=placed, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True, cwd="/")
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        outcomes = json.loads(out)
    else:
        outcomes = run_py(_text(), netns=egress_lab["host"], cgroup_dir=placed, user=user,
                          args=("attack", json.dumps(cfg)))
    sinks = egress_lab["sinks"]
    return outcomes, sinks["A"].seen(), sinks["B"].seen()


def place(sandbox, lab):  # noqa: F811
    path = f"{sandbox}/vrf/{lab['vb']}"
    os.makedirs(path)
    programs.attach(path, sockprog.Settings(ifindex=lab["vb_index"]))
    return path


def attach_egress(path, allowed):
    counter = egressprog.new_counter()
    prog = egressprog.load(allowed, counter)
    try:
        cgroup_link.attach(path, prog, syscall.CGROUP_INET_EGRESS)
    finally:
        os.close(prog)
    return counter


def egress_of(path):
    """(attachment, allowed ifindexes, packets dropped) of the one egress program on `path`."""
    [attached] = cgroup_link.query(path, syscall.CGROUP_INET_EGRESS)
    _, allowed, dropped = programs.read_back_egress(attached.prog_id)
    return attached, allowed, dropped


def test_the_bound_device_alone_lets_datagrams_out_by_another_link(egress_lab, sandbox_cgroup,
                                                                   throwaway_user):
    """The kernel fact the egress program exists for (and the attack's
    positive control): with only the sock-create program, an unprivileged
    process reaches peer A through va."""
    placed = place(sandbox_cgroup, egress_lab)
    outcomes, a, b = attack(egress_lab, placed, throwaway_user())
    assert b == ["legit"], (outcomes, a, b)
    assert KERNEL_LEAKS <= set(a), (json.dumps(outcomes), a)
    # What the kernel itself refuses to a bound socket.
    assert outcomes["so_bindtoifindex"] == "EPERM"


@pytest.mark.parametrize("raw", [False, True], ids=["unprivileged", "cap_net_raw"])
def test_the_egress_program_keeps_every_packet_on_the_target(egress_lab, sandbox_cgroup, throwaway_user, raw):
    placed = place(sandbox_cgroup, egress_lab)
    counter = attach_egress(placed, {egress_lab["vb_index"]})
    try:
        outcomes, a, b = attack(egress_lab, placed, throwaway_user(), raw=raw)
        assert a == [], f"left by va: {a} ({outcomes})"
        assert b == ["legit"], (outcomes, b)
        assert outcomes["legit"] == "sent"
        # Each way around the binding that got as far as the output hook was dropped, and said so.
        dropped = {name for name, outcome in outcomes.items() if outcome == "EPERM"}
        assert KERNEL_LEAKS | (RAW_LEAKS if raw else set()) <= dropped, json.dumps(outcomes)
        assert egressprog.read_counter(counter) >= len(dropped & (KERNEL_LEAKS | RAW_LEAKS))
        # Read back from the kernel, as `pam-vrf status` does.
        [attached] = cgroup_link.query(placed, syscall.CGROUP_INET_EGRESS)
        assert programs.read_back_egress(attached.prog_id)[2] == egressprog.read_counter(counter)
    finally:
        os.close(counter)


def test_the_egress_program_reads_back_its_devices(sandbox_cgroup):
    counter = egressprog.new_counter()
    try:
        prog = egressprog.load({7, 3, 42}, counter)
        try:
            fd = syscall.prog_get_fd_by_id(syscall.prog_info(prog).id)
            try:
                info = syscall.prog_info(fd)
            finally:
                os.close(fd)
        finally:
            os.close(prog)
        assert egressprog.describe(info.xlated) == {3, 7, 42}
        assert len(info.map_ids) == 1
        assert sockprog.describe(sockprog.build(sockprog.Settings(ifindex=5))) is not None
        assert egressprog.describe(sockprog.build(sockprog.Settings(ifindex=5))) is None
    finally:
        os.close(counter)


def test_a_helper_placement_carries_the_egress_program(egress_lab, helper_factory, vrf_conf, throwaway_user,
                                                       sandbox_cgroup):
    """The same attacks from a process the real helper placed (`pam-vrf exec`,
    granted by exec=): nothing leaves by va; `pam-vrf status` counts the drops."""
    user = throwaway_user()
    vb = egress_lab["vb"]
    helper = helper_factory(vrf_conf(f"{user.pw_name}  {vb}  plain exec={vb}\n*  -\n"), netns=egress_lab["host"])
    argv = ["/usr/local/bin/pam-vrf", "exec", "--socket", helper.socket, vb, "--",
            PY, "-c", _text(), "attack", json.dumps(egress_lab["cfg"])]
    proc = spawn(argv, netns=egress_lab["host"], cgroup_dir=sandbox_cgroup, user=user,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                 env={"PATH": "/usr/bin:/bin"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (err, helper.output())
    outcomes = json.loads(out)
    sinks = egress_lab["sinks"]
    assert sinks["A"].seen() == [], outcomes
    assert sinks["B"].seen() == ["legit"], outcomes
    assert {k for k, v in outcomes.items() if v == "EPERM"} >= KERNEL_LEAKS | HELPER_REFUSES, outcomes

    placed = f"{sandbox_cgroup}/{egress_lab['host']}-ns/vrf/{vb}"
    attached, allowed, dropped = egress_of(placed)
    assert allowed == {egress_lab["vb_index"]} and dropped >= len(KERNEL_LEAKS)
    status = sh("nsenter", f"--net=/run/netns/{egress_lab['host']}", PY, "-m", "pam_vrf", "status",
                env=dict(os.environ, PYTHONPATH=REPO), check=True).stdout
    block = status.split(placed, 1)[1]
    assert f"egress prog {attached.prog_id} (pam-vrf): out only by {vb}" in block, status
    assert f"dropped {programs.read_back_egress(attached.prog_id)[2]} packet" in block, status


def test_drop_watch_reports_what_each_vrf_dropped_since_its_last_look(egress_lab, sandbox_cgroup, throwaway_user):
    """pam-vrf trace's drop lines (pam_vrf.drops): the first look takes note,
    later looks report what grew, per program."""
    from pam_vrf.drops import DropWatch
    placed = place(sandbox_cgroup, egress_lab)
    counter = attach_egress(placed, {egress_lab["vb_index"]})
    try:
        watch = DropWatch()
        cgroups = [(placed, egress_lab["vb"]), (f"{sandbox_cgroup}/gone", "x")]
        attack(egress_lab, placed, throwaway_user())
        assert watch.poll(cgroups) == []            # what came before the tracer started
        before = egressprog.read_counter(counter)
        outcomes, a, _ = attack(egress_lab, placed, throwaway_user())
        assert a == []
        [(vrf, new, total)] = watch.poll(cgroups)
        assert vrf == egress_lab["vb"] and total == egressprog.read_counter(counter)
        assert new == total - before >= len(KERNEL_LEAKS), outcomes
        assert watch.poll(cgroups) == []
    finally:
        os.close(counter)


def test_a_restarted_helper_gives_remembered_sessions_the_egress_program(egress_lab, helper_factory, vrf_conf,
                                                                        throwaway_user, sandbox_cgroup):
    """An upgrade from a helper without the egress program (simulated: the
    program detached by hand) or a program lost by hand: the next helper to
    start attaches it to every cgroup of its state file."""
    user = throwaway_user()
    vb = egress_lab["vb"]
    helper = helper_factory(vrf_conf(f"{user.pw_name}  {vb}  plain exec={vb}\n"), netns=egress_lab["host"])
    argv = ["/usr/local/bin/pam-vrf", "exec", "--socket", helper.socket, vb, "--", "sleep", "60"]
    sleeper = spawn(argv, netns=egress_lab["host"], cgroup_dir=sandbox_cgroup, user=user, cwd="/",
                    env={"PATH": "/usr/bin:/bin"})
    try:
        placed = f"{sandbox_cgroup}/{egress_lab['host']}-ns/vrf/{vb}"
        wait_until("the sleeper to be placed", lambda: sleeper.pid in members(placed))
        assert len(cgroup_link.query(placed, syscall.CGROUP_INET_EGRESS)) == 1
        wait_until("the state file", lambda: os.path.exists(os.path.join(helper.workdir, "attachments.json")))
        helper.stop()
        assert cgroup_link.detach(placed, syscall.CGROUP_INET_EGRESS)
        helper.start()
        assert egress_of(placed)[1] == {egress_lab["vb_index"]}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_status_names_the_multicast_join_program(egress_lab, sandbox_cgroup):
    from pam_vrf.bpf import joinprog
    placed = place(sandbox_cgroup, egress_lab)
    prog = joinprog.load({egress_lab["vb_index"]})
    try:
        cgroup_link.attach(placed, prog, syscall.CGROUP_SETSOCKOPT)
    finally:
        os.close(prog)
    status = sh(PY, "-m", "pam_vrf", "status", env=dict(os.environ, PYTHONPATH=REPO), check=True).stdout
    block = status.split(placed, 1)[1]
    assert "(pam_vrf_join): multicast joins only on the devices above" in block, status
