"""vrf.conf parses, and every VRF it names exists and is a VRF (an ordinary
device where the rule says `plain`), in this network namespace.

Devices are looked up over rtnetlink (pam_vrf.rtnl, as the helper and
netdev.device_kind do), all at once.
"""

import os
from collections import namedtuple

from pam_vrf import netdev, policy
from pam_vrf.doctor import Finding

DROPIN_DIR = policy.DEFAULT_CONFIG + ".d"

Vrf = namedtuple("Vrf", "name plain ifindex where")
"""A VRF named in vrf.conf whose device is usable: what the live checks test."""


class Devices:
    """The network devices of this network namespace: name -> (ifindex, kind)."""

    def __init__(self):
        self.links = None           # None: pyroute2 missing or failed, sysfs instead
        self.error = None
        try:
            from pam_vrf import rtnl
        except ImportError:
            self.error = "pyroute2 is not installed"
            return
        try:
            with rtnl.connect() as ipr:
                self.links = {name: (index, kind or "") for name, index, kind, _ in rtnl.links(ipr)}
        except OSError as e:
            self.error = f"rtnetlink: {e}"

    @classmethod
    def unavailable(cls):
        self = cls.__new__(cls)
        self.links, self.error = None, "rtnetlink failed"
        return self

    def kind(self, name):
        """'vrf', another kind ('' for none), or None when there is no such device."""
        if self.links is None:
            return netdev.device_kind(name)
        entry = self.links.get(name)
        return None if entry is None else entry[1]

    def ifindex(self, name):
        if self.links is None:
            try:
                return netdev.ifindex(name)
            except LookupError:
                return None
        entry = self.links.get(name)
        return None if entry is None else entry[0]

    def vrf_names(self):
        if self.links is None:
            try:
                names = os.listdir("/sys/class/net")
            except OSError:
                return []
            return [n for n in names if netdev.device_kind(n) == "vrf"]
        return sorted(n for n, (_, kind) in self.links.items() if kind == "vrf")


def load(path):
    """(rules or None, findings) for the policy file."""
    findings = []
    try:
        rules = policy.load(path)
    except policy.ConfigError as e:
        findings.append(Finding(
            "config", "error", e.message,
            "a helper started with a broken file has no policy and leaves every session "
            "unplaced; a running one keeps its last good policy until the file is fixed",
            "fix the line, then run `pam-vrf check`", e.filename, e.line))
        return None, findings
    placing = [r for r in rules if r.places]
    findings.append(Finding("config", "ok", f"{len(rules)} rule{'s' if len(rules) != 1 else ''}, "
                            f"{len(placing)} placing sessions in a VRF", path=path))
    if not placing:
        findings.append(Finding(
            "config", "warning", "no rule places any session in a VRF",
            "every login is left alone or in the default VRF",
            "add a rule such as `@netops mgmt` before `* -`", path=path))
    if os.path.abspath(path) == policy.DEFAULT_CONFIG and os.path.isdir(DROPIN_DIR):
        findings.append(Finding("config", "warning", f"{DROPIN_DIR} exists but is not read",
                                "with first-match semantics the order across files would be a trap",
                                f"put its rules into {path}", DROPIN_DIR))
    return rules, findings


def _kind_text(kind):
    return f"a {kind} device" if kind else "an ordinary device"


def named_vrfs(rules):
    """{(name, plain): [(rule, role)]} for every VRF a rule names (target, exec=)."""
    named = {}
    for rule in rules or ():
        if rule.places:
            named.setdefault((rule.target, rule.plain), []).append((rule, "target"))
        for name in sorted(rule.exec):
            if name != policy.DEFAULT_VRF:
                named.setdefault((name, rule.plain), []).append((rule, "exec="))
    return named


def check_devices(findings, rules, devices, helper_pid=None):
    """Check 4; returns the usable VRFs (one Vrf per name) for the live checks."""
    if rules is None:
        return []
    usable = {}
    if devices.links is None:
        findings.append(Finding(
            "config", "warning", f"devices read from /sys/class/net ({devices.error})",
            "sysfs shows the network namespace it was mounted in, which may not be this one",
            "install pyroute2 (the helper needs it too)"))
    for (name, plain), uses in named_vrfs(rules).items():
        rule, role = uses[0]
        where = sorted({r.line for r, _ in uses})
        more = f" (and line{'s' if len(where) > 2 else ''} {', '.join(map(str, where[1:]))})" \
            if len(where) > 1 else ""
        kind = devices.kind(name)
        strict = any(r.strict for r, role_ in uses if role_ == "target")
        consequence = ("strict rules refuse those logins" if strict else
                       "those sessions proceed unplaced, in the default VRF")
        if role == "exec=" and all(role_ == "exec=" for _, role_ in uses):
            consequence = f"`pam-vrf exec {name}` fails"
        if kind is None:
            findings.append(Finding(
                "config", "error", f"{role} '{name}': no network device '{name}' in this network namespace{more}",
                f"the helper cannot bind sessions to it: {consequence}",
                f"create it (ip link add {name} type vrf table N; ip link set {name} up) "
                "in the helper's network namespace, or fix the rule", rule.filename, rule.line))
        elif kind != "vrf" and not plain:
            findings.append(Finding(
                "config", "error", f"{role} '{name}' is {_kind_text(kind)}, not a VRF{more}",
                f"the helper refuses to bind to it without `plain`: {consequence}",
                "name the VRF instead, or add `plain` to bind to this interface", rule.filename, rule.line))
        else:
            index = devices.ifindex(name)
            what = "a VRF" if kind == "vrf" else f"{_kind_text(kind)} (the rule says plain)"
            findings.append(Finding("config", "ok", f"{role} '{name}' is {what}, ifindex {index}{more}",
                                    path=rule.filename, line=rule.line))
            usable.setdefault(name, Vrf(name, plain, index, rule.where))
    return list(usable.values())
