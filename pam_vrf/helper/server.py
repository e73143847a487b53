"""The helper's socket loop: one request per connection, bounded in size,
time and number of clients, so a hostile client cannot stall or crash it.

Two listening sockets: root.sock (mode 0600, the PAM entries) and the public
helper.sock. Single-threaded (selectors; one thread means no locking around
the attachment table), with priority: whatever is ready on root.sock is
served before each single piece of work for the public socket, so other
users' traffic delays a login by one short request at most.

Each request carries the sender's pidfd (SCM_RIGHTS) and the kernel adds
the sender's pid (SCM_CREDENTIALS): see pam_vrf.process.

Releasing a descriptor a client passed can block (a TCP socket with
SO_LINGER and unacknowledged data, a file on the user's FUSE mount), and so
can closing a connection that still holds such messages. The main loop
therefore never releases anything a non-root client sent: it receives every
passed descriptor (room for the kernel's maximum, so none is dropped inside
recvmsg) and hands descriptors and connections to closer threads; a uid with
too much waiting there is turned away until it drains.
"""

import array
import errno
import os
import queue
import select
import selectors
import socket
import struct
import threading
import time

from pam_vrf import process, protocol
from pam_vrf.helper.requests import Peer

MAX_CLIENTS = 128           # public socket; root.sock is never turned away
MAX_PER_UID = 16            # one non-root user cannot take every slot
RATE_PER_UID = 20.0         # requests a second a non-root uid may make...
BURST_PER_UID = 40          # ...after a burst of this many
CLIENT_DEADLINE = protocol.TIMEOUT
PRUNE_EVERY = 10.0          # seconds between looks for cgroups that logind removed
CLOSER_THREADS = 4
MAX_PENDING_PER_UID = 4     # connections of one uid still being released

_UCRED = struct.Struct("3i")
SCM_MAX_FD = 253            # the most descriptors one message can carry (linux/scm.h)
_ANCILLARY = socket.CMSG_SPACE(4 * SCM_MAX_FD) + socket.CMSG_SPACE(_UCRED.size)


def peer_uid(conn):
    return _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]


def _hung_up(conn):
    """After a zero-length read: did the peer close (EOF), or send an empty message?"""
    poll = select.poll()
    poll.register(conn, select.POLLRDHUP)
    return bool(poll.poll(0))


def _close(conn):
    """Close without resetting the peer: a close() with unread data makes the
    peer's recv() fail with ECONNRESET instead of returning our answer."""
    try:
        conn.shutdown(socket.SHUT_RD)
        for _ in range(64):
            if not conn.recv(protocol.MAX_MESSAGE + 1, socket.MSG_DONTWAIT):
                break
    except OSError:
        pass
    conn.close()


def _ancillary(ancdata):
    """(pidfds received, sender pid or None) from recvmsg's ancillary data."""
    fds, pid = [], None
    for level, kind, data in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
        elif kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
            pid = _UCRED.unpack(data[:_UCRED.size])[0]
    return fds, pid


class Closer:
    """Threads that release what non-root clients passed or left behind, so a
    release that blocks never stalls the main loop; counts what each uid has
    waiting."""

    def __init__(self, threads=CLOSER_THREADS):
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = {}
        for _ in range(threads):
            threading.Thread(target=self._run, daemon=True, name="pam-vrf-closer").start()

    def pending(self, uid):
        with self._lock:
            return self._pending.get(uid, 0)

    def put(self, uid, conn=None, fds=()):
        with self._lock:
            self._pending[uid] = self._pending.get(uid, 0) + 1
        self._queue.put((uid, conn, list(fds)))

    def _run(self):
        while True:
            uid, conn, fds = self._queue.get()
            try:
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                if conn is not None:
                    _close(conn)
            finally:
                with self._lock:
                    left = self._pending[uid] - 1
                    if left:
                        self._pending[uid] = left
                    else:
                        del self._pending[uid]


class Client:
    __slots__ = ("uid", "root", "deadline")

    def __init__(self, uid, root, deadline):
        self.uid, self.root, self.deadline = uid, root, deadline


class Server:
    def __init__(self, listeners, handler, links, log):
        """listeners: {socket: True for root.sock, False for the public one}."""
        self.listeners, self.handler, self.links, self.log = listeners, handler, links, log
        self.clients = {}          # socket -> Client
        self.sel = selectors.DefaultSelector()
        self.root_sel = selectors.DefaultSelector()     # root.sock and its clients only
        self.stopping = False
        self._busy = (0.0, 0)      # (time of the last busy warning, refusals not yet logged)
        self._buckets = {}         # uid -> (tokens, time)
        self.closer = Closer()

    def serve_forever(self):
        for sock, root in self.listeners.items():
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.sel.register(sock, selectors.EVENT_READ, ("accept", root))
            if root:
                self.root_sel.register(sock, selectors.EVENT_READ, ("accept", root))
        if self.links is not None:
            self.sel.register(self.links.fileno(), selectors.EVENT_READ, ("links", False))
        attachments = self.handler.attachments
        flush_at = None
        prune_at = time.monotonic() + PRUNE_EVERY
        while not self.stopping:
            deadlines = [c.deadline for c in self.clients.values()]
            if attachments.entries:
                deadlines.append(prune_at)
            if attachments.dirty:
                flush_at = flush_at or time.monotonic() + attachments.FLUSH_DELAY
                deadlines.append(flush_at)
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready = self.sel.select(timeout)
            self._root_first()
            for key, _ in ready:
                if key.data[1]:
                    continue        # root.sock's: served by _root_first()
                self._event(key)
                self._root_first()
            self._expire()
            if time.monotonic() >= prune_at:
                attachments.flush()         # ended sessions: forget them, unload unused programs
                prune_at = time.monotonic() + PRUNE_EVERY
            if flush_at is not None and time.monotonic() >= flush_at:
                # The state file only: sweeping every session's cgroup here
                # cost ~420 ms at 10 000 sessions, every 0.5 s of a login burst.
                attachments.save()
                flush_at = None

    def _root_first(self):
        """Serve everything that is ready on root.sock, until nothing is."""
        while True:
            ready = self.root_sel.select(0)
            if not ready:
                return
            for key, _ in ready:
                self._event(key)

    def _event(self, key):
        kind, root = key.data
        if key.fileobj not in self.listeners and kind == "client" and key.fileobj not in self.clients:
            return                  # dropped earlier in this round
        try:
            if kind == "accept":
                self._accept(key.fileobj, root)
            elif kind == "links":
                self._link_events()
            else:
                self._serve(key.fileobj)
        except Exception as e:          # never let one event take the helper down
            self.log.err(f"internal error ({kind}): {type(e).__name__}: {e}")
            if kind == "client":
                self._drop(key.fileobj)

    def _accept(self, listener, root):
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.log.err("out of file descriptors; dropping a connection")
                time.sleep(0.01)
            return
        uid = peer_uid(conn)
        if root and uid != 0:       # mode 0600 should make this impossible
            self.log.warning(f"refused a connection of uid {uid} on root.sock: root.sock is for root only")
            self._send(conn, protocol.reply(False, error="root.sock is for root only"))
            self.closer.put(uid, conn)
            return
        if uid != 0:                # root (the PAM entries) is never turned away
            why = self._over_limit(uid)
            if why:
                self._busy_warning(uid, why)
                self._send(conn, protocol.reply(False, error="helper busy"))
                self.closer.put(uid, conn)
                return
        conn.setblocking(False)
        self.clients[conn] = Client(uid, root, time.monotonic() + CLIENT_DEADLINE)
        self.sel.register(conn, selectors.EVENT_READ, ("client", root))
        if root:
            self.root_sel.register(conn, selectors.EVENT_READ, ("client", root))

    def _over_limit(self, uid):
        if self.closer.pending(uid) >= MAX_PENDING_PER_UID:
            return f"uid {uid} has {MAX_PENDING_PER_UID} connections still being released"
        if len(self.clients) >= MAX_CLIENTS:
            return f"more than {MAX_CLIENTS} clients at once"
        if sum(1 for c in self.clients.values() if c.uid == uid) >= MAX_PER_UID:
            return f"more than {MAX_PER_UID} connections of uid {uid}"
        now = time.monotonic()
        tokens, then = self._buckets.get(uid, (BURST_PER_UID, now))
        tokens = min(BURST_PER_UID, tokens + (now - then) * RATE_PER_UID)
        if tokens < 1:
            self._buckets[uid] = (tokens, now)
            return f"uid {uid} over {RATE_PER_UID:g} requests a second"
        self._buckets[uid] = (tokens - 1, now)
        if len(self._buckets) > 4096:       # forget users who are quiet again
            self._buckets = {u: b for u, b in self._buckets.items() if now - b[1] < 60}
        return None

    def _busy_warning(self, uid, why):
        """One line a second at most: a flood must not flood syslog too."""
        last, count = self._busy
        now = time.monotonic()
        if now - last < 1.0:
            self._busy = (last, count + 1)
            return
        more = f" (and {count} more refusals in the last second)" if count else ""
        self.log.warning(f"{why}: refusing a connection of uid {uid}{more}")
        self._busy = (now, 0)

    def _serve(self, conn):
        try:
            data, ancdata, flags, _ = conn.recvmsg(protocol.MAX_MESSAGE + 1, _ANCILLARY,
                                                   socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        fds, sender = _ancillary(ancdata)
        client = self.clients[conn]
        try:
            if not data and not fds and _hung_up(conn):
                self._drop(conn)
                return
            peer = Peer(client.uid, client.root, None, "")
            try:
                if not data:
                    raise protocol.ProtocolError("empty message")
                if flags & socket.MSG_TRUNC or len(data) > protocol.MAX_MESSAGE:
                    raise protocol.ProtocolError(f"message larger than {protocol.MAX_MESSAGE} bytes")
                request = protocol.decode(data)
            except protocol.ProtocolError as e:
                self.log.warning(f"refused malformed request from {peer}: {e}")
                answer = protocol.reply(False, error=f"malformed request: {e}")
            else:
                answer = self.handler.handle(request, self._identify(client, fds, sender, flags))
        finally:
            self._release(client, fds)
        self._send(conn, answer)
        self._drop(conn)

    def _identify(self, client, fds, sender, flags):
        """The Peer: SO_PEERCRED's uid, and the sender pinned by its pidfd."""
        if flags & socket.MSG_CTRUNC or len(fds) != 1 or sender is None:
            return Peer(client.uid, client.root, None, "send exactly one pidfd of the sending process")
        try:
            return Peer(client.uid, client.root, process.pin(sender, fds[0]), "")
        except process.ProcessError as e:
            return Peer(client.uid, client.root, None, str(e))

    def _send(self, conn, answer):
        try:
            conn.send(protocol.encode(answer))
        except (OSError, protocol.ProtocolError):
            pass

    def _release(self, client, fds):
        """Close received descriptors: root's here, anyone else's in a closer thread."""
        if client.uid == 0:
            for fd in fds:
                os.close(fd)
        elif fds:
            self.closer.put(client.uid, fds=fds)

    def _drop(self, conn):
        client = self.clients.pop(conn, None)
        if client is not None:
            self.sel.unregister(conn)
            if client.root:
                self.root_sel.unregister(conn)
        if client is None or client.uid == 0:
            _close(conn)
        else:
            self.closer.put(client.uid, conn)

    def _expire(self):
        now = time.monotonic()
        for conn, client in list(self.clients.items()):
            if client.deadline <= now:
                self._send(conn, protocol.reply(False, error="request not received in time"))
                self._drop(conn)

    def _link_events(self):
        events = self.links.events()
        for event, name, index in events:
            if event == "RTM_NEWLINK":
                count = self.handler.attachments.relink(name, index)
                if count:
                    self.log.notice(f"device {name} is back as ifindex {index}: "
                                    f"re-attached {count} cgroup(s)")
        if events:
            # A link enslaved to a VRF or released, a VRF gone: egress follows.
            count = self.handler.attachments.refresh_egress()
            if count:
                self.log.notice(f"link changes ({', '.join(sorted({n for _, n, _ in events}))}): "
                                f"egress devices of {count} cgroup(s) updated")
