"""pam-vrf: login-time VRF placement for Linux.

Layers (imports point down only):
    entry points   pam_python hook (session), offline decider, `pam-vrf` CLI, `pam-vrf-helper`
    helper         the one authority: policy cache -> decide -> place (helper.placement)
    library        policy, nss, cgroup, process, netdev, rtnl, sockspec, programs, bpf.*, pamstack
The pam_python hook is stdlib-only and imports no policy engine; pyroute2
(pam_vrf.rtnl) is for the helper, `pam-vrf check` and `doctor` alone. The C module pam_vrf.so (pam_module/) speaks protocol.
"""

__version__ = "0.3.0"
