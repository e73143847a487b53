"""`pam-vrf`: check the policy, ask what it decides, and look at placements.

Exit codes: 0 success; 1 the thing asked about is wrong or failed (bad
config, no such process, kernel refusal); 2 wrong usage; 3 (trace) this
host lacks what it needs (bcc, kernel headers).
"""

import argparse
import os
import sys

from pam_vrf import cgroup, netdev, policy, protocol
from pam_vrf.bpf.syscall import BpfError
from pam_vrf.sockspec import item_text

DROPIN_DIR = policy.DEFAULT_CONFIG + ".d"


def _err(message):
    print(f"pam-vrf: {message}", file=sys.stderr)


def cmd_check(args):
    """The policy (FILE:LINE errors, with the helper's own limits), then the
    PAM stacks that would run pam-vrf (pamstack.audit)."""
    try:
        rules = policy.load(args.config)
    except policy.ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    for rule in rules:
        if rule.places:
            problem = netdev.device_problem(rule.target, rule.plain)
            if problem:
                print(f"{rule.where}: warning: {problem}", file=sys.stderr)
    if args.config == policy.DEFAULT_CONFIG and os.path.isdir(DROPIN_DIR):
        print(f"{DROPIN_DIR}: warning: drop-in files are not read; put rules into {args.config}",
              file=sys.stderr)
    print(f"{args.config}: OK, {len(rules)} rule{'s' if len(rules) != 1 else ''}")
    from pam_vrf import pamstack
    findings = pamstack.audit(args.pam_dir)
    for finding in findings:
        print(finding, file=sys.stderr)
    errors = sum(1 for f in findings if f.level == "error")
    if errors:
        print(f"{args.pam_dir}: {errors} error{'s' if errors != 1 else ''} in the PAM stacks", file=sys.stderr)
        return 1
    return 0


def cmd_which(args):
    try:
        rules = policy.load(args.config)
    except policy.ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    who = policy.account(args.user)
    # A failed look-up is not "no such user": decide() names the failure
    # (Undecidable) where a rule depends on it.
    if not who.gids and not who.error:
        _err(f"warning: no user '{args.user}' in the passwd database; only name and '*' rules can match")
    try:
        rule = policy.decide(rules, who, args.service)
    except policy.Undecidable as e:
        _err(f"{e}" + ("; a strict rule may apply: the login would be refused" if e.strict else
                       "; the login would proceed unplaced"))
        return 1
    if rule is None:
        print(f"{policy.LEAVE_ALONE}\t(no matching rule)")
    else:
        print(f"{rule.target}\t{rule.where}\t{' '.join(filter(None, (rule.who, rule.target, rule.options_text())))}")
    return 0


def cmd_identify(args):
    try:
        name = cgroup.identify(args.pid)
    except cgroup.CgroupError as e:
        _err(e)
        return 1
    if name:
        print(name)
    return 0


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "<terminated?>"


def cmd_pids(args):
    problem = netdev.check_ifname(args.vrf)
    if problem:
        _err(f"invalid VRF name '{args.vrf}': {problem}")
        return 1
    try:
        dirs = [path for path, name in cgroup.vrf_dirs() if name == args.vrf]
    except cgroup.CgroupError as e:
        _err(e)
        return 1
    status = 0
    for path in dirs:
        try:
            pids = cgroup.members(path)
        except OSError as e:
            _err(f"cannot read {path}: {e.strerror}")
            status = 1
            continue
        for pid in pids:
            print(f"{pid:>5}  {_comm(pid)}")
    return status


def _describe_settings(settings, foreign_netns):
    if settings is None:
        return "not a VRF program"
    words = []
    if settings.ifindex is not None:
        if foreign_netns:       # ifindexes are per network namespace
            words.append(f"bind ifindex {settings.ifindex} in netns {foreign_netns}")
        else:
            name = netdev.ifname(settings.ifindex)
            words.append(f"bind {name or '?'} (ifindex {settings.ifindex}{'' if name else ', no such device'})")
    for triple in settings.deny:
        words.append("deny " + item_text(*triple))
    if settings.mark is not None:
        words.append(f"mark {settings.mark:#x}")
    if settings.priority is not None:
        words.append(f"priority {settings.priority}")
    return ", ".join(words)


def _print_egress(path, foreign_netns):
    """The cgroup's egress programs: where packets may leave, what was dropped."""
    from pam_vrf import programs
    from pam_vrf.bpf import joinprog, syscall

    def egress(prog_id):
        info, allowed, dropped = programs.read_back_egress(prog_id)
        if allowed is None:
            return f"({info.name or 'unnamed'}): not pam-vrf's"
        if foreign_netns:
            where = ", ".join(f"ifindex {i}" for i in sorted(allowed)) + f" in netns {foreign_netns}"
        else:
            where = ", ".join(f"{netdev.ifname(i) or '?'}" + ("" if netdev.ifname(i) else f" (ifindex {i}, gone)")
                              for i in sorted(allowed))
        return (f"(pam-vrf): out only by {where}; "
                f"dropped {dropped} packet{'s' if dropped != 1 else ''} leaving by another link")

    def join(prog_id):
        name = programs.read_back_name(prog_id)
        what = "multicast joins only on the devices above" if name == joinprog.PROG_NAME else "not pam-vrf's"
        return f"({name or 'unnamed'}): {what}"

    status = 0
    for attach_type, kind, describe in ((syscall.CGROUP_INET_EGRESS, "egress", egress),
                                        (syscall.CGROUP_SETSOCKOPT, "setsockopt", join)):
        status |= _print_programs(path, attach_type, kind, describe)
    return status


def _print_programs(path, attach_type, kind, describe):
    """One line per program of `attach_type` on the cgroup: `describe(prog_id)`."""
    from pam_vrf.bpf import cgroup_link
    try:
        attached = cgroup_link.query(path, attach_type)
    except BpfError as e:
        print(f"  {kind} programs: {e}")
        return 1
    for item in attached:
        try:
            print(f"  {kind} prog {item.prog_id} {describe(item.prog_id)}")
        except BpfError as e:
            print(f"  {kind} prog {item.prog_id}: {e}")
    return 0


def cmd_status(args):
    # Imported here: `check`/`which`/`identify` must work without bpf(2).
    from pam_vrf import programs
    from pam_vrf.bpf import cgroup_link
    try:
        mount = cgroup.mount_point()
        dirs = list(cgroup.vrf_dirs(mount))
    except cgroup.CgroupError as e:
        _err(e)
        return 1
    if not dirs:
        print(f"no VRF cgroups under {mount}")
        return 0
    status = 0
    here = cgroup.netns_name()
    for path, name in dirs:
        pids = cgroup.members(path)
        owner_ns = cgroup.netns_level(path)
        foreign = owner_ns if owner_ns and owner_ns != here else ""
        print(f"{path}  vrf={name or 'default'}  pids={len(pids)}")
        try:
            attached = cgroup_link.query(path)
        except BpfError as e:
            print(f"  programs: {e}")
            status = 1
            attached = []
        for item in attached:
            try:
                info, settings = programs.read_back(item.prog_id)
                owner = "pam-vrf" if info.name == "pam_vrf" else (info.name or "unnamed, e.g. ip vrf exec")
                print(f"  prog {item.prog_id} ({owner}): {_describe_settings(settings, foreign)}")
            except BpfError as e:
                print(f"  prog {item.prog_id}: {e}")
        status |= _print_egress(path, foreign)
        for pid in pids[: args.max_pids]:
            print(f"  {pid:>7}  {_comm(pid)}")
        if len(pids) > args.max_pids:
            print(f"  ... {len(pids) - args.max_pids} more")
    return status


def cmd_exec(args):
    """Run a command in a VRF. The helper moves this process (it is the one
    placement authority): root may enter any VRF, other users those vrf.conf
    grants them with exec=."""
    from pam_vrf import client
    command = list(args.command)
    while command and command[0] != "--" and command[0].startswith("--"):
        option = command.pop(0)       # options written after VRF (argparse leaves them here)
        if option == "--plain":
            args.plain = True
        elif option == "--socket" and command:
            args.socket = command.pop(0)
        elif option.startswith("--socket="):
            args.socket = option.split("=", 1)[1]
        else:
            _err(f"unknown option {option} (options go before the command's '--')")
            return 2
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        _err("no command given: pam-vrf exec VRF -- COMMAND [ARGS...]")
        return 2
    if args.vrf != policy.DEFAULT_VRF:
        problem = netdev.check_ifname(args.vrf)
        if problem:
            _err(f"invalid VRF name '{args.vrf}': {problem}")
            return 1
    request = {"op": "place", "vrf": args.vrf}
    if args.plain:
        request["plain"] = True
    try:
        client.call(request, args.socket)
    except client.HelperDown as e:
        _err(f"cannot enter VRF {args.vrf}: {e}" + ("; root can use `ip vrf exec` instead" if os.getuid() == 0 else ""))
        return 1
    except client.HelperError as e:
        _err(f"cannot enter VRF {args.vrf}: {e}")
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as e:
        _err(f"cannot run {command[0]}: {e.strerror}")
        return 127


def cmd_doctor(args):
    """Check that placement works end to end on this host (pam_vrf.doctor)."""
    from pam_vrf import doctor
    return doctor.main(args)


def cmd_trace(args):
    """Live lines for sockets created in pam-vrf cgroups (pam_vrf.trace; bcc)."""
    from pam_vrf import paths, trace
    args.state = args.state or paths.state_file(args.socket)
    return trace.main(args)


def parser():
    p = argparse.ArgumentParser(prog="pam-vrf", description="Login-time VRF placement: policy and state.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="validate vrf.conf (FILE:LINE: message on errors) and audit the PAM stacks")
    c.add_argument("--config", default=policy.DEFAULT_CONFIG)
    c.add_argument("--pam-dir", default="/etc/pam.d", help="PAM configuration to audit (default /etc/pam.d)")
    c.set_defaults(func=cmd_check)

    c = sub.add_parser("which", help="print the VRF decision for a user")
    c.add_argument("user")
    c.add_argument("--service", help="PAM service name (default: none, so services= rules do not match)")
    c.add_argument("--config", default=policy.DEFAULT_CONFIG)
    c.set_defaults(func=cmd_which)

    c = sub.add_parser("identify", help="print the VRF of a process (like ip vrf identify)")
    c.add_argument("pid", nargs="?", type=int, default=os.getpid(),
                   help="process id (default: this process, i.e. the caller's cgroup)")
    c.set_defaults(func=cmd_identify)

    c = sub.add_parser("pids", help="list the processes in a VRF (like ip vrf pids)")
    c.add_argument("vrf")
    c.set_defaults(func=cmd_pids)

    c = sub.add_parser("exec", help="run a command in a VRF (non-root: if vrf.conf grants exec=VRF)")
    c.add_argument("vrf")
    c.add_argument("command", nargs=argparse.REMAINDER)
    c.add_argument("--plain", action="store_true", help="root only: VRF is an ordinary interface")
    c.add_argument("--socket", default=protocol.DEFAULT_SOCKET)
    c.set_defaults(func=cmd_exec)

    c = sub.add_parser("status", help="VRF cgroups, their programs and member processes")
    c.add_argument("--max-pids", type=int, default=20)
    c.set_defaults(func=cmd_status)

    c = sub.add_parser("doctor", help="check that placement works end to end on this host (run as root)")
    c.add_argument("--config", default=policy.DEFAULT_CONFIG, metavar="FILE",
                   help="the policy (default %(default)s)")
    c.add_argument("--socket", default=protocol.DEFAULT_SOCKET, metavar="PATH",
                   help="the helper's public socket; root.sock beside it (default %(default)s)")
    c.add_argument("--pam-dir", default="/etc/pam.d", metavar="DIR",
                   help="PAM configuration to audit (default %(default)s)")
    c.add_argument("--resolv-conf", default="/etc/resolv.conf", metavar="FILE",
                   help="nameservers to test from each VRF (default %(default)s)")
    c.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    c.set_defaults(func=cmd_doctor)

    c = sub.add_parser("trace", help="live lines for sockets created in pam-vrf cgroups: bound where, "
                                     "or refused by which rule (root; needs bcc and kernel headers)")
    c.add_argument("--user", help="only sockets of this user (name or uid)")
    c.add_argument("--vrf", help="only sockets of this VRF")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.add_argument("--state", metavar="FILE",
                   help="the helper's state file: which rule each cgroup's program is (default: the "
                        "state file of the helper serving --socket, /run/pam-vrf-helper/attachments.json)")
    c.add_argument("--socket", default=protocol.DEFAULT_SOCKET, metavar="PATH",
                   help="the helper's public socket, to find its state file (default %(default)s)")
    c.set_defaults(func=cmd_trace)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
