"""The sock-create program on a real cgroup, real sockets, real traffic.

Lab (all inside namespaces this test creates):

    [peer A ns] pa --- va [host ns] vb --- pb [peer B ns]
    10.213.0.2                             10.213.0.2      (same address)

The host has 10.213.0.1/24 on both va and vb, va first, so an unplaced
process reaches peer A; a process placed with target vb (a `plain`
target: this kernel has no VRF driver) must reach peer B.
"""

import errno
import json
import os
import socket
import subprocess
import textwrap
import time

import pytest

from testlab import progs
from testlab.run import PY, REPO, run_py, sh, spawn, uid_tag
from pam_vrf import cgroup, policy, programs
from pam_vrf.bpf import asm, cgroup_link, sockprog, syscall

pytestmark = pytest.mark.root


SERVER = progs.source("answer_server")

# Prints, for each of tcp/udp over v4/v6: bound device and the peer's answer.
CLIENT = progs.source("answer_client")

# socket() over a matrix; prints verdict (ok / errno name) with mark and priority.
MATRIX = progs.source("socket_matrix")


@pytest.fixture
def lab(netns):
    host, peer_a, peer_b = netns("h"), netns("a"), netns("b")
    tag = uid_tag()
    va, vb, pa, pb = (f"{p}{tag}" for p in ("va", "vb", "pa", "pb"))
    servers = []
    try:
        for dev, peer, ns, name in ((va, pa, peer_a, "A"), (vb, pb, peer_b, "B")):
            sh("ip", "-n", host, "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", ns)
            sh("ip", "-n", host, "addr", "add", "10.213.0.1/24", "dev", dev)
            sh("ip", "-n", host, "addr", "add", "fd00:213::1/64", "dev", dev, "nodad")
            sh("ip", "-n", host, "link", "set", dev, "up")
            sh("ip", "-n", ns, "addr", "add", "10.213.0.2/24", "dev", peer)
            sh("ip", "-n", ns, "addr", "add", "fd00:213::2/64", "dev", peer, "nodad")
            sh("ip", "-n", ns, "link", "set", peer, "up")
            server = spawn([PY, "-c", SERVER, name], netns=ns, stdout=subprocess.PIPE, text=True)
            servers.append(server)
            assert server.stdout.readline().strip() == "ready"
        index = json.loads(sh("ip", "-n", host, "-j", "link", "show", "dev", vb).stdout)[0]["ifindex"]
        yield {"host": host, "va": va, "vb": vb, "vb_index": index, "peer_a": peer_a, "peer_b": peer_b,
               "pa": pa, "pb": pb}
    finally:
        for server in servers:
            server.kill()
            server.wait()


def place_dir(sandbox, name):
    path = f"{sandbox}/vrf/{name}"
    os.makedirs(path)
    return path


def test_placed_sockets_bind_and_reach_the_target_peer(lab, sandbox_cgroup):
    placed = place_dir(sandbox_cgroup, lab["vb"])
    programs.attach(placed, sockprog.Settings(ifindex=lab["vb_index"]))

    inside = run_py(CLIENT, netns=lab["host"], cgroup_dir=placed)
    outside = run_py(CLIENT, netns=lab["host"])

    for key in ("tcp4", "udp4", "tcp6", "udp6"):
        assert inside[key] == [lab["vb"], "B"], (key, inside)
        assert outside[key] == ["", "A"], (key, outside)


def test_deny_items_refuse_exactly_what_they_name(lab, sandbox_cgroup):
    placed = place_dir(sandbox_cgroup, lab["vb"])
    baseline = run_py(MATRIX, netns=lab["host"])
    # Invalid combinations (stream/udp) fail anyway; the usual kinds must all work unplaced.
    usable = {k for k, v in baseline.items() if v[0] == "ok"}
    for fam in ("AF_INET", "AF_INET6"):
        assert {f"{fam}/SOCK_STREAM/0", f"{fam}/SOCK_DGRAM/0", f"{fam}/SOCK_DGRAM/17",
                f"{fam}/SOCK_RAW/1", f"{fam}/SOCK_RAW/17"} <= usable, baseline

    cases = {
        "inet6": lambda k: k.startswith("AF_INET6/"),
        "raw": lambda k: "/SOCK_RAW/" in k,
        "inet:dgram:udp": lambda k: k.startswith("AF_INET/SOCK_DGRAM/") and k.endswith(f"/{socket.IPPROTO_UDP}") or k == "AF_INET/SOCK_DGRAM/0",
        "stream,inet6:raw": lambda k: "/SOCK_STREAM/" in k or k.startswith("AF_INET6/SOCK_RAW/"),
    }
    for text, refused in cases.items():
        rule = policy.parse(f"* {lab['vb']} plain deny={text} mark=0x2a priority=5")[0]
        programs.attach(placed, programs.settings_for(rule, lab["vb_index"]))
        got = run_py(MATRIX, netns=lab["host"], cgroup_dir=placed)
        assert got.keys() == baseline.keys()
        for key, verdict in got.items():
            if key not in usable:
                assert verdict == baseline[key]
                continue
            if refused(key):
                assert verdict == "EPERM", (text, key, verdict)
            else:
                assert verdict == ["ok", 0x2A, 5], (text, key, verdict)
        assert sum(refused(k) for k in got) > 0


def test_unprivileged_process_cannot_unbind_or_leave(lab, sandbox_cgroup, throwaway_user):
    user = throwaway_user()
    placed = place_dir(sandbox_cgroup, lab["vb"])
    os.makedirs(f"{sandbox_cgroup}/vrf/other")
    programs.attach(placed, sockprog.Settings(ifindex=lab["vb_index"]))
    code = textwrap.dedent("""
        import json, os, socket, sys
        out = {}
        s = socket.socket()
        out["bound"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\\0").decode()
        for label, value in (("unbind", b""), ("rebind", sys.argv[1].encode())):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, value); out[label] = "done"
            except OSError as e:
                out[label] = e.errno
        for label, target in (("to_root", sys.argv[2]), ("to_default", sys.argv[3]), ("to_sibling", sys.argv[4])):
            try:
                with open(target + "/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))
                out[label] = "moved"
            except OSError as e:
                out[label] = e.errno
        out["cgroup"] = open("/proc/self/cgroup").read()
        print(json.dumps(out))
    """)
    got = run_py(code, netns=lab["host"], cgroup_dir=placed, user=user,
                 args=(lab["va"], cgroup.mount_point(), f"{sandbox_cgroup}/vrf", f"{sandbox_cgroup}/vrf/other"))
    assert got["bound"] == lab["vb"]
    assert got["unbind"] == errno.EPERM and got["rebind"] == errno.EPERM
    for label in ("to_root", "to_default", "to_sibling"):
        assert got[label] in (errno.EACCES, errno.EPERM), (label, got)
    assert got["cgroup"].strip().endswith(f"/vrf/{lab['vb']}")


def _iproute2_style_attach(path, ifindex):
    fd = syscall.prog_load(sockprog.iproute2_program(ifindex))
    try:
        cgroup_link.attach(path, fd)
        return syscall.prog_info(fd).id
    finally:
        os.close(fd)


def test_attach_replaces_and_never_stacks(sandbox_cgroup):
    path = place_dir(sandbox_cgroup, "lo")
    first = programs.attach(path, sockprog.Settings(ifindex=1))
    second = programs.attach(path, sockprog.Settings(ifindex=1, mark=7))
    assert first != second
    assert [a.prog_id for a in cgroup_link.query(path)] == [second]

    # A program attached the way `ip vrf exec` does (flags 0) is replaced by ours ...
    theirs = _iproute2_style_attach(path, 1)
    assert [a.prog_id for a in cgroup_link.query(path)] == [theirs]
    ours = programs.attach(path, sockprog.Settings(ifindex=1))
    attached = cgroup_link.query(path)
    assert [(a.prog_id, a.flags) for a in attached] == [(ours, 0)]
    info, settings = programs.read_back(ours)
    assert info.name == sockprog.PROG_NAME and settings == sockprog.Settings(ifindex=1)

    # ... and `ip vrf exec` meeting our cgroup replaces ours instead of failing.
    theirs = _iproute2_style_attach(path, 1)
    assert [a.prog_id for a in cgroup_link.query(path)] == [theirs]
    assert programs.read_back(theirs)[1] == sockprog.Settings(ifindex=1)

    # Flags 0 also means: no sub-cgroup can attach its own program.
    nested = place_dir(path, "x")
    with pytest.raises(syscall.BpfError) as refused:
        programs.attach(nested, sockprog.Settings(ifindex=1))
    assert refused.value.errno == errno.EPERM
    assert cgroup_link.effective(nested) == [theirs]

    assert cgroup_link.detach(path) is True
    assert cgroup_link.query(path) == []
    assert cgroup_link.detach(path) is False


def test_iproute2_sees_our_placement(sandbox_cgroup):
    placed = place_dir(sandbox_cgroup, "lo")
    programs.attach(placed, sockprog.Settings(ifindex=1))
    sleeper = spawn(["sleep", "60"], cgroup_dir=placed)
    try:
        assert sh("ip", "vrf", "identify", sleeper.pid).stdout.strip() == "lo"
        assert cgroup.identify(sleeper.pid) == "lo"
        # (`ip vrf pids` insists on a real VRF device: the VM suite checks it.)
        assert [d for d, name in cgroup.vrf_dirs() if name == "lo" and sleeper.pid in cgroup.members(d)] == [placed]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_verifier_refusal_shows_the_log():
    bad = asm.assemble([asm.mov_imm(asm.R3, 1), asm.store_u32(asm.R1, sockprog.FAMILY, asm.R3), *asm.ret(1)])
    with pytest.raises(syscall.BpfError) as refused:
        syscall.prog_load(bad)
    assert "verifier refused" in str(refused.value)
    assert "invalid bpf_context access" in refused.value.log
    assert "invalid bpf_context access" in str(refused.value)


LOAD_ATTACH = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from pam_vrf import programs
    from pam_vrf.bpf import cgroup_link, sockprog, syscall
    try:
        prog = programs.attach(sys.argv[2], sockprog.Settings(ifindex=1))
        print(json.dumps({"attached": [a.prog_id for a in cgroup_link.query(sys.argv[2])], "prog": prog}))
    except syscall.BpfError as e:
        print(json.dumps({"errno": e.errno, "message": str(e)}))
""")


def test_capabilities_needed_and_sufficient(sandbox_cgroup, throwaway_user, public_repo):
    user = throwaway_user()
    path = place_dir(sandbox_cgroup, "lo")
    denied = run_py(LOAD_ATTACH, user=user, args=(public_repo, path))
    assert denied["errno"] == errno.EPERM
    assert "needs CAP_BPF and CAP_NET_ADMIN" in denied["message"]

    # The helper's premise: a non-root user with just these two ambient caps.
    proc = sh("setpriv", "--reuid", user.pw_uid, "--regid", user.pw_gid, "--init-groups",
              "--inh-caps", "+bpf,+net_admin", "--ambient-caps", "+bpf,+net_admin",
              PY, "-c", LOAD_ATTACH, public_repo, path, cwd="/")
    got = json.loads(proc.stdout)
    assert got["attached"] == [got["prog"]], got


def test_vrf_path_follows_iproute2_layout(sandbox_cgroup, netns):
    rel = sandbox_cgroup[len(cgroup.mount_point()):]
    inner = place_dir(sandbox_cgroup, "blue")
    sleeper = spawn(["sleep", "60"], cgroup_dir=inner)
    ns = netns()
    in_ns = spawn(["sleep", "60"], cgroup_dir=sandbox_cgroup, netns=ns)
    try:
        mount = cgroup.mount_point()
        # Cut at /vrf: a process already in a VRF moves to a sibling, never nests.
        assert cgroup.vrf_path("red", sleeper.pid) == f"{mount}{rel}/vrf/red"
        assert cgroup.vrf_path("default", sleeper.pid) == f"{mount}{rel}/vrf/"
        # Inside a named netns iproute2 adds a '<name>-ns' level.
        assert cgroup.vrf_path("red", in_ns.pid) == f"{mount}{rel}/{ns}-ns/vrf/red"
        assert cgroup.identify(sleeper.pid) == "blue"
        assert cgroup.identify(in_ns.pid) == ""
    finally:
        for p in (sleeper, in_ns):
            p.kill()
            p.wait()


def test_move_errors_are_clear(sandbox_cgroup):
    with pytest.raises(cgroup.CgroupError, match="no such process"):
        cgroup.move(2 ** 22 + 12345, sandbox_cgroup)
    with pytest.raises(cgroup.CgroupError, match="no such cgroup"):
        cgroup.move(os.getpid(), f"{sandbox_cgroup}/missing")


def test_the_cached_cgroup2_mount_follows_mount_table_changes(tmp_path):
    """The helper caches its cgroup2 mount; a change of the mount table (here:
    the mount gone, then another in its place, in a private mount namespace)
    must be seen at the next look-up, never a stale directory."""
    code = textwrap.dedent(f"""
        import json, os, subprocess, sys
        sys.path.insert(0, {REPO!r})
        from pam_vrf import cgroup
        # A mount point that is not UTF-8 (a user's FUSE mount may be) first.
        odd = os.path.join(os.fsencode({str(tmp_path)!r}), b"\\xff")
        os.mkdir(odd)
        subprocess.run([b"mount", b"-t", b"tmpfs", b"none", odd], check=True)
        seen = [cgroup.find_mount(), cgroup.find_mount()]
        for point in [m.point for m in cgroup.mounts() if m.fstype == "cgroup2"]:
            subprocess.run(["umount", "-l", point], check=True)
        seen.append(cgroup.find_mount())
        subprocess.run(["mount", "-t", "cgroup2", "none", {str(tmp_path)!r}], check=True)
        seen.append(cgroup.find_mount())
        print(json.dumps(seen))
    """)
    out = sh("unshare", "--mount", "--propagation", "private", PY, "-c", code).stdout
    first, again, gone, new = json.loads(out)
    assert first == again and first == list(cgroup.find_mount("/proc/self/mountinfo"))
    assert gone is None
    assert new == [str(tmp_path), "/"]


def test_names_a_user_chose_in_bytes_do_not_break_the_helpers_reads(sandbox_cgroup):
    """comm (a symlink named b"\\xff" to su gives su that comm) and cgroup
    names in a delegated tree are bytes a user chose: reading them (uids,
    kernel-thread check, cgroup path) must not fail on them."""
    from pam_vrf import process
    odd = os.path.join(os.fsencode(sandbox_cgroup), b"\xff")
    os.mkdir(odd)
    code = ("import ctypes, sys, time; ctypes.CDLL(None).prctl(15, b'\\xff\\xfe', 0, 0, 0); "
            "print('ready', flush=True); time.sleep(30)")
    child = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        with open(os.path.join(odd, b"cgroup.procs"), "w") as f:
            f.write(str(child.pid))
        with open(f"/proc/{child.pid}/comm", "rb") as f:
            assert f.read() == b"\xff\xfe\n"
        assert process._uids(child.pid) == (0, 0)
        assert process.is_kernel_thread(child.pid) is False
        where = cgroup.cgroup_of(child.pid)
        assert os.fsencode(where).endswith(b"/\xff")
        assert os.path.isdir(cgroup.fs_path(where))
    finally:
        child.kill()
        child.wait()
