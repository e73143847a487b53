"""Which process a request is about, pinned so that pid reuse cannot swap it.

Every client sends, with its request, a pidfd of itself (SCM_RIGHTS); the
kernel adds the sender's pid (SCM_CREDENTIALS), which a process may only
claim for itself (or, with CAP_SYS_ADMIN over its pid namespace, for a
process of that namespace: a user who made one with `unshare --user --pid`
can name its own processes there, nothing else). A pidfd that is alive and
names that pid is that process and no other: a pidfd opened before the send
can only name the same pid if it is the same process (two live processes
never share a pid, and a dead one never comes back). This holds on kernels
without SO_PEERPIDFD (Debian 12's 6.1), unlike SO_PEERCRED's pid, which is
the pid at connect() time and can belong to another process by the time the
request arrives. The helper then checks whose process it is (placement).

What remains is the kernel's: cgroup.procs takes a pid, not a pidfd, so a
target that dies between our last liveness check and the write could have
its pid reused in that window (microseconds; see pam-vrf-helper(8)).
"""

import os
import signal
from collections import namedtuple

PF_KTHREAD = 0x00200000


class ProcessError(Exception):
    pass


# pid, its pidfd, real and effective uid
Process = namedtuple("Process", ["pid", "pidfd", "ruid", "euid"])


def read_proc(path):
    """A /proc file's text (comm and cgroup names are the caller's choice of
    bytes: never strict UTF-8). No buffered file object: on the login path
    its fstat, ioctl and lseek cost more than the read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while len(chunks[-1]) == 65536:     # seq_file: a short read is the end
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="surrogateescape")


def _field(text, name):
    """The value of the `name:` line of a /proc status-like text, or None."""
    for line in text.split("\n"):
        if line.startswith(name + ":"):
            return line[len(name) + 1:]
    return None


def pidfd_pid(fd):
    """The pid a pidfd refers to; ProcessError if `fd` is not a pidfd."""
    try:
        # What it is first: any other descriptor's fdinfo may be huge (an epoll
        # one lists every watch: 76 MB for a million, seconds of the kernel's
        # time to format, in the helper's loop, for any user who sends it).
        if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[pidfd]":
            raise ValueError(fd)
        return int(_field(read_proc(f"/proc/self/fdinfo/{fd}"), "Pid").split()[0])
    except (OSError, ValueError, IndexError, AttributeError):
        raise ProcessError("the descriptor sent is not a pidfd") from None


def alive(pidfd):
    """True while the pidfd's process exists (a zombie counts: its pid is not free yet)."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass            # exists; we may just not signal it
    return True


def _uids(pid):
    uid = _field(read_proc(f"/proc/{pid}/status"), "Uid")
    if uid is None:
        raise ProcessError(f"no Uid line for pid {pid}")
    fields = uid.split()
    return int(fields[0]), int(fields[1])


def is_kernel_thread(pid):
    data = read_proc(f"/proc/{pid}/stat")
    fields = data[data.rindex(")") + 2:].split()     # comm may hold spaces and ')'
    return bool(int(fields[6]) & PF_KTHREAD)


def pin(pid, pidfd):
    """The Process behind `pidfd`, which must be `pid` and alive."""
    if pid <= 1:
        raise ProcessError(f"pid {pid} is never placed")
    if pidfd_pid(pidfd) != pid:
        raise ProcessError(f"the pidfd sent is not the sender's (pid {pid})")
    try:
        ruid, euid = _uids(pid)
        kernel = is_kernel_thread(pid)
    except (OSError, ValueError, IndexError) as e:
        raise ProcessError(f"cannot read pid {pid}: {e}") from None
    # Read, then check it is still the same process: what we read was its.
    check(Process(pid, pidfd, ruid, euid))
    if kernel:
        raise ProcessError(f"pid {pid} is a kernel thread")
    return Process(pid, pidfd, ruid, euid)


def check(process):
    """Raise ProcessError unless the pinned process still exists."""
    if not alive(process.pidfd):
        raise ProcessError(f"process {process.pid} has exited")
