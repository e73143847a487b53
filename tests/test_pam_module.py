"""pam_vrf.so, the C session module, through real PAM: pamtester (and, where
the session's own process must be inspected, libpam driven through ctypes)
against throwaway /etc/pam.d/pvt-so<tag> services.

* the build: warning-free with -Werror (gcc and clang), hardened, exports
  nothing but pam_sm_*;
* helper absent: the offline decider (pam_vrf.offline) runs with a fixed
  interpreter and environment, whatever the caller's PATH;
* the exec contract of that slow path, with a recording stand-in interpreter
  compiled in (PAM_VRF_PYTHON): argv, environment, ids, fds, exit codes,
  timeout;
* hostile replies on root.sock (a raw socket server: the attack surface,
  not a mock of the helper) all take the slow path;
* the real helper (helper_factory) for the happy path: placed, alone,
  refused, and a helper that is stopped for a while is waited for.
"""

import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time

import pytest

from testlab.run import PY, REPO, sh, spawn, uid_tag

pytestmark = pytest.mark.root

MODULE = os.path.join(REPO, "pam_module", "pam_vrf.so")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
AUTHPRIV = 10 << 3
ERR, WARNING = 3, 4


# -- building -----------------------------------------------------------------

def compile_command(**make_vars):
    """The Makefile's own compile command for the module (make -n), so a
    variant build uses exactly its flags."""
    argv = ["make", "--no-print-directory", "-s", "-n", "-B", "pam_module/pam_vrf.so"]
    argv += [f"{k}={v}" for k, v in make_vars.items()]
    command = sh(*argv, cwd=REPO).stdout.strip()
    assert command.count(" -o pam_module/pam_vrf.so ") == 1, command
    return command


def build_variant(out, **make_vars):
    """Compile the module to `out` (e.g. with another PYTHON or CC); returns
    what the compiler printed."""
    command = compile_command(**make_vars).replace(" -o pam_module/pam_vrf.so ", f" -o {shlex.quote(out)} ")
    proc = sh("sh", "-c", command, cwd=REPO)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def module():
    sh("make", "--no-print-directory", "all", cwd=REPO)
    return MODULE


@pytest.fixture
def scratch():
    where = tempfile.mkdtemp(prefix="pam-vrf-so-")
    os.chmod(where, 0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def test_build_is_warning_free_hardened_and_exports_only_pam_entry_points(scratch):
    proc = sh("make", "--no-print-directory", "-B", "pam_module/pam_vrf.so", cwd=REPO)
    assert "-Werror" in proc.stdout and "-lpam" in proc.stdout
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stderr
    if shutil.which("clang"):
        out = build_variant(os.path.join(scratch, "clang.so"), CC="clang")
        assert "warning" not in out.lower(), out

    exported = sh("nm", "-D", "--defined-only", MODULE).stdout.split()[2::3]
    assert sorted(exported) == ["pam_sm_close_session", "pam_sm_open_session"], exported
    imported = sh("nm", "-D", "--undefined-only", MODULE).stdout
    assert "__stack_chk_fail" in imported                  # -fstack-protector-strong
    assert "_chk" in imported.replace("__stack_chk_fail", "")   # _FORTIFY_SOURCE
    assert "pam_syslog" in imported and "pam_putenv" in imported
    dynamic = sh("readelf", "-d", MODULE).stdout
    assert "BIND_NOW" in dynamic or "FLAGS_1" in dynamic and "NOW" in dynamic, dynamic
    assert "GNU_RELRO" in sh("readelf", "-lW", MODULE).stdout


# -- PAM services, pamtester ----------------------------------------------------

@pytest.fixture
def pam_service(module):
    """pam_service(args, module=...) -> the name of a fresh /etc/pam.d/pvt-so<tag>
    running the module after pam_permit; removed afterwards."""
    made = []

    def make(args, path=module):
        name = f"pvt-so{uid_tag()}"
        file = f"/etc/pam.d/{name}"
        assert not os.path.exists(file)
        made.append(file)
        with open(file, "w") as f:
            f.write(textwrap.dedent(f"""\
                auth     required  pam_permit.so
                account  required  pam_permit.so
                session  required  pam_permit.so
                session  [success=ok session_err=bad default=ignore] {path} {args}
            """))
        return name

    yield make
    for file in made:
        try:
            os.unlink(file)
        except FileNotFoundError:
            pass


class Result:
    def __init__(self, proc, output, elapsed):
        self.returncode, self.output, self.elapsed = proc.returncode, output, elapsed

    @property
    def opened(self):
        return self.returncode == 0 and "successfully opened a session" in self.output

    def __repr__(self):
        return f"<pamtester exit {self.returncode} after {self.elapsed:.1f}s: {self.output!r}>"


# Like su/sudo: real ids the invoking user's, effective ids 0.
LIKE_SU = ("import os, sys; uid, gid = int(sys.argv[1]), int(sys.argv[2]); os.setgroups([gid]); "
           "os.setresgid(gid, 0, 0); os.setresuid(uid, 0, 0); os.execv(sys.argv[3], sys.argv[4:])")


def pamtester(syslog, service, user, items=(), env=None, preexec=None, pass_fds=(), cwd="/", like_su=None,
              timeout=120, stdin=None):
    """open_session + close_session with a system PATH only (unless env is given);
    like_su=pwent runs it with that user's real ids and effective ids 0."""
    argv = ["pamtester", "-v"]
    for item in items:
        argv += ["-I", item]
    argv = [*argv, service, user, "open_session", "close_session"]
    if like_su:
        argv = [PY, "-I", "-c", LIKE_SU, str(like_su.pw_uid), str(like_su.pw_gid), shutil.which("pamtester"), *argv]
    argv = syslog.wrap(argv)
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env if env is not None else {"PATH": SYSTEM_PATH}, cwd=cwd,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec,
                            pass_fds=pass_fds)
    out, _ = proc.communicate(timeout=timeout)
    result = Result(proc, out.decode(errors="replace"), time.monotonic() - started)
    assert proc.returncode in (0, 1), f"pamtester crashed or was killed: {result}"
    return result


def module_lines(syslog, mark):
    """Lines the C module wrote (pam_syslog: 'pam_vrf(SERVICE:session): ...')."""
    return [line for line in syslog.since(mark) if "pam_vrf(" in line]


def assert_no_raw_controls(lines):
    """In what pam-vrf wrote (the module and the decider; other programs log here too)."""
    for line in (line for line in lines if "pam_vrf(" in line or "pam_vrf[" in line):
        assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in line), repr(line)


@pytest.fixture
def decider(installed):
    """The installed package, with the offline decider the module runs."""
    probe = subprocess.run([PY, "-I", "-c", "import pam_vrf.offline"], cwd="/", capture_output=True,
                           env={"PATH": SYSTEM_PATH})
    assert probe.returncode == 0, f"pam_vrf.offline is not importable by the system python3: {probe.stderr}"


@pytest.fixture
def users(throwaway_user, vrf_conf):
    """A plain and a strict user; their rules name a target that does not exist."""
    plain, strict = throwaway_user(), throwaway_user()
    config = vrf_conf(f"{plain.pw_name}  vtnone  plain\n{strict.pw_name}  vtnone  plain strict\n")
    return plain.pw_name, strict.pw_name, config


# -- helper absent: the offline decider -----------------------------------------

def test_a_user_name_like_an_option_still_meets_its_strict_rule(decider, pam_service, syslog, scratch,
                                                                 vrf_conf):
    """The decider gets the name after `--`: '--help' or '-x' is a name, not an option."""
    config = vrf_conf("*  vtnone  plain strict\n")
    service = pam_service(f"config={config} socket={scratch}/helper.sock")
    for name in ("--help", "-x"):
        mark = syslog.mark()
        result = pamtester(syslog, service, name)
        assert result.returncode == 1 and not result.opened, result
        syslog.wait_for(["pam_vrf[", f"refusing session of user {name} ", "strict rule"], mark)


@pytest.mark.parametrize("socket_state", ["no socket", "nobody listens"])
def test_helper_absent_plain_rule_proceeds_strict_rule_refuses(decider, users, pam_service, syslog,
                                                               scratch, socket_state):
    plain, strict, config = users
    root_sock = os.path.join(scratch, "root.sock")
    if socket_state == "nobody listens":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(root_sock)
        s.close()
        expect = f"helper not running (nothing listens on {root_sock})"
    else:
        expect = f"helper not running (no socket {root_sock})"
    service = pam_service(f"config={config} socket={scratch}/helper.sock")

    mark = syslog.mark()
    result = pamtester(syslog, service, plain)
    assert result.opened, result
    assert result.elapsed < 10, result
    syslog.wait_for(["pam_vrf[", f"user {plain} (service {service}) left unplaced", expect], mark)

    result = pamtester(syslog, service, strict)
    assert result.returncode == 1 and not result.opened, result
    line = syslog.wait_for(["pam_vrf[", f"refusing session of user {strict}", expect], mark)
    assert line.startswith(f"<{AUTHPRIV + ERR}>"), line


def test_unknown_module_arguments_are_logged_and_ignored(users, pam_service, syslog, scratch, vrf_conf):
    """As pam_limits and pam_systemd read theirs (parse_args): an argument it
    does not know is logged at LOG_WARNING and ignored, a path that is not
    absolute at LOG_ERR, and the last of a kind counts."""
    plain, strict, config = users
    alone = vrf_conf("* -\n")
    odd = ["colour=blue", "debugx", "Debug", "config", "socket", "config\x1b[2J=/x"]
    service = pam_service(f"config={alone} socket={scratch}/helper.sock {' '.join(odd)} socket= config={config}")
    mark = syslog.mark()
    assert pamtester(syslog, service, plain).opened
    assert not pamtester(syslog, service, strict).opened         # the last config= counted
    for arg in odd:
        shown = arg.replace("\x1b", "?")
        line = syslog.wait_for([f"pam_vrf({service}:session): ignoring unknown module argument '{shown}'"], mark)
        assert line.startswith(f"<{AUTHPRIV + WARNING}>"), line
    line = syslog.wait_for([f"pam_vrf({service}:session): ignoring 'socket=': not an absolute path"], mark)
    assert line.startswith(f"<{AUTHPRIV + ERR}>"), line
    assert not [line for line in syslog.since(mark) if "asking the offline decider" in line]   # not debug


def test_poisoned_path_and_python_variables_never_reach_the_slow_path(decider, users, pam_service, syslog,
                                                                      scratch):
    """su/sudo run the module with the invoking user's environment: a python3
    first on PATH, PYTHONPATH with a sitecustomize and a fake pam_vrf must
    all be ignored (absolute interpreter, -I, fixed environment)."""
    _, strict, config = users
    marker = os.path.join(scratch, "marker")
    trap = os.path.join(scratch, "trap")
    os.makedirs(os.path.join(trap, "pam_vrf"))
    with open(os.path.join(trap, "python3"), "w") as f:
        f.write(f"#!/bin/sh\necho python3 \"$@\" >> {marker}\nexit 0\n")
    os.chmod(os.path.join(trap, "python3"), 0o755)
    for name in ("sitecustomize.py", "usercustomize.py", "pam_vrf/__init__.py", "pam_vrf/offline.py"):
        with open(os.path.join(trap, name), "w") as f:
            f.write(f"open({marker!r}, 'a').write({name!r} + '\\n')\nraise SystemExit(0)\n")
    for d, dirs, files in os.walk(scratch):
        for name in dirs + files:
            os.chmod(os.path.join(d, name), 0o755)
    service = pam_service(f"config={config} socket={scratch}/helper.sock")
    env = {"PATH": f"{trap}:{SYSTEM_PATH}", "PYTHONPATH": trap, "PYTHONSTARTUP": f"{trap}/sitecustomize.py",
           "PYTHONHOME": trap, "PYTHONUSERBASE": trap, "PYTHONINSPECT": "1", "HOME": trap}

    mark = syslog.mark()
    result = pamtester(syslog, service, strict, env=env, cwd=trap)
    # Refused: the real decider ran (a python3 of the caller's would have said 0).
    assert result.returncode == 1, result
    syslog.wait_for(["pam_vrf[", f"refusing session of user {strict}"], mark)
    assert not os.path.exists(marker), open(marker).read()


# -- the slow path's exec contract, with a recording interpreter compiled in --------

RECORDER = """#!/usr/bin/python3
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass                    # the directory listing itself
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
umask = os.umask(0o777)
os.set_blocking(0, False)
try:
    stdin = "eof" if os.read(0, 1) == b"" else "data"
except BlockingIOError:
    stdin = "open"              # someone could still write to it
with open(os.path.join(here, "record.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "environ": open("/proc/self/environ").read().split("\\0")[:-1],
               "resuid": os.getresuid(), "resgid": os.getresgid(), "groups": os.getgroups(),
               "cwd": os.getcwd(), "fds": fds, "sigblk": int(status["SigBlk"], 16), "umask": umask,
               "stdin": stdin}, f)
mode = open(os.path.join(here, "mode")).read().strip()
if mode == "hang":
    time.sleep(600)
if mode in ("proceed", "refuse"):       # pam_vrf.offline's verdict line
    os.write(1, f"pam_vrf.offline: {mode}\\n".encode())
    sys.exit(0)
sys.exit(int(mode))
"""


@pytest.fixture
def recording_module(scratch):
    """A build of the module whose PAM_VRF_PYTHON is a recording script in
    `scratch`: returns (module path, directory)."""
    path = os.path.join(scratch, "python3")
    with open(path, "w") as f:
        f.write(RECORDER)
    os.chmod(path, 0o755)
    os.mkdir(os.path.join(scratch, "variant"))
    out = os.path.join(scratch, "variant", "pam_vrf.so")     # the file name is what pam_syslog calls it
    build_variant(out, PYTHON=path)
    return out, scratch


def set_mode(where, mode):
    with open(os.path.join(where, "mode"), "w") as f:
        f.write(mode)


def test_slow_path_runs_the_decider_as_root_with_a_fixed_environment(recording_module, pam_service, syslog,
                                                                     throwaway_user, vrf_conf):
    """Invoked like su (real uid the user's, effective uid 0), with a hostile
    environment, a blocked signal, extra fds (one near the file limit) and a
    stdin the caller keeps writable: the decider sees none of it (its fds are
    set up by libpam's pam_modutil_sanitize_helper_fds)."""
    path, where = recording_module
    set_mode(where, "proceed")
    invoker = throwaway_user()
    config = vrf_conf("* -\n")
    service = pam_service(f"config={config} socket={where}/nowhere/helper.sock debug", path=path)
    leak_r, leak_w = os.pipe()
    high = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 10
    os.dup2(leak_w, high)
    callers_stdin = os.readlink(f"/proc/self/fd/{leak_r}")

    def block_signals():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
        os.umask(0)         # the invoker's umask: the decider gets 077, not this

    env = {"PATH": f"{where}:{SYSTEM_PATH}", "PYTHONPATH": where, "LD_LIBRARY_PATH": where, "HOME": where}
    try:
        result = pamtester(syslog, service, "alice", items=("tty=pts/7",), env=env, preexec=block_signals,
                           pass_fds=(leak_w, high), cwd=where, like_su=invoker, stdin=leak_r)
    finally:
        for fd in (leak_r, leak_w, high):
            os.close(fd)
    assert result.opened, result
    record = json.load(open(os.path.join(where, "record.json")))
    assert record["argv"] == ["-I", "-m", "pam_vrf.offline", "--service", service,
                              "--config", config, "--debug",
                              "--reason", f"helper not running (no socket {where}/nowhere/root.sock)",
                              "--", "alice"]
    assert record["environ"] == ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8"]
    assert record["resuid"] == [0, 0, 0] and record["resgid"] == [0, 0, 0] and record["groups"] == []
    assert record["cwd"] == "/"
    # stdout: the pipe the verdict line comes back on; stdin an empty pipe of its own
    assert record["fds"]["2"] == "/dev/null" and record["fds"]["1"].startswith("pipe:"), record["fds"]
    assert record["stdin"] == "eof" and record["fds"]["0"] != callers_stdin
    assert sorted(record["fds"]) == ["0", "1", "2"], record["fds"]
    assert record["sigblk"] == 0
    assert record["umask"] == 0o077


@pytest.mark.parametrize("mode, opened, logged", [
    ("refuse", False, None),                                 # strict rule: the decider logged it
    ("proceed", True, None),
    ("1", True, "failed (exit status 1, no verdict)"),       # Python's status for any crash: not a refusal
    ("0", True, "failed (exit status 0, no verdict)"),       # no verdict line: not a verdict
    ("3", True, "failed (exit status 3, no verdict)"),       # broken decider: never a lockout
    ("missing", True, "failed (exit status 127: cannot execute it, no verdict)"),
])
def test_decider_exit_status_decides(recording_module, pam_service, syslog, mode, opened, logged, scratch):
    path, where = recording_module
    set_mode(where, mode)
    if mode == "missing":
        os.unlink(os.path.join(where, "python3"))
    service = pam_service(f"socket={where}/nowhere/helper.sock", path=path)
    mark = syslog.mark()
    result = pamtester(syslog, service, "alice")
    assert result.opened == opened, result
    if logged:
        line = syslog.wait_for([f"pam_vrf({service}:session): offline decider", logged], mark)
        assert line.startswith(f"<{AUTHPRIV + ERR}>"), line
        syslog.wait_for([f"pam_vrf({service}:session): user alice (service {service}): session left unplaced",
                         "helper not running"], mark)


@pytest.mark.parametrize("closed", [(0, 1), (1,), (2,), (0, 1, 2)])
def test_a_caller_with_closed_standard_fds_cannot_unhook_the_verdict(recording_module, pam_service, syslog,
                                                                     throwaway_user, closed):
    """su run with stdin/stdout closed: the verdict pipe or /dev/null land on
    fds 0-2 in the caller, and a dup2 onto the same number keeps close-on-exec
    (the verdict line would be lost: "could not decide") or clobbers another."""
    path, where = recording_module
    set_mode(where, "refuse")
    service = pam_service(f"socket={where}/nowhere/helper.sock", path=path)

    def close_fds():
        for fd in closed:
            os.close(fd)

    argv = syslog.wrap(["pamtester", service, "alice", "open_session"])
    proc = subprocess.run(argv, env={"PATH": SYSTEM_PATH}, cwd="/", preexec_fn=close_fds, timeout=60,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.returncode == 1, proc           # refused: the verdict line arrived
    record = json.load(open(os.path.join(where, "record.json")))
    assert record["fds"]["2"] == "/dev/null" and record["fds"]["1"].startswith("pipe:"), record["fds"]
    assert record["stdin"] == "eof" and sorted(record["fds"]) == ["0", "1", "2"], record


def test_hanging_decider_is_killed_after_ten_seconds(recording_module, pam_service, syslog):
    path, where = recording_module
    set_mode(where, "hang")
    service = pam_service(f"socket={where}/nowhere/helper.sock", path=path)
    mark = syslog.mark()
    result = pamtester(syslog, service, "alice")
    assert result.opened, result
    assert 9.5 < result.elapsed < 20, result
    syslog.wait_for(["did not finish within 10 s: killed"], mark)
    # Killed and reaped: no python3 of ours is left running.
    assert sh("pgrep", "-f", os.path.join(where, "python3"), check=False).returncode == 1


# -- hostile replies on root.sock: every one takes the slow path -------------------

class RawServer:
    """A bare SOCK_SEQPACKET listener at DIR/root.sock: records each request,
    answers with fixed bytes (None: close without answering), after `delay`."""

    def __init__(self, where, reply, delay=0.0):
        self.path = os.path.join(where, "root.sock")
        self.reply, self.delay, self.requests = reply, delay, []
        self.closing = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(conn.recv(65536))
                if self.closing.wait(self.delay):
                    return
                if self.reply is not None:
                    try:
                        conn.send(self.reply)
                    except OSError:
                        pass

    def close(self):
        self.closing.set()
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def raw_server(scratch):
    servers = []

    def make(reply, delay=0.0):
        servers.append(RawServer(scratch, reply, delay))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


HOSTILE = {
    "garbage": (b"\x00\xff not json", "not a flat JSON object"),
    "empty object": (b"{}", "protocol version is not 2"),
    "array": (b'[{"v":2,"ok":true,"verdict":"alone"}]', "not a flat JSON object"),
    "nested": (b'{"v":2,"ok":true,"verdict":"placed","vrf":{"name":"mgmt"}}', "not a flat JSON object"),
    "nested list": (b'{"v":2,"ok":true,"verdict":"alone","rule":["x"]}', "not a flat JSON object"),
    "trailing bytes": (b'{"v":2,"ok":true,"verdict":"alone"} {}', "not a flat JSON object"),
    "truncated": (b'{"v":2,"ok":true,"verdict":"alo', "not a flat JSON object"),
    "duplicate key": (b'{"v":2,"ok":true,"verdict":"alone","verdict":"placed"}', "not a flat JSON object"),
    "lone surrogate": (b'{"v":2,"ok":true,"verdict":"al\\udc00one"}', "not a flat JSON object"),
    "raw control char": (b'{"v":2,"ok":true,"verdict":"alone","error":"a\nb"}', "not a flat JSON object"),
    "invalid utf-8": (b'{"v":2,"ok":true,"verdict":"alone","error":"\xc0\xaf"}', "not a flat JSON object"),
    "float": (b'{"v":2.0,"ok":true,"verdict":"alone"}', "not a flat JSON object"),
    "ok not boolean": (b'{"v":2,"ok":1,"verdict":"alone"}', "not a flat JSON object"),
    "old version": (b'{"v":1,"ok":true,"verdict":"alone"}', "protocol version is not 2"),
    "ok false": (b'{"v":2,"ok":false,"error":"no \\u00e9\\ud83d\\ude00\\u001b"}',
                 "helper failed: no \\u00e9\\U0001f600?"),           # decoded, logged as escapes and '?'
    "unknown verdict": (b'{"v":2,"ok":true,"verdict":"maybe"}', "bad reply from helper: verdict 'maybe'"),
    "no verdict": (b'{"v":2,"ok":true}', "bad reply from helper: verdict '(none)'"),
    "oversized": (b'{"v":2,"ok":true,"verdict":"alone","pad":"' + b"x" * 5000 + b'"}', "larger than 4096 bytes"),
    "no answer": (None, "helper closed the connection without an answer"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_reply_takes_the_slow_path(decider, users, pam_service, syslog, scratch, raw_server, case):
    reply, reason = HOSTILE[case]
    plain, strict, config = users
    server = raw_server(reply)
    service = pam_service(f"config={config} socket={scratch}/helper.sock debug")

    mark = syslog.mark()
    result = pamtester(syslog, service, plain, items=("tty=pts/9", "rhost=192.0.2.1"))
    assert result.opened, result
    syslog.wait_for(["pam_vrf[", f"user {plain} (service {service}) left unplaced", reason], mark)
    assert json.loads(server.requests[0]) == {"v": 2, "op": "open", "user": plain, "service": service}

    result = pamtester(syslog, service, strict)
    assert result.returncode == 1, result
    syslog.wait_for(["pam_vrf[", f"refusing session of user {strict}", reason], mark)
    assert json.loads(server.requests[1]) == {"v": 2, "op": "open", "user": strict, "service": service}
    assert_no_raw_controls(syslog.since(mark))


def test_a_slow_helper_is_waited_for(decider, users, pam_service, syslog, scratch, raw_server):
    """A busy helper (here: 3 s) is not taken for an absent one."""
    plain, _, config = users
    raw_server(b"late and wrong", delay=3)
    service = pam_service(f"config={config} socket={scratch}/helper.sock")
    mark = syslog.mark()
    result = pamtester(syslog, service, plain)
    assert result.opened and result.elapsed >= 3, result
    syslog.wait_for(["pam_vrf[", f"user {plain}", "bad reply from helper: not a flat JSON object"], mark)


def test_a_silent_helper_is_given_up_after_thirty_seconds(decider, users, pam_service, syslog, scratch,
                                                          raw_server):
    _, strict, config = users
    raw_server(b"never sent", delay=120)
    service = pam_service(f"config={config} socket={scratch}/helper.sock")
    mark = syslog.mark()
    result = pamtester(syslog, service, strict)
    assert result.returncode == 1 and 29 < result.elapsed < 45, result
    syslog.wait_for(["pam_vrf[", f"refusing session of user {strict}", "helper did not answer within 30 s"], mark)


@pytest.mark.parametrize("name, sent", [
    ("evil\x1b[31m\nname\"\\\x7f", True),        # valid UTF-8: sent, escaped
    (b"bad\xff\xfe\x01name", False),              # not UTF-8: never sent
    ("u" * 257, False),                           # too long for the helper (policy.MAX_NAME): never sent
    ("\u00e9" * 256, True),                       # 256 characters in 512 bytes: the helper takes it
    ("\U0001f600" * 257, False),
], ids=["controls", "not UTF-8", "257 ASCII", "256 two-byte", "257 four-byte"])
def test_hostile_user_names_neither_crash_nor_reach_the_log_raw(decider, pam_service, syslog, scratch,
                                                                raw_server, vrf_conf, name, sent):
    server = raw_server(b"garbage")
    config = vrf_conf("* -\n")
    service = pam_service(f"config={config} socket={scratch}/helper.sock debug")
    mark = syslog.mark()
    result = pamtester(syslog, service, name)
    assert result.opened, result
    lines = module_lines(syslog, mark)
    assert lines and any(f"pam_vrf({service}:session): user " in line for line in lines), syslog.since(mark)
    assert_no_raw_controls(syslog.since(mark))
    if sent:
        if name.startswith("evil"):
            assert "evil?[31m?name\"\\?" in "".join(lines), lines
        request = server.requests[0]
        assert not any(b < 0x20 or b == 0x7f for b in request), request
        assert json.loads(request)["user"] == name
    else:
        assert server.requests == []
        assert any("not UTF-8, a user name over 256 characters, or over 4096 bytes" in line for line in lines), lines
        assert not any("\ufffd" in line for line in lines), lines


def test_largest_requests_and_hostile_replies_under_addresssanitizer(decider, pam_service, syslog, scratch,
                                                                        raw_server, vrf_conf):
    """An ASan/UBSan build: the largest requests PAM can make it send (256
    characters of the longest escape or encoding; the limit itself is
    tests/test_wire_fuzz.py's) go whole, and no reply makes it misbehave."""
    libasan = sh("gcc", "-print-file-name=libasan.so").stdout.strip()
    # gcc brings libasan on Debian (install-deps installs gcc): never a skip.
    assert os.path.isabs(libasan) and os.path.exists(libasan), f"gcc finds no libasan.so ({libasan!r})"
    os.mkdir(os.path.join(scratch, "asan"))
    path = os.path.join(scratch, "asan", "pam_vrf.so")
    build_variant(path, CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer")
    server = raw_server(b"garbage")
    service = pam_service(f"config={vrf_conf('* -')} socket={scratch}/helper.sock", path=path)
    env = {"PATH": SYSTEM_PATH, "LD_PRELOAD": libasan, "ASAN_OPTIONS": "detect_leaks=1:exitcode=99",
           "UBSAN_OPTIONS": "halt_on_error=1:exitcode=98"}
    for name in ("\x01" * 256, "\U0001f600" * 256, "\u00e9" * 255 + "\x01"):
        server.requests.clear()
        assert pamtester(syslog, service, name, env=env).opened
        assert [json.loads(r)["user"] for r in server.requests] == [name]
    for reply, _ in HOSTILE.values():
        server.reply = reply
        assert pamtester(syslog, service, "alice", env=env).opened


# -- util-linux su, the setuid client the module exists for -----------------------

def real_su(syslog, scratch, module_args, invoker, target, module=MODULE):
    """/bin/su run by a non-root `invoker` for `target`, with a stack of ours
    bound over /etc/pam.d/su in the private mount namespace syslog.wrap makes
    (the host's file is never touched): pam_permit, then the module."""
    stack = os.path.join(scratch, "su.pam")
    with open(stack, "w") as f:
        f.write("auth required pam_permit.so\naccount required pam_permit.so\nsession required pam_permit.so\n"
                f"session [success=ok session_err=bad default=ignore] {module} {module_args}\n")
    argv = syslog.wrap(["sh", "-c", 'mount --bind "$0" /etc/pam.d/su && exec "$@"', stack,
                        "setpriv", f"--reuid={invoker.pw_uid}", f"--regid={invoker.pw_gid}", "--init-groups",
                        "su", "-s", "/bin/sh", "-c", "echo opened", target])
    proc = subprocess.run(argv, env={"PATH": SYSTEM_PATH}, cwd="/", stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0 and proc.stdout == "opened\n", proc


def test_real_su_sends_user_and_service_and_logs_an_unknown_argument(decider, syslog, scratch, raw_server,
                                                                     throwaway_user):
    server = raw_server(b'{"v":2,"ok":true,"verdict":"alone"}')
    invoker, target = throwaway_user(), throwaway_user()
    mark = syslog.mark()
    opened, proc = real_su(syslog, scratch, f"socket={scratch}/helper.sock colour=blue", invoker, target.pw_name)
    assert opened, proc
    assert [json.loads(r) for r in server.requests] == [{"v": 2, "op": "open", "user": target.pw_name,
                                                        "service": "su"}]
    line = syslog.wait_for(["pam_vrf(su:session): ignoring unknown module argument 'colour=blue'"], mark)
    assert line.startswith(f"<{AUTHPRIV + WARNING}>"), line


@pytest.mark.parametrize("rule, opened", [("plain", True), ("plain strict", False)])
def test_real_su_with_the_helper_down_gets_the_deciders_verdict(decider, syslog, scratch, throwaway_user,
                                                                vrf_conf, rule, opened):
    """The decider runs from inside su (descriptors by pam_modutil_sanitize_helper_fds)
    and its verdict line comes back: a strict rule refuses su, a plain one lets it open."""
    invoker, target = throwaway_user(), throwaway_user()
    config = vrf_conf(f"{target.pw_name}  vtnone  {rule}\n")
    mark = syslog.mark()
    got, proc = real_su(syslog, scratch, f"config={config} socket={scratch}/nowhere/helper.sock", invoker,
                        target.pw_name)
    assert got == opened, proc
    syslog.wait_for(["pam_vrf[", f"user {target.pw_name}", "refusing session" if rule.endswith("strict")
                     else "left unplaced"], mark)


# -- the real helper: the happy path ---------------------------------------------

# libpam through ctypes: open a session for argv[1:3] (service, user) in this
# very process; rc is pam_open_session's.
OPEN_SESSION = textwrap.dedent("""
    import ctypes, json, socket, sys
    service, user = sys.argv[1:3]
    pam = ctypes.CDLL("libpam.so.0")
    CONV = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    class Conv(ctypes.Structure):
        _fields_ = [("conv", CONV), ("appdata", ctypes.c_void_p)]
    conv = Conv(CONV(lambda *args: 19), None)          # PAM_CONV_ERR: nothing may prompt
    handle = ctypes.c_void_p()
    assert pam.pam_start(service.encode(), user.encode(), ctypes.byref(conv), ctypes.byref(handle)) == 0
    rc = pam.pam_open_session(handle, 0)
""")

DRIVER = OPEN_SESSION + textwrap.dedent("""
    pam.pam_getenv.restype = ctypes.c_char_p
    env = pam.pam_getenv(handle, b"PAM_VRF")
    s = socket.socket()
    dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\\0").decode()
    if rc == 0:
        pam.pam_close_session(handle, 0)
    pam.pam_end(handle, rc)
    print(json.dumps({"rc": rc, "env": env and env.decode(), "dev": dev,
                      "cgroup": open("/proc/self/cgroup").read().strip().split("::", 1)[-1]}))
""")


class HelperLab:
    """A netns with a veth target (`plain`: no VRF driver here), the real helper
    inside it, and a PAM service using the module against that helper."""

    def __init__(self, netns, sandbox, syslog, vrf_conf, throwaway_user, helper_factory, pam_service):
        tag = uid_tag()
        self.ns, self.sandbox, self.syslog = netns("m"), sandbox, syslog
        self.target = f"vm{tag}"
        sh("ip", "-n", self.ns, "link", "add", self.target, "type", "veth", "peer", "name", f"vn{tag}")
        sh("ip", "-n", self.ns, "link", "set", self.target, "up")
        self.member, self.loner, self.strict = (throwaway_user().pw_name for _ in range(3))
        self.config = vrf_conf(textwrap.dedent(f"""\
            {self.member}  {self.target}    plain
            {self.strict}  vmnone{tag}  plain strict
            {self.loner}   -
        """))
        self.helper = helper_factory(self.config, netns=self.ns, syslog=syslog)
        self.service = pam_service(f"config={self.config} socket={self.helper.socket} debug")

    def login(self, user):
        """A PAM session opened by a process that reports where it is afterwards."""
        argv = self.syslog.wrap([PY, "-c", DRIVER, self.service, user])
        proc = spawn(argv, netns=self.ns, cgroup_dir=self.sandbox, env={"PATH": SYSTEM_PATH}, cwd="/",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return json.loads(out)

    def pamtester(self, user):
        argv = self.syslog.wrap(["pamtester", "-v", self.service, user, "open_session", "close_session"])
        proc = spawn(argv, netns=self.ns, cgroup_dir=self.sandbox, env={"PATH": SYSTEM_PATH}, cwd="/",
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode in (0, 1), out
        return proc.returncode, out


@pytest.fixture
def helper_lab(netns, sandbox_cgroup, syslog, vrf_conf, throwaway_user, helper_factory, pam_service):
    return HelperLab(netns, sandbox_cgroup, syslog, vrf_conf, throwaway_user, helper_factory, pam_service)


def test_real_helper_places_the_pam_caller_and_sets_pam_vrf(helper_lab):
    lab = helper_lab
    mark = lab.syslog.mark()
    got = lab.login(lab.member)
    assert got["rc"] == 0, got
    assert got["cgroup"].endswith(f"/vrf/{lab.target}"), got
    assert os.path.basename(lab.sandbox) in got["cgroup"], got
    assert got["dev"] == lab.target and got["env"] == lab.target, got
    lab.syslog.wait_for([f"pam_vrf({lab.service}:session): user {lab.member} (service {lab.service}) placed "
                         f"in VRF {lab.target}"], mark)
    assert not [line for line in lab.syslog.since(mark) if "asking the offline decider" in line]

    code, out = lab.pamtester(lab.member)
    assert code == 0 and "successfully opened a session" in out, out


def test_real_helper_alone_and_refused(helper_lab):
    lab = helper_lab
    mark = lab.syslog.mark()
    got = lab.login(lab.loner)
    assert got["rc"] == 0 and got["env"] is None and got["dev"] == "", got
    assert "/vrf/" not in got["cgroup"], got
    lab.syslog.wait_for([f"pam_vrf({lab.service}:session): user {lab.loner} (service {lab.service}) left alone"],
                        mark)

    code, out = lab.pamtester(lab.strict)
    assert code == 1, out
    line = lab.syslog.wait_for([f"pam_vrf({lab.service}:session): session refused: "], mark)
    assert line.startswith(f"<{AUTHPRIV + ERR}>"), line


def test_real_helper_stopped_for_a_while_is_waited_for(helper_lab):
    """SIGSTOP is a busy helper: the login waits and is placed, not taken to the slow path."""
    lab = helper_lab
    os.kill(lab.helper.proc.pid, signal.SIGSTOP)
    try:
        timer = threading.Timer(3, os.kill, (lab.helper.proc.pid, signal.SIGCONT))
        timer.start()
        started = time.monotonic()
        got = lab.login(lab.member)
        assert time.monotonic() - started >= 2.5
    finally:
        timer.join()
        os.kill(lab.helper.proc.pid, signal.SIGCONT)
    assert got["rc"] == 0 and got["dev"] == lab.target and got["env"] == lab.target, got


LIMIT_DRIVER = "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (40, 4000))\n" + OPEN_SESSION + \
    "print(json.dumps({'rc': rc, 'files': resource.getrlimit(resource.RLIMIT_NOFILE)}))\n"


@pytest.mark.parametrize("helper", ["running", "absent"])
def test_the_module_gives_the_session_back_the_callers_file_limit(helper_lab, pam_service, helper):
    """The module lifts its soft file limit to the hard one for its own work
    (an invoker's tight limit must not fail pidfd_open or the decider's pipe)
    and puts the caller's back: the session's processes inherit it."""
    lab = helper_lab
    service = lab.service if helper == "running" else \
        pam_service(f"config={lab.config} socket=/nonexistent/pvt/helper.sock debug")
    proc = spawn([PY, "-c", LIMIT_DRIVER, service, lab.member], netns=lab.ns, cgroup_dir=lab.sandbox,
                 env={"PATH": SYSTEM_PATH}, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"rc": 0, "files": [40, 4000]}, out


# Like su invoked by a hostile user: a tiny address space and file table, an
# idle priority, then real ids the user's and effective ids 0.
HOSTILE_SU = ("import os, resource, sys; uid, gid = int(sys.argv[1]), int(sys.argv[2]); os.nice(19); "
              "resource.setrlimit(resource.RLIMIT_AS, (20_000_000, 20_000_000)); "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (8, 8)); os.setgroups([gid]); "
              "os.setresgid(gid, 0, 0); os.setresuid(uid, 0, 0); os.execv(sys.argv[3], sys.argv[4:])")


def test_the_callers_limits_cannot_break_the_slow_path(decider, users, pam_service, syslog, scratch,
                                                       throwaway_user):
    """Under su/sudo the invoking user sets our rlimits and nice value: a tiny
    address space made the decider fail, and a strict rule went unhonoured. The
    child lifts what root may lift (CAP_SYS_RESOURCE; this sandbox's bounding set
    lacks it), and a setuid caller's session is refused when the decider still
    cannot tell: never a strict rule escaped."""
    plain, strict, config = users
    invoker = throwaway_user()
    service = pam_service(f"config={config} socket={scratch}/helper.sock")
    mark = syslog.mark()
    argv = syslog.wrap([PY, "-I", "-c", HOSTILE_SU, str(invoker.pw_uid), str(invoker.pw_gid),
                        shutil.which("pamtester"), "pamtester", service, strict, "open_session"])
    proc = subprocess.run(argv, env={"PATH": SYSTEM_PATH}, cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "successfully opened" not in proc.stdout + proc.stderr, proc
    syslog.wait_for([f"user {strict}", "refusing session"], mark)


# -- issue 14: a decider that crashes, su/sudo, relative paths, log escaping --------

# Real interpreters that cannot decide: the module's own argv (-I -m pam_vrf.offline ...)
# reaches each wrapper, as PAM_VRF_PYTHON.
BROKEN_DECIDERS = {
    # the package is not where the interpreter looks (site-packages off): "No module named pam_vrf"
    "package missing": 'exec /usr/bin/python3 -S "$@"',
    # a package that fails to import
    "import fails": 'shift 3; cd "$(dirname "$0")/broken-import" && exec /usr/bin/python3 -S -m pam_vrf.offline "$@"',
    # an uncaught exception after half a line
    "exception": 'shift 3; cd "$(dirname "$0")/broken-run" && exec /usr/bin/python3 -S -m pam_vrf.offline "$@"',
    "no interpreter": 'exec /nonexistent/python3 "$@"',
}


@pytest.fixture
def broken_decider(scratch):
    """make(case) -> a module build whose decider is one of BROKEN_DECIDERS."""
    for name, init, offline in (("broken-import", "raise ImportError('cannot import name x')\n", ""),
                                ("broken-run", "", "import os\nos.write(1, b'pam_vrf.offline: proc')\n"
                                                   "raise RuntimeError('boom')\n")):
        os.makedirs(os.path.join(scratch, name, "pam_vrf"))
        with open(os.path.join(scratch, name, "pam_vrf", "__init__.py"), "w") as f:
            f.write(init)
        with open(os.path.join(scratch, name, "pam_vrf", "offline.py"), "w") as f:
            f.write(offline)
    wrapper = os.path.join(scratch, "python3")
    os.mkdir(os.path.join(scratch, "variant"))
    out = os.path.join(scratch, "variant", "pam_vrf.so")
    build_variant(out, PYTHON=wrapper)
    for d, dirs, files in os.walk(scratch):
        for name in dirs + files:
            os.chmod(os.path.join(d, name), 0o755)

    def make(case):
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\n{BROKEN_DECIDERS[case]}\n")
        os.chmod(wrapper, 0o755)
        return out
    return make


@pytest.mark.parametrize("case", sorted(BROKEN_DECIDERS))
def test_a_decider_that_cannot_decide_is_never_taken_for_a_strict_refusal(broken_decider, pam_service, syslog,
                                                                          scratch, vrf_conf, case):
    """Issue 14 item 6: Python exits 1 for a missing package or any uncaught
    exception, and the module took exit status 1 for "a strict rule refuses":
    with the helper down, every login was refused. Now only the decider's
    verdict line counts; without one, root's logins proceed unplaced, logged."""
    path = broken_decider(case)
    config = vrf_conf("*  vtnone  plain strict\n")
    service = pam_service(f"config={config} socket={scratch}/nowhere/helper.sock", path=path)
    mark = syslog.mark()
    result = pamtester(syslog, service, "alice")
    assert result.opened, result
    line = syslog.wait_for([f"pam_vrf({service}:session): offline decider", "no verdict"], mark)
    assert line.startswith(f"<{AUTHPRIV + ERR}>"), line
    syslog.wait_for([f"pam_vrf({service}:session): user alice (service {service}): session left unplaced",
                     "offline decider unusable"], mark)


@pytest.mark.parametrize("caller, policy, opened", [
    ("su", "strict", False),        # the invoker may have broken the decider: a strict rule is not escaped
    ("su", "plain", True),          # no strict rule in the policy: nothing to escape, never a lockout
    ("sudo", "strict", False),      # a client with real uid 0 and PAM_RUSER the invoker (opened before)
    ("sudo", "plain", True),
    ("sudo-root", "strict", True),  # root's own sudo: root's sessions are never refused here
    ("daemon", "strict", True),     # sshd, login: root's logins are never refused here
])
def test_a_broken_decider_refuses_su_and_sudo_only_where_a_strict_rule_may_apply(
        recording_module, pam_service, syslog, throwaway_user, vrf_conf, caller, policy, opened):
    path, where = recording_module
    set_mode(where, "1")            # crashed
    invoker = throwaway_user()
    config = vrf_conf(f"*  vtnone  plain {'strict' if policy == 'strict' else ''}\n")
    service = pam_service(f"config={config} socket={where}/nowhere/helper.sock", path=path)
    items = {"sudo": (f"ruser={invoker.pw_name}",), "sudo-root": ("ruser=root",)}.get(caller, ())
    mark = syslog.mark()
    result = pamtester(syslog, service, "alice", items=items, like_su=invoker if caller == "su" else None)
    assert result.opened == opened, result
    if not opened:
        by = f"uid {invoker.pw_uid}" if caller == "su" else invoker.pw_name
        syslog.wait_for([f"pam_vrf({service}:session): user alice", "refusing session",
                         f"invoked by {by} through su/sudo"], mark)
    else:
        syslog.wait_for([f"pam_vrf({service}:session): user alice", "session left unplaced"], mark)


@pytest.mark.parametrize("arg", ["socket=helper.sock", "socket=sub/helper.sock"])
def test_a_relative_socket_is_refused_not_looked_up_in_the_callers_directory(
        recording_module, pam_service, syslog, scratch, raw_server, arg):
    """Issue 14 item 8: under su the working directory is the invoking user's:
    `socket=helper.sock` connected to ./root.sock, where the user's own server
    could answer "alone" (or anything). Such an argument is ignored and logged."""
    path, where = recording_module
    set_mode(where, "proceed")
    cwd = scratch
    os.makedirs(os.path.join(scratch, "sub"), exist_ok=True)
    servers = [RawServer(scratch, b'{"v":2,"ok":true,"verdict":"alone"}'),
               RawServer(os.path.join(scratch, "sub"), b'{"v":2,"ok":true,"verdict":"alone"}')]
    try:
        service = pam_service(f"{arg} config=vrf.conf", path=path)
        mark = syslog.mark()
        result = pamtester(syslog, service, "alice", cwd=cwd)
        assert result.opened, result
        assert [s.requests for s in servers] == [[], []]
        for bad in (arg, "config=vrf.conf"):
            line = syslog.wait_for([f"pam_vrf({service}:session): ignoring '{bad}': not an absolute path"], mark)
            assert line.startswith(f"<{AUTHPRIV + ERR}>"), line
        record = json.load(open(os.path.join(where, "record.json")))
        assert "--config" not in record["argv"], record
    finally:
        for server in servers:
            server.close()


def test_the_pam_python_entry_refuses_a_relative_socket_too(decider, syslog, scratch, raw_server):
    server = raw_server(b'{"v":2,"ok":true,"verdict":"alone"}')
    name = f"pvt-py{uid_tag()}"
    file = f"/etc/pam.d/{name}"
    with open(file, "w") as f:
        f.write("auth required pam_permit.so\naccount required pam_permit.so\nsession required pam_permit.so\n"
                "session [success=ok session_err=bad default=ignore] pam_python.so /usr/lib/pam-vrf/pam_vrf.py "
                "socket=helper.sock config=vrf.conf\n")
    try:
        mark = syslog.mark()
        result = pamtester(syslog, name, "alice", cwd=scratch)
        assert result.opened, result
        assert server.requests == []
        for bad in ("socket=helper.sock", "config=vrf.conf"):
            line = syslog.wait_for(["pam_vrf[", f"ignoring '{bad}': not an absolute path"], mark)
            assert line.startswith(f"<{AUTHPRIV + ERR}>"), line
    finally:
        os.unlink(file)


# What a terminal or a log viewer acts on, beyond C0: C1 controls (CSI, NEL),
# the line/paragraph separators, bidi marks and overrides, invisible format
# characters (a name that looks like another).
UNSAFE = "\x80\x85\x9b\x9f\xa0\xad\u2028\u2029\u202e\u2066\u200b\u200f\u2060\ufeff"


def test_escape_covers_c1_controls_separators_and_bidi_overrides():
    from pam_vrf.log import escape
    assert escape("a\x9b[2Jb\x85c\u2028d\u2029e\u202ef\x1b\x7f") == \
        "a\\x9b[2Jb\\x85c\\u2028d\\u2029e\\u202ef\\x1b\\x7f"
    for c in UNSAFE + "\udc9b\U000e0001":          # a byte that was not UTF-8; a tag character
        assert c not in escape(f"x{c}y"), repr(c)
    assert escape("x\udc9by\U000e0001") == "x\\udc9by\\U000e0001"
    assert escape("caf\u00e9 \u4e2d \U0001f600") == "caf\u00e9 \u4e2d \U0001f600"


@pytest.mark.parametrize("name", [
    "ev\x9b[31mil",                       # U+009B CSI: a terminal's escape sequence without ESC
    "a\x85Fake: line",                    # U+0085 NEL
    "a\u2028b\u2029c\u202eevil",          # separators, right-to-left override
    "ali\u200bce\ufeff",                  # invisible: looks like "alice"
    b"ov\xe0\x82\x9berlong",              # an overlong U+009B: invalid UTF-8, never decoded into one
    b"half\xc2",                          # a truncated sequence
])
def test_no_c1_control_or_separator_reaches_the_log(decider, pam_service, syslog, scratch, vrf_conf, name):
    """Issue 14 item 8: both the module (pam_syslog) and the decider (log.escape)
    wrote C1 controls and U+2028 raw."""
    config = vrf_conf("*  vtnone  plain\n")
    service = pam_service(f"config={config} socket={scratch}/nowhere/helper.sock debug")
    mark = syslog.mark()
    assert pamtester(syslog, service, name).opened
    lines = syslog.since(mark)
    module = [l for l in lines if f"pam_vrf({service}:session): user " in l]
    decider_lines = [l for l in lines if "pam_vrf[" in l and "left unplaced" in l]
    assert module and decider_lines, lines
    for line in module + decider_lines:
        assert not any(c in line for c in UNSAFE + "\ufffd"), repr(line)
        assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in line), repr(line)


@pytest.mark.parametrize("entry", ["pam_vrf.so", "pam_python"])
def test_the_entries_send_user_and_service_not_what_the_helper_ignores(decider, module, syslog, scratch,
                                                                         raw_server, entry):
    """The helper decides from user and service alone (requests.Handler.open):
    PAM_TTY, PAM_RHOST and PAM_RUSER (never trusted: a root daemon may take it
    from the network) are sent by neither entry."""
    server = raw_server(b'{"v":2,"ok":true,"verdict":"alone"}')
    name = f"pvt-ru{uid_tag()}"
    line = (f"{module}" if entry == "pam_vrf.so" else "pam_python.so /usr/lib/pam-vrf/pam_vrf.py")
    with open(f"/etc/pam.d/{name}", "w") as f:
        f.write("auth required pam_permit.so\naccount required pam_permit.so\nsession required pam_permit.so\n"
                f"session [success=ok session_err=bad default=ignore] {line} socket={scratch}/helper.sock\n")
    try:
        assert pamtester(syslog, name, "alice", items=("ruser=bob", "tty=pts/3", "rhost=192.0.2.1")).opened
        assert pamtester(syslog, name, "alice").opened
    finally:
        os.unlink(f"/etc/pam.d/{name}")
    requests = [json.loads(r) for r in server.requests]
    assert len(requests) == 2 and all(r["user"] == "alice" and r["service"] == name for r in requests), requests
    assert requests == [{"v": 2, "op": "open", "user": "alice", "service": name}] * 2, requests
