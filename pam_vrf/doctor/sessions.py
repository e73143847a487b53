"""Placed sessions without the egress or the multicast-join program.

A cgroup carrying pam-vrf's sock-create program binds its sockets to the
VRF, but only the egress program beside it keeps their datagrams from
leaving by another link (IP_PKTINFO, an IPv6 scope id: see the README's
security table), and only the setsockopt program keeps their multicast
joins (whose reports the kernel sends) on the VRF's links. A helper older
than 0.3.0 attached neither, and root can detach them; the helper gives
every cgroup it remembers both when it starts.
"""

from pam_vrf import cgroup, programs
from pam_vrf.bpf import cgroup_link, egressprog, joinprog, sockprog, syscall
from pam_vrf.bpf.syscall import BpfError
from pam_vrf.doctor import Finding


def _ours(path, attach_type, name):
    for item in cgroup_link.query(path, attach_type):
        try:
            if programs.read_back_name(item.prog_id) == name:
                return True
        except BpfError:
            continue                # detached while we looked
    return False


def check(findings, mount):
    placed, bare = 0, []
    for path, name in cgroup.vrf_dirs(mount):
        try:
            if not _ours(path, syscall.CGROUP_INET_SOCK_CREATE, sockprog.PROG_NAME):
                continue
            placed += 1
            if not (_ours(path, syscall.CGROUP_INET_EGRESS, egressprog.PROG_NAME)
                    and _ours(path, syscall.CGROUP_SETSOCKOPT, joinprog.PROG_NAME)):
                bare.append((path, name))
        except BpfError:
            continue                # gone while we looked: an ended session
    if bare:
        shown = ", ".join(f"{p} ({n})" for p, n in bare[:5]) + (" ..." if len(bare) > 5 else "")
        findings.append(Finding(
            "sessions", "error", f"{len(bare)} of {placed} placed cgroup(s) carry no egress program "
            f"or no multicast-join program: {shown}",
            "their processes' sockets are bound to the VRF, but a datagram can still name another "
            "link (IP_PKTINFO, an IPv6 link-local scope id) and leave by it, or a multicast join "
            "make the kernel send reports by it",
            "restart pam-vrf-helper: it gives every cgroup it remembers both programs"))
    elif placed:
        findings.append(Finding("sessions", "ok", f"all {placed} placed cgroup(s) carry the egress and "
                                "multicast-join programs"))
    else:
        findings.append(Finding("sessions", "info", "no placed session cgroups right now"))
