"""The helper's socket loop: one request per connection, bounded in size,
time and number of clients, so a hostile client cannot stall or crash it.

Two listening sockets: root.sock (mode 0600, the PAM entries) and the public
helper.sock. Single-threaded (selectors; one thread means no locking around
the attachment table), with priority: whatever is ready on root.sock is
served before each single piece of work for the public socket, so other
users' traffic delays a login by one short request at most.

Each request carries the sender's pidfd (SCM_RIGHTS) and the kernel adds
the sender's pid (SCM_CREDENTIALS): see pam_vrf.process.

Descriptors a non-root client passes are its weapon against the loop:
releasing one can block for ever (a TCP socket with SO_LINGER and unsent
data, a file on the user's FUSE mount: its flush waits for the user's
daemon), so can closing a connection whose queue still holds such
messages, and so can recvmsg when the table is full (the kernel then drops
what does not fit, in our thread). So:

  - the main loop never releases anything a non-root client sent unless it
    is provably inert (a connection shut down with an empty queue): the
    rest goes to a closer thread of that uid (Closer), which aborts sockets
    (SO_LINGER {1, 0}) and interrupts a lingering close that still blocks;
  - every descriptor a non-root uid makes us hold (connections, received
    descriptors, both until released) counts against a budget per uid and
    one for all non-root users together; a message is read only when a full
    SCM_MAX_FD more fit in both, a connection accepted only when one more
    fits, so the table never fills: root.sock always has room (the rest of
    the soft limit, which main raises to the hard limit).
"""

import array
import collections
import errno
import os
import resource
import select
import selectors
import signal
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
STOP_GRACE = 2.0            # after SIGTERM: how long accepted connections may take to send

_UCRED = struct.Struct("3i")
SCM_MAX_FD = 253            # the most descriptors one message can carry (linux/scm.h)
_ANCILLARY = socket.CMSG_SPACE(4 * SCM_MAX_FD) + socket.CMSG_SPACE(_UCRED.size)
_CREDS_SPACE = socket.CMSG_SPACE(_UCRED.size)
_NO_LINGER = struct.pack("ii", 1, 0)

# Descriptors: the helper's own (listeners, netlink, logger, one program per
# rule, root's connections and their pidfds) live in FD_RESERVE and whatever
# the non-root budget leaves of the soft limit.
FD_RESERVE = 256
MAX_FDS_PER_UID = 1024      # held for one non-root uid (>= SCM_MAX_FD + MAX_PER_UID)
NUDGE = signal.SIGUSR2      # interrupts a closer thread's lingering close (handler: nothing)
NUDGE_AFTER = 0.5           # seconds a release may take before it is interrupted


def fd_budgets(soft_limit):
    """(per non-root uid, all non-root users together) for RLIMIT_NOFILE `soft_limit`."""
    per_uid_min = SCM_MAX_FD + MAX_PER_UID
    public = max((soft_limit - FD_RESERVE) // 2, 2 * per_uid_min)
    return max(min(MAX_FDS_PER_UID, public // 4), per_uid_min), public


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


def _close_if_inert(conn):
    """Close `conn` here if that cannot block: shut down (the peer can send
    nothing more), then take any queued message that carries no descriptor
    (peeking installs none: the kernel only notes MSG_CTRUNC); the queue then
    holds nothing to release. False: descriptors are queued; a closer thread
    must release it. (Every message carries SCM_CREDENTIALS, so an empty
    message is told from the end of the queue.)"""
    try:
        if not conn.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED):
            return False                # an empty message would look like the end
        conn.shutdown(socket.SHUT_RD)
        for _ in range(32):
            try:
                data, anc, flags, _ = conn.recvmsg(1, _CREDS_SPACE, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except ConnectionResetError:
                continue                # the peer closed before reading our answer: reported once
            if flags & socket.MSG_CTRUNC or _ancillary(anc)[0]:
                for fd in _ancillary(anc)[0]:
                    os.close(fd)        # a peeked copy: the queued message keeps the file
                return False
            if not data and not anc:
                break                   # the end: nothing queued
            conn.recv(1, socket.MSG_DONTWAIT)
        else:
            return False
    except BlockingIOError:
        pass
    except OSError:
        return False
    conn.close()
    return True


def _drain(conn, room):
    """Close a non-root connection whose queue may hold passed descriptors.
    With `room` (a semaphore for descriptor-table space) its messages are
    received, their descriptors aborted and closed one by one: dropped by
    the kernel instead (recv without room for them), a lingering socket's
    last reference would be released inside recv, waiting out the linger."""
    if not room.acquire(timeout=0.1):
        _close(conn)                    # the kernel drops them; a nudge ends a lingering one
        return
    try:
        conn.shutdown(socket.SHUT_RD)
        for _ in range(64):
            try:
                data, anc, _, _ = conn.recvmsg(1, _ANCILLARY, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except ConnectionResetError:
                continue                # reported once (the peer closed first); the queue is still there
            fds, _ = _ancillary(anc)
            for fd in fds:
                try:                    # one failing close (a FUSE flush's EIO) must not keep the rest
                    _unlinger(fd)
                    os.close(fd)
                except OSError:
                    pass
            if not data and not anc:
                break
    except OSError:
        pass
    finally:
        room.release()
    conn.close()


def _unlinger(fd):
    """A socket's last close sends a reset instead of waiting to deliver."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return                          # not a socket
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
    except OSError:
        pass
    finally:
        sock.detach()


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
    """Releases what non-root clients passed or left behind, one thread per
    uid with work (so a release that blocks stalls only that uid's own), and
    counts per uid the descriptors waiting or being released.

    Sockets are aborted before their close (SO_LINGER {1, 0}), those still
    queued on a connection too (received first, see _drain); the owner may
    set a linger again in between (it holds the same socket), so a release
    still running after NUDGE_AFTER is interrupted with NUDGE, which ends a
    lingering close. A FUSE flush waits for the user's daemon whatever we do:
    that holds only the user's thread and budget."""

    def __init__(self, drains=1):
        """`drains`: how many connections may be drained at once (each may
        install SCM_MAX_FD descriptors for a moment)."""
        self._room = threading.BoundedSemaphore(drains)
        self._lock = threading.Lock()
        self._work = {}             # uid -> deque of (conn, fds)
        self._held = {}             # uid -> descriptors queued or being released
        self._busy = {}             # uid -> (thread id, since) while releasing
        self.total = 0
        signal.signal(NUDGE, lambda signum, frame: None)
        threading.Thread(target=self._watch, daemon=True, name="pam-vrf-nudger").start()

    def held(self, uid):
        with self._lock:
            return self._held.get(uid, 0)

    def put(self, uid, conn=None, fds=()):
        fds = list(fds)
        count = len(fds) + (conn is not None)
        with self._lock:
            self._held[uid] = self._held.get(uid, 0) + count
            self.total += count
            work = self._work.get(uid)
            if work is None:
                work = self._work[uid] = collections.deque()
                threading.Thread(target=self._run, args=(uid,), daemon=True, name="pam-vrf-closer").start()
            work.append((conn, fds))

    def _run(self, uid):
        while True:
            with self._lock:
                work = self._work[uid]
                if not work:
                    del self._work[uid]
                    return
                conn, fds = work.popleft()
                self._busy[uid] = (threading.get_ident(), time.monotonic())
            count = len(fds) + (conn is not None)
            try:
                for fd in fds:
                    _unlinger(fd)
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                if conn is not None:
                    _drain(conn, self._room)
            finally:
                with self._lock:
                    del self._busy[uid]
                    self.total -= count
                    left = self._held[uid] - count
                    if left:
                        self._held[uid] = left
                    else:
                        del self._held[uid]

    def _watch(self):
        while True:
            time.sleep(NUDGE_AFTER / 2)
            now = time.monotonic()
            # Under the lock: a thread cannot leave _busy (and exit) meanwhile,
            # so its id is never a stale one.
            with self._lock:
                for uid, (ident, since) in list(self._busy.items()):
                    if now - since >= NUDGE_AFTER:
                        self._busy[uid] = (ident, now)      # again later if still stuck
                        signal.pthread_kill(ident, NUDGE)


class Client:
    __slots__ = ("uid", "root", "deadline", "registered")

    def __init__(self, uid, root, deadline):
        self.uid, self.root, self.deadline = uid, root, deadline
        self.registered = False         # in the selectors (waiting for its request)


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
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.per_uid_fds, self.public_fds = fd_budgets(soft)
        # What the budgets leave, less FD_RESERVE for the helper and root,
        # is room for closers draining a connection's queued descriptors.
        self.closer = Closer(drains=max(1, (soft - self.public_fds - FD_RESERVE) // SCM_MAX_FD))
        self._public_open = 0      # connections of non-root clients we hold
        self._paused = []          # public listeners not accepting until descriptors are released
        # SIGTERM only sets `stopping`: the handler's write here wakes the loop.
        self.wakeup_r, self.wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def stop(self):
        """From a signal handler: end after the piece of work in hand."""
        self.stopping = True

    def serve_forever(self):
        for sock, root in self.listeners.items():
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.sel.register(sock, selectors.EVENT_READ, ("accept", root))
            if root:
                self.root_sel.register(sock, selectors.EVENT_READ, ("accept", root))
        if self.links is not None:
            self.sel.register(self.links.fileno(), selectors.EVENT_READ, ("links", False))
        self.sel.register(self.wakeup_r, selectors.EVENT_READ, ("wakeup", False))
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
            if self._paused:
                deadlines.append(time.monotonic() + 0.1)        # look again for released descriptors
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready = self.sel.select(timeout)
            self._root_first()
            for key, _ in ready:
                if self.stopping:
                    break
                if key.data[1]:
                    continue        # root.sock's: served by _root_first()
                self._event(key)
                self._root_first()
            self._expire()
            self._resume()
            try:
                if time.monotonic() >= prune_at:
                    prune_at = time.monotonic() + PRUNE_EVERY
                    attachments.flush()     # ended sessions: forget them, unload unused programs
                if flush_at is not None and time.monotonic() >= flush_at:
                    # The state file only: sweeping every session's cgroup here
                    # cost ~420 ms at 10 000 sessions, every 0.5 s of a login burst.
                    flush_at = None
                    attachments.save()
            except Exception as e:          # the old helper died here at EMFILE: log, keep serving
                self.log.err(f"internal error (state upkeep): {type(e).__name__}: {e}")
        self._serve_accepted()

    def _serve_accepted(self):
        """After a stop: answer the connections already accepted, for up to
        STOP_GRACE. A login that connected just before would otherwise read
        EOF and take the offline decider (unplaced) during every upgrade;
        connections not yet accepted stay queued in the sockets systemd
        holds, for the next helper."""
        for key in list(self.sel.get_map().values()):
            if key.data[0] != "client":
                self.sel.unregister(key.fileobj)
        end = time.monotonic() + STOP_GRACE
        while self.clients and time.monotonic() < end:
            for key, _ in self.sel.select(max(0.0, end - time.monotonic())):
                self._event(key)
            self._expire()

    def _root_first(self):
        """Serve everything that is ready on root.sock, until nothing is."""
        while not self.stopping:
            ready = self.root_sel.select(0)
            if not ready:
                return
            for key, _ in ready:
                self._event(key)

    def _event(self, key):
        kind, root = key.data
        if key.fileobj not in self.listeners and kind == "client" and key.fileobj not in self.clients:
            return                  # dropped earlier in this round
        if kind == "client":
            self._serve_guarded(key.fileobj)
            return
        try:
            if kind == "accept":
                self._accept(key.fileobj, root)
            elif kind == "links":
                self._link_events()
            elif kind == "wakeup":
                self._drain_wakeup()
        except Exception as e:          # never let one event take the helper down
            self.log.err(f"internal error ({kind}): {type(e).__name__}: {e}")

    def _serve_guarded(self, conn):
        try:
            self._serve(conn)
        except Exception as e:          # never let one request take the helper down
            self.log.err(f"internal error (client): {type(e).__name__}: {e}")
            self._drop(conn)

    def _drain_wakeup(self):
        try:
            while os.read(self.wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    # -- descriptors non-root users make us hold ------------------------------

    def _public_held(self):
        return self.closer.total + self._public_open

    def _uid_held(self, uid):
        return self.closer.held(uid) + sum(1 for c in self.clients.values() if c.uid == uid)

    def _room(self, uid, more):
        """None if `uid` may make us hold `more` descriptors, else why not."""
        if self._uid_held(uid) + more > self.per_uid_fds:
            return f"uid {uid} holds {self._uid_held(uid)} of its {self.per_uid_fds} descriptors"
        if self._public_held() + more > self.public_fds:
            return f"non-root clients hold {self._public_held()} of their {self.public_fds} descriptors"
        return None

    def _pause_if_full(self, listener):
        """Stop accepting on the public socket while one more connection
        would not fit (the backlog waits): root.sock keeps its room."""
        if self._public_held() + 1 > self.public_fds and listener not in self._paused:
            self.sel.unregister(listener)
            self._paused.append(listener)
            self._busy_warning(None, f"non-root clients hold {self._public_held()} of their "
                                     f"{self.public_fds} descriptors: not accepting on the public socket")

    def _resume(self):
        while self._paused and self._public_held() + 1 <= self.public_fds:
            self.sel.register(self._paused.pop(), selectors.EVENT_READ, ("accept", False))

    # -------------------------------------------------------------------------

    def _accept(self, listener, root):
        if not root:
            self._pause_if_full(listener)
            if listener in self._paused:
                return
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.log.err(f"out of file descriptors; dropping a connection on "
                             f"{'root.sock' if root else 'the public socket'}")
            return
        # Connections made before the listener had SO_PASSCRED (socket
        # activation, a restart) do not inherit it on this kernel (6.18
        # copies it at connect()): their messages would carry no credentials.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        uid = peer_uid(conn)
        if root and uid != 0:       # mode 0600 should make this impossible
            self.log.warning(f"refused a connection of uid {uid} on root.sock: root.sock is for root only")
            self._refuse(conn, uid, "root.sock is for root only")
            return
        if uid != 0:                # root (the PAM entries) is never turned away
            why = self._over_limit(uid)
            if why:
                self._busy_warning(uid, why)
                self._refuse(conn, uid, "helper busy")
                return
            self._public_open += 1
        conn.setblocking(False)
        client = self.clients[conn] = Client(uid, root, time.monotonic() + CLIENT_DEADLINE)
        if root:
            # A PAM entry sends its request right after connect(): it is
            # usually here already. Serving it now saves a selector round
            # (a tenth of the helper's time per login); the request still
            # comes from a non-blocking read, so a slow one waits below.
            self._serve_guarded(conn)
            if conn not in self.clients:
                return
        client.registered = True
        self.sel.register(conn, selectors.EVENT_READ, ("client", root))
        if root:
            self.root_sel.register(conn, selectors.EVENT_READ, ("client", root))

    def _refuse(self, conn, uid, error):
        """Answer and let go of a connection never registered."""
        conn.setblocking(False)
        self._send(conn, protocol.reply(False, error=error))
        if not _close_if_inert(conn):
            self.closer.put(uid, conn)

    def _over_limit(self, uid):
        why = self._room(uid, 1)
        if why:
            return why
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
        self.log.warning(f"{why}: refusing a connection of uid {uid}{more}" if uid is not None else why + more)
        self._busy = (now, 0)

    def _serve(self, conn):
        client = self.clients[conn]
        if client.uid != 0:
            # Read only what fits: the kernel drops (and releases, in this
            # thread) the descriptors of a message that finds the table full.
            why = self._room(client.uid, SCM_MAX_FD)
            if why:
                self._busy_warning(client.uid, why)
                self._send(conn, protocol.reply(False, error="helper busy"))
                self._drop(conn)
                return
        try:
            data, ancdata, flags, _ = conn.recvmsg(protocol.MAX_MESSAGE + 1, _ANCILLARY,
                                                   socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        fds, sender = _ancillary(ancdata)
        peer = None
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
                peer = self._identify(client, fds, sender, flags)
                answer = self.handler.handle(request, peer)
        finally:
            # A pinned sender's one descriptor is a pidfd (pidfd_send_signal
            # accepted it): closing one never blocks, so no closer is needed.
            self._release(client, fds, pidfd=peer is not None and peer.proc is not None)
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

    def _release(self, client, fds, pidfd=False):
        """Close received descriptors: root's and a lone pidfd here, anything
        else of anyone else in a closer thread."""
        if client.uid == 0 or pidfd:
            for fd in fds:
                os.close(fd)
        elif fds:
            self.closer.put(client.uid, fds=fds)

    def _drop(self, conn):
        client = self.clients.pop(conn, None)
        if client is not None and client.registered:
            self.sel.unregister(conn)
            if client.root:
                self.root_sel.unregister(conn)
        if client is not None and client.uid != 0:
            self._public_open -= 1
        if client is None or client.uid == 0:
            _close(conn)
        elif not _close_if_inert(conn):
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
