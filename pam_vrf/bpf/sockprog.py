"""The cgroup sock-create program: bind new inet sockets to a device,
refuse the denied kinds of socket, set mark and priority.

    r6 = r1                            ; struct bpf_sock *
    r7 = family; r8 = type; r9 = protocol   (each only if a deny item needs it)
    per deny item:  if r7 != F goto next; if r8 != T goto next; ...; r0 = 0; exit
    r3 = ifindex;  *(u32 *)(r6 + 0)  = r3
    r4 = mark;     *(u32 *)(r6 + 16) = r4
    r5 = priority; *(u32 *)(r6 + 20) = r5
    r0 = 1; exit

Returning 0 makes socket() fail with EPERM. A program that binds also
refuses MPTCP sockets (ALWAYS_DENIED, not a vrf.conf item): the TCP
subflows the kernel makes for one are not created through this hook, so
they are not bound, and a listener takes connections from every link
(applications fall back to TCP on EPERM). Each value keeps its own
register (r3 for the ifindex, as iproute2 does), so describe() can read
the rule back from the program the kernel holds, whose context accesses
the verifier has rewritten but whose registers and constants it keeps.
"""

from typing import NamedTuple

from pam_vrf.bpf import asm
from pam_vrf.bpf.asm import R0, R1, R3, R4, R5, R6, R7, R8, R9

# struct bpf_sock field offsets (u32 each).
BOUND_DEV_IF, FAMILY, TYPE, PROTOCOL, MARK, PRIORITY = 0, 4, 8, 12, 16, 20

PROG_NAME = "pam_vrf"
AF_INET, AF_INET6, SOCK_STREAM, IPPROTO_MPTCP = 2, 10, 1, 262
ALWAYS_DENIED = ((AF_INET, SOCK_STREAM, IPPROTO_MPTCP), (AF_INET6, SOCK_STREAM, IPPROTO_MPTCP))
_MATCH_REGS = ((R7, FAMILY, "family"), (R8, TYPE, "type"), (R9, PROTOCOL, "protocol"))
_SET_REGS = ((R3, BOUND_DEV_IF, "ifindex"), (R4, MARK, "mark"), (R5, PRIORITY, "priority"))


class Settings(NamedTuple):
    """What a program does; also what describe() reads back from the kernel."""
    ifindex: object = None      # int or None (no binding: a deny-only program)
    deny: tuple = ()            # (family, type, protocol) triples, None = any
    mark: object = None
    priority: object = None


def build(settings):
    """The program for `settings`, as assembled bytes."""
    items = [asm.mov_reg(R6, R1)]
    triples = [tuple(t) for t in settings.deny]
    if settings.ifindex is not None:
        triples += [t for t in ALWAYS_DENIED if t not in triples]
    for position, (reg, off, _) in enumerate(_MATCH_REGS):
        if any(t[position] is not None for t in triples):
            items.append(asm.load_u32(reg, R6, off))
    for n, triple in enumerate(triples):
        nxt = f"deny{n}_next"
        for (reg, _, _), value in zip(_MATCH_REGS, triple):
            if value is not None:
                items.append(asm.jump_if_not(reg, value, nxt))
        items += asm.ret(0)
        items.append(asm.Label(nxt))
    for (reg, off, _), value in zip(_SET_REGS, (settings.ifindex, settings.mark, settings.priority)):
        if value is not None:
            items += [asm.mov_imm(reg, value), asm.store_u32(R6, off, reg)]
    items += asm.ret(1)
    return asm.assemble(items)


def describe(xlated):
    """Read Settings back from a program's translated instructions.

    Works for programs build() made and for iproute2's `ip vrf exec`
    program; returns None for anything else (no r3 constant and no deny items).
    """
    insns = asm.disassemble(xlated)
    values, deny, pending = {}, [], {}
    set_names = {reg: name for reg, _, name in _SET_REGS}
    match_names = {reg: name for reg, _, name in _MATCH_REGS}
    for n, insn in enumerate(insns):
        is_mov_imm = insn.code in (asm.ALU | asm.MOV | asm.K, asm.ALU64 | asm.MOV | asm.K)
        if is_mov_imm and insn.dst in set_names:
            values[set_names[insn.dst]] = insn.imm & 0xFFFFFFFF
        elif insn.code == asm.JMP | asm.JNE | asm.K and insn.dst in match_names:
            pending[match_names[insn.dst]] = insn.imm & 0xFFFFFFFF
        elif (is_mov_imm and insn.dst == R0 and insn.imm == 0 and n + 1 < len(insns)
              and insns[n + 1].code == asm.JMP | asm.EXIT):
            deny.append((pending.get("family"), pending.get("type"), pending.get("protocol")))
            pending = {}
    if "ifindex" not in values and not deny:
        return None
    if "ifindex" in values:
        deny = [t for t in deny if t not in ALWAYS_DENIED]
    return Settings(values.get("ifindex"), tuple(deny), values.get("mark"), values.get("priority"))


def iproute2_program(ifindex):
    """The exact program `ip vrf exec` loads (iproute2 ip/ipvrf.c prog_load),
    for tests and benchmarks that must meet it on a cgroup."""
    return asm.assemble([
        asm.mov_reg(R6, R1),
        asm.mov64_imm(R3, ifindex),
        asm.mov64_imm(asm.R2, BOUND_DEV_IF),
        asm.store_u32(R1, BOUND_DEV_IF, R3),
        *asm.ret(1),
    ])
