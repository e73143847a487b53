"""Shared helpers of the VM tests (tests/vm/test_vm_*.py; imported by name:
there is no conftest.py in tests/vm, see test_smoke.py).

The machine is the one vagrant/provision.sh makes: VRF `mgmt` (table 10),
logind, the pam-auth-update profile `pam-vrf` enabled (pam_vrf.so after
pam_systemd in common-session, and in common-session-noninteractive: sshd on
port 22, su, cron and atd sessions are placed), the helper under its systemd
units (helper.sock, root.sock, the service), cron and atd, users op1 (netops:
placed in mgmt) and op2 (not placed), a test ssh key for them and root, and
the lab: veth-mgmt (in mgmt) to namespace mgmt-peer and veth-prod (default
VRF) to prod-peer, both peers owning 10.99.0.2 / fd00:99::2.

Every helper that changes the machine is a context manager that puts it back
on the way out, also when the test fails: users, groups, vrf.conf, the
helper's units, VRF devices.

What is not particular to the VM (running commands, waiting, ending a
user's processes, removing users and groups) is testlab's, the lab kit
the host tests, the benchmarks and the demo share (testlab/__init__.py at
the repository root, which is /vagrant in the VM).
"""

import contextlib
import json
import os
import pwd
import select
import shlex
import socket
import subprocess
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(os.path.dirname(HERE)) not in sys.path:     # run as a script (bench_p*.py)
    sys.path.append(os.path.dirname(os.path.dirname(HERE)))
from testlab import run as lab  # noqa: E402
from testlab.users import kill_user_processes, remove_group, remove_user  # noqa: E402
VM_MARKER = "/etc/pam-vrf-test-vm"
vm_only = pytest.mark.skipif(not os.path.exists(VM_MARKER),
                             reason=f"not the pam-vrf test VM ({VM_MARKER} missing): see vagrant/README.md")


def release():
    """The VM's Debian codename (VERSION_CODENAME of /etc/os-release): bookworm, trixie."""
    try:
        with open("/etc/os-release") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return ""
    return fields.get("VERSION_CODENAME", "").strip('"')


def only_on(codename, why):
    """Skip unless the VM runs Debian `codename`; `why` says what only that release has."""
    return pytest.mark.skipif(release() != codename, reason=f"{codename} only ({why}); this VM: {release() or '?'}")


PY = "/usr/bin/python3"
PROBE = os.path.join(HERE, "vm_probe.py")
RESPONDER = os.path.join(HERE, "vm_responder.py")
KEY = "/etc/pam-vrf-test/id_ed25519"
VRF, VRF_TABLE = "mgmt", 10
VRF_CONF = "/etc/security/vrf.conf"
# The CI image installs the Debian package; a Vagrant box `make install`.
PAM_VRF = next((p for p in ("/usr/bin/pam-vrf", "/usr/local/bin/pam-vrf") if os.path.exists(p)),
               "/usr/bin/pam-vrf")
PAM_VRF_HELPER = next((p for p in ("/usr/sbin/pam-vrf-helper", "/usr/local/sbin/pam-vrf-helper")
                       if os.path.exists(p)), "/usr/sbin/pam-vrf-helper")
HELPER_SERVICE = "pam-vrf-helper.service"
# Stopped together: a socket left listening would start the service again.
HELPER_UNITS = ("pam-vrf-helper.socket", "pam-vrf-helper-root.socket", HELPER_SERVICE)
HELPER_SOCKET = "/run/pam-vrf/helper.sock"
HELPER_ROOT_SOCKET = "/run/pam-vrf/root.sock"
HELPER_IDENT = "pam-vrf-helper"     # syslog ident of the helper: every verdict
PAM_IDENT = "pam_vrf"               # the PAM entries' own lines (no helper: the offline decider)
PAM_LINE = "session [success=ok session_err=bad default=ignore]"
PAM_PYTHON_ENTRY = "/usr/lib/pam-vrf/pam_vrf.py"
PAM_MODULE = "/usr/lib/x86_64-linux-gnu/security/pam_vrf.so"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HELPER_STATE = "/run/pam-vrf-helper/attachments.json"
PEERS = {"mgmt": "mgmt-peer", "default": "prod-peer"}
CAP_DAC_OVERRIDE, CAP_NET_ADMIN, CAP_BPF = 1, 12, 39


def run(*argv, check=True, timeout=60, **kw):
    return lab.sh(*argv, check=check, timeout=timeout, **kw)


def wait_until(what, predicate, timeout=30, interval=0.2):
    """Poll `predicate` until it returns something true; returns that, or fails naming `what`."""
    return lab.wait_until(what, predicate, timeout=timeout, interval=interval)


def cgroup_mount():
    from pam_vrf import cgroup      # installed in the VM by provision.sh
    return cgroup.mount_point()


def procs(directory):
    """The pids in a cgroup directory (not its children)."""
    with open(os.path.join(directory, "cgroup.procs")) as f:
        return set(map(int, f.read().split()))


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_of(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        return [line.strip()[3:] for line in f if line.startswith("0::")][0]


# --- ssh logins ------------------------------------------------------------------

def ssh_argv(user, command, port=22):
    return ["ssh", "-F", "/dev/null", "-i", KEY, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=60",
            "-p", str(port), f"{user}@127.0.0.1", command]


def ssh(user, command, check=True, timeout=120, port=22):
    proc = subprocess.run(ssh_argv(user, command, port), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, f"ssh {user}@127.0.0.1 {command!r} -> {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc


SHELL_INFO = 'echo "shell=$$ identify=$(ip vrf identify $$)"'


def _shell_info(line):
    fields = dict(word.split("=", 1) for word in line.split())
    return int(fields["shell"]), fields.get("identify", "")


def probe(user, *flags, check=True, port=22):
    """Log in over ssh; returns the probe's JSON (vm_probe.py) plus "shell" (the
    login shell's pid) and "identify" (`ip vrf identify $$` in that shell).
    With check=False a failed login returns the CompletedProcess."""
    proc = ssh(user, f"{SHELL_INFO}; {PY} {PROBE} {' '.join(flags)}", check=check, port=port)
    if proc.returncode != 0:
        return proc
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    result["shell"], result["identify"] = _shell_info(lines[-2])
    return result


class Login:
    """An ssh login running `command`, kept open: read its output line by line
    while it runs; close() ends it (closes its stdin, waits)."""

    def __init__(self, user, command, port=22):
        self.proc = subprocess.Popen(ssh_argv(user, command, port), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._buf = b""

    def readline(self, timeout=90):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line from the ssh session within {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                self.proc.wait(timeout=10)
                raise AssertionError(f"ssh session ended (exit {self.proc.returncode}): "
                                     f"{self.proc.stderr.read().decode(errors='replace')}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def sections(self, until):
        """Lines grouped under '== NAME' headers, up to the header `until`: {NAME: [lines]}."""
        out, name = {}, None
        while True:
            line = self.readline()
            if line.startswith("== "):
                name = line[3:].strip()
                if name == until:
                    return out
                out[name] = []
            elif name is not None:
                out[name].append(line)

    def send(self, line):
        """Write a line to the session's stdin (a script reading it goes on)."""
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Session(Login):
    """A login whose shell reports itself, runs `setup`, then the probe
    (vm_probe.py --wait): once at login (.first), again at every again()."""

    def __init__(self, user, *flags, setup="", port=22):
        super().__init__(user, f"{SHELL_INFO}\n{setup}\nexec {PY} {PROBE} --wait {' '.join(flags)}", port)
        try:
            self.shell, self.identify = _shell_info(self.readline())
            self.first = json.loads(self.readline())
        except BaseException:
            self.close()
            raise

    def again(self):
        self.proc.stdin.write(b"again\n")
        self.proc.stdin.flush()
        return json.loads(self.readline())


def session_of(pid):
    """The logind session id of a process, from its cgroup (…/session-N.scope/…)."""
    for part in cgroup_of(pid).split("/"):
        if part.startswith("session-") and part.endswith(".scope"):
            return part[len("session-"):-len(".scope")]
    raise AssertionError(f"pid {pid} is in no session scope: {cgroup_of(pid)}")


def sessions_of(user):
    """The user's logind sessions. Not the user manager's own session (class
    manager: systemd >= 256, Debian 13), which is no login."""
    out = run("loginctl", "list-sessions", "--no-legend", check=False).stdout
    ids = [line.split()[0] for line in out.splitlines() if len(line.split()) >= 3 and line.split()[2] == user]
    return [i for i in ids if not run("loginctl", "show-session", i, "-p", "Class", "--value",
                                      check=False).stdout.strip().startswith("manager")]


def logind_forgot(uid, timeout=90):
    """Wait until logind has no record of uid. It keeps one per uid for a while,
    with the name it had: a reused uid would be checked for the old name's linger
    file, and its manager stopped as it starts."""
    wait_until(f"logind to forget uid {uid}",
               lambda: run("loginctl", "show-user", str(uid), check=False).returncode != 0, timeout=timeout)


def systemd_version():
    return int(run("systemctl", "--version").stdout.split()[1])


# --- users, groups, vrf.conf ----------------------------------------------------------

def tag():
    return uuid.uuid4().hex[:5]


@contextlib.contextmanager
def group(prefix="pvg"):
    name = f"{prefix}{tag()}"
    run("groupadd", name)
    try:
        yield name
    finally:
        remove_group(name)


def _end_user(name):
    """Log the user out everywhere and end their processes (user@.service too)."""
    run("loginctl", "terminate-user", name, check=False)
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    run("systemctl", "stop", f"user@{uid}.service", check=False)
    kill_user_processes(uid)


@contextlib.contextmanager
def user(*groups, prefix="pvu"):
    """A throwaway user (home, bash, the test key) in `groups`; removed afterwards."""
    name = f"{prefix}{tag()}"
    argv = ["useradd", "--create-home", "--shell", "/bin/bash"]
    if groups:
        argv += ["--groups", ",".join(groups)]
    run(*argv, name)
    try:
        home = pwd.getpwnam(name).pw_dir
        os.makedirs(f"{home}/.ssh", mode=0o700)
        with open(f"{KEY}.pub") as src, open(f"{home}/.ssh/authorized_keys", "w") as dst:
            dst.write(src.read())
        run("chown", "-R", f"{name}:", f"{home}/.ssh")
        yield name
    finally:
        _end_user(name)
        remove_user(name, remove_home=True)


@contextlib.contextmanager
def vrf_conf(*rules):
    """Put `rules` in front of /etc/security/vrf.conf (first match wins); restore it after.
    Yields {rule: "FILE:LINE"}, where each rule is (the helper logs it so)."""
    with open(VRF_CONF) as f:
        original = f.read()
    with file_replaced(VRF_CONF, "# tests/vm (temporary)\n" + "".join(r + "\n" for r in rules) + original):
        run(PAM_VRF, "check")
        yield {r: f"{VRF_CONF}:{n}" for n, r in enumerate(rules, start=2)}


@contextlib.contextmanager
def file_replaced(path, text, mode=None):
    """`path` holds `text` (unchecked: it may be broken on purpose) until the
    block ends; then what was there before, with its mode (or no file at all)."""
    try:
        with open(path) as f:
            original = f.read()
        original_mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        original, original_mode = None, None
    try:
        with open(path, "w") as f:
            f.write(text)
        if mode is not None:
            os.chmod(path, mode)
        yield path
    finally:
        if original is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            with open(path, "w") as f:
                f.write(original)
            os.chmod(path, original_mode)


@contextlib.contextmanager
def password(user, secret=None):
    """`user` has a password (a random one unless given) until the block ends;
    then its shadow entry's password field is what it was. Yields the password."""
    secret = secret or f"pv-{uuid.uuid4().hex}"
    before = run("getent", "shadow", user).stdout.split(":")[1]
    run("chpasswd", input=f"{user}:{secret}\n")
    try:
        yield secret
    finally:
        run("usermod", "-p", before, user)


# --- a second sshd under a PAM service of its own ------------------------------------------

def pam_stack_without_pam_vrf(extra_session_lines=()):
    """/etc/pam.d/sshd with its `@include common-session` written out minus the
    profile's pam_vrf.so line, then `extra_session_lines` at the end (after
    pam_systemd): a stack in which nothing else of pam-vrf runs."""
    with open("/etc/pam.d/sshd") as f:
        sshd = f.read().splitlines()
    with open("/etc/pam.d/common-session") as f:
        common = [line for line in f.read().splitlines() if "pam_vrf.so" not in line]
    out = []
    for line in sshd:
        if line.split()[:2] == ["@include", "common-session"]:
            out += common
        else:
            out.append(line)
    assert not [line for line in out if "pam_vrf" in line and not line.lstrip().startswith("#")], out
    return "\n".join(out + list(extra_session_lines)) + "\n"


@contextlib.contextmanager
def sshd_service(name, pam_stack, port):
    """sshd listening on 127.0.0.1:`port` under the PAM service `name`, whose
    stack is `pam_stack` (/etc/pam.d/NAME). OpenSSH 9.2 (bookworm) takes the
    service from the name it is started as (a symlink NAME -> /usr/sbin/sshd);
    10.0 (trixie) always says sshd unless told PAMServiceName=NAME, an option
    9.2 refuses. Everything goes afterwards."""
    link, stack = f"/usr/local/sbin/{name}", f"/etc/pam.d/{name}"
    assert not os.path.lexists(link) and not os.path.exists(stack), f"{name} exists already"
    proc = None
    try:
        with open(stack, "w") as f:
            f.write(pam_stack)
        os.symlink("/usr/sbin/sshd", link)
        service = ["-o", f"PAMServiceName={name}"]
        if run(link, "-t", "-f", "/dev/null", *service, check=False).returncode != 0:
            service = []
        proc = subprocess.Popen([link, "-D", "-p", str(port), "-o", "ListenAddress=127.0.0.1",
                                 "-o", f"PidFile=/run/{name}.pid", *service], env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
                                stdin=subprocess.DEVNULL, start_new_session=True)

        def listening():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                return c.recv(64).startswith(b"SSH-")
            return False
        wait_until(f"{name} to listen on port {port}", listening, timeout=60, interval=0.5)
        yield port
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for path in (link, stack, f"/run/{name}.pid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# --- journal ---------------------------------------------------------------------------

def journal_mark():
    out = run("journalctl", "-n", "0", "--show-cursor", "-q", check=False).stdout
    for line in out.splitlines():
        if line.startswith("-- cursor: "):
            return line[len("-- cursor: "):]
    raise AssertionError(f"no journal cursor: {out!r}")


def journal(mark, **fields):
    """Journal entries after `mark` (journal_mark()) whose fields have the given
    values (e.g. SYSLOG_IDENTIFIER="pam_vrf"): a list of dicts (journalctl -o json).

    Filtered here, not with journalctl matches: systemd 252's journalctl
    --after-cursor with a match skips the first matching entry."""
    out = run("journalctl", "--no-pager", "-q", "-o", "json", f"--after-cursor={mark}", check=False).stdout
    entries = []
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry.get("MESSAGE"), list):          # non-UTF-8: bytes
            entry["MESSAGE"] = bytes(entry["MESSAGE"]).decode(errors="replace")
        if all(str(entry.get(k)) == str(v) for k, v in fields.items()):
            entries.append(entry)
    return entries


def wait_journal(mark, words, timeout=15, **fields):
    """The first journal entry after `mark` with `fields` whose MESSAGE contains all of `words`."""
    def find():
        return next((e for e in journal(mark, **fields) if all(w in str(e.get("MESSAGE")) for w in words)), None)
    try:
        return wait_until(f"a journal entry {fields} with {words}", find, timeout=timeout)
    except AssertionError as e:
        tail = "\n".join(str(x.get("MESSAGE")) for x in journal(mark, **fields)[-30:])
        raise AssertionError(f"{e}; journal after the mark ({fields}):\n{tail}") from None


# --- the helper -------------------------------------------------------------------------

def helper_pid():
    return int(run("systemctl", "show", "-p", "MainPID", "--value", HELPER_SERVICE).stdout.strip() or 0)


def helper_ping(socket_path=HELPER_SOCKET):
    """True if the helper answers on its socket (and on root.sock beside it)."""
    code = ("import sys; from pam_vrf import client, protocol\n"
            f"ok = all(client.request({{'op': 'ping'}}, p, timeout=5).get('ok') for p in "
            f"({socket_path!r}, protocol.root_socket({socket_path!r})))\n"
            "sys.exit(0 if ok else 1)")
    return run(PY, "-c", code, check=False, cwd="/").returncode == 0


def helper_up():
    run("systemctl", "start", *HELPER_UNITS)
    wait_until("pam-vrf-helper to answer", helper_ping, timeout=60)


@contextlib.contextmanager
def helper_stopped():
    run("systemctl", "stop", *HELPER_UNITS)
    try:
        yield
    finally:
        helper_up()


# --- BPF ---------------------------------------------------------------------------------

def sock_programs():
    """Loaded BPF_PROG_TYPE_CGROUP_SOCK programs: {id: name}."""
    progs = json.loads(run("bpftool", "-j", "prog", "show").stdout or "[]")
    return {p["id"]: p.get("name", "") for p in progs if p.get("type") == "cgroup_sock"}


def sock_create_attachments():
    """Programs attached at BPF_CGROUP_INET_SOCK_CREATE: {cgroup dir: [(id, name, flags)]}."""
    tree = json.loads(run("bpftool", "-j", "cgroup", "tree", cgroup_mount()).stdout or "[]")
    out = {}
    for entry in tree:
        progs = [(p["id"], p.get("name", ""), p.get("attach_flags", "")) for p in entry["programs"]
                 if p.get("attach_type") == "cgroup_inet_sock_create"]
        if progs:
            out[entry["cgroup"]] = progs
    return out


# --- cgroups --------------------------------------------------------------------------------

def vrf_cgroups(top="user.slice"):
    """Every …/vrf/NAME cgroup directory below `top` (relative to the cgroup2
    mount), except those below this test process's own cgroup (in the Vagrant
    box pytest runs in a login session, and `ip vrf exec` makes some there)."""
    mount = cgroup_mount()
    own = mount + cgroup_of(os.getpid()).split("/vrf", 1)[0].rstrip("/") + "/"
    found = []
    for here, dirs, _ in os.walk(os.path.join(mount, top)):
        if os.path.basename(here) == "vrf" and not (here + "/").startswith(own):
            found += [os.path.join(here, d) for d in dirs]
    return found


# --- the lab ---------------------------------------------------------------------------------

@contextlib.contextmanager
def responders():
    """Both peers answer TCP and UDP port 7000 (v4 and v6) with their name."""
    procs = []
    try:
        for peer in PEERS.values():
            p = subprocess.Popen(["ip", "netns", "exec", peer, PY, RESPONDER, peer],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().strip() == "ready", f"responder in {peer} did not start"
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stdout.close()


def ask_peers(*prefix):
    """Who answers on every path, run with `prefix` (e.g. ip vrf exec mgmt): probe --traffic."""
    return json.loads(run(*prefix, PY, PROBE, "--traffic", cwd="/").stdout)["peers"]


def lab_problems():
    """What is wrong with the lab (empty: as provisioned). Needs responders()."""
    problems = []
    link = run("ip", "-d", "link", "show", VRF, check=False).stdout
    if f"vrf table {VRF_TABLE}" not in link:
        problems.append(f"{VRF} is not a VRF with table {VRF_TABLE}: {link!r}")
    veth = run("ip", "-d", "link", "show", "veth-mgmt", check=False).stdout
    if f"master {VRF}" not in veth:
        problems.append(f"veth-mgmt is not in {VRF}: {veth!r}")
    addrs = run("ip", "addr", "show", "veth-mgmt", check=False).stdout
    for a in ("10.99.0.1/24", "fd00:99::1/64"):
        if a not in addrs:
            problems.append(f"veth-mgmt lacks {a}")
    if not problems:
        for prefix, peer in ((("ip", "vrf", "exec", VRF), "mgmt-peer"), ((), "prod-peer")):
            got = ask_peers(*prefix)
            if set(got.values()) != {peer}:
                problems.append(f"{' '.join(prefix) or 'default VRF'}: expected {peer} everywhere, got {got}")
    return problems


def wait_lab_ok(timeout=30):
    last = []

    def ok():
        last[:] = lab_problems()
        return not last
    try:
        wait_until("the lab to be as provisioned", ok, timeout=timeout, interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}: {last}") from None


def q(text):
    return shlex.quote(text)


# -- shared by the test modules (no conftest.py in tests/vm: see test_smoke.py) --

SOCKETS = ("tcp4", "udp4", "tcp6", "udp6")


def ifindex(dev):
    return json.loads(run("ip", "-j", "link", "show", "dev", dev).stdout)[0]["ifindex"]


@pytest.fixture(scope="module")
def peers():
    """The lab peers answering with their names (import this fixture by name)."""
    with responders():
        yield


def write_results(out_dir, name, result, text):
    """A benchmark's figures: NAME.json (all of them), NAME.txt and stdout (the lines)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out_dir, f"{name}.txt"), "w") as f:
        f.write("\n".join(text) + "\n")
    print("\n".join(text))
