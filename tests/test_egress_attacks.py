"""An adversarial review of the egress confinement (issue 14 item 1): ways
around the sock-create binding and the egress program beyond
testlab/egress.py's, tried from an unprivileged process in a placed cgroup.
Lab: test_egress's (peers A and B answer 10.213.0.2 behind va and vb, the
target is vb, `plain`). Peer A must never see a packet of the session.

Three land on the current code (the tests assert the secure behaviour):
  * a multicast membership on another link (or on none: IPv6 picks one by
    the main table): the kernel's own IGMP/MLD reports (no socket of the
    session: the egress hook never sees them) carry the session's group
    and source addresses out of va;
  * an MPTCP listener: its kernel-made subflow is not bound, so it takes
    SYNs from every link, and a SYN-cookie SYN-ACK (skb without a socket:
    the egress hook skips it) leaves by va; the handshake completes and
    peer A's data reaches the session;
  * a cgroup removed and made again at a path the helper remembers gets
    the sock-create program back but not the egress program.
The others hold and stay as tests of what holds: datagram variants (GSO,
zerocopy, MSG_CONFIRM, UDP-Lite, v4-mapped, IP options, sendmmsg, TCP fast
open), an MPTCP client, io_uring (inline, io-wq, SQPOLL), user and network
namespaces, unprivileged BPF and link creation.
"""

import json
import os
import shutil
import subprocess
import threading
import time
import textwrap

import pytest

from testlab import progs
from testlab.run import PY, public_dir, run_py, no_user_namespaces_here, spawn
from test_kernel_placement import lab  # noqa: F401  (the fixture)
from test_egress import Sink, _text, egress_lab, place, attach_egress  # noqa: F401  (egress_lab: the fixture)
from pam_vrf import programs
from pam_vrf.bpf import cgroup_link, sockprog, syscall

pytestmark = pytest.mark.root


PORT = 7001


# -- peers' side: a frame sniffer, a TCP client ---------------------------------------

SNIFF = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))   # ETH_P_ALL
    s.bind((sys.argv[1], 0))
    print("ready", flush=True)
    while True:
        print(s.recv(65535).hex(), flush=True)
""")


class Sniffer(Sink):
    """Every frame arriving at a peer's link, as hex (root, in the peer's
    netns); test_egress's Sink reads and closes it."""

    def __init__(self, netns, dev):
        self.proc = spawn([PY, "-c", SNIFF, dev], netns=netns, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def carrying(self, *needles):
        """The needles (hex) seen in some frame."""
        return {n for n in needles if any(n in frame for frame in self.lines)}


@pytest.fixture
def sniffers(egress_lab):  # noqa: F811
    made = {"A": Sniffer(egress_lab["peer_a"], egress_lab["pa"]), "B": Sniffer(egress_lab["peer_b"], egress_lab["pb"])}
    yield made
    for s in made.values():
        s.close()


def start_helper(egress_lab, helper_factory, vrf_conf, user):  # noqa: F811
    vb = egress_lab["vb"]
    return helper_factory(vrf_conf(f"{user.pw_name}  {vb}  plain exec={vb}\n*  -\n"), netns=egress_lab["host"])


def pam_vrf_exec(egress_lab, helper, user, argv, cgroup_dir=None):  # noqa: F811
    """`pam-vrf exec vb -- argv` as `user` (as test_egress does): a Popen."""
    argv = ["/usr/local/bin/pam-vrf", "exec", "--socket", helper.socket, egress_lab["vb"], "--", *map(str, argv)]
    return spawn(argv, netns=egress_lab["host"], cgroup_dir=cgroup_dir, user=user, stdin=subprocess.PIPE,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"})


def exec_placed(egress_lab, helper_factory, vrf_conf, user, sandbox, code, *args):  # noqa: F811
    """`code` run by the real helper's `pam-vrf exec` from cgroup `sandbox`: a Popen."""
    helper = start_helper(egress_lab, helper_factory, vrf_conf, user)
    return pam_vrf_exec(egress_lab, helper, user, [PY, "-c", code, *args], cgroup_dir=sandbox)


# -- landed: multicast memberships -------------------------------------------------------

# Groups (and a source) the session chooses: 14 free bytes per IPv6 group, 16 per source.
GROUPS = {
    "v4_va": ("239.213.77.5", "efd54d05"), "v4_vb": ("239.213.77.6", "efd54d06"),
    "v6_va": ("ff05::213:7705", "ff050000000000000000000002137705"),
    "v6_vb": ("ff05::213:7706", "ff050000000000000000000002137706"),
    "ssm_va": ("ff35::213:7707", "ff350000000000000000000002137707"),
    "v6_any": ("ff05::213:7709", "ff050000000000000000000002137709"),
}
SSM_SOURCE = ("2001:db8:213:7708::1", "20010db8021377080000000000000001")

JOIN = progs.source("egress_join")


def test_a_multicast_membership_sends_no_report_by_another_link(egress_lab, sniffers, helper_factory,  # noqa: F811
                                                                  vrf_conf, throwaway_user, sandbox_cgroup):
    """IP_ADD_MEMBERSHIP (ip_mreqn) and IPV6_JOIN_GROUP / MCAST_JOIN_SOURCE_GROUP
    name any link, whatever the socket's bound device; the kernel then
    sends IGMPv3/MLDv2 reports for the group by that link from its own
    per-netns socket (or none), so no cgroup program of the session sees
    them. An IPv6 join naming no link (ifindex 0) picks one by the main
    table, ignoring the bound device: va here. Found: peer A receives
    reports carrying the session's groups and source address (a covert
    channel out of the VRF). The joins on vb are the control: B sees those
    reports."""
    groups = {name: addr for name, (addr, _) in GROUPS.items()}
    proc = exec_placed(egress_lab, helper_factory, vrf_conf, throwaway_user(), sandbox_cgroup, JOIN,
                       egress_lab["va_index"], egress_lab["vb_index"], json.dumps(groups), SSM_SOURCE[0])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    outcomes = json.loads(out)
    time.sleep(1)
    hexes = {name: h for name, (_, h) in GROUPS.items()}
    on_b = sniffers["B"].carrying(hexes["v4_vb"], hexes["v6_vb"])
    assert on_b == {hexes["v4_vb"], hexes["v6_vb"]}, (outcomes, "the control: B sees the session's own reports")
    on_a = sniffers["A"].carrying(hexes["v4_va"], hexes["v6_va"], hexes["ssm_va"], hexes["v6_any"], SSM_SOURCE[1])
    assert on_a == set(), f"peer A saw the session's group/source addresses {on_a} ({outcomes})"


# -- landed: an MPTCP listener ------------------------------------------------------------

LISTEN = progs.source("egress_listen")

CONNECT = progs.source("egress_connect")


def test_an_mptcp_listener_takes_no_connection_by_another_link(egress_lab, helper_factory, vrf_conf,  # noqa: F811
                                                               throwaway_user, sandbox_cgroup):
    """socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP): the sock-create program
    binds the MPTCP socket, but the TCP subflow the kernel makes for it
    (sock_create_kern: no sock-create program) is not bound. Listening,
    it takes SYNs arriving by va; with the queue full (listen(0), or
    tcp_syncookies=2) the SYN-ACK is a cookie sent without a socket, which
    the egress hook skips (it needs skb->sk). Found: peer A completes the
    handshake through va and its data reaches the session. Then B (the
    target's link) must connect: today it cannot, the unbound subflow
    answers by the main table's route (va here) and the egress program
    drops that SYN-ACK."""
    port = 8213
    proc = exec_placed(egress_lab, helper_factory, vrf_conf, throwaway_user(), sandbox_cgroup, LISTEN, port, 8)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    a = run_py(CONNECT, netns=egress_lab["peer_a"], args=("10.213.0.1", port, "A", 3))
    b = run_py(CONNECT, netns=egress_lab["peer_b"], args=("10.213.0.1", port, "B", 1))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    listened = json.loads(out)
    assert "connected" not in a and "A" not in listened["got"], \
        f"peer A connected through va: {a}, the session read {listened}"
    assert b == ["connected"] and "B" in listened["got"], (b, listened)


# -- landed: a cgroup re-created at a path the helper remembers -------------------------------

def test_a_cgroup_remade_at_a_remembered_path_gets_the_egress_program(egress_lab, helper_factory,  # noqa: F811
                                                                      vrf_conf, throwaway_user, sandbox_cgroup):
    """The helper remembers which devices each cgroup's egress program
    allows (Attachments._egress, by path) and forgets a removed cgroup only
    at its next prune (every 10 s). A cgroup removed and made again at the
    same path in between (user@UID.service stopped after logout and started
    by the next login; a service's tree trimmed by systemd; here rmdir by
    hand) gets the sock-create program again (the kernel is asked) but not
    the egress program (the cache says it is there). Found: the second
    `pam-vrf exec` runs bound but unfiltered, and IP_PKTINFO reaches A."""
    user = throwaway_user()
    helper = start_helper(egress_lab, helper_factory, vrf_conf, user)
    first = pam_vrf_exec(egress_lab, helper, user, ["true"], cgroup_dir=sandbox_cgroup)
    assert first.wait(timeout=30) == 0, first.stderr.read()
    placed = f"{sandbox_cgroup}/{egress_lab['host']}-ns/vrf/{egress_lab['vb']}"
    assert len(cgroup_link.query(placed, syscall.CGROUP_INET_EGRESS)) == 1
    os.rmdir(placed)                    # empty: what systemd does to a stopped unit's tree
    proc = pam_vrf_exec(egress_lab, helper, user, [PY, "-c", _text(), "attack", json.dumps(egress_lab["cfg"])],
                        cgroup_dir=sandbox_cgroup)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (err, helper.output())
    outcomes = json.loads(out)
    assert egress_lab["sinks"]["B"].seen() == ["legit"], outcomes
    assert egress_lab["sinks"]["A"].seen() == [], f"left by va: {outcomes}"
    assert len(cgroup_link.query(placed, syscall.CGROUP_INET_EGRESS)) == 1


# -- what holds ------------------------------------------------------------------------------

VARIANTS = progs.source("egress_variants")


def test_datagram_variants_leave_only_by_the_target(egress_lab, sandbox_cgroup, throwaway_user):  # noqa: F811
    """UDP GSO, MSG_ZEROCOPY, MSG_CONFIRM, UDP-Lite, an IPv4-mapped
    destination on an AF_INET6 socket, IP_OPTIONS source routes (UDP and a
    ping socket), each with IP_PKTINFO naming va; sendmmsg with a control
    message per datagram; TCP fast open to a link-local address of va.
    With the sock-create program alone most of them reach A (the control);
    with the egress program none does: the hook runs before segmentation
    and for every datagram of a batch."""
    placed = place(sandbox_cgroup, egress_lab)
    user = throwaway_user()
    args = (egress_lab["va_index"], egress_lab["token"])
    control = run_py(VARIANTS, netns=egress_lab["host"], cgroup_dir=placed, user=user, args=args)
    leaked = set(egress_lab["sinks"]["A"].seen())
    # (UDP-Lite reaches no UDP sink; IP_OPTIONS source routes are EPERM already.)
    assert {"udp_gso", "msg_zerocopy", "msg_confirm", "v4mapped_pktinfo", "sendmmsg_cmsgs1"} <= leaked, \
        (control, leaked)
    egress_lab["sinks"]["A"].lines.clear()

    counter = attach_egress(placed, {egress_lab["vb_index"]})
    try:
        outcomes = run_py(VARIANTS, netns=egress_lab["host"], cgroup_dir=placed, user=user, args=args)
        assert egress_lab["sinks"]["A"].seen() == [], outcomes
        assert "sendmmsg_cmsgs0" in egress_lab["sinks"]["B"].seen(), outcomes
        assert outcomes["tfo_scope"] == "EINVAL", outcomes
        assert all(v == "EPERM" for k, v in outcomes.items() if k != "tfo_scope"), outcomes
    finally:
        os.close(counter)


MPTCP_CLIENT = textwrap.dedent("""
    import json, socket, sys
    out = {}
    for name, fam, addr in (("v4", socket.AF_INET, ("10.213.0.2", 7000)),
                            ("ll6", socket.AF_INET6, ("fe80::2", 7000, 0, int(sys.argv[1])))):
        s = socket.socket(fam, socket.SOCK_STREAM, 262); s.settimeout(3)
        bound = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\\0").decode()
        try:
            s.connect(addr); answer = s.recv(10).decode()
        except OSError as e:
            answer = type(e).__name__
        out[name] = [bound, answer]
    print(json.dumps(out))
""")


def test_an_mptcp_client_is_refused_and_its_subflow_filtered(egress_lab, sandbox_cgroup, throwaway_user):  # noqa: F811
    """The MPTCP socket reports the target as its bound device, yet its
    first subflow follows the main table (and a link-local scope id of
    va): with a binding alone (iproute2's program) it reaches peer A. The
    egress program sees the subflow (the kernel gives it the MPTCP socket's
    cgroup) and drops it: no connection by va. pam-vrf's own program
    refuses MPTCP sockets outright (EPERM: applications fall back to TCP)."""
    placed = f"{sandbox_cgroup}/vrf/{egress_lab['vb']}"
    os.makedirs(placed)
    prog = syscall.prog_load(sockprog.iproute2_program(egress_lab["vb_index"]))
    try:
        cgroup_link.attach(placed, prog)
    finally:
        os.close(prog)
    user = throwaway_user()
    control = run_py(MPTCP_CLIENT, netns=egress_lab["host"], cgroup_dir=placed, user=user,
                     args=(egress_lab["va_index"],), timeout=60)
    assert control == {"v4": [egress_lab["vb"], "A"], "ll6": [egress_lab["vb"], "A"]}, control
    counter = attach_egress(placed, {egress_lab["vb_index"]})
    try:
        outcomes = run_py(MPTCP_CLIENT, netns=egress_lab["host"], cgroup_dir=placed, user=user,
                          args=(egress_lab["va_index"],), timeout=60)
        assert "A" not in {answer for _, answer in outcomes.values()}, outcomes
    finally:
        os.close(counter)
    programs.attach(placed, sockprog.Settings(ifindex=egress_lab["vb_index"]))
    refused = run_py(MPTCP_SOCKETS, cgroup_dir=placed, user=user)
    assert refused == {"inet": "EPERM", "inet6": "EPERM", "tcp": "ok"}, refused


MPTCP_SOCKETS = textwrap.dedent("""
    import errno, json, socket
    out = {}
    for name, family, proto in (("inet", socket.AF_INET, 262), ("inet6", socket.AF_INET6, 262),
                                ("tcp", socket.AF_INET, 0)):
        try:
            socket.socket(family, socket.SOCK_STREAM, proto).close(); out[name] = "ok"
        except OSError as e:
            out[name] = errno.errorcode[e.errno]
    print(json.dumps(out))
""")


NAMESPACES = progs.source("egress_namespaces")


def test_namespaces_and_bpf_give_the_user_no_way_out(egress_lab, sandbox_cgroup, throwaway_user):  # noqa: F811
    """No link of the host's netns can be made (so a user causes no link
    event the helper acts on), no BPF program loaded
    (kernel.unprivileged_bpf_disabled), and a user namespace's capabilities
    do not count for the host's netns (rebinding, raw and packet sockets:
    EPERM). A socket made in a netns of the user's own and passed back
    reaches nothing: the sock-create program bound it too, to the target's
    ifindex, which names no device there (ENODEV; a device the user makes
    there with that index still leads nowhere but that netns)."""
    if (why := no_user_namespaces_here()):
        pytest.skip(why)
    placed = place(sandbox_cgroup, egress_lab)
    counter = attach_egress(placed, {egress_lab["vb_index"]})
    try:
        out = run_py(NAMESPACES, netns=egress_lab["host"], cgroup_dir=placed, user=throwaway_user(),
                     args=(egress_lab["va_index"],), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    finally:
        os.close(counter)
    assert out == {"ip_link_add": "EPERM", "bpf_prog_load": "EPERM", "userns_bindtoifindex": "EPERM",
                   "userns_raw": "EPERM", "userns_packet": "EPERM", "netns_socket_send": "ENODEV"}, out
    assert egress_lab["sinks"]["A"].seen() == []


URING_C = r"""
/* io_uring socket()+sendmsg(IP_PKTINFO) as a placed user would: inline, io-wq, SQPOLL. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

struct ring {
	int fd;
	unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask, *sq_flags;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
	unsigned flags;
};

static int setup(struct ring *r, unsigned flags)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = flags;
	p.sq_thread_idle = 10000;
	r->fd = (int)syscall(__NR_io_uring_setup, 4, &p);
	if (r->fd < 0)
		return -errno;
	r->flags = flags;
	size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	char *sq = mmap(0, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
	char *cq = mmap(0, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
	r->sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
		return -errno;
	r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
	r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned *)(sq + p.sq_off.array);
	r->sq_flags = (unsigned *)(sq + p.sq_off.flags);
	r->cq_head = (unsigned *)(cq + p.cq_off.head);
	r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
	r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	return 0;
}

/* Submit one SQE and wait for its completion; returns cqe->res. */
static int run(struct ring *r, struct io_uring_sqe *tmpl)
{
	unsigned tail = *r->sq_tail, idx = tail & *r->sq_mask;
	r->sqes[idx] = *tmpl;
	r->sq_array[idx] = idx;
	__atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
	unsigned enter = IORING_ENTER_GETEVENTS;
	if ((r->flags & IORING_SETUP_SQPOLL) &&
	    (__atomic_load_n(r->sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_NEED_WAKEUP))
		enter |= IORING_ENTER_SQ_WAKEUP;
	if (syscall(__NR_io_uring_enter, r->fd, (r->flags & IORING_SETUP_SQPOLL) ? 0 : 1, 1, enter, NULL, 0) < 0)
		return -errno;
	while (__atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) == *r->cq_head)
		syscall(__NR_io_uring_enter, r->fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0);
	int res = r->cqes[*r->cq_head & *r->cq_mask].res;
	__atomic_store_n(r->cq_head, *r->cq_head + 1, __ATOMIC_RELEASE);
	return res;
}

static void attempt(const char *name, struct ring *r, unsigned sqe_flags, int other, const char *token,
		    const char *ip, int port, int last)
{
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	sqe.opcode = IORING_OP_SOCKET;
	sqe.fd = AF_INET;
	sqe.off = SOCK_DGRAM;
	sqe.flags = (unsigned char)sqe_flags;
	int s = run(r, &sqe);
	char dev[16] = "";
	socklen_t len = sizeof(dev);
	if (s >= 0)
		getsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, dev, &len);

	char payload[64];
	snprintf(payload, sizeof(payload), "%s:%s", token, name);
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
	inet_pton(AF_INET, ip, &to.sin_addr);
	struct iovec iov = {payload, strlen(payload)};
	char control[CMSG_SPACE(sizeof(struct in_pktinfo))];
	memset(control, 0, sizeof(control));
	struct msghdr msg = {.msg_name = &to, .msg_namelen = sizeof(to), .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = control, .msg_controllen = sizeof(control)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = IPPROTO_IP;
	c->cmsg_type = IP_PKTINFO;
	c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
	((struct in_pktinfo *)CMSG_DATA(c))->ipi_ifindex = other;
	int sent = -EBADF;
	if (s >= 0) {
		memset(&sqe, 0, sizeof(sqe));
		sqe.opcode = IORING_OP_SENDMSG;
		sqe.fd = s;
		sqe.addr = (unsigned long)&msg;
		sqe.flags = (unsigned char)sqe_flags;
		sent = run(r, &sqe);
	}
	printf("\"%s\": [\"%s\", %d, %d]%s", name, dev, s < 0 ? s : 0, sent, last ? "}\n" : ", ");
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: uring OTHER_IFINDEX TOKEN IP PORT\n");
		return 2;
	}
	int other = atoi(argv[1]), port = atoi(argv[4]);
	struct ring plain, sqpoll;
	int e1 = setup(&plain, 0), e2 = setup(&sqpoll, IORING_SETUP_SQPOLL);
	if (e1 || e2) {
		fprintf(stderr, "io_uring_setup: %d %d\n", e1, e2);
		return 1;
	}
	/* Made before placement: wait until the caller has moved us. */
	printf("ready\n");
	fflush(stdout);
	char line[8];
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	printf("{");
	attempt("uring_inline", &plain, 0, other, argv[2], argv[3], port, 0);
	attempt("uring_iowq", &plain, IOSQE_ASYNC, other, argv[2], argv[3], port, 0);
	attempt("uring_sqpoll", &sqpoll, 0, other, argv[2], argv[3], port, 1);
	return 0;
}
"""


def test_io_uring_sockets_and_sends_are_the_sessions(egress_lab, sandbox_cgroup, throwaway_user):  # noqa: F811
    """IORING_OP_SOCKET and IORING_OP_SENDMSG (IP_PKTINFO naming va) run
    inline, by an io-wq worker (IOSQE_ASYNC) and by an SQPOLL thread, the
    rings made *before* the process was moved into the placed cgroup (as
    the helper moves a `pam-vrf exec` caller). The io threads belong to the
    process and move with it (cgroup.procs), so every socket is bound to
    vb and every send by va is EPERM; A sees nothing."""
    placed = place(sandbox_cgroup, egress_lab)
    counter = attach_egress(placed, {egress_lab["vb_index"]})
    outside = f"{sandbox_cgroup}/outside"
    os.mkdir(outside)
    where = public_dir("pam-vrf-uring-")       # the user must execute it
    src, binary = os.path.join(where, "uring.c"), os.path.join(where, "uring")
    try:
        with open(src, "w") as f:
            f.write(URING_C)
        subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-o", binary, src], check=True)
        proc = spawn([str(binary), str(egress_lab["va_index"]), egress_lab["token"], "10.213.0.2", str(PORT)],
                     netns=egress_lab["host"], cgroup_dir=outside, user=throwaway_user(), stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        threads = os.listdir(f"/proc/{proc.pid}/task")
        assert len(threads) == 2            # the process and its SQPOLL thread (iou-sqp)
        with open(os.path.join(placed, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        out, err = proc.communicate("go\n", timeout=30)
        assert proc.returncode == 0, err
    finally:
        os.close(counter)
        shutil.rmtree(where, ignore_errors=True)
    outcomes = json.loads(out)
    eperm = -1
    assert outcomes == {name: [egress_lab["vb"], 0, eperm]
                        for name in ("uring_inline", "uring_iowq", "uring_sqpoll")}, outcomes
    assert egress_lab["sinks"]["A"].seen() == []
