#!/usr/bin/python3
"""Pings the helper's root.sock the way a login asks it (tests/vm, as root):
connect, one message with a pidfd of this process, wait up to 30 s (the PAM
entries' LOGIN_TIMEOUT) for the answer. One attempt every --every seconds
until stdin closes; then one JSON list on stdout, an item per attempt:

    [start (s since the first), outcome, seconds it took]

outcome: "ok", or what a PAM entry would have seen instead: "ENOENT" / "ECONNREFUSED"
(no helper: the offline decider, then unplaced), "closed" (the connection
ended without an answer), "reset", "timeout", "errno:N", "refused:WHY".
Not a test module (tests/vm/vm_*.py are helpers); stdlib only, no pam_vrf
(the package may be removed while it runs).
"""

import errno
import json
import os
import select
import socket
import sys
import time

ROOT_SOCKET = "/run/pam-vrf/root.sock"
LOGIN_TIMEOUT = 30.0
PING = json.dumps({"v": 2, "op": "ping"}).encode()


def ping():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    pidfd = -1
    try:
        sock.settimeout(LOGIN_TIMEOUT)
        sock.connect(ROOT_SOCKET)
        pidfd = os.pidfd_open(os.getpid())
        sock.sendmsg([PING], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, pidfd.to_bytes(4, sys.byteorder))])
        data = sock.recv(4097)
        if not data:
            return "closed"
        answer = json.loads(data)
        return "ok" if answer.get("ok") else f"refused:{answer.get('error')}"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        if e.errno in (errno.ECONNRESET, errno.EPIPE):
            return "reset"
        return errno.errorcode.get(e.errno, f"errno:{e.errno}")
    finally:
        if pidfd >= 0:
            os.close(pidfd)
        sock.close()


def main():
    every = float(sys.argv[sys.argv.index("--every") + 1]) if "--every" in sys.argv else 0.1
    t0 = time.monotonic()
    results = []
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        start = time.monotonic()
        outcome = ping()
        results.append([round(start - t0, 3), outcome, round(time.monotonic() - start, 3)])
        time.sleep(max(0.0, every - (time.monotonic() - start)))
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
