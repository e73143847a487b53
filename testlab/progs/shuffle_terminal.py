"""From tests/test_delegation_attacks.py (SHUFFLE): As the invoker: move every
process found in one of two cgroups into the other, as fast as it can, until
stdin closes (argv: the two directories).
"""

import sys, threading
a, b = sys.argv[1:3]
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
moves = 0
while not done.is_set():
    for src, dst in ((a, b), (b, a)):
        with open(src + "/cgroup.procs") as f:
            pids = f.read().split()
        for pid in pids:
            try:
                with open(dst + "/cgroup.procs", "w") as f:
                    f.write(pid)
                moves += 1
            except OSError:
                pass
print(moves)
