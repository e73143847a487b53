"""From tests/test_egress_attacks.py (CONNECT).
"""

import json, socket, sys, threading, time
addr, port, who, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
done = []
def one():
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((addr, port)); s.send(who.encode()); done.append("connected")
    except OSError as e:
        done.append(type(e).__name__)
threads = [threading.Thread(target=one) for _ in range(n)]
for t in threads:
    t.start(); time.sleep(0.3)
for t in threads:
    t.join()
print(json.dumps(done), flush=True)
