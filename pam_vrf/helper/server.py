"""The helper's socket loop: one request per connection, bounded in size,
time and number of clients, so a hostile client cannot stall or crash it.

Single-threaded (selectors): requests are short kernel calls, and one
thread means no locking around the attachment table.
"""

import errno
import os
import select
import selectors
import socket
import struct
import time

from pam_vrf import protocol
from pam_vrf.helper.requests import Peer

SO_PEERPIDFD = 77           # Linux >= 6.5
MAX_CLIENTS = 128
MAX_PER_UID = 16            # one non-root user cannot take every slot
CLIENT_DEADLINE = protocol.TIMEOUT
PRUNE_EVERY = 10.0          # seconds between looks for cgroups that logind removed


def peer_of(conn):
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                       struct.calcsize("3i")))
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = -1
    return Peer(pid, uid, gid, pidfd)


def peer_uid(conn):
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                               struct.calcsize("3i")))[1]


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


class Server:
    def __init__(self, listener, handler, links, log):
        self.listener, self.handler, self.links, self.log = listener, handler, links, log
        self.clients = {}          # socket -> deadline
        self.uids = {}             # socket -> peer uid
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self._busy = (0.0, 0)      # (time of the last busy warning, refusals not yet logged)

    def serve_forever(self):
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        if self.links is not None:
            self.sel.register(self.links.fileno(), selectors.EVENT_READ, "links")
        attachments = self.handler.attachments
        flush_at = None
        prune_at = time.monotonic() + PRUNE_EVERY
        while not self.stopping:
            deadlines = list(self.clients.values())
            if attachments.entries:
                deadlines.append(prune_at)
            if attachments.dirty:
                flush_at = flush_at or time.monotonic() + attachments.FLUSH_DELAY
                deadlines.append(flush_at)
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, _ in self.sel.select(timeout):
                try:
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "links":
                        self._link_events()
                    else:
                        self._serve(key.fileobj)
                except Exception as e:          # never let one event take the helper down
                    self.log.err(f"internal error ({key.data}): {type(e).__name__}: {e}")
                    if key.data not in ("accept", "links"):
                        self._drop(key.fileobj)
            self._expire()
            if time.monotonic() >= prune_at:
                attachments.flush()         # ended sessions: forget them, unload unused programs
                prune_at = time.monotonic() + PRUNE_EVERY
            if flush_at is not None and time.monotonic() >= flush_at:
                attachments.flush()
                flush_at = None

    def _accept(self):
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.log.err("out of file descriptors; dropping a connection")
                time.sleep(0.01)
            return
        uid = peer_uid(conn)
        if uid != 0:        # root (the PAM hook) is never turned away
            mine = sum(1 for u in self.uids.values() if u == uid)
            if len(self.clients) >= MAX_CLIENTS or mine >= MAX_PER_UID:
                self._busy_warning(uid)
                self._send(conn, protocol.reply(False, error="helper busy"))
                _close(conn)
                return
        conn.setblocking(False)
        self.uids[conn] = uid
        self.clients[conn] = time.monotonic() + CLIENT_DEADLINE
        self.sel.register(conn, selectors.EVENT_READ, "client")

    def _busy_warning(self, uid):
        """One line a second at most: a flood must not flood syslog too."""
        last, count = self._busy
        now = time.monotonic()
        if now - last < 1.0:
            self._busy = (last, count + 1)
            return
        more = f" (and {count} more refusals in the last second)" if count else ""
        self.log.warning(f"more than {MAX_CLIENTS} clients at once, or {MAX_PER_UID} of uid {uid}: "
                         f"refusing a connection{more}")
        self._busy = (now, 0)

    def _serve(self, conn):
        try:
            data, _, flags, _ = conn.recvmsg(protocol.MAX_MESSAGE + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data and _hung_up(conn):
            self._drop(conn)
            return
        peer = peer_of(conn)
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
            answer = self.handler.handle(request, peer)
        finally:
            if peer.pidfd >= 0:
                os.close(peer.pidfd)
        self._send(conn, answer)
        self._drop(conn)

    def _send(self, conn, answer):
        try:
            conn.send(protocol.encode(answer))
        except (OSError, protocol.ProtocolError):
            pass

    def _drop(self, conn):
        if conn in self.clients:
            del self.clients[conn]
            self.uids.pop(conn, None)
            self.sel.unregister(conn)
        _close(conn)

    def _expire(self):
        now = time.monotonic()
        for conn, deadline in list(self.clients.items()):
            if deadline <= now:
                self._send(conn, protocol.reply(False, error="request not received in time"))
                self._drop(conn)

    def _link_events(self):
        for event, name, index in self.links.events():
            if event == "RTM_NEWLINK":
                count = self.handler.attachments.relink(name, index)
                if count:
                    self.log.notice(f"device {name} is back as ifindex {index}: "
                                    f"re-attached {count} cgroup(s)")
