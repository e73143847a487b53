"""From bench/bench_socket.py (PY_WORKER).
"""

import os, socket, sys, time
sock = socket.socket
for line in sys.stdin:
    if line.startswith("cg "):
        with open(line[3:].strip() + "/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        print("ok", flush=True)
        continue
    if line.startswith("check"):
        s = sock(socket.AF_INET, socket.SOCK_STREAM)
        dev = s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode() or "-"
        s.close()
        try:
            sock(socket.AF_INET, socket.SOCK_DGRAM).close(); err = 0
        except OSError as e:
            err = e.errno
        print(dev, err, flush=True)
        continue
    n = int(line)
    t0 = time.perf_counter_ns()
    for _ in range(n):
        sock().close()
    print(time.perf_counter_ns() - t0, flush=True)
