"""From tests/test_egress_attacks.py (LISTEN).
"""

import errno, json, socket, sys, time
port, window = int(sys.argv[1]), float(sys.argv[2])
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)        # IPPROTO_MPTCP
    proto = "mptcp"
except OSError as e:                # refused: fall back to TCP, as Go and mptcpize do
    s, proto = socket.socket(socket.AF_INET, socket.SOCK_STREAM), "tcp:" + errno.errorcode[e.errno]
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(0)         # a full queue at once: the kernel answers the next SYN with a cookie
s.settimeout(0.2)
print("ready", flush=True)
got, end = [], time.monotonic() + window
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.settimeout(1)
    try:
        got.append(c.recv(100).decode())
    except OSError as e:
        got.append("recv:" + str(e))
print(json.dumps({"proto": proto, "got": got}), flush=True)
