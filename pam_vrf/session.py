"""The login path, top to bottom: which VRF, then place the PAM caller there.

    open_session(user, service, pid, options)
      1. read vrf.conf                    (broken: log FILE:LINE, login goes on unplaced)
      2. first matching rule              (none or '-': leave the session alone)
      3. the VRF cgroup for the caller    (<caller's cgroup>/vrf/NAME, iproute2 layout)
      4. the helper attaches the program  (CAP_BPF work stays in the helper)
      5. move the PAM caller              (its children, the user's shell, inherit)
      6. log what was done and why        (syslog authpriv)
      7. the user's systemd manager too   (user@UID.service: systemd-run --user)

Failure policy: a failure never locks anyone out (the session proceeds
unplaced and syslog names the cause), unless the matching rule says
`strict`, which refuses the session. Nothing here raises: every entry
point gets a verdict. Stdlib only and cheap: this runs in every login.
"""

import os
from collections import namedtuple

from pam_vrf import cgroup, policy, protocol
from pam_vrf.log import Logger

PROCEED, REFUSE = True, False


Options = namedtuple("Options", ["config", "socket", "debug"],
                     defaults=[policy.DEFAULT_CONFIG, protocol.DEFAULT_SOCKET, False])


def parse_options(args, unknown=None):
    """PAM module arguments: config=PATH socket=PATH debug. Others are
    appended to `unknown` (a list) when one is given."""
    found = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if key in ("config", "socket") and eq and value:
            found[key] = value
        elif arg == "debug":
            found["debug"] = True
        elif unknown is not None:
            unknown.append(arg)
    return Options(**found)


def hook(user, service, pid, args):
    """What the PAM entry points call: module arguments in, verdict out."""
    unknown = []
    options = parse_options(args, unknown)
    log = Logger("pam_vrf", options.debug)
    for arg in unknown:
        log.warning(f"ignoring unknown module argument '{arg}'")
    return open_session(user, service, pid, options, log)


class PlacementError(Exception):
    pass


def open_session(user, service, pid, options, log=None):
    """Decide and place; returns PROCEED or REFUSE. Never raises."""
    log = log or Logger("pam_vrf", options.debug)
    who = f"user {user} (service {service or '-'})"
    try:
        try:
            rules = policy.load(options.config)
        except policy.ConfigError as e:
            log.err(f"{e}; {who} left unplaced")
            return PROCEED

        rule = policy.decide(rules, user, service)
        if rule is None or rule.target == policy.LEAVE_ALONE:
            reason = rule.where if rule else "no matching rule"
            log.debug(f"{who} left alone ({reason})")
            return PROCEED

        try:
            path = place(pid, rule, options.socket)
        except PlacementError as e:
            if rule.strict:
                log.err(f"refusing session of {who}: {e} (strict rule {rule.where})")
                return REFUSE
            log.err(f"{who} left unplaced: {e} (rule {rule.where})")
            return PROCEED
        log.info(f"{who} placed in VRF {rule.target} (rule {rule.where}), cgroup {path}")

        try:
            manager = confine_manager(user, pid, rule, options.socket)
        except PlacementError as e:
            if rule.strict:
                log.err(f"refusing session of {who}: its systemd user manager cannot be bound "
                        f"to VRF {rule.target}: {e} (strict rule {rule.where})")
                return REFUSE
            log.err(f"{who}: the systemd user manager is not bound to VRF {rule.target}: {e}; "
                    f"what it starts (systemd-run --user) is not placed (rule {rule.where})")
            return PROCEED
        if manager:
            log.info(f"{who}: systemd user manager {manager} bound to VRF {rule.target} too")
        return PROCEED
    except Exception as e:          # a bug must not take the login down
        log.err(f"internal error placing {who}: {type(e).__name__}: {e}; left unplaced")
        return PROCEED


def place(pid, rule, socket_path):
    """Put process `pid` into the VRF cgroup the rule names; returns its path."""
    try:
        where = cgroup.vrf_cgroup(rule.target, pid)
        path = cgroup.fs_path(where, create=True)
        cgroup.ensure(path)
    except cgroup.CgroupError as e:
        raise PlacementError(str(e)) from None
    from pam_vrf import client      # only logins that are placed pay for it
    try:
        if rule.places:
            client.call({"op": "attach", "cgroup": where, "vrf": rule.target,
                         "rule": protocol.rule_fields(rule)}, socket_path)
        cgroup.move(pid, path)
    except (client.HelperError, cgroup.CgroupError) as e:
        cgroup.remove_if_empty(path)
        raise PlacementError(str(e)) from None
    return path


def confine_manager(user, pid, rule, socket_path):
    """Bind what the user's systemd manager starts (systemd-run --user,
    user services) to the rule's VRF too: it runs outside the session's
    scope, and would otherwise be a way around the placement.

    Returns the manager's cgroup, or None where there is none (no logind).
    """
    if not rule.places:
        return None
    import pwd
    try:
        uid = pwd.getpwnam(user).pw_uid
        manager = cgroup.user_manager_of(cgroup.cgroup_of(pid), uid)
        if manager is None or not os.path.isdir(cgroup.fs_path(manager)):
            return None
    except (KeyError, cgroup.CgroupError):
        return None
    from pam_vrf import client
    try:
        client.call({"op": "attach-manager", "cgroup": manager, "uid": uid, "vrf": rule.target,
                     "rule": protocol.rule_fields(rule)}, socket_path)
    except client.HelperError as e:
        raise PlacementError(str(e)) from None
    return manager
