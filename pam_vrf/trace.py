"""`pam-vrf trace`: a live line for every socket created in a pam-vrf cgroup.

    12:00:01.234 pid=1234 user=op1 comm=curl vrf=mgmt inet/stream/tcp bound mgmt
    12:00:02.345 pid=1240 user=op1 comm=python3 vrf=mgmt inet6/dgram/udp refused deny=inet6 rule=/etc/security/vrf.conf:3

How: with bcc (python3-bpfcc), a kprobe and a kretprobe on the kernel
function that runs a cgroup's sock-create programs,
__cgroup_bpf_run_filter_sk(sk, atype) (kernel/bpf/cgroup.c; inet_create()
calls it for every AF_INET/AF_INET6 socket once any cgroup anywhere has a
sock-create program). At entry the socket is remembered per thread (only for
atype CGROUP_INET_SOCK_CREATE, from cgroups not yet known to be of no
interest); at return the verdict (0, or -EPERM when a program refused) and the
socket's family, type, protocol and bound device are sent to userspace with
pid, uid, command and cgroup id. Userspace turns the cgroup id into its path
(open_by_handle_at on the cgroup2 mount), keeps the cgroups pam-vrf placed
(a /vrf/ level, or an attachment the helper recorded in its state file) and
names the rule: the helper's state file says which rule (deny items and
FILE:LINE) each cgroup's program was made from; sockspec.denied_by() names
the item that refused. Every other cgroup goes into a kernel map the entry
probe checks first, so their sockets cost one hash lookup from then on.

Why this function and not a tracepoint: no tracepoint fires between the
programs' verdict and the socket's release, and the function's arguments
(the socket itself) carry everything; it is exported (EXPORT_SYMBOL), so it
is never inlined away. bcc compiles the probe at start against the running
kernel's headers: python3-bpfcc and linux-headers-$(uname -r) are needed.

Once a second it also reads the drop counters of the egress programs on
the cgroups in the state file (pam_vrf.drops) and prints a line per VRF
whose program dropped packets a placed session tried to send by another
link:

    12:00:03.456 vrf=mgmt egress dropped 2 packets leaving by another link (total 7)

Exit codes: 0 stopped by SIGINT/SIGTERM (the probes are detached); 1 an
error (not root, the probe cannot be attached); 3 this host cannot run it
(bcc or the kernel headers missing: the message names the packages).
"""

import ctypes
import errno
import datetime
import importlib
import json
import os
import pwd
import signal
import socket
import sys
import time

from pam_vrf import cgroup, paths
from pam_vrf.bpf.sockprog import ALWAYS_DENIED
from pam_vrf.drops import DropWatch
from pam_vrf.sockspec import FAMILIES, PROTOCOLS, TYPES, denied_by, parse_item

DEFAULT_STATE = paths.DEFAULT_STATE
FUNCTION = "__cgroup_bpf_run_filter_sk"
EXIT_UNAVAILABLE = 3
# A socket from a VRF cgroup the state file does not know yet (the helper
# writes it up to 0.5 s after a placement): wait this long for it.
STATE_WAIT = 2.0
DROPS_EVERY = 1.0           # seconds between looks at the egress programs' drop counters

BPF_TEXT = r"""
#include <uapi/linux/ptrace.h>
#include <net/sock.h>

/* enum cgroup_bpf_attach_type (5.15+) and, before it, enum bpf_attach_type
   (the function's second argument then): both start INET_INGRESS,
   INET_EGRESS, INET_SOCK_CREATE. */
#define ATYPE_INET_SOCK_CREATE 2

struct event {
    u64 ts;
    u64 cgroup;
    u32 pid;
    u32 uid;
    s32 ret;
    s32 bound_dev_if;
    u16 family;
    u16 type;
    u16 protocol;
    u16 pad;
    char comm[16];
};

BPF_HASH(started, u32, u64, 4096);      /* thread id -> struct sock * */
BPF_HASH(ignored, u64, u8, 65536);      /* cgroup ids userspace has no use for */
BPF_PERF_OUTPUT(events);

int on_entry(struct pt_regs *ctx, struct sock *sk, int atype)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    /* A return probe the kernel missed (out of kretprobe instances) must not
       leave this thread's last socket for the next return to report. */
    started.delete(&tid);
    if (atype != ATYPE_INET_SOCK_CREATE)
        return 0;
#ifdef ONLY_UID
    if ((u32)bpf_get_current_uid_gid() != ONLY_UID)
        return 0;
#endif
    u64 cg = bpf_get_current_cgroup_id();
    if (ignored.lookup(&cg))
        return 0;
    u64 ptr = (u64)sk;
    started.update(&tid, &ptr);
    return 0;
}

int on_return(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *ptr = started.lookup(&tid);
    if (!ptr)
        return 0;
    struct sock *sk = (struct sock *)*ptr;
    started.delete(&tid);

    struct event e = {};
    e.ts = bpf_ktime_get_ns();
    e.cgroup = bpf_get_current_cgroup_id();
    e.pid = bpf_get_current_pid_tgid() >> 32;
    e.uid = (u32)bpf_get_current_uid_gid();
    e.ret = PT_REGS_RC(ctx);
    bpf_probe_read_kernel(&e.bound_dev_if, sizeof(e.bound_dev_if), &sk->sk_bound_dev_if);
    bpf_probe_read_kernel(&e.family, sizeof(e.family), &sk->sk_family);
    bpf_probe_read_kernel(&e.type, sizeof(e.type), &sk->sk_type);
    bpf_probe_read_kernel(&e.protocol, sizeof(e.protocol), &sk->sk_protocol);
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.perf_submit(ctx, &e, sizeof(e));
    return 0;
}
"""


class Event(ctypes.Structure):
    _fields_ = [("ts", ctypes.c_uint64), ("cgroup", ctypes.c_uint64), ("pid", ctypes.c_uint32),
                ("uid", ctypes.c_uint32), ("ret", ctypes.c_int32), ("bound_dev_if", ctypes.c_int32),
                ("family", ctypes.c_uint16), ("type", ctypes.c_uint16), ("protocol", ctypes.c_uint16),
                ("pad", ctypes.c_uint16), ("comm", ctypes.c_char * 16)]


class Unavailable(Exception):
    """This host cannot run the tracer; the message says what to install."""


# --- what bcc needs ---------------------------------------------------------------------


def header_places(release=None):
    """Where bcc (0.26) looks for the running kernel's headers."""
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return [os.environ["BCC_KERNEL_SOURCE"]]
    release = release or os.uname().release
    return [f"/lib/modules/{release}/build", f"/lib/modules/{release}/source", "/sys/kernel/kheaders.tar.xz"]


def missing():
    """What this host lacks for the tracer: a list of (what, Debian package)."""
    out = []
    try:
        importlib.import_module("bcc")
    except ImportError:
        out.append(("bcc's Python module (import bcc failed)", "python3-bpfcc"))
    if not any(os.path.exists(p) for p in header_places()):
        release = os.uname().release
        out.append((f"the running kernel's headers (none at {header_places()[0]})",
                    f"linux-headers-{release}"))
    return out


def unavailable_message(lacks):
    packages = " ".join(pkg for _, pkg in lacks)
    return ("pam-vrf trace needs " + "; and ".join(what for what, _ in lacks) + ".\n"
            f"On Debian: apt install {packages}\n"
            "(the headers must match the running kernel: the meta package of its flavour, e.g. "
            "linux-headers-amd64 or linux-headers-cloud-amd64, installs them with the next kernel "
            "update too)")


# --- from cgroup id to path, VRF and rule ----------------------------------------------------


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_uint64)]


FILEID_KERNFS = 0xFE
_libc = ctypes.CDLL(None, use_errno=True)


_UNSUPPORTED = object()     # open_by_handle_at cannot answer here: walk the tree


class CgroupPaths:
    """cgroup id -> directory under the cgroup2 mount (None once it is gone)."""

    def __init__(self, mount=None):
        self.mount = mount or cgroup.mount_point()
        self._mount_fd = os.open(self.mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._cache = {}

    def close(self):
        os.close(self._mount_fd)

    CACHE_MAX = 65536

    def path(self, cgroup_id):
        if cgroup_id not in self._cache:
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()     # cgroups come and go: never grow without end
            found = self._by_handle(cgroup_id)
            self._cache[cgroup_id] = self._by_walk(cgroup_id) if found is _UNSUPPORTED else found
        return self._cache[cgroup_id]

    def _by_handle(self, cgroup_id):
        """The kernel's own answer: cgroup2 file handles are the cgroup id.
        None when the cgroup is gone (ESTALE): no walk then, or a user who
        makes and removes cgroups in a loop would have us walk the whole tree
        for each of its sockets."""
        handle = _FileHandle(8, FILEID_KERNFS, cgroup_id)
        fd = _libc.open_by_handle_at(self._mount_fd, ctypes.byref(handle), os.O_RDONLY | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            return _UNSUPPORTED if err in (errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM, errno.EINVAL) else None
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)

    def _by_walk(self, cgroup_id):
        """Without open_by_handle_at: the directory whose inode number is the id."""
        for here, dirs, _ in os.walk(self.mount):
            for d in dirs:
                path = os.path.join(here, d)
                try:
                    if os.stat(path).st_ino == cgroup_id:
                        return path
                except OSError:
                    continue
        return None


class State:
    """The helper's attachments (path -> entry dict), re-read when the file changes."""

    def __init__(self, path):
        self.path = path
        self.entries = {}
        self._stamp = None
        self.refresh()

    def refresh(self):
        """Re-read if changed; True when it did."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            with open(self.path) as f:
                data = json.load(f)
            self.entries = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self.entries = {}
        return True

    def entry_for(self, path):
        """The attachment that applies to `path`: its own, or its nearest ancestor's."""
        while path and path != "/":
            if path in self.entries:
                return path, self.entries[path]
            path = os.path.dirname(path)
        return None, None


def vrf_of_path(path):
    if os.path.basename(path) == cgroup.VRF_DIR:
        return cgroup.DEFAULT_VRF      # <base>/vrf itself: iproute2's default VRF
    name = cgroup.vrf_of(path)
    if name is None:
        return None
    return name.split("/", 1)[0] or cgroup.DEFAULT_VRF


def owner_of(path):
    """The uid owning a cgroup directory (None if gone). iproute2's are
    root's and the helper's its own user's (who owns its state file); one a
    user made in a tree delegated to it is neither, and its name proves
    nothing."""
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


# Everything a line prints that a user chose (comm, cgroup names, user names)
# goes out escaped: no terminal escapes into root's terminal, no space that
# forges a field.
_UNSAFE_ASCII = {c: f"\\x{c:02x}" for c in [*range(0x21), 0x7f]}


def printable(text):
    text = str(text).translate(_UNSAFE_ASCII)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


# --- the lines ---------------------------------------------------------------------------------


def _name(table, value):
    for k, v in table.items():
        if v == value:
            return k
    return str(value)


def socket_text(family, kind, protocol):
    return f"{_name(FAMILIES, family)}/{_name(TYPES, kind)}/{_name(PROTOCOLS, protocol)}"


def verdict(ret, family, kind, protocol, bound_dev_if, entry, ifname):
    """(words, fields) of the verdict part of a line. `entry`: the helper's
    record for the cgroup (or None); `ifname(ifindex)` names a device."""
    if ret == 0:
        if bound_dev_if:
            name = ifname(bound_dev_if)
            return f"bound {name}", {"verdict": "bound", "device": name, "ifindex": bound_dev_if}
        return "unbound", {"verdict": "unbound"}
    fields = {"verdict": "refused", "errno": -ret}
    item = None
    if entry is not None:
        try:
            item = denied_by([parse_item(t) for t in entry["rule"]["deny"]], family, kind, protocol)
        except (KeyError, TypeError, ValueError):
            item = None
    if item is None and (family, kind, protocol) in ALWAYS_DENIED:
        return "refused mptcp (always, in a VRF: its subflows would not be bound)", dict(fields, deny="mptcp")
    if item is None:
        why = "by no deny item of its pam-vrf rule: another program" if entry is not None \
            else "(no pam-vrf rule recorded for this cgroup)"
        return f"refused {why}", fields
    source = entry.get("source") or "unknown"
    fields.update(deny=item.text, rule=source)
    return f"refused deny={item.text} rule={source}", fields


def _ifname(ifindex):
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"ifindex{ifindex}"


def _user(uid, cache={}):
    if uid not in cache:
        try:
            cache[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            cache[uid] = str(uid)
    return cache[uid]


# --- the tracer --------------------------------------------------------------------------------


class Tracer:
    def __init__(self, args, out=sys.stdout):
        self.args, self.out = args, out
        self.state = State(args.state)
        # Who makes VRF cgroups: root (iproute2) and the helper's user, which
        # owns its state directory (the helper may not have written a new
        # session down yet when its first socket is made).
        self.trusted_uids = {0} | {uid for uid in (owner_of(os.path.dirname(args.state)),) if uid is not None}
        self.paths = CgroupPaths()
        self.pending = []                   # (deadline, event fields, path): waiting for the state file
        self.boot_offset = time.time() - time.monotonic()   # bpf_ktime_get_ns is CLOCK_MONOTONIC
        self.bpf = None
        self.ignored = None
        self.stopping = False               # set by SIGINT/SIGTERM (see main)
        self.lost, self._lost_said = 0, 0.0
        self.drops, self._drops_at = DropWatch(), 0.0

    def start(self):
        from bcc import BPF
        cflags = []
        if self.args.user is not None:
            cflags.append(f"-DONLY_UID={self.args.uid}u")
        self.bpf = BPF(text=BPF_TEXT, cflags=cflags)
        self.bpf.attach_kprobe(event=FUNCTION, fn_name="on_entry")
        self.bpf.attach_kretprobe(event=FUNCTION, fn_name="on_return")
        self.ignored = self.bpf["ignored"]
        self.bpf["events"].open_perf_buffer(self._event, page_cnt=256, lost_cb=self._lost)

    def stop(self):
        if self.bpf is not None:
            self.bpf.cleanup()          # detaches the probes
            self.bpf = None
        self.paths.close()

    def poll(self, timeout_ms=200):
        self.bpf.perf_buffer_poll(timeout=timeout_ms)
        if self.stopping:
            return
        if self.state.refresh():
            self.ignored.clear()        # a cgroup may have become one of ours (user@UID.service)
        self._flush_pending()
        if time.monotonic() - self._drops_at >= DROPS_EVERY:
            self._drops_at = time.monotonic()
            self._report_drops()
        self.out.flush()                # once per batch: a line per socket can be many
        if self.lost and time.monotonic() - self._lost_said >= 1:
            print(f"pam-vrf trace: {self.lost} events lost (sockets are created faster than "
                  "this tracer prints them)", file=sys.stderr, flush=True)
            self.lost, self._lost_said = 0, time.monotonic()

    def _report_drops(self):
        """A line per VRF whose egress program dropped packets since the last look
        (datagrams a placed session tried to send by another link)."""
        cgroups = [(path, e.get("vrf")) for path, e in self.state.entries.items() if isinstance(e, dict)]
        for vrf, new, total in self.drops.poll(cgroups):
            if self.args.vrf and vrf != self.args.vrf:
                continue
            if self.args.json:
                line = json.dumps({"time": time.time(), "vrf": vrf, "egress_dropped": new,
                                   "egress_dropped_total": total}, sort_keys=True)
            else:
                stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
                line = (f"{stamp} vrf={printable(str(vrf))} egress dropped {new} packet{'s' if new != 1 else ''} "
                        f"leaving by another link (total {total})")
            print(line, file=self.out)

    def _lost(self, count):
        self.lost += count

    def _event(self, cpu, data, size):
        if self.stopping:
            return                      # the rest of the batch: we are on the way out
        e = ctypes.cast(data, ctypes.POINTER(Event)).contents
        path = self.paths.path(e.cgroup)
        if path is None:
            return                      # gone already (or not ours to see): nothing to say
        owner, entry = self.state.entry_for(path)
        vrf = entry["vrf"] if entry else vrf_of_path(path)
        if vrf is None or (self.args.vrf and vrf != self.args.vrf):
            self.ignored[self.ignored.Key(e.cgroup)] = self.ignored.Leaf(1)
            return
        made_by = None if entry else owner_of(path)
        if made_by in self.trusted_uids:
            made_by = None
        fields = {
            "time": self.boot_offset + e.ts / 1e9, "pid": e.pid, "uid": e.uid,
            "user": _user(e.uid), "comm": e.comm.decode(errors="replace"), "vrf": vrf,
            "cgroup": path, "family": e.family, "type": e.type, "protocol": e.protocol,
            "ret": e.ret, "bound_dev_if": e.bound_dev_if,
            # Not recorded by the helper and not root's: a name a user chose.
            "made_by_uid": made_by if made_by else None,
        }
        if entry is None and e.ret != 0:
            # Refused in a VRF cgroup the helper has not written down yet: wait for it.
            self.pending.append((time.monotonic() + STATE_WAIT, fields, path))
            return
        self._emit(fields, entry)

    def _flush_pending(self):
        now, keep = time.monotonic(), []
        for deadline, fields, path in self.pending:
            _, entry = self.state.entry_for(path)
            if entry is not None or now >= deadline:
                self._emit(fields, entry)
            else:
                keep.append((deadline, fields, path))
        self.pending = keep

    def _emit(self, f, entry):
        words, result = verdict(f["ret"], f["family"], f["type"], f["protocol"], f["bound_dev_if"],
                                entry, _ifname)
        if self.args.json:
            record = {k: f[k] for k in ("time", "pid", "uid", "user", "comm", "vrf", "cgroup")}
            if f.get("made_by_uid") is not None:
                record["made_by_uid"] = f["made_by_uid"]
            record["socket"] = socket_text(f["family"], f["type"], f["protocol"])
            record.update(result)
            line = json.dumps(record, sort_keys=True)
        else:
            stamp = datetime.datetime.fromtimestamp(f["time"]).strftime("%H:%M:%S.%f")[:-3]
            vrf = printable(f["vrf"])
            if f.get("made_by_uid") is not None:
                vrf += f"(cgroup-of-uid-{f['made_by_uid']})"
            line = (f"{stamp} pid={f['pid']} user={printable(f['user'])} comm={printable(f['comm'])} vrf={vrf} "
                    f"{socket_text(f['family'], f['type'], f['protocol'])} {words}")
        print(line, file=self.out)


def main(args):
    lacks = missing()
    if lacks:
        print(unavailable_message(lacks), file=sys.stderr)
        return EXIT_UNAVAILABLE
    if os.geteuid() != 0:
        print("pam-vrf: trace needs root (it loads BPF programs and attaches kernel probes)", file=sys.stderr)
        return 1
    args.uid = None
    if args.user is not None:
        try:
            args.uid = int(args.user) if args.user.isdigit() else pwd.getpwnam(args.user).pw_uid
        except KeyError:
            print(f"pam-vrf: no user '{args.user}'", file=sys.stderr)
            return 1
    tracer = Tracer(args)
    try:
        try:
            tracer.start()
        except KeyboardInterrupt:
            return 0
        except Exception as e:          # bcc raises bare Exceptions (compile, attach)
            print(f"pam-vrf: cannot trace: {e}", file=sys.stderr)
            return 1

        # A flag, not KeyboardInterrupt: an exception raised while bcc runs our
        # callback inside perf_buffer_poll() is swallowed by ctypes.
        def stop(signum, frame):
            tracer.stopping = True
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"pam-vrf trace: ready (kprobe+kretprobe on {FUNCTION}; state {args.state}); "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
        while not tracer.stopping:
            tracer.poll()
        return 0
    finally:
        tracer.stop()
