"""Foreign sock_create programs above session cgroups.

Programs of ancestor cgroups run after the session cgroup's own, and for
sock_create the last writer of bound_dev_if wins: a binding on an ancestor
(systemd >= 260 BindNetworkInterface= on a slice, BPFProgram=, a program of
another tool) overrides pam-vrf's. An ancestor program attached without
BPF_F_ALLOW_MULTI/OVERRIDE also stops the helper from attaching below it.

Looked at: every VRF cgroup's ancestors (cgroup.vrf_dirs; in a named network
namespace only its own VRF levels, as `ip vrf pids` does), and the usual
parents of sessions with each of their ancestors: user.slice, user-*.slice,
session-*.scope, the ssh, cron and atd services; always the cgroup2 root.
"""

import errno
import glob
import os

from pam_vrf import cgroup, netdev, programs
from pam_vrf.bpf import cgroup_link
from pam_vrf.bpf.sockprog import PROG_NAME
from pam_vrf.bpf.syscall import F_ALLOW_MULTI, F_ALLOW_OVERRIDE, BpfError
from pam_vrf.doctor import Finding
from pam_vrf.sockspec import item_text

USUAL_PARENTS = ("user.slice", "user.slice/user-*.slice", "user.slice/user-*.slice/session-*.scope",
                 "system.slice/ssh.service", "system.slice/sshd.service", "system.slice/cron.service",
                 "system.slice/atd.service")


def _up(path, mount):
    """`path` and its ancestors up to (and with) the mount point."""
    mount = mount.rstrip("/") or "/"
    out = []
    while True:
        out.append(path)
        if path == mount or len(path) <= len(mount):
            return out
        path = os.path.dirname(path)


def places_to_look(mount):
    """{cgroup directory: [session cgroups below it]}: the directories whose
    effective programs (their own and their ancestors') also run for those
    session cgroups, without the session cgroup's own."""
    above = {mount: []}
    for path, _ in cgroup.vrf_dirs(mount):
        above.setdefault(os.path.dirname(path.rstrip("/")), []).append(path)
    for pattern in USUAL_PARENTS:
        for path in sorted(glob.glob(os.path.join(mount, pattern))):
            if os.path.isdir(path):
                above.setdefault(path, []).append(path)
    return above


def holders(places, mount):
    """{cgroup directory: ([Attached], [session cgroups below])} for every
    directory that holds a sock_create program above a session cgroup, and
    the number of directories asked. One BPF_PROG_QUERY (effective) per
    place; the walk up to find the holder only where something runs."""
    held, cache, asked = {}, {}, 0

    def own(path):
        nonlocal asked
        if path not in cache:
            asked += 1
            cache[path] = cgroup_link.query(path)
        return cache[path]

    for place, below in places.items():
        asked += 1
        try:
            if not cgroup_link.effective(place):
                continue
        except BpfError as e:
            if e.errno == errno.ENOENT:
                continue            # removed meanwhile (a session ended)
            raise
        for path in _up(place, mount):
            try:
                attached = own(path)
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    continue
                raise
            if attached:
                entry = held.setdefault(path, (attached, []))
                entry[1].extend(below)
    return held, asked


def describe(settings):
    if settings is None:
        return "an unknown program (it may bind sockets anywhere)"
    words = []
    if settings.ifindex is not None:
        if settings.ifindex == 0:
            words.append("unbinds sockets (ifindex 0: the default VRF)")
        else:
            name = netdev.ifname(settings.ifindex)
            words.append(f"binds sockets to {name or '?'} (ifindex {settings.ifindex}"
                         f"{'' if name else ', not in this network namespace'})")
    words += [f"denies {item_text(*d)}" for d in settings.deny]
    if settings.mark is not None:
        words.append(f"sets mark {settings.mark:#x}")
    if settings.priority is not None:
        words.append(f"sets priority {settings.priority}")
    return ", ".join(words) or "does nothing we can read"


def check(findings, mount):
    """Check 6."""
    try:
        held, asked = holders(places_to_look(mount), mount)
    except (cgroup.CgroupError, BpfError) as e:
        findings.append(Finding("ancestors", "warning", f"cannot look for programs above session cgroups: {e}",
                                "a program there would override session bindings", ""))
        return
    reported = 0
    for path in sorted(held):
        attached, below = held[path]
        for item in attached:
            try:
                info, settings = programs.read_back(item.prog_id)
                name = info.name
            except BpfError:
                name, settings = "?", None
            label = f"program {item.prog_id} ({name or 'unnamed'})"
            example = max(sorted(below), key=lambda p: (not p.endswith("/vrf"), len(p))) if below else None
            sessions = (f"above {len(below)} session cgroup{'s' if len(below) != 1 else ''} (e.g. {example})"
                        if below else "above every cgroup")
            exclusive = not item.flags & (F_ALLOW_MULTI | F_ALLOW_OVERRIDE)
            blocks = ("; it is attached without BPF_F_ALLOW_MULTI/OVERRIDE, so the helper cannot attach "
                      "below it at all (EPERM)") if exclusive else ""
            if name == PROG_NAME:
                level, owner = "warning", "pam-vrf's"
                why = ("it runs after the session's own program and its binding wins; pam-vrf attaches to "
                       "VRF cgroups and to user@UID.service only, so sessions below this one take its "
                       "rule, not their own" + blocks)
                fix = f"detach it unless that is meant: bpftool cgroup detach {path} sock_create id {item.prog_id}"
            else:
                owner = "foreign"
                fix = ("remove it: systemd >= 260 BindNetworkInterface= or BPFProgram= on that unit, "
                       f"or bpftool cgroup detach {path} sock_create id {item.prog_id}")
                if settings is not None and settings.ifindex is None and not exclusive:
                    level, why = "warning", ("it runs after the session's own program in every session "
                                             "below; it does not bind, but its verdict applies on top of "
                                             "the rule's")
                else:
                    level, why = "error", ("programs of ancestor cgroups run after the session cgroup's own "
                                           "and the last binding wins: sessions below end up where it says, "
                                           "not in their VRF" + blocks)
            reported += 1
            findings.append(Finding("ancestors", level, f"{owner} sock_create {label} attached here, "
                                    f"{sessions}: it {describe(settings)}", why, fix, path))
    if not reported:
        findings.append(Finding("ancestors", "ok", f"no foreign sock_create program above session cgroups "
                                f"({asked} quer{'ies' if asked != 1 else 'y'})"))
