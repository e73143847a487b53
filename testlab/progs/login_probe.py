"""From tests/test_login.py (PROBE).
"""

import json, socket, sys
def probe():
    out = {"cgroup": open("/proc/self/cgroup").read().strip().split("::", 1)[-1]}
    for name, fam, kind in (("tcp4", socket.AF_INET, socket.SOCK_STREAM),
                            ("udp4", socket.AF_INET, socket.SOCK_DGRAM),
                            ("tcp6", socket.AF_INET6, socket.SOCK_STREAM),
                            ("udp6", socket.AF_INET6, socket.SOCK_DGRAM)):
        try:
            s = socket.socket(fam, kind)
            out[name] = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode()
            s.close()
        except OSError as e:
            out[name] = "errno:%d" % e.errno
    print(json.dumps(out), flush=True)
probe()
# With --wait: probe again for every line read (an existing session, later).
if "--wait" in sys.argv:
    for line in sys.stdin:
        probe()
