"""vrf.conf as the helper knows it: parsed once, re-read when the file changes.

A stat() per request notices a change (inode, size, mtime, ctime); a new
file that does not parse keeps the last good policy in force and is logged
with its FILE:LINE once. At start with a broken (or missing) file there is
no good policy: every login proceeds unplaced and each one logs why, as
without the helper (see pam-vrf-helper(8)).
"""

import os

from pam_vrf import policy


class Unavailable(Exception):
    """No valid policy has been read yet."""


class PolicyCache:
    def __init__(self, path, log):
        self.path, self.log = path, log
        self._rules = None
        self._seen = None           # stat signature of the file last read (good or bad)
        self._error = None          # why the file last read did not parse

    def _signature(self):
        try:
            st = os.stat(self.path)
        except OSError as e:
            return ("error", e.errno)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def rules(self):
        """The policy in force; Unavailable when no good one was ever read."""
        signature = self._signature()
        if signature != self._seen:
            self._seen = signature
            try:
                rules = policy.load(self.path)
            except policy.ConfigError as e:
                self._error = str(e)
                if self._rules is None:
                    self.log.err(f"{e}; no valid policy: sessions proceed unplaced until it is fixed")
                else:
                    self.log.err(f"{e}; keeping the policy read before ({len(self._rules)} rules)")
            else:
                if self._rules is not None:
                    self.log.notice(f"{self.path}: re-read, {len(rules)} rules")
                self._rules, self._error = rules, None
        if self._rules is None:
            raise Unavailable(self._error or f"{self.path}: not read")
        return self._rules
