"""From tests/test_egress_attacks.py (JOIN).
"""

import errno, json, socket, struct, sys, time
va, vb = int(sys.argv[1]), int(sys.argv[2])
groups = json.loads(sys.argv[3]); source = sys.argv[4]
MCAST_JOIN_SOURCE_GROUP = 46
def v6(a):      # struct sockaddr_in6 in a sockaddr_storage
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 0, 0)
            + socket.inet_pton(socket.AF_INET6, a) + struct.pack("=I", 0)).ljust(128, b"\0")
out, keep = {}, []
def join(name, level, opt, value):
    s = socket.socket(socket.AF_INET6 if level == socket.IPPROTO_IPV6 else socket.AF_INET, socket.SOCK_DGRAM)
    keep.append(s)
    try:
        s.setsockopt(level, opt, value); out[name] = "joined"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
for name, ifindex in (("v4_va", va), ("v4_vb", vb)):
    join(name, socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,        # struct ip_mreqn
         socket.inet_aton(groups[name]) + bytes(4) + struct.pack("=i", ifindex))
for name, ifindex in (("v6_va", va), ("v6_vb", vb), ("v6_any", 0)):
    join(name, socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
         socket.inet_pton(socket.AF_INET6, groups[name]) + struct.pack("=I", ifindex))
join("ssm_va", socket.IPPROTO_IPV6, MCAST_JOIN_SOURCE_GROUP,      # struct group_source_req
     struct.pack("=I", va) + bytes(4) + v6(groups["ssm_va"]) + v6(source))
print(json.dumps(out), flush=True)
time.sleep(2)           # the unsolicited reports go out; leaving sends more
