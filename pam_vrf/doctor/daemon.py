"""The helper: it answers on both sockets, and runs as a non-root user with
exactly CAP_BPF + CAP_NET_ADMIN + CAP_DAC_OVERRIDE, in our network namespace.

Its pid comes from SO_PEERCRED of a connected socket. That names the process
that called listen(): under systemd socket activation that is PID 1, so then
the holders of the listening socket (/proc/net/unix inode, /proc/PID/fd) name
the helper instead.
"""

import os
import socket
import struct

from pam_vrf import client, protocol
from pam_vrf.doctor import Finding

_UCRED = struct.Struct("3i")

CAP_DAC_OVERRIDE, CAP_NET_ADMIN, CAP_BPF = 1, 12, 39
REQUIRED = {
    CAP_BPF: "load sock_create programs",
    CAP_NET_ADMIN: "load, attach and query them",
    CAP_DAC_OVERRIDE: "write cgroup.procs of root-owned cgroups, i.e. move sessions",
}
CAP_NAMES = (
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable "
    "net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio "
    "sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time "
    "sys_tty_config mknod lease audit_write audit_control setfcap mac_override mac_admin syslog "
    "wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore").split()
UNIT_FIX = ("start it as its own user with exactly these capabilities: the shipped unit "
            "(User=pam-vrf, AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_DAC_OVERRIDE, "
            "CapabilityBoundingSet= the same) or setpriv --reuid pam-vrf --regid pam-vrf --init-groups "
            "--inh-caps +bpf,+net_admin,+dac_override --ambient-caps +bpf,+net_admin,+dac_override")


class Unreachable(Exception):
    pass


def cap_name(number):
    return "CAP_" + (CAP_NAMES[number] if number < len(CAP_NAMES) else str(number)).upper()


def ping(path, timeout=protocol.TIMEOUT):
    """(reply, (pid, uid, gid) of the listening side) of a ping on `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as e:
            raise Unreachable(client.connect_failure(e, path)) from None
        cred = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        pidfd = os.pidfd_open(os.getpid())
        try:
            sock.sendmsg([protocol.encode({"v": protocol.VERSION, "op": "ping"})],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", pidfd))])
            data = sock.recv(protocol.MAX_MESSAGE + 1)
        except socket.timeout:
            raise Unreachable(f"no answer on {path} within {timeout:g}s (helper stopped or stuck?)") from None
        except OSError as e:
            raise Unreachable(f"{path}: {e.strerror}") from None
        finally:
            os.close(pidfd)
    finally:
        sock.close()
    if not data:
        raise Unreachable(f"{path}: connection closed without an answer")
    try:
        reply = protocol.decode(data)
    except protocol.ProtocolError as e:
        raise Unreachable(f"{path}: bad answer: {e}") from None
    if not reply.get("ok"):
        raise Unreachable(f"{path}: ping refused: {reply.get('error', 'no reason given')}")
    return reply, cred


def _argv(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _cmdline(pid):
    return " ".join(_argv(pid)).strip()


def is_helper(pid):
    """Is `pid` pam-vrf-helper itself (the script, or python3 running it or its module),
    not merely a process with the helper somewhere in its arguments (a launcher)?"""
    head = _argv(pid)[:3]
    return any(os.path.basename(word) == "pam-vrf-helper" or word.startswith("pam_vrf.helper")
               for word in head)


def socket_holders(path):
    """Pids holding the listening socket bound at `path` (this network namespace)."""
    names = {path, os.path.abspath(path)}
    inodes = set()
    try:
        with open("/proc/net/unix") as f:
            next(f, None)
            for line in f:
                parts = line.split(None, 7)
                if len(parts) == 8 and parts[7].rstrip("\n") in names and int(parts[3], 16) & 0x10000:
                    inodes.add(f"socket:[{parts[6]}]")
    except OSError:
        return []
    pids = []
    if not inodes:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    pids.append(int(entry))
                    break
            except OSError:
                continue
    return sorted(pids)


def read_status(pid):
    """{'Uid': [...], 'CapPrm': int, 'CapEff': int, 'Name': str} from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            value = value.strip()
            if key in ("Uid", "Gid"):
                out[key] = [int(v) for v in value.split()]
            elif key.startswith("Cap"):
                out[key] = int(value, 16)
            elif key == "Name":
                out[key] = value
    return out


def _caps(mask):
    return {n for n in range(64) if mask >> n & 1}


def judge_process(pid, status):
    """Findings about the helper process from its /proc status."""
    findings = []
    uids = status.get("Uid", [])
    if not uids or 0 in uids:
        findings.append(Finding(
            "helper", "error", f"the helper (pid {pid}) runs as root (uids {' '.join(map(str, uids))})",
            "it is meant to hold three capabilities and no more: a flaw in it would be a root compromise",
            UNIT_FIX))
    for key in ("CapEff", "CapPrm"):
        held = _caps(status.get(key, 0))
        missing = sorted(set(REQUIRED) - held)
        extra = sorted(held - set(REQUIRED))
        if missing:
            findings.append(Finding(
                "helper", "error", f"the helper (pid {pid}) lacks {', '.join(map(cap_name, missing))} in {key}",
                "it needs them to " + "; to ".join(REQUIRED[c] for c in missing)
                + ": placements fail and sessions proceed unplaced", UNIT_FIX))
        if extra and 0 not in uids:
            findings.append(Finding(
                "helper", "warning", f"the helper (pid {pid}) holds more than it needs in {key}: "
                f"{', '.join(map(cap_name, extra))}",
                "every extra capability is power an attacker gains through a flaw in the helper",
                UNIT_FIX))
    if not findings:
        findings.append(Finding(
            "helper", "ok", f"the helper (pid {pid}, uid {uids[0]}) holds exactly "
            f"{', '.join(cap_name(c) for c in sorted(REQUIRED))}"))
    return findings


def _same_netns(pid):
    try:
        theirs, ours = os.stat(f"/proc/{pid}/ns/net"), os.stat("/proc/self/ns/net")
    except OSError:
        return None
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def check(findings, socket_path, root):
    """Check 2; returns the helper's pid (None when it cannot be found)."""
    root_path = protocol.root_socket(socket_path)
    start_fix = ("start it: systemctl enable --now pam-vrf-helper.socket pam-vrf-helper-root.socket "
                 "pam-vrf-helper.service (or run pam-vrf-helper --socket PATH)")
    cred = None
    try:
        reply, cred = ping(socket_path)
        findings.append(Finding("helper", "ok", f"answers on {socket_path} (protocol v{reply.get('version')})"))
    except Unreachable as e:
        findings.append(Finding("helper", "error", f"not reachable: {e}",
                                "`pam-vrf exec` fails, and without the helper logins proceed unplaced "
                                "(strict rules refuse them)", start_fix))
    if root:
        try:
            _, root_cred = ping(root_path)
            cred = cred or root_cred
            findings.append(Finding("helper", "ok", f"answers on {root_path}"))
        except Unreachable as e:
            findings.append(Finding("helper", "error", f"not reachable on the PAM entries' socket: {e}",
                                    "pam_vrf.so and the pam_python hook talk to root.sock: without it every "
                                    "login proceeds unplaced (strict rules refuse it)", start_fix))
    else:
        findings.append(Finding("helper", "info", f"{root_path} not tried (root only)"))
    if cred is None:
        return None

    pid, via = cred[0], ""
    if pid <= 1 or not is_helper(pid):
        holders = [p for p in socket_holders(socket_path) if p > 1 and p != pid]
        helpers = [p for p in holders if is_helper(p)] or holders
        if not helpers:
            findings.append(Finding(
                "helper", "warning", f"cannot tell which process serves {socket_path} (the listening "
                f"socket was made by pid {pid}: {_cmdline(pid) or '?'})",
                "its uid and capabilities were not checked",
                "run pam-vrf doctor as root in the helper's network namespace"))
            return None
        pid, via = helpers[0], f" (socket made by pid {cred[0]}, e.g. socket activation)"
    try:
        status = read_status(pid)
    except OSError as e:
        findings.append(Finding("helper", "warning", f"cannot read /proc/{pid}/status: {e.strerror}",
                                "its uid and capabilities were not checked", ""))
        return pid
    for finding in judge_process(pid, status):
        findings.append(finding._replace(what=finding.what + via) if via and finding.level == "ok" else finding)
    if root and _same_netns(pid) is False:
        findings.append(Finding(
            "helper", "warning", f"the helper (pid {pid}) runs in another network namespace than this command",
            "it resolves VRF names in its own namespace; the device, self-test and resolver checks "
            "here used this one",
            f"run the doctor in the helper's namespace: nsenter --net=/proc/{pid}/ns/net pam-vrf doctor"))
    return pid
