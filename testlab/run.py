"""Running commands and processes for the lab: sh() and its failure,
waiting, unique names, files others may read, a preexec_fn that enters a
cgroup / netns / user, and spawn()/run_py() built on it."""

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid

PY = "/usr/bin/python3"         # Debian's interpreter: other users cannot execute pyenv's (under /root)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLONE_NEWNET = 0x40000000


class CommandFailed(AssertionError, RuntimeError):
    """A command exited non-zero (an AssertionError for the tests, a
    RuntimeError for the benchmarks' callers)."""


def sh(*argv, check=True, timeout=None, **kw):
    """Run a command, capture its output as text; on failure (check) raise
    CommandFailed showing what it printed."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise CommandFailed(f"{' '.join(map(str, argv))} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def wait_until(what, predicate, timeout=30, interval=0.05):
    """Poll `predicate` until it returns something true; returns that, or
    raises AssertionError naming `what`. A predicate may raise to give up early."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def no_user_namespaces_here():
    """Why this process cannot make a user namespace, or None: in a chroot
    (tools/bare-root) the kernel refuses CLONE_NEWUSER, so a test of what a
    user namespace can do skips there with this reason; anywhere else it
    runs (and fails if the namespace cannot be made). A chroot is a root
    that is no mount's root: no mountinfo line mounts a filesystem's "/" at
    "/" (/proc/1/root may not be readable)."""
    with open("/proc/self/mountinfo") as f:
        roots = [line.split()[3:5] for line in f]
    if ["/", "/"] not in roots:
        return "in a chroot: the kernel refuses user namespaces to a chrooted process"
    return None


def uid_tag(n=6):
    """A short unique tag: names must fit in 15 characters (IFNAMSIZ)."""
    return uuid.uuid4().hex[:n]


def write_file(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def public_dir(prefix):
    """A fresh temporary directory others may enter (0755)."""
    where = tempfile.mkdtemp(prefix=prefix)
    os.chmod(where, 0o755)
    return where


def stop_process(proc, timeout=5):
    """SIGTERM, then SIGKILL after `timeout` s; waits for it either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_quietly(pid, sig=signal.SIGKILL):
    with contextlib.suppress(ProcessLookupError, ValueError):
        os.kill(int(pid), sig)


def unlink_quietly(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def enter(cgroup_dir=None, netns=None, user=None, also=()):
    """A preexec_fn: join the cgroup `cgroup_dir` (and the cgroup v1
    directories `also`) as root, then the named netns, then become `user`
    (a pwd entry)."""
    def run():
        for d in ([cgroup_dir] if cgroup_dir else []) + list(also):
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        if netns:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            os.close(fd)
        if user:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
    return run


def nsenter(netns, argv):
    """argv run in the named netns (nsenter, not `ip netns exec`: that also
    remounts /sys and so hides the cgroup2 mount)."""
    return ["nsenter", f"--net=/run/netns/{netns}", *argv] if netns else list(argv)


def spawn(argv, netns=None, cgroup_dir=None, user=None, **kw):
    return subprocess.Popen(argv, preexec_fn=enter(cgroup_dir, netns, user), **kw)


def run_py(code, netns=None, cgroup_dir=None, user=None, args=(), env=None, timeout=30):
    """Run `code` with Debian's python3 inside cgroup/netns/user; returns its
    stdout parsed as JSON (the code prints one JSON value)."""
    proc = spawn([PY, "-c", code, *map(str, args)], netns, cgroup_dir, user,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err}"
    return json.loads(out)


def pam_vrf_cli(*args, env_extra=None, check=False):
    """Run the `pam-vrf` CLI from this checkout."""
    env = dict(os.environ, PYTHONPATH=REPO, **(env_extra or {}))
    return sh(PY, "-m", "pam_vrf", *args, check=check, env=env)
