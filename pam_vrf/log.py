"""Syslog (facility authpriv) without touching process-wide state.

The PAM hook runs inside sshd, login, su...: Python's syslog.openlog()
would change the ident and facility of the host program's own messages.
So this writes RFC 3164 datagrams to /dev/log itself, over a socket of the
Logger's own: opened with the Logger (so the helper can still say it is out
of descriptors when it is), connected again after an error (syslog
restarted), never blocking (a line syslog has no room for is dropped: a
stuck syslog must not stall a login or the helper).
"""

import os
import sys
import time

# The C module: `socket` would pull enum, selectors... into every login.
import _socket

LOG_AUTHPRIV = 10 << 3
ERR, WARNING, NOTICE, INFO, DEBUG = 3, 4, 5, 6, 7
DEV_LOG = "/dev/log"
# Control characters (a user name from PAM may hold newlines) would forge
# log lines; a reader's terminal acts on C1 controls too (U+009B is CSI,
# U+0085 a newline to some); line and paragraph separators, bidirectional
# overrides and invisible format characters change what a viewer shows, and
# a surrogate stands for a byte that was not UTF-8. Every character that
# str.isprintable() rejects (all of these; of the spaces, all but ' ') is
# written as \xNN, \uNNNN or \UNNNNNNNN.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa1)]}


def escape(text):
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _ESCAPES.get(ord(c)) or
                   (f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}") for c in text)


class Logger:
    def __init__(self, ident, debug=False, stderr=False, path=DEV_LOG):
        self.ident, self.debug_enabled, self.stderr, self.path = ident, debug, stderr, path
        self._sock, self._connected = None, False
        self._connect()

    def _connect(self):
        """(Re)connect; a fresh socket only when there is none (EMFILE keeps the old)."""
        try:
            if self._sock is None:
                self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
            self._sock.connect(self.path)
            self._connected = True
        except OSError:
            self._connected = False

    def _send(self, data):
        for _ in range(2):
            if not self._connected:
                self._connect()
                if not self._connected:
                    return      # nothing listens: once per line is enough to notice it is back
            try:
                self._sock.send(data, _socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                return          # syslog is behind: drop the line rather than wait
            except (OSError, AttributeError):
                self._connected = False

    def log(self, level, message):
        if level == DEBUG and not self.debug_enabled:
            return
        line = f"{self.ident}[{os.getpid()}]: {escape(message)}"
        stamp = time.strftime("%b %e %H:%M:%S")
        self._send(f"<{LOG_AUTHPRIV | level}>{stamp} {line}".encode(errors="replace"))
        if self.stderr:
            try:
                sys.stderr.write(line + "\n")        # one write(2) per line, not two
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock, self._connected = None, False

    def err(self, message):
        self.log(ERR, message)

    def warning(self, message):
        self.log(WARNING, message)

    def notice(self, message):
        self.log(NOTICE, message)

    def info(self, message):
        self.log(INFO, message)

    def debug(self, message):
        self.log(DEBUG, message)
