"""From tests/test_delegation.py (SU): su, in short: real ids the invoker's and
effective ids 0 while PAM runs (argv: invoker uid gid, PAM service, target
user, target uid gid); then the target account's ids, as su's child. Reports
where it is and the bound device of a new socket after the session opened
and for every stdin line.
"""

import ctypes, json, os, socket, sys
uid, gid, service, user, tuid, tgid = sys.argv[1:7]
os.setgroups([int(gid)]); os.setresgid(int(gid), 0, 0); os.setresuid(int(uid), 0, 0)
if "--cgroupns" in sys.argv:
    assert ctypes.CDLL(None, use_errno=True).unshare(0x02000000) == 0     # CLONE_NEWCGROUP
pam = ctypes.CDLL("libpam.so.0")
CONV = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
class Conv(ctypes.Structure):
    _fields_ = [("conv", CONV), ("appdata", ctypes.c_void_p)]
conv = Conv(CONV(lambda *args: 19), None)
handle = ctypes.c_void_p()
assert pam.pam_start(service.encode(), user.encode(), ctypes.byref(conv), ctypes.byref(handle)) == 0
rc = pam.pam_open_session(handle, 0)
os.setresuid(0, 0, 0); os.setgroups([int(tgid)])
os.setresgid(int(tgid), int(tgid), int(tgid)); os.setresuid(int(tuid), int(tuid), int(tuid))
def report():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode()
    s.close()
    print(json.dumps({"rc": rc, "pid": os.getpid(), "dev": dev}), flush=True)
report()
for line in sys.stdin:
    report()
