"""A syslog receiver bind-mounted over /dev/log for the processes under test
(the host's syslog is left alone). Not named syslog: testlab/ is sys.path[0]
for the programs run from it, and the standard library's syslog must win."""

import os
import shutil
import socket
import threading
import time

from testlab.run import public_dir


class SyslogSink:
    """A syslog receiver for the processes under test.

    It listens in a directory of its own; wrap() runs a command in a private
    mount namespace where that socket is bind-mounted over /dev/log, so the
    host's syslog is left alone and several test runs can share a machine.
    A bind mount needs something at /dev/log: where there is nothing (CI has
    no syslog daemon), an empty regular file is left there for good (removing
    it would detach other runs' mounts).
    """

    def __init__(self):
        if not os.path.lexists("/dev/log"):
            try:
                os.close(os.open("/dev/log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                pass
        self.dir = public_dir("pam-vrf-syslog-")
        self.path = os.path.join(self.dir, "log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            with self.cond:
                self.lines.append(data.decode(errors="replace"))
                self.cond.notify_all()

    def wrap(self, argv):
        # (Re)create the mount point: another run on this machine may have removed it.
        script = '[ -e /dev/log ] || : >> /dev/log; mount --bind "$0" /dev/log && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, self.path, *argv]

    def mark(self):
        with self.cond:
            return len(self.lines)

    def since(self, mark):
        with self.cond:
            return self.lines[mark:]

    def wait_for(self, needle, mark=0, timeout=10):
        """The first line since `mark` containing every given string."""
        needles = [needle] if isinstance(needle, str) else list(needle)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[mark:]:
                    if all(n in line for n in needles):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no syslog line with {needles}; got:\n" + "\n".join(self.lines[mark:]))
                self.cond.wait(left)

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
