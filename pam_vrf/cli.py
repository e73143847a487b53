"""`pam-vrf`: check the policy, ask what it decides, and look at placements.

Exit codes: 0 success; 1 the thing asked about is wrong or failed (bad
config, no such process, kernel refusal); 2 wrong usage.
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
    return 0


def cmd_which(args):
    try:
        rules = policy.load(args.config)
    except policy.ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    who = policy.account(args.user)
    if not who.gids:
        _err(f"warning: no user '{args.user}' in the passwd database; only name and '*' rules can match")
    rule = policy.decide(rules, who, args.service)
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
        for pid in pids[: args.max_pids]:
            print(f"  {pid:>7}  {_comm(pid)}")
        if len(pids) > args.max_pids:
            print(f"  ... {len(pids) - args.max_pids} more")
    return status


def cmd_pam_exec(args):
    """Entry for pam_exec: PAM_TYPE/PAM_USER/PAM_SERVICE come in the environment;
    the PAM caller is our parent. Exit 0 lets the session proceed, 1 refuses."""
    from pam_vrf import session
    if os.environ.get("PAM_TYPE") != "open_session":
        return 0
    verdict = session.hook(os.environ.get("PAM_USER", ""), os.environ.get("PAM_SERVICE"),
                           os.getppid(), args.options)
    return 0 if verdict == session.PROCEED else 1


def cmd_exec(args):
    """Run a command in a VRF. Root places itself (as `ip vrf exec` does);
    other users ask the helper, which checks vrf.conf's exec= permission."""
    from pam_vrf import client
    command = list(args.command)
    while command and command[0] != "--" and command[0].startswith("--"):
        option = command.pop(0)       # options written after VRF (argparse leaves them here)
        if option == "--plain":
            args.plain = True
        elif option == "--via-helper":
            args.via_helper = True
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
    try:
        if os.getuid() == 0 and not args.via_helper:
            _place_self(args.vrf, args.plain)
        else:
            client.call({"op": "place", "vrf": args.vrf}, args.socket)
    except (client.HelperError, cgroup.CgroupError, BpfError, LookupError, ValueError) as e:
        _err(f"cannot enter VRF {args.vrf}: {e}")
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as e:
        _err(f"cannot run {command[0]}: {e.strerror}")
        return 127


def _place_self(vrf, plain):
    from pam_vrf import programs
    from pam_vrf.bpf.sockprog import Settings
    path = cgroup.vrf_path(vrf, mount=cgroup.mount_point(create=True))
    bind = vrf != policy.DEFAULT_VRF          # the default VRF is a cgroup without a program
    if bind:
        problem = netdev.device_problem(vrf, plain)
        if problem:
            raise ValueError(problem)
    cgroup.ensure(path)
    if bind:
        programs.attach(path, Settings(ifindex=netdev.ifindex(vrf)))
    cgroup.move(os.getpid(), path)


def parser():
    p = argparse.ArgumentParser(prog="pam-vrf", description="Login-time VRF placement: policy and state.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="validate vrf.conf (FILE:LINE: message on errors)")
    c.add_argument("--config", default=policy.DEFAULT_CONFIG)
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
    c.add_argument("--via-helper", action="store_true", help="root: go through the helper too")
    c.add_argument("--socket", default=protocol.DEFAULT_SOCKET)
    c.set_defaults(func=cmd_exec)

    c = sub.add_parser("pam-exec", help="session hook for pam_exec (moves the PAM caller)")
    c.add_argument("options", nargs="*", help="config=PATH socket=PATH debug")
    c.set_defaults(func=cmd_pam_exec)

    c = sub.add_parser("status", help="VRF cgroups, their programs and member processes")
    c.add_argument("--max-pids", type=int, default=20)
    c.set_defaults(func=cmd_status)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
