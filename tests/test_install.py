"""`make install` / `make uninstall` into a staging root (DESTDIR)."""

import os
import subprocess
import textwrap

import pytest

from testlab.run import PY, REPO, sh

pytestmark = pytest.mark.root


EXPECTED = [
    "usr/lib/pam-vrf/pam_vrf.py",
    "usr/local/bin/pam-vrf",
    "usr/local/sbin/pam-vrf-helper",
    "usr/local/lib/systemd/system/pam-vrf-helper.service",
    "usr/local/lib/systemd/system/pam-vrf-helper.socket",
    "usr/local/lib/systemd/system/pam-vrf-helper-root.socket",
    "usr/local/lib/sysusers.d/pam-vrf.conf",
    "usr/local/lib/tmpfiles.d/pam-vrf.conf",
    "usr/share/pam-configs/pam-vrf",
    "usr/local/share/man/man5/vrf.conf.5",
    "usr/local/share/man/man8/pam-vrf.8",
    "usr/local/share/man/man8/pam-vrf-helper.8",
    "usr/local/share/man/man8/pam_vrf.8",
    "usr/lib/x86_64-linux-gnu/security/pam_vrf.so",
    "etc/security/vrf.conf",
]


def make(target, root):
    return sh("make", "-C", REPO, target, f"DESTDIR={root}", "PYLIBDIR=/pylib")


def test_install_lays_out_everything_and_uninstall_removes_it(tmp_path):
    root = str(tmp_path)
    make("install", root)
    for path in EXPECTED:
        assert os.path.isfile(os.path.join(root, path)), path
    assert os.path.isfile(f"{root}/pylib/pam_vrf/session.py")
    assert os.path.isdir(f"{root}/pylib/pam_vrf/__pycache__")
    for command in ("bin/pam-vrf", "sbin/pam-vrf-helper"):
        assert os.access(f"{root}/usr/local/{command}", os.X_OK)
        assert open(f"{root}/usr/local/{command}").readline() == f"#!{PY}\n"
    for page in ("man5/vrf.conf.5", "man8/pam-vrf.8", "man8/pam-vrf-helper.8", "man8/pam_vrf.8"):
        text = open(f"{root}/usr/local/share/man/{page}").read()
        assert "@" + "SBINDIR@" not in text and "@" + "BINDIR@" not in text and "@" + "UNITDIR@" not in text, page
    unit = open(f"{root}/usr/local/lib/systemd/system/pam-vrf-helper.service").read()
    assert "ExecStart=/usr/local/sbin/pam-vrf-helper " in unit and "@SBINDIR@" not in unit and "@DOCDIR@" not in unit
    assert "User=pam-vrf" in unit and "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_DAC_OVERRIDE" in unit

    # The installed commands run from the staged package (the shebang's interpreter).
    env = dict(os.environ, PYTHONPATH=f"{root}/pylib")
    proc = subprocess.run([f"{root}/usr/local/bin/pam-vrf", "check", "--config", f"{root}/etc/security/vrf.conf"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr          # the sample policy is valid (and places nobody)

    make("uninstall", root)
    left = [os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files]
    assert left == []


def test_install_never_overwrites_an_existing_policy_and_uninstall_keeps_an_edited_one(tmp_path):
    root = str(tmp_path)
    os.makedirs(f"{root}/etc/security")
    with open(f"{root}/etc/security/vrf.conf", "w") as f:
        f.write("@netops mgmt\n")
    make("install", root)
    assert open(f"{root}/etc/security/vrf.conf").read() == "@netops mgmt\n"
    make("uninstall", root)
    assert open(f"{root}/etc/security/vrf.conf").read() == "@netops mgmt\n"


MOUNT_FALLBACK = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from pam_vrf import cgroup
    before = cgroup.find_mount()
    mount = cgroup.mount_point(create=True)
    print(json.dumps([before, mount, cgroup.find_mount(), os.path.isfile(mount + "/cgroup.procs")]))
""")


def test_a_missing_cgroup2_mount_is_mounted_where_iproute2_would(public_repo):
    # A private mount namespace without the cgroup2 mount; the host keeps its own.
    mount = [l.split()[4] for l in open("/proc/self/mountinfo") if " - cgroup2 " in l][0]
    existed = os.path.isdir("/var/run/cgroup2")
    try:
        proc = sh("unshare", "--mount", "--propagation", "private", "sh", "-c",
                  f'umount -l "{mount}" && exec "$0" -c "$1" "$2"', PY, MOUNT_FALLBACK, public_repo)
        before, mounted, after, has_procs = __import__("json").loads(proc.stdout)
        assert before is None
        assert mounted == after[0] == os.path.realpath("/var/run/cgroup2") and has_procs
    finally:
        if not existed and os.path.isdir("/var/run/cgroup2"):
            os.rmdir("/var/run/cgroup2")
