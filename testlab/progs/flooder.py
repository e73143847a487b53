"""The flood client (tests/test_login.py, bench/bench_flood.py), run as an
unprivileged user from a copy it can read (progs.source("flooder")), or
`python3 -m testlab.progs.flooder SOCKET KIND VRF [SECONDS]`.

Prints "flooding", then loops until SIGTERM (or SECONDS have passed) and
prints its counts as JSON. Kinds:
  churn    connect + close
  hold     connect and keep up to 64 connections open (never send)
  garbage  connect + 512 random bytes + read the answer
  place    a valid `place` request for VRF (with a pidfd of itself)
Plain standard library: it runs from wherever it was copied.
"""

import json
import os
import signal
import socket
import sys
import time


def main(path, kind, vrf, seconds=None):
    until = time.monotonic() + float(seconds) if seconds is not None else float("inf")
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    counts = {"connects": 0, "answers": 0, "busy": 0, "errors": 0}
    held = []
    request = b'{"v":2,"op":"place","vrf":"%s"}' % vrf.encode()
    print("flooding", flush=True)
    while not stop and time.monotonic() < until:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(1)
            s.connect(path)
            counts["connects"] += 1
            if kind == "hold":
                held.append(s)
                if len(held) > 64:
                    held.pop(0).close()
                continue
            if kind == "garbage":
                s.send(os.urandom(512))
            elif kind == "place":
                fd = os.pidfd_open(os.getpid())
                s.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])
                os.close(fd)
            if kind != "churn":
                answer = s.recv(4096)
                counts["busy" if b"busy" in answer else "answers"] += 1
            s.close()
        except OSError:
            counts["errors"] += 1
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
