"""`pam-vrf doctor`: does placement work end to end on this host?

One command an operator runs after installing (and a fleet runs with
--json). Every check yields Findings: what was found, why it matters, what
to change. The exit status is 0 only when no finding is an error.

Checks, in order (each module's docstring has the details):
  kernel     cgroup2, CGROUP_BPF, the VRF driver, cgroup v1 net_cls/net_prio
  helper     reachable on both sockets, its uid, its exact capabilities
  config     vrf.conf parses; every VRF it names exists (and is a VRF)
  routes     every VRF's table ends in a default route (else lookups fall
             through to the main table: sessions send outside the VRF)
  pam        pamstack.audit(), and which entry each login service uses
  ancestors  foreign sock_create programs above session cgroups
  sessions   placed cgroups that lack the egress program
  self-test  per VRF: a throwaway process in a throwaway cgroup with the
             VRF's program gets bound sockets, and deny= refuses (live)
  resolver   nameservers on the default VRF's loopback; with nss-resolve,
             systemd-resolved's servers on each VRF's links; a live DNS
             query through each VRF

Root runs everything; anyone else gets what can run without privileges and
an error saying the rest was skipped. Nothing is left behind: the live
checks create one cgroup under the cgroup2 root and remove it, also on
failure or SIGTERM.
"""

import json
import os
import sys
from collections import namedtuple

LEVELS = ("error", "warning", "ok", "info")


class Finding(namedtuple("Finding", "check level what why fix path line")):
    """One result. level: error | warning | ok | info; why/fix/path/line optional."""
    __slots__ = ()

    def __new__(cls, check, level, what, why="", fix="", path=None, line=None):
        assert level in LEVELS, level
        return super().__new__(cls, check, level, what, why, fix, path, line)

    def __str__(self):
        where = ""
        if self.path:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        text = f"{self.level:<8}{self.check}: {where}{self.what}"
        detail = "; ".join(part for part in (self.why, self.fix) if part)
        return f"{text} ({detail})" if detail else text

    def as_dict(self):
        return dict(self._asdict())


class Options(namedtuple("Options", "config socket pam_dir resolv_conf")):
    __slots__ = ()


def _guarded(findings, check, step, *args, default=None):
    """Run one step; a bug in it becomes an error finding instead of a traceback,
    so the other checks still report (a fleet parses every host's output)."""
    try:
        return step(*args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        findings.append(Finding(check, "error", f"the check itself failed: {type(e).__name__}: {e}",
                                "this part of the host was not checked", "report this as a pam-vrf bug"))
        return default


def run(options):
    """Every finding, in check order."""
    from pam_vrf.doctor import ancestors, config, daemon, kernel, live, resolver, routes, sessions, stacks

    findings = []
    root = os.geteuid() == 0
    if not root:
        findings.append(Finding(
            "root", "error", f"not running as root (euid {os.geteuid()}): the BPF, self-test, "
            "ancestor and live resolver checks were skipped, and root.sock was not tried",
            "only root can query and attach programs and move processes between cgroups, "
            "so this run cannot show that placement works",
            "run it as root: sudo pam-vrf doctor"))

    devices = _guarded(findings, "config", config.Devices) or config.Devices.unavailable()
    rules, config_findings = config.load(options.config)
    mount = _guarded(findings, "kernel", kernel.check, findings, rules, devices, root)
    helper_pid = _guarded(findings, "helper", daemon.check, findings, options.socket, root)
    findings += config_findings
    vrfs = _guarded(findings, "config", config.check_devices, findings, rules, devices, helper_pid, default=[])
    _guarded(findings, "routes", routes.check, findings, vrfs)
    _guarded(findings, "pam", stacks.check, findings, options.pam_dir)
    if root and mount:
        _guarded(findings, "ancestors", ancestors.check, findings, mount)
        _guarded(findings, "sessions", sessions.check, findings, mount)
    static = []
    servers = _guarded(static, "resolver", resolver.static, static, options.resolv_conf, vrfs, default=[])
    tested = []
    if root and mount:
        _guarded(tested, "self-test", live.check, tested, mount, vrfs, servers, options.resolv_conf)
    findings += [f for f in tested if f.check != "resolver"]
    findings += static + [f for f in tested if f.check == "resolver"]
    return findings


def summary(findings):
    errors = sum(1 for f in findings if f.level == "error")
    warnings = sum(1 for f in findings if f.level == "warning")
    text = f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}"
    if errors:
        return f"{text}: placement does not work end to end on this host"
    return f"{text}: placement works end to end on this host"


def main(args):
    """Entry point of `pam-vrf doctor` (args from the CLI's parser)."""
    options = Options(args.config, args.socket, args.pam_dir, args.resolv_conf)
    findings = run(options)
    if args.json:
        json.dump([f.as_dict() for f in findings], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for finding in findings:
            print(finding)
        print(summary(findings))
    return 1 if any(f.level == "error" for f in findings) else 0
