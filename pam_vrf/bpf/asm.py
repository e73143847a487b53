"""A small eBPF instruction builder (just what pam-vrf's two programs need).

Instructions are plain values; jumps name a Label and assemble() resolves
them, so program code reads like the assembly it stands for.
"""

import struct
from typing import NamedTuple

# Instruction classes, sizes, modes and operations (linux/bpf_common.h, linux/bpf.h).
LD, LDX, ST, STX, ALU, JMP, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07
W, DW = 0x00, 0x18              # 32- and 64-bit memory access
IMM, MEM, ATOMIC = 0x00, 0x60, 0xC0
K, X = 0x00, 0x08               # immediate or register source
ADD, MOV = 0x00, 0xB0
JEQ, JGT, JNE = 0x10, 0x20, 0x50
CALL, EXIT = 0x80, 0x90
PSEUDO_MAP_FD = 1               # ld_imm64 src: the immediate is a map fd
FUNC_MAP_LOOKUP_ELEM = 1        # enum bpf_func_id

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)


class Insn(NamedTuple):
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self):
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)

    @classmethod
    def decode(cls, raw):
        code, regs, off, imm = struct.unpack("<BBhi", raw)
        return cls(code, regs & 0x0F, regs >> 4, off, imm)


class Label(NamedTuple):
    name: str


class Jump(NamedTuple):
    """A jump to a Label, resolved by assemble(); `src` for register compares."""
    op: int
    dst: int
    imm: int
    label: str
    src: int = 0


def _s32(value):
    """An unsigned 32-bit constant as the signed immediate the encoding holds."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def mov_reg(dst, src):
    return Insn(ALU64 | MOV | X, dst, src)


def mov_imm(dst, value):
    """dst = value (32-bit move: no sign extension of values >= 2**31)."""
    return Insn(ALU | MOV | K, dst, 0, 0, _s32(value))


def mov64_imm(dst, value):
    return Insn(ALU64 | MOV | K, dst, 0, 0, _s32(value))


def load_u64(dst, src, off):
    return Insn(LDX | MEM | DW, dst, src, off)


def jump_if_above(dst, src, label):
    """if dst > src (unsigned, registers) goto label"""
    return Jump(JMP | JGT | X, dst, 0, label, src)


def goto(label):
    return Jump(JMP | 0x00, 0, 0, label)      # BPF_JA


def load_u32(dst, src, off):
    return Insn(LDX | MEM | W, dst, src, off)


def store_u32(dst, off, src):
    return Insn(STX | MEM | W, dst, src, off)


def add_imm(dst, value):
    return Insn(ALU64 | ADD | K, dst, 0, 0, value)


def store_imm_u32(dst, off, value):
    return Insn(ST | MEM | W, dst, 0, off, _s32(value))


def atomic_add_u64(dst, off, src):
    """lock *(u64 *)(dst + off) += src"""
    return Insn(STX | ATOMIC | DW, dst, src, off, ADD)


def load_map_fd(dst, fd):
    """dst = the map `fd` (a two-slot ld_imm64 the kernel turns into a map pointer)."""
    return [Insn(LD | IMM | DW, dst, PSEUDO_MAP_FD, 0, fd), Insn(0)]


def call(func):
    return Insn(JMP | CALL, 0, 0, 0, func)


def jump_if_not(dst, value, label):
    return Jump(JMP | JNE | K, dst, _s32(value), label)


def jump_if(dst, value, label):
    return Jump(JMP | JEQ | K, dst, _s32(value), label)


def exit_insn():
    return Insn(JMP | EXIT)


def ret(value):
    """r0 = value; exit."""
    return [mov64_imm(R0, value), exit_insn()]


def assemble(items):
    """Labels and instructions -> the bytes bpf(BPF_PROG_LOAD) takes."""
    where, count = {}, 0
    for item in items:
        if isinstance(item, Label):
            if item.name in where:
                raise ValueError(f"label {item.name} defined twice")
            where[item.name] = count
        else:
            count += 1
    out, pc = [], 0
    for item in items:
        if isinstance(item, Label):
            continue
        if isinstance(item, Jump):
            if item.label not in where:
                raise ValueError(f"jump to undefined label {item.label}")
            item = Insn(item.op, item.dst, item.src, where[item.label] - pc - 1, item.imm)
        out.append(item.encode())
        pc += 1
    return b"".join(out)


def disassemble(raw):
    return [Insn.decode(raw[i:i + 8]) for i in range(0, len(raw) - len(raw) % 8, 8)]
