"""`pam-vrf trace` on the host, and what the helper records for it.

The host has no kernel headers (bcc cannot compile here), so the tracer
itself runs in the VM suite (tests/vm/test_vm_trace.py). Here:

- without headers, or without bcc, `pam-vrf trace` says which Debian
  packages to install and exits 3 (real runs of the command, on this host);
- the helper records each attachment's rule source (FILE:LINE) without
  making it part of the rule: equal rules from different lines share a
  cgroup; a state file written before the source was recorded still loads;
- a refusal is named by the deny item sockspec.denied_by() finds (the same
  item order the program checks) and the rule's FILE:LINE.
"""

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from testlab.run import REPO
from pam_vrf import sockspec, trace
from pam_vrf.helper.attachments import Attachments, Conflict
from pam_vrf.policy import Program

SYSTEM_PY = "/usr/bin/python3"
RELEASE = os.uname().release


def pam_vrf_argv():
    """The installed command (make install), else the package from this tree."""
    found = shutil.which("pam-vrf")
    return [found] if found else [SYSTEM_PY, "-m", "pam_vrf"]


def test_trace_without_kernel_headers_says_what_to_install():
    if any(os.path.exists(p) for p in trace.header_places()):
        pytest.skip(f"this host has kernel headers ({trace.header_places()}): "
                    "the VM suite runs trace itself (tests/vm/test_vm_trace.py)")
    done = subprocess.run([*pam_vrf_argv(), "trace"], capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == trace.EXIT_UNAVAILABLE, done
    assert done.stdout == ""
    assert "apt install " in done.stderr and f"linux-headers-{RELEASE}" in done.stderr, done.stderr
    assert f"/lib/modules/{RELEASE}/build" in done.stderr, done.stderr


def test_trace_without_bcc_names_python3_bpfcc():
    # -S: no site-packages, so Debian's bcc (dist-packages) is not importable;
    # the package itself comes from this tree.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([SYSTEM_PY, "-S", "-m", "pam_vrf", "trace", "--user", "root"],
                          capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert done.returncode == trace.EXIT_UNAVAILABLE, done
    assert "python3-bpfcc" in done.stderr and "import bcc failed" in done.stderr, done.stderr


RULE = {"deny": ["inet6", "inet:dgram:udp"], "mark": None, "priority": None, "plain": True}
PROGRAM = Program.of_fields(RULE)


def _member(path):
    """A sleeping process in cgroup `path` (so that a Conflict can arise)."""
    def enter():
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    return subprocess.Popen(["sleep", "600"], preexec_fn=enter)


@pytest.mark.root
def test_source_is_recorded_but_not_part_of_the_rule(sandbox_cgroup, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (bpf, cgroups)")
    path = os.path.join(sandbox_cgroup, "vrf", "lo")
    os.makedirs(path)
    state = tmp_path / "attachments.json"
    att = Attachments(str(state))
    sleeper = _member(path)
    try:
        first = att.attach(path, "lo", PROGRAM, 1, "/etc/security/vrf.conf:3")
        # Another login under an equal rule written on another line: same program, no Conflict;
        # the latest line is the one named.
        assert att.attach(path, "lo", Program.of_fields(dict(RULE)), 1, "/etc/security/vrf.conf:9") == first
        assert att.entries[path].source == "/etc/security/vrf.conf:9"
        with pytest.raises(Conflict):
            att.attach(path, "lo", Program.of_fields(dict(RULE, deny=["inet6"])), 1, "/etc/security/vrf.conf:9")
        att.flush()
        saved = json.loads(state.read_text())
        assert saved[path]["source"] == "/etc/security/vrf.conf:9" and saved[path]["rule"] == RULE

        # What trace reads from it: the entry for the cgroup and for one below it.
        st = trace.State(str(state))
        assert st.entry_for(path)[1]["source"] == "/etc/security/vrf.conf:9"
        assert st.entry_for(os.path.join(path, "child"))[0] == path
        assert st.entry_for(sandbox_cgroup) == (None, None)

        # A state file from before the source was recorded loads (source None).
        del saved[path]["source"]
        state.write_text(json.dumps(saved))
        old = Attachments(str(state))
        try:
            assert old.entries[path].rule == PROGRAM and old.entries[path].source is None
            old.attach(path, "lo", PROGRAM, 1, "/etc/security/vrf.conf:4")     # the same rule: no Conflict
            assert old.entries[path].source == "/etc/security/vrf.conf:4"
        finally:
            for fd, _ in list(old._fds.values()):
                os.close(fd)
    finally:
        sleeper.kill()
        sleeper.wait()
        for fd, _ in list(att._fds.values()):
            os.close(fd)


def test_refusal_names_the_deny_item_and_the_rules_line():
    entry = {"vrf": "mgmt", "rule": RULE, "ifindex": 5, "source": "/etc/security/vrf.conf:3"}
    words, fields = trace.verdict(-1, 10, 2, 17, 0, entry, str)
    assert words == "refused deny=inet6 rule=/etc/security/vrf.conf:3"
    assert fields == {"verdict": "refused", "errno": 1, "deny": "inet6", "rule": "/etc/security/vrf.conf:3"}
    assert trace.verdict(-1, 2, 2, 17, 0, entry, str)[0] == \
        "refused deny=inet:dgram:udp rule=/etc/security/vrf.conf:3"
    # Not one of the rule's items: some other program refused it.
    assert trace.verdict(-1, 2, 1, 6, 0, entry, str)[0].startswith("refused by no deny item")
    assert trace.verdict(-1, 2, 1, 6, 0, None, str)[0] == \
        "refused (no pam-vrf rule recorded for this cgroup)"
    assert trace.verdict(-1, 10, 1, 6, 0, dict(entry, source=None), str)[0] == \
        "refused deny=inet6 rule=unknown"
    assert trace.verdict(0, 2, 1, 6, 7, entry, lambda i: f"dev{i}")[0] == "bound dev7"
    assert trace.verdict(0, 2, 1, 6, 0, entry, str)[0] == "unbound"
    assert trace.socket_text(10, 2, 17) == "inet6/dgram/udp" and trace.socket_text(2, 3, 99) == "inet/raw/99"


@pytest.mark.root
def test_lines_and_json_lines(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (the cgroup2 mount for cgroup ids)")
    state = tmp_path / "attachments.json"
    state.write_text(json.dumps({"/x/vrf/mgmt": {"vrf": "mgmt", "rule": RULE, "ifindex": 5,
                                                 "source": "/etc/security/vrf.conf:7"}}))
    event = {"time": 1700000000.25, "pid": 42, "uid": 0, "user": "root", "comm": "curl", "vrf": "mgmt",
             "cgroup": "/x/vrf/mgmt", "family": 10, "type": 1, "protocol": 6, "ret": -1, "bound_dev_if": 0}
    for as_json in (False, True):
        out = io.StringIO()
        tracer = trace.Tracer(argparse.Namespace(state=str(state), json=as_json, user=None, vrf=None), out)
        try:
            tracer._emit(event, tracer.state.entry_for("/x/vrf/mgmt/deeper")[1])
        finally:
            tracer.stop()
        if as_json:
            assert json.loads(out.getvalue()) == {
                "time": 1700000000.25, "pid": 42, "uid": 0, "user": "root", "comm": "curl", "vrf": "mgmt",
                "cgroup": "/x/vrf/mgmt", "socket": "inet6/stream/tcp", "verdict": "refused", "errno": 1,
                "deny": "inet6", "rule": "/etc/security/vrf.conf:7"}
        else:
            assert re.fullmatch(r"\d\d:\d\d:\d\d\.250 pid=42 user=root comm=curl vrf=mgmt inet6/stream/tcp "
                                r"refused deny=inet6 rule=/etc/security/vrf.conf:7\n", out.getvalue()), out.getvalue()


@pytest.mark.root
def test_names_a_user_chose_cannot_reach_roots_terminal_or_forge_fields(tmp_path):
    """comm (prctl), cgroup names in a delegated tree (user@UID.service) and
    user names are a user's choice: a line prints them escaped, and a VRF
    name the helper did not record, in a cgroup root did not make, says whose
    cgroup it is."""
    if os.geteuid() != 0:
        pytest.skip("needs root (the cgroup2 mount for cgroup ids)")
    hostile = "\x1b]0;pwn\x07 vrf=mgmt\x9b\udcff"
    event = {"time": 1700000000.25, "pid": 42, "uid": 1000, "user": "u\nx", "comm": hostile, "vrf": hostile,
             "cgroup": "/x/vrf/" + hostile, "family": 2, "type": 2, "protocol": 17, "ret": 0,
             "bound_dev_if": 0, "made_by_uid": 1000}
    out = io.StringIO()
    tracer = trace.Tracer(argparse.Namespace(state=str(tmp_path / "none.json"), json=False, user=None, vrf=None),
                          out)
    try:
        tracer._emit(event, None)
    finally:
        tracer.stop()
    line = out.getvalue()
    assert line.count("\n") == 1 and line.isascii() and all(c.isprintable() for c in line.rstrip("\n")), line
    assert " comm=\\x1b]0;pwn\\x07\\x20vrf=mgmt\\x9b\\udcff " in line, line
    assert " vrf=\\x1b]0;pwn\\x07\\x20vrf=mgmt\\x9b\\udcff(cgroup-of-uid-1000) " in line, line
    assert " user=u\\x0ax " in line and line.endswith(" unbound\n"), line
    assert line.count(" vrf=") == 1


@pytest.mark.root
def test_cgroups_of_root_and_of_the_helpers_user_are_trusted(tmp_path):
    """The helper (its own user, owner of its state directory) makes session
    VRF cgroups before writing them down: their names need no owner mark."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    state_dir = tmp_path / "helper"
    state_dir.mkdir()
    os.chown(state_dir, 4242, 4242)
    tracer = trace.Tracer(argparse.Namespace(state=str(state_dir / "attachments.json"), json=False, user=None,
                                             vrf=None), io.StringIO())
    try:
        assert tracer.trusted_uids == {0, 4242}
    finally:
        tracer.stop()


@pytest.mark.root
def test_a_cgroup_gone_before_its_event_is_not_searched_for(sandbox_cgroup):
    """A user making and removing cgroups in a loop must not make the tracer
    walk the whole tree for each socket: a gone cgroup id maps to None."""
    gone = os.path.join(sandbox_cgroup, "gone")
    os.mkdir(gone)
    ident = os.stat(gone).st_ino
    os.rmdir(gone)
    paths = trace.CgroupPaths()
    try:
        paths._by_walk = None               # calling it would fail the test
        assert paths.path(ident) is None
    finally:
        paths.close()


def test_denied_by_is_the_first_matching_item():
    items = sockspec.parse_deny("dgram,inet6,*:stream:mptcp")
    assert sockspec.denied_by(items, 10, 2, 17).text == "dgram"         # order as in the program
    assert sockspec.denied_by(items, 10, 1, 6).text == "inet6"
    assert sockspec.denied_by(items, 2, 1, 262).text == "*:stream:mptcp"
    assert sockspec.denied_by(items, 2, 1, 6) is None
    assert sockspec.denied_by((), 2, 1, 6) is None


@pytest.mark.root
def test_cgroup_ids_map_to_their_directories(sandbox_cgroup):
    paths = trace.CgroupPaths()
    try:
        inside = os.path.join(sandbox_cgroup, "vrf", "x")
        os.makedirs(inside)
        ident = os.stat(inside).st_ino         # cgroup2: the directory's inode number is the cgroup id
        assert paths.path(ident) == inside
        assert paths._by_walk(ident) == inside
        assert trace.vrf_of_path(inside) == "x" and trace.vrf_of_path(sandbox_cgroup) is None
        assert trace.vrf_of_path(inside + "/deeper") == "x"
        assert trace.vrf_of_path(os.path.join(sandbox_cgroup, "vrf", "")) == "default"
        assert trace.vrf_of_path(os.path.join(sandbox_cgroup, "vrf")) == "default"    # iproute2's default VRF
    finally:
        paths.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
