"""The helper's attachment table on real cgroups (pam_vrf.helper.attachments),
without a helper around it."""

import os
import subprocess

import pytest

from testlab.run import spawn
from pam_vrf import cgroup
from pam_vrf.bpf import cgroup_link, syscall
from pam_vrf.helper.attachments import Attachments, Conflict
from pam_vrf.policy import Program

pytestmark = pytest.mark.root


BIND = Program.of_fields({"deny": [], "mark": None, "priority": None, "plain": True})
STRICTER = Program.of_fields(dict(BIND.fields(), deny=["inet6"]))


def _sleeper(path):
    return spawn(["sleep", "60"], cgroup_dir=path, stdout=subprocess.DEVNULL)


def test_a_cgroup_made_again_at_a_remembered_path_is_a_new_cgroup(sandbox_cgroup):
    """user@UID.service stopped after a logout and started again by the next
    login, within the prune window, under a changed rule: what the table
    remembers for the path was the old cgroup's, so it is no conflict (the
    manager used to stay unbound until the next login), and the new cgroup
    gets every program again."""
    path = os.path.join(sandbox_cgroup, "user@1000.service")
    os.mkdir(path)
    devices = lambda vrf, plain, ifindex: frozenset({ifindex})       # noqa: E731
    table = Attachments(devices=devices)
    first = _sleeper(path)
    try:
        table.attach(path, "lo", BIND, 1)
        with pytest.raises(Conflict):           # the same cgroup, still in use: a conflict indeed
            table.attach(path, "lo", STRICTER, 1)
    finally:
        first.kill()
        first.wait()
    for _ in range(100):
        try:
            os.rmdir(path)
            break
        except OSError:
            cgroup.members(path)
    os.mkdir(path)
    second = _sleeper(path)
    try:
        table.attach(path, "lo", STRICTER, 1)
        assert table.entries[path].rule == STRICTER
        for kind in (syscall.CGROUP_INET_SOCK_CREATE, syscall.CGROUP_INET_EGRESS, syscall.CGROUP_SETSOCKOPT):
            assert len(cgroup_link.query(path, kind)) == 1, kind
    finally:
        second.kill()
        second.wait()
