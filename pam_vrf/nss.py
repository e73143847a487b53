"""Account look-ups through NSS that tell "no such name" from "could not ask".

Python's pwd/grp raise KeyError for both, and glibc hides a failing source
in three places: getgrouplist() and getgrent() skip it, and getXXbyYY_r()
reports only the status of the last source it asked (`group: files ldap
systemd` with LDAP down: systemd's "not found" wins). With LDAP or SSSD
down a strict `@group` rule would silently not match. So these walk the
sources nsswitch.conf lists themselves, calling each NSS module's
functions (what glibc does inside), and raise NssError when a source that
glibc would have asked answered UNAVAIL or TRYAGAIN (ERANGE aside).
A source whose module is not installed is skipped, as glibc skips it.
"""

import ctypes
import errno
import os
import re
import threading
import time
from collections import namedtuple

_libc = ctypes.CDLL(None, use_errno=True)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
_MAX_BUFFER = 1 << 20
NSSWITCH = "/etc/nsswitch.conf"

# enum nss_status
_TRYAGAIN, _UNAVAIL, _NOTFOUND, _SUCCESS = -2, -1, 0, 1
_STATUS = {"success": _SUCCESS, "notfound": _NOTFOUND, "unavail": _UNAVAIL, "tryagain": _TRYAGAIN}


def _down(status, err):
    """Did the source fail? nss-systemd answers UNAVAIL with ESRCH (systemd's
    userdb for "no such record") when no userdb service knows the name, and
    whenever systemd is not running: that is "not found", as for its getgrnam_r."""
    return status == _TRYAGAIN or (status == _UNAVAIL and err != errno.ESRCH)


class NssError(Exception):
    """A name service did not answer (LDAP/SSSD down, broken nsswitch.conf)."""


class _Passwd(ctypes.Structure):
    _fields_ = [("pw_name", ctypes.c_char_p), ("pw_passwd", ctypes.c_char_p),
                ("pw_uid", ctypes.c_uint), ("pw_gid", ctypes.c_uint),
                ("pw_gecos", ctypes.c_char_p), ("pw_dir", ctypes.c_char_p),
                ("pw_shell", ctypes.c_char_p)]


class _Group(ctypes.Structure):
    _fields_ = [("gr_name", ctypes.c_char_p), ("gr_passwd", ctypes.c_char_p),
                ("gr_gid", ctypes.c_uint), ("gr_mem", ctypes.POINTER(ctypes.c_char_p))]


User = namedtuple("User", ["name", "uid", "gid"])
Group = namedtuple("Group", ["name", "gid", "members"])


# -- nsswitch.conf and the modules ---------------------------------------------------

_chains = {"key": None, "lines": {}}
_modules = {}
# getgrent state lives in each module, one per process: one enumeration at a time.
_enumerating = threading.Lock()


def _parse(text):
    """{database: [(service, {status: returns}), ...]} as glibc reads nsswitch.conf."""
    lines = {}
    for raw in text.split("\n"):
        database, colon, rest = raw.split("#", 1)[0].partition(":")
        if not colon or not database.strip():
            continue
        rest = re.sub(r"\s*=\s*", "=", rest.replace("[", " [ ").replace("]", " ] "))
        chain, words = [], rest.split()
        inside = False
        for word in words:
            if word == "[":
                inside = True
            elif word == "]":
                inside = False
            elif inside and chain:
                status, _, action = word.lower().partition("=")
                negate = status.startswith("!")
                status = status.lstrip("!")
                if status in _STATUS:
                    returns = action == "return"
                    targets = [s for s in _STATUS.values() if s != _STATUS[status]] if negate else [_STATUS[status]]
                    for target in targets:
                        chain[-1][1][target] = returns
            elif not inside:
                chain.append((word, {}))
        lines[database.strip()] = chain
    return lines


def _chain(database):
    """The sources for `database`, None when nsswitch.conf has no such line.
    Read again when the file changes (glibc does the same since 2.33)."""
    try:
        st = os.stat(NSSWITCH)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        key = None
    if key != _chains["key"]:
        try:
            with open(NSSWITCH) as f:
                _chains["lines"] = _parse(f.read())
        except (OSError, UnicodeDecodeError):
            _chains["lines"] = {}
        _chains["key"] = key
    return _chains["lines"].get(database)


def _returns(actions, status):
    return actions.get(status, status == _SUCCESS)


def _function(service, name):
    """_nss_SERVICE_NAME from libnss_SERVICE.so.2, or None."""
    if service not in _modules:
        try:
            _modules[service] = ctypes.CDLL(f"libnss_{service}.so.2", use_errno=True)
        except OSError:
            _modules[service] = None
    library = _modules[service]
    try:
        return getattr(library, f"_nss_{service}_{name}") if library is not None else None
    except AttributeError:
        return None


def _failure(what, service, err):
    reason = os.strerror(err) if err else "the name service did not answer"
    return NssError(f"cannot look up {what}: {reason} (source '{service}')")


def _call(fn, args, struct):
    """fn(*args, &struct, buf, len, &errno), growing the buffer on ERANGE: (status, errno, struct, buf)."""
    size = 1024
    while True:
        entry, buf, err = struct(), ctypes.create_string_buffer(size), ctypes.c_int(0)
        status = fn(*args, ctypes.byref(entry), buf, ctypes.c_size_t(size), ctypes.byref(err))
        if status == _TRYAGAIN and err.value == errno.ERANGE and size < _MAX_BUFFER:
            size *= 4
            continue
        return status, err.value, entry, buf


def _lookup(database, function, key, struct, convert, what):
    """getXXbyYY_r through each source: convert(entry) or None for no such entry."""
    failed = None
    for service, actions in _chain(database) or [("files", {})]:
        fn = _function(service, function)
        if fn is None:
            continue
        status, err, entry, buf = _call(fn, (key,), struct)
        if status == _SUCCESS:
            if failed:          # an earlier source might have answered otherwise
                raise failed
            return convert(entry)
        if _down(status, err):
            failed = failed or _failure(what, service, err)
        if _returns(actions, status):
            break
    if failed:
        raise failed
    return None


# -- look-ups ------------------------------------------------------------------------

def user(name):
    """User(name, uid, gid) for a user name, None if there is none."""
    if not name or "\0" in name:
        return None
    return _lookup("passwd", "getpwnam_r", name.encode(), _Passwd, _user, f"user {name!r}")


def user_by_uid(uid):
    return _lookup("passwd", "getpwuid_r", ctypes.c_uint(uid), _Passwd, _user, f"uid {uid}")


def _user(entry):
    return User(entry.pw_name.decode(errors="replace"), entry.pw_uid, entry.pw_gid)


def _members(entry):
    members, i = [], 0
    while entry.gr_mem and entry.gr_mem[i]:
        members.append(entry.gr_mem[i].decode(errors="replace"))
        i += 1
    return members


def _group(entry):
    return Group(entry.gr_name.decode(errors="replace"), entry.gr_gid, frozenset(_members(entry)))


def group(name):
    """Group(name, gid, members) for a group name, None if there is none."""
    if not name or "\0" in name:
        return None
    return _lookup("group", "getgrnam_r", name.encode(), _Group, _group, f"group {name!r}")


def group_by_gid(gid):
    return _lookup("group", "getgrgid_r", ctypes.c_uint(gid), _Group, _group, f"gid {gid}")


def _entries(service, what):
    """(name bytes, gid, members) of every group one source enumerates; NssError if it fails."""
    setent, getent, endent = (_function(service, f) for f in ("setgrent", "getgrent_r", "endgrent"))
    if getent is None:
        return []
    found = []
    with _enumerating:
        try:
            if setent is not None:
                status = setent(0)
                if _down(status, ctypes.get_errno()):
                    raise _failure(what, service, ctypes.get_errno())
            while True:
                status, err, entry, buf = _call(getent, (), _Group)
                if status != _SUCCESS:
                    if _down(status, err):
                        raise _failure(what, service, err)
                    return found
                found.append((entry.gr_name, entry.gr_gid, _members(entry)))
        finally:
            if endent is not None:
                endent()


# The files source's groups by gid, and the stat of /etc/group they were read
# with: most hosts' group database is files, and enumerating 1 000 groups on
# every login was most of a decision's cost (bench P4).
GROUP_FILE = "/etc/group"
_files_groups = {"key": None, "by_gid": None}
# A file changed less than this long ago is read again, whatever its stat says:
# two writes in place within one tick of the kernel's clock can leave the same
# size and times (as git's "racily clean" index entries).
_RACY = 2.0


def _signature(path):
    try:
        st = os.stat(path)
    except OSError:
        return None, 0
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), max(st.st_mtime, st.st_ctime)


def _by_gid(service):
    """{gid: (names...)} of one source's enumeration; {} when it fails (like getgrent())."""
    try:
        entries = _entries(service, "the group database")
    except NssError:
        return {}
    by_gid = {}
    for name, gid, _ in entries:
        by_gid[gid] = by_gid.get(gid, ()) + (name.decode(errors="replace"),)
    return by_gid


def groups_by_gid():
    """{gid: (names...)} of the groups the sources enumerate. Like getgrent(),
    a source that fails is skipped (nss-systemd cannot enumerate without
    systemd), and SSSD or LDAP may enumerate none of theirs: a caller needing
    a gid's name looks up by gid what this does not show (group_by_gid), and
    learns there whether that source is down. The files source's part is kept
    while /etc/group is unchanged (and was not changed in the last _RACY s)."""
    found = None
    for service, _ in _chain("group") or [("files", {})]:
        if service == "files":
            key, changed = _signature(GROUP_FILE)
            if key is None or key != _files_groups["key"]:
                by_gid = _by_gid(service)
                racy = key is None or time.time() - changed < _RACY
                _files_groups.update(key=None if racy else key, by_gid=by_gid)
            part = _files_groups["by_gid"]
        else:
            part = _by_gid(service)
        if found is None:
            found = part
        elif part:
            found = dict(found)
            for gid, names in part.items():
                found[gid] = found.get(gid, ()) + names
    return found or {}


def groups():
    """[(name, gid)] of the groups the sources enumerate (see groups_by_gid)."""
    return [(name, gid) for gid, names in groups_by_gid().items() for name in names]


def gids(account):
    """The user's primary and supplementary gids (getgrouplist: the
    `initgroups` sources, else the `group` ones); NssError when one fails."""
    chain, by_initgroups = _chain("initgroups"), True
    if chain is None:
        chain, by_initgroups = _chain("group") or [("files", {})], False
    what = f"the groups of user {account.name!r}"
    name = account.name.encode()
    found = {account.gid}
    size = 64
    buffer = ctypes.cast(_libc.malloc(size * 4), ctypes.POINTER(ctypes.c_uint))
    if not buffer:
        raise MemoryError
    try:
        for service, actions in chain:
            fn = _function(service, "initgroups_dyn")
            if fn is not None:
                start, length, err = ctypes.c_long(0), ctypes.c_long(size), ctypes.c_int(0)
                status = fn(name, ctypes.c_uint(account.gid), ctypes.byref(start), ctypes.byref(length),
                            ctypes.byref(buffer), ctypes.c_long(-1), ctypes.byref(err))
                size = length.value
                if _down(status, err.value):
                    raise _failure(what, service, err.value)
                found.update(buffer[:start.value])
            else:       # glibc's compat_call: the source's groups that list the user
                entries = _entries(service, what)
                status = _NOTFOUND
                for _, gid, members in entries:
                    if account.name in members:
                        found.add(gid)
                        status = _SUCCESS
            # glibc: without an `initgroups` line, a success goes on to the next source.
            if (by_initgroups or status != _SUCCESS) and _returns(actions, status):
                break
    finally:
        _libc.free(ctypes.cast(buffer, ctypes.c_void_p))
    return frozenset(found)
