"""What a request may do, decided from its peer's credentials (SO_PEERCRED).

    ping     anyone
    attach   root only: the PAM hook (running as root in sshd/login) has
             created <...>/vrf/NAME and asks for NAME's program on it
    attach-manager  root only: the same program on user-UID.slice/user@UID.service
    place    anyone, for themselves only (root: any pid): move into a VRF
             that vrf.conf lets them `pam-vrf exec` into

Every refusal is logged with the peer and the reason.
"""

import os
import pwd
from typing import NamedTuple

from pam_vrf import cgroup, netdev, policy, protocol
from pam_vrf.helper.attachments import Conflict
from pam_vrf.helper.links import DeviceError
from pam_vrf.sockspec import parse_item


class Refused(Exception):
    pass


class Peer(NamedTuple):
    pid: int
    uid: int
    gid: int
    pidfd: int          # -1 when the kernel could not give one

    def __str__(self):
        return f"pid {self.pid} uid {self.uid}"


class Handler:
    def __init__(self, attachments, links, config, log):
        self.attachments, self.links, self.config, self.log = attachments, links, config, log
        self.netns = cgroup.netns_name()

    def handle(self, request, peer):
        op = request.get("op")
        self.log.debug(f"request {op!r} from {peer}")
        try:
            if op == "ping":
                return protocol.reply(version=protocol.VERSION)
            if op == "attach":
                return self.attach(request, peer)
            if op == "attach-manager":
                return self.attach_manager(request, peer)
            if op == "place":
                return self.place(request, peer)
            raise Refused(f"unknown op {op!r}")
        except Refused as e:
            self.log.warning(f"refused {op} from {peer}: {e}")
            return protocol.reply(False, error=str(e))
        except Exception as e:      # a bug answers with an error; the helper keeps serving
            self.log.err(f"internal error handling {op} from {peer}: {type(e).__name__}: {e}")
            return protocol.reply(False, error=f"internal error: {type(e).__name__}")

    # -- attach ------------------------------------------------------------

    def attach(self, request, peer):
        if peer.uid != 0:
            raise Refused("only root may attach programs to session cgroups")
        vrf = _vrf_name(request.get("vrf"))
        path = self._cgroup_dir(request.get("cgroup"), [cgroup.VRF_DIR, vrf],
                                f"is not a .../vrf/{vrf} cgroup")
        return self._attach_rule(request, vrf, path, peer)

    def attach_manager(self, request, peer):
        """Root only: bind what a user's systemd manager starts to the VRF of
        the session just placed (user@UID.service sits outside the session)."""
        if peer.uid != 0:
            raise Refused("only root may attach programs to a user manager's cgroup")
        vrf = _vrf_name(request.get("vrf"))
        uid = request.get("uid")
        if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
            raise Refused("uid must be a non-negative integer")
        path = self._cgroup_dir(request.get("cgroup"), [f"user-{uid}.slice", f"user@{uid}.service"],
                                f"is not the systemd manager cgroup of uid {uid}")
        return self._attach_rule(request, vrf, path, peer)

    def _attach_rule(self, request, vrf, path, peer):
        rule = _rule(request.get("rule"))
        ifindex = self._resolve(vrf, rule["plain"])
        prog_id = self._attach(path, vrf, rule, ifindex)
        self.log.info(f"attached program {prog_id} ({vrf}, ifindex {ifindex}) to {path} for {peer}")
        return protocol.reply(prog_id=prog_id, ifindex=ifindex)

    def _cgroup_dir(self, where, last_two, what):
        """The directory of hierarchy path `where`, whose last two components
        must be `last_two` (no '.' or '..' anywhere)."""
        if not isinstance(where, str) or not where.startswith("/") or "\0" in where:
            raise Refused("cgroup must be an absolute hierarchy path")
        parts = where.split("/")
        if ".." in parts or "." in parts or parts[-2:] != last_two:
            raise Refused(f"{where!r} {what}")
        try:
            path = cgroup.fs_path(where)
        except cgroup.CgroupError as e:
            raise Refused(str(e)) from None
        if not os.path.isdir(path) or os.path.islink(path):
            raise Refused(f"no cgroup {where}")
        return path

    def _resolve(self, vrf, plain):
        try:
            return self.links.resolve(vrf, plain)
        except DeviceError as e:
            raise Refused(str(e)) from None

    def _attach(self, path, vrf, rule, ifindex):
        try:
            return self.attachments.attach(path, vrf, rule, ifindex)
        except (OSError, Conflict) as e:
            raise Refused(str(e)) from None

    # -- place (pam-vrf exec) ------------------------------------------------

    def place(self, request, peer):
        vrf = request.get("vrf")
        vrf = policy.DEFAULT_VRF if vrf == policy.DEFAULT_VRF else _vrf_name(vrf)
        pid = request.get("pid", peer.pid)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise Refused("pid must be a positive integer")
        if pid != peer.pid and peer.uid != 0:
            raise Refused(f"uid {peer.uid} may only place itself, not pid {pid}")
        rule = self._exec_rule(peer, vrf)
        try:
            path = cgroup.vrf_path(vrf, pid, netns=self.netns)
            if cgroup.fs_path(cgroup.cgroup_of(pid)) == path:
                # Already there: re-attaching would put the exec rule's program
                # in place of the login rule's (and could drop its deny= items).
                return protocol.reply(cgroup=path)
            ifindex = None
            if vrf != policy.DEFAULT_VRF:     # the device first: no cgroup for a refusal
                fields = protocol.rule_fields(rule) if rule else {"deny": [], "mark": None,
                                                                  "priority": None, "plain": False}
                ifindex = self._resolve(vrf, fields["plain"])
            cgroup.ensure(path)
            if ifindex is not None:
                self._attach(path, vrf, fields, ifindex)
            self._alive(peer, pid)
            cgroup.move(pid, path)
            self._alive(peer, pid)
        except cgroup.CgroupError as e:
            raise Refused(str(e)) from None
        self.log.info(f"placed pid {pid} in VRF {vrf} ({path}) for {peer}")
        return protocol.reply(cgroup=path)

    def _exec_rule(self, peer, vrf):
        """The rule that lets the peer enter `vrf` (None for root: root may enter any)."""
        if peer.uid == 0:
            return None
        try:
            user = pwd.getpwuid(peer.uid).pw_name
        except KeyError:
            raise Refused(f"uid {peer.uid} has no passwd entry") from None
        try:
            rules = policy.load(self.config)
        except policy.ConfigError as e:
            raise Refused(f"policy unreadable: {e}") from None
        # exec= belongs to the user's first rule, whatever services= it names.
        rule = policy.decide(rules, user, policy.ANY_SERVICE)
        if rule is None or vrf not in rule.exec:
            where = f" (rule {rule.where})" if rule else ""
            raise Refused(f"{user} may not enter VRF {vrf}: no exec={vrf} in vrf.conf{where}")
        return rule

    def _alive(self, peer, pid):
        """With the caller's pidfd, make sure `pid` is still the caller (no pid reuse)."""
        if pid != peer.pid or peer.pidfd < 0:
            return
        try:
            with open(f"/proc/self/fdinfo/{peer.pidfd}") as f:
                for line in f:
                    if line.startswith("Pid:"):
                        if int(line.split()[1]) != pid:
                            raise Refused(f"caller pid {pid} exited")
                        return
        except OSError as e:
            raise Refused(f"cannot check caller pid {pid}: {e.strerror}") from None


def _vrf_name(name):
    if not isinstance(name, str):
        raise Refused("vrf must be a string")
    problem = netdev.check_ifname(name)
    if problem or name == policy.DEFAULT_VRF:
        raise Refused(f"bad VRF name {name!r}: {problem or 'default has no program'}")
    return name


def _rule(fields):
    if not isinstance(fields, dict) or set(fields) != {"deny", "mark", "priority", "plain"}:
        raise Refused("rule must be an object with deny, mark, priority and plain")
    deny = fields["deny"]
    if not isinstance(deny, list) or len(deny) > 64 or not all(isinstance(d, str) for d in deny):
        raise Refused("rule.deny must be a list of at most 64 strings")
    for text in deny:
        try:
            parse_item(text)
        except ValueError as e:
            raise Refused(f"bad deny item: {e}") from None
    for key in ("mark", "priority"):
        value = fields[key]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 0 <= value <= 0xFFFFFFFF):
            raise Refused(f"rule.{key} must be null or a 32-bit unsigned integer")
    if not isinstance(fields["plain"], bool):
        raise Refused("rule.plain must be true or false")
    return fields
