"""From tests/test_login.py (PAM_DRIVER).
"""

import json, socket, sys
library, user, service = sys.argv[1:4]
if library == "pamela":
    import pamela
    pamela.open_session(user, service)
    code = 0
else:
    import pam
    p = pam.pam()
    assert p.authenticate(user, "unused", service=service, call_end=False), p.reason
    code = p.open_session()
s = socket.socket()
dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode()
print(json.dumps({"code": code, "cgroup": open("/proc/self/cgroup").read().strip(), "dev": dev}))
