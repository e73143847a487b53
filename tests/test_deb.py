"""`make deb`: the Debian package, built once, inspected, linted, then
installed, used and purged in a throwaway copy-on-write view of this host.

The view is an overlayfs with lowerdir=/ and its upper and work layers on a
tmpfs, all inside private mount and pid namespaces (`unshare --mount --pid`,
kept open by a sleep that this module starts and kills); commands run there
through `nsenter` + `chroot`. Every write (dpkg database, /etc, users) lands in the
tmpfs and vanishes with the namespace, so this host is never changed. What
a `make install` (other tests) left on the host is removed inside the view
first, so the package installs as on a fresh machine.
"""

import glob
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from testlab.run import REPO, sh, uid_tag

pytestmark = [pytest.mark.root, pytest.mark.slow]


PKG = "pam-vrf"
MULTIARCH = sh("dpkg-architecture", "-qDEB_HOST_MULTIARCH").stdout.strip()
ARCH = sh("dpkg-architecture", "-qDEB_HOST_ARCH").stdout.strip()
VERSION = sh("dpkg-parsechangelog", "-l", os.path.join(REPO, "debian/changelog"), "-S", "Version").stdout.strip()
DEB_NAME = f"{PKG}_{VERSION}_{ARCH}.deb"

# What a host needs, at Debian's paths (the Makefile's install with debian/rules' variables).
EXPECTED_FILES = [
    "usr/bin/pam-vrf",
    "usr/sbin/pam-vrf-helper",
    f"lib/{MULTIARCH}/security/pam_vrf.so",        # libpam's module path on bookworm
    "usr/lib/pam-vrf/pam_vrf.py",
    "usr/lib/python3/dist-packages/pam_vrf/__init__.py",
    "usr/lib/python3/dist-packages/pam_vrf/cli.py",
    "usr/lib/python3/dist-packages/pam_vrf/offline.py",
    "usr/lib/python3/dist-packages/pam_vrf/helper/main.py",
    "usr/lib/python3/dist-packages/pam_vrf/bpf/sockprog.py",
    "lib/systemd/system/pam-vrf-helper.service",
    "lib/systemd/system/pam-vrf-helper.socket",
    "lib/systemd/system/pam-vrf-helper-root.socket",
    "usr/lib/sysusers.d/pam-vrf.conf",
    "usr/lib/tmpfiles.d/pam-vrf.conf",
    "usr/share/pam-configs/pam-vrf",
    "usr/share/man/man5/vrf.conf.5.gz",
    "usr/share/man/man8/pam-vrf.8.gz",
    "usr/share/man/man8/pam-vrf-helper.8.gz",
    "usr/share/man/man8/pam_vrf.8.gz",
    "usr/share/doc/pam-vrf/README.md",
    "usr/share/doc/pam-vrf/vrf.conf.sample",
    "usr/share/doc/pam-vrf/copyright",
    "usr/share/doc/pam-vrf/changelog.Debian.gz",
    "etc/security/vrf.conf",
]
# Needed by tests, demos or benchmarks only: never a dependency of the package.
TEST_ONLY = ["pytest", "pamela", "python-pam", "python3-pam", "pamtester", "clang", "llvm", "bpfcc", "bcc",
             "openssh", "vagrant", "libvirt", "qemu", "libpam0g-dev", "gcc", "make", "debhelper", "lintian"]
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
       "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


@pytest.fixture(scope="module")
def deb():
    """`make deb`, once: exactly one dist/pam-vrf_VERSION_ARCH.deb, no build
    product in the checkout."""
    before = set(sh("git", "-C", REPO, "status", "--porcelain", "--ignored", "--untracked-files=all").stdout.splitlines())
    sh("make", "-C", REPO, "deb", timeout=900)
    debs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "dist", f"{PKG}_*.deb")))
    assert debs == [DEB_NAME]
    after = set(sh("git", "-C", REPO, "status", "--porcelain", "--ignored", "--untracked-files=all").stdout.splitlines())
    new = sorted(line for line in after - before if not line.endswith(f"dist/{DEB_NAME}") and "__pycache__" not in line)
    assert not [line for line in new if line[3:].startswith(("debian/", "build/"))], new
    return os.path.join(REPO, "dist", DEB_NAME)


def contents(deb):
    """{path without './': tar listing line} of the package's files."""
    out = sh("dpkg-deb", "-c", deb).stdout
    listing = {}
    for line in out.splitlines():
        path = line.split(None, 5)[5].split(" -> ")[0]
        listing[path[2:].rstrip("/")] = line
    return listing


def member(deb, path):
    return sh("sh", "-c", f"dpkg-deb --fsys-tarfile '{deb}' | tar -xOf - './{path}'").stdout


def test_file_list_has_everything_at_debian_paths(deb):
    listing = contents(deb)
    for path in EXPECTED_FILES:
        assert path in listing and listing[path].startswith("-"), path
    for command in ("usr/bin/pam-vrf", "usr/sbin/pam-vrf-helper"):
        assert listing[command].startswith("-rwxr-xr-x root/root"), listing[command]
        assert member(deb, command).startswith("#!/usr/bin/python3\n")
    assert "usr/sbin/pam-vrf" not in listing                 # a user command: /usr/bin only
    assert not [p for p in listing if p.startswith("usr/local")]
    assert not [p for p in listing if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in listing if p.startswith("etc/pam.d")]   # no PAM stack is shipped
    assert not [p for p in listing if p.endswith(".deb") or "/debian/" in p]

    unit = member(deb, "lib/systemd/system/pam-vrf-helper.service")
    assert "ExecStart=/usr/sbin/pam-vrf-helper " in unit
    assert "file:/usr/share/doc/pam-vrf/README.md" in unit and "@" not in unit.split("[Service]")[0]
    assert member(deb, "usr/share/pam-configs/pam-vrf") == open(os.path.join(REPO, "pam.d/pam-auth-update.pam-vrf")).read()
    assert "Default: no" in member(deb, "usr/share/pam-configs/pam-vrf")
    assert member(deb, "etc/security/vrf.conf") == open(os.path.join(REPO, "pam.d/vrf.conf.sample")).read()


def test_control_fields_and_maintainer_scripts(deb):
    fields = {name: sh("dpkg-deb", "-f", deb, name).stdout.strip()
              for name in ("Package", "Version", "Architecture", "Section", "Priority", "Depends", "Suggests")}
    assert fields["Package"] == PKG and fields["Version"] == VERSION and fields["Architecture"] == ARCH
    assert fields["Section"] == "admin" and fields["Priority"] == "optional"
    depends = [alt.split()[0] for item in fields["Depends"].split(",") for alt in item.split("|")]
    for needed in ("python3", "python3-pyroute2", "iproute2", "libpam-runtime", "adduser", "libpam0g", "libc6"):
        assert needed in depends, fields["Depends"]
    assert "libpam-runtime (>= 1.0.1-6)" in fields["Depends"]
    assert "libpam-python" not in depends and "libpam-python" in fields["Suggests"]
    for word in TEST_ONLY:
        assert not [d for d in depends if word in d], (word, fields["Depends"])
    assert not [d for d in depends if d.startswith("systemd")]     # works where systemd is absent
    with tempfile.TemporaryDirectory() as control:
        sh("dpkg-deb", "-e", deb, control)
        assert open(f"{control}/conffiles").read().split() == ["/etc/security/vrf.conf"]
        postinst = open(f"{control}/postinst").read()
        prerm = open(f"{control}/prerm").read()
        code = [line.strip() for line in postinst.splitlines() if not line.strip().startswith("#")]
        assert "pam-auth-update --package" in code
        # The one --enable: the opt-in a remove kept (debian/pam-vrf.prerm), never a fresh install's.
        assert [line for line in code if "--enable" in line] == ["pam-auth-update --package --enable pam-vrf"]
        assert 'if [ "$1" = configure ] && [ -e /var/lib/pam-vrf/pam-auth-update-enabled ]; then' in code
        assert "pam-auth-update --package --remove pam-vrf" in prerm
        assert "systemd-sysusers" in postinst and "adduser" in postinst
        for unit in ("pam-vrf-helper.service", "pam-vrf-helper.socket", "pam-vrf-helper-root.socket"):
            assert f"deb-systemd-helper enable '{unit}'" in postinst


def test_lintian_reports_no_errors(deb):
    proc = sh("lintian", "--display-info", deb, check=False)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], proc.stdout + proc.stderr


# -- installed in a throwaway view of this host --------------------------------

# Left on the host by `make install` (other tests, a developer): not in the view.
SCRUB = f"""
set -e
if dpkg-query -W -f='${{Status}}' {PKG} 2>/dev/null | grep -q 'ok installed\\|config-files'; then dpkg --purge {PKG}; fi
rm -rf /usr/local/lib/python3*/dist-packages/pam_vrf /usr/lib/pam-vrf /usr/local/bin/pam-vrf /usr/local/sbin/pam-vrf /usr/local/sbin/pam-vrf-helper \
  /usr/lib/{MULTIARCH}/security/pam_vrf.so /lib/{MULTIARCH}/security/pam_vrf.so /usr/share/pam-configs/pam-vrf /etc/security/vrf.conf \
  /usr/local/lib/systemd/system/pam-vrf-helper* /usr/local/lib/sysusers.d/pam-vrf.conf /usr/local/lib/tmpfiles.d/pam-vrf.conf \
  /usr/local/share/man/man5/vrf.conf.5 /usr/local/share/man/man8/pam-vrf.8 /usr/local/share/man/man8/pam-vrf-helper.8 \
  /usr/local/share/man/man8/pam_vrf.8 /usr/local/share/doc/pam-vrf
if getent passwd pam-vrf >/dev/null; then userdel pam-vrf; fi
if getent group pam-vrf >/dev/null; then groupdel pam-vrf; fi
# Freeze the PAM configuration: an opaque copy, so that other tests' files
# coming and going on the host (the lower layer is live) do not show here.
for d in /etc/pam.d /var/lib/pam; do
  cp -a $d $d.frozen && rm -rf $d && mkdir $d && cp -a $d.frozen/. $d/ && rm -rf $d.frozen
done
"""


class View:
    """A copy-on-write view of / in private mount and pid namespaces (the
    latter so that a useradd running on the host right now, whose lock files
    show through the live lower layer, counts as gone there: shadow then
    breaks its stale locks instead of failing)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pam-vrf-debview-")
        self.root = os.path.join(self.dir, "root")
        # The namespaces live as long as this sleep (capped, should we be killed).
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                                        "--kill-child", "sleep", "900"])
        self.pid = None
        for _ in range(250):
            try:
                children = open(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children").read().split()
            except FileNotFoundError:
                children = []
            if children:
                self.pid = int(children[0])
                break
            time.sleep(0.02)
        if not self.pid:
            self.close()
            raise AssertionError("unshare did not start its sleep")
        try:
            self.setup()
        except BaseException:
            self.close()
            raise

    def setup(self):
        d, r = self.dir, self.root
        self.ns(f"""set -e
            mount -t tmpfs -o size=4g,mode=0755 pam-vrf-debview {d}
            mkdir {d}/upper {d}/work {r}
            mount -t overlay pam-vrf-debview -o lowerdir=/,upperdir={d}/upper,workdir={d}/work {r}
            mount -t proc proc {r}/proc
            mount --rbind /dev {r}/dev
            mount --rbind /sys {r}/sys
            mount -t tmpfs -o mode=0755 tmpfs {r}/run
            mount -t tmpfs -o mode=1777 tmpfs {r}/tmp
        """)

    def ns(self, script, check=True):
        """A shell script in the namespaces, outside the chroot (-r: in the
        holder's root, which is not the mount namespace's when this suite
        itself runs in a chroot, as tools/bare-root does)."""
        return sh("nsenter", "-t", self.pid, "-m", "-p", "-r", "sh", "-c", script, check=check, timeout=300)

    def run(self, script, check=True):
        """A shell script as root inside the view."""
        return sh("nsenter", "-t", self.pid, "-m", "-p", "-r", "chroot", self.root,
                  "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in ENV.items()], "/bin/sh", "-c", script,
                  check=check, timeout=300)

    def exists(self, path):
        return self.run(f"test -e '{path}' || test -L '{path}'", check=False).returncode == 0

    def close(self):
        self.holder.kill()              # --kill-child: the sleep, and with it both namespaces, go too
        self.holder.wait()
        for _ in range(250):
            if not self.pid or not os.path.exists(f"/proc/{self.pid}"):
                break
            time.sleep(0.02)
        shutil.rmtree(self.dir, ignore_errors=True)   # only empty directories: the tmpfs went with the namespace


@pytest.fixture
def view(deb):
    v = View()
    try:
        v.run(SCRUB)
        v.ns(f"cp '{deb}' '{v.root}/tmp/{DEB_NAME}'")
        yield v
    finally:
        v.close()


def tree_digest(v, top):
    """{path: sha256} of the regular files below `top` in the view (symlinks by target)."""
    out = v.run(f"find {top} -type f -exec sha256sum {{}} + ; find {top} -type l -printf 'link %l %p\\n'").stdout
    return sorted(out.splitlines())


def apt(v, *args):
    return v.run(f"apt-get -y -q --no-install-recommends {' '.join(args)} 2>&1")


def package_files():
    return [f"/{p}" for p in EXPECTED_FILES]


def test_install_use_and_purge_in_a_throwaway_view(view):
    v = view
    pam_before = tree_digest(v, "/etc/pam.d")
    assert not v.exists("/etc/security/vrf.conf") and v.run("getent passwd pam-vrf", check=False).returncode == 2

    apt(v, "install", f"/tmp/{DEB_NAME}")
    assert v.run(f"dpkg-query -W -f='${{Status}} ${{Version}}' {PKG}").stdout == f"install ok installed {VERSION}"
    for path in package_files():
        assert v.exists(path), path
    assert tree_digest(v, "/etc/pam.d") == pam_before            # installing changes no PAM stack
    user = v.run("getent passwd pam-vrf").stdout.strip().split(":")
    assert user[5:] == ["/", "/usr/sbin/nologin"] and int(user[2]) < 1000, user   # a system user
    assert v.run("getent group pam-vrf").returncode == 0
    # The units are enabled the Debian way (deb-systemd-helper), ready for socket activation.
    for unit in ("sockets.target.wants/pam-vrf-helper.socket", "sockets.target.wants/pam-vrf-helper-root.socket",
                 "multi-user.target.wants/pam-vrf-helper.service"):
        assert v.exists(f"/etc/systemd/system/{unit}"), unit

    # A user with the default login PATH finds the command and uses it.
    name = f"pvdeb{uid_tag()}"
    v.run(f"useradd --create-home --shell /bin/bash {name}")
    as_user = v.run(f"runuser -l {name} -c 'command -v pam-vrf; pam-vrf check; echo \"check=$?\"; "
                    f"pam-vrf identify; echo \"identify=$?\"; "
                    f"python3 -c \"import pam_vrf; print(pam_vrf.__file__)\"' 2>&1")
    lines = as_user.stdout.splitlines()
    assert lines[0] == "/usr/bin/pam-vrf", as_user.stdout
    assert "/etc/security/vrf.conf: OK, 0 rules" in lines and "check=0" in lines, as_user.stdout
    assert "identify=0" in lines, as_user.stdout
    assert lines[-1] == "/usr/lib/python3/dist-packages/pam_vrf/__init__.py", as_user.stdout
    # The helper runs from the package too (as root, it only needs to start up).
    assert "usage" in v.run("pam-vrf-helper --help").stdout.lower()

    # Opting in is the admin's step; removing the package takes the line out again.
    v.run("pam-auth-update --enable pam-vrf")
    for stack in ("common-session", "common-session-noninteractive"):
        assert "pam_vrf.so" in v.run(f"cat /etc/pam.d/{stack}").stdout, stack

    v.run("mkdir -p /run/pam-vrf-helper && echo '{}' > /run/pam-vrf-helper/attachments.json")   # the helper's state
    purge = apt(v, "purge", PKG).stdout
    assert "warning" not in purge, purge
    assert v.run(f"dpkg-query -W -f='${{Status}}' {PKG}", check=False).stdout in ("", "unknown ok not-installed")
    left = [path for path in package_files() if v.exists(path)]
    assert left == []                                             # the untouched vrf.conf too
    for gone in ("/usr/lib/python3/dist-packages/pam_vrf", "/usr/lib/pam-vrf", "/usr/share/doc/pam-vrf",
                 "/run/pam-vrf-helper", "/run/pam-vrf", "/etc/systemd/system/sockets.target.wants/pam-vrf-helper.socket",
                 "/etc/systemd/system/multi-user.target.wants/pam-vrf-helper.service"):
        assert not v.exists(gone), gone
    assert tree_digest(v, "/etc/pam.d") == pam_before            # the prerm took the opted-in line out


def test_upgrade_keeps_opt_in_edited_policy_survives_remove_user_without_sysusers(view):
    v = view
    # A host without systemd-sysusers: the postinst falls back to adduser.
    v.run("for f in /usr/bin/systemd-sysusers /bin/systemd-sysusers; do rm -f $f; done")
    assert v.run("command -v systemd-sysusers", check=False).returncode != 0
    apt(v, "install", f"/tmp/{DEB_NAME}")
    user = v.run("getent passwd pam-vrf").stdout.strip().split(":")
    assert user[5:] == ["/", "/usr/sbin/nologin"] and int(user[2]) < 1000, user

    # An upgrade (the same version again) keeps the admin's opt-in.
    v.run("pam-auth-update --enable pam-vrf")
    v.run(f"dpkg -i /tmp/{DEB_NAME} 2>&1")
    assert "pam_vrf.so" in v.run("cat /etc/pam.d/common-session").stdout

    v.run("echo 'root  -' >> /etc/security/vrf.conf")
    apt(v, "remove", PKG)
    assert "pam_vrf.so" not in v.run("cat /etc/pam.d/common-session").stdout
    assert v.run(f"dpkg-query -W -f='${{Status}}' {PKG}").stdout == "deinstall ok config-files"
    assert v.run("tail -1 /etc/security/vrf.conf").stdout == "root  -\n"   # conffile: the admin's edit stays
    assert [p for p in package_files() if v.exists(p)] == ["/etc/security/vrf.conf"]

    # Installed again after a remove: the opt-in comes back (tests/vm/test_vm_upgrade.py with logins).
    apt(v, "install", f"/tmp/{DEB_NAME}")
    assert "pam_vrf.so" in v.run("cat /etc/pam.d/common-session").stdout
    assert not v.exists("/var/lib/pam-vrf")
    apt(v, "remove", PKG)
    assert v.exists("/var/lib/pam-vrf/pam-auth-update-enabled")

    apt(v, "purge", PKG)
    assert not v.exists("/var/lib/pam-vrf")
    assert not v.exists("/etc/security/vrf.conf")
    # Debian keeps system users on purge (files may still carry the uid).
    assert v.run("getent passwd pam-vrf", check=False).returncode == 0
