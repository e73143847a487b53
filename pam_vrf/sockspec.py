"""The deny= items of vrf.conf: which socket() calls a VRF program refuses.

An item is a family, a type or FAMILY:TYPE[:PROTO]; names or numbers.
The sock-create program only ever sees AF_INET and AF_INET6 sockets.
"""

from collections import namedtuple

# Linux's values (linux/socket.h, linux/net.h); written out so that the login
# path need not import the socket module just for constants.
FAMILIES = {"inet": 2, "inet6": 10}
TYPES = {"stream": 1, "dgram": 2, "raw": 3, "seqpacket": 5}
PROTOCOLS = {"ip": 0, "icmp": 1, "tcp": 6, "udp": 17, "ipv6": 41,
             "icmpv6": 58, "sctp": 132, "udplite": 136, "mptcp": 262}
ANY = "*"
# More items than this in one rule is refused by `pam-vrf check` and the
# helper alike (each item is a few instructions of the program).
MAX_DENY = 64


# family, type, protocol: int or None (any); text: as written, for messages.
DenyItem = namedtuple("DenyItem", ["family", "type", "protocol", "text"])


def parse_deny(text):
    """Parse 'inet6,raw,inet:dgram:udp' into DenyItems; ValueError on nonsense."""
    items = []
    for word in text.split(","):
        if not word:
            raise ValueError("empty item")
        items.append(parse_item(word))
    if len(items) > MAX_DENY:
        raise ValueError(f"{len(items)} items, at most {MAX_DENY} are allowed")
    return tuple(items)


def parse_item(word):
    if word in FAMILIES:
        return DenyItem(FAMILIES[word], None, None, word)
    if word in TYPES:
        return DenyItem(None, TYPES[word], None, word)
    parts = word.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"'{word}': expected inet, inet6, raw, dgram, stream or FAMILY:TYPE[:PROTO]")
    family = _field(parts[0], FAMILIES, 255, "family", word)
    kind = _field(parts[1], TYPES, 15, "type", word)
    protocol = _field(parts[2], PROTOCOLS, 65535, "protocol", word) if len(parts) == 3 else None
    if family is not None and family not in FAMILIES.values():
        raise ValueError(f"'{word}': only inet and inet6 sockets pass through the VRF program")
    if family is None and kind is None and protocol is None:
        raise ValueError(f"'{word}' would refuse every socket: deny inet,inet6 if that is meant")
    return DenyItem(family, kind, protocol, word)


def _field(value, names, largest, what, word):
    if value == ANY:
        return None
    if value in names:
        return names[value]
    if value.isdigit() and value.isascii():
        digits = value.lstrip("0") or "0"   # int() refuses more than 4300 digits
        if len(digits) <= len(str(largest)) and int(digits) <= largest:
            return int(digits)
        raise ValueError(f"'{word}': {what} {digits} is out of range (0-{largest})")
    raise ValueError(f"'{word}': unknown {what} '{value}' (known: {', '.join(names)} or a number)")


def denied_by(items, family, kind, protocol):
    """The first of `items` (DenyItems) that refuses a socket of this family,
    type (without SOCK_CLOEXEC/SOCK_NONBLOCK) and protocol, or None: what the
    program sockprog.build() makes does (None in an item matches anything)."""
    for item in items:
        if all(want is None or want == got
               for want, got in zip(item[:3], (family, kind, protocol))):
            return item
    return None


def item_text(family, kind, protocol):
    """vrf.conf spelling of a (family, type, protocol) triple, None meaning any."""
    names = [{v: k for k, v in table.items()} for table in (FAMILIES, TYPES, PROTOCOLS)]
    if kind is None and protocol is None and family is not None:
        return names[0].get(family, str(family))
    if family is None and protocol is None and kind is not None:
        return names[1].get(kind, str(kind))
    words = [ANY if v is None else names[i].get(v, str(v)) for i, v in enumerate((family, kind, protocol))]
    return ":".join(words[:2] if protocol is None else words)
