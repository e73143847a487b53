"""Audit Linux-PAM stacks for pam-vrf mistakes (`pam-vrf check`, `pam-vrf doctor`).

Reads PAM configuration the way libpam (Debian 12, 1.5.2) does: a `#` ends a line, a
trailing backslash joins the next one, `-type` lines, bracketed controls such as
`[success=ok default=ignore]` (spaces allowed inside), `TYPE include|substack NAME`,
Debian's `@include NAME`, modules named with or without a directory. A name that
/etc/pam.d lacks is looked up in /usr/lib/pam.d (libpam's vendor directory; polkitd
installs polkit-1 there).

Public API:
  parse_file(path)                 -> list[PamLine], list[Finding]  (unparsable lines)
  flatten(pam_dir, service, kind)  -> list[StackEntry], the effective ordered stack
  audit(pam_dir)                   -> list[Finding], printed as `PATH:LINE: level: what (why; fix)`
  entries(pam_dir)                 -> list[ServiceEntry], which pam-vrf entry each service uses

audit() reports, as errors:
  * a pam_python line loading pam-vrf's entry (an argument ending in pam_vrf.py) in a
    stack that a setuid-root client runs: pam_python's interpreter takes its standard
    library from the client's PATH, so the invoking user's Python would run with euid 0;
  * the same in any common-* file, even if no setuid stack includes it today;
  * a pam-vrf line (pam_vrf.so, pam_python, pam_exec entry) before pam_systemd in a
    session stack. An error, not a warning: on every systemd host pam_systemd then moves
    the process into session-N.scope, so the session silently leaves its VRF (and its
    deny= restrictions) while the login succeeds;
and, as warnings, missing include files, include cycles and lines libpam cannot parse.
"""

import os
from collections import namedtuple

from pam_vrf.policy import MANAGER_SERVICE

PAM_DIR = "/etc/pam.d"
VENDOR_PAM_DIR = "/usr/lib/pam.d"
PAM_TYPES = ("auth", "account", "password", "session")

# Services that setuid-root PAM clients run on Debian 12, with the PAM types they call
# (found with `find / -perm -4000`, the bookworm packages, and the pam_* calls each binary
# imports). runuser/runuser-l, login, sshd, cron, atd... are run by root only; newgrp,
# gpasswd, mount, ssh-keysign are setuid but do not use libpam.
ALL_TYPES = PAM_TYPES
SETUID_SERVICES = {
    "su": ALL_TYPES, "su-l": ALL_TYPES,         # util-linux su
    "sudo": ALL_TYPES, "sudo-i": ALL_TYPES,     # sudo; sudo-i includes common-session
    "doas": ALL_TYPES,                          # opendoas
    "polkit-1": ("auth", "account", "session"),  # pkexec (4755 from its postinst) opens a
                                                # session, polkit-agent-helper-1 authenticates
    "chfn": ("auth", "account"),                # shadow: authenticate + acct_mgmt only, so
    "chsh": ("auth", "account"),                # their @include common-session never runs
    "passwd": ("password",),                    # shadow: chauthtok only
    "other": ALL_TYPES,                         # libpam's fallback for a client without a file
}

PamLine = namedtuple("PamLine", "file line type control module args")
"""One parsed line; for includes type is `@include` or the TYPE and module the file name."""

StackEntry = namedtuple("StackEntry", "file line module args control type chain")
"""A line of a flattened stack; module is the basename, chain the file names from the
service down to `file` (("su", "common-session") for a line reached through an include)."""

ServiceEntry = namedtuple("ServiceEntry", "service entry file line position")
"""entry: "none" | "pam_vrf.so" | "pam_python" | "pam_exec"; position: "after pam_systemd" |
"before pam_systemd" | "no pam_systemd" (None when entry is "none")."""


class Finding(namedtuple("Finding", "path line level what why fix")):
    __slots__ = ()

    def __str__(self):
        return f"{self.path}:{self.line}: {self.level}: {self.what} ({self.why}; {self.fix})"


SAFE_LINE = "session [success=ok session_err=bad default=ignore] pam_vrf.so"


def logical_lines(path):
    """Yield (first line number, text) as libpam's _pam_assemble_line builds them."""
    pending, start = "", None
    with open(path, errors="replace") as f:
        for number, raw in enumerate(f, 1):
            body = raw.lstrip(" \t\r\n")
            if not body or body.startswith("#"):
                continue                       # blank and comment lines keep a continuation
            start = start or number
            if "#" in body:                    # a comment ends the line, backslash or not
                pending += body.split("#", 1)[0]
            else:
                body = body.rstrip(" \t\r\n")
                if body.endswith("\\"):
                    pending += body[:-1] + " "
                    continue
                pending += body
            yield start, pending
            pending, start = "", None
    if pending.strip():
        yield start, pending


def split_words(text):
    """Whitespace-separated words; a word starting with `[` runs to its `]` (`\\]` escapes)."""
    words, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        j = i + 1
        if text[i] == "[":
            while j < len(text) and not (text[j] == "]" and text[j - 1] != "\\"):
                j += 1
            j += 1
        else:
            while j < len(text) and not text[j].isspace():
                j += 1
        words.append(text[i:j])
        i = j
    return words


def parse_file(path):
    """Parse one PAM file: (list of PamLine, list of warning Findings for bad lines)."""
    lines, problems = [], []
    for number, text in logical_lines(path):
        words = split_words(text)
        if not words:
            continue
        if words[0] == "@include" and len(words) == 2:
            lines.append(PamLine(path, number, "@include", "include", words[1], ()))
            continue
        kind = words[0].lower().lstrip("-")
        if kind not in PAM_TYPES or len(words) < 3:
            problems.append(Finding(path, number, "warning", f"cannot parse `{text.strip()}`",
                                    "libpam cannot use this line either",
                                    "write TYPE CONTROL MODULE [ARGS] or @include NAME"))
            continue
        control = words[1]
        control = "[" + " ".join(control[1:-1].split()) + "]" if control.startswith("[") \
            else control.lower()
        args = tuple(a[1:-1].replace("\\]", "]") if a.startswith("[") else a for a in words[3:])
        lines.append(PamLine(path, number, kind, control, words[2], args))
    return lines, problems


def search_dirs(pam_dir):
    """Where libpam looks for a service or include name."""
    if os.path.abspath(pam_dir) == PAM_DIR:
        return (PAM_DIR, VENDOR_PAM_DIR)
    return (pam_dir,)


def locate(name, dirs):
    if name.startswith("/"):
        return name if os.path.isfile(name) else None
    for d in dirs:
        if os.path.isfile(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def list_services(dirs):
    """Every service file; editor and dpkg leftovers are skipped (no client asks for them)."""
    names = set()
    for d in dirs:
        if os.path.isdir(d):
            names.update(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n))
                         and not n.startswith(".") and not n.endswith("~") and ".dpkg-" not in n)
    return sorted(names)


def _expand(path, kind, chain, open_paths, dirs, parsed, out, problems):
    """Append the lines of `path` (of type `kind`, None for all) to out, following includes.
    chain: names from the service down to this file; open_paths: their paths (cycle check);
    parsed: a cache of parsed files; problems: collects warning Findings."""
    if path not in parsed:
        try:
            lines, bad = parse_file(path)
        except OSError as err:
            lines, bad = [], [Finding(path, 0, "warning", f"cannot read: {err.strerror}",
                                      "libpam cannot read it either", "fix its permissions")]
        parsed[path] = lines
        problems.extend(bad)
    for pl in parsed[path]:
        if kind is not None and pl.type not in (kind, "@include"):
            continue
        if pl.type != "@include" and pl.control not in ("include", "substack"):
            out.append(StackEntry(path, pl.line, os.path.basename(pl.module), pl.args,
                                  pl.control, pl.type, chain))
            continue
        target = locate(pl.module, dirs)
        if target is None:
            problems.append(Finding(path, pl.line, "warning", f"includes missing file {pl.module}",
                                    "libpam cannot read it and the stack is incomplete",
                                    f"create {pl.module} or remove this include"))
        elif target in open_paths:
            problems.append(Finding(path, pl.line, "warning", f"include of {pl.module} closes a cycle",
                                    "libpam gives up at its include depth limit and fails the stack",
                                    "remove one include of the cycle"))
        else:
            sub_kind = kind if pl.type == "@include" else pl.type
            _expand(target, sub_kind, chain + (os.path.basename(target),),
                    open_paths + (target,), dirs, parsed, out, problems)


def _flatten(dirs, service, kind, parsed, problems):
    path = locate(service, dirs)
    if path is None:
        return []
    out = []
    _expand(path, kind, (service,), (path,), dirs, parsed, out, problems)
    return out


def flatten(pam_dir=PAM_DIR, service="sshd", kind="session"):
    """The effective ordered list of `kind` lines (None: all types) for a service."""
    return _flatten(search_dirs(pam_dir), service, kind, {}, [])


def pam_vrf_entry(module, args):
    """Which pam-vrf entry a line (module path or name, arguments) is, or None."""
    module = os.path.basename(module)
    if module == "pam_vrf.so":
        return "pam_vrf.so"
    if module == "pam_python.so" and any(a.endswith("pam_vrf.py") for a in args):
        return "pam_python"
    if module == "pam_exec.so" and "pam-exec" in args and \
            any(os.path.basename(a) == "pam-vrf" for a in args):
        return "pam_exec"
    return None


def position(stack, index):
    """Where stack[index] sits relative to pam_systemd in a session stack."""
    systemd = [i for i, e in enumerate(stack) if e.module == "pam_systemd.so"]
    if not systemd:
        return "no pam_systemd"
    return "before pam_systemd" if max(systemd) > index else "after pam_systemd"


def describe_chains(chains):
    """{("su", "common-session"), ("su-l", "su", "common-session")} ->
    "su via common-session; su-l via su, common-session"."""
    by_route = {}
    for chain in chains:
        by_route.setdefault(chain[1:], set()).add(chain[0])
    parts = []
    for route, services in sorted(by_route.items(), key=lambda kv: sorted(kv[1])):
        names = ", ".join(sorted(services))
        parts.append(f"{names} via {', '.join(route)}" if route else names)
    return "; ".join(parts)


def audit(pam_dir=PAM_DIR):
    """Every finding for every service in pam_dir, sorted by file and line."""
    dirs = search_dirs(pam_dir)
    parsed, problems = {}, []
    setuid_reach = {}            # (file, line) -> set of chains from setuid services
    early = {}                   # (file, line) -> (entry, services, pam_systemd locations)
    for service in list_services(dirs):
        stack = _flatten(dirs, service, None, parsed, problems)
        session = [e for e in stack if e.type == "session"]
        systemd_at = [f"{os.path.basename(e.file)}:{e.line}" for e in session
                      if e.module == "pam_systemd.so"]
        for i, e in enumerate(session):
            entry = pam_vrf_entry(e.module, e.args)
            # systemd-user starts the user's manager (user@UID.service): the helper
            # leaves that session alone, so where the line sits there does not matter.
            if entry and position(session, i) == "before pam_systemd" and service != MANAGER_SERVICE:
                hit = early.setdefault((e.file, e.line), (entry, set(), set()))
                hit[1].add(service)
                hit[2].update(systemd_at)
        for e in stack:
            if e.type in SETUID_SERVICES.get(service, ()) and \
                    pam_vrf_entry(e.module, e.args) == "pam_python":
                setuid_reach.setdefault((e.file, e.line), set()).add(e.chain)
    fix = f"use `{SAFE_LINE}` here; pam_python belongs in sshd's own stack only"
    why = "pam_python takes its standard library from the client's PATH, so the " \
          "invoking user's Python code would run as root"
    findings = [Finding(file, line, "error", "pam_python loads pam-vrf in a stack run by "
                        f"setuid-root clients, reached from {describe_chains(chains)}", why, fix)
                for (file, line), chains in setuid_reach.items()]
    for path, lines in parsed.items():
        if os.path.basename(path).startswith("common-"):
            for pl in lines:
                if pam_vrf_entry(pl.module, pl.args) == "pam_python" and \
                        (path, pl.line) not in setuid_reach:
                    findings.append(Finding(path, pl.line, "error",
                                            f"pam_python loads pam-vrf in {os.path.basename(path)}",
                                            why + " once su or sudo include this file (Debian's do)",
                                            fix))
    for (file, line), (entry, services, systemd_at) in early.items():
        findings.append(Finding(file, line, "error",
                                f"{entry} runs before pam_systemd.so in the session stack of "
                                f"{', '.join(sorted(services))}",
                                f"pam_systemd ({', '.join(sorted(systemd_at))}) moves the process "
                                "into session-N.scope and undoes the VRF placement",
                                "move this line after pam_systemd (after @include common-session)"))
    unique = {(f.path, f.line, f.what): f for f in problems + findings}
    return sorted(unique.values(), key=lambda f: (f.path, f.line, f.what))


def entries(pam_dir=PAM_DIR):
    """Per service, each pam-vrf line of its session stack (or one "none" entry)."""
    dirs = search_dirs(pam_dir)
    parsed, result = {}, []
    for service in list_services(dirs):
        session = _flatten(dirs, service, "session", parsed, [])
        used = [ServiceEntry(service, pam_vrf_entry(e.module, e.args), e.file, e.line,
                             position(session, i))
                for i, e in enumerate(session) if pam_vrf_entry(e.module, e.args)]
        result.extend(used or [ServiceEntry(service, "none", None, None, None)])
    return result
