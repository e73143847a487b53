"""From bench/bench_flood.py (DRIVER): Root driver: argv ROOT_SOCK USER SERVICE
BASE_DIR N. Forks N clients; each stdin line "burst K" runs K bursts and
prints a JSON list of [ms, verdict].
"""

import json, os, struct, sys, time
sock, user, service, base, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
from pam_vrf import client, protocol
results_r, results_w = os.pipe()
kids = []
for i in range(n):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w); os.close(results_r)
        home = os.path.join(base, f"c{i}")
        me = str(os.getpid())
        while True:
            data = os.read(r, 8)
            if len(data) < 8:
                os._exit(0)
            go = struct.unpack("d", data)[0]
            with open(home + "/cgroup.procs", "w") as f:      # a new login: not placed yet
                f.write(me)
            time.sleep(max(0.0, go - time.monotonic()))
            t0 = time.perf_counter_ns()
            try:
                answer = client.request({"op": "open", "user": user, "service": service}, sock,
                                        protocol.LOGIN_TIMEOUT)
                verdict = answer.get("verdict") or answer.get("error") or "?"
            except client.HelperError as e:
                verdict = f"error: {e}"
            ms = (time.perf_counter_ns() - t0) / 1e6
            line = json.dumps([ms, verdict[:200]]).encode() + b"\n"
            os.write(results_w, line)
    os.close(r)
    kids.append((pid, w))
os.close(results_w)
results = os.fdopen(results_r)
for line in sys.stdin:
    bursts = int(line.split()[1])
    out = []
    for b in range(bursts):
        go = struct.pack("d", time.monotonic() + 0.03)
        for _, w in kids:
            os.write(w, go)
        for _ in kids:
            out.append(json.loads(results.readline()))
        time.sleep(0.07)
    print(json.dumps(out), flush=True)
for pid, w in kids:
    os.close(w)
for pid, _ in kids:
    os.waitpid(pid, 0)
