# pam-vrf: pam_python entry point, installed as /usr/lib/pam-vrf/pam_vrf.py
#
#   session [success=ok session_err=bad default=ignore] pam_python.so /usr/lib/pam-vrf/pam_vrf.py [config=PATH] [socket=PATH] [debug]
#
# ONLY for stacks that root daemons run (sshd): pam_python's interpreter
# finds its standard library through the PAM client's PATH, so in a stack
# that a setuid client runs (su, sudo) the invoking user would choose the
# code that runs as root. Everywhere else use pam_vrf.so.
#
# pam_python executes this file afresh for every PAM handle. It stays a
# thin shim: the helper decides and places (pam_vrf.session). No exception
# may reach pam_python (it would turn into PAM_SERVICE_ERR and a traceback).


def pam_sm_open_session(pamh, flags, argv):
    try:
        from pam_vrf import session
        env = {}
        verdict = session.hook(pamh.user, pamh.service, argv[1:], env)
        for key, value in env.items():
            pamh.env[key] = value
        return pamh.PAM_SUCCESS if verdict == session.PROCEED else pamh.PAM_SESSION_ERR
    except BaseException as e:          # e.g. the package is missing: never lock anyone out
        _last_resort_log(f"cannot run ({type(e).__name__}: {e}); session left unplaced")
        return pamh.PAM_IGNORE


def pam_sm_close_session(pamh, flags, argv):
    # The VRF cgroup goes with the session: logind removes session-N.scope
    # with its children; without logind it is shared and stays, like `ip vrf exec`'s.
    return pamh.PAM_SUCCESS


def _last_resort_log(message):
    import os
    import socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(f"<{(10 << 3) | 3}>pam_vrf[{os.getpid()}]: {message}".encode(), "/dev/log")
    except OSError:
        pass
