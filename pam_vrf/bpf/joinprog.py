"""The cgroup setsockopt program: a placed session joins multicast groups
only on its VRF's devices.

A multicast membership makes the kernel itself send IGMP/MLD reports (from
a socket of its own, which the egress program never sees) carrying the
group and source addresses the session chose, by the link the join names,
or by the one the main table picks when it names none. So a join must name
an allowed device by index; anything else fails with EPERM:

    IP_ADD_MEMBERSHIP (ip_mreqn)           imr_ifindex       at 8, 12 bytes
    MCAST_JOIN_GROUP / _SOURCE_GROUP        gr(s)_interface   at 0
      (IPv4 and IPv6 levels)
    IPV6_ADD_MEMBERSHIP (ipv6_mreq)         ipv6mr_interface  at 16, 20 bytes
    IP_ADD_SOURCE_MEMBERSHIP               refused: it names the link only by address
    the 8-byte ip_mreq form                refused: by address, or by the main table

Every other option passes, with ctx->optlen set to 0 ("use the caller's own
value"): nothing is copied, and a value longer than a page does not fail
with EFAULT on kernels before 6.5. The allowed ifindexes are constants, as
in the egress program, which this one follows on every link change.
"""

from pam_vrf.bpf import asm, syscall
from pam_vrf.bpf.asm import R0, R1, R2, R3, R4, R5, R6, R7

PROG_NAME = "pam_vrf_join"
# struct bpf_sockopt
OPTVAL, OPTVAL_END, LEVEL, OPTNAME, OPTLEN = 8, 16, 24, 28, 32
SOL_IP, SOL_IPV6 = 0, 41
IP_ADD_MEMBERSHIP, IP_ADD_SOURCE_MEMBERSHIP, IPV6_ADD_MEMBERSHIP = 35, 39, 20
MCAST_JOIN_GROUP, MCAST_JOIN_SOURCE_GROUP = 42, 46
# (label, bytes the value needs, offset of the ifindex in it)
_INDEX_AT = (("mreqn", 12, 8), ("group", 4, 0), ("mreq6", 20, 16))


def build(allowed):
    items = [asm.mov_reg(R6, R1),
             asm.load_u32(R2, R6, LEVEL), asm.load_u32(R3, R6, OPTNAME),
             asm.jump_if_not(R2, SOL_IP, "v6"),
             asm.jump_if(R3, IP_ADD_MEMBERSHIP, "mreqn"),
             asm.jump_if(R3, IP_ADD_SOURCE_MEMBERSHIP, "refuse"),
             asm.jump_if(R3, MCAST_JOIN_GROUP, "group"),
             asm.jump_if(R3, MCAST_JOIN_SOURCE_GROUP, "group"),
             asm.goto("allow"),
             asm.Label("v6"),
             asm.jump_if_not(R2, SOL_IPV6, "allow"),
             asm.jump_if(R3, IPV6_ADD_MEMBERSHIP, "mreq6"),
             asm.jump_if(R3, MCAST_JOIN_GROUP, "group"),
             asm.jump_if(R3, MCAST_JOIN_SOURCE_GROUP, "group"),
             asm.goto("allow")]
    for label, size, off in _INDEX_AT:
        items += [asm.Label(label),
                  asm.load_u64(R4, R6, OPTVAL), asm.load_u64(R5, R6, OPTVAL_END),
                  asm.mov_reg(R0, R4), asm.add_imm(R0, size),
                  asm.jump_if_above(R0, R5, "refuse"),          # shorter than the struct
                  asm.load_u32(R7, R4, off), asm.goto("index")]
    items.append(asm.Label("index"))
    items += [asm.jump_if(R7, index, "allow") for index in sorted(allowed) if index]
    items += [asm.Label("refuse"), *asm.ret(0),
              asm.Label("allow"), asm.mov64_imm(R1, 0), asm.store_u32(R6, OPTLEN, R1), *asm.ret(1)]
    return asm.assemble(items)


def load(allowed):
    return syscall.prog_load(build(allowed), name=PROG_NAME, prog_type=syscall.PROG_TYPE_CGROUP_SOCKOPT,
                             attach_type=syscall.CGROUP_SETSOCKOPT)
