"""From tests/test_egress_attacks.py (NAMESPACES).
"""

import ctypes, errno, json, os, socket, struct, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
other = int(sys.argv[1])
out = {}
def attempt(name, f):
    try:
        out[name] = f() or "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
# The host's links and BPF, as the user.
ip = subprocess.run(["ip", "link", "add", "pvtx0", "type", "veth", "peer", "name", "pvtx1"],
                    capture_output=True, text=True)
out["ip_link_add"] = "EPERM" if "Operation not permitted" in ip.stderr else f"{ip.returncode} {ip.stderr}"
insns = struct.pack("=BBhi", 0xb7, 0, 0, 0) + struct.pack("=BBhi", 0x95, 0, 0, 0)    # r0 = 0; exit
buf = ctypes.create_string_buffer(insns); lic = ctypes.create_string_buffer(b"GPL")
attr = struct.pack("=IIQQ", 1, 2, ctypes.addressof(buf), ctypes.addressof(lic)).ljust(128, b"\0")
fd = libc.syscall(321, 5, ctypes.create_string_buffer(attr), 128)     # BPF_PROG_LOAD socket filter
out["bpf_prog_load"] = "ok" if fd >= 0 else errno.errorcode[ctypes.get_errno()]
# A user namespace of one's own: capabilities there, none in the host's netns.
r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
pid = os.fork()
if pid == 0:
    res = {}
    if libc.unshare(CLONE_NEWUSER) != 0:
        os._exit(3)
    for name, f in (("userns_bindtoifindex", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                      .setsockopt(socket.SOL_SOCKET, 62, other)),
                    ("userns_raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                    ("userns_packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))):
        try:
            f(); res[name] = "ok"
        except OSError as e:
            res[name] = errno.errorcode[e.errno]
    # ... and a netns of its own: a socket made there, handed back.
    if libc.unshare(CLONE_NEWNET) != 0:
        os._exit(4)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    socket.send_fds(w, [json.dumps(res).encode()], [s.fileno()])
    os._exit(0)
msg, fds, _, _ = socket.recv_fds(r, 4096, 1)
os.waitpid(pid, 0)
out.update(json.loads(msg))
passed = socket.socket(fileno=fds[0])
attempt("netns_socket_send", lambda: passed.sendto(b"x", ("10.213.0.2", 7001)) and None)
print(json.dumps(out))
