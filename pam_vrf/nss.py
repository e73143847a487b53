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
nsswitch.conf is read as glibc >= 2.33 reads it (nss/nss_database.c,
nss/nss_action_parse.c); what glibc cannot use fails every look-up.
"""

import ctypes
import errno
import os
import threading
import time
from collections import namedtuple

_libc = ctypes.CDLL(None, use_errno=True)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
# Python's grp grows its buffer without a limit; a group beyond this
# (millions of members) is an NssError "too large", not a source that is down.
_MAX_BUFFER = 64 << 20
NSSWITCH = "/etc/nsswitch.conf"

# enum nss_status
_TRYAGAIN, _UNAVAIL, _NOTFOUND, _SUCCESS = -2, -1, 0, 1
_STATUS = {"success": _SUCCESS, "notfound": _NOTFOUND, "unavail": _UNAVAIL, "tryagain": _TRYAGAIN}


def _down(status, err, service):
    """Did the source fail? nss-systemd answers UNAVAIL with ESRCH (systemd's
    userdb for "no such record") when no userdb service knows the name, and
    whenever systemd is not running: that is "not found", as for its getgrnam_r.
    That module only: another's UNAVAIL is a failure whatever its errno."""
    return status == _TRYAGAIN or (status == _UNAVAIL and not (err == errno.ESRCH and service == "systemd"))


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


# glibc's databases (nss/databases.def): a line naming another is ignored.
_DATABASES = frozenset(b"aliases ethers group group_compat gshadow hosts initgroups netgroup networks passwd "
                       b"passwd_compat protocols publickey rpc services shadow shadow_compat".split())
_BLANKS = b" \t\n\v\f\r"        # C's isspace()
_STATUS_NAMES = {b"success": _SUCCESS, b"notfound": _NOTFOUND, b"unavail": _UNAVAIL, b"tryagain": _TRYAGAIN}
_ACTIONS = {b"return": True, b"continue": False, b"merge": False}
# glibc's sources for a database without a line (Debian's glibc: no libnsl, so `files`).
_DEFAULT_SOURCES = {"group_compat": [("nis", {})]}
# nsswitch.conf cannot be opened for these: glibc then uses its defaults; for
# any other error (no descriptors, no memory) its look-ups fail.
_NO_FILE = (errno.EACCES, errno.EISDIR, errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.EPERM)


def _skip(line, i, chars=_BLANKS):
    while i < len(line) and line[i] in chars:
        i += 1
    return i


def _until(line, i, stops):
    while i < len(line) and line[i] not in stops:
        i += 1
    return i


def _sources(line):
    """nss_action_parse: [(service, {status: returns}), ...], None for a syntax error."""
    chain, i = [], 0
    while True:
        i = _skip(line, i)
        end = _until(line, i, _BLANKS + b"[")
        if end == i:                    # the end, or '[' where a name was due: glibc stops
            return chain
        service, actions = os.fsdecode(line[i:end]), {}
        i = _skip(line, end)
        if line[i:i + 1] == b"[":
            i = _skip(line, i + 1)
            while True:
                negate = line[i:i + 1] == b"!"
                i += negate
                end = _until(line, i, _BLANKS + b"=]")
                status = _STATUS_NAMES.get(line[i:end].lower())
                i = _skip(line, end)
                if status is None or line[i:i + 1] != b"=":
                    return None
                i = _skip(line, i + 1)
                end = _until(line, i, _BLANKS + b"=]")
                returns = _ACTIONS.get(line[i:end].lower())
                if returns is None:
                    return None
                for target in ([s for s in _STATUS.values() if s != status] if negate else [status]):
                    actions[target] = returns
                i = _skip(line, end)
                if line[i:i + 1] == b"]":
                    i += 1
                    break
        chain.append((service, actions))


def _parse(data):
    """{database: [(service, {status: returns}), ...]} as glibc >= 2.33 reads
    nsswitch.conf (nss_database.c process_line): bytes, a line ends at NUL,
    the name runs to a blank or ':' and any run of both follows, no comments
    but that a name like '#...' is no database's. None when a line cannot be
    parsed: glibc then rejects the file and every look-up fails."""
    lines = {}
    pieces = data.split(b"\n")
    for n, piece in enumerate(pieces):
        # getline keeps the newline ("group\n" is an empty group line). glibc
        # 2.36 drops a last line without one; it is read here (more sources, not fewer).
        line = (piece + b"\n" if n < len(pieces) - 1 else piece).split(b"\0", 1)[0]
        i = _skip(line, 0)
        end = _until(line, i, _BLANKS + b":")
        if end == i or end == len(line):
            continue
        name = line[i:end]
        if name in _DATABASES:
            chain = _sources(line[_skip(line, end, _BLANKS + b":"):])
            if chain is None:
                return None
            lines[name.decode()] = chain
    return lines


def _read():
    try:
        with open(NSSWITCH, "rb") as f:
            data = f.read()
    except OSError as e:
        if e.errno in _NO_FILE:
            return {}
        raise NssError(f"cannot read {NSSWITCH}: {e.strerror}") from None
    return _parse(data)


def _chain(database):
    """The sources for `database`, None when nsswitch.conf has no such line.
    Read again when the file changes (glibc does the same since 2.33).
    NssError where glibc's look-ups fail: a line it cannot parse, or a read
    that failed for want of descriptors or memory (not remembered)."""
    try:
        st = os.stat(NSSWITCH)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError as e:
        if e.errno not in _NO_FILE:
            raise NssError(f"cannot read {NSSWITCH}: {e.strerror}") from None
        key = None
    if key != _chains["key"]:
        lines = _read()
        for service in [s for s, library in _modules.items() if library is None]:
            del _modules[service]       # installed since? (as after apt install libnss-sss)
        _chains.update(key=key, lines=lines)
    if _chains["lines"] is None:
        raise NssError(f"{NSSWITCH} has a line glibc cannot parse: every name-service look-up fails")
    return _chains["lines"].get(database)


def _sources_of(database):
    """_chain(database), or glibc's default sources when nsswitch.conf has no line for it."""
    chain = _chain(database)
    return _DEFAULT_SOURCES.get(database, [("files", {})]) if chain is None else chain


def _returns(actions, status):
    return actions.get(status, status == _SUCCESS)


def _function(service, name):
    """_nss_SERVICE_NAME from libnss_SERVICE.so.2, or None when glibc has none
    to call (no such module installed, or no such function in it). NssError
    when dlopen failed otherwise (no descriptors or memory, a broken module):
    not remembered."""
    library = _modules.get(service, False)
    if library is False:
        try:
            library = ctypes.CDLL(f"libnss_{service}.so.2", use_errno=True)
        except OSError as e:
            # dlerror() says strerror(ENOENT), in the locale's language
            if not any(text in str(e) for text in ("No such file or directory", os.strerror(errno.ENOENT))):
                raise NssError(f"cannot load the name service module of source '{service}': {e}") from None
            library = None
        _modules[service] = library
    try:
        return getattr(library, f"_nss_{service}_{name}") if library is not None else None
    except (AttributeError, ValueError):    # ValueError: a name ctypes cannot encode
        return None


def _failure(what, service, err):
    reason = os.strerror(err) if err else "the name service did not answer"
    return NssError(f"cannot look up {what}: {reason} (source '{service}')")


def _call(fn, args, struct, what):
    """fn(*args, &struct, buf, len, &errno), growing the buffer on ERANGE: (status, errno, struct, buf)."""
    size = 1024
    while True:
        entry, buf, err = struct(), ctypes.create_string_buffer(size), ctypes.c_int(0)
        status = fn(*args, ctypes.byref(entry), buf, ctypes.c_size_t(size), ctypes.byref(err))
        if status == _TRYAGAIN and err.value == errno.ERANGE:
            if size >= _MAX_BUFFER:
                raise NssError(f"cannot look up {what}: an entry larger than {_MAX_BUFFER >> 20} MiB (too large)")
            size *= 4
            continue
        return status, err.value, entry, buf


def _lookup(database, function, key, struct, convert, what):
    """getXXbyYY_r through each source: convert(entry) or None for no such entry."""
    failed = None
    for service, actions in _sources_of(database):
        fn = _function(service, function)
        if fn is None:          # glibc: UNAVAIL for the actions, not a failure
            if _returns(actions, _UNAVAIL):
                break
            continue
        status, err, entry, buf = _call(fn, (key,), struct, what)
        if status == _SUCCESS:
            if failed:          # an earlier source might have answered otherwise
                raise failed
            return convert(entry)
        if _down(status, err, service):
            failed = failed or _failure(what, service, err)
        if _returns(actions, status):
            break
    if failed:
        raise failed
    return None


# -- look-ups ------------------------------------------------------------------------

def user(name):
    """User(name, uid, gid) for a user name, None if there is none."""
    key = _key(name)
    return None if key is None else _lookup("passwd", "getpwnam_r", key, _Passwd, _user, f"user {name!r}")


def _key(name):
    """The bytes glibc gets for a name (a name not UTF-8 came in as surrogate
    escapes: os.fsencode gives its bytes back), None for one no entry can have."""
    try:
        key = os.fsencode(name)
    except UnicodeEncodeError:
        return None
    return key if key and b"\0" not in key else None


def user_by_uid(uid):
    return _lookup("passwd", "getpwuid_r", ctypes.c_uint(uid), _Passwd, _user, f"uid {uid}")


def _user(entry):
    return User(os.fsdecode(entry.pw_name), entry.pw_uid, entry.pw_gid)


def _members(entry):
    members, i = [], 0
    while entry.gr_mem and entry.gr_mem[i]:
        members.append(os.fsdecode(entry.gr_mem[i]))     # as User.name: the same bytes, the same str
        i += 1
    return members


def _group(entry):
    return Group(entry.gr_name.decode(errors="replace"), entry.gr_gid, frozenset(_members(entry)))


def group(name):
    """Group(name, gid, members) for a group name, None if there is none."""
    key = _key(name)
    return None if key is None else _lookup("group", "getgrnam_r", key, _Group, _group, f"group {name!r}")


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
                if _down(status, ctypes.get_errno(), service):
                    raise _failure(what, service, ctypes.get_errno())
            while True:
                status, err, entry, buf = _call(getent, (), _Group, what)
                if status != _SUCCESS:
                    if _down(status, err, service):
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
    for service, _ in _sources_of("group"):
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


def _source_gids(service, account, what):
    """(status, gids) of one source as getgrouplist asks it: its initgroups_dyn,
    else (glibc's compat_call) the groups it enumerates that list the user;
    UNAVAIL when it has neither. NssError when it fails."""
    fn = _function(service, "initgroups_dyn")
    if fn is None:
        if _function(service, "getgrent_r") is None:
            return _UNAVAIL, ()
        found = [gid for _, gid, members in _entries(service, what) if account.name in members]
        return (_SUCCESS if found else _NOTFOUND), found
    size = 64
    buffer = ctypes.cast(_libc.malloc(size * 4), ctypes.POINTER(ctypes.c_uint))
    if not buffer:
        raise MemoryError
    try:
        start, length, err = ctypes.c_long(0), ctypes.c_long(size), ctypes.c_int(0)
        status = fn(os.fsencode(account.name), ctypes.c_uint(account.gid), ctypes.byref(start),
                    ctypes.byref(length), ctypes.byref(buffer), ctypes.c_long(-1), ctypes.byref(err))
        if _down(status, err.value, service):
            raise _failure(what, service, err.value)
        return status, buffer[:start.value]
    finally:
        _libc.free(ctypes.cast(buffer, ctypes.c_void_p))


def _compat_source(account, what):
    """nss_compat brings in the groups of the first `group_compat` source
    (default nis) for a '+' line of /etc/group, and hides its failure (its
    initgroups_dyn answers SUCCESS, its getgrent skips it): ask it here, and
    raise NssError when it is down."""
    try:
        with open("/etc/group", "rb") as f:
            plus = any(line.startswith(b"+") for line in f)
    except OSError as e:
        raise NssError(f"cannot look up {what}: cannot read /etc/group: {e.strerror}") from None
    if plus:
        for service, _ in _sources_of("group_compat")[:1]:      # compat asks the first only
            _source_gids(service, account, what)


def gids(account):
    """The user's primary and supplementary gids (getgrouplist: the
    `initgroups` sources, else the `group` ones); NssError when one fails."""
    chain, by_initgroups = _chain("initgroups"), True
    if chain is None:
        chain, by_initgroups = _sources_of("group"), False
    what = f"the groups of user {account.name!r}"
    found = {account.gid}
    for service, actions in chain:
        status, more = _source_gids(service, account, what)
        found.update(more)
        if service == "compat":
            _compat_source(account, what)
        # glibc: without an `initgroups` line, a success goes on to the next source.
        if (by_initgroups or status != _SUCCESS) and _returns(actions, status):
            break
    return frozenset(found)
