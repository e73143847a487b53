"""What tests/vm/test_vm_upgrade.py needs to upgrade, downgrade, remove and
purge the package on the test VM while logins arrive (not a test module:
tests/vm/vm_*.py are helpers).

- The package as installed: the CI image installs the `make deb` of this tree
  from /var/cache/pam-vrf-test (vagrant/provision.sh). NEXT is that same
  build with a bumped version, repacked here with dpkg-deb (the VM has no
  build tools): Debian version VERSION+upgrade1 and pam_vrf.__version__
  likewise, so the helper's start line says which code runs.
- apt-get as an operator runs it (local .deb files; the VM has no network and
  needs none: the dependencies are installed).
- LoginStream: an ssh login every 0.5 s in the background, each reporting
  the cgroup of its shell; Pinger: tests/vm/vm_pinger.py, root.sock every
  0.1 s as a login asks it.
- What a placed session keeps: the programs attached to its cgroup (bpftool),
  the listening socket behind root.sock (its inode).

Nothing here imports pam_vrf: the package may be removed while it runs.
"""

import contextlib
import glob
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmlib  # noqa: E402
from vmlib import PY, run  # noqa: E402

PKG = "pam-vrf"
CACHE = "/var/cache/pam-vrf-test"
PINGER = os.path.join(vmlib.HERE, "vm_pinger.py")
INIT_PY = "usr/lib/python3/dist-packages/pam_vrf/__init__.py"
ENV = {"PATH": vmlib.SYSTEM_PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
# The VM's results directory (vagrant/ci/vm-run-tests): figures for the host.
RESULTS_DIR = "/run/pam-vrf-vm-results"


def installed_version():
    """The installed version of the package, or None (not installed / only its config files)."""
    out = run("dpkg-query", "-W", "-f=${Status}\t${Version}", PKG, check=False).stdout
    status, _, version = out.partition("\t")
    return version if status.endswith(" installed") else None


def package_status():
    return run("dpkg-query", "-W", "-f=${Status}", PKG, check=False).stdout.strip() or "unknown"


def original_deb():
    """The .deb the image installed, or None (a Vagrant box: `make install`)."""
    debs = sorted(glob.glob(f"{CACHE}/{PKG}_*.deb"))
    return debs[-1] if debs else None


def deb_version(deb):
    return run("dpkg-deb", "-f", deb, "Version").stdout.strip()


def build_next(deb, directory, suffix="+upgrade1"):
    """`deb` with version VERSION+SUFFIX (control, md5sums, changelog,
    pam_vrf.__version__): the next release of the same tree. Returns its path."""
    root = os.path.join(directory, "root")
    run("dpkg-deb", "-R", deb, root)
    control = os.path.join(root, "DEBIAN/control")
    with open(control) as f:
        text = f.read()
    version = re.search(r"^Version: (\S+)$", text, re.M).group(1)
    new = version + suffix
    with open(control, "w") as f:
        f.write(text.replace(f"Version: {version}\n", f"Version: {new}\n"))
    init = os.path.join(root, INIT_PY)
    with open(init) as f:
        code = f.read()
    py_version = re.search(r'^__version__ = "([^"]+)"$', code, re.M).group(1)
    with open(init, "w") as f:
        f.write(code.replace(f'__version__ = "{py_version}"', f'__version__ = "{py_version}{suffix}"'))
    changelog = os.path.join(root, "usr/share/doc/pam-vrf/changelog.Debian.gz")
    with gzip.open(changelog, "rt") as f:
        old = f.read()
    with gzip.open(changelog, "wt") as f:
        f.write(f"pam-vrf ({new}) UNRELEASED; urgency=medium\n\n  * tests/vm/test_vm_upgrade.py: "
                f"the next release.\n\n -- pam-vrf tests <tests@example.org>  "
                f"{time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\n\n" + old)
    _rehash(root, (INIT_PY, "usr/share/doc/pam-vrf/changelog.Debian.gz"))
    out = os.path.join(directory, os.path.basename(deb).replace(f"_{version}_", f"_{new}_"))
    run("dpkg-deb", "--root-owner-group", "-b", root, out, timeout=300)
    return out, new, py_version + suffix


def _rehash(root, paths):
    md5sums = os.path.join(root, "DEBIAN/md5sums")
    with open(md5sums) as f:
        lines = f.read().splitlines()
    sums = {}
    for path in paths:
        with open(os.path.join(root, path), "rb") as f:
            sums[path] = hashlib.md5(f.read()).hexdigest()
    with open(md5sums, "w") as f:
        for line in lines:
            digest, path = line.split(None, 1)
            f.write(f"{sums.get(path, digest)}  {path}\n")


def apt(*args, timeout=1200):
    """apt-get as an operator runs it; returns (CompletedProcess, seconds).
    The timeout is the machine's, not the product's: with the host at load
    30 (several TCG VMs on 2 cores) unpacking and byte-compiling the package
    under a stream of logins took more than 600 s."""
    t0 = time.monotonic()
    proc = subprocess.run(["apt-get", "-y", "-q", "--no-install-recommends",
                           "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
                           *args], capture_output=True, text=True, timeout=timeout, env=ENV,
                          stdin=subprocess.DEVNULL, cwd="/")
    assert proc.returncode == 0, f"apt-get {' '.join(args)} -> {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc, time.monotonic() - t0


# --- logins arriving -------------------------------------------------------------

CGROUP_CMD = "sed -n 's/^0:://p' /proc/$$/cgroup"


class LoginStream:
    """An ssh login of `user` every `every` seconds until stop(), while fewer
    than `in_flight` are under way; each prints the cgroup of its shell.
    .results: [{start, seconds, rc, cgroup, error}] (start: seconds since the
    stream began, on time.monotonic() - .t0).

    Why the cap: a login costs the TCG VM seconds of CPU (key exchange, sshd,
    logind; ~10 s each on a busy 2-core host), so a login every 0.5 s piles
    up without end and none completes (measured: 324 connections in 12 min,
    no session). The cap keeps logins arriving all the time at the rate the
    VM serves; the pinger (vm_pinger.py) asks root.sock every 0.1 s."""

    def __init__(self, user, every=0.5, in_flight=3):
        self.user, self.every, self.in_flight = user, every, in_flight
        self.results, self._threads = [], []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.t0 = time.monotonic()
        self._launcher = threading.Thread(target=self._launch, daemon=True)
        self._launcher.start()

    def now(self):
        return time.monotonic() - self.t0

    def _launch(self):
        while not self._stop.is_set():
            if sum(t.is_alive() for t in self._threads) < self.in_flight:
                t = threading.Thread(target=self._login, daemon=True)
                t.start()
                self._threads.append(t)
            self._stop.wait(self.every)

    def done(self, since, until=None):
        """Logins that started at `since` or later (and ended by `until`): finished so far."""
        with self._lock:
            return [r for r in self.results if r["start"] >= since
                    and (until is None or r["start"] + r["seconds"] <= until)]

    def _login(self):
        start = self.now()
        try:
            proc = subprocess.run(vmlib.ssh_argv(self.user, CGROUP_CMD), capture_output=True, text=True,
                                  timeout=150, stdin=subprocess.DEVNULL)
            result = {"rc": proc.returncode, "cgroup": proc.stdout.strip(), "error": proc.stderr.strip()[-300:]}
        except subprocess.TimeoutExpired:
            result = {"rc": None, "cgroup": "", "error": "no answer within 150 s"}
        result.update(start=round(start, 3), seconds=round(self.now() - start, 3))
        with self._lock:
            self.results.append(result)

    def stop(self):
        self._stop.set()
        self._launcher.join()
        for t in self._threads:
            t.join(timeout=200)
        return sorted(self.results, key=lambda r: r["start"])


def placed(result, vrf=vmlib.VRF):
    return result["rc"] == 0 and result["cgroup"].endswith(f"/vrf/{vrf}")


def unplaced(result):
    return result["rc"] == 0 and "/vrf/" not in result["cgroup"] and result["cgroup"] != ""


class Pinger:
    """tests/vm/vm_pinger.py in the background; stop() returns its attempts."""

    def __init__(self, every=0.1):
        self.proc = subprocess.Popen([PY, PINGER, "--every", str(every)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd="/")
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self):
        out, _ = self.proc.communicate(timeout=90)        # closes stdin: the pinger's end
        return json.loads(out)


@contextlib.contextmanager
def traffic(user, every=0.5):
    """LoginStream and Pinger together; yields a dict that gets "logins" and
    "pings" when the block ends (also when it fails: for the message)."""
    got = {}
    pinger = Pinger()
    stream = LoginStream(user, every)
    got["stream"] = stream
    try:
        yield got
    finally:
        got["logins"] = stream.stop()
        got["pings"] = pinger.stop()


def summary(logins, pings):
    """A few lines about what logins and pings met (for messages and the results file)."""
    out = [f"{len(logins)} logins: {sum(placed(r) for r in logins)} placed, "
           f"{sum(unplaced(r) for r in logins)} unplaced, {sum(r['rc'] != 0 for r in logins)} failed; "
           f"slowest {max((r['seconds'] for r in logins), default=0):.1f} s"]
    bad = [r for r in logins if not placed(r)]
    out += [f"  login at {r['start']:.1f} s: rc {r['rc']} cgroup {r['cgroup']!r} {r['error']!r}" for r in bad[:12]]
    kinds = {}
    for _, outcome, _ in pings:
        kinds[outcome] = kinds.get(outcome, 0) + 1
    out.append(f"{len(pings)} pings of root.sock: {kinds}; slowest "
               f"{max((p[2] for p in pings), default=0):.1f} s")
    out += [f"  ping at {p[0]:.1f} s: {p[1]} after {p[2]:.2f} s" for p in pings if p[1] != "ok"][:12]
    return out


def record(name, data):
    """Figures for the host (the VM's results directory, when there is one)."""
    if os.path.isdir(RESULTS_DIR):
        with open(os.path.join(RESULTS_DIR, f"upgrade-{name}.json"), "w") as f:
            json.dump(data, f, indent=1)


# --- what sessions keep --------------------------------------------------------------

GUARDS = ("cgroup_inet_sock_create", "cgroup_inet_egress", "cgroup_setsockopt")


def attached(cgroup_dir):
    """{attach type: [program names]} on one cgroup directory (bpftool)."""
    out = json.loads(run("bpftool", "-j", "cgroup", "show", cgroup_dir).stdout or "[]")
    kinds = {}
    for p in out:
        kinds.setdefault(p.get("attach_type"), []).append(p.get("name", ""))
    return kinds


def missing_guards(cgroup_dir):
    """The attach types of GUARDS that `cgroup_dir` lacks."""
    kinds = attached(cgroup_dir)
    return [k for k in GUARDS if not kinds.get(k)]


def listener_inode(path=vmlib.HELPER_ROOT_SOCKET):
    """The inode of the listening socket bound at `path` (/proc/net/unix), or None."""
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode [Path]; Flags 00010000: __SO_ACCEPTCON (listening)
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                return int(fields[6])
    return None


def state_paths():
    """The cgroups the helper's state file names, or None without the file."""
    try:
        with open(vmlib.HELPER_STATE) as f:
            return set(json.load(f))
    except FileNotFoundError:
        return None


def profile_enabled():
    """pam_vrf.so in common-session (the pam-auth-update profile)."""
    with open("/etc/pam.d/common-session") as f:
        return any("pam_vrf.so" in line and not line.lstrip().startswith("#") for line in f)


def helper_start_line(mark):
    """The helper's "pam-vrf-helper VERSION serving …" line after `mark`, or None."""
    return next((e["MESSAGE"] for e in vmlib.journal(mark, SYSLOG_IDENTIFIER=vmlib.HELPER_IDENT)
                 if " serving " in str(e.get("MESSAGE"))), None)


@contextlib.contextmanager
def scratch():
    with tempfile.TemporaryDirectory(prefix="pam-vrf-upgrade.") as d:
        yield d
