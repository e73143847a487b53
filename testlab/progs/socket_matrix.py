"""From tests/test_kernel_placement.py (MATRIX): socket() over a matrix; prints
verdict (ok / errno name) with mark and priority.
"""

import errno, json, socket
out = {}
for fam in ("AF_INET", "AF_INET6"):
    for kind in ("SOCK_STREAM", "SOCK_DGRAM", "SOCK_RAW"):
        for proto in (0, socket.IPPROTO_UDP, socket.IPPROTO_ICMP):
            if kind == "SOCK_RAW" and proto == 0:
                continue
            key = f"{fam}/{kind}/{proto}"
            try:
                s = socket.socket(getattr(socket, fam), getattr(socket, kind), proto)
            except OSError as e:
                out[key] = errno.errorcode[e.errno]
                continue
            out[key] = ["ok", s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK),
                        s.getsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY)]
            s.close()
print(json.dumps(out))
