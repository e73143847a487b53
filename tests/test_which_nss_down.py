"""Issue 15 item 3: `pam-vrf which USER` with the user's name service down
said both "no user 'USER' in the passwd database" and "cannot look up user":
the first was wrong. The passwd look-up fails here through an NSS module of
the test's own (`passwd: files pvtdown<tag>`, every look-up UNAVAIL with
EHOSTDOWN), in a private nsswitch.conf (tests/nsslab.py).
"""

import os
import subprocess

import pytest

from testlab.run import PY, REPO, uid_tag
from nsslab import in_namespace, nss_module
from test_pam_attacks import NSS_DOWN_C
from test_pam_module import SYSTEM_PATH

pytestmark = pytest.mark.root


@pytest.fixture
def passwd_down():
    name = f"pvtdown{uid_tag()}"
    with nss_module(NSS_DOWN_C.replace("@MOD@", name), name, "passwd") as nsswitch:
        yield nsswitch


def which(nsswitch, conf, user):
    return subprocess.run(in_namespace(nsswitch, [PY, "-m", "pam_vrf", "which", user, "--service", "sshd",
                                                  "--config", conf]),
                          capture_output=True, text=True, timeout=60, cwd="/",
                          env={"PATH": SYSTEM_PATH, "PYTHONPATH": REPO})


def test_which_names_the_failure_not_a_missing_user(passwd_down, vrf_conf):
    user = f"ldapop{uid_tag()}"           # in no local file: only the failing source could answer
    conf = vrf_conf(f"@netops{uid_tag()} lo plain strict\n* default\n")
    proc = which(passwd_down, conf, user)
    assert proc.returncode == 1, proc
    assert "no user" not in proc.stderr, proc.stderr
    assert f"cannot look up user '{user}'" in proc.stderr and "Host is down" in proc.stderr, proc.stderr
    assert "a strict rule may apply: the login would be refused" in proc.stderr, proc.stderr

    # Only a '*' rule: nothing depends on the failed look-up; the answer stands, with no warning.
    star = vrf_conf("* default\n")
    proc = which(passwd_down, star, user)
    assert proc.returncode == 0 and proc.stdout.startswith("default\t") and proc.stderr == "", proc

    # Control: a user no source knows (files alone) still gets the warning.
    with open(os.path.join(os.path.dirname(passwd_down), "nsswitch.conf")) as f:
        assert "passwd: files pvtdown" in f.read()
    proc = subprocess.run([PY, "-m", "pam_vrf", "which", user, "--config", star], capture_output=True, text=True,
                          timeout=60, cwd="/", env={"PATH": SYSTEM_PATH, "PYTHONPATH": REPO})
    assert proc.returncode == 0 and f"warning: no user '{user}'" in proc.stderr, proc
