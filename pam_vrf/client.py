"""Talk to pam-vrf-helper. Stdlib only (the pam_python hook uses it on every
login); every request carries a pidfd of this process (see pam_vrf.process)."""

import os
import sys
import time

# The C module: `socket` would pull enum, selectors... into every login.
import _socket as socket

from pam_vrf import protocol


class HelperError(Exception):
    """The helper could not be reached, or refused, or answered nonsense."""


class HelperDown(HelperError):
    """Nothing is listening: no socket file, or no process behind it."""


def connect_failure(e, path):
    """Why connect() to the socket at `path` failed, in words (the client's
    and the doctor's messages)."""
    if isinstance(e, FileNotFoundError):
        return f"no socket {path}"
    if isinstance(e, ConnectionRefusedError):
        return f"nothing listens on {path}"
    if isinstance(e, PermissionError):
        return f"permission denied connecting to {path}"
    if isinstance(e, socket.timeout):
        return f"{path}: connection timed out"
    return f"cannot connect to {path}: {e.strerror}"


def request(message, path=protocol.DEFAULT_SOCKET, timeout=protocol.TIMEOUT):
    """Send one request and return the helper's reply (ok or not).

    A helper that is running but busy is waited for up to `timeout` in all;
    a helper that is not running raises HelperDown at once.
    """
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    pidfd = -1
    try:
        sock.settimeout(timeout)
        try:
            while True:
                try:
                    sock.connect(path)
                    break
                except BlockingIOError:     # listen backlog full: retry until the deadline
                    if time.monotonic() + 0.005 >= deadline:
                        raise socket.timeout from None
                    time.sleep(0.005)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise HelperDown(f"helper not running ({connect_failure(e, path)})") from None
        except socket.timeout:
            raise HelperError(f"helper did not answer within {timeout:g}s ({path})") from None
        except OSError as e:
            raise HelperError(f"cannot reach helper at {path}: {e.strerror}") from None
        try:
            pidfd = os.pidfd_open(os.getpid())
            data = protocol.encode({"v": protocol.VERSION, **message})
            try:
                sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, pidfd.to_bytes(4, sys.byteorder))])
            except (BrokenPipeError, ConnectionResetError):
                pass            # the helper answered (busy) and closed first: read why
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(protocol.MAX_MESSAGE + 1)
        except socket.timeout:
            raise HelperError(f"helper did not answer within {timeout:g}s") from None
        except OSError as e:
            raise HelperError(f"helper connection failed: {e.strerror}") from None
        if not data:
            raise HelperError("helper closed the connection without an answer")
        try:
            return protocol.decode(data)
        except protocol.ProtocolError as e:
            raise HelperError(f"bad answer from helper: {e}") from None
    finally:
        if pidfd >= 0:
            os.close(pidfd)
        sock.close()


def call(message, path=protocol.DEFAULT_SOCKET, timeout=protocol.TIMEOUT):
    """Like request(), but a refusal raises HelperError with the helper's reason."""
    answer = request(message, path, timeout)
    if not answer.get("ok"):
        raise HelperError(f"helper refused: {answer.get('error', 'no reason given')}")
    return answer
