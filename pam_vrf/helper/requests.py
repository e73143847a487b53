"""What a request may do, decided from its peer (see protocol for the ops).

    ping   anyone
    open   root.sock only (root): decide for {user, service} and place the caller
    place  anyone: move the caller into a VRF (`pam-vrf exec`); the placement
           routine checks what vrf.conf grants

The process acted on is always the sender, pinned by its pidfd. Every
refusal is logged with the peer and the reason.
"""

from typing import NamedTuple

from pam_vrf import netdev, policy, process, protocol
from pam_vrf.helper.placement import PlacementError
from pam_vrf.log import escape

MAX_NAME = policy.MAX_NAME  # user names, services, ttys, hosts


class Refused(Exception):
    pass


class Peer(NamedTuple):
    uid: int                # SO_PEERCRED: effective uid at connect()
    root_socket: bool       # came in on root.sock
    proc: process.Process   # the sender, pinned; None when it could not be
    unpinned: str           # why not

    def __str__(self):
        pid = self.proc.pid if self.proc else "?"
        return f"pid {pid} uid {self.uid}"


class Handler:
    def __init__(self, attachments, placement, log):
        self.attachments, self.placement, self.log = attachments, placement, log

    def handle(self, request, peer):
        op = request.get("op")
        self.log.debug(f"request {escape(op)!r} from {peer}")
        try:
            if op == "ping":
                return protocol.reply(version=protocol.VERSION)
            if op == "open":
                return self.open(request, peer)
            if op == "place":
                return self.place(request, peer)
            raise Refused(f"unknown op {op!r}")
        except Refused as e:
            self.log.warning(f"refused {op} from {peer}: {e}")
            return protocol.reply(False, error=str(e))
        except Exception as e:      # a bug answers with an error; the helper keeps serving
            self.log.err(f"internal error handling {op} from {peer}: {type(e).__name__}: {e}")
            return protocol.reply(False, error=f"internal error: {type(e).__name__}")

    def open(self, request, peer):
        if not peer.root_socket or peer.uid != 0:
            raise Refused("open is for the PAM entries, on root.sock, as root")
        user = _text(request, "user")
        service = _text(request, "service", optional=True)
        for key in ("tty", "rhost", "ruser"):      # earlier entries sent them: checked, not used
            _text(request, key, optional=True)
        return self.placement.open_session(_pinned(peer), user, service or None)

    def place(self, request, peer):
        vrf = request.get("vrf")
        vrf = policy.DEFAULT_VRF if vrf == policy.DEFAULT_VRF else _vrf_name(vrf)
        plain = request.get("plain", False)
        if not isinstance(plain, bool) or (plain and peer.uid != 0):
            raise Refused("plain is root's (true or false)")
        proc = _pinned(peer)
        try:
            where = self.placement.exec_place(proc, peer.uid, vrf, plain)
        except PlacementError as e:
            raise Refused(str(e)) from None
        self.log.info(f"placed pid {proc.pid} in VRF {vrf} ({where}) for {peer} (pam-vrf exec)")
        return protocol.reply(cgroup=where)


def _pinned(peer):
    if peer.proc is None:
        raise Refused(f"cannot tell which process asks: {peer.unpinned}")
    return peer.proc


def _text(request, key, optional=False):
    value = request.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or "\0" in value:
        raise Refused(f"{key} must be a non-empty string of at most {MAX_NAME} characters")
    return value


def _vrf_name(name):
    if not isinstance(name, str):
        raise Refused("vrf must be a string")
    problem = netdev.check_ifname(name)
    if problem:
        raise Refused(f"bad VRF name {escape(name)!r}: {problem}")
    return name
