"""Throwaway users and groups, removed with their processes."""

import os
import pwd

from testlab.run import kill_quietly, sh, wait_until


def add_group(name):
    sh("groupadd", "--system", name)
    return name


def remove_group(name):
    sh("groupdel", name, check=False)


def add_user(name, groups=(), shell="/bin/sh"):
    """A system user with a group of its own, no home; returns its pwd entry."""
    argv = ["useradd", "--system", "--user-group", "--no-create-home", "--shell", shell]
    if groups:
        argv += ["--groups", ",".join(groups)]
    sh(*argv, name)
    return pwd.getpwnam(name)


def kill_user_processes(uid, timeout=30):
    """SIGKILL every process of `uid` and wait until none is left."""
    def gone():
        left = [pid for pid in pids_of_uid(uid)]
        for pid in left:
            kill_quietly(pid)
        return not left
    wait_until(f"the processes of uid {uid} to end", gone, timeout=timeout)


def pids_of_uid(uid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:   # the real uid, as pkill -u
                                out.append(int(entry))
                            break
            except OSError:
                pass
    return out


def remove_user(name, remove_home=False):
    """End the user's processes, delete it and its own group (idempotent)."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = None
    if uid is not None:
        kill_user_processes(uid)
    sh("userdel", "--force", *(["--remove"] if remove_home else []), name, check=False)
    sh("groupdel", name, check=False)
