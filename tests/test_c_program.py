"""bpf/pam_vrf_sock.c and sockprog.build() are the same program.

Both versions are attached in turn to a test cgroup; a child process in
that cgroup, inside a throw-away network namespace that holds a veth pair
to bind to, makes a matrix of socket() calls and reports what came out:
the error, or the bound device, mark and priority. The C version's report
must equal the assembled program's, and the assembled program's must be
what its settings promise (checked against a run without any program).

The C version is built two ways:
  * with clang -target bpf -O2 -c, its instructions read out of the ELF
    object and loaded with pam_vrf.bpf.syscall.prog_load;
  * with bcc (python3-bpfcc), which needs the running kernel's headers.

Needs root; run with Debian's interpreter so bcc is importable:
    /usr/bin/python3 -m pytest -q tests/test_c_program.py
"""

import contextlib
import ctypes
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

from pam_vrf import cgroup, sockspec, trace
from pam_vrf.bpf import cgroup_link, sockprog, syscall

pytestmark = pytest.mark.root

SOURCE = Path(__file__).resolve().parent.parent / "bpf" / "pam_vrf_sock.c"
# The test VM (vagrant/ci/test-vm runs this file there) has bcc and the kernel
# headers: the bcc tests must run there, never skip; it has no clang.
IN_TEST_VM = os.path.exists("/etc/pam-vrf-test-vm")
FUNCTION = "pam_vrf"                   # the C function
SECTION = "cgroup/sock_create"         # its ELF section under plain clang
CHILD_PYTHON = "/usr/bin/python3"
CLONE_NEWNET = 0x40000000
TAG = f"pvt-c-{os.getpid()}"

# --- the socket matrix ---------------------------------------------------

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6
STREAM, DGRAM, RAW = socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW
TCP, UDP, UDPLITE, MPTCP, IPPROTO_RAW = 6, 17, 136, 262, 255


def _matrix():
    cases = []
    for family in (AF_INET, AF_INET6):
        icmp = 1 if family == AF_INET else 58
        cases += [
            (family, STREAM, 0), (family, STREAM, TCP), (family, STREAM, MPTCP),
            (family, DGRAM, 0), (family, DGRAM, UDP), (family, DGRAM, UDPLITE),
            (family, DGRAM, icmp),                                   # ping socket
            (family, DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, UDP),
            (family, RAW, 0), (family, RAW, icmp), (family, RAW, UDP), (family, RAW, IPPROTO_RAW),
        ]
    return cases


MATRIX = _matrix()

# Runs in the child, inside the test cgroup and network namespace.
CHILD = r"""
import errno, json, os, socket, sys
S = socket.SOL_SOCKET
INTS = (("domain", socket.SO_DOMAIN), ("type", socket.SO_TYPE), ("protocol", socket.SO_PROTOCOL),
        ("mark", socket.SO_MARK), ("priority", socket.SO_PRIORITY))
results = []
for family, kind, proto in json.loads(sys.argv[1]):
    try:
        s = socket.socket(family, kind, proto)
    except OSError as e:
        results.append({"error": errno.errorcode[e.errno]})
        continue
    with s:
        r = {}
        for key, opt in INTS:
            try:
                r[key] = s.getsockopt(S, opt)
            except OSError as e:
                r[key] = "getsockopt " + errno.errorcode[e.errno]
        try:
            r["bind"] = s.getsockopt(S, socket.SO_BINDTODEVICE, 16).split(b"\0", 1)[0].decode()
        except OSError as e:
            r["bind"] = "getsockopt " + errno.errorcode[e.errno]
        results.append(r)
with open("/proc/self/cgroup") as f:
    own_cgroup = [line[3:].strip() for line in f if line.startswith("0::")][0]
print(json.dumps({"cgroup": own_cgroup, "netns": os.stat("/proc/self/ns/net").st_ino,
                  "results": results}))
"""

# --- rule settings ---------------------------------------------------------


class Rule(NamedTuple):
    bind: bool = True
    deny: str = ""
    mark: object = None
    priority: object = None

    def settings(self, ifindex):
        deny = sockspec.parse_deny(self.deny) if self.deny else ()
        return sockprog.Settings(ifindex if self.bind else None,
                                 tuple((d.family, d.type, d.protocol) for d in deny),
                                 self.mark, self.priority)


RULES = {
    "bind": Rule(),
    "bind,deny=inet6,raw": Rule(deny="inet6,raw"),
    "bind,deny=inet:dgram:udp": Rule(deny="inet:dgram:udp"),
    "bind,mark,priority": Rule(mark=42, priority=6),
    "bind,deny=dgram,*:stream:mptcp,inet6:raw:icmpv6": Rule(deny="dgram,*:stream:mptcp,inet6:raw:icmpv6"),
    "no-bind,mark,priority>=2**31": Rule(bind=False, mark=0xFFFFFFFE, priority=0x80000001),
}


def c_defines(settings):
    """The preprocessor flags that make pam_vrf_sock.c the program for `settings`."""
    flags = []
    for macro, value in (("IFINDEX", settings.ifindex), ("MARK", settings.mark),
                         ("PRIORITY", settings.priority)):
        if value is not None:
            flags.append(f"-D{macro}={value}u")
    if settings.deny:
        items = " ".join("DENY_ITEM(%s)" % ", ".join("ANY" if v is None else str(v) for v in triple)
                         for triple in settings.deny)
        flags.append(f"-DDENY={items}")
    return flags


# --- the test place: a network namespace with a veth pair, and a cgroup -------


def run(argv):
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}"
    return done.stdout


class Lab(NamedTuple):
    netns: str
    netns_ino: int
    dev: str
    ifindex: int
    cgroup: str
    baseline: list          # the matrix with no program attached


_libc = ctypes.CDLL(None, use_errno=True)


def _enter(cgroup_dir, netns_path):
    """preexec_fn: join the cgroup, then the network namespace."""
    def enter():
        with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
        finally:
            os.close(fd)
    return enter


def run_matrix(cgroup_dir, netns, netns_ino):
    done = subprocess.run([CHILD_PYTHON, "-I", "-c", CHILD, json.dumps(MATRIX)],
                          preexec_fn=_enter(cgroup_dir, f"/run/netns/{netns}"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"matrix child failed ({done.returncode}): {done.stderr}"
    report = json.loads(done.stdout)
    # The child really ran where the programs are (else equality would prove nothing).
    assert report["cgroup"].endswith("/" + os.path.relpath(cgroup_dir, cgroup.mount_point()))
    assert report["netns"] == netns_ino
    return report["results"]


def _detach_all(path):
    while cgroup_link.detach(path):
        pass


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace, cgroup, bpf)")
    for tool in ("ip", CHILD_PYTHON):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not found")
    mount = cgroup.mount_point()
    dev, peer = f"pvc{os.getpid()}a", f"pvc{os.getpid()}b"
    with contextlib.ExitStack() as undo:
        run(["ip", "netns", "add", TAG])
        undo.callback(run, ["ip", "netns", "del", TAG])        # takes the veth pair with it
        run(["ip", "-n", TAG, "link", "add", dev, "type", "veth", "peer", "name", peer])
        # Let ping sockets (DGRAM + ICMP) be created, in this namespace only.
        run(["ip", "netns", "exec", TAG, "sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647"])
        ifindex = json.loads(run(["ip", "-n", TAG, "-j", "link", "show", dev]))[0]["ifindex"]
        top = os.path.join(mount, TAG)
        cgroup_dir = os.path.join(top, "vrf", dev)
        for path in (top, os.path.dirname(cgroup_dir), cgroup_dir):
            os.mkdir(path)
            undo.callback(os.rmdir, path)                      # children first (LIFO)
        undo.callback(_detach_all, cgroup_dir)                 # before the rmdirs
        assert cgroup_link.effective(cgroup_dir) == [], "a parent cgroup runs sock-create programs"
        netns_ino = os.stat(f"/run/netns/{TAG}").st_ino
        baseline = run_matrix(cgroup_dir, TAG, netns_ino)
        yield Lab(TAG, netns_ino, dev, ifindex, cgroup_dir, baseline)


# --- the shared comparison -----------------------------------------------------


def _s32(value):
    return value - (1 << 32) if value >= 1 << 31 else value


def promised(settings, baseline, dev):
    """What sockets come out as under `settings`, from the run without a program."""
    out = []
    for case, base in zip(MATRIX, baseline):
        if "error" in base:                  # refused before the program runs
            out.append(base)
            continue
        seen = (base["domain"], base["type"], base["protocol"])
        always = sockprog.ALWAYS_DENIED if settings.ifindex is not None else ()
        if any(all(want is None or want == got for want, got in zip(item, seen))
               for item in (*settings.deny, *always)):
            out.append({"error": "EPERM"})
            continue
        r = dict(base)
        if settings.ifindex is not None:
            r["bind"] = dev
        if settings.mark is not None:
            r["mark"] = _s32(settings.mark)
        if settings.priority is not None:
            r["priority"] = _s32(settings.priority)
        out.append(r)
    return out


def label(case):
    family, kind, proto = case
    kinds = [socket.SocketKind(kind & 0xF).name]
    kinds += [flag.name for flag in (socket.SOCK_CLOEXEC, socket.SOCK_NONBLOCK) if kind & flag]
    return f"socket({socket.AddressFamily(family).name}, {'|'.join(kinds)}, {proto})"


def _differences(left, right, names):
    return [f"{label(case)}: {names[0]} {a} != {names[1]} {b}"
            for case, a, b in zip(MATRIX, left, right) if a != b]


def results_under(lab, prog_fd):
    cgroup_link.attach(lab.cgroup, prog_fd)
    try:
        return run_matrix(lab.cgroup, lab.netns, lab.netns_ino)
    finally:
        assert cgroup_link.detach(lab.cgroup)


def check_same_as_sockprog(lab, settings, c_prog_fd):
    """The C program (loaded by the caller) against sockprog.build(settings)."""
    asm_fd = syscall.prog_load(sockprog.build(settings), name="pvt_asm")
    try:
        from_asm = results_under(lab, asm_fd)
    finally:
        os.close(asm_fd)
    from_c = results_under(lab, c_prog_fd)

    assert len(from_asm) == len(from_c) == len(MATRIX)
    wrong = _differences(from_asm, promised(settings, lab.baseline, lab.dev), ("asm", "promised"))
    assert not wrong, "sockprog.build() does not do what its settings say:\n" + "\n".join(wrong)
    differ = _differences(from_c, from_asm, ("C", "asm"))
    assert not differ, "the C program differs from sockprog.build():\n" + "\n".join(differ)
    # Not vacuous: every rule here changes something, and something still works.
    assert from_c != lab.baseline
    assert any("error" not in r for r in from_c)


def test_lab_baseline(lab):
    """Without a program: sockets are unbound and most of the matrix is creatable."""
    made = [r for r in lab.baseline if "error" not in r]
    assert len(made) >= len(MATRIX) // 2
    assert all(r["bind"] == "" and r["mark"] == 0 and r["priority"] == 0 for r in made)


# --- (b) clang -target bpf ---------------------------------------------------------


def elf_section(data, name):
    """(contents of section `name`, names of relocation sections applying to it,
    {symbol name: (value, size)} of the functions defined in it), from a
    little-endian ELF64 BPF object."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    machine, = struct.unpack_from("<H", data, 0x12)
    if machine != 247:
        raise ValueError(f"e_machine {machine}, not EM_BPF (247)")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def blob(header):
        return data[header[4]:header[4] + header[5]]

    def string(table, offset):
        return table[offset:table.index(b"\0", offset)].decode()

    names = blob(headers[shstrndx])
    index = {string(names, h[0]): i for i, h in enumerate(headers)}
    if name not in index:
        raise KeyError(f"no section {name!r} (sections: {sorted(index)})")
    wanted = index[name]
    relocations = [string(names, h[0]) for h in headers if h[1] in (4, 9) and h[7] == wanted]  # RELA, REL
    functions = {}
    for h in headers:
        if h[1] != 2:                                   # SHT_SYMTAB
            continue
        strtab = blob(headers[h[6]])
        for off in range(0, h[5], 24):
            st_name, info, _, shndx, value, size = struct.unpack_from("<IBBHQQ", data, h[4] + off)
            if shndx == wanted and info & 0xF == 2:     # STT_FUNC
                functions[string(strtab, st_name)] = (value, size)
    return blob(headers[wanted]), relocations, functions


def _multiarch_include():
    arch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    return f"/usr/include/{arch}"      # <asm/types.h>, which <linux/bpf.h> needs


def clang_build(settings, workdir):
    """Compile pam_vrf_sock.c for `settings`; the program's instruction bytes."""
    obj = os.path.join(workdir, "pam_vrf_sock.o")
    argv = ["clang", "-target", "bpf", "-O2", "-Wall", "-Werror", "-I", _multiarch_include(),
            *c_defines(settings), "-c", str(SOURCE), "-o", obj]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"clang failed:\n{' '.join(argv)}\n{done.stderr}"
    code, relocations, functions = elf_section(Path(obj).read_bytes(), SECTION)
    assert relocations == [], f"the program needs relocations: {relocations}"
    assert functions == {FUNCTION: (0, len(code))}, functions
    assert code and len(code) % 8 == 0
    return code


@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_clang_program_matches_sockprog(lab, rule):
    if not shutil.which("clang"):
        pytest.skip("clang is not installed here: the test VM has none (these run in the host suite)"
                    if IN_TEST_VM else "clang is not installed (Debian package clang)")
    settings = rule.settings(lab.ifindex)
    with tempfile.TemporaryDirectory(prefix="pvt-clang-") as workdir:
        code = clang_build(settings, workdir)
    fd = syscall.prog_load(code, name="pvt_clang")
    try:
        check_same_as_sockprog(lab, settings, fd)
    finally:
        os.close(fd)


def test_elf_reader_refuses_other_files():
    with pytest.raises(ValueError):
        elf_section(Path("/bin/sh").read_bytes(), SECTION)       # x86-64, not BPF
    with pytest.raises(ValueError):
        elf_section(SOURCE.read_bytes(), SECTION)


# --- (a) bcc -------------------------------------------------------------------------


def bcc_header_places():
    """Where bcc looks for the running kernel's headers (pam_vrf.trace knows:
    `pam-vrf trace` checks the same), and which of them exist."""
    places = trace.header_places()
    return places, [p for p in places if os.path.exists(p)]


@contextlib.contextmanager
def bcc_program(settings):
    """pam_vrf_sock.c compiled and loaded by bcc; yields the program fd.
    Skips when bcc cannot compile because the kernel headers are missing."""
    # In the test VM a missing bcc or header package is a broken image: fail.
    skip = pytest.fail if IN_TEST_VM else pytest.skip
    try:
        from bcc import BPF
    except ImportError:
        skip("bcc is not importable: python3-bpfcc is not installed "
             "(or this is not Debian's /usr/bin/python3)")
    try:
        module = BPF(text=SOURCE.read_bytes(), cflags=c_defines(settings))
    except Exception as e:                  # bcc raises a bare Exception for this
        places, present = bcc_header_places()
        if not str(e).startswith("Failed to compile BPF module") or present:
            raise
        skip(f"bcc cannot compile on this kernel: no kernel headers at {places[0]}"
             + (f" (nor {', '.join(places[1:])})" if places[1:] else ""))
    try:
        yield module.load_func(FUNCTION.encode(), BPF.CGROUP_SOCK).fd
    finally:
        module.cleanup()


@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_bcc_program_matches_sockprog(lab, rule):
    settings = rule.settings(lab.ifindex)
    with bcc_program(settings) as fd:
        check_same_as_sockprog(lab, settings, fd)
