#!/usr/bin/python3
"""Ways an unprivileged sender picks another output link than its socket's
bound device, and a sink that reports what arrived; staged by
tests/test_egress.py (a `plain` veth target on the host) and
tests/vm/test_vm_egress.py (a real VRF). Not a test module; both parts run
from this file's text (python3 -c), as other users and in namespaces.

    egress.py attack JSON     (the placed session: prints {attack: outcome})
    egress.py sink TOKEN PORT (a peer, root: prints one line per datagram,
                               ICMP echo or ICMPv6 echo carrying TOKEN)

Joins and an MPTCP socket send nothing themselves: their outcome is what
counts (EPERM where the guards hold).

JSON: token; ip4 (a peer address the session's own link reaches too), port,
other (ifindex of a link the session must not leave by), ll6 (the peer's
IPv6 link-local address on that link), bcast4 (optional), raw (the caller
holds CAP_NET_RAW, as a file-capability binary such as ping would: the
kinds of attack that need it are tried too).

Every attack sends "TOKEN:NAME"; outcome is "sent" or the errno's name. A
sent datagram is not proof of a leak: the sink on the other link is.
"""

import errno
import json
import re
import select
import socket
import struct
import sys

IP_PKTINFO = 8              # linux/in.h (Python's socket module lacks it)
IP_UNICAST_IF = 50          # linux/in.h
IPV6_UNICAST_IF = 76        # linux/in6.h
SO_BINDTOIFINDEX = 62       # asm-generic/socket.h
ICMP_ECHO, ICMP6_ECHO = 8, 128


def pktinfo(ifindex):
    """An IP_PKTINFO control message naming the output link."""
    return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", ifindex, bytes(4), bytes(4)))]


def echo(kind, payload):
    """An ICMP(v6) echo request (the kernel fills id and checksum for ping sockets)."""
    return struct.pack("!BBHHH", kind, 0, 0, 0, 1) + payload


def attacks(cfg):
    """(name, function) pairs; each function sends its token once."""
    ip4, port, other, ll6 = cfg["ip4"], cfg["port"], cfg["other"], cfg["ll6"]

    def udp4():
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def udp6():
        return socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)

    def legit(s, data):                 # the session's own link: must arrive
        udp4().sendto(data, (ip4, port))

    def ip_pktinfo(s, data):
        udp4().sendmsg([data], pktinfo(other), 0, (ip4, port))

    def ipv6_scope_id(s, data):
        udp6().sendto(data, (ll6, port, 0, other))

    def ping4_pktinfo(s, data):
        p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        p.sendmsg([echo(ICMP_ECHO, data)], pktinfo(other), 0, (ip4, 0))

    def ping6_scope_id(s, data):
        p = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
        p.sendto(echo(ICMP6_ECHO, data), (ll6, 0, 0, other))

    def ip_unicast_if(s, data):
        u = udp4()
        u.setsockopt(socket.IPPROTO_IP, IP_UNICAST_IF, struct.pack("!I", other))
        u.sendto(data, (ip4, port))

    def ipv6_unicast_if(s, data):
        u = udp6()
        u.setsockopt(socket.IPPROTO_IPV6, IPV6_UNICAST_IF, struct.pack("=I", other))
        u.sendto(data, (ll6, port))

    def so_bindtoifindex(s, data):
        u = udp4()
        u.setsockopt(socket.SOL_SOCKET, SO_BINDTOIFINDEX, other)
        u.sendto(data, (ip4, port))

    def multicast6_scope_id(s, data):
        udp6().sendto(data, ("ff02::1", port, 0, other))

    def broadcast4_pktinfo(s, data):
        u = udp4()
        u.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        u.sendmsg([data], pktinfo(other), 0, (cfg.get("bcast4") or "255.255.255.255", port))

    def join4_other(s, data):           # the kernel's IGMP report would leave by `other`
        u = udp4()
        mreqn = socket.inet_aton("239.213.0.1") + bytes(4) + struct.pack("=i", other)
        u.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)

    def join6_other(s, data):           # MLD
        u = udp6()
        mreq = socket.inet_pton(socket.AF_INET6, "ff05::213:1") + struct.pack("=I", other)
        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)

    def join6_main_table(s, data):      # ifindex 0: the kernel picks a link by the main table
        u = udp6()
        mreq = socket.inet_pton(socket.AF_INET6, "ff05::213:2") + struct.pack("=I", 0)
        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)

    def mptcp_socket(s, data):          # its kernel-made subflows would not be bound
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close()

    found = [legit, ip_pktinfo, ipv6_scope_id, ping4_pktinfo, ping6_scope_id, ip_unicast_if,
             ipv6_unicast_if, so_bindtoifindex, multicast6_scope_id, broadcast4_pktinfo,
             join4_other, join6_other, join6_main_table, mptcp_socket]

    if cfg.get("raw"):
        def rebind_with_cap_net_raw(s, data):
            u = udp4()
            u.setsockopt(socket.SOL_SOCKET, SO_BINDTOIFINDEX, other)
            u.sendto(data, (ip4, port))

        def raw_icmp_pktinfo(s, data):
            r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            r.sendmsg([echo(ICMP_ECHO, data)], pktinfo(other), 0, (ip4, 0))

        found += [rebind_with_cap_net_raw, raw_icmp_pktinfo]
    return [(f.__name__, f) for f in found]


def attack(cfg):
    out = {}
    for name, send in attacks(cfg):
        try:
            send(None, f"{cfg['token']}:{name}".encode())
            out[name] = "sent"
        except OSError as e:
            out[name] = errno.errorcode.get(e.errno, str(e.errno))
    print(json.dumps(out), flush=True)


def sink(token, port):
    """Print 'NAME' for every packet carrying TOKEN:NAME, until killed."""
    socks = []
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            mreq = socket.inet_pton(socket.AF_INET6, "ff02::1") + struct.pack("=I", 0)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        else:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind((addr, port))
        socks.append(s)
    socks.append(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    socks.append(socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
    pattern = re.compile(re.escape(token.encode()) + rb":([a-z0-9_]+)")
    print("ready", flush=True)
    while True:
        for s in select.select(socks, [], [])[0]:
            data = s.recv(65536)
            for match in pattern.finditer(data):
                print(match.group(1).decode(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "attack":
        attack(json.loads(sys.argv[2]))
    else:
        sink(sys.argv[2], int(sys.argv[3]))
