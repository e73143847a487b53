"""From tests/test_kernel_placement.py (SERVER).
"""

import socket, sys, threading
name = sys.argv[1].encode()
def tcp(s):
    while True:
        c, _ = s.accept(); c.sendall(name); c.close()
def udp(s):
    while True:
        _, peer = s.recvfrom(100); s.sendto(name, peer)
for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for kind, serve in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
        s = socket.socket(family, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, 7000))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
