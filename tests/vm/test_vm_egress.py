"""Egress confinement on a real VRF: op1's ssh session, placed in mgmt by
the helper, tries every way testlab/egress.py knows to send a datagram out
of veth-prod (a default-VRF link whose peer, prod-peer, answers the same
addresses as mgmt-peer): IP_PKTINFO, an IPv6 link-local scope id, ping
sockets, IP_UNICAST_IF/IPV6_UNICAST_IF, SO_BINDTOIFINDEX, broadcast and
multicast; a multicast join on veth-prod or on no link (EPERM: the
setsockopt program), an MPTCP socket (EPERM). prod-peer must see none of them; mgmt-peer sees the session's
ordinary datagram. Without the egress program (detached by root for the
control half) IP_PKTINFO and the scope id reach prod-peer: the kernel fact
(shown first on this kernel, 6.1) the program exists for.

Then the VRF's links change under a live session: a link enslaved to mgmt
becomes usable at once, and once released (a default-VRF link again) it is
refused; `pam-vrf status` counts the drops.
"""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PAM_VRF, PY, VRF, ifindex, run, wait_until  # noqa: E402

pytestmark = vmlib.vm_only

REPO = os.path.dirname(os.path.dirname(vmlib.HERE))
EGRESS = os.path.join(REPO, "testlab", "egress.py")
PORT = 7001
MEMBER = "op1"              # provisioned: in netops, `@netops mgmt`
KERNEL_LEAKS = {"ip_pktinfo", "ipv6_scope_id"}


class Sink:
    def __init__(self, netns, token):
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, PY, EGRESS, "sink", token, str(PORT)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.lines = []
        threading.Thread(target=lambda: self.lines.extend(line.strip() for line in self.proc.stdout),
                         daemon=True).start()

    def seen(self):
        time.sleep(1.0)
        return sorted(set(self.lines))

    def close(self):
        self.proc.kill()
        self.proc.wait()


def link_local(netns, dev):
    addrs = json.loads(run("ip", "-n", netns, "-j", "addr", "show", "dev", dev).stdout)[0]["addr_info"]
    return next(a["local"] for a in addrs if a["family"] == "inet6" and a["scope"] == "link")


@pytest.fixture
def sinks():
    token = f"t{vmlib.tag()}"
    made = {}
    try:
        for name in ("mgmt-peer", "prod-peer"):
            made[name] = Sink(name, token)
        yield token, made
    finally:
        for sink in made.values():
            sink.close()


def config(token):
    return {"token": token, "ip4": "10.99.0.2", "port": PORT, "other": ifindex("veth-prod"),
            "ll6": link_local("prod-peer", "eth0"), "bcast4": "10.99.0.255"}


def session_cgroup_of(login):
    shell, _ = vmlib._shell_info(login.readline())
    return shell, os.path.join(vmlib.cgroup_mount(), vmlib.cgroup_of(shell).lstrip("/"))


SCRIPT = (f"{vmlib.SHELL_INFO}\n"
          f"while read line; do {PY} {EGRESS} attack \"$line\"; done\n")


def test_no_datagram_of_a_placed_session_leaves_by_a_default_vrf_link(sinks):
    token, sink = sinks
    with vmlib.Login(MEMBER, SCRIPT) as login:
        shell, placed = session_cgroup_of(login)
        assert placed.endswith(f"/vrf/{VRF}"), placed
        login.send(json.dumps(config(token)))
        outcomes = json.loads(login.readline())
        assert sink["prod-peer"].seen() == [], outcomes
        assert sink["mgmt-peer"].seen() == ["legit"], outcomes
        refused = {k for k, v in outcomes.items() if v == "EPERM"}
        assert KERNEL_LEAKS | {"join4_other", "join6_other", "join6_main_table", "mptcp_socket"} <= refused, outcomes
        # Ping sockets where Debian's systemd opens them to every group (sysctl.d/50-default.conf).
        assert outcomes["ping4_pktinfo"] in ("EPERM", "EACCES"), outcomes
        status = run(PAM_VRF, "status").stdout
        block = status.split(placed, 1)[1].split("\n/", 1)[0]
        assert f"out only by {VRF}, veth-mgmt;" in block or f"out only by veth-mgmt, {VRF};" in block, block

        # The control: root takes the egress program off this one session.
        detach = ("import sys; from pam_vrf.bpf import cgroup_link, syscall; "
                  "print(cgroup_link.detach(sys.argv[1], syscall.CGROUP_INET_EGRESS))")
        assert run(PY, "-c", detach, placed).stdout.strip() == "True"
        login.send(json.dumps(config(token)))
        json.loads(login.readline())
        leaked = [name for name in sink["prod-peer"].seen() if name in KERNEL_LEAKS]
        assert sorted(leaked) == sorted(KERNEL_LEAKS), sink["prod-peer"].lines


@pytest.fixture
def spare_link():
    """A veth to a namespace of its own answering 10.98.0.2, in the default VRF."""
    ns, dev = f"egr{vmlib.tag()}", f"ve{vmlib.tag()}"
    run("ip", "netns", "add", ns)
    try:
        run("ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "addr", "add", "10.98.0.1/24", "dev", dev)
        run("ip", "link", "set", dev, "up")
        run("ip", "-n", ns, "addr", "add", "10.98.0.2/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns, dev
    finally:
        run("ip", "link", "del", dev, check=False)
        run("ip", "netns", "del", ns, check=False)


def test_the_allowed_links_follow_the_vrf_under_a_live_session(spare_link):
    ns, dev = spare_link
    token = f"t{vmlib.tag()}"
    sink = Sink(ns, token)
    try:
        with vmlib.Login(MEMBER, SCRIPT) as login:
            shell, placed = session_cgroup_of(login)
            cfg = {"token": token, "ip4": "10.98.0.2", "port": PORT, "other": ifindex(dev),
                   "ll6": "fe80::1"}

            # In the default VRF: the session's own route lookup misses it, pktinfo is dropped.
            login.send(json.dumps(cfg))
            outcomes = json.loads(login.readline())
            assert sink.seen() == [] and outcomes["ip_pktinfo"] == "EPERM", outcomes

            # Enslaved to mgmt (with its connected route): reachable from the session at once.
            run("ip", "link", "set", dev, "master", VRF)
            run("ip", "addr", "replace", "10.98.0.1/24", "dev", dev)
            run("ip", "link", "set", dev, "up")

            def arrives():
                login.send(json.dumps(dict(cfg, token=token)))
                json.loads(login.readline())
                return "legit" in sink.seen()
            wait_until("the enslaved link to carry the session's datagram", arrives, timeout=20, interval=1)

            # Released again: a default-VRF link, refused even by name.
            run("ip", "link", "set", dev, "nomaster")
            run("ip", "addr", "replace", "10.98.0.1/24", "dev", dev)
            sink.lines.clear()

            def refused():
                login.send(json.dumps(dict(cfg, token=token)))
                got = json.loads(login.readline())
                return got["ip_pktinfo"] == "EPERM"
            wait_until("the released link to be refused", refused, timeout=20, interval=1)
            assert "ip_pktinfo" not in sink.seen()
            status = run(PAM_VRF, "status").stdout
            block = status.split(placed, 1)[1].split("\n/", 1)[0]
            assert "dropped 0 packets" not in block and "dropped" in block, block
    finally:
        sink.close()
