"""Attach, query and detach pam-vrf's programs on a cgroup directory.

Attach semantics: flags 0 (no override, no multi), exactly as iproute2's
`ip vrf exec` does for sock-create. On one cgroup that means:
  * attaching again replaces the program, so there is never more than one,
    whether the previous one was ours or iproute2's;
  * `ip vrf exec NAME` meeting our cgroup replaces ours in turn, instead
    of failing with EPERM as it would against a MULTI attachment;
  * sub-cgroups cannot attach sock-create programs of their own, which the
    iproute2 layout never needs (VRF cgroups are siblings under .../vrf/).
"""

import errno
import os
from contextlib import contextmanager
from typing import NamedTuple

from pam_vrf.bpf import syscall
from pam_vrf.bpf.syscall import BpfError, CGROUP_INET_EGRESS, CGROUP_INET_SOCK_CREATE


class Attached(NamedTuple):
    prog_id: int
    flags: int


@contextmanager
def _cgroup_fd(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise BpfError(e.errno, f"cannot open cgroup {path}: {e.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


_KIND = {CGROUP_INET_SOCK_CREATE: "sock-create", CGROUP_INET_EGRESS: "egress"}


def attach(path, prog_fd, attach_type=CGROUP_INET_SOCK_CREATE):
    """Make `prog_fd` the one program of its attach type on cgroup `path`."""
    with _cgroup_fd(path) as fd:
        try:
            syscall.prog_attach(fd, prog_fd, attach_type, 0)
        except BpfError as e:
            if e.errno == errno.EPERM:
                raise BpfError(e.errno, f"cannot attach to {path}: not permitted (needs CAP_NET_ADMIN, "
                               f"and neither it nor a parent cgroup may hold a {_KIND[attach_type]} "
                               "program of another kind of attachment)") from None
            raise BpfError(e.errno, f"cannot attach to {path}: {e.strerror}") from None


def query(path, attach_type=CGROUP_INET_SOCK_CREATE):
    """Programs attached to `path` itself (not inherited), with their flags."""
    with _cgroup_fd(path) as fd:
        flags, ids = syscall.prog_query(fd, attach_type)
    return [Attached(i, flags) for i in ids]


def query_each(path, attach_types):
    """query() for several attach types through one open of `path`: lists of
    program ids, in the order of `attach_types`."""
    with _cgroup_fd(path) as fd:
        return [syscall.prog_query(fd, kind)[1] for kind in attach_types]


def effective(path, attach_type=CGROUP_INET_SOCK_CREATE):
    """Ids of the programs that run for sockets created in `path`."""
    with _cgroup_fd(path) as fd:
        return syscall.prog_query(fd, attach_type, effective=True)[1]


def detach(path, attach_type=CGROUP_INET_SOCK_CREATE):
    """Remove the program from `path`; True if there was one."""
    with _cgroup_fd(path) as fd:
        try:
            syscall.prog_detach(fd, attach_type)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
    return True
