#!/usr/bin/python3
"""Run by a user's systemd manager at its start (tests/vm/test_vm_manager.py):
a process that opens its sockets before the user's first login returns, as a
oneshot with RemainAfterExit=yes that keeps them would. Writes one JSON object
to argv[1] (atomically), then forks: the parent exits (the oneshot is done,
its sockets made before default.target is reached), the child keeps the
sockets until it is ended:

    pid, cgroup
    udp4: {"dev": NAME} | {"errno": E}     the bound device of a new UDP socket
    udp6: the same for IPv6

With `--then GO` (a session placed by su, tests/vm/test_vm_delegation.py)
it does not fork: it waits until the file GO exists, writes the same report
for a new socket to OUT.2, and exits.

Not a test module (tests/vm/vm_*.py are helpers); stdlib only.
"""

import json
import os
import signal
import socket
import sys
import time


def bound(family):
    try:
        s = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as e:
        return None, {"errno": e.errno}
    dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 64).split(b"\0", 1)[0]
    return s, {"dev": dev.decode()}


def main():
    out, kept = sys.argv[1], []
    report_to(out, kept)
    if "--then" in sys.argv:
        go = sys.argv[sys.argv.index("--then") + 1]
        for _ in range(600):
            if os.path.exists(go):
                break
            time.sleep(0.1)
        report_to(out + ".2", kept)
        return
    if os.fork():
        os._exit(0)
    while True:                 # keep them (what a socket-holding oneshot leaves running)
        signal.pause()


def report_to(out, kept):
    """Write the report for new sockets to `out`; the sockets go into `kept`."""
    report = {"pid": os.getpid()}
    with open("/proc/self/cgroup") as f:
        report["cgroup"] = [line[3:].strip() for line in f if line.startswith("0::")][0]
    for name, family in (("udp4", socket.AF_INET), ("udp6", socket.AF_INET6)):
        s, report[name] = bound(family)
        kept.append(s)
    with open(out + ".tmp", "w") as f:
        json.dump(report, f)
    os.rename(out + ".tmp", out)


if __name__ == "__main__":
    main()
