"""Packets pam-vrf's egress programs dropped, as the counts grow (pam-vrf trace).

Each egress program counts its drops in a map of its own (one per VRF
while the helper runs); reading them by id needs root (CAP_SYS_ADMIN).
"""

from pam_vrf import programs
from pam_vrf.bpf import cgroup_link, syscall
from pam_vrf.bpf.syscall import BpfError


class DropWatch:
    def __init__(self):
        self._seen = None           # program id -> count at the last poll (None: no poll yet)

    def poll(self, cgroups):
        """[(vrf, dropped since the last poll, total)] for every egress program of
        `cgroups` ((directory, vrf) pairs) whose count grew. The first poll only
        takes note; a program first seen later counts from zero."""
        first, self._seen = self._seen is None, self._seen or {}
        grew, done = [], set()
        for path, vrf in cgroups:
            try:
                attached = cgroup_link.query(path, syscall.CGROUP_INET_EGRESS)
            except BpfError:
                continue                # gone: an ended session
            for item in attached:
                if item.prog_id in done:
                    continue
                done.add(item.prog_id)
                try:
                    _, allowed, total = programs.read_back_egress(item.prog_id)
                except BpfError:
                    continue
                if allowed is None:
                    continue            # not ours
                before = self._seen.get(item.prog_id, total if first else 0)
                self._seen[item.prog_id] = total
                if total > before:
                    grew.append((vrf, total - before, total))
        for gone in [i for i in self._seen if i not in done]:
            del self._seen[gone]
        return grew
