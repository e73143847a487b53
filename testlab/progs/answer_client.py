"""From tests/test_kernel_placement.py (CLIENT): Prints, for each of tcp/udp
over v4/v6: bound device and the peer's answer.
"""

import json, socket
out = {}
for fam, addr in ((socket.AF_INET, "10.213.0.2"), (socket.AF_INET6, "fd00:213::2")):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        key = ("tcp" if kind == socket.SOCK_STREAM else "udp") + ("4" if fam == socket.AF_INET else "6")
        s = socket.socket(fam, kind); s.settimeout(3)
        dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode()
        try:
            if kind == socket.SOCK_STREAM:
                s.connect((addr, 7000)); answer = s.recv(100).decode()
            else:
                for _ in range(3):
                    s.sendto(b"?", (addr, 7000))
                    try:
                        answer = s.recvfrom(100)[0].decode(); break
                    except socket.timeout:
                        answer = "timeout"
        except OSError as e:
            answer = "error: " + str(e)
        out[key] = [dev, answer]
print(json.dumps(out))
