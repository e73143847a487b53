"""bpf(2) through ctypes: the handful of commands pam-vrf needs.

Each function fills the command's part of union bpf_attr (linux/bpf.h)
and turns a failure into BpfError with a message an operator can act on.
"""

import ctypes
import errno
import os
import platform
import struct
from typing import NamedTuple

# Commands (enum bpf_cmd).
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM = 0, 1, 2
PROG_LOAD, PROG_ATTACH, PROG_DETACH = 5, 8, 9
PROG_GET_FD_BY_ID, MAP_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, PROG_QUERY = 13, 14, 15, 16

PROG_TYPE_CGROUP_SKB, PROG_TYPE_CGROUP_SOCK, PROG_TYPE_CGROUP_SOCKOPT = 8, 9, 25
CGROUP_INET_EGRESS, CGROUP_INET_SOCK_CREATE, CGROUP_SETSOCKOPT = 1, 2, 22
MAP_TYPE_ARRAY = 2
F_ALLOW_OVERRIDE, F_ALLOW_MULTI = 1, 2
F_QUERY_EFFECTIVE = 1

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361,
            "s390x": 351, "riscv64": 280, "i686": 357}
_ATTR_SIZE = 144          # sizeof(union bpf_attr) on 6.x; zero tail is accepted
_LOG_START, _LOG_MAX = 64 * 1024, 16 * 1024 * 1024
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

NEEDS_CAPS = "not permitted (needs CAP_BPF and CAP_NET_ADMIN, or root)"


class BpfError(OSError):
    """A bpf(2) failure; .log holds the verifier's words for a refused load."""

    def __init__(self, err, message, log=""):
        super().__init__(err, message)
        self.log = log

    def __str__(self):
        text = self.strerror
        if self.log:
            text += "\nverifier log:\n" + self.log.rstrip()
        return text


class ProgInfo(NamedTuple):
    id: int
    type: int
    tag: str
    name: str
    xlated: bytes       # the program as the kernel runs it (root only)
    map_ids: tuple = ()


def _bpf(cmd, attr):
    """Run bpf(cmd, attr); attr is a ctypes buffer. Returns the result or raises OSError."""
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise BpfError(errno.ENOSYS, f"bpf(2) syscall number unknown on {platform.machine()}")
    result = _libc.syscall(number, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _attr(layout, *values):
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(layout, buf, 0, *values)
    return buf


def _addr(buf):
    return ctypes.addressof(buf) if buf is not None else 0


def _explain(e, what):
    """One message per failure, in the spirit of iproute2's ipvrf.c."""
    if e.errno == errno.EPERM:
        return f"{what}: {NEEDS_CAPS}"
    if e.errno == errno.ENOSYS:
        return f"{what}: kernel without bpf(2) (CONFIG_BPF_SYSCALL)"
    return f"{what}: {e.strerror}"


def prog_load(code, name="", prog_type=PROG_TYPE_CGROUP_SOCK,
              attach_type=CGROUP_INET_SOCK_CREATE, license="GPL"):
    """Load instructions; returns the program fd. A refusal carries the verifier log.

    The first try asks for no log (cheaper); a refusal is retried with a log,
    growing the buffer while the kernel says it is too small.
    """
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())
    raw_name = name.encode()[:15]

    def attempt(log):
        attr = _attr("<IIQQIIQII16sII", prog_type, len(code) // 8, _addr(insns), _addr(lic),
                     1 if log is not None else 0, len(log) if log is not None else 0,
                     _addr(log), 0, 0, raw_name, 0, attach_type)
        return _bpf(PROG_LOAD, attr)

    try:
        return attempt(None)
    except OSError as e:
        first = e
    if first.errno in (errno.EPERM, errno.ENOSYS):
        raise BpfError(first.errno, _explain(first, "cannot load BPF program")) from None
    size = _LOG_START
    while True:
        log = ctypes.create_string_buffer(size)
        try:
            return attempt(log)        # loaded the second time: a transient failure
        except OSError as e:
            if e.errno == errno.ENOSPC and size < _LOG_MAX:
                size *= 4
                continue
            text = log.value.decode(errors="replace")
            if text:
                message = f"cannot load BPF program: the verifier refused it ({e.strerror})"
            else:
                message = _explain(e, "cannot load BPF program")
            if e.errno == errno.EINVAL and not text:
                message += " (kernel without CONFIG_CGROUP_BPF?)"
            raise BpfError(e.errno, message, text) from None


def map_create(map_type, key_size, value_size, max_entries, name=""):
    """A new map; returns its fd."""
    attr = _attr("<IIIIIII16s", map_type, key_size, value_size, max_entries, 0, 0, 0, name.encode()[:15])
    try:
        return _bpf(MAP_CREATE, attr)
    except OSError as e:
        raise BpfError(e.errno, _explain(e, "cannot create BPF map")) from None


def map_lookup(map_fd, key, value_size):
    """The value (bytes) stored under `key` (bytes)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        _bpf(MAP_LOOKUP_ELEM, _attr("<IIQQQ", map_fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0))
    except OSError as e:
        raise BpfError(e.errno, _explain(e, "cannot read BPF map")) from None
    return v.raw


def map_get_fd_by_id(map_id):
    """An fd for map `map_id` (the kernel asks for CAP_SYS_ADMIN here)."""
    try:
        return _bpf(MAP_GET_FD_BY_ID, _attr("<III", map_id, 0, 0))
    except OSError as e:
        raise BpfError(e.errno, _explain(e, f"cannot open BPF map {map_id}")) from None


def prog_attach(target_fd, prog_fd, attach_type=CGROUP_INET_SOCK_CREATE, flags=0):
    try:
        _bpf(PROG_ATTACH, _attr("<IIII", target_fd, prog_fd, attach_type, flags))
    except OSError as e:
        raise BpfError(e.errno, _explain(e, "cannot attach BPF program")) from None


def prog_detach(target_fd, attach_type=CGROUP_INET_SOCK_CREATE, prog_fd=0):
    try:
        _bpf(PROG_DETACH, _attr("<IIII", target_fd, prog_fd, attach_type, 0))
    except OSError as e:
        raise BpfError(e.errno, _explain(e, "cannot detach BPF program")) from None


def prog_query(target_fd, attach_type=CGROUP_INET_SOCK_CREATE, effective=False):
    """(attach_flags, [program ids]) attached to a cgroup for attach_type."""
    capacity = 64
    while True:
        ids = (ctypes.c_uint32 * capacity)()
        attr = _attr("<IIIIQI", target_fd, attach_type, F_QUERY_EFFECTIVE if effective else 0,
                     0, ctypes.addressof(ids), capacity)
        try:
            _bpf(PROG_QUERY, attr)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                capacity *= 4
                continue
            raise BpfError(e.errno, _explain(e, "cannot query BPF programs")) from None
        flags, count = struct.unpack_from("<I", attr, 12)[0], struct.unpack_from("<I", attr, 24)[0]
        return flags, list(ids[:count])


def prog_get_fd_by_id(prog_id):
    """An fd for program `prog_id` (the kernel asks for CAP_SYS_ADMIN here)."""
    try:
        return _bpf(PROG_GET_FD_BY_ID, _attr("<III", prog_id, 0, 0))
    except OSError as e:
        what = f"cannot open BPF program {prog_id}"
        if e.errno == errno.EPERM:
            raise BpfError(e.errno, f"{what}: not permitted (needs CAP_SYS_ADMIN)") from None
        raise BpfError(e.errno, _explain(e, what)) from None


_INFO_SIZE = 256  # a prefix of struct bpf_prog_info is enough


def prog_info(prog_fd):
    """Id, type, tag, name and translated instructions of a loaded program."""
    def get(xlated_buf, map_ids=None):
        info = ctypes.create_string_buffer(_INFO_SIZE)
        if xlated_buf is not None:
            struct.pack_into("<IQ", info, 20, len(xlated_buf), 0)
            struct.pack_into("<Q", info, 32, ctypes.addressof(xlated_buf))
        if map_ids is not None:
            struct.pack_into("<IQ", info, 52, len(map_ids), ctypes.addressof(map_ids))
        try:
            _bpf(OBJ_GET_INFO_BY_FD, _attr("<IIQ", prog_fd, _INFO_SIZE, ctypes.addressof(info)))
        except OSError as e:
            raise BpfError(e.errno, _explain(e, "cannot read BPF program info")) from None
        return info

    info = get(None)
    xlated_len, nr_maps = struct.unpack_from("<I", info, 20)[0], struct.unpack_from("<I", info, 52)[0]
    xlated, map_ids = b"", ()
    if xlated_len or nr_maps:
        buf = ctypes.create_string_buffer(xlated_len) if xlated_len else None
        ids = (ctypes.c_uint32 * nr_maps)() if nr_maps else None
        info = get(buf, ids)
        if buf is not None and struct.unpack_from("<Q", info, 32)[0]:  # zeroed when raw dumps are not allowed
            xlated = buf.raw[:struct.unpack_from("<I", info, 20)[0]]
        if ids is not None:
            map_ids = tuple(ids[:min(nr_maps, struct.unpack_from("<I", info, 52)[0])])
    ptype, pid = struct.unpack_from("<II", info, 0)
    tag = info.raw[8:16].hex()
    name = info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(pid, ptype, tag, name, xlated, map_ids)
