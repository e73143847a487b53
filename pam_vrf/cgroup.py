"""cgroup v2 places for VRFs, in iproute2's layout:

    <cgroup2 mount><caller's cgroup, cut at /vrf>[/<netns>-ns]/vrf/NAME

The default VRF is <...>/vrf/ itself and carries no program. `ip vrf
identify`, `ip vrf pids` and `ip vrf exec` use the same layout, so both
tools see and respect each other's placements. Stdlib only.
"""

import errno
import os
import stat
from collections import namedtuple

from pam_vrf import process

# Where iproute2 mounts a cgroup2 file system when the host has none.
FALLBACK_MOUNT = "/var/run/cgroup2"
NETNS_DIR = "/var/run/netns"
VRF_DIR = "vrf"
DEFAULT_VRF = "default"


class CgroupError(Exception):
    pass


def _unescape(field):
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return (field.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


# One line of /proc/PID/mountinfo: file system type, mount point and root
# within it (unescaped), and the mount plus super block options.
Mount = namedtuple("Mount", ["fstype", "point", "root", "options"])


def mounts(mountinfo="/proc/self/mountinfo"):
    """Yield a Mount for every line of a mountinfo file."""
    # Mount points are bytes: one a user made (FUSE) may not be UTF-8.
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                dash = fields.index("-")
            except ValueError:
                continue
            if dash + 1 >= len(fields):
                continue
            options = set(fields[5].split(","))
            if dash + 3 < len(fields):
                options |= set(fields[dash + 3].split(","))
            yield Mount(fields[dash + 1], _unescape(fields[4]), _unescape(fields[3]), frozenset(options))


def _first_cgroup2(mountinfo):
    for mount in mounts(mountinfo):
        if mount.fstype == "cgroup2":
            return mount.point, mount.root
    return None


class _OwnMountCache:
    """find_mount() of this process, re-read only when the mount table changed.

    The helper maps a hierarchy path to a directory several times per login;
    parsing mountinfo each time was ~10 % of its CPU. The kernel flags every
    change of a mount namespace's table on an open mountinfo file (poll gives
    POLLPRI|POLLERR once per change, what systemd and libmount watch), so the
    cache is never stale, not even after a mount in another process of the
    same namespace.
    """

    PATH = "/proc/self/mountinfo"

    def __init__(self):
        import select               # only here: keeps the login path's imports small
        import threading
        self._select = select
        self._lock = threading.Lock()
        self._poller = None
        self._value = None

    def get(self):
        with self._lock:
            if self._poller is None:
                f = open(self.PATH, "rb")       # kept open: the change flag lives on it
                poller = self._select.poll()
                poller.register(f, self._select.POLLPRI | self._select.POLLERR)
                try:
                    self._value = _first_cgroup2(self.PATH)
                except BaseException:
                    f.close()                   # not cached: the next call tries again
                    raise
                self._poller, self._file = poller, f
            elif self._poller.poll(0):
                try:
                    self._value = _first_cgroup2(self.PATH)
                except BaseException:
                    self._poller = None         # not cached: the next call tries again
                    self._file.close()
                    raise
            return self._value


_own_mounts = None


def find_mount(mountinfo=None):
    """(mount point, root within the hierarchy) of the first cgroup2 mount, or None.
    Without `mountinfo`: this process's own, cached (see _OwnMountCache)."""
    global _own_mounts
    if mountinfo is not None:
        return _first_cgroup2(mountinfo)
    if _own_mounts is None:
        _own_mounts = _OwnMountCache()
    return _own_mounts.get()


def mount_point(create=False):
    """The cgroup2 mount point; with create, mount one at FALLBACK_MOUNT if there is none."""
    found = find_mount()
    if found:
        return found[0]
    if not create:
        raise CgroupError("no cgroup2 file system is mounted "
                          f"(pam-vrf mounts one at {FALLBACK_MOUNT} when run as root)")
    import ctypes               # only here: keeps the login path's imports small
    os.makedirs(FALLBACK_MOUNT, 0o755, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"none", FALLBACK_MOUNT.encode(), b"cgroup2", 0, None) != 0:
        err = ctypes.get_errno()
        raise CgroupError(f"cannot mount cgroup2 at {FALLBACK_MOUNT}: {os.strerror(err)}")
    found = find_mount()        # /var/run is often a link to /run: report what the kernel shows
    return found[0] if found else FALLBACK_MOUNT


def cgroup_of(pid="self"):
    """The cgroup v2 path of a process, as /proc/PID/cgroup shows it ('0::/...')."""
    try:
        # cgroup names in a tree delegated to a user are its choice of bytes.
        for line in process.read_proc(f"/proc/{pid}/cgroup").split("\n"):
            if line.startswith("0::"):
                return line[3:]
    except FileNotFoundError:
        raise CgroupError(f"no process {pid}") from None
    except OSError as e:
        raise CgroupError(f"cannot read /proc/{pid}/cgroup: {e.strerror}") from None
    raise CgroupError(f"process {pid} has no cgroup v2 membership (no '0::' line in /proc/{pid}/cgroup)")


def base_of(cgroup):
    """The part of a cgroup path above its VRF level ('' for the root)."""
    cut = cgroup.find("/vrf/")
    if cut < 0 and cgroup.endswith("/vrf"):
        cut = len(cgroup) - 4
    if cut >= 0:
        cgroup = cgroup[:cut]
    return "" if cgroup == "/" else cgroup.rstrip("/")


def vrf_of(cgroup):
    """The VRF name a cgroup path stands for: 'NAME', '' for the default VRF
    directory itself, None when the path is not inside a VRF level."""
    cut = cgroup.find("/vrf/")
    if cut < 0:
        return None
    return cgroup[cut + 5:]


def netns_name(pid="self"):
    """The name of the process's network namespace as `ip netns` knows it, or ''."""
    try:
        own = os.stat(f"/proc/{pid}/ns/net")
        names = sorted(os.listdir(NETNS_DIR))
    except OSError:
        return ""
    for name in names:
        try:
            st = os.stat(os.path.join(NETNS_DIR, name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            return name
    return ""


def vrf_cgroup(vrf, pid="self", netns=None, trusted=None, current=None, seen=None):
    """The cgroup (a path in the hierarchy, as /proc/PID/cgroup shows it) that
    places process `pid` into `vrf` by iproute2's rule.

    `vrf` is a device name or 'default'. Computed from the process's own
    cgroup, so a logind session scope stays the parent of its VRF cgroup.
    `netns` overrides the name of the process's network namespace.
    `trusted` (uids): the VRF level goes no deeper than trusted_base() allows.
    `current`: the process's cgroup when the caller has just read it.
    `seen`: see check_trusted().
    """
    base = base_of(current if current is not None else cgroup_of(pid))
    if trusted is not None:
        base = trusted_base(base, trusted, seen)
    if netns is None:
        netns = netns_name(pid)
    if netns:
        suffix = netns + "-ns"
        if base.rsplit("/", 1)[-1] == suffix:
            base = base[: -len(suffix) - 1]
        base = f"{base}/{suffix}"
    name = "" if vrf == DEFAULT_VRF else vrf
    return f"{base}/{VRF_DIR}/{name}"


# What a writer of a cgroup uses to move processes (or threads) in and out of
# it and below it: the directory (mkdir of a cgroup of one's own) and these.
MOVE_FILES = ("cgroup.procs", "cgroup.threads")


def foreign_writer(directory, trusted):
    """Who other than the `trusted` uids (and gid 0) can write the cgroup
    `directory` or its MOVE_FILES: 'uid N', 'group N', 'everyone', or None.
    An owner counts whatever the mode: it can chmod the file writable again.

    cgroup v2 delegation: whoever can write a cgroup's cgroup.procs and a
    cgroup below it moves any process between them, whoever's it is.
    """
    for name in ("", *MOVE_FILES):
        path = f"{directory.rstrip('/')}/{name}" if name else directory
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue                    # no cgroup.threads before Linux 4.14
        except OSError as e:
            raise CgroupError(f"cannot inspect {path}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            return "a symbolic link"    # never in cgroupfs
        if st.st_uid not in trusted:
            return f"uid {st.st_uid}"   # an owner can chmod it writable again at any time
        if st.st_mode & stat.S_IWOTH:
            return "everyone"
        if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
            return f"group {st.st_gid}"
    return None


def _level_dirs(cgroup):
    """(hierarchy path, directory) of every cgroup from the root of this
    namespace's cgroup2 mount down to `cgroup`: '/a/b' -> '/', '/a', '/a/b'."""
    found = find_mount() or (mount_point(), "/")
    mount, root = found[0].rstrip("/"), found[1].rstrip("/")
    parts = [p for p in cgroup.split("/") if p]
    levels = ["/"] + ["/" + "/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return [(level, mount + level[len(root):].rstrip("/")) for level in levels
            if (level.rstrip("/") + "/").startswith(root + "/")]


def _foreign(directory, trusted, seen):
    """foreign_writer(), asked once per directory for one placement: `seen` is
    a dict its caller keeps for that placement only (never across logins: an
    owner or a mode can change at any time)."""
    if seen is None:
        return foreign_writer(directory, trusted)
    if directory not in seen:
        seen[directory] = foreign_writer(directory, trusted)
    return seen[directory]


def trusted_base(base, trusted, seen=None):
    """The deepest cgroup on the path from the root to `base` (hierarchy
    paths, '' = the root) that neither it nor any cgroup above it has a
    foreign_writer(): `base` itself when no one but `trusted` can write
    anything on the way (a logind session scope; one's own delegated tree)."""
    good = ""
    for level, directory in _level_dirs(base or "/"):
        if _foreign(directory or "/", trusted, seen):
            break
        good = "" if level == "/" else level
    return good


def check_trusted(cgroup, trusted, seen=None):
    """Raise CgroupError unless only `trusted` uids can write the cgroup and
    every cgroup above it (a level made in advance by someone else).
    `seen`: the answers trusted_base() got for the levels above, moments
    before in the same placement (a dict; None: ask for every level)."""
    for level, directory in _level_dirs(cgroup):
        who = _foreign(directory or "/", trusted, seen)
        if who:
            raise CgroupError(f"refusing cgroup {cgroup}: {who} can write {level} "
                              "(and so move its processes out)")


def with_level(cgroup, name):
    """A VRF cgroup path with one more level above its VRF (and netns) level:
    .../[NS-ns/]vrf/NAME -> .../<name>/[NS-ns/]vrf/NAME, so that `ip vrf
    identify` and `ip vrf pids` (which look for NS-ns/vrf) still see NAME."""
    cut = cgroup.rindex(f"/{VRF_DIR}/")
    above = cgroup.rfind("/", 0, cut)
    if above >= 0 and cgroup[above + 1:cut].endswith("-ns"):
        cut = above
    return f"{cgroup[:cut]}/{name}{cgroup[cut:]}"


def fs_path(cgroup, mount=None, create=False):
    """Where a hierarchy path is in this mount namespace's cgroup2 mount
    (with create, mounting one first if there is none: see mount_point()).

    Paths travel between processes (the PAM hook, the helper) in hierarchy
    form: the two may see the cgroup2 file system mounted in different places.
    """
    found = find_mount()
    if found is None:
        found = (mount_point(create), "/")
    if mount is None:
        mount = found[0]
    root = found[1] if found[0] == mount else "/"
    if root != "/":
        if not (cgroup + "/").startswith(root.rstrip("/") + "/"):
            raise CgroupError(f"cgroup {cgroup} is outside this namespace's cgroup2 mount ({root})")
        cgroup = cgroup[len(root.rstrip("/")):]
    return mount.rstrip("/") + cgroup


def vrf_path(vrf, pid="self", mount=None, netns=None):
    """vrf_cgroup() as a directory under the cgroup2 mount."""
    return fs_path(vrf_cgroup(vrf, pid, netns), mount)


def user_manager_of(cgroup, uid):
    """The cgroup of the user's systemd manager (user@UID.service) beside a
    logind session (.../user-UID.slice/session-N.scope), as a hierarchy path;
    None when the cgroup is not under a user slice."""
    marker = f"/user-{uid}.slice/"
    cut = base_of(cgroup).find(marker)
    if cut < 0:
        return None
    return cgroup[:cut + len(marker)] + f"user@{uid}.service"


def netns_level(path):
    """The network namespace name in a VRF cgroup path ('.../NAME-ns/vrf/...'), or ''."""
    parts = path.rstrip("/").split("/")
    if VRF_DIR not in parts:
        return ""
    at = len(parts) - 1 - parts[::-1].index(VRF_DIR)
    above = parts[at - 1] if at > 0 else ""
    return above[:-3] if above.endswith("-ns") else ""


def ensure(path):
    """Create a cgroup directory (and its parents) if missing."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path.rstrip("/"))
    ensure(parent)
    try:
        os.mkdir(path)
        os.chmod(path, 0o755)       # readable for `ip vrf pids` whatever our umask
    except FileExistsError:
        pass
    except OSError as e:
        raise CgroupError(f"cannot create cgroup {path}: {e.strerror}") from None


def move(pid, path):
    """Move process `pid` (and so its future children) into cgroup `path`."""
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid))
    except OSError as e:
        hint = {errno.ESRCH: "no such process",
                errno.EBUSY: "the cgroup has controllers enabled for its children",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.ENOENT: "no such cgroup"}.get(e.errno, e.strerror)
        raise CgroupError(f"cannot move process {pid} into {path}: {hint}") from None


def identify(pid="self"):
    """The VRF of a process exactly as `ip vrf identify` prints it ('' = none/default)."""
    return vrf_of(cgroup_of(pid)) or ""


def members(path):
    """Pids in cgroup `path` (not its children)."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def vrf_dirs(mount=None, netns=None):
    """Yield (directory, vrf name) for every VRF cgroup below the mount
    ('' for a default-VRF directory). Like `ip vrf pids`, inside a named
    network namespace only its own '<name>-ns/vrf' levels count."""
    if mount is None:
        mount = mount_point()
    if netns is None:
        netns = netns_name()
    stack = [mount]
    while stack:
        here = stack.pop()
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name != VRF_DIR:
                stack.append(entry.path)
                continue
            if netns and os.path.basename(here) != netns + "-ns":
                continue
            yield entry.path, ""
            try:
                children = sorted(e for e in os.listdir(entry.path)
                                  if os.path.isdir(os.path.join(entry.path, e)))
            except OSError:
                continue
            for child in children:
                yield os.path.join(entry.path, child), child


def remove_if_empty(path):
    """Remove a VRF cgroup no process uses any more; True if removed.

    Best effort by design: a busy, vanished or protected directory stays.
    """
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False
