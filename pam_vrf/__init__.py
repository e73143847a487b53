"""pam-vrf: login-time VRF placement for Linux.

Layers (imports point down only):
    entry points   pam_python hook, pam_exec entry, `pam-vrf` CLI, `pam-vrf-helper`
    session logic  decide -> ask the helper to attach -> move -> log
    library        policy, cgroup, netdev, sockspec, programs, bpf.*
The login path is stdlib-only; pyroute2 is for the helper alone.
"""

__version__ = "0.1.0"
