"""The one placement routine, and the two decisions that use it.

    open_session()   a login (root-only socket): vrf.conf decides for the
                     account and PAM service; the caller is placed, and the
                     user's systemd manager bound to the same VRF
    exec_place()     `pam-vrf exec` (any user): root may enter any VRF, others
                     only what their rule grants with exec=
    move()           both: every guard lives here, nowhere else

The process is always the requester itself, pinned by its pidfd (see
pam_vrf.process); nothing here takes a pid from a message.
"""

import hashlib
import os
import re

from pam_vrf import cgroup, nss, policy, process, protocol
from pam_vrf.bpf import cgroup_link
from pam_vrf.bpf.syscall import BpfError
from pam_vrf.helper.attachments import Conflict
from pam_vrf.helper.links import DeviceError
from pam_vrf.helper.policy_cache import Unavailable

# cgroups the helper may place one non-root user's `pam-vrf exec` in (each
# is a program attachment the helper keeps track of), whoever made them.
MAX_CGROUPS_PER_UID = 32


class PlacementError(Exception):
    pass


def verdict(kind, **fields):
    return protocol.reply(verdict=kind, **{k: v for k, v in fields.items() if v is not None})


class Placement:
    def __init__(self, attachments, links, policy_cache, log):
        self.attachments, self.links, self.policy, self.log = attachments, links, policy_cache, log
        self.netns = cgroup.netns_name()
        self._created = {}          # uid -> cgroup directories made for its `pam-vrf exec`
        self._reach, self._reach_of = None, None    # _manager_rule()'s rules, and what they came from

    # -- logins --------------------------------------------------------------

    def open_session(self, proc, user, service):
        """Decide and place a login's PAM caller; returns the reply (a verdict)."""
        who = f"user {user} (service {service or '-'})"
        if service == policy.MANAGER_SERVICE:
            return self._manager_session(proc, user, who)
        try:
            rules = self.policy.rules()
        except Unavailable as e:
            self.log.err(f"{who} left unplaced: {e}")
            return verdict("unplaced", error=str(e))
        account = policy.account(user)
        try:
            rule = policy.decide(rules, account, service)
        except policy.Undecidable as e:
            return self._unplaceable(who, e, None)
        if rule is None or rule.target == policy.LEAVE_ALONE:
            self.log.debug(f"{who} left alone ({rule.where if rule else 'no matching rule'})")
            return verdict("alone", rule=rule.where if rule else None)

        uid = account.uid
        try:
            current = cgroup.cgroup_of(proc.pid)      # read once for what follows
        except cgroup.CgroupError:
            current = None                          # each step below reads again and says why
        kept, by = self._confined_self_session(proc, uid, current)
        if kept is not None:
            self.log.notice(f"{who}: pid {proc.pid}, a session {by} for its own account, keeps its "
                            f"placement ({kept}); rule {rule.where} not applied")
            return verdict("kept", vrf=cgroup.vrf_of(kept) or None, rule=rule.where, cgroup=kept)

        problem = self._manager_mismatch(proc, uid, rules, account, rule, current) \
            if rule.strict and rule.places else None
        if problem:
            self.log.err(f"refusing session of {who}: {problem} (strict rule {rule.where})")
            return verdict("refused", error=problem, rule=rule.where)
        try:
            where = self.move(proc, rule.target, rule.program, account=uid, reattach=True,
                              source=rule.where, current=current)
        except PlacementError as e:
            return self._unplaceable(who, rule, e)
        placed = f"{who} placed in VRF {rule.target} (rule {rule.where}), cgroup {where}, pid {proc.pid}"
        try:
            # Also at login: a manager that started before the policy changed.
            manager = self._bind_manager(proc, uid, self._manager_rule(rules, account), current=where) \
                if rule.places else None
        except (PlacementError, policy.Undecidable) as e:
            if rule.strict:
                self.log.err(f"refusing session of {who}: {e} (strict rule {rule.where}); it was "
                             f"placed in {where}, but what its systemd manager starts would not be")
                return verdict("refused", error=str(e), rule=rule.where)
            self.log.err(f"{placed}; but {e}: what it starts (systemd-run --user) is not placed")
            return verdict("placed", vrf=rule.target, rule=rule.where, cgroup=where, error=str(e))
        self.log.info(placed + (f"; systemd user manager {manager} bound too" if manager else ""))
        return verdict("placed", vrf=rule.target, rule=rule.where, cgroup=where)

    def _confined_self_session(self, proc, uid, current=None):
        """A non-root invoker opening a session for their own account (su to
        oneself, sudo -u self) must not loosen where they already are: the
        cgroup they are in, when a sock-create program already covers it.
        The invoker: the PAM caller's real uid (util-linux su, and sudo
        1.9.13/1.9.16 keep it: measured). Never PAM_RUSER: a root daemon may
        take it from the network (rshd/rlogind set the name the remote client
        claims), and a daemon running in a VRF would then keep a session out
        of its own, possibly strict, rule. Not the audit loginuid either:
        pam_loginuid sets it in sshd's and login's own stack, before us, and
        an unset one can be set by the process itself.
        Returns (cgroup or None, who)."""
        if uid is None or uid == 0 or proc.ruid != uid:
            return None, None
        by = f"of uid {uid}"
        try:
            current = current or cgroup.cgroup_of(proc.pid)
            if cgroup.vrf_of(current) or cgroup_link.effective(cgroup.fs_path(current)):
                return current, by
        except (cgroup.CgroupError, BpfError) as e:
            # Cannot tell: keeping it where it is is never a loosening.
            self.log.warning(f"cannot read the placement of pid {proc.pid}: {e}; keeping it")
            return "?", by
        return None, None

    # -- the user's systemd manager ----------------------------------------------

    def _manager_session(self, proc, user, who):
        """The PAM session that starts `systemd --user` (its caller becomes the
        manager, already in user@UID.service). logind answers a login only once
        user@UID.service has started (systemd 252's manager reports ready at
        basic.target; default.target's units start alongside the login): what
        it starts with it (socket units, a oneshot that keeps sockets) would
        make its sockets before the login is placed, unbound for ever. So user@UID.service itself is bound
        here, before the manager runs. The process is not moved: that cgroup is
        the tree systemd delegates to the user."""
        # The account is the uid systemd started user@UID.service for (it named
        # it by getpwuid): a directory account NSS reports under a local
        # account's name must not get the local account's rule.
        uid = _manager_uid(proc.pid)
        if uid is None:
            uid = _uid_of(user)
        try:
            rules = self.policy.rules()
            rule = self._manager_rule(rules, policy.account(user, uid))
        except Unavailable as e:
            self.log.err(f"{who} left unbound: {e}")
            return verdict("unplaced", error=str(e))
        except policy.Undecidable as e:
            return self._unplaceable(who, e, None, "left unbound")
        if rule is None:
            self.log.debug(f"{who} left alone: no rule places a session of {user}")
            return verdict("alone")
        try:
            manager = self._bind_manager(proc, uid, rule, starting=True)
            if manager is None:
                raise PlacementError(f"pid {proc.pid} is not in the user's systemd manager cgroup "
                                     f"(user@UID.service)")
        except PlacementError as e:
            return self._unplaceable(who, rule, e, "left unbound (the systemd user manager)")
        self.log.info(f"{who}: systemd user manager {manager} bound to VRF {rule.target} "
                      f"(rule {rule.where}) before it starts, pid {proc.pid}")
        return verdict("placed", vrf=rule.target, rule=rule.where, cgroup=manager)

    def _manager_mismatch(self, proc, uid, rules, account, rule, current=None):
        """Why a strict rule cannot hold for what this session starts through the
        user's systemd manager (`systemd-run --user`), or None: the manager
        carries the user's first placing rule, and it is another one."""
        try:
            manager = cgroup.user_manager_of(current or cgroup.cgroup_of(proc.pid), uid) if uid is not None else None
            if manager is None or not os.path.isdir(self._directory(manager)):
                return None             # no logind, no manager: nothing to leave through
            carried = self._manager_rule(rules, account)
        except (cgroup.CgroupError, PlacementError):
            return None
        except policy.Undecidable as e:
            return f"the rule of the user's systemd manager is undecidable: {e}"
        if carried is not None and (carried.target, carried.program) == (rule.target, rule.program):
            return None
        return (f"the user's systemd manager carries {'rule ' + carried.where if carried else 'no rule'}, not "
                f"this one: what the session starts with systemd-run --user would leave it (give the account "
                f"one placing rule, or put this one first)")

    def _unplaceable(self, who, found, error, left="left unplaced"):
        """The verdict (policy.unplaceable) when `found` (a Rule, or the
        Undecidable raised instead) cannot be applied: `error` says why."""
        kind, line = policy.unplaceable(who, found, error, left=left)
        self.log.err(line)
        rule = found.where if isinstance(found, policy.Rule) else None
        return verdict(kind, error=str(error or found), rule=rule)

    def _manager_rule(self, rules, account):
        """The rule the user's systemd manager is bound with, or None: the first
        of the account's rules that places, looking past rules that services=
        limits (the manager serves every later session of the user, whichever
        service) but not past one for every service (no later line can apply).
        Raises policy.Undecidable when a name service failure leaves it open."""
        if self._reach_of is not rules:
            reach = policy.Rules(r for r in rules if r.places or not r.services)
            reach.group_count = len({r.who for r in reach if r.who.startswith("@")})
            self._reach, self._reach_of = reach, rules
        rule = policy.decide(self._reach, account, policy.ANY_SERVICE)
        return rule if rule is not None and rule.places else None

    def _bind_manager(self, proc, uid, rule, starting=False, current=None):
        """Bind what the user's systemd manager starts (systemd-run --user,
        socket units) with `rule`: it runs outside the session's scope. None
        where there is none (no logind, no placing rule). starting: the caller
        is the manager-to-be itself, in user@UID.service (or its init.scope).
        current: its cgroup, when the caller knows it (it just moved it there)."""
        if uid is None or rule is None:
            return None
        try:
            current = current or cgroup.cgroup_of(proc.pid)
            manager = cgroup.user_manager_of(current, uid)
            # systemd >= 254 (Debian 13) runs the manager-to-be in the service's
            # DelegateSubgroup=init.scope; 252 (Debian 12) in the service itself;
            # and the tree is the user's from the moment systemd makes it: they
            # may have moved it anywhere below before this session opens.
            if manager is None or (starting and current != manager and not current.startswith(manager + "/")):
                return None
            path = self._directory(manager)
        except (cgroup.CgroupError, PlacementError):
            return None
        if not os.path.isdir(path):
            return None
        try:
            # Replaced whoever is inside: one account, one manager rule; processes
            # the user parked in user@UID.service must not pin an old one.
            self.attachments.attach(path, rule.target, rule.program,
                                    self._resolve(rule.target, rule.plain), rule.where, replace=True)
        except (OSError, Conflict) as e:
            raise PlacementError(f"the systemd user manager cannot be bound to VRF "
                                 f"{rule.target}: {e}") from None
        return manager

    # -- pam-vrf exec ----------------------------------------------------------

    def exec_place(self, proc, peer_uid, vrf, plain=False):
        """Move the requester into `vrf` if it may enter it; returns the cgroup."""
        source = None
        if peer_uid == 0:
            program = policy.BIND_ONLY._replace(plain=plain)
        else:
            if proc.ruid != peer_uid or proc.euid != peer_uid:
                raise PlacementError(f"pid {proc.pid} (uid {proc.ruid}/{proc.euid}) is not "
                                     f"a process of uid {peer_uid}")
            rule = self._exec_rule(peer_uid, vrf)
            program, source = rule.program, rule.where
        return self.move(proc, vrf, program, owner=None if peer_uid == 0 else peer_uid, account=peer_uid,
                         source=source)

    def _exec_rule(self, uid, vrf):
        try:
            entry = nss.user_by_uid(uid)
        except nss.NssError as e:
            raise PlacementError(str(e)) from None
        if entry is None:
            raise PlacementError(f"uid {uid} has no passwd entry")
        try:
            # exec= belongs to the user's first rule, whatever services= it names.
            rule = policy.decide(self.policy.rules(), policy.account(entry.name, uid), policy.ANY_SERVICE)
        except (Unavailable, policy.Undecidable) as e:
            raise PlacementError(f"policy unusable: {e}") from None
        if rule is None or vrf not in rule.exec:
            where = f" (rule {rule.where})" if rule else ""
            raise PlacementError(f"{entry.name} may not enter VRF {vrf}: no exec={vrf} in vrf.conf{where}")
        return rule

    # -- the placement routine -------------------------------------------------

    def move(self, proc, vrf, program, owner=None, account=None, reattach=False, source=None, current=None):
        """Put the pinned process `proc` into its cgroup for `vrf` (or 'default')
        under the rule's `program` (policy.Program); returns the cgroup (hierarchy path).

        owner: the non-root uid charged for cgroups created here (None: root).
        account: the uid whose session it is (None: unknown). Only it, root and
        the helper may be able to write the cgroup or any above it: a session
        is never placed below a cgroup someone else can write (a tree systemd
        delegated to the invoker of su/sudo), where they could move it out;
        the VRF level then goes below the deepest cgroup no one else can write.
        reattach: also when already there, make sure the program is this rule's
        (a login); `pam-vrf exec` into where one already is changes nothing,
        so it cannot swap a login rule's program for its own.
        source: the rule's FILE:LINE, recorded with the attachment (pam-vrf trace).
        current: the process's cgroup, when the caller has just read it.
        """
        trusted = {0, os.geteuid()} | ({account} if account is not None else set())
        seen = {}           # foreign_writer() per directory, for this placement only
        try:
            current = current or cgroup.cgroup_of(proc.pid)
            where = cgroup.vrf_cgroup(vrf, proc.pid, netns=self.netns, trusted=trusted, current=current, seen=seen)
            path = self._directory(where)
            here = cgroup.fs_path(current) == path
            if here and not reattach:
                return where
            ifindex = None
            if vrf != policy.DEFAULT_VRF:       # the device first: no cgroup for a refusal
                ifindex = self._resolve(vrf, program.plain)
            try:
                self._prepare(where, path, vrf, program, ifindex, owner, source, trusted, seen)
            except Conflict:
                if not reattach:
                    raise
                # Without logind, logins of one VRF share <daemon cgroup>/vrf/NAME;
                # one under another rule gets a level of its own rather than
                # going unplaced (or replacing the rule of those already there).
                where = cgroup.with_level(where, _rule_level(program))
                path = self._directory(where)
                here = cgroup.fs_path(current) == path
                self._prepare(where, path, vrf, program, ifindex, owner, source, trusted, seen)
            if not here:
                process.check(proc)
                cgroup.move(proc.pid, path)
                process.check(proc)
        except (cgroup.CgroupError, process.ProcessError, Conflict, OSError) as e:
            raise PlacementError(str(e)) from None
        return where

    def _prepare(self, where, path, vrf, program, ifindex, owner, source, trusted, seen=None):
        """The cgroup exists, only `trusted` uids can write it and what is above
        it, and it carries the rule's program (Conflict if it holds processes
        placed under another rule)."""
        # Charged whoever made the directory: a user may make them in advance in
        # a cgroup tree delegated to them (user@UID.service).
        self._charge(owner, path)
        if not os.path.isdir(path):
            cgroup.ensure(path)
        # Levels made in advance by another user (vrf/NAME, pam-vrf-rule-HASH).
        cgroup.check_trusted(where, trusted, seen)
        if ifindex is not None:
            self.attachments.attach(path, vrf, program, ifindex, source)

    def _directory(self, where):
        """The directory of a hierarchy path, refused unless it is normalised."""
        if not where.startswith("/") or os.path.normpath(where) != where.rstrip("/") or "\0" in where:
            raise PlacementError(f"refusing un-normalised cgroup path {where!r}")
        return cgroup.fs_path(where)

    def _resolve(self, vrf, plain):
        try:
            return self.links.resolve(vrf, plain)
        except DeviceError as e:
            raise PlacementError(str(e)) from None

    def _charge(self, owner, path):
        if owner is None:
            return
        mine = {p for p in self._created.get(owner, ()) if os.path.isdir(p)}
        if path not in mine and len(mine) >= MAX_CGROUPS_PER_UID:
            raise PlacementError(f"uid {owner} already has {len(mine)} cgroups made by the helper "
                                 f"(at most {MAX_CGROUPS_PER_UID})")
        mine.add(path)
        self._created[owner] = mine


def _rule_level(program):
    """A cgroup name that stands for one rule (deny/mark/priority): same rule, same name
    (the same names as before policy.Program: fields() is what was hashed)."""
    text = repr(sorted((k, v) for k, v in program.fields().items()))
    return "pam-vrf-rule-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _uid_of(user):
    try:
        entry = nss.user(user)
    except nss.NssError:
        return None
    return entry.uid if entry else None


def _manager_uid(pid):
    """The UID of the user@UID.service cgroup `pid` is in (or below), or None."""
    try:
        found = re.search(r"/user@(\d+)\.service(/|$)", cgroup.cgroup_of(pid))
    except cgroup.CgroupError:
        return None
    return int(found.group(1)) if found else None
