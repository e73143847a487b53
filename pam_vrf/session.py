"""The login path of the pam_python entry: ask the helper, map its verdict.

    hook(user, service, args, env)
      1. send {user, service} to the helper's root.sock; the helper decides
         from vrf.conf and places this process, the PAM caller
      2. placed / kept / alone / unplaced: the session proceeds; refused: it fails
      3. the helper not running, or no usable answer within LOGIN_TIMEOUT:
         pam_vrf.offline decides whether a strict rule forbids going on

The helper logs what it decided (syslog authpriv); this logs only what the
helper could not. Nothing here raises. Stdlib only and cheap: no policy
engine on the fast path.
"""

from pam_vrf import protocol
from pam_vrf.log import Logger
from pam_vrf.protocol import PROCEED
DEFAULT_CONFIG = "/etc/security/vrf.conf"     # policy.DEFAULT_CONFIG, without importing it


class Options:
    """The module arguments. A plain class: `collections` (for namedtuple)
    would add about 1-2 ms of imports to every login in pam_python."""

    __slots__ = ("config", "socket", "debug")

    def __init__(self, config=DEFAULT_CONFIG, socket=protocol.DEFAULT_SOCKET, debug=False):
        self.config, self.socket, self.debug = config, socket, debug

    def __repr__(self):
        return f"Options(config={self.config!r}, socket={self.socket!r}, debug={self.debug!r})"


def parse_options(args, unknown=None, relative=None):
    """PAM module arguments: config=PATH socket=PATH debug. Others are
    appended to `unknown` (a list) when one is given; a config= or socket=
    that is not an absolute path (it would name a file in the caller's
    working directory) is ignored and appended to `relative`."""
    found = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if key in ("config", "socket") and eq and not value.startswith("/"):
            if relative is not None:
                relative.append(arg)
        elif key in ("config", "socket") and eq:
            found[key] = value
        elif arg == "debug":
            found["debug"] = True
        elif unknown is not None:
            unknown.append(arg)
    return Options(**found)


def hook(user, service, args, env=None):
    """What the pam_python entry calls: module arguments in, verdict out.
    `env` (a dict) receives PAM_VRF when the session is in a VRF."""
    unknown, relative = [], []
    options = parse_options(args, unknown, relative)
    log = Logger("pam_vrf", options.debug)
    for arg in unknown:
        log.warning(f"ignoring unknown module argument '{arg}'")
    for arg in relative:
        log.err(f"ignoring '{arg}': not an absolute path")
    return open_session(user, service, options, log, env)


def open_session(user, service, options, log, env=None):
    """PROCEED or REFUSE. Never raises."""
    try:
        from pam_vrf import client
        message = {"op": "open", "user": user or ""}
        if service:
            message["service"] = service
        try:
            answer = client.request(message, protocol.root_socket(options.socket), protocol.LOGIN_TIMEOUT)
        except client.HelperError as e:
            return _without_helper(user, service, options, log, str(e))
        kind = answer.get("verdict") if answer.get("ok") else None
        if kind not in protocol.VERDICTS:
            return _without_helper(user, service, options, log,
                                   f"helper refused the request: {answer.get('error', 'no verdict')}")
        log.debug(f"user {user}: helper says {kind} {answer.get('vrf', '')} {answer.get('error', '')}")
        if kind in ("placed", "kept") and answer.get("vrf") and env is not None:
            env["PAM_VRF"] = answer["vrf"]
        return protocol.proceeds(kind)
    except Exception as e:          # a bug must not take the login down
        log.err(f"internal error placing user {user}: {type(e).__name__}: {e}; left unplaced")
        return PROCEED


def _without_helper(user, service, options, log, reason):
    from pam_vrf import offline     # the policy engine: only when the helper cannot answer
    return offline.decide(user, service, options.config, reason, log)
