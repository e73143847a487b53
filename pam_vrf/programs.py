"""From a vrf.conf rule to a sock-create program on a VRF cgroup.

Shared by the `pam-vrf` CLI, the session code and the helper; needs
CAP_BPF + CAP_NET_ADMIN to load and attach (root or the helper).
"""

import os

from pam_vrf.bpf import cgroup_link, egressprog, sockprog, syscall


def settings_for(program, ifindex):
    """The sock-create program's settings for a policy.Program (or a Rule), bound to `ifindex`."""
    return sockprog.Settings(
        ifindex=ifindex,
        deny=tuple((d.family, d.type, d.protocol) for d in program.deny),
        mark=program.mark,
        priority=program.priority,
    )


def load(settings):
    """Load the program for `settings`; returns its fd (close it when done)."""
    return syscall.prog_load(sockprog.build(settings), name=sockprog.PROG_NAME)


def attach(cgroup_dir, settings=None, prog_fd=None):
    """Attach a program (given, or loaded for `settings`) to `cgroup_dir`,
    replacing whatever sock-create program was there. Returns the program id."""
    own_fd = prog_fd is None
    if own_fd:
        prog_fd = load(settings)
    try:
        cgroup_link.attach(cgroup_dir, prog_fd)
        return syscall.prog_info(prog_fd).id
    finally:
        if own_fd:
            os.close(prog_fd)


def info_of(prog_id):
    """ProgInfo of an attached program, opened by id; root only (the kernel
    asks for CAP_SYS_ADMIN)."""
    fd = syscall.prog_get_fd_by_id(prog_id)
    try:
        return syscall.prog_info(fd)
    finally:
        os.close(fd)


def read_back(prog_id):
    """(ProgInfo, Settings or None) for an attached program; root only."""
    info = info_of(prog_id)
    return info, sockprog.describe(info.xlated)


def read_back_egress(prog_id):
    """(ProgInfo, allowed ifindexes or None, packets dropped) for an attached
    egress program; root only."""
    info = info_of(prog_id)
    allowed = egressprog.describe(info.xlated) if info.name == egressprog.PROG_NAME else None
    return info, allowed, egressprog.dropped(info.map_ids) if allowed is not None else 0


def read_back_name(prog_id):
    """The name an attached program was loaded with; root only."""
    return info_of(prog_id).name


def attach_egress(cgroup_dir, allowed, counter_name="pam_vrf_drops"):
    """An egress program for `allowed` ifindexes, with a counter of its own,
    attached to `cgroup_dir` (the doctor's self-test, benchmarks). The helper
    shares programs and counters instead (helper.attachments)."""
    counter = egressprog.new_counter(counter_name)
    try:
        prog = egressprog.load(allowed, counter)
        try:
            cgroup_link.attach(cgroup_dir, prog, syscall.CGROUP_INET_EGRESS)
        finally:
            os.close(prog)
    finally:
        os.close(counter)
