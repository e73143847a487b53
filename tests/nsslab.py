"""An NSS module of the test's own, for the programs under test only.

glibc loads libnss_NAME.so.2 from the system library directory named in
nsswitch.conf; the host's /etc/nsswitch.conf is never edited: tests bind a
private copy over it in a mount namespace of the programs they start.
"""

import contextlib
import os
import shutil
import tempfile

from testlab.run import sh


@contextlib.contextmanager
def nss_module(source, name, database):
    """Build C `source` as libnss_NAME.so.2; yields the path of a copy of
    /etc/nsswitch.conf whose DATABASE line is `files NAME`. Both removed after."""
    where = tempfile.mkdtemp(prefix="pam-vrf-nss-")
    arch = sh("gcc", "-print-multiarch", check=False).stdout.strip() or "x86_64-linux-gnu"
    library = f"/usr/lib/{arch}/libnss_{name}.so.2"
    try:
        os.chmod(where, 0o755)
        path = os.path.join(where, f"{name}.c")
        with open(path, "w") as f:
            f.write(source)
        sh("gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", library, path)
        with open("/etc/nsswitch.conf") as f:
            lines = [line for line in f if not line.startswith(f"{database}:")]
        nsswitch = os.path.join(where, "nsswitch.conf")
        with open(nsswitch, "w") as f:
            f.writelines(lines + [f"{database}: files {name}\n"])
        os.chmod(nsswitch, 0o644)
        yield nsswitch
    finally:
        try:
            os.unlink(library)
        except FileNotFoundError:
            pass
        shutil.rmtree(where, ignore_errors=True)


def in_namespace(nsswitch, argv):
    """argv in a mount namespace of its own where /etc/nsswitch.conf is `nsswitch`."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/nsswitch.conf && exec "$@"', nsswitch, *argv]


# policy.decide for each user named, as a service `sshd` login would be decided.
_DECIDE = """
import json, sys
from pam_vrf import policy

why, names = sys.argv[1] == "why", sys.argv[2:]
rules = policy.parse(sys.stdin.read(), "vrf.conf")
got = {}
for user in names:
    try:
        rule = policy.decide(rules, user, "sshd")
        got[user] = rule.where if rule else None
    except policy.Undecidable as e:
        got[user] = ("undecidable-strict" if e.strict else "undecidable") + (": " + e.reason if why else "")
print(json.dumps(got))
"""


def decide_in(nsswitch, text, names, why=False):
    """{user: 'vrf.conf:LINE', None or 'undecidable[-strict]' (': reason' with `why`)}
    for the policy `text`, decided by Debian's python3 under `nsswitch`."""
    import json
    import subprocess
    argv = in_namespace(nsswitch, ["/usr/bin/python3", "-I", "-c", _DECIDE, "why" if why else "-", *names])
    proc = subprocess.run(argv, input=text, text=True, capture_output=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd="/", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
