"""Helpers of tests/vm/test_vm_names.py: DNS servers and an apt repository
behind the lab peers, the two resolver set-ups of a Debian host, and scripts
run inside a placed ssh login. Not a test module.

The lab (vmlib): 10.99.0.2 is mgmt-peer through VRF mgmt and prod-peer
through the default VRF. Both peers run a dnsmasq on 10.99.0.2:53 that
answers WHERE with a different address (ANSWERS), so an answer names the path
its query took; only mgmt-peer knows REPO and serves the apt repository
(HTTP on 10.99.0.2:HTTP_PORT). Everything here is a context manager that
puts the machine back as it was, also when the test fails.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile

from testlab.run import stop_process
import vmlib
from vmlib import PY, run, wait_until


PEER_ADDR = "10.99.0.2"
REPO = "pvtest-repo.lab"
WHERE = "pvtest-where.lab"
ANSWERS = {"mgmt-peer": "10.99.0.77", "prod-peer": "10.99.0.88"}
RECORDS = {"mgmt-peer": [(REPO, PEER_ADDR), (WHERE, ANSWERS["mgmt-peer"])],
           "prod-peer": [(WHERE, ANSWERS["prod-peer"])]}
HTTP_PORT = 8080
PACKAGE = "pvtest-pkg"
PACKAGE_FILE = f"/usr/share/{PACKAGE}/hello"
RESOLV = "/etc/resolv.conf"
NSSWITCH = "/etc/nsswitch.conf"
SOURCES = "/etc/apt/sources.list.d/pvtest.list"
STUB = "127.0.0.53"
STUB_TARGET = "../run/systemd/resolve/stub-resolv.conf"
VARLINK = "/run/systemd/resolve/io.systemd.Resolve"
RESOLVED = "systemd-resolved.service"
PLAIN_HOSTS = "hosts:          files dns"
RESOLVE_HOSTS = "hosts:          files resolve [!UNAVAIL=return] dns"
# apt only looks at our source (the image's deb.debian.org has no network).
APT_OPTS = (f"-o Dir::Etc::SourceList={SOURCES} -o Dir::Etc::SourceParts=- "
            "-o APT::Get::List-Cleanup=0 -o Acquire::Retries=0")
APT_UPDATE = f"apt-get {APT_OPTS} update"
APT_INSTALL = f"DEBIAN_FRONTEND=noninteractive apt-get {APT_OPTS} install -y --no-install-recommends {PACKAGE}"
DNS_PROBE = f"{PY} -c 'import sys; from pam_vrf.doctor import resolver; print(resolver.probe(sys.argv[1:]))'"


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


# --- the servers behind the peers ----------------------------------------------------

def _answers(peer, address):
    code = ("import sys; from pam_vrf.doctor import resolver; "
            "sys.exit(resolver.probe([sys.argv[1]])[sys.argv[1]] != 'reachable')")
    prefix = ["ip", "netns", "exec", peer] if peer else []
    return run(*prefix, PY, "-c", code, address, check=False, cwd="/").returncode == 0


@contextlib.contextmanager
def dns_server(peer, address, records):
    """dnsmasq in namespace `peer` (None: this one) on address:53 with `records`
    [(name, ip)] only (no upstream, no /etc/hosts). Yields the path of its query log."""
    fd, log = tempfile.mkstemp(prefix=f"pvtest-dnsmasq-{peer}-", suffix=".log")
    pidfile = f"/run/pvtest-dnsmasq-{peer}-{address}.pid"
    proc = None
    try:
        argv = (["ip", "netns", "exec", peer] if peer else []) + ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                "--no-resolv", "--no-hosts", "--bind-interfaces", f"--listen-address={address}",
                f"--pid-file={pidfile}", "--user=nobody", "--group=nogroup", "--log-queries",
                "--log-facility=-"] + [f"--host-record={name},{ip}" for name, ip in records]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd)

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"dnsmasq in {peer} exited {proc.returncode}: {read(log)}")
            return _answers(peer, address)
        wait_until(f"dnsmasq in {peer} on {address}", up, timeout=30, interval=0.5)
        yield log
    finally:
        if proc is not None:
            stop_process(proc, 10)
        os.close(fd)
        for path in (log, pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


@contextlib.contextmanager
def dns_servers():
    """Both peers' dnsmasq on 10.99.0.2 (RECORDS). Yields {peer: query log path}."""
    with dns_server("mgmt-peer", PEER_ADDR, RECORDS["mgmt-peer"]) as mgmt, \
            dns_server("prod-peer", PEER_ADDR, RECORDS["prod-peer"]) as prod:
        yield {"mgmt-peer": mgmt, "prod-peer": prod}


def queries(log, name):
    """dnsmasq's query lines for `name` in `log` (from the lines after `start`)."""
    return [line for line in read(log).splitlines() if f"] {name} from " in line and "query[" in line]


@contextlib.contextmanager
def apt_repository():
    """A flat apt repository holding PACKAGE (dpkg-deb + apt-ftparchive), served
    by python3 -m http.server on 10.99.0.2:HTTP_PORT in mgmt-peer only.
    Yields the path of the server's request log."""
    top = tempfile.mkdtemp(prefix="pvtest-repo-")
    os.chmod(top, 0o755)
    server = None
    try:
        build, repo = os.path.join(top, "build"), os.path.join(top, "repo")
        os.makedirs(os.path.join(build, "DEBIAN"))
        os.makedirs(os.path.join(build, os.path.dirname(PACKAGE_FILE).lstrip("/")))
        os.makedirs(repo)
        with open(os.path.join(build, "DEBIAN", "control"), "w") as f:
            f.write(f"Package: {PACKAGE}\nVersion: 1.0\nArchitecture: all\nMaintainer: pam-vrf tests <root@localhost>\n"
                    "Description: pam-vrf VM test package (tests/vm/test_vm_names.py)\n")
        with open(os.path.join(build, PACKAGE_FILE.lstrip("/")), "w") as f:
            f.write("installed from the repository behind mgmt-peer\n")
        run("dpkg-deb", "--root-owner-group", "--build", build, os.path.join(repo, f"{PACKAGE}_1.0_all.deb"))
        with open(os.path.join(repo, "Packages"), "w") as f:
            subprocess.run(["apt-ftparchive", "packages", "."], cwd=repo, stdout=f, check=True)
        with open(os.path.join(top, "Release"), "w") as f:
            subprocess.run(["apt-ftparchive", "release", "."], cwd=repo, stdout=f, check=True)
        shutil.move(os.path.join(top, "Release"), os.path.join(repo, "Release"))
        log = os.path.join(top, "http.log")
        with open(log, "w") as f:
            server = subprocess.Popen(["ip", "netns", "exec", "mgmt-peer", PY, "-m", "http.server", str(HTTP_PORT),
                                       "--bind", PEER_ADDR, "--directory", repo],
                                      stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)

        def up():
            if server.poll() is not None:
                raise AssertionError(f"http.server exited {server.returncode}: {read(log)}")
            return run("ip", "netns", "exec", "mgmt-peer", "curl", "-sf", "-o", "/dev/null",
                       f"http://{PEER_ADDR}:{HTTP_PORT}/Release", check=False).returncode == 0
        wait_until("the apt repository's HTTP server in mgmt-peer", up, timeout=30, interval=0.5)
        yield log
    finally:
        if server is not None:
            stop_process(server, 10)
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def apt_source():
    """SOURCES names the repository by name (so apt resolves it); afterwards the
    source, its lists, the downloaded .deb and the package are gone."""
    with open(SOURCES, "w") as f:
        f.write(f"deb [trusted=yes] http://{REPO}:{HTTP_PORT}/ ./\n")
    try:
        yield
    finally:
        run("dpkg", "--purge", PACKAGE, check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOURCES)
        for directory in ("/var/lib/apt/lists", "/var/lib/apt/lists/partial", "/var/cache/apt/archives",
                          "/var/cache/apt/archives/partial"):
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(directory):
                    if name.startswith(REPO) or name.startswith(f"{PACKAGE}_"):
                        os.unlink(os.path.join(directory, name))


# --- resolver set-ups -----------------------------------------------------------------

@contextlib.contextmanager
def files_kept(*paths):
    """Each path (a file, a symlink, or nothing) is put back as it was."""
    saved = []
    for path in paths:
        if os.path.islink(path):
            saved.append((path, "link", os.readlink(path)))
        elif os.path.exists(path):
            saved.append((path, "file", (read(path), os.stat(path).st_mode & 0o7777)))
        else:
            saved.append((path, "none", None))
    try:
        yield
    finally:
        for path, kind, what in saved:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if kind == "link":
                os.symlink(what, path)
            elif kind == "file":
                with open(path, "w") as f:
                    f.write(what[0])
                os.chmod(path, what[1])


def write_resolv_conf(text):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(RESOLV)
    with open(RESOLV, "w") as f:
        f.write(text)


def set_hosts_line(line):
    lines = read(NSSWITCH).splitlines()
    lines = [line if old.startswith("hosts:") else old for old in lines]
    if line not in lines:
        lines.append(line)
    with open(NSSWITCH, "w") as f:
        f.write("\n".join(lines) + "\n")


@contextlib.contextmanager
def plain_resolver(*servers):
    """Set-up (a): resolv.conf names `servers`, nsswitch `hosts: files dns`."""
    with files_kept(RESOLV, NSSWITCH):
        write_resolv_conf("# tests/vm/test_vm_names.py (temporary)\n"
                          + "".join(f"nameserver {s}\n" for s in servers or [PEER_ADDR]))
        set_hosts_line(PLAIN_HOSTS)
        yield


def resolved_active():
    return run("systemctl", "is-active", "-q", RESOLVED, check=False).returncode == 0


@contextlib.contextmanager
def resolved_resolver():
    """Set-up (b), as a Debian host with systemd-resolved and libnss-resolve has
    it: resolved running, resolv.conf -> its stub file (nameserver 127.0.0.53),
    nsswitch `hosts: files resolve [!UNAVAIL=return] dns`. Per-link settings made
    meanwhile (resolvectl) are reverted; resolved is stopped again if it was."""
    was_active = resolved_active()
    with files_kept(RESOLV, NSSWITCH):
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(RESOLV)
            os.symlink(STUB_TARGET, RESOLV)
            set_hosts_line(RESOLVE_HOSTS)
            run("systemctl", "start", RESOLVED)
            wait_until("systemd-resolved's varlink socket and stub file",
                       lambda: os.path.exists(VARLINK) and os.path.exists(RESOLV), timeout=60)
            yield
        finally:
            for link in ("veth-mgmt", "veth-prod"):
                run("resolvectl", "revert", link, check=False)
            if not was_active:
                run("systemctl", "stop", RESOLVED, check=False)


def link_dns(link, server=PEER_ADDR, domain="~lab"):
    """resolved: `server` is `link`'s DNS server, for names under `domain` (runtime
    only: reverted by resolved_resolver())."""
    run("resolvectl", "dns", link, server)
    run("resolvectl", "domain", link, domain)


# --- a placed login running a script ----------------------------------------------------

MARK = "@@pvtest"


def placed_script(user, steps, timeout=900):
    """One ssh login of `user` running `steps` [(name, shell text)] in order, each
    in a subshell with stdin from /dev/null and stderr into stdout. Returns
    {name: (exit status, output)}, plus "session": (0, "CGROUP IDENTIFY") where
    CGROUP is the login shell's cgroup and IDENTIFY `ip vrf identify $$`."""
    lines = [f'echo "{MARK} session"; echo "$(grep ^0:: /proc/$$/cgroup | cut -c4-) $(ip vrf identify $$)"; '
             f'echo "{MARK} rc 0"']
    for name, text in steps:
        assert "\n" not in name and name != "session"
        # (the echo: output without a final newline, e.g. curl -w, still ends its line)
        lines.append(f'echo "{MARK} {name}"; ( {text} ) </dev/null 2>&1; rc=$?; echo; echo "{MARK} rc $rc"')
    proc = vmlib.ssh(user, "\n".join(lines), check=False, timeout=timeout)
    out, name, text = {}, None, []
    for line in proc.stdout.splitlines():
        if line.startswith(f"{MARK} rc ") and name is not None:
            out[name] = (int(line.split()[-1]), "\n".join(text).strip("\n"))
            name, text = None, []
        elif line.startswith(f"{MARK} "):
            name, text = line[len(MARK) + 1:], []
        elif name is not None:
            text.append(line)
    if "session" not in out:
        raise AssertionError(f"ssh {user}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return out


def report(title, out):
    """Print what a placed script saw (pytest -s: the evidence in pytest.log)."""
    print(f"\n===== {title}")
    for name, (rc, text) in out.items():
        print(f"--- {name} (exit {rc})")
        if text:
            print(text)
