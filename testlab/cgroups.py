"""cgroup2 trees: where the mount is, who is in a directory, removing a tree
with its members."""

import os
import time

from testlab.run import kill_quietly


def cgroup_mount():
    """Where the cgroup2 file system is mounted, or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


def members(path):
    """The pids in one cgroup directory (not its children)."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def remove_cgroup_tree(path):
    """Kill what is left inside, then remove the directories, children first."""
    if not os.path.isdir(path):
        return
    for _ in range(50):
        pids = [p for d, _, _ in os.walk(path) for p in members(d)]
        if not pids:
            break
        for pid in pids:
            kill_quietly(pid)
        time.sleep(0.05)
    for here, _, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        for _ in range(40):
            try:
                os.rmdir(here)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)     # a killed process is leaving the cgroup
