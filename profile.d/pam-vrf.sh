# pam-vrf: show the session's VRF in the prompt of interactive shells.
# Optional: copy to /etc/profile.d/ to enable.
#
# PAM_VRF is set by pam_vrf.so (or the pam_python hook) when the login was
# placed in a VRF. Debian's /etc/bash.bashrc and the default ~/.bashrc put
# $debian_chroot in front of the prompt, so setting it works even where
# ~/.bashrc sets PS1 after this file has run.
if [ -n "${PAM_VRF:-}" ] && [ -z "${debian_chroot:-}" ]; then
    debian_chroot="vrf:$PAM_VRF"
    case "${PS1:-}" in
        ''|*debian_chroot*|*"(vrf:"*) ;;
        *) PS1="(vrf:$PAM_VRF)$PS1" ;;
    esac
fi
