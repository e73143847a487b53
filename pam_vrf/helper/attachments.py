"""Which VRF cgroups carry which program, and keeping them right.

One loaded program per distinct rule (its Settings) is shared by every
cgroup that needs it. When a VRF is deleted and created again it gets a
new ifindex: every cgroup of that VRF then gets the program for the new
ifindex, so new sockets in existing sessions bind again.

Each such cgroup also carries two guards for its VRF's devices (the VRF
and the links enslaved to it now, or the `plain` device): the egress
program (pam_vrf.bpf.egressprog: no packet leaves by another link) and the
setsockopt program (pam_vrf.bpf.joinprog: no multicast join on another
link, whose IGMP/MLD reports the kernel would send by it).
`devices(vrf, plain, ifindex)` (Links.egress_devices) says which devices;
refresh_egress() re-attaches wherever that changed (a link enslaved or
released, the VRF re-created or deleted). One pair of programs per (VRF,
devices), shared; one drop counter per VRF while the helper runs. Which
guards each cgroup has is not in the state file: a helper that starts
re-attaches every cgroup's (a replace, flags 0), so sessions placed by a
version without them get them too; a login asks the kernel, so a cgroup
removed and made again at a remembered path gets them again.

The list of attachments is kept in a small JSON file under the runtime
directory so that a restarted helper still knows what to re-attach
(the kernel keeps the programs attached across a restart by itself).
Writing it is O(sessions), so attach() only marks it dirty and the
server loop calls flush() at most every FLUSH_DELAY seconds, and at exit.
"""

import json
import os
import time
from typing import NamedTuple

from pam_vrf import cgroup, programs
from pam_vrf.policy import Program
from pam_vrf.bpf import cgroup_link, egressprog, joinprog, syscall

# The guards beside the sock-create program, in the order they are attached.
GUARD_KINDS = (syscall.CGROUP_INET_EGRESS, syscall.CGROUP_SETSOCKOPT)


class Entry(NamedTuple):
    vrf: str
    rule: Program       # the rule's (policy.Program; fields() in the state file)
    ifindex: int
    # Where the rule was written ("/etc/security/vrf.conf:12"; None: root's
    # `pam-vrf exec`, or a state file from before it was recorded). Only for
    # people and `pam-vrf trace`: rules with equal settings from different
    # lines are the same program and never conflict.
    source: object = None


class Conflict(Exception):
    """The cgroup is in use under another rule: replacing its program would
    change (e.g. weaken) what applies to the processes already in it."""


class Attachments:
    FLUSH_DELAY = 0.5
    EMPTY_FOR = 60.0

    def __init__(self, state_file=None, log=None, devices=None):
        self.entries = {}               # cgroup path -> Entry
        self.dirty = False              # entries changed since the state file was written
        self._fds = {}                  # Settings -> (loaded program fd, program id)
        self._empty_since = {}          # VRF cgroup -> when it was first seen empty
        self.state_file = state_file
        self.log = log
        # devices(vrf, plain, ifindex) -> the ifindexes its sessions may send by;
        # None: no egress program (state-file tools and tests of the file alone).
        self.devices = devices
        self._egress = {}               # cgroup path -> devices its guards allow
        self._inodes = {}               # cgroup path -> its inode when this helper attached
        self._egress_fds = {}           # (vrf, devices) -> Guards
        self._counters = {}             # vrf -> drop counter map fd
        self._load_state()

    def attach(self, path, vrf, rule, ifindex, source=None, replace=False):
        """Attach the program for (rule, ifindex) to `path`; returns the program id.
        `source` (the rule's FILE:LINE) is recorded, not compared. replace: no
        Conflict check (a cgroup that belongs to one account and one rule).

        Raises Conflict when `path` has processes placed under a different rule
        (sessions sharing a cgroup without logind, or `pam-vrf exec` into a
        VRF whose cgroup a stricter login rule made).
        """
        current = self._current(path)
        if current is not None and current.rule != rule and not replace and cgroup.members(path):
            raise Conflict(f"{path} holds processes placed under another rule for {vrf} "
                           f"({current.rule.text()}); not replacing it with ({rule.text()})")
        fd, prog_id = self._program(programs.settings_for(rule, ifindex))
        wanted = Entry(vrf, rule, ifindex, source)
        if current is not None and current._replace(source=source) == wanted:
            # One look at what the kernel has there, all three programs.
            kinds = (syscall.CGROUP_INET_SOCK_CREATE, *(GUARD_KINDS if self.devices is not None else ()))
            found = dict(zip(kinds, cgroup_link.query_each(path, kinds)))
            if found[syscall.CGROUP_INET_SOCK_CREATE] == [prog_id]:
                if current.source != source:    # same program; the latest login's line is named
                    self.entries[path] = wanted
                    self.dirty = True
                if path not in self._inodes:
                    self._inodes[path] = _inode(path)
                self._attach_egress(path, wanted, found)
                return prog_id          # already in place (another login of the same session cgroup)
        # Egress first: there is no moment when the cgroup binds new sockets
        # but lets their datagrams out by another link.
        self._attach_egress(path, wanted)
        programs.attach(path, prog_fd=fd)
        self.entries[path] = wanted
        self._inodes[path] = _inode(path)
        self.dirty = True
        return prog_id

    def _current(self, path):
        """The entry for `path`, unless the cgroup was removed and made again
        since this helper attached to it (a user@UID.service stopped after a
        logout and started by the next login within the prune window): then
        what it remembers is another cgroup's, programs and rule alike."""
        current = self.entries.get(path)
        if current is not None and path in self._inodes and self._inodes[path] != _inode(path):
            del self.entries[path]
            self._egress.pop(path, None)
            self._inodes.pop(path, None)
            self.dirty = True
            return None
        return current

    def _attach_egress(self, path, entry, found=None, check=True):
        """The guards for the entry's VRF devices on `path`. check: ask the kernel
        whether they are there (a login: the cgroup may have been removed and made
        again since), unless `found` ({attach type: program ids}) is its answer
        the caller has just had; else trust what this helper attached (link events)."""
        if self.devices is None:
            return
        allowed = self.devices(entry.vrf, entry.rule.plain, entry.ifindex)
        guards = self._guards(entry.vrf, allowed)
        if self._egress.get(path) == allowed and (not check or all(
                (found[kind] if found else [a.prog_id for a in cgroup_link.query(path, kind)]) == [prog_id]
                for kind, _, prog_id in guards)):
            return
        for kind, fd, _ in guards:
            cgroup_link.attach(path, fd, kind)
        self._egress[path] = allowed

    def refresh_egress(self):
        """Link events arrived: re-attach the egress program of every cgroup
        whose VRF's devices changed. Returns how many."""
        if self.devices is None:
            return 0
        done, wanted = 0, {}
        for path, entry in list(self.entries.items()):
            key = (entry.vrf, entry.rule.plain, entry.ifindex)
            if key not in wanted:
                wanted[key] = self.devices(*key)
            if self._egress.get(path) == wanted[key]:
                continue
            try:
                self._attach_egress(path, entry, check=False)
                done += 1
            except OSError as e:
                if self.log:
                    self.log.err(f"cannot re-attach the egress program of {path} ({entry.vrf}): {e}")
        if done:
            self._release_unused()
        return done

    def _guards(self, vrf, allowed):
        """[(attach type, program fd, program id)] of the guards for `allowed`,
        loading them once."""
        key = (vrf, allowed)
        if key not in self._egress_fds:
            if vrf not in self._counters:
                self._counters[vrf] = egressprog.new_counter()
            load = {syscall.CGROUP_INET_EGRESS: lambda: egressprog.load(allowed, self._counters[vrf]),
                    syscall.CGROUP_SETSOCKOPT: lambda: joinprog.load(allowed)}
            loaders = [(kind, load[kind]) for kind in GUARD_KINDS]
            guards = []
            try:
                for kind, load in loaders:
                    fd = load()
                    guards.append((kind, fd, syscall.prog_info(fd).id))
            except BaseException:
                for _, fd, _ in guards:
                    os.close(fd)
                raise
            self._egress_fds[key] = guards
        return self._egress_fds[key]

    def refresh(self, resolve):
        """At start: re-attach VRFs whose ifindex changed while we were down,
        and give every remembered cgroup the egress program for its VRF's
        devices now. `resolve(vrf, plain)` returns the current ifindex or raises."""
        for vrf, plain in {(e.vrf, e.rule.plain) for e in self.entries.values()}:
            try:
                self.relink(vrf, resolve(vrf, plain))
            except Exception as e:
                if self.log:
                    self.log.warning(f"cannot check {vrf} of remembered attachments: {e}")
        self.refresh_egress()

    def relink(self, vrf, ifindex):
        """A VRF (re)appeared with `ifindex`: re-attach its stale cgroups. Returns how many."""
        if not any(e.vrf == vrf and e.ifindex != ifindex for e in self.entries.values()):
            return 0                # the usual link event: nothing of ours changed
        self.flush()
        done = 0
        for path, entry in list(self.entries.items()):
            if entry.vrf == vrf and entry.ifindex != ifindex:
                try:
                    self.attach(path, vrf, entry.rule, ifindex, entry.source)
                    done += 1
                except OSError as e:
                    if self.log:
                        self.log.err(f"cannot re-attach {path} to {vrf} (ifindex {ifindex}): {e}")
        self.save()
        self._release_unused()
        return done

    def _program(self, wanted):
        """(fd, id) of the loaded program for `wanted`, loading it once."""
        if wanted not in self._fds:
            fd = programs.load(wanted)
            self._fds[wanted] = (fd, syscall.prog_info(fd).id)
        return self._fds[wanted]

    def _release_unused(self):
        used = {programs.settings_for(e.rule, e.ifindex) for e in self.entries.values()}
        for key in [k for k in self._fds if k not in used]:
            os.close(self._fds.pop(key)[0])
        for path in [p for p in self._egress if p not in self.entries]:
            del self._egress[path]
        for path in [p for p in self._inodes if p not in self.entries]:
            del self._inodes[path]
        used = {(self.entries[p].vrf, allowed) for p, allowed in self._egress.items()}
        for key in [k for k in self._egress_fds if k not in used]:
            for _, fd, _ in self._egress_fds.pop(key):
                os.close(fd)
        vrfs = {vrf for vrf, _ in self._egress_fds}
        for vrf in [v for v in self._counters if v not in vrfs]:
            os.close(self._counters.pop(vrf))

    def save(self):
        """Write the state file if anything changed (every FLUSH_DELAY while
        logins arrive): no sweep of every session here, that is flush()'s."""
        if self.dirty:
            self._write_state()

    def flush(self):
        """Forget cgroups that no longer exist (ended sessions), write the state
        file if anything changed, then unload programs no cgroup uses any more
        (in that order: the file never names a cgroup whose program is gone).

        VRF cgroups of ours that have been empty for EMPTY_FOR seconds are removed
        first: logind removes a session's with its scope, but those below a daemon
        (cron.service, sshd without logind) would otherwise stay behind.
        """
        now = time.monotonic()
        for path in self.entries:
            if f"/{cgroup.VRF_DIR}/" not in path or cgroup.members(path):
                self._empty_since.pop(path, None)
            elif now - self._empty_since.setdefault(path, now) >= self.EMPTY_FOR:
                cgroup.remove_if_empty(path)        # fails (and stays) if in use after all
        for path in [p for p in self._empty_since if p not in self.entries]:
            del self._empty_since[path]
        gone = [p for p in self.entries if not os.path.isdir(p)]
        for path in gone:
            del self.entries[path]
        if gone:
            self.dirty = True
        if self.dirty:
            self._write_state()
        if gone:
            self._release_unused()

    def _write_state(self):
        self.dirty = False
        if not self.state_file:
            return
        data = {path: dict(e._asdict(), rule=e.rule.fields()) for path, e in self.entries.items()}
        tmp = f"{self.state_file}.tmp"
        try:
            with open(tmp, "w") as f:
                # dumps, not dump: json.dump streams through the pure-Python
                # encoder (3x slower; 96 vs 31 ms for 10 000 sessions), and the
                # helper serves no login while it writes.
                f.write(json.dumps(data))
            os.replace(tmp, self.state_file)
        except OSError as e:        # the attachment itself worked; only a restart forgets it
            if self.log:
                self.log.err(f"cannot save {self.state_file}: {e.strerror}")

    def _load_state(self):
        if not self.state_file:
            return
        try:
            with open(self.state_file) as f:
                data = json.load(f)
            entries = {path: Entry(**dict(fields, rule=Program.of_fields(fields["rule"])))
                       for path, fields in data.items()}
            self.entries = entries
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            if self.log:
                self.log.warning(f"ignoring unreadable state file {self.state_file}: {e}")
            self.entries = {}
        self.flush()


def _inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
