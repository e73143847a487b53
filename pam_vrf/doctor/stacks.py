"""PAM stacks: pamstack.audit()'s findings, and which pam-vrf entry each
login service's session stack runs (none at all: nothing will be placed)."""

import os

from pam_vrf import pamstack
from pam_vrf.doctor import Finding

LOGIN_SERVICES = ("sshd", "login", "su", "su-l", "sudo", "sudo-i", "cron", "atd")


def check(findings, pam_dir):
    if not os.path.isdir(pam_dir):
        findings.append(Finding("pam", "error", f"no PAM configuration directory {pam_dir}",
                                "without a pam-vrf line in a session stack nothing is placed",
                                "point --pam-dir at the PAM configuration", pam_dir))
        return
    audit = pamstack.audit(pam_dir)
    for f in audit:
        findings.append(Finding("pam", f.level, f.what, f.why, f.fix, f.path, f.line))

    by_service = {}
    for entry in pamstack.entries(pam_dir):
        if entry.service in LOGIN_SERVICES:
            by_service.setdefault(entry.service, []).append(entry)
    for service in LOGIN_SERVICES:
        used = [e for e in by_service.get(service, ()) if e.entry != "none"]
        if service not in by_service:
            continue
        if not used:
            findings.append(Finding("pam", "info", f"{service}: no pam-vrf line in its session stack "
                                    f"({service} sessions are not placed)"))
            continue
        for e in used:
            where = f"{os.path.basename(e.file)}:{e.line}"
            if e.position == "before pam_systemd":
                findings.append(Finding("pam", "info", f"{service}: {e.entry} at {where}, before pam_systemd "
                                        "(not placed: see the error for that line)"))
            elif e.entry == "pam_python" and service in pamstack.SETUID_SERVICES:
                findings.append(Finding("pam", "info", f"{service}: {e.entry} at {where}, {e.position} "
                                        "(unsafe in a setuid client's stack: see the error for that line)"))
            else:
                findings.append(Finding("pam", "ok", f"{service}: {e.entry} at {where}, {e.position}"))
        if len(used) > 1:
            findings.append(Finding(
                "pam", "warning", f"{service}: {len(used)} pam-vrf lines in one session stack "
                f"({', '.join(f'{u.entry} at {os.path.basename(u.file)}:{u.line}' for u in used)})",
                "the session is placed twice, and the second request sees a session that is already placed",
                "keep one: pam_vrf.so from common-session, or the pam_python entry in sshd's own file "
                "without common-session's line", used[1].file, used[1].line))
    if not any(e.entry != "none" for entries in by_service.values() for e in entries):
        findings.append(Finding(
            "pam", "warning", "none of the login services "
            f"({', '.join(s for s in LOGIN_SERVICES if s in by_service) or 'none found'}) "
            "has a pam-vrf line: nothing will be placed",
            "pam-vrf places a session only when its PAM session stack asks the helper",
            f"pam-auth-update --enable pam-vrf, or add `{pamstack.SAFE_LINE}` after pam_systemd",
            pam_dir))
