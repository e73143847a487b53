"""Talk to pam-vrf-helper. Stdlib only; never waits more than protocol.TIMEOUT."""

import time

# The C module: `socket` would pull enum, selectors... into every login.
import _socket as socket

from pam_vrf import protocol


class HelperError(Exception):
    """The helper could not be reached or refused the request."""


def request(message, path=protocol.DEFAULT_SOCKET, timeout=protocol.TIMEOUT):
    """Send one request and return the helper's reply (ok or not)."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
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
        except FileNotFoundError:
            raise HelperError(f"helper not running (no socket {path})") from None
        except ConnectionRefusedError:
            raise HelperError(f"helper not running (nothing listens on {path})") from None
        except socket.timeout:
            raise HelperError(f"helper did not answer within {timeout:g}s ({path})") from None
        except OSError as e:
            raise HelperError(f"cannot reach helper at {path}: {e.strerror}") from None
        try:
            try:
                sock.sendall(protocol.encode({"v": protocol.VERSION, **message}))
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
        sock.close()


def call(message, path=protocol.DEFAULT_SOCKET, timeout=protocol.TIMEOUT):
    """Like request(), but a refusal raises HelperError with the helper's reason."""
    answer = request(message, path, timeout)
    if not answer.get("ok"):
        raise HelperError(f"helper refused: {answer.get('error', 'no reason given')}")
    return answer
