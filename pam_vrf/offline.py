"""The PAM entries' slow path: the helper is not running (or not usable).

Nothing can be placed without it (only the helper holds CAP_BPF), so the
only question is whether the session may proceed: it may, unplaced, unless
the rule that applies is `strict` (or, when a name service fails, a strict
rule could apply). Logged to syslog (authpriv) either way.

The C module runs this as
    /usr/bin/python3 -I -m pam_vrf.offline [--service S] [--config F] [--debug] --reason WHY -- USER
with a fixed environment (never the PAM caller's PATH). It prints one
verdict line, VERDICT[PROCEED] or VERDICT[REFUSE], and exits 0: an exit
status alone cannot tell a refusal from a crash (Python exits 1 for a
missing module or any uncaught exception), so the module takes anything
else for a decider that could not decide. The pam_python hook calls
decide() in process.
"""

import os
import sys

from pam_vrf import policy, protocol
from pam_vrf.log import Logger
from pam_vrf.protocol import PROCEED, REFUSE

VERDICT = {PROCEED: b"pam_vrf.offline: proceed\n", REFUSE: b"pam_vrf.offline: refuse\n"}


def decide(user, service, config, reason, log):
    """PROCEED or REFUSE for a session the helper could not handle. Never raises."""
    who = f"user {user} (service {service or '-'})"
    try:
        if service == policy.MANAGER_SERVICE:
            found = None                # no rule is read for it (policy.unplaceable)
        else:
            try:
                rules = policy.load(config)
            except policy.ConfigError as e:
                log.err(f"{reason}; {e}: {who} left unplaced")
                return PROCEED
            try:
                found = policy.decide(rules, user, service)
            except policy.Undecidable as e:
                found = e
        kind, line = policy.unplaceable(who, found, reason, service)
        (log.debug if kind == "alone" else log.err)(line)
        return protocol.proceeds(kind)
    except Exception as e:          # a bug must not take the login down, nor let it escape a strict rule
        strict = _strict_may_apply(config, service)
        log.err(f"internal error deciding for {who}: {type(e).__name__}: {e}; "
                + ("refusing session (a strict rule may apply)" if strict else "left unplaced"))
        return REFUSE if strict else PROCEED


def _strict_may_apply(config, service):
    """After an internal error: could a strict rule apply to this service?
    Yes when the rules cannot be read again (as the C module's may_be_strict)."""
    if service == policy.MANAGER_SERVICE:
        return False                    # policy.unplaceable: left alone whatever the rules
    try:
        return any(r.strict for r in policy.load(config) if policy.applies(r, service))
    except Exception:
        return True


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="pam_vrf.offline")
    p.add_argument("user", help="after --: a user name may start with '-'")
    p.add_argument("--service", default="")
    p.add_argument("--config", default=policy.DEFAULT_CONFIG)
    p.add_argument("--reason", default="helper not reachable")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    log = Logger("pam_vrf", args.debug)
    os.write(1, VERDICT[decide(args.user, args.service or None, args.config, args.reason, log)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
