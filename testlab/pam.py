"""PAM service files of the tests' own (never the host's)."""

import os

from testlab.run import write_file

HOOK = "/usr/lib/pam-vrf/pam_vrf.py"        # the pam_python entry `make install` puts there


def write_pam_service(name, session_line=None, comment=None):
    """/etc/pam.d/NAME: pam_permit everywhere, then `session_line` (if any).
    Refuses to overwrite a file that exists. Returns the path."""
    path = f"/etc/pam.d/{name}"
    assert not os.path.exists(path), f"{path} exists already"
    return write_file(path, (f"# {comment}\n" if comment else "")
                      + "auth     required  pam_permit.so\n"
                        "account  required  pam_permit.so\n"
                        "session  required  pam_permit.so\n"
                      + (f"{session_line}\n" if session_line else ""))
