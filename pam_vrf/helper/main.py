"""pam-vrf-helper [--socket PATH] [--config PATH] [--state PATH] [--debug]

Foreground daemon. Run it as an unprivileged user with ambient
CAP_BPF,CAP_NET_ADMIN (+CAP_DAC_OVERRIDE for `pam-vrf exec`), e.g. from
the shipped systemd unit or:

    setpriv --reuid pam-vrf --regid pam-vrf --init-groups \\
        --inh-caps +bpf,+net_admin,+dac_override \\
        --ambient-caps +bpf,+net_admin,+dac_override pam-vrf-helper
"""

import argparse
import os
import resource
import signal
import socket
import stat
import sys

from pam_vrf import __version__, paths, policy, programs, protocol
from pam_vrf.bpf.sockprog import Settings
from pam_vrf.bpf.syscall import BpfError
from pam_vrf.log import Logger

SD_LISTEN_FDS_START = 3


def _bind(path, mode):
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)         # left over from a previous run
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o777)           # no moment where the socket is open to all
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


def listening_sockets(path):
    """{socket: is root.sock}: the public socket at `path` (mode 0666: everyone
    may ask, SO_PEERCRED decides) and root.sock beside it (mode 0600: root
    only). Taken from systemd when it passes them (socket activation)."""
    root_path = protocol.root_socket(path)
    passed = {}
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(os.environ.get("LISTEN_FDS", "0"))):
            sock = socket.socket(fileno=fd)
            passed[sock.getsockname()] = sock
    public = passed.pop(path, None) or _bind(path, 0o666)
    root = passed.pop(root_path, None) or _bind(root_path, 0o600)
    for sock in passed.values():
        sock.close()
    return {public: False, root: True}


def raise_fd_limit():
    """Soft RLIMIT_NOFILE up to the hard one (systemd's default soft limit is
    1024; the unit sets more): the server sizes its per-user budgets from it.
    Returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def check_capabilities():
    """Fail early, with the reason, if we cannot load programs."""
    fd = programs.load(Settings(ifindex=1))
    os.close(fd)


def main(argv=None):
    p = argparse.ArgumentParser(prog="pam-vrf-helper", description=__doc__.split("\n")[0])
    p.add_argument("--socket", default=protocol.DEFAULT_SOCKET)
    p.add_argument("--config", default=policy.DEFAULT_CONFIG)
    p.add_argument("--state", help="file remembering attachments across restarts (default: "
                   f"{paths.DEFAULT_STATE} with the default socket, else {paths.STATE_NAME} next to the socket)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    # Under systemd stderr is the journal as well: /dev/log alone avoids every line twice.
    log = Logger("pam-vrf-helper", args.debug, stderr="JOURNAL_STREAM" not in os.environ)
    nofile = raise_fd_limit()

    try:
        check_capabilities()
    except BpfError as e:
        log.err(f"cannot start: {e}")
        return 1

    # pyroute2 is heavy (~140 ms to import): only the helper pays for it.
    from pam_vrf.helper.attachments import Attachments
    from pam_vrf.helper.links import Links
    from pam_vrf.helper.placement import Placement
    from pam_vrf.helper.policy_cache import PolicyCache, Unavailable
    from pam_vrf.helper.requests import Handler
    from pam_vrf.helper.server import Server

    state = args.state or paths.state_file(args.socket)
    try:
        listeners = listening_sockets(args.socket)
    except OSError as e:
        log.err(f"cannot listen on {args.socket}: {e.strerror}")
        return 1
    links = Links()
    attachments = Attachments(state, log, devices=links.egress_devices)
    attachments.refresh(links.resolve)
    policy_cache = PolicyCache(args.config, log)
    try:
        policy_cache.rules()        # read it now: a broken file is logged at start
    except Unavailable:
        pass
    placement = Placement(attachments, links, policy_cache, log)
    server = Server(listeners, Handler(attachments, placement, log), links, log)

    # A stop only sets a flag (the C handler's write to the wakeup pipe ends
    # the select): the request in hand is finished and every attachment's
    # bookkeeping is whole when the state file is written below.
    signal.set_wakeup_fd(server.wakeup_w, warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: server.stop())
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    log.info(f"pam-vrf-helper {__version__} serving {args.socket} and "
             f"{protocol.root_socket(args.socket)} (uid {os.getuid()}, "
             f"{len(attachments.entries)} remembered attachments; {nofile[0]} descriptors, "
             f"{server.per_uid_fds} per non-root user)")
    try:
        server.serve_forever()
    finally:
        attachments.flush()
        links.close()
        for sock in listeners:
            sock.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
