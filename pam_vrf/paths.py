"""Where the helper keeps its state file: one definition for the helper's
default, the systemd unit (which relies on that default), and `pam-vrf trace`.

The helper started with the default socket (/run/pam-vrf/helper.sock, as
pam-vrf-helper(8) and the units do) keeps its state in its own runtime
directory (the unit's RuntimeDirectory=pam-vrf-helper: /run/pam-vrf is
root's); a helper with a socket elsewhere (tests, labs) keeps it beside the
socket. Readers that know the socket derive the same path.
"""

import os

from pam_vrf import protocol

STATE_NAME = "attachments.json"
DEFAULT_STATE = "/run/pam-vrf-helper/" + STATE_NAME


def state_file(socket_path=protocol.DEFAULT_SOCKET):
    """The state file of the helper that serves `socket_path`."""
    if os.path.normpath(socket_path) == protocol.DEFAULT_SOCKET:
        return DEFAULT_STATE
    return os.path.join(os.path.dirname(socket_path) or ".", STATE_NAME)
