"""Account look-ups through NSS that tell "no such name" from "could not ask".

Python's pwd/grp raise KeyError for both: with LDAP or SSSD down, a strict
`@group` rule would silently not match. glibc's *_r functions return 0 with
no result for a name that does not exist and an error number when a source
failed (NSS_STATUS_UNAVAIL/TRYAGAIN), so these call them directly.
"""

import ctypes
import errno
import os
from collections import namedtuple

_libc = ctypes.CDLL(None, use_errno=True)
_MAX_BUFFER = 1 << 20


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


def _lookup(func, key, struct, convert, what):
    """Call a get*_r function; convert(struct) while its buffer lives, or
    None for no such entry."""
    size = 1024
    while True:
        entry, result, buf = struct(), ctypes.c_void_p(), ctypes.create_string_buffer(size)
        rc = func(key, ctypes.byref(entry), buf, size, ctypes.byref(result))
        if rc == errno.ERANGE and size < _MAX_BUFFER:
            size *= 4
            continue
        if rc != 0:
            raise NssError(f"cannot look up {what}: {os.strerror(rc)}")
        return convert(entry) if result.value else None


def user(name):
    """User(name, uid, gid) for a user name, None if there is none."""
    if not name or "\0" in name:
        return None
    return _lookup(_libc.getpwnam_r, name.encode(), _Passwd, _user, f"user {name!r}")


def user_by_uid(uid):
    return _lookup(_libc.getpwuid_r, ctypes.c_uint(uid), _Passwd, _user, f"uid {uid}")


def _user(entry):
    return User(entry.pw_name.decode(errors="replace"), entry.pw_uid, entry.pw_gid)


def _group(entry):
    members, i = [], 0
    while entry.gr_mem and entry.gr_mem[i]:
        members.append(entry.gr_mem[i].decode(errors="replace"))
        i += 1
    return Group(entry.gr_name.decode(errors="replace"), entry.gr_gid, frozenset(members))


def group(name):
    """Group(name, gid, members) for a group name, None if there is none."""
    if not name or "\0" in name:
        return None
    return _lookup(_libc.getgrnam_r, name.encode(), _Group, _group, f"group {name!r}")


def group_by_gid(gid):
    return _lookup(_libc.getgrgid_r, ctypes.c_uint(gid), _Group, _group, f"gid {gid}")


def gids(account):
    """The user's primary and supplementary gids (glibc does not report a
    failing source here: group() of each named group is the check that does)."""
    try:
        return frozenset(os.getgrouplist(account.name, account.gid))
    except OSError:
        return frozenset([account.gid])
