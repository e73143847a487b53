"""From tests/test_doctor.py (ACTIVATOR): Like systemd's socket units: this
process makes the listening sockets and keeps them; a forked child becomes
the helper and takes them over (LISTEN_FDS).
"""

import os, socket, sys
where, argv = sys.argv[1], sys.argv[2:]
socks = []
for name, mode in (("helper.sock", 0o666), ("root.sock", 0o600)):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(os.path.join(where, name))
    os.chmod(os.path.join(where, name), mode)
    s.listen(16)
    socks.append(s)
pid = os.fork()
if pid == 0:
    copies = [os.dup(s.fileno()) for s in socks]
    for n, fd in enumerate(copies):
        os.dup2(fd, 3 + n)
    os.environ.update(LISTEN_FDS="2", LISTEN_PID=str(os.getpid()))
    os.execvp(argv[0], argv)
print(pid, flush=True)
os.waitpid(pid, 0)
