"""The helper's wire protocol: one JSON object per SOCK_SEQPACKET message.

Request  {"v": 1, "op": "ping" | "attach" | "attach-manager" | "place", ...}
Reply    {"v": 1, "ok": true, ...} or {"v": 1, "ok": false, "error": "why"}

attach  (root only) {"cgroup": CG, "vrf": NAME, "rule": RULE}: make sure
        CG (a .../vrf/NAME cgroup the caller created, as a hierarchy path
        like /proc/PID/cgroup shows: each side has its own mount point)
        carries the program for RULE bound to NAME.
attach-manager (root only) {"cgroup": ".../user-UID.slice/user@UID.service",
        "uid": UID, "vrf": NAME, "rule": RULE}: the same for what the user's
        systemd manager starts (it runs outside the session's cgroup).
place   (any user) {"vrf": NAME, "pid": PID?}: move the caller (or, for
        root, PID) into its VRF cgroup for NAME, if vrf.conf permits it.

RULE is {"deny": [item, ...], "mark": N|null, "priority": N|null,
"plain": bool}, with deny items as written in vrf.conf.
Stdlib only and light: the login path uses it (see jsonlite for why not json).
"""

from pam_vrf import jsonlite

VERSION = 1
MAX_MESSAGE = 4096          # bytes; anything larger is refused unread
TIMEOUT = 1.0               # seconds a client waits for the helper, in all
DEFAULT_SOCKET = "/run/pam-vrf/helper.sock"


class ProtocolError(Exception):
    pass


def encode(obj):
    data = jsonlite.dumps(obj).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode(data):
    """Parse one message; ProtocolError for anything but a v1 JSON object."""
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


def rule_fields(rule):
    """The part of a policy.Rule the helper needs to build the program."""
    return {"deny": [d.text for d in rule.deny], "mark": rule.mark,
            "priority": rule.priority, "plain": rule.plain}


def reply(ok=True, **fields):
    return {"v": VERSION, "ok": ok, **fields}
