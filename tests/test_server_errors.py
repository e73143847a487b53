"""The helper's server loop, in process, with a handler that fails: a request
whose handling raises is let go at once (the PAM entry reads EOF and takes
its slow path), logged, and the next request is served. Root's requests are
served as soon as they are accepted when they are already there (no selector
round): an error there must not leave the connection waiting for the
one-second client deadline."""

import os
import socket
import threading
import time

import pytest

from pam_vrf import protocol
from pam_vrf.helper.server import Server

# root.sock serves uid 0 only
pytestmark = pytest.mark.root


class Lines:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda message: self.lines.append(f"{level}: {message}")


class NoAttachments:
    entries, dirty = {}, False


class Failing:
    """Raises on the first request, answers `alone` after that."""

    attachments = NoAttachments()

    def __init__(self):
        self.calls = 0

    def handle(self, request, peer):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("planted failure")
        return protocol.reply(True, verdict="alone")


def ask(path, request):
    """(seconds, reply bytes) of one request sent with a pidfd of ourselves."""
    pidfd = os.pidfd_open(os.getpid())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(5)
            start = time.monotonic()
            s.connect(path)
            s.sendmsg([protocol.encode(request)],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, pidfd.to_bytes(4, "little"))])
            data = s.recv(protocol.MAX_MESSAGE + 1)
            return time.monotonic() - start, data
    finally:
        os.close(pidfd)


def test_a_failing_request_is_let_go_at_once_and_the_next_one_served(tmp_path):
    path = str(tmp_path / "root.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    log, handler = Lines(), Failing()
    server = Server({listener: True}, handler, None, log)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        request = {"v": protocol.VERSION, "op": "open", "user": "nobody", "service": "sshd"}
        took, data = ask(path, request)
        assert data == b"", data                    # EOF: no "request not received in time"
        assert took < 0.5, took
        assert any("internal error (client): RuntimeError: planted failure" in line for line in log.lines), log.lines
        took, data = ask(path, request)
        assert protocol.decode(data)["verdict"] == "alone"
        assert handler.calls == 2
        deadline = time.monotonic() + 2        # the reply goes out before the connection is let go
        while server.clients and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not server.clients
    finally:
        server.stop()
        os.write(server.wakeup_w, b"x")
        thread.join(5)
        listener.close()
