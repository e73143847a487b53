"""Kernel prerequisites: a cgroup2 mount, CGROUP_BPF, the VRF driver, and
cgroup2 socket matching not switched off by cgroup v1 net_cls/net_prio.

Socket matching: before Linux 5.15 (commit 8520e224f547 "bpf, cgroups: Fix
cgroup v2 fallback on v1/v2 mixed mode", also in some stable series) the
first use of a v1 net_cls or net_prio hierarchy made the kernel log
"cgroup: disabling cgroup2 socket matching due to net_prio or net_cls
activation" and stop running cgroup2 socket programs below the root until
reboot: `ip vrf exec` and pam-vrf then silently leave sockets in the default
VRF. From 5.15 on both coexist. So the kernel log is the proof; a mount of
those hierarchies is a warning on older kernels and a note on newer ones;
the live self-test shows what the kernel does either way.
"""

import errno
import os
import re

from pam_vrf import cgroup
from pam_vrf.bpf.syscall import BpfError
from pam_vrf.doctor import Finding

KMSG = "/dev/kmsg"
DISABLED_MESSAGE = "disabling cgroup2 socket matching due to net_prio or net_cls activation"
FIXED_IN = (5, 15)


def check(findings, rules, devices, root, mountinfo="/proc/self/mountinfo"):
    """Checks 1; returns the cgroup2 mount point (None without one)."""
    mount = _cgroup2(findings, mountinfo)
    if mount:
        _cgroup_bpf(findings, mount, root)
    _vrf_driver(findings, rules, devices)
    _socket_matching(findings, mountinfo, root)
    return mount


def _cgroup2(findings, mountinfo):
    try:
        found = cgroup.find_mount(mountinfo)
    except OSError as e:
        found, why = None, f"cannot read {mountinfo}: {e.strerror}"
    else:
        why = "no cgroup2 line in " + mountinfo
    if not found:
        findings.append(Finding(
            "kernel", "error", f"no cgroup2 file system is mounted ({why})",
            "VRF cgroups and their sock_create programs live in cgroup v2; the helper, "
            "running unprivileged, cannot mount one",
            "mount it at boot: mount -t cgroup2 none /sys/fs/cgroup/unified (or boot with "
            "systemd.unified_cgroup_hierarchy=1)"))
        return None
    mount, hierarchy_root = found
    extra = f" (hierarchy root {hierarchy_root})" if hierarchy_root != "/" else ""
    findings.append(Finding("kernel", "ok", f"cgroup2 is mounted at {mount}{extra}"))
    return mount


def _cgroup_bpf(findings, mount, root):
    if not root:
        findings.append(Finding("kernel", "info", "CGROUP_BPF not checked (BPF_PROG_QUERY needs root)"))
        return
    from pam_vrf.bpf import cgroup_link
    try:
        attached = cgroup_link.query(mount)
    except BpfError as e:
        if e.errno == errno.EINVAL:
            what, fix = ("BPF_PROG_QUERY of CGROUP_INET_SOCK_CREATE is refused (EINVAL): a kernel "
                         "without CONFIG_CGROUP_BPF"), "use a kernel built with CONFIG_CGROUP_BPF=y (Debian's are)"
        else:
            what, fix = f"BPF_PROG_QUERY on {mount} failed: {e.strerror}", "see the error; bpf(2) must work for root"
        findings.append(Finding("kernel", "error", what,
                                "sock_create programs on cgroups are how sessions get bound to a VRF", fix))
        return
    findings.append(Finding("kernel", "ok", f"CGROUP_BPF works (BPF_PROG_QUERY of CGROUP_INET_SOCK_CREATE "
                            f"on the cgroup2 root: {len(attached)} program{'s' if len(attached) != 1 else ''})"))


def module_available(release=None, modules_dir="/lib/modules"):
    """True when modules.dep or modules.builtin of the running kernel lists vrf.ko."""
    release = release or os.uname().release
    pattern = re.compile(r"(^|/)vrf\.ko(\.[a-z0-9]+)?(:|$)", re.M)
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(modules_dir, release, name)) as f:
                if pattern.search(f.read()):
                    return True
        except OSError:
            continue
    return False


def _vrf_driver(findings, rules, devices, sys_module="/sys/module"):
    from pam_vrf.doctor.config import named_vrfs
    vrf_links = devices.vrf_names()
    if os.path.isdir(os.path.join(sys_module, "vrf")) or vrf_links:
        what = "the VRF driver is loaded"
        if vrf_links:
            what += f" (VRF devices here: {', '.join(vrf_links[:8])}{', ...' if len(vrf_links) > 8 else ''})"
        findings.append(Finding("kernel", "ok", what))
        return
    if module_available():
        findings.append(Finding("kernel", "ok", "the VRF driver is available as a module "
                                "(the kernel loads it when the first VRF is created)"))
        return
    if rules is None:
        findings.append(Finding("kernel", "warning", "this kernel has no VRF driver (no /sys/module/vrf, no "
                                "vrf.ko); vrf.conf could not be read, so whether it needs one is unknown",
                                "rules without `plain` need VRF devices", "fix vrf.conf, then run this again"))
        return
    needing = sorted({r.line for (name, plain), uses in named_vrfs(rules).items() if not plain
                      for r, _ in uses})
    if needing:
        path = rules[0].filename
        findings.append(Finding(
            "kernel", "error", f"this kernel has no VRF driver (no /sys/module/vrf, no vrf.ko), but rules "
            f"on line{'s' if len(needing) > 1 else ''} {', '.join(map(str, needing))} name VRFs",
            "without the driver no VRF device can exist, so those sessions cannot be placed",
            "use a kernel with CONFIG_NET_VRF (Debian's linux-image packages have it), "
            "or mark lab rules `plain` to bind to ordinary interfaces", path))
    else:
        findings.append(Finding("kernel", "info", "this kernel has no VRF driver; no rule needs one "
                                "(every device vrf.conf names is `plain`)"))


def v1_net_mounts(mountinfo="/proc/self/mountinfo"):
    """[(mount point, 'net_cls'|'net_prio'|'net_cls,net_prio')] of cgroup v1 hierarchies."""
    found = []
    for mount in cgroup.mounts(mountinfo):
        names = [n for n in ("net_cls", "net_prio") if n in mount.options]
        if mount.fstype == "cgroup" and names:
            found.append((mount.point, ",".join(names)))
    return found


def kernel_logged_disable(path=KMSG, limit=200000):
    """True/False: is the kernel's "disabling cgroup2 socket matching" message in
    the kernel log; None when the log cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for _ in range(limit):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return False
            except BrokenPipeError:
                continue            # a record was overwritten while we read: go on
            except OSError:
                return None
            if not record:
                return False
            if DISABLED_MESSAGE.encode() in record:
                return True
        return False
    finally:
        os.close(fd)


def kernel_version(release=None):
    numbers = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(numbers.group(1)), int(numbers.group(2))) if numbers else (0, 0)


def _socket_matching(findings, mountinfo, root, kmsg=KMSG, release=None):
    try:
        mounts = v1_net_mounts(mountinfo)
    except OSError:
        mounts = []
    logged = kernel_logged_disable(kmsg)
    release = release or os.uname().release
    fixed = kernel_version(release) >= FIXED_IN
    where = ", ".join(f"{name} at {point}" for point, name in mounts)
    fix = ("find what uses net_cls/net_prio (docker or a container runtime on cgroup v1, "
           "an old traffic-shaping script), switch it to cgroup v2, and reboot; "
           "booting with cgroup_no_v1=net_cls,net_prio keeps them off")
    if logged:
        findings.append(Finding(
            "kernel", "error", f"the kernel logged \"{DISABLED_MESSAGE}\""
            + (f" (mounted: {where})" if where else ""),
            "cgroup2 socket programs no longer run: sessions and `ip vrf exec` silently stay in the "
            "default VRF until the next reboot", fix))
    elif mounts and not fixed:
        findings.append(Finding(
            "kernel", "warning", f"cgroup v1 {where} mounted on kernel {release}",
            "before Linux 5.15 the first use of net_cls or net_prio switches cgroup2 socket matching "
            "off for good: sessions would silently stay in the default VRF", fix))
    elif mounts:
        findings.append(Finding(
            "kernel", "info", f"cgroup v1 {where} mounted; kernel {release} keeps cgroup2 socket "
            "matching on with them (fixed in 5.15)"))
    else:
        unread = "" if logged is not None else f" ({kmsg} not readable{'' if root else ': not root'})"
        findings.append(Finding("kernel", "ok", "cgroup2 socket matching is on (no cgroup v1 net_cls/net_prio "
                                f"mounted, no kernel message disabling it){unread}"))
