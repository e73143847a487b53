"""The cgroup egress program: a packet of a placed session leaves only
through the devices its VRF allows, whatever the sender asked for.

The sock-create program only sets a socket's bound device, and that is
only a default: an unprivileged sender overrides it per datagram
(IP_PKTINFO's ipi_ifindex, an IPv6 link-local destination's scope id,
a ping socket's control message). This program runs at the IP output
hook (cgroup_skb, BPF_CGROUP_INET_EGRESS, for every packet of a socket
created in the cgroup) and sees the device the packet is about to leave
by (`__sk_buff.ifindex`):

    r7 = *(u32 *)(r1 + 40)            ; skb->dev->ifindex
    if r7 == A goto allow             ; one compare per allowed device
    ...
    *(u32 *)(r10 - 4) = 0             ; count the drop in map[0]
    r2 = r10; r2 += -4; r1 = map; call map_lookup_elem
    if r0 == 0 goto drop
    r1 = 1; lock *(u64 *)(r0 + 0) += r1
  drop:  r0 = 0; exit                 ; the sender's sendmsg() gets EPERM
  allow: r0 = 1; exit

The allowed devices are constants: a change (a link enslaved to the VRF
or released, the VRF re-created) loads a new program and re-attaches it.
"""

import os
import struct

from pam_vrf.bpf import asm, syscall
from pam_vrf.bpf.asm import R0, R1, R2, R7, R10

SKB_IFINDEX = 40                # offsetof(struct __sk_buff, ifindex)
PROG_NAME = "pam_vrf_egress"
COUNTER = struct.Struct("<Q")   # map[0]: packets dropped


def new_counter(name="pam_vrf_drops"):
    """A one-slot array map the program counts its drops in; returns its fd."""
    return syscall.map_create(syscall.MAP_TYPE_ARRAY, 4, COUNTER.size, 1, name)


def build(allowed, counter_fd):
    """The program letting packets out only through ifindexes `allowed`."""
    items = [asm.load_u32(R7, R1, SKB_IFINDEX)]
    items += [asm.jump_if(R7, index, "allow") for index in sorted(allowed)]
    items += [asm.store_imm_u32(R10, -4, 0), asm.mov_reg(R2, R10), asm.add_imm(R2, -4),
              *asm.load_map_fd(R1, counter_fd), asm.call(asm.FUNC_MAP_LOOKUP_ELEM),
              asm.jump_if(R0, 0, "drop"), asm.mov64_imm(R1, 1), asm.atomic_add_u64(R0, 0, R1),
              asm.Label("drop"), *asm.ret(0),
              asm.Label("allow"), *asm.ret(1)]
    return asm.assemble(items)


def load(allowed, counter_fd):
    return syscall.prog_load(build(allowed, counter_fd), name=PROG_NAME,
                             prog_type=syscall.PROG_TYPE_CGROUP_SKB,
                             attach_type=syscall.CGROUP_INET_EGRESS)


def describe(xlated):
    """The allowed ifindexes of a program build() made (read back from the
    kernel's translated instructions, where the context load has become
    skb->dev->ifindex with a NULL check of its own), or None for another
    program: the compares on r7 that jump to `r0 = 1; exit`."""
    insns = asm.disassemble(xlated)

    def allows(n):
        target = n + 1 + insns[n].off
        return (target + 1 < len(insns) and insns[target + 1].code == asm.JMP | asm.EXIT
                and insns[target].code in (asm.ALU64 | asm.MOV | asm.K, asm.ALU | asm.MOV | asm.K)
                and insns[target].dst == R0 and insns[target].imm == 1)

    found = [i.imm & 0xFFFFFFFF for n, i in enumerate(insns)
             if i.code == asm.JMP | asm.JEQ | asm.K and i.dst == R7 and allows(n)]
    return frozenset(found) if found else None


def read_counter(counter_fd):
    return COUNTER.unpack(syscall.map_lookup(counter_fd, struct.pack("<I", 0), COUNTER.size))[0]


def dropped(map_ids):
    """Packets counted in the maps `map_ids` (a program's, from its ProgInfo);
    root only (the kernel asks for CAP_SYS_ADMIN to open a map by id)."""
    total = 0
    for map_id in map_ids:
        map_fd = syscall.map_get_fd_by_id(map_id)
        try:
            total += read_counter(map_fd)
        finally:
            os.close(map_fd)
    return total
