"""The Vagrantfile is valid (Debian's vagrant, no provider needed)."""

import os

from conftest import REPO, sh


def test_vagrantfile_validates():
    proc = sh(os.path.join(REPO, "vagrant/ci/validate-vagrantfile"))
    assert "Vagrantfile validated successfully" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
