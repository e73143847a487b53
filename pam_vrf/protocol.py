"""The helper's wire protocol: one JSON object per SOCK_SEQPACKET message,
one request and one reply per connection.

The helper listens on two sockets in one directory (default /run/pam-vrf):

  root.sock    mode 0600: only root can connect (the PAM entries run as
               root, or euid 0 under su/sudo). Served before anything else,
               so other users' traffic can never delay a login.
  helper.sock  mode 0666: everyone (`pam-vrf exec`, status checks).

Requests ({"v": 2, "op": ...}):

  open   root.sock only. {"user": NAME, "service": PAM_SERVICE?} ("tty",
         "rhost", "ruser": accepted, not used). The helper decides from vrf.conf and
         places the CALLER: the process that sends the request, named by
         the kernel (SCM_CREDENTIALS) and pinned by the pidfd of itself it
         sends along (SCM_RIGHTS; see pam_vrf.process): the PAM caller.
         Reply: {"ok": true, "verdict": V, "vrf": NAME?, "rule": "FILE:LINE"?,
                 "cgroup": PATH?, "error": WHY?}
           placed    moved into vrf (a VRF name, or "default")
           kept      a non-root invoker's session for their own account
                     (su to oneself) that is already confined: left where it is
           alone     no rule, or target '-'
           unplaced  placement failed under a non-strict rule (error says why)
           refused   the session must fail: a strict rule could not be
                     honoured (error says why)
  place  either socket. {"vrf": NAME}: move the caller into NAME
         (`pam-vrf exec`): root may enter any VRF, others what their rule
         grants with exec=.  Reply {"ok": true, "cgroup": PATH}.
  ping   either socket. Reply {"ok": true, "version": 2}.

Any other outcome is {"ok": false, "error": WHY}: for `open`, the PAM entries
then behave as if the helper were not running (see pam_vrf.offline).

Stdlib only and light: the login path uses it (see jsonlite for why not json).
"""

import os

from pam_vrf import jsonlite

VERSION = 2
MAX_MESSAGE = 4096          # bytes; anything larger is refused unread
TIMEOUT = 1.0               # seconds: status/exec requests
# A login waits this long for a helper that is running but busy (or stopped)
# before treating it as absent: load alone must never leave a session unplaced.
LOGIN_TIMEOUT = 30.0
RUN_DIR = "/run/pam-vrf"
DEFAULT_SOCKET = RUN_DIR + "/helper.sock"
ROOT_SOCKET_NAME = "root.sock"


def root_socket(socket_path=DEFAULT_SOCKET):
    """The root-only socket that lives beside `socket_path`."""
    return os.path.join(os.path.dirname(socket_path) or ".", ROOT_SOCKET_NAME)


VERDICTS = ("placed", "kept", "alone", "unplaced", "refused")
# What a PAM entry does with a verdict: the session proceeds, or it fails.
PROCEED, REFUSE = True, False


def proceeds(kind):
    """PROCEED or REFUSE for a verdict: only 'refused' fails the session."""
    return REFUSE if kind == "refused" else PROCEED


class ProtocolError(Exception):
    pass


def encode(obj):
    data = jsonlite.dumps(obj).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode(data):
    """Parse one message; ProtocolError for anything but a v2 JSON object."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message larger than {MAX_MESSAGE} bytes")
    try:
        obj = jsonlite.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    if type(obj.get("v")) is not int or obj["v"] != VERSION:
        raise ProtocolError(f"unsupported protocol version {obj.get('v')!r} (this side speaks {VERSION})")
    return obj


def reply(ok=True, **fields):
    return {"v": VERSION, "ok": ok, **fields}
