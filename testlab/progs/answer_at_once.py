"""Run by bench/bench_login_c.py (P1-C's variant E), as root: a server at
DIR/root.sock that answers every request at once with `alone` (no decision,
no move). pam_vrf.so against it costs what any helper process would: the
connection, the pidfd, two wake-ups across CPUs. One process, one thread,
blocking calls: the floor.

    python3 -m testlab.progs.answer_at_once DIR      (prints "ready", serves until killed)
"""

import os
import socket
import sys

REPLY = b'{"v":2,"ok":true,"verdict":"alone"}'


def main():
    path = os.path.join(sys.argv[1], "root.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4097)             # no room for ancillary data: the kernel closes the pidfd
            conn.send(REPLY)


if __name__ == "__main__":
    main()
