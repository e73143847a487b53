"""What a run may leave behind on the host, read at one moment (HostState):
the tests' conftest compares the end of a run with its start."""

import glob
import hashlib
import os
import pwd

from testlab.cgroups import cgroup_mount
from testlab.net import netns_names
from testlab.run import sh


def _digest(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError as e:
        return f"unreadable: {e.strerror}"


def _tree(top, content=True):
    """{path: digest or 'dir'} of everything below `top` (symlinks by target)."""
    out = {}
    for here, dirs, files in os.walk(top):
        for d in dirs:
            out[os.path.join(here, d)] = "dir"
        for name in files:
            path = os.path.join(here, name)
            out[path] = ("-> " + os.readlink(path) if os.path.islink(path)
                         else _digest(path) if content else "file")
    return out


def _names(path):
    with open(path) as f:
        return {line.split(":", 1)[0] for line in f if ":" in line}


def _processes():
    """{pid: (real uid, comm)} of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            out[int(entry)] = (int(fields["Uid"].split()[0]), fields["Name"].strip())
        except (OSError, KeyError, ValueError):
            pass
    return out


class HostState:
    """What a run could leave behind on this host, read at one moment:
    users and groups, /etc/pam.d, /etc/security/vrf.conf, /etc/ssh, network
    namespaces, links of this network namespace, cgroup2 directories, mounts,
    files below /run/pam-vrf*, our temporary directories in /tmp, and
    processes whose uid has no user. leftovers(earlier) lists, per item,
    what is here now and was not then (or changed)."""

    TMP_PREFIXES = ("pam-vrf-", "pvt")

    def __init__(self):
        self.items = {
            "users": _names("/etc/passwd"),
            "groups": _names("/etc/group"),
            "/etc/pam.d": set(f"{p} {d}" for p, d in _tree("/etc/pam.d").items()),
            "/etc/security/vrf.conf": {_digest("/etc/security/vrf.conf")},
            "/etc/ssh": set(f"{p} {d}" for p, d in _tree("/etc/ssh").items()),
            "network namespaces": set(netns_names()) | set(os.listdir("/run/netns") if os.path.isdir("/run/netns")
                                                           else ()),
            "links": {line.split(":")[1].strip().split("@")[0]
                      for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines()},
            "cgroups": self._cgroups(),
            "mounts": self._mounts(),
            "/run/pam-vrf*": set(p for top in glob.glob("/run/pam-vrf*")
                                 for p in [top, *_tree(top, content=False)]),
            "/tmp": {os.path.join("/tmp", n) for n in os.listdir("/tmp") if n.startswith(self.TMP_PREFIXES)},
        }
        uids = {p.pw_uid for p in pwd.getpwall()}
        self.items["processes without a user"] = {
            f"{pid} uid={uid} {name}" for pid, (uid, name) in _processes().items() if uid not in uids}

    @staticmethod
    def _cgroups():
        mount = cgroup_mount()
        if not mount:
            return set()
        return {here[len(mount):] or "/" for here, _, _ in os.walk(mount)}

    @staticmethod
    def _mounts():
        out = set()
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                dash = fields.index("-")
                out.add(f"{fields[4]} {fields[dash + 1]} {fields[dash + 2]}")
        return out

    def leftovers(self, earlier):
        """{item: sorted list of what is new or changed since `earlier`}."""
        out = {}
        for key, now in self.items.items():
            new = sorted(now - earlier.items.get(key, set()))
            if key == "/etc/security/vrf.conf" and new:
                new = [f"content changed ({sorted(earlier.items[key])[0]} -> {new[0]})"]
            if new:
                out[key] = new
        return out

    def gone(self, earlier):
        """{item: what was there before and is not now} (a run should not remove
        the host's things either)."""
        out = {}
        for key, then in earlier.items.items():
            if key in ("processes without a user", "/tmp", "/etc/security/vrf.conf"):
                continue
            missing = sorted(then - self.items.get(key, set()))
            if missing:
                out[key] = missing
        return out
