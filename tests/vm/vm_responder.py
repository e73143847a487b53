#!/usr/bin/python3
"""A lab peer for tests/vm: run inside a peer namespace (mgmt-peer or
prod-peer), answer every TCP connection and every UDP datagram on port 7000
(IPv4 and IPv6) with NAME. Prints "ready" once it listens.

    ip netns exec mgmt-peer python3 vm_responder.py mgmt-peer

Both peers own 10.99.0.2 / fd00:99::2, so the answer says which VRF a
client's socket went through. Not a test module; stdlib only.
"""

import selectors
import socket
import sys

PORT = 7000


def main():
    name = sys.argv[1].encode()
    sel = selectors.DefaultSelector()
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for s in (tcp, udp):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)      # v4-mapped too
        s.bind(("::", PORT))
        sel.register(s, selectors.EVENT_READ)
    tcp.listen(64)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                if s is tcp:
                    conn, _ = tcp.accept()
                    conn.sendall(name)
                    conn.close()
                else:
                    _, peer = udp.recvfrom(100)
                    udp.sendto(name, peer)
            except OSError:
                pass


if __name__ == "__main__":
    main()
